"""Sync tasks as data: what one environment's reconcile will do, and why, before anything is done. Pure.

:func:`plan_tasks` turns the paired plans (desired beside live, :func:`reconciler.core.plan.pair`), the verdicts
of :mod:`reconciler.core.decide`, the dependency order and the stage's self-heal setting into a list of typed
:class:`Task`: ``apply`` and ``prune`` (effects), ``hold`` (a verdict or a requirement holds the change: Blocked;
the empty-set guard: OutOfSync), ``wait`` (a dependency is held: Progressing), ``report`` (drift that self-heal
may not repair: OutOfSync) and ``check`` (nothing to do: look at health). The engine's executor only runs them, in
order, and records one audit entry per effect. Dependencies that fail at run time turn an ``apply`` into a wait
there; everything that can be decided before acting is decided here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from reconciler.core.decide import ALLOWED, AppVerdict
from reconciler.core.plan import Action, Phase, UnitPlan, apply_order


class TaskKind(StrEnum):
    APPLY = "apply"
    PRUNE = "prune"
    HOLD = "hold"
    WAIT = "wait"
    REPORT = "report"
    CHECK = "check"


@dataclass(frozen=True)
class Task:
    kind: TaskKind
    application: str
    reason: str = ""
    plans: tuple[UnitPlan, ...] = ()  # apply: the units to apply; prune: the units to remove
    after: tuple[str, ...] = ()  # apply: applications that must be ready first (dependsOn, requires)
    desired: str | None = None
    live: str | None = None
    override: str | None = None  # apply: the audited override that lifted a hold
    units: tuple[UnitPlan, ...] = ()  # apply, check: every desired unit of the application (health)
    holds: tuple[str, ...] = ()  # hold: the kinds of the verdict's holds (freeze, promotion, signature, ...)

    @property
    def phase(self) -> Phase:
        """The phase a task that is not an effect gives its application."""
        return {
            TaskKind.HOLD: Phase.BLOCKED,
            TaskKind.WAIT: Phase.PROGRESSING,
            TaskKind.REPORT: Phase.OUT_OF_SYNC,
        }.get(self.kind, Phase.SYNCED)


def is_drift_repair(plan: UnitPlan) -> bool:
    """A repair back to exactly what was applied (the live record's fingerprint is the desired one)."""
    return (
        plan.action is Action.UPDATE
        and plan.reason.startswith("drift")
        and plan.live is not None
        and plan.desired is not None
        and plan.live.fingerprint == plan.desired.fingerprint
    )


Requirement = Callable[[str, str, Mapping[str, str | None]], str | None]  # (app, version, live) -> why held


@dataclass(frozen=True)
class Inputs:
    """What the planner reads besides the plans: all plain values."""

    desired: Mapping[str, str]  # application -> version desired in the environment
    verdicts: Mapping[str, AppVerdict]
    depends: Mapping[str, tuple[str, ...]]  # application -> what must be applied first
    self_heal: bool
    requirement: Requirement  # why a release's ``requires`` are not met by the (projected) live versions


def plan_tasks(plans: list[UnitPlan], inputs: Inputs) -> list[Task]:
    """Every task of one environment's reconcile, applies in dependency order, prunes last (reverse order)."""
    by_app: dict[str, list[UnitPlan]] = {}
    for plan in plans:
        by_app.setdefault(plan.application, []).append(plan)
    live: dict[str, str | None] = {
        p.application: p.live.version for p in plans if p.live is not None and not p.live.drifted
    }
    not_ready: set[str] = set()
    tasks: list[Task] = []
    prunes: list[Task] = []
    for app in apply_order(by_app, inputs.depends):
        task, prune = _app_tasks(app, by_app[app], inputs, live, not_ready)
        if task is not None:
            tasks.append(task)
            if task.kind in (TaskKind.HOLD, TaskKind.WAIT):
                not_ready.add(app)
            elif task.kind in (TaskKind.APPLY, TaskKind.CHECK):
                live[app] = task.desired  # what later applications may count on, if this one succeeds
        if prune is not None:
            prunes.append(prune)
    return tasks + list(reversed(prunes))


def _app_tasks(
    app: str, plans: list[UnitPlan], inputs: Inputs, live: Mapping[str, str | None], not_ready: set[str]
) -> tuple[Task | None, Task | None]:
    """The task for one application (``None``: it is only pruned) and its prune task, if any: a change that is
    held (or waits, or is only reported) holds the application's prunes too."""
    desired = inputs.desired.get(app)
    running = next((p.live.version for p in plans if p.live and p.live.version), None)
    removals = tuple(p for p in plans if p.action is Action.REMOVE)
    prune = Task(TaskKind.PRUNE, app, "no longer desired", removals, live=running) if removals else None
    verdict = inputs.verdicts.get(app, ALLOWED)
    if desired is None:
        held = [p for p in plans if p.action is Action.HOLD]
        if held:
            return Task(TaskKind.REPORT, app, held[0].reason, live=running), None
        if prune is not None and not verdict.allowed:
            kinds = tuple(str(h.kind) for h in verdict.holds)
            return Task(TaskKind.HOLD, app, f"removal held: {verdict.reason}", live=running, holds=kinds), None
        return None, replace(prune, override=verdict.override) if prune is not None else None
    pending = tuple(p for p in plans if p.action in (Action.CREATE, Action.UPDATE))
    base = Task(TaskKind.HOLD, app, desired=desired, live=running)
    units = tuple(p for p in plans if p.desired is not None)
    if not pending and prune is None:
        return Task(TaskKind.CHECK, app, desired=desired, live=running, units=units), None
    repairs_only = prune is None and all(is_drift_repair(p) for p in pending)
    if not verdict.allowed and not (verdict.drift_repair and repairs_only):
        return replace(_with(base, verdict.reason), holds=tuple(str(h.kind) for h in verdict.holds)), None
    unmet = inputs.requirement(app, desired, live)
    if unmet is not None:
        return replace(_with(base, unmet), holds=("requires",)), None
    waiting = [d for d in inputs.depends.get(app, ()) if d in not_ready]
    if waiting:
        return _with(base, f"waiting for {', '.join(waiting)}", TaskKind.WAIT), None
    if repairs_only and not inputs.self_heal:
        drift = "; ".join(f"drift on {p.target} ({p.reason})" for p in pending)
        return _with(base, f"{drift}; selfHeal is off", TaskKind.REPORT), None
    if not pending:
        return Task(TaskKind.CHECK, app, desired=desired, live=running, units=units), prune
    reason = "; ".join(f"{p.target}: {p.reason}" for p in pending)
    after = tuple(inputs.depends.get(app, ()))
    return Task(TaskKind.APPLY, app, reason, pending, after, desired, running, verdict.override, units), prune


def _with(task: Task, reason: str, kind: TaskKind = TaskKind.HOLD) -> Task:
    return Task(kind, task.application, reason, desired=task.desired, live=task.live)
