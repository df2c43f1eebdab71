"""Day-2 operations an operator asks for (sync, refresh, suspend, resume), as records and their effect.

Every request is an :class:`Operation` record: who asked, when, why, for which environment (and application).
They are kept on the status branch (``operations.jsonl``, append-only: concurrent replicas never lose one) and in
the audit trail. :func:`suspensions` folds the records into what is suspended now; the decision core holds every
change and drift repair of a suspended environment or application (``Facts.suspensions``), on every attempt.
Pure; used by the engine (recording, restoring) and by :mod:`reconciler.core.decide`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

LOG_PATH = "operations.jsonl"  # on the status branch
MAX_REASON = 500


class Action(StrEnum):
    SYNC = "sync"  # reconcile now, skipping backoff and the poll interval
    REFRESH = "refresh"  # observe and drift-check now, apply nothing
    SUSPEND = "suspend"  # hold every change and drift repair until resumed
    RESUME = "resume"


@dataclass(frozen=True)
class Operation:
    """One operator request, as recorded."""

    id: str
    time: str  # ISO 8601, UTC
    action: Action
    environment: str
    application: str | None  # None: the whole environment
    by: str  # the caller's identity (token name, proxy user)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time, "action": str(self.action), "environment": self.environment,
                "application": self.application, "by": self.by, "reason": self.reason}  # fmt: skip

    def line(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class Suspension:
    environment: str
    application: str | None
    by: str
    reason: str
    since: str

    def message(self) -> str:
        what = f"{self.application} " if self.application else ""
        return f"{what}suspended by {self.by} since {self.since}: {self.reason or 'no reason given'}"


Suspensions = Mapping[tuple[str, str | None], Suspension]


def parse(data: bytes) -> list[Operation]:
    """The records of an ``operations.jsonl`` (unreadable lines are skipped: it is append-only, machine-written)."""
    found: list[Operation] = []
    for line in data.splitlines():
        try:
            raw = json.loads(line)
            app = raw.get("application")
            scope = (str(raw["environment"]), None if app is None else str(app))
            found.append(Operation(str(raw["id"]), str(raw["time"]), Action(raw["action"]), *scope, str(raw["by"]),
                                   str(raw.get("reason", ""))))  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return found


def suspensions(operations: Iterable[Operation]) -> dict[tuple[str, str | None], Suspension]:
    """What is suspended after ``operations`` (in order): a resume lifts the suspension of the same scope; a resume
    of a whole environment lifts its applications' too."""
    out: dict[tuple[str, str | None], Suspension] = {}
    for op in operations:
        key = (op.environment, op.application)
        if op.action is Action.SUSPEND:
            out[key] = Suspension(op.environment, op.application, op.by, op.reason, op.time)
        elif op.action is Action.RESUME:
            out.pop(key, None)
            if op.application is None:
                for other in [k for k in out if k[0] == op.environment]:
                    out.pop(other)
    return out


def suspended(found: Suspensions, environment: str, application: str) -> Suspension | None:
    """The suspension holding ``application`` in ``environment``, if any (the environment's first)."""
    return found.get((environment, None)) or found.get((environment, application))
