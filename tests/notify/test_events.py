"""Events from phase changes and their coalescing (core/notify.py): a fleet-wide change is one message per stage."""

from __future__ import annotations

from reconciler.core.notify import EventKind, coalesce, phase_events
from reconciler.core.plan import Phase


def test_only_changes_worth_telling_become_events() -> None:
    before = {"a": Phase.SYNCED, "b": Phase.DEGRADED, "c": Phase.PROGRESSING, "d": None, "e": Phase.BLOCKED}
    after = {"a": (Phase.DEGRADED, "web: 0/2 ready"), "b": (Phase.SYNCED, ""), "c": (Phase.SYNCED, ""),
             "d": (Phase.SYNCED, ""), "e": (Phase.BLOCKED, "frozen")}  # fmt: skip
    events = phase_events(before, after, {e: "production" for e in after}, "abc123", "dev@example.org")
    assert [(e.environment, e.kind) for e in events] == [("a", EventKind.DEGRADED), ("b", EventKind.RECOVERED)]


def test_a_fleet_wide_change_is_one_message_per_stage() -> None:
    stages = {f"env{i}": ("dev", "production")[i % 2] for i in range(235)}
    before = {env: Phase.SYNCED for env in stages}
    after = {env: (Phase.BLOCKED, "frozen until 2026-12-05 by payroll") for env in stages}
    messages = coalesce(phase_events(before, after, stages, "0123456789abcdef", "ops@example.org"))
    assert [(m.stage, len(m.environments)) for m in messages] == [("dev", 118), ("production", 117)]
    text = messages[0].text
    assert text.startswith("dev: 118 environments Blocked (env0, env10, env100, env102, env104 and 113 more)")
    assert "frozen until 2026-12-05 by payroll" in text and "at 0123456789ab by ops@example.org" in text
    assert messages[0].as_json()["kind"] == "environment.blocked"
