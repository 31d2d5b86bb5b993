"""Key Vault references (issue 20): `adopt` moves an eligible connection onto one, and the healer
heals around what a reference does not do (retries after a rotation, diagnoses a reference that
cannot be read), through the sandbox's Fabric and Key Vault with the real SDKs.

The sandbox's Fabric resolves a reference against its Key Vault at each use (the latest version),
as Fabric does; its Key Vault connections stand for the "Azure Key Vault references" of Manage
connections and gateways.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from remediation.clients.keyvault import KeyVaultClient
from remediation.edges.cli import main
from remediation.ledger.references import References
from remediation.reconciler.healer import Action
from sandbox import Sandbox
from sandbox.clock import ManualClock
from sandbox.connections import KeyVaultConnection
from sandbox.powerbi import Dataset
from sandbox.refusals import pbi_error
from sandbox.world import generate_password
from tests.sandbox.test_fabric import FabricWorld, add_fabric, cli_env, fabric_patches, harness
from tests.support.harness import Harness, Make
from tests.support.world import World, build_world

NO_CREDENTIALS = "DM_GWPipeline_Gateway_CredentialsNotSpecified"  # no sign-in happened

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


def vault_connection(sb: Sandbox, w: World) -> KeyVaultConnection:
    return sb.fabric.add_key_vault_connection("Contoso vault", users=[w.app.client_id])


def cli(h: Harness, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    code = main(list(args), environ={**cli_env(h), **(env or {})}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def adopt(h: Harness, f: FabricWorld, kv: KeyVaultConnection, *extra: str) -> tuple[int, str, str]:
    return cli(h, "adopt", "--connection", f.connection.id, "--vault-connection", kv.id, *extra)


def model(sb: Sandbox, w: World, name: str, *connections: FabricWorld) -> Dataset:
    return sb.powerbi.add_dataset(
        w.workspace, name, [], owner=w.app.client_id, connections=[f.connection for f in connections]
    )


def api_refreshes(dataset: Dataset) -> list[Any]:
    return [r for r in dataset.refreshes if r.refresh_type == "ViaApi"]


def of(report: Any, dataset: Dataset) -> list[str]:
    return [o.action for o in report.datasets() if o.dataset_id == dataset.id]


def everything_said(sb: Sandbox, *texts: str) -> str:
    """Every request body the product sent and every text it printed."""
    return "\n".join([*(json.dumps(r.body) for r in sb.requests.find("fabric.update_connection")), *texts])


# -- adopt ------------------------------------------------------------------------------------------
def test_adopt_without_yes_shows_the_plan_and_changes_nothing(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    kv = vault_connection(sb, w)
    h = harness(make, sb, f, world=w)

    code, out, err = adopt(h, f, kv)

    assert code == 0, out + err
    assert "passwordReference" in out and kv.id in out and f.secret_name in out
    assert "Nothing is changed without --yes" in out and "would-update" in out
    code, out, err = adopt(h, f, kv, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["dryRun"] is True and [t["action"] for t in doc["targets"]] == ["would-update"]
    assert doc["plan"]["field"] == "passwordReference" and doc["plan"]["vaultConnectionId"] == kv.id
    assert fabric_patches(sb) == [] and f.connection.key_vault_reference is None
    assert References(h.runtime.ledger).of(f.connection.id) is None
    assert f.account.total_failures == 0


@pytest.mark.parametrize(
    ("credential_type", "field", "kept"),
    [
        ("Basic", "passwordReference", {"username": "svc_fabric"}),
        ("Key", "keyReference", {}),
        ("SharedAccessSignature", "tokenReference", {}),
        (
            "ServicePrincipal",
            "servicePrincipalSecretReference",
            {
                "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                "servicePrincipalClientId": "1f69e798-5852-4fdd-ab01-33bb14b6e934",
            },
        ),
    ],
)
def test_adopt_sends_exactly_the_reference_and_fabric_reads_the_secret_itself(
    make: Make, sb: Sandbox, credential_type: str, field: str, kept: dict[str, str]
) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, credential_type=credential_type)
    kv = vault_connection(sb, w)
    h = harness(make, sb, f, world=w)
    secret = sb.vault.get_secret(f.secret_name).value

    code, out, err = adopt(h, f, kv, "--yes")

    assert code == 0, out + err
    (patch,) = fabric_patches(sb)
    assert patch.status == 200
    assert patch.body == {
        "connectivityType": "ShareableCloud",
        "credentialDetails": {
            "credentials": {
                "credentialType": credential_type,
                **kept,
                field: {"connectionId": kv.id, "secretName": f.secret_name},
            },
            "skipTestConnection": False,
        },
    }
    assert f.connection.key_vault_reference == {"connectionId": kv.id, "secretName": f.secret_name}
    assert "adopted" in out and "now change the bindings" in err and '"keyVaultReference": true' in err
    assert secret not in everything_said(sb, out, err)
    record = References(h.runtime.ledger).of(f.connection.id)
    assert record is not None and record.state == "referenced" and record.vault_connection == kv.id
    (row,) = [o for o in h.runtime.ledger.outcomes() if o.datasource_id == f.connection.id]
    assert row.action == "adopted" and row.secret_version == sb.vault.get_secret(f.secret_name).version
    assert f.account.total_failures == 0  # the test signed in once, with the right value

    # From now on Fabric reads each new version itself: a rotation sends the connection nothing,
    # whether or not the bindings were marked yet (the ledger's record says it was moved).
    new = f.rotate(sb)
    report = h.healer.heal_secret(f.secret_name)
    assert [o.action for o in report.targets() if o.datasource_id == f.connection.id] == [Action.REFERENCED]
    assert len(fabric_patches(sb)) == 1 and f.connection.reference_overwritten == 0
    assert sb.fabric.sign_in(f.connection, cause="test-connection") == "ok"  # it reads the new one
    assert new not in everything_said(sb)


def test_adopt_writes_the_mark_into_the_bindings_file(make: Make, sb: Sandbox, tmp_path: Path) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    kv = vault_connection(sb, w)
    h = harness(make, sb, f, world=w)
    path = tmp_path / "bindings.json"
    path.write_text(h.env["REMEDIATION_BINDINGS"], encoding="utf-8")
    env = {"REMEDIATION_BINDINGS": str(path)}

    code, out, err = adopt(h, f, kv, "--yes", "--write-bindings", str(path))
    assert code == 0, out + err
    assert f"wrote {path}" in err
    doc = json.loads(path.read_text(encoding="utf-8"))
    lake = next(b for b in doc["bindings"] if b["name"] == f.binding["name"])
    assert lake["targets"] == [{"connectionId": f.connection.id, "keyVaultReference": True}]

    # and back: --release pushes the current value as a copy, through the normal heal path
    code, out, err = cli(
        h,
        "adopt",
        "--connection",
        f.connection.id,
        "--release",
        "--yes",
        "--write-bindings",
        str(path),
        env=env,
    )
    assert code == 0, out + err
    assert f.connection.key_vault_reference is None
    assert f.connection.data["password"] == sb.vault.get_secret(f.secret_name).value
    lake = next(b for b in json.loads(path.read_text(encoding="utf-8"))["bindings"] if b["name"] == "lake")
    assert lake["targets"] == [{"connectionId": f.connection.id}]
    record = References(h.runtime.ledger).of(f.connection.id)
    assert record is not None and record.state == "released"
    new = f.rotate(sb)  # a copy again: the healer pushes the next version
    report = h.another_instance(REMEDIATION_BINDINGS=str(path)).healer.heal_secret(f.secret_name)
    assert [o.action for o in report.targets() if o.datasource_id == f.connection.id] == [Action.UPDATED]
    assert f.connection.data["password"] == new


@pytest.mark.parametrize(
    "case", ["on-premises", "windows", "not-bound", "other-secret", "no-vault", "not-a-vault"]
)
def test_adopt_refuses_and_sends_nothing(make: Make, sb: Sandbox, case: str) -> None:
    w = build_world(sb)
    connectivity, credential_type = {
        "on-premises": ("OnPremisesGateway", "Basic"),
        "windows": ("OnPremisesGateway", "Windows"),
    }.get(case, ("ShareableCloud", "Basic"))
    f = add_fabric(sb, w.app.client_id, connectivity=connectivity, credential_type=credential_type)
    other = add_fabric(sb, w.app.client_id, name="other")
    kv = vault_connection(sb, w)
    hidden = sb.fabric.add_key_vault_connection("not ours", users=["someone-else"])
    h = harness(make, sb, other, world=w) if case == "not-bound" else harness(make, sb, f, other, world=w)
    args = {
        "other-secret": ("--secret", other.secret_name),
        "no-vault": (),
        "not-a-vault": (),
    }.get(case, ())
    vault_id = {"no-vault": hidden.id, "not-a-vault": other.connection.id}.get(case, kv.id)

    code, out, err = cli(
        h, "adopt", "--connection", f.connection.id, "--vault-connection", vault_id, "--yes", *args
    )

    assert code == 2, out + err
    says = {
        "on-premises": "on-premises gateway credentials have no reference field",
        "windows": "on-premises gateway credentials have no reference field",
        "not-bound": "is not bound",
        "other-secret": f"not '{other.secret_name}'",
        "no-vault": f"Fabric does not list Key Vault connection {hidden.id}",
        "not-a-vault": "not a Key Vault connection",
    }[case]
    assert says in err, err
    assert fabric_patches(sb) == [] and f.account.total_failures == 0
    assert References(h.runtime.ledger).of(f.connection.id) is None


def test_a_refused_test_leaves_the_connection_as_it_was_and_costs_one_failed_sign_in(
    make: Make, sb: Sandbox
) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    kv = vault_connection(sb, w)
    h = harness(make, sb, f, world=w)
    held = dict(f.connection.data)
    f.account.set_secret("Changed#behind-the-vault")  # Key Vault now holds a wrong value

    code, out, err = adopt(h, f, kv, "--yes")

    assert code == 1, out + err
    assert "rejected" in out and "the connection was not moved" in err
    assert f.connection.key_vault_reference is None and f.connection.data == held
    assert References(h.runtime.ledger).of(f.connection.id) is None
    assert f.account.total_failures == 1
    # the account's verdict on this version holds for adopt too: no second sign-in with it
    code, out, err = adopt(h, f, kv, "--yes")
    assert code == 1 and "blocked" in out, out + err
    assert len(fabric_patches(sb)) == 1 and f.account.total_failures == 1


def test_a_lost_answer_leaves_the_connection_in_doubt_and_nothing_is_pushed_to_it(
    make: Make, sb: Sandbox
) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    kv = vault_connection(sb, w)
    h = harness(make, sb, f, world=w)
    sb.faults.add("fabric.update_connection", drop=True)

    code, out, err = adopt(h, f, kv, "--yes")

    assert code == 1 and "in-doubt" in out, out + err
    record = References(h.runtime.ledger).of(f.connection.id)
    assert record is not None and record.state == "in-doubt"
    f.rotate(sb)
    report = h.healer.heal_secret(f.secret_name)
    (outcome,) = [o for o in report.targets() if o.datasource_id == f.connection.id]
    assert outcome.action == Action.FAILED and "answer to `adopt`" in outcome.reason
    assert len(fabric_patches(sb)) == 1


def test_the_bindings_mark_and_a_release_that_disagree_send_nothing(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    kv = vault_connection(sb, w)
    h = harness(make, sb, f, world=w)
    assert adopt(h, f, kv, "--yes")[0] == 0
    assert cli(h, "adopt", "--connection", f.connection.id, "--release", "--yes")[0] == 0
    f.binding["targets"] = [{"connectionId": f.connection.id, "keyVaultReference": True}]  # stale mark
    marked = harness(make, sb, f, world=w)
    patches = len(fabric_patches(sb))
    f.rotate(sb)

    report = marked.healer.heal_secret(f.secret_name)

    (outcome,) = [o for o in report.targets() if o.datasource_id == f.connection.id]
    assert outcome.action == Action.FAILED and "remove the mark" in outcome.reason
    assert len(fabric_patches(sb)) == patches


# -- healing around references ---------------------------------------------------------------------
def referenced(sb: Sandbox, w: World, kv: KeyVaultConnection, name: str = "lake") -> FabricWorld:
    f = add_fabric(sb, w.app.client_id, name=name, reference=True)
    f.connection.key_vault_reference = {"connectionId": kv.id, "secretName": f.secret_name}
    f.binding["targets"] = [{"connectionId": f.connection.id, "keyVaultReference": True}]
    return f


def test_after_a_rotation_and_the_settle_time_models_on_a_referenced_connection_are_retried(
    manual: tuple[Sandbox, ManualClock, Make],
) -> None:
    sb, clock, make = manual
    w = build_world(sb)
    kv = vault_connection(sb, w)
    f = referenced(sb, w, kv)
    sales = model(sb, w, "sales", f)
    bindings = json.dumps(w.bindings(f.binding))
    h = make(w, env={"REMEDIATION_BINDINGS": bindings, "REMEDIATION_SETTLE_SECONDS": "60"}, clock=clock.now)
    new = generate_password()
    sb.vault.set_secret(f.secret_name, new)  # Key Vault first (as Microsoft's SQL sample does)...
    clock.advance(10)
    sb.powerbi.start_refresh(sales)  # ...the scheduled refresh reads it: the source does not know it yet
    sb.powerbi.settle()
    assert sales.refreshes[-1].status == "Failed" and not sales.schedule.enabled
    f.account.set_secret(new, at=clock.now() + 10)  # ...and the source changes 10 s later
    failures = f.account.total_failures

    early = h.healer.heal_secret(f.secret_name)

    assert [o.action for o in early.targets() if o.datasource_id == f.connection.id] == [Action.SETTLING]
    assert early.retry_at is not None and api_refreshes(sales) == []
    clock.advance(60)

    report = h.healer.heal_secret(f.secret_name)

    assert [o.action for o in report.targets() if o.datasource_id == f.connection.id] == [Action.REFERENCED]
    assert of(report, sales) == [Action.REFRESHED], [o.reason for o in report.datasets()]
    assert [r.status for r in api_refreshes(sales)] == ["Completed"]
    assert sales.schedule.enabled  # turned back on
    assert fabric_patches(sb) == [] and f.connection.reference_overwritten == 0  # no value pushed
    assert f.account.total_failures == failures  # the retry did not fail


def test_a_refresh_that_failed_on_the_settled_version_is_not_retried_until_a_new_one(
    manual: tuple[Sandbox, ManualClock, Make],
) -> None:
    sb, clock, make = manual
    w = build_world(sb)
    kv = vault_connection(sb, w)
    f = referenced(sb, w, kv)
    sales = model(sb, w, "sales", f)
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps(w.bindings(f.binding))}, clock=clock.now)
    sb.vault.set_secret(f.secret_name, "Wrong#" + generate_password())  # a wrong value, settled
    clock.advance(120)
    sb.powerbi.start_refresh(sales)
    sb.powerbi.settle()
    failures = f.account.total_failures

    report = h.healer.heal_secret(f.secret_name)
    again = h.healer.sweep()

    assert of(report, sales) == [Action.BLOCKED], [o.reason for o in report.datasets()]
    assert Action.REFRESHED not in of(again, sales)
    assert api_refreshes(sales) == [] and f.account.total_failures == failures


def test_one_model_per_account_is_refreshed_first(manual: tuple[Sandbox, ManualClock, Make]) -> None:
    """Two models on two referenced connections of one account: a refresh is a sign-in, so one
    goes first, and when it fails on the new version the other is not refreshed."""
    sb, clock, make = manual
    w = build_world(sb)
    kv = vault_connection(sb, w)
    f = referenced(sb, w, kv, name="lake")
    g = referenced(sb, w, kv, name="ware")
    g.account = f.account
    g.connection.source.account = f.account
    g.binding["secret"] = f.secret_name  # one secret, one account, two connections
    g.connection.key_vault_reference = {"connectionId": kv.id, "secretName": f.secret_name}
    sales, stock = model(sb, w, "sales", f), model(sb, w, "stock", g)
    bindings = json.dumps(w.bindings(f.binding, g.binding))
    h = make(w, env={"REMEDIATION_BINDINGS": bindings, "REMEDIATION_SETTLE_SECONDS": "60"}, clock=clock.now)
    f.account.set_secret("Rotated#" + generate_password())  # the source changes, Key Vault is not told
    clock.advance(10)
    for dataset in (sales, stock):
        sb.powerbi.start_refresh(dataset)
    sb.powerbi.settle()
    clock.advance(10)
    wrong = "Wrong#" + generate_password()
    sb.vault.set_secret(f.secret_name, wrong)  # then someone stores a wrong value
    clock.advance(120)

    report = h.healer.heal_secret(f.secret_name)

    refreshed = [d for d in (sales, stock) if api_refreshes(d)]
    assert len(refreshed) == 1, [o.reason for o in report.datasets()]
    assert f.account.failures_of(wrong) == 1  # the one refresh that went first
    h.healer.sweep()
    assert f.account.failures_of(wrong) == 1 and sum(len(api_refreshes(d)) for d in (sales, stock)) == 1


def test_a_failure_without_a_sign_in_still_resends_a_copy_listed_after_a_reference(
    manual: tuple[Sandbox, ManualClock, Make],
) -> None:
    """A model on a referenced connection and, after it, a connection holding a copy. A refresh
    fails for lack of credentials without naming a source (no sign-in happened); Key Vault has a
    newer version for the reference since. The reference holds nothing to forget, but the copy is
    sent the current version again, and the model is refreshed."""
    sb, clock, make = manual
    w = build_world(sb)
    kv = vault_connection(sb, w)
    f = referenced(sb, w, kv, name="lake")
    g = add_fabric(sb, w.app.client_id, name="ware")
    mixed = model(sb, w, "mixed", f, g)
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps(w.bindings(f.binding, g.binding))}, clock=clock.now)
    g.rotate(sb)
    assert [o.action for o in h.healer.heal_secret(g.secret_name, retry_refreshes=False).targets()] == [
        Action.UPDATED
    ]
    clock.advance(60)
    sb.powerbi.add_refresh(
        mixed, status="Failed", service_exception=pbi_error(NO_CREDENTIALS), start=clock.now()
    )
    clock.advance(60)
    f.rotate(sb)  # the reference reads a version newer than the failure
    patches = len(fabric_patches(sb))

    report = h.healer.heal_dataset(w.workspace_id, mixed.id)

    by_connection = {o.datasource_id: o.action for o in report.targets()}
    assert by_connection == {f.connection.id: Action.REFERENCED, g.connection.id: Action.UPDATED}
    assert of(report, mixed) == [Action.REFRESHED], [o.reason for o in report.datasets()]
    assert len(fabric_patches(sb)) == patches + 1  # the copy, again; the reference is sent nothing
    assert f.connection.reference_overwritten == 0


def test_a_key_vault_version_without_a_creation_time_holds_back_a_model_on_its_reference(
    manual: tuple[Sandbox, ManualClock, Make], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When Key Vault does not say when its current version was created, nothing tells whether a
    failed refresh on a referenced connection read it: the model is not refreshed, and the reason
    names the connection."""
    sb, clock, make = manual
    w = build_world(sb)
    kv = vault_connection(sb, w)
    f = referenced(sb, w, kv)
    sales = model(sb, w, "sales", f)
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps(w.bindings(f.binding))}, clock=clock.now)
    read = KeyVaultClient.get_secret
    monkeypatch.setattr(
        KeyVaultClient, "get_secret", lambda self, *a, **k: replace(read(self, *a, **k), created_on=None)
    )
    f.rotate(sb)
    clock.advance(60)
    sb.powerbi.add_refresh(
        sales, status="Failed", service_exception=pbi_error(NO_CREDENTIALS), start=clock.now()
    )
    clock.advance(60)

    report = h.healer.heal_secret(f.secret_name)

    assert [o.action for o in report.targets() if o.datasource_id == f.connection.id] == [Action.REFERENCED]
    (outcome,) = [o for o in report.datasets() if o.dataset_id == sales.id]
    assert (outcome.action, outcome.reason) == (
        Action.BLOCKED,
        "not refreshed, and its schedule is left as it is: a refresh signs in to every data source, and "
        f"these are not known to hold a working credential: connections/{f.connection.id} (not known to "
        "hold the current version).",
    )
    assert api_refreshes(sales) == []


@pytest.mark.parametrize("cause", ["expired", "network", "pinned", "missing"])
def test_a_reference_fabric_cannot_read_is_diagnosed_and_changes_nothing(
    make: Make, sb: Sandbox, cause: str
) -> None:
    w = build_world(sb)
    kv = vault_connection(sb, w)
    f = referenced(sb, w, kv)
    sales = model(sb, w, "sales", f)
    h = harness(make, sb, f, world=w)
    if cause == "expired":
        kv.sign_in_expired = True
    elif cause == "network":
        kv.public_network = False
    elif cause == "pinned":
        f.connection.key_vault_reference = {**(f.connection.key_vault_reference or {}), "version": "0" * 32}
    else:
        f.connection.key_vault_reference = {"connectionId": kv.id, "secretName": "gone"}
    sb.powerbi.start_refresh(sales)
    sb.powerbi.settle()
    assert "DMS_CredentialsNotFoundInAzureKeyVaultErrorCode" in (sales.refreshes[-1].service_exception or "")
    failures = f.account.total_failures

    report = h.healer.heal_dataset(w.workspace_id, sales.id)
    rotated = h.healer.heal_secret(f.secret_name)

    (outcome,) = [o for o in report.datasets() if o.dataset_id == sales.id]
    assert outcome.action == Action.NOT_CREDENTIAL
    fix = {
        "expired": "sign in again",
        "network": "public network",
        "pinned": "pin a version",
        "missing": "exists and is enabled",
    }[cause]
    assert fix in outcome.reason, outcome.reason
    assert of(rotated, sales) == [Action.NOT_CREDENTIAL]
    assert fabric_patches(sb) == [] and api_refreshes(sales) == []
    assert f.account.total_failures == failures == 0


# -- discover ---------------------------------------------------------------------------------------
def test_discover_says_where_a_reference_is_possible_and_propose_drafts_the_mark(
    make: Make, sb: Sandbox, tmp_path: Path
) -> None:
    w = build_world(sb)  # two on-premises gateway data sources... one, Basic
    cloud = build_world(sb, cloud=True, credential_type="Key", secret_name="blob-key", binding_name="blob")
    kv = vault_connection(sb, w)
    lake = add_fabric(sb, w.app.client_id, name="lake")
    erp = add_fabric(
        sb, w.app.client_id, connectivity="OnPremisesGateway", credential_type="Windows", name="erp"
    )
    mine = add_fabric(sb, w.app.client_id, connectivity="OnPremisesGatewayPersonal", name="desk")
    moved = add_fabric(sb, w.app.client_id, name="moved")
    marked = referenced(sb, w, kv, name="marked")
    h = harness(make, sb, lake, erp, mine, moved, marked, world=w)
    assert adopt(h, moved, kv, "--yes")[0] == 0  # the ledger now says it references Key Vault

    code, out, err = cli(h, "discover", "--json")
    assert code == 0, err
    doc = json.loads(out)
    states = {c["id"]: (c["referenceState"], c["referenceReason"]) for c in doc["connections"]}
    assert states[lake.connection.id] == ("eligible", "Basic credentials take passwordReference")
    assert (
        states[erp.connection.id][0] == "not-eligible"
        and "on-premises gateway" in states[erp.connection.id][1]
    )
    assert (
        states[mine.connection.id][0] == "not-eligible"
        and "personal gateway" in states[mine.connection.id][1]
    )
    assert states[moved.connection.id][0] == "referenced" and "by adopt" in states[moved.connection.id][1]
    assert states[marked.connection.id][0] == "referenced" and "marked" in states[marked.connection.id][1]
    assert states[kv.id][0] == "not-eligible" and "Key Vault connection" in states[kv.id][1]
    sources = {d["datasourceId"]: d for d in doc["datasources"]}
    assert sources[w.datasource_ids[0]]["referenceState"] == "not-eligible"
    assert "on-premises gateway" in sources[w.datasource_ids[0]]["referenceReason"]
    assert sources[cloud.datasource_ids[0]]["referenceState"] == "eligible"
    assert "keyReference" in sources[cloud.datasource_ids[0]]["referenceReason"]

    code, out, _ = cli(h, "discover", "--csv")
    rows = list(csv.DictReader(StringIO(out)))
    assert {r["referenceState"] for r in rows} == {"referenced", "eligible", "not-eligible"}
    assert all(r["referenceReason"] for r in rows)
    code, out, _ = cli(h, "discover")
    assert "KEY VAULT" in out.splitlines()[0]
    assert "Key Vault references: 2 referenced" in out and "adopt --connection ID" in out

    # Without the bindings every connection is unbound: the draft marks the one adopt moved, with its secret.
    draft = tmp_path / "draft.json"
    code, _, err = cli(h, "discover", "--propose", str(draft), env={"REMEDIATION_BINDINGS": ""})
    assert code == 0, err
    proposed = {
        t["connectionId"]: (b["secret"], t)
        for b in json.loads(draft.read_text(encoding="utf-8"))["bindings"]
        for t in b["targets"]
        if "connectionId" in t
    }
    assert proposed[moved.connection.id] == (
        moved.secret_name,
        {"connectionId": moved.connection.id, "keyVaultReference": True},
    )
    assert proposed[lake.connection.id][1] == {"connectionId": lake.connection.id}
    assert sb.vault.get_secret(moved.secret_name).value not in draft.read_text(encoding="utf-8")
