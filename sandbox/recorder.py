"""The record of every request the sandbox served, so tests can assert exactly what a client did."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


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
