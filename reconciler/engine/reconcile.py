"""One environment's reconcile, in phases: render -> observe -> pair -> decide -> plan tasks -> execute.

Called by the controller in a worker thread for every environment that needs work. Deciding is pure: the paired
plans, the verdicts computed from facts gathered for *this* attempt (:mod:`reconciler.core.decide`; gathered
only when something would change) and the dependency order become a list of sync tasks
(:mod:`reconciler.core.tasks`), which :mod:`reconciler.engine.execute` runs. Invalid input (a template that does
not render) stops the whole environment before anything is applied: no partial apply of bad input. A driver's
failure is caught per application, so its dependents wait while independent applications go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from reconciler.core.decide import ALLOWED, ROLLBACK, AppVerdict, Facts, verdicts
from reconciler.core.desired import DesiredUnit, RenderError, render_unit, targets_of, with_identity
from reconciler.core.kustomize import Build
from reconciler.core.model import Environment, ReleasesRepo
from reconciler.core.plan import Action, Phase, UnitPlan, guard_empty, pair, worst_phase
from reconciler.core.policy import requirement_hold
from reconciler.core.problems import ReconcilerError
from reconciler.core.state import LiveUnit
from reconciler.core.tasks import Inputs, plan_tasks
from reconciler.core.tree import SourceTree
from reconciler.drivers.base import Identifies, batching, health_is_observed, identifying, observe_environment
from reconciler.engine.execute import Context, execute
from reconciler.engine.memo import Baseline, RenderMemo, Settled
from reconciler.engine.outcome import AppStatus, EnvOutcome, classify, safe_message, summary, synced
from reconciler.engine.targets import DriverPool
from reconciler.status.journal import AuditJournal

__all__ = ["AppStatus", "EnvOutcome", "Job", "RenderMemo", "Settled", "reconcile_environment"]

_REPLICA = {"identity": ""}


def set_replica_identity(identity: str) -> None:
    """Name this process's controller replica in the audit trail (set once by ``reconciler run``)."""
    _REPLICA["identity"] = identity


def replica_identity() -> str:
    return _REPLICA["identity"]


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
    # the facts the verdicts are computed from, gathered for this attempt (called only when something would
    # change); ``None``: no governance facts (unit tests) - protected stages then hold every change
    facts: Callable[[], Facts] | None = None
    owned: Callable[[], bool] | None = None  # sharding: False once this replica lost the environment's lease
    replica: str = field(default_factory=replica_identity)  # the controller replica running it (audit)
    memo: RenderMemo | None = None  # fingerprints of earlier renders: skip rendering what cannot have changed
    render_tokens: Mapping[str, str] = field(default_factory=dict)  # app -> digest of everything its render reads
    clock: Callable[[], float] = time.time  # the controller's clock (audit times)
    journal: AuditJournal | None = None  # audit entries are journalled before each effect and after it
    # SOPS files decrypted just before a driver writes the unit (and the plaintext values, to mask in messages)
    decrypt: Callable[[DesiredUnit], tuple[DesiredUnit, tuple[str, ...]]] | None = None
    build: Build | None = None  # renders Kustomize overlays (``kustomize`` components)
    # the environment was Synced and only its inputs changed (no drift check due, nobody asked): with a baseline in
    # the memo, only the applications whose render tokens changed are observed, decided and applied
    narrow: bool = False


def _dependencies(repo: ReleasesRepo, app: str, version: str | None) -> tuple[str, ...]:
    """What must be applied before ``app``: its ``dependsOn`` and the applications its release ``requires``."""
    application = repo.applications.get(app)
    release = repo.releases.get((app, version)) if version else None
    deps = list(application.depends_on) if application else []
    deps += [r.application for r in release.requires] if release else []
    return tuple(dict.fromkeys(deps))


Identify = Callable[[DesiredUnit], DesiredUnit]


def _as_is(unit: DesiredUnit) -> DesiredUnit:
    return unit


def identifier(pool: DriverPool) -> Identify:
    """Each unit with its target driver's identity folded into its fingerprint (see ``drivers.base.identified``):
    what a driver adds when it applies (a default namespace, target settings) is part of the desired state."""
    drivers: dict[str, Identifies | None] = {}  # by target (one environment's targets: a few)

    def identify(unit: DesiredUnit) -> DesiredUnit:
        if unit.target not in drivers:
            try:
                drivers[unit.target] = identifying(pool.get(unit.target))
            except ReconcilerError:  # a target that is not configured: observing it reports that
                drivers[unit.target] = None
        found = drivers[unit.target]
        return unit if found is None else with_identity(unit, found.identity(unit))

    return identify


def render_desired(
    job: Job,
    stubs: set[tuple[str, str]] | None = None,
    identify: Identify = _as_is,
    only: Collection[str] | None = None,
) -> tuple[dict[tuple[str, str], DesiredUnit], dict[str, str]]:
    """Desired units by (application, target), and render errors by application (of the applications in ``only``,
    if given).

    With a ``stubs`` set and a memo in the job, a unit whose inputs are unchanged since it was last rendered is
    a stub (no components) and its key is added to ``stubs``: see :func:`realise`. ``identify`` gives each rendered
    unit its driver's fingerprint (the memo keeps that one).
    """
    units: dict[tuple[str, str], DesiredUnit] = {}
    errors: dict[str, str] = {}
    memo = job.memo if stubs is not None else None
    for app_name, version in job.repo.desired_versions(job.env).items():
        if only is not None and app_name not in only:
            continue
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
                unit = render_unit(job.repo, job.env, app, release, target, job.tree.read, job.build)
                unit = units[(app_name, target)] = identify(unit)
            except RenderError as exc:
                errors[app_name] = str(exc.problem)
                continue
            if job.memo is not None and token:
                job.memo.put(unit, token)
    return units, errors


def realise(
    job: Job, plans: list[UnitPlan], stubs: set[tuple[str, str]], identify: Identify = _as_is
) -> tuple[list[UnitPlan], dict[str, str]]:
    """Render the real unit of every stub that a plan acts on (the others stay stubs: nothing reads their files)."""
    out: list[UnitPlan] = []
    errors: dict[str, str] = {}
    for plan in plans:
        key = (plan.application, plan.target)
        if key in stubs and plan.desired is not None and plan.action in (Action.CREATE, Action.UPDATE):
            app = job.repo.applications[plan.application]
            release = job.repo.releases[(plan.application, plan.desired.version)]
            try:
                unit = identify(render_unit(job.repo, job.env, app, release, plan.target, job.tree.read, job.build))
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


def _invalid(job: Job, errors: Mapping[str, str], started: float, clock: Callable[[], float]) -> EnvOutcome:
    """Input that does not render: nothing is applied, and the environment stalls until its inputs change."""
    desired_versions = job.repo.desired_versions(job.env)
    apps = {a: AppStatus(desired_versions.get(a), None, Phase.INVALID, m) for a, m in errors.items()}
    first = next(iter(errors.values()))
    message = f"nothing applied: {first}"
    return EnvOutcome(job.env.name, Phase.INVALID, message, apps, duration=clock() - started, stalled=True)


def reconcile_environment(job: Job, pool: DriverPool, clock: Callable[[], float] = time.monotonic) -> EnvOutcome:
    """Render, observe, pair, decide, plan tasks and execute them: one environment's reconcile.

    Drivers that offer ``batch(environment)`` are inside it from before the observe to after the last prune; a
    batch that cannot write its records when it ends fails the environment (the applies stay in the audit)."""
    started = clock()
    with ExitStack() as batches:
        outcome = _reconcile(job, pool, batches, started, clock)
        try:
            batches.close()
        except Exception as exc:  # noqa: BLE001 - a driver could not record what it did: report, retry
            note = f"records not written: {safe_message(exc)}"
            classified = classify([exc])
            outcome = replace(
                outcome,
                phase=Phase.FAILED,
                message=note if outcome.phase is not Phase.FAILED else f"{outcome.message}; {note}",
                transient=outcome.transient or classified.transient,
                stalled=classified.stalled and (outcome.stalled or outcome.phase is not Phase.FAILED),
                retry_after=classified.retry_after or outcome.retry_after,
                duration=clock() - started,
            )
    _remember(job, outcome)
    return outcome


def _remember(job: Job, outcome: EnvOutcome) -> None:
    """Keep the environment's baseline when this reconcile left every desired application Synced; forget it
    otherwise (the next attempt then looks at the whole environment)."""
    if job.memo is None or job.dry_run or not job.render_tokens:
        return
    apps = outcome.applications
    whole = (
        outcome.phase is Phase.SYNCED
        and apps.keys() == job.render_tokens.keys()
        and all(s == synced(s.desired) for s in apps.values())
    )
    job.memo.set_baseline(job.env.name, Baseline(_targets(job.env), job.render_tokens) if whole else None)


def _targets(env: Environment) -> tuple[tuple[str, str], ...]:
    """The environment's role -> target mapping as a comparable key (baselines, drift-check memo)."""
    return tuple(sorted(env.targets.items()))


Wanted = tuple[tuple[str, tuple[str, ...]], ...]  # (target, applications desired there), in observe order
Live = dict[tuple[str, str], LiveUnit | None]


def _observe(job: Job, pool: DriverPool, wanted: Wanted, batches: ExitStack, whole: bool = True) -> Live:
    """What every target holds for the environment (entering each driver's batch first); with ``whole`` false,
    only the ``wanted`` applications, observed in full (a narrow reconcile)."""
    live: Live = {}
    for target, applications in wanted:
        driver = pool.get(target)
        opener = batching(driver)
        if opener is not None:
            batches.enter_context(opener.batch(job.env.name))
        if whole:
            found = observe_environment(driver, job.env.name, applications, job.check_drift)
        else:
            found = {app: driver.observe(job.env.name, app, True) for app in applications}
        live.update(((app, target), unit) for app, unit in found.items())
    return live


def _observe_failed(job: Job, exc: BaseException, started: float, clock: Callable[[], float]) -> EnvOutcome:
    """A target we cannot even observe: nothing is applied in this environment."""
    classified = classify([exc])
    desired_versions = job.repo.desired_versions(job.env)
    apps = {a: AppStatus(v, None, Phase.FAILED, safe_message(exc)) for a, v in desired_versions.items()}
    return EnvOutcome(job.env.name, Phase.FAILED, f"observe failed: {safe_message(exc)}", apps,
                      transient=classified.transient, duration=clock() - started, stalled=classified.stalled,
                      retry_after=classified.retry_after)  # fmt: skip


def _reconcile(
    job: Job, pool: DriverPool, batches: ExitStack, started: float, clock: Callable[[], float]
) -> EnvOutcome:
    env = job.env
    stubs: set[tuple[str, str]] = set()
    identify = identifier(pool)
    base = job.memo.baseline(env.name) if job.memo is not None and job.narrow and not job.dry_run else None
    if base is not None and _narrowable(job, base):
        return _narrow(job, pool, batches, base, started, clock, identify)
    # inputs unchanged since a drift check found everything in sync: observe as then, compare, done
    # (the revision's own mapping of render tokens, compared by value and shared, not copied, by the memo)
    token = (_targets(env), job.render_tokens) if job.render_tokens else None
    settled = job.memo.settled(env.name, token) if job.memo and token and job.check_drift and not job.dry_run else None
    units: dict[tuple[str, str], DesiredUnit] | None = None
    if settled is not None:
        wanted = settled.wanted
    else:
        units, render_errors = render_desired(job, stubs, identify)
        if render_errors:
            return _invalid(job, render_errors, started, clock)
        # observe: every target the environment maps, plus targets of desired units
        targets = sorted(set(env.targets.values()) | {t for _, t in units})
        wanted = tuple((target, tuple(a for a, t in units if t == target)) for target in targets)
    try:
        live = _observe(job, pool, wanted, batches)
    except Exception as exc:  # noqa: BLE001 - reported as the environment's failure
        return _observe_failed(job, exc, started, clock)
    if settled is not None:
        if live == settled.live:
            return replace(settled.outcome, duration=clock() - started)
        units, render_errors = render_desired(job, stubs, identify)  # something changed: the whole reconcile
        if render_errors:
            return _invalid(job, render_errors, started, clock)
    assert units is not None
    plans = guard_empty(pair(units, live), env.allow_empty)
    if stubs:
        plans, render_errors = realise(job, plans, stubs, identify)
        if render_errors:
            return _invalid(job, render_errors, started, clock)
    if job.check_drift and all(
        p.action is Action.UNCHANGED and health_is_observed(pool.get(p.target)) for p in plans
    ):  # the common drift check: everything observed in full and unchanged, so there is nothing to decide or ask
        statuses = {a: synced(v) for a, v in sorted({p.application: p.to_version for p in plans}.items())}
        outcome = EnvOutcome(env.name, Phase.SYNCED, summary(statuses), statuses, plans=_light(plans),
                             duration=clock() - started)  # fmt: skip
        if job.memo is not None and token is not None and not job.dry_run:
            job.memo.settle(env.name, Settled(token, wanted, live, outcome))
        return outcome
    return _decide_and_execute(job, pool, plans, clock() - started)


def _decide_and_execute(
    job: Job, pool: DriverPool, plans: list[UnitPlan], elapsed: float, known: Mapping[str, str | None] | None = None
) -> EnvOutcome:
    """Verdicts from facts gathered now, sync tasks, and their execution (``known``: live versions of applications
    not among ``plans``, for the releases' ``requires``)."""
    env = job.env
    facts, decided = _decide(job, plans)
    inputs = _inputs(job, decided, known or {}, {p.application for p in plans})
    ctx = Context(env.name, env.stage, job.revision, job.author, job.committer, job.trigger,
                  facts.signer if facts else "", job.replica, job.dry_run, job.check_drift, job.owned,
                  inputs.requirement, job.clock, None if job.dry_run else job.journal,
                  rollbacks(facts.trailers if facts else {}, env.name),
                  teams_of(job.repo, facts.signer if facts else ""), job.decrypt)  # fmt: skip
    return execute(ctx, pool, plan_tasks(plans, inputs), plans, _light(plans), elapsed)


def _narrowable(job: Job, base: Baseline) -> bool:
    """The baseline still describes the environment: same targets, same applications (nothing to prune)."""
    return base.targets == _targets(job.env) and base.tokens.keys() == job.render_tokens.keys()


def _narrow(
    job: Job,
    pool: DriverPool,
    batches: ExitStack,
    base: Baseline,
    started: float,
    clock: Callable[[], float],
    identify: Identify,
) -> EnvOutcome:
    """A Synced environment after a commit that changed some of its applications: render, observe in full, decide
    and apply those only (on every target of the environment, so a unit that moved targets is pruned); the others
    are Synced at their desired versions, as the baseline records them, trusted as an unchanged environment is
    until the next drift check."""
    env = job.env
    changed = frozenset(a for a, token in job.render_tokens.items() if base.tokens[a] != token)
    desired = job.repo.desired_versions(env)
    kept = {a: synced(v) for a, v in desired.items() if a not in changed}  # (a same token: the same version)
    if not changed:  # the inputs changed elsewhere (a policy, selfHeal): nothing here to render or apply
        return EnvOutcome(env.name, Phase.SYNCED, summary(kept), kept, duration=clock() - started)
    stubs: set[tuple[str, str]] = set()
    units, render_errors = render_desired(job, stubs, identify, only=changed)
    if render_errors:
        return _invalid(job, render_errors, started, clock)
    targets = sorted(set(env.targets.values()) | {t for _, t in units})
    wanted = tuple((target, tuple(sorted(changed))) for target in targets)
    try:
        live = _observe(job, pool, wanted, batches, whole=False)
    except Exception as exc:  # noqa: BLE001 - reported as the environment's failure
        return _observe_failed(job, exc, started, clock)
    plans, render_errors = realise(job, pair(units, live), stubs, identify)
    if render_errors:
        return _invalid(job, render_errors, started, clock)
    outcome = _decide_and_execute(job, pool, plans, clock() - started, {a: s.live for a, s in kept.items()})
    statuses = dict(sorted({**kept, **outcome.applications}.items()))
    return replace(outcome, phase=worst_phase(s.phase for s in statuses.values()), message=summary(statuses),
                   applications=statuses)  # fmt: skip


def teams_of(repo: ReleasesRepo, signers: str) -> str:
    """The Teams whose members signed (``signers``: comma-separated e-mail principals), for the audit trail."""
    emails = {s.strip().lower() for s in signers.split(",") if s.strip()}
    return ", ".join(n for n, t in repo.teams.items() if emails & t.emails())


def rollbacks(trailers: Mapping[str, str], environment: str) -> frozenset[str]:
    """The applications a ``Rollback: <environment>/<application> <from> -> <to>`` trailer names for ``environment``
    (written by ``reconciler rollback``): their update is audited as ``rollback``."""
    found = set()
    for item in trailers.get(ROLLBACK, "").split(";"):
        where = item.strip().split(" ", 1)[0]
        env, _, app = where.partition("/")
        if env == environment and app:
            found.add(app)
    return frozenset(found)


def _decide(job: Job, plans: list[UnitPlan]) -> tuple[Facts | None, dict[str, AppVerdict]]:
    """The verdict of every application that has something to change, from facts gathered now."""
    changing = frozenset(p.application for p in plans if p.action is not Action.UNCHANGED)
    if not changing:
        return None, {}
    facts = job.facts() if job.facts is not None else Facts(now=datetime.now(UTC))
    live = {p.application: p.live.version for p in plans if p.live is not None}
    return facts, verdicts(job.repo, job.env, facts, live, changing)


def _inputs(
    job: Job, decided: Mapping[str, AppVerdict], known: Mapping[str, str | None], planned: Collection[str]
) -> Inputs:
    desired = job.repo.desired_versions(job.env)
    stage = job.repo.stages.get(job.env.stage)

    def requirement(app: str, version: str, live: Mapping[str, str | None]) -> str | None:
        hold = requirement_hold(job.repo, app, version, {**known, **live} if known else live)
        return hold.reason if hold is not None else None

    return Inputs(
        desired=desired,
        verdicts={a: decided.get(a, ALLOWED) for a in decided},
        depends={a: _dependencies(job.repo, a, v) for a, v in desired.items() if a in planned},
        self_heal=stage.self_heal if stage else True,
        requirement=requirement,
    )
