"""Who may change what (issue 16), end to end with real git and real SSH signatures: on a stage with
``ownerApproval``, a change to an application (its files, its releases, its row in the stage file) by someone outside
its owning Team is Blocked at apply time on every attempt, and a violation of ``reconciler plan`` (exit 1, named in
the markdown), until a member of the owning Team or of ops signs a commit that includes it. Members change their own
applications without a signature; the rule reads each application's own commits, so another team's application in
the same environment keeps going."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli import main
from tests.core.test_teams import team
from tests.engine import NEW_REF_RELEASE as REF_311
from tests.engine import Fleet
from tests.engine.test_four_eyes import allow, commit_as
from tests.engine.test_governance import controller_at, keypair

TEMPLATE = "applications/ref/templates/deployment.yaml"
BOB = "bob@example.org"  # team-famille: an outsider to ref
ALICE = "alice@example.org"  # team-ref (and the default author of the test repos)


def commit_by(fleet: Fleet, author: str, files: dict[str, bytes], message: str, key: Path | None = None) -> str:
    return commit_as(fleet, author, key, files, message)


def read(fleet: Fleet, path: str) -> str:
    return (fleet.upstream.work / path).read_text()


@pytest.fixture
def owned(fleet: Fleet, tmp_path: Path) -> dict[str, Path]:
    """The fleet applied once, then Teams and ``ownerApproval`` on dev, committed and signed by ops."""
    keys = {name: keypair(tmp_path, name, f"{name}@example.org") for name in ("ops", "alice", "bob")}
    fleet.write_config(allowedSigners=str(allow(tmp_path, *((f"{n}@example.org", k) for n, k in keys.items()))))
    assert fleet.once() == 0
    stage = read(fleet, "stages/dev.yaml").replace("spec:\n", "spec:\n  ownerApproval: true\n")
    files = {"teams/ref.yaml": team("team-ref", ALICE), "teams/famille.yaml": team("team-famille", BOB),
             "teams/ops.yaml": team("team-ops", "ops@example.org", ops=True), "stages/dev.yaml": stage.encode()}  # fmt: skip
    commit_by(fleet, "ops@example.org", files, "teams; owners approve outsiders' changes in dev", keys["ops"])
    assert fleet.once() == 0
    return keys


def cycle(fleet: Fleet, trigger: str = "manual") -> None:
    with controller_at(fleet) as controller:
        controller.cycle(trigger)


def test_an_outsiders_change_is_blocked_until_the_owning_team_signs(fleet: Fleet, owned: dict[str, Path]) -> None:
    edit = read(fleet, TEMPLATE) + "# tuned by bob\n"
    bobs = commit_by(fleet, BOB, {TEMPLATE: edit.encode()}, "tune ref")
    for trigger in ("manual", "poll", "webhook"):  # every attempt, not only the first
        cycle(fleet, trigger)
        status = fleet.env_status("lille-dev")
        assert status["phase"] == "Blocked", status
        reason = status["applications"]["ref"]["message"]
        assert reason == (f"commit {bobs[:12]} by {BOB} changes ref, owned by team-ref: it needs a commit signed by "
                          "a member of team-ref or of an ops team")  # fmt: skip
        assert status["applications"]["famille"]["phase"] == "Synced"  # bob's own application is not held
    deployed = next((fleet.targets / "k8s-nord" / "lille-dev" / "ref").rglob("*.yaml")).read_text()
    assert "tuned by bob" not in deployed
    # bob's own signature does not make him an owner of ref
    signed = commit_by(fleet, BOB, {TEMPLATE: (edit + "# again\n").encode()}, "tune ref, signed", owned["bob"])
    cycle(fleet)
    reason = fleet.env_status("lille-dev")["applications"]["ref"]["message"]
    assert f"commit {signed[:12]} by {BOB}, signed by {BOB}, changes ref" in reason
    # alice (team-ref) signs a commit on top of it: she attests ref's content, bob's lines included
    commit_by(fleet, ALICE, {TEMPLATE: (edit + "# reviewed by alice\n").encode()}, "review", owned["alice"])
    cycle(fleet)
    status = fleet.env_status("lille-dev")
    assert status["phase"] == "Synced", status
    deployed = next((fleet.targets / "k8s-nord" / "lille-dev" / "ref").rglob("*.yaml")).read_text()
    assert "tuned by bob" in deployed and "reviewed by alice" in deployed


def test_members_change_their_application_unsigned_and_stage_rows_are_owned_too(
    fleet: Fleet, owned: dict[str, Path]
) -> None:
    stage = read(fleet, "stages/dev.yaml")
    commit_by(fleet, ALICE, {"releases/ref/3.11.yaml": REF_311,
                             "stages/dev.yaml": stage.replace("ref: 3.10", "ref: 3.11").encode()}, "ref 3.11")  # fmt: skip
    cycle(fleet)
    status = fleet.env_status("lille-dev")
    assert status["phase"] == "Synced" and status["applications"]["ref"]["live"] == "3.11"
    back = read(fleet, "stages/dev.yaml").replace("ref: 3.11", "ref: 3.10")
    row = commit_by(fleet, BOB, {"stages/dev.yaml": back.encode()}, "ref back to 3.10")  # bob edits ref's row
    cycle(fleet)
    status = fleet.env_status("lille-dev")
    assert status["applications"]["ref"]["phase"] == "Blocked" and status["applications"]["ref"]["live"] == "3.11"
    assert f"commit {row[:12]} by {BOB} changes ref" in status["applications"]["ref"]["message"]
    # ops signs a commit that changes ref's row again: that attests it
    comment = read(fleet, "stages/dev.yaml").replace("ref: 3.10", "ref: 3.10 # fine by ops")
    commit_by(fleet, "ops@example.org", {"stages/dev.yaml": comment.encode()}, "a comment (ops)", owned["ops"])
    cycle(fleet)  # a signed commit that does not change ref's row attests nothing about it
    assert fleet.env_status("lille-dev")["applications"]["ref"]["phase"] == "Blocked"
    again = read(fleet, "stages/dev.yaml").replace("ref: 3.10 # fine by ops", "ref: 3.11")
    commit_by(fleet, "ops@example.org", {"stages/dev.yaml": again.encode()}, "ref 3.11 (ops)", owned["ops"])
    cycle(fleet)
    status = fleet.env_status("lille-dev")
    assert status["phase"] == "Synced" and status["applications"]["ref"]["live"] == "3.11", status


def test_plan_names_an_outsiders_change_as_a_violation(
    fleet: Fleet, owned: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bobs = commit_by(fleet, BOB, {TEMPLATE: (read(fleet, TEMPLATE) + "# tuned by bob\n").encode()}, "tune ref")
    capsys.readouterr()
    args = ["plan", "--repo", str(fleet.upstream.work), "--base", "HEAD~1", "--head", "HEAD"]
    code = main([*args, "--format", "markdown", "--config", str(fleet.config)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"commit {bobs[:12]} by {BOB} changes ref, owned by team-ref" in out and "lille-dev" in out, out
    # a member's change is no violation
    commit_by(fleet, ALICE, {TEMPLATE: (read(fleet, TEMPLATE) + "# alice\n").encode()}, "alice tunes ref")
    assert main([*args, "--config", str(fleet.config)]) == 0, capsys.readouterr().out
