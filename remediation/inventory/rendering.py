"""The renderings of a discovered :class:`~remediation.inventory.discover.Inventory` that
``python -m remediation discover`` prints: the ``--json`` document, the ``--csv`` rows and the
readable table. Pure; no secret (the inventory's connection details are already masked).

Every data source and connection carries where it stands with Key Vault references:
``referenceState`` (``referenced``, ``eligible``, ``not-eligible``) and ``referenceReason`` in
JSON and CSV; the table shows the state in its KEY VAULT column and the reasons, counted, below.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from remediation.inventory.discover import DiscoveredConnection, Inventory
from remediation.rules.references import ReferenceState, ReferenceSupport

__all__ = ["CSV_HEADER", "table_lines", "to_csv_rows", "to_json"]


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
                **_reference_json(s.reference),
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
                **_reference_json(c.reference),
            }
            for c in inventory.connections
        ],
    }


def _reference_json(reference: ReferenceSupport | None) -> dict[str, str | None]:
    return {
        "referenceState": None if reference is None else reference.state.value,
        "referenceReason": None if reference is None else reference.reason,
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
    "referenceState",
    "referenceReason",
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
                *_reference_cells(s.reference),
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
                *_reference_cells(c.reference),
            ]
        )
    return rows


def _reference_cells(reference: ReferenceSupport | None) -> list[str]:
    return ["", ""] if reference is None else [reference.state.value, reference.reason]


def _reference_state(c: DiscoveredConnection) -> str:
    if c.key_vault_reference:
        return "yes"
    return "could" if c.could_reference else "no"


def table_lines(inventory: Inventory) -> list[str]:
    """A readable table: where, what, credential type, binding, datasets and their last refresh."""
    headers = [
        "SOURCE",
        "GATEWAY",
        "DATASOURCE",
        "CREDENTIAL",
        "KEY VAULT",
        "BINDING",
        "DATASETS (LAST REFRESH)",
    ]
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
                _state(s.reference),
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
    lines += _reference_lines(inventory)
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
            _state(c.reference),
            c.binding or ("AMBIGUOUS" if c.binding_problem else "-"),
            str(len(c.datasets)),
        ]
        for c in connections
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


def _state(reference: ReferenceSupport | None) -> str:
    return "?" if reference is None else reference.state.value


def _reference_lines(inventory: Inventory) -> list[str]:
    """Where the sources and connections stand with Key Vault references: the states counted, and
    each reason once with how many it concerns."""
    found = [s.reference for s in inventory.sources] + [c.reference for c in inventory.connections]
    known = [r for r in found if r is not None]
    if not known:
        return []
    counts = {state: sum(1 for r in known if r.state is state) for state in ReferenceState}
    head = ", ".join(f"{n} {state.value}" for state, n in counts.items() if n)
    lines = ["", f"Key Vault references: {head}."]
    if counts[ReferenceState.ELIGIBLE]:
        lines.append(
            "  eligible connections can read their secret from Key Vault themselves: "
            "python -m remediation adopt --connection ID --vault-connection KEY_VAULT_CONNECTION_ID"
        )
    reasons: dict[tuple[str, str], int] = {}
    for r in known:
        if r.state is not ReferenceState.ELIGIBLE:
            key = (r.state.value, r.reason.split(" (as Fabric connection ", 1)[0])
            reasons[key] = reasons.get(key, 0) + 1
    lines += [f"  {state}: {reason} ({n})" for (state, reason), n in sorted(reasons.items())]
    return lines
