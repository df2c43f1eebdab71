"""`reconciler rollback` end to end (real git, a real controller): the operator's commit pins one generated
environment's application to the version it ran before (from the audit trail), `validate` accepts it, the
controller applies it and audits it as `rollback` with the operator as author; the other environments of the set
keep their version. With --branch it is left on a branch for a pull request; a protected stage needs a signature."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli import main
from tests.engine import NEW_REF_RELEASE as REF_311
from tests.engine import Fleet
from tests.source import git

OLGA = {"GIT_AUTHOR_NAME": "Olga Ops", "GIT_AUTHOR_EMAIL": "olga@example.org",
        "GIT_COMMITTER_NAME": "Olga Ops", "GIT_COMMITTER_EMAIL": "olga@example.org"}  # fmt: skip


def operators_clone(fleet: Fleet, tmp_path: Path) -> Path:
    clone = tmp_path / "olga-releases"
    git("clone", "-q", str(fleet.upstream.bare), str(clone), cwd=tmp_path)
    git("config", "user.name", "Olga Ops", cwd=clone)
    git("config", "user.email", "olga@example.org", cwd=clone)
    return clone


def ref_311_in_dev(fleet: Fleet) -> None:
    assert fleet.once() == 0
    fleet.commit({"releases/ref/3.11.yaml": REF_311}, "release ref 3.11")
    fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.11", "ref 3.11 to dev")
    assert fleet.once() == 0
    assert fleet.env_status("lille-dev")["applications"]["ref"]["live"] == "3.11"


def test_rolling_back_one_generated_environment(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ref_311_in_dev(fleet)
    clone = operators_clone(fleet, tmp_path)
    for name, value in OLGA.items():
        monkeypatch.setenv(name, value)
    assert main(["rollback", "--env", "lille-dev", "--app", "ref", "--repo", str(clone),
                 "--reason", "3.11 breaks lille's batch"]) == 0  # fmt: skip
    assert "rollback ref 3.11 -> 3.10 in lille-dev: commit" in capsys.readouterr().out
    assert main(["validate", str(clone)]) == 0
    text = (clone / "environments" / "branches.yaml").read_text()
    assert 'overrides:\n    lille-dev:\n      pins: {ref: "3.10"}' in text
    assert git("log", "-1", "--format=%an <%ae>", cwd=clone) == "Olga Ops <olga@example.org>"
    assert fleet.once() == 0
    assert fleet.env_status("lille-dev")["applications"]["ref"]["live"] == "3.10"
    assert fleet.env_status("rennes-dev")["applications"]["ref"]["live"] == "3.11"  # the rest of the set
    entries = [e for e in fleet.audit() if e["environment"] == "lille-dev" and e["application"] == "ref"]
    assert entries[-1]["action"] == "rollback" and entries[-1]["to"] == "3.10" and entries[-1]["from"] == "3.11"
    assert entries[-1]["author"] == "Olga Ops <olga@example.org>"
    assert fleet.env_status("lille-dev")["pins"] == {"ref": "3.10"} and "pins" not in fleet.env_status("rennes-dev")
    capsys.readouterr()
    assert main(["status", "--config", str(fleet.config), "--env", "lille-dev"]) == 0
    shown = capsys.readouterr().out
    assert "pinned: ref 3.10 (not its stage's version)" in shown and "3.10 (pinned)" in shown
    # removable by an ordinary commit: the set's environment follows its stage again
    git("fetch", "-q", cwd=clone)
    edited = (clone / "environments" / "branches.yaml").read_text().split("\n  overrides:\n")[0] + "\n"
    (clone / "environments" / "branches.yaml").write_text(edited)
    git("commit", "-qam", "lift the pin", cwd=clone)
    git("push", "-q", "origin", "HEAD", cwd=clone)
    assert fleet.once() == 0
    assert fleet.env_status("lille-dev")["applications"]["ref"]["live"] == "3.11"


def test_rollback_on_a_branch_leaves_the_tracked_branch_alone(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref_311_in_dev(fleet)
    clone = operators_clone(fleet, tmp_path)
    head = git("rev-parse", "HEAD", cwd=clone)
    assert main(["rollback", "--env", "lille-dev", "--app", "ref", "--to", "3.10", "--repo", str(clone),
                 "--branch", "rollback-ref-lille"]) == 0  # fmt: skip
    assert "pushed to branch rollback-ref-lille" in capsys.readouterr().out
    assert git("rev-parse", "main", cwd=fleet.upstream.bare) == head
    assert git("rev-parse", "rollback-ref-lille", cwd=fleet.upstream.bare) != head


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--env", "nowhere", "--app", "ref"], "unknown environment 'nowhere'"),
        (["--env", "lille-dev", "--app", "nope"], "'nope' is not deployed in lille-dev"),
        (["--env", "lille-dev", "--app", "ref", "--to", "9.9"], "no release 9.9 of ref"),
        (["--env", "lille-dev", "--app", "ref", "--to", "3.11"], "ref 3.11 is already what lille-dev wants"),
        (
            ["--env", "lille-production", "--app", "ref", "--to", "3.10"],
            "production is protected: the commit must be signed, and git has no user.signingkey",
        ),
    ],
    ids=["unknown-env", "unknown-app", "unknown-version", "same-version", "protected-unsigned"],
)
def test_refused_rollbacks_commit_nothing(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    ref_311_in_dev(fleet)
    text = (fleet.upstream.work / "stages" / "production.yaml").read_text()
    fleet.edit("stages/production.yaml", "soak: 24h", "soak: 24h\n  protected: true", "protect production")
    assert "protected" not in text
    clone = operators_clone(fleet, tmp_path)
    head = git("rev-parse", "HEAD", cwd=clone)
    assert main(["rollback", *argv, "--repo", str(clone)]) == 1
    assert error in capsys.readouterr().err
    assert git("rev-parse", "HEAD", cwd=clone) == head and git("status", "--porcelain", cwd=clone) == ""


def test_a_dirty_clone_or_no_audit_trail_is_refused(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref_311_in_dev(fleet)
    clone = operators_clone(fleet, tmp_path)
    (clone / "README.md").write_text("local edit\n")
    assert main(["rollback", "--env", "lille-dev", "--app", "ref", "--repo", str(clone)]) == 1
    assert "has uncommitted changes" in capsys.readouterr().err
    git("checkout", "--", ".", cwd=clone)
    git("clean", "-fdq", cwd=clone)
    git("update-ref", "-d", "refs/remotes/origin/reconciler-status", cwd=clone)
    assert main(["rollback", "--env", "lille-dev", "--app", "ref", "--repo", str(clone)]) == 1
    assert "no status branch in this clone" in capsys.readouterr().err
