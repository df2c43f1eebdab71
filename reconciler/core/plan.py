"""Pairing desired units with live ones, and the order in which to act on them.

``pair`` is the pure heart of a reconcile: for every (application, target) it sets a desired unit (or ``None``:
prune) beside what the target holds (or ``None``: create) and names the :class:`Action`. ``None`` desired never
means "remove everything" by itself: :func:`guard_empty` turns removals into holds when an environment's desired
set became empty and the environment does not allow it. ``apply_order`` sorts applications so every one comes
after what it ``dependsOn``. Phases are the status vocabulary of DESIGN.md with an explicit severity order.

Called by the engine and by ``reconciler plan``. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from reconciler.core.desired import DesiredUnit
from reconciler.core.state import LiveUnit


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    REMOVE = "remove"
    HOLD = "hold"  # a removal that is not allowed (empty desired set)


class Phase(StrEnum):
    SYNCED = "Synced"
    OUT_OF_SYNC = "OutOfSync"
    PROGRESSING = "Progressing"
    BLOCKED = "Blocked"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    INVALID = "Invalid"


PHASE_SEVERITY = {
    Phase.SYNCED: 0,
    Phase.OUT_OF_SYNC: 1,
    Phase.PROGRESSING: 2,
    Phase.BLOCKED: 3,
    Phase.DEGRADED: 4,
    Phase.FAILED: 5,
    Phase.INVALID: 6,
}


def worst_phase(phases: Iterable[Phase]) -> Phase:
    return max(phases, key=PHASE_SEVERITY.__getitem__, default=Phase.SYNCED)


@dataclass(frozen=True)
class UnitPlan:
    application: str
    target: str
    action: Action
    desired: DesiredUnit | None
    live: LiveUnit | None
    reason: str = ""

    @property
    def from_version(self) -> str | None:
        return self.live.version if self.live else None

    @property
    def to_version(self) -> str | None:
        return self.desired.version if self.desired else None


Key = tuple[str, str]  # (application, target)


def pair(desired: Mapping[Key, DesiredUnit], live: Mapping[Key, LiveUnit | None]) -> list[UnitPlan]:
    """One :class:`UnitPlan` per key of either side, sorted by key."""
    plans = []
    for key in sorted(set(desired) | {k for k, v in live.items() if v is not None}):
        app, target = key
        want, have = desired.get(key), live.get(key)
        if want is None:
            assert have is not None
            plans.append(UnitPlan(app, target, Action.REMOVE, None, have, "no longer desired"))
        elif have is None:
            plans.append(UnitPlan(app, target, Action.CREATE, want, None, "not deployed"))
        elif have.drifted:
            shown = ", ".join(have.drifted[:3]) + (" ..." if len(have.drifted) > 3 else "")
            plans.append(UnitPlan(app, target, Action.UPDATE, want, have, f"drift: {shown}"))
        elif have.fingerprint != want.fingerprint:
            why = f"{have.version} -> {want.version}" if have.version != want.version else "content changed"
            plans.append(UnitPlan(app, target, Action.UPDATE, want, have, why))
        else:
            plans.append(UnitPlan(app, target, Action.UNCHANGED, want, have))
    return plans


def guard_empty(plans: list[UnitPlan], allow_empty: bool) -> list[UnitPlan]:
    """Hold every removal when nothing at all is desired any more, unless the environment allows it."""
    if allow_empty or any(p.desired is not None for p in plans):
        return plans
    return [
        UnitPlan(p.application, p.target, Action.HOLD, None, p.live, "desired set is empty; allowEmpty is false")
        if p.action is Action.REMOVE
        else p
        for p in plans
    ]


def apply_order(applications: Iterable[str], depends_on: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Applications sorted so that dependencies come first; ties by name; unknown dependencies ignored.

    Validation rejects cycles; should one reach here, its members keep name order after the rest.
    """
    todo = sorted(set(applications))
    wanted = set(todo)
    done: list[str] = []
    placed: set[str] = set()
    while todo:
        progress = [a for a in todo if all(d in placed or d not in wanted for d in depends_on.get(a, ()))]
        if not progress:
            done.extend(todo)
            break
        for app in progress:
            placed.add(app)
            done.append(app)
        todo = [a for a in todo if a not in placed]
    return done
