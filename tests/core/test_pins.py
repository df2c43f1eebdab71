"""Per-environment pins inside an EnvironmentSet (``spec.overrides``): one generated environment's version or
parameter changes, the others do not; an override for an environment the set does not generate, or a pin to a
version that does not exist, is an error naming the file and line; declaring a generated environment a second
time points to overrides."""

from __future__ import annotations

from reconciler.core.loader import load_repo
from reconciler.core.tree import MemoryTree
from tests.minirepo import minimal_repo

SET = "environments/branches.yaml"


def with_overrides(block: str) -> dict[str, bytes]:
    files = minimal_repo()
    files[SET] = files[SET].rstrip(b"\n") + b"\n" + block.encode()
    return files


def test_an_override_pins_one_generated_environment() -> None:
    result = load_repo(MemoryTree(with_overrides(
        '  overrides:\n    lille-dev:\n      pins: {ref: "3.0"}\n      parameters: {replicas: 5}\n'
        '      reason: rollback\n')))  # fmt: skip
    assert result.repo is not None, result.all_problems()
    repo = result.repo
    lille, rennes = repo.environments["lille-dev"], repo.environments["rennes-dev"]
    assert repo.desired_versions(lille)["ref"] == "3.0" and repo.desired_versions(rennes)["ref"] == "3.10"
    assert lille.parameters["replicas"] == 5 and rennes.parameters["replicas"] == 2
    assert lille.parameters["namespace"] == "lille-dev"  # merged over the template's, not replacing them


def test_bad_overrides_are_named_with_file_and_line() -> None:
    problems = [str(p) for p in load_repo(MemoryTree(with_overrides(
        '  overrides:\n    paris-dev:\n      pins: {ref: "3.0"}\n'))).all_problems()]  # fmt: skip
    assert len(problems) == 1 and problems[0].startswith(f"{SET}:21: overrides: 'paris-dev' is not an environment")
    problems = [str(p) for p in load_repo(MemoryTree(with_overrides(
        '  overrides:\n    lille-dev:\n      pins: {ref: "9.9"}\n'))).all_problems()]  # fmt: skip
    assert any("pins: no release 9.9 of ref" in p and "lille-dev" in p for p in problems), problems


def test_declaring_a_generated_environment_again_points_to_overrides() -> None:
    files = minimal_repo()
    files["environments/lille-dev.yaml"] = (
        b"apiVersion: reconciler.io/v1\nkind: Environment\nmetadata:\n  name: lille-dev\n"
        b"spec:\n  stage: dev\n  targets: {kubernetes: k8s-nord}\n  pins: {ref: '3.0'}\n"
    )
    problems = [str(p) for p in load_repo(MemoryTree(files)).all_problems()]
    assert any("lille-dev" in p and "use its set's spec.overrides" in p for p in problems), problems
