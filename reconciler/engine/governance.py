"""Governance at apply time: which changes may go where now, and in which order (waves).

For every environment with work, :meth:`Governance.holds` asks the pure policies of
:mod:`reconciler.core.policy` whether each application's change may be applied now: freeze windows, promotion
(``promotesFrom`` + soak, from what the status branch and the audit trail say ran where since when), signatures
for protected stages (every commit that introduced the change, checked by ``git verify-commit`` against the
operator's allowed signers) and explicit, audited overrides (``Freeze-Override:`` / ``Promotion-Override:``
trailers in a commit signed by an allowed key). :meth:`Governance.rounds` orders the work into waves.
Called by the controller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.core.config import ControllerConfig
from reconciler.core.model import Environment, ReleasesRepo
from reconciler.core.plan import Phase
from reconciler.core.policy import (
    FREEZE_OVERRIDE,
    PROMOTION_OVERRIDE,
    Signature,
    Stint,
    extend_history,
    freeze_hold,
    promotion_hold,
    signature_hold,
)
from reconciler.core.problems import ReconcilerError


@dataclass(frozen=True)
class Decision:
    """Per application: a hold (reason, drift repair still allowed) and what the audit should say."""

    holds: Mapping[str, tuple[str, bool]] = field(default_factory=dict)
    signer: str = ""
    overrides: Mapping[str, str] = field(default_factory=dict)  # application -> "freeze: why" / "promotion: why"


class Governance:
    def __init__(self, config: ControllerConfig, source: Any) -> None:
        self.config = config
        self.source = source
        self.history: dict[tuple[str, str], list[Stint]] = {}  # (env, app) -> stints, oldest first

    # --- facts ---------------------------------------------------------------------------------------------------
    def learn(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Remember which version ran where from when to when (from audit entries, in time order)."""
        extend_history(self.history, entries)

    # --- signatures -------------------------------------------------------------------------------------------------
    def _signatures(self, repo: ReleasesRepo, env: Environment, since: str | None, head: str) -> list[Signature]:
        from reconciler.source.history import commits_touching, verify_signature

        paths = {env.origin.path}
        stage = repo.stages.get(env.stage)
        if stage is not None:
            paths.add(stage.origin.path)
        for app, version in repo.desired_versions(env).items():
            application, release = repo.applications.get(app), repo.releases.get((app, version))
            if application is not None:
                paths.add(application.origin.path)
                paths.update(t for c in application.components for t in c.templates)
            if release is not None:
                paths.add(release.origin.path)
        commits = commits_touching(self.source, since, head, tuple(sorted(paths)))
        return [verify_signature(self.source, c, self.config.allowed_signers) for c in commits]

    def head_signature(self, head: str) -> Signature:
        from reconciler.source.history import verify_signature

        return verify_signature(self.source, head, self.config.allowed_signers)

    # --- decisions ---------------------------------------------------------------------------------------------------
    def decide(
        self,
        repo: ReleasesRepo,
        env: Environment,
        head: str,
        trailers: Mapping[str, str],
        applied_revision: str | None,
        inputs_changed: bool,
        live: Mapping[str, str | None],
        now: float,
    ) -> Decision:
        moment = datetime.fromtimestamp(now, UTC)
        stage = repo.stages.get(env.stage)
        holds: dict[str, tuple[str, bool]] = {}
        overrides: dict[str, str] = {}
        signer = ""
        sig_reason: str | None = None
        if stage is not None and stage.protected and inputs_changed:
            try:
                signatures = self._signatures(repo, env, applied_revision, head)
            except ReconcilerError as exc:
                signatures = [Signature(head, False, detail=str(exc))]
            hold = signature_hold(True, signatures)
            sig_reason = str(hold) if hold else None
            signer = ", ".join(dict.fromkeys(s.signer for s in signatures if s.good and s.signer))
        overriding: dict[str, str] = {}
        for trailer, kind in ((FREEZE_OVERRIDE, "freeze"), (PROMOTION_OVERRIDE, "promotion")):
            why = trailers.get(trailer)
            if why:
                overriding[kind] = why
        if overriding and not self.head_signature(head).good:
            overriding = {}  # an override counts only in a commit signed by an allowed key
        for app, version in repo.desired_versions(env).items():
            running = live.get(app)
            changing = running is not None and running != version  # a first install is not a promotion
            frozen = freeze_hold(repo, env, app, moment)
            if frozen is not None:
                hold, drift_ok = frozen
                if "freeze" in overriding:
                    overrides[app] = f"freeze: {overriding['freeze']}"
                else:
                    holds[app] = (str(hold), drift_ok)
                    continue
            if changing:
                promo = promotion_hold(repo, env, app, version, self.history, moment)
                if promo is not None:
                    if "promotion" in overriding:
                        overrides[app] = f"promotion: {overriding['promotion']}"
                    else:
                        holds[app] = (str(promo), True)
                        continue
            if sig_reason is not None:
                holds[app] = (sig_reason, True)
        return Decision(holds, signer, overrides)

    # --- waves ----------------------------------------------------------------------------------------------------
    @staticmethod
    def rank(repo: ReleasesRepo, env: Environment) -> int:
        stage = repo.stages.get(env.stage)
        wave = repo.wave_of(env)
        if stage is None or wave is None:
            return 0
        return next((i for i, w in enumerate(stage.waves) if w.name == wave), 0)

    @staticmethod
    def wave_gate(repo: ReleasesRepo, env: Environment, rank: int, phases: Mapping[str, Phase | None]) -> str | None:
        """Why ``env`` (in wave ``rank`` of its stage) must wait, or ``None`` when earlier waves are done."""
        stage = repo.stages.get(env.stage)
        if stage is None or rank == 0:
            return None
        for earlier in range(rank):
            wave = stage.waves[earlier]
            members = [e for e in repo.environments.values()
                       if e.stage == env.stage and Governance.rank(repo, e) == earlier]  # fmt: skip
            failing = [e.name for e in members if phases.get(e.name) in (Phase.FAILED, Phase.DEGRADED, Phase.INVALID)]
            if failing:
                return f"rollout stopped: wave {wave.name} has failures ({', '.join(failing[:3])})"
            # a policy hold (Blocked) does not stop a rollout: the same hold applies to the later waves
            pending = [e.name for e in members if phases.get(e.name) not in (Phase.SYNCED, Phase.BLOCKED)]
            if pending:
                return f"waiting for wave {wave.name} ({', '.join(pending[:3])} not Synced yet)"
        return None
