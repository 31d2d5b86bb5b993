"""The bindings file: which Key Vault secret feeds which Power BI data source, and how.

The format is DESIGN.md's public contract::

    {"bindings": [{"name", "secret", "credentialType", ["username"], ["privacyLevel"],
                   ["encryptedConnection"], ["oauth2"], ["takeOver"], "targets": [...]}],
     "watch": {"workspaces": ["<uuid>", ...]}}

A target is ``{"gatewayId": "<uuid>", "datasourceId": "<uuid>"}`` (a gateway data source),
``{"connectionId": "<uuid>", ["keyVaultReference"]}`` (a Fabric connection),
``{"match": {["datasourceType"], ["server"], ["database"], ["url"], ["path"]}}`` (gateway data
sources; every given key must match the data source, case-insensitively), or
``{"match": {"kind": "connection", ["connectionType"], ["connectivityType"], ["server"],
["database"], ["url"], ["path"]}}`` (Fabric connections, by ``connectionDetails.type``, the
``connectivityType`` and ``connectionDetails.path``: ``server`` and ``database`` are the parts of
a ``server;database`` path, ``url`` and ``path`` the whole of it).

Validation is strict because a binding decides what password is presented to which system: an
unknown key (a typo such as ``"usename"``) is an error, not a silently ignored line, and one data
source may be fed by one secret only. The first problem found is raised as a
:class:`~remediation.errors.BindingsError` naming the binding, the field and what is allowed.
Nothing here reads Key Vault; the secret's value is resolved in :mod:`remediation.rules.credentials`.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from remediation.errors import BindingsError

__all__ = [
    "Binding",
    "BindingSet",
    "CredentialType",
    "EncryptedConnection",
    "OAuth2Mode",
    "PrivacyLevel",
    "Target",
    "TargetMatch",
    "binding_problems",
    "binding_warnings",
    "is_windows_account_name",
    "load_bindings",
    "parse_bindings",
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
# Types only Fabric connections take (``connectionId`` targets), and Fabric's spelling of SAS.
FABRIC_ONLY_TYPES: tuple[CredentialType, ...] = (CredentialType.SERVICE_PRINCIPAL,)
_TYPE_ALIASES = {"SharedAccessSignature": CredentialType.SAS}
_USERNAME_TYPES = (CredentialType.BASIC, CredentialType.WINDOWS, CredentialType.OAUTH2)

_E = TypeVar("_E", bound=StrEnum)

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SECRET_NAME = re.compile(r"[0-9a-zA-Z-]{1,127}")

_TOP_KEYS = ("bindings", "watch")
_WATCH_KEYS = ("workspaces",)
_BINDING_KEYS = (
    "name",
    "secret",
    "credentialType",
    "username",
    "privacyLevel",
    "encryptedConnection",
    "oauth2",
    "takeOver",
    "tenantId",
    "clientId",
    "targets",
)
_TARGET_KEYS = ("gatewayId", "datasourceId")
_CONNECTION_KEYS = ("connectionId", "keyVaultReference")
_MATCH_KEYS = ("kind", "datasourceType", "server", "database", "url", "path")
_CONNECTION_MATCH_KEYS = ("kind", "connectionType", "connectivityType", "server", "database", "url", "path")
_MATCH_DETAIL_KEYS = ("server", "database", "url", "path")
_MATCH_KINDS = ("datasource", "connection")


# -- model --------------------------------------------------------------------------------------
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
        for key in _MATCH_DETAIL_KEYS:
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


# -- advice for `bindings check` (pure) ---------------------------------------------------------
_DOWN_LEVEL = re.compile(r"[^\\/@\s]+\\[^\\/@\s]+")  # CONTOSO\svc
_UPN = re.compile(r"[^\\/@\s]+@[^\\/@\s]+\.[^\\/@\s]+")  # svc@contoso.com
_PLACEHOLDER = re.compile(r"<[^<>]*>")


def is_windows_account_name(username: str) -> bool:
    """True for the two forms Windows authentication takes: ``DOMAIN\\user`` or a UPN."""
    name = username.strip()
    return bool(_DOWN_LEVEL.fullmatch(name) or _UPN.fullmatch(name))


def binding_problems(binding: Binding) -> list[str]:
    """What would make this binding fail at its source although the file is valid (each one a
    sentence saying what to change). A Windows username that is neither ``DOMAIN\\user`` nor a
    UPN: the gateway signs in as a local user of its own machine, and the source refuses it."""
    problems: list[str] = []
    username = binding.username
    if username is not None and _PLACEHOLDER.search(username):
        problems.append(f"username {username!r} is a placeholder of a draft: put the account here")
    elif (
        username is not None
        and binding.credential_type is CredentialType.WINDOWS
        and not is_windows_account_name(username)
    ):
        problems.append(
            f"username {username!r} is neither DOMAIN\\user nor a UPN (user@domain.com): Windows "
            "sources refuse it; write the account with its domain"
        )
    return problems


def binding_warnings(binding: Binding) -> list[str]:
    """What a person should know before this binding is used (it still works)."""
    warnings: list[str] = []
    # Only a gateway data source's PATCH must carry both; a Fabric connection's sends neither
    # unless the binding gives it (a partial update: the connection keeps its own).
    gateway_targets = any(t.connection_id is None for t in binding.targets) or any(
        not m.selects_connections for m in binding.matches
    )
    unset = [
        f"{key} ({value})"
        for key, value, given in (
            ("privacyLevel", binding.privacy_level.value, binding.privacy_level_given),
            ("encryptedConnection", binding.encrypted_connection.value, binding.encrypted_connection_given),
        )
        if not given and gateway_targets
    ]
    if unset:
        warnings.append(
            f"{' and '.join(unset)} not set: a credential change must carry both and Power BI does not "
            "report a data source's current ones; the healer reads them in the Fabric connection the "
            "data source is and keeps them, but if Fabric cannot tell, these defaults take the place of "
            "what an admin chose (the report warns); write the data source's own values in the binding "
            "to be sure"
        )
    if binding.take_over:
        warnings.append(
            "takeOver: true makes the identity the owner of each dataset using a cloud target; "
            "Power BI then resets the credentials of that dataset's other cloud data sources, "
            "which must be bound too (or be re-entered by hand)"
        )
    return warnings


# -- loading ------------------------------------------------------------------------------------
def load_bindings(source: str) -> BindingSet:
    """Parse ``REMEDIATION_BINDINGS``: inline JSON when it starts with ``{``, else a file path.

    Raises:
        BindingsError: the file is missing or unreadable, the text is not JSON, or a rule is broken.
    """
    if not source.strip():
        raise BindingsError("REMEDIATION_BINDINGS is empty; set it to the bindings file's path or its JSON")
    if source.lstrip().startswith("{"):
        return parse_bindings(_loads(source, "inline REMEDIATION_BINDINGS"))
    path = source.strip()
    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise BindingsError(
            f"file {path!r} does not exist; set REMEDIATION_BINDINGS to the bindings file's path or its JSON"
        ) from None
    except IsADirectoryError:
        raise BindingsError(f"{path!r} is a directory, not a bindings file") from None
    except UnicodeDecodeError:
        raise BindingsError(f"file {path!r} is not UTF-8 text") from None
    except OSError as exc:
        raise BindingsError(f"file {path!r} cannot be read ({exc.strerror or type(exc).__name__})") from None
    return parse_bindings(_loads(text, f"file {path!r}"))


def _loads(text: str, what: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise BindingsError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # json.loads would keep the last one silently; a repeated key is a typo waiting to bite.
            raise BindingsError(f"key {key!r} appears twice in one object; keep one", field=key)
        result[key] = value
    return result


# -- validation ---------------------------------------------------------------------------------
def parse_bindings(doc: object) -> BindingSet:
    """Validate a parsed bindings document and build the :class:`BindingSet`.

    Raises:
        BindingsError: the first rule the document breaks.
    """
    if not isinstance(doc, dict):
        raise BindingsError('the document must be a JSON object {"bindings": [...], "watch": {...}}')
    _check_keys(doc, _TOP_KEYS, binding=None, where="")
    if "bindings" not in doc:
        raise BindingsError('"bindings" is missing; it lists the bindings', field="bindings")
    raw_bindings = doc["bindings"]
    if not isinstance(raw_bindings, list):
        raise BindingsError("must be a list of binding objects", field="bindings")

    bindings: list[Binding] = []
    names: dict[str, str] = {}
    owner_of: dict[tuple[str, str], str] = {}
    for index, raw in enumerate(raw_bindings):
        binding, positions = _parse_binding(raw, index)
        folded = binding.name.casefold()
        if folded in names:
            raise BindingsError(
                f"the name is used twice (also by {names[folded]!r}); binding names must be unique",
                binding=binding.name,
                field="name",
            )
        names[folded] = binding.name
        for t_index, target in enumerate(binding.targets):
            other = owner_of.get(target.key)
            if other is not None:
                raise BindingsError(
                    f"data source {target.gateway_id}/{target.datasource_id} is also bound by "
                    f"{other!r}; one data source takes one secret, so bind it once",
                    binding=binding.name,
                    field=f"targets[{positions[t_index]}]",
                )
            owner_of[target.key] = binding.name
        bindings.append(binding)

    return BindingSet(tuple(bindings), _parse_watch(doc.get("watch")))


def _parse_watch(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise BindingsError('must be an object like {"workspaces": ["<uuid>"]}', field="watch")
    _check_keys(raw, _WATCH_KEYS, binding=None, where="watch.")
    workspaces = raw.get("workspaces", [])
    if not isinstance(workspaces, list):
        raise BindingsError("must be a list of workspace ids (GUIDs)", field="watch.workspaces")
    result: list[str] = []
    for i, item in enumerate(workspaces):
        guid = _guid(item, binding=None, field=f"watch.workspaces[{i}]", what="a workspace id")
        if guid in result:
            raise BindingsError(f"workspace {guid} is listed twice", field=f"watch.workspaces[{i}]")
        result.append(guid)
    return tuple(result)


def _parse_binding(raw: object, index: int) -> tuple[Binding, tuple[int, ...]]:
    """The binding, and the position in its ``targets`` list of each of its id targets."""
    label = f"bindings[{index}]"
    if not isinstance(raw, dict):
        raise BindingsError("must be an object with name, secret, credentialType and targets", binding=label)
    name = raw.get("name")
    if isinstance(name, str) and name.strip():
        label = name
    else:
        raise BindingsError(
            "a non-empty name is required (a unique label for this binding)", binding=label, field="name"
        )
    _check_keys(raw, _BINDING_KEYS, binding=label, where="")

    secret = raw.get("secret")
    if not isinstance(secret, str) or not _SECRET_NAME.fullmatch(secret):
        # The value is not echoed: a password pasted here by mistake must not reach the logs.
        raise BindingsError(
            "must be the name of the Key Vault secret (1-127 characters: letters, digits and '-'), "
            "not its value",
            binding=label,
            field="secret",
        )

    credential_type = _credential_type(raw.get("credentialType"), label)
    username = _username(raw, credential_type, label)
    oauth2_mode = _oauth2_mode(raw, credential_type, label)
    privacy = _choice(raw, "privacyLevel", PrivacyLevel, PrivacyLevel.ORGANIZATIONAL, label)
    encrypted = _choice(raw, "encryptedConnection", EncryptedConnection, EncryptedConnection.ENCRYPTED, label)

    take_over = raw.get("takeOver", False)
    if not isinstance(take_over, bool):
        raise BindingsError(
            "must be true or false (true lets the healer Take Over cloud datasets to own them)",
            binding=label,
            field="takeOver",
        )

    tenant_id, client_id = _principal(raw, credential_type, label)
    targets, positions, matches = _parse_targets(raw.get("targets"), label)
    _check_target_kinds(credential_type, targets, matches, label)
    binding = Binding(
        name=name,
        secret=secret,
        credential_type=credential_type,
        username=username,
        privacy_level=privacy,
        encrypted_connection=encrypted,
        oauth2_mode=oauth2_mode,
        take_over=take_over,
        tenant_id=tenant_id,
        client_id=client_id,
        targets=targets,
        matches=matches,
        privacy_level_given="privacyLevel" in raw,
        encrypted_connection_given="encryptedConnection" in raw,
    )
    return binding, positions


def _principal(
    raw: dict[str, Any], credential_type: CredentialType, label: str
) -> tuple[str | None, str | None]:
    """``tenantId`` and ``clientId``: required by ServicePrincipal bindings, refused by others."""
    if credential_type is not CredentialType.SERVICE_PRINCIPAL:
        for key in ("tenantId", "clientId"):
            if key in raw:
                raise BindingsError(
                    f"only ServicePrincipal bindings take {key}; "
                    f"remove it from this {credential_type} binding",
                    binding=label,
                    field=key,
                )
        return None, None
    tenant = _guid(raw.get("tenantId"), binding=label, field="tenantId", what="the tenant id of the app")
    client = _guid(raw.get("clientId"), binding=label, field="clientId", what="the client id of the app")
    return tenant, client


def _check_target_kinds(
    credential_type: CredentialType, targets: Sequence[Target], matches: Sequence[TargetMatch], label: str
) -> None:
    """ServicePrincipal exists only for Fabric connections; OAuth2 only for gateway data sources
    (Fabric's API has no OAuth2 credential: it needs an interactive sign-in)."""
    gateway_targets = any(not m.selects_connections for m in matches) or any(
        t.connection_id is None for t in targets
    )
    if credential_type is CredentialType.SERVICE_PRINCIPAL and gateway_targets:
        raise BindingsError(
            "ServicePrincipal credentials exist only for Fabric connections: "
            'use {"connectionId": ...} targets',
            binding=label,
            field="targets",
        )
    if credential_type is CredentialType.OAUTH2 and (
        any(t.connection_id is not None for t in targets) or any(m.selects_connections for m in matches)
    ):
        raise BindingsError(
            "Fabric connections take no OAuth2 credential through the API (it needs an interactive "
            "sign-in); bind the gateway data source instead",
            binding=label,
            field="targets",
        )


def _credential_type(value: object, label: str) -> CredentialType:
    allowed = ", ".join(BINDABLE_TYPES + FABRIC_ONLY_TYPES)
    if value == CredentialType.ANONYMOUS:
        raise BindingsError(
            f"Anonymous data sources have no secret to rotate; remove this binding (allowed: {allowed})",
            binding=label,
            field="credentialType",
        )
    if isinstance(value, str):
        for member in BINDABLE_TYPES + FABRIC_ONLY_TYPES:
            if value == member.value:
                return member
        if value in _TYPE_ALIASES:
            return _TYPE_ALIASES[value]
    raise BindingsError(
        _not_allowed(value, [m.value for m in BINDABLE_TYPES + FABRIC_ONLY_TYPES]),
        binding=label,
        field="credentialType",
    )


def _username(raw: dict[str, Any], credential_type: CredentialType, label: str) -> str | None:
    if "username" not in raw:
        if credential_type is CredentialType.OAUTH2:
            raise BindingsError(
                "OAuth2 needs the UPN of the user whose identity sets the credentials, e.g. svc@contoso.com",
                binding=label,
                field="username",
            )
        return None
    username = raw["username"]
    if credential_type not in _USERNAME_TYPES:
        raise BindingsError(
            f"credentialType {credential_type} takes no username; remove it "
            "(only Basic, Windows and OAuth2 use one)",
            binding=label,
            field="username",
        )
    if not isinstance(username, str) or not username.strip():
        raise BindingsError("must be a non-empty string", binding=label, field="username")
    if credential_type is CredentialType.OAUTH2:
        user, _, domain = username.partition("@")
        if not user or not domain:
            raise BindingsError(
                f"{username!r} is not a UPN; OAuth2 needs a user principal name like svc@contoso.com",
                binding=label,
                field="username",
            )
    return username


def _oauth2_mode(raw: dict[str, Any], credential_type: CredentialType, label: str) -> OAuth2Mode | None:
    value = raw.get("oauth2")
    if credential_type is not CredentialType.OAUTH2:
        if "oauth2" in raw:
            raise BindingsError(
                f"only OAuth2 bindings take oauth2; remove it from this {credential_type} binding",
                binding=label,
                field="oauth2",
            )
        return None
    if value != OAuth2Mode.CALLER_IDENTITY.value:
        raise BindingsError(
            f"{_not_allowed(value, [OAuth2Mode.CALLER_IDENTITY.value])}; OAuth2 bindings need "
            '"oauth2": "caller-identity" (tokens put in the payload expire within an hour)',
            binding=label,
            field="oauth2",
        )
    return OAuth2Mode.CALLER_IDENTITY


def _choice(raw: dict[str, Any], key: str, enum: type[_E], default: _E, label: str) -> _E:
    if key not in raw:
        return default
    value = raw[key]
    for member in enum:
        if value == member.value:
            return member
    raise BindingsError(_not_allowed(value, [m.value for m in enum]), binding=label, field=key)


def _parse_targets(
    raw: object, label: str
) -> tuple[tuple[Target, ...], tuple[int, ...], tuple[TargetMatch, ...]]:
    if not isinstance(raw, list) or not raw:
        raise BindingsError(
            'must be a non-empty list of {"gatewayId", "datasourceId"} or {"match": {...}} objects',
            binding=label,
            field="targets",
        )
    targets: list[Target] = []
    positions: list[int] = []
    matches: list[TargetMatch] = []
    for i, item in enumerate(raw):
        where = f"targets[{i}]"
        if not isinstance(item, dict):
            raise BindingsError(
                'must be {"gatewayId": "<uuid>", "datasourceId": "<uuid>"} or {"match": {...}}',
                binding=label,
                field=where,
            )
        if "connectionId" in item:
            _check_keys(item, _CONNECTION_KEYS, binding=label, where=where + ".")
            connection = _guid(
                item.get("connectionId"), binding=label, field=where + ".connectionId", what="a connection id"
            )
            reference = item.get("keyVaultReference", False)
            if not isinstance(reference, bool):
                raise BindingsError(
                    "must be true or false (true: the connection reads this secret from Key Vault itself, "
                    "so the healer never sends it a copy)",
                    binding=label,
                    field=where + ".keyVaultReference",
                )
            target = Target.connection(connection, key_vault_reference=reference)
            if target in targets:
                raise BindingsError(
                    f"connection {connection} is listed twice in this binding", binding=label, field=where
                )
            targets.append(target)
            positions.append(i)
            continue
        if "match" in item:
            _check_keys(item, ("match",), binding=label, where=where + ".")
            matches.append(_parse_match(item["match"], label, where + ".match"))
            continue
        _check_keys(item, _TARGET_KEYS, binding=label, where=where + ".")
        gateway = _guid(item.get("gatewayId"), binding=label, field=where + ".gatewayId", what="a gateway id")
        datasource = _guid(
            item.get("datasourceId"), binding=label, field=where + ".datasourceId", what="a data source id"
        )
        target = Target(gateway, datasource)
        if target in targets:
            raise BindingsError(
                f"data source {gateway}/{datasource} is listed twice in this binding",
                binding=label,
                field=where,
            )
        targets.append(target)
        positions.append(i)
    return tuple(targets), tuple(positions), tuple(matches)


def _parse_match(raw: object, label: str, where: str) -> TargetMatch:
    keys = ", ".join(_MATCH_KEYS)
    if not isinstance(raw, dict):
        raise BindingsError(f"must be an object with some of {keys}", binding=label, field=where)
    kind = raw.get("kind", "datasource")
    if kind not in _MATCH_KINDS:
        raise BindingsError(
            _not_allowed(kind, list(_MATCH_KINDS))
            + ' ("datasource": gateway data sources, the default; "connection": Fabric connections)',
            binding=label,
            field=where + ".kind",
        )
    allowed = _CONNECTION_MATCH_KEYS if kind == "connection" else _MATCH_KEYS
    for key in raw:
        if kind == "datasource" and key not in allowed and key in _CONNECTION_MATCH_KEYS:
            raise BindingsError(
                f'{key} selects Fabric connections: add "kind": "connection" to this match '
                f"(allowed for data sources: {keys})",
                binding=label,
                field=f"{where}.{key}",
            )
    _check_keys(raw, allowed, binding=label, where=where + ".")
    values: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str) or not value.strip():
            raise BindingsError("must be a non-empty string", binding=label, field=f"{where}.{key}")
        values[key] = value.strip()
    if not any(k in values for k in _MATCH_DETAIL_KEYS):
        raise BindingsError(
            "needs at least one of server, database, url, path (a type alone would select too much)",
            binding=label,
            field=where,
        )
    return TargetMatch(
        datasource_type=values.get("datasourceType"),
        server=values.get("server"),
        database=values.get("database"),
        url=values.get("url"),
        path=values.get("path"),
        kind=kind,
        connection_type=values.get("connectionType"),
        connectivity_type=values.get("connectivityType"),
    )


# -- helpers ------------------------------------------------------------------------------------
def _check_keys(obj: Mapping[str, Any], allowed: Sequence[str], *, binding: str | None, where: str) -> None:
    for key in obj:
        if key in allowed:
            continue
        hint = _suggest(key, allowed)
        raise BindingsError(
            f"unknown key{hint}; allowed here: {', '.join(allowed)}",
            binding=binding,
            field=where + key,
        )


def _suggest(value: str, allowed: Sequence[str]) -> str:
    for candidate in allowed:
        if candidate.casefold() == value.casefold():
            return f" (did you mean {candidate!r}?)"
    close = difflib.get_close_matches(value, list(allowed), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _not_allowed(value: object, allowed: Sequence[str]) -> str:
    listed = ", ".join(allowed)
    if value is None:
        return f"is required; allowed: {listed}"
    if not isinstance(value, str):
        return f"must be a string; allowed: {listed}"
    return f"{value!r} is not allowed{_suggest(value, allowed)}; allowed: {listed}"


def _guid(value: object, *, binding: str | None, field: str, what: str) -> str:
    if isinstance(value, str) and _GUID.fullmatch(value.strip()):
        return value.strip().lower()
    shown = f"{value!r} is not" if isinstance(value, str) else "is required and must be"
    raise BindingsError(
        f"{shown} {what}: a GUID like 1f69e798-5852-4fdd-ab01-33bb14b6e934",
        binding=binding,
        field=field,
    )


def _same(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()
