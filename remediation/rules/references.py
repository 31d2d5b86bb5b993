"""Where a Fabric Key Vault reference is possible, and why not elsewhere: one table, with sources.

A cloud connection can hold ``{connectionId, secretName}`` in a ``*Reference`` field instead of a
copy of its secret; Fabric then reads the latest version at each refresh (FABRIC.md §2 and §6,
``specs/fabric/platform/definitions/connections.json``). Whether a connection can is decided by
the API's schema, not by a wish: a reference exists only where the connection's credential object
has a field for it. :data:`REFERENCE_RULES` is that decision, each row with the words of its source;
:func:`reference_support` reads it for a connection (or a Power BI data source), and
:func:`reference_field` names the field a credential type carries its reference in.

Microsoft's documentation also lists which *connectors* are supported with which credential type
(:data:`DOCUMENTED_CONNECTORS`, the same table in every version of the docs). The API is what the
product sends to, so the schema decides eligibility; the docs' list only adds a note (and
:func:`could_reference`, which ``bindings check`` uses for its advice).

Pure: no I/O. ``referenced`` is not for this module to say (Fabric's API does not report whether a
connection holds a reference): the bindings' ``keyVaultReference`` mark and the ledger's record of
``adopt`` say it, and callers wrap that in :meth:`ReferenceSupport.referenced`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from remediation.config.bindings import CredentialType
from remediation.rules.connections import fabric_credential_type

__all__ = [
    "DOCUMENTED_CONNECTORS",
    "KEY_VAULT_CONNECTION_TYPES",
    "REFERENCE_RULES",
    "ReferenceRule",
    "ReferenceState",
    "ReferenceSupport",
    "could_reference",
    "is_key_vault_connection",
    "reference_field",
    "reference_support",
]

_SPEC = "specs/fabric/platform/definitions/connections.json"


class ReferenceState(StrEnum):
    """Where a connection or data source stands with Key Vault references."""

    REFERENCED = "referenced"  # marked in the bindings, or moved by `adopt` (the ledger says so)
    ELIGIBLE = "eligible"  # a cloud or VNet connection whose credential type has a reference field
    NOT_ELIGIBLE = "not-eligible"  # no reference field where its credential lives


@dataclass(frozen=True)
class ReferenceRule:
    """One row of :data:`REFERENCE_RULES`: what it applies to (``connectivity:<type>``,
    ``credential:<type>`` or ``connector:<type>``), the field a reference goes in (None: none
    exists), the reason in a few words, and where that comes from."""

    applies: str
    field: str | None
    reason: str
    source: str


REFERENCE_RULES: tuple[ReferenceRule, ...] = (
    # -- where the credential lives: the connectivity type decides first ---------------------------
    ReferenceRule(
        "connectivity:OnPremisesGateway",
        None,
        "on-premises gateway credentials have no reference field (only values encrypted per gateway member)",
        f"{_SPEC}: OnPremisesGatewayCredentials = {{credentialType, values: [{{gatewayId, "
        "encryptedCredentials}]}}, no *Reference property; FABRIC.md §6 'REST reality for on-prem'",
    ),
    ReferenceRule(
        "connectivity:OnPremisesGatewayPersonal",
        None,
        "personal gateway credentials have no reference field (one encrypted blob)",
        f"{_SPEC}: OnPremisesGatewayPersonalCredentials = {{credentialType, encryptedCredentials}}",
    ),
    ReferenceRule(
        "connector:AzureKeyVault",
        None,
        "it is a Key Vault connection (what references point at), signed in with OAuth 2.0",
        "FABRIC.md §2: the Key Vault connection is made in Manage connections and gateways, "
        "'Azure Key Vault references' tab, with an OAuth 2.0 sign-in; no REST operation creates it",
    ),
    # -- the credential type: which field carries a reference ------------------------------------
    ReferenceRule(
        "credential:Basic",
        "passwordReference",
        "Basic credentials take passwordReference",
        f"{_SPEC}: BasicCredentials.passwordReference (KeyVaultSecretReference, added 2026-01-13)",
    ),
    ReferenceRule(
        "credential:Key",
        "keyReference",
        "Key credentials take keyReference",
        f"{_SPEC}: KeyCredentials.keyReference",
    ),
    ReferenceRule(
        "credential:SharedAccessSignature",
        "tokenReference",
        "SharedAccessSignature credentials take tokenReference",
        f"{_SPEC}: SharedAccessSignatureCredentials.tokenReference",
    ),
    ReferenceRule(
        "credential:ServicePrincipal",
        "servicePrincipalSecretReference",
        "ServicePrincipal credentials take servicePrincipalSecretReference",
        f"{_SPEC}: ServicePrincipalCredentials.servicePrincipalSecretReference",
    ),
    ReferenceRule(
        "credential:Windows",
        None,
        "Windows credentials have no reference field (and exist only on on-premises gateways)",
        f"{_SPEC}: WindowsCredentials = {{username, password}}; CredentialType Windows 'Only "
        "supported for on-premises gateways'",
    ),
    ReferenceRule(
        "credential:KeyPair",
        None,
        "KeyPair credentials have no reference field",
        f"{_SPEC}: KeyPairCredentials = {{identifier, privateKey, passphrase}} (added 2026-01-06)",
    ),
    ReferenceRule(
        "credential:OAuth2",
        None,
        "OAuth2 credentials cannot be set through the public API at all",
        f"{_SPEC}: no OAuth2Credentials schema (the enum value only); terraform-provider-fabric "
        "#981: 'OAuth2 is not supported by the public API'",
    ),
    ReferenceRule(
        "credential:Anonymous",
        None,
        "Anonymous credentials hold no secret",
        f"{_SPEC}: AnonymousCredentials has no property",
    ),
    ReferenceRule(
        "credential:WorkspaceIdentity",
        None,
        "a workspace identity holds no secret",
        f"{_SPEC}: WorkspaceIdentityCredentials has no property",
    ),
    ReferenceRule(
        "credential:WindowsWithoutImpersonation",
        None,
        "WindowsWithoutImpersonation holds no secret (personal gateways only)",
        f"{_SPEC}: WindowsWithoutImpersonationCredentials has no property",
    ),
)
"""Where a reference is possible: by connectivity type and connector first, then by credential
type. Every reason :func:`reference_support` gives comes from here."""

_RULES = {rule.applies.casefold(): rule for rule in REFERENCE_RULES}

# Connectors whose cloud connections Microsoft's documentation lists as supporting a reference, and
# with which credential types (FABRIC.md §6, the same table in every version of the docs:
# learn.microsoft.com/fabric/data-factory/azure-key-vault-reference-overview), by
# ``connectionDetails.type`` (case-insensitive; Fabric's type names as its API lists them).
DOCUMENTED_CONNECTORS: dict[str, frozenset[str]] = {
    "azureblobs": frozenset({"Key", "SharedAccessSignature", "ServicePrincipal"}),
    "azuredatalakestorage": frozenset({"Key", "SharedAccessSignature", "ServicePrincipal"}),
    "azuretables": frozenset({"Key", "SharedAccessSignature", "ServicePrincipal"}),
    "databricks": frozenset({"Basic", "SharedAccessSignature"}),
    "commondataservice": frozenset({"ServicePrincipal"}),
    "odata": frozenset({"Key", "Basic"}),
    "oraclecloudstorage": frozenset({"Key"}),
    "postgresql": frozenset({"Key", "Basic"}),
    "sharepointlist": frozenset({"ServicePrincipal"}),
    "snowflake": frozenset({"Basic"}),
    "sql": frozenset({"Basic", "ServicePrincipal"}),
    "web": frozenset({"Basic", "ServicePrincipal"}),
}

KEY_VAULT_CONNECTION_TYPES = frozenset({"azurekeyvault"})
"""``connectionDetails.type`` of a Key Vault connection as Fabric lists it (compared without case,
spaces or underscores). [Unconfirmed: FABRIC.md §2 found no REST operation for these connections;
the sandbox lists them with this type.]"""

_PLAIN = ("ShareableCloud", "PersonalCloud", "VirtualNetworkGateway", "StreamingVirtualNetworkGateway")
_POWERBI_SPELLING = {"sas": "SharedAccessSignature"}


@dataclass(frozen=True)
class ReferenceSupport:
    """Where a connection or data source stands: its state, why (a few words), and the source of
    that reason (a :data:`REFERENCE_RULES` row's, or the product's own record)."""

    state: ReferenceState
    reason: str
    source: str = ""
    field: str | None = None  # eligible: the *Reference field its credential type takes

    @property
    def eligible(self) -> bool:
        return self.state is ReferenceState.ELIGIBLE

    @classmethod
    def referenced(cls, reason: str, source: str = "") -> ReferenceSupport:
        """A connection known to reference Key Vault (``reason``: how it is known)."""
        return cls(ReferenceState.REFERENCED, reason, source)


def _of(rule: ReferenceRule, note: str = "") -> ReferenceSupport:
    state = ReferenceState.ELIGIBLE if rule.field else ReferenceState.NOT_ELIGIBLE
    return ReferenceSupport(state, rule.reason + note, rule.source, rule.field)


def is_key_vault_connection(connection_type: str | None) -> bool:
    """True for a connection Fabric lists as a Key Vault connection
    (:data:`KEY_VAULT_CONNECTION_TYPES`)."""
    folded = (connection_type or "").casefold().replace(" ", "").replace("_", "")
    return folded in KEY_VAULT_CONNECTION_TYPES


def reference_support(
    connectivity_type: str | None, credential_type: str | None, connection_type: str | None = None
) -> ReferenceSupport:
    """Whether a connection (or a Power BI data source, by its connectivity and credential type)
    could hold a Key Vault reference: ``eligible`` or ``not-eligible`` with the reason, from
    :data:`REFERENCE_RULES` (never ``referenced``: see the module docstring)."""
    connectivity = connectivity_type or ""
    rule = _RULES.get(f"connectivity:{connectivity}".casefold())
    if rule is not None:
        return _of(rule)
    if is_key_vault_connection(connection_type):
        return _of(_RULES["connector:azurekeyvault"])
    if connectivity not in _PLAIN:
        return ReferenceSupport(
            ReferenceState.NOT_ELIGIBLE,
            f"{connectivity or 'this'} connectivity takes no credentials through the API",
            f"{_SPEC}: UpdateConnectionRequest subtypes",
        )
    spelled = _POWERBI_SPELLING.get((credential_type or "").casefold(), credential_type or "")
    rule = _RULES.get(f"credential:{spelled}".casefold())
    if rule is None:
        what = f"credential type {credential_type}" if credential_type else "an unreported credential type"
        return ReferenceSupport(
            ReferenceState.NOT_ELIGIBLE, f"{what} has no reference field", f"{_SPEC}: Credentials subtypes"
        )
    note = ""
    if rule.field and connection_type:
        documented = DOCUMENTED_CONNECTORS.get(connection_type.casefold(), frozenset())
        fabric_type = next((t for t in documented if t.casefold() == spelled.casefold()), None)
        if fabric_type is None:
            note = f" (Microsoft's docs do not list {connection_type} with it: adopt's test tells)"
    return _of(rule, note)


def reference_field(credential_type: CredentialType) -> str | None:
    """The ``*Reference`` field a binding's credential type puts a reference in (None: none)."""
    rule = _RULES.get(f"credential:{fabric_credential_type(credential_type)}".casefold())
    return None if rule is None else rule.field


class ConnectionFacts(Protocol):
    """What :func:`could_reference` reads of a Fabric connection."""

    @property
    def connection_type(self) -> str | None: ...

    @property
    def connectivity_type(self) -> str: ...


def could_reference(connection: ConnectionFacts, credential_type: CredentialType) -> bool:
    """True when ``connection`` could reference the Key Vault secret instead of holding a copy and
    Microsoft's docs list its connector with that credential type: a cloud connection of a
    documented connector (``bindings check``'s advice; :func:`reference_support` is the API's side)."""
    if connection.connectivity_type != "ShareableCloud":
        return False
    wanted = fabric_credential_type(credential_type)
    return wanted in DOCUMENTED_CONNECTORS.get((connection.connection_type or "").casefold(), frozenset())
