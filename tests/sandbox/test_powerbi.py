"""The Power BI stand-in, through HTTPS with plain ``requests``: shapes, credentials, refreshes.

Every 2xx body is validated against the swagger's response schema of its operation; 400 bodies
are compared with the swagger's own error example. Refresh timing runs on a ``ManualClock``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from remediation.rules.gateway_crypto import GatewayPublicKey, encrypt_credentials
from sandbox import ManualClock, Sandbox, specs
from sandbox.entra import KEYVAULT_AUDIENCE, POWERBI_AUDIENCE
from sandbox.powerbi import (
    GATEWAY_UNREACHABLE,
    INVALID_CONNECTION_CREDENTIALS,
    UNKNOWN_GATEWAY_ERROR,
    Dataset,
    Datasource,
    Gateway,
    PowerBI,
    Workspace,
    pbi_error,
)
from sandbox.sources import SourceSystem

pytestmark = pytest.mark.sandbox

APP = "11111111-2222-4333-8444-555555555555"  # the healer's service principal (client id)
OWNER = "svc_dataflow@contoso.com"
OLD, NEW = "Old#Passw0rd", "New#Passw0rd"
EXAMPLES = specs.SPEC_DIR / "powerbi" / "examples"


def _example_400(operation: str) -> dict[str, Any]:
    doc = json.loads((EXAMPLES / f"{operation}.json").read_text(encoding="utf-8"))
    (example,) = doc["x-ms-examples"].values()
    body: dict[str, Any] = example["responses"]["400"]["body"]
    return body


def _shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, not contents."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


@dataclass
class World:
    """One workspace, one on-premises gateway administered by the app, one SQL dataset."""

    sb: Sandbox
    clock: ManualClock
    token: str
    source: SourceSystem
    workspace: Workspace
    gateway: Gateway
    datasource: Datasource
    dataset: Dataset
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def pbi(self) -> PowerBI:
        return self.sb.powerbi

    def call(
        self, method: str, path: str, *, token: str | None = None, auth: bool = True, **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if auth:
            headers.setdefault("Authorization", f"Bearer {token or self.token}")
        return self.http.request(method, self.pbi.api_url + path, headers=headers, timeout=10, **kwargs)

    def user_token(self, upn: str) -> str:
        return self.sb.entra.issue_token("user", upn, POWERBI_AUDIENCE).token

    @property
    def ds_path(self) -> str:
        return f"/gateways/{self.gateway.id}/datasources/{self.datasource.id}"

    @property
    def dataset_path(self) -> str:
        return f"/groups/{self.workspace.id}/datasets/{self.dataset.id}"

    def public_key(self, gateway: Gateway) -> dict[str, str]:
        response = self.call("GET", f"/gateways/{gateway.id}")
        assert response.status_code == 200, response.text
        key: dict[str, str] = response.json()["publicKey"]
        return key

    def patch(self, path: str, body: Any, *, token: str | None = None) -> requests.Response:
        return self.call("PATCH", path, json=body, token=token)

    def refresh(self, **kwargs: Any) -> requests.Response:
        return self.call("POST", f"{self.dataset_path}/refreshes", **kwargs)

    def history(self, top: int | None = None) -> list[dict[str, Any]]:
        response = self.call("GET", f"{self.dataset_path}/refreshes", params={"$top": top} if top else None)
        assert response.status_code == 200, response.text
        specs.validate_powerbi_response("Datasets_GetRefreshHistoryInGroup", 200, response.json())
        value: list[dict[str, Any]] = response.json()["value"]
        return value


def basic_credentials(username: str, password: str) -> str:
    return json.dumps(
        {"credentialData": [{"name": "username", "value": username}, {"name": "password", "value": password}]}
    )


def update_body(
    credentials: str, *, credential_type: str = "Basic", algorithm: str = "RSA-OAEP", **extra: Any
) -> dict[str, Any]:
    body = {
        "credentialDetails": {
            "credentialType": credential_type,
            "credentials": credentials,
            "encryptedConnection": "Encrypted",
            "encryptionAlgorithm": algorithm,
            "privacyLevel": "Organizational",
            **extra,
        }
    }
    return body


# The only caller-identity payload known to work (DESIGN.md): no ``credentials`` key at all.
CALLER_IDENTITY_DETAILS: dict[str, Any] = {
    "credentialType": "OAuth2",
    "encryptedConnection": "Encrypted",
    "encryptionAlgorithm": "None",
    "privacyLevel": "Organizational",
    "useCallerAADIdentity": True,
}


def encrypted_basic(key: dict[str, str], username: str, password: str) -> dict[str, Any]:
    ciphertext = encrypt_credentials(basic_credentials(username, password), GatewayPublicKey.from_api(key))
    body = update_body(ciphertext)
    specs.validate_powerbi_request("Gateways_UpdateDatasource", body)
    return body


def assert_pbi_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["pbi.error"]["code"] == code
    return body


def assert_invalid_request(response: requests.Response, *fragments: str) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "InvalidRequest"
    message: str = body["error"]["message"]
    for fragment in fragments:
        assert fragment in message
    return message


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def msb(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """A started sandbox on a manual clock, trusted by ``requests`` through ``REQUESTS_CA_BUNDLE``."""
    sandbox = Sandbox(clock=clock, serve_user_realm=False)
    sandbox.start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", sandbox.tls.ca_path)
    try:
        yield sandbox
    finally:
        sandbox.stop()


def build_world(sb: Sandbox, clock: ManualClock, *, bits: int = 2048) -> World:
    pbi = sb.powerbi
    source = sb.sources.add("sql-sales", username="svc_pbi", secret=NEW)
    workspace = pbi.add_workspace("Sales", members=[APP])
    gateway = pbi.add_gateway("GW-01", bits=bits, admins=[APP])
    # Key Vault already rotated the source to NEW; Power BI still holds OLD.
    datasource = pbi.add_datasource(gateway, source, stored={"username": "svc_pbi", "password": OLD})
    dataset = pbi.add_dataset(workspace, "Sales model", [datasource], owner=APP)
    token = sb.entra.issue_token("app", APP, POWERBI_AUDIENCE).token
    return World(sb, clock, token, source, workspace, gateway, datasource, dataset)


@pytest.fixture
def world(msb: Sandbox, clock: ManualClock) -> World:
    return build_world(msb, clock)


# -- shapes --------------------------------------------------------------------------------------
def test_every_read_route_answers_in_its_swagger_shape(world: World) -> None:
    world.pbi.add_refresh(world.dataset, status="Completed", start=world.clock.now() - 7200)
    world.pbi.add_refresh(world.dataset, status="Failed", start=world.clock.now() - 3600)
    g, d, gw, ds = world.workspace.id, world.dataset.id, world.gateway.id, world.datasource.id
    reads = {
        "Groups_GetGroups": "/groups",
        "Datasets_GetDatasetsInGroup": f"/groups/{g}/datasets",
        "Datasets_GetDatasetInGroup": f"/groups/{g}/datasets/{d}",
        "Datasets_GetDatasourcesInGroup": f"/groups/{g}/datasets/{d}/datasources",
        "Datasets_GetRefreshHistoryInGroup": f"/groups/{g}/datasets/{d}/refreshes",
        "Datasets_GetRefreshScheduleInGroup": f"/groups/{g}/datasets/{d}/refreshSchedule",
        "Gateways_GetGateways": "/gateways",
        "Gateways_GetGateway": f"/gateways/{gw}",
        "Gateways_GetDatasources": f"/gateways/{gw}/datasources",
        "Gateways_GetDatasource": f"/gateways/{gw}/datasources/{ds}",
    }
    for operation, path in reads.items():
        response = world.call("GET", path)
        assert response.status_code == 200, (operation, response.text)
        assert response.headers["RequestId"]
        specs.validate_powerbi_response(operation, 200, response.json())

    assert world.call("GET", "/groups").json()["value"][0]["id"] == g
    sources = world.call("GET", f"/groups/{g}/datasets/{d}/datasources").json()["value"]
    assert sources == [
        {
            "datasourceType": "Sql",
            "connectionDetails": world.datasource.connection_details,
            "datasourceId": ds,
            "gatewayId": gw,
        }
    ]
    gateway = world.call("GET", f"/gateways/{gw}").json()
    assert GatewayPublicKey.from_api(gateway["publicKey"]).modulus_bytes == 256
    assert world.gateway.keys is not None
    assert gateway["publicKey"] == world.gateway.keys.public_key_json()
    gds = world.call("GET", f"/gateways/{gw}/datasources/{ds}").json()
    assert json.loads(gds["connectionDetails"]) == world.datasource.connection_details
    assert gds["credentialType"] == "Basic"


def test_stored_credentials_never_leave_the_service(world: World) -> None:
    world.refresh()
    g, d, gw = world.workspace.id, world.dataset.id, world.gateway.id
    paths = [
        "/groups",
        f"/groups/{g}/datasets",
        f"/groups/{g}/datasets/{d}/datasources",
        "/gateways",
        f"/gateways/{gw}/datasources",
        world.ds_path,
        f"/groups/{g}/datasets/{d}/refreshes",
        world.ds_path + "/status",
    ]
    for path in paths:
        text = world.call("GET", path).text
        assert OLD not in text and NEW not in text
    assert OLD not in repr(world.datasource.credential) and OLD not in repr(world.datasource)


def test_groups_honour_top_skip_and_a_filter(world: World) -> None:
    for name in ("marketing group", "contoso", "finance"):
        world.pbi.add_workspace(name, members=[APP])
    world.pbi.add_workspace("not mine", members=["someone@contoso.com"])

    def names(**params: str) -> list[str]:
        response = world.call("GET", "/groups", params=params)
        assert response.status_code == 200, response.text
        specs.validate_powerbi_response("Groups_GetGroups", 200, response.json())
        return [g["name"] for g in response.json()["value"]]

    assert names() == ["Sales", "marketing group", "contoso", "finance"]
    assert names(**{"$top": "2"}) == ["Sales", "marketing group"]
    assert names(**{"$top": "2", "$skip": "3"}) == ["finance"]
    either = "contains(name,'marketing') or name eq 'contoso'"
    assert names(**{"$filter": either}) == ["marketing group", "contoso"]
    assert_invalid_request(world.call("GET", "/groups", params={"$top": "many"}), "$top")
    unsupported = {"$filter": "startswith(name,'x')"}
    assert_invalid_request(world.call("GET", "/groups", params=unsupported), "$filter")


# -- Update Datasource ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1024, 2048])
def test_encrypted_correct_credentials_are_stored_and_the_next_refresh_completes(
    msb: Sandbox, clock: ManualClock, bits: int
) -> None:
    world = build_world(msb, clock, bits=bits)
    # Quotes, backslashes, braces and multi-byte characters straddling the 85-byte segments.
    rotated = 'Pw!"\\{ünïcødé}' + "€" * 40
    msb.sources.set_secret("sql-sales", rotated)
    key = world.public_key(world.gateway)
    assert GatewayPublicKey.from_api(key).modulus_bytes == bits // 8

    response = world.patch(world.ds_path, encrypted_basic(key, "svc_pbi", rotated))

    assert response.status_code == 200, response.text
    assert response.content == b""
    specs.validate_powerbi_response("Gateways_UpdateDatasource", 200, None)
    stored = world.datasource.credential
    assert stored is not None and stored.data == {"username": "svc_pbi", "password": rotated}
    assert stored.applied_by == APP and stored.privacy_level == "Organizational"
    assert [a.outcome for a in world.datasource.update_attempts] == ["ok"]
    assert world.source.history == ["ok"] and world.source.failed_attempts == 0
    assert world.refresh().status_code == 202
    assert world.history()[0]["status"] == "Completed"
    assert world.call("GET", world.ds_path + "/status").status_code == 200


def test_a_cloud_data_source_takes_plain_json_from_the_dataset_owner(world: World) -> None:
    api = world.sb.sources.add("rest-api", credential_type="Key", secret="key-2")
    cloud = world.pbi.add_cloud_gateway()
    datasource = world.pbi.add_datasource(
        cloud,
        api,
        datasource_type="Web",
        connection_details={"url": "https://api.contoso.com"},
        stored={"key": "key-1"},
    )
    dataset = world.pbi.add_dataset(world.workspace, "Web model", [datasource], owner=APP)
    path = f"/gateways/{cloud.id}/datasources/{datasource.id}"

    gateway = world.call("GET", f"/gateways/{cloud.id}")
    assert gateway.status_code == 200
    specs.validate_powerbi_response("Gateways_GetGateway", 200, gateway.json())
    assert "publicKey" not in gateway.json()
    assert cloud.id not in {g["id"] for g in world.call("GET", "/gateways").json()["value"]}

    key_json = json.dumps({"credentialData": [{"name": "key", "value": "key-2"}]})
    encrypted = world.patch(path, update_body(key_json, credential_type="Key", algorithm="RSA-OAEP"))
    assert_pbi_error(encrypted, 400, "DMTS_InvalidEncryptionAlgorithmError")
    response = world.patch(path, update_body(key_json, credential_type="Key", algorithm="None"))
    assert response.status_code == 200, response.text

    refresh = world.call("POST", f"/groups/{world.workspace.id}/datasets/{dataset.id}/refreshes")
    assert refresh.status_code == 202
    assert world.pbi.history(dataset)[0].status == "Completed"

    # Someone who owns no dataset using it may not touch it.
    dataset.owner = "someone.else@contoso.com"
    assert_pbi_error(
        world.patch(path, update_body(key_json, credential_type="Key", algorithm="None")),
        403,
        "PowerBINotAuthorizedException",
    )


def test_a_wrong_password_is_refused_after_a_counted_sign_in_and_nothing_is_stored(world: World) -> None:
    key = world.public_key(world.gateway)

    response = world.patch(world.ds_path, encrypted_basic(key, "svc_pbi", "Guess#1"))

    body = assert_pbi_error(response, 400, INVALID_CONNECTION_CREDENTIALS)
    assert (
        _shape(body)["error"]["pbi.error"].keys()
        == _shape(_example_400("Gateways_GetDatasourceStatus"))["error"]["pbi.error"].keys()
    )
    assert "Guess#1" not in response.text
    assert world.source.failed_attempts == 1 and world.source.history == ["invalid"]
    assert world.datasource.credential is not None
    assert world.datasource.credential.data["password"] == OLD
    assert [a.outcome for a in world.datasource.update_attempts] == [INVALID_CONNECTION_CREDENTIALS]


def test_what_the_gateway_cannot_decrypt_or_parse_is_an_unknown_gateway_error(world: World) -> None:
    key = world.public_key(world.gateway)
    plain = update_body(basic_credentials("svc_pbi", NEW), algorithm="None")
    plain_claiming_rsa = update_body(basic_credentials("svc_pbi", NEW))
    ciphertext = encrypted_basic(key, "svc_pbi", NEW)["credentialDetails"]["credentials"]
    middle = len(ciphertext) // 2
    flipped = "A" if ciphertext[middle] != "A" else "B"
    tampered = update_body(ciphertext[:middle] + flipped + ciphertext[middle + 1 :])
    not_strict = update_body(encrypt_credentials("{'credentialData': []}", GatewayPublicKey.from_api(key)))
    extra_names = update_body(
        encrypt_credentials(
            json.dumps(
                {
                    "credentialData": [
                        {"name": "username", "value": "svc_pbi"},
                        {"name": "password", "value": NEW},
                        {"name": "domain", "value": "x"},
                    ]
                }
            ),
            GatewayPublicKey.from_api(key),
        )
    )

    for body in (plain, plain_claiming_rsa, tampered, not_strict, extra_names):
        assert_pbi_error(world.patch(world.ds_path, body), 400, UNKNOWN_GATEWAY_ERROR)
    assert world.source.history == []  # never reached the source
    assert world.datasource.credential is not None and world.datasource.credential.data["password"] == OLD


def test_a_body_that_does_not_match_the_swagger_is_an_invalid_request_naming_the_field(world: World) -> None:
    good = update_body(basic_credentials("svc_pbi", NEW), algorithm="None")
    wrong_enum = json.loads(json.dumps(good))
    wrong_enum["credentialDetails"]["encryptionAlgorithm"] = "AES"
    missing = json.loads(json.dumps(good))
    del missing["credentialDetails"]["privacyLevel"]
    as_object = json.loads(json.dumps(good))
    as_object["credentialDetails"]["credentials"] = {"password": NEW}

    assert_invalid_request(world.patch(world.ds_path, wrong_enum), "credentialDetails/encryptionAlgorithm")
    assert_invalid_request(world.patch(world.ds_path, missing), "privacyLevel")
    message = assert_invalid_request(world.patch(world.ds_path, as_object), "credentialDetails/credentials")
    assert NEW not in message
    assert_invalid_request(world.patch(world.ds_path, {}), "credentialDetails")
    assert_invalid_request(world.patch(world.ds_path, [good]), "object")
    assert world.source.history == []


def test_only_gateway_admins_may_update_an_on_premises_data_source(world: World) -> None:
    outsider = world.user_token("someone@contoso.com")
    key = world.public_key(world.gateway)

    assert_pbi_error(
        world.patch(world.ds_path, encrypted_basic(key, "svc_pbi", NEW), token=outsider),
        403,
        "PowerBINotAuthorizedException",
    )
    assert_pbi_error(
        world.call("GET", f"/gateways/{world.gateway.id}", token=outsider),
        403,
        "PowerBINotAuthorizedException",
    )
    assert world.call("GET", "/gateways", token=outsider).json()["value"] == []
    world.pbi.not_authorized_status = 401  # as the real service is also seen answering
    assert_pbi_error(
        world.call("GET", world.ds_path + "/status", token=outsider), 401, "PowerBINotAuthorizedException"
    )
    assert world.source.history == []

    world.pbi.grant_gateway_admin(world.gateway, "someone@contoso.com")
    assert world.patch(world.ds_path, encrypted_basic(key, "svc_pbi", NEW), token=outsider).status_code == 200


def test_oauth2_caller_identity_sources_accept_only_the_owner_signing_in_as_themself(world: World) -> None:
    flow = world.sb.sources.add("dataflow", credential_type="OAuth2", username=OWNER)
    cloud = world.pbi.add_cloud_gateway()
    datasource = world.pbi.add_datasource(
        cloud,
        flow,
        datasource_type="Extension",
        connection_details={"kind": "PowerPlatformDataflows", "path": "dataflows"},
        caller_identity_only=True,
        stored={"username": "left@contoso.com"},
    )
    dataset = world.pbi.add_dataset(world.workspace, "Flows", [datasource], owner=OWNER)
    world.pbi.add_member(world.workspace, OWNER)
    path = f"/gateways/{cloud.id}/datasources/{datasource.id}"
    caller_identity = {"credentialDetails": CALLER_IDENTITY_DETAILS}
    owner = world.user_token(OWNER)
    payload_token = update_body(
        json.dumps({"credentialData": [{"name": "accessToken", "value": owner}]}),
        credential_type="OAuth2",
        algorithm="None",
    )

    world.dataset.owner = APP
    dataset.owner = APP  # even owning the dataset, an app cannot sign in as a user
    assert_pbi_error(world.patch(path, caller_identity), 403, "PowerBINotAuthorizedException")
    mi = world.sb.entra.issue_token("managed_identity", str(uuid.uuid4()), POWERBI_AUDIENCE).token
    assert_pbi_error(world.patch(path, caller_identity, token=mi), 403, "PowerBINotAuthorizedException")
    dataset.owner = OWNER
    assert_pbi_error(world.patch(path, payload_token, token=owner), 400, INVALID_CONNECTION_CREDENTIALS)
    assert flow.history == []  # a rejected token is no sign-in attempt against the account

    response = world.patch(path, caller_identity, token=owner)

    assert response.status_code == 200, response.text
    assert datasource.credential is not None and datasource.credential.signed_in_as == OWNER
    refresh = world.call("POST", f"/groups/{world.workspace.id}/datasets/{dataset.id}/refreshes", token=owner)
    assert refresh.status_code == 202
    assert world.pbi.history(dataset)[0].status == "Completed"


# -- refreshes -----------------------------------------------------------------------------------
def test_a_refresh_runs_for_its_duration_and_history_lists_newest_first(world: World) -> None:
    world.pbi.store_credential(world.datasource, {"username": "svc_pbi", "password": NEW})
    old = world.pbi.add_refresh(
        world.dataset,
        status="Failed",
        start=world.clock.now() - 86_400 * 2,
        service_exception={"errorCode": "ModelRefreshFailed_CredentialsNotSpecified"},
    )
    world.pbi.set_refresh_duration(60)

    first = world.refresh(json={"notifyOption": "NoNotification"})

    assert first.status_code == 202 and first.content == b""
    specs.validate_powerbi_response("Datasets_RefreshDatasetInGroup", 202, None)
    request_id = first.headers["x-ms-request-id"]
    assert str(uuid.UUID(request_id)) == request_id
    assert first.headers["Location"] == f"{world.pbi.api_url}{world.dataset_path}/refreshes/{request_id}"
    running = world.history()[0]
    assert running["requestId"] == request_id and running["status"] == "Unknown"
    assert running["refreshType"] == "ViaApi" and "endTime" not in running
    details = world.call("GET", f"{world.dataset_path}/refreshes/{request_id}")
    assert details.status_code == 202
    specs.validate_powerbi_response("Datasets_GetRefreshExecutionDetailsInGroup", 202, details.json())

    assert_invalid_request(world.refresh(), "Another refresh request is already executing")
    world.clock.advance(59)
    assert world.history(top=1)[0]["status"] == "Unknown"
    world.clock.advance(1)

    history = world.history()
    assert [h["status"] for h in history] == ["Completed", "Failed"]
    assert history[0]["endTime"] > history[0]["startTime"]
    assert "serviceExceptionJson" not in history[0]
    assert history[1]["requestId"] == old.request_id
    assert json.loads(history[1]["serviceExceptionJson"]) == {
        "errorCode": "ModelRefreshFailed_CredentialsNotSpecified"
    }
    assert len(world.history(top=1)) == 1
    done = world.call("GET", f"{world.dataset_path}/refreshes/{request_id}")
    assert done.status_code == 200 and done.json()["status"] == "Completed"
    assert world.refresh().status_code == 202


def test_a_stale_credential_fails_the_refresh_and_turns_the_schedule_off(world: World) -> None:
    assert world.refresh().status_code == 202

    (failed,) = world.history()

    assert failed["status"] == "Failed"
    exception = failed["serviceExceptionJson"]
    assert isinstance(exception, str)
    envelope = json.loads(exception)
    assert envelope["error"]["code"] == INVALID_CONNECTION_CREDENTIALS
    assert envelope["error"]["pbi.error"]["code"] == INVALID_CONNECTION_CREDENTIALS
    assert {d["code"] for d in envelope["error"]["pbi.error"]["details"]} >= {
        "DM_ErrorDetailNameCode_UnderlyingErrorMessage"
    }
    assert OLD not in exception
    assert world.source.failed_attempts == 1

    schedule = world.call("GET", f"{world.dataset_path}/refreshSchedule").json()
    assert schedule["enabled"] is False
    enable = {"value": {"enabled": True}}
    specs.validate_powerbi_request("Datasets_UpdateRefreshScheduleInGroup", enable)
    outsider = world.user_token("viewer@contoso.com")
    world.pbi.add_member(world.workspace, "viewer@contoso.com")
    schedule_path = f"{world.dataset_path}/refreshSchedule"
    assert_pbi_error(
        world.call("PATCH", schedule_path, json=enable, token=outsider), 403, "PowerBINotAuthorizedException"
    )
    response = world.call("PATCH", f"{world.dataset_path}/refreshSchedule", json=enable)
    assert response.status_code == 200, response.text
    schedule = world.call("GET", f"{world.dataset_path}/refreshSchedule").json()
    specs.validate_powerbi_response("Datasets_GetRefreshScheduleInGroup", 200, schedule)
    assert schedule["enabled"] is True
    disable_and_move = {"value": {"enabled": False, "times": ["07:00"]}}
    assert_invalid_request(world.call("PATCH", schedule_path, json=disable_and_move), "no other changes")
    caturday = {"value": {"days": ["Caturday"]}}
    assert_invalid_request(world.call("PATCH", schedule_path, json=caturday), "value/days/0")


def test_an_unreachable_source_fails_the_refresh_without_touching_the_schedule(world: World) -> None:
    world.source.reachable = False
    world.refresh()

    (failed,) = world.history()

    assert json.loads(failed["serviceExceptionJson"]) == pbi_error(GATEWAY_UNREACHABLE)
    assert world.dataset.schedule.enabled is True
    status = world.call("GET", world.ds_path + "/status")
    assert status.status_code == 400
    assert status.json() == _example_400("Gateways_GetDatasourceStatus")


def test_a_scheduled_refresh_without_stored_credentials_fails_as_not_specified(world: World) -> None:
    world.pbi.clear_credentials(world.datasource)

    world.pbi.start_refresh(world.dataset)  # what the scheduler does
    (failed,) = world.history()

    assert failed["refreshType"] == "Scheduled"
    not_specified = {"errorCode": "ModelRefreshFailed_CredentialsNotSpecified"}
    assert json.loads(failed["serviceExceptionJson"]) == not_specified
    assert world.dataset.schedule.enabled is False
    assert world.source.history == []


def test_concurrent_refresh_requests_start_exactly_one_refresh(world: World) -> None:
    world.pbi.set_refresh_duration(300)
    url = f"{world.pbi.api_url}{world.dataset_path}/refreshes"

    def post(_: int) -> int:
        headers = {"Authorization": f"Bearer {world.token}"}
        return requests.post(url, headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = sorted(pool.map(post, range(12)))

    assert statuses == [202] + [400] * 11
    assert len(world.history()) == 1


def test_datasource_status_is_a_counted_connection_attempt(world: World) -> None:
    status = world.call("GET", world.ds_path + "/status")

    assert_pbi_error(status, 400, INVALID_CONNECTION_CREDENTIALS)
    example = _example_400("Gateways_GetDatasourceStatus")
    assert _shape(status.json())["error"].keys() == _shape(example)["error"].keys()
    assert world.source.failed_attempts == 1
    world.pbi.store_credential(world.datasource, {"username": "svc_pbi", "password": NEW})
    assert world.call("GET", world.ds_path + "/status").status_code == 200
    specs.validate_powerbi_response("Gateways_GetDatasourceStatus", 200, None)
    world.pbi.set_gateway_online(world.gateway, False)
    assert world.call("GET", world.ds_path + "/status").json() == _example_400("Gateways_GetDatasourceStatus")


def test_five_refreshes_with_a_stale_password_lock_the_account(world: World) -> None:
    for _ in range(5):
        assert world.refresh().status_code == 202
    history = world.history()

    assert [h["status"] for h in history] == ["Failed"] * 5
    assert world.source.locked and world.source.failed_attempts == 5
    # Locked out: even the right password is now refused.
    key = world.public_key(world.gateway)
    assert_pbi_error(
        world.patch(world.ds_path, encrypted_basic(key, "svc_pbi", NEW)), 400, INVALID_CONNECTION_CREDENTIALS
    )
    world.source.unlock()
    assert world.patch(world.ds_path, encrypted_basic(key, "svc_pbi", NEW)).status_code == 200


def test_shared_capacity_allows_eight_refreshes_in_24_hours(world: World) -> None:
    world.pbi.store_credential(world.datasource, {"username": "svc_pbi", "password": NEW})
    world.pbi.add_refresh(world.dataset, status="Completed", start=world.clock.now() - 3600)
    for _ in range(7):
        assert world.refresh().status_code == 202

    assert_invalid_request(world.refresh(), "exceeded limit")
    world.clock.advance(24 * 3600)
    world.token = world.sb.entra.issue_token("app", APP, POWERBI_AUDIENCE).token  # the old one expired
    assert world.refresh().status_code == 202


def test_a_service_principal_cannot_ask_for_refresh_mail(world: World) -> None:
    assert_invalid_request(world.refresh(json={"notifyOption": "MailOnFailure"}), "app only")
    assert_invalid_request(world.refresh(json={"notifyOption": "Sometimes"}), "notifyOption")
    assert_invalid_request(world.refresh(json={"type": "Full"}), "notifyOption")
    assert world.history() == []


def test_take_over_makes_the_caller_the_owner(world: World) -> None:
    world.dataset.owner = "former@contoso.com"
    enable = {"value": {"enabled": True}}
    assert world.call("PATCH", f"{world.dataset_path}/refreshSchedule", json=enable).status_code == 403

    response = world.call("POST", f"{world.dataset_path}/Default.TakeOver")

    assert response.status_code == 200 and response.content == b""
    assert world.call("GET", world.dataset_path).json()["configuredBy"] == APP
    assert world.call("PATCH", f"{world.dataset_path}/refreshSchedule", json=enable).status_code == 200


def test_take_over_resets_the_credentials_of_the_datasets_cloud_sources(world: World) -> None:
    """What the real service does: the new owner must set the cloud sources' credentials again;
    a data source on an on-premises gateway keeps its own (the gateway holds it)."""
    cloud = world.pbi.add_cloud_gateway()
    api = world.sb.sources.add("api", credential_type="Key", secret="k3y")
    web = world.pbi.add_datasource(
        cloud, api, datasource_type="Web", connection_details={"url": "https://api.contoso.com"}
    )
    world.dataset.datasources.append(web)
    world.dataset.owner = "former@contoso.com"
    on_premises = world.datasource.credential
    assert web.credential is not None and on_premises is not None

    assert world.call("POST", f"{world.dataset_path}/Default.TakeOver").status_code == 200

    assert web.credential is None
    assert world.datasource.credential is on_premises
    world.dataset.datasources.reverse()  # a refresh stops at the first source that fails
    world.pbi.start_refresh(world.dataset)
    world.clock.advance(3600)
    (refresh,) = world.pbi.history(world.dataset)
    assert refresh.status == "Failed" and "CredentialsNotSpecified" in (refresh.service_exception or "")


# -- tokens and garbage --------------------------------------------------------------------------
def test_bad_tokens_get_401_with_a_bearer_challenge(world: World) -> None:
    expired = world.sb.entra.issue_token("app", APP, POWERBI_AUDIENCE, lifetime=60).token
    vault = world.sb.entra.issue_token("app", APP, KEYVAULT_AUDIENCE).token
    world.clock.advance(61)
    answers = {
        "missing": world.call("GET", "/groups", auth=False),
        "unknown": world.call("GET", "/groups", token="not-a-token"),
        "expired": world.call("GET", "/groups", token=expired),
        "audience": world.call("GET", "/groups", token=vault),
    }
    for reason, response in answers.items():
        assert response.status_code == 401, reason
        assert response.headers["WWW-Authenticate"].startswith("Bearer "), reason
        assert response.json()["error"]["code"], reason
    assert answers["expired"].json()["error"]["code"] == "TokenExpired"


def test_garbage_gets_the_service_error_shape_never_a_500(world: World) -> None:
    g, d = world.workspace.id, world.dataset.id
    stranger = world.pbi.add_workspace("Private", members=["ceo@contoso.com"])
    cases = [
        (world.call("GET", "/groups/not-a-guid/datasets"), 400, "InvalidRequest"),
        (world.call("GET", f"/groups/{g}/datasets/123"), 400, "InvalidRequest"),
        (world.call("PATCH", "/gateways/x/datasources/y", json={}), 400, "InvalidRequest"),
        (world.call("GET", f"/groups/{uuid.uuid4()}/datasets"), 404, "PowerBIEntityNotFound"),
        (world.call("GET", f"/groups/{stranger.id}/datasets"), 404, "PowerBIEntityNotFound"),
        (world.call("GET", f"/groups/{g}/datasets/{uuid.uuid4()}/refreshes"), 404, "PowerBIEntityNotFound"),
        (world.call("GET", f"/gateways/{uuid.uuid4()}"), 404, "PowerBIEntityNotFound"),
        (
            world.call(
                "PATCH", world.ds_path, data=b"{not json", headers={"Content-Type": "application/json"}
            ),
            400,
            "InvalidRequest",
        ),
        (world.call("PATCH", world.ds_path, data=b""), 400, "InvalidRequest"),
        (world.call("POST", f"/groups/{g}/datasets/{d}/refreshes", data=b"[1,"), 400, "InvalidRequest"),
        (
            world.call("GET", f"/groups/{g}/datasets/{d}/refreshes", params={"$top": "0"}),
            400,
            "InvalidRequest",
        ),
        (world.call("PUT", world.ds_path, json={}), 405, "MethodNotAllowed"),
        (world.call("DELETE", f"/groups/{g}/datasets/{d}/refreshSchedule"), 405, "MethodNotAllowed"),
        (world.call("GET", "/no/such/thing"), 404, "NotFound"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (response.request.method, response.request.url, response.text)
        assert response.json()["error"]["code"] == code
    recorded = world.sb.requests.find(service="powerbi")
    assert len(recorded) == len(cases) and all(r.status < 500 for r in recorded)
    routes = {r.route for r in recorded}
    assert routes >= {"powerbi.update_datasource", "powerbi.unknown", "powerbi.get_datasets"}


def test_routes_are_named_and_faults_come_back_in_the_service_shape(world: World) -> None:
    world.sb.faults.throttle("powerbi.update_datasource", retry_after=3)
    world.sb.faults.add("powerbi.refresh_history", status=503)

    throttled = world.patch(world.ds_path, {})
    unavailable = world.call("GET", f"{world.dataset_path}/refreshes")

    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "3"
    assert_pbi_error(throttled, 429, "TooManyRequests")
    assert_pbi_error(unavailable, 503, "ServiceUnavailable")
    assert [r.route for r in world.sb.requests.find(service="powerbi")] == [
        "powerbi.update_datasource",
        "powerbi.refresh_history",
    ]


def test_a_real_clock_sandbox_from_the_shared_fixture_serves_the_same_world(
    sb: Sandbox, sandbox_env: dict[str, str]
) -> None:
    world = build_world(sb, ManualClock())  # the clock here only labels the world; sb keeps real time
    key = world.public_key(world.gateway)
    assert world.patch(world.ds_path, encrypted_basic(key, "svc_pbi", NEW)).status_code == 200
    assert world.refresh().status_code == 202
    assert world.history()[0]["status"] == "Completed"


# -- OAuth2 caller identity: the payload known to work, and nothing else ----------------------------
def _caller_identity_world(world: World) -> tuple[str, Datasource, str]:
    flow = world.sb.sources.add("dataflow", credential_type="OAuth2", username=OWNER)
    cloud = world.pbi.add_cloud_gateway()
    datasource = world.pbi.add_datasource(
        cloud,
        flow,
        datasource_type="Extension",
        caller_identity_only=True,
        stored={"username": "left@contoso.com"},
    )
    world.pbi.add_dataset(world.workspace, "Flows", [datasource], owner=OWNER)
    return f"/gateways/{cloud.id}/datasources/{datasource.id}", datasource, world.user_token(OWNER)


@pytest.mark.parametrize("credentials", ['{"credentialData":""}', '{"credentialData":[]}', ""])
def test_a_caller_identity_update_carrying_credentials_is_refused(world: World, credentials: str) -> None:
    path, datasource, owner = _caller_identity_world(world)
    body = {"credentialDetails": {**CALLER_IDENTITY_DETAILS, "credentials": credentials}}

    response = world.patch(path, body, token=owner)

    assert_invalid_request(
        response, "credentialDetails/credentials", "must be absent", "useCallerAADIdentity"
    )
    assert datasource.credential is not None and datasource.credential.signed_in_as == "left@contoso.com"


@pytest.mark.parametrize(
    ("privacy", "encrypted"),
    [
        ("Organizational", "Encrypted"),
        ("Private", "NotEncrypted"),
        ("Public", "Encrypted"),
        ("None", "NotEncrypted"),
    ],
)
def test_the_exact_caller_identity_payload_is_accepted_without_credentials(
    world: World, privacy: str, encrypted: str
) -> None:
    path, datasource, owner = _caller_identity_world(world)
    details = {**CALLER_IDENTITY_DETAILS, "privacyLevel": privacy, "encryptedConnection": encrypted}
    with pytest.raises(Exception, match="credentials"):  # the swagger alone would refuse it
        specs.validate_powerbi_request("Gateways_UpdateDatasource", {"credentialDetails": details})

    response = world.patch(path, {"credentialDetails": details}, token=owner)

    assert response.status_code == 200, response.text
    assert datasource.credential is not None and datasource.credential.signed_in_as == OWNER
    assert datasource.credential.privacy_level == privacy


def test_credentials_may_be_missing_only_from_a_caller_identity_update(world: World) -> None:
    key = world.public_key(world.gateway)
    body = encrypted_basic(key, "svc_pbi", NEW)
    del body["credentialDetails"]["credentials"]
    assert_invalid_request(world.patch(world.ds_path, body), "credentials", "required")
    path, _, owner = _caller_identity_world(world)
    not_caller = {"credentialDetails": {**CALLER_IDENTITY_DETAILS, "useCallerAADIdentity": False}}
    assert_invalid_request(world.patch(path, not_caller, token=owner), "credentials", "required")
    rsa = {"credentialDetails": {**CALLER_IDENTITY_DETAILS, "encryptionAlgorithm": "RSA-OAEP"}}
    assert_pbi_error(world.patch(path, rsa, token=owner), 400, "DMTS_InvalidEncryptionAlgorithmError")


# -- cloud gateways: what GET /gateways/{id} answers is a switch --------------------------------------
def _cloud_world(world: World, **kwargs: Any) -> Gateway:
    api = world.sb.sources.add("rest-api", credential_type="Key", secret="key-1")
    cloud = world.pbi.add_cloud_gateway(**kwargs)
    datasource = world.pbi.add_datasource(
        cloud, api, datasource_type="Web", connection_details={"url": "https://api.contoso.com"}
    )
    world.pbi.add_dataset(world.workspace, "Web model", [datasource], owner=APP)
    return cloud


def test_a_cloud_gateway_is_by_default_visible_only_to_owners_of_a_dataset_using_it(world: World) -> None:
    cloud = _cloud_world(world)
    answer = world.call("GET", f"/gateways/{cloud.id}")
    assert answer.status_code == 200 and answer.json()["type"] == "Cloud" and "publicKey" not in answer.json()
    outsider = world.user_token("someone@contoso.com")
    refused = world.call("GET", f"/gateways/{cloud.id}", token=outsider)
    assert_pbi_error(refused, 403, "PowerBINotAuthorizedException")


def test_a_cloud_gateway_can_answer_its_id_alone(world: World) -> None:
    cloud = _cloud_world(world, get_answer="id-only")
    answer = world.call("GET", f"/gateways/{cloud.id}")
    assert answer.status_code == 200
    body = answer.json()
    assert {k: v for k, v in body.items() if k != "@odata.context"} == {"id": cloud.id}


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("not-found", 404, "PowerBIEntityNotFound"),
        ("unauthorized", 401, "PowerBINotAuthorizedException"),
        ("forbidden", 403, "PowerBINotAuthorizedException"),
    ],
)
def test_a_cloud_gateway_can_answer_404_401_or_403(world: World, mode: Any, status: int, code: str) -> None:
    cloud = _cloud_world(world)
    world.pbi.set_cloud_gateway_answer(cloud, mode)
    assert_pbi_error(world.call("GET", f"/gateways/{cloud.id}"), status, code)
    # Only the single-gateway GET: its data sources stay reachable to the dataset owner.
    datasources = world.call("GET", f"/gateways/{cloud.id}/datasources")
    assert datasources.status_code == 200 and len(datasources.json()["value"]) == 1


def test_the_answer_switch_is_for_cloud_gateways_only(world: World) -> None:
    with pytest.raises(ValueError, match="cloud"):
        world.pbi.set_cloud_gateway_answer(world.gateway, "not-found")
    with pytest.raises(ValueError, match="one of"):
        world.pbi.set_cloud_gateway_answer(_cloud_world(world), "teapot")  # type: ignore[arg-type]


def test_get_gateways_lists_only_on_premises_gateways(world: World) -> None:
    cloud = _cloud_world(world, admins=[APP])  # even for its admin
    listed = world.call("GET", "/gateways")
    assert listed.status_code == 200
    assert [g["id"] for g in listed.json()["value"]] == [world.gateway.id]
    specs.validate_powerbi_response("Gateways_GetGateways", 200, listed.json())
    assert cloud.id not in {g["id"] for g in listed.json()["value"]}


def test_a_dataset_says_whether_it_needs_an_on_premises_gateway(world: World) -> None:
    cloud = _cloud_world(world)
    web = next(d for d in world.workspace.datasets.values() if d.name == "Web model")
    mixed = world.pbi.add_dataset(world.workspace, "Mixed", [*web.datasources, world.datasource], owner=APP)
    listed = world.call("GET", f"/groups/{world.workspace.id}/datasets").json()["value"]
    datasets = {d["id"]: d for d in listed}
    assert datasets[world.dataset.id]["isOnPremGatewayRequired"] is True
    assert datasets[web.id]["isOnPremGatewayRequired"] is False
    assert datasets[mixed.id]["isOnPremGatewayRequired"] is True
    single = world.call("GET", f"/groups/{world.workspace.id}/datasets/{web.id}").json()
    assert single["isOnPremGatewayRequired"] is False and cloud.cloud


# -- an Update Datasource whose answer is lost after the source tested it -----------------------------
def test_a_patch_whose_answer_is_dropped_was_tested_and_stored(world: World) -> None:
    key = world.public_key(world.gateway)
    world.sb.faults.add("powerbi.update_datasource", after=True, drop=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        world.patch(world.ds_path, encrypted_basic(key, "svc_pbi", NEW))
    assert world.datasource.credential is not None and world.datasource.credential.data["password"] == NEW
    assert world.source.history == ["ok"]

    world.sb.faults.add("powerbi.update_datasource", after=True, status=503)
    lost = world.patch(world.ds_path, encrypted_basic(key, "svc_pbi", "Pw!wrong"))
    assert lost.status_code == 503  # the source refused it, the caller never learns that
    assert world.source.history == ["ok", "invalid"] and world.source.account.failures_of("Pw!wrong") == 1
    [dropped, failed] = world.sb.requests.find("powerbi.update_datasource")
    assert (dropped.processed_status, failed.processed_status) == (200, 400)
