"""Values describing deployed state, shared by drivers (which produce them) and the pure planner (which reads them).

Health has an explicit severity order so an application's or environment's health is the worst of its parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Health(StrEnum):
    """Health of deployed state, ordered by severity (see :data:`HEALTH_SEVERITY`)."""

    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    UNKNOWN = "Unknown"
    MISSING = "Missing"
    DEGRADED = "Degraded"


HEALTH_SEVERITY = {Health.HEALTHY: 0, Health.PROGRESSING: 1, Health.UNKNOWN: 2, Health.MISSING: 3, Health.DEGRADED: 4}


def worst(*states: Health) -> Health:
    return max(states, key=HEALTH_SEVERITY.__getitem__, default=Health.HEALTHY)


@dataclass(frozen=True, slots=True)  # (one per deployed unit in the drift-check memo: 325,000 at 5,000 envs)
class LiveUnit:
    """What a target holds for one application of one environment, as recorded by this controller."""

    environment: str
    application: str
    target: str
    version: str | None
    fingerprint: str | None  # the DesiredUnit.fingerprint last applied
    drifted: tuple[str, ...] = ()  # files/objects that differ from what was applied (hand edits, deletions)

    @property
    def in_sync_with(self) -> str | None:
        """The fingerprint this unit matches, or ``None`` when drifted."""
        return None if self.drifted else self.fingerprint
