"""Inventory: every data source the identity can reach, who uses it, and which binding covers it.

``python -m remediation discover`` answers the question the Power BI error page leaves people
with (*which dataset uses which credentials?*) before they write a bindings file. It is
**read-only**: only ``GET`` requests, and none of them signs in at a source (the data source
*status* check does, so it is never called), no ledger, no Key Vault.

Two halves:

* :func:`scan` (I/O): on-premises gateway data sources (``GET /gateways``, ``.../datasources``)
  and the data sources of every dataset in every workspace the identity sees
  (``GET /groups/{g}/datasets/{d}/datasources``), each dataset with its last refresh status
  (``GET .../refreshes?$top=1``). Cloud data sources appear only through datasets; Power BI says
  their credential type only when the identity may read them on their (virtual) gateway.
* Fabric connections the identity has a role on (``GET /connections``, paged), when a Fabric
  client is given: each with its connectivity type, gateway, masked ``connectionDetails``,
  credential type, whether it is marked as a Key Vault reference in the bindings (the API does
  not say) or could reference the secret instead of being pushed a copy (FABRIC.md's supported
  connectors and credential types), the binding that covers it, and the datasets found for free:
  those whose Power BI data source has the connection's id or corresponds to it (same type, its
  ``server;database`` path; no extra call per dataset). A 401/403 from Fabric is a warning.
* pure functions: :func:`masked_details` (secrets in URLs and connection strings masked),
  :func:`to_json`, :func:`to_csv_rows`, :func:`table_lines` and :func:`propose_bindings` (a draft
  bindings file for the data sources no binding covers, grouped by type, server, database, url,
  path and credential type, with placeholder secret names and usernames that must be filled in).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from remediation.clients.api_errors import ApiError
from remediation.clients.fabric import Connection, FabricClient, FabricNotAuthorized
from remediation.clients.powerbi import PowerBIClient
from remediation.clients.powerbi_models import DatasetDatasource, GatewayDatasource
from remediation.config.bindings import BINDABLE_TYPES, CONNECTIONS, BindingSet, CredentialType
from remediation.errors import BindingsError
from remediation.rules.connections import corresponding_connection, could_reference, is_connection_of
from remediation.rules.redact import MASK, datasource_host, describe_datasource, mask_urls

__all__ = [
    "PLACEHOLDER_SECRET",
    "PLACEHOLDER_USERNAME",
    "DatasetUse",
    "DiscoveredConnection",
    "DiscoveredSource",
    "Inventory",
    "is_placeholder",
    "masked_details",
    "propose_bindings",
    "propose",
    "propose_connection_bindings",
    "scan",
    "table_lines",
    "to_csv_rows",
    "to_json",
]

PLACEHOLDER_SECRET = "<Key Vault secret name>"
"""Not a valid secret name: ``bindings check`` refuses the draft until it is replaced."""
PLACEHOLDER_USERNAME = "<username>"
PLACEHOLDER_UPN = "<owner@contoso.com>"
_PLACEHOLDER = re.compile(r"^<[^<>]*>$")

# key=value pairs of connection strings that carry secrets (ODBC, OLE DB, storage, SAS).
_SECRET_PAIR = re.compile(
    r"(?i)\b(password|pwd|accountkey|sharedaccesskey|sharedaccesssignature|sig|token|apikey|"
    r"api_key|secret|client_secret)(\s*=\s*)([^;&\s\"']*)"
)
_DETAIL_KEYS = ("server", "database", "url", "path")
_NAME_CHARS = re.compile(r"[^a-z0-9]+")

Progress = Callable[[str], None]


def is_placeholder(value: object) -> bool:
    """True for a draft's ``<...>`` placeholders (a proposed file not yet filled in)."""
    return isinstance(value, str) and bool(_PLACEHOLDER.match(value.strip()))


# -- model ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetUse:
    """A dataset that uses a data source, and how its last refresh ended (None: never refreshed)."""

    workspace_id: str
    dataset_id: str
    last_refresh_status: str | None


@dataclass
class DiscoveredSource:
    """One data source. ``connection_details`` is already masked; ids are lower-case or None
    (a dataset's data source that no gateway data source backs)."""

    gateway_id: str | None
    datasource_id: str | None
    datasource_type: str | None
    connection_details: dict[str, Any]
    credential_type: str | None
    on_premises: bool
    binding: str | None = None
    binding_problem: str | None = None
    datasets: list[DatasetUse] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        """The gateway data source's ids; a source no gateway data source backs, its details."""
        if self.gateway_id and self.datasource_id:
            return (self.gateway_id, self.datasource_id, "")
        return ("", "", json.dumps(self.connection_details, sort_keys=True))

    @property
    def description(self) -> str:
        return describe_datasource(self.datasource_type, self.connection_details)


@dataclass
class DiscoveredConnection:
    """One Fabric connection (``path`` already masked). ``key_vault_reference``: a binding marks
    it as reading the secret from Key Vault itself; ``could_reference``: it could (a cloud
    connection of a supported connector and credential type)."""

    id: str
    display_name: str | None
    connectivity_type: str
    gateway_id: str | None
    connection_type: str | None
    path: str | None
    credential_type: str | None
    key_vault_reference: bool = False
    could_reference: bool = False
    binding: str | None = None
    binding_problem: str | None = None
    datasets: list[DatasetUse] = field(default_factory=list)
    datasource: tuple[str, str] | None = None
    """The Power BI gateway data source this connection is (gateway data sources are Fabric
    connections too), by :func:`remediation.rules.connections.corresponding_connection`; None if none."""

    @property
    def description(self) -> str:
        return f"{self.connection_type or 'connection'} {self.path or self.display_name or self.id}"


@dataclass
class Inventory:
    """What a scan found, in a stable order, and what it could not read (no secret in it)."""

    sources: list[DiscoveredSource]
    gateways: int = 0
    workspaces: int = 0
    datasets: int = 0
    problems: list[str] = field(default_factory=list)
    connections: list[DiscoveredConnection] = field(default_factory=list)

    @property
    def unbound(self) -> list[DiscoveredSource]:
        return [s for s in self.sources if s.binding is None and s.datasource_id is not None]

    @property
    def unbound_connections(self) -> list[DiscoveredConnection]:
        return [c for c in self.connections if c.binding is None and not c.binding_problem]


# -- masking (pure) ---------------------------------------------------------------------------------
def _mask_text(text: str) -> str:
    return _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", mask_urls(text))


def masked_details(details: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """``connectionDetails`` as an object with every URL's user info and parameter values and
    every ``password=`` / ``key=`` style pair masked; a JSON string is decoded first. Nested
    JSON strings (extension data source paths) are masked as text."""
    value: object = details
    if isinstance(details, str):
        try:
            value = json.loads(details) if details.strip() else {}
        except ValueError:
            return {"value": _mask_text(details)}
    if not isinstance(value, Mapping):
        return {}
    return {str(k): _mask_value(v) for k, v in value.items()}


def _mask_value(value: object) -> object:
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, Mapping):
        return {str(k): _mask_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_value(v) for v in value]
    return value


def _strings(details: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in details.items() if isinstance(v, str)}


# -- scan (I/O) -------------------------------------------------------------------------------------
def scan(
    powerbi: PowerBIClient,
    bindings: BindingSet,
    *,
    workspaces: Sequence[str] = (),
    progress: Progress = lambda _m: None,
    concurrency: int = 8,
    fabric: FabricClient | None = None,
) -> Inventory:
    """Read every reachable data source (GET requests only; no status check: it signs in), and
    with ``fabric`` every Fabric connection the identity has a role on.

    ``workspaces``: extra workspace ids to read besides those ``GET /groups`` lists (the watched
    ones). Failures to read one gateway or dataset are kept in :attr:`Inventory.problems` and the
    scan goes on; a failure of ``GET /groups`` itself raises :class:`ApiError`.
    """
    found: dict[tuple[str, str, str], DiscoveredSource] = {}
    inventory = Inventory(sources=[])

    progress("reading gateways")
    try:
        gateways = powerbi.get_gateways()
    except ApiError as exc:
        inventory.problems.append(f"cannot list gateways ({exc.code or exc.status})")
        gateways = []
    inventory.gateways = len(gateways)
    on_prem = {g.id.lower() for g in gateways if g.public_key is not None}
    for index, gateway in enumerate(gateways, 1):
        progress(f"gateway {index}/{len(gateways)}: reading its data sources")
        try:
            items = powerbi.get_datasources(gateway.id)
        except ApiError as exc:
            inventory.problems.append(
                f"gateway {gateway.id}: cannot list data sources ({exc.code or exc.status})"
            )
            continue
        for item in items:
            source = _from_gateway(item, on_premises=gateway.id.lower() in on_prem)
            found.setdefault(source.key, source)

    progress("reading workspaces")
    groups = [g.id.lower() for g in powerbi.get_groups()]
    for extra in workspaces:
        if extra.lower() not in groups:
            groups.append(extra.lower())
    inventory.workspaces = len(groups)

    datasets: list[tuple[str, str]] = []
    for index, group in enumerate(groups, 1):
        progress(f"workspace {index}/{len(groups)}: listing datasets")
        try:
            datasets.extend((group, d.id.lower()) for d in powerbi.get_datasets_in_group(group))
        except ApiError as exc:
            inventory.problems.append(f"workspace {group}: cannot list datasets ({exc.code or exc.status})")
    inventory.datasets = len(datasets)

    def read(pair: tuple[str, str]) -> tuple[str, str, list[DatasetDatasource] | str, str | None]:
        group, dataset = pair
        try:
            sources = powerbi.get_datasources_in_group(group, dataset)
        except ApiError as exc:
            return group, dataset, f"cannot list its data sources ({exc.code or exc.status})", None
        try:
            history = powerbi.get_refresh_history_in_group(group, dataset, top=1)
            status = history[0].status if history else None
        except ApiError:
            status = None
        return group, dataset, sources, status

    # Cloud data sources: Power BI says their credential type only on their (virtual) gateway.
    def credential_type(source: DiscoveredSource) -> tuple[DiscoveredSource, str | None]:
        assert source.gateway_id is not None and source.datasource_id is not None
        try:
            return source, powerbi.get_datasource(source.gateway_id, source.datasource_id).credential_type
        except ApiError:
            return source, None

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for group, dataset, sources, status in pool.map(read, datasets):
            done += 1
            progress(f"dataset {done}/{len(datasets)}")
            if isinstance(sources, str):
                inventory.problems.append(f"dataset {group}/{dataset}: {sources}")
                continue
            use = DatasetUse(group, dataset, status)
            for ds in sources:
                source = _from_dataset(ds)
                existing = found.setdefault(source.key, source)
                if use not in existing.datasets:
                    existing.datasets.append(use)
        unknown = [
            s for s in found.values() if s.credential_type is None and s.gateway_id and s.datasource_id
        ]
        if unknown:
            progress(f"reading {len(unknown)} cloud data sources")
        for source, ctype in pool.map(credential_type, unknown):
            source.credential_type = ctype

    for source in found.values():
        _attach_binding(source, bindings)
        source.datasets.sort(key=lambda u: (u.workspace_id, u.dataset_id))
    inventory.sources = sorted(found.values(), key=lambda s: (not s.on_premises, s.key))
    if fabric is not None:
        progress("reading Fabric connections")
        inventory.connections = _connections(fabric, bindings, inventory)
    return inventory


def _connections(
    fabric: FabricClient, bindings: BindingSet, inventory: Inventory
) -> list[DiscoveredConnection]:
    """The Fabric connections, with their bindings and the datasets known to use them."""
    try:
        listed = fabric.list_connections()
    except FabricNotAuthorized as exc:
        inventory.problems.append(
            f"Fabric connections not listed ({exc.code or exc.status}): the identity needs Fabric API "
            "access (the tenant settings for service principals) and a role on the connections"
        )
        return []
    except ApiError as exc:
        inventory.problems.append(f"cannot list Fabric connections ({exc.code or exc.status})")
        return []
    # Gateway data sources are Fabric connections too: which listed data source each one is.
    same: dict[str, DiscoveredSource | None] = {}
    for source in inventory.sources:
        if not (source.gateway_id and source.datasource_id):
            continue
        cid = corresponding_connection(
            source.datasource_id,
            source.datasource_type,
            source.gateway_id,
            _strings(source.connection_details),
            listed,
        )
        if cid is not None:
            same[cid] = None if cid in same else source  # two data sources for one: no guess
    found: list[DiscoveredConnection] = []
    for c in listed:
        explicit = bindings.for_target(CONNECTIONS, c.id)
        target = None if explicit is None else next(t for t in explicit.targets if t.connection_id == c.id)
        item = DiscoveredConnection(
            id=c.id,
            display_name=c.display_name,
            connectivity_type=c.connectivity_type,
            gateway_id=c.gateway_id,
            connection_type=c.connection_type,
            path=None if c.path is None else _mask_text(c.path),
            credential_type=c.credential_type,
            key_vault_reference=bool(target is not None and target.key_vault_reference),
            could_reference=_could_reference(c),
        )
        try:
            binding = bindings.for_connection(
                c.id, connection_type=c.connection_type, connectivity_type=c.connectivity_type, path=c.path
            )
            item.binding = None if binding is None else binding.name
        except BindingsError as exc:
            item.binding_problem = str(exc)
        twin = same.get(c.id.lower())
        if twin is not None:
            item.datasource = (twin.gateway_id or "", twin.datasource_id or "")
            if item.binding is None and not item.binding_problem:
                item.binding = twin.binding  # bound as a gateway data source: covered
        for source in inventory.sources:
            if source.datasource_id == c.id or is_connection_of(
                c.connection_type,
                c.connectivity_type,
                c.gateway_id,
                c.path,
                source.datasource_type,
                source.gateway_id,
                _strings(source.connection_details),
            ):
                item.datasets.extend(u for u in source.datasets if u not in item.datasets)
        item.datasets.sort(key=lambda u: (u.workspace_id, u.dataset_id))
        found.append(item)
    return sorted(found, key=lambda c: (c.connectivity_type, c.connection_type or "", c.path or "", c.id))


_FABRIC_BINDABLE = {
    "SharedAccessSignature": CredentialType.SAS,
    "ServicePrincipal": CredentialType.SERVICE_PRINCIPAL,
}


def _connection_credential_type(credential_type: str | None) -> CredentialType | None:
    """A connection's credential type as a binding spells it, when a binding can rotate it."""
    if credential_type in _FABRIC_BINDABLE:
        return _FABRIC_BINDABLE[credential_type]
    found = _bindable(credential_type)
    return None if found is CredentialType.OAUTH2 else found


def _could_reference(connection: Connection) -> bool:
    ctype = _connection_credential_type(connection.credential_type)
    return ctype is not None and could_reference(connection, ctype)


def _from_gateway(item: GatewayDatasource, *, on_premises: bool) -> DiscoveredSource:
    return DiscoveredSource(
        gateway_id=item.gateway_id.lower(),
        datasource_id=item.id.lower(),
        datasource_type=item.datasource_type,
        connection_details=masked_details(item.connection_details),
        credential_type=item.credential_type,
        on_premises=on_premises,
    )


def _from_dataset(item: DatasetDatasource) -> DiscoveredSource:
    return DiscoveredSource(
        gateway_id=item.gateway_id.lower() if item.gateway_id else None,
        datasource_id=item.datasource_id.lower() if item.datasource_id else None,
        datasource_type=item.datasource_type,
        connection_details=masked_details(item.connection_details),
        credential_type=None,
        on_premises=False,
    )


def _attach_binding(source: DiscoveredSource, bindings: BindingSet) -> None:
    if not source.gateway_id or not source.datasource_id:
        return
    try:
        binding = bindings.for_datasource(
            source.gateway_id,
            source.datasource_id,
            datasource_type=source.datasource_type or "",
            connection_details=_strings(source.connection_details),
        )
    except BindingsError as exc:
        source.binding_problem = str(exc)
        return
    source.binding = binding.name if binding is not None else None


# -- output (pure) ----------------------------------------------------------------------------------
def to_json(inventory: Inventory) -> dict[str, Any]:
    """The ``--json`` document: ``{"datasources": [...]}`` exactly as DESIGN.md lists it, and
    ``"connections": [...]`` beside it (Fabric connections)."""
    return {
        "datasources": [
            {
                "gatewayId": s.gateway_id,
                "datasourceId": s.datasource_id,
                "datasourceType": s.datasource_type,
                "connectionDetails": s.connection_details,
                "credentialType": s.credential_type,
                "binding": s.binding,
                "datasets": [
                    {
                        "workspaceId": u.workspace_id,
                        "datasetId": u.dataset_id,
                        "lastRefreshStatus": u.last_refresh_status,
                    }
                    for u in s.datasets
                ],
            }
            for s in inventory.sources
        ],
        "connections": [
            {
                "id": c.id,
                "displayName": c.display_name,
                "connectivityType": c.connectivity_type,
                "gatewayId": c.gateway_id,
                "connectionDetails": {"type": c.connection_type, "path": c.path},
                "credentialType": c.credential_type,
                "keyVaultReference": c.key_vault_reference,
                "couldReferenceKeyVault": c.could_reference,
                "binding": c.binding,
                "datasource": None
                if c.datasource is None
                else {"gatewayId": c.datasource[0], "datasourceId": c.datasource[1]},
                "datasets": [
                    {
                        "workspaceId": u.workspace_id,
                        "datasetId": u.dataset_id,
                        "lastRefreshStatus": u.last_refresh_status,
                    }
                    for u in c.datasets
                ],
            }
            for c in inventory.connections
        ],
    }


CSV_HEADER = (
    "gatewayId",
    "datasourceId",
    "datasourceType",
    "connectionDetails",
    "credentialType",
    "binding",
    "datasets",
    "kind",
    "connectivityType",
    "keyVaultReference",
)


def to_csv_rows(inventory: Inventory) -> list[list[str]]:
    """Header and one row per data source; ``connectionDetails`` as compact JSON, ``datasets``
    as ``workspace/dataset:status`` separated by spaces."""
    rows = [list(CSV_HEADER)]
    for s in inventory.sources:
        uses = " ".join(f"{u.workspace_id}/{u.dataset_id}:{u.last_refresh_status or '-'}" for u in s.datasets)
        rows.append(
            [
                s.gateway_id or "",
                s.datasource_id or "",
                s.datasource_type or "",
                json.dumps(s.connection_details, separators=(",", ":"), sort_keys=True),
                s.credential_type or "",
                s.binding or "",
                uses,
                "datasource",
                "",
                "",
            ]
        )
    for c in inventory.connections:
        uses = " ".join(f"{u.workspace_id}/{u.dataset_id}:{u.last_refresh_status or '-'}" for u in c.datasets)
        rows.append(
            [
                c.gateway_id or "",
                c.id,
                c.connection_type or "",
                json.dumps({"path": c.path}, separators=(",", ":")),
                c.credential_type or "",
                c.binding or "",
                uses,
                "connection",
                c.connectivity_type,
                _reference_state(c),
            ]
        )
    return rows


def _reference_state(c: DiscoveredConnection) -> str:
    if c.key_vault_reference:
        return "yes"
    return "could" if c.could_reference else "no"


def table_lines(inventory: Inventory) -> list[str]:
    """A readable table: where, what, credential type, binding, datasets and their last refresh."""
    headers = ["SOURCE", "GATEWAY", "DATASOURCE", "CREDENTIAL", "BINDING", "DATASETS (LAST REFRESH)"]
    rows: list[list[str]] = []
    for s in inventory.sources:
        failed = sum(1 for u in s.datasets if (u.last_refresh_status or "").casefold() == "failed")
        uses = f"{len(s.datasets)}" + (f" ({failed} failed)" if failed else "")
        where = ("on-prem " if s.on_premises else "cloud ") + s.description
        binding = s.binding or ("AMBIGUOUS" if s.binding_problem else "-")
        rows.append(
            [
                where,
                (s.gateway_id or "-")[:8],
                (s.datasource_id or "-")[:8],
                s.credential_type or "?",
                binding,
                uses,
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    unbound = len(inventory.unbound)
    lines.append("")
    lines.append(
        f"{len(inventory.sources)} data sources ({unbound} not bound) on {inventory.gateways} gateways, "
        f"used by {inventory.datasets} datasets in {inventory.workspaces} workspaces."
    )
    if inventory.connections:
        lines += [""] + _connection_table(inventory.connections)
        unbound = len(inventory.unbound_connections)
        lines.append(f"{len(inventory.connections)} Fabric connections ({unbound} not bound).")
    lines += [f"warning: {p}" for p in inventory.problems]
    lines += [f"warning: {s.binding_problem}" for s in inventory.sources if s.binding_problem]
    lines += [f"warning: {c.binding_problem}" for c in inventory.connections if c.binding_problem]
    return lines


def _connection_table(connections: Sequence[DiscoveredConnection]) -> list[str]:
    headers = ["CONNECTION", "ID", "CONNECTIVITY", "CREDENTIAL", "KEY VAULT", "BINDING", "DATASETS"]
    rows = [
        [
            c.description,
            c.id[:8],
            c.connectivity_type,
            c.credential_type or "?",
            {"yes": "reference", "could": "could reference", "no": "-"}[_reference_state(c)],
            c.binding or ("AMBIGUOUS" if c.binding_problem else "-"),
            str(len(c.datasets)),
        ]
        for c in connections
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


# -- proposal (pure) --------------------------------------------------------------------------------
def propose(inventory: Inventory) -> dict[str, Any]:
    """The draft of ``--propose``: the unbound data sources and connections, each real data
    source once. A gateway data source that is also a Fabric connection the draft binds is left
    to the connection's draft (Fabric takes more credential types, Key Vault references, and no
    Take Over for a cloud data source)."""
    connections = propose_connection_bindings(inventory.connections)
    drafted = {tg["connectionId"] for b in connections for tg in b["targets"]}
    twins = {c.datasource for c in inventory.connections if c.id in drafted and c.datasource}
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
        ctype = _bindable(s.credential_type)
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
    skipped; one that could reference Key Vault is still proposed (see ``bindings check``)."""
    groups: dict[tuple[str, str, str], list[DiscoveredConnection]] = {}
    for c in connections:
        if c.binding is not None or c.binding_problem:
            continue
        ctype = _connection_credential_type(c.credential_type)
        if ctype is None:
            continue
        key = ((c.connection_type or "").casefold(), (c.path or "").casefold(), ctype.value)
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
            "secret": PLACEHOLDER_SECRET,
            "credentialType": ctype.value,
        }
        if ctype in (CredentialType.BASIC, CredentialType.WINDOWS):
            entry["username"] = PLACEHOLDER_USERNAME
        if ctype is CredentialType.SERVICE_PRINCIPAL:
            entry["tenantId"] = PLACEHOLDER_TENANT
            entry["clientId"] = PLACEHOLDER_CLIENT
        entry["targets"] = [{"connectionId": m.id} for m in members]
        bindings.append(entry)
    return bindings


def _bindable(credential_type: str | None) -> CredentialType | None:
    for member in BINDABLE_TYPES:
        if credential_type is not None and credential_type.casefold() == member.value.casefold():
            return member
    return None


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
