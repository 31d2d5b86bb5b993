"""The sandbox's Fabric and Key Vault references, checked as a stand-in (issue 20): it takes a
reference only where the spec has a field for it, resolves it against its Key Vault at each use
(the latest version, as Fabric does), and fails without a sign-in when it cannot read it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from remediation.clients.fabric import FabricError
from remediation.clients.identity import PowerBITokenProvider
from sandbox import Sandbox
from sandbox.fabric.service import REFERENCE_NOT_READ
from sandbox.specs import fabric_errors, fabric_subtype
from tests.sandbox.test_fabric import add_fabric, harness
from tests.support.harness import Harness, Make
from tests.support.world import build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


def body(connectivity: str, credentials: dict[str, Any]) -> dict[str, Any]:
    return {
        "connectivityType": connectivity,
        "credentialDetails": {"credentials": credentials, "skipTestConnection": False},
    }


def patch(h: Harness, connection_id: str, request: dict[str, Any]) -> FabricError | None:
    try:
        h.runtime.fabric.update_connection(connection_id, request)
    except FabricError as exc:
        return exc
    return None


def test_the_sandbox_takes_a_reference_only_where_the_spec_has_a_field(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    cloud = add_fabric(sb, w.app.client_id, name="lake")
    keyed = add_fabric(sb, w.app.client_id, credential_type="Key", name="blob")
    onprem = add_fabric(sb, w.app.client_id, connectivity="OnPremisesGateway", name="erp")
    kv = sb.fabric.add_key_vault_connection(users=[w.app.client_id])
    h = harness(make, sb, cloud, keyed, onprem, world=w)
    ref = {"connectionId": kv.id, "secretName": cloud.secret_name}

    good = body(
        "ShareableCloud", {"credentialType": "Basic", "username": "svc_fabric", "passwordReference": ref}
    )
    assert fabric_errors(fabric_subtype("UpdateConnectionRequest", "ShareableCloud") or "", good) == []
    assert patch(h, cloud.connection.id, good) is None
    assert cloud.connection.key_vault_reference == ref
    assert "password" not in cloud.connection.data and cloud.connection.data["username"] == "svc_fabric"

    refused = [
        (
            onprem,
            body("OnPremisesGateway", {"credentialType": "Basic", "username": "u", "passwordReference": ref}),
        ),
        (
            cloud,
            body("ShareableCloud", {"credentialType": "Windows", "username": "u", "passwordReference": ref}),
        ),
        (keyed, body("ShareableCloud", {"credentialType": "Key", "passwordReference": ref})),
        (keyed, body("ShareableCloud", {"credentialType": "Key", "key": "k", "keyReference": ref})),
        (
            cloud,
            body(
                "ShareableCloud", {"credentialType": "KeyPair", "identifier": "i", "passwordReference": ref}
            ),
        ),
    ]
    for f, request in refused:
        before = (dict(f.connection.data), f.connection.key_vault_reference)
        error = patch(h, f.connection.id, request)
        assert error is not None and error.status == 400, request
        assert (dict(f.connection.data), f.connection.key_vault_reference) == before
    assert cloud.account.total_failures == keyed.account.total_failures == onprem.account.total_failures == 0


def test_the_sandbox_reads_the_latest_version_at_each_use(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    kv = sb.fabric.add_key_vault_connection(users=[w.app.client_id])
    f.connection.key_vault_reference = {"connectionId": kv.id, "secretName": f.secret_name}
    f.connection.data.pop("password")
    dataset = sb.powerbi.add_dataset(
        w.workspace, "sales", [], owner=w.app.client_id, connections=[f.connection]
    )
    make(w)

    f.rotate(sb)  # the source, then Key Vault: nothing is sent to the connection
    sb.powerbi.start_refresh(dataset)
    sb.powerbi.settle()
    assert dataset.refreshes[-1].status == "Completed"

    latest = sb.vault.get_secret(f.secret_name)
    sb.vault.disable(f.secret_name, latest.version)
    sb.powerbi.start_refresh(dataset)
    sb.powerbi.settle()
    failed = dataset.refreshes[-1]
    assert failed.status == "Failed" and not dataset.schedule.enabled
    error = json.loads(failed.service_exception or "{}")["error"]
    assert error["code"] == REFERENCE_NOT_READ
    assert {
        "code": "DM_ErrorDetailNameCode_UnderlyingErrorCode",
        "detail": {"type": 1, "value": "SecretDisabled"},
    } in (error["pbi.error"]["details"])
    assert f.account.total_failures == 0  # no sign-in without a value


def test_a_reference_that_cannot_be_read_is_refused_before_any_sign_in(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    kv = sb.fabric.add_key_vault_connection(users=[w.app.client_id])
    h = harness(make, sb, f, world=w)
    missing = body(
        "ShareableCloud",
        {
            "credentialType": "Basic",
            "username": "svc_fabric",
            "passwordReference": {"connectionId": kv.id, "secretName": "gone"},
        },
    )
    error = patch(h, f.connection.id, missing)
    assert error is not None and error.code == REFERENCE_NOT_READ
    assert ("DM_ErrorDetailNameCode_UnderlyingErrorCode", "SecretNotFound") in error.details
    assert f.connection.key_vault_reference is None and f.account.total_failures == 0

    # testConnection of a connection whose Key Vault connection's sign-in lapsed
    f.connection.key_vault_reference = {"connectionId": kv.id, "secretName": f.secret_name}
    kv.sign_in_expired = True
    token = PowerBITokenProvider(h.runtime.settings, scope=h.runtime.settings.fabric_scope)()
    answer = h.runtime.fabric.pipeline.request(
        "POST",
        f"{sb.fabric.api_url}/connections/{f.connection.id}/testConnection",
        bearer=token,
        accept=(400,),
    )
    assert answer.status == 400 and answer.json()["errorCode"] == REFERENCE_NOT_READ
    assert f.account.total_failures == 0


def test_key_vault_connections_are_listed_and_not_edited_through_the_api(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    kv = sb.fabric.add_key_vault_connection("Contoso vault", users=[w.app.client_id])
    sb.fabric.add_key_vault_connection("not shared", users=["someone-else"])
    h = harness(make, sb, f, world=w)

    listed = {c.id: c for c in h.runtime.fabric.list_connections()}
    assert set(listed) == {f.connection.id, kv.id}
    assert listed[kv.id].connection_type == "AzureKeyVault" and listed[kv.id].path == sb.vault.url
    assert h.runtime.fabric.get_connection(kv.id).credential_type == "OAuth2"
    error = patch(
        h, kv.id, body("ShareableCloud", {"credentialType": "Basic", "username": "u", "password": "p"})
    )
    assert error is not None and error.status == 400
