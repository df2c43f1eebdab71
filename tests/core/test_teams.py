"""Teams in the releases repo: ``Application.owner`` names a Team once Teams are declared, and ``reconciler
codeowners`` derives CODEOWNERS from them (GitHub and GitLab syntax), checked against the example fleet; ``validate``
warns when a committed CODEOWNERS is stale."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from reconciler.core.codeowners import Syntax, codeowners, ownership
from reconciler.core.loader import load_repo
from reconciler.core.tree import MemoryTree
from reconciler.source.fstree import DirectoryTree
from tests.minirepo import _d, minimal_repo, write_repo

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "releases-repo"


def team(name: str, *emails: str, ops: bool = False, handle: str | None = None) -> bytes:
    members = "".join(f"    - email: {e}\n" for e in emails)
    extra = ("  ops: true\n" if ops else "") + (f'  codeowners: ["{handle}"]\n' if handle else "")
    return (
        _d(f"""
        apiVersion: reconciler.io/v1
        kind: Team
        metadata:
          name: {name}
        spec:
        """)
        + (extra + "  members:\n" + members).encode()
    )


def with_teams() -> dict[str, bytes]:
    return {
        **minimal_repo(),
        "teams/ref.yaml": team("team-ref", "ana@example.org", handle="@org/ref"),
        "teams/famille.yaml": team("team-famille", "bob@example.org", "carl@example.org"),
        "teams/ops.yaml": team("team-ops", "ops@example.org", ops=True),
    }


def problems(files: dict[str, bytes]) -> list[str]:
    return [str(p) for p in load_repo(MemoryTree(files)).all_problems()]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", *argv], capture_output=True, text=True, timeout=120)


def test_owners_must_name_a_declared_team_once_teams_exist() -> None:
    assert problems(minimal_repo()) == []  # no Team at all: owners stay free text (validate warns)
    files = with_teams()
    assert problems(files) == []
    del files["teams/famille.yaml"]
    assert problems(files) == [
        "applications/famille/application.yaml:1: owner 'team-famille' is not a declared Team "
        "(teams: team-ops, team-ref)"
    ]


def test_bad_teams_are_named_with_file_and_line() -> None:
    files = with_teams()
    files["teams/ref.yaml"] = team("team-ref", "ana@example.org", "ANA@example.org")
    files["teams/dup.yaml"] = team("team-ops", "x@example.org")
    files["teams/bad.yaml"] = team("team-bad", "not-an-address")
    found = problems(files)
    assert "teams/ref.yaml:8: ANA@example.org is listed twice" in found
    assert "teams/ops.yaml:4: duplicate Team 'team-ops' (first declared at teams/dup.yaml:1)" in found
    assert any(p.startswith("teams/bad.yaml:7: spec.members[0].email: 'not-an-address'") for p in found)


def test_codeowners_of_the_example_fleet_gives_every_application_to_its_team() -> None:
    repo = load_repo(DirectoryTree.scan(EXAMPLE)).repo
    assert repo is not None and len(repo.teams) == 13
    table = ownership(repo)
    assert table["*"] == ["team-ops"]
    for app in repo.applications.values():
        assert table[str(Path(app.origin.path).parent) + "/"] == [app.owner], app.name
    for rel in repo.releases.values():
        owner = repo.applications[rel.application].owner
        assert table.get(str(Path(rel.origin.path).parent) + "/") == [owner] or table.get(rel.origin.path) == [owner]
    for stage in repo.stages.values():
        owners = table[stage.origin.path]
        assert owners == ["team-ops"] if stage.protected else "team-ops" in owners and len(owners) > 2
    text = codeowners(repo)
    assert "/applications/action-sociale/ @caisse-nationale/team-famille\n" in text
    assert "/stages/production.yaml @caisse-nationale/team-ops\n" in text
    gitlab = codeowners(repo, Syntax.GITLAB)
    assert "\n[team-famille] @caisse-nationale/team-famille\n/applications/action-sociale/\n" in gitlab
    # the committed file is fresh: the CLI's --check agrees
    assert (EXAMPLE / ".github" / "CODEOWNERS").read_text() == text
    assert run("codeowners", str(EXAMPLE), "--check").returncode == 0


def test_members_stand_in_for_a_team_without_forge_handles() -> None:
    repo = load_repo(MemoryTree(with_teams())).repo
    assert repo is not None
    text = codeowners(repo)
    assert "/applications/famille/ bob@example.org carl@example.org\n" in text
    assert "/applications/ref/ @org/ref\n" in text
    assert "/releases/ref/ @org/ref\n" in text


def test_stale_or_missing_codeowners_is_reported(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo", with_teams())
    missing = run("codeowners", str(root), "--check")
    assert missing.returncode == 1 and "no CODEOWNERS file" in missing.stderr
    wrote = run("codeowners", str(root), "--write")
    assert wrote.returncode == 0 and (root / ".github" / "CODEOWNERS").is_file()
    assert run("codeowners", str(root), "--check").returncode == 0
    valid = run("validate", str(root))
    assert valid.returncode == 0 and "warning" not in valid.stderr and "3 teams" in valid.stdout
    shutil.copy(root / "teams" / "ref.yaml", root / "teams" / "ref2.yaml")
    (root / "teams" / "ref2.yaml").write_text(
        (root / "teams" / "ref.yaml").read_text().replace("team-ref", "team-ref2")
    )
    (root / "applications" / "ref" / "application.yaml").write_text(
        (root / "applications" / "ref" / "application.yaml").read_text().replace("owner: team-ref", "owner: team-ref2")
    )
    stale = run("codeowners", str(root), "--check")
    assert stale.returncode == 1 and ".github/CODEOWNERS: stale" in stale.stderr
    warned = run("validate", str(root))
    assert warned.returncode == 0 and "warning: .github/CODEOWNERS: stale" in warned.stderr
    bare = write_repo(tmp_path / "bare", minimal_repo())
    untouched = run("validate", str(bare))
    assert untouched.returncode == 0 and "warning: no Team is declared" in untouched.stderr
    assert run("codeowners", str(bare)).returncode == 1


def test_a_plaintext_secret_in_a_template_is_refused_with_file_and_line() -> None:
    """Secrets belong in SOPS-encrypted files: a Secret template with a value in clear fails validation."""
    files = minimal_repo()
    files["applications/ref/templates/deployment.yaml"] += _d("""
        ---
        apiVersion: v1
        kind: Secret
        metadata:
          name: db
        stringData:
          password: hunter2
          token: ENC[AES256_GCM,data:abc=,iv:abc=,tag:abc=,type:str]
        """)
    assert problems(files) == [
        "applications/ref/templates/deployment.yaml:14: Secret stringData.password is in plain text: encrypt the "
        "file with sops (age recipients; see docs/secrets.md)"
    ]
    files["applications/ref/templates/deployment.yaml"] = files["applications/ref/templates/deployment.yaml"].replace(
        b"password: hunter2", b"password: ENC[AES256_GCM,data:abc=,iv:abc=,tag:abc=,type:str]"
    )
    assert problems(files) == []


def test_ownership_hold_reads_the_newest_commits_first() -> None:
    from reconciler.core.policy import HoldKind, Signature, ownership_hold

    owners = ("team-ref", frozenset({"alice@x.org", "ops@x.org"}))
    outsider = Signature("b" * 40, False, authors=("alice@x.org", "bob@x.org"))
    member = Signature("a" * 40, False, authors=("alice@x.org",))
    approved = Signature("c" * 40, True, signer="Ops@x.org", authors=("bob@x.org",))  # a signed merge by ops
    assert ownership_hold("ref", owners, ()) is None
    assert ownership_hold("ref", owners, (member,)) is None
    hold = ownership_hold("ref", owners, (member, outsider))
    assert hold is not None and hold.kind is HoldKind.OWNERSHIP
    assert hold.reason.startswith(f"commit {'b' * 12} by bob@x.org changes ref, owned by team-ref")
    assert ownership_hold("ref", owners, (approved, outsider)) is None  # the newest signed commit attests
    assert ownership_hold("ref", owners, (outsider, approved)) is not None  # an outsider's commit on top of it
    bob_signed = Signature("d" * 40, True, signer="bob@x.org", authors=("bob@x.org",))
    held = ownership_hold("ref", owners, (bob_signed,))
    assert held is not None and "signed by bob@x.org," in held.reason


def test_ownership_not_looked_up_holds_every_change_of_such_a_stage() -> None:
    from dataclasses import replace
    from datetime import UTC, datetime

    from reconciler.core.decide import Facts, verdict
    from reconciler.core.model import Member, Team
    from tests.core.test_decide import repo

    base = repo()
    teams = {"team-ref": Team("team-ref", (Member("alice@x.org"),)), "team-famille": Team("team-famille", ())}
    stages = {**base.stages, "dev": replace(base.stages["dev"], owner_approval=True)}
    owned = replace(base, stages=stages, teams=teams)
    env = next(e for e in owned.environments.values() if e.stage == "dev")
    facts = Facts(datetime(2026, 1, 1, tzinfo=UTC))
    held = verdict(owned, env, "ref", "3.10", facts, "3.0")
    assert [h.reason for h in held.holds] == ["who changed it was not verified for this attempt"]
    assert verdict(owned, env, "ref", "3.10", replace(facts, ownership={}), "3.0").allowed
    failed = replace(facts, ownership_error="cannot list the commits of 1a2b3c: fatal: bad object")
    assert [h.reason for h in verdict(owned, env, "ref", "3.10", failed, "3.0").holds] == [
        "who changed it was not verified for this attempt: cannot list the commits of 1a2b3c: fatal: bad object"
    ]
    assert verdict(replace(owned, stages=base.stages), env, "ref", "3.10", facts, "3.0").allowed  # rule off
