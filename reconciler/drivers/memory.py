"""The in-memory twin of a driver, for unit tests of the engine and planner (never the only test of a driver).

It keeps what it holds per (environment, application), can be told to fail (per unit, per batch), to show drift,
and to hold *foreign* units (deployed by someone else: never listed as ours, never to be touched), and it logs
every effect that changed something (``effects``), so the stateful invariant tests can check that every effect
has exactly one audit entry and that nothing foreign is deleted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from reconciler.core.contentdiff import Content, mask_secrets
from reconciler.core.desired import DesiredUnit
from reconciler.core.problems import PermanentError
from reconciler.drivers.base import ApplyResult, Batching, Health, HealthReport, LiveUnit, ShowsContent


@dataclass
class MemoryDriver(Batching, ShowsContent):
    target: str
    kind: str = "memory"
    units: dict[tuple[str, str], DesiredUnit] = field(default_factory=dict)
    drifted: set[tuple[str, str]] = field(default_factory=set)
    health_of: dict[tuple[str, str], HealthReport] = field(default_factory=dict)
    fail_with: dict[tuple[str, str], Exception] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    fail_batch: dict[tuple[str, str], Exception] = field(default_factory=dict)  # (environment, "begin"/"end")
    foreign: dict[tuple[str, str], str] = field(default_factory=dict)  # someone else's units: key -> content
    effects: list[tuple[str, str, str]] = field(default_factory=list)  # (action, environment, application)
    observed: list[tuple[str, str, bool]] = field(default_factory=list)  # (environment, application, check_drift)

    @contextmanager
    def batch(self, environment: str) -> Iterator[None]:
        """Records the batch's begin and end in ``calls``; raises ``fail_batch[(environment, "begin" or "end")]``."""
        if (environment, "begin") in self.fail_batch:
            raise self.fail_batch[(environment, "begin")]
        self.calls.append(("batch", environment, "begin"))
        try:
            yield
        finally:
            self.calls.append(("batch", environment, "end"))
        if (environment, "end") in self.fail_batch:
            raise self.fail_batch[(environment, "end")]

    def observe(self, environment: str, application: str, check_drift: bool = True) -> LiveUnit | None:
        self.observed.append((environment, application, check_drift))
        unit = self.units.get((environment, application))
        if unit is None or (environment, application) in self.foreign:
            return None
        drift = ("*",) if check_drift and (environment, application) in self.drifted else ()
        return LiveUnit(environment, application, self.target, unit.version, unit.fingerprint, drift)

    def owned_applications(self, environment: str) -> list[str]:
        return sorted(app for env, app in self.units if env == environment and (env, app) not in self.foreign)

    def contents(self, unit: DesiredUnit) -> list[Content]:
        """The deployed unit's files beside the desired ones (the twin keeps the units it applied)."""
        current = self.units.get((unit.environment, unit.application))
        live = current.files() if current is not None else {}
        desired = unit.files()
        names = sorted(set(live) | set(desired))
        return [Content(name, mask_secrets(live[name].decode()) if name in live else None,
                        mask_secrets(desired.get(name, b"").decode())) for name in names]  # fmt: skip

    def apply(self, unit: DesiredUnit, dry_run: bool = False) -> ApplyResult:
        key = (unit.environment, unit.application)
        self.calls.append(("apply", *key))
        if key in self.fail_with:
            raise self.fail_with[key]
        current = self.units.get(key)
        changed = current is None or current.fingerprint != unit.fingerprint or key in self.drifted
        if key in self.foreign:
            raise PermanentError(f"{self.target}: {unit.application} in {unit.environment} exists, not managed by us")
        if not dry_run:
            self.units[key] = unit
            self.drifted.discard(key)
            if changed:
                self.effects.append(("create" if current is None else "update", *key))
        return ApplyResult(changed, "applied" if changed else "unchanged")

    def remove(self, environment: str, application: str, dry_run: bool = False) -> ApplyResult:
        self.calls.append(("remove", environment, application))
        present = (environment, application) in self.units and (environment, application) not in self.foreign
        if present and not dry_run:
            del self.units[(environment, application)]
            self.effects.append(("remove", environment, application))
        return ApplyResult(present, "removed" if present else "absent")

    def health(self, environment: str, application: str) -> HealthReport:
        if (environment, application) not in self.units:
            return HealthReport(Health.MISSING, "not deployed")
        return self.health_of.get((environment, application), HealthReport(Health.HEALTHY))

    def close(self) -> None:
        return None
