"""What the engine tells the outside world while it works: the metrics sink interface and driver instrumentation.

The controller calls a :class:`MetricsSink` (the Prometheus implementation lives in
:mod:`reconciler.observability.metrics`; :class:`NullMetrics` is the default), and every driver handed out by the
driver pool is wrapped by :class:`InstrumentedDriver`, so driver operations are counted and timed without the
reconcile code knowing. Called by the controller and the driver pool.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.core.desired import DesiredUnit
from reconciler.core.plan import Phase
from reconciler.drivers.base import ApplyResult, Batch, BatchObserve, Driver, HealthReport, Identity, LiveUnit

if TYPE_CHECKING:
    from collections.abc import Mapping

    from reconciler.engine.reconcile import EnvOutcome


class MetricsSink(Protocol):
    def fetch(self, seconds: float, ok: bool) -> None: ...

    def revision(self, revision: str | None, valid: bool) -> None: ...

    def environment(self, name: str, stage: str, outcome: EnvOutcome) -> None:
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


class NullMetrics:
    def fetch(self, seconds: float, ok: bool) -> None:
        return None

    def revision(self, revision: str | None, valid: bool) -> None:
        return None

    def environment(self, name: str, stage: str, outcome: EnvOutcome) -> None:
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


class InstrumentedDriver:
    """A driver whose every call is reported to a :class:`MetricsSink` (operation, result, duration)."""

    def __init__(self, inner: Driver, metrics: MetricsSink) -> None:
        self.inner = inner
        self.metrics = metrics
        self.kind = inner.kind
        self.target = inner.target
        self.observe_is_health = bool(getattr(inner, "observe_is_health", False))
        batch = getattr(inner, "observe_environment", None)
        self.observe_environment: BatchObserve | None = (
            None if batch is None else lambda env, apps, drift: self._call("observe", batch, env, apps, drift)
        )
        self.batch: Batch | None = getattr(inner, "batch", None)
        self.identity: Identity | None = getattr(inner, "identity", None)  # pure and cheap: not instrumented

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

    def close(self) -> None:
        self.inner.close()
