"""`reconciler plan` on the example fleet in a real Git repository: affected environments, formats, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reconciler.cli import main
from tests.source import git

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "releases-repo"


@pytest.fixture(scope="module")
def example_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("plan") / "releases"
    shutil.copytree(EXAMPLE, repo)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "fleet", cwd=repo)
    return repo


def commit_edit(repo: Path, path: str, old: str, new: str, author: str | None = None) -> str:
    text = (repo / path).read_text()
    assert old in text
    (repo / path).write_text(text.replace(old, new, 1))
    who = {"GIT_AUTHOR_EMAIL": author, "GIT_COMMITTER_EMAIL": author} if author else None
    git("commit", "-q", "-am", f"edit {path}", cwd=repo, env=who)
    return git("rev-parse", "HEAD", cwd=repo)


def run_plan(repo: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["plan", "--repo", str(repo), "--base", "HEAD~1", "--head", "HEAD", *args])
    return code, capsys.readouterr().out


def test_plan_lists_exactly_the_affected_environments(example_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit_edit(example_repo, "stages/dev.yaml", "action-sociale: 2.3.4", "action-sociale: 2.3.3")
    code, out = run_plan(example_repo, capsys, "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True
    names = {e["name"] for e in data["environments"]}
    assert len(names) == 47 and all(n.endswith("-dev") for n in names)
    assert data["blastRadius"] == "47 of 235 environments, stages: dev"
    change = data["environments"][0]["changes"][0]
    assert (change["application"], change["from"], change["to"]) == ("action-sociale", "2.3.4", "2.3.3")
    assert '-  APP_VERSION: "2.3.4"' in change["diff"] and '+  APP_VERSION: "2.3.3"' in change["diff"]
    code, md = run_plan(example_repo, capsys, "--format", "markdown")
    assert code == 0 and "**Blast radius:** 47 of 235 environments, stages: dev" in md
    assert "| action-sociale | 2.3.4 | 2.3.3 | 47:" in md and "<details>" in md
    git("reset", "-q", "--hard", "HEAD~1", cwd=example_repo)


def test_a_release_skipping_its_previous_stage_is_refused(
    example_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commit_edit(example_repo, "stages/preproduction.yaml", "aides-logement: 2.4.0", "aides-logement: 2.4.1")
    code, out = run_plan(example_repo, capsys)
    assert code == 1
    assert "VIOLATION promotion: aides-logement 2.4.1 has not run in recette yet" in out
    assert "(no status branch found: pass --status-ref)" in out
    git("reset", "-q", "--hard", "HEAD~1", cwd=example_repo)


def test_an_invalid_head_exits_1_with_file_and_line(example_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit_edit(example_repo, "stages/dev.yaml", "action-sociale: 2.3.4", "action-sociale: 9.9.9")
    code, out = run_plan(example_repo, capsys, "--format", "markdown")
    assert (
        code == 1 and "is invalid" in out and "stages/dev.yaml:" in out and "no release 9.9.9 of action-sociale" in out
    )
    git("reset", "-q", "--hard", "HEAD~1", cwd=example_repo)


def test_unknown_revision_and_not_a_repository(
    tmp_path: Path, example_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--repo", str(example_repo), "--base", "nope", "--head", "HEAD"]) == 1
    assert "unknown revision" in capsys.readouterr().err
    assert main(["plan", "--repo", str(tmp_path), "--base", "HEAD~1", "--head", "HEAD"]) == 1
    assert "not a git repository" in capsys.readouterr().err


def test_an_outsiders_change_to_another_teams_application_is_a_violation_in_recette(
    example_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16, on the example fleet: recette has ``ownerApproval``; alice (in no team) edits team-famille's
    action-sociale: exit 1, the markdown names the rule and recette's environments; dev is not concerned."""
    configmap = "applications/action-sociale/templates/configmap.yaml"
    sha = commit_edit(example_repo, configmap, "\ndata:\n", '\ndata:\n  FEATURE_FLAGS: "x"\n')
    code, md = run_plan(example_repo, capsys, "--format", "markdown")
    assert code == 1, md
    assert f"commit {sha[:12]} by alice@example.org changes action-sociale, owned by team-famille" in md
    assert "amiens-recette" in md.split("ownership")[1]
    git("reset", "-q", "--hard", "HEAD~1", cwd=example_repo)
    commit_edit(
        example_repo, configmap, "\ndata:\n", '\ndata:\n  FEATURE_FLAGS: "x"\n', author="lea.martin@example.org"
    )
    code, md = run_plan(example_repo, capsys, "--format", "markdown")
    assert code == 0 and "ownership" not in md, md
    git("reset", "-q", "--hard", "HEAD~1", cwd=example_repo)


def all_environments(repo: Path) -> list[str]:
    from reconciler.core.loader import load_repo
    from reconciler.source.fstree import DirectoryTree

    loaded = load_repo(DirectoryTree.scan(repo)).repo
    assert loaded is not None
    return list(loaded.environments)


@pytest.mark.parametrize(
    ("line", "grouped"),
    [('  FEATURE_FLAGS: "new-ui"', True), ('  HOSTNAME: "${env.name}.${params.domain}"', False)],
    ids=["same-diff-everywhere", "a-different-diff-in-each-environment"],
)
def test_a_change_to_all_235_environments_fits_a_pr_comment_and_names_them_all(
    example_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, grouped: bool
) -> None:
    """Issue 15: `plan --format markdown` on a large change was 114 KB; GitHub refuses comments over 65,536."""
    configmap = "applications/action-sociale/templates/configmap.yaml"
    commit_edit(example_repo, configmap, "\ndata:\n", f"\ndata:\n{line}\n", author="lea.martin@example.org")
    names = all_environments(example_repo)
    code, md = run_plan(example_repo, capsys, "--format", "markdown", "--output", str(tmp_path / "report"))
    assert code == 0 and len(md) < 65_000, len(md)
    assert "**Blast radius:** 235 of 235 environments" in md
    table = md.split("<details>")[0]
    assert all(f" {n}," in table or f" {n} |" in table for n in names)  # every environment named
    full = (tmp_path / "report" / "plan.md").read_text()
    data = json.loads((tmp_path / "report" / "plan.json").read_text())
    assert len(data["environments"]) == 235 and (tmp_path / "report" / "plan.txt").is_file()
    if grouped:
        assert "same change in " in md and "were cut" not in md
    else:
        assert len(full) > 65_000 and "were cut to keep this comment under 65,000 characters" in md
        assert "cut to fit the comment: see the full report" in md and "were cut" not in full
    git("reset", "-q", "--hard", "HEAD~1", cwd=example_repo)


def test_plan_filters_by_environment_stage_and_application(
    example_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commit_edit(example_repo, "stages/dev.yaml", "action-sociale: 2.3.4", "action-sociale: 2.3.3")
    code, out = run_plan(example_repo, capsys, "--format", "json", "--env", "lille-dev", "--env", "rennes-dev")
    assert code == 0 and sorted(e["name"] for e in json.loads(out)["environments"]) == ["lille-dev", "rennes-dev"]
    code, out = run_plan(example_repo, capsys, "--format", "json", "--stage", "production")
    assert json.loads(out)["environments"] == []
    code, out = run_plan(example_repo, capsys, "--format", "json", "--app", "aides-logement")
    assert json.loads(out)["environments"] == []
    code, md = run_plan(example_repo, capsys, "--format", "markdown", "--stage", "dev", "--app", "action-sociale")
    assert "(filtered: stage dev; application action-sociale)" in md
    git("reset", "-q", "--hard", "HEAD~1", cwd=example_repo)


def test_an_unwritable_output_directory_is_a_clear_error(
    example_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commit_edit(example_repo, "stages/dev.yaml", "action-sociale: 2.3.4", "action-sociale: 2.3.3")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    capsys.readouterr()
    assert main(["plan", "--repo", str(example_repo), "--output", str(blocker / "sub")]) == 1
    assert f"reconciler plan: cannot write the report to {blocker / 'sub'}" in capsys.readouterr().err
    git("reset", "-q", "--hard", "HEAD~1", cwd=example_repo)


def test_a_kustomize_overlay_is_planned_with_the_release_image(
    example_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17: annuaire-agents is a Kustomize base with one overlay per stage; the plan's diff is the rendered
    objects, with the release's image set by the wrapper and the environment's values filled in."""
    commit_edit(example_repo, "stages/dev.yaml", "annuaire-agents: 3.9.0", "annuaire-agents: 3.8.1")
    code, out = run_plan(example_repo, capsys, "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True, out
    changes = {e["name"]: e["changes"][0] for e in data["environments"]}
    lille = changes["lille-dev"]
    assert (lille["application"], lille["from"], lille["to"]) == ("annuaire-agents", "3.9.0", "3.8.1")
    assert "-        image: registry.example.org/rh/annuaire-agents-api:3.9.0" in lille["diff"], lille["diff"]
    assert "+        image: registry.example.org/rh/annuaire-agents-api:3.8.1" in lille["diff"], lille["diff"]
    assert "+  APP_VERSION: 3.8.1" in lille["diff"] and "ENVIRONMENT: lille-dev" in lille["diff"]
    git("reset", "-q", "--hard", "HEAD~1", cwd=example_repo)
