"""``reconciler demo``: the embedded default, with no other setup.

Seeds ``DIR/releases.git`` (a bare repo) from ``examples/releases-repo`` if it does not exist yet, with a commit
signed by the demo's own "ops" SSH key (``DIR/keys``: protected stages apply only signed changes), writes
``DIR/controller.yaml`` mapping every target to a ``local`` directory under ``DIR/targets`` except the AIX
targets of the lille branch, which go through the example legacy agent (``examples/targets/aix-agent``, a
``script`` target), then runs the controller on it with the HTTP server (dashboard, API, ``/metrics``) on
``--listen``; the banner prints their URLs once bound. Push to ``DIR/releases.git`` and watch the change roll out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from reconciler.commands.common import ConfigError, fail, load_config
from reconciler.core.problems import ReconcilerError
from reconciler.observability import logging as logs

# what the demo needs, found as package data: in a checkout these are symlinks to examples/, in a wheel files
BUNDLED = Path(str(resources.files("reconciler"))) / "bundled"
EXAMPLE_REPO = BUNDLED / "releases-repo"
AGENT = BUNDLED / "aix-agent"
DEMO_AGE_IDENTITY = BUNDLED / "demo-age-identity.txt"  # public, demo only: decrypts the example's SOPS files
DEMO_AUTHOR = {
    "GIT_AUTHOR_NAME": "Demo Developer",
    "GIT_AUTHOR_EMAIL": "dev@example.org",
    "GIT_COMMITTER_NAME": "Demo Developer",
    "GIT_COMMITTER_EMAIL": "dev@example.org",
}


def _git(*args: str, cwd: Path | None = None) -> None:
    env = {**os.environ, **DEMO_AUTHOR, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, timeout=120)


def signing_key(state: Path) -> tuple[Path, Path] | None:
    """The demo's SSH signing key and allowed-signers file (created once), standing for the ops team's keys."""
    keys = state / "keys"
    key, allowed = keys / "ops-signing-key", keys / "allowed_signers"
    if not key.exists():
        if shutil.which("ssh-keygen") is None:
            return None
        keys.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@example.org", "-f", str(key)],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        public = (keys / "ops-signing-key.pub").read_text().split()
        allowed.write_text(f'ops@example.org namespaces="git" {public[0]} {public[1]}\n')
    return key, allowed


def seed_repository(bare: Path, key: Path | None) -> bool:
    """Create ``bare`` from the example repo (a signed commit, when a key is given); False when it exists."""
    if bare.exists():
        return False
    if not EXAMPLE_REPO.is_dir():
        raise FileNotFoundError(f"{EXAMPLE_REPO} not found: the installation lacks the demo's example fleet")
    bare.parent.mkdir(parents=True, exist_ok=True)
    _git("init", "-q", "--bare", "-b", "main", str(bare))
    with tempfile.TemporaryDirectory(prefix="reconciler-seed-") as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(EXAMPLE_REPO, work)
        _git("init", "-q", "-b", "main", cwd=work)
        _git("add", "-A", cwd=work)
        sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "-c", "commit.gpgsign=true"] if key else []
        _git(*sign, "commit", "-q", "-m", "Example fleet: 60 applications, 235 environments", cwd=work)
        _git("push", "-q", str(bare), "main", cwd=work)
    return True


def write_config(state: Path, listen: str, allowed_signers: Path | None = None) -> Path:
    config = {
        "apiVersion": "reconciler.io/v1",
        "kind": "ControllerConfig",
        "source": {"url": str(state / "releases.git"), "branch": "main", "interval": "5s", "timeout": "60s"},
        "status": {
            "branch": "reconciler-status",
            "authorName": "reconciler demo",
            "authorEmail": "reconciler@localhost",
        },
        "stateDir": str(state / "controller"),
        "concurrency": 4,
        "applyTimeout": "300s",
        "driftCheckInterval": "60s",
        "backoff": {"initial": "5s", "max": "2m"},
        "listen": listen,
        "api": {"auth": "none"},  # the demo listens on loopback: anyone there may press the buttons
        "secrets": {"ageIdentity": f"file:{DEMO_AGE_IDENTITY}"},
        **({"allowedSigners": str(allowed_signers)} if allowed_signers else {}),
        "targets": {},
        "targetPatterns": [
            {
                "match": "aix-lille-*",
                "driver": "script",
                "timeout": "30s",
                "command": [sys.executable, str(AGENT), "--root", str(state / "targets" / "${target}")],
            },
            {"match": "*", "driver": "local", "path": str(state / "targets" / "${target}")},
        ],
    }
    path = state / "controller.yaml"
    path.write_text(
        "# Written by `reconciler demo` and rewritten at each start: edits here do not last; to run the controller\n"
        "# with your own settings, copy this file and use `reconciler run --config <copy>`.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def run_demo(args: argparse.Namespace) -> int:
    from reconciler.commands.run import build_controller, http_server, run_controller
    from reconciler.engine.controller import Controller
    from reconciler.http.server import HttpServer
    from reconciler.observability.metrics import PrometheusMetrics

    state = Path(args.state_dir).resolve()
    try:
        keys = signing_key(state)
        seeded = seed_repository(state / "releases.git", keys[0] if keys else None)
    except (OSError, subprocess.SubprocessError) as exc:
        return fail(f"cannot seed the demo repository: {exc}")
    try:
        config = load_config(str(write_config(state, args.listen, keys[1] if keys else None)))
    except ConfigError as exc:
        return fail(str(exc))
    logs.configure(level=args.log_level)
    print(
        f"reconciler demo\n"
        f"  releases repo : {state / 'releases.git'}{' (seeded from examples/releases-repo)' if seeded else ''}\n"
        f"  config        : {config.path}\n"
        f"  targets       : {state / 'targets'}\n"
        f"  status        : branch {config.status_branch} of the releases repo "
        f"(reconciler status --config {config.path})\n"
        f"  try           : git clone {state / 'releases.git'} work && edit work/stages/dev.yaml, commit, push\n"
        f"  sign          : protected stages (preproduction, production) need commits signed by an allowed key:\n"
        f"                  git -c gpg.format=ssh -c user.signingkey={state / 'keys' / 'ops-signing-key'} commit -S",
        flush=True,
    )
    metrics = PrometheusMetrics()
    try:
        controller = build_controller(config, progress=True, metrics=metrics)
    except ReconcilerError as exc:  # the audit journal in the state directory cannot be used
        return fail(str(exc))
    if args.once:
        return run_controller(controller, once=True)
    start = http_server(config, metrics)

    def serve(controller: Controller, wake: Any) -> HttpServer:
        server = start(controller, wake)
        print(f"  dashboard     : {server.url}/\n  metrics       : {server.url}/metrics", flush=True)
        return server

    return run_controller(controller, once=False, serve=serve)
