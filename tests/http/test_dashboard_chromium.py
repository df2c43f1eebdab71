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

import base64
import gzip
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest

from reconciler.http.dashboard import CELL_CHARS, PHASES, render_environment, render_index
from tests.engine import Fleet
from tests.http.test_dashboard import EVIL, Page, small_snapshot
from tests.support.chromium import ROOT, Chromium, demo, get, phases, wait_for


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    try:
        browser = Chromium(tmp_path / "chromium-profile")
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
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
        dom, timing = chromium.load(base + "/", inspect=chromium.roles)
        header, rows = Page(dom).matrix()
        assert header[2] == EVIL and rows[1].attrs["data-env"] == EVIL
        found = [timing["inspect"][r] for r in ("table", "row", "columnheader", "rowheader", "cell")]
        assert found == [1, 6, 4, 5, 15]  # the matrix is a table for assistive technologies: 1 + 5 rows, 1 + 3 columns
        layout = chromium.load(base + "/", LAYOUT)[0]  # a Blocked cell stands out, its reason on hover (as text)
        assert layout["hover"] == f"{EVIL}: desired {EVIL}, nothing live yet — Blocked: {EVIL}", layout
        assert layout["bg"] == "rgb(91, 46, 166)" and layout["groups"] == ["dev", "dev", "recette", "production"]
    finally:
        server.shutdown()
        server.server_close()


def shown(status: dict[str, Any]) -> str:
    """The text of a matrix cell: the live version, else the desired one, cut to CELL_CHARS characters."""
    version = str(status["live"] if status["live"] is not None else status["desired"] or "")
    return version if len(version) <= CELL_CHARS else version[: CELL_CHARS - 1] + "…"


def shown_state(api: dict[str, Any]) -> Any:
    """What the matrix shows of ``/api/v1/environments``: phases and cell texts."""
    return phases(api), {e["name"]: {a: shown(s) for a, s in e["applications"].items()} for e in api["environments"]}


ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts")
LAYOUT = """(() => {
  const m = document.getElementById('matrix'), box = m.getBoundingClientRect();
  const groups = [...m.querySelectorAll(':scope > .sg')].map(g => g.dataset.stage);
  const bad = m.querySelector('[role=cell][data-r]');
  let hover = null;
  if (bad) { bad.dispatchEvent(new MouseEvent('mouseover', {bubbles: true})); hover = bad.title; }
  return {right: box.right, width: innerWidth, compact: m.classList.contains('c'), groups, hover,
          bg: bad ? getComputedStyle(bad).backgroundColor : null};
})()"""


def screenshot(chromium: Chromium, session: str, name: str) -> Path:
    """A PNG of the tab's viewport (1600 x 1000) in the test artifacts (``TEST_ARTIFACTS``, else build/)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(base64.b64decode(chromium.call("Page.captureScreenshot", session, format="png")["data"]))
    return path


def check_layout_at_1600_px(chromium: Chromium, base: str, api: dict[str, Any]) -> None:
    """Issue 15: at 1600 px the 60 columns fit, rows are grouped by stage in promotion order, a cell that needs
    someone stands out (saturated) with its reason on hover; the stage view shows every application. Screenshots of
    the matrix, the stage view and an environment page go to the test artifacts."""
    found, timing = chromium.load(base + "/", LAYOUT, inspect=lambda s: screenshot(chromium, s, "dashboard-matrix.png"))
    assert found["compact"] and found["right"] <= found["width"], found  # all 60 columns on screen
    stages = [s["name"] for s in api["stages"]]
    assert stages == ["dev", "integration", "recette", "preproduction", "production"], stages
    seen = list(dict.fromkeys(found["groups"]))
    assert seen == [s for s in stages if s in seen], seen  # groups follow the promotion order
    if found["hover"] is not None:  # the demo has Blocked/Failed cells when the example fleet says so
        assert " — " in found["hover"] and found["bg"] != "rgb(250, 250, 250)", found
    assert timing["inspect"].stat().st_size > 10_000
    rows, _ = chromium.load(base + "/stages", "document.querySelectorAll('#stages tbody tr').length",
                            inspect=lambda s: screenshot(chromium, s, "dashboard-stages.png"))  # fmt: skip
    assert rows == len(api["applications"])
    blocked = next((e["name"] for e in api["environments"] if e["phase"] in ("Blocked", "Failed")), None)
    name = blocked or api["environments"][0]["name"]
    chromium.load(f"{base}/environments/{quote(name, safe='')}", "0",
                  inspect=lambda s: screenshot(chromium, s, "dashboard-environment.png"))  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_dashboard_in_chromium(tmp_path: Path, chromium: Chromium) -> None:
    with demo(tmp_path / "demo", tmp_path / "demo.log") as (base, _):

        def consistent(path: str, api_path: str) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
            before = json.loads(get(base + api_path)[1])
            dom, timing = chromium.load(base + path)
            after = json.loads(get(base + api_path)[1])
            if "environments" in before:
                stable = shown_state(before) == shown_state(after)
            else:
                stable = (before["phase"], before["applications"]) == (after["phase"], after["applications"])
            return (dom, after, timing) if stable else None  # else a cycle changed phases meanwhile: again

        dom, api, timing = wait_for(lambda: consistent("/", "/api/v1/environments"), "a stable page", 120)
        page = Page(dom)
        header, rows = page.matrix()
        assert header == api["applications"] and len(header) == 60 and len(rows) == 235
        expected, versions = shown_state(api)
        for row in rows:
            env_phase, app_phases = expected[row.attrs["data-env"]]
            assert row.attrs["data-phase"] == env_phase
            cells = page.cells(row)
            assert {a: phase for a, (phase, _) in cells.items()} == app_phases, row.attrs["data-env"]
            assert {a: text for a, (_, text) in cells.items()} == versions[row.attrs["data-env"]]
        counts = page.counts
        assert sum(counts.values()) == 235
        assert counts == {p: sum(1 for e, _ in expected.values() if e == p) for p in PHASES}
        raw = get(base + "/")[1]
        print(
            f"\ndemo dashboard 235x60: {len(raw)} bytes ({len(gzip.compress(raw))} gzipped); Chromium: response end "
            f"{timing['responseEnd']:.0f} ms, DOMContentLoaded {timing['domContentLoadedEventEnd']:.0f} ms, "
            f"load {timing['loadEventEnd']:.0f} ms, first contentful paint {timing['firstContentfulPaint']:.0f} ms "
            f"(layout {timing['LayoutDuration']:.0f} ms, style {timing['RecalcStyleDuration']:.0f} ms, "
            f"script {timing['ScriptDuration']:.0f} ms)"
        )

        # rows far from the viewport are not rendered (content-visibility: auto), yet a screen reader gets them all
        screen_reader = Chromium(tmp_path / "chromium-a11y", ["--force-renderer-accessibility"])

        def roles(session: str) -> Counter[str]:  # once the rows hidden for the first paint are shown (class "l")
            shown = "new Promise(done => { const again = () => document.querySelector('#matrix > .l') ? "
            shown += "setTimeout(again, 50) : done(); again(); })"
            screen_reader.call("Runtime.evaluate", session, expression=shown, awaitPromise=True)
            return screen_reader.roles(session)

        try:
            found = screen_reader.load(base + "/", "0", inspect=roles)[1]["inspect"]
        finally:
            screen_reader.close()
        assert (found["table"], found["row"], found["columnheader"], found["rowheader"]) == (1, 236, 61, 235)
        assert found["cell"] == 235 * 60

        check_layout_at_1600_px(chromium, base, api)

        name = next(e["name"] for e in api["environments"] if e["applications"])
        path, api_path = f"/environments/{quote(name, safe='')}", f"/api/v1/environments/{quote(name, safe='')}"
        dom, env, _ = wait_for(lambda: consistent(path, api_path), "a stable environment page", 120)
        page = Page(dom)
        seen = {
            r.attrs["data-app"]: (r.text(1), r.text(2), r.attrs["data-phase"]) for r in page.tables["applications"][1:]
        }
        assert seen == {a: (s["desired"] or "—", s["live"] or "—", s["phase"]) for a, s in env["applications"].items()}
        assert name in page.text and env["stage"] in page.text


@pytest.mark.slow
def test_the_environment_page_buttons_act_through_the_api(chromium: Chromium, fleet: Fleet) -> None:
    """Issue 15: the dashboard's sync / suspend / resume buttons, clicked in Chromium against a real controller
    (``api.auth: none``, as in the demo): recorded and audited, shown on the page; a suspend without a reason is
    refused in the page, and a token-protected controller refuses the anonymous click (401 shown)."""
    from tests.http import configure, served

    configure(fleet, branch="main", api={"auth": "none"})
    click = """(async (act, reason) => {
      document.getElementById('reason').value = reason;
      const out = document.getElementById('act-result');
      out.textContent = ''; delete out.dataset.status;
      document.querySelector('button[data-act="' + act + '"]').click();
      for (let i = 0; i < 200 && !out.textContent; i++) await new Promise(r => setTimeout(r, 50));
      return [out.textContent, out.dataset.status || null];
    })"""

    def press(url: str, act: str, reason: str) -> list[Any]:
        def run(session: str) -> Any:
            expression = f"{click}({json.dumps(act)}, {json.dumps(reason)})"
            found = chromium.call("Runtime.evaluate", session, expression=expression, awaitPromise=True,
                                  returnByValue=True)  # fmt: skip
            return found["result"]["value"]

        _, timing = chromium.load(url, "0", inspect=run)
        return list(timing["inspect"])

    with served(fleet) as s:
        s.controller.cycle()
        page = s.url + "/environments/lille-dev"
        assert press(page, "suspend", "") == ["a reason is required to suspend", None]
        assert press(page, "suspend", "incident 4711") == ["accepted: suspend by anonymous", "202"]
        s.controller.cycle()
        assert "suspended by anonymous" in chromium.load(page, "document.getElementById('message').textContent")[0]
        assert press(page, "resume", "") == ["accepted: resume by anonymous", "202"]
        assert press(page, "sync", "") == ["accepted: sync by anonymous", "202"]
    assert [e["action"] for e in fleet.audit() if e["trigger"] == "manual"] == ["suspend", "resume", "sync"]
    configure(fleet, branch="main")  # the default for `run`: acting needs an operator token
    with served(fleet) as s:
        s.controller.cycle()
        status = press(s.url + "/environments/lille-dev", "sync", "")
        assert status[1] == "401" and "a bearer token is required" in status[0]
