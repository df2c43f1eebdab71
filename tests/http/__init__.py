"""Helpers for the HTTP tests: the real server on loopback over the ``fleet`` controller, a plain HTTP client,
forge signatures for the real webhook payloads in ``payloads/``, a controller loop in a thread, polling.

Used by every module of ``tests/http``. The server always runs in-process (threads) on 127.0.0.1 with port 0.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from reconciler.commands.common import load_config
from reconciler.commands.run import build_controller
from reconciler.engine.controller import Controller
from reconciler.http.server import HttpServer
from reconciler.observability.metrics import PrometheusMetrics
from tests.engine import AGENT, Fleet

PAYLOADS = Path(__file__).resolve().parent / "payloads"
SECRETS = {"githubSecret": "gh-hook-secret-1234", "gitlabToken": "gl-hook-token-5678", "giteaSecret": "gt-hook-9012"}
T = TypeVar("T")


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def github_headers(body: bytes, secret: str = SECRETS["githubSecret"], event: str = "push") -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": event, "X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


def gitlab_headers(token: str = SECRETS["gitlabToken"], event: str = "Push Hook") -> dict[str, str]:
    return {"X-Gitlab-Event": event, "X-Gitlab-Token": token, "Content-Type": "application/json"}


def gitea_headers(body: bytes, secret: str = SECRETS["giteaSecret"], forgejo: bool = False) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    name = "Forgejo" if forgejo else "Gitea"
    return {f"X-{name}-Event": "push", f"X-{name}-Signature": digest, "Content-Type": "application/json"}


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def request(
    url: str, path: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> Response:
    """One request with a fresh connection (the server speaks HTTP/1.0 and closes after each response)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def sample(exposition: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition (labels compared as a set), or None."""
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


def poll(probe: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """``probe()`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # polling interval, not synchronisation


def switchable_agent(fleet: Fleet) -> tuple[Path, Path]:
    """An AIX agent that works like the example one until its ``broken`` flag file exists, then fails."""
    flag = fleet.root / "broken"
    script = fleet.root / "switchable-agent"
    script.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        f"if os.path.exists({str(flag)!r}):\n    sys.stderr.write('agent exploded'); sys.exit(1)\n"
        f"os.execv(sys.executable, [sys.executable, {str(AGENT)!r}, *sys.argv[1:]])\n"
    )
    script.chmod(0o755)
    return script, flag


def configure(fleet: Fleet, branch: str = "master", **overrides: Any) -> None:
    """The fleet tracking ``branch`` (the real payloads push to ``master``), polling hourly, webhook secrets set."""
    if branch != "main":
        fleet.upstream.push(branch)
    source = {"url": str(fleet.upstream.bare), "branch": branch, "interval": "1h", "timeout": "30s"}
    fleet.write_config(**{"source": source, "webhooks": dict(SECRETS), **overrides})


@dataclass
class Served:
    fleet: Fleet
    controller: Controller
    server: HttpServer
    metrics: PrometheusMetrics

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str, **kw: Any) -> Response:
        return request(self.url, path, **kw)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> Response:
        return request(self.url, path, "POST", body, headers)


@contextmanager
def served(fleet: Fleet, **server_options: Any) -> Iterator[Served]:
    """A controller built from the fleet's config exactly as ``reconciler run`` builds it, served on loopback."""
    config = load_config(str(fleet.config))
    metrics = PrometheusMetrics()
    controller = build_controller(config, metrics=metrics)
    server = HttpServer(controller, "127.0.0.1:0", webhooks=config.webhooks, metrics=metrics, **server_options)
    server.start()
    try:
        yield Served(fleet, controller, server, metrics)
    finally:
        server.shutdown()
        controller.close()


@contextmanager
def loop(controller: Controller, wake: threading.Event | None = None) -> Iterator[threading.Event]:
    """``run_forever`` in a thread (marked running, as ``reconciler run`` does); stopped and joined on exit."""
    stop = threading.Event()

    def run() -> None:
        controller.loop_running = True  # type: ignore[attr-defined]
        try:
            controller.run_forever(stop, wake)
        finally:
            controller.loop_running = False  # type: ignore[attr-defined]

    thread = threading.Thread(target=run, name="test-controller-loop", daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        (wake or controller.wake).set()
        thread.join(timeout=120)
        assert not thread.is_alive(), "the controller loop did not stop"
