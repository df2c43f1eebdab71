"""Governance at apply time: the facts each attempt's verdicts are computed from, and the order of waves.

For every attempt at an environment (first try, retry, restart, drift repair, trigger), :meth:`Governance.facts`
gathers what the pure verdicts of :mod:`reconciler.core.decide` read: the clock, which version ran where since
when (the audit trail), the verified signatures of the commits that introduced the environment's desired state
(``git verify-commit`` against the operator's allowed signers; cached per commit id) and the signature of the
revision being applied when it carries ``Freeze-Override:`` / ``Promotion-Override:`` trailers. The decision
itself is taken in the reconcile, after observing, from these facts. :meth:`Governance.wave_gate` orders the
work into waves. Called by the controller.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from reconciler.core.config import ControllerConfig
from reconciler.core.decide import FREEZE_OVERRIDE, PROMOTION_OVERRIDE, Facts
from reconciler.core.model import Environment, ReleasesRepo
from reconciler.core.operations import Suspensions
from reconciler.core.plan import Phase
from reconciler.core.policy import Signature, Stint, extend_history
from reconciler.core.problems import ReconcilerError


class _HistoryView(Mapping[tuple[str, str], tuple[Stint, ...]]):
    """Governance's history as the verdicts read it from worker threads: each lookup a copy, under the lock."""

    def __init__(self, gov: Governance) -> None:
        self._gov = gov

    def __getitem__(self, key: tuple[str, str]) -> tuple[Stint, ...]:
        with self._gov._lock:
            return tuple(self._gov.history[key])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        with self._gov._lock:
            return iter(list(self._gov.history))

    def __len__(self) -> int:
        return len(self._gov.history)


class Governance:
    def __init__(self, config: ControllerConfig, source: Any) -> None:
        self.config = config
        self.source = source
        self.history: dict[tuple[str, str], list[Stint]] = {}  # (env, app) -> stints, oldest first
        self._lock = threading.Lock()  # workers read the history while the controller extends it
        self.suspensions: Suspensions = {}  # replaced whole (never mutated) when an operator suspends or resumes

    # --- facts ---------------------------------------------------------------------------------------------------
    def learn(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Remember which version ran where from when to when (from audit entries, in time order)."""
        with self._lock:
            extend_history(self.history, entries)

    # --- signatures -------------------------------------------------------------------------------------------------
    def _signatures(self, repo: ReleasesRepo, env: Environment, since: str | None, head: str) -> list[Signature]:
        from reconciler.source.history import change_authors, commits_touching, verify_signature

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
        found = [verify_signature(self.source, c, self.config.allowed_signers) for c in commits]
        if repo.teams:  # four-eyes: who wrote what each signer approved
            found = [replace(s, authors=change_authors(self.source, s.commit)) for s in found]
        return found

    def _ownership(
        self, repo: ReleasesRepo, env: Environment, since: str | None, head: str
    ) -> dict[str, tuple[Signature, ...]]:
        """Per desired application, the commits that changed it since ``since``: what the ownership rule reads."""
        from reconciler.source.history import application_changes

        stage = repo.stages[env.stage]
        signers = self.config.allowed_signers
        return {app: application_changes(self.source, repo, stage, app, version, since, head, signers)
                for app, version in repo.desired_versions(env).items()}  # fmt: skip

    def head_signature(self, head: str) -> Signature:
        from reconciler.source.history import verify_signature

        return verify_signature(self.source, head, self.config.allowed_signers)

    # --- facts for one attempt ------------------------------------------------------------------------------------
    def facts(self, repo: ReleasesRepo, env: Environment, head: str, trailers: Mapping[str, str],
              applied_revision: str | None, now: float) -> Facts:  # fmt: skip
        """Everything the verdicts of one attempt at ``env`` read beyond the model and the live state: the clock,
        the audit trail's history, the signatures of the commits that introduced the environment's desired state
        since ``applied_revision`` (protected stages; verified per commit id, so a retry costs no git call), and
        the signature of the revision being applied when it carries overrides. Gathered for every attempt."""
        stage = repo.stages.get(env.stage)
        signatures: tuple[Signature, ...] | None = ()
        if stage is not None and stage.protected:
            try:
                signatures = tuple(self._signatures(repo, env, applied_revision, head))
            except ReconcilerError as exc:
                signatures = (Signature(head, False, detail=str(exc)),)
        overriding = any(trailers.get(t) for t in (FREEZE_OVERRIDE, PROMOTION_OVERRIDE))
        head_signature = self.head_signature(head) if overriding else None
        ownership, unverified = None, ""
        if stage is not None and stage.owner_approval and repo.teams:
            try:
                ownership = self._ownership(repo, env, applied_revision, head)
            except ReconcilerError as exc:  # not verified: every change in the stage is held, saying why
                unverified = str(exc)
        return Facts(datetime.fromtimestamp(now, UTC), _HistoryView(self), signatures, head_signature, dict(trailers),
                     self.suspensions, ownership, unverified)  # fmt: skip

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
