"""Notifications after each cycle: the operator's sinks and subscriptions, the application teams' ``notify``, and
the forge's commit statuses, fed from what the cycle observed.

``build_notifier`` reads the config's ``notifications`` section (sinks by name: ``webhook`` with a signing
``secret``, ``slack`` whose ``url`` is the secret, ``email`` over SMTP with STARTTLS; secrets by reference,
``env:NAME`` / ``file:/path``; ``commitStatuses`` for the forge) and returns a :class:`Notifier` the controller
calls after each cycle's status commit (a cycle listener). It turns the cycle's outcomes into events
(:mod:`reconciler.core.notify`: phase changes against the phase it last saw, drift repaired, overrides used,
rollouts finished), routes each event to the sinks whose subscription matches it (kind, stage, environment,
application) and to the sinks the event's applications name in ``notify``, coalesces each sink's events per kind
and stage, and offers the messages. Offering never waits (:class:`reconciler.notify.outbox.Outbox`, one per sink),
so a slow or hanging sink cannot delay a cycle, a status commit or another sink's messages. An operator's suspend
or resume is told as it is recorded (:meth:`Notifier.operation`).
Called by :class:`reconciler.engine.controller.Controller`.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.core.notify import Event, EventKind, Observation, Rollouts, coalesce, cycle_events
from reconciler.core.plan import Phase
from reconciler.core.problems import PermanentError
from reconciler.engine.commit_statuses import StatusPoster
from reconciler.engine.outcome import EnvOutcome
from reconciler.notify.forge import ForgeKind, ForgeStatuses
from reconciler.notify.mail import MailSink, SmtpServer
from reconciler.notify.outbox import Outbox, Sink
from reconciler.notify.slack import SlackSink
from reconciler.notify.webhook import WebhookSink
from reconciler.observability.logging import get_logger
from reconciler.secrets.references import SecretError, resolve_secret

RESULTS = ("sent", "retried", "failed", "dropped")


class CycleOutcomes(Protocol):
    """What the notifier reads of a cycle's report."""

    @property
    def outcomes(self) -> Mapping[str, EnvOutcome]: ...


class Fleet(Protocol):
    """What the notifier reads of the good head (the controller answers)."""

    def members(self) -> Mapping[str, str]:
        """Every environment and its stage."""
        ...

    def notify_of(self) -> Mapping[str, tuple[str, ...]]:
        """Each application's ``notify`` sinks."""
        ...

    def head(self) -> tuple[str, str]:
        """The revision applied and its author."""
        ...


@dataclass(frozen=True)
class Subscription:
    sink: str
    events: frozenset[str] = frozenset()  # event kinds (environment.degraded...); empty: all
    stages: frozenset[str] = frozenset()  # each filter: empty means all
    environments: frozenset[str] = frozenset()
    applications: frozenset[str] = frozenset()

    def wants(self, event: Event) -> bool:
        return (
            (not self.events or event.kind.value in self.events)
            and (not self.stages or event.stage in self.stages)
            and (not self.environments or event.environment in self.environments)
            and (not self.applications or any(a in self.applications for a, _ in event.applications))
        )


def observe(outcome: EnvOutcome, stage: str) -> Observation:
    apps = outcome.applications
    return Observation(
        outcome.environment, stage, outcome.phase, outcome.message, outcome.stalled,
        tuple((a, s.desired or "") for a, s in apps.items()),
        tuple(a for a, s in apps.items() if s.phase is not Phase.SYNCED),
        outcome.touched, outcome.repaired, outcome.overrides,
    )  # fmt: skip


class Notifier:
    def __init__(self, sinks: Mapping[str, Sink], subscriptions: list[Subscription], fleet: Fleet, link: str = "",
                 statuses: StatusPoster | None = None) -> None:  # fmt: skip
        self.sinks = dict(sinks)
        self.subscriptions = subscriptions
        self.fleet = fleet
        self.link = link
        self.statuses = statuses
        self.seen: dict[str, Phase | None] = {}
        self.rollouts = Rollouts()
        # one outbox (queue and thread) per sink: a sink that hangs holds up only its own messages
        self.outboxes = {name: Outbox() for name in self.sinks}
        self.unknown: set[tuple[str, str]] = set()  # (application, sink) already warned about
        self.log = get_logger(component="notifications")

    def __call__(self, report: CycleOutcomes) -> None:
        members = self.fleet.members()
        revision, author = self.fleet.head()
        observed = [observe(o, members.get(name, "")) for name, o in report.outcomes.items()]
        events = cycle_events(self.seen, observed, revision, author)
        self.seen.update({o.environment: o.phase for o in observed})
        events += self.rollouts.step(observed, members, self.seen, revision, author)
        self.tell(events)
        if self.statuses is not None:
            self.statuses.update(revision, members, self.seen)

    def operation(self, action: str, environment: str, application: str | None, by: str, reason: str) -> None:
        """An operator's suspend or resume, told as it is recorded."""
        kind = {"suspend": EventKind.SUSPENDED, "resume": EventKind.RESUMED}.get(action)
        if kind is None:
            return
        stage = self.fleet.members().get(environment, "")
        why = f"by {by}" + (f": {reason}" if reason else "")
        apps = ((application, ""),) if application else ()
        self.tell([Event(kind, environment, stage, None, why, self.fleet.head()[0], "", apps)])  # (who: in why)

    def tell(self, events: Iterable[Event]) -> None:
        for sink, routed in self.route(events).items():
            for message in coalesce(routed, self.link):
                self.outboxes[sink].offer(self.sinks[sink], message.as_json())

    def route(self, events: Iterable[Event]) -> dict[str, list[Event]]:
        """Each sink's events: the operator's subscriptions, then the sinks the events' applications name."""
        notify_of = self.fleet.notify_of()
        routed: dict[str, list[Event]] = {}
        for event in events:
            names = {s.sink for s in self.subscriptions if s.wants(event)}
            for app, _ in event.applications:
                names.update(self._known(app, notify_of.get(app, ())))
            for name in sorted(names):
                routed.setdefault(name, []).append(event)
        return routed

    def _known(self, application: str, names: tuple[str, ...]) -> list[str]:
        for name in names:
            if name not in self.sinks and (application, name) not in self.unknown:
                self.unknown.add((application, name))
                self.log.warning("application names a notification sink the config does not define; ignored",
                                 application=application, sink=name)  # fmt: skip
        return [n for n in names if n in self.sinks]

    def _boxes(self) -> dict[str, Outbox]:
        """Every outbox by sink name, the forge's included."""
        forge = {self.statuses.sink.name: self.statuses.outbox} if self.statuses is not None else {}
        return {**self.outboxes, **forge}

    def results(self) -> dict[tuple[str, str], int]:
        """Deliveries so far by (sink, result), every sink with a zero for each result (series from the start)."""
        boxes = self._boxes()
        found = {(name, result): 0 for name in boxes for result in RESULTS}
        for outbox in boxes.values():
            found.update(outbox.results)
        return found

    def depths(self) -> dict[str, int]:
        return {name: outbox.depth for name, outbox in self._boxes().items()}

    def close(self, grace: float = 5.0) -> None:
        """Give what is queued up to ``grace`` seconds in all to be delivered (``run --once`` ends right after its
        cycle), then stop; what is left is lost (delivery is at-most-once across a stop)."""
        deadline = time.monotonic() + grace
        boxes = list(self._boxes().values())
        for outbox in boxes:
            outbox.drain(max(0.0, deadline - time.monotonic()))
        for outbox in boxes:
            outbox.close(timeout=0.5)


def build_notifier(section: Mapping[str, Any], fleet: Fleet, base: str = "") -> Notifier | None:
    """The notifier of the config's ``notifications`` section (``None`` without one); ``base``: the config file's
    directory (relative ``ca`` files). Raises :class:`PermanentError` naming the sink when a secret reference cannot
    be resolved."""
    if not section:
        return None
    sinks: dict[str, Sink] = {}
    for name, spec in section.get("sinks", {}).items():
        try:
            sinks[name] = _sink(name, spec, base)
        except SecretError as exc:
            raise PermanentError(f"notifications.sinks.{name}: {exc}") from exc
    filters = ("events", "stages", "environments", "applications")
    subscriptions = [
        Subscription(s["sink"], *(frozenset(s.get(k, ())) for k in filters))
        for s in section.get("subscriptions", ())
        if s["sink"] in sinks
    ]
    link = section.get("dashboardURL", "")
    statuses = None
    if "commitStatuses" in section:
        spec = section["commitStatuses"]
        try:
            token = resolve_secret(spec["token"]) or ""
        except SecretError as exc:
            raise PermanentError(f"notifications.commitStatuses: {exc}") from exc
        forge = ForgeStatuses(f"{spec['forge']}-statuses", ForgeKind(spec["forge"]), spec["repository"], token,
                              spec.get("url", ""), float(spec.get("timeout", 10)))  # fmt: skip
        statuses = StatusPoster(forge, frozenset(spec.get("stages", ())), link)
    return Notifier(sinks, subscriptions, fleet, link, statuses)


def _sink(name: str, spec: Mapping[str, Any], base: str) -> Sink:
    timeout = float(spec.get("timeout", 10))
    if spec["type"] == "webhook":
        return WebhookSink(name, spec["url"], (resolve_secret(spec["secret"]) or "").encode(), timeout)
    if spec["type"] == "slack":
        return SlackSink(name, resolve_secret(spec["url"]) or "", timeout)
    ca = spec.get("ca")
    server = SmtpServer(
        spec["host"], int(spec.get("port", 587)), bool(spec.get("starttls", True)), spec.get("username", ""),
        resolve_secret(spec.get("password")) or "", posixpath.join(base, ca) if ca else None, timeout,
    )  # fmt: skip
    return MailSink(name, server, spec["from"], tuple(spec["to"]))
