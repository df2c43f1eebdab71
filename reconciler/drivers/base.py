"""The driver interface: observe, apply (with dry-run), remove, health, and what a driver owns.

A driver instance serves one *target* (a name from the operator config) and is called by the engine per
(environment, application). Drivers are the only code that touches deployed state. Errors are raised as
:class:`~reconciler.core.problems.PermanentError` (bad input or a refusal: reported, not retried until the input
changes) or :class:`~reconciler.core.problems.TemporaryError` (an outage: retried with backoff); their messages
must be safe to show (no secrets). Implementations: ``local``, ``script``/``ssh``, ``kubernetes`` and the
in-memory twin ``memory`` for unit tests of the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from reconciler.core.desired import DesiredUnit
from reconciler.core.state import HEALTH_SEVERITY, Health, LiveUnit, worst

__all__ = ["HEALTH_SEVERITY", "ApplyResult", "Driver", "Health", "HealthReport", "LiveUnit", "worst"]


@dataclass(frozen=True)
class ApplyResult:
    changed: bool
    message: str = ""


@dataclass(frozen=True)
class HealthReport:
    status: Health
    message: str = ""


class Driver(Protocol):
    kind: str
    target: str

    def observe(self, environment: str, application: str, check_drift: bool = True) -> LiveUnit | None:
        """The unit as deployed, or ``None`` when nothing of this application is there.

        ``check_drift=False`` may trust the driver's own record (inventory) instead of re-reading deployed state.
        """
        ...

    def owned_applications(self, environment: str) -> list[str]:
        """Applications this controller deployed in ``environment`` on this target (candidates for prune)."""
        ...

    def apply(self, unit: DesiredUnit, dry_run: bool = False) -> ApplyResult:
        """Make the target hold ``unit``; idempotent (re-applying after a crash converges, no duplicates)."""
        ...

    def remove(self, environment: str, application: str, dry_run: bool = False) -> ApplyResult:
        """Remove what this controller deployed for ``application`` in ``environment``; never anything else."""
        ...

    def health(self, environment: str, application: str) -> HealthReport: ...

    def close(self) -> None: ...
