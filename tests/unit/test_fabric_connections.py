"""Fabric connection targets, pure parts: bindings, the PATCH body per connectivity type, verdicts."""

from __future__ import annotations

import json

import pytest

from remediation.clients.api_errors import ApiConnectionError, ApiError
from remediation.clients.fabric import Connection, GatewayMember, IncorrectCredentials
from remediation.config.bindings import CONNECTIONS, CredentialType, Target
from remediation.config.bindings_file import parse_bindings
from remediation.config.settings import Settings
from remediation.errors import BindingsError
from remediation.reconciler.targets.fabric import (
    FabricTarget,
    UnsupportedConnection,
    fabric_verdict,
    update_connection_request,
)
from remediation.rules.credentials import resolve_credential
from remediation.rules.gateway_crypto import GatewayPublicKey
from remediation.safety.answers import Verdict
from sandbox.gateway_keys import GatewayKeyPair

CONN = "6952a7b2-aea3-414f-9d85-6c0fe5d34539"
GW = "4f8b5d6e-1a2b-4c3d-9e0f-123456789abc"
MEMBER2 = "c6961028-1a2b-4c3d-9e0f-123456789abc"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "1f69e798-5852-4fdd-ab01-33bb14b6e934"


def binding(**extra: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "name": "lake",
        "secret": "lake-secret",
        "credentialType": "Basic",
        "username": "svc",
        "targets": [{"connectionId": CONN}],
    }
    raw.update(extra)
    return {k: v for k, v in raw.items() if v is not None}  # None: leave the key out


def parse(**extra: object):  # type: ignore[no-untyped-def]
    return parse_bindings({"bindings": [binding(**extra)]}).bindings[0]


def test_a_connection_target_is_keyed_apart_from_gateway_data_sources() -> None:
    b = parse(targets=[{"connectionId": CONN.upper()}, {"gatewayId": GW, "datasourceId": CONN}])
    assert b.targets[0] == Target.connection(CONN)
    assert b.targets[0].key == (CONNECTIONS, CONN)
    assert b.targets[0].connection_id == CONN
    assert b.targets[1].connection_id is None


@pytest.mark.parametrize(
    ("target", "field", "hint"),
    [
        ({"connectionId": "nope"}, "targets[0].connectionId", "a connection id"),
        ({"connectionId": CONN, "gatewayId": GW}, "targets[0].gatewayId", "gatewayId"),
        ({}, "targets[0].gatewayId", "a gateway id"),
    ],
)
def test_connection_targets_are_validated_as_strictly_as_data_sources(
    target: dict[str, object], field: str, hint: str
) -> None:
    with pytest.raises(BindingsError) as info:
        parse(targets=[target])
    assert info.value.field == field
    assert hint in str(info.value)


def test_a_connection_listed_twice_is_refused() -> None:
    with pytest.raises(BindingsError, match="listed twice"):
        parse(targets=[{"connectionId": CONN}, {"connectionId": CONN}])


def test_a_connection_bound_twice_is_refused() -> None:
    doc = {"bindings": [binding(), binding(name="other")]}
    with pytest.raises(BindingsError, match="also bound by"):
        parse_bindings(doc)


def test_service_principal_needs_tenant_and_client_and_connection_targets() -> None:
    b = parse(credentialType="ServicePrincipal", username=None, tenantId=TENANT, clientId=CLIENT)
    assert b.credential_type is CredentialType.SERVICE_PRINCIPAL
    assert (b.tenant_id, b.client_id) == (TENANT, CLIENT)
    with pytest.raises(BindingsError) as info:
        parse(credentialType="ServicePrincipal", username=None, tenantId=TENANT)
    assert info.value.field == "clientId"
    with pytest.raises(BindingsError, match="only for Fabric connections"):
        parse(
            credentialType="ServicePrincipal",
            username=None,
            tenantId=TENANT,
            clientId=CLIENT,
            targets=[{"gatewayId": GW, "datasourceId": CONN}],
        )
    with pytest.raises(BindingsError, match="only ServicePrincipal bindings take tenantId"):
        parse(tenantId=TENANT)


def test_oauth2_bindings_cannot_target_connections() -> None:
    with pytest.raises(BindingsError, match="no OAuth2"):
        parse(credentialType="OAuth2", oauth2="caller-identity", username="svc@contoso.com")


def test_fabric_spelling_of_sas_is_accepted() -> None:
    assert parse(credentialType="SharedAccessSignature", username=None).credential_type is CredentialType.SAS


def _parse_sp():  # type: ignore[no-untyped-def]
    return parse(credentialType="ServicePrincipal", username=None, tenantId=TENANT, clientId=CLIENT)


def conn(connectivity: str, gateway: str | None = None) -> Connection:
    return Connection(id=CONN, connectivity_type=connectivity, gateway_id=gateway)


@pytest.mark.parametrize("connectivity", ["ShareableCloud", "VirtualNetworkGateway"])
@pytest.mark.parametrize(
    ("ctype", "expected"),
    [
        ("Basic", {"credentialType": "Basic", "username": "svc", "password": "p@ss"}),
        ("Key", {"credentialType": "Key", "key": "p@ss"}),
        ("SAS", {"credentialType": "SharedAccessSignature", "token": "p@ss"}),
    ],
)
def test_cloud_and_vnet_connections_get_plain_json_and_keep_the_connection_test(
    connectivity: str, ctype: str, expected: dict[str, object]
) -> None:
    b = parse(credentialType=ctype, username="svc" if ctype == "Basic" else None)
    body = update_connection_request(b, resolve_credential(b, "p@ss"), FabricTarget(conn(connectivity)))
    assert body == {
        "connectivityType": connectivity,
        "credentialDetails": {"credentials": expected, "skipTestConnection": False},
    }


def test_service_principal_body_carries_tenant_client_and_secret() -> None:
    b = _parse_sp()
    body = update_connection_request(b, resolve_credential(b, "s3cret"), FabricTarget(conn("ShareableCloud")))
    assert body["credentialDetails"]["credentials"] == {  # type: ignore[index]
        "credentialType": "ServicePrincipal",
        "tenantId": TENANT,
        "servicePrincipalClientId": CLIENT,
        "servicePrincipalSecret": "s3cret",
    }


def test_privacy_and_encryption_are_sent_only_when_the_binding_sets_them() -> None:
    b = parse(privacyLevel="Private", encryptedConnection="NotEncrypted")
    body = update_connection_request(b, resolve_credential(b, "x"), FabricTarget(conn("ShareableCloud")))
    assert body["privacyLevel"] == "Private"
    assert body["credentialDetails"]["connectionEncryption"] == "NotEncrypted"  # type: ignore[index]


def test_windows_on_a_cloud_connection_is_not_sent() -> None:
    b = parse(credentialType="Windows", username="CONTOSO\\svc")
    with pytest.raises(UnsupportedConnection, match="only for on-premises"):
        update_connection_request(b, resolve_credential(b, "x"), FabricTarget(conn("ShareableCloud")))


def test_a_cluster_gets_one_entry_per_member_each_under_its_own_key() -> None:
    small, large = GatewayKeyPair.generate(1024, reuse=True), GatewayKeyPair.generate(2048, reuse=True)
    members = (
        GatewayMember(id=GW, public_key=GatewayPublicKey.from_api(small.public_key_json()), enabled=True),
        GatewayMember(
            id=MEMBER2, public_key=GatewayPublicKey.from_api(large.public_key_json()), enabled=False
        ),
    )
    b = parse(credentialType="Windows", username="CONTOSO\\svc")
    target = FabricTarget(conn("OnPremisesGateway", GW), members=members)
    # "!" is not a base64 character: the password can never turn up in the ciphertext by chance.
    body = update_connection_request(b, resolve_credential(b, "n3w!"), target)
    creds = body["credentialDetails"]["credentials"]  # type: ignore[index]
    assert creds["credentialType"] == "Windows"
    assert [v["gatewayId"] for v in creds["values"]] == [GW, MEMBER2]
    expected = {
        "credentialData": [
            {"name": "username", "value": "CONTOSO\\svc"},
            {"name": "password", "value": "n3w!"},
        ]
    }
    for pair, value in zip((small, large), creds["values"], strict=True):
        assert json.loads(pair.decrypt(value["encryptedCredentials"])) == expected
    assert "n3w!" not in json.dumps(body)


def test_a_personal_gateway_gets_one_encrypted_blob() -> None:
    pair = GatewayKeyPair.generate(2048, reuse=True)
    b = parse(credentialType="Key", username=None)
    target = FabricTarget(
        conn("OnPremisesGatewayPersonal", GW), personal_key=GatewayPublicKey.from_api(pair.public_key_json())
    )
    creds = update_connection_request(b, resolve_credential(b, "k3y"), target)["credentialDetails"][
        "credentials"
    ]  # type: ignore[index]
    assert set(creds) == {"credentialType", "encryptedCredentials"}
    assert json.loads(pair.decrypt(creds["encryptedCredentials"])) == {
        "credentialData": [{"name": "key", "value": "k3y"}]
    }


def error(status: int, code: str | None, cls: type[ApiError] = ApiError, **kw: object) -> ApiError:
    return cls("m", status=status, code=code, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (error(400, "IncorrectCredentials", IncorrectCredentials), Verdict.REJECTED),
        (error(400, "DM_GWPipeline_Gateway_InvalidConnectionCredentials"), Verdict.REJECTED),
        (error(400, "InvalidCredentialDetails"), Verdict.NOT_PRESENTED),
        (error(403, "InsufficientPermissionsToManageConnection"), Verdict.NOT_PRESENTED),
        (error(429, "RequestBlocked"), Verdict.NOT_PRESENTED),
        (error(500, "InternalError"), Verdict.IN_DOUBT),
        (error(400, "UpdateGatewayConnectionFailed"), Verdict.IN_DOUBT),
        (ApiConnectionError("timeout", sent=True), Verdict.IN_DOUBT),
        (ApiConnectionError("refused", sent=False), Verdict.NOT_PRESENTED),
    ],
)
def test_what_an_answer_to_the_connection_patch_means(exc: ApiError, verdict: Verdict) -> None:
    assert fabric_verdict(exc).verdict is verdict


def test_fabric_api_url_and_scope() -> None:
    assert Settings.from_env({}).fabric_api_url == "https://api.fabric.microsoft.com/v1"
    assert Settings.from_env({}).fabric_scope == "https://api.fabric.microsoft.com/.default"
    sandbox = Settings.from_env({"FABRIC_API_URL": "https://127.0.0.1:8443/v1"})
    assert sandbox.fabric_api_url == "https://127.0.0.1:8443/v1"
    assert sandbox.fabric_scope == "https://api.fabric.microsoft.com/.default"


def test_a_key_vault_reference_mark_must_be_a_boolean() -> None:
    b = parse(targets=[{"connectionId": CONN, "keyVaultReference": True}])
    assert b.targets[0].key_vault_reference is True
    with pytest.raises(BindingsError) as info:
        parse(targets=[{"connectionId": CONN, "keyVaultReference": "yes"}])
    assert info.value.field == "targets[0].keyVaultReference"


def test_a_fabric_connection_part_of_a_fan_out_survives_the_queue() -> None:
    from remediation.inbound.workqueue import WorkCommand  # noqa: PLC0415

    part = WorkCommand.secret("lake-secret", None, trigger="eventgrid", correlation_id="c1").fan_out(
        CONNECTIONS, CONN
    )
    back = WorkCommand.parse(part.to_message())
    assert (back.gateway_id, back.datasource_id, back.part) == (CONNECTIONS, CONN, True)
