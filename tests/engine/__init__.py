"""A small fleet in a real Git repository, a controller config for it, and helpers to read what it did.

Shared by the engine and command tests. The fleet is ``tests.minirepo`` (5 environments, a Kubernetes-style
component rendered to local targets and an AIX batch component); ``aix-*`` targets go through the example legacy
agent (a real subprocess), everything else to ``local`` directories.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from tests.minirepo import minimal_repo
from tests.source import Upstream, git

AGENT = Path(__file__).resolve().parents[2] / "examples" / "targets" / "aix-agent"


@dataclass
class Fleet:
    root: Path
    upstream: Upstream
    config: Path
    targets: Path

    def write_config(self, **overrides: Any) -> Path:
        config: dict[str, Any] = {
            "apiVersion": "reconciler.io/v1",
            "kind": "ControllerConfig",
            "source": {"url": str(self.upstream.bare), "branch": "main", "interval": "1s", "timeout": "30s"},
            "stateDir": str(self.root / "state"),
            "concurrency": 4,
            "applyTimeout": "60s",
            "driftCheckInterval": "0s",
            "backoff": {"initial": "1s", "max": "2s"},
            "listen": "127.0.0.1:0",  # a running controller serves on an ephemeral port, never a fixed one
            "targets": {},
            "targetPatterns": [
                {"match": "aix-*", "driver": "script", "timeout": "20s",
                 "command": [sys.executable, str(AGENT), "--root", str(self.targets / "${target}")]},
                {"match": "*", "driver": "local", "path": str(self.targets / "${target}")},
            ],
        }  # fmt: skip
        config.update(overrides)
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config

    def once(self, *extra: str) -> int:
        return main(["run", "--config", str(self.config), "--once", *extra])

    def status_head(self) -> str | None:
        try:
            return git("rev-parse", "refs/heads/reconciler-status", cwd=self.upstream.bare)
        except AssertionError:
            return None

    def status_file(self, path: str) -> str:
        return git("show", f"reconciler-status:{path}", cwd=self.upstream.bare)

    def env_status(self, env: str) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load(self.status_file(f"environments/{env}.yaml"))
        return doc

    def audit(self) -> list[dict[str, Any]]:
        files = git("ls-tree", "-r", "--name-only", "reconciler-status", "audit/", cwd=self.upstream.bare).split()
        return [json.loads(line) for f in files for line in self.status_file(f).splitlines() if line.strip()]

    def edit(self, path: str, old: str, new: str, message: str = "change", **env: str) -> str:
        text = (self.upstream.work / path).read_text()
        assert old in text, f"{old!r} not in {path}"
        return self.commit({path: text.replace(old, new, 1).encode()}, message, **env)

    def commit(self, files: dict[str, bytes | None], message: str = "change", **env: str) -> str:
        sha = self.upstream.commit(files, message, env=env or None)
        self.upstream.push()
        return sha


NEW_REF_RELEASE = b"""apiVersion: reconciler.io/v1
kind: Release
metadata:
  name: ref-3.11
spec:
  application: ref
  version: 3.11
  components:
    api: {image: "registry.example.org/ref/api:3.11"}
"""


ENVIRONMENTS = ["lille-dev", "lille-production", "rennes-dev", "rennes-production", "shared-production"]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    upstream = Upstream(tmp_path)
    upstream.commit(dict(minimal_repo()), "initial fleet")
    upstream.push()
    fleet = Fleet(tmp_path, upstream, tmp_path / "controller.yaml", tmp_path / "targets")
    fleet.write_config()
    yield fleet
