"""HTTP for every service client: the one place where retries, timeouts and error typing live.

:class:`HttpPipeline` wraps one :class:`requests.Session` per service (connection pool sized to
the product's concurrency), puts a ``(connect, read)`` timeout on every call and a total deadline
on every attempt (:func:`request_deadline`: an answer that trickles in a byte at a time, each
within the read timeout, is cut there and its connection shut; after sending, that is a lost
answer, :class:`ApiConnectionError` ``Timeout`` with ``sent=True``), keeps TLS
verification on (``REQUESTS_CA_BUNDLE`` is honoured exactly as ``requests`` honours it), and
turns every non-2xx answer into an :class:`ApiError` carrying the status, the service's error
code and details, and the request id. :class:`Retrier` is the retry loop itself; the pipeline
uses it, and so does :mod:`remediation.clients.keyvault` around the Azure SDK (whose own retries are
switched off), so that one :class:`RetryPolicy` and one :class:`CallStats` cover every service.

Retry decisions (what is retried, and why):

* **429** is retried for every method: the service refused the request before doing anything.
  The wait is the ``Retry-After`` header (delta-seconds or an HTTP-date; ``retry-after-ms`` and
  ``x-ms-retry-after-ms`` too), as long as the service asks (:attr:`RetryPolicy.max_retry_after`,
  an hour, only guards against nonsense) but never past the run's deadline
  (:func:`deadline_scope`): a wait that would end after it raises :class:`ThrottledPastDeadline`
  at once, so the caller reports the work as deferred instead of holding the invocation; without
  the header, the exponential backoff below.
* **503** is retried for every method: "Service Unavailable" means the request was not taken on
  (except for a request that presents credentials, below).
* **500, 502, 504, read timeouts, answers cut at the total deadline and connections dropped
  after the request was sent** are retried only for *idempotent* calls, because the service may
  already have acted. GET/HEAD/PUT/DELETE are idempotent; a POST or PATCH is idempotent only
  when its caller says so (``idempotent=True``), as :mod:`remediation.clients.powerbi` does for the
  refresh-schedule PATCH and Take Over (same body, same end state).
* **Connection failures before the request was sent** (DNS, refused, connect timeout, a TLS
  handshake that broke off) are retried for every method. A failed *certificate verification*
  is never retried: it is configuration, not weather.
* **Every other 4xx** is an answer, not a fault: never retried.

Two POST/PATCH calls are deliberately *not* marked idempotent:

* the refresh ``POST .../refreshes``: a duplicate would start a second refresh (and use one of the
  8 daily refreshes of shared capacity). It is retried only when the service certainly did not
  take it (429, 503, not sent); if a retried POST still meets "another refresh is already
  executing", that answer says the refresh runs (possibly our own first attempt), which
  :class:`ApiError.attempts` lets the caller tell.
* the credentials ``PATCH .../datasources/{id}``: the body is the same on every attempt, so it is
  idempotent in HTTP terms, but Power BI tests the credentials against the source system while
  serving it. After a 500/502/504 or a read timeout the password may already have been presented;
  presenting it again from a tight loop is how accounts get locked. It is sent with
  ``presents_credentials=True``: retried only after a 429 or a failure before sending, never after
  any 5xx (a 503 too may come after the test) or a lost answer, and ``before_attempt`` lets the
  healer renew its lease before every attempt. Whether to present it again later is the healer's
  decision (the per-account verdicts in the ledger), not the transport's.

Backoff is exponential with full jitter: before retry ``n`` (1-based) the wait is
``rand() * min(max_delay, base_delay * 2 ** (n - 1))``. Attempts are bounded by
:attr:`RetryPolicy.max_attempts`. ``sleep``, ``rand`` and ``clock`` are injected for tests.

Adaptive concurrency: every attempt passes the pipeline's
:class:`~remediation.clients.limiter.AdaptiveLimiter` (AIMD, with a pause shared by every caller;
see :mod:`remediation.clients.limiter`).

Logging: method, URL path (no query), status, attempt and waits only. Headers and bodies (bearer
tokens, credentials) are never logged, and no exception raised here contains a request body.
"""

from __future__ import annotations

import contextlib
import contextvars
import email.utils
import heapq
import itertools
import json
import logging
import math
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

from remediation.clients.limiter import AdaptiveLimiter, LimiterTicket
from remediation.config.settings import Settings
from remediation.errors import RemediationError

__all__ = [
    "AnswerDeadlineExceeded",
    "ApiConnectionError",
    "ApiError",
    "ApiResponse",
    "CallStats",
    "HttpPipeline",
    "ResponseValidationError",
    "RetryPolicy",
    "RetryVerdict",
    "Retrier",
    "StatsSnapshot",
    "error_from_response",
    "parse_error_body",
    "parse_retry_after",
    "attempt_worst_case",
    "request_deadline",
    "request_id_of",
    "restore_exception",
    "timeouts_from",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_E = TypeVar("_E", bound=BaseException)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
"""Methods retried on any transient fault unless the caller says otherwise."""
ALWAYS_RETRIED_STATUSES = frozenset({429, 503})
"""Statuses retried for every method: the service did not take the request on."""
IDEMPOTENT_RETRIED_STATUSES = frozenset({500, 502, 504})
"""Statuses retried only for idempotent calls: the service may have acted."""
REQUEST_ID_HEADERS = ("x-ms-request-id", "RequestId", "request-id", "x-ms-client-request-id")
_MAX_MESSAGE = 500


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
    """Raise :class:`ThrottledPastDeadline` when a throttling wait of ``wait`` seconds from now
    would end after the enclosing :func:`deadline_scope`'s deadline."""
    scope = _DEADLINE.get()
    deadline = None if scope is None else scope[0]()
    if scope is not None and deadline is not None and scope[1]() + wait > deadline:
        raise ThrottledPastDeadline(
            f"{label}: the service asked to wait {wait:.0f}s, past this run's deadline; left to a later run",
            status=429,
            code="ThrottledPastDeadline",
            retry_after=wait,
        )


class SharedPause(Protocol):
    """A throttling pause shared by every process calling a service as one principal."""

    def resume_at(self) -> float:
        """Epoch seconds before which nobody should send (``-inf``: no pause)."""
        ...

    def pause_until(self, at: float) -> None:
        """A 429 asked everyone to wait until ``at`` (epoch seconds)."""
        ...


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


# --- statistics -----------------------------------------------------------------------------------
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
    back by a pause another call's 429 started (see :class:`AdaptiveLimiter`), and the time.
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


# --- errors ---------------------------------------------------------------------------------------
class ApiError(RemediationError):
    """A service answered with an error (or could not be reached: see :class:`ApiConnectionError`).

    ``status``: HTTP status (``None`` when there was no answer); ``code``: the service's error code
    (Power BI ``error.code``, Key Vault ``error.code``, Entra ``error``); ``inner_code``: Key Vault's
    ``innererror.code`` or Power BI's ``pbi.error.code`` when it differs; ``details``: ``(code,
    value)`` pairs from ``pbi.error.details`` (or OData ``error.details``); ``request_id``: the
    ``x-ms-request-id`` / ``RequestId`` header; ``retry_after``: seconds the service asked to wait
    (uncapped), when it said; ``attempts``: requests sent for this call, retries included.
    ``str()`` names the call and the service's code and message, never a header or request body.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        inner_code: str | None = None,
        details: Iterable[tuple[str, str]] = (),
        request_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
        service: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.inner_code = inner_code
        self.details: list[tuple[str, str]] = list(details)
        self.request_id = request_id
        self.method = method
        self.path = path
        self.service = service
        self.retry_after = retry_after
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only attributes survive pickling (errors may cross process boundaries).
        return (restore_exception, (type(self), self.args, dict(self.__dict__)))

    def detail(self, code: str) -> str | None:
        """The value of the first detail named ``code`` (case-insensitive), if any."""
        for name, value in self.details:
            if name.lower() == code.lower():
                return value
        return None

    def __str__(self) -> str:
        where = f"{self.method} {self.path}" if self.method and self.path else (self.service or "request")
        status = f" -> {self.status}" if self.status is not None else ""
        code = f" {self.code}" if self.code else ""
        rid = f" (request id {self.request_id})" if self.request_id else ""
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{where}{status}{code}: {self.message}{rid}{tries}"


def restore_exception(cls: type[_E], args: tuple[Any, ...], state: dict[str, Any]) -> _E:
    """Rebuild a pickled exception without calling its (keyword-only) constructor."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ApiConnectionError(ApiError):
    """No answer: connection refused or dropped, DNS, TLS, or a timeout (``code`` says which).

    ``sent`` is False when the request certainly never reached the service (refused, connect
    timeout, no request slot), True when it may have been served and the answer was lost.
    """

    def __init__(self, message: str, *, sent: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.sent = sent


class ThrottledPastDeadline(ApiError):
    """The service asked to wait (a 429's ``Retry-After``, or a pause another caller or instance
    drew) until after the run's deadline. The request was not served; the work is left to a later
    run, which the caller reports as deferred. ``retry_after``: the seconds asked."""


class ResponseValidationError(ApiError):
    """A 2xx answer whose body is not what the API documents (names the field that is wrong)."""


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_error_body(content: bytes) -> tuple[str | None, str | None, str | None, list[tuple[str, str]]]:
    """``(code, inner_code, message, details)`` from a service error body; Nones if not recognised.

    Shapes: Power BI ``{"error": {"code", "pbi.error": {"code", "details": [{"code", "detail":
    {"type", "value"}}]}}}`` and ``{"error": {"code", "message"}}``; Key Vault ``{"error": {"code",
    "message", "innererror": {"code"}}}``; OData ``error.details[{code, message}]``; Entra
    ``{"error": "invalid_grant", "error_description"}``.
    """
    try:
        body = json.loads(content.decode("utf-8")) if content else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, None, None, []
    if not isinstance(body, dict):
        return None, None, None, []
    error = body.get("error")
    if isinstance(error, str):  # OAuth2 / Entra
        return _text(error), None, _text(body.get("error_description")), []
    if not isinstance(error, dict):
        return _text(body.get("errorCode")), None, _text(body.get("message")), []
    code = _text(error.get("code"))
    message = _text(error.get("message"))
    inner_code: str | None = None
    details: list[tuple[str, str]] = []
    pbi = error.get("pbi.error")
    if isinstance(pbi, dict):
        pbi_code = _text(pbi.get("code"))
        if pbi_code and pbi_code != code:
            inner_code = pbi_code
        code = code or pbi_code
        for item in pbi.get("details") or []:
            if not isinstance(item, dict):
                continue
            detail = item.get("detail")
            value = detail.get("value") if isinstance(detail, dict) else detail
            name = _text(item.get("code"))
            if name is not None:
                details.append((name, value if isinstance(value, str) else json.dumps(value)))
    inner = error.get("innererror")
    if isinstance(inner, dict) and _text(inner.get("code")):
        inner_code = _text(inner.get("code"))
    odata_details = error.get("details")
    for item in odata_details if isinstance(odata_details, list) else []:
        if isinstance(item, dict) and _text(item.get("code")):
            details.append((str(item["code"]), str(item.get("message", ""))))
    return code, inner_code, message, details


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The service's request id from ``headers`` (case-insensitive mapping)."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


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


# --- the pipeline ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiResponse:
    """A successful (2xx, or explicitly accepted) answer, fully read."""

    method: str
    path: str
    status: int
    headers: CaseInsensitiveDict[str] = field(repr=False)
    content: bytes = field(repr=False)
    attempts: int = 1
    service: str = ""
    reason: str = ""

    @property
    def request_id(self) -> str | None:
        return request_id_of(self.headers)

    def json(self) -> Any:
        """The body as JSON; :class:`ResponseValidationError` when it is not JSON."""
        try:
            return json.loads(self.content.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ResponseValidationError(
                "the response body is not valid JSON",
                status=self.status,
                code="InvalidResponse",
                request_id=self.request_id,
                method=self.method,
                path=self.path,
                service=self.service,
                attempts=self.attempts,
            ) from None

    def invalid(self, what: str) -> ResponseValidationError:
        """A :class:`ResponseValidationError` for this response saying ``what`` was wrong."""
        return ResponseValidationError(
            what,
            status=self.status,
            code="InvalidResponse",
            request_id=self.request_id,
            method=self.method,
            path=self.path,
            service=self.service,
            attempts=self.attempts,
        )


def error_from_response(response: ApiResponse, clock: Callable[[], float] = time.time) -> ApiError:
    """The :class:`ApiError` a non-success ``response`` stands for (code, details, request id)."""
    code, inner_code, message, details = parse_error_body(response.content)
    return ApiError(
        _short(message or response.reason or f"HTTP {response.status}"),
        status=response.status,
        code=code,
        inner_code=inner_code,
        details=details,
        request_id=response.request_id,
        method=response.method,
        path=response.path,
        service=response.service,
        retry_after=parse_retry_after(response.headers, clock),
        attempts=response.attempts,
    )


def sent_before_failure(exc: requests.RequestException) -> bool | None:
    """Whether the request certainly never reached the server (True), maybe did (False).

    ``None``: a failure that must not be retried at all (certificate verification).
    """
    if isinstance(exc, requests.exceptions.SSLError):
        reason = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate verify failed" in reason:
            return None
        return True  # the handshake precedes the request
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        cause: object = exc.args[0] if exc.args else None
        if isinstance(cause, urllib3.exceptions.MaxRetryError):
            cause = cause.reason
        return isinstance(
            cause, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
        )
    return False


def _certificate_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        current = current.__cause__ or current.__context__
    return False


# --- the total deadline of one attempt ------------------------------------------------------------
class AnswerDeadlineExceeded(requests.exceptions.Timeout):
    """An attempt that did not end within its total deadline (:func:`request_deadline`); its
    connection was shut. After sending, the request may have been served: its answer is lost."""


class _Cut:
    """One attempt's deadline: when it passes, the connections the attempt holds are shut down
    (``shutdown(SHUT_RDWR)``), so a blocked read or write returns at once, whatever the server
    trickles. A connection is held from its request until it goes back to the pool (``detach``,
    under the same lock as the shutdown, so a connection another attempt took from the pool is
    never shut). ``finish`` ends the watch; ``expired`` then says whether the deadline cut it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []
        self._done = False
        self.expired = False

    def attach(self, connection: HTTPConnection) -> None:
        with self._lock:
            if self._done:
                return
            if self.expired:
                _shut(connection)  # connected after the deadline passed
            elif not any(c is connection for c in self._connections):
                self._connections.append(connection)

    def detach(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._connections = [c for c in self._connections if c is not connection]

    def expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for connection in self._connections:
                _shut(connection)

    def finish(self) -> None:
        with self._lock:
            self._done = True
            self._connections.clear()


def _shut(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            # The raw socket's shutdown (an SSLSocket's own would drop its TLS state under a reader).
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


_CUT: contextvars.ContextVar[_Cut | None] = contextvars.ContextVar("http_attempt_cut", default=None)


class _Watchdog:
    """One daemon thread that expires attempts' cuts when their deadline (monotonic) passes."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._due: list[tuple[float, int, _Cut]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, cut: _Cut, at: float) -> None:
        with self._changed:
            heapq.heappush(self._due, (at, next(self._order), cut))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._changed.wait(None if not self._due else self._due[0][0] - time.monotonic())
                cut = heapq.heappop(self._due)[2]
            cut.expire()


_WATCHDOG = _Watchdog()


class _CutHTTPConnection(HTTPConnection):
    """Registers itself with the calling attempt's cut (see :class:`_Cut`)."""

    def connect(self) -> None:
        super().connect()
        cut = _CUT.get()
        if cut is not None:
            cut.attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        cut = _CUT.get()
        if cut is not None:
            cut.attach(self)
        super().request(*args, **kwargs)


class _CutHTTPSConnection(HTTPSConnection):
    """Registers itself with the calling attempt's cut (see :class:`_Cut`)."""

    def connect(self) -> None:
        super().connect()
        cut = _CUT.get()
        if cut is not None:
            cut.attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        cut = _CUT.get()
        if cut is not None:
            cut.attach(self)
        super().request(*args, **kwargs)


def _detach(connection: Any) -> None:
    cut = _CUT.get()
    if cut is not None and isinstance(connection, HTTPConnection):
        cut.detach(connection)


class _CutHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _CutHTTPConnection

    def _put_conn(self, conn: Any) -> None:
        _detach(conn)  # back in the pool: no longer this attempt's to cut
        super()._put_conn(conn)


class _CutHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _CutHTTPSConnection

    def _put_conn(self, conn: Any) -> None:
        _detach(conn)
        super()._put_conn(conn)


class _CutAdapter(HTTPAdapter):
    """An adapter whose connections (direct or through an HTTP proxy) can be cut at a deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _use_cut_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        manager: PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools are their own (not cut)
            _use_cut_pools(manager)
        return manager


def _use_cut_pools(manager: PoolManager) -> None:
    manager.pool_classes_by_scheme = {"http": _CutHTTPConnectionPool, "https": _CutHTTPSConnectionPool}


class HttpPipeline:
    """One service's HTTP: a pooled session, timeouts, TLS verification, retries, typed errors.

    ``service`` names the service in logs and errors. ``timeout`` is ``(connect, read)`` seconds;
    every attempt must also end within :func:`request_deadline` of it (connect + read) from the
    moment it is sent, or its connection is shut and it is a lost answer.
    ``concurrency`` sizes the connection pool (the number of threads that call at once) and is the
    ceiling of the :class:`AdaptiveLimiter` every attempt passes (``adaptive=False``: none;
    ``limiter``: a given one, e.g. with a test clock).
    """

    def __init__(
        self,
        *,
        service: str,
        timeout: tuple[float, float] = (10.0, 60.0),
        concurrency: int = 4,
        policy: RetryPolicy | None = None,
        stats: CallStats | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        user_agent: str = "pbi-credential-healer/0.1",
        adaptive: bool = True,
        limiter: AdaptiveLimiter | None = None,
        shared_pause: SharedPause | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.service = service
        self.timeout = timeout
        self.deadline = request_deadline(timeout)
        """Seconds one attempt may take from sending to the last byte of its answer."""
        self.retrier = Retrier(policy, sleep=sleep, rand=rand, stats=stats)
        self._clock = clock
        self.shared_pause = shared_pause
        """The pause shared with other processes and instances (see the module docstring)."""
        self.limiter: AdaptiveLimiter | None = None
        if adaptive:
            self.limiter = limiter if limiter is not None else AdaptiveLimiter(concurrency)
        session = requests.Session()
        session.verify = True  # REQUESTS_CA_BUNDLE still applies (requests merges it per request)
        adapter = _CutAdapter(pool_connections=4, pool_maxsize=concurrency, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers["User-Agent"] = user_agent
        self._session = session

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        service: str,
        policy: RetryPolicy | None = None,
        stats: CallStats | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        adaptive: bool = True,
    ) -> HttpPipeline:
        """A pipeline with the timeouts (:func:`timeouts_from`) and concurrency of ``settings``."""
        return cls(
            service=service,
            timeout=timeouts_from(settings),
            concurrency=settings.concurrency,
            policy=policy,
            stats=stats,
            sleep=sleep,
            rand=rand,
            adaptive=adaptive,
        )

    @property
    def stats(self) -> CallStats:
        return self.retrier.stats

    @property
    def policy(self) -> RetryPolicy:
        return self.retrier.policy

    @property
    def session(self) -> requests.Session:
        """The underlying session (one per service; its pool is sized to the concurrency)."""
        return self._session

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> HttpPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        bearer: str | None = None,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        accept: Iterable[int] = (),
        presents_credentials: bool = False,
        before_attempt: Callable[[], None] | None = None,
    ) -> ApiResponse:
        """Send a request with retries; a 2xx (or a status in ``accept``) is returned.

        ``bearer`` becomes ``Authorization: Bearer ...``. ``idempotent`` overrides the method's
        default (see the module docstring). ``presents_credentials`` marks a request whose serving
        is a sign-in at a source system (the credentials PATCH): it is retried only when the
        service certainly did not serve it (429, or not sent), never after a 5xx or a lost answer.
        ``before_attempt`` is called right before every attempt is sent (after every wait, with a
        request slot held), so a caller can check and renew what the request needs (a lease); an
        exception it raises stops the call, and that attempt is not sent. Raises
        :class:`ApiError` for any other status and :class:`ApiConnectionError` when no answer came.
        """
        method = method.upper()
        path = urlsplit(url).path or "/"
        safe = (
            method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        ) and not presents_credentials
        accepted = frozenset(accept)
        send_headers: dict[str, str] = dict(headers or {})
        if bearer is not None:
            send_headers["Authorization"] = f"Bearer {bearer}"
        label = f"{self.service} {method} {path}"

        attempts = 0
        served_until = -math.inf  # the end of a pause this call has waited out in the retry loop
        served_shared = -math.inf  # the same, for the shared pause (epoch seconds)

        def attempt(number: int) -> requests.Response:
            nonlocal attempts, served_until, served_shared
            served_shared = max(served_shared, self._wait_shared_pause(label, served_shared))
            attempts = number
            ticket = self._admit(label, served_until, method, path, number)
            if before_attempt is not None:
                # Right before sending, after every wait (a pause, a request slot): what the
                # caller checks there (a lease, a claim) must outlast this request, not the waits.
                try:
                    before_attempt()
                except BaseException:
                    if ticket is not None and self.limiter is not None:
                        self.limiter.release(ticket)
                    raise
            cut = _Cut()
            scope = _CUT.set(cut)
            _WATCHDOG.watch(cut, time.monotonic() + self.deadline)
            try:
                try:
                    response = self._session.request(
                        method,
                        url,
                        params=params,
                        json=json_body,
                        headers=send_headers,
                        timeout=self.timeout,
                        allow_redirects=False,
                    )
                finally:
                    cut.finish()
                    _CUT.reset(scope)
                if cut.expired:  # complete just as it was cut: the deadline still decides (fail closed)
                    response.close()
                    raise AnswerDeadlineExceeded()
            except BaseException as exc:
                if ticket is not None and self.limiter is not None:
                    self.limiter.release(ticket)
                if cut.expired and isinstance(exc, Exception) and not isinstance(exc, AnswerDeadlineExceeded):
                    raise AnswerDeadlineExceeded() from None
                raise
            logger.debug("%s -> %s (attempt %d)", label, response.status_code, number)
            if ticket is not None:
                served_until = max(served_until, self._settle(label, ticket, response))
            if response.status_code == 429:
                served_shared = max(served_shared, self._share_pause(response))
            return response

        def classify_result(response: requests.Response) -> RetryVerdict | None:
            status = response.status_code
            if status in accepted or status < 400:
                return None
            retry_after = parse_retry_after(response.headers, self._clock)
            if presents_credentials:
                # Only a 429 says the service did not serve it; a 503 may come after the test.
                return RetryVerdict("HTTP 429", retry_after, throttled=True) if status == 429 else None
            if status in ALWAYS_RETRIED_STATUSES or (safe and status in IDEMPOTENT_RETRIED_STATUSES):
                return RetryVerdict(f"HTTP {status}", retry_after, throttled=status == 429)
            return None

        def classify_error(exc: Exception) -> RetryVerdict | None:
            if not isinstance(exc, requests.RequestException) or _certificate_failure(exc):
                return None
            before = sent_before_failure(exc)
            if before is None:
                return None
            if before or safe:
                return RetryVerdict(f"{type(exc).__name__} ({'not sent' if before else 'no answer'})")
            return None

        try:
            response = self.retrier.run(
                attempt, label=label, classify_result=classify_result, classify_error=classify_error
            )
        except requests.RequestException as exc:
            logger.warning("%s: no answer (%s)", label, type(exc).__name__)
            raise self._connection_error(exc, method, path, attempts) from None
        content = response.content
        status = response.status_code
        if 200 <= status < 300 or status in accepted:
            return ApiResponse(
                method=method,
                path=path,
                status=status,
                headers=CaseInsensitiveDict(response.headers),
                content=content,
                attempts=attempts,
                service=self.service,
            )
        self.stats.record_failure()
        answer = ApiResponse(
            method=method,
            path=path,
            status=status,
            headers=CaseInsensitiveDict(response.headers),
            content=content,
            attempts=attempts,
            service=self.service,
            reason=response.reason or "",
        )
        error = error_from_response(answer, self._clock)
        logger.info("%s -> %s %s", label, status, error.code or "")
        raise error

    def _admit(
        self, label: str, served_until: float, method: str, path: str, number: int
    ) -> LimiterTicket | None:
        """Wait for the limiter (pause, then a slot); ``None`` when the pipeline has none."""
        limiter = self.limiter
        if limiter is None:
            return None
        budget = self.deadline  # attempt_worst_case counts this wait

        def paused(seconds: float) -> None:
            self.stats.record_pause(seconds)
            logger.debug("%s: held %.2fs by a shared throttling pause", label, seconds)

        def sleep(seconds: float) -> None:
            check_deadline(seconds, label=label)
            self.retrier.sleep(seconds)

        ticket = limiter.acquire(timeout=budget, sleep=sleep, served_until=served_until, on_pause=paused)
        if ticket is None:
            raise ApiConnectionError(
                f"no request slot came free within {budget:g}s (limit {limiter.limit})",
                sent=False,
                status=None,
                code="Timeout",
                method=method,
                path=path,
                service=self.service,
                attempts=number,
            )
        return ticket

    def _wait_shared_pause(self, label: str, served: float) -> float:
        """Wait out a pause another process or instance drew (not one this call already waited);
        the moment waited for, or ``-inf``."""
        shared = self.shared_pause
        if shared is None:
            return -math.inf
        at = shared.resume_at()
        now = self._clock()
        if at <= served or at <= now or at - now > self.policy.max_retry_after:
            return -math.inf
        check_deadline(at - now, label=label)
        logger.info("%s: held %.2fs by a throttling pause shared across instances", label, at - now)
        self.retrier.sleep(at - now)
        self.stats.record_pause(at - now)
        return at

    def _share_pause(self, response: requests.Response) -> float:
        """Tell the other instances about a 429's pause; its end (epoch seconds), or ``-inf``."""
        retry_after = parse_retry_after(response.headers, self._clock)
        if self.shared_pause is None or retry_after is None or retry_after <= 0:
            return -math.inf
        at = self._clock() + min(retry_after, self.policy.max_retry_after)
        try:
            self.shared_pause.pause_until(at)
        except Exception:  # noqa: BLE001 - sharing is best effort; this process still waits
            logger.warning("could not share a throttling pause", exc_info=True)
        return at

    def _settle(self, label: str, ticket: LimiterTicket, response: requests.Response) -> float:
        """Tell the limiter how an attempt went; the end of the pause its 429 started, if any."""
        limiter = self.limiter
        assert limiter is not None
        status = response.status_code
        if status == 429:
            retry_after = parse_retry_after(response.headers, self._clock)
            pause = None if retry_after is None else min(retry_after, self.policy.max_retry_after)
            before = limiter.limit
            until = limiter.on_throttled(ticket, pause)
            after = limiter.limit
            if after != before:
                logger.info(
                    "%s: throttled; concurrency limit %d -> %d, every caller paused %.2fs",
                    label,
                    before,
                    after,
                    pause or 0.0,
                )
            return until
        if status >= 500:
            limiter.release(ticket)
        else:
            limiter.on_success(ticket)
        return -math.inf

    def _connection_error(
        self, exc: requests.RequestException, method: str, path: str, attempts: int
    ) -> ApiConnectionError:
        if _certificate_failure(exc) or sent_before_failure(exc) is None:
            code, message = "CertificateVerificationFailed", "TLS certificate verification failed"
        elif isinstance(exc, AnswerDeadlineExceeded):
            code = "Timeout"
            message = f"no complete answer within the request's deadline ({self.deadline:g}s): cut"
        elif isinstance(exc, requests.exceptions.Timeout):
            code, message = "Timeout", f"no answer within the timeout ({type(exc).__name__})"
        else:
            code, message = "ConnectionError", f"the connection failed ({type(exc).__name__})"
        return ApiConnectionError(
            message,
            sent=sent_before_failure(exc) is False,
            status=None,
            code=code,
            method=method,
            path=path,
            service=self.service,
            attempts=attempts,
        )


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


def timeouts_from(settings: Settings) -> tuple[float, float]:
    """``(connect, read)`` seconds: ``http_timeout_seconds`` to read, at most 10 s of it to connect."""
    read = float(settings.http_timeout_seconds)
    return (min(10.0, read), read)


def request_deadline(timeout: tuple[float, float]) -> float:
    """The total deadline of one attempt with ``(connect, read)`` timeouts: connect + read seconds
    from sending to the last byte of the answer. The read timeout bounds each wait for a byte; this
    bounds them all (an answer that trickles in is cut here)."""
    connect, read = timeout
    return connect + read


def attempt_worst_case(settings: Settings) -> float:
    """The longest one attempt of :meth:`HttpPipeline.request` can take with ``settings``: the wait
    for a request slot (at most :func:`request_deadline`, see ``_admit``) plus the attempt itself
    (at most :func:`request_deadline`). The healer's leases outlast it."""
    deadline = request_deadline(timeouts_from(settings))
    return deadline + deadline
