"""The controller: one reconcile cycle over every environment, and the loop that repeats it. A small facade.

A cycle has clear phases: fetch the source -> load the head revision (:mod:`~reconciler.engine.revision`: kept
as *last good* only when valid) -> decide which environments are due (:mod:`~reconciler.engine.schedule`) ->
reconcile those concurrently under a bound, wave by wave (:mod:`~reconciler.engine.workers`,
:func:`~reconciler.engine.schedule.run_in_waves`) -> write status and audit in one commit
(:mod:`~reconciler.engine.publish`) -> metrics. With an unchanged head and no drift check due, an environment
costs a dictionary lookup; after a new commit, only environments whose inputs changed are re-planned. Every
attempt's verdicts are computed in the reconcile itself from facts gathered for it (governance), so no trigger
skips a gate. Invalid input never changes what runs: the last good revision keeps being served.

Used by ``reconciler run`` and ``reconciler demo``; the HTTP server reads :meth:`Controller.snapshot`.
"""

from __future__ import annotations

import posixpath
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from reconciler.core.config import ControllerConfig
from reconciler.core.contentdiff import Content
from reconciler.core.model import Environment
from reconciler.core.operations import Action, Operation
from reconciler.core.plan import Phase
from reconciler.core.problems import Problem, ReconcilerError
from reconciler.drivers.base import showing
from reconciler.engine.governance import Governance
from reconciler.engine.hooks import MetricsSink
from reconciler.engine.loop import Debounce, SourceBackoff
from reconciler.engine.memo import RenderMemo
from reconciler.engine.notifications import build_notifier
from reconciler.engine.operate import Operations, RequestError
from reconciler.engine.outcome import AppStatus, EnvOutcome
from reconciler.engine.publish import Publisher, Store
from reconciler.engine.reconcile import Job, identifier, reconcile_environment, render_desired
from reconciler.engine.revision import Loaded, Revisions, Source
from reconciler.engine.schedule import EnvState, Scheduler, run_in_waves
from reconciler.engine.targets import DriverPool
from reconciler.engine.workers import Workers
from reconciler.observability.logging import get_logger
from reconciler.secrets.identity import load_identities
from reconciler.secrets.units import Decryptor, masked
from reconciler.source.kustomize import KubectlKustomize
from reconciler.status.journal import AuditJournal

__all__ = ["Controller", "CycleReport", "EnvState", "Loaded", "Source", "Store"]


@dataclass
class CycleReport:
    revision: str | None
    outcomes: dict[str, EnvOutcome] = field(default_factory=dict)
    skipped: int = 0
    status_commit: str | None = None
    source_error: str | None = None
    invalid: list[Problem] = field(default_factory=list)
    duration: float = 0.0
    recovered: bool = False  # the head is valid again after an invalid one
    # where the cycle's time went, seconds by phase: fetch, load, plan, reconcile, status, after (metrics, listeners)
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)  # (perf_counter) when the cycle began

    def lap(self, phase: str, since: float) -> float:
        """Add the time since ``since`` (perf_counter) to ``phase``; returns now."""
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - since
        return now

    def all_good(self, phases: dict[str, Phase | None]) -> bool:
        if self.source_error or self.invalid or not phases:
            return False
        return all(p in (Phase.SYNCED, Phase.BLOCKED) for p in phases.values())


class Controller:
    def __init__(
        self,
        config: ControllerConfig,
        source: Source,
        store: Store | None,
        pool: DriverPool,
        *,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
        progress: Callable[[int, int], None] | None = None,
        metrics: MetricsSink | None = None,
        journal: AuditJournal | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.store = store
        self.pool = pool
        self.dry_run = dry_run
        self.clock = clock
        self.log = get_logger(component="controller")
        self.metrics: MetricsSink = metrics or pool.metrics
        self.gov = Governance(config, source)
        self.decryptor = Decryptor(load_identities(config.age_identity))  # IdentityError: a clear refusal to start
        self.kustomize = KubectlKustomize()  # kustomize components; its cache spans cycles and revisions
        self.revisions = Revisions(config, source)
        self.sched = Scheduler(config)
        self.publisher = Publisher(store, self.sched, self.revisions, self.gov, self.metrics, dry_run, journal)
        self.workers = Workers(config.concurrency, config.apply_timeout, lambda: self.clock(), progress)
        self.source_error: str | None = None
        self.source_backoff = SourceBackoff(config.interval, config.backoff_max)
        self.debounce = Debounce()
        self.last_drift_check: float | None = None
        self.fetched_once = threading.Event()
        self.cycles = 0
        self.listeners: list[Callable[[CycleReport], None]] = []
        self.notifier = None if dry_run else build_notifier(config.notifications, _FleetView(self.revisions),
                                                            posixpath.dirname(config.path))  # fmt: skip
        if self.notifier is not None:  # after the status commit of each cycle; offering never waits
            self.listeners.append(self.notifier)
        self.wake = threading.Event()  # set by trigger(): the next cycle starts at once
        self.loop_running = False  # for /readyz
        self.waiting = False  # the loop waits for a trigger or the poll interval, none came during the last cycle
        # sharding: which environments this replica reconciles, and a check that it still does (see sharding.py)
        self.owns: Callable[[str], bool] = lambda _name: True
        self.shared = False  # other replicas write the status branch too: re-read their operations now and then
        self.operations = Operations(store, self.gov, lambda: self.clock(), None)
        self.requested: dict[str, Action] = {}  # environments an operator asked to sync or refresh now
        self._requested_lock = threading.Lock()

    # --- views of the parts ----------------------------------------------------------------------------------
    @property
    def good(self) -> Loaded | None:
        return self.revisions.good

    @property
    def head(self) -> str | None:
        return self.revisions.head

    @property
    def invalid(self) -> tuple[str, list[Problem]] | None:
        return self.revisions.invalid

    @property
    def memo(self) -> RenderMemo:
        return self.revisions.memo

    @property
    def states(self) -> dict[str, EnvState]:
        return self.sched.states

    @property
    def source_failures(self) -> int:
        return self.source_backoff.failures

    @property
    def journal(self) -> AuditJournal:
        return self.publisher.journal

    @property
    def pending_audit(self) -> list[bytes]:
        return self.publisher.pending_audit

    def restore(self) -> None:
        """Seed per-environment memory from the status branch, so a restart does not rewrite unchanged status."""
        self.publisher.restore()
        self.operations.restore()
        if self.notifier is not None:  # a restart does not announce again what was already so
            self.notifier.seen.update({name: state.phase for name, state in self.states.items()})

    # --- operator requests ---------------------------------------------------------------------------------------
    def request(
        self, action: Action, environment: str, application: str | None, by: str, reason: str = ""
    ) -> Operation:
        """An operator's sync / refresh / suspend / resume of one environment (or application): recorded on the
        status branch and audited first (raises if that fails: nothing done), then honoured from the next cycle,
        which starts at once. Raises :class:`RequestError` for an unknown environment or application."""
        loaded = self.good
        env = loaded.repo.environments.get(environment) if loaded else None
        if loaded is None or env is None:
            raise RequestError(f"unknown environment {environment[:200]!r}")
        if application is not None and application not in loaded.repo.desired_versions(env):
            raise RequestError(f"application {application[:200]!r} is not deployed in {environment}")
        op = self.operations.request(action, environment, application, by, reason, env.stage)
        if self.notifier is not None:  # a suspend or resume is told as it is recorded
            self.notifier.operation(str(action), environment, application, by, reason)
        with self._requested_lock:  # a suspend or resume is shown (and held) from the next cycle on
            self.requested[environment] = Action.REFRESH if action is Action.REFRESH else Action.SYNC
        self.trigger()
        return op

    def contents(self, environment: str, application: str | None = None) -> dict[str, list[Content]]:
        """What Git wants of ``environment`` (at the fetched head) beside what runs, per application: for
        ``reconciler diff``; applies nothing. Raises :class:`RequestError` for an unknown environment or
        application, :class:`ReconcilerError` when the source or a target cannot be read."""
        self._fetch(CycleReport(revision=None), triggered=True)
        loaded = self.good
        env = loaded.repo.environments.get(environment) if loaded else None
        if loaded is None or env is None:
            raise RequestError(f"unknown environment {environment!r}")
        if application is not None and application not in loaded.repo.desired_versions(env):
            raise RequestError(f"application {application!r} is not deployed in {environment}")
        job = replace(self._job(loaded, env, "manual", True, True, False, self.clock()), memo=None, dry_run=True)
        units, errors = render_desired(job, None, identifier(self.pool))  # fingerprints as the applies had them
        found: dict[str, list[Content]] = {}
        for (app, target), unit in sorted(units.items()):
            if application is not None and app != application:
                continue
            if app in errors:
                raise RequestError(f"{app}: {errors[app]}")
            shower = showing(self.pool.get(target))
            if shower is None:
                raise RequestError(f"target {target} ({app}): its driver cannot show what runs")
            plain, secrets = self.decryptor.unit(unit)  # compared as it would be applied, shown as digests
            found.setdefault(app, []).extend(masked(c, secrets) for c in shower.contents(plain))
        self.decryptor.forget()
        return found

    # --- the cycle -----------------------------------------------------------------------------------------------
    def cycle(self, trigger: str = "poll", stop: threading.Event | None = None) -> CycleReport:
        started = self.clock()
        self.cycles += 1
        self.workers.take_late(self.publisher.take)
        report = CycleReport(revision=None)
        recovered = self._fetch(report, triggered=trigger in ("webhook", "manual"))
        lap = time.perf_counter()
        loaded = self.good
        if loaded is None:
            self._publish({}, report)
            report.duration = self.clock() - started
            return report
        if self.shared:  # what operators asked of the other replicas
            changed = self.operations.poll(self.clock())
            with self._requested_lock:
                self.requested.update(dict.fromkeys(changed - set(self.requested), Action.SYNC))
        jobs, invalid_outcomes = self._plan(loaded, trigger, report)
        lap = report.lap("plan", lap)
        if recovered:  # every environment was shown Invalid: show it again as it is, at the new head
            for name in loaded.repo.environments:
                self.sched.state(name).attempted_revision = loaded.revision
            report.recovered = True
        run_batch = partial(self._run_batch, stop=stop)
        outcomes = run_in_waves(self.gov, self.sched, loaded, jobs, run_batch)
        self.decryptor.forget()  # (a stage's environments shared each SOPS file's decryption; not kept longer)
        outcomes.update(invalid_outcomes)
        report.outcomes = outcomes
        self.sched.record(loaded, outcomes, {job.env.name: key for job, key in jobs}, self.clock(), self.dry_run)
        lap = report.lap("reconcile", lap)
        for name, outcome in outcomes.items():
            log = self.log.info if outcome.changes or outcome.phase is not Phase.SYNCED else self.log.debug
            log("environment reconciled", environment=name, revision=loaded.revision[:12], phase=str(outcome.phase),
                changes=outcome.changes, message=outcome.message, seconds=round(outcome.duration, 3))  # fmt: skip
        self._publish(loaded.repo.environments, report)
        lap = report.lap("status", lap)
        report.duration = self.clock() - started
        self._report_metrics(loaded, report)
        for listener in self.listeners:
            listener(report)
        report.lap("after", lap)
        return report

    def _fetch(self, report: CycleReport, triggered: bool) -> bool:
        """Fetch the source (unless it is backing off after failures and nobody asked) and load a new head; returns
        whether the head recovered from an invalid one."""
        head: str | None = None
        if not self.source_backoff.due(self.clock(), triggered):
            report.source_error = self.source_error  # still failing: served from the last good revision
        else:
            head = self._fetch_head(report)
        recovered = False
        if head is not None and head != self.head:
            loading = time.perf_counter()
            recovered = self.revisions.advance(head)
            report.lap("load", loading)
            self.metrics.revision(head, self.invalid is None)
        report.revision = self.head
        if self.invalid:
            report.invalid = self.invalid[1]
        return recovered

    def _fetch_head(self, report: CycleReport) -> str | None:
        fetch_started = time.perf_counter()
        try:
            head = self.source.fetch()
            report.lap("fetch", fetch_started)
        except ReconcilerError as exc:
            self.source_error = report.source_error = str(exc)
            self.metrics.fetch(time.perf_counter() - fetch_started, False)
            delay = self.source_backoff.failed(exc, self.clock())
            self.log.error("source fetch failed; serving the last good revision", error=str(exc),
                           failures=self.source_backoff.failures, retry_in=round(delay, 1))  # fmt: skip
            return None
        self.source_error = None
        self.source_backoff.succeeded()
        self.fetched_once.set()
        self.metrics.fetch(time.perf_counter() - fetch_started, True)
        return head

    def _plan(
        self, loaded: Loaded, trigger: str, report: CycleReport
    ) -> tuple[list[tuple[Job, str]], dict[str, EnvOutcome]]:
        """The jobs of the environments due this cycle, and the outcomes of environments whose input is invalid."""
        now = self.clock()
        drift_due = self.last_drift_check is None or now - self.last_drift_check >= self.config.drift_interval
        if drift_due:
            self.last_drift_check = now
        jobs: list[tuple[Job, str]] = []
        invalid: dict[str, EnvOutcome] = {}
        with self._requested_lock:
            requested, self.requested = self.requested, {}
        for name, env in loaded.repo.environments.items():
            if name in loaded.env_problems:
                invalid[name] = self._invalid_outcome(loaded, env)
                continue
            if name in self.workers.overdue or not self.owns(name):  # (still running, or its audit not taken yet)
                report.skipped += 1
                continue
            key = self.revisions.input_key(loaded, env)
            asked = requested.get(name)  # an operator's sync or refresh: now, observed in full, whatever else
            due = self.sched.due(
                name, key, now, drift_due or asked is not None, manual=trigger == "manual" or asked is not None
            )
            if not due.due:
                report.skipped += 1
                continue
            job = self._job(loaded, env, "manual" if asked else trigger, drift_due or asked is not None,
                            due.changed, due.settled and not asked, now)  # fmt: skip
            if asked is Action.REFRESH:  # observe and drift-check, apply nothing
                job = replace(job, dry_run=True, journal=None)
            jobs.append((job, key))
        return jobs, invalid

    @staticmethod
    def _invalid_outcome(loaded: Loaded, env: Environment) -> EnvOutcome:
        problems = loaded.env_problems[env.name]
        apps = {a: AppStatus(v, None, Phase.INVALID, "") for a, v in loaded.repo.desired_versions(env).items()}
        return EnvOutcome(env.name, Phase.INVALID, "; ".join(str(p) for p in problems[:3]), apps, stalled=True)

    def _job(self, loaded: Loaded, env: Environment, trigger: str, drift_due: bool, changed: bool, settled: bool,
             now: float) -> Job:  # fmt: skip
        state = self.sched.state(env.name)
        facts = partial(self.gov.facts, loaded.repo, env, loaded.revision, loaded.trailers,
                        state.applied_revision, now)  # fmt: skip
        return Job(
            env=env,
            repo=loaded.repo,
            tree=loaded.tree,
            revision=loaded.revision,
            author=loaded.author,
            committer=loaded.committer,
            check_drift=drift_due or changed or state.phase is not Phase.SYNCED,  # a retry observes in full
            dry_run=self.dry_run,
            trigger="drift-check" if settled else trigger,
            facts=facts,  # the verdicts of this attempt are computed from these, gathered when needed
            owned=partial(self.owns, env.name),
            memo=self.memo,
            render_tokens=self.revisions.render_tokens(loaded, env),
            clock=self.clock,
            journal=None if self.dry_run else self.publisher.journal,
            decrypt=self.decryptor.unit,
            build=self.kustomize,
            # only its inputs changed since it was left Synced: look at the applications that changed (the drift
            # check of the others stays on the drift interval, as for an environment whose inputs did not change)
            narrow=changed and not drift_due and trigger != "manual" and state.phase is Phase.SYNCED,
        )

    def _run_batch(self, jobs: list[tuple[Job, str]], stop: threading.Event | None) -> dict[str, EnvOutcome]:
        work = partial(reconcile_environment, pool=self.pool)
        return self.workers.run([job for job, _ in jobs], work, self.publisher.take, stop)

    def _publish(self, environments: Mapping[str, Environment], report: CycleReport) -> None:
        everything = self.invalid is not None or report.recovered
        report.status_commit = self.publisher.write(environments, report.outcomes, everything, self.source_error,
                                                    self.owns)  # fmt: skip

    def _report_metrics(self, loaded: Loaded, report: CycleReport) -> None:
        now = self.clock()
        if self.notifier is not None:
            self.metrics.notifications(self.notifier.results(), self.notifier.depths())
        for name, outcome in report.outcomes.items():
            env = loaded.repo.environments.get(name)
            self.metrics.environment(name, env.stage if env else "", outcome)
            if outcome.changed and outcome.phase is Phase.SYNCED:
                latency = now - loaded.committed_at if loaded.committed_at else None
                self.metrics.applied(name, latency)
        phases: dict[str, tuple[str, Phase | None]] = {}
        blocked: dict[str, str] = {}
        for name, env in loaded.repo.environments.items():
            state = self.states.get(name)
            phase = state.phase if state else None
            phases[name] = (env.stage, phase)
            if phase is Phase.BLOCKED and state:
                blocked[name] = "freeze" if "freeze" in state.holds else "policy"
            elif state and state.failures and state.retry_at > now:
                blocked[name] = "backoff"
        self.metrics.phases(phases, blocked)
        self.metrics.cycle(report.duration)

    # --- timeouts ------------------------------------------------------------------------------------------------
    def running_late(self) -> list[str]:
        """Environments reported timed out whose reconcile has not returned yet."""
        return self.workers.running_late()

    def finish_overdue(self, wait: float | None = None) -> None:
        """Before the process exits (``--once``, shutdown): wait (up to ``wait`` seconds; by default as long as they
        run, as the interpreter itself waits for its worker threads before it exits) for reconciles still running
        past their timeout, and commit what they applied to the audit trail."""
        self.workers.wait_overdue(wait)
        self.workers.take_late(self.publisher.take)
        if self.pending_audit:
            self._publish(self.good.repo.environments if self.good else {}, CycleReport(revision=self.head))
        for name in self.running_late():
            self.log.error("environment still running at exit: what it applies now is not in the audit trail",
                           environment=name)  # fmt: skip

    # --- loop ------------------------------------------------------------------------------------------------------
    def phases(self) -> dict[str, Phase | None]:
        names = self.good.repo.environments if self.good else {}
        return {n: self.states[n].phase if n in self.states else None for n in names}

    def trigger(self) -> None:
        """Start the next cycle now (webhooks, manual requests). Bursts coalesce into one cycle."""
        self.wake.set()

    def snapshot(self) -> dict[str, Any]:
        """A read-only view for the HTTP API and the dashboard (safe to call from other threads)."""
        loaded = self.good
        envs = []
        if loaded is not None:
            for name, env in loaded.repo.environments.items():
                state = self.states.get(name)
                doc = (state.doc if state else None) or {}
                envs.append({
                    "name": name,
                    "stage": env.stage,
                    "labels": dict(env.labels),
                    "wave": loaded.repo.wave_of(env),
                    "phase": doc.get("phase") or (str(state.phase) if state and state.phase else "Unknown"),
                    "message": doc.get("message", ""),
                    "lastAppliedRevision": doc.get("lastAppliedRevision"),
                    "lastAttemptedRevision": doc.get("lastAttemptedRevision"),
                    "updated": doc.get("updated"),
                    "applications": dict(doc.get("applications") or {}),
                    "phases": list(doc.get("phases") or []),
                    "recentAudit": self.publisher.recent(name),
                })  # fmt: skip
        invalid = self.invalid
        return {
            "revision": self.head,
            "lastGoodRevision": loaded.revision if loaded else None,
            "invalidRevision": invalid[0] if invalid else None,
            "problems": [str(p) for p in invalid[1][:50]] if invalid else [],
            "sourceError": self.source_error,
            "sourceFailures": self.source_backoff.failures,
            "cycles": self.cycles,
            "ready": self.fetched_once.is_set(),
            "applications": sorted(loaded.repo.applications) if loaded else [],
            "stages": _stages(loaded),
            "commitUrl": self.config.commit_url,
            "environments": envs,
        }

    def run_forever(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        wake = wake or self.wake
        self.loop_running = True
        try:
            idle = False  # no trigger came during the last cycle: the next one starts a cycle at once
            while not stop.is_set():
                trigger = "webhook" if wake.is_set() else "poll"
                if trigger == "webhook":
                    self.debounce.settle(wake, stop, idle=idle)  # a burst of pushes: few cycles
                wake.clear()
                try:
                    self.cycle(trigger, stop)
                except Exception:
                    self.log.exception("cycle failed")
                if stop.is_set():
                    break
                idle = not wake.is_set()
                self.waiting = idle
                wake.wait(self.config.interval * random.uniform(0.9, 1.1))
                self.waiting = False
        finally:
            self.loop_running = False

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
        self.workers.close()
        self.publisher.journal.close()
        self.pool.close()
        self.source.close()


def _stages(loaded: Loaded | None) -> list[dict[str, Any]]:
    """The snapshot's stages, in promotion order (the dashboard's row groups and stage view)."""
    if loaded is None:
        return []
    return [
        {"name": s.name, "promotesFrom": s.promotes_from, "protected": s.protected, "soakSeconds": s.soak_seconds,
         "waves": [w.name for w in s.waves]}
        for s in loaded.repo.stage_order()
    ]  # fmt: skip


class _FleetView:
    """What the notifier reads of the good head (:class:`reconciler.engine.notifications.Fleet`)."""

    def __init__(self, revisions: Revisions) -> None:
        self.revisions = revisions
        self._members: tuple[str, dict[str, str], dict[str, tuple[str, ...]]] | None = None

    def _of_head(self) -> tuple[str, dict[str, str], dict[str, tuple[str, ...]]]:
        good = self.revisions.good
        if good is None:
            return "", {}, {}
        if self._members is None or self._members[0] != good.revision:  # once per revision
            members = {name: env.stage for name, env in good.repo.environments.items()}
            notify = {name: app.notify for name, app in good.repo.applications.items() if app.notify}
            self._members = (good.revision, members, notify)
        return self._members

    def members(self) -> Mapping[str, str]:
        return self._of_head()[1]

    def notify_of(self) -> Mapping[str, tuple[str, ...]]:
        return self._of_head()[2]

    def head(self) -> tuple[str, str]:
        good = self.revisions.good
        return (good.revision, good.author) if good else ("", "")
