"""The audit entry: one record per effect on a target (apply, remove, adopt), typed. Pure.

Who changed what, where, from which version to which, on whose authority (author, committer, signer, override),
with what result, when. The executor makes one per effect; the status branch stores them as JSON lines under
``audit/`` (keys as :meth:`AuditEntry.as_dict` names them: the public format of ``reconciler history``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AuditEntry:
    id: str  # unique: the journal and the status branch know an entry by it (pushed exactly once)
    time: str
    start: str
    end: str | None
    revision: str
    author: str
    committer: str
    environment: str
    stage: str
    application: str
    target: str
    action: str  # create | update | remove | adopt | rollback (and, from operators: sync | refresh | suspend | resume)
    from_version: str | None
    to_version: str | None
    result: str | None  # succeeded | failed | interrupted (None: announced in the journal, not made yet)
    trigger: str  # revision | poll | webhook | manual | drift | drift-check
    signer: str | None
    override: str | None
    replica: str | None
    message: str
    signer_team: str | None = None  # the Teams the signer belongs to (comma-separated), when Teams are declared

    # the keys of as_dict(), in its order (history's CSV has a column for each)
    FIELDS = ("id", "time", "start", "end", "revision", "author", "committer", "environment", "stage",
              "application", "target", "action", "from", "to", "result", "trigger", "signer", "signerTeam",
              "override", "replica", "message")  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "time": self.time, "start": self.start, "end": self.end, "revision": self.revision,
            "author": self.author, "committer": self.committer, "environment": self.environment,
            "stage": self.stage, "application": self.application, "target": self.target, "action": self.action,
            "from": self.from_version, "to": self.to_version, "result": self.result, "trigger": self.trigger,
            "signer": self.signer, "signerTeam": self.signer_team, "override": self.override,
            "replica": self.replica, "message": self.message,
        }  # fmt: skip
