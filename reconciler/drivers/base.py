"""The driver interface: observe, apply (with dry-run), remove, health, and what a driver owns.

A driver instance serves one *target* (a name from the operator config) and is called by the engine per
(environment, application). Drivers are the only code that touches deployed state. Errors are raised as
:class:`~reconciler.core.problems.PermanentError` (bad input or a refusal: reported, not retried until the input
changes) or :class:`~reconciler.core.problems.TemporaryError` (an outage: retried with backoff); their messages
must be safe to show (no secrets). Implementations: ``local``, ``script``/``ssh``, ``kubernetes`` and the
in-memory twin ``memory`` for unit tests of the engine.

A driver may also offer ``observe_environment(environment, applications, check_drift)``: what ``owned_applications``
plus one ``observe`` per application give, in one call (``local`` does: one directory scan per environment
instead of a lookup per application); :func:`observe_environment` uses it when present.

A driver may also offer ``batch(environment)``, a context manager: the engine enters it (for every target of the
environment) before observing and leaves it after the last prune, so a driver can read its own records of the
environment once and write them once (``kubernetes`` does: one inventory read and one write per environment
instead of one of each per application). Leaving the block may raise (the records could not be written); the
engine then reports the environment as failed, transient unless the error is a ``PermanentError``.

A driver may also offer ``identity(unit) -> str``: what it adds to ``unit`` when it applies it, as text (the
namespace it defaults objects to, target settings that decide what is written or refused, its ownership scheme).
The engine folds it into the unit's fingerprint (:func:`identified`), so a change of what the driver would write
is a change of the desired state even when the rendered files are the same ("Synced" means the driver observes
exactly the desired state, what it adds included). A driver that writes the rendered files as they are and
observes where it writes (``local``) needs none.

A driver may set the class attribute ``observe_is_health = True`` when its health is nothing more than "observed
without drift" (``local``): the engine then does not ask for the health of a unit that a drift-checking observe
has just found unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, cast

from reconciler.core.desired import DesiredUnit, with_identity
from reconciler.core.state import HEALTH_SEVERITY, Health, LiveUnit, worst

__all__ = [
    "HEALTH_SEVERITY",
    "ApplyResult",
    "Driver",
    "Health",
    "HealthReport",
    "LiveUnit",
    "identified",
    "identity_of",
    "observe_environment",
    "worst",
]


@dataclass(frozen=True)
class ApplyResult:
    changed: bool
    message: str = ""
    adopted: tuple[str, ...] = ()  # objects that existed, were not ours, and were taken over on the unit's opt-in


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


BatchObserve = Callable[[str, list[str], bool], dict[str, LiveUnit | None]]
Batch = Callable[[str], AbstractContextManager[None]]
Identity = Callable[[DesiredUnit], str]


def identity_of(driver: Driver) -> Identity | None:
    """``driver``'s ``identity`` method, ``None`` when it declares none."""
    return cast(Identity | None, getattr(driver, "identity", None))


def identified(driver: Driver, unit: DesiredUnit) -> DesiredUnit:
    """``unit`` with ``driver``'s identity of it folded into its fingerprint (unchanged for drivers without one)."""
    identity = identity_of(driver)
    return unit if identity is None else with_identity(unit, identity(unit))


def observe_environment(
    driver: Driver, environment: str, applications: Iterable[str], check_drift: bool
) -> dict[str, LiveUnit | None]:
    """Every application ``driver`` holds in ``environment`` plus ``applications``, each with its live unit
    (``None``: not deployed). One call for drivers that offer ``observe_environment``, else list + observe each."""
    batch = cast(BatchObserve | None, getattr(driver, "observe_environment", None))
    wanted = sorted(set(applications))
    if batch is not None:
        return batch(environment, wanted, check_drift)
    names = sorted(set(driver.owned_applications(environment)) | set(wanted))
    return {name: driver.observe(environment, name, check_drift) for name in names}
