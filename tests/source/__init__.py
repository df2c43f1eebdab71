"""Real git repositories for tests: an upstream (bare remote + work clone), a ``git daemon`` serving git:// URLs.

Shared by tests/source (GitSource) and tests/status (StatusStore); test modules bind the fixtures with
``git_daemon = tests.source.git_daemon`` (and ``isolated_git``, which keeps user and system git config out).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

AUTHOR = {
    "GIT_AUTHOR_NAME": "Alice Dev",
    "GIT_AUTHOR_EMAIL": "alice@example.org",
    "GIT_AUTHOR_DATE": "2024-03-01T12:00:00+01:00",
    "GIT_COMMITTER_NAME": "Bob Ops",
    "GIT_COMMITTER_EMAIL": "bob@example.org",
    "GIT_COMMITTER_DATE": "2024-03-01T13:30:00+01:00",
}


@pytest.fixture(autouse=True)
def isolated_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user or system git config leaks into the tests (product code included)."""
    config = tmp_path_factory.mktemp("gitconfig") / "config"
    config.write_text("[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def git(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **AUTHOR, **(env or {})}, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


@dataclass(frozen=True)
class Link:
    target: str


class Upstream:
    """A bare remote plus a work clone to commit and push from."""

    def __init__(self, root: Path, name: str = "releases.git") -> None:
        self.bare = root / name
        self.work = root / f"work-{name}"
        git("init", "--bare", "--quiet", str(self.bare), cwd=root)
        git("clone", "--quiet", str(self.bare), str(self.work), cwd=root)

    def commit(
        self, files: Mapping[str, bytes | Link | None], message: str = "change", env: Mapping[str, str] | None = None
    ) -> str:
        for path, content in files.items():
            target = self.work / path
            if target.is_symlink() or target.is_file():
                target.unlink()
            if content is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Link):
                target.symlink_to(content.target)
            else:
                target.write_bytes(content)
        git("add", "-A", cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work, env=env)
        return self.head()

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.work)

    def push(self, branch: str = "main", force: bool = False) -> None:
        git("push", "--quiet", *(["--force"] if force else []), "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)

    def remote_sha(self, branch: str) -> str:
        return git("rev-parse", f"refs/heads/{branch}", cwd=self.bare)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)  # polling interval of a readiness check, not synchronisation by sleeping
    return False


@dataclass(frozen=True)
class Daemon:
    base: Path
    port: int

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def git_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("daemon")
    for _ in range(5):  # another process may grab the free port before the daemon binds it
        port = free_port()
        argv = ["git", "daemon", "--export-all", f"--base-path={base}", "--reuseaddr", "--listen=127.0.0.1",
                f"--port={port}", "--enable=receive-pack", "--informative-errors", str(base)]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if wait_for_port(port, proc, time.monotonic() + 10):
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail("git daemon did not start")
    try:
        yield Daemon(base, port)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
