"""The worker pool: environments reconciled concurrently under a bound, and reconciles that run past their time.

:meth:`Workers.run` submits one reconcile per job and collects outcomes as they finish (through a completion
queue: waiting on the whole pending set after every completion would be quadratic over a cycle). An environment
taking longer than ``applyTimeout`` is reported Failed (transient) and skipped until its worker returns; what it
applied then still reaches the audit trail through ``take`` (:meth:`Workers.take_late`), before the environment
runs again. A reconcile that raises is an internal error of that environment only. Owned by the controller.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait

from reconciler.core.plan import Phase
from reconciler.engine.outcome import EnvOutcome
from reconciler.engine.reconcile import Job
from reconciler.observability.logging import get_logger

Take = Callable[[EnvOutcome], EnvOutcome]  # the controller takes an outcome's audit entries as it finishes


class Workers:
    def __init__(self, concurrency: int, apply_timeout: float, clock: Callable[[], float],
                 progress: Callable[[int, int], None] | None = None) -> None:  # fmt: skip
        self.apply_timeout = apply_timeout
        self.clock = clock
        self.progress = progress
        self.log = get_logger(component="controller")
        self.overdue: dict[str, Future[EnvOutcome]] = {}  # reported timed out, until take_late takes them
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="env")

    def run(self, jobs: list[Job], work: Callable[[Job], EnvOutcome], take: Take,
            stop: threading.Event | None) -> dict[str, EnvOutcome]:  # fmt: skip
        outcomes: dict[str, EnvOutcome] = {}
        started: dict[str, float] = {}

        def timed(job: Job) -> EnvOutcome:
            started[job.env.name] = self.clock()
            return work(job)

        finished: queue.SimpleQueue[Future[EnvOutcome]] = queue.SimpleQueue()
        futures: dict[Future[EnvOutcome], Job] = {}
        for job in jobs:
            future = self._executor.submit(timed, job)
            futures[future] = job
            future.add_done_callback(finished.put)
        pending = set(futures)
        done_count = 0
        checked = self.clock()
        while pending:
            done: list[Future[EnvOutcome]] = []
            with contextlib.suppress(queue.Empty):
                done.append(finished.get(timeout=0.5))
                while True:
                    done.append(finished.get_nowait())
            for future in done:
                if future not in pending:  # timed out or cancelled before: already reported
                    continue
                pending.discard(future)
                done_count += 1
                outcomes[futures[future].env.name] = self._result(futures[future], future, take)
            if self.progress and done:
                self.progress(done_count, len(futures))
            now = self.clock()
            if done and pending and now - checked < 0.5:
                continue
            checked = now
            self._expire(pending, futures, started, outcomes, stop, now)
        return outcomes

    def _result(self, job: Job, future: Future[EnvOutcome], take: Take) -> EnvOutcome:
        try:
            return take(future.result())
        except Exception as exc:
            self.log.exception("environment reconcile crashed", environment=job.env.name)
            message = f"internal error: {type(exc).__name__}: {exc}"
            return EnvOutcome(job.env.name, Phase.FAILED, message, {}, transient=True)

    def _expire(self, pending: set[Future[EnvOutcome]], futures: dict[Future[EnvOutcome], Job],
                started: dict[str, float], outcomes: dict[str, EnvOutcome], stop: threading.Event | None,
                now: float) -> None:  # fmt: skip
        """Cancel what has not started when asked to stop; report what runs past its timeout."""
        for future in list(pending):
            name = futures[future].env.name
            if stop is not None and stop.is_set() and future.cancel():
                pending.discard(future)
                continue
            began = started.get(name)
            if began is not None and now - began > self.apply_timeout:
                pending.discard(future)
                self.overdue[name] = future  # what it applies still goes to the audit trail (take_late)
                message = f"timed out after {self.apply_timeout:.0f}s; still running, skipped until it returns"
                outcomes[name] = EnvOutcome(name, Phase.FAILED, message, {}, transient=True)
                self.log.error("environment timed out", environment=name)

    def take_late(self, take: Take) -> None:
        """Reconciles that returned after their environment was reported timed out: what they applied joins the
        audit trail (and governance's history). Their environment runs again only after this, so nothing they did
        goes unrecorded and the trail stays in time order."""
        for name, future in list(self.overdue.items()):
            if not future.done():
                continue
            del self.overdue[name]
            if future.cancelled():
                continue
            try:
                outcome = take(future.result())
            except Exception:
                self.log.exception("environment reconcile crashed after its timeout", environment=name)
                continue
            self.log.warning("environment finished after its timeout", environment=name, phase=str(outcome.phase),
                             changes=outcome.changes, seconds=round(outcome.duration, 3))  # fmt: skip

    def running_late(self) -> list[str]:
        """Environments reported timed out whose reconcile has not returned yet."""
        return sorted(name for name, future in self.overdue.items() if not future.done())

    def wait_overdue(self, wait: float | None) -> None:
        if self.overdue:
            futures_wait(list(self.overdue.values()), timeout=wait)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
