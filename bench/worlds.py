"""Worlds for the benchmarks: many data sources on one secret, or many workspaces of datasets."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from sandbox import Sandbox
from sandbox.entra import App
from sandbox.powerbi import Dataset, Datasource, Gateway, Workspace
from sandbox.sources import SourceSystem
from sandbox.world import generate_password

SECRET = "sql-bench-password"


@dataclass
class BenchWorld:
    sb: Sandbox
    app: App
    workspaces: list[Workspace]
    gateways: list[Gateway]
    sources: list[SourceSystem] = field(default_factory=list)
    datasources: list[Datasource] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list)
    bound: list[Datasource] = field(default_factory=list)  # the ones bound to SECRET
    password: str = ""

    def bindings(self) -> str:
        targets = [{"gatewayId": d.gateway.id, "datasourceId": d.id} for d in self.bound]
        return json.dumps(
            {
                "bindings": [
                    {
                        "name": "bench",
                        "secret": SECRET,
                        "credentialType": "Basic",
                        "username": "svc_pbi",
                        "targets": targets,
                    }
                ],
                "watch": {"workspaces": [w.id for w in self.workspaces]},
            }
        )

    def apply_env(self, state_path: str, **extra: str) -> dict[str, str]:
        # Rotations here change the sources first, so nothing needs to settle: the benchmarks
        # measure healing, not the settle time (REMEDIATION_SETTLE_SECONDS, 60 s by default).
        settings = {"REMEDIATION_SETTLE_SECONDS": "0", **extra}
        env = self.sb.env(REMEDIATION_BINDINGS=self.bindings(), REMEDIATION_STATE_PATH=state_path, **settings)
        env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING", None)
        os.environ.pop("APPLICATIONINSIGHTS_CONNECTION_STRING", None)
        os.environ.pop("AzureWebJobsStorage", None)
        os.environ.update(env)
        return env

    def rotate(self) -> str:
        """Every bound source gets a new password, then Key Vault a new version."""
        self.password = generate_password()
        for datasource in self.bound:
            self.sb.sources.set_secret(datasource.source.id, self.password)
        return str(self.sb.vault.set_secret(SECRET, self.password, notify=False))

    def fail_refreshes(self, datasets: list[Dataset]) -> None:
        for dataset in datasets:
            self.sb.powerbi.start_refresh(dataset)
        self.sb.powerbi.settle()


def build(
    sb: Sandbox,
    *,
    targets: int,
    gateways: int = 1,
    workspaces: int = 1,
    datasets_per_workspace: int | None = None,
    servers: int | None = None,
) -> BenchWorld:
    """``targets`` data sources bound to one secret, spread over ``gateways`` gateways (one SQL
    server behind each, or ``servers`` servers shared by every gateway), one dataset each, spread
    over ``workspaces``; plus unbound datasets up to ``datasets_per_workspace``."""
    app = sb.entra.add_app(name="bench")
    pbi = sb.powerbi
    pbi.set_refresh_duration(0)
    spaces = [
        pbi.add_workspace(f"ws{i}", members=[app.client_id], dedicated_capacity=True)
        for i in range(workspaces)
    ]
    gws = [pbi.add_gateway(f"gw{i}", bits=2048, admins=[app.client_id]) for i in range(gateways)]
    world = BenchWorld(sb, app, spaces, gws)
    password = generate_password()
    world.password = password
    sb.vault.set_secret(SECRET, password, notify=False)
    per_workspace = datasets_per_workspace or -(-targets // workspaces)
    stride = max(1, (per_workspace * workspaces) // max(1, targets))  # spread the bound ones out
    index = 0
    for w_index, workspace in enumerate(spaces):
        for d_index in range(per_workspace):
            bound = index % stride == 0 and len(world.bound) < targets
            source = sb.sources.add(
                f"src{w_index}-{d_index}",
                username="svc_pbi",
                secret=password if bound else generate_password(),
                lockout_threshold=None,
            )
            # One SQL server behind each gateway, a database per data source (the usual estate:
            # the account's servers are probed one at a time, their databases then follow).
            g_index = len(world.bound) % gateways
            server = g_index if servers is None else len(world.bound) % servers
            details = {"server": f"sql{server}.bench.local", "database": source.id}
            datasource = pbi.add_datasource(gws[g_index], source, connection_details=details)
            dataset = pbi.add_dataset(workspace, f"ds{w_index}-{d_index}", [datasource], owner=app.client_id)
            world.sources.append(source)
            world.datasources.append(datasource)
            world.datasets.append(dataset)
            if bound:
                world.bound.append(datasource)
            index += 1
    return world
