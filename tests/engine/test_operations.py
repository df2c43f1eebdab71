"""Operator requests on a real controller, real git: suspend holds every change and drift repair (on every
attempt, across a restart), is shown as Blocked by whom and why, and is audited; resume lets the change through;
sync reconciles a stalled environment now; refresh drift-checks without applying; two static-shard replicas
honour a suspension made through either."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.core.operations import Action
from reconciler.engine.operate import RequestError
from tests.engine import NEW_REF_RELEASE as REF_311
from tests.engine import Fleet
from tests.engine.test_governance import HOUR, controller_at

ENV = "lille-dev"


def deployed(fleet: Fleet) -> dict[Path, bytes]:
    root = fleet.targets / "k8s-nord" / ENV
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def bump(fleet: Fleet) -> None:
    fleet.commit({"releases/ref/3.11.yaml": REF_311}, "release ref 3.11")
    fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.11", "ref 3.11 to dev")


def test_suspend_holds_changes_and_drift_repair_across_a_restart_then_resume_applies(fleet: Fleet) -> None:
    assert fleet.once() == 0
    before = deployed(fleet)
    assert before, "the fleet deploys lille-dev to k8s-nord"
    with controller_at(fleet) as controller:
        controller.cycle()
        controller.request(Action.SUSPEND, ENV, None, "token:alice", "incident 4711: database migration")
        controller.cycle()
        status = fleet.env_status(ENV)
        assert status["phase"] == "Blocked"
        assert status["message"].startswith("suspended by token:alice since ")
        assert status["message"].endswith(": incident 4711: database migration")
        assert status["suspended"]["by"] == "token:alice"
    bump(fleet)
    some_file = next(iter(before))
    some_file.write_bytes(b"edited by hand\n")
    for offset in (0.0, HOUR, 2 * HOUR):  # restarts, retries, a drift check, a manual trigger: all held
        with controller_at(fleet, offset) as controller:
            controller.last_drift_check = None
            controller.cycle("manual")
            assert controller.states[ENV].phase == "Blocked"
    assert some_file.read_bytes() == b"edited by hand\n"  # not repaired while suspended
    assert fleet.env_status(ENV)["applications"]["ref"]["live"] == "3.10"
    entries = [e for e in fleet.audit() if e["environment"] == ENV]
    suspend = [e for e in entries if e["action"] == "suspend"]
    assert len(suspend) == 1 and suspend[0]["author"] == "token:alice"
    assert suspend[0]["message"] == "incident 4711: database migration" and suspend[0]["trigger"] == "manual"
    assert not [e for e in entries if e["action"] in ("update", "create") and e["to"] == "3.11"]
    with controller_at(fleet, 3 * HOUR) as controller:
        controller.cycle()
        controller.request(Action.RESUME, ENV, None, "token:bob", "migration done")
        controller.cycle()
    status = fleet.env_status(ENV)
    assert status["phase"] == "Synced" and status["applications"]["ref"]["live"] == "3.11"
    assert "suspended" not in status
    assert [e["author"] for e in fleet.audit() if e["action"] == "resume"] == ["token:bob"]


def test_suspending_one_application_holds_only_it(fleet: Fleet) -> None:
    assert fleet.once() == 0
    with controller_at(fleet) as controller:
        controller.cycle()
        controller.request(Action.SUSPEND, ENV, "ref", "proxy:carol", "flaky release")
        bump(fleet)
        controller.cycle("webhook")
        status = fleet.env_status(ENV)
        assert status["phase"] == "Blocked" and status["applications"]["ref"]["phase"] == "Blocked"
        assert status["applications"]["ref"]["live"] == "3.10"
        assert status["suspended"]["applications"] == ["ref"]
        other = fleet.env_status("rennes-dev")
        assert other["phase"] == "Synced" and other["applications"]["ref"]["live"] == "3.11"


def test_unknown_environment_or_application_is_refused_and_nothing_recorded(fleet: Fleet) -> None:
    assert fleet.once() == 0
    with controller_at(fleet) as controller:
        controller.cycle()
        audit = len(fleet.audit())
        with pytest.raises(RequestError, match="unknown environment 'nowhere'"):
            controller.request(Action.SUSPEND, "nowhere", None, "token:alice", "")
        with pytest.raises(RequestError, match="application 'nope' is not deployed in lille-dev"):
            controller.request(Action.SYNC, ENV, "nope", "token:alice", "")
    assert len(fleet.audit()) == audit


def test_refresh_reports_drift_without_repairing_and_sync_repairs_now(fleet: Fleet) -> None:
    fleet.write_config(driftCheckInterval="24h")
    assert fleet.once() == 0
    with controller_at(fleet) as controller:
        controller.cycle()
        some_file = next(iter(deployed(fleet)))
        some_file.write_bytes(b"edited by hand\n")
        controller.request(Action.REFRESH, ENV, None, "token:alice", "looks odd")
        controller.cycle()
        assert controller.states[ENV].phase == "OutOfSync"
        assert some_file.read_bytes() == b"edited by hand\n"
        controller.request(Action.SYNC, ENV, None, "token:alice", "repair it")
        started = time.monotonic()
        controller.cycle()
        assert controller.states[ENV].phase == "Synced" and time.monotonic() - started < 60
        assert some_file.read_bytes() != b"edited by hand\n"
    assert [e["action"] for e in fleet.audit() if e["trigger"] == "manual" and e["author"] == "token:alice"] == [
        "refresh",
        "sync",
    ]


def test_phase_transitions_are_recorded_bounded_and_survive_a_restart(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv
    import io
    import json

    from reconciler.cli import main
    from reconciler.engine.publish import MAX_PHASES

    assert fleet.once() == 0
    with controller_at(fleet) as controller:
        controller.cycle()
        controller.request(Action.SUSPEND, ENV, None, "token:alice", "incident")
        controller.cycle()
    with controller_at(fleet) as controller:  # a restart: the history is read back from the status branch
        controller.cycle()
        controller.request(Action.RESUME, ENV, None, "token:alice", "")
        controller.cycle()
    phases = fleet.env_status(ENV)["phases"]
    assert [p["phase"] for p in phases] == ["Synced", "Blocked", "Synced"]
    assert phases[1]["message"].startswith("suspended by token:alice")
    capsys.readouterr()
    assert main(["history", "--config", str(fleet.config), "--phases", "--env", ENV, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["from"], r["phase"]) for r in rows] == [(None, "Synced"), ("Synced", "Blocked"), ("Blocked", "Synced")]
    assert isinstance(rows[1]["seconds"], int) and rows[2]["seconds"] is None
    assert main(["history", "--config", str(fleet.config), "--phases", "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["environment"] for r in table} >= {ENV, "rennes-dev"} and "phase" in table[0]
    assert main(["history", "--config", str(fleet.config), "--phases"]) == 0
    assert "Synced -> Blocked" in capsys.readouterr().out
    # bounded: a flapping environment keeps only its last transitions
    from reconciler.core.plan import Phase
    from reconciler.engine.publish import _phases

    doc: dict[str, object] = {}
    for i in range(3 * MAX_PHASES):
        doc = {"phases": _phases(doc, Phase.DEGRADED if i % 2 else Phase.SYNCED, f"flap {i}")}
    kept = doc["phases"]
    assert isinstance(kept, list) and len(kept) == MAX_PHASES and kept[-1]["message"] == f"flap {3 * MAX_PHASES - 1}"


def test_the_environment_page_shows_the_phase_timeline(fleet: Fleet) -> None:
    from tests.http import served

    with served(fleet) as s:
        s.controller.cycle()
        s.controller.request(Action.SUSPEND, ENV, None, "token:alice", "incident 4711")
        s.controller.cycle()
        page = s.get(f"/environments/{ENV}").text
    timeline = page.split('<table id="timeline"')[1].split("</table>")[0]
    assert timeline.index('data-phase="Blocked"') < timeline.index('data-phase="Synced"')  # newest first
    assert "suspended by token:alice" in timeline and "incident 4711" in timeline
