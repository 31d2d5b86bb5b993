"""Which gateways are on-premises, and their public keys: a cache shared by every run.

On-premises gateways need the credential encrypted with the gateway's public key; the virtual
gateway of cloud data sources takes plain JSON. The single gateway read cannot decide it: for a
cloud gateway ``GET /gateways/{id}`` answers ``{"id"}`` without a key, or 404, or 401/403 (all
seen in the field). ``GET /gateways`` lists exactly the on-premises gateways the caller
administers, with their keys, so a gateway in that list is on-premises and any other is treated
as cloud (an on-premises gateway the caller does not administer refuses the PATCH with 401
before any test: nothing is presented).

Keys are cached across runs for :data:`GATEWAY_CACHE_SECONDS`; a key that changed since is
detected from the gateway's answer (``DM_GWPipeline_UnknownError``: it could not decrypt, nothing
reached the source) and read again once (:meth:`GatewayKeys.fresh_key_after`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from remediation.clients.api_errors import ApiError
from remediation.clients.powerbi import EntityNotFound, PowerBIClient, PowerBINotAuthorized
from remediation.clients.powerbi_models import Gateway

__all__ = ["GATEWAY_CACHE_SECONDS", "GATEWAY_LIST", "GatewayKeys"]

logger = logging.getLogger("remediation.reconciler.targets.gateway")  # the gateway kind's log

GATEWAY_CACHE_SECONDS = 3600.0
"""How long gateways and their public keys are reused across runs (a changed key is detected)."""

GATEWAY_LIST = "gateway-list"
"""The run key lock under which a run's threads list the gateways (once, when two ask at once)."""


class GatewayKeys:
    """Which gateways are on-premises, and their public keys; shared by every run (thread-safe)."""

    def __init__(self, powerbi: PowerBIClient, *, clock: Callable[[], float] = time.time) -> None:
        self._powerbi = powerbi
        self._clock = clock
        self._lock = threading.Lock()
        self._listed: tuple[dict[str, Gateway], float] | None = None  # on-premises gateways, read at
        self._single: dict[str, tuple[Gateway, float]] = {}  # gateways read one by one

    def gateway(self, gateway_id: str, *, reading: threading.Lock | None = None) -> Gateway:
        """The gateway to encrypt for: with its key when on-premises, without one when cloud
        (``reading``: see :meth:`_on_premises`).

        Raises :class:`~remediation.clients.api_errors.ApiError` only when Power BI cannot be asked at all.
        """
        gateway_id = gateway_id.lower()
        listed = self._on_premises(reading)
        if gateway_id in listed:
            return listed[gateway_id]
        now = self._clock()
        with self._lock:
            cached = self._single.get(gateway_id)
        if cached is not None and now - cached[1] < GATEWAY_CACHE_SECONDS:
            return cached[0]
        try:
            gateway = self._powerbi.get_gateway(gateway_id)
        except (EntityNotFound, PowerBINotAuthorized) as exc:
            # Not among the caller's on-premises gateways and not readable: a cloud data source's
            # virtual gateway (404, 401 and 403 all occur for those).
            logger.info(
                "gateway %s is not an on-premises gateway of the caller (%s): cloud", gateway_id, exc.code
            )
            gateway = Gateway(id=gateway_id, name=None, type="Cloud")
        with self._lock:
            self._single[gateway_id] = (gateway, self._clock())
        return gateway

    def cached(self, gateway_id: str) -> bool:
        """True when :meth:`gateway` would answer without a request."""
        gateway_id, now = gateway_id.lower(), self._clock()
        with self._lock:
            listed = self._fresh_list(now)
            single = self._single.get(gateway_id)
        if listed is None:
            return False
        return gateway_id in listed or (single is not None and now - single[1] < GATEWAY_CACHE_SECONDS)

    def listed_on_premises(self, gateway_id: str, *, reading: threading.Lock | None = None) -> bool:
        """True when ``gateway_id`` is among the on-premises gateways the caller administers
        (``GET /gateways``, cached); any other gateway may be a cloud data source's."""
        return gateway_id.lower() in self._on_premises(reading)

    def fresh_key_after(self, exc: ApiError, used: Gateway) -> Gateway | None:
        """After ``DM_GWPipeline_UnknownError`` with ``used``'s key: the gateway with a new key if
        its key changed since it was read, else None (the error stands)."""
        if exc.code != "DM_GWPipeline_UnknownError" or used.public_key is None:
            return None
        try:
            fresh = self._powerbi.get_gateway(used.id)
        except ApiError:
            return None
        if fresh.public_key is None or fresh.public_key == used.public_key:
            return None
        with self._lock:
            self._single[used.id.lower()] = (fresh, self._clock())
            if self._listed is not None and used.id.lower() in self._listed[0]:
                self._listed[0][used.id.lower()] = fresh
        logger.info("gateway %s has a new public key; sending again under it", used.id)
        return fresh

    def _on_premises(self, reading: threading.Lock | None = None) -> dict[str, Gateway]:
        """The on-premises gateways (cached). ``reading``: a lock the callers of one run share, so
        that the run lists them once when two of its threads ask at the same moment (the key
        read beside a data source's settings, which may ask too); other runs do not wait for it
        (one may be waiting out a Retry-After past another's deadline)."""
        with reading or contextlib.nullcontext():
            with self._lock:
                listed = self._fresh_list(self._clock())
            if listed is not None:
                return listed
            try:
                found = {g.id.lower(): g for g in self._powerbi.get_gateways() if g.public_key is not None}
            except ApiError as exc:
                logger.warning("cannot list gateways (%s); reading them one by one", exc)
                return {}
            with self._lock:
                self._listed = (found, self._clock())
            return found

    def _fresh_list(self, now: float) -> dict[str, Gateway] | None:
        """The cached on-premises gateways, or None when stale (the caller holds ``_lock``)."""
        if self._listed is not None and now - self._listed[1] < GATEWAY_CACHE_SECONDS:
            return self._listed[0]
        return None
