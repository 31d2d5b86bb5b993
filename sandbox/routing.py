"""What every stand-in speaks: requests, answers, errors, and the router that names each route.

A stand-in registers named routes (``powerbi.update_datasource``) on the one :class:`Router`, each
with a handler (:class:`Request` -> :class:`Response`) and the service's own error shape; a handler
answers an error by raising :class:`HTTPError`. The server (:mod:`sandbox.server`) matches, records
and serves them; :mod:`sandbox.faults` fails them on request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl


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


class Headers:
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
    headers: Headers
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
