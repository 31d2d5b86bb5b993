"""Failures on request: canned answers per route, rate limits, and a per-request latency.

:class:`Faults` queues canned failures per route, per service or for every route (429 with
``Retry-After``, 5xx, a dropped connection, an answer held back or trickled out a byte at a time),
before the handler runs or after it (the request was processed, its answer is lost); it limits
rates with token buckets and adds a latency for benchmarks. The server (:mod:`sandbox.server`)
asks it about every request.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sandbox.routing import Route


@dataclass
class Fault:
    """A canned failure of one request.

    Before processing (``after=False``, the default) the handler never runs: the answer is
    ``status`` (503 unless given) or, with ``drop``, no answer at all, ``delay`` seconds late.
    After processing (``after=True``) the handler has run -- the source tested the credential,
    Power BI stored or refused it -- and then the answer is lost: ``drop`` closes the connection,
    ``status`` replaces the real answer (a 5xx after the work was done), ``delay`` holds the real
    answer back (wall-clock seconds, so a client's read timeout fires) and ``hold`` blocks it until
    :meth:`Faults.release_held`. Without ``drop`` or ``status`` the real answer goes out in the end.
    ``trickle`` (seconds per byte, before or after processing) writes the answer -- status line,
    headers and body -- one byte at a time with that pause between bytes: each byte comes within
    a client's read timeout, so only a total deadline ends the wait.
    """

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without an answer
    delay: float = 0.0  # extra seconds before answering
    after: bool = False  # apply once the handler ran (the request was processed)
    hold: bool = False  # block the answer until released
    trickle: float = 0.0  # seconds between the bytes of the answer

    def describe(self) -> str:
        what = "drop" if self.drop else str(self.status) if self.status is not None else "answer"
        if self.hold:
            what = f"hold+{what}"
        if self.trickle:
            what = f"trickle+{what}"
        return f"after-{what}" if self.after else what


class _Held:
    """A request whose answer waits for :meth:`Faults.release_held`."""

    def __init__(self, route: Route) -> None:
        self.scopes = Faults._scopes(route)
        self.released = threading.Event()


@dataclass
class _Bucket:
    """A token bucket: ``rate`` tokens a second up to ``burst``; one token per request."""

    rate: float
    burst: float
    retry_after: int
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now

    def wait(self) -> int:
        """``Retry-After`` for a refused request: seconds until a token is there, rounded up."""
        return max(self.retry_after, math.ceil((1.0 - self.tokens) / self.rate))


class Faults:
    """Per-route queues of canned answers, rate limits, plus a per-request latency (seconds).

    A *scope* is a route name, a service name (``"powerbi"``) or ``"*"`` (every route).
    ``clock`` (monotonic seconds) drives the rate limits' token buckets.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, list[Fault]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._throttled: dict[str, int] = {}
        self._clock = clock
        self._held: list[_Held] = []
        self._held_changed = threading.Condition(self._lock)
        self.latency = 0.0
        self.hold_timeout = 300.0  # a held answer goes out by itself after this (wall seconds)

    def add(
        self,
        route: str,
        *,
        status: int | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        drop: bool = False,
        times: int = 1,
        delay: float = 0.0,
        after: bool = False,
        hold: bool = False,
        trickle: float = 0.0,
    ) -> None:
        """Queue ``times`` canned answers for ``route`` (a route name, a service name or ``"*"``).

        See :class:`Fault`. Before processing, ``status`` defaults to 503; after processing
        (``after=True``) it defaults to the handler's own answer.
        """
        if not after and status is None and not hold:
            status = 503
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if not (math.isfinite(trickle) and trickle >= 0):
            raise ValueError("trickle must be a finite number of seconds per byte >= 0")
        with self._lock:
            self._queues.setdefault(route, []).extend(
                Fault(status, body, dict(headers or {}), drop, delay, after, hold, trickle)
                for _ in range(times)
            )

    # -- held answers --------------------------------------------------------------------------
    def wait_held(self, route: str, timeout: float = 10.0) -> bool:
        """Wait until a request of ``route`` (name, service or ``"*"``) is being held; True if so."""
        with self._held_changed:
            return self._held_changed.wait_for(
                lambda: any(route in h.scopes for h in self._held), timeout=timeout
            )

    def held(self, route: str = "*") -> int:
        """How many answers of ``route`` are being held now."""
        with self._lock:
            return sum(1 for h in self._held if route in h.scopes)

    def release_held(self, route: str = "*") -> int:
        """Let the held answers of ``route`` go (answered, dropped or failed as queued); how many."""
        with self._lock:
            released = [h for h in self._held if route in h.scopes]
            for h in released:
                h.released.set()
                self._held.remove(h)
            self._held_changed.notify_all()
        return len(released)

    def hold_until_released(self, route: Route) -> None:
        """Block (the server thread answering a request of ``route``) until :meth:`release_held`."""
        held = _Held(route)
        with self._held_changed:
            self._held.append(held)
            self._held_changed.notify_all()
        held.released.wait(self.hold_timeout)
        with self._held_changed:
            if held in self._held:
                self._held.remove(held)
            self._held_changed.notify_all()

    def throttle(self, route: str, retry_after: int = 1, times: int = 1) -> None:
        """Queue 429 answers with ``Retry-After`` (seconds), as Power BI and Key Vault send."""
        self.add(route, status=429, headers={"Retry-After": str(retry_after)}, times=times)

    def rate_limit(
        self, scope: str, per_second: float, *, burst: int | None = None, retry_after: int = 1
    ) -> None:
        """Answer 429 to requests in ``scope`` above ``per_second`` (a token bucket, full at first).

        ``burst``: the bucket's size (default: one second's worth, at least 1). A refused request
        takes no token; its ``Retry-After`` is the time until a token is there, in whole seconds
        (rounded up), at least ``retry_after``. Replaces an earlier limit on the same scope.
        """
        if not (math.isfinite(per_second) and per_second > 0):
            raise ValueError("per_second must be a finite number > 0")
        size = float(burst) if burst is not None else max(1.0, float(math.ceil(per_second)))
        if size < 1:
            raise ValueError("burst must be at least 1")
        if retry_after < 1:
            raise ValueError("retry_after must be at least 1 second")
        with self._lock:
            self._buckets[scope] = _Bucket(per_second, size, retry_after, size, self._clock())

    def clear_rate_limits(self) -> None:
        """Remove every rate limit and zero the 429 counts."""
        with self._lock:
            self._buckets.clear()
            self._throttled.clear()

    def throttled(self, scope: str) -> int:
        """How many 429s the rate limit on ``scope`` has served."""
        with self._lock:
            return self._throttled.get(scope, 0)

    def admit(self, route: Route) -> int | None:
        """Take a token from every bucket ``route`` falls under; ``Retry-After`` seconds if refused.

        All or nothing: a refused request takes no token from any bucket.
        """
        with self._lock:
            buckets = [(key, self._buckets[key]) for key in self._scopes(route) if key in self._buckets]
            if not buckets:
                return None
            now = self._clock()
            for _key, bucket in buckets:
                bucket.refill(now)
            refused = [(key, bucket) for key, bucket in buckets if bucket.tokens < 1.0]
            if refused:
                for key, _bucket in refused:
                    self._throttled[key] = self._throttled.get(key, 0) + 1
                return max(bucket.wait() for _key, bucket in refused)
            for _key, bucket in buckets:
                bucket.tokens -= 1.0
            return None

    def take(self, route: Route) -> Fault | None:
        with self._lock:
            for key in self._scopes(route):
                queue = self._queues.get(key)
                if queue:
                    return queue.pop(0)
        return None

    def pending(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def clear(self) -> None:
        """Drop every queued fault that has not been served yet."""
        with self._lock:
            self._queues.clear()

    @staticmethod
    def _scopes(route: Route) -> tuple[str, str, str]:
        return (route.name, route.service, "*")
