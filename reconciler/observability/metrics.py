"""Prometheus metrics of the controller: :class:`PrometheusMetrics`, the engine's :class:`MetricsSink`.

Every metric lives in the instance's own ``CollectorRegistry`` (never the process-global one, so several
controllers, or tests, never share series) and is prefixed ``reconciler_``. Cardinality is bounded by design:
label values come only from environment and stage names (from the releases repo), the fixed set of phases,
driver kinds, driver operations, results and block reasons, plus one ``revision`` label on a single-series
info gauge. Payload content (webhooks) and free-text messages never become labels.

Per-environment state (phase, drifted applications, last apply time) is served by a custom collector from a
snapshot the controller replaces after every cycle, so an environment removed from the releases repo disappears
from the output and every known phase is always exported as 0 or 1.

Created by ``reconciler run`` / ``reconciler demo`` (:mod:`reconciler.commands.run`) and handed to the
controller and its driver pool; the HTTP server (:mod:`reconciler.http.server`) serves :meth:`render`.
"""

from __future__ import annotations

import gzip
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from reconciler.core.plan import Phase

PREFIX = "reconciler_"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Reconciles and driver calls: milliseconds to minutes. Commit-to-live: 0.1 s to 1 h. Cycles: up to 30 min.
RECONCILE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
DRIVER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
FETCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CYCLE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class Outcome(Protocol):
    """What is read of an environment's reconcile outcome (:class:`reconciler.engine.reconcile.EnvOutcome`)."""

    @property
    def phase(self) -> Phase: ...

    @property
    def duration(self) -> float: ...

    @property
    def drifted(self) -> int: ...


class Result(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


class BlockReason(StrEnum):
    POLICY = "policy"
    FREEZE = "freeze"
    BACKOFF = "backoff"


class WebhookResult(StrEnum):
    ACCEPTED = "accepted"  # a push to the tracked branch: a cycle was triggered
    IGNORED = "ignored"  # another branch, a tag, another event
    PING = "ping"
    UNAUTHORIZED = "unauthorized"
    TOO_LARGE = "too_large"
    BAD_REQUEST = "bad_request"
    TIMEOUT = "timeout"


def _result(ok: bool) -> str:
    return str(Result.SUCCESS if ok else Result.FAILURE)


@dataclass(frozen=True)
class EnvironmentGauges:
    """What the state collector exports for one environment."""

    stage: str
    phase: Phase | None
    drifted: int | None = None
    last_applied: float | None = None


class _PhaseClock:
    """When each environment entered its current phase, and the seconds it has spent Degraded since the process
    started (a counter: ``increase(reconciler_environment_degraded_seconds_total[1d])`` is a day's). Callers hold
    the collector's lock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.since: dict[str, tuple[Phase | None, float]] = {}
        self.degraded: dict[str, float] = {}

    def moved(self, name: str, phase: Phase | None) -> None:
        """``name`` is now in ``phase`` (a no-op when it already was)."""
        now = self.clock()
        previous = self.since.get(name)
        if previous is not None and previous[0] is phase:
            return
        if previous is not None and previous[0] is Phase.DEGRADED:
            self.degraded[name] = self.degraded.get(name, 0.0) + max(now - previous[1], 0.0)
        self.since[name] = (phase, now)
        self.degraded.setdefault(name, 0.0)

    def forget(self, keep: Mapping[str, object]) -> None:
        for name in [n for n in self.since if n not in keep]:
            self.since.pop(name)
            self.degraded.pop(name, None)

    def degraded_seconds(self, name: str) -> float:
        phase, since = self.since.get(name, (None, 0.0))
        ongoing = max(self.clock() - since, 0.0) if phase is Phase.DEGRADED else 0.0
        return self.degraded.get(name, 0.0) + ongoing


class _StateCollector:
    """Exports per-environment gauges, blocked counts and the source revision from the last snapshot."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.lock = threading.Lock()
        self.environments: dict[str, EnvironmentGauges] = {}
        self.phase_clock = _PhaseClock(clock)
        self.blocked: dict[str, int] = {str(r): 0 for r in BlockReason}
        self.revision: str | None = None
        self.revision_valid: bool | None = None

    def describe(self) -> list[Any]:
        return []  # unchecked collector: the registry does not need names up front

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            environments = dict(self.environments)
            blocked = dict(self.blocked)
            revision, valid = self.revision, self.revision_valid
            since = {name: self.phase_clock.since[name][1] for name in environments if name in self.phase_clock.since}
            degraded = {name: self.phase_clock.degraded_seconds(name) for name in environments}
        phase = GaugeMetricFamily(
            PREFIX + "environment_phase",
            "1 for the environment's current phase, 0 for every other known phase.",
            labels=["environment", "stage", "phase"],
        )
        drifted = GaugeMetricFamily(
            PREFIX + "environment_drifted_applications",
            "Applications found drifted (live differs from what was applied) at the environment's last reconcile.",
            labels=["environment"],
        )
        applied = GaugeMetricFamily(
            PREFIX + "environment_last_applied_timestamp_seconds",
            "Unix time of the environment's last successful apply (a change applied and the environment Synced).",
            labels=["environment"],
        )
        entered = GaugeMetricFamily(
            PREFIX + "environment_phase_since_timestamp_seconds",
            "Unix time the environment entered its current phase (as seen by this process).",
            labels=["environment"],
        )
        degraded_total = CounterMetricFamily(
            PREFIX + "environment_degraded_seconds",
            "Seconds the environment has spent Degraded since this process started.",
            labels=["environment"],
        )
        for name, gauges in sorted(environments.items()):
            for known in Phase:
                phase.add_metric([name, gauges.stage, str(known)], 1.0 if gauges.phase is known else 0.0)
            if gauges.drifted is not None:
                drifted.add_metric([name], float(gauges.drifted))
            if gauges.last_applied is not None:
                applied.add_metric([name], gauges.last_applied)
            if name in since:
                entered.add_metric([name], since[name])
            degraded_total.add_metric([name], degraded[name])
        yield phase
        yield drifted
        yield applied
        yield entered
        yield degraded_total
        blocked_family = GaugeMetricFamily(
            PREFIX + "environments_blocked",
            "Environments currently held back, by reason (policy, freeze window, failure backoff).",
            labels=["reason"],
        )
        for reason, count in sorted(blocked.items()):
            blocked_family.add_metric([reason], float(count))
        yield blocked_family
        info = GaugeMetricFamily(
            PREFIX + "source_info", "The releases repo revision last fetched (always 1).", labels=["revision"]
        )
        if revision is not None:
            info.add_metric([revision], 1.0)
        yield info
        if valid is not None:
            yield GaugeMetricFamily(
                PREFIX + "source_revision_valid",
                "1 when the fetched revision is valid, 0 when it is invalid (the last good one is served).",
                value=1.0 if valid else 0.0,
            )


class _NotificationCollector:
    """``notifications_total{sink,result}`` and ``notification_queue_depth{sink}``, as the outboxes last counted."""

    def __init__(self) -> None:
        self.results: dict[tuple[str, str], int] = {}
        self.depths: dict[str, int] = {}

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily(
            PREFIX + "notifications", "Notifications by sink and result (sent, retried, failed, dropped).",
            labels=["sink", "result"],
        )  # fmt: skip
        for (sink, result), count in sorted(self.results.items()):
            total.add_metric([sink, result], count)
        depth = GaugeMetricFamily(
            PREFIX + "notification_queue_depth", "Notifications waiting to be delivered, by sink.", labels=["sink"]
        )
        for sink, count in sorted(self.depths.items()):
            depth.add_metric([sink], count)
        yield total
        yield depth


class PrometheusMetrics:
    """The Prometheus :class:`~reconciler.engine.hooks.MetricsSink`; thread-safe (driver calls come from workers)."""

    content_type = CONTENT_TYPE

    def __init__(self, clock: Callable[[], float] = time.time, cache_seconds: float = 1.0) -> None:
        self.clock = clock
        self.cache_seconds = cache_seconds
        # no ``*_created`` series: they would double the output (the flag is process-wide; nothing else here uses it)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.reconcile_duration = Histogram(
            PREFIX + "reconcile_duration_seconds",
            "Duration of one environment's reconcile.",
            ["environment"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.reconciles = Counter(
            PREFIX + "reconciles",
            "Environment reconciles, by the phase they ended in.",
            ["environment", "result"],
            registry=r,
        )
        self.commit_to_live = Histogram(
            PREFIX + "commit_to_live_seconds",
            "From the commit time of the applied revision to the environment Synced with it, by stage.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fetch_duration = Histogram(
            PREFIX + "git_fetch_duration_seconds",
            "Duration of a fetch of the releases repo.",
            buckets=FETCH_BUCKETS,
            registry=r,
        )
        self.fetches = Counter(
            PREFIX + "git_fetches", "Fetches of the releases repo, by result.", ["result"], registry=r
        )
        self.status_pushes = Counter(
            PREFIX + "status_pushes",
            "Pushes of status and audit to the status branch, by result.",
            ["result"],
            registry=r,
        )
        self.driver_calls = Counter(
            PREFIX + "driver_operations",
            "Driver operations, by driver kind, operation and result.",
            ["driver", "operation", "result"],
            registry=r,
        )
        self.driver_duration = Histogram(
            PREFIX + "driver_operation_duration_seconds",
            "Duration of driver operations.",
            ["driver", "operation"],
            buckets=DRIVER_BUCKETS,
            registry=r,
        )
        self._driver_children: dict[tuple[str, str, bool], tuple[Any, Any]] = {}
        self.cycle_duration = Histogram(
            PREFIX + "cycle_duration_seconds",
            "Duration of a full controller cycle.",
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self.webhooks = Counter(
            PREFIX + "webhook_requests", "Webhook requests, by how they were handled.", ["result"], registry=r
        )
        for ok in (True, False):  # export zeros from the start, so rate() and alerts work before the first event
            self.fetches.labels(_result(ok))
            self.status_pushes.labels(_result(ok))
        for outcome in WebhookResult:
            self.webhooks.labels(str(outcome))
        self.state = _StateCollector(clock)
        r.register(self.state)
        self.notify = _NotificationCollector()
        r.register(self.notify)
        self._stages: dict[str, str] = {}
        self._results: dict[str, set[str]] = {}  # environment -> result labels it has series for
        self._render_lock = threading.Lock()
        self._rendered: tuple[float, bytes, bytes | None] | None = None  # (when, text, gzipped text)
        self._dirty = threading.Event()

    # --- MetricsSink -------------------------------------------------------------------------------------------
    def fetch(self, seconds: float, ok: bool) -> None:
        self.fetch_duration.observe(max(seconds, 0.0))
        self.fetches.labels(_result(ok)).inc()

    def revision(self, revision: str | None, valid: bool) -> None:
        self._dirty.set()
        with self.state.lock:
            self.state.revision = revision
            self.state.revision_valid = valid if revision is not None else None

    def environment(self, name: str, stage: str, outcome: Outcome) -> None:
        self.reconcile_duration.labels(name).observe(max(outcome.duration, 0.0))
        self.reconciles.labels(name, str(outcome.phase)).inc()
        with self.state.lock:
            self._results.setdefault(name, set()).add(str(outcome.phase))
            self._stages[name] = stage
            current = self.state.environments.get(name) or EnvironmentGauges(stage, outcome.phase)
            self.state.environments[name] = EnvironmentGauges(
                stage, outcome.phase, drifted=outcome.drifted, last_applied=current.last_applied
            )
            self.state.phase_clock.moved(name, outcome.phase)

    def phases(self, phases: Mapping[str, tuple[str, Phase | None]], blocked: Mapping[str, str]) -> None:
        self._dirty.set()
        with self.state.lock:
            previous = self.state.environments
            self.state.environments = {
                name: EnvironmentGauges(
                    stage,
                    phase,
                    drifted=previous[name].drifted if name in previous else None,
                    last_applied=previous[name].last_applied if name in previous else None,
                )
                for name, (stage, phase) in phases.items()
            }
            for name, (_, phase) in phases.items():
                self.state.phase_clock.moved(name, phase)
            self.state.phase_clock.forget(phases)
            self._stages = {name: stage for name, (stage, _) in phases.items()}
            counts = {str(r): 0 for r in BlockReason}
            for reason in blocked.values():
                if reason in counts:  # an unknown reason is not a new series: the label set stays fixed
                    counts[reason] += 1
            self.state.blocked = counts
            gone = [name for name in self._results if name not in phases]
            for name in gone:  # an environment removed from the releases repo: its series go too
                self.reconcile_duration.remove(name)
                for result in self._results.pop(name):
                    self.reconciles.remove(name, result)

    def applied(self, name: str, commit_to_live_seconds: float | None) -> None:
        with self.state.lock:
            stage = self._stages.get(name, "")
            current = self.state.environments.get(name) or EnvironmentGauges(stage, Phase.SYNCED)
            self.state.environments[name] = EnvironmentGauges(
                current.stage, current.phase, drifted=current.drifted, last_applied=self.clock()
            )
        if commit_to_live_seconds is not None:
            self.commit_to_live.labels(stage).observe(max(commit_to_live_seconds, 0.0))

    def status_push(self, ok: bool) -> None:
        self.status_pushes.labels(_result(ok)).inc()

    def driver_call(self, driver: str, operation: str, ok: bool, seconds: float) -> None:
        # called for every driver operation (about 45,000 in a cold cycle of 235 environments): the labelled
        # children are looked up once and kept (bounded: drivers x operations x results)
        key = (driver, operation, ok)
        children = self._driver_children.get(key)
        if children is None:
            children = (
                self.driver_calls.labels(driver, operation, _result(ok)),
                self.driver_duration.labels(driver, operation),
            )
            self._driver_children[key] = children
        children[0].inc()
        children[1].observe(max(seconds, 0.0))

    def cycle(self, seconds: float) -> None:
        self.cycle_duration.observe(max(seconds, 0.0))
        self._dirty.set()

    def notifications(self, results: Mapping[tuple[str, str], int], depths: Mapping[str, int]) -> None:
        self.notify.results, self.notify.depths = dict(results), dict(depths)
        self._dirty.set()

    # --- the HTTP side -------------------------------------------------------------------------------------------
    def webhook(self, result: WebhookResult) -> None:
        self.webhooks.labels(str(result)).inc()
        self._dirty.set()

    def render(self, compressed: bool = False) -> bytes:
        """The text exposition format (version 0.0.4) of every metric, gzipped if asked; see :attr:`content_type`.

        Rendering 235 environments takes tens of milliseconds of CPU (and the GIL), so the result is reused for
        up to ``cache_seconds`` unless a cycle ended, the revision changed or a webhook arrived meanwhile:
        concurrent or hammering scrapers cost one render, never the controller's time.
        """
        with self._render_lock:
            now = time.monotonic()
            cached = self._rendered
            if cached is None or self._dirty.is_set() or now - cached[0] >= self.cache_seconds:
                self._dirty.clear()
                cached = self._rendered = (now, render_text(self.registry), None)
            if not compressed:
                return cached[1]
            if cached[2] is None:
                cached = self._rendered = (cached[0], cached[1], gzip.compress(cached[1], compresslevel=1))
            assert cached[2] is not None
            return cached[2]


def _value(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_text(registry: CollectorRegistry) -> bytes:
    """Like ``prometheus_client.generate_latest`` for the families used here, several times faster.

    ``generate_latest`` re-validates and re-escapes every label *name* of every sample (~0.3 s for the ~6,000
    series of 235 environments); names here are fixed identifiers, so only label values are escaped.
    """
    out: list[str] = []
    for family in registry.collect():
        name, kind = family.name, family.type
        if kind == "counter":
            name += "_total"
        elif kind not in ("gauge", "histogram", "summary"):
            kind = "untyped"
        doc = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        for sample in family.samples:
            if sample.labels:
                labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in sample.labels.items())
                out.append(f"{sample.name}{{{labels}}} {_value(sample.value)}\n")
            else:
                out.append(f"{sample.name} {_value(sample.value)}\n")
    return "".join(out).encode()
