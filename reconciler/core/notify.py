"""What to tell people after a cycle: events from what the cycle observed, coalesced into a few short messages.

``cycle_events`` turns each reconciled environment's :class:`Observation` (its phase before and after, the
applications it changed, repaired or held, the overrides used) into :class:`Event` values: phase changes worth
telling (to Degraded, Failed, Blocked, Invalid; a permanent error; back to Synced from one of those), drift
repaired, an override used. :class:`Rollouts` follows each stage across cycles and says when a stage whose
environments were changed is all Synced again (``stage.rollout-finished``). ``coalesce`` groups events by (kind,
stage, phase): 235 environments going Synced is one message per stage, naming a few environments and counting the
rest. ``stage_status`` sums up a stage for a forge commit status. Messages carry no secret: they are built only
from names, versions, revisions, authors, the reasons the status already shows and the override reasons the
audit trail already shows.

Called by the notifier (:mod:`reconciler.engine.notifications`) once per cycle. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.core.plan import PHASE_SEVERITY, Phase

TROUBLE = frozenset({Phase.DEGRADED, Phase.FAILED, Phase.BLOCKED, Phase.INVALID})
SHOWN = 5  # environments named in one message; the others are counted


class EventKind(StrEnum):
    DEGRADED = "environment.degraded"
    FAILED = "environment.failed"
    BLOCKED = "environment.blocked"
    INVALID = "environment.invalid"
    PERMANENT_ERROR = "environment.permanent-error"  # failed and not retried until its inputs change
    RECOVERED = "environment.recovered"
    DRIFT_REPAIRED = "environment.drift-repaired"
    OVERRIDE_USED = "environment.override-used"
    SUSPENDED = "environment.suspended"
    RESUMED = "environment.resumed"
    ROLLOUT_FINISHED = "stage.rollout-finished"


_KIND = {
    Phase.DEGRADED: EventKind.DEGRADED,
    Phase.FAILED: EventKind.FAILED,
    Phase.BLOCKED: EventKind.BLOCKED,
    Phase.INVALID: EventKind.INVALID,
}

_WHAT = {
    EventKind.PERMANENT_ERROR: "Failed, not retried until its inputs change",
    EventKind.RECOVERED: "back to Synced",
    EventKind.DRIFT_REPAIRED: "drift repaired",
    EventKind.OVERRIDE_USED: "changed under an override",
    EventKind.SUSPENDED: "suspended",
    EventKind.RESUMED: "resumed",
    EventKind.ROLLOUT_FINISHED: "Synced after a rollout",
}


class StatusState(StrEnum):
    """A forge commit status's state (GitHub's names; each forge sink maps them to its own)."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"


Versions = tuple[tuple[str, str], ...]  # (application, version) pairs


@dataclass(frozen=True)
class Observation:
    """What the notifier needs of one environment after its reconcile."""

    environment: str
    stage: str
    phase: Phase
    reason: str = ""
    stalled: bool = False  # a permanent error (not retried until its inputs change)
    versions: Versions = ()  # every application and its desired version
    troubled: tuple[str, ...] = ()  # applications not Synced
    touched: tuple[str, ...] = ()  # applications changed on a target (not counting drift repairs)
    repaired: tuple[str, ...] = ()  # applications whose drift was repaired
    overrides: tuple[str, ...] = ()  # overrides used ("promotion: why")

    def of(self, applications: Iterable[str]) -> Versions:
        wanted = set(applications)
        return tuple((a, v) for a, v in self.versions if a in wanted)


@dataclass(frozen=True)
class Event:
    kind: EventKind
    environment: str
    stage: str
    phase: Phase | None = None
    reason: str = ""
    revision: str = ""
    author: str = ""
    applications: Versions = ()  # the applications it concerns, with their versions


@dataclass(frozen=True)
class Message:
    """One notification: a coalesced group of events of one kind and stage."""

    kind: EventKind
    stage: str
    phase: Phase | None
    environments: tuple[str, ...]
    reasons: tuple[str, ...] = ()
    revision: str = ""
    authors: tuple[str, ...] = field(default=())
    applications: Versions = ()
    link: str = ""

    @property
    def text(self) -> str:
        count = len(self.environments)
        shown = ", ".join(self.environments[:SHOWN]) + (f" and {count - SHOWN} more" if count > SHOWN else "")
        what = _WHAT.get(self.kind) or (self.phase.value if self.phase else self.kind.value)
        head = f"{self.stage}: {count} environment{'s' if count != 1 else ''} {what} ({shown})"
        apps = f": {', '.join(f'{a} {v}'.strip() for a, v in self.applications[:5])}" if self.applications else ""
        more = f" and {len(self.applications) - 5} more" if len(self.applications) > 5 else ""
        tail = f"; {'; '.join(self.reasons[:3])}" if self.reasons else ""
        at = f" at {self.revision[:12]}" if self.revision else ""
        by = f" by {', '.join(self.authors[:3])}" if self.authors else ""
        return f"{head}{apps}{more}{tail}{at}{by}"

    @property
    def subject(self) -> str:
        count = len(self.environments)
        what = _WHAT.get(self.kind) or (self.phase.value if self.phase else self.kind.value)
        return f"{self.stage}: {count} environment{'s' if count != 1 else ''} {what}"

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "stage": self.stage,
            "phase": self.phase.value if self.phase else None,
            "environments": list(self.environments),
            "applications": [{"name": a, "version": v} for a, v in self.applications],
            "reasons": list(self.reasons),
            "revision": self.revision,
            "authors": list(self.authors),
            "link": self.link,
            "subject": self.subject,
            "text": self.text,
        }


def phase_event(observation: Observation, previous: Phase | None, revision: str, author: str) -> Event | None:
    """The change of phase worth telling, if any."""
    o = observation
    if o.phase == previous:
        return None
    if o.phase is Phase.FAILED and o.stalled:
        return Event(EventKind.PERMANENT_ERROR, o.environment, o.stage, o.phase, o.reason, revision, author,
                     o.of(o.troubled))  # fmt: skip
    if o.phase in TROUBLE:
        return Event(_KIND[o.phase], o.environment, o.stage, o.phase, o.reason, revision, author, o.of(o.troubled))
    if o.phase is Phase.SYNCED and previous in TROUBLE:
        return Event(EventKind.RECOVERED, o.environment, o.stage, o.phase, "", revision, author, o.of(o.touched))
    return None


def cycle_events(
    before: Mapping[str, Phase | None], observed: Iterable[Observation], revision: str = "", author: str = ""
) -> list[Event]:
    """The events of one cycle: phase changes against ``before`` (environment -> phase), drift repaired, overrides
    used."""
    events: list[Event] = []
    for o in sorted(observed, key=lambda o: o.environment):
        changed = phase_event(o, before.get(o.environment), revision, author)
        if changed is not None:
            events.append(changed)
        if o.repaired:
            events.append(Event(EventKind.DRIFT_REPAIRED, o.environment, o.stage, o.phase, "", revision, author,
                                o.of(o.repaired)))  # fmt: skip
        for why in o.overrides:
            events.append(Event(EventKind.OVERRIDE_USED, o.environment, o.stage, o.phase, why, revision, author,
                                o.of(o.touched)))  # fmt: skip
    return events


@dataclass
class Rollouts:
    """Each stage's rollout in progress: the (application, version) pairs changed in it since it was last all
    Synced. A stage's rollout is finished when every one of its environments is Synced."""

    rolling: dict[str, set[tuple[str, str]]] = field(default_factory=dict)

    def step(
        self,
        observed: Iterable[Observation],
        members: Mapping[str, str],
        phases: Mapping[str, Phase | None],
        revision: str = "",
        author: str = "",
    ) -> list[Event]:
        """Learn what this cycle changed; ``members``: environment -> stage of every environment, ``phases``: every
        environment's phase now. Returns one event per environment of each stage whose rollout just finished."""
        for o in observed:
            if o.touched:
                self.rolling.setdefault(o.stage, set()).update(o.of(o.touched))
        events: list[Event] = []
        for stage in sorted(self.rolling):
            envs = sorted(e for e, s in members.items() if s == stage)
            if envs and all(phases.get(e) is Phase.SYNCED for e in envs):
                apps = tuple(sorted(self.rolling.pop(stage)))
                events.extend(Event(EventKind.ROLLOUT_FINISHED, e, stage, Phase.SYNCED, "", revision, author, apps)
                              for e in envs)  # fmt: skip
        return events


def coalesce(events: Iterable[Event], link: str = "") -> list[Message]:
    """One message per (kind, stage, phase), environments in order, distinct reasons, authors and applications once
    each; ``link``: the dashboard's base URL (a message about one environment links to its page)."""
    groups: dict[tuple[EventKind, str, str], list[Event]] = {}
    for event in events:
        groups.setdefault((event.kind, event.stage, event.phase.value if event.phase else ""), []).append(event)
    messages = []
    for (kind, stage, _), group in sorted(groups.items()):
        reasons = tuple(dict.fromkeys(e.reason for e in group if e.reason))
        authors = tuple(dict.fromkeys(e.author for e in group if e.author))
        apps = tuple(dict.fromkeys(pair for e in group for pair in e.applications))
        revision = group[0].revision if len({e.revision for e in group}) == 1 else ""
        names = tuple(dict.fromkeys(e.environment for e in group))
        where = f"/environments/{names[0]}" if len(names) == 1 else "/stages"
        messages.append(Message(kind, stage, group[0].phase, names, reasons, revision, authors, apps,
                                f"{link.rstrip('/')}{where}" if link else ""))  # fmt: skip
    return messages


def stage_status(phases: Iterable[Phase | None]) -> tuple[StatusState, str]:
    """A stage's commit status from its environments' phases: error when one is Failed or Invalid, failure when one
    is Degraded, pending while any is not Synced yet (Progressing, OutOfSync, Blocked: a soak or a freeze waits, it
    has not failed), success when all are Synced. The description counts phases, worst last: "44/47 Synced, 3
    Progressing"."""
    counts: dict[Phase, int] = {}
    unknown = 0
    for phase in phases:
        if phase is None:
            unknown += 1
        else:
            counts[phase] = counts.get(phase, 0) + 1
    total = sum(counts.values()) + unknown
    if counts.keys() & {Phase.FAILED, Phase.INVALID}:
        state = StatusState.ERROR
    elif Phase.DEGRADED in counts:
        state = StatusState.FAILURE
    elif counts.get(Phase.SYNCED, 0) == total and total:
        state = StatusState.SUCCESS
    else:
        state = StatusState.PENDING
    parts = [f"{counts.get(Phase.SYNCED, 0)}/{total} Synced"]
    parts += [f"{n} {p.value}" for p, n in sorted(counts.items(), key=lambda i: PHASE_SEVERITY[i[0]])
              if p is not Phase.SYNCED]  # fmt: skip
    parts += [f"{unknown} not reconciled yet"] if unknown else []
    return state, ", ".join(parts)
