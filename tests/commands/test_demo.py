"""`reconciler demo --once` on the embedded example: 235 environments reconciled from a fresh state directory, and
a second run that finds nothing to do (no status commit). Slow: a full cold cycle over the fleet."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from reconciler.core.loader import load_repo
from reconciler.core.policy import freeze_hold
from reconciler.source.fstree import DirectoryTree
from tests.source import git

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "releases-repo"


def demo(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", "demo", "--once", "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "RECONCILER_DEBUG": ""})  # fmt: skip


PLAINTEXT = ("demo-db-password-action-sociale", "demo-db-password-capital-deces")


def check_secrets(state: Path, logs: str) -> None:
    """Issue 16: the example's two SOPS-encrypted files reach their targets in plaintext (a Kubernetes Secret on a
    k8s target, a credentials file through the script agent), and nothing else holds the plaintext: not the status
    branch (every commit), the audit trail, the logs, nor ``plan``."""
    secret = state / "targets" / "k8s-lille" / "lille-dev" / "action-sociale" / "api" / "db-secret.yaml"
    found = sorted(state.glob("targets/k8s-*/lille-dev/action-sociale/api/db-secret.yaml"))
    secret = found[0] if found else secret
    assert secret.is_file(), sorted(p.name for p in (state / "targets").iterdir())
    data = yaml.safe_load(secret.read_text())
    assert base64.b64decode(data["data"]["password"]).decode() == PLAINTEXT[0] and "sops" not in data
    credentials = sorted(state.glob("targets/aix-lille-*/lille-*/capital-deces/credentials/db-credentials.yaml"))
    assert credentials, "the script agent installed no credentials file"
    assert f"password: {PLAINTEXT[1]}" in credentials[0].read_text()
    assert credentials[0].stat().st_mode & 0o077 == 0  # readable by its owner only
    bare = state / "releases.git"
    status = git("log", "-p", "reconciler-status", cwd=bare)
    plan = subprocess.run([sys.executable, "-m", "reconciler", "plan", "--repo", str(bare), "--base", "main",
                           "--head", "main", "--format", "json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    encoded = [base64.b64encode(p.encode()).decode() for p in PLAINTEXT]
    for text in (status, logs, plan.stdout + plan.stderr):
        assert not [p for p in (*PLAINTEXT, *encoded) if p in text]


def check_fleet(state: Path) -> None:
    """Every one of the 235 environments of the demo at ``state`` is Synced at the head (or Blocked by a freeze
    window active now, everything else of it applied)."""
    bare = state / "releases.git"
    head = git("rev-parse", "main", cwd=bare)
    files = git("ls-tree", "--name-only", "reconciler-status", "environments/", cwd=bare).split()
    assert len(files) == 235
    repo = load_repo(DirectoryTree.scan(EXAMPLE)).repo
    assert repo is not None
    now = datetime.now(UTC)
    for path in files:
        doc = yaml.safe_load(git("show", f"reconciler-status:{path}", cwd=bare))
        env = repo.environments[doc["environment"]]
        frozen = [a for a in repo.desired_versions(env) if freeze_hold(repo, env, a, now)]
        if frozen:  # e.g. the monthly payroll freeze of paie-agents in production: held, everything else applied
            assert doc["phase"] == "Blocked" and "frozen until" in doc["message"], doc
            assert all(s["phase"] == "Synced" for a, s in doc["applications"].items() if a not in frozen)
        else:
            assert doc["phase"] == "Synced", doc
            assert doc["lastAppliedRevision"] == head


@pytest.mark.slow
def test_demo_once_reconciles_the_whole_example_fleet(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    first = demo(state)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "235 environments" in first.stdout and "Traceback" not in first.stderr
    check_fleet(state)
    check_secrets(state, first.stdout + first.stderr)
    bare = state / "releases.git"
    status_head = git("rev-parse", "reconciler-status", cwd=bare)
    second = demo(state)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "no status change" in second.stdout
    assert git("rev-parse", "reconciler-status", cwd=bare) == status_head
    promote_as_the_readme_says(state)


def promote_as_the_readme_says(state: Path) -> None:
    """Issue 18: the README's walk through a promotion in the demo works. Every stage was seeded at once, so a
    version change in production is held by the 72 h soak; a commit signed by the demo's ops key with a
    ``Promotion-Override`` trailer applies it."""
    work = state.parent / "work"
    git("clone", "-q", str(state / "releases.git"), str(work), cwd=state.parent)
    stage = work / "stages" / "production.yaml"
    stage.write_text(stage.read_text().replace("espace-assure: 2.3.0", "espace-assure: 2.3.1"))
    key = state / "keys" / "ops-signing-key"
    git("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-q", "-S", "-am",
        "espace-assure 2.3.1 to production", "-m", "Promotion-Override: demo, soaked elsewhere", cwd=work)  # fmt: skip
    git("push", "-q", "origin", "HEAD", cwd=work)
    third = demo(state)
    assert "Traceback" not in third.stderr, third.stderr
    doc = yaml.safe_load(
        git("show", "reconciler-status:environments/lille-production.yaml", cwd=state / "releases.git")
    )
    assert doc["applications"]["espace-assure"]["live"] == "2.3.1", doc["applications"]["espace-assure"]
