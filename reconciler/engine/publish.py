"""Publishing: status documents and the audit trail on the status branch, built in memory and written once.

Audit entries are taken from each outcome as its reconcile returns (:meth:`Publisher.take`), wait as JSON lines
for the cycle's status commit, and governance learns them at once (promotion, soak). :meth:`Publisher.write`
writes every changed environment document, ``controller.yaml`` and the waiting entries in one commit; a push that
fails keeps everything for the next cycle, so nothing is lost. :meth:`Publisher.restore` seeds the scheduler's
state from the status branch after a restart. The document format is :mod:`reconciler.status.document`'s.
Owned by the controller.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace as evolve
from datetime import UTC, datetime
from typing import Any, Protocol

from reconciler.core.model import Environment
from reconciler.core.operations import Suspension
from reconciler.core.plan import Phase
from reconciler.core.problems import ReconcilerError
from reconciler.engine.governance import Governance
from reconciler.engine.hooks import MetricsSink
from reconciler.engine.outcome import AppStatus, EnvOutcome, effects
from reconciler.engine.revision import Revisions
from reconciler.engine.schedule import Scheduler
from reconciler.observability.logging import get_logger
from reconciler.status import document as statusdoc
from reconciler.status.journal import AuditJournal, MemoryJournal
from reconciler.status.store import AuditTrail


class Store(Protocol):
    """The status branch as the engine uses it (:class:`reconciler.status.store.StatusStore`)."""

    def read(self) -> Any: ...
    def write(self, replace: Mapping[str, bytes], append: Mapping[str, bytes], message: str) -> str | None: ...
    def read_file(self, path: str) -> bytes | None: ...
    def refresh(self) -> None: ...


def _still_live(status: AppStatus, before: object) -> str | None:
    """The live version to show: an Invalid application keeps the one its last status showed."""
    if status.live is None and status.phase is Phase.INVALID and isinstance(before, Mapping):
        live = before.get("live")
        return live if isinstance(live, str) else None
    return status.live


class Publisher:
    def __init__(self, store: Store | None, sched: Scheduler, revisions: Revisions, gov: Governance,
                 metrics: MetricsSink, dry_run: bool, journal: AuditJournal | None = None) -> None:  # fmt: skip
        self.store = store
        self.sched = sched
        self.revisions = revisions
        self.gov = gov
        self.metrics = metrics
        self.dry_run = dry_run
        self.log = get_logger(component="controller")
        self.pending_audit: list[bytes] = []  # audit entries (JSON lines) not yet committed to the status branch
        self.pending_ids: list[str] = []  # their ids: the journal forgets them once they are pushed
        self.journal: AuditJournal = journal or MemoryJournal()  # entries survive a crash until they are pushed
        self.journal_recovered = False  # what an earlier run journalled and did not push is pending again
        self.unpushed: set[str] = set()  # environments whose status documents failed to push
        self.controller_doc_identity: str | None = None
        self._recent: dict[str, deque[bytes]] = {}  # the last 20 audit entries (JSON) per environment
        self._recent_lock = threading.Lock()  # worker outcomes extend it while the HTTP API reads it

    # --- start-up ------------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Seed per-environment memory from the status branch, so a restart does not rewrite unchanged status."""
        if self.store is None:
            return
        snapshot = self.store.read()
        leftovers = self.journal.unpushed()
        wanted, on_branch = {e["id"] for e in leftovers}, set[str]()
        if isinstance(self.store, AuditTrail):
            self.gov.learn(_noting_ids(self.store.audit_lines(), wanted, on_branch))
        self._recover_journal(leftovers, on_branch)
        for path, data in snapshot.files.items():
            if not (path.startswith("environments/") and path.endswith(".yaml")):
                continue
            doc = statusdoc.parse(data)
            if doc is not None and isinstance(doc.get("environment"), str):
                self.sched.restore(doc, statusdoc.identity(doc))
        controller = snapshot.files.get("controller.yaml")
        if controller is not None:
            doc = statusdoc.parse(controller)
            self.controller_doc_identity = statusdoc.identity(doc) if doc else None
            good = doc.get("lastGoodRevision") if doc else None
            self.revisions.last_good_hint = good if isinstance(good, str) else None
            self.revisions.restored_invalid = bool(doc and doc.get("invalidRevision"))

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
            with self._recent_lock:
                for entry, line in zip(fresh, lines, strict=True):
                    self._recent.setdefault(str(entry.get("environment")), deque(maxlen=20)).append(line)
        self.journal_recovered = True

    def _recover_late(self) -> None:
        """The journal's recovery when :meth:`restore` could not read the status branch: before the next status
        commit, once the branch can be read."""
        leftovers = self.journal.unpushed()
        if not leftovers:
            self.journal_recovered = True
            return
        wanted, on_branch = {e["id"] for e in leftovers}, set[str]()
        try:
            if isinstance(self.store, AuditTrail):
                for _ in _noting_ids(self.store.audit_lines(), wanted, on_branch):
                    pass
        except ReconcilerError as exc:
            self.log.error("cannot read the audit trail; journalled entries wait", error=str(exc))
            return
        self._recover_journal(leftovers, on_branch)

    # --- audit ---------------------------------------------------------------------------------------------
    def take(self, outcome: EnvOutcome) -> EnvOutcome:
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
            with self._recent_lock:
                self._recent.setdefault(outcome.environment, deque(maxlen=20)).extend(lines)
        touched, repaired, overrides = effects(outcome.audit)
        return evolve(outcome, audit=(), changes=len(outcome.audit), touched=touched, repaired=repaired,
                      overrides=overrides)  # fmt: skip

    def recent(self, environment: str) -> list[dict[str, Any]]:
        """The last audit entries of an environment (safe from any thread)."""
        with self._recent_lock:
            lines = list(self._recent.get(environment, ()))
        return [json.loads(line) for line in lines]

    # --- status documents ----------------------------------------------------------------------------------
    def env_doc(self, name: str, env: Environment | None, outcome: EnvOutcome | None) -> dict[str, Any]:
        state = self.sched.state(name)
        previous = state.doc or {}
        phase = outcome.phase if outcome else (state.phase or Phase.OUT_OF_SYNC)
        message = outcome.message if outcome else previous.get("message", "")
        before = previous.get("applications") or {}
        apps: dict[str, Any] = (
            {
                # invalid input changes nothing on the targets: what ran before still runs
                a: statusdoc.app_entry(s.desired, _still_live(s, before.get(a)), str(s.phase), s.message)
                for a, s in outcome.applications.items()
            }
            if outcome is not None and outcome.applications
            else before
        )
        phase, message, apps, brake = self._suspended(name, phase, message, apps)
        invalid, good = self.revisions.invalid, self.revisions.good
        if invalid is not None and good is not None:
            bad, problems = invalid
            phase = Phase.INVALID
            message = (
                f"revision {bad[:12]} is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''};"
                f" first: {problems[0]}); still serving {good.revision[:12]}"
            )
        return {
            "environment": name,
            "stage": env.stage if env else previous.get("stage"),
            "phase": str(phase),
            "phases": _phases(previous, phase, message),
            "message": message,
            "lastAppliedRevision": state.applied_revision,
            "lastAttemptedRevision": invalid[0] if invalid else state.attempted_revision,
            "updated": statusdoc.now_iso(),
            "desiredDigest": state.input_key,
            **({"attemptedDigest": state.attempted_key} if state.attempted_key != state.input_key else {}),
            **({"stalled": True} if state.stalled else {}),
            **({"suspended": brake} if brake else {}),
            **({"pins": dict(env.pins)} if env is not None and env.pins else {}),
            "applications": apps,
        }

    def _suspended(self, name: str, phase: Phase, message: str, apps: dict[str, Any]
                   ) -> tuple[Phase, str, dict[str, Any], dict[str, Any] | None]:  # fmt: skip
        """Suspensions shown as they hold: the environment (or the applications) Blocked, saying by whom and why."""
        found = self.gov.suspensions
        whole = found.get((name, None))
        held: dict[str, Suspension] = {}
        for app in apps:
            brake = whole or found.get((name, app))
            if brake is not None:
                held[app] = brake
        if not held and whole is None:
            return phase, message, apps, None
        apps = {a: statusdoc.app_entry(e.get("desired"), e.get("live"), str(Phase.BLOCKED), held[a].message())
                if a in held and isinstance(e, Mapping) else e for a, e in apps.items()}  # fmt: skip
        first = whole or next(iter(held.values()))
        if phase is not Phase.INVALID:
            phase = Phase.BLOCKED
            message = first.message() if whole else "; ".join(s.message() for s in held.values())
        shown = {"by": first.by, "reason": first.reason, "since": first.since,
                 "applications": None if whole else sorted(held)}  # fmt: skip
        return phase, message, apps, shown

    def controller_doc(self, environments: int, source_error: str | None) -> dict[str, Any]:
        rev = self.revisions
        return {
            "observedRevision": rev.head,
            "lastGoodRevision": rev.good.revision if rev.good else None,
            "invalidRevision": rev.invalid[0] if rev.invalid else None,
            "problems": [str(p) for p in rev.invalid[1][:50]] if rev.invalid else [],
            "sourceError": source_error,
            "environments": environments,
            "updated": statusdoc.now_iso(),
        }

    def write(self, environments: Mapping[str, Environment], outcomes: Mapping[str, EnvOutcome], everything: bool,
              source_error: str | None, owns: Callable[[str], bool]) -> str | None:  # fmt: skip
        """One status commit: changed documents and the waiting audit entries. ``everything``: every environment's
        document is looked at (an invalid head, or a recovery from one). Returns the commit, if one was made."""
        replace: dict[str, bytes] = {}
        touched = set(outcomes) | self.unpushed | (set(environments) if everything else set())
        for name in sorted(n for n in touched if owns(n)):  # never write status for another replica's env
            state = self.sched.state(name)
            doc = self.env_doc(name, environments.get(name), outcomes.get(name))
            ident = statusdoc.identity(doc)
            if ident != state.doc_identity:
                replace[statusdoc.environment_path(name)] = statusdoc.dump(doc)
                state.doc, state.doc_identity = doc, ident
        controller = self.controller_doc(len(environments), source_error)
        ident = statusdoc.identity(controller)
        if ident != self.controller_doc_identity:
            replace["controller.yaml"] = statusdoc.dump(controller)
        if self.dry_run or self.store is None:
            return None
        if not self.journal_recovered:
            self._recover_late()
        if not replace and not self.pending_audit:
            return None
        return self._commit(replace, ident)

    def _commit(self, replace: dict[str, bytes], controller_identity: str) -> str | None:
        assert self.store is not None
        append: dict[str, bytes] = {}
        if self.pending_audit:  # a new file per commit (the token: replicas never write the same name)
            path = statusdoc.audit_path(datetime.now(UTC), uuid.uuid4().hex[:8])
            append[path] = b"\n".join([*self.pending_audit, b""])  # one copy of the lines, not three
        changed_envs = sum(1 for p in replace if p.startswith("environments/"))
        count = len(self.pending_audit)
        message = (f"reconciler: {(self.revisions.head or 'unknown')[:12]}: {changed_envs} environment(s), "
                   f"{count} audit entr{'y' if count == 1 else 'ies'}")  # fmt: skip
        try:
            commit = self.store.write(replace, append, message)
        except ReconcilerError as exc:  # kept in memory and retried next cycle: nothing is lost
            self.metrics.status_push(False)
            for path in replace:  # written again next cycle, even if those environments are not reconciled then
                if path.startswith("environments/"):
                    name = path.removeprefix("environments/").removesuffix(".yaml")
                    self.sched.state(name).doc_identity = None
                    self.unpushed.add(name)
            self.log.error("status push failed; will retry", error=str(exc))
            return None
        self.journal.pushed(self.pending_ids)
        self.pending_ids.clear()
        self.pending_audit.clear()
        self.unpushed.clear()
        self.controller_doc_identity = controller_identity
        self.metrics.status_push(True)
        return commit


MAX_PHASES = 50  # transitions kept per environment in its status document


def _phases(previous: Mapping[str, Any], phase: Phase, message: str) -> list[dict[str, Any]]:
    """The environment's phase history: its last :data:`MAX_PHASES` transitions, oldest first, each with when it
    began and why (the status document keeps it, so it survives restarts and every replica reads it)."""
    kept = previous.get("phases")
    history = [p for p in kept if isinstance(p, dict)] if isinstance(kept, list) else []
    if history and history[-1].get("phase") == str(phase):
        return history
    entry = {"phase": str(phase), "since": statusdoc.now_iso(), "message": message[:300]}
    return [*history, entry][-MAX_PHASES:]


def _noting_ids(entries: Iterable[Mapping[str, Any]], wanted: set[str], found: set[str]) -> Iterator[Mapping[str, Any]]:
    """``entries`` as they are, noting in ``found`` the ids among ``wanted`` that they carry."""
    for entry in entries:
        ident = entry.get("id")
        if wanted and isinstance(ident, str) and ident in wanted:
            found.add(ident)
        yield entry
