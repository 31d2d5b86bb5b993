"""Call statistics: thread-safe counters shared by the clients of one run.

Every logical API operation, every request sent, every retry and the time waited before it,
every 429 seen, every operation that ended in an error and every attempt held back by a shared
throttling pause is counted into one :class:`CallStats` (the retry loop,
:class:`~remediation.clients.retry.Retrier`, and the pipeline,
:class:`~remediation.clients.http.HttpPipeline`, do the counting); the healer reads
:class:`StatsSnapshot` differences for its telemetry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["CallStats", "StatsSnapshot"]

_STAT_FIELDS = (
    "calls",
    "attempts",
    "retries",
    "throttled",
    "failures",
    "wait_seconds",
    "paused",
    "pause_seconds",
)


@dataclass(frozen=True)
class StatsSnapshot:
    """Counters at one moment. ``attempts``: requests sent (first tries and retries)."""

    calls: int = 0
    attempts: int = 0
    retries: int = 0
    throttled: int = 0
    failures: int = 0
    wait_seconds: float = 0.0
    paused: int = 0
    pause_seconds: float = 0.0

    def __sub__(self, other: StatsSnapshot) -> StatsSnapshot:
        values: dict[str, Any] = {name: getattr(self, name) - getattr(other, name) for name in _STAT_FIELDS}
        return StatsSnapshot(**values)


class CallStats:
    """Thread-safe counters shared by the clients of one run, read by the healer for telemetry.

    ``calls``: logical API operations; ``attempts``: requests sent; ``retries``: attempts after the
    first; ``throttled``: 429 answers seen; ``failures``: operations that ended in an error;
    ``wait_seconds``: total time slept before retries; ``paused`` / ``pause_seconds``: attempts held
    back by a pause another call's 429 started (see
    :class:`~remediation.clients.limiter.AdaptiveLimiter`), and the time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snap = StatsSnapshot()

    def _bump(self, **delta: float) -> None:
        with self._lock:
            current = self._snap
            values: dict[str, Any] = {
                name: getattr(current, name) + delta.get(name, 0) for name in _STAT_FIELDS
            }
            self._snap = StatsSnapshot(**values)

    def record_call(self) -> None:
        self._bump(calls=1)

    def record_attempt(self) -> None:
        self._bump(attempts=1)

    def record_throttled(self) -> None:
        self._bump(throttled=1)

    def record_retry(self, wait_seconds: float) -> None:
        self._bump(retries=1, wait_seconds=wait_seconds)

    def record_failure(self) -> None:
        self._bump(failures=1)

    def record_pause(self, seconds: float) -> None:
        self._bump(paused=1, pause_seconds=seconds)

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return self._snap

    def reset(self) -> StatsSnapshot:
        """Zero the counters and return what they were."""
        with self._lock:
            old, self._snap = self._snap, StatsSnapshot()
        return old

    # Convenience read-outs
    @property
    def calls(self) -> int:
        return self.snapshot().calls

    @property
    def attempts(self) -> int:
        return self.snapshot().attempts

    @property
    def retries(self) -> int:
        return self.snapshot().retries

    @property
    def throttled(self) -> int:
        return self.snapshot().throttled

    @property
    def wait_seconds(self) -> float:
        return self.snapshot().wait_seconds
