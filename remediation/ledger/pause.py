"""The throttling pause of one principal, shared across processes and instances through the ledger.

Power BI and Fabric each throttle per principal, not per process (each has its own marker:
``throttle:powerbi``, ``throttle:fabric``; one service's 429 does not hold the other's calls).
When one instance draws a 429 with ``Retry-After``, the others' requests would hit the same
limit; so the end of the pause is written to a ledger marker, and every pipeline reads it before
sending (:class:`~remediation.clients.http.HttpPipeline` with ``shared_pause``). The marker is
read at most every ``refresh`` seconds per process (a point read, not one per request), and
written only when a pause ends later than the one known. The write only ever extends the marker
(:meth:`~remediation.ledger.Ledger.raise_marker`: a conditional write in both backends), so two
instances throttled at once leave the longer of their two pauses, never the shorter.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from remediation.ledger.protocol import Ledger
from remediation.ledger.records import (
    LedgerError,
)

__all__ = ["LedgerPause"]

logger = logging.getLogger(__name__)


class LedgerPause:
    """A :class:`~remediation.clients.http.SharedPause` kept in the ledger marker ``name``."""

    def __init__(
        self,
        ledger: Ledger,
        name: str = "throttle:powerbi",
        *,
        clock: Callable[[], float] = time.time,
        refresh: float = 2.0,
    ) -> None:
        self._ledger = ledger
        self._name = name
        self._clock = clock
        self._refresh = refresh
        self._lock = threading.Lock()
        self._known = -math.inf
        self._read_at = -math.inf

    def resume_at(self) -> float:
        """The latest pause end known (epoch seconds; ``-inf``: none), read again when stale."""
        now = self._clock()
        with self._lock:
            if now - self._read_at < self._refresh:
                return self._known
            self._read_at = now
        try:
            text = self._ledger.marker(self._name)
        except LedgerError as exc:
            logger.warning("cannot read the shared throttling pause: %s", exc)
            return self._known
        value = _parse(text)
        with self._lock:
            self._known = max(self._known, value)
            return self._known

    def pause_until(self, at: float) -> None:
        """Make the pause last until ``at`` for every instance (unless a later one is known)."""
        with self._lock:
            if at <= self._known:
                return
            self._known = at
        try:
            stored = self._ledger.raise_marker(self._name, at, self._clock())
        except LedgerError as exc:
            logger.warning("cannot share a throttling pause: %s", exc)
            return
        with self._lock:
            self._known = max(self._known, stored)


def _parse(text: str | None) -> float:
    try:
        value = float(text) if text else -math.inf
    except ValueError:
        return -math.inf
    return value if not math.isnan(value) else -math.inf
