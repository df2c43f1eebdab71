"""Pure pairing and ordering (table-driven): desired vs live, empty-set guard, dependency order, phases."""

from __future__ import annotations

import pytest

from reconciler.core.desired import DesiredComponent, DesiredUnit, fingerprint
from reconciler.core.plan import Action, Phase, UnitPlan, apply_order, guard_empty, pair, worst_phase
from reconciler.core.state import LiveUnit


def unit(app: str, version: str, content: bytes = b"x") -> DesiredUnit:
    comps = (DesiredComponent("api", "kubernetes", {"f.yaml": content}),)
    return DesiredUnit("env", app, version, "t", comps, fingerprint=fingerprint(comps, version))


def live(app: str, version: str, content: bytes = b"x", drifted: tuple[str, ...] = ()) -> LiveUnit:
    return LiveUnit("env", app, "t", version, unit(app, version, content).fingerprint, drifted)


PAIRS = [
    ("create", {("a", "t"): unit("a", "1")}, {}, Action.CREATE, "not deployed"),
    ("unchanged", {("a", "t"): unit("a", "1")}, {("a", "t"): live("a", "1")}, Action.UNCHANGED, ""),
    ("upgrade", {("a", "t"): unit("a", "2")}, {("a", "t"): live("a", "1")}, Action.UPDATE, "1 -> 2"),
    ("content", {("a", "t"): unit("a", "1", b"y")}, {("a", "t"): live("a", "1")}, Action.UPDATE, "content changed"),
    (
        "drift",
        {("a", "t"): unit("a", "1")},
        {("a", "t"): live("a", "1", drifted=("f.yaml",))},
        Action.UPDATE,
        "drift: f.yaml",
    ),
    ("prune", {}, {("a", "t"): live("a", "1")}, Action.REMOVE, "no longer desired"),
    ("absent-live-is-create", {("a", "t"): unit("a", "1")}, {("a", "t"): None}, Action.CREATE, "not deployed"),
]


@pytest.mark.parametrize(("desired", "have", "action", "reason"), [p[1:] for p in PAIRS], ids=[p[0] for p in PAIRS])
def test_pair(desired: dict, have: dict, action: Action, reason: str) -> None:
    (plan,) = pair(desired, have)
    assert (plan.action, plan.reason) == (action, reason)


def test_an_empty_desired_set_removes_nothing_unless_allowed() -> None:
    plans = pair({}, {("a", "t"): live("a", "1"), ("b", "t"): live("b", "1")})
    held = guard_empty(plans, allow_empty=False)
    assert [p.action for p in held] == [Action.HOLD, Action.HOLD]
    assert [p.action for p in guard_empty(plans, allow_empty=True)] == [Action.REMOVE, Action.REMOVE]
    partial = pair({("a", "t"): unit("a", "1")}, {("a", "t"): live("a", "1"), ("b", "t"): live("b", "1")})
    assert [p.action for p in guard_empty(partial, allow_empty=False)] == [Action.UNCHANGED, Action.REMOVE]


ORDERS = [
    ("independent", ["b", "a"], {}, ["a", "b"]),
    ("chain", ["c", "b", "a"], {"c": ("b",), "b": ("a",)}, ["a", "b", "c"]),
    ("unknown-dependency-ignored", ["a"], {"a": ("zzz",)}, ["a"]),
    ("cycle-kept-last", ["a", "b", "c"], {"a": ("b",), "b": ("a",)}, ["c", "a", "b"]),
]


@pytest.mark.parametrize(("apps", "deps", "expected"), [o[1:] for o in ORDERS], ids=[o[0] for o in ORDERS])
def test_apply_order(apps: list[str], deps: dict, expected: list[str]) -> None:
    assert apply_order(apps, deps) == expected


def test_worst_phase_and_versions() -> None:
    assert worst_phase([Phase.SYNCED, Phase.BLOCKED, Phase.PROGRESSING]) is Phase.BLOCKED
    assert worst_phase([Phase.DEGRADED, Phase.FAILED]) is Phase.FAILED
    assert worst_phase([]) is Phase.SYNCED
    plan = UnitPlan("a", "t", Action.UPDATE, unit("a", "2"), live("a", "1"))
    assert (plan.from_version, plan.to_version) == ("1", "2")
