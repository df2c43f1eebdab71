"""Floors: the least work each benchmark figure implies, measured the plainest way, in the same process run.

* YAML floor: PyYAML's C loader over the same manifest files (bytes already in memory; nothing else).
* Write floor: the same rendered files written with ``open``/``write``/``rename`` into an empty directory
  (directories made as needed; no inventory, no fsync, no hashing).
* Re-hash floor: read + sha256 of every deployed file (paths listed beforehand).
* Fetch floor: one ``git fetch`` from the same bare remote that brings nothing new.

Each returns seconds of wall time; :mod:`bench.measure` reports every figure as a ratio to its floor.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from bench.fleet import git_env
from reconciler.core.desired import DesiredUnit

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def yaml_floor(blobs: Iterable[bytes]) -> float:
    """Seconds to parse every document of ``blobs`` with the C loader."""
    started = time.perf_counter()
    for data in blobs:
        for _ in yaml.load_all(data, Loader=_Loader):
            pass
    return time.perf_counter() - started


def unit_files(units: Iterable[DesiredUnit]) -> Iterator[tuple[str, bytes]]:
    """``(relative path, content)`` of every rendered file, laid out as the local driver lays them out."""
    for unit in units:
        base = f"{unit.target}/{unit.environment}/{unit.application}"
        for comp in unit.components:
            for name, data in comp.files.items():
                yield f"{base}/{comp.name}/{name}", data


class WriteFloor:
    """Accumulates the time of plain writes of rendered files into ``root`` (call :meth:`write` per batch)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seconds = 0.0
        self.files = 0
        self.bytes = 0
        self._dirs: set[str] = set()
        root.mkdir(parents=True, exist_ok=False)

    def write(self, files: list[tuple[str, bytes]]) -> None:
        root = str(self.root)
        started = time.perf_counter()
        for rel, data in files:
            path = f"{root}/{rel}"
            parent = path.rpartition("/")[0]
            if parent not in self._dirs:
                os.makedirs(parent, exist_ok=True)
                self._dirs.add(parent)
            tmp = f"{parent}/.tmp-{rel.rpartition('/')[2]}"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.rename(tmp, path)
        self.seconds += time.perf_counter() - started
        self.files += len(files)
        self.bytes += sum(len(d) for _, d in files)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def deployed_files(targets: Path) -> list[str]:
    """Every file the local driver deployed under ``targets`` (its own bookkeeping files excluded)."""
    found: list[str] = []
    for dirpath, _dirs, files in os.walk(targets):
        found.extend(f"{dirpath}/{name}" for name in files if not name.startswith(".reconciler-"))
    return sorted(found)


def rehash_floor(paths: Iterable[str]) -> float:
    """Seconds to read and sha256 every file of ``paths``."""
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb") as fh:
            hashlib.sha256(fh.read()).hexdigest()
    return time.perf_counter() - started


class FetchFloor:
    """A scratch bare repository that fetches the tracked branch of ``remote`` (a no-op once up to date)."""

    def __init__(self, root: Path, remote: Path) -> None:
        self.repo = root
        self.remote = remote
        subprocess.run(["git", "init", "-q", "--bare", str(root)], env=git_env(), check=True, capture_output=True)
        self.fetch()

    def fetch(self) -> float:
        started = time.perf_counter()
        subprocess.run(
            ["git", "fetch", "--quiet", "--no-tags", str(self.remote), "+refs/heads/main:refs/heads/main"],
            cwd=self.repo,
            env=git_env(),
            check=True,
            capture_output=True,
            timeout=300,
        )
        return time.perf_counter() - started
