"""The loader's parse cache: a revision that differs in one file parses that file only, and loads the same model
(and the same problems, with their lines) as a load from scratch."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core import loader
from reconciler.core.loader import load_repo
from reconciler.core.tree import MemoryTree
from reconciler.core.yamlsafe import parse_file
from tests.minirepo import minimal_repo

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "releases-repo"


def example_files() -> dict[str, bytes]:
    return {str(p.relative_to(EXAMPLE)): p.read_bytes() for p in EXAMPLE.rglob("*") if p.is_file()}


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []

    def counting(path: str, data: bytes, max_size: int):  # type: ignore[no-untyped-def]
        seen.append(path)
        return parse_file(path, data, max_size)

    monkeypatch.setattr(loader, "parse_file", counting)
    monkeypatch.setattr(loader, "_PARSED", {})
    return seen


def test_the_next_revision_parses_only_what_changed_and_loads_the_same_model(parses: list[str]) -> None:
    files = example_files()
    first = load_repo(MemoryTree(dict(files)))
    assert first.repo is not None and len(parses) > 100
    parses.clear()
    stage = "stages/dev.yaml"
    changed = {**files, stage: files[stage].replace(b"releases:", b"releases:  # bumped", 1)}
    second = load_repo(MemoryTree(changed))
    assert parses == [stage]
    loader.forget_last_load()
    fresh = load_repo(MemoryTree(changed))
    assert second.repo == fresh.repo and second.problems == fresh.problems
    assert second.environment_problems == fresh.environment_problems


def test_cached_problems_keep_their_file_and_line(parses: list[str]) -> None:
    files = minimal_repo()
    files["stages/dev.yaml"] = files["stages/dev.yaml"].replace(b"releases:", b"releases: [unclosed", 1)
    first = load_repo(MemoryTree(dict(files)))
    again = load_repo(MemoryTree(dict(files)))
    assert first.problems and again.problems == first.problems
    assert first.problems[0].path == "stages/dev.yaml" and first.problems[0].line is not None
    assert parses.count("stages/dev.yaml") == 1


def test_a_file_moved_to_another_path_is_parsed_again_under_its_new_name(parses: list[str]) -> None:
    files = minimal_repo()
    load_repo(MemoryTree(dict(files)))
    parses.clear()
    moved = dict(files)
    moved["stages/development.yaml"] = moved.pop("stages/dev.yaml")
    result = load_repo(MemoryTree(moved))
    assert parses == ["stages/development.yaml"]  # same bytes, other path: its problems would name the new path
    assert result.repo is not None and result.repo.stages["dev"].origin.path == "stages/development.yaml"


def test_an_unchanged_environment_set_is_not_expanded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    expanded: list[str] = []
    real = loader.expand
    monkeypatch.setattr(loader, "expand", lambda spec, limit: expanded.append("x") or real(spec, limit))
    monkeypatch.setattr(loader, "_PARSED", {})
    monkeypatch.setattr(loader, "_EXPANDED", {})
    files = minimal_repo()
    first = load_repo(MemoryTree(dict(files)))
    assert expanded == ["x"] and first.repo is not None
    files["stages/dev.yaml"] += b"# touched\n"
    second = load_repo(MemoryTree(dict(files)))
    assert expanded == ["x"] and second.repo is not None  # the set's file is unchanged: its environments reused
    assert second.repo.environments == first.repo.environments
    files["environments/branches.yaml"] = files["environments/branches.yaml"].replace(b"replicas: 2", b"replicas: 3")
    third = load_repo(MemoryTree(dict(files)))
    assert expanded == ["x", "x"] and third.repo is not None
    assert third.repo.environments["lille-dev"].parameters["replicas"] == 3


def test_problems_of_generated_environments_come_back_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "_PARSED", {})
    monkeypatch.setattr(loader, "_EXPANDED", {})
    files = minimal_repo()
    files["environments/branches.yaml"] = files["environments/branches.yaml"].replace(
        b"      targets:", b'      allowEmpty: "${branch}"\n      targets:', 1
    )  # not a boolean in any generated environment
    first = load_repo(MemoryTree(dict(files)))
    files["stages/dev.yaml"] += b"# touched\n"
    second = load_repo(MemoryTree(dict(files)))
    assert first.problems and second.problems == first.problems
    assert all(p.path == "environments/branches.yaml" for p in first.problems)
    assert all("in the environment generated for" in p.message for p in first.problems), first.problems


def test_forget_last_load_makes_the_next_load_read_every_file(parses: list[str]) -> None:
    files = example_files()
    load_repo(MemoryTree(dict(files)))
    count = len(parses)
    parses.clear()
    load_repo(MemoryTree(dict(files)))
    assert parses == []  # the same revision again: nothing parsed
    loader.forget_last_load()
    load_repo(MemoryTree(dict(files)))
    assert len(parses) == count  # from scratch, as a benchmark of a load must measure it
