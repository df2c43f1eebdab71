"""Separation of duties on a protected stage, end to end (real git, real SSH signatures): with Teams declared, a
signed change needs a signer among the stage's approvers who is not the change's only author (four-eyes). An
author signing their own production change is Blocked with the reason, on every later attempt; a second
approver's signature applies it."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli import main
from tests.core.test_teams import team
from tests.engine import NEW_REF_RELEASE as REF_311
from tests.engine import Fleet
from tests.engine.test_governance import HOUR, controller_at, keypair, prod_stage, protect_production
from tests.source import git


def allow(tmp_path: Path, *keys: tuple[str, Path]) -> Path:
    allowed = tmp_path / "allowed_signers"
    lines = [f'{email} namespaces="git" {" ".join(key.with_suffix(".pub").read_text().split()[:2])}\n'
             for email, key in keys]  # fmt: skip
    allowed.write_text("".join(lines))
    return allowed


def commit_as(fleet: Fleet, author: str, key: Path | None, files: dict[str, bytes], message: str) -> str:
    """A commit authored (and committed) by ``author``, signed with ``key`` (None: unsigned), pushed."""
    for path, data in files.items():
        (fleet.upstream.work / path).parent.mkdir(parents=True, exist_ok=True)
        (fleet.upstream.work / path).write_bytes(data)
    who = {"GIT_AUTHOR_EMAIL": author, "GIT_COMMITTER_EMAIL": author, "GIT_AUTHOR_NAME": author,
           "GIT_COMMITTER_NAME": author}  # fmt: skip
    git("add", "-A", cwd=fleet.upstream.work, env=who)
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-S"] if key else ["commit"]
    git(*sign, "-q", "-m", message, cwd=fleet.upstream.work, env=who)
    fleet.upstream.push()
    return fleet.upstream.head()


def teams(*ops_members: str) -> dict[str, bytes]:
    return {
        "teams/ref.yaml": team("team-ref", "alice@example.org"),
        "teams/famille.yaml": team("team-famille", "alice@example.org"),
        "teams/ops.yaml": team("team-ops", *ops_members, ops=True),
    }


def test_an_approver_signing_their_own_production_change_is_blocked_until_a_second_signs(
    fleet: Fleet, tmp_path: Path
) -> None:
    ops = protect_production(fleet, tmp_path)
    olga = keypair(tmp_path, "olga", "olga@example.org")
    outsider = keypair(tmp_path, "outsider", "outsider@example.org")
    fleet.write_config(allowedSigners=str(allow(tmp_path, ("ops@example.org", ops), ("olga@example.org", olga),
                                                ("outsider@example.org", outsider))))  # fmt: skip
    commit_as(fleet, "alice@example.org", ops, teams("ops@example.org", "olga@example.org"), "teams")
    assert fleet.once() == 0
    # ops writes and signs their own production change: four-eyes holds it, on every later attempt too
    text = prod_stage(fleet).replace("ref: 3.0", "ref: 3.11")
    own = commit_as(fleet, "ops@example.org", ops, {"releases/ref/3.11.yaml": REF_311,
                                                    "stages/production.yaml": text.encode()}, "ref 3.11")  # fmt: skip
    for offset in (0.0, HOUR, 2 * HOUR):
        with controller_at(fleet, offset) as controller:
            controller.cycle("manual")
    status = fleet.env_status("shared-production")
    assert status["phase"] == "Blocked"
    assert (
        f"commit {own[:12]} is signed by its only author ops@example.org: another approver must sign it"
        in (status["message"])
    )
    assert not [e for e in fleet.audit() if e["environment"] == "shared-production" and e["to"] == "3.11"]
    # an allowed key whose owner is not an approver of the stage does not approve it either
    text = prod_stage(fleet).replace("ref: 3.11", "ref: 3.10")
    other = commit_as(fleet, "alice@example.org", outsider, {"stages/production.yaml": text.encode()}, "ref 3.10")
    with controller_at(fleet, 3 * HOUR) as controller:
        controller.cycle("manual")
    status = fleet.env_status("shared-production")
    assert (
        f"commit {other[:12]} is signed by outsider@example.org, who is not an approver of stage production"
        in (status["message"])
    )
    # alice writes it, olga (a second approver) signs it: applied, and audited with olga as the signer
    text = prod_stage(fleet).replace("ref: 3.10", "ref: 3.11")
    commit_as(fleet, "alice@example.org", olga, {"stages/production.yaml": text.encode()}, "ref 3.11, reviewed")
    with controller_at(fleet, 4 * HOUR) as controller:
        controller.cycle("manual")
    status = fleet.env_status("shared-production")
    assert status["phase"] == "Synced" and status["applications"]["ref"]["live"] == "3.11"
    entries = [e for e in fleet.audit() if e["environment"] == "shared-production" and e["to"] == "3.11"]
    assert entries and all(e["signer"] == "olga@example.org" and e["signerTeam"] == "team-ops" for e in entries)


def test_without_teams_any_allowed_signer_approves_as_before(fleet: Fleet, tmp_path: Path) -> None:
    ops = protect_production(fleet, tmp_path)
    assert fleet.once() == 0
    text = prod_stage(fleet).replace("ref: 3.0", "ref: 3.11")
    commit_as(fleet, "ops@example.org", ops, {"releases/ref/3.11.yaml": REF_311,
                                              "stages/production.yaml": text.encode()}, "ref 3.11")  # fmt: skip
    assert fleet.once() == 0
    assert fleet.env_status("shared-production")["applications"]["ref"]["live"] == "3.11"


def test_plan_judges_four_eyes_on_the_pull_request(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16 at PR time: ``plan`` judges a signed head like the controller will (exit 1 when its signer is its
    only author), and for an unsigned branch says who may sign the merge."""
    ops = protect_production(fleet, tmp_path)
    olga = keypair(tmp_path, "olga", "olga@example.org")
    fleet.write_config(allowedSigners=str(allow(tmp_path, ("ops@example.org", ops), ("olga@example.org", olga))))
    commit_as(fleet, "alice@example.org", ops, teams("ops@example.org", "olga@example.org"), "teams")
    args = ["plan", "--repo", str(fleet.upstream.work), "--base", "HEAD~1", "--head", "HEAD", "--config",
            str(fleet.config), "--format", "markdown"]  # fmt: skip

    def plan() -> tuple[int, str]:
        capsys.readouterr()
        code = main(args)
        return code, capsys.readouterr().out

    text = prod_stage(fleet).replace("ref: 3.0", "ref: 3.11")
    change = {"releases/ref/3.11.yaml": REF_311, "stages/production.yaml": text.encode()}

    def branch_commit(author: str, key: Path | None) -> str:  # on the pull request's branch: not pushed
        for path, data in change.items():
            (fleet.upstream.work / path).write_bytes(data)
        who = {"GIT_AUTHOR_EMAIL": author, "GIT_COMMITTER_EMAIL": author}
        git("add", "-A", cwd=fleet.upstream.work, env=who)
        sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-S"] if key else ["commit"]
        git(*sign, "-q", "-m", "ref 3.11", cwd=fleet.upstream.work, env=who)
        return git("rev-parse", "HEAD", cwd=fleet.upstream.work)

    own = branch_commit("ops@example.org", ops)
    code, out = plan()
    assert code == 1 and f"commit {own[:12]} is signed by its only author ops@example.org" in out, out
    git("reset", "-q", "--hard", "HEAD~1", cwd=fleet.upstream.work)
    branch_commit("alice@example.org", None)
    code, out = plan()
    assert code == 0, out
    assert ("production is protected: the merge must be signed by an approver other than the author "
            "(alice@example.org): olga@example.org, ops@example.org") in out  # fmt: skip
    git("reset", "-q", "--hard", "HEAD~1", cwd=fleet.upstream.work)
    branch_commit("alice@example.org", olga)
    code, out = plan()
    assert code == 0 and "production: signed by olga@example.org, an approver who is not the only author" in out
