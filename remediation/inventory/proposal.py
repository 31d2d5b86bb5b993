"""``discover --propose``: a draft bindings file for the data sources and Fabric connections no
binding covers, grouped by type, server, database, url, path and credential type, with
placeholder secret names and usernames that must be filled in (``bindings check`` refuses the
draft until they are). A connection already referenced (``adopt`` moved it: the ledger says
so) is drafted with its mark, ``"keyVaultReference": true``, and the secret its reference names;
a data source whose Fabric connection references Key Vault is not drafted (an update through
Power BI would replace the reference). Pure: it reads a discovered
:class:`~remediation.inventory.discover.Inventory`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from remediation.config.bindings import CredentialType
from remediation.inventory.discover import (
    DiscoveredConnection,
    DiscoveredSource,
    Inventory,
    bindable_credential_type,
    connection_credential_type,
)
from remediation.rules.redact import datasource_host
from remediation.rules.references import ReferenceState

__all__ = [
    "PLACEHOLDER_CLIENT",
    "PLACEHOLDER_SECRET",
    "PLACEHOLDER_TENANT",
    "PLACEHOLDER_UPN",
    "PLACEHOLDER_USERNAME",
    "is_placeholder",
    "propose",
    "propose_bindings",
    "propose_connection_bindings",
]

PLACEHOLDER_SECRET = "<Key Vault secret name>"
"""Not a valid secret name: ``bindings check`` refuses the draft until it is replaced."""
PLACEHOLDER_USERNAME = "<username>"
PLACEHOLDER_UPN = "<owner@contoso.com>"
PLACEHOLDER_TENANT = "<tenant id of the app>"
PLACEHOLDER_CLIENT = "<client id of the app>"
_PLACEHOLDER = re.compile(r"^<[^<>]*>$")
_DETAIL_KEYS = ("server", "database", "url", "path")
_NAME_CHARS = re.compile(r"[^a-z0-9]+")


def is_placeholder(value: object) -> bool:
    """True for a draft's ``<...>`` placeholders (a proposed file not yet filled in)."""
    return isinstance(value, str) and bool(_PLACEHOLDER.match(value.strip()))


def propose(inventory: Inventory) -> dict[str, Any]:
    """The draft of ``--propose``: the unbound data sources and connections, each real data
    source once. A gateway data source that is also a Fabric connection the draft binds is left
    to the connection's draft (Fabric takes more credential types, Key Vault references, and no
    Take Over for a cloud data source)."""
    connections = propose_connection_bindings(inventory.connections)
    drafted = {tg["connectionId"] for b in connections for tg in b["targets"]}
    twins = {
        c.datasource for c in inventory.connections if c.datasource and (c.id in drafted or _referenced(c))
    }
    sources = [s for s in inventory.sources if (s.gateway_id or "", s.datasource_id or "") not in twins]
    draft = propose_bindings(sources)
    names = {b["name"] for b in draft["bindings"]}
    draft["bindings"] += propose_connection_bindings(inventory.connections, taken=names)
    return draft


def propose_bindings(sources: Iterable[DiscoveredSource]) -> dict[str, Any]:
    """A draft bindings document for ``sources`` that no binding covers.

    Data sources sharing type, server, database, url, path and credential type become one
    binding with explicit ``{"gatewayId", "datasourceId"}`` targets (never a broad ``match``).
    ``secret`` and ``username`` are ``<...>`` placeholders: the draft is refused (the secret
    name is invalid) until a person fills them in. Anonymous sources have nothing to rotate,
    sources without a gateway data source or a known credential type cannot be bound: skipped.
    """
    groups: dict[tuple[str, ...], list[DiscoveredSource]] = {}
    for s in sources:
        if s.binding is not None or not s.gateway_id or not s.datasource_id:
            continue
        ctype = bindable_credential_type(s.credential_type)
        if ctype is None:
            continue
        lowered = {str(k).casefold(): v for k, v in s.connection_details.items()}
        details = tuple(str(lowered.get(k, "")).casefold() for k in _DETAIL_KEYS)
        key = ((s.datasource_type or "").casefold(), *details, ctype.value)
        groups.setdefault(key, []).append(s)

    bindings: list[dict[str, Any]] = []
    names: set[str] = set()
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda s: s.key)
        first = members[0]
        ctype = CredentialType(key[-1])
        entry: dict[str, Any] = {
            "name": _unique_name(_name_for(first), names),
            "secret": PLACEHOLDER_SECRET,
            "credentialType": ctype.value,
        }
        if ctype is CredentialType.OAUTH2:
            entry["oauth2"] = "caller-identity"
            entry["username"] = PLACEHOLDER_UPN
        elif ctype in (CredentialType.BASIC, CredentialType.WINDOWS):
            entry["username"] = PLACEHOLDER_USERNAME
        entry["targets"] = [{"gatewayId": m.gateway_id, "datasourceId": m.datasource_id} for m in members]
        bindings.append(entry)
    return {"bindings": bindings}


PLACEHOLDER_TENANT = "<tenant id of the app>"
PLACEHOLDER_CLIENT = "<client id of the app>"


def propose_connection_bindings(
    connections: Iterable[DiscoveredConnection], taken: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Draft bindings with ``connectionId`` targets for the connections no binding covers, one
    per type, path and credential type (placeholders as in :func:`propose_bindings`; a
    ServicePrincipal draft also needs the app's tenant and client ids). Connections whose
    credential a binding cannot rotate (OAuth2, WorkspaceIdentity, KeyPair, Anonymous...) are
    skipped; one that could reference Key Vault is still proposed (see ``bindings check``); one
    that references it already is drafted marked, with the secret its reference names when known."""
    groups: dict[tuple[str, str, str, str], list[DiscoveredConnection]] = {}
    for c in connections:
        if c.binding is not None or c.binding_problem:
            continue
        ctype = connection_credential_type(c.credential_type)
        if ctype is None:
            continue
        secret = (c.reference_secret or "") if _referenced(c) else ""
        key = ((c.connection_type or "").casefold(), (c.path or "").casefold(), secret, ctype.value)
        groups.setdefault(key, []).append(c)
    names = set(taken)
    bindings: list[dict[str, Any]] = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda c: c.id)
        first = members[0]
        ctype = CredentialType(key[-1])
        host = (first.path or "").split(";", 1)[0]
        base = "-".join(
            w
            for w in (
                _NAME_CHARS.sub("-", p.casefold()).strip("-")
                for p in ("conn", first.connection_type or "", host)
            )
            if w
        )[:60]
        entry: dict[str, Any] = {
            "name": _unique_name(base or "connection", names),
            "secret": key[2] or PLACEHOLDER_SECRET,
            "credentialType": ctype.value,
        }
        if ctype in (CredentialType.BASIC, CredentialType.WINDOWS):
            entry["username"] = PLACEHOLDER_USERNAME
        if ctype is CredentialType.SERVICE_PRINCIPAL:
            entry["tenantId"] = PLACEHOLDER_TENANT
            entry["clientId"] = PLACEHOLDER_CLIENT
        entry["targets"] = [
            {"connectionId": m.id, "keyVaultReference": True} if _referenced(m) else {"connectionId": m.id}
            for m in members
        ]
        bindings.append(entry)
    return bindings


def _referenced(connection: DiscoveredConnection) -> bool:
    return connection.reference is not None and connection.reference.state is ReferenceState.REFERENCED


def _name_for(source: DiscoveredSource) -> str:
    """``sql-sales-db`` from the type, the host's first label and the database (when different)."""
    lowered = {str(k).casefold(): v for k, v in source.connection_details.items()}
    host = datasource_host(source.connection_details) or ""
    parts = [source.datasource_type or "source", host.split(".", 1)[0]]
    database = lowered.get("database")
    if isinstance(database, str) and database.casefold() != parts[1].casefold():
        parts.append(database)
    words = [_NAME_CHARS.sub("-", p.casefold()).strip("-") for p in parts]
    return "-".join(w for w in words if w)[:60] or "binding"


def _unique_name(base: str, taken: set[str]) -> str:
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name
