"""A small, realistic world for ``python -m sandbox`` and ``make demo``.

Contoso's Sales workspace has six datasets on two on-premises gateways (a current 2048-bit
one and a legacy 1024-bit one), all reading SQL Server as one service account,
``CONTOSO\\svc_pbi``, whose password lives in Key Vault as ``sql-sales-password``; and a
Finance dataset on a cloud Azure SQL source with its own secret. The healer runs as a service
principal that is a gateway admin and owns the datasets. Beside them, a Fabric connection to
the ERP database (``erp-fabric-password``, ``CONTOSO\\svc_erp``) through the two-member
on-premises gateway cluster GW-FABRIC, which the healer updates through Fabric's Connections API;
and a cloud Fabric connection to the data lake's Azure SQL (``lake-sql-password``, ``svc_lake``),
read by the Lake model, which can read its password from Key Vault itself through the Key Vault
connection "Contoso vault" (``adopt`` moves it there).

As in the real service, the gateway data sources are Fabric connections too
(:attr:`sandbox.fabric.Fabric.lists_gateway_datasources`): Fabric's ``GET /connections`` lists
each with the privacy level and encryption its admin set, which is how the healer keeps them
(Power BI's API does not report them). The DW source's admin made it ``Private``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sandbox.connections import KeyVaultConnection
from sandbox.fabric import FabricConnection
from sandbox.powerbi import Dataset, Datasource, Gateway, Workspace
from sandbox.sources import SourceSystem
from sandbox.world import Sandbox

DW_PRIVACY_LEVEL = "Private"


@dataclass
class DemoWorld:
    workspace: Workspace
    gateways: list[Gateway]
    sources: list[SourceSystem]
    datasources: list[Datasource]
    datasets: list[Dataset]
    bindings: dict[str, object] = field(default_factory=dict)
    fabric_connection: FabricConnection | None = None
    lake_connection: FabricConnection | None = None
    vault_connection: KeyVaultConnection | None = None
    lake_model: Dataset | None = None

    def bindings_json(self) -> str:
        return json.dumps(self.bindings, indent=2)


def build_demo_world(sb: Sandbox) -> DemoWorld:
    app = sb.entra.add_app(name="pbi-credential-healer")
    pbi = sb.powerbi
    # Gateway data sources are Fabric connections too, as in the service: the healer reads their
    # privacy level and encryption there (ids other than Power BI's: the stricter, unconfirmed side).
    sb.fabric.lists_gateway_datasources = True
    workspace = pbi.add_workspace("Sales", members=[app.client_id])
    gateway = pbi.add_gateway("GW-PROD-01", bits=2048, admins=[app.client_id])
    legacy = pbi.add_gateway("GW-LEGACY", bits=1024, admins=[app.client_id])
    cloud = pbi.add_cloud_gateway("Cloud", admins=[app.client_id])

    sales_pw = "Initial#Sales1"
    # One service account behind both SQL servers: its failed sign-ins count together.
    svc_pbi = sb.sources.add_account("CONTOSO\\svc_pbi", username="svc_pbi", secret=sales_pw)
    sql_sales = sb.sources.add("sqlsales", credential_type="Basic", account=svc_pbi)
    sql_dw = sb.sources.add("sqldw", credential_type="Basic", account=svc_pbi)
    azure_sql = sb.sources.add(
        "finance-azsql", credential_type="Basic", username="pbi_reader", secret="Initial#Finance1"
    )
    sb.vault.set_secret("sql-sales-password", sales_pw, notify=False)
    sb.vault.set_secret("azsql-finance-password", "Initial#Finance1", notify=False)

    ds_sales = pbi.add_datasource(
        gateway, sql_sales, connection_details={"server": "sqlsales.contoso.local", "database": "Sales"}
    )
    ds_dw = pbi.add_datasource(
        legacy, sql_dw, connection_details={"server": "sqldw.contoso.local", "database": "DW"}
    )
    pbi.set_datasource_settings(ds_dw, privacy_level=DW_PRIVACY_LEVEL)  # an admin's choice, to be kept
    ds_fin = pbi.add_datasource(
        cloud, azure_sql, connection_details={"server": "finance.database.windows.net", "database": "Finance"}
    )
    # Four regional marts on the sales server, read by the same service account.
    regions = []
    for region in ("EU", "US", "APAC", "LATAM"):
        source = sb.sources.add(f"sqlsales-{region.lower()}", credential_type="Basic", account=svc_pbi)
        regions.append(
            pbi.add_datasource(
                gateway,
                source,
                connection_details={"server": "sqlsales.contoso.local", "database": f"Sales{region}"},
            )
        )
    datasets = [
        pbi.add_dataset(workspace, "Sales Model", [ds_sales], owner=app.client_id),
        pbi.add_dataset(workspace, "Sales DW", [ds_dw], owner=app.client_id),
        pbi.add_dataset(workspace, "Finance", [ds_fin], owner=app.client_id),
        *(
            pbi.add_dataset(workspace, f"Sales {r}", [d], owner=app.client_id)
            for r, d in zip(("EU", "US", "APAC", "LATAM"), regions, strict=True)
        ),
    ]
    # A Fabric connection to the ERP database through an on-premises gateway cluster of two
    # members (a 2048-bit and an old 1024-bit one): one encrypted entry per member.
    erp_pw = "Initial#Erp1"
    erp = sb.sources.add("erp", credential_type="Windows", username="CONTOSO\\svc_erp", secret=erp_pw)
    cluster = sb.fabric.add_gateway("GW-FABRIC", member_bits=(2048, 1024), admins=[app.client_id])
    erp_connection = sb.fabric.add_connection(
        erp,
        connectivity_type="OnPremisesGateway",
        credential_type="Windows",
        gateway=cluster,
        users=[app.client_id],
        name="ERP (SQL Server)",
    )
    sb.vault.set_secret("erp-fabric-password", erp_pw, notify=False)
    # A cloud connection to the lake's Azure SQL database, and the Key Vault connection it can
    # read its password through once adopted.
    lake_pw = "Initial#Lake1"
    lake = sb.sources.add("lake-azsql", credential_type="Basic", username="svc_lake", secret=lake_pw)
    lake_connection = sb.fabric.add_connection(
        lake, credential_type="Basic", users=[app.client_id], name="Lake (Azure SQL)"
    )
    vault_connection = sb.fabric.add_key_vault_connection("Contoso vault", users=[app.client_id])
    sb.vault.set_secret("lake-sql-password", lake_pw, notify=False)
    lake_model = pbi.add_dataset(workspace, "Lake", [], owner=app.client_id, connections=[lake_connection])
    bindings = {
        "bindings": [
            {
                "name": "sales-sql",
                "secret": "sql-sales-password",
                "credentialType": "Basic",
                "username": "svc_pbi",
                "targets": [
                    {"gatewayId": gateway.id, "datasourceId": ds_sales.id},
                    {"gatewayId": legacy.id, "datasourceId": ds_dw.id},
                    *({"gatewayId": gateway.id, "datasourceId": d.id} for d in regions),
                ],
            },
            {
                "name": "finance-azsql",
                "secret": "azsql-finance-password",
                "credentialType": "Basic",
                "username": "pbi_reader",
                "targets": [{"gatewayId": cloud.id, "datasourceId": ds_fin.id}],
            },
            {
                "name": "erp-fabric",
                "secret": "erp-fabric-password",
                "credentialType": "Windows",
                "username": "CONTOSO\\svc_erp",
                "targets": [{"connectionId": erp_connection.id}],
            },
            {
                "name": "lake-fabric",
                "secret": "lake-sql-password",
                "credentialType": "Basic",
                "username": "svc_lake",
                "targets": [{"connectionId": lake_connection.id}],
            },
        ],
        "watch": {"workspaces": [workspace.id]},
    }
    return DemoWorld(
        workspace,
        [gateway, legacy, cloud],
        [sql_sales, sql_dw, azure_sql],
        [ds_sales, ds_dw, ds_fin, *regions],
        datasets,
        bindings,
        erp_connection,
        lake_connection,
        vault_connection,
        lake_model,
    )
