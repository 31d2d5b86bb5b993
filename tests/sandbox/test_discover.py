"""``python -m remediation discover`` through the sandbox: complete, read-only, no secret, and a
``--propose`` draft that ``bindings check`` accepts once its placeholders are filled in."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from remediation.edges.cli import main
from sandbox import Sandbox
from tests.support.world import World, build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

URL_KEY = "SuperSecretApiKey0123456789"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(env: dict[str, str], *argv: str, err: io.StringIO | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), err or io.StringIO()
    code = main(list(argv), environ=env, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def tenant(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """A bound world (two SQL sources), an unbound on-premises world (three SQL sources on one
    server pair, Windows) and an unbound cloud world (Key), plus a Web source whose URL carries a key."""
    bound = build_world(sb, sources=2)
    windows = build_world(
        sb,
        sources=3,
        credential_type="Windows",
        username="CONTOSO\\svc_etl",
        secret_name="etl",
        binding_name="etl",
        prefix="etl",
    )
    cloud = build_world(
        sb,
        cloud=True,
        credential_type="Key",
        username=None,
        secret_name="blob-key",
        binding_name="blob",
        prefix="blob",
    )
    web = sb.powerbi.add_datasource(
        cloud.gateway,
        cloud.sources[0],
        datasource_type="Web",
        credential_type="Key",
        connection_details={"url": f"https://api.contoso.com/v1/data?apikey={URL_KEY}&api-version=2"},
    )
    web_dataset = sb.powerbi.add_dataset(cloud.workspace, "web", [web], owner=cloud.app.client_id)
    state = tmp_path / "ledger.db"
    env = bound.env(state)
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING", None)
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # A failed refresh, so the inventory shows it.
    windows.rotate_sources_only()
    windows.fail_scheduled_refreshes()
    return {
        "bound": bound,
        "windows": windows,
        "cloud": cloud,
        "web": web,
        "web_dataset": web_dataset,
        "env": env,
        "state": state,
    }


def _by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["datasourceId"]: d for d in doc["datasources"]}


def test_discover_json_lists_every_source_with_its_datasets_status_and_binding(
    sb: Sandbox, tenant: dict[str, Any]
) -> None:
    bound: World = tenant["bound"]
    windows: World = tenant["windows"]
    cloud: World = tenant["cloud"]
    code, out, _ = run(tenant["env"], "discover", "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"datasources", "connections"}
    found = _by_id(doc)
    expected = bound.datasource_ids + windows.datasource_ids + cloud.datasource_ids + [tenant["web"].id]
    assert set(expected) <= set(found)
    for entry in found.values():
        assert set(entry) == {
            "gatewayId",
            "datasourceId",
            "datasourceType",
            "connectionDetails",
            "credentialType",
            "binding",
            "datasets",
            "referenceState",
            "referenceReason",
        }
    for ds_id in bound.datasource_ids:
        assert found[ds_id]["binding"] == bound.binding_name
        assert found[ds_id]["credentialType"] == "Basic"
        assert found[ds_id]["gatewayId"] == bound.gateway_id
    for ds_id, dataset in zip(windows.datasource_ids, windows.dataset_ids, strict=True):
        entry = found[ds_id]
        assert entry["binding"] is None
        assert entry["credentialType"] == "Windows"
        assert entry["datasets"] == [
            {"workspaceId": windows.workspace_id, "datasetId": dataset, "lastRefreshStatus": "Failed"}
        ]
        assert entry["connectionDetails"]["server"].endswith(".contoso.local")
    # Cloud sources are reached through their datasets; their credential type where Power BI says it.
    for ds_id in cloud.datasource_ids:
        assert found[ds_id]["gatewayId"] == cloud.gateway_id
        assert found[ds_id]["credentialType"] == "Key"
        assert len(found[ds_id]["datasets"]) == 1


def test_discover_is_read_only_and_writes_no_ledger(sb: Sandbox, tenant: dict[str, Any]) -> None:
    accounts = [a for w in ("bound", "windows", "cloud") for a in tenant[w].accounts]
    before_sign_ins = {a.name: a.total_failures for a in accounts}
    sb.requests.clear()
    for argv in (["discover"], ["discover", "--json"], ["discover", "--csv"]):
        code, _, _ = run(tenant["env"], *argv)
        assert code == 0
    requests = sb.requests.find(service="powerbi")
    assert requests
    assert {r.method for r in requests} == {"GET"}
    assert not [r for r in requests if r.path.endswith("/status")], "a status check signs in at the source"
    assert not sb.requests.find(service="keyvault")
    assert not tenant["state"].exists(), "discover must not open the ledger"
    after = {a.name: a.total_failures for a in accounts}
    assert after == before_sign_ins


def test_discover_never_prints_a_secret(sb: Sandbox, tenant: dict[str, Any], tmp_path: Path) -> None:
    secrets = [tenant[w].secret for w in ("bound", "windows", "cloud")] + [URL_KEY]
    draft = tmp_path / "draft.json"
    outputs = []
    for argv in (["discover"], ["discover", "--json"], ["discover", "--csv", "--propose", str(draft)]):
        code, out, err = run(tenant["env"], *argv, err=_Tty())
        assert code == 0
        outputs += [out, err]
    outputs.append(draft.read_text())
    for text in outputs:
        for secret in secrets:
            assert secret not in text
    web = _by_id(json.loads(run(tenant["env"], "discover", "--json")[1]))[tenant["web"].id]
    assert web["connectionDetails"]["url"] == (
        "https://api.contoso.com/v1/data?apikey=[REDACTED]&api-version=2"
    )


def test_discover_table_and_csv_are_readable(sb: Sandbox, tenant: dict[str, Any]) -> None:
    err = _Tty()
    code, out, progress = run(tenant["env"], "discover", err=err)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SOURCE", "GATEWAY", "DATASOURCE"]
    assert any("on-prem Sql on" in line and "sales-sql" in line for line in lines)
    assert any("(1 failed)" in line for line in lines)
    assert "not bound" in out
    assert "dataset" in progress and "\r" in progress  # the live progress display on a terminal
    code, out, _ = run(tenant["env"], "discover", "--csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == [
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
    ]
    doc = json.loads(run(tenant["env"], "discover", "--json")[1])
    assert len(rows) - 1 == len(doc["datasources"]) + len(doc["connections"])


def test_discover_works_before_any_bindings_file_exists(sb: Sandbox, tenant: dict[str, Any]) -> None:
    env = {k: v for k, v in tenant["env"].items() if k != "REMEDIATION_BINDINGS"}
    code, out, _ = run(env, "discover", "--json")
    assert code == 0
    assert all(d["binding"] is None for d in json.loads(out)["datasources"])


def test_propose_groups_unbound_sources_and_round_trips_through_bindings_check(
    sb: Sandbox, tenant: dict[str, Any], tmp_path: Path
) -> None:
    windows: World = tenant["windows"]
    draft_path = tmp_path / "draft.json"
    code, _, err = run(tenant["env"], "discover", "--propose", str(draft_path))
    assert code == 0 and "placeholder" in err
    draft = json.loads(draft_path.read_text())
    names = [b["name"] for b in draft["bindings"]]
    assert len(names) == len(set(names))
    # Bound sources are not proposed again; each Windows source is its own server: one binding each.
    proposed = {t["datasourceId"] for b in draft["bindings"] for t in b["targets"]}
    assert not proposed & set(tenant["bound"].datasource_ids)
    assert set(windows.datasource_ids) <= proposed
    for binding in draft["bindings"]:
        assert binding["secret"] == "<Key Vault secret name>"

    # Unfilled, the draft is refused (exit 2) before anything is looked up.
    env = dict(tenant["env"], REMEDIATION_BINDINGS=str(draft_path))
    assert run(env, "bindings", "check")[0] == 2

    # Filled in, the existing bindings plus the draft pass bindings check.
    for i, binding in enumerate(draft["bindings"]):
        binding["secret"] = f"secret-{i}"
        if binding.get("username") == "<username>":
            binding["username"] = "CONTOSO\\svc_etl"
        if binding.get("username") == "<owner@contoso.com>":
            binding["username"] = "owner@contoso.com"
    merged = {"bindings": tenant["bound"].bindings()["bindings"] + draft["bindings"]}
    env = dict(tenant["env"], REMEDIATION_BINDINGS=json.dumps(merged))
    code, out, err = run(env, "--json", "bindings", "check")
    assert code == 0, out + err
    # Now discover sees everything that can be bound as bound.
    code, out, _ = run(env, "discover", "--json")
    after = _by_id(json.loads(out))
    assert all(after[d]["binding"] for d in proposed)


def test_propose_refuses_to_overwrite_a_file(sb: Sandbox, tenant: dict[str, Any], tmp_path: Path) -> None:
    existing = tmp_path / "bindings.json"
    existing.write_text("{}")
    code, _, err = run(tenant["env"], "discover", "--propose", str(existing))
    assert code == 2 and "does not overwrite" in err
    assert existing.read_text() == "{}"


def test_bindings_check_flags_a_windows_username_without_domain_and_warns_about_take_over(
    sb: Sandbox, tenant: dict[str, Any]
) -> None:
    windows: World = tenant["windows"]
    binding = windows.binding()
    binding["username"] = "svc_etl"  # neither CONTOSO\svc_etl nor svc_etl@contoso.com
    binding["takeOver"] = True
    env = dict(tenant["env"], REMEDIATION_BINDINGS=json.dumps({"bindings": [binding]}))
    code, out, _ = run(env, "--json", "bindings", "check")
    assert code == 1
    rows = json.loads(out)
    assert any("neither DOMAIN\\user nor a UPN" in r["status"] for r in rows)
    warnings = [w for r in rows for w in r.get("warnings", [])]
    assert any(w.startswith("takeOver") and "resets the credentials" in w for w in warnings)
    assert any("privacyLevel (Organizational)" in w for w in warnings)


def test_bindings_check_says_a_match_does_not_compare_accounts(sb: Sandbox, tenant: dict[str, Any]) -> None:
    windows: World = tenant["windows"]
    server = windows.datasources[0].connection_details["server"]
    binding = {
        "name": "by-server",
        "secret": "etl",
        "credentialType": "Windows",
        "username": "CONTOSO\\svc",
        "privacyLevel": "Organizational",
        "encryptedConnection": "Encrypted",
        "targets": [{"match": {"server": server}}],
    }
    env = dict(tenant["env"], REMEDIATION_BINDINGS=json.dumps({"bindings": [binding]}))
    code, out, _ = run(env, "bindings", "check")
    assert code == 0
    assert "ok (match)" in out
    assert "warning: by-server: a match selects by type, server, database, url and path, not by" in out


# -- Fabric connections --------------------------------------------------------------------------
LAKE_SECRET = "Lake#pw-7f0c2e"


@pytest.fixture
def fabric_tenant(sb: Sandbox, tenant: dict[str, Any]) -> dict[str, Any]:
    """Besides ``tenant``: a bound cloud connection, an unbound cloud SQL one (could reference Key
    Vault), an unbound on-premises Windows one, one marked as a Key Vault reference, a Web one
    whose URL carries a key, and a semantic model bound to the unbound cloud one."""
    bound: World = tenant["bound"]
    me = bound.app.client_id

    def connection(name: str, **kw: Any) -> Any:
        source = sb.sources.add(
            f"{name}-src",
            username="svc_lake",
            secret=LAKE_SECRET,
            credential_type=kw.pop("source_type", "Basic"),
        )
        return sb.fabric.add_connection(source, users=[me], name=name, **kw)

    gateway = sb.fabric.add_gateway("etl-gw", member_bits=(2048,), admins=[me])
    lake = connection("lake")
    sales = connection("sales")
    onprem = connection(
        "etl",
        connectivity_type="OnPremisesGateway",
        credential_type="Windows",
        gateway=gateway,
        source_type="Windows",
    )
    referenced = connection("vaulted", key_vault_reference={"connectionId": me, "secretName": "x"})
    web = connection("api", credential_type="Key", source_type="Key")
    web.connection_type, web.path = "Web", f"https://api.contoso.com/v1/data?apikey={URL_KEY}"
    model = sb.powerbi.add_dataset(bound.workspace, "sales-model", [], owner=me, connections=[sales])
    sb.vault.set_secret("lake-secret", LAKE_SECRET)
    extra = [
        {
            "name": "lake",
            "secret": "lake-secret",
            "credentialType": "Basic",
            "username": "svc_lake",
            "targets": [{"connectionId": lake.id}],
        },
        {
            "name": "vaulted",
            "secret": "lake-secret",
            "credentialType": "Basic",
            "username": "svc_lake",
            "targets": [{"connectionId": referenced.id, "keyVaultReference": True}],
        },
    ]
    env = dict(tenant["env"], REMEDIATION_BINDINGS=bound.bindings_json(*extra))
    return {
        **tenant,
        "env": env,
        "extra": extra,
        "lake": lake,
        "sales": sales,
        "onprem": onprem,
        "referenced": referenced,
        "web": web,
        "model": model,
    }


def _connections(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    code, out, err = run(env, "discover", "--json")
    assert code == 0, err
    return {c["id"]: c for c in json.loads(out)["connections"]}


def test_discover_lists_every_fabric_connection_with_its_binding_reference_and_datasets(
    sb: Sandbox, fabric_tenant: dict[str, Any]
) -> None:
    t = fabric_tenant
    found = _connections(t["env"])
    assert set(found) == {t[k].id for k in ("lake", "sales", "onprem", "referenced", "web")}
    lake, sales, onprem = found[t["lake"].id], found[t["sales"].id], found[t["onprem"].id]
    assert lake["binding"] == "lake" and sales["binding"] is None
    assert lake["connectivityType"] == "ShareableCloud" and lake["credentialType"] == "Basic"
    assert lake["connectionDetails"] == {"type": "SQL", "path": t["lake"].path}
    assert sales["couldReferenceKeyVault"] is True and sales["keyVaultReference"] is False
    assert found[t["referenced"].id]["keyVaultReference"] is True
    assert onprem["gatewayId"] == t["onprem"].gateway.id and onprem["couldReferenceKeyVault"] is False
    assert [d["datasetId"] for d in sales["datasets"]] == [t["model"].id]
    web = found[t["web"].id]["connectionDetails"]["path"]
    assert web == "https://api.contoso.com/v1/data?apikey=[REDACTED]"
    code, out, _ = run(t["env"], "discover")
    assert code == 0 and "CONNECTION" in out and "eligible" in out
    assert "5 Fabric connections (3 not bound)" in out
    rows = [r for r in csv.reader(io.StringIO(run(t["env"], "discover", "--csv")[1])) if r[7] == "connection"]
    assert {r[1] for r in rows} == set(found)


def test_discover_of_connections_is_read_only_and_prints_no_secret(
    sb: Sandbox, fabric_tenant: dict[str, Any], tmp_path: Path
) -> None:
    t = fabric_tenant
    sb.requests.clear()
    texts = []
    draft = str(tmp_path / "d.json")
    for argv in (["discover"], ["discover", "--json"], ["discover", "--csv", "--propose", draft]):
        code, out, err = run(t["env"], *argv)
        assert code == 0
        texts += [out, err]
    texts.append((tmp_path / "d.json").read_text())
    fabric = sb.requests.find(service="fabric")
    assert fabric and {r.method for r in fabric} == {"GET"}
    assert not sb.requests.find(service="keyvault") and not t["state"].exists()
    assert all(t[k].updates == 0 for k in ("lake", "sales", "onprem", "referenced", "web"))
    for text in texts:
        assert LAKE_SECRET not in text and URL_KEY not in text


def test_a_fabric_refusal_is_a_warning_not_a_crash(sb: Sandbox, fabric_tenant: dict[str, Any]) -> None:
    sb.faults.add(
        "fabric.list_connections",
        status=403,
        body={"errorCode": "InsufficientPermissionsToManageConnection", "message": "no"},
        times=5,
    )
    code, out, err = run(fabric_tenant["env"], "discover", "--json")
    assert code == 0
    assert json.loads(out)["connections"] == [] and json.loads(out)["datasources"]
    assert "warning: Fabric connections not listed" in err


def test_propose_drafts_connection_targets_that_bindings_check_accepts_once_filled(
    sb: Sandbox, fabric_tenant: dict[str, Any], tmp_path: Path
) -> None:
    t = fabric_tenant
    draft_path = tmp_path / "draft.json"
    assert run(t["env"], "discover", "--propose", str(draft_path))[0] == 0
    draft = json.loads(draft_path.read_text())
    proposed = {tg["connectionId"] for b in draft["bindings"] for tg in b["targets"] if "connectionId" in tg}
    assert proposed == {t["sales"].id, t["onprem"].id, t["web"].id}  # not the bound nor the referenced
    for i, binding in enumerate(draft["bindings"]):
        binding["secret"] = f"secret-{i}"
        if binding.get("username") == "<username>":
            windows = binding["credentialType"] == "Windows"
            binding["username"] = "CONTOSO\\svc_lake" if windows else "svc_lake"
        if binding.get("username") == "<owner@contoso.com>":
            binding["username"] = "owner@contoso.com"
    merged = {"bindings": t["bound"].bindings()["bindings"] + t["extra"] + draft["bindings"]}
    env = dict(t["env"], REMEDIATION_BINDINGS=json.dumps(merged))
    code, out, err = run(env, "--json", "bindings", "check")
    assert code == 0, out + err
    assert all(c["binding"] for c in _connections(env).values())


@pytest.mark.parametrize("same_id", [False, True], ids=["other-id", "connection-id"])
def test_a_gateway_data_source_that_is_also_a_connection_is_said_to_be_one_and_proposed_once(
    sb: Sandbox, tenant: dict[str, Any], tmp_path: Path, same_id: bool
) -> None:
    """Gateway data sources are Fabric connections too (reality): each connection says which data
    source it is, carries that data source's binding, and --propose binds it once, not twice."""
    sb.fabric.lists_gateway_datasources = True
    sb.fabric.datasource_ids_are_connection_ids = same_id
    bound, windows = tenant["bound"], tenant["windows"]
    code, out, err = run(tenant["env"], "discover", "--json")
    assert code == 0, err
    doc = json.loads(out)
    twins = {
        (c["datasource"]["gatewayId"], c["datasource"]["datasourceId"]): c
        for c in doc["connections"]
        if c["datasource"] is not None
    }
    for ds_id in bound.datasource_ids:
        assert twins[(bound.gateway_id, ds_id)]["binding"] == bound.binding_name
    for ds_id in windows.datasource_ids:
        assert twins[(windows.gateway_id, ds_id)]["binding"] is None

    draft_path = tmp_path / "draft.json"
    assert run(tenant["env"], "discover", "--propose", str(draft_path))[0] == 0
    draft = json.loads(draft_path.read_text())
    as_source = {tg["datasourceId"] for b in draft["bindings"] for tg in b["targets"] if "datasourceId" in tg}
    as_connection = {
        tg["connectionId"] for b in draft["bindings"] for tg in b["targets"] if "connectionId" in tg
    }
    twin_of = {c["id"]: c["datasource"]["datasourceId"] for c in doc["connections"] if c["datasource"]}
    assert not {twin_of[c] for c in as_connection if c in twin_of} & as_source  # never both
    assert not set(bound.datasource_ids) & as_source  # bound already
    drafted = as_source | {twin_of.get(c, c) for c in as_connection}
    assert set(windows.datasource_ids) <= drafted  # each unbound one, once
