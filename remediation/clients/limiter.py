"""Adaptive concurrency for every :class:`~remediation.clients.http.HttpPipeline` (on by default).

Retries alone do not make a throttled run finish *politely*. The healer calls one pipeline from
``concurrency`` threads; against a rate limit each thread would learn about it on its own, by
drawing its own 429, and would go back to full speed after its own ``Retry-After``. So every
attempt passes an AIMD limiter shared by all callers of the pipeline:

* at most ``limit`` requests are in flight. ``limit`` starts at the configured concurrency (the
  ceiling) and never drops below 1. A request waits for a free slot at most the call's timeout
  budget (connect + read); past that the call fails with
  :class:`~remediation.clients.api_errors.ApiConnectionError` ``Timeout``.
* a **429 halves** ``limit`` (multiplicative decrease) and sets a **shared pause**: no caller sends
  anything until the ``Retry-After`` moment (capped like the retry wait). The pause is shared
  because the other threads' requests would otherwise keep hitting the limit the service has just
  reported; one 429 stops the whole pipeline, not only the thread that drew it. With a
  :class:`~remediation.clients.http.SharedPause` (the ledger's, :mod:`remediation.ledger.pause`) the pause
  also holds across processes and instances calling as the same principal: a 429 writes its end
  there, and every pipeline reads it (cached for a moment) before sending.
* the decrease happens **once per window**: a 429 for a request that was sent before the last
  decrease (it was already in flight when the first 429 came back) was caused by the old limit
  and is not news, so a burst of such 429s halves the limit once.
* **successes increase** ``limit`` by 1 after ``limit`` consecutive successes of requests sent
  under the current limit, up to the ceiling, and at most once per window (the last
  ``Retry-After``, at least ``min_window`` = 1 s, counted from the end of the pause): right after
  a pause the service's bucket has refilled, and those successes spend that refill rather than
  show a higher sustainable rate; growing on them leads straight into the next 429 burst. Any
  answer other than 429 and 5xx counts as a success (the service accepted the request); 5xx and
  connection failures count neither way.

Limits of the approach: it controls *concurrency*, so it cannot go below one request in flight.
When the service's rate times the round trip is below 1 (e.g. 40/s at 25 ms and no burst), only
the shared pauses pace the pipeline, one 429 per window; pacing by a learnt rate would be next.

Why AIMD and not a configured rate: the service's limit is not published as a number one can
configure; it depends on the tenant, the capacity (shared or Premium/Fabric SKU) and what else
runs there, and it changes over time. AIMD needs no number: it backs off fast when told to and
probes upward slowly, and converges on the share the service grants. The number of 429s it costs
is about one window's worth of in-flight requests per time the rate is (re)learnt.
``HttpPipeline(adaptive=False)`` switches it off (the retry loop alone remains).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AdaptiveLimiter", "LimiterSnapshot", "LimiterTicket"]


@dataclass(frozen=True)
class LimiterTicket:
    """One attempt's slot. ``epoch``: how many decreases the limiter had made when it was sent."""

    epoch: int


@dataclass(frozen=True)
class LimiterSnapshot:
    """An :class:`AdaptiveLimiter` at one moment.

    ``throttled``: 429s reported; ``decreases`` / ``increases``: changes of ``limit``; ``pauses``:
    shared pauses started (a 429 that only moves a running pause's end does not count);
    ``resume_at``: when the latest pause ends (limiter clock; ``-inf`` before the first).
    """

    limit: int
    in_flight: int
    throttled: int
    decreases: int
    increases: int
    pauses: int
    resume_at: float


class AdaptiveLimiter:
    """AIMD concurrency limit with a shared pause, for all callers of one pipeline (thread-safe).

    The rules (see the module docstring for why): at most :attr:`limit` tickets are out;
    :meth:`on_throttled` halves the limit (not below ``floor``) unless the throttled request was
    sent before the last decrease, and pauses every caller until ``now + pause``;
    :meth:`on_success` adds 1 after ``limit`` consecutive successes sent under the current limit
    (not above ``ceiling``; at most once per window: ``max(min_window, pause)`` after the pause);
    :meth:`release` frees a slot and says nothing about the limit.

    :meth:`try_acquire` is the decision alone (no waiting), on the injected ``clock``;
    :meth:`acquire` waits: out the pause through the ``sleep`` it is given, and for a free slot
    at most ``timeout`` seconds of real time.

    ``served_until``: a caller that has itself waited for a pause (the thread whose 429 started
    it sleeps the same ``Retry-After`` in the retry loop) passes the moment it waited for, so that
    the same pause is never waited twice, even with a clock that does not move in tests.
    """

    def __init__(
        self,
        ceiling: int,
        *,
        floor: int = 1,
        min_window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if floor < 1 or ceiling < floor:
            raise ValueError("AdaptiveLimiter needs 1 <= floor <= ceiling")
        if not (math.isfinite(min_window) and min_window >= 0):
            raise ValueError("min_window must be a finite number >= 0")
        self.ceiling = ceiling
        self.floor = floor
        self.min_window = min_window
        self._window = min_window
        self._grow_after = -math.inf
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._limit = ceiling
        self._in_flight = 0
        self._streak = 0
        self._epoch = 0
        self._resume_at = -math.inf
        self._throttled = 0
        self._decreases = 0
        self._increases = 0
        self._pauses = 0

    @property
    def limit(self) -> int:
        with self._cond:
            return self._limit

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    @property
    def resume_at(self) -> float:
        with self._cond:
            return self._resume_at

    def snapshot(self) -> LimiterSnapshot:
        with self._cond:
            return LimiterSnapshot(
                limit=self._limit,
                in_flight=self._in_flight,
                throttled=self._throttled,
                decreases=self._decreases,
                increases=self._increases,
                pauses=self._pauses,
                resume_at=self._resume_at,
            )

    def try_acquire(self, served_until: float = -math.inf) -> LimiterTicket | float | None:
        """A ticket to send now; or the moment a pause ends (wait until then); or ``None``: no slot."""
        with self._cond:
            return self._try_acquire(served_until)

    def _try_acquire(self, served_until: float) -> LimiterTicket | float | None:
        if self._resume_at > served_until and self._resume_at > self._clock():
            return self._resume_at
        if self._in_flight >= self._limit:
            return None
        self._in_flight += 1
        return LimiterTicket(self._epoch)

    def acquire(
        self,
        *,
        timeout: float,
        sleep: Callable[[float], None] = time.sleep,
        served_until: float = -math.inf,
        on_pause: Callable[[float], None] = lambda _seconds: None,
    ) -> LimiterTicket | None:
        """Wait for the pause and a free slot; ``None`` when no slot came within ``timeout``.

        The pause is waited through ``sleep`` (``on_pause`` hears each wait); the slot budget
        starts again after a pause, which is the service's wait, not congestion of our own.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                got = self._try_acquire(served_until)
                while got is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)
                    got = self._try_acquire(served_until)
            if isinstance(got, LimiterTicket):
                return got
            wait = got - self._clock()
            if wait > 0:
                sleep(wait)
                on_pause(wait)
            served_until = got
            deadline = time.monotonic() + timeout

    def on_success(self, ticket: LimiterTicket) -> None:
        """The service accepted the request: free its slot, and +1 after ``limit`` in a row."""
        with self._cond:
            self._in_flight -= 1
            if ticket.epoch == self._epoch:
                self._streak += 1
                if self._streak >= self._limit and self._clock() >= self._grow_after:
                    self._streak = 0
                    if self._limit < self.ceiling:
                        self._limit += 1
                        self._increases += 1
                        self._grow_after = self._clock() + self._window
            self._cond.notify_all()

    def on_throttled(self, ticket: LimiterTicket, pause: float | None) -> float:
        """A 429: halve (once per window), pause everyone ``pause`` seconds from now.

        Returns the moment the pause (as this 429 asks it) ends, for the caller's
        ``served_until``; ``-inf`` when there is no pause (``pause`` is ``None`` or 0).
        """
        with self._cond:
            now = self._clock()
            self._in_flight -= 1
            self._throttled += 1
            until = -math.inf
            if pause is not None and pause > 0:
                until = now + pause
                if until > self._resume_at:
                    if self._resume_at <= now:
                        self._pauses += 1
                    self._resume_at = until
            if ticket.epoch == self._epoch:
                self._limit = max(self.floor, self._limit // 2)
                self._epoch += 1
                self._decreases += 1
                self._streak = 0
                self._window = max(self.min_window, pause or 0.0)
                self._grow_after = max(now, self._resume_at) + self._window
            self._cond.notify_all()
            return until

    def release(self, ticket: LimiterTicket) -> None:
        """Free the slot of an attempt that says nothing about the rate (5xx, no answer)."""
        del ticket
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()
