"""The running loop as a user drives it: a burst of signed webhook pushes through the real HTTP server costs a few
fetches, a source that keeps failing backs off (and a push still fetches at once), and ``/readyz`` turns 503 when
a running controller loses its source. Real git, the real server on an ephemeral port, the loop in a thread."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from reconciler.core.problems import PermanentError
from reconciler.http.server import UNREADY_AFTER_FAILURES
from tests.engine import Fleet
from tests.http import configure, github_headers, loop, payload, poll, served
from tests.http.test_webhooks import PUSH


class Counting:
    """The controller's real source, counting its fetches (and failing them on demand)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fetches = 0
        self.fail: Exception | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def fetch(self) -> str:
        self.fetches += 1
        if self.fail is not None:
            raise self.fail
        head: str = self.inner.fetch()
        return head


def test_a_burst_of_a_thousand_signed_pushes_costs_a_few_fetches(fleet: Fleet) -> None:
    """Finding 6: 1,000 signed webhook pushes in 1.4 s caused 32-38 fetches; bursts now coalesce."""
    configure(fleet, driftCheckInterval="1h")  # a cycle with nothing to do is quick: what a burst meets
    body = payload(PUSH)
    headers = github_headers(body)
    with served(fleet) as s:
        source = s.controller.source = Counting(s.controller.source)
        s.controller.revisions.source = source
        with loop(s.controller):
            assert poll(lambda: s.controller.cycles >= 1, "the first cycle")
            before, cycles = source.fetches, s.controller.cycles
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda _: s.post("/webhook", body, headers).status, range(1000)))
            assert statuses == [202] * 1000
            assert poll(lambda: s.controller.cycles > cycles and not s.controller.wake.is_set(), "the last cycle")
            fetched = source.fetches - before
        assert 1 <= fetched <= 3, f"{fetched} fetches for one burst"


def test_a_failing_source_backs_off_and_a_push_still_fetches_at_once(fleet: Fleet) -> None:
    """Finding 6: a source that fails authentication was fetched every poll interval without backoff."""
    source = {"url": str(fleet.upstream.bare), "branch": "main", "interval": "60s", "timeout": "30s"}
    fleet.write_config(source=source, backoff={"initial": "1s", "max": "10m"})
    with served(fleet) as s:
        controller = s.controller
        clock = [1000.0]
        controller.clock = lambda: clock[0]
        source = controller.source = Counting(controller.source)
        controller.revisions.source = source
        controller.cycle()
        source.fail = PermanentError("authentication failed for the releases repo")
        for _ in range(60):  # an hour of polls, one per interval
            clock[0] += 60
            report = controller.cycle()
            assert report.source_error == "authentication failed for the releases repo"
        polls_fetched = source.fetches - 1
        # 60 s, 2 min, 4 min, 8 min, then every 10 min: 9 fetches, not 60
        assert polls_fetched <= 10, f"{polls_fetched} fetches in an hour of failures"
        before = source.fetches
        controller.cycle("webhook")  # someone pushed: fetch now, whatever the backoff
        assert source.fetches == before + 1
        source.fail = None
        clock[0] += 1
        controller.cycle("webhook")
        assert controller.source_failures == 0 and controller.source_error is None


def test_readyz_turns_503_when_a_running_controller_loses_its_source(fleet: Fleet) -> None:
    configure(fleet, branch="main")
    with served(fleet) as s:
        source = s.controller.source = Counting(s.controller.source)
        s.controller.revisions.source = source
        with loop(s.controller):
            assert poll(lambda: s.get("/readyz").status == 200, "readiness")
            source.fail = PermanentError("authentication failed")
            for _ in range(UNREADY_AFTER_FAILURES):
                s.controller.cycle("manual")
            resp = s.get("/readyz")
            assert resp.status == 503 and "source failing" in resp.text and "authentication failed" in resp.text
            source.fail = None
            s.controller.cycle("manual")
            assert s.get("/readyz").status == 200


def test_snapshot_is_safe_while_environments_finish(fleet: Fleet) -> None:
    """Finding 6: snapshot() iterated deques that worker threads extend; it reads copies under a lock now."""
    with served(fleet) as s:
        errors: list[BaseException] = []
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                try:
                    s.controller.snapshot()
                except Exception as exc:  # noqa: BLE001 - what this test looks for
                    errors.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            for i in range(3):
                s.controller.last_drift_check = None
                fleet.edit("stages/dev.yaml", "ref: 3.10" if i % 2 == 0 else "ref: 3.0",
                           "ref: 3.0" if i % 2 == 0 else "ref: 3.10")  # fmt: skip
                s.controller.cycle()
        finally:
            done.set()
            reader.join(timeout=10)
        assert errors == []
        assert any(e["recentAudit"] for e in s.controller.snapshot()["environments"])


def test_the_debounce_waits_for_quiet_but_not_forever() -> None:
    from reconciler.engine.loop import Debounce

    wake, stop = threading.Event(), threading.Event()
    started = time.monotonic()
    Debounce(quiet=0.05, most=1.0).settle(wake, stop)
    assert time.monotonic() - started < 0.5  # a single push waits only the quiet time

    def keep_pushing() -> None:
        while not stop.is_set():
            wake.set()
            stop.wait(0.005)

    pusher = threading.Thread(target=keep_pushing, daemon=True)
    pusher.start()
    started = time.monotonic()
    Debounce(quiet=0.05, most=0.3).settle(wake, stop)
    waited = time.monotonic() - started
    stop.set()
    pusher.join()
    assert 0.25 <= waited < 2.0  # an endless stream is cut at ``most``


def test_a_push_to_an_idle_loop_starts_its_cycle_at_once(fleet: Fleet) -> None:
    """Commit-to-live: a push that finds the loop idle does not wait for the debounce's quiet time (the leading
    edge); pushes arriving during that cycle still coalesce into one more cycle."""
    from reconciler.engine.loop import Debounce

    configure(fleet, driftCheckInterval="1h")
    with served(fleet) as s:
        s.controller.debounce = Debounce(quiet=30.0, most=60.0)  # a trailing-only debounce would wait 30 s
        with loop(s.controller):
            assert poll(lambda: s.controller.cycles >= 1, "the first cycle")
            assert poll(lambda: s.controller.waiting, "the loop idle")
            cycles = s.controller.cycles
            started = time.monotonic()
            s.controller.trigger()
            assert poll(lambda: s.controller.cycles > cycles, "the pushed cycle", timeout=20)
            assert time.monotonic() - started < 20
