"""The privacy level and encryption a gateway data source's PATCH carries: the operator's own.

A PATCH must carry ``privacyLevel`` and ``encryptedConnection``, and Power BI does not report a
data source's current ones; Fabric does, for the connection the data source is
(:mod:`remediation.rules.connections`: the same id, else the unique connection of the same gateway,
type and path). So, for what the binding leaves out, :meth:`SourceSettingsReader.read` finds that
connection in Fabric's ``GET /connections`` (one paged list per instance and
:data:`CONNECTIONS_CACHE_SECONDS`, so a value an admin changed within that minute may be sent as it
was; a 401/403 is remembered as long) and its values are sent; when it cannot be found the
defaults are sent and the report's target says so (:func:`source_settings`). These reads are not
sign-ins and never fail a target. A binding's explicit values always win (no read when it gives
both).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from remediation.clients.api_errors import ApiError
from remediation.clients.fabric import Connection, FabricClient
from remediation.config.bindings import Binding, EncryptedConnection, PrivacyLevel, Target
from remediation.errors import RemediationError
from remediation.reconciler.runs import Resolved, Run
from remediation.reconciler.targets import in_few_words
from remediation.reconciler.targets.gateway_keys import GATEWAY_LIST, GatewayKeys
from remediation.rules.connections import corresponding_connection

__all__ = [
    "CONNECTIONS_CACHE_SECONDS",
    "SourceFacts",
    "SourceSettings",
    "SourceSettingsReader",
    "source_settings",
]


@dataclass(frozen=True)
class SourceSettings:
    """The privacy level and encryption to send (None: the binding's, its own or the default),
    and what the report's target should say about them."""

    privacy_level: PrivacyLevel | None = None
    encrypted_connection: EncryptedConnection | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceFacts:
    """How Power BI describes a gateway data source (to find its Fabric connection by path), and
    the ids of the other data sources known on its gateway (never its connection)."""

    datasource_type: str | None
    connection_details: Mapping[str, str]
    others: frozenset[str] = frozenset()


CONNECTIONS_CACHE_SECONDS = 60.0
"""How long one instance reuses Fabric's connection list (or its refusal) to learn the privacy
level and encryption of the data sources it heals."""

_ENCRYPTION = {
    "Encrypted": EncryptedConnection.ENCRYPTED,
    "NotEncrypted": EncryptedConnection.NOT_ENCRYPTED,
    # "Any" tries an encrypted connection first and falls back to an unencrypted one; Power BI's
    # API has no such value. Encrypted is sent: it is what the connection uses whenever it can,
    # what the healer sent before it read anything (no regression), and NotEncrypted would be a
    # silent downgrade. The report says so (see source_settings).
    "Any": EncryptedConnection.ENCRYPTED,
}


def source_settings(binding: Binding, connection: Connection | None, unread: str) -> SourceSettings:
    """What to send for what ``binding`` leaves out: ``connection``'s privacy level and encryption
    (the data source's current ones), or, when it is None (``unread`` says why) or a value is
    not one Power BI takes, the defaults with a warning saying how to keep them."""
    missing: list[str] = []
    notes: list[str] = []
    privacy: PrivacyLevel | None = None
    encrypted: EncryptedConnection | None = None
    if not binding.privacy_level_given:
        try:
            privacy = None if connection is None else PrivacyLevel(connection.privacy_level or "")
        except ValueError:
            privacy = None
        if privacy is None:
            missing.append(f"privacyLevel ({binding.privacy_level.value})")
    if not binding.encrypted_connection_given:
        reported = None if connection is None else connection.connection_encryption
        encrypted = _ENCRYPTION.get(reported or "")
        if encrypted is None:
            missing.append(f"encryptedConnection ({binding.encrypted_connection.value})")
        elif reported == "Any":
            notes.append(
                "the connection allows an unencrypted fallback (Fabric's connectionEncryption Any), "
                "which Power BI's API cannot express: encryptedConnection Encrypted was sent; write "
                '"encryptedConnection": "NotEncrypted" in the binding if the source cannot encrypt'
            )
    if missing:
        why = unread if connection is None else "Fabric reported a value Power BI does not take"
        notes.insert(
            0,
            f"{' and '.join(missing)} set to the default{'s' if len(missing) > 1 else ''} because the "
            f"data source's current setting could not be read ({why}); write the data source's own "
            "values in the binding to keep them",
        )
    return SourceSettings(privacy, encrypted, tuple(notes))


class SourceSettingsReader:
    """Reads the settings to send from the Fabric connection a data source is (thread-safe; one
    per gateway kind, its connection list shared by the instance's runs)."""

    def __init__(
        self,
        *,
        gateways: GatewayKeys,
        clock: Callable[[], float] = time.time,
        fabric: FabricClient | None = None,
        connections: Callable[[Run], list[Connection]] | None = None,
        source_facts: Callable[[Target, Run], SourceFacts | None] | None = None,
    ) -> None:
        self.gateways = gateways
        self._clock = clock
        self._fabric = fabric
        self._connections = connections
        self._source_facts = source_facts
        self._listed: tuple[float, list[Connection] | None, str] | None = None
        self._listed_lock = threading.Lock()

    def read(self, item: Resolved, run: Run) -> SourceSettings:
        """What to send for what ``item``'s binding leaves out (nothing is read when it gives
        both; see the module docstring)."""
        binding = item.binding
        if binding.privacy_level_given and binding.encrypted_connection_given:
            return SourceSettings()
        connection, unread = self.connection_of(item.target, run)
        return source_settings(binding, connection, unread)

    def connection_of(self, target: Target, run: Run) -> tuple[Connection | None, str]:
        """The Fabric connection the data source is, or None and why it is not known. Never
        raises: a read that fails is a warning, not a failed target.

        One ``GET /connections`` (paged) serves every target of the instance for
        :data:`CONNECTIONS_CACHE_SECONDS` (a fan-out of a thousand targets must not cost a
        thousand reads), and a refusal (401/403: no Fabric role or API access) is remembered as
        long, so an identity without Fabric rights pays one refused call, not one per target.
        """
        if self._fabric is None or self._connections is None:
            return None, "no Fabric API is configured, and Power BI does not report them"
        listed, why = self._listed_connections(run)
        if listed is None:
            return None, f"Fabric's GET /connections: {why}"
        by_id = next((c for c in listed if c.id == target.datasource_id), None)
        if by_id is not None:  # Power BI's id is the connection's
            return by_id, ""
        first = f"no Fabric connection has the id {target.datasource_id}"
        try:
            facts = None if self._source_facts is None else self._source_facts(target, run)
        except RemediationError as exc:
            return None, f"{first}; Power BI's description of the data source: {in_few_words(exc)}"
        if facts is None:
            return None, f"{first}; Power BI's description of the data source is unknown"
        # An on-premises data source is an on-premises connection of its gateway; a cloud one is
        # a cloud connection (a cloud connection to the same server is another thing).
        try:
            listing = run.key_lock(GATEWAY_LIST)  # once in the run, if the key is being read too
            on_premises = self.gateways.listed_on_premises(target.gateway_id, reading=listing)
        except RemediationError as exc:
            return None, f"{first}; Power BI's gateway list: {in_few_words(exc)}"
        candidates = [
            c
            for c in listed
            if c.id not in facts.others and c.connectivity_type.startswith("OnPremisesGateway") == on_premises
        ]
        found = corresponding_connection(
            target.datasource_id,
            facts.datasource_type,
            target.gateway_id,
            facts.connection_details,
            candidates,
        )
        connection = next((c for c in candidates if c.id == found), None)
        if connection is None:
            return None, f"{first}; no single Fabric connection has its gateway, type and path"
        return connection, ""

    def _listed_connections(self, run: Run) -> tuple[list[Connection] | None, str]:
        """The connections the identity has a role on (cached per instance), or None and why."""
        assert self._connections is not None
        now = self._clock()
        with self._listed_lock:
            if self._listed is not None and 0 <= now - self._listed[0] < CONNECTIONS_CACHE_SECONDS:
                return self._listed[1], self._listed[2]
        try:
            found: list[Connection] | None = self._connections(run)
            why = ""
        except (ApiError, RemediationError) as exc:
            found, why = None, in_few_words(exc)
            refused = isinstance(exc, ApiError) and exc.status in (401, 403)
            if not refused:
                return None, why  # a fault (5xx, timeout): the next target asks again
        with self._listed_lock:
            self._listed = (now, found, why)
        return found, why
