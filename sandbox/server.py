"""The sandbox's HTTPS server: routing, recording, faults and latency.

One threaded HTTPS server on 127.0.0.1 serves every stand-in (Entra ID, Key Vault, Power BI,
Application Insights ingestion). Each service module registers named routes on a
:class:`Router`; every request is recorded in :class:`Recorder` so that tests can assert
exactly what a client did; :class:`Faults` queues canned failures per route (429 with
``Retry-After``, 5xx, a dropped connection, an answer held back or trickled out a byte at a
time), before the handler runs or
after it (the request was processed, its answer is lost), and adds a per-request latency for
benchmarks.

Handlers never let a Python exception escape as a traceback: :class:`HTTPError` becomes the
service's own error shape, and any other exception becomes a 500 in that shape too.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

logger = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024


class HTTPError(Exception):
    """Raised by a handler to answer with ``status`` and a JSON ``body`` (the service's shape)."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


@dataclass
class Response:
    status: int = 200
    body: Any = None  # dict/list -> JSON, bytes -> raw, str -> text/plain, None -> empty
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if self.body is None:
            data = b""
        elif isinstance(self.body, bytes):
            data = self.body
        elif isinstance(self.body, str):
            data = self.body.encode("utf-8")
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        else:
            data = json.dumps(self.body).encode("utf-8")
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        return data, headers


class _Headers:
    """Case-insensitive read-only view of request headers."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = {k.lower(): v for k, v in items}

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._items.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(self._items.items())


@dataclass
class Request:
    method: str
    path: str  # percent-decoded path without the query
    raw_path: str  # as sent, with the query
    query: dict[str, str]  # keys as sent; last value wins
    headers: _Headers
    body: bytes
    route: str = ""
    params: dict[str, str] = field(default_factory=dict)
    token: Any = None  # set by an auth helper (sandbox.entra.TokenInfo)

    def query_ci(self, name: str) -> str | None:
        """Query parameter by case-insensitive name (OData's ``$top`` vs ``$Top``)."""
        for key, value in self.query.items():
            if key.lower() == name.lower():
                return value
        return None

    def json(self, error: Callable[[str], HTTPError]) -> Any:
        """Parse the body as JSON, or raise ``error(message)`` (the service's bad-request shape)."""
        if not self.body:
            raise error("The request body is empty.")
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise error(f"The request body is not valid JSON: {exc.__class__.__name__}.") from None

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))


Handler = Callable[[Request], Response]


@dataclass
class Route:
    name: str
    service: str
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    error: Callable[[int, str, str], Any]  # (status, code, message) -> the service's error body


class Router:
    """Named routes; the first whose method and full-path regex match wins."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self,
        service: str,
        name: str,
        method: str,
        pattern: str,
        handler: Handler,
        error: Callable[[int, str, str], Any],
    ) -> None:
        """Register ``handler`` for ``method`` on paths fully matching ``pattern`` (case-insensitive)."""
        self.routes.append(
            Route(name, service, method.upper(), re.compile(pattern, re.IGNORECASE), handler, error)
        )

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """Return (route, params, path_known). ``path_known`` tells 405 from 404."""
        path_known = False
        for route in self.routes:
            m = route.pattern.fullmatch(path)
            if m is None:
                continue
            path_known = True
            if route.method == method:
                return route, {k: v for k, v in m.groupdict().items() if v is not None}, True
        return None, {}, path_known


@dataclass
class RecordedRequest:
    """What a client sent and what it got back. ``body`` is parsed JSON when it was JSON."""

    service: str
    route: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    status: int = 0
    token_kind: str | None = None  # "app" | "user" | "managed_identity" | None
    principal: str | None = None
    at: float = 0.0  # arrival (wall clock)
    answered_at: float | None = None  # when the answer started going out; None: no answer was sent
    fault: str | None = None  # "503", "drop", "after-drop", "after-503", "after-hold+answer", ...
    processed_status: int | None = None  # after-processing faults: what the handler answered


class Recorder:
    """Thread-safe list of every request the sandbox served."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[RecordedRequest] = []

    def add(self, item: RecordedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def all(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def find(
        self,
        route: str | None = None,
        *,
        service: str | None = None,
        method: str | None = None,
        status: int | None = None,
    ) -> list[RecordedRequest]:
        """Recorded requests filtered by route name, service, method and status."""
        return [
            r
            for r in self.all()
            if (route is None or r.route == route)
            and (service is None or r.service == service)
            and (method is None or r.method == method.upper())
            and (status is None or r.status == status)
        ]


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

    def _hold(self, route: Route) -> None:
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


class _DroppedConnection(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without NODELAY, Nagle + delayed ACK add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("sandbox: " + format, *args)

    def _serve(self) -> None:
        sandbox = self.server.sandbox
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(Response(413, {"error": {"code": "RequestTooLarge", "message": "Body too large."}}))
            return
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "gzip" and body:
            import gzip

            try:
                body = gzip.decompress(body)
            except OSError:
                self._send(Response(400, {"error": {"code": "BadRequest", "message": "Bad gzip body."}}))
                return
        request = Request(
            method=self.command,
            path=path,
            raw_path=self.path,
            query=query,
            headers=_Headers(list(self.headers.items())),
            body=body,
        )
        route, params, known = sandbox.router.match(self.command, path)
        record = RecordedRequest(
            service=route.service if route else "unknown",
            route=route.name if route else "unknown",
            method=self.command,
            path=path,
            query=query,
            headers=dict(self.headers.items()),
            body=_maybe_json(body),
            raw_body=body,
            at=time.time(),
        )
        recorded = False
        trickle = 0.0
        try:
            if sandbox.faults.latency:
                time.sleep(sandbox.faults.latency)
            if route is None:
                status = 405 if known else 404
                response = Response(
                    status,
                    {
                        "error": {
                            "code": "NotFound" if status == 404 else "MethodNotAllowed",
                            "message": f"No route for {self.command} {path}.",
                        }
                    },
                )
            else:
                request.route, request.params = route.name, params
                wait = sandbox.faults.admit(route)
                fault = (
                    sandbox.faults.take(route)
                    if wait is None
                    else Fault(
                        429,
                        route.error(429, "TooManyRequests", "Rate limit is exceeded. Try again later."),
                        {"Retry-After": str(wait)},
                    )
                )
                if fault is None:
                    response = _call(route, request)
                elif not fault.after:
                    record.fault = fault.describe()
                    trickle = fault.trickle
                    if fault.hold:
                        sandbox.faults._hold(route)
                    if fault.delay:
                        time.sleep(fault.delay)
                    if fault.drop:
                        raise _DroppedConnection()
                    if fault.status is None:
                        response = _call(route, request)
                    else:
                        response = _fault_response(route, fault, fault.status)
                else:
                    response = _call(route, request)
                    record.fault = fault.describe()
                    trickle = fault.trickle
                    record.processed_status = response.status
                    if fault.status is not None:
                        response = _fault_response(route, fault, fault.status)
                    # Recorded now: the work is done, whatever becomes of the answer.
                    _note_caller(record, request)
                    record.status = 0 if fault.drop else response.status
                    sandbox.recorder.add(record)
                    recorded = True
                    if fault.hold:
                        sandbox.faults._hold(route)
                    if fault.delay:
                        time.sleep(fault.delay)
                    if fault.drop:
                        raise _DroppedConnection()
        except _DroppedConnection:
            if not recorded:
                record.status = 0
                _note_caller(record, request)
                sandbox.recorder.add(record)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if not recorded:
            _note_caller(record, request)
            record.status = response.status
            sandbox.recorder.add(record)
        # Taken before the first byte goes out: whatever the client sends after reading this
        # answer arrives (``at``) later than ``answered_at``.
        record.answered_at = time.time()
        try:
            if trickle:
                self._trickle(response, trickle)
            else:
                self._send(response)
        except OSError:  # the client went away (e.g. killed while its answer was held, or cut)
            record.answered_at = None
            self.close_connection = True

    def _trickle(self, response: Response, seconds_per_byte: float) -> None:
        """Write ``response`` one byte at a time, ``seconds_per_byte`` apart (then close)."""
        buffer = io.BytesIO()
        wfile, self.wfile = self.wfile, buffer
        try:
            self._send(response)
        finally:
            self.wfile = wfile
        self.close_connection = True
        for byte in buffer.getvalue():
            time.sleep(seconds_per_byte)
            self.wfile.write(bytes((byte,)))
            self.wfile.flush()

    def _send(self, response: Response) -> None:
        data, headers = response.encode()
        self.send_response(response.status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve


def _call(route: Route, request: Request) -> Response:
    try:
        return route.handler(request)
    except HTTPError as exc:
        return Response(exc.status, exc.body, exc.headers)
    except Exception:  # noqa: BLE001 - a sandbox answers in the service's shape, never a traceback
        logger.exception("sandbox handler %s failed", route.name)
        return Response(500, route.error(500, "InternalServerError", "The sandbox failed to serve this."))


def _note_caller(record: RecordedRequest, request: Request) -> None:
    if request.token is not None:
        record.token_kind = getattr(request.token, "kind", None)
        record.principal = getattr(request.token, "principal", None)


def _fault_response(route: Route, fault: Fault, status: int) -> Response:
    body = fault.body
    if body is None:
        body = route.error(status, _fault_code(status), "Injected fault.")
    return Response(status, body, dict(fault.headers))


def _fault_code(status: int) -> str:
    return {
        429: "TooManyRequests",
        500: "InternalServerError",
        502: "BadGateway",
        503: "ServiceUnavailable",
        504: "GatewayTimeout",
    }.get(status, "Fault")


def _maybe_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    sandbox: HTTPSService

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS handshakes cut short by clients and resets are normal in fault tests.
        logger.debug("sandbox connection error from %s", client_address, exc_info=True)


class HTTPSService:
    """Serves a :class:`Router` over HTTPS on 127.0.0.1 (a free port unless one is given).

    ``extra_ports`` are further ports served by the same router when they can be bound
    (msal's user-realm discovery always calls port 443 of the authority host).
    """

    def __init__(
        self,
        router: Router,
        ssl_context: ssl.SSLContext,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_ports: tuple[int, ...] = (),
    ) -> None:
        self.router = router
        self.recorder = Recorder()
        self.faults = Faults()
        self._ssl_context = ssl_context
        self._host = host
        self._port = port
        self._extra_ports = extra_ports
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self.extra_ports_bound: list[int] = []

    @property
    def port(self) -> int:
        return self._servers[0].server_address[1]

    @property
    def url(self) -> str:
        return f"https://{self._host}:{self.port}"

    def _bind(self, port: int) -> _Server:
        server = _Server((self._host, port), _Handler, bind_and_activate=False)
        server.sandbox = self
        server.server_bind()
        server.server_activate()
        # The handshake happens lazily in the handler thread, so one slow client blocks no other.
        server.socket = self._ssl_context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        return server

    def start(self) -> None:
        self._servers.append(self._bind(self._port))
        for extra in self._extra_ports:
            try:
                self._servers.append(self._bind(extra))
                self.extra_ports_bound.append(extra)
            except OSError as exc:
                logger.warning("sandbox: port %s not served (%s)", extra, exc)
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"sandbox-{server.server_address[1]}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.faults.release_held()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        self.extra_ports_bound.clear()
