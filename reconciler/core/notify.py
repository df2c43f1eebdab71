"""What to tell people after a cycle: events from phase changes, coalesced into a few short messages.

``phase_events`` compares each environment's phase before and after a cycle and yields one :class:`Event` per
change worth telling (to Degraded, Failed, Blocked, Invalid, or back to Synced from one of those). ``coalesce``
groups a cycle's events by (kind, stage, phase): 235 environments going Synced is one message per stage, naming a
few environments and counting the rest. Messages carry no secret: they are built only from names, versions,
revisions, authors and the reasons the status already shows.

Called by the notification outbox's producer (``reconciler.notify``) once per cycle. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.core.plan import Phase

TROUBLE = frozenset({Phase.DEGRADED, Phase.FAILED, Phase.BLOCKED, Phase.INVALID})
SHOWN = 5  # environments named in one message; the others are counted


class EventKind(StrEnum):
    DEGRADED = "environment.degraded"
    FAILED = "environment.failed"
    BLOCKED = "environment.blocked"
    INVALID = "environment.invalid"
    RECOVERED = "environment.recovered"


_KIND = {
    Phase.DEGRADED: EventKind.DEGRADED,
    Phase.FAILED: EventKind.FAILED,
    Phase.BLOCKED: EventKind.BLOCKED,
    Phase.INVALID: EventKind.INVALID,
}


@dataclass(frozen=True)
class Event:
    kind: EventKind
    environment: str
    stage: str
    phase: Phase
    previous: Phase | None
    reason: str = ""
    revision: str = ""
    author: str = ""


@dataclass(frozen=True)
class Message:
    """One notification: a coalesced group of events of one kind and stage."""

    kind: EventKind
    stage: str
    phase: Phase
    environments: tuple[str, ...]
    reasons: tuple[str, ...] = ()
    revision: str = ""
    authors: tuple[str, ...] = field(default=())

    @property
    def text(self) -> str:
        count = len(self.environments)
        shown = ", ".join(self.environments[:SHOWN]) + (f" and {count - SHOWN} more" if count > SHOWN else "")
        what = "back to Synced" if self.kind is EventKind.RECOVERED else self.phase.value
        head = f"{self.stage}: {count} environment{'s' if count != 1 else ''} {what} ({shown})"
        tail = f"; {'; '.join(self.reasons[:3])}" if self.reasons else ""
        at = f" at {self.revision[:12]}" if self.revision else ""
        by = f" by {', '.join(self.authors[:3])}" if self.authors else ""
        return f"{head}{tail}{at}{by}"

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "stage": self.stage,
            "phase": self.phase.value,
            "environments": list(self.environments),
            "reasons": list(self.reasons),
            "revision": self.revision,
            "authors": list(self.authors),
            "text": self.text,
        }


def phase_events(
    before: Mapping[str, Phase | None],
    after: Mapping[str, tuple[Phase, str]],
    stages: Mapping[str, str],
    revision: str = "",
    author: str = "",
) -> list[Event]:
    """The changes worth telling from ``before`` (environment -> phase) to ``after`` (environment -> (phase,
    reason)); ``stages`` names each environment's stage."""
    events: list[Event] = []
    for env, (phase, reason) in sorted(after.items()):
        previous = before.get(env)
        if phase == previous:
            continue
        stage = stages.get(env, "")
        if phase in TROUBLE:
            events.append(Event(_KIND[phase], env, stage, phase, previous, reason, revision, author))
        elif phase is Phase.SYNCED and previous in TROUBLE:
            events.append(Event(EventKind.RECOVERED, env, stage, phase, previous, "", revision, author))
    return events


def coalesce(events: Iterable[Event]) -> list[Message]:
    """One message per (kind, stage, phase), environments in order, distinct reasons once each."""
    groups: dict[tuple[EventKind, str, Phase], list[Event]] = {}
    for event in events:
        groups.setdefault((event.kind, event.stage, event.phase), []).append(event)
    messages = []
    for (kind, stage, phase), group in sorted(groups.items()):
        reasons = tuple(dict.fromkeys(e.reason for e in group if e.reason))
        authors = tuple(dict.fromkeys(e.author for e in group if e.author))
        revision = group[0].revision if len({e.revision for e in group}) == 1 else ""
        messages.append(Message(kind, stage, phase, tuple(e.environment for e in group), reasons, revision, authors))
    return messages
