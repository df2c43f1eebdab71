"""A real kube-apiserver + etcd on loopback for integration tests.

The heavy lifting is done by ``tools/kube-test-server`` (bash); this module
wraps it for pytest::

    # tests/conftest.py (owned by the lead)
    from tests.support.kube import kube_server  # noqa: F401  (fixture)
    from tests.support.kube import mark_kube_tests, register_kube_marker

    def pytest_configure(config):
        register_kube_marker(config)

    def pytest_collection_modifyitems(config, items):
        mark_kube_tests(items)

    # a test
    def test_apply(kube_server):
        client = make_client(kube_server.kubeconfig)

Tests that use ``kube_server`` get the ``kube`` marker (via
``mark_kube_tests``), so ``pytest -m kube`` / ``pytest -m "not kube"`` select
or deselect them.  If the apiserver binary has not been built, the fixture
FAILS (it does not skip) and says to run ``tools/kube-test-server install``.

One server is started per test session (per xdist worker); tests must use
their own namespaces.  There is no kube-controller-manager, so nothing
reconciles: no pods for Deployments, no garbage collection, and deleted
namespaces stay ``Terminating``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "tools" / "kube-test-server"
KUBE_MARKER = "kube"
FIXTURE_NAME = "kube_server"

# Generous: the script itself gives up after KUBE_TEST_SERVER_TIMEOUT (60 s).
_START_TIMEOUT_S = 120
_STOP_TIMEOUT_S = 60


@dataclass(frozen=True)
class KubeServer:
    """A running test API server (see ``tools/kube-test-server start``)."""

    state_dir: Path
    kubeconfig: Path  # context "reconciler-test", admin token, CA embedded
    server: str  # "https://127.0.0.1:PORT"
    token: str  # bearer token of user "admin" (group system:masters)
    ca_file: Path  # PEM CA that signed the serving certificate

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


def cache_dir() -> Path:
    env = os.environ.get("RECONCILER_KUBE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "reconciler-kube"


def apiserver_binary() -> Path:
    return cache_dir() / "bin" / "kube-apiserver"


def is_installed() -> bool:
    return os.access(apiserver_binary(), os.X_OK)


class KubeServerError(RuntimeError):
    pass


def _run(args: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(
            [str(SCRIPT), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise KubeServerError(f"{SCRIPT.name} {' '.join(args)} timed out after {timeout}s") from exc
    if proc.returncode != 0:
        raise KubeServerError(f"{SCRIPT.name} {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def start_kube_server(state_dir: Path, *, owner_pid: int | None = None) -> KubeServer:
    """Start etcd + kube-apiserver with all state in ``state_dir``; wait for /readyz.

    ``owner_pid``: the servers are stopped automatically once that process is
    gone (defaults to this process), so a killed test run leaks nothing.
    """
    if not is_installed():
        raise KubeServerError(_not_installed_message())
    state_dir = Path(state_dir).resolve()
    env = dict(os.environ)
    env["KUBE_TEST_SERVER_OWNER_PID"] = str(owner_pid if owner_pid is not None else os.getpid())
    env.setdefault("KUBE_TEST_SERVER_PYTHON", sys.executable)
    _run(["start", str(state_dir)], timeout=_START_TIMEOUT_S, env=env)
    return KubeServer(
        state_dir=state_dir,
        kubeconfig=state_dir / "kubeconfig",
        server=(state_dir / "server").read_text().strip(),
        token=(state_dir / "token").read_text().strip(),
        ca_file=state_dir / "pki" / "ca.crt",
    )


def stop_kube_server(state_dir: Path) -> None:
    _run(["stop", str(Path(state_dir).resolve())], timeout=_STOP_TIMEOUT_S)


@contextlib.contextmanager
def running_kube_server(state_dir: Path) -> Iterator[KubeServer]:
    """Context manager: start a server in ``state_dir``, stop it on exit."""
    server = start_kube_server(state_dir)
    try:
        yield server
    finally:
        stop_kube_server(state_dir)


def _not_installed_message() -> str:
    return (
        f"kube-apiserver test binary not found at {apiserver_binary()}.\n"
        f"Build it once (as root; ~12 min on 2 cores; needs the Debian apt mirror) with:\n"
        f"    tools/kube-test-server install\n"
        f"(set RECONCILER_KUBE_CACHE to use another cache dir; "
        f"deselect these tests with -m 'not {KUBE_MARKER}')"
    )


def kube_api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeServer]:
    """Generator behind the ``kube_server`` fixture (usable on its own too)."""
    if not is_installed():
        pytest.fail(_not_installed_message(), pytrace=False)
    state_dir = tmp_path_factory.mktemp("kube-api-server")
    try:
        server = start_kube_server(state_dir)
    except KubeServerError as exc:
        pytest.fail(f"could not start the test kube-apiserver:\n{exc}", pytrace=False)
    try:
        yield server
    finally:
        stop_kube_server(state_dir)


@pytest.fixture(scope="session", name=FIXTURE_NAME)
def kube_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeServer]:
    """Session-wide real kube-apiserver; see module docstring."""
    yield from kube_api_server(tmp_path_factory)


def register_kube_marker(config: pytest.Config) -> None:
    """Call from ``pytest_configure`` so ``--strict-markers`` accepts ``kube``."""
    config.addinivalue_line(
        "markers",
        f"{KUBE_MARKER}: needs the real test kube-apiserver (tools/kube-test-server install)",
    )


def mark_kube_tests(items: list[pytest.Item]) -> None:
    """Call from ``pytest_collection_modifyitems``: add the ``kube`` marker to
    every test that (directly or indirectly) uses the ``kube_server`` fixture."""
    for item in items:
        if FIXTURE_NAME in getattr(item, "fixturenames", ()):
            item.add_marker(KUBE_MARKER)
