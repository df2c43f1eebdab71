"""A :class:`~reconciler.core.tree.SourceTree` over a directory on disk (a checkout of the releases repo).

Used by ``reconciler validate PATH``. Files are listed once and read lazily. Symlinks are resolved here: one that
stays inside the repo works (a symlinked directory is followed once), one that leaves the repo or loops is
reported as a problem naming it and its content is never read. ``.git`` is skipped.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.core.problems import Problem
from reconciler.core.tree import blob_id


@dataclass
class DirectoryTree:
    root: Path
    revision: str | None = None
    problems: list[Problem] = field(default_factory=list)
    _files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def scan(cls, root: str | os.PathLike[str]) -> DirectoryTree:
        tree = cls(Path(root).resolve())
        tree._walk(tree.root, "", set())
        return tree

    def _walk(self, directory: Path, prefix: str, seen: set[Path]) -> None:
        real = directory.resolve()
        if real in seen:
            return
        seen = seen | {real}
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            self.problems.append(Problem(prefix or ".", None, f"cannot read directory: {exc.strerror}"))
            return
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if entry.name == ".git":
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                target = self._resolve_link(path, rel)
                if target is None:
                    continue
                if target.is_dir():
                    self._walk(target, rel + "/", seen)
                elif target.is_file():
                    self._files[rel] = target
            elif entry.is_dir(follow_symlinks=False):
                self._walk(path, rel + "/", seen)
            elif entry.is_file(follow_symlinks=False):
                self._files[rel] = path

    def _resolve_link(self, path: Path, rel: str) -> Path | None:
        try:
            target = path.resolve(strict=True)
        except (RuntimeError, OSError) as exc:
            loop = isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP
            message = "symlink loop" if loop else "symlink points to nothing (dangling)"
            self.problems.append(Problem(rel, None, message))
            return None
        if target != self.root and self.root not in target.parents:
            self.problems.append(Problem(rel, None, "symlink points outside the repository; it is not read"))
            return None
        return target

    def paths(self) -> Iterable[str]:
        return self._files.keys()

    def size(self, path: str) -> int:
        return self._files[path].stat().st_size

    def read(self, path: str) -> bytes:
        return self._files[path].read_bytes()

    def digest(self, path: str) -> str:
        return blob_id(self.read(path))

    def __contains__(self, path: object) -> bool:
        return path in self._files
