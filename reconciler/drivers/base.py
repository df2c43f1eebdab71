"""The driver interface: observe, apply (with dry-run), remove, health, and what a driver owns.

A driver instance serves one *target* (a name from the operator config) and is called by the engine per
(environment, application). Drivers are the only code that touches deployed state. Errors are raised as
:class:`~reconciler.core.problems.PermanentError` (bad input or a refusal: reported, not retried until the input
changes) or :class:`~reconciler.core.problems.TemporaryError` (an outage: retried with backoff); their messages
must be safe to show (no secrets). Implementations: ``local``, ``script``/``ssh``, ``kubernetes`` and the
in-memory twin ``memory`` for unit tests of the engine.

Optional abilities are declared, not probed: a driver class that has one inherits its protocol below, and the
engine asks with ``isinstance`` (through :func:`batching`, :func:`observing` and :func:`health_is_observed`, which
keep the answer per driver class: ``isinstance`` on a runtime-checkable protocol walks the protocol's members on
every call in Python 3.11, 10-100 times the cost of an ordinary ``isinstance``, and the engine asks per unit).

- :class:`ObservesEnvironment` (``observe_environment(environment, applications, check_drift)``): what
  ``owned_applications`` plus one ``observe`` per application give, in one call (``local`` does: one directory
  scan per environment instead of a lookup per application); :func:`observe_environment` uses it when present.
- :class:`Batching` (``batch(environment)``, a context manager): the engine enters it (for every target of the
  environment) before observing and leaves it after the last prune, so a driver can read its own records of the
  environment once and write them once (``kubernetes`` does: one inventory read and one write per environment
  instead of one of each per application). Leaving the block may raise (the records could not be written); the
  engine then reports the environment as failed, transient unless the error is a ``PermanentError``.
- :class:`Identifies` (``identity(unit) -> str``): what the driver adds to ``unit`` when it applies it, as text
  (the namespace it defaults objects to, target settings that decide what is written or refused, its ownership
  scheme). The engine folds it into the unit's fingerprint (:func:`identified`), so a change of what the driver
  would write is a change of the desired state even when the rendered files are the same ("Synced" means the
  driver observes exactly the desired state, what it adds included). A driver that writes the rendered files as
  they are and observes where it writes (``local``) needs none.
- :class:`HealthIsObserved` (``observe_is_health``): a driver whose health is nothing more than "observed without
  drift" (``local``) sets it to ``True``; the engine then does not ask for the health of a unit that a
  drift-checking observe has just found unchanged (:func:`health_is_observed`).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

from reconciler.core.contentdiff import Content
from reconciler.core.desired import DesiredUnit, with_identity
from reconciler.core.state import HEALTH_SEVERITY, Health, LiveUnit, worst

__all__ = [
    "HEALTH_SEVERITY",
    "ApplyResult",
    "Batching",
    "Driver",
    "Health",
    "HealthIsObserved",
    "HealthReport",
    "Identifies",
    "LiveUnit",
    "ObservesEnvironment",
    "batching",
    "health_is_observed",
    "identified",
    "identifying",
    "observe_environment",
    "observing",
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


@runtime_checkable
class ObservesEnvironment(Protocol):
    """A driver that observes a whole environment in one call (see the module docstring)."""

    def observe_environment(
        self, environment: str, applications: list[str], check_drift: bool
    ) -> dict[str, LiveUnit | None]:
        """Every application the driver holds in ``environment`` plus ``applications``, each with its live unit."""
        ...


@runtime_checkable
class Batching(Protocol):
    """A driver that reads and writes its records of an environment once per batch (see the module docstring)."""

    def batch(self, environment: str) -> AbstractContextManager[None]:
        """A block inside which calls for ``environment`` share one read and one write of the driver's records."""
        ...


@runtime_checkable
class Identifies(Protocol):
    """A driver that adds something of its own to what it applies (see the module docstring)."""

    def identity(self, unit: DesiredUnit) -> str:
        """What this driver adds to ``unit`` when it applies it, as text (empty: nothing)."""
        ...


@runtime_checkable
class ShowsContent(Protocol):
    """A driver that can show what runs beside what a unit wants (``reconciler diff``), secrets masked."""

    def contents(self, unit: DesiredUnit) -> list[Content]:
        """Each file or object of ``unit``: live text (None: absent) and desired text."""
        ...


@runtime_checkable
class HealthIsObserved(Protocol):
    """A driver that says whether its health is exactly "observed without drift" (see the module docstring)."""

    observe_is_health: bool


_OFFERS: dict[tuple[type, type], bool] = {}


def _offers(driver: object, ability: type) -> bool:
    """``isinstance(driver, ability)``, decided once per driver class (a driver's abilities are its class's)."""
    key = (type(driver), ability)
    found = _OFFERS.get(key)
    if found is None:
        found = _OFFERS[key] = isinstance(driver, ability)
    return found


def batching(driver: Driver) -> Batching | None:
    """``driver`` as a :class:`Batching` driver, or ``None`` when it does not batch."""
    return cast(Batching, driver) if _offers(driver, Batching) else None


def observing(driver: Driver) -> ObservesEnvironment | None:
    """``driver`` as an :class:`ObservesEnvironment` driver, or ``None`` when it observes one application a call."""
    return cast(ObservesEnvironment, driver) if _offers(driver, ObservesEnvironment) else None


def identifying(driver: Driver) -> Identifies | None:
    """``driver`` as an :class:`Identifies` driver, or ``None`` when it adds nothing of its own."""
    return cast(Identifies, driver) if _offers(driver, Identifies) else None


def identified(driver: Driver, unit: DesiredUnit) -> DesiredUnit:
    """``unit`` with ``driver``'s identity of it folded into its fingerprint (unchanged for drivers without one)."""
    found = identifying(driver)
    return unit if found is None else with_identity(unit, found.identity(unit))


def showing(driver: Driver) -> ShowsContent | None:
    """``driver`` as a :class:`ShowsContent` driver, or ``None`` when it cannot show live content."""
    return cast(ShowsContent, driver) if _offers(driver, ShowsContent) else None


def health_is_observed(driver: Driver) -> bool:
    """True for drivers whose health is exactly "observed without drift" (``local``)."""
    return _offers(driver, HealthIsObserved) and cast(HealthIsObserved, driver).observe_is_health


def observe_environment(
    driver: Driver, environment: str, applications: Iterable[str], check_drift: bool
) -> dict[str, LiveUnit | None]:
    """Every application ``driver`` holds in ``environment`` plus ``applications``, each with its live unit
    (``None``: not deployed). One call for drivers that offer ``observe_environment``, else list + observe each."""
    wanted = sorted(set(applications))
    whole = observing(driver)
    if whole is not None:
        return whole.observe_environment(environment, wanted, check_drift)
    names = sorted(set(driver.owned_applications(environment)) | set(wanted))
    return {name: driver.observe(environment, name, check_drift) for name in names}
