"""What the engine tells the outside world while it works: the metrics sink interface and driver instrumentation.

The controller calls a :class:`MetricsSink` (the Prometheus implementation lives in
:mod:`reconciler.observability.metrics`; :class:`NullMetrics` is the default), and every driver handed out by the
driver pool is wrapped by :func:`instrument`, so driver operations are counted and timed without the reconcile code
knowing; the wrapper offers exactly the optional abilities (:mod:`reconciler.drivers.base` protocols) of the driver
it wraps. Called by the controller and the driver pool. The sink reads an outcome through :class:`Outcome`, so this
module does not import the reconcile code (which imports the driver pool, which imports this).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from reconciler.core.contentdiff import Content
from reconciler.core.desired import DesiredUnit
from reconciler.core.plan import Phase
from reconciler.core.problems import PermanentError
from reconciler.drivers.base import (
    ApplyResult,
    Batching,
    Driver,
    HealthIsObserved,
    HealthReport,
    Identifies,
    LiveUnit,
    ObservesEnvironment,
    ShowsContent,
    health_is_observed,
    identifying,
    showing,
)


class Outcome(Protocol):
    """What a sink reads of one environment's reconcile outcome (:class:`reconciler.engine.reconcile.EnvOutcome`)."""

    @property
    def phase(self) -> Phase: ...

    @property
    def duration(self) -> float: ...

    @property
    def drifted(self) -> int: ...


class MetricsSink(Protocol):
    def fetch(self, seconds: float, ok: bool) -> None: ...

    def revision(self, revision: str | None, valid: bool) -> None: ...

    def environment(self, name: str, stage: str, outcome: Outcome) -> None:
        """One environment's reconcile finished (duration, result, phase, drift)."""
        ...

    def phases(self, phases: Mapping[str, tuple[str, Phase | None]], blocked: Mapping[str, str]) -> None:
        """Current phase of every environment (name -> (stage, phase)) and why blocked ones are blocked."""
        ...

    def applied(self, name: str, commit_to_live_seconds: float | None) -> None:
        """An environment reached Synced with a change applied; latency from the commit time when known."""
        ...

    def status_push(self, ok: bool) -> None: ...

    def driver_call(self, driver: str, operation: str, ok: bool, seconds: float) -> None: ...

    def cycle(self, seconds: float) -> None: ...

    def notifications(self, results: Mapping[tuple[str, str], int], depths: Mapping[str, int]) -> None:
        """Notifications so far by (sink, result: sent, retried, failed, dropped), and each sink's queue depth."""
        ...


class NullMetrics:
    def fetch(self, seconds: float, ok: bool) -> None:
        return None

    def revision(self, revision: str | None, valid: bool) -> None:
        return None

    def environment(self, name: str, stage: str, outcome: Outcome) -> None:
        return None

    def phases(self, phases: Mapping[str, tuple[str, Phase | None]], blocked: Mapping[str, str]) -> None:
        return None

    def applied(self, name: str, commit_to_live_seconds: float | None) -> None:
        return None

    def status_push(self, ok: bool) -> None:
        return None

    def driver_call(self, driver: str, operation: str, ok: bool, seconds: float) -> None:
        return None

    def cycle(self, seconds: float) -> None:
        return None

    def notifications(self, results: Mapping[tuple[str, str], int], depths: Mapping[str, int]) -> None:
        return None


class InstrumentedDriver(HealthIsObserved, Identifies, ShowsContent):
    """A driver whose every call is reported to a :class:`MetricsSink` (operation, result, duration).

    Build it with :func:`instrument`, which adds the optional abilities the wrapped driver has."""

    def __init__(self, inner: Driver, metrics: MetricsSink) -> None:
        self.inner = inner
        self.metrics = metrics
        self.kind = inner.kind
        self.target = inner.target
        self.observe_is_health = health_is_observed(inner)
        self._identifies = identifying(inner)

    def _call(self, operation: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        ok = False
        try:
            result = fn(*args, **kwargs)
            ok = True
            return result
        finally:
            self.metrics.driver_call(self.kind, operation, ok, time.perf_counter() - started)

    def observe(self, environment: str, application: str, check_drift: bool = True) -> LiveUnit | None:
        result: LiveUnit | None = self._call("observe", self.inner.observe, environment, application, check_drift)
        return result

    def owned_applications(self, environment: str) -> list[str]:
        result: list[str] = self._call("list", self.inner.owned_applications, environment)
        return result

    def apply(self, unit: DesiredUnit, dry_run: bool = False) -> ApplyResult:
        result: ApplyResult = self._call("apply", self.inner.apply, unit, dry_run)
        return result

    def remove(self, environment: str, application: str, dry_run: bool = False) -> ApplyResult:
        result: ApplyResult = self._call("remove", self.inner.remove, environment, application, dry_run)
        return result

    def health(self, environment: str, application: str) -> HealthReport:
        result: HealthReport = self._call("health", self.inner.health, environment, application)
        return result

    def identity(self, unit: DesiredUnit) -> str:
        """The wrapped driver's identity of ``unit`` (pure and cheap: not instrumented); empty when it has none."""
        return self._identifies.identity(unit) if self._identifies is not None else ""

    def contents(self, unit: DesiredUnit) -> list[Content]:
        """The wrapped driver's live content beside ``unit``'s (``reconciler diff``); a clear error when it has none."""
        shower = showing(self.inner)
        if shower is None:
            raise PermanentError(f"target {self.target}: its {self.kind} driver cannot show what runs")
        found: list[Content] = self._call("contents", shower.contents, unit)
        return found

    def close(self) -> None:
        self.inner.close()


class _ObservingDriver(InstrumentedDriver, ObservesEnvironment):
    def __init__(self, inner: ObservesEnvironment, driver: Driver, metrics: MetricsSink) -> None:
        super().__init__(driver, metrics)
        self._observing = inner

    def observe_environment(
        self, environment: str, applications: list[str], check_drift: bool
    ) -> dict[str, LiveUnit | None]:
        found: dict[str, LiveUnit | None] = self._call(
            "observe", self._observing.observe_environment, environment, applications, check_drift
        )
        return found


class _BatchingDriver(InstrumentedDriver, Batching):
    def __init__(self, inner: Batching, driver: Driver, metrics: MetricsSink) -> None:
        super().__init__(driver, metrics)
        self._batching = inner

    def batch(self, environment: str) -> AbstractContextManager[None]:
        return self._batching.batch(environment)


class _ObservingBatchingDriver(_ObservingDriver, Batching):
    def __init__(self, inner: ObservesEnvironment, batching: Batching, driver: Driver, metrics: MetricsSink) -> None:
        super().__init__(inner, driver, metrics)
        self._batching = batching

    def batch(self, environment: str) -> AbstractContextManager[None]:
        return self._batching.batch(environment)


def instrument(inner: Driver, metrics: MetricsSink) -> InstrumentedDriver:
    """``inner`` wrapped so every call is reported to ``metrics``; the wrapper is :class:`ObservesEnvironment`
    and/or :class:`Batching` exactly when ``inner`` is."""
    if isinstance(inner, ObservesEnvironment) and isinstance(inner, Batching):
        return _ObservingBatchingDriver(inner, inner, inner, metrics)
    if isinstance(inner, ObservesEnvironment):
        return _ObservingDriver(inner, inner, metrics)
    if isinstance(inner, Batching):
        return _BatchingDriver(inner, inner, metrics)
    return InstrumentedDriver(inner, metrics)
