"""The HTTP pipeline of every service client: one session per service, timeouts, retries, typed errors.

:class:`HttpPipeline` wraps one :class:`requests.Session` per service (connection pool sized to
the product's concurrency), puts a ``(connect, read)`` timeout on every call and a total deadline
on every attempt (:mod:`remediation.clients.answer_deadline`: an answer that trickles in a byte at
a time, each within the read timeout, is cut there and its connection shut; after sending, that
is a lost answer, :class:`~remediation.clients.api_errors.ApiConnectionError` ``Timeout`` with
``sent=True``), keeps TLS verification on (``REQUESTS_CA_BUNDLE`` is honoured exactly as
``requests`` honours it), and turns every non-2xx answer into an
:class:`~remediation.clients.api_errors.ApiError` carrying the status, the service's error code and
details, and the request id (:func:`error_from_response`). Its attempts run in the product's one
retry loop, :class:`~remediation.clients.retry.Retrier` (the policy, the waits and ``Retry-After``
live in :mod:`remediation.clients.retry`), and are counted into one
:class:`~remediation.clients.stats.CallStats`; this module decides which HTTP outcomes that loop
retries.

Retry decisions (what is retried, and why):

* **429** is retried for every method: the service refused the request before doing anything.
  The wait is the ``Retry-After`` header (delta-seconds or an HTTP-date; ``retry-after-ms`` and
  ``x-ms-retry-after-ms`` too), as long as the service asks
  (:attr:`~remediation.clients.retry.RetryPolicy.max_retry_after`, an hour, only guards against
  nonsense) but never past the run's deadline (:func:`~remediation.clients.retry.deadline_scope`):
  a wait that would end after it raises :class:`~remediation.clients.api_errors.ThrottledPastDeadline`
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
  :attr:`ApiError.attempts <remediation.clients.api_errors.ApiError.attempts>` lets the caller tell.
* the credentials ``PATCH .../datasources/{id}``: the body is the same on every attempt, so it is
  idempotent in HTTP terms, but Power BI tests the credentials against the source system while
  serving it. After a 500/502/504 or a read timeout the password may already have been presented;
  presenting it again from a tight loop is how accounts get locked. It is sent with
  ``presents_credentials=True``: retried only after a 429 or a failure before sending, never after
  any 5xx (a 503 too may come after the test) or a lost answer, and ``before_attempt`` lets the
  healer renew its lease before every attempt. Whether to present it again later is the healer's
  decision (the per-account verdicts in the ledger), not the transport's.

Waits before a retry are the server's ``Retry-After`` or an exponential backoff with full jitter,
bounded by :attr:`~remediation.clients.retry.RetryPolicy.max_attempts` (see
:mod:`remediation.clients.retry`). ``sleep``, ``rand`` and ``clock`` are injected for tests.

Adaptive concurrency: every attempt passes the pipeline's
:class:`~remediation.clients.limiter.AdaptiveLimiter` (AIMD, with a pause shared by every caller;
see :mod:`remediation.clients.limiter`).

Logging: method, URL path (no query), status, attempt and waits only. Headers and bodies (bearer
tokens, credentials) are never logged, and no exception raised here contains a request body.
"""

from __future__ import annotations

import json
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.structures import CaseInsensitiveDict

from remediation.clients.answer_deadline import (
    AnswerDeadlineExceeded,
    AttemptCut,
    CutAdapter,
    request_deadline,
)
from remediation.clients.api_errors import (
    ApiConnectionError,
    ApiError,
    ResponseValidationError,
    parse_error_body,
    request_id_of,
)
from remediation.clients.limiter import AdaptiveLimiter, LimiterTicket
from remediation.clients.retry import (
    ALWAYS_RETRIED_STATUSES,
    IDEMPOTENT_RETRIED_STATUSES,
    Retrier,
    RetryPolicy,
    RetryVerdict,
    check_deadline,
    parse_retry_after,
)
from remediation.clients.stats import CallStats
from remediation.config.settings import Settings

__all__ = [
    "ApiResponse",
    "HttpPipeline",
    "SharedPause",
    "attempt_worst_case",
    "error_from_response",
    "sent_before_failure",
    "timeouts_from",
]

logger = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
"""Methods retried on any transient fault unless the caller says otherwise."""
_MAX_MESSAGE = 500


class SharedPause(Protocol):
    """A throttling pause shared by every process calling a service as one principal."""

    def resume_at(self) -> float:
        """Epoch seconds before which nobody should send (``-inf``: no pause)."""
        ...

    def pause_until(self, at: float) -> None:
        """A 429 asked everyone to wait until ``at`` (epoch seconds)."""
        ...


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
        adapter = CutAdapter(pool_connections=4, pool_maxsize=concurrency, max_retries=0)
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
            cut = AttemptCut.start(self.deadline)
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
                    cut.end()
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


def attempt_worst_case(settings: Settings) -> float:
    """The longest one attempt of :meth:`HttpPipeline.request` can take with ``settings``: the wait
    for a request slot (at most :func:`request_deadline`, see ``_admit``) plus the attempt itself
    (at most :func:`request_deadline`). The healer's leases outlast it."""
    deadline = request_deadline(timeouts_from(settings))
    return deadline + deadline
