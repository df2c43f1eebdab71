"""One environment's reconcile: render -> observe -> pair -> apply in dependency order -> prune -> health.

Called by the controller in a worker thread for every environment that needs work; it touches targets only
through drivers and returns an :class:`EnvOutcome` (phases, messages, audit entries) that the controller turns
into status. Any exception from a driver is caught per application, so one application's failure is reported
and its dependents wait, while independent applications go on. Invalid input (a template that does not render)
stops the whole environment before anything is applied: no partial apply of bad input.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Hashable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

from reconciler.core.desired import DesiredUnit, RenderError, render_unit, targets_of
from reconciler.core.model import Environment, ReleasesRepo
from reconciler.core.plan import Action, Phase, UnitPlan, apply_order, guard_empty, pair, worst_phase
from reconciler.core.policy import requirement_hold
from reconciler.core.problems import PermanentError, ReconcilerError, TemporaryError
from reconciler.core.state import Health, LiveUnit, worst
from reconciler.core.tree import SourceTree
from reconciler.drivers.base import Batch, Driver, observe_environment
from reconciler.engine.targets import DriverPool
from reconciler.status.journal import AuditJournal, JournalError, new_id

HEALTH_PHASE = {
    Health.HEALTHY: Phase.SYNCED,
    Health.PROGRESSING: Phase.PROGRESSING,
    Health.UNKNOWN: Phase.PROGRESSING,
    Health.MISSING: Phase.DEGRADED,
    Health.DEGRADED: Phase.DEGRADED,
}


@dataclass(frozen=True)
class AppStatus:
    desired: str | None
    live: str | None
    phase: Phase
    message: str = ""


_REPLICA = {"identity": ""}


def set_replica_identity(identity: str) -> None:
    """Name this process's controller replica in the audit trail (set once by ``reconciler run``)."""
    _REPLICA["identity"] = identity


def replica_identity() -> str:
    return _REPLICA["identity"]


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
        self._environments: set[str] = set()  # every environment with an entry

    def settled(self, environment: str, token: Hashable) -> Settled | None:
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
        self._environments -= gone

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

    token: Hashable
    wanted: tuple[tuple[str, tuple[str, ...]], ...]  # (target, applications desired there), in observe order
    live: Mapping[tuple[str, str], LiveUnit | None]
    outcome: EnvOutcome


@dataclass(frozen=True)
class Job:
    """Everything one environment's reconcile needs; built by the controller."""

    env: Environment
    repo: ReleasesRepo
    tree: SourceTree
    revision: str
    author: str = ""
    committer: str = ""
    check_drift: bool = True
    dry_run: bool = False
    trigger: str = "revision"
    holds: Mapping[str, tuple[str, bool]] = field(default_factory=dict)  # app -> (policy reason, drift repair ok)
    signer: str = ""  # who signed the commits that introduced the change (protected stages)
    overrides: Mapping[str, str] = field(default_factory=dict)  # app -> audited policy override
    owned: Callable[[], bool] | None = None  # sharding: False once this replica lost the environment's lease
    replica: str = field(default_factory=replica_identity)  # the controller replica running it (audit)
    memo: RenderMemo | None = None  # fingerprints of earlier renders: skip rendering what cannot have changed
    render_tokens: Mapping[str, str] = field(default_factory=dict)  # app -> digest of everything its render reads
    journal: AuditJournal | None = None  # audit entries are journalled before each effect and after it


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _safe(exc: BaseException) -> str:
    if isinstance(exc, ReconcilerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def observed_health(driver: Driver) -> bool:
    """True for drivers whose health is exactly "observed without drift" (``local``): an unchanged unit that a
    drift-checking observe found intact needs no second look."""
    return bool(getattr(driver, "observe_is_health", False))


def _dependencies(repo: ReleasesRepo, app: str, version: str | None) -> tuple[str, ...]:
    """What must be applied before ``app``: its ``dependsOn`` and the applications its release ``requires``."""
    application = repo.applications.get(app)
    release = repo.releases.get((app, version)) if version else None
    deps = list(application.depends_on) if application else []
    deps += [r.application for r in release.requires] if release else []
    return tuple(dict.fromkeys(deps))


def render_desired(
    job: Job, stubs: set[tuple[str, str]] | None = None
) -> tuple[dict[tuple[str, str], DesiredUnit], dict[str, str]]:
    """Desired units by (application, target), and render errors by application.

    With a ``stubs`` set and a memo in the job, a unit whose inputs are unchanged since it was last rendered is
    a stub (no components) and its key is added to ``stubs``: see :func:`realise`.
    """
    units: dict[tuple[str, str], DesiredUnit] = {}
    errors: dict[str, str] = {}
    memo = job.memo if stubs is not None else None
    for app_name, version in job.repo.desired_versions(job.env).items():
        app = job.repo.applications[app_name]
        release = job.repo.releases[(app_name, version)]
        token = job.render_tokens.get(app_name)
        for target in targets_of(job.env, app):
            known = memo.get(job.env.name, app_name, target, token) if memo is not None and token else None
            if known is not None and stubs is not None:
                units[(app_name, target)] = DesiredUnit(job.env.name, app_name, version, target, (), {}, known)
                stubs.add((app_name, target))
                continue
            try:
                unit = units[(app_name, target)] = render_unit(job.repo, job.env, app, release, target, job.tree.read)
            except RenderError as exc:
                errors[app_name] = str(exc.problem)
                continue
            if job.memo is not None and token:
                job.memo.put(unit, token)
    return units, errors


def realise(job: Job, plans: list[UnitPlan], stubs: set[tuple[str, str]]) -> tuple[list[UnitPlan], dict[str, str]]:
    """Render the real unit of every stub that a plan acts on (the others stay stubs: nothing reads their files)."""
    out: list[UnitPlan] = []
    errors: dict[str, str] = {}
    for plan in plans:
        key = (plan.application, plan.target)
        if key in stubs and plan.desired is not None and plan.action in (Action.CREATE, Action.UPDATE):
            app = job.repo.applications[plan.application]
            release = job.repo.releases[(plan.application, plan.desired.version)]
            try:
                unit = render_unit(job.repo, job.env, app, release, plan.target, job.tree.read)
            except RenderError as exc:  # not expected: equal inputs rendered before
                errors[plan.application] = str(exc.problem)
                continue
            plan = replace(plan, desired=unit)
        out.append(plan)
    return out, errors


def _light(plans: list[UnitPlan]) -> tuple[UnitPlan, ...]:
    """The plans that act, without their rendered files: an outcome outlives the reconcile (the cycle report, the
    settled record of a drift check), and a whole fleet's units, or even one stub per unchanged unit, would make the
    controller's memory grow with the fleet. (The applications' statuses say what is in sync.)"""
    return tuple(
        replace(p, desired=replace(p.desired, components=(), parameters={}))
        if p.desired is not None and p.desired.components
        else p
        for p in plans
        if p.action is not Action.UNCHANGED
    )


def _audit_base(job: Job, plan: UnitPlan) -> dict[str, Any]:
    """An effect's audit entry as known before it is made (no result, no end), with its unique id."""
    now = _now()
    return {
        "id": new_id(),
        "time": now,
        "start": now,
        "end": None,
        "revision": job.revision,
        "author": job.author,
        "committer": job.committer,
        "environment": job.env.name,
        "stage": job.env.stage,
        "application": plan.application,
        "target": plan.target,
        "action": str(plan.action),
        "from": plan.from_version,
        "to": plan.to_version,
        "trigger": "drift" if plan.reason.startswith("drift") else job.trigger,
        "signer": job.signer or None,
        "override": job.overrides.get(plan.application),
        "replica": job.replica or None,
    }


def begin_effects(job: Job, plans: list[UnitPlan]) -> dict[tuple[str, str], dict[str, Any]]:
    """Journal every effect this reconcile may make (one durable write), keyed by (application, target): a crash
    after any of them leaves its entry in the journal. Raises :class:`JournalError`: then nothing may be applied."""
    if job.dry_run:
        return {}
    held = {a for a, (_, drift_ok) in job.holds.items() if not drift_ok}
    acting = (Action.CREATE, Action.UPDATE, Action.REMOVE)
    begun = {
        (p.application, p.target): _audit_base(job, p)
        for p in plans
        if p.action in acting and p.application not in held
    }
    if job.journal is not None:
        job.journal.begin(list(begun.values()))
    return begun


def _unjournalled(job: Job, exc: JournalError, started: float, clock: Callable[[], float]) -> EnvOutcome:
    message = f"nothing applied: {exc}"
    apps = {a: AppStatus(v, None, Phase.FAILED, message) for a, v in job.repo.desired_versions(job.env).items()}
    return EnvOutcome(job.env.name, Phase.FAILED, message, apps, transient=True, duration=clock() - started)


def _invalid(job: Job, errors: Mapping[str, str], started: float, clock: Callable[[], float]) -> EnvOutcome:
    desired_versions = job.repo.desired_versions(job.env)
    apps = {a: AppStatus(desired_versions.get(a), None, Phase.INVALID, m) for a, m in errors.items()}
    first = next(iter(errors.values()))
    return EnvOutcome(job.env.name, Phase.INVALID, f"nothing applied: {first}", apps, duration=clock() - started)


def reconcile_environment(job: Job, pool: DriverPool, clock: Callable[[], float] = time.monotonic) -> EnvOutcome:
    """Render, observe, pair, apply in dependency order, prune, and look at health: one environment's reconcile.

    Drivers that offer ``batch(environment)`` are inside it from before the observe to after the last prune; a
    batch that cannot write its records when it ends fails the environment (the applies stay in the audit)."""
    started = clock()
    with ExitStack() as batches:
        outcome = _reconcile(job, pool, batches, started, clock)
        try:
            batches.close()
        except Exception as exc:  # noqa: BLE001 - a driver could not record what it did: report, retry
            note = f"records not written: {_safe(exc)}"
            outcome = replace(
                outcome,
                phase=Phase.FAILED,
                message=note if outcome.phase is not Phase.FAILED else f"{outcome.message}; {note}",
                transient=outcome.transient or not isinstance(exc, PermanentError),
                duration=clock() - started,
            )
    return outcome


def _reconcile(
    job: Job, pool: DriverPool, batches: ExitStack, started: float, clock: Callable[[], float]
) -> EnvOutcome:
    env = job.env
    desired_versions = job.repo.desired_versions(env)
    stubs: set[tuple[str, str]] = set()
    # inputs unchanged since a drift check found everything in sync: observe as then, compare, done
    token = (tuple(sorted(env.targets.items())), frozenset(job.render_tokens.items())) if job.render_tokens else None
    settled = job.memo.settled(env.name, token) if job.memo and token and job.check_drift and not job.dry_run else None
    units: dict[tuple[str, str], DesiredUnit] | None = None
    if settled is not None:
        wanted = settled.wanted
    else:
        units, render_errors = render_desired(job, stubs)
        if render_errors:
            return _invalid(job, render_errors, started, clock)
        # observe: every target the environment maps, plus targets of desired units
        targets = sorted(set(env.targets.values()) | {t for _, t in units})
        wanted = tuple((target, tuple(a for a, t in units if t == target)) for target in targets)

    live: dict[tuple[str, str], LiveUnit | None] = {}
    try:
        for target, applications in wanted:
            driver = pool.get(target)
            opener = cast(Batch | None, getattr(driver, "batch", None))
            if opener is not None:
                batches.enter_context(opener(env.name))
            found = observe_environment(driver, env.name, applications, job.check_drift)
            live.update(((app, target), unit) for app, unit in found.items())
    except Exception as exc:  # noqa: BLE001 - a target we cannot even observe: nothing is applied in this environment
        transient = not isinstance(exc, PermanentError)
        apps = {a: AppStatus(v, None, Phase.FAILED, _safe(exc)) for a, v in desired_versions.items()}
        return EnvOutcome(
            env.name,
            Phase.FAILED,
            f"observe failed: {_safe(exc)}",
            apps,
            transient=transient,
            duration=clock() - started,
        )

    if settled is not None:
        if live == settled.live:
            return replace(settled.outcome, duration=clock() - started)
        units, render_errors = render_desired(job, stubs)  # something changed: the whole reconcile
        if render_errors:
            return _invalid(job, render_errors, started, clock)
    assert units is not None
    plans = guard_empty(pair(units, live), env.allow_empty)
    if stubs:
        plans, render_errors = realise(job, plans, stubs)
        if render_errors:
            return _invalid(job, render_errors, started, clock)
    if job.check_drift and all(
        p.action is Action.UNCHANGED and observed_health(pool.get(p.target)) for p in plans
    ):  # the common drift check: everything observed in full and unchanged, so there is nothing to order or ask
        synced = {p.application: AppStatus(p.to_version, p.to_version, Phase.SYNCED) for p in plans}
        count = len(synced)
        outcome = EnvOutcome(env.name, Phase.SYNCED, f"{count} application{'s' if count != 1 else ''} in sync",
                             dict(sorted(synced.items())), plans=_light(plans), duration=clock() - started)  # fmt: skip
        if job.memo is not None and token is not None and not job.dry_run:
            job.memo.settle(env.name, Settled(token, wanted, live, outcome))
        return outcome
    stage = job.repo.stages.get(env.stage)
    self_heal = stage.self_heal if stage else True
    by_app: dict[str, list[UnitPlan]] = {}
    for plan in plans:
        by_app.setdefault(plan.application, []).append(plan)

    depends = {a: _dependencies(job.repo, a, desired_versions.get(a)) for a in by_app}
    live_now: dict[str, str | None] = {
        p.application: p.live.version for p in plans if p.live is not None and not p.live.drifted
    }
    order = apply_order(by_app, depends)
    try:
        begun = begin_effects(job, plans)
    except JournalError as exc:  # an effect that could not be journalled must not be made
        return _unjournalled(job, exc, started, clock)
    statuses: dict[str, AppStatus] = {}
    audit: list[dict[str, Any]] = []
    changed = transient = False
    drifted = 0
    not_ready: set[str] = set()

    def starting(plan: UnitPlan) -> None:
        begun_entry = begun.get((plan.application, plan.target))
        if begun_entry is not None and job.journal is not None:
            job.journal.start(begun_entry["id"])

    def record(plan: UnitPlan, result: str, message: str, t0: str) -> None:
        base = begun.pop((plan.application, plan.target), None) or _audit_base(job, plan)
        entry = {**base, "time": _now(), "start": t0, "end": _now(), "result": result, "message": message}
        audit.append(entry)
        if job.journal is not None:
            job.journal.end(entry)

    removals: list[UnitPlan] = []
    for app in order:
        app_plans = by_app[app]
        desired = desired_versions.get(app)
        live_version = next((p.live.version for p in app_plans if p.live and p.live.version), None)
        if any(p.action is Action.REMOVE or p.action is Action.HOLD for p in app_plans) and desired is None:
            removals.extend(p for p in app_plans if p.action is Action.REMOVE)
            held = [p for p in app_plans if p.action is Action.HOLD]
            if held:
                statuses[app] = AppStatus(None, live_version, Phase.OUT_OF_SYNC, held[0].reason)
            continue
        pending = [p for p in app_plans if p.action is not Action.UNCHANGED]
        drift_only = [p for p in pending if p.reason.startswith("drift") and p.live and p.desired
                      and p.live.fingerprint == p.desired.fingerprint]  # fmt: skip
        if pending and app in job.holds:
            reason, drift_ok = job.holds[app]
            if not (drift_ok and len(drift_only) == len(pending)):
                statuses[app] = AppStatus(desired, live_version, Phase.BLOCKED, reason)
                not_ready.add(app)
                continue
        unmet = requirement_hold(job.repo, app, desired, live_now) if desired and pending else None
        if unmet is not None:
            statuses[app] = AppStatus(desired, live_version, Phase.BLOCKED, unmet.reason)
            not_ready.add(app)
            continue
        waiting = [d for d in depends.get(app, ()) if d in not_ready]
        if waiting and any(p.action is not Action.UNCHANGED for p in app_plans):
            statuses[app] = AppStatus(desired, live_version, Phase.PROGRESSING, f"waiting for {', '.join(waiting)}")
            not_ready.add(app)
            continue
        if drift_only:
            drifted += 1
        failure: str | None = None
        health = Health.HEALTHY
        for plan in app_plans:
            if plan.action is Action.UNCHANGED:
                continue
            if plan.action is Action.REMOVE:  # a component moved off this target
                removals.append(plan)
                continue
            assert plan.desired is not None
            if plan in drift_only and not self_heal:
                failure = failure or f"drift on {plan.target} ({plan.reason}); selfHeal is off for {env.stage}"
                continue
            if job.owned is not None and not job.owned():
                failure = "stopped: this replica lost the environment's lease"
                transient = True
                break
            t0 = _now()
            starting(plan)
            try:
                result = pool.get(plan.target).apply(plan.desired, dry_run=job.dry_run)
            except Exception as exc:  # noqa: BLE001 - per application: report, let independent applications go on
                transient = transient or not isinstance(exc, PermanentError)
                failure = f"{plan.target}: {_safe(exc)}"
                if not job.dry_run:
                    record(plan, "failed", _safe(exc), t0)
                break
            changed = changed or (result.changed and not job.dry_run)
            if not job.dry_run:
                record(plan, "succeeded", result.message or plan.reason, t0)
        if failure is not None and "selfHeal is off" in failure:
            statuses[app] = AppStatus(desired, live_version, Phase.OUT_OF_SYNC, failure)
            continue
        if failure is not None:
            statuses[app] = AppStatus(desired, live_version, Phase.FAILED, failure)
            not_ready.add(app)
            continue
        pending = [p for p in app_plans if p.action is not Action.UNCHANGED]
        if job.dry_run and pending:
            statuses[app] = AppStatus(
                desired,
                live_version,
                Phase.OUT_OF_SYNC,
                "; ".join(f"{p.action} {p.target}: {p.reason}" for p in pending),
            )
            live_now[app] = desired  # what the plan would make live
            continue
        messages = []
        try:
            for plan in app_plans:
                if plan.desired is not None:
                    driver = pool.get(plan.target)
                    if observed_health(driver) and (plan.action is not Action.UNCHANGED or job.check_drift):
                        continue  # just applied, or just observed in full: what health would look at is known
                    report = driver.health(env.name, app)
                    health = worst(health, report.status)
                    if report.message and report.status is not Health.HEALTHY:
                        messages.append(f"{plan.target}: {report.message}")
        except Exception as exc:  # noqa: BLE001 - isolate this failure
            transient = transient or isinstance(exc, TemporaryError)
            health, messages = Health.UNKNOWN, [f"health: {_safe(exc)}"]
        phase = HEALTH_PHASE[health]
        if phase is not Phase.SYNCED:
            not_ready.add(app)
        statuses[app] = AppStatus(desired, desired, phase, "; ".join(messages))
        live_now[app] = desired

    for plan in reversed(removals):
        if job.owned is not None and not job.owned():
            statuses[plan.application] = AppStatus(None, plan.from_version, Phase.FAILED, "lease lost: prune skipped")
            transient = True
            continue
        t0 = _now()
        starting(plan)
        try:
            result = pool.get(plan.target).remove(env.name, plan.application, dry_run=job.dry_run)
            changed = changed or (result.changed and not job.dry_run)
            if job.dry_run:
                statuses[plan.application] = AppStatus(None, plan.from_version, Phase.OUT_OF_SYNC, "would be removed")
            else:
                record(plan, "succeeded", result.message or "pruned", t0)
        except Exception as exc:  # noqa: BLE001 - isolate this failure
            transient = transient or not isinstance(exc, PermanentError)
            statuses[plan.application] = AppStatus(None, plan.from_version, Phase.FAILED, f"prune: {_safe(exc)}")
            if not job.dry_run:
                record(plan, "failed", _safe(exc), t0)

    if begun and job.journal is not None:  # journalled, then held or skipped: no effect, no entry
        job.journal.drop([e["id"] for e in begun.values()])
    phase = worst_phase(s.phase for s in statuses.values())
    problems = [f"{a}: {s.message}" for a, s in statuses.items() if s.phase is not Phase.SYNCED and s.message]
    if problems:
        message = problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
    else:  # a state, not an event: what this cycle changed is in the audit trail
        message = f"{len(statuses)} application{'s' if len(statuses) != 1 else ''} in sync"
    return EnvOutcome(
        env.name,
        phase,
        message,
        dict(sorted(statuses.items())),
        tuple(audit),
        changed,
        transient and phase is Phase.FAILED,
        _light(plans),
        clock() - started,
        drifted,
    )
