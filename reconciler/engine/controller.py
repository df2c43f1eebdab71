"""The controller: one reconcile cycle over every environment, and the loop that repeats it.

A cycle has clear phases: fetch the source -> load the head revision (kept as *last good* only when valid) ->
decide which environments need work -> reconcile those concurrently under a bound -> write status and audit in
one commit. Design for scale: with an unchanged head and no drift check due, an environment costs a dictionary
lookup; after a new commit, only environments whose inputs (blob digests of what they render, their parameters)
changed are re-planned. Failures back off per environment (exponential, reset by a new revision or a manual
trigger); an environment that hangs past ``applyTimeout`` is reported and skipped until its worker returns, so it
never holds the others. Invalid input never changes what runs: the last good revision keeps being served.

Used by ``reconciler run`` and ``reconciler demo``; the HTTP server reads :attr:`Controller.snapshot`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from dataclasses import replace as evolve
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from reconciler.core.config import ControllerConfig
from reconciler.core.desired import app_digest, environment_payload
from reconciler.core.loader import Limits, load_repo
from reconciler.core.model import Environment, ReleasesRepo
from reconciler.core.plan import Phase
from reconciler.core.problems import Problem, ReconcilerError
from reconciler.core.tree import CachingTree, SourceTree
from reconciler.engine import statusdoc
from reconciler.engine.governance import Governance
from reconciler.engine.hooks import MetricsSink
from reconciler.engine.reconcile import AppStatus, EnvOutcome, Job, RenderMemo, reconcile_environment
from reconciler.engine.targets import DriverPool
from reconciler.observability.logging import get_logger
from reconciler.status.journal import AuditJournal, MemoryJournal


class Source(Protocol):
    def fetch(self) -> str: ...
    def tree(self, revision: str) -> SourceTree: ...
    def commit(self, revision: str) -> Any: ...
    def close(self) -> None: ...


class Store(Protocol):
    def read(self) -> Any: ...
    def write(self, replace: Mapping[str, bytes], append: Mapping[str, bytes], message: str) -> str | None: ...


@dataclass
class EnvState:
    input_key: str | None = None  # inputs of the last reconcile that ended Synced
    attempted_key: str | None = None  # inputs of the last attempt
    phase: Phase | None = None
    applied_revision: str | None = None
    attempted_revision: str | None = None
    failures: int = 0
    retry_at: float = 0.0
    doc: dict[str, Any] | None = None
    doc_identity: str | None = None


@dataclass(frozen=True)
class Loaded:
    revision: str
    repo: ReleasesRepo
    tree: SourceTree
    author: str
    committer: str
    committed_at: float | None
    env_problems: Mapping[str, list[Problem]]
    trailers: Mapping[str, str] = field(default_factory=dict)


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

    def all_good(self, phases: Mapping[str, Phase | None]) -> bool:
        if self.source_error or self.invalid or not phases:
            return False
        return all(p in (Phase.SYNCED, Phase.BLOCKED) for p in phases.values())


def _noting_ids(entries: Iterable[Mapping[str, Any]], wanted: set[str], found: set[str]) -> Iterator[Mapping[str, Any]]:
    """``entries`` as they are, noting in ``found`` the ids among ``wanted`` that they carry."""
    for entry in entries:
        ident = entry.get("id")
        if wanted and isinstance(ident, str) and ident in wanted:
            found.add(ident)
        yield entry


def _person(name: str, email: str) -> str:
    return f"{name} <{email}>" if email else name


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
        self.progress = progress
        self.log = get_logger(component="controller")
        self.states: dict[str, EnvState] = {}
        self.good: Loaded | None = None
        self.head: str | None = None
        self.invalid: tuple[str, list[Problem]] | None = None
        self.source_error: str | None = None
        self.last_drift_check: float | None = None
        self.fetched_once = threading.Event()
        self.pending_audit: list[bytes] = []  # audit entries (JSON lines) not yet committed to the status branch
        self.pending_ids: list[str] = []  # their ids: the journal forgets them once they are pushed
        self.journal: AuditJournal = journal or MemoryJournal()  # entries survive a crash until they are pushed
        self.journal_recovered = False  # what an earlier run journalled and did not push is pending again
        self.unpushed: set[str] = set()  # environments whose status documents failed to push
        self.controller_doc_identity: str | None = None
        self.last_good_hint: str | None = None  # from the status branch: what to serve if the head is invalid
        self.restored_invalid = False  # the status branch shows an invalid head
        self.cycles = 0
        self.listeners: list[Callable[[CycleReport], None]] = []
        self.metrics: MetricsSink = metrics or pool.metrics
        self.wake = threading.Event()  # set by trigger(): the next cycle starts at once
        self.loop_running = False  # for /readyz
        self.recent_audit: dict[str, deque[bytes]] = {}  # the last 20 audit entries (JSON) per environment
        self._overdue: dict[str, Future[EnvOutcome]] = {}  # reconciles reported timed out, until _take_late takes them
        self._executor = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="env")
        self._app_digests: dict[tuple[str, str, str], str] = {}
        self._input_keys: dict[tuple[str, str], str] = {}  # (revision, environment) -> input key
        self._render_tokens: dict[tuple[str, str], dict[str, str]] = {}  # (revision, environment) -> app -> token
        self.memo = RenderMemo()
        self.gov = Governance(config, source)
        # sharding: which environments this replica reconciles, and a check that it still does (see sharding.py)
        self.owns: Callable[[str], bool] = lambda _name: True
        self._lock = threading.Lock()

    # --- start-up ------------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Seed per-environment memory from the status branch, so a restart does not rewrite unchanged status."""
        if self.store is None:
            return
        snapshot = self.store.read()
        leftovers = self.journal.unpushed()
        wanted, on_branch = {e["id"] for e in leftovers}, set[str]()
        audit_lines = getattr(self.store, "audit_lines", None)
        if audit_lines is not None:
            self.gov.learn(_noting_ids(audit_lines(), wanted, on_branch))
        self._recover_journal(leftovers, on_branch)
        for path, data in snapshot.files.items():
            if not (path.startswith("environments/") and path.endswith(".yaml")):
                continue
            doc = statusdoc.parse(data)
            if doc is None or not isinstance(doc.get("environment"), str):
                continue
            state = self.states.setdefault(doc["environment"], EnvState())
            state.doc = doc
            state.doc_identity = statusdoc.identity(doc)
            state.applied_revision = doc.get("lastAppliedRevision")
            digest = doc.get("desiredDigest")
            state.input_key = state.attempted_key = digest if isinstance(digest, str) else None
            state.attempted_revision = doc.get("lastAttemptedRevision")
            phase = doc.get("phase")
            state.phase = Phase(phase) if isinstance(phase, str) and phase in set(Phase) else None
        controller = snapshot.files.get("controller.yaml")
        if controller is not None:
            doc = statusdoc.parse(controller)
            self.controller_doc_identity = statusdoc.identity(doc) if doc else None
            good = doc.get("lastGoodRevision") if doc else None
            self.last_good_hint = good if isinstance(good, str) else None
            self.restored_invalid = bool(doc and doc.get("invalidRevision"))

    def _recover_journal(self, leftovers: list[dict[str, Any]], on_branch: set[str]) -> None:
        """Entries an earlier run journalled and did not push (applied, or begun and ``interrupted``) join the next
        status commit; those the status branch already has (pushed, then the crash) are forgotten: each once."""
        fresh = [e for e in leftovers if e["id"] not in on_branch]
        if on_branch & {e["id"] for e in leftovers}:
            self.journal.pushed(on_branch)
        if fresh:
            self.log.warning("audit entries recovered from the journal", entries=len(fresh),
                             interrupted=sum(1 for e in fresh if e.get("result") == "interrupted"))  # fmt: skip
            self.gov.learn(fresh)
            lines = [json.dumps(e, sort_keys=True).encode() for e in fresh]
            self.pending_audit[:0] = lines  # older than anything this run made
            self.pending_ids[:0] = [e["id"] for e in fresh]
            for entry, line in zip(fresh, lines, strict=True):
                self.recent_audit.setdefault(str(entry.get("environment")), deque(maxlen=20)).append(line)
        self.journal_recovered = True

    def _recover_late(self) -> None:
        """The journal's recovery when :meth:`restore` could not read the status branch: before the next status
        commit, once the branch can be read."""
        leftovers = self.journal.unpushed()
        if not leftovers:
            self.journal_recovered = True
            return
        wanted, on_branch = {e["id"] for e in leftovers}, set[str]()
        audit_lines = getattr(self.store, "audit_lines", None)
        try:
            if audit_lines is not None:
                for _ in _noting_ids(audit_lines(), wanted, on_branch):
                    pass
        except ReconcilerError as exc:
            self.log.error("cannot read the audit trail; journalled entries wait", error=str(exc))
            return
        self._recover_journal(leftovers, on_branch)

    # --- load --------------------------------------------------------------------------------------------------
    def _load(self, head: str) -> None:
        tree = CachingTree(self.source.tree(head))
        limits = Limits(max_file_size=self.config.max_file_size, max_repo_size=self.config.max_repo_size)
        result = load_repo(tree, limits)
        if result.repo is None:
            self.invalid = (head, result.problems)
            self.log.error(
                "revision invalid; serving the last good one",
                revision=head[:12],
                problems=len(result.problems),
                first=str(result.problems[0]),
                serving=self.good.revision[:12] if self.good else None,
            )
            return
        self.memo.retain(result.repo.environments)  # environments that are gone: their renders are forgotten
        self._app_digests.clear()  # keyed by revision: those of earlier revisions are never asked for again
        self._input_keys.clear()
        self._render_tokens.clear()
        info = self.source.commit(head)
        self.good = Loaded(
            revision=head,
            repo=result.repo,
            tree=tree,
            author=_person(info.author_name, info.author_email),
            committer=_person(info.committer_name, info.committer_email),
            committed_at=info.committed_at.timestamp() if info.committed_at else None,
            env_problems=result.environment_problems,
            trailers=dict(getattr(info, "trailers", {}) or {}),
        )
        self.invalid = None
        self.log.info(
            "revision loaded",
            revision=head[:12],
            environments=len(result.repo.environments),
            invalid_environments=len(result.environment_problems),
        )

    def _load_last_good(self, revision: str) -> None:
        """After a restart on an invalid head: serve the last good revision recorded on the status branch."""
        invalid = self.invalid
        try:
            self._load(revision)
        except ReconcilerError as exc:
            self.log.error("cannot load the last good revision", revision=revision[:12], error=str(exc))
        if self.invalid is not None:  # not good after all: serve nothing
            self.good = None
        self.invalid = invalid

    # --- planning which environments need work ------------------------------------------------------------------
    def _app_digest(self, loaded: Loaded, app: str, version: str) -> str:
        key = (loaded.revision, app, version)
        found = self._app_digests.get(key)
        if found is None:
            application, release = loaded.repo.applications[app], loaded.repo.releases[(app, version)]
            found = self._app_digests[key] = app_digest(application, release, loaded.tree.digest)
        return found

    def input_key(self, loaded: Loaded, env: Environment) -> str:
        """A digest of everything the environment's reconcile reads; equal keys mean equal desired state.
        Computed once per revision (a cycle without a new revision asks again for every environment)."""
        cached = self._input_keys.get((loaded.revision, env.name))
        if cached is not None:
            return cached
        key = self._input_keys[(loaded.revision, env.name)] = self._compute_input_key(loaded, env)
        return key

    def _compute_input_key(self, loaded: Loaded, env: Environment) -> str:
        versions = loaded.repo.desired_versions(env)
        stage = loaded.repo.stages.get(env.stage)
        payload = [
            *environment_payload(env),
            stage.self_heal if stage else True,
            sorted((a, v, self._app_digest(loaded, a, v)) for a, v in versions.items()),
        ]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    def render_tokens(self, loaded: Loaded, env: Environment) -> dict[str, str]:
        """Per application, a digest of everything rendering it in ``env`` reads (keys of the render memo).
        Computed once per revision, like :meth:`input_key`."""
        cached = self._render_tokens.get((loaded.revision, env.name))
        if cached is None:
            own = hashlib.sha256(json.dumps(environment_payload(env)).encode()).hexdigest()[:32]
            versions = loaded.repo.desired_versions(env).items()
            cached = {a: own + self._app_digest(loaded, a, v)[:32] for a, v in versions}
            self._render_tokens[(loaded.revision, env.name)] = cached
        return cached

    # --- the cycle -----------------------------------------------------------------------------------------------
    def cycle(self, trigger: str = "poll", stop: threading.Event | None = None) -> CycleReport:
        started = self.clock()
        self.cycles += 1
        self._take_late()
        report = CycleReport(revision=None)
        fetch_started = time.perf_counter()
        try:
            head = self.source.fetch()
            self.source_error = None
            self.fetched_once.set()
            self.metrics.fetch(time.perf_counter() - fetch_started, True)
        except ReconcilerError as exc:
            head = None
            self.source_error = str(exc)
            report.source_error = self.source_error
            self.metrics.fetch(time.perf_counter() - fetch_started, False)
            self.log.error("source fetch failed; serving the last good revision", error=str(exc))
        new_revision = head is not None and head != self.head
        recovered = False
        if head is not None and new_revision:
            self.head = head
            was_invalid = self.invalid is not None or self.restored_invalid
            self.restored_invalid = False
            self._load(head)
            recovered = was_invalid and self.invalid is None
            hint = self.last_good_hint
            if self.invalid and self.good is None and hint and hint != head:
                self._load_last_good(hint)
            self.metrics.revision(head, self.invalid is None)
        report.revision = self.head
        if self.invalid:
            report.invalid = self.invalid[1]
        loaded = self.good
        if loaded is None:
            self._write_status({}, report)
            report.duration = self.clock() - started
            return report

        now = self.clock()
        drift_due = self.last_drift_check is None or now - self.last_drift_check >= self.config.drift_interval
        if drift_due:
            self.last_drift_check = now
        manual = trigger == "manual"
        jobs: list[tuple[Job, str]] = []
        invalid_outcomes: dict[str, EnvOutcome] = {}
        for name, env in loaded.repo.environments.items():
            state = self.states.setdefault(name, EnvState())
            if name in loaded.env_problems:
                problems = loaded.env_problems[name]
                apps = {a: AppStatus(v, None, Phase.INVALID, "") for a, v in loaded.repo.desired_versions(env).items()}
                invalid_outcomes[name] = EnvOutcome(name, Phase.INVALID, "; ".join(str(p) for p in problems[:3]), apps)
                continue
            if name in self._overdue or not self.owns(name):  # (still running, or its audit not taken yet)
                report.skipped += 1
                continue
            key = self.input_key(loaded, env)
            changed = key != state.attempted_key  # new desired state: act now, whatever the backoff
            settled = not changed and state.phase is Phase.SYNCED
            if changed or state.phase is None:
                due = True
            elif settled:
                due = drift_due
            else:  # failed, blocked, progressing...: again when the backoff allows, or when asked to
                due = manual or now >= state.retry_at
            if not due:
                report.skipped += 1
                continue
            running = {a: s.get("live") for a, s in ((state.doc or {}).get("applications") or {}).items()}
            decision = self.gov.decide(loaded.repo, env, loaded.revision, loaded.trailers, state.applied_revision,
                                       changed, running, now)  # fmt: skip
            job = Job(
                env=env,
                repo=loaded.repo,
                tree=loaded.tree,
                revision=loaded.revision,
                author=loaded.author,
                committer=loaded.committer,
                check_drift=drift_due or changed or state.phase is None,
                dry_run=self.dry_run,
                trigger="drift-check" if settled else trigger,
                holds=decision.holds,
                signer=decision.signer,
                overrides=decision.overrides,
                owned=partial(self.owns, name),
                memo=self.memo,
                render_tokens=self.render_tokens(loaded, env),
                journal=None if self.dry_run else self.journal,
            )
            jobs.append((job, key))
        if recovered:  # every environment was shown Invalid: show it again as it is, at the new head
            for name in loaded.repo.environments:
                self.states.setdefault(name, EnvState()).attempted_revision = loaded.revision
            report.recovered = True
        outcomes = self._run_in_waves(loaded, jobs, stop)
        outcomes.update(invalid_outcomes)
        report.outcomes = outcomes
        self._record(loaded, report, {job.env.name: key for job, key in jobs})
        self._write_status(loaded.repo.environments, report)
        report.duration = self.clock() - started
        self._report_metrics(loaded, report)
        for listener in self.listeners:
            listener(report)
        return report

    def _report_metrics(self, loaded: Loaded, report: CycleReport) -> None:
        now = self.clock()
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
            if phase is Phase.BLOCKED and state and state.doc:
                message = str(state.doc.get("message", ""))
                blocked[name] = "freeze" if "frozen" in message else "policy"
            elif state and state.failures and state.retry_at > now:
                blocked[name] = "backoff"
        self.metrics.phases(phases, blocked)
        self.metrics.cycle(report.duration)

    def _run_in_waves(
        self, loaded: Loaded, jobs: list[tuple[Job, str]], stop: threading.Event | None
    ) -> dict[str, EnvOutcome]:
        """Run the jobs wave by wave: a stage's wave starts when its earlier waves are Synced, in batches of at most
        ``maxParallel``; a failure stops the rest of that stage's rollout. Stages without waves run in the first
        round, all together."""
        repo = loaded.repo
        phases: dict[str, Phase | None] = {n: s.phase for n, s in self.states.items()}
        outcomes: dict[str, EnvOutcome] = {}
        by_rank: dict[int, list[tuple[Job, str]]] = {}
        for job, key in jobs:
            by_rank.setdefault(self.gov.rank(repo, job.env), []).append((job, key))
        for rank in sorted(by_rank):
            batches: list[list[tuple[Job, str]]] = [[]]
            per_wave: dict[str, int] = {}
            for job, key in by_rank[rank]:
                state = self.states[job.env.name]
                changed = key != state.attempted_key or state.phase is not Phase.SYNCED  # work beyond a drift check
                reason = self.gov.wave_gate(repo, job.env, rank, phases) if changed else None
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
            stopped: set[str] = set()  # stages whose rollout stopped in this wave
            for batch_jobs in batches:
                runnable = []
                for job, key in batch_jobs:
                    if job.env.stage in stopped:
                        msg = f"rollout stopped: an earlier batch of wave {repo.wave_of(job.env)} failed"
                        outcomes[job.env.name] = EnvOutcome(job.env.name, Phase.BLOCKED, msg, {})
                    else:
                        runnable.append((job, key))
                done = self._run_jobs(runnable, stop)
                outcomes.update(done)
                for name, outcome in done.items():
                    phases[name] = outcome.phase
                    if outcome.phase in (Phase.FAILED, Phase.DEGRADED) and rank is not None:
                        stage = repo.stages.get(repo.environments[name].stage)
                        if stage is not None and stage.waves:
                            stopped.add(stage.name)
        return outcomes

    def _run_jobs(self, jobs: list[tuple[Job, str]], stop: threading.Event | None) -> dict[str, EnvOutcome]:
        outcomes: dict[str, EnvOutcome] = {}
        if not jobs:
            return outcomes
        started: dict[str, float] = {}

        def work(job: Job) -> EnvOutcome:
            started[job.env.name] = self.clock()
            return reconcile_environment(job, self.pool)

        # finished futures arrive in a queue: waiting on the whole pending set after every completion would cost
        # O(environments) waiter installs each time (quadratic over a cycle, with the workers waiting for the GIL)
        finished: queue.SimpleQueue[Future[EnvOutcome]] = queue.SimpleQueue()
        futures: dict[Future[EnvOutcome], Job] = {}
        for job, _ in jobs:
            future = self._executor.submit(work, job)
            futures[future] = job
            future.add_done_callback(finished.put)
        pending = set(futures)
        done_count = 0
        checked = self.clock()
        while pending:
            done: list[Future[EnvOutcome]] = []
            with contextlib.suppress(queue.Empty):
                done.append(finished.get(timeout=0.5))
                while True:
                    done.append(finished.get_nowait())
            for future in done:
                if future not in pending:  # timed out or cancelled before: already reported
                    continue
                pending.discard(future)
                job = futures[future]
                done_count += 1
                try:
                    outcomes[job.env.name] = self._take_audit(future.result())
                except Exception as exc:
                    self.log.exception("environment reconcile crashed", environment=job.env.name)
                    outcomes[job.env.name] = EnvOutcome(
                        job.env.name, Phase.FAILED, f"internal error: {type(exc).__name__}: {exc}", {}, transient=True
                    )
            if self.progress and done:
                self.progress(done_count, len(futures))
            now = self.clock()
            if done and pending and now - checked < 0.5:
                continue
            checked = now
            for future in list(pending):
                job = futures[future]
                began = started.get(job.env.name)
                cancelled = stop is not None and stop.is_set() and future.cancel()
                if cancelled:
                    pending.discard(future)
                    continue
                if began is not None and now - began > self.config.apply_timeout:
                    pending.discard(future)
                    name = job.env.name
                    self._overdue[name] = future  # what it applies still goes to the audit trail (_take_late)
                    outcomes[name] = EnvOutcome(
                        name,
                        Phase.FAILED,
                        f"timed out after {self.config.apply_timeout:.0f}s; still running, skipped until it returns",
                        {},
                        transient=True,
                    )
                    self.log.error("environment timed out", environment=name)
        return outcomes

    def _take_late(self) -> None:
        """Reconciles that returned after their environment was reported timed out: what they applied joins the
        audit trail (and governance's history). Their environment runs again only after this, so nothing they did
        goes unrecorded and the trail stays in time order."""
        for name, future in list(self._overdue.items()):
            if not future.done():
                continue
            del self._overdue[name]
            if future.cancelled():
                continue
            try:
                outcome = self._take_audit(future.result())
            except Exception:
                self.log.exception("environment reconcile crashed after its timeout", environment=name)
                continue
            self.log.warning("environment finished after its timeout", environment=name, phase=str(outcome.phase),
                             changes=outcome.changes, seconds=round(outcome.duration, 3))  # fmt: skip

    def running_late(self) -> list[str]:
        """Environments reported timed out whose reconcile has not returned yet."""
        return sorted(name for name, future in self._overdue.items() if not future.done())

    def finish_overdue(self, wait: float | None = None) -> None:
        """Before the process exits (``--once``, shutdown): wait (up to ``wait`` seconds; by default as long as they
        run, as the interpreter itself waits for its worker threads before it exits) for reconciles still running
        past their timeout, and commit what they applied to the audit trail."""
        if self._overdue:
            futures_wait(list(self._overdue.values()), timeout=wait)
        self._take_late()
        if self.pending_audit:
            self._write_status(self.good.repo.environments if self.good else {}, CycleReport(revision=self.head))
        for name in self.running_late():
            self.log.error("environment still running at exit: what it applies now is not in the audit trail",
                           environment=name)  # fmt: skip

    def _take_audit(self, outcome: EnvOutcome) -> EnvOutcome:
        """Take an environment's audit entries as soon as its reconcile returns: governance learns them, they wait
        for the status commit as JSON lines, and the outcome keeps only their count. (A cold cycle's entries held as
        dicts until the cycle ended were most of the controller's peak memory: 325,000 at 5,000 environments.)"""
        if not outcome.audit:
            return outcome
        if not self.dry_run:
            self.gov.learn(outcome.audit)
            lines = [json.dumps(e, sort_keys=True).encode() for e in outcome.audit]
            self.pending_audit.extend(lines)
            self.pending_ids.extend(e["id"] for e in outcome.audit if "id" in e)
            self.recent_audit.setdefault(outcome.environment, deque(maxlen=20)).extend(lines)
        return evolve(outcome, audit=(), changes=len(outcome.audit))

    def _record(self, loaded: Loaded, report: CycleReport, keys: Mapping[str, str]) -> None:
        now = self.clock()
        for name, outcome in report.outcomes.items():
            state = self.states.setdefault(name, EnvState())
            changes = outcome.changes or len(outcome.audit)
            log = self.log.info if changes or outcome.phase is not Phase.SYNCED else self.log.debug
            log("environment reconciled", environment=name, revision=loaded.revision[:12], phase=str(outcome.phase),
                changes=changes, message=outcome.message, seconds=round(outcome.duration, 3))  # fmt: skip
            state.phase = outcome.phase
            key = keys.get(name)
            new_inputs = key is not None and key != state.attempted_key
            if new_inputs or state.attempted_revision is None:
                state.attempted_revision = loaded.revision
            applied = (outcome.changed or outcome.phase in (Phase.SYNCED, Phase.PROGRESSING, Phase.DEGRADED)) and (
                not self.dry_run
            )
            if applied and (outcome.changed or new_inputs or state.applied_revision is None):
                state.applied_revision = loaded.revision
            if key is not None and not self.dry_run:
                state.attempted_key = key
            if outcome.phase is Phase.SYNCED and key is not None and not self.dry_run:
                state.input_key = key
                state.failures = 0
                state.retry_at = 0.0
            elif outcome.phase is Phase.FAILED or outcome.transient:
                state.failures += 1
                delay = min(self.config.backoff_initial * 2 ** (state.failures - 1), self.config.backoff_max)
                state.retry_at = now + delay * random.uniform(0.9, 1.1)
            else:  # Progressing/Degraded/Blocked/OutOfSync: look again when the backoff allows
                state.retry_at = now + self.config.backoff_initial

    # --- status --------------------------------------------------------------------------------------------------
    def _env_doc(self, name: str, env: Environment | None, outcome: EnvOutcome | None) -> dict[str, Any]:
        state = self.states[name]
        previous = state.doc or {}
        phase = outcome.phase if outcome else (state.phase or Phase.OUT_OF_SYNC)
        message = outcome.message if outcome else previous.get("message", "")
        apps: dict[str, Any] = (
            {
                a: statusdoc.app_entry(s.desired, s.live, str(s.phase), s.message)
                for a, s in outcome.applications.items()
            }
            if outcome is not None and outcome.applications
            else previous.get("applications", {})
        )
        if self.invalid is not None and self.good is not None:
            bad, problems = self.invalid
            phase = Phase.INVALID
            message = (
                f"revision {bad[:12]} is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''};"
                f" first: {problems[0]}); still serving {self.good.revision[:12]}"
            )
        return {
            "environment": name,
            "stage": env.stage if env else previous.get("stage"),
            "phase": str(phase),
            "message": message,
            "lastAppliedRevision": state.applied_revision,
            "lastAttemptedRevision": self.invalid[0] if self.invalid else state.attempted_revision,
            "updated": statusdoc.now_iso(),
            "desiredDigest": state.input_key,
            "applications": apps,
        }

    def _write_status(self, environments: Mapping[str, Environment], report: CycleReport) -> None:
        replace: dict[str, bytes] = {}
        touched = set(report.outcomes) | self.unpushed
        if self.invalid is not None or report.recovered:
            touched |= set(environments)
        for name in sorted(n for n in touched if self.owns(n)):  # never write status for another replica's env
            state = self.states.setdefault(name, EnvState())
            doc = self._env_doc(name, environments.get(name), report.outcomes.get(name))
            ident = statusdoc.identity(doc)
            if ident != state.doc_identity:
                replace[statusdoc.environment_path(name)] = statusdoc.dump(doc)
                state.doc, state.doc_identity = doc, ident
        controller = {
            "observedRevision": self.head,
            "lastGoodRevision": self.good.revision if self.good else None,
            "invalidRevision": self.invalid[0] if self.invalid else None,
            "problems": [str(p) for p in self.invalid[1][:50]] if self.invalid else [],
            "sourceError": self.source_error,
            "environments": len(environments),
            "updated": statusdoc.now_iso(),
        }
        ident = statusdoc.identity(controller)
        if ident != self.controller_doc_identity:
            replace["controller.yaml"] = statusdoc.dump(controller)
        if self.dry_run or self.store is None:
            return
        if not self.journal_recovered:
            self._recover_late()
        if not replace and not self.pending_audit:
            return
        append: dict[str, bytes] = {}
        if self.pending_audit:  # a new file per commit (the token: replicas never write the same name)
            path = statusdoc.audit_path(datetime.now(UTC), uuid.uuid4().hex[:8])
            append[path] = b"\n".join([*self.pending_audit, b""])  # one copy of the lines, not three
        changed_envs = sum(1 for p in replace if p.startswith("environments/"))
        message = (
            f"reconciler: {(self.head or 'unknown')[:12]}: {changed_envs} environment(s), "
            f"{len(self.pending_audit)} audit entr{'y' if len(self.pending_audit) == 1 else 'ies'}"
        )
        try:
            report.status_commit = self.store.write(replace, append, message)
            self.journal.pushed(self.pending_ids)
            self.pending_ids.clear()
            self.pending_audit.clear()
            self.unpushed.clear()
            self.controller_doc_identity = ident
            self.metrics.status_push(True)
        except ReconcilerError as exc:  # kept in memory and retried next cycle: nothing is lost
            self.metrics.status_push(False)
            for path in replace:  # written again next cycle, even if those environments are not reconciled then
                if path.startswith("environments/"):
                    name = path.removeprefix("environments/").removesuffix(".yaml")
                    self.states[name].doc_identity = None
                    self.unpushed.add(name)
            self.log.error("status push failed; will retry", error=str(exc))

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
                    "recentAudit": [json.loads(line) for line in self.recent_audit.get(name, ())],
                })  # fmt: skip
        return {
            "revision": self.head,
            "lastGoodRevision": loaded.revision if loaded else None,
            "invalidRevision": self.invalid[0] if self.invalid else None,
            "problems": [str(p) for p in self.invalid[1][:50]] if self.invalid else [],
            "sourceError": self.source_error,
            "cycles": self.cycles,
            "ready": self.fetched_once.is_set(),
            "applications": sorted(loaded.repo.applications) if loaded else [],
            "environments": envs,
        }

    def run_forever(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        wake = wake or self.wake
        self.loop_running = True
        try:
            while not stop.is_set():
                trigger = "webhook" if wake.is_set() else "poll"
                wake.clear()
                try:
                    self.cycle(trigger, stop)
                except Exception:
                    self.log.exception("cycle failed")
                if stop.is_set():
                    break
                wake.wait(self.config.interval * random.uniform(0.9, 1.1))
        finally:
            self.loop_running = False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        closing = getattr(self.journal, "close", None)
        if closing is not None:
            closing()
        self.pool.close()
        self.source.close()
