"""The executor: runs one environment's sync tasks in order and records one audit entry per effect.

Every effect is journalled (:mod:`reconciler.status.journal`) before it is made: the task list is announced in one
durable write (an effect that cannot be announced is not made: the environment fails, transient), each effect is
marked started just before the driver call and its final entry written after it; announced effects that were not
made are dropped. A crash at any point leaves each effect's entry in the journal, and the controller pushes it
exactly once (by id) after a restart.

It decides nothing that :func:`reconciler.core.tasks.plan_tasks` could decide before acting: it applies and
prunes through drivers, turns an apply into a wait when a dependency failed at run time, stops when this replica
lost the environment's lease, asks drivers for health, and classifies the errors it met (which decides retry).
Called by :func:`reconciler.engine.reconcile.reconcile_environment`, in a worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from reconciler.core.audit import AuditEntry
from reconciler.core.desired import DesiredUnit
from reconciler.core.plan import Action, Phase, UnitPlan, worst_phase
from reconciler.core.state import Health, worst
from reconciler.core.tasks import Requirement, Task, TaskKind, is_drift_repair
from reconciler.drivers.base import health_is_observed
from reconciler.engine.outcome import HEALTH_PHASE, AppStatus, EnvOutcome, classify, safe_message, summary, synced
from reconciler.engine.targets import DriverPool
from reconciler.secrets.units import redact
from reconciler.status.journal import AuditJournal, JournalError, new_id


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Context:
    """What the executor needs to know of the attempt (for the audit trail and the lease)."""

    environment: str
    stage: str
    revision: str
    author: str = ""
    committer: str = ""
    trigger: str = "revision"
    signer: str = ""
    replica: str = ""
    dry_run: bool = False
    check_drift: bool = True
    owned: Callable[[], bool] | None = None
    requirement: Requirement | None = None  # why a release's ``requires`` are not met by the live versions
    clock: Callable[[], float] = time.time  # the controller's clock: audit times (and so soak) follow it
    journal: AuditJournal | None = None  # effects are journalled before they are made (crash-safe audit)
    rollbacks: frozenset[str] = frozenset()  # applications the revision rolls back here (its Rollback: trailer)
    signer_team: str = ""  # the Teams of the signer (audited beside it)
    # SOPS files decrypted at the last moment, with the plaintext values to mask (reconciler.secrets.units)
    decrypt: Callable[[DesiredUnit], tuple[DesiredUnit, tuple[str, ...]]] | None = None


@dataclass
class Run:
    """The mutable record of one execution."""

    ctx: Context
    pool: DriverPool
    statuses: dict[str, AppStatus] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    not_ready: set[str] = field(default_factory=set)
    live: dict[str, str | None] = field(default_factory=dict)  # versions live now (as the applies go)
    holds: set[str] = field(default_factory=set)
    begun: dict[tuple[str, str], AuditEntry] = field(default_factory=dict)  # announced, not recorded yet
    changed: bool = False
    drifted: int = 0
    lease_lost: bool = False

    def entry(self, task: Task, plan: UnitPlan, action: str, start: str, ident: str | None = None) -> AuditEntry:
        return AuditEntry(
            id=ident or new_id(), time=start, start=start, end=None, revision=self.ctx.revision,
            author=self.ctx.author, committer=self.ctx.committer, environment=self.ctx.environment,
            stage=self.ctx.stage, application=plan.application, target=plan.target,
            action="rollback" if action == "update" and plan.application in self.ctx.rollbacks else action,
            from_version=plan.from_version, to_version=plan.to_version, result=None,
            trigger="drift" if plan.reason.startswith("drift") else self.ctx.trigger,
            signer=self.ctx.signer or None, override=task.override, replica=self.ctx.replica or None, message="",
            signer_team=self.ctx.signer_team or None,
        )  # fmt: skip

    def starting(self, plan: UnitPlan) -> None:
        begun = self.begun.get((plan.application, plan.target))
        if begun is not None and self.ctx.journal is not None:
            self.ctx.journal.start(begun.id)

    def record(self, task: Task, plan: UnitPlan, action: str, result: str, message: str, start: str) -> None:
        if self.ctx.dry_run:
            return
        begun = self.begun.pop((plan.application, plan.target), None) if action != "adopt" else None
        base = begun or self.entry(task, plan, action, start)
        entry = replace(base, time=iso(self.ctx.clock()), start=start, end=iso(self.ctx.clock()), result=result,
                        message=message).as_dict()  # fmt: skip
        self.audit.append(entry)
        if self.ctx.journal is not None:
            self.ctx.journal.end(entry)

    def owns(self) -> bool:
        if self.ctx.owned is not None and not self.ctx.owned():
            self.lease_lost = True
            self.errors.append(LeaseLost())
            return False
        return True


class LeaseLost(Exception):
    """This replica lost the environment's lease mid-reconcile (transient: the owner takes over)."""


def execute(
    ctx: Context,
    pool: DriverPool,
    tasks: list[Task],
    plans_live: list[UnitPlan],
    plans: tuple[UnitPlan, ...],
    duration: float,
) -> EnvOutcome:
    """Run ``tasks`` and build the environment's outcome (``plans_live``: the paired plans, for what is live;
    ``plans``: the light plans the outcome keeps)."""
    run = Run(ctx, pool)
    run.live = {p.application: p.live.version for p in plans_live if p.live is not None and not p.live.drifted}
    try:
        _announce(run, tasks)
    except JournalError as exc:  # an effect that could not be journalled must not be made
        return _unjournalled(ctx, plans_live, exc, duration)
    for task in tasks:
        if task.kind is TaskKind.APPLY:
            _apply(run, task)
        elif task.kind is TaskKind.PRUNE:
            _prune(run, task)
        elif task.kind is TaskKind.CHECK:
            _settle(run, task)
        else:
            run.statuses[task.application] = AppStatus(task.desired, task.live, task.phase, task.reason)
            run.holds.update(task.holds)
            if task.kind is not TaskKind.REPORT:
                run.not_ready.add(task.application)
            elif task.desired is not None:
                run.drifted += 1  # drift that self-heal may not repair
    if run.begun and ctx.journal is not None:  # announced, then not made (a dependency failed): no entry
        ctx.journal.drop([e.id for e in run.begun.values()])
    phase = worst_phase(s.phase for s in run.statuses.values())
    classified = classify(run.errors)
    failed = phase is Phase.FAILED
    return EnvOutcome(
        ctx.environment,
        phase,
        summary(run.statuses),
        dict(sorted(run.statuses.items())),
        tuple(run.audit),
        run.changed,
        classified.transient and failed,
        plans,
        duration,
        run.drifted,
        stalled=classified.stalled and failed,
        retry_after=classified.retry_after if failed else None,
        holds=frozenset(run.holds),
    )


def _announce(run: Run, tasks: list[Task]) -> None:
    """Journal every effect the tasks may make, in one durable write, before the first is made."""
    if run.ctx.dry_run or run.ctx.journal is None:
        return
    start = iso(run.ctx.clock())
    for task in tasks:
        if task.kind in (TaskKind.APPLY, TaskKind.PRUNE):
            for plan in task.plans:
                action = "remove" if task.kind is TaskKind.PRUNE else str(plan.action)
                run.begun[(plan.application, plan.target)] = run.entry(task, plan, action, start)
    if run.begun:
        run.ctx.journal.begin([e.as_dict() for e in run.begun.values()])


def _unjournalled(ctx: Context, plans: list[UnitPlan], exc: JournalError, duration: float) -> EnvOutcome:
    message = f"nothing applied: {exc}"
    apps = {p.application: AppStatus(p.to_version, p.from_version, Phase.FAILED, message) for p in plans}
    return EnvOutcome(ctx.environment, Phase.FAILED, message, apps, transient=True, duration=duration,
                      retry_after=exc.delay)  # fmt: skip


def _apply(run: Run, task: Task) -> None:
    app = task.application
    unmet = run.ctx.requirement(app, task.desired, run.live) if run.ctx.requirement and task.desired else None
    if unmet is not None:  # what it requires failed to go live in this reconcile
        run.statuses[app] = AppStatus(task.desired, task.live, Phase.BLOCKED, unmet)
        run.holds.add("requires")
        run.not_ready.add(app)
        return
    waiting = [d for d in task.after if d in run.not_ready]
    if waiting:
        run.statuses[app] = AppStatus(task.desired, task.live, Phase.PROGRESSING, f"waiting for {', '.join(waiting)}")
        run.not_ready.add(app)
        return
    if all(is_drift_repair(p) for p in task.plans):
        run.drifted += 1
    for plan in task.plans:
        assert plan.desired is not None
        if not run.owns():
            _fail(run, task, "stopped: this replica lost the environment's lease")
            return
        start = iso(run.ctx.clock())
        run.starting(plan)
        secrets: tuple[str, ...] = ()
        try:
            unit = plan.desired
            if run.ctx.decrypt is not None:  # the only place plaintext exists: on its way to the target
                unit, secrets = run.ctx.decrypt(unit)
            result = run.pool.get(plan.target).apply(unit, dry_run=run.ctx.dry_run)
        except Exception as exc:  # noqa: BLE001 - per application: report, let independent applications go on
            run.errors.append(exc)
            message = redact(safe_message(exc), secrets)
            run.record(task, plan, str(plan.action), "failed", message, start)
            _fail(run, task, f"{plan.target}: {message}")
            return
        run.changed = run.changed or (result.changed and not run.ctx.dry_run)
        run.record(task, plan, str(plan.action), "succeeded", redact(result.message or plan.reason, secrets), start)
        if result.adopted:  # objects that existed and were not ours, taken over on the application's opt-in
            run.record(task, plan, "adopt", "succeeded", f"adopted {', '.join(result.adopted)}", start)
    if run.ctx.dry_run:
        would = "; ".join(f"{p.action} {p.target}: {p.reason}" for p in task.plans)
        run.statuses[app] = AppStatus(task.desired, task.live, Phase.OUT_OF_SYNC, would)
        run.live[app] = task.desired  # what the plan would make live
        return
    _settle(run, task)


def _fail(run: Run, task: Task, message: str) -> None:
    run.statuses[task.application] = AppStatus(task.desired, task.live, Phase.FAILED, message)
    run.not_ready.add(task.application)


def _settle(run: Run, task: Task) -> None:
    """The application's status from its health (after an apply, or when there was nothing to do)."""
    health, messages = Health.HEALTHY, []
    try:
        for plan in task.units:
            driver = run.pool.get(plan.target)
            if health_is_observed(driver) and (plan.action is not Action.UNCHANGED or run.ctx.check_drift):
                continue  # just applied, or just observed in full: what health would look at is known
            report = driver.health(run.ctx.environment, task.application)
            health = worst(health, report.status)
            if report.message and report.status is not Health.HEALTHY:
                messages.append(f"{plan.target}: {report.message}")
    except Exception as exc:  # noqa: BLE001 - isolate this failure
        run.errors.append(exc)
        health, messages = Health.UNKNOWN, [f"health: {safe_message(exc)}"]
    phase = HEALTH_PHASE[health]
    if phase is not Phase.SYNCED:
        run.not_ready.add(task.application)
    message = "; ".join(messages)
    run.statuses[task.application] = (
        synced(task.desired)
        if phase is Phase.SYNCED and not message
        else AppStatus(task.desired, task.desired, phase, message)
    )
    run.live[task.application] = task.desired


def _prune(run: Run, task: Task) -> None:
    for plan in reversed(task.plans):
        if plan.action is not Action.REMOVE:
            continue
        if not run.owns():
            run.statuses[plan.application] = AppStatus(
                None, plan.from_version, Phase.FAILED, "lease lost: prune skipped"
            )
            continue
        start = iso(run.ctx.clock())
        run.starting(plan)
        try:
            result = run.pool.get(plan.target).remove(run.ctx.environment, plan.application, dry_run=run.ctx.dry_run)
        except Exception as exc:  # noqa: BLE001 - isolate this failure
            run.errors.append(exc)
            prior = run.statuses.get(plan.application)
            run.statuses[plan.application] = AppStatus(
                prior.desired if prior else None, plan.from_version, Phase.FAILED, f"prune: {safe_message(exc)}"
            )
            run.record(task, plan, "remove", "failed", safe_message(exc), start)
            continue
        run.changed = run.changed or (result.changed and not run.ctx.dry_run)
        if run.ctx.dry_run and plan.application not in run.statuses:
            run.statuses[plan.application] = AppStatus(None, plan.from_version, Phase.OUT_OF_SYNC, "would be removed")
        run.record(task, plan, "remove", "succeeded", result.message or "pruned", start)
