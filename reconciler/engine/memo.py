"""The render memo: what was rendered from which inputs, which environments a drift check found in sync, and the
baseline each environment was last left wholly Synced at.

Rendering is deterministic, so a unit whose inputs are unchanged need not be rendered again to be compared, and
an environment whose inputs and observed live state are exactly as when a drift check found it in sync has the
same outcome. A baseline lets a new commit's reconcile of a Synced environment look only at the applications whose
inputs changed (:func:`reconciler.engine.reconcile.reconcile_environment`). Shared by the controller's workers;
read and written by :mod:`reconciler.engine.reconcile`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from reconciler.core.desired import DesiredUnit
from reconciler.core.state import LiveUnit
from reconciler.engine.outcome import EnvOutcome


class RenderMemo:
    """The fingerprint of every unit rendered successfully, with a token of the inputs it was rendered from.

    Rendering is deterministic: equal inputs (the environment's payload, the application's manifests and
    templates at their blob digests, the target) give an equal unit. When the token still matches, a reconcile
    pairs a *stub* (fingerprint and version, no files) with the live unit and renders the real unit only if
    something must be applied: a drift check of an unchanged fleet re-hashes deployed files and renders nothing.
    Shared by the controller's workers (one entry per key; plain dict operations are atomic).
    """

    def __init__(self) -> None:
        self._known: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._settled: dict[str, Settled] = {}
        self._baselines: dict[str, Baseline] = {}
        self._environments: set[str] = set()  # every environment with an entry

    def settled(self, environment: str, token: object) -> Settled | None:
        """The environment's last drift check that found it wholly in sync, if its inputs are still ``token``."""
        found = self._settled.get(environment)
        return found if found is not None and found.token == token else None

    def settle(self, environment: str, settled: Settled) -> None:
        self._settled[environment] = settled
        self._environments.add(environment)

    def retain(self, environments: Collection[str]) -> None:
        """Forget environments that no longer exist (the controller calls this when it loads a revision; the
        entries are scanned only when some environment is gone, not on every commit)."""
        gone = self._environments - set(environments)
        if not gone:
            return
        for key in [k for k in self._known if k[0] in gone]:
            self._known.pop(key, None)
        for name in gone:
            self._settled.pop(name, None)
            self._baselines.pop(name, None)
        self._environments -= gone

    def baseline(self, environment: str) -> Baseline | None:
        """The environment as its last reconcile left it wholly Synced (its targets and render tokens), if it did."""
        return self._baselines.get(environment)

    def set_baseline(self, environment: str, baseline: Baseline | None) -> None:
        """Record (or, with ``None``, forget) the environment's baseline."""
        if baseline is None:
            self._baselines.pop(environment, None)
            return
        self._baselines[environment] = baseline
        self._environments.add(environment)

    def get(self, environment: str, application: str, target: str, token: str) -> str | None:
        known = self._known.get((environment, application, target))
        return known[1] if known is not None and known[0] == token else None

    def put(self, unit: DesiredUnit, token: str) -> None:
        self._known[(unit.environment, unit.application, unit.target)] = (token, unit.fingerprint)
        self._environments.add(unit.environment)

    def __len__(self) -> int:
        return len(self._known)


@dataclass(frozen=True)
class Settled:
    """An environment found wholly in sync by a drift check: its inputs, what was observed where, the outcome.

    The next drift check with the same inputs observes the same targets; if every live unit is exactly as then,
    the outcome is the same, and nothing is rendered, paired or ordered."""

    token: object  # compared by value: (targets, render tokens)
    wanted: tuple[tuple[str, tuple[str, ...]], ...]  # (target, applications desired there), in observe order
    live: Mapping[tuple[str, str], LiveUnit | None]
    outcome: EnvOutcome


@dataclass(frozen=True)
class Baseline:
    """An environment as its last reconcile left it: every application Synced, its live version the desired one;
    the targets it mapped and the render token of each application (see
    :meth:`reconciler.engine.revision.Revisions.render_tokens`).

    A new commit that changes some applications' tokens (and neither the targets nor the set of applications)
    needs to observe, decide and apply only those: the others are as this reconcile left them, trusted exactly as
    an environment whose inputs did not change at all is trusted until the next drift check. The tokens are the
    revision's own mapping (shared, not copied): a baseline costs the fleet's memory next to nothing."""

    targets: tuple[tuple[str, str], ...]
    tokens: Mapping[str, str]
