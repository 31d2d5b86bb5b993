"""Time for the sandbox: the wall clock, or a manual one that tests move forward."""

from __future__ import annotations

import threading
import time


class Clock:
    """Wall-clock time in epoch seconds."""

    def now(self) -> float:
        return time.time()


class ManualClock(Clock):
    """A clock that only moves when told, so refresh timings and token expiry are deterministic."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
