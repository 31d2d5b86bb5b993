"""Fabric connections healed through the sandbox's Fabric API with the real SDKs (issue 12).

Each test builds the usual gateway world (so a Fabric binding sits beside gateway data sources)
plus Fabric connections whose sources sign in through ``sb.sources`` accounts, then rotates and
heals. What a user notices: the connection holds the new credential, the on-premises cluster's
every member can decrypt it, a wrong value costs its account one failed sign-in and no more.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import pytest

from remediation.config.settings import Settings
from remediation.reconciler.healer import Action
from sandbox import Sandbox
from sandbox.accounts import Account
from sandbox.fabric import FabricConnection, FabricGateway
from sandbox.specs import fabric_errors, fabric_subtype
from sandbox.world import generate_password
from tests.support.harness import Harness, Make
from tests.support.world import World, build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
SP_CLIENT = "1f69e798-5852-4fdd-ab01-33bb14b6e934"


@dataclass
class FabricWorld:
    connection: FabricConnection
    account: Account
    secret_name: str
    binding: dict[str, Any]
    gateway: FabricGateway | None = None

    def rotate(self, sb: Sandbox, value: str | None = None) -> str:
        """Source first, then Key Vault; returns the new value."""
        value = value or generate_password()
        self.account.set_secret(value)
        sb.vault.set_secret(self.secret_name, value)
        return value


def add_fabric(
    sb: Sandbox,
    principal: str,
    *,
    connectivity: str = "ShareableCloud",
    credential_type: str = "Basic",
    bits: tuple[int, ...] = (2048,),
    name: str = "lake",
    reference: bool = False,
) -> FabricWorld:
    """One Fabric connection (and its gateway when on-premises) the healer's ``principal`` manages."""
    secret = generate_password()
    source_type = {"SharedAccessSignature": "SAS"}.get(credential_type, credential_type)
    username = SP_CLIENT if credential_type == "ServicePrincipal" else "svc_fabric"
    if credential_type in ("Key", "SharedAccessSignature"):
        username = None
    account = sb.sources.add_account(f"{name}\\acct", username=username, secret=secret, lockout_threshold=5)
    source = sb.sources.add(f"{name}-src", credential_type=source_type, account=account)
    gateway = None
    if connectivity in ("OnPremisesGateway", "OnPremisesGatewayPersonal"):
        gateway = sb.fabric.add_gateway(
            f"{name}-gw", member_bits=bits, admins=[principal], personal=connectivity.endswith("Personal")
        )
    ref = {"connectionId": "3a1f9c5e-0000-4000-8000-00000000abcd", "secretName": name} if reference else None
    connection = sb.fabric.add_connection(
        source,
        connectivity_type=connectivity,
        credential_type=credential_type,
        gateway=gateway,
        users=[principal],
        key_vault_reference=ref,
    )
    secret_name = f"{name}-secret"
    sb.vault.set_secret(secret_name, secret)
    binding: dict[str, Any] = {
        "name": name,
        "secret": secret_name,
        "credentialType": credential_type,
        "targets": [{"connectionId": connection.id}],
    }
    if credential_type in ("Basic", "Windows"):
        binding["username"] = "CONTOSO\\svc_fabric" if credential_type == "Windows" else "svc_fabric"
        if credential_type == "Windows":
            account.username = "CONTOSO\\svc_fabric"
    if credential_type == "ServicePrincipal":
        binding.update(tenantId=TENANT, clientId=SP_CLIENT)
    return FabricWorld(connection, account, secret_name, binding, gateway)


def harness(make: Make, sb: Sandbox, *fabric: FabricWorld, world: World | None = None, **env: str) -> Harness:
    w = world or build_world(sb)
    bindings = {
        "bindings": [w.binding(), *(f.binding for f in fabric)],
        "watch": {"workspaces": [w.workspace_id]},
    }
    return make(w, env={"REMEDIATION_BINDINGS": json.dumps(bindings), **env})


def cli_env(h: Harness) -> dict[str, str]:
    """The CLI's environment in this process: without the connection string, so it configures no
    exporter here (CLI telemetry is proven in a child process, test_cli_telemetry.py)."""
    return {k: v for k, v in h.env.items() if k != "APPLICATIONINSIGHTS_CONNECTION_STRING"}


def fabric_patches(sb: Sandbox) -> list[Any]:
    return sb.requests.find("fabric.update_connection")


def targets(report: Any, connection: FabricConnection) -> list[Any]:
    return [o for o in report.targets() if o.datasource_id == connection.id]


@pytest.mark.parametrize(
    ("connectivity", "credential_type"),
    [
        ("ShareableCloud", "Basic"),
        ("ShareableCloud", "Key"),
        ("ShareableCloud", "SharedAccessSignature"),
        ("VirtualNetworkGateway", "Basic"),
        ("OnPremisesGateway", "Windows"),
        ("OnPremisesGatewayPersonal", "Basic"),
    ],
)
def test_each_connectivity_type_is_healed_to_the_new_secret(
    make: Make, sb: Sandbox, connectivity: str, credential_type: str
) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, connectivity=connectivity, credential_type=credential_type)
    h = harness(make, sb, f, world=w)
    new = f.rotate(sb)
    report = h.healer.heal_secret(f.secret_name)
    (outcome,) = targets(report, f.connection)
    assert outcome.action == Action.UPDATED, outcome.reason
    assert new in f.connection.data.values()
    assert f.account.total_failures == 0
    (patch,) = fabric_patches(sb)
    assert patch.status == 200
    assert patch.token_kind == "app" and patch.principal == w.app.client_id
    body = patch.body
    assert body["connectivityType"] == connectivity
    assert body["credentialDetails"]["skipTestConnection"] is False
    assert fabric_errors(fabric_subtype("UpdateConnectionRequest", connectivity) or "", body) == []
    if connectivity.startswith("OnPremises"):
        assert new not in json.dumps(body)  # encrypted for the gateway, never in clear


def test_a_cluster_of_a_1024_and_a_2048_bit_member_each_get_an_entry_they_decrypt(
    make: Make, sb: Sandbox
) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, connectivity="OnPremisesGateway", bits=(1024, 2048))
    h = harness(make, sb, f, world=w)
    new = f.rotate(sb)
    report = h.healer.heal_secret(f.secret_name)
    assert [o.action for o in targets(report, f.connection)] == [Action.UPDATED]
    (patch,) = fabric_patches(sb)
    values = patch.body["credentialDetails"]["credentials"]["values"]
    assert f.gateway is not None
    assert [v["gatewayId"] for v in values] == [m.id for m in f.gateway.members]
    for member, entry in zip(f.gateway.members, values, strict=True):
        pairs = json.loads(member.keys.decrypt(entry["encryptedCredentials"]))["credentialData"]
        assert {p["name"]: p["value"] for p in pairs} == {"username": "svc_fabric", "password": new}
    assert f.connection.data == {"username": "svc_fabric", "password": new}


def test_a_service_principal_secret_rotation(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, credential_type="ServicePrincipal", name="sp")
    h = harness(make, sb, f, world=w)
    new = f.rotate(sb)
    report = h.healer.heal_secret(f.secret_name)
    assert [o.action for o in targets(report, f.connection)] == [Action.UPDATED]
    assert f.connection.data == {
        "tenantId": TENANT,
        "servicePrincipalClientId": SP_CLIENT,
        "servicePrincipalSecret": new,
    }
    again = h.healer.heal_secret(f.secret_name)
    assert [o.action for o in targets(again, f.connection)] == [Action.CURRENT]
    assert len(fabric_patches(sb)) == 1


def test_a_wrong_value_costs_the_account_one_failed_sign_in_and_none_after(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, connectivity="OnPremisesGateway", bits=(1024, 2048))
    h = harness(make, sb, f, world=w)
    wrong = "Wrong#" + secrets.token_urlsafe(8)
    sb.vault.set_secret(f.secret_name, wrong)
    first = h.healer.heal_secret(f.secret_name)
    (outcome,) = targets(first, f.connection)
    assert outcome.action == Action.REJECTED, outcome.reason
    assert "IncorrectCredentials" in outcome.reason
    for _ in range(3):
        again = h.healer.heal_secret(f.secret_name)
        assert [o.action for o in targets(again, f.connection)] != [Action.UPDATED]
        h.healer.sweep()
    assert f.account.failures_of(wrong) == 1
    assert len(fabric_patches(sb)) == 1
    new = f.rotate(sb)  # a proper rotation heals it
    healed = h.healer.heal_secret(f.secret_name)
    assert [o.action for o in targets(healed, f.connection)] == [Action.UPDATED]
    assert f.account.failures_of(new) == 0


def test_a_throttled_patch_is_retried_after_retry_after_and_presented_once(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    h = harness(make, sb, f, world=w)
    sb.faults.throttle("fabric.update_connection", retry_after=2)
    new = f.rotate(sb)
    report = h.healer.heal_secret(f.secret_name)
    assert [o.action for o in targets(report, f.connection)] == [Action.UPDATED]
    assert [p.status for p in fabric_patches(sb)] == [429, 200]
    assert f.connection.data["password"] == new
    assert any(wait >= 2.0 for wait in h.sleeps.waits)


def test_a_lost_answer_is_in_doubt_and_not_presented_again(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    h = harness(make, sb, f, world=w)
    sb.faults.add("fabric.update_connection", status=503, after=True)
    f.rotate(sb)
    first = h.healer.heal_secret(f.secret_name)
    assert [o.action for o in targets(first, f.connection)] == [Action.IN_DOUBT]
    again = h.healer.heal_secret(f.secret_name)
    assert [o.action for o in targets(again, f.connection)] != [Action.UPDATED]
    assert len(fabric_patches(sb)) == 1


def test_a_caller_without_a_role_on_the_connection_presents_nothing(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, "someone-else")
    h = harness(make, sb, f, world=w)
    f.rotate(sb)
    report = h.healer.heal_secret(f.secret_name)
    (outcome,) = targets(report, f.connection)
    assert outcome.action == Action.FAILED
    assert "InsufficientPermissionsToManageConnection" in outcome.reason
    assert fabric_patches(sb) == []
    assert f.account.total_failures == 0


def test_a_managed_identity_caller(make: Make, sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    w = build_world(sb)
    mi = sb.entra.add_managed_identity()
    sb.powerbi.add_member(w.workspace, mi.client_id)
    sb.powerbi.grant_gateway_admin(w.gateway, mi.client_id)
    f = add_fabric(sb, mi.client_id, connectivity="OnPremisesGateway", bits=(2048, 1024))
    env = {"AZURE_CLIENT_SECRET": "", **sb.entra.managed_identity_env(mi)}
    h = harness(make, sb, f, world=w, **env)
    assert not Settings.from_env(h.env).has_client_secret
    new = f.rotate(sb)
    report = h.healer.heal_secret(f.secret_name)
    assert [o.action for o in targets(report, f.connection)] == [Action.UPDATED]
    patch = fabric_patches(sb)[-1]
    assert (patch.token_kind, patch.principal) == ("managed_identity", mi.client_id)
    assert f.connection.data["password"] == new


def test_the_sandbox_answers_match_the_fabric_specs(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, connectivity="OnPremisesGateway", bits=(1024, 2048))
    assert fabric_errors("Connection", sb.fabric.connection_json(f.connection)) == []
    assert f.gateway is not None
    assert fabric_errors("Gateway", sb.fabric.gateway_json(f.gateway)) == []
    members = [
        {
            "id": m.id,
            "displayName": m.name,
            "publicKey": m.keys.public_key_json(),
            "version": "1",
            "enabled": m.enabled,
        }
        for m in f.gateway.members
    ]
    assert fabric_errors("ListGatewayMembersResponse", {"value": members}) == []


def test_a_connection_that_references_key_vault_is_left_alone(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, credential_type="Basic", reference=True)
    f.binding["targets"] = [{"connectionId": f.connection.id, "keyVaultReference": True}]
    h = harness(make, sb, f, world=w)
    f.rotate(sb)
    report = h.healer.heal_secret(f.secret_name)
    (outcome,) = targets(report, f.connection)
    assert outcome.action == Action.REFERENCED
    assert "no copy is sent" in outcome.reason
    assert report.exit_code == 0
    assert fabric_patches(sb) == []
    assert f.connection.key_vault_reference is not None and f.connection.reference_overwritten == 0


def test_bindings_check_reads_connections_and_says_which_could_reference_key_vault(
    make: Make, sb: Sandbox
) -> None:
    from io import StringIO  # noqa: PLC0415

    from remediation.edges.cli import main  # noqa: PLC0415

    w = build_world(sb)
    cloud = add_fabric(sb, w.app.client_id, name="lake")
    onprem = add_fabric(sb, w.app.client_id, connectivity="OnPremisesGateway", name="erp")
    hidden = add_fabric(sb, "someone-else", name="hidden")
    h = harness(make, sb, cloud, onprem, hidden, world=w)
    out, err = StringIO(), StringIO()

    code = main(["--json", "bindings", "check"], environ=cli_env(h), stdout=out, stderr=err)

    rows = {r["datasource"]: r for r in json.loads(out.getvalue())}
    assert code == 1, err.getvalue()  # the hidden connection is a problem
    assert rows[cloud.connection.id]["status"] == "ok"
    assert any("could reference Key Vault" in x for x in rows[cloud.connection.id].get("warnings", []))
    assert rows[onprem.connection.id]["status"] == "ok"
    assert not any("could reference" in x for x in rows[onprem.connection.id].get("warnings", []))
    assert rows[hidden.connection.id]["status"].startswith("connection not visible")
    assert fabric_patches(sb) == []


def test_a_referenced_connection_healed_as_one_target_is_left_alone_too(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, reference=True)
    f.binding["targets"] = [{"connectionId": f.connection.id, "keyVaultReference": True}]
    h = harness(make, sb, f, world=w)
    f.rotate(sb)
    report = h.healer.heal_target("connections", f.connection.id, retry_refreshes=True)
    assert [o.action for o in report.targets()] == [Action.REFERENCED]
    assert fabric_patches(sb) == [] and f.connection.reference_overwritten == 0


def test_the_cli_names_a_connection_target_as_a_connection(make: Make, sb: Sandbox) -> None:
    from io import StringIO  # noqa: PLC0415

    from remediation.edges.cli import main  # noqa: PLC0415

    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    h = harness(make, sb, f, world=w)
    new = f.rotate(sb)
    out, err = StringIO(), StringIO()
    code = main(["heal", "--secret", f.secret_name], environ=cli_env(h), stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert f"connection {f.connection.id[:8]}…" in out.getvalue()
    assert "updated" in out.getvalue() and new not in out.getvalue() + err.getvalue()


def test_a_fabric_429_holds_every_instance_through_the_ledger_and_not_power_bi(
    make: Make, sb: Sandbox
) -> None:
    """Fabric throttles per principal: the pause one instance drew is waited out by another
    before it sends anything to Fabric; Power BI's calls are not held by it."""
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    h = harness(make, sb, f, world=w)
    other = h.another_instance()
    sb.faults.throttle("fabric.get_connection", retry_after=30, times=1)

    h.runtime.fabric.get_connection(f.connection.id)  # drew the 429, waited, got it
    assert h.sleeps.waits == [30.0]
    before = len(h.sleeps.waits)
    other.fabric.get_connection(f.connection.id)  # waited before sending: no second 429
    assert [r.status for r in sb.requests.find("fabric.get_connection")] == [429, 200, 200]
    assert len(h.sleeps.waits) == before + 1 and 25.0 < h.sleeps.waits[-1] <= 30.0
    other.powerbi.get_gateways()  # another service, another budget: not held
    assert len(h.sleeps.waits) == before + 1


def test_the_cli_heals_one_connection_named_by_connection(make: Make, sb: Sandbox) -> None:
    from io import StringIO  # noqa: PLC0415

    from remediation.edges.cli import main  # noqa: PLC0415

    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    h = harness(make, sb, f, world=w)
    new = f.rotate(sb)
    out, err = StringIO(), StringIO()
    code = main(
        ["heal", "--connection", f.connection.id.upper(), "--json"],
        environ=cli_env(h),
        stdout=out,
        stderr=err,
    )
    assert code == 0, err.getvalue()
    (outcome,) = json.loads(out.getvalue())["targets"]
    assert outcome["action"] == "updated" and outcome["datasource_id"] == f.connection.id
    assert f.connection.data["password"] == new and new not in out.getvalue() + err.getvalue()
    assert [p.path for p in fabric_patches(sb)] == [f"/v1/connections/{f.connection.id}"]
    for bad, says in (
        (["--connection", "lake"], "not a connection id"),
        (["--connection", "6952a7b2-aea3-414f-9d85-6c0fe5d34539"], "no binding covers connection"),
        (["--connection", f.connection.id, "--gateway", w.gateway_id], "exactly one of"),
    ):
        out, err = StringIO(), StringIO()
        assert main(["heal", *bad], environ=cli_env(h), stdout=out, stderr=err) == 2, bad
        assert says in err.getvalue(), err.getvalue()
