"""A benchmark fleet in real Git: a releases repo (the example or a synthetic one), a bare remote, a controller.

:class:`BenchFleet` seeds ``<root>/releases.git`` with one commit signed by a throw-away SSH key (so protected
stages apply, as in the demo), keeps a work clone to commit and push changes from, and writes controller configs
whose targets are all ``local`` directories under ``<root>/targets`` (no script agent: the figures measure the
controller, not a subprocess per call). Used by :mod:`bench.measure` and :mod:`bench.profile`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import fleetgen
from reconciler.commands.demo import DEMO_AGE_IDENTITY, EXAMPLE_REPO, signing_key

AUTHOR = {
    "GIT_AUTHOR_NAME": "Bench Developer",
    "GIT_AUTHOR_EMAIL": "bench@example.org",
    "GIT_COMMITTER_NAME": "Bench Developer",
    "GIT_COMMITTER_EMAIL": "bench@example.org",
}
STATUS_BRANCH = "reconciler-status"


def git_env() -> dict[str, str]:
    """The environment of the harness's own git calls: no user or system config, a fixed author."""
    return {
        **os.environ,
        **AUTHOR,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=git_env(), capture_output=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode().strip()


def fleet_spec(branches: int, apps: int) -> tuple[int, str]:
    """The number of environments of a generated fleet, and a label for it."""
    envs = (branches + len(fleetgen.PLATFORMS)) * len(fleetgen.STAGES)
    return envs, f"{envs} envs ({branches} branches x {apps} apps)"


def write_source(out: Path, branches: int, apps: int) -> dict[str, Any]:
    """The releases repo as files: the committed example for the default shape, else a fleetgen fleet.

    Freeze windows are left out: a recurring window (the monthly payroll closing) would hold some production
    environments on some days only, and the figures must not depend on the date.
    """
    if (branches, apps) == (35, 60) and EXAMPLE_REPO.is_dir():
        shutil.copytree(EXAMPLE_REPO, out)
        info: dict[str, Any] = {"source": "examples/releases-repo"}
    else:
        counts = fleetgen.generate(out, branches=branches, apps=apps)
        info = {"source": f"bench/fleetgen.py --branches {branches} --apps {apps}", **counts}
    freezes = out / "freezes"
    info["freeze_windows_removed"] = len(list(freezes.glob("*.yaml"))) if freezes.is_dir() else 0
    shutil.rmtree(freezes, ignore_errors=True)
    return info


@dataclass(frozen=True)
class Bump:
    """A one-stage change that alternates between two valid versions of one application."""

    stage: str
    application: str
    versions: tuple[str, str]
    environment: str  # an environment of the stage where the application is deployed (watched for latency)


class BenchFleet:
    """The bare remote, the work clone and the signing key of one benchmark fleet under ``root``."""

    def __init__(self, root: Path, branches: int, apps: int) -> None:
        self.root = root
        self.bare = root / "releases.git"
        self.work = root / "work"
        self.targets = root / "targets"
        self.branches, self.apps = branches, apps
        root.mkdir(parents=True, exist_ok=True)
        keys = signing_key(root)
        if keys is None:  # protected stages would stay Blocked: the figures would not be about a full apply
            raise RuntimeError("ssh-keygen is needed to sign the benchmark fleet's commits (protected stages)")
        self.key, self.allowed_signers = keys
        self.info = write_source(self.work, branches, apps)
        git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        git("init", "-q", "-b", "main", cwd=self.work)
        git("remote", "add", "origin", str(self.bare), cwd=self.work)
        self.commit("Benchmark fleet")

    # --- the releases repo ---------------------------------------------------------------------------------------
    def commit(self, message: str) -> str:
        """Commit everything in the work clone (signed by the fleet's key) and push it; the new head."""
        sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.key}", "-c", "commit.gpgsign=true"]
        git("add", "-A", cwd=self.work)
        git(*sign, "commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "origin", "main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def set_version(self, bump: Bump, version: str) -> None:
        """Write ``version`` of the bump's application into its stage file (not committed)."""
        path = self.work / "stages" / f"{bump.stage}.yaml"
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        prefix = f"    {bump.application}: "
        hits = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        if len(hits) != 1:
            raise RuntimeError(f"{path}: expected one line starting with {prefix!r}, found {len(hits)}")
        lines[hits[0]] = f"{prefix}{version}\n"
        path.write_text("".join(lines))

    def find_bump(self, stage: str = "dev", among: set[str] | None = None) -> Bump:
        """An application of ``stage`` with a second release that keeps the repo valid (no ``requires`` broken)."""
        from reconciler.core.loader import load_repo
        from reconciler.source.fstree import DirectoryTree

        repo = load_repo(DirectoryTree.scan(self.work)).repo
        if repo is None:
            raise RuntimeError("the benchmark fleet does not load")
        current = repo.stages[stage].releases
        for app, version in sorted(current.items()):
            if among is not None and app not in among:
                continue
            others = sorted(v for (a, v) in repo.releases if a == app and v != version)
            envs = [e.name for e in repo.environments.values() if repo.desired_versions(e).get(app) == version]
            if not others or not envs:
                continue
            bump = Bump(stage, app, (version, others[-1]), envs[0])
            self.set_version(bump, others[-1])
            result = load_repo(DirectoryTree.scan(self.work))
            self.set_version(bump, version)
            if result.ok:
                return bump
        raise RuntimeError(f"no application of stage {stage} has a second valid release")

    # --- the controller ------------------------------------------------------------------------------------------
    def write_config(self, name: str, concurrency: int, drift: str, state_dir: Path, interval: str = "1h") -> Path:
        """A controller config with every target ``local`` under ``targets``; its path."""
        config: dict[str, Any] = {
            "apiVersion": "reconciler.io/v1",
            "kind": "ControllerConfig",
            "source": {"url": str(self.bare), "branch": "main", "interval": interval, "timeout": "300s"},
            "status": {"branch": STATUS_BRANCH, "authorName": "reconciler bench", "authorEmail": "bench@localhost"},
            "stateDir": str(state_dir),
            "concurrency": concurrency,
            "applyTimeout": "3600s",
            "driftCheckInterval": drift,
            "backoff": {"initial": "5s", "max": "2m"},
            "listen": "127.0.0.1:0",
            "allowedSigners": str(self.allowed_signers),
            "secrets": {"ageIdentity": f"file:{DEMO_AGE_IDENTITY}"},  # the example repo's SOPS files
            "targets": {},
            "targetPatterns": [{"match": "*", "driver": "local", "path": str(self.targets / "${target}")}],
        }
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def reset_targets_and_status(self) -> None:
        """Empty targets and no status branch: the state before a cold cycle."""
        if self.targets.exists():
            shutil.rmtree(self.targets)
        self.targets.mkdir(parents=True)
        subprocess.run(
            ["git", "update-ref", "-d", f"refs/heads/{STATUS_BRANCH}"],
            cwd=self.bare,
            env=git_env(),
            capture_output=True,
            timeout=60,
            check=False,
        )

    # --- the status branch as a user sees it -------------------------------------------------------------------------
    def status_head(self) -> str | None:
        done = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{STATUS_BRANCH}"],
            cwd=self.bare,
            env=git_env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        return done.stdout.decode().strip() or None

    def env_status(self, env: str, head: str) -> Mapping[str, Any] | None:
        done = subprocess.run(
            ["git", "show", f"{head}:environments/{env}.yaml"],
            cwd=self.bare,
            env=git_env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode:
            return None
        doc = yaml.load(done.stdout, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        return doc if isinstance(doc, dict) else None
