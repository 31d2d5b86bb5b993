"""The bindings: which Key Vault secret feeds which Power BI data source or Fabric connection, and
how (the model).

A :class:`Binding` names one secret, its credential type and the targets it feeds: gateway data
sources and Fabric connections by id (:class:`Target`), or chosen by what they connect to
(:class:`TargetMatch`). A :class:`BindingSet` holds them all, indexed, and says which binding feeds
a target. The bindings file is read and validated into a :class:`BindingSet` by
:mod:`remediation.config.bindings_file`; what a valid binding may still get wrong at its source
(``bindings check``) is in :mod:`remediation.config.bindings_advice`. Nothing here reads Key Vault;
the secret's value is resolved in :mod:`remediation.rules.credentials`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from remediation.errors import BindingsError

__all__ = [
    "BINDABLE_TYPES",
    "CONNECTIONS",
    "FABRIC_ONLY_TYPES",
    "MATCH_DETAIL_KEYS",
    "Binding",
    "BindingSet",
    "CredentialType",
    "EncryptedConnection",
    "OAuth2Mode",
    "PrivacyLevel",
    "Target",
    "TargetMatch",
]


class CredentialType(StrEnum):
    """``credentialDetails.credentialType``, spelled exactly as the Power BI API spells it."""

    BASIC = "Basic"
    WINDOWS = "Windows"
    KEY = "Key"
    SAS = "SAS"
    OAUTH2 = "OAuth2"
    ANONYMOUS = "Anonymous"
    SERVICE_PRINCIPAL = "ServicePrincipal"
    """Fabric connections only: the secret is the client secret; tenant and client id are the binding's."""


class PrivacyLevel(StrEnum):
    NONE = "None"
    PUBLIC = "Public"
    ORGANIZATIONAL = "Organizational"
    PRIVATE = "Private"


class EncryptedConnection(StrEnum):
    ENCRYPTED = "Encrypted"
    NOT_ENCRYPTED = "NotEncrypted"


class OAuth2Mode(StrEnum):
    """How an OAuth2 data source gets its credentials. Only the caller's own identity works:
    tokens put in the payload expire within an hour."""

    CALLER_IDENTITY = "caller-identity"


# Types a binding may use. Anonymous has nothing to rotate, so a binding for it is a mistake.
BINDABLE_TYPES: tuple[CredentialType, ...] = (
    CredentialType.BASIC,
    CredentialType.WINDOWS,
    CredentialType.KEY,
    CredentialType.SAS,
    CredentialType.OAUTH2,
)
# Types only Fabric connections take (``connectionId`` targets).
FABRIC_ONLY_TYPES: tuple[CredentialType, ...] = (CredentialType.SERVICE_PRINCIPAL,)

MATCH_DETAIL_KEYS = ("server", "database", "url", "path")
"""The connection details a :class:`TargetMatch` compares (a match needs one at least)."""

CONNECTIONS = "connections"
"""The ``gateway_id`` of a Fabric connection target: its ledger key is ``("connections", id)``,
beside the ``(gateway id, data source id)`` of gateway data sources (no GUID is "connections")."""


@dataclass(frozen=True)
class Target:
    """One gateway data source, by id (both GUIDs, lower-case), or one Fabric connection
    (``gateway_id`` :data:`CONNECTIONS`, ``datasource_id`` the connection id): see :meth:`connection`."""

    gateway_id: str
    datasource_id: str
    key_vault_reference: bool = field(default=False, compare=False)
    """A Fabric connection whose credential is a Key Vault reference: the healer never sends it a copy."""

    @classmethod
    def connection(cls, connection_id: str, *, key_vault_reference: bool = False) -> Target:
        """The target of Fabric connection ``connection_id`` (a GUID)."""
        return cls(CONNECTIONS, connection_id.strip().lower(), key_vault_reference)

    @property
    def key(self) -> tuple[str, str]:
        return (self.gateway_id, self.datasource_id)

    @property
    def connection_id(self) -> str | None:
        """The Fabric connection id, when the target is a connection."""
        return self.datasource_id if self.gateway_id == CONNECTIONS else None


@dataclass(frozen=True)
class TargetMatch:
    """Data sources (``kind`` "datasource") or Fabric connections (``kind`` "connection") chosen
    by what they connect to; every field that is set must match."""

    datasource_type: str | None = None
    server: str | None = None
    database: str | None = None
    url: str | None = None
    path: str | None = None
    kind: str = "datasource"
    connection_type: str | None = None  # connections: connectionDetails.type (e.g. SQL)
    connectivity_type: str | None = None  # connections: e.g. ShareableCloud, OnPremisesGateway

    @property
    def selects_connections(self) -> bool:
        return self.kind == "connection"

    def matches(self, datasource_type: str, connection_details: Mapping[str, str]) -> bool:
        """True when ``datasource_type`` and every given connection detail match (ignoring case).

        ``connection_details`` is the data source's ``connectionDetails`` object as Power BI
        returns it; its keys are compared case-insensitively too. A connection match selects no
        data source.
        """
        if self.selects_connections:
            return False
        if self.datasource_type is not None and not _same(self.datasource_type, datasource_type):
            return False
        details = {str(k).casefold(): v for k, v in connection_details.items()}
        for key in MATCH_DETAIL_KEYS:
            wanted = getattr(self, key)
            if wanted is None:
                continue
            actual = details.get(key)
            if not isinstance(actual, str) or not _same(wanted, actual):
                return False
        return True

    def matches_connection(
        self, connection_type: str | None, connectivity_type: str | None, path: str | None
    ) -> bool:
        """True when a Fabric connection (``connectionDetails.type``, ``connectivityType``,
        ``connectionDetails.path``) is selected: ``server`` and ``database`` are the first and
        second parts of a ``server;database`` path, ``url`` and ``path`` its whole (ignoring case
        and a trailing ``/``). A data source match selects no connection."""
        if not self.selects_connections:
            return False
        for wanted, actual in (
            (self.connection_type, connection_type),
            (self.connectivity_type, connectivity_type),
        ):
            if wanted is not None and (actual is None or not _same(wanted, actual)):
                return False
        whole = (path or "").strip()
        parts = [p.strip() for p in whole.split(";")]
        checks = (
            (self.server, parts[0] if whole else None),
            (self.database, parts[1] if len(parts) > 1 else None),
            (self.url, whole or None),
            (self.path, whole or None),
        )
        for wanted, actual in checks:
            if wanted is None:
                continue
            if actual is None or not _same(wanted.rstrip("/"), actual.rstrip("/")):
                return False
        return True


@dataclass(frozen=True)
class Binding:
    """One secret applied to some data sources with one credential type."""

    name: str
    secret: str
    credential_type: CredentialType
    username: str | None = None
    privacy_level: PrivacyLevel = PrivacyLevel.ORGANIZATIONAL
    encrypted_connection: EncryptedConnection = EncryptedConnection.ENCRYPTED
    oauth2_mode: OAuth2Mode | None = None
    take_over: bool = False
    tenant_id: str | None = None  # ServicePrincipal: the tenant of the app whose secret rotates
    client_id: str | None = None  # ServicePrincipal: that app's client id
    targets: tuple[Target, ...] = ()
    matches: tuple[TargetMatch, ...] = ()
    # Whether the file set them (else the defaults above are sent: Power BI requires both in an
    # update and reports neither for an existing data source, so they cannot be kept as they are).
    privacy_level_given: bool = field(default=False, compare=False)
    encrypted_connection_given: bool = field(default=False, compare=False)

    @property
    def uses_caller_identity(self) -> bool:
        """True for OAuth2 bindings that sign in as ``username`` and send no token."""
        return self.oauth2_mode is OAuth2Mode.CALLER_IDENTITY

    def matches_datasource(self, datasource_type: str, connection_details: Mapping[str, str]) -> bool:
        """True when one of this binding's ``match`` targets selects the data source."""
        return any(m.matches(datasource_type, connection_details) for m in self.matches)

    def matches_connection(
        self, connection_type: str | None, connectivity_type: str | None, path: str | None
    ) -> bool:
        """True when one of this binding's connection ``match`` targets selects the connection."""
        return any(m.matches_connection(connection_type, connectivity_type, path) for m in self.matches)

    @property
    def matches_connections(self) -> bool:
        """True when some ``match`` of this binding selects Fabric connections."""
        return any(m.selects_connections for m in self.matches)


@dataclass(frozen=True)
class BindingSet:
    """All bindings, indexed. Lookups never raise for "not bound"; they return None or []."""

    bindings: tuple[Binding, ...] = ()
    watch_workspaces: tuple[str, ...] = ()
    _by_name: dict[str, Binding] = field(init=False, repr=False, compare=False)
    _by_target: dict[tuple[str, str], Binding] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {b.name.casefold(): b for b in self.bindings})
        object.__setattr__(self, "_by_target", {t.key: b for b in self.bindings for t in b.targets})

    def __iter__(self) -> Iterator[Binding]:
        return iter(self.bindings)

    def __len__(self) -> int:
        return len(self.bindings)

    def by_name(self, name: str) -> Binding | None:
        """The binding called ``name`` (case-insensitive), or None."""
        return self._by_name.get(name.casefold())

    def for_secret(self, name: str) -> list[Binding]:
        """Bindings fed by secret ``name``. Key Vault secret names are case-insensitive."""
        wanted = name.casefold()
        return [b for b in self.bindings if b.secret.casefold() == wanted]

    def for_target(self, gateway_id: str, datasource_id: str) -> Binding | None:
        """The binding that names this data source by id, or None. Ids are compared lower-case."""
        return self._by_target.get((gateway_id.strip().lower(), datasource_id.strip().lower()))

    def for_datasource(
        self,
        gateway_id: str,
        datasource_id: str,
        *,
        datasource_type: str,
        connection_details: Mapping[str, str],
    ) -> Binding | None:
        """The binding for a data source seen in Power BI: by id first, else by ``match``.

        Raises:
            BindingsError: no binding names it by id and more than one ``match`` selects it
                (which secret to use would be a guess).
        """
        explicit = self.for_target(gateway_id, datasource_id)
        if explicit is not None:
            return explicit
        found = [b for b in self.bindings if b.matches_datasource(datasource_type, connection_details)]
        if len(found) > 1:
            names = ", ".join(repr(b.name) for b in found)
            raise BindingsError(
                f"data source {gateway_id}/{datasource_id} is selected by the matches of bindings "
                f"{names}; make the matches narrower or bind it by gatewayId and datasourceId",
                binding=found[0].name,
                field="targets",
            )
        return found[0] if found else None

    def for_connection(
        self,
        connection_id: str,
        *,
        connection_type: str | None,
        connectivity_type: str | None,
        path: str | None,
    ) -> Binding | None:
        """The binding for a Fabric connection: by ``connectionId`` first, else by a connection
        ``match``.

        Raises:
            BindingsError: no binding names it by id and more than one ``match`` selects it.
        """
        explicit = self.for_target(CONNECTIONS, connection_id)
        if explicit is not None:
            return explicit
        found = [b for b in self.bindings if b.matches_connection(connection_type, connectivity_type, path)]
        if len(found) > 1:
            names = ", ".join(repr(b.name) for b in found)
            raise BindingsError(
                f"connection {connection_id} is selected by the matches of bindings {names}; make the "
                "matches narrower or bind it by connectionId",
                binding=found[0].name,
                field="targets",
            )
        return found[0] if found else None

    @property
    def binds_connections(self) -> bool:
        """True when some binding targets Fabric connections (by id or ``match``)."""
        return any(
            b.matches_connections or any(t.connection_id is not None for t in b.targets)
            for b in self.bindings
        )

    def secrets(self) -> list[str]:
        """Distinct secret names in file order (case-insensitively distinct, first spelling kept)."""
        seen: dict[str, str] = {}
        for b in self.bindings:
            seen.setdefault(b.secret.casefold(), b.secret)
        return list(seen.values())


def _same(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()
