"""Governance end to end on real Git repositories: promotion and soak, signed protected stages (ssh-keygen keys,
git's own verification), freeze windows with overrides, waves, cross-application requirements, audit export."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.commands.common import load_config
from reconciler.commands.run import build_controller
from reconciler.engine.controller import Controller
from tests.engine import NEW_REF_RELEASE as REF_311
from tests.engine import Fleet
from tests.source import git

HOUR = 3600.0


@contextmanager
def controller_at(fleet: Fleet, offset: float = 0.0) -> Iterator[Controller]:
    """An in-process controller whose clock runs ``offset`` seconds ahead of the real one."""
    controller = build_controller(load_config(str(fleet.config)))
    controller.clock = lambda: time.time() + offset
    controller.restore()
    try:
        yield controller
    finally:
        controller.close()


def plan(fleet: Fleet, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    git("fetch", "-q", "origin", "reconciler-status:refs/remotes/origin/reconciler-status", cwd=fleet.upstream.work)
    code = main(["plan", "--repo", str(fleet.upstream.work), "--base", "HEAD~1", "--head", "HEAD", *extra])
    return code, capsys.readouterr().out


def keypair(directory: Path, name: str, email: str) -> Path:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", email, "-f", str(key)], check=True)
    return key


def signed_commit(fleet: Fleet, key: Path, files: dict[str, bytes], message: str) -> str:
    for path, data in files.items():
        (fleet.upstream.work / path).write_bytes(data)
    git("add", "-A", cwd=fleet.upstream.work)
    git("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-q", "-S", "-m", message,
        cwd=fleet.upstream.work)  # fmt: skip
    fleet.upstream.push()
    return fleet.upstream.head()


def prod_stage(fleet: Fleet) -> str:
    return (fleet.upstream.work / "stages/production.yaml").read_text()


def test_promotion_needs_soak_in_the_previous_stage(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet.once() == 0  # first installs are not promotions
    fleet.commit({"releases/ref/3.11.yaml": REF_311}, "release ref 3.11")
    fleet.edit("stages/production.yaml", "ref: 3.0", "ref: 3.11", "ref 3.11 straight to production")
    code, out = plan(fleet, capsys)
    assert code == 1 and "ref 3.11 has not run in dev yet" in out
    with controller_at(fleet) as controller:
        controller.cycle()
    assert fleet.env_status("shared-production")["phase"] == "Blocked"
    assert "has not run in dev yet" in fleet.env_status("shared-production")["message"]
    # now through dev: applied there, then it soaks 24h
    fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.11", "ref 3.11 to dev")
    with controller_at(fleet) as controller:
        controller.cycle()  # dev applies 3.11 ...
        controller.cycle("manual")  # ... and production, asked again, now waits for the soak
        assert fleet.env_status("lille-dev")["applications"]["ref"]["live"] == "3.11"
        assert "soaks in dev until" in fleet.env_status("shared-production")["message"]
    with controller_at(fleet, offset=25 * HOUR) as controller:
        controller.cycle("manual")
    status = fleet.env_status("shared-production")
    assert status["phase"] == "Synced" and status["applications"]["ref"]["live"] == "3.11"
    code, out = plan(
        fleet, capsys, "--now", time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 25 * HOUR))
    )
    assert code == 0, out  # HEAD~1..HEAD is the dev change now: no violation


def test_protected_stage_applies_only_changes_signed_by_an_allowed_key(fleet: Fleet, tmp_path: Path) -> None:
    ops = protect_production(fleet, tmp_path)
    rogue = keypair(tmp_path, "rogue", "rogue@example.org")
    assert fleet.once() == 0  # a signed change: applied
    fleet.commit({"releases/ref/3.11.yaml": REF_311}, "release ref 3.11")
    fleet.edit("stages/production.yaml", "ref: 3.0", "ref: 3.11", "unsigned change to production")
    fleet.once()
    status = fleet.env_status("shared-production")
    assert status["phase"] == "Blocked" and "is not signed by an allowed signer (unsigned)" in status["message"]
    fleet.edit("stages/production.yaml", "ref: 3.11", "ref: 3.10", "again")  # still unsigned
    signed_commit(fleet, rogue, {"README.md": b"rogue\n"}, "signed by a key that is not allowed")
    fleet.once()
    assert fleet.env_status("shared-production")["applications"]["ref"]["live"] == "3.0"
    # the change itself must be signed: re-commit it signed by ops
    text = prod_stage(fleet).replace("ref: 3.10", "ref: 3.11")
    head = signed_commit(fleet, ops, {"stages/production.yaml": text.encode()}, "signed promotion")
    assert fleet.once() == 0
    status = fleet.env_status("shared-production")
    assert status["phase"] == "Synced" and status["applications"]["ref"]["live"] == "3.11"
    entries = [e for e in fleet.audit() if e["environment"] == "shared-production" and e["to"] == "3.11"]
    assert entries and entries[-1]["revision"] == head


def test_freeze_holds_changes_until_it_ends_and_an_override_is_audited(fleet: Fleet, tmp_path: Path) -> None:
    start = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - HOUR))
    end = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 2 * HOUR))
    freeze = f"""apiVersion: reconciler.io/v1
kind: FreezeWindow
metadata:
  name: release-night
spec:
  reason: Release night
  scope: {{stages: [dev]}}
  absolute:
    - {{start: "{start}", end: "{end}"}}
"""
    assert fleet.once() == 0
    fleet.commit({"releases/ref/3.11.yaml": REF_311, "freezes/night.yaml": freeze.encode()}, "freeze dev")
    fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.11", "change during the freeze")
    assert fleet.once() == 0  # Blocked by a policy counts as done for --once
    status = fleet.env_status("lille-dev")
    assert status["phase"] == "Blocked" and "frozen until" in status["message"] and "release-night" in status["message"]
    assert status["applications"]["ref"]["live"] == "3.10"
    with controller_at(fleet, offset=3 * HOUR) as controller:  # after the window
        controller.cycle("manual")
    assert fleet.env_status("lille-dev")["applications"]["ref"]["live"] == "3.11"
    # an override in a commit signed by an allowed key applies during the freeze, and is audited
    ops = keypair(tmp_path, "ops", "ops@example.org")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(
        f'ops@example.org namespaces="git" {" ".join(ops.with_suffix(".pub").read_text().split()[:2])}\n'
    )
    fleet.write_config(allowedSigners=str(allowed))
    text = (fleet.upstream.work / "stages/dev.yaml").read_text().replace("ref: 3.11", "ref: 3.10")
    signed_commit(fleet, ops, {"stages/dev.yaml": text.encode()},
                  "rollback during the freeze\n\nFreeze-Override: incident INC-42, rollback approved by ops")  # fmt: skip
    fleet.once()
    assert fleet.env_status("rennes-dev")["applications"]["ref"]["live"] == "3.10"
    overridden = [e for e in fleet.audit() if e.get("override")]
    assert overridden and overridden[-1]["override"] == "freeze: incident INC-42, rollback approved by ops"


def test_a_wave_failure_stops_later_waves_and_other_stages_continue(fleet: Fleet) -> None:
    stage = (fleet.upstream.work / "stages/dev.yaml").read_text()
    stage += "  waves:\n    - name: pilot\n      selector: {branch: [lille]}\n    - name: rest\n"
    fleet.commit({"stages/dev.yaml": stage.encode()}, "waves in dev")
    failing = fleet.root / "failing-agent"
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    fleet.write_config(targetPatterns=[
        {"match": "aix-lille", "driver": "script", "command": [str(failing)]},
        {"match": "*", "driver": "local", "path": str(fleet.targets / "${target}")},
    ])  # fmt: skip
    fleet.once()
    assert fleet.env_status("lille-dev")["phase"] == "Failed"
    rennes = fleet.env_status("rennes-dev")
    assert rennes["phase"] == "Blocked" and "rollout stopped: wave pilot has failures (lille-dev)" in rennes["message"]
    assert not (fleet.targets / "k8s-ouest" / "rennes-dev").exists()  # nothing of the later wave was applied
    assert fleet.env_status("rennes-production")["phase"] == "Synced"  # another stage goes on


def test_a_release_waits_until_what_it_requires_is_live(fleet: Fleet) -> None:
    failing = fleet.root / "failing-apply"  # observes fine, cannot apply
    failing.write_text(
        '#!/bin/sh\ncase "$1" in observe) echo "{}";; list) echo \'{"applications": []}\';; *) exit 1;; esac\n'
    )
    failing.chmod(0o755)
    fleet.write_config(targetPatterns=[
        {"match": "k8s-nord", "driver": "script", "command": [str(failing)]},
        {"match": "*", "driver": "local", "path": str(fleet.targets / "${target}")},
    ])  # fmt: skip
    fleet.once()
    status = fleet.env_status("lille-dev")  # ref (k8s-nord) fails, famille requires ref >= 3.2
    assert status["applications"]["famille"]["phase"] == "Blocked"
    assert (
        "blocked because famille 2.4.0 requires ref >=3.2 and it is not live here"
        in status["applications"]["famille"]["message"]
    )
    assert fleet.env_status("rennes-dev")["applications"]["famille"]["live"] == "2.4.0"


def test_history_exports_what_changed_in_production_and_who_approved_it(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet.once() == 0
    capsys.readouterr()
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 31 * 86400))
    assert main(["history", "--config", str(fleet.config), "--stage", "production", "--since", since,
                 "--format", "csv"]) == 0  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows and {r["environment"] for r in rows} == {"lille-production", "rennes-production", "shared-production"}
    assert all(
        r["author"] == "Alice Dev <alice@example.org>" and r["committer"] == "Bob Ops <bob@example.org>" for r in rows
    )
    assert {"signer", "revision", "from", "to", "result", "start", "end"} <= set(rows[0])
    assert main(["history", "--config", str(fleet.config), "--stage", "production", "--format", "json"]) == 0
    assert all(e["stage"] == "production" for e in json.loads(capsys.readouterr().out))


def protect_production(fleet: Fleet, tmp_path: Path) -> Path:
    """Production protected, its soak and promotion gate off; ops' key allowed. Returns ops' key."""
    ops = keypair(tmp_path, "ops", "ops@example.org")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(
        f'ops@example.org namespaces="git" {" ".join(ops.with_suffix(".pub").read_text().split()[:2])}\n'
    )
    fleet.write_config(allowedSigners=str(allowed))
    text = prod_stage(fleet).replace("soak: 24h", "soak: 24h\n  protected: true").replace("  promotesFrom: dev\n", "")
    signed_commit(fleet, ops, {"stages/production.yaml": text.encode()}, "protect production")
    return ops


@pytest.mark.parametrize("attempt", ["retry", "restart", "manual", "webhook", "drift-check"])
def test_an_unsigned_change_stays_blocked_on_every_later_attempt(fleet: Fleet, tmp_path: Path, attempt: str) -> None:
    """Finding 1 of the invariants issue: the signature was checked only when the inputs changed, so the retry
    after the backoff applied the unsigned change. The verdict is now computed for every attempt."""
    protect_production(fleet, tmp_path)
    assert fleet.once() == 0
    deployed = fleet.targets / "k8s-ouest" / "shared-production"
    before = {p: p.read_bytes() for p in deployed.rglob("*") if p.is_file()}
    fleet.commit({"releases/ref/3.11.yaml": REF_311}, "release ref 3.11")
    fleet.edit("stages/production.yaml", "ref: 3.0", "ref: 3.11", "unsigned change to production")
    offset = 0.0
    with controller_at(fleet) as controller:
        controller.cycle()
        assert controller.states["shared-production"].phase == "Blocked"
    for _ in range(3):
        offset += HOUR  # far past any backoff
        if attempt == "restart":
            with controller_at(fleet, offset) as controller:
                controller.cycle()
            continue
        with controller_at(fleet, offset) as controller:
            controller.cycle()
            for _ in range(2):
                controller.clock = lambda o=offset: time.time() + o + HOUR
                if attempt == "drift-check":
                    controller.last_drift_check = None
                controller.cycle({"retry": "poll", "manual": "manual", "webhook": "webhook"}.get(attempt, "poll"))
    status = fleet.env_status("shared-production")
    assert status["phase"] == "Blocked" and "not signed by an allowed signer (unsigned)" in status["message"]
    assert {p: p.read_bytes() for p in deployed.rglob("*") if p.is_file()} == before
    assert not [e for e in fleet.audit() if e["environment"] == "shared-production" and e["to"] == "3.11"]


def test_a_change_both_unsigned_and_not_soaked_reports_both_holds(fleet: Fleet, tmp_path: Path) -> None:
    ops = protect_production(fleet, tmp_path)
    text = prod_stage(fleet).replace("soak: 24h", "soak: 24h\n  promotesFrom: dev")
    signed_commit(fleet, ops, {"stages/production.yaml": text.encode()}, "production promotes from dev again")
    assert fleet.once() == 0
    fleet.commit({"releases/ref/3.11.yaml": REF_311}, "release ref 3.11")
    fleet.edit("stages/production.yaml", "ref: 3.0", "ref: 3.11", "unsigned, not soaked")
    with controller_at(fleet) as controller:
        controller.cycle()
    message = fleet.env_status("shared-production")["applications"]["ref"]["message"]
    assert "has not run in dev yet" in message and "not signed by an allowed signer" in message


def signed_override(fleet: Fleet, tmp_path: Path) -> None:
    """Production protected and promoting from dev; ref 3.11 straight to production in a commit signed by ops with
    a Promotion-Override trailer, applied."""
    ops = protect_production(fleet, tmp_path)
    text = prod_stage(fleet).replace("soak: 24h", "soak: 24h\n  promotesFrom: dev")
    signed_commit(fleet, ops, {"stages/production.yaml": text.encode()}, "production promotes from dev again")
    assert fleet.once() == 0
    text = prod_stage(fleet).replace("ref: 3.0", "ref: 3.11")
    signed_commit(fleet, ops, {"releases/ref/3.11.yaml": REF_311, "stages/production.yaml": text.encode()},
                  "hotfix\n\nPromotion-Override: incident 4711")  # fmt: skip
    assert fleet.once() == 0


def test_a_signed_promotion_override_is_audited_with_its_signer(fleet: Fleet, tmp_path: Path) -> None:
    """Finding 1b: a signed commit with a Promotion-Override trailer was audited with signer and override null."""
    signed_override(fleet, tmp_path)
    entries = [e for e in fleet.audit() if e["environment"] == "shared-production" and e["to"] == "3.11"]
    assert entries and all(e["signer"] == "ops@example.org" for e in entries)
    assert all(e["override"] == "promotion: incident 4711" for e in entries)


def test_the_promotion_gate_holds_after_an_environment_was_invalid(fleet: Fleet) -> None:
    """Finding 1b: while an environment was Invalid its status showed every live version as unknown, and the next
    valid commit was applied as if it were a first install, skipping the promotion gate. Live versions now come
    from the drivers' observation, whatever the status says."""
    assert fleet.once() == 0
    template = "applications/ref/templates/deployment.yaml"
    fleet.edit(template, "${release.version}", "${params.nowhere}", "break the template")
    fleet.once()
    invalid = fleet.env_status("shared-production")
    assert invalid["phase"] == "Invalid" and invalid["applications"]["ref"]["live"] == "3.0"  # still runs
    fleet.commit({"releases/ref/3.11.yaml": REF_311}, "release ref 3.11")
    fleet.edit(template, "${params.nowhere}", "${release.version}", "fix the template")
    fleet.edit("stages/production.yaml", "ref: 3.0", "ref: 3.11", "ref 3.11 straight to production")
    with controller_at(fleet) as controller:
        controller.cycle()
    status = fleet.env_status("shared-production")
    assert status["phase"] == "Blocked" and "ref 3.11 has not run in dev yet" in status["message"]
    assert status["applications"]["ref"]["live"] == "3.0"


def test_the_csv_export_has_every_column_of_the_json(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: the CSV export had no ``override`` column (the JSON has it), nor ``id`` or ``replica``."""
    signed_override(fleet, tmp_path)
    capsys.readouterr()
    assert main(["history", "--config", str(fleet.config), "--format", "json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert main(["history", "--config", str(fleet.config), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(entries) and set().union(*(e.keys() for e in entries)) <= set(rows[0])
    for entry, row in zip(entries, rows, strict=True):
        assert {k: "" if v is None else str(v) for k, v in entry.items()} == {k: row[k] for k in entry}
    assert any(r["override"] == "promotion: incident 4711" and r["signer"] == "ops@example.org" for r in rows)


def test_audit_entry_fields_name_every_key_of_its_dict() -> None:
    from reconciler.core.audit import AuditEntry

    entry = AuditEntry(*(None for _ in AuditEntry.__dataclass_fields__))  # type: ignore[arg-type]
    assert tuple(entry.as_dict()) == AuditEntry.FIELDS
