"""What one environment's reconcile returns: per-application statuses, the environment's phase, audit entries.

Built by :mod:`reconciler.engine.execute` (and the shortcuts of :mod:`reconciler.engine.reconcile`), read by the
controller, which turns outcomes into status documents, metrics, backoff and the audit trail. How the outcome's
failure is classified decides what happens next: ``stalled`` (a permanent error or invalid input: not retried
until the inputs change or someone triggers the environment) or ``transient`` (backs off, at least
``retry_after`` seconds when the error said so, e.g. an HTTP 429 Retry-After).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.core.plan import Phase, UnitPlan
from reconciler.core.problems import PermanentError, ReconcilerError, TemporaryError
from reconciler.core.state import Health

HEALTH_PHASE = {
    Health.HEALTHY: Phase.SYNCED,
    Health.PROGRESSING: Phase.PROGRESSING,
    Health.UNKNOWN: Phase.PROGRESSING,
    Health.MISSING: Phase.DEGRADED,
    Health.DEGRADED: Phase.DEGRADED,
}


@dataclass(frozen=True, slots=True)
class AppStatus:
    desired: str | None
    live: str | None
    phase: Phase
    message: str = ""


_SYNCED: dict[str | None, AppStatus] = {}


def synced(version: str | None) -> AppStatus:
    """An application Synced at ``version``, nothing to say: one shared value per version (a fleet's outcomes and
    memos hold hundreds of thousands of them, of a few hundred versions)."""
    found = _SYNCED.get(version)
    if found is None:
        if len(_SYNCED) >= 100_000:  # a bound, not a policy
            _SYNCED.clear()
        found = _SYNCED[version] = AppStatus(version, version, Phase.SYNCED)
    return found


@dataclass(frozen=True)
class EnvOutcome:
    environment: str
    phase: Phase
    message: str
    applications: Mapping[str, AppStatus]
    audit: tuple[dict[str, Any], ...] = ()
    changed: bool = False  # something was written to a target
    transient: bool = False  # the failure may pass: retry with backoff
    plans: tuple[UnitPlan, ...] = ()  # what was to change (create, update, delete), without the rendered files
    duration: float = 0.0
    drifted: int = 0  # applications found drifted
    changes: int = 0  # audit entries made, once the controller has taken them (``audit`` is then empty)
    stalled: bool = False  # a permanent error or invalid input: not retried until the inputs change or a trigger
    retry_after: float | None = None  # the longest delay a temporary error asked for
    holds: frozenset[str] = frozenset()  # the kinds of policy holds that block applications (freeze, signature...)
    # what the audit entries said, kept once the controller has taken them (notifications)
    touched: tuple[str, ...] = ()  # applications changed on a target, drift repairs aside
    repaired: tuple[str, ...] = ()  # applications whose drift was repaired
    overrides: tuple[str, ...] = ()  # the overrides used ("promotion: why")


@dataclass(frozen=True)
class Classified:
    """How a set of errors decides what happens next."""

    transient: bool
    stalled: bool
    retry_after: float | None


def classify(errors: Iterable[BaseException]) -> Classified:
    """Any error that is not a :class:`PermanentError` may pass (transient); only permanent ones: stalled."""
    found = list(errors)
    transient = any(not isinstance(e, PermanentError) for e in found)
    delays = [e.delay for e in found if isinstance(e, TemporaryError)]
    return Classified(transient, bool(found) and not transient, max(delays) if delays else None)


def safe_message(exc: BaseException) -> str:
    """An error's text as shown in status and audit (the controller's own errors are safe to show)."""
    if isinstance(exc, ReconcilerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def summary(statuses: Mapping[str, AppStatus]) -> str:
    """An environment's message: its first problem (and how many more), or how many applications are in sync."""
    problems = [f"{a}: {s.message}" for a, s in statuses.items() if s.phase is not Phase.SYNCED and s.message]
    if problems:
        return problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
    return f"{len(statuses)} application{'s' if len(statuses) != 1 else ''} in sync"


def effects(entries: Iterable[Mapping[str, Any]]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """From an environment's audit entries: the applications changed (drift repairs aside), the applications whose
    drift was repaired, the overrides used; only effects that succeeded count."""
    done = [e for e in entries if e.get("result") == "succeeded"]
    touched = tuple(dict.fromkeys(str(e["application"]) for e in done if e.get("trigger") != "drift"))
    repaired = tuple(dict.fromkeys(str(e["application"]) for e in done if e.get("trigger") == "drift"))
    overrides = tuple(dict.fromkeys(str(e["override"]) for e in done if e.get("override")))
    return touched, repaired, overrides
