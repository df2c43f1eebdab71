"""The notification outbox: a bounded queue drained by one thread, so delivery never blocks or slows a cycle.

``Outbox.offer`` never waits: a full queue drops the message and counts it (``dropped``). The worker sends each
message to its sink; a :class:`DeliveryError` marked ``retry`` (5xx, 429, timeouts, refused connections) is tried
again after an exponential backoff with full jitter, or after the sink's ``Retry-After``, up to ``attempts``
times; one not marked ``retry`` (another 4xx) is given up at once. Given-up messages are counted as dead letters.
Delivery is at-most-once across restarts: the queue lives in memory, and what it holds when the process stops is
lost (counted nowhere); within a process it is at-least-once for a sink that applied a message but did not
answer. ``results`` counts outcomes per (sink, result) for ``reconciler_notifications_total``.

Created by the notifier (:mod:`reconciler.engine.notifications`), one per sink; tested with real receivers
(tests/notify/).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A sink could not deliver; ``retry``: it may work later (``delay``: when the receiver asked)."""

    def __init__(self, message: str, retry: bool, delay: float | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.delay = delay


class Sink(Protocol):
    name: str

    def send(self, payload: dict[str, Any]) -> None:
        """Deliver one message (raises :class:`DeliveryError`)."""
        ...


@dataclass(frozen=True)
class _Item:
    sink: Sink
    payload: dict[str, Any]


class Outbox:
    def __init__(
        self,
        capacity: int = 1000,
        attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        jitter: Callable[[float], float] = lambda top: random.uniform(0, top),
    ) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.jitter = jitter
        self.results: Counter[tuple[str, str]] = Counter()
        self._queue: queue.Queue[_Item | None] = queue.Queue(capacity)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="notify-outbox", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Messages refused by a full queue."""
        return sum(n for (_, result), n in self.results.items() if result == "dropped")

    @property
    def dead_letters(self) -> int:
        """Messages given up (a refusal, or every attempt failed)."""
        return sum(n for (_, result), n in self.results.items() if result == "failed")

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def offer(self, sink: Sink, payload: dict[str, Any]) -> bool:
        """Queue ``payload`` for ``sink`` without waiting; ``False`` (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(_Item(sink, payload))
            return True
        except queue.Full:
            self.results[(sink.name, "dropped")] += 1
            return False

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued was delivered or given up (tests, shutdown); ``False`` on timeout."""
        with self._queue.all_tasks_done:  # (the queue's own count of items not yet done: no race with offer)
            return self._queue.all_tasks_done.wait_for(lambda: self._queue.unfinished_tasks == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            try:
                if item is None:
                    break
                self._deliver(item)
            finally:
                self._queue.task_done()

    def _deliver(self, item: _Item) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                item.sink.send(item.payload)
            except DeliveryError as exc:
                if not exc.retry or attempt == self.attempts:
                    self.results[(item.sink.name, "failed")] += 1
                    log.warning("notification to %s given up after %d attempt(s): %s", item.sink.name, attempt, exc)
                    return
                self.results[(item.sink.name, "retried")] += 1
                top = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                if self._stop.wait(exc.delay if exc.delay is not None else self.jitter(top)):
                    return
            else:
                self.results[(item.sink.name, "sent")] += 1
                return
