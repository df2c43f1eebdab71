"""The pool of driver instances, one per target name, built lazily from the operator config.

Manifests only *name* targets; this is where a name becomes a driver and a connection, so a pull request can
never point a deployment at a host or a command of its choosing. Called by the engine (one pool per controller).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from reconciler.core.config import ControllerConfig, TargetConfig
from reconciler.core.durations import parse_duration
from reconciler.core.problems import PermanentError
from reconciler.drivers.base import Driver
from reconciler.engine.hooks import MetricsSink, NullMetrics, instrument

Factory = Callable[[TargetConfig], Driver]


def _timeout(target: TargetConfig, default: float = 60.0) -> float:
    value = target.get("timeout")
    return float(parse_duration(value)) if isinstance(value, str) else default


def build_driver(target: TargetConfig) -> Driver:
    """A driver for one configured target."""
    if target.driver == "local":
        from reconciler.drivers.local import LocalDriver

        return LocalDriver(
            target.name,
            Path(target.get("path")),
            durable=bool(target.get("fsync", False)),
            parallel_writes=bool(target.get("parallelWrites", False)),
            verify_content=bool(target.get("verifyContent", False)),
        )
    if target.driver == "script":
        from reconciler.drivers.script import ScriptDriver

        return ScriptDriver(target.name, list(target.get("command")), timeout=_timeout(target), env=target.get("env"))
    if target.driver == "ssh":
        from reconciler.drivers.script import SshDriver

        identity = target.get("identityFile")
        return SshDriver(
            target.name,
            host=target.get("host"),
            user=target.get("user", "reconciler"),
            command=list(target.get("command")),
            port=int(target.get("port", 22)),
            identity_file=Path(identity) if identity else None,
            known_hosts=Path(target.get("knownHosts")),
            timeout=_timeout(target),
        )
    if target.driver == "kubernetes":
        from reconciler.drivers.kubernetes import build_kubernetes_driver

        return build_kubernetes_driver(target)
    raise PermanentError(f"target {target.name}: unknown driver {target.driver!r}")


class DriverPool:
    def __init__(
        self, config: ControllerConfig, factory: Factory = build_driver, metrics: MetricsSink | None = None
    ) -> None:
        self.config = config
        self.factory = factory
        self.metrics: MetricsSink = metrics or NullMetrics()
        self._drivers: dict[str, Driver] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Driver:
        with self._lock:
            driver = self._drivers.get(name)
            if driver is None:
                target = self.config.target(name)
                if target is None:
                    raise PermanentError(
                        f"target {name!r} is not configured (no entry in targets or targetPatterns of "
                        f"{self.config.path})"
                    )
                driver = self._drivers[name] = instrument(self.factory(target), self.metrics)
            return driver

    def close(self) -> None:
        with self._lock:
            for driver in self._drivers.values():
                driver.close()
            self._drivers.clear()
