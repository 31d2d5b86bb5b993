"""The total deadline of one HTTP attempt, and the urllib3 connections a watchdog can cut.

A ``(connect, read)`` timeout bounds each wait for a byte, not the whole answer: a server that
trickles its answer a byte at a time, each within the read timeout, would hold a call for ever.
So every attempt of :class:`~remediation.clients.http.HttpPipeline` also has a total deadline
(:func:`request_deadline`: connect + read seconds from sending to the last byte of the answer).
:meth:`AttemptCut.start` begins one attempt's watch; one daemon thread (the watchdog) expires the
cut when its deadline (monotonic) passes, and the connections the attempt holds are then shut
(``shutdown(SHUT_RDWR)``), so a blocked read or write returns at once. The attempt then fails
with :class:`AnswerDeadlineExceeded` (a ``requests`` timeout; after sending, that is a lost
answer). :meth:`AttemptCut.end` ends the watch when the attempt is over.

:class:`CutAdapter` is the ``requests`` adapter whose connection pools (direct or through an
HTTP proxy; not SOCKS) hand their connections to the calling attempt's cut, from its request
until the connection goes back to the pool, so a connection another attempt took from the pool
is never shut.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import socket
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

__all__ = ["AnswerDeadlineExceeded", "AttemptCut", "CutAdapter", "request_deadline"]


class AnswerDeadlineExceeded(requests.exceptions.Timeout):
    """An attempt that did not end within its total deadline (:func:`request_deadline`); its
    connection was shut. After sending, the request may have been served: its answer is lost."""


class AttemptCut:
    """One attempt's deadline: when it passes, the connections the attempt holds are shut down
    (``shutdown(SHUT_RDWR)``), so a blocked read or write returns at once, whatever the server
    trickles. A connection is held from its request until it goes back to the pool (``detach``,
    under the same lock as the shutdown, so a connection another attempt took from the pool is
    never shut). :meth:`end` ends the watch; ``expired`` then says whether the deadline cut it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []
        self._done = False
        self._scope: contextvars.Token[AttemptCut | None] | None = None
        self.expired = False

    @classmethod
    def start(cls, seconds: float) -> AttemptCut:
        """Watch the calling attempt: the connections it uses (in this context) from now until
        :meth:`end` are shut when ``seconds`` have passed."""
        cut = cls()
        cut._scope = _CUT.set(cut)
        _WATCHDOG.watch(cut, time.monotonic() + seconds)
        return cut

    def end(self) -> None:
        """The attempt is over: stop watching it (its connections are no longer its to cut)."""
        self._finish()
        if self._scope is not None:
            _CUT.reset(self._scope)

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

    def _finish(self) -> None:
        with self._lock:
            self._done = True
            self._connections.clear()


def _shut(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            # The raw socket's shutdown (an SSLSocket's own would drop its TLS state under a reader).
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


_CUT: contextvars.ContextVar[AttemptCut | None] = contextvars.ContextVar("http_attempt_cut", default=None)


class _Watchdog:
    """One daemon thread that expires attempts' cuts when their deadline (monotonic) passes."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._due: list[tuple[float, int, AttemptCut]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, cut: AttemptCut, at: float) -> None:
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
    """Registers itself with the calling attempt's cut (see :class:`AttemptCut`)."""

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
    """Registers itself with the calling attempt's cut (see :class:`AttemptCut`)."""

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


class CutAdapter(HTTPAdapter):
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


def request_deadline(timeout: tuple[float, float]) -> float:
    """The total deadline of one attempt with ``(connect, read)`` timeouts: connect + read seconds
    from sending to the last byte of the answer. The read timeout bounds each wait for a byte; this
    bounds them all (an answer that trickles in is cut here)."""
    connect, read = timeout
    return connect + read
