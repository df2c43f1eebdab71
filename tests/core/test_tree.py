"""Path rules shared by every source, and the read cache the controller puts in front of a revision."""

from __future__ import annotations

import pytest

from reconciler.core.tree import CachingTree, MemoryTree, PathEscapes, is_manifest_path, join_inside, resolve_symlink


class CountingTree(MemoryTree):
    reads = 0

    def read(self, path: str) -> bytes:
        self.reads += 1
        return super().read(path)


def test_caching_tree_reads_each_file_once_and_respects_its_budget() -> None:
    inner = CountingTree({"a/templates/x.yaml": b"x" * 10, "b.yaml": b"y" * 100})
    tree = CachingTree(inner, max_bytes=50)
    assert [tree.read("a/templates/x.yaml") for _ in range(3)] == [b"x" * 10] * 3
    assert inner.reads == 1
    tree.read("b.yaml")
    tree.read("b.yaml")
    assert inner.reads == 3  # over the budget: not kept
    assert (
        tree.digest("b.yaml") == inner.digest("b.yaml") and "b.yaml" in tree and set(tree.paths()) == set(inner.files)
    )


@pytest.mark.parametrize(("path", "expected"), [("stages/dev.yaml", True), ("apps/x/templates/d.yaml", False),
                                                (".github/workflows/ci.yml", False), ("README.md", False)])  # fmt: skip
def test_manifest_paths(path: str, expected: bool) -> None:
    assert is_manifest_path(path) is expected


@pytest.mark.parametrize("ref", ["../../../x", "/etc/passwd", "a/../../../../x", "c:\\\\x", "a\\x00b"])
def test_references_that_leave_the_repo_are_refused(ref: str) -> None:
    with pytest.raises(PathEscapes):
        join_inside("apps/x", ref)


def test_references_and_symlinks_inside_the_repo_resolve() -> None:
    assert join_inside("apps/x", "templates/../templates/d.yaml") == "apps/x/templates/d.yaml"
    assert resolve_symlink("apps/x/templates/d.yaml", "../../shared/d.yaml") == "apps/shared/d.yaml"
    with pytest.raises(PathEscapes, match="outside the repository"):
        resolve_symlink("a.yaml", "../../etc/passwd")
