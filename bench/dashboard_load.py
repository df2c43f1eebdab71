"""How fast the dashboard loads in headless Chromium: ``python -m bench.dashboard_load [--runs N] [--url URL |
--snapshot FILE] [--path PATH]``.

By default it starts ``reconciler demo`` (235 environments x 60 applications) in a temporary directory, waits
until every environment has a phase, loads ``PATH`` (default ``/``) N times (default 5), each in a new tab of one
headless Chromium (1600 x 1000) after a warm-up load, and prints the page's size (raw and gzipped), the load average
and the median, min and max of: response end, DOMContentLoaded and the load event (navigation timing, ms since the
navigation started); the first contentful paint (the page shows the matrix then: its first paint waits for the
whole page, so the load event may come before it); the time spent in layout, style and script
(``Performance.getMetrics``, up to a moment after that paint).

Then ``/api/v1/environments`` as a client fetches it: everything, light ``fields=`` and a page, bytes on the wire
(gzip accepted) and times, and a revalidation with the ETag (304).

``--url`` measures a dashboard that already runs (e.g. ``./dev demo``); ``--snapshot`` serves a saved
``/api/v1/environments`` document through the current :mod:`reconciler.http.dashboard` (gzipped, like the
controller), which is quick for trying changes to the page. Needs the Debian package ``chromium``; the Chromium
driver is ``tests/support/chromium.py``, shared with ``tests/http/test_dashboard_chromium.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from reconciler.http.dashboard import render_environment, render_index
from tests.support.chromium import Chromium, demo, get

FIGURES = (
    ("response end", "responseEnd"),
    ("DOMContentLoaded", "domContentLoadedEventEnd"),
    ("load", "loadEventEnd"),
    ("first paint", "firstContentfulPaint"),
    ("layout", "LayoutDuration"),
    ("style", "RecalcStyleDuration"),
    ("script", "ScriptDuration"),
)


@contextlib.contextmanager
def serve_snapshot(path: Path) -> Iterator[str]:
    """A local server of the dashboard pages over a saved snapshot; yields its base URL."""
    snapshot: dict[str, Any] = json.loads(path.read_text())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            page = None
            if parts.path.startswith("/environments/"):
                page = render_environment(snapshot, unquote(parts.path.removeprefix("/environments/")))
            elif parts.path == "/":
                page = render_index(snapshot, dict(parse_qsl(parts.query)))
            body = page or b"not found\n"
            zipped = "gzip" in self.headers.get("Accept-Encoding", "")
            if zipped:  # like reconciler.http.handler
                body = gzip.compress(body, compresslevel=5)
            self.send_response(200 if page else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if zipped:
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            with contextlib.suppress(ConnectionError):  # a tab closed early
                self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def measure(url: str, runs: int, work: Path) -> list[dict[str, Any]]:
    try:
        browser = Chromium(work / "chromium-profile")
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    try:
        browser.load(url, "0")  # warm-up: the browser's own start, caches of fonts and the like
        return [browser.load(url, "0")[1] for _ in range(runs)]
    finally:
        browser.close()


def report(url: str, timings: list[dict[str, Any]]) -> str:
    status, page = get(url)
    if status != 200:
        raise SystemExit(f"{url}: HTTP {status}")
    load = os.getloadavg()
    lines = [
        f"{url}: {len(page):,} bytes ({len(gzip.compress(page)):,} gzipped); "
        f"{len(timings)} loads in headless Chromium, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"{'':18} {'median':>8} {'min':>8} {'max':>8}  (ms)",
    ]
    for label, key in FIGURES:
        values = [t[key] for t in timings]
        lines.append(f"{label:18} {statistics.median(values):8.0f} {min(values):8.0f} {max(values):8.0f}")
    return "\n".join(lines)


API_QUERIES = ("", "?fields=name,stage,phase", "?fields=name,stage,phase,applications", "?fields=name,phase&limit=50")


def api_report(base: str, runs: int) -> str:
    """``/api/v1/environments`` as a client asks it (gzip accepted): bytes on the wire, the median time of ``runs``
    requests, and a revalidation with the answer's ETag (304)."""
    lines = [f"{'/api/v1/environments':44} {'bytes':>10} {'gzipped':>9} {'median ms':>10}"]
    for query in API_QUERIES:
        times, raw, zipped, tag = [], 0, 0, ""
        for _ in range(runs):
            started = time.perf_counter()
            with urllib.request.urlopen(urllib.request.Request(base + "/api/v1/environments" + query,
                                        headers={"Accept-Encoding": "gzip"}), timeout=60) as answer:  # fmt: skip
                body = answer.read()
                tag = answer.headers.get("ETag", "")
                encoded = answer.headers.get("Content-Encoding") == "gzip"
            times.append((time.perf_counter() - started) * 1000)
            zipped, raw = len(body), len(gzip.decompress(body)) if encoded else len(body)
        lines.append(f"{query or '(everything)':44} {raw:>10,} {zipped:>9,} {statistics.median(times):>10.1f}")
        if not query:
            request = urllib.request.Request(base + "/api/v1/environments", headers={"If-None-Match": tag})
            started = time.perf_counter()
            try:
                urllib.request.urlopen(request, timeout=60).read()
                status = 200
            except urllib.error.HTTPError as exc:
                status = exc.code
            lines.append(f"{'(everything, If-None-Match: its ETag)':44} {'HTTP ' + str(status):>10} {0:>9} "
                         f"{(time.perf_counter() - started) * 1000:>10.1f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="loads measured (after one warm-up load); default 5")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", help="base URL of a running dashboard instead of starting the demo")
    source.add_argument("--snapshot", type=Path, help="serve this saved /api/v1/environments JSON document")
    parser.add_argument("--path", default="/", help="page to load; default /")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dashboard-load-") as tmp:
        work = Path(tmp)
        with contextlib.ExitStack() as stack:
            if args.url:
                base = args.url.rstrip("/")
            elif args.snapshot:
                base = stack.enter_context(serve_snapshot(args.snapshot))
            else:
                print("starting reconciler demo and waiting for every environment to have a phase...", flush=True)
                base = stack.enter_context(demo(work / "demo", work / "demo.log"))[0]
            url = base + args.path
            print(report(url, measure(url, args.runs, work)))
            if not args.snapshot:
                print(api_report(base, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
