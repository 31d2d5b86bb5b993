"""The sandbox's HTTPS server: one threaded server on 127.0.0.1 that serves every stand-in.

Each request is matched on the :class:`~sandbox.routing.Router`, recorded in a
:class:`~sandbox.recorder.Recorder`, given to :class:`~sandbox.faults.Faults` (which may fail,
delay, hold, drop or trickle it, before the handler runs or after), and answered.

Handlers never let a Python exception escape as a traceback: :class:`~sandbox.routing.HTTPError`
becomes the service's own error shape, and any other exception becomes a 500 in that shape too.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from sandbox.faults import Fault, Faults
from sandbox.recorder import RecordedRequest, Recorder
from sandbox.routing import Headers, HTTPError, Request, Response, Route, Router

logger = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024


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
            headers=Headers(list(self.headers.items())),
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
                        sandbox.faults.hold_until_released(route)
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
                        sandbox.faults.hold_until_released(route)
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
