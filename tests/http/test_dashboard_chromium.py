"""The dashboard in a real headless Chromium, driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: NUL-terminated JSON on fds 3 and 4; no driver, no websocket, nothing downloaded).

- hostile names, messages and versions (served by a local ``http.server`` over the render functions) execute
  nothing in the browser;
- the page of a real ``reconciler demo`` subprocess shows exactly the phases its ``/api/v1/environments`` reports,
  235 rows x 60 applications, with counts adding up; its size and Chromium's load timings are printed.

Both are ``slow``. Chromium comes from the Debian package ``chromium`` (``./dev deps``); the tests fail, not skip,
without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest

from reconciler.http.dashboard import PHASES, render_environment, render_index
from tests.http.test_dashboard import EVIL, ROOT, Page, small_snapshot

T = TypeVar("T")
DOM = "document.documentElement.outerHTML"


def wait_for(probe: Callable[[], T | None], what: str, timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)  # polling interval, not synchronisation


def _high(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Chromium:
    """Headless Chromium; DevTools protocol messages are NUL-terminated JSON on fds 3 (in) and 4 (out)."""

    def __init__(self, profile: Path) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.fail("chromium not found: apt-get install chromium (./dev deps installs it)", pytrace=False)
        cmd_r, self._cmd = os.pipe()
        self._out, out_w = os.pipe()
        cmd_r, out_w = _high(cmd_r), _high(out_w)  # so that dup2 onto 3 and 4 cannot clobber one another
        profile.mkdir(parents=True, exist_ok=True)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--remote-debugging-pipe", "--window-size=1600,1000", f"--user-data-dir={profile}", "about:blank"]  # fmt: skip
        log = str(profile / "chromium.log")
        actions = [(os.POSIX_SPAWN_DUP2, cmd_r, 3), (os.POSIX_SPAWN_DUP2, out_w, 4),
                   (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT, 0o600), (os.POSIX_SPAWN_DUP2, 1, 2)]  # fmt: skip
        self.pid = os.posix_spawn(binary, [binary, *flags], dict(os.environ), file_actions=actions, setsid=True)
        os.close(cmd_r)
        os.close(out_w)
        self._buffer = b""
        self._backlog: list[dict[str, Any]] = []
        self._id = 0

    def _next(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        for i, message in enumerate(self._backlog):
            if match(message):
                return self._backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if match(message):
                    return message
                self._backlog.append(message)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise AssertionError(f"chromium did not answer within {timeout}s")
            chunk = os.read(self._out, 1 << 20)
            if not chunk:
                raise AssertionError("chromium exited")
            self._buffer += chunk

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params: Any) -> Any:
        self._id += 1
        ident = self._id
        message = {"id": ident, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._cmd, json.dumps(message).encode() + b"\0")
        answer = self._next(lambda m: m.get("id") == ident, timeout)
        assert "error" not in answer, f"{method}: {answer['error']}"
        return answer["result"]

    def load(self, url: str, expression: str = DOM, timeout: float = 120) -> tuple[Any, dict[str, float]]:
        """Open ``url`` in a new tab; ``expression`` evaluated after the load event, and timings (ms)."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session)
        self.call("Performance.enable", session)
        self.call("Page.navigate", session, url=url)
        self._next(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session, timeout)
        both = f"[{expression}, JSON.stringify(performance.getEntriesByType('navigation')[0])]"
        value, nav = self.call("Runtime.evaluate", session, expression=both, returnByValue=True)["result"]["value"]
        timing = {k: float(v) for k, v in json.loads(nav).items() if isinstance(v, int | float)}
        for metric in self.call("Performance.getMetrics", session)["metrics"]:
            if metric["name"].endswith("Duration"):
                timing[metric["name"]] = metric["value"] * 1000
        self.call("Target.closeTarget", targetId=target)
        return value, timing

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close", timeout=10)
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.killpg(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._cmd)
        os.close(self._out)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        yield browser
    finally:
        browser.close()


@pytest.mark.slow
def test_hostile_content_executes_nothing_in_chromium(chromium: Chromium) -> None:
    snap = small_snapshot()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path.startswith("/environments/"):
                page = render_environment(snap, unquote(parts.path.removeprefix("/environments/")))
            else:
                page = render_index(snap, dict(parse_qsl(parts.query)))
            self.send_response(200 if page else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(page or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        probe = "[window.__pwned || 0, document.scripts.length, document.images.length, document.title]"
        for path in ("/", f"/environments/{quote(EVIL, safe='')}", "/environments/lille-dev", "/?app=portal"):
            assert chromium.load(base + path, probe)[0][:3] == [0, 1, 0], path
        header, rows = Page(chromium.load(base + "/")[0]).matrix()
        assert header[2] == EVIL and rows[3].attrs["data-env"] == EVIL
    finally:
        server.shutdown()
        server.server_close()


def get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def phases(api: dict[str, Any]) -> dict[str, tuple[str, dict[str, str]]]:
    return {e["name"]: (e["phase"], {a: s["phase"] for a, s in e["applications"].items()}) for e in api["environments"]}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_dashboard_in_chromium(tmp_path: Path, chromium: Chromium) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "demo.log"
    cmd = [sys.executable, "-m", "reconciler", "demo", "--state-dir", str(tmp_path / "demo"), "--listen", base[7:]]
    with log.open("wb") as out:
        demo = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def settled() -> dict[str, Any] | None:
            assert demo.poll() is None, f"the demo exited with {demo.returncode}:\n{log.read_text()[-3000:]}"
            status, body = get(base + "/api/v1/environments")
            if status != 200:
                return None
            api: dict[str, Any] = json.loads(body)
            ready, why = get(base + "/readyz")
            assert ready == 200 or api["cycles"] < 2, f"/readyz after {api['cycles']} cycles: {ready} {why!r}"
            done = len(api["environments"]) == 235 and all(e["phase"] != "Unknown" for e in api["environments"])
            return api if ready == 200 and done else None

        wait_for(settled, "every environment of the demo to have a phase", 300)

        def consistent(path: str, api_path: str) -> tuple[str, dict[str, Any], dict[str, float]] | None:
            before = json.loads(get(base + api_path)[1])
            dom, timing = chromium.load(base + path)
            after = json.loads(get(base + api_path)[1])
            if "environments" in before:
                stable = phases(before) == phases(after)
            else:
                stable = (before["phase"], before["applications"]) == (after["phase"], after["applications"])
            return (dom, after, timing) if stable else None  # else a cycle changed phases meanwhile: again

        dom, api, timing = wait_for(lambda: consistent("/", "/api/v1/environments"), "a stable page", 120)
        header, rows = Page(dom).matrix()
        assert header == api["applications"] and len(header) == 60 and len(rows) == 235
        expected = phases(api)
        for row in rows:
            env_phase, app_phases = expected[row.attrs["data-env"]]
            assert row.attrs["data-phase"] == env_phase
            cells = {a["data-app"]: a["data-phase"] for a, _ in row.cells[1:] if "data-app" in a}
            assert cells == app_phases, row.attrs["data-env"]
        counts = Page(dom).counts
        assert sum(counts.values()) == 235
        assert counts == {p: sum(1 for e, _ in expected.values() if e == p) for p in PHASES}
        page = get(base + "/")[1]
        print(
            f"\ndemo dashboard 235x60: {len(page)} bytes ({len(gzip.compress(page))} gzipped); Chromium: response end "
            f"{timing['responseEnd']:.0f} ms, "
            f"DOMContentLoaded {timing['domContentLoadedEventEnd']:.0f} ms, load {timing['loadEventEnd']:.0f} ms "
            f"(layout {timing['LayoutDuration']:.0f} ms, style {timing['RecalcStyleDuration']:.0f} ms, "
            f"script {timing['ScriptDuration']:.0f} ms)"
        )

        name = next(e["name"] for e in api["environments"] if e["applications"])
        path, api_path = f"/environments/{quote(name, safe='')}", f"/api/v1/environments/{quote(name, safe='')}"
        dom, env, _ = wait_for(lambda: consistent(path, api_path), "a stable environment page", 120)
        page = Page(dom)
        rows = page.tables["applications"][1:]
        seen = {r.attrs["data-app"]: (r.text(1), r.text(2), r.attrs["data-phase"]) for r in rows}
        assert seen == {a: (s["desired"] or "—", s["live"] or "—", s["phase"]) for a, s in env["applications"].items()}
        assert name in page.text and env["stage"] in page.text
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
