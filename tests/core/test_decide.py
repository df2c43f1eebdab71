"""The pure decision core: verdicts from facts (core/decide.py) and sync tasks as data (core/tasks.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciler.core.decide import AppVerdict, Facts, verdict, verdicts
from reconciler.core.desired import DesiredUnit
from reconciler.core.loader import load_repo
from reconciler.core.model import ReleasesRepo
from reconciler.core.plan import Action, UnitPlan
from reconciler.core.policy import Hold, HoldKind, Signature, Stint
from reconciler.core.state import LiveUnit
from reconciler.core.tasks import Inputs, TaskKind, plan_tasks
from reconciler.core.tree import MemoryTree
from tests.minirepo import minimal_repo

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def repo(protected: bool = False) -> ReleasesRepo:
    files = dict(minimal_repo())
    if protected:
        stage = files["stages/production.yaml"].decode()
        files["stages/production.yaml"] = stage.replace("soak: 24h", "soak: 24h\n  protected: true").encode()
    loaded = load_repo(MemoryTree(files)).repo
    assert loaded is not None
    return loaded


def test_an_unsigned_change_in_a_protected_stage_is_held_whatever_the_attempt() -> None:
    r = repo(protected=True)
    env = r.environments["shared-production"]
    unsigned = Facts(NOW, signatures=(Signature("abc123", False, detail="unsigned"),))
    held = verdict(r, env, "ref", "3.0", unsigned, running="3.0")
    assert not held.allowed and [h.kind for h in held.holds] == [HoldKind.SIGNATURE]
    assert "not signed by an allowed signer (unsigned)" in held.reason
    assert held.drift_repair  # a repair back to what was applied (signed before) may go ahead
    not_looked_up = verdict(r, env, "ref", "3.0", Facts(NOW), running="3.0")
    assert not not_looked_up.allowed and "not verified" in not_looked_up.reason
    signed = verdict(r, env, "ref", "3.0", Facts(NOW, signatures=(Signature("abc", True, "ops"),)), "3.0")
    assert signed.allowed


def test_every_hold_is_reported_not_only_the_first() -> None:
    r = repo(protected=True)
    env = r.environments["shared-production"]
    facts = Facts(NOW, signatures=(Signature("abc123", False, detail="unsigned"),))
    both = verdict(r, env, "ref", "3.10", facts, running="3.0")  # a promotion that has not run in dev
    assert [h.kind for h in both.holds] == [HoldKind.PROMOTION, HoldKind.SIGNATURE]


def test_a_first_install_is_not_a_promotion_but_a_version_change_is() -> None:
    r = repo()
    env = r.environments["shared-production"]
    assert verdict(r, env, "ref", "3.10", Facts(NOW), running=None).allowed
    held = verdict(r, env, "ref", "3.10", Facts(NOW), running="3.0")
    assert [h.kind for h in held.holds] == [HoldKind.PROMOTION]
    soaked = {(e, "ref"): (Stint("3.10", NOW - timedelta(days=3)),) for e in ("lille-dev", "rennes-dev")}
    assert verdict(r, env, "ref", "3.10", Facts(NOW, history=soaked), running="3.0").allowed


def test_an_override_counts_only_in_a_signed_revision_and_names_its_signer() -> None:
    r = repo()
    env = r.environments["shared-production"]
    trailers = {"Promotion-Override": "incident 4711"}
    unsigned = Facts(NOW, head_signature=Signature("h", False), trailers=trailers)
    assert not verdict(r, env, "ref", "3.10", unsigned, running="3.0").allowed
    signed = Facts(NOW, head_signature=Signature("h", True, "ops@example.org"), trailers=trailers)
    lifted = verdict(r, env, "ref", "3.10", signed, running="3.0")
    assert lifted.allowed and lifted.override == "promotion: incident 4711"
    assert signed.signer == "ops@example.org"


def test_a_removal_in_a_protected_stage_needs_a_signature_too() -> None:
    r = repo(protected=True)
    env = r.environments["shared-production"]
    facts = Facts(NOW, signatures=(Signature("abc123", False, detail="unsigned"),))
    found = verdicts(r, env, facts, {"gone": "1.0"}, frozenset({"gone"}))
    assert not found["gone"].allowed and not found["gone"].drift_repair


def unit(app: str, version: str, fingerprint: str) -> DesiredUnit:
    return DesiredUnit("env", app, version, "t", (), {}, fingerprint)


def live(app: str, version: str, fingerprint: str, drifted: tuple[str, ...] = ()) -> LiveUnit:
    return LiveUnit("env", app, "t", version, fingerprint, drifted)


def inputs(**overrides: object) -> Inputs:
    base: dict[str, object] = {
        "desired": {"a": "2", "b": "1"},
        "verdicts": {},
        "depends": {"b": ("a",)},
        "self_heal": True,
        "requirement": lambda app, version, live: None,
    }
    base.update(overrides)
    return Inputs(**base)  # type: ignore[arg-type]


def test_tasks_apply_in_dependency_order_and_prune_last() -> None:
    plans = [
        UnitPlan("a", "t", Action.UPDATE, unit("a", "2", "f2"), live("a", "1", "f1"), "1 -> 2"),
        UnitPlan("b", "t", Action.CREATE, unit("b", "1", "g"), None, "not deployed"),
        UnitPlan("old", "t", Action.REMOVE, None, live("old", "9", "x"), "no longer desired"),
    ]
    tasks = plan_tasks(plans, inputs())
    assert [(t.kind, t.application) for t in tasks] == [
        (TaskKind.APPLY, "a"), (TaskKind.APPLY, "b"), (TaskKind.PRUNE, "old"),
    ]  # fmt: skip
    assert tasks[1].after == ("a",)


def test_a_held_application_holds_its_dependents_and_its_prunes() -> None:
    plans = [
        UnitPlan("a", "t", Action.UPDATE, unit("a", "2", "f2"), live("a", "1", "f1"), "1 -> 2"),
        UnitPlan("b", "t", Action.CREATE, unit("b", "1", "g"), None, "not deployed"),
    ]
    hold = AppVerdict((Hold(HoldKind.SIGNATURE, "unsigned"), Hold(HoldKind.PROMOTION, "not soaked")))
    tasks = plan_tasks(plans, inputs(verdicts={"a": hold}))
    assert [(t.kind, t.reason) for t in tasks] == [
        (TaskKind.HOLD, "unsigned; not soaked"), (TaskKind.WAIT, "waiting for a"),
    ]  # fmt: skip


def test_drift_repair_goes_ahead_under_a_hold_that_allows_it_and_is_reported_without_self_heal() -> None:
    drift = [UnitPlan("a", "t", Action.UPDATE, unit("a", "2", "f2"), live("a", "2", "f2", ("x",)), "drift: x")]
    hold = AppVerdict((Hold(HoldKind.FREEZE, "frozen"),), drift_repair=True)
    assert [t.kind for t in plan_tasks(drift, inputs(verdicts={"a": hold}))] == [TaskKind.APPLY]
    strict = AppVerdict((Hold(HoldKind.FREEZE, "frozen"),), drift_repair=False)
    assert [t.kind for t in plan_tasks(drift, inputs(verdicts={"a": strict}))] == [TaskKind.HOLD]
    reported = plan_tasks(drift, inputs(self_heal=False))
    assert [t.kind for t in reported] == [TaskKind.REPORT] and "selfHeal is off" in reported[0].reason
    assert reported[0].phase == "OutOfSync"


def test_a_suspension_holds_drift_repair_even_inside_a_freeze_that_allows_it() -> None:
    """Found by the stateful machine (I8): the freeze's "drift repair allowed" overwrote the suspension's brake."""
    from dataclasses import replace

    from reconciler.core.model import AbsoluteWindow, FreezeWindow
    from reconciler.core.operations import Suspension

    r = repo()
    window = FreezeWindow("now", stages=("production",), absolute=(AbsoluteWindow(NOW - timedelta(hours=1),
                                                                               NOW + timedelta(hours=1)),))  # fmt: skip
    frozen = replace(r, freezes={"now": window})
    env = frozen.environments["lille-production"]
    facts = Facts(NOW, signatures=())
    assert verdict(frozen, env, "ref", "3.0", facts, "3.0").drift_repair  # a freeze lets drift repair through
    brake = {("lille-production", None): Suspension("lille-production", None, "ops", "incident", "2026-12-03")}
    held = verdict(frozen, env, "ref", "3.0", replace(facts, suspensions=brake), "3.0")
    assert not held.drift_repair and {h.kind for h in held.holds} == {HoldKind.SUSPENDED, HoldKind.FREEZE}
