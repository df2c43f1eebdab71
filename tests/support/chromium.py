"""Headless Chromium driven over the DevTools protocol on a pipe, and a ``reconciler demo`` subprocess to point it at.

Shared by ``tests/http/test_dashboard_chromium.py`` and ``bench/dashboard_load.py``. No driver, no websocket,
nothing downloaded: ``--remote-debugging-pipe`` speaks NUL-terminated JSON on fds 3 (commands) and 4 (answers).
Chromium comes from the Debian package ``chromium`` (``./dev deps``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tests.http import poll as wait_for

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
DOM = "document.documentElement.outerHTML"
# when the page first painted content (ms since the navigation started; -1 if not within 20 s): the load event
# can come before the first frame is laid out and painted, so it alone says little about what the user sees
FCP = """new Promise(done => {
  setTimeout(() => done(-1), 20000);
  new PerformanceObserver(list => {
    for (const e of list.getEntries()) if (e.name === "first-contentful-paint") done(e.startTime);
  }).observe({type: "paint", buffered: true});
})"""
MISSING = "chromium not found: apt-get install chromium (./dev deps installs it)"


def _high(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Chromium:
    """Headless Chromium; DevTools protocol messages are NUL-terminated JSON on fds 3 (in) and 4 (out).

    ``extra_flags`` go on its command line (e.g. ``--force-renderer-accessibility``: the accessibility tree as a
    screen reader gets it). Raises :class:`FileNotFoundError` (message :data:`MISSING`) without a ``chromium``.
    """

    def __init__(self, profile: Path, extra_flags: Sequence[str] = ()) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            raise FileNotFoundError(MISSING)
        cmd_r, self._cmd = os.pipe()
        self._out, out_w = os.pipe()
        cmd_r, out_w = _high(cmd_r), _high(out_w)  # so that dup2 onto 3 and 4 cannot clobber one another
        profile.mkdir(parents=True, exist_ok=True)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--remote-debugging-pipe", "--window-size=1600,1000", f"--user-data-dir={profile}",
                 *extra_flags, "about:blank"]  # fmt: skip
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

    def load(
        self, url: str, expression: str = DOM, timeout: float = 120, inspect: Callable[[str], Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Open ``url`` in a new tab; ``expression`` evaluated after the load event and the first contentful paint,
        and timings (ms): the navigation timing entry's, ``firstContentfulPaint`` and the ``...Duration`` metrics.

        ``inspect``, if given, is called with the tab's session id before the tab closes (more DevTools calls);
        its result is in the timings under ``"inspect"``.
        """
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session)
        self.call("Performance.enable", session)
        self.call("Page.navigate", session, url=url)
        self._next(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session, timeout)
        fcp = self.call("Runtime.evaluate", session, expression=FCP, awaitPromise=True, returnByValue=True)["result"]
        both = f"[{expression}, JSON.stringify(performance.getEntriesByType('navigation')[0])]"
        value, nav = self.call("Runtime.evaluate", session, expression=both, returnByValue=True)["result"]["value"]
        timing: dict[str, Any] = {k: float(v) for k, v in json.loads(nav).items() if isinstance(v, int | float)}
        timing["firstContentfulPaint"] = float(fcp["value"])
        for metric in self.call("Performance.getMetrics", session)["metrics"]:
            if metric["name"].endswith("Duration"):
                timing[metric["name"]] = metric["value"] * 1000
        if inspect is not None:
            timing["inspect"] = inspect(session)
        self.call("Target.closeTarget", targetId=target)
        self._backlog = [m for m in self._backlog if m.get("sessionId") != session]  # the closed tab's events
        return value, timing

    def roles(self, session: str) -> Counter[str]:
        """How many nodes of each role the tab's accessibility tree has (for ``load(..., inspect=browser.roles)``)."""
        nodes = self.call("Accessibility.getFullAXTree", session)["nodes"]
        return Counter(n["role"]["value"] for n in nodes if not n.get("ignored") and "role" in n)

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


# --- the demo --------------------------------------------------------------------------------------------------------
def get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def phases(api: dict[str, Any]) -> dict[str, tuple[str, dict[str, str]]]:
    """Environment name -> (its phase, application -> phase), from ``/api/v1/environments``."""
    return {e["name"]: (e["phase"], {a: s["phase"] for a, s in e["applications"].items()}) for e in api["environments"]}


@contextlib.contextmanager
def demo(state_dir: Path, log: Path, settle: float = 300) -> Iterator[tuple[str, dict[str, Any]]]:
    """A ``reconciler demo`` subprocess on a free loopback port: (base URL, its ``/api/v1/environments``) once ready
    and every one of its 235 environments has a phase; stopped with SIGTERM on exit (SIGKILL after 120 s)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "reconciler", "demo", "--state-dir", str(state_dir), "--listen", base[7:]]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def settled() -> dict[str, Any] | None:
            assert proc.poll() is None, f"the demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            status, body = get(base + "/api/v1/environments")
            if status != 200:
                return None
            api: dict[str, Any] = json.loads(body)
            ready, why = get(base + "/readyz")
            assert ready == 200 or api["cycles"] < 2, f"/readyz after {api['cycles']} cycles: {ready} {why!r}"
            done = len(api["environments"]) == 235 and all(e["phase"] != "Unknown" for e in api["environments"])
            return api if ready == 200 and done else None

        yield base, wait_for(settled, "every environment of the demo to have a phase", settle)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
