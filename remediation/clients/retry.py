"""Retries in one place: the policy, the product's only retry loop, and ``Retry-After``.

:class:`Retrier` runs one operation under a :class:`RetryPolicy` until it succeeds, its
classifier calls the outcome final, or attempts run out. What is retried is the caller's to say
(a :class:`RetryVerdict`, or None for final): :class:`~remediation.clients.http.HttpPipeline`
classifies HTTP answers and connection failures (its module docstring lists which, and why), and
:mod:`remediation.clients.keyvault` classifies the Azure SDK's errors (whose own retries are
switched off), so that one policy and one :class:`~remediation.clients.stats.CallStats` cover every
service. :data:`ALWAYS_RETRIED_STATUSES` and :data:`IDEMPOTENT_RETRIED_STATUSES` are the statuses
both treat as transient.

Waits:

* A verdict with the server's ``retry_after`` (:func:`parse_retry_after`: the ``Retry-After``
  header as delta-seconds or an HTTP-date; ``retry-after-ms`` and ``x-ms-retry-after-ms`` too)
  waits as long as the service asks (:attr:`RetryPolicy.max_retry_after`, an hour, only guards
  against nonsense), but a *throttling* wait is never begun past the run's deadline
  (:func:`deadline_scope`): a wait that would end after it raises
  :class:`~remediation.clients.api_errors.ThrottledPastDeadline` at once (:func:`check_deadline`),
  so the caller reports the work as deferred instead of holding the invocation.
* Otherwise the backoff is exponential with full jitter: before retry ``n`` (1-based) the wait is
  ``rand() * min(max_delay, base_delay * 2 ** (n - 1))``.

Attempts are bounded by :attr:`RetryPolicy.max_attempts`. ``sleep`` and ``rand`` are injected for
tests. Logging: the caller's label, the verdict's reason, the attempt and the wait only.
"""

from __future__ import annotations

import contextvars
import email.utils
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from remediation.clients.api_errors import ThrottledPastDeadline
from remediation.clients.stats import CallStats

__all__ = [
    "ALWAYS_RETRIED_STATUSES",
    "IDEMPOTENT_RETRIED_STATUSES",
    "Retrier",
    "RetryPolicy",
    "RetryVerdict",
    "check_deadline",
    "deadline_scope",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

ALWAYS_RETRIED_STATUSES = frozenset({429, 503})
"""Statuses retried for every method: the service did not take the request on."""
IDEMPOTENT_RETRIED_STATUSES = frozenset({500, 502, 504})
"""Statuses retried only for idempotent calls: the service may have acted."""


# --- policy ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    ``max_attempts`` counts the first try (5 = one try and up to four retries); ``base_delay`` and
    ``max_delay`` bound the exponential backoff; ``max_retry_after`` caps a server's
    ``Retry-After`` (a larger value is waited only up to the cap; an hour by default: Power BI is
    waited as long as it asks, and the run's deadline, not this cap, is what usually stops it).
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        for name in ("base_delay", "max_delay", "max_retry_after"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"RetryPolicy.{name} must be a finite number >= 0")

    def backoff(self, retry: int, rand: Callable[[], float]) -> float:
        """The wait before retry number ``retry`` (1-based): full jitter under an exponential bound."""
        exponent = min(max(retry - 1, 0), 62)  # 2**62 is far past any max_delay
        bound = min(self.max_delay, self.base_delay * float(2**exponent))
        fraction = min(max(rand(), 0.0), 1.0)
        return bound * fraction

    def delay(self, retry: int, retry_after: float | None, rand: Callable[[], float]) -> float:
        """The wait before retry ``retry``: the server's ``retry_after`` (capped) or the backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return self.backoff(retry, rand)


_DEADLINE: contextvars.ContextVar[tuple[Callable[[], float | None], Callable[[], float]] | None] = (
    contextvars.ContextVar("remediation_deadline", default=None)
)


@contextmanager
def deadline_scope(
    deadline: Callable[[], float | None], clock: Callable[[], float] = time.time
) -> Iterator[None]:
    """Within this block (and in the threads it hands a copy of its context to), no throttling
    wait is begun that would end after ``deadline()`` (seconds on ``clock``; None: no bound)."""
    token = _DEADLINE.set((deadline, clock))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline(wait: float, *, label: str) -> None:
    """Raise :class:`~remediation.clients.api_errors.ThrottledPastDeadline` when a throttling wait
    of ``wait`` seconds from now would end after the enclosing :func:`deadline_scope`'s deadline."""
    scope = _DEADLINE.get()
    deadline = None if scope is None else scope[0]()
    if scope is not None and deadline is not None and scope[1]() + wait > deadline:
        raise ThrottledPastDeadline(
            f"{label}: the service asked to wait {wait:.0f}s, past this run's deadline; left to a later run",
            status=429,
            code="ThrottledPastDeadline",
            retry_after=wait,
        )


def parse_retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asked us to wait, or ``None`` when it did not say (or said nonsense).

    Reads ``retry-after-ms`` / ``x-ms-retry-after-ms`` (milliseconds, Azure) first, then
    ``Retry-After`` as delta-seconds or an HTTP-date (RFC 9110, section 10.2.3). A date in the
    past means "now" (0). ``headers`` must be case-insensitive (as ``requests`` gives them).
    """
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        raw = headers.get(name)
        if raw is not None:
            try:
                millis = float(raw.strip())
            except ValueError:
                continue
            if math.isfinite(millis) and millis >= 0:
                return millis / 1000.0
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    value = raw.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; the obsolete forms parse naive
        return None
    return max(0.0, when.timestamp() - now())


# --- the retry loop -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryVerdict:
    """Why an attempt may be retried: ``reason`` for the log, ``retry_after`` from the server."""

    reason: str
    retry_after: float | None = None
    throttled: bool = False


class Retrier:
    """Runs one operation under a :class:`RetryPolicy`: the product's only retry loop.

    ``run(attempt, classify_result, classify_error)`` calls ``attempt()`` until it succeeds, the
    classifier says the outcome is final (returns ``None``), or attempts run out. The last result
    is returned or the last exception re-raised; what a final non-2xx result means is up to the
    caller. Waits go through ``sleep`` and ``rand`` (injected for tests) and into ``stats``.
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        stats: CallStats | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.rand = rand
        self.stats = stats if stats is not None else CallStats()

    def run(
        self,
        attempt: Callable[[int], _T],
        *,
        label: str,
        classify_result: Callable[[_T], RetryVerdict | None] = lambda _result: None,
        classify_error: Callable[[Exception], RetryVerdict | None] = lambda _error: None,
    ) -> _T:
        """Call ``attempt(n)`` (n = 1, 2, ...) with retries; ``label`` names it in the log."""
        self.stats.record_call()
        number = 1
        while True:
            self.stats.record_attempt()
            try:
                result = attempt(number)
            except Exception as exc:
                verdict = classify_error(exc)
                if verdict is None or number >= self.policy.max_attempts:
                    self.stats.record_failure()
                    if verdict is not None:
                        logger.warning("%s: giving up after %d attempts (%s)", label, number, verdict.reason)
                    raise
            else:
                verdict = classify_result(result)
                if verdict is None:
                    return result
                if number >= self.policy.max_attempts:
                    if verdict.throttled:
                        self.stats.record_throttled()
                    logger.warning("%s: giving up after %d attempts (%s)", label, number, verdict.reason)
                    return result
            if verdict.throttled:
                self.stats.record_throttled()
            wait = self.policy.delay(number, verdict.retry_after, self.rand)
            if verdict.throttled:
                check_deadline(wait, label=label)
            logger.info(
                "%s: %s; retry %d/%d in %.2fs",
                label,
                verdict.reason,
                number,
                self.policy.max_attempts - 1,
                wait,
            )
            self.stats.record_retry(wait)
            if wait > 0:
                self.sleep(wait)
            number += 1
