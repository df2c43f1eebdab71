"""Events from what a cycle observed and their coalescing (core/notify.py): a fleet-wide change is one message per
stage; rollouts, drift repairs, overrides and permanent errors are told; a stage's commit status sums it up."""

from __future__ import annotations

from reconciler.core.notify import (
    EventKind,
    Observation,
    Rollouts,
    StatusState,
    coalesce,
    cycle_events,
    stage_status,
)
from reconciler.core.plan import Phase

V = (("espace-assure", "2.3.1"), ("annuaire", "1.0.0"))


def seen(env: str, phase: Phase, reason: str = "", stage: str = "production", **more: object) -> Observation:
    return Observation(env, stage, phase, reason, versions=V, **more)  # type: ignore[arg-type]


def test_only_changes_worth_telling_become_events() -> None:
    before = {"a": Phase.SYNCED, "b": Phase.DEGRADED, "c": Phase.PROGRESSING, "d": None, "e": Phase.BLOCKED}
    observed = [seen("a", Phase.DEGRADED, "web: 0/2 ready", troubled=("espace-assure",)), seen("b", Phase.SYNCED),
                seen("c", Phase.SYNCED), seen("d", Phase.SYNCED), seen("e", Phase.BLOCKED, "frozen")]  # fmt: skip
    events = cycle_events(before, observed, "abc123", "dev@example.org")
    assert [(e.environment, e.kind) for e in events] == [("a", EventKind.DEGRADED), ("b", EventKind.RECOVERED)]
    assert events[0].applications == (("espace-assure", "2.3.1"),)  # the application in trouble, its version


def test_a_fleet_wide_change_is_one_message_per_stage() -> None:
    stages = {f"env{i}": ("dev", "production")[i % 2] for i in range(235)}
    before = {env: Phase.SYNCED for env in stages}
    observed = [seen(e, Phase.BLOCKED, "frozen until 2026-12-05 by payroll", s) for e, s in stages.items()]
    messages = coalesce(cycle_events(before, observed, "0123456789abcdef", "ops@example.org"), "https://rc.example")
    assert [(m.stage, len(m.environments)) for m in messages] == [("dev", 118), ("production", 117)]
    text = messages[0].text
    assert text.startswith("dev: 118 environments Blocked (env0, env10, env100, env102, env104 and 113 more)")
    assert "frozen until 2026-12-05 by payroll" in text and "at 0123456789ab by ops@example.org" in text
    assert messages[0].as_json()["kind"] == "environment.blocked"
    assert messages[0].link == "https://rc.example/stages"


def test_a_permanent_error_is_told_once_as_such() -> None:
    first = cycle_events({"a": Phase.SYNCED}, [seen("a", Phase.FAILED, "bad manifest", stalled=True)])
    assert [e.kind for e in first] == [EventKind.PERMANENT_ERROR]
    assert cycle_events({"a": Phase.FAILED}, [seen("a", Phase.FAILED, "bad manifest", stalled=True)]) == []
    transient = cycle_events({"a": Phase.SYNCED}, [seen("a", Phase.FAILED, "connection refused")])
    assert [e.kind for e in transient] == [EventKind.FAILED]
    message = coalesce(first, "https://rc.example/")[0]
    assert "Failed, not retried until its inputs change" in message.text
    assert message.link == "https://rc.example/environments/a"


def test_drift_repairs_and_overrides_are_told_with_their_applications() -> None:
    observed = [seen("a", Phase.SYNCED, repaired=("annuaire",)),
                seen("b", Phase.SYNCED, touched=("espace-assure",), overrides=("promotion: hotfix INC-4711",))]  # fmt: skip
    events = cycle_events({"a": Phase.SYNCED, "b": Phase.BLOCKED}, observed, "abc", "ops@example.org")
    kinds = [(e.environment, e.kind) for e in events]
    assert kinds == [("a", EventKind.DRIFT_REPAIRED), ("b", EventKind.RECOVERED), ("b", EventKind.OVERRIDE_USED)]
    assert events[0].applications == (("annuaire", "1.0.0"),)
    override = coalesce([events[2]])[0].text
    assert "changed under an override" in override and "promotion: hotfix INC-4711" in override
    assert "espace-assure 2.3.1" in override


def test_a_stage_rollout_is_finished_when_all_its_environments_are_synced() -> None:
    members = {"p1": "production", "p2": "production", "d1": "dev"}
    rollouts = Rollouts()
    phases: dict[str, Phase | None] = {"p1": Phase.SYNCED, "p2": Phase.PROGRESSING, "d1": Phase.SYNCED}
    first = rollouts.step([seen("p1", Phase.SYNCED, touched=("espace-assure",))], members, phases)
    assert first == []  # p2 is still progressing
    phases["p2"] = Phase.SYNCED
    done = rollouts.step([seen("p2", Phase.SYNCED)], members, phases, "abc", "dev@example.org")
    assert [(e.kind, e.environment) for e in done] == [(EventKind.ROLLOUT_FINISHED, "p1"),
                                                       (EventKind.ROLLOUT_FINISHED, "p2")]  # fmt: skip
    text = coalesce(done)[0].text
    assert text.startswith("production: 2 environments Synced after a rollout (p1, p2): espace-assure 2.3.1")
    assert rollouts.step([seen("p2", Phase.SYNCED)], members, phases) == []  # told once
    assert rollouts.step([seen("d1", Phase.SYNCED, stage="dev")], members, phases) == []  # nothing changed in dev


def test_a_stage_status_sums_up_its_environments() -> None:
    assert stage_status([Phase.SYNCED] * 44 + [Phase.PROGRESSING] * 3) == (
        StatusState.PENDING, "44/47 Synced, 3 Progressing")  # fmt: skip
    assert stage_status([Phase.SYNCED] * 3) == (StatusState.SUCCESS, "3/3 Synced")
    assert stage_status([Phase.SYNCED, Phase.BLOCKED]) == (StatusState.PENDING, "1/2 Synced, 1 Blocked")
    assert stage_status([Phase.SYNCED, Phase.DEGRADED, Phase.BLOCKED])[0] is StatusState.FAILURE
    assert stage_status([Phase.DEGRADED, Phase.INVALID]) == (StatusState.ERROR, "0/2 Synced, 1 Degraded, 1 Invalid")
    assert stage_status([Phase.SYNCED, None]) == (StatusState.PENDING, "1/2 Synced, 1 not reconciled yet")


def test_the_audit_entries_say_what_changed_what_was_repaired_and_which_overrides_were_used() -> None:
    from reconciler.engine.outcome import effects

    entries = [
        {"application": "ref", "result": "succeeded", "trigger": "webhook", "override": "promotion: hotfix"},
        {"application": "ref", "result": "succeeded", "trigger": "webhook", "override": "promotion: hotfix"},
        {"application": "famille", "result": "succeeded", "trigger": "drift", "override": None},
        {"application": "annuaire", "result": "failed", "trigger": "webhook", "override": "freeze: no"},
    ]
    assert effects(entries) == (("ref",), ("famille",), ("promotion: hotfix",))
