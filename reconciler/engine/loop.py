"""The controller's loop timing: bursts of triggers coalesce, and a failing source backs off.

:class:`Debounce` turns a burst of triggers (webhook pushes, manual requests) into few cycles: a trigger that
finds the loop idle starts a cycle at once (the leading edge: a single push waits for nothing); triggers that
arrive during a cycle start exactly one more cycle after it, once no new one came for ``quiet`` seconds (at most
``most`` seconds), so 1,000 pushes in a second cost a few fetches. :class:`SourceBackoff` spaces the fetches of
a source that keeps failing (authentication refused, remote down): exponentially from the poll interval to
``backoff.max``, at least as long as the error asked (``TemporaryError.delay``); a trigger fetches at once; a
success resets it. Used by :class:`reconciler.engine.controller.Controller`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from reconciler.core.problems import ReconcilerError, TemporaryError


@dataclass(frozen=True)
class Debounce:
    quiet: float = 0.05
    most: float = 1.0

    def settle(self, wake: threading.Event, stop: threading.Event, *, idle: bool = False) -> None:
        """Return once triggers stopped coming for ``quiet`` seconds (or ``most`` seconds passed, or a stop); at once
        when the trigger found the loop ``idle`` (none came during the last cycle): the leading edge of a burst."""
        if idle:
            return
        deadline = time.monotonic() + self.most
        while not stop.is_set():
            wake.clear()
            left = deadline - time.monotonic()
            if left <= 0 or not wake.wait(min(self.quiet, left)):
                return


@dataclass
class SourceBackoff:
    interval: float
    most: float
    failures: int = 0
    retry_at: float = 0.0

    def due(self, now: float, triggered: bool) -> bool:
        """Whether this cycle fetches: always when triggered, else once the backoff allows."""
        return triggered or now >= self.retry_at

    def failed(self, exc: ReconcilerError, now: float) -> float:
        """Note a failed fetch; returns the seconds until the next one (without a trigger)."""
        self.failures += 1
        delay: float = min(self.interval * 2 ** (self.failures - 1), max(self.most, self.interval))
        if isinstance(exc, TemporaryError):
            delay = max(delay, exc.delay)
        self.retry_at = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.retry_at = 0, 0.0
