"""Inventory: every data source the identity can reach, who uses it, and which binding covers it.

``python -m remediation discover`` answers the question the Power BI error page leaves people
with (*which dataset uses which credentials?*) before they write a bindings file. It is
**read-only**: only ``GET`` requests, and none of them signs in at a source (the data source
*status* check does, so it is never called), no ledger, no Key Vault.

This module gathers (:func:`scan`, I/O) and matches what it found to the bindings:

* on-premises gateway data sources (``GET /gateways``, ``.../datasources``)
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
* **Where a Key Vault reference is possible**, for every connection and data source
  (:class:`~remediation.rules.references.ReferenceSupport`): ``referenced`` (marked in the
  bindings, or moved by ``adopt``, which the ledger records: ``references``, read when a ledger
  exists), ``eligible`` or ``not-eligible`` with the reason, from the one table of
  :mod:`remediation.rules.references`. A data source that is a Fabric connection stands where that
  connection stands.
* :func:`masked_details` (pure): secrets in URLs and connection strings masked before anything
  is kept.

What it found is rendered by :mod:`remediation.inventory.rendering` (``--json``, ``--csv``, the
table) and drafted into bindings by :mod:`remediation.inventory.proposal` (``--propose``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from remediation.clients.api_errors import ApiError
from remediation.clients.fabric import Connection, FabricClient, FabricNotAuthorized
from remediation.clients.powerbi import PowerBIClient
from remediation.clients.powerbi_models import DatasetDatasource, GatewayDatasource
from remediation.config.bindings import BINDABLE_TYPES, CONNECTIONS, BindingSet, CredentialType
from remediation.errors import BindingsError
from remediation.ledger.references import ReferenceRecord
from remediation.rules.connections import corresponding_connection, is_connection_of
from remediation.rules.redact import MASK, describe_datasource, mask_urls
from remediation.rules.references import ReferenceState, ReferenceSupport, could_reference, reference_support

__all__ = [
    "DatasetUse",
    "DiscoveredConnection",
    "DiscoveredSource",
    "Inventory",
    "bindable_credential_type",
    "connection_credential_type",
    "masked_details",
    "scan",
]

# key=value pairs of connection strings that carry secrets (ODBC, OLE DB, storage, SAS).
_SECRET_PAIR = re.compile(
    r"(?i)\b(password|pwd|accountkey|sharedaccesskey|sharedaccesssignature|sig|token|apikey|"
    r"api_key|secret|client_secret)(\s*=\s*)([^;&\s\"']*)"
)

Progress = Callable[[str], None]
RecordOf = Callable[[str], ReferenceRecord | None]
"""adopt's record of a connection's Key Vault reference, by connection id (the ledger's)."""


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
    reference: ReferenceSupport | None = None  # where it stands with Key Vault references

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
    reference: ReferenceSupport | None = None  # where it stands with Key Vault references
    reference_secret: str | None = None  # the secret adopt's reference names (the ledger's record)

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
    records: RecordOf | None = None,
) -> Inventory:
    """Read every reachable data source (GET requests only; no status check: it signs in), and
    with ``fabric`` every Fabric connection the identity has a role on; ``records`` is adopt's
    record of a connection's reference (the ledger's), when there is a ledger to read.

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
        inventory.connections = _connections(fabric, bindings, inventory, records)
    _data_source_references(inventory)
    return inventory


def _connections(
    fabric: FabricClient, bindings: BindingSet, inventory: Inventory, records: RecordOf | None = None
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
        item.reference, item.reference_secret = _connection_reference(c, item, records, inventory)
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


def _connection_reference(
    c: Connection, item: DiscoveredConnection, records: RecordOf | None, inventory: Inventory
) -> tuple[ReferenceSupport, str | None]:
    """Where a connection stands with Key Vault references, and the secret adopt's reference
    names (when the ledger says it moved it)."""
    record = None
    if records is not None:
        try:
            record = records(c.id)
        except Exception as exc:  # noqa: BLE001 - the ledger is optional here: a warning, not a stop
            inventory.problems.append(
                f"cannot read adopt's record of connection {c.id} ({type(exc).__name__})"
            )
    if item.key_vault_reference:
        return ReferenceSupport.referenced(
            f'marked "keyVaultReference": true in binding {item.binding or "?"}', "the bindings file"
        ), None
    if record is not None and record.state == "referenced":
        return ReferenceSupport.referenced(
            f"moved onto a reference to {record.secret!r} by adopt (not marked in the bindings yet)",
            f"the ledger, request {record.request}",
        ), record.secret
    if record is not None and record.state == "in-doubt":
        return ReferenceSupport.referenced(
            "adopt's answer was lost: it may reference Key Vault (the healer sends it nothing until "
            "adopt or adopt --release settles it)",
            f"the ledger, request {record.request}",
        ), record.secret
    return reference_support(c.connectivity_type, c.credential_type, c.connection_type), None


def _data_source_references(inventory: Inventory) -> None:
    """Where each data source stands: where its Fabric connection stands, when one is known;
    otherwise by its gateway and credential type."""
    twins = {c.datasource: c for c in inventory.connections if c.datasource is not None}
    for source in inventory.sources:
        twin = twins.get((source.gateway_id or "", source.datasource_id or ""))
        if twin is not None and twin.reference is not None:
            through = f" (as Fabric connection {twin.id})"
            source.reference = ReferenceSupport(
                twin.reference.state,
                twin.reference.reason + through,
                twin.reference.source,
                twin.reference.field,
            )
            if twin.reference.state is ReferenceState.REFERENCED and source.binding:
                source.binding_problem = (
                    f"data source {source.gateway_id}/{source.datasource_id} is bound as a data source, but "
                    f"its Fabric connection {twin.id} references Key Vault: an update through Power BI "
                    "would replace the reference; bind the connection (marked) instead"
                )
            continue
        if source.on_premises:
            source.reference = reference_support("OnPremisesGateway", source.credential_type)
        elif source.credential_type is None:
            source.reference = ReferenceSupport(
                ReferenceState.NOT_ELIGIBLE,
                "Power BI does not say its credential type to this identity",
                "Power BI Get Datasource (gateway admins and dataset owners only)",
            )
        else:
            support = reference_support("ShareableCloud", source.credential_type, source.datasource_type)
            note = (
                " (through its Fabric connection: adopt takes the connection's id)"
                if support.eligible
                else ""
            )
            source.reference = ReferenceSupport(
                support.state, support.reason + note, support.source, support.field
            )


_FABRIC_BINDABLE = {
    "SharedAccessSignature": CredentialType.SAS,
    "ServicePrincipal": CredentialType.SERVICE_PRINCIPAL,
}


def connection_credential_type(credential_type: str | None) -> CredentialType | None:
    """A connection's credential type as a binding spells it, when a binding can rotate it."""
    if credential_type in _FABRIC_BINDABLE:
        return _FABRIC_BINDABLE[credential_type]
    found = bindable_credential_type(credential_type)
    return None if found is CredentialType.OAUTH2 else found


def _could_reference(connection: Connection) -> bool:
    ctype = connection_credential_type(connection.credential_type)
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


def bindable_credential_type(credential_type: str | None) -> CredentialType | None:
    """A Power BI credential type as a binding spells it, when a binding can rotate it (matched
    case-insensitively against :data:`~remediation.config.bindings.BINDABLE_TYPES`)."""
    for member in BINDABLE_TYPES:
        if credential_type is not None and credential_type.casefold() == member.value.casefold():
            return member
    return None
