"""Scheduling: which environments are due this cycle, how an outcome sets the next attempt, and waves.

Per environment the scheduler keeps an :class:`EnvState`. An environment is due when its inputs changed (at once,
whatever the backoff), when a drift check is due and it was Synced, or, otherwise, when its retry time has come
or someone triggered it. The outcome's class decides the retry (see docs/DESIGN.md, "Retry policy"): Synced
resets; invalid input and permanent errors *stall* (no retry until the inputs change or a manual trigger, kept
across restarts); transient failures back off exponentially, at least by the delay the error carried; policy
holds and unfinished rollouts are looked at again after ``backoff.initial``. Waves order a stage's rollout.
Owned by the controller.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.config import ControllerConfig
from reconciler.core.plan import Phase
from reconciler.engine.governance import Governance
from reconciler.engine.outcome import EnvOutcome
from reconciler.engine.reconcile import Job
from reconciler.engine.revision import Loaded


@dataclass
class EnvState:
    input_key: str | None = None  # inputs of the last reconcile that ended Synced
    attempted_key: str | None = None  # inputs of the last attempt
    phase: Phase | None = None
    applied_revision: str | None = None
    attempted_revision: str | None = None
    failures: int = 0
    retry_at: float = 0.0
    stalled: bool = False  # invalid input or a permanent error: waits for new inputs or a trigger
    holds: frozenset[str] = frozenset()  # kinds of the policy holds of the last outcome (metrics)
    doc: dict[str, Any] | None = None
    doc_identity: str | None = None


@dataclass(frozen=True)
class Due:
    """Whether an environment runs this cycle, and how."""

    due: bool
    changed: bool = False  # new desired state
    settled: bool = False  # Synced with unchanged inputs: this is a drift check


@dataclass
class Scheduler:
    config: ControllerConfig
    states: dict[str, EnvState] = field(default_factory=dict)

    def state(self, name: str) -> EnvState:
        return self.states.setdefault(name, EnvState())

    def due(self, name: str, key: str, now: float, drift_due: bool, manual: bool) -> Due:
        state = self.state(name)
        changed = key != state.attempted_key  # new desired state: act now, whatever the backoff
        settled = not changed and state.phase is Phase.SYNCED
        if changed or state.phase is None:
            return Due(True, changed, settled)
        if settled:
            return Due(drift_due, changed, settled)
        # failed, blocked, progressing...: again when the backoff allows, or when asked to (stalled: only asked)
        return Due(manual or now >= state.retry_at, changed, settled)

    def record(self, loaded: Loaded, outcomes: Mapping[str, EnvOutcome], keys: Mapping[str, str], now: float,
               dry_run: bool) -> None:  # fmt: skip
        """Take the cycle's outcomes: revisions attempted and applied, and when each environment runs next."""
        for name, outcome in outcomes.items():
            state = self.state(name)
            state.phase = outcome.phase
            state.holds = outcome.holds
            key = keys.get(name)
            new_inputs = key is not None and key != state.attempted_key
            if new_inputs or state.attempted_revision is None:
                state.attempted_revision = loaded.revision
            applied = (outcome.changed or outcome.phase in (Phase.SYNCED, Phase.PROGRESSING, Phase.DEGRADED)) and (
                not dry_run
            )
            if applied and (outcome.changed or new_inputs or state.applied_revision is None):
                state.applied_revision = loaded.revision
            if key is not None and not dry_run:
                state.attempted_key = key
            self._next_attempt(state, outcome, key is not None and not dry_run, now)

    def _next_attempt(self, state: EnvState, outcome: EnvOutcome, keyed: bool, now: float) -> None:
        state.stalled = False
        if outcome.phase is Phase.SYNCED and keyed:
            state.input_key = state.attempted_key
            state.failures = 0
            state.retry_at = 0.0
        elif outcome.stalled or outcome.phase is Phase.INVALID:
            # invalid input or a permanent error: not retried until the inputs change or someone triggers it
            state.failures += 1
            state.stalled = True
            state.retry_at = math.inf
        elif outcome.phase is Phase.FAILED or outcome.transient:
            state.failures += 1
            delay = min(self.config.backoff_initial * 2 ** (state.failures - 1), self.config.backoff_max)
            delay = max(delay * random.uniform(0.9, 1.1), outcome.retry_after or 0.0)  # honour Retry-After
            state.retry_at = now + delay
        else:  # Progressing/Degraded/Blocked/OutOfSync: look again when the backoff allows
            state.retry_at = now + self.config.backoff_initial

    def restore(self, doc: dict[str, Any], identity: str) -> None:
        """Seed an environment's state from its status document (after a restart)."""
        state = self.state(doc["environment"])
        state.doc, state.doc_identity = doc, identity
        state.applied_revision = doc.get("lastAppliedRevision")
        digest = doc.get("desiredDigest")
        state.input_key = state.attempted_key = digest if isinstance(digest, str) else None
        attempted = doc.get("attemptedDigest")
        if isinstance(attempted, str):
            state.attempted_key = attempted
        state.attempted_revision = doc.get("lastAttemptedRevision")
        phase = doc.get("phase")
        state.phase = Phase(phase) if isinstance(phase, str) and phase in set(Phase) else None
        if doc.get("stalled") is True:  # a restart is not a trigger: a stalled environment stays stalled
            state.stalled, state.retry_at = True, math.inf


RunBatch = Callable[[list[tuple[Job, str]]], dict[str, EnvOutcome]]


def run_in_waves(gov: Governance, sched: Scheduler, loaded: Loaded, jobs: list[tuple[Job, str]],
                 run_batch: RunBatch) -> dict[str, EnvOutcome]:  # fmt: skip
    """Run the jobs wave by wave: a stage's wave starts when its earlier waves are Synced, in batches of at most
    ``maxParallel``; a failure stops the rest of that stage's rollout. Stages without waves run in the first
    round, all together."""
    phases: dict[str, Phase | None] = {n: s.phase for n, s in sched.states.items()}
    outcomes: dict[str, EnvOutcome] = {}
    by_rank: dict[int, list[tuple[Job, str]]] = {}
    for job, key in jobs:
        by_rank.setdefault(gov.rank(loaded.repo, job.env), []).append((job, key))
    for rank in sorted(by_rank):
        batches = _batches(gov, sched, loaded, rank, by_rank[rank], phases, outcomes)
        stopped: set[str] = set()  # stages whose rollout stopped in this wave
        for batch_jobs in batches:
            runnable = []
            for job, key in batch_jobs:
                if job.env.stage in stopped:
                    msg = f"rollout stopped: an earlier batch of wave {loaded.repo.wave_of(job.env)} failed"
                    outcomes[job.env.name] = EnvOutcome(job.env.name, Phase.BLOCKED, msg, {})
                else:
                    runnable.append((job, key))
            done = run_batch(runnable) if runnable else {}
            outcomes.update(done)
            for name, outcome in done.items():
                phases[name] = outcome.phase
                stage = loaded.repo.stages.get(loaded.repo.environments[name].stage)
                if outcome.phase in (Phase.FAILED, Phase.DEGRADED) and stage is not None and stage.waves:
                    stopped.add(stage.name)
    return outcomes


Batches = list[list[tuple[Job, str]]]


def _batches(gov: Governance, sched: Scheduler, loaded: Loaded, rank: int, jobs: list[tuple[Job, str]],
             phases: Mapping[str, Phase | None], outcomes: dict[str, EnvOutcome]) -> Batches:  # fmt: skip
    """One wave's jobs in batches of ``maxParallel``; jobs its earlier waves hold get their Blocked outcome."""
    repo = loaded.repo
    batches: Batches = [[]]
    per_wave: dict[str, int] = {}
    for job, key in jobs:
        state = sched.state(job.env.name)
        changed = key != state.attempted_key or state.phase is not Phase.SYNCED  # work beyond a drift check
        reason = gov.wave_gate(repo, job.env, rank, phases) if changed else None
        if reason is not None:
            outcomes[job.env.name] = EnvOutcome(job.env.name, Phase.BLOCKED, reason, {})
            continue
        stage = repo.stages.get(job.env.stage)
        limit = stage.waves[rank].max_parallel if stage and stage.waves else None
        index = per_wave.get(job.env.stage, 0)
        per_wave[job.env.stage] = index + 1
        batch = index // limit if limit and changed else 0
        while len(batches) <= batch:
            batches.append([])
        batches[batch].append((job, key))
    return batches
