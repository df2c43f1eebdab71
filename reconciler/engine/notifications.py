"""Notifications after each cycle: the operator's sinks and subscriptions, fed from the cycle's phase changes.

``build_notifier`` reads the config's ``notifications`` section (sinks by name: ``webhook`` with a signing
``secret``, ``slack`` whose ``url`` is the secret; both by reference, ``env:NAME`` / ``file:/path``) and returns a
:class:`Notifier` the controller calls after each cycle's status commit (a cycle listener): it compares each
reconciled environment's phase with the one it last saw, coalesces the changes per stage
(:mod:`reconciler.core.notify`) and offers every message to the sinks whose subscription matches its kind and
stage. Offering never waits (:class:`reconciler.notify.outbox.Outbox`, one per sink), so a slow or hanging sink
cannot delay a cycle, a status commit or another sink's messages.
Called by :class:`reconciler.engine.controller.Controller`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.core.notify import coalesce, phase_events
from reconciler.core.plan import Phase
from reconciler.core.problems import PermanentError
from reconciler.engine.outcome import EnvOutcome
from reconciler.notify.outbox import Outbox, Sink
from reconciler.notify.slack import SlackSink
from reconciler.notify.webhook import WebhookSink
from reconciler.secrets.references import SecretError, resolve_secret


class CycleOutcomes(Protocol):
    """What the notifier reads of a cycle's report."""

    @property
    def outcomes(self) -> Mapping[str, EnvOutcome]: ...


@dataclass(frozen=True)
class Subscription:
    sink: Sink
    events: frozenset[str]  # event kinds (environment.degraded...); empty: all
    stages: frozenset[str]  # empty: all

    def wants(self, kind: str, stage: str) -> bool:
        return (not self.events or kind in self.events) and (not self.stages or stage in self.stages)


class Notifier:
    def __init__(
        self,
        subscriptions: list[Subscription],
        stage_of: Callable[[str], str],
        context: Callable[[], tuple[str, str]],
        known: Mapping[str, Phase | None],
    ) -> None:
        self.subscriptions = subscriptions
        self.stage_of = stage_of
        self.context = context  # (revision, author) of the good head
        self.seen: dict[str, Phase | None] = dict(known)
        # one outbox (queue and thread) per sink: a sink that hangs holds up only its own messages
        self.outboxes = {s.sink.name: Outbox() for s in subscriptions}
        self.offered = 0

    def __call__(self, report: CycleOutcomes) -> None:
        after = {name: (o.phase, o.message) for name, o in report.outcomes.items()}
        stages = {name: self.stage_of(name) for name in after}
        revision, author = self.context()
        events = phase_events(self.seen, after, stages, revision, author)
        self.seen.update({name: phase for name, (phase, _) in after.items()})
        for message in coalesce(events):
            payload = message.as_json()
            for subscription in self.subscriptions:
                if subscription.wants(message.kind.value, message.stage):
                    self.offered += 1
                    self.outboxes[subscription.sink.name].offer(subscription.sink, payload)

    def results(self) -> dict[tuple[str, str], int]:
        """Deliveries so far by (sink, result), every sink with a zero for each result (series from the start)."""
        found = {(name, result): 0 for name in self.outboxes for result in ("sent", "retried", "failed", "dropped")}
        for outbox in self.outboxes.values():
            found.update(outbox.results)
        return found

    def depths(self) -> dict[str, int]:
        return {name: outbox.depth for name, outbox in self.outboxes.items()}

    def close(self, grace: float = 5.0) -> None:
        """Give what is queued up to ``grace`` seconds in all to be delivered (``run --once`` ends right after its
        cycle), then stop; what is left is lost (delivery is at-most-once across a stop)."""
        deadline = time.monotonic() + grace
        for outbox in self.outboxes.values():
            outbox.drain(max(0.0, deadline - time.monotonic()))
        for outbox in self.outboxes.values():
            outbox.close(timeout=0.5)


def build_notifier(
    section: Mapping[str, Any],
    stage_of: Callable[[str], str],
    context: Callable[[], tuple[str, str]],
    known: Mapping[str, Phase | None],
) -> Notifier | None:
    """The notifier of the config's ``notifications`` section (``None`` without one). Raises
    :class:`PermanentError` naming the sink when a secret reference cannot be resolved."""
    if not section:
        return None
    sinks: dict[str, Sink] = {}
    for name, spec in section.get("sinks", {}).items():
        timeout = float(spec.get("timeout", 10))
        try:
            if spec["type"] == "webhook":
                secret = resolve_secret(spec["secret"]) or ""
                sinks[name] = WebhookSink(name, spec["url"], secret.encode(), timeout)
            else:
                sinks[name] = SlackSink(name, resolve_secret(spec["url"]) or "", timeout)
        except SecretError as exc:
            raise PermanentError(f"notifications.sinks.{name}: {exc}") from exc
    subscriptions = [
        Subscription(sinks[s["sink"]], frozenset(s.get("events", ())), frozenset(s.get("stages", ())))
        for s in section.get("subscriptions", ())
        if s["sink"] in sinks
    ]
    return Notifier(subscriptions, stage_of, context, known)
