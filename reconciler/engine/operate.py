"""Operator requests (sync, refresh, suspend, resume) recorded on the status branch and shared by every replica.

:meth:`Operations.request` writes the request to the status branch before anything happens: one line appended to
``operations.jsonl`` (append-only, so replicas writing at once lose nothing) and one audit entry (who: the caller's
identity as ``author``; why: ``message``; ``action``: the verb). If it cannot be written nothing is done and the
caller gets the error. Suspensions are then folded into ``Governance.suspensions``, which the decision core reads
for every attempt. :meth:`Operations.restore` reads the file at start-up (a suspension survives restarts) and
:meth:`Operations.poll` re-reads it every few seconds when several replicas share the branch (a request made on
one is honoured by all). Used by :class:`reconciler.engine.controller.Controller`.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from reconciler.core.operations import LOG_PATH, MAX_REASON, Action, Operation, parse, suspensions
from reconciler.engine.governance import Governance
from reconciler.status import document as statusdoc

POLL_SECONDS = 10.0  # how often a replica re-reads the operations of the others


class OperationsStore(Protocol):
    def write(self, replace: Mapping[str, bytes], append: Mapping[str, bytes], message: str) -> str | None: ...

    def read_file(self, path: str) -> bytes | None: ...

    def refresh(self) -> None: ...


class RequestError(ValueError):
    """A request that names nothing the controller knows (unknown environment or application)."""


class Operations:
    def __init__(self, store: OperationsStore | None, gov: Governance, clock: Callable[[], float],
                 replica: str | None) -> None:  # fmt: skip
        self.store = store
        self.gov = gov
        self.clock = clock
        self.replica = replica
        self.records: list[Operation] = []  # the memory of a controller without a status branch
        self.last_poll = float("-inf")
        self._lock = threading.Lock()

    def restore(self) -> None:
        if self.store is not None:
            self._load(self.store.read_file(LOG_PATH) or b"")

    def poll(self, now: float) -> set[str]:
        """Re-read the file (fetching the branch) at most every :data:`POLL_SECONDS`; returns the environments
        whose suspensions changed (to be looked at again, so their status shows it)."""
        if self.store is None or now - self.last_poll < POLL_SECONDS:
            return set()
        self.last_poll = now
        self.store.refresh()
        before = dict(self.gov.suspensions)
        self._load(self.store.read_file(LOG_PATH) or b"")
        after = self.gov.suspensions
        return {scope[0] for scope, _brake in set(before.items()) ^ set(after.items())}

    def _load(self, data: bytes) -> None:
        with self._lock:
            self.records = parse(data)
            self.gov.suspensions = suspensions(self.records)

    def request(self, action: Action, environment: str, application: str | None, by: str, reason: str,
                stage: str | None) -> Operation:  # fmt: skip
        """Record the request durably (raises the store's error if it cannot), then apply its suspension change."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        op = Operation(uuid.uuid4().hex, now.isoformat(timespec="seconds").replace("+00:00", "Z"), action,
                       environment, application, by, reason[:MAX_REASON])  # fmt: skip
        if self.store is not None:
            entry = audit_entry(op, stage, self.replica)
            path = statusdoc.audit_path(now, uuid.uuid4().hex[:8])
            line = json.dumps(entry, sort_keys=True).encode() + b"\n"
            what = f"{environment}/{application}" if application else environment
            self.store.write({}, {LOG_PATH: op.line(), path: line}, f"reconciler: {action} {what} by {by}")
        with self._lock:
            self.records.append(op)
            self.gov.suspensions = suspensions(self.records)
        return op


def audit_entry(op: Operation, stage: str | None, replica: str | None) -> dict[str, Any]:
    """The audit trail's entry for a request: the same columns as an effect's (``history`` shows both)."""
    return {
        "id": op.id, "time": op.time, "start": op.time, "end": op.time, "revision": None, "author": op.by,
        "committer": None, "environment": op.environment, "stage": stage, "application": op.application,
        "target": None, "action": str(op.action), "from": None, "to": None, "result": "succeeded",
        "trigger": "manual", "signer": None, "signerTeam": None, "override": None, "replica": replica,
        "message": op.reason,
    }  # fmt: skip
