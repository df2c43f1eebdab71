"""The read-only file tree of one revision of the releases repo, and path rules shared by every source.

The loader reads manifests and templates through :class:`SourceTree`, so one loader serves a working directory
(:mod:`reconciler.source.fstree`), a Git revision read without a checkout (:mod:`reconciler.source.gitrepo`) and
tests (:class:`MemoryTree`, the in-memory twin). Sources resolve symlinks themselves and report the ones that
leave the repo as problems; :func:`join_inside` keeps references written in manifests inside the repo. Pure.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from reconciler.core.problems import Problem

MANIFEST_SUFFIXES = (".yaml", ".yml")


class SourceTree(Protocol):
    """What the loader needs from a revision: its paths, their sizes and their bytes."""

    revision: str | None

    @property
    def problems(self) -> Sequence[Problem]: ...

    def paths(self) -> Iterable[str]: ...

    def size(self, path: str) -> int: ...

    def read(self, path: str) -> bytes: ...

    def digest(self, path: str) -> str:
        """A content digest (Git's blob id where the source is Git); equal digests mean equal bytes."""
        ...

    def __contains__(self, path: object) -> bool: ...


@dataclass
class MemoryTree:
    """A tree held in memory: repo-relative POSIX path -> bytes."""

    files: Mapping[str, bytes]
    revision: str | None = None
    problems: list[Problem] = field(default_factory=list)

    def paths(self) -> Iterable[str]:
        return self.files.keys()

    def size(self, path: str) -> int:
        return len(self.files[path])

    def read(self, path: str) -> bytes:
        return self.files[path]

    def digest(self, path: str) -> str:
        return blob_id(self.files[path])

    def __contains__(self, path: object) -> bool:
        return path in self.files


def blob_id(data: bytes) -> str:
    """Git's blob id of ``data`` (so every source digests content the same way)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def is_manifest_path(path: str) -> bool:
    """Manifests: ``*.yaml``/``*.yml`` outside hidden paths and outside ``templates/`` directories."""
    if not path.endswith(MANIFEST_SUFFIXES):
        return False
    parts = path.split("/")
    return not any(p.startswith(".") for p in parts) and "templates" not in parts[:-1]


class PathEscapes(ValueError):
    pass


def join_inside(base_dir: str, reference: str) -> str:
    """Resolve ``reference`` (relative to ``base_dir``) to a normalised repo path, refusing escapes.

    Raises :class:`PathEscapes` for absolute paths, backslashes, NUL bytes and ``..`` leaving the repo.
    """
    if not reference or "\x00" in reference or "\\" in reference:
        raise PathEscapes(f"invalid path {reference!r}")
    if reference.startswith("/") or (len(reference) > 1 and reference[1] == ":"):
        raise PathEscapes(f"absolute path {reference!r} is not allowed; use a path relative to the manifest")
    joined = posixpath.normpath(posixpath.join(base_dir, reference))
    if joined == ".." or joined.startswith("../") or joined.startswith("/"):
        raise PathEscapes(f"path {reference!r} leaves the repository")
    return joined


def resolve_symlink(link_path: str, target: str) -> str:
    """Where a symlink stored at ``link_path`` points, as a repo path; :class:`PathEscapes` if outside."""
    if target.startswith("/"):
        raise PathEscapes(f"symlink {link_path} points to an absolute path outside the repository")
    try:
        return join_inside(posixpath.dirname(link_path), target)
    except PathEscapes:
        raise PathEscapes(f"symlink {link_path} points outside the repository ({target})") from None


class CachingTree:
    """A :class:`SourceTree` that keeps what it has read: templates are read once per revision, not once per
    environment (235 environments render the same templates). Used by the controller; thread-safe enough for
    concurrent readers (a duplicate read of the same path is harmless)."""

    def __init__(self, inner: SourceTree, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.inner = inner
        self.revision = inner.revision
        self.max_bytes = max_bytes
        self._cache: dict[str, bytes] = {}
        self._size = 0

    @property
    def problems(self) -> Sequence[Problem]:
        return self.inner.problems

    def paths(self) -> Iterable[str]:
        return self.inner.paths()

    def size(self, path: str) -> int:
        return self.inner.size(path)

    def digest(self, path: str) -> str:
        return self.inner.digest(path)

    def read(self, path: str) -> bytes:
        data = self._cache.get(path)
        if data is None:
            data = self.inner.read(path)
            if self._size + len(data) <= self.max_bytes:
                self._cache[path] = data
                self._size += len(data)
        return data

    def __contains__(self, path: object) -> bool:
        return path in self.inner
