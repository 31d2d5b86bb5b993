"""Every shape of a refused sign-in (``sandbox.refusals``), through HTTPS with plain ``requests``.

For each shape a data source (Power BI) or a connection (Fabric) is set to: a wrong value is
refused in that shape after exactly one failed sign-in of the source's account and nothing is
stored; the right value still succeeds; a status check, a ``testConnection`` and a refresh that
fail use the shape too; ``echo`` carries the presented value (the product must redact it: tested
elsewhere); ``unreadable`` is not JSON. Power BI's JSON bodies are checked against the service's
error envelope (the swagger's own 400 example of ``Gateways_GetDatasourceStatus``), Fabric's
against ``ErrorResponse`` of ``specs/fabric``. Time runs on a ``ManualClock``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
import requests

from remediation.rules.gateway_crypto import GatewayPublicKey, encrypt_credentials
from sandbox import ManualClock, Sandbox, specs
from sandbox.entra import POWERBI_AUDIENCE
from sandbox.fabric import FABRIC_AUDIENCE, FabricConnection
from sandbox.refusals import (
    FABRIC_REFUSALS,
    GATEWAY_DATA_SOURCE_ACCESS_ERROR,
    INVALID_CONNECTION_CREDENTIALS,
    POWERBI_REFUSALS,
    POWERBI_SHAPE_OF_FABRIC,
    UNREADABLE_BODY,
    FabricRefusal,
    PowerBIRefusal,
    fabric_refusal,
    powerbi_refusal,
)
from tests.support.world import World, build_world

pytestmark = pytest.mark.sandbox

WRONG = "Wr0ng'<Guess>#1"  # characters that JSON and HTML would have to escape
EXAMPLES = specs.SPEC_DIR / "powerbi" / "examples"

# The real bodies the catalogue quotes (user "admin" there; the account's user name here).
POWERBI_CLI_ISSUE_27 = (
    '{"error":{"code":"DM_GWPipeline_Gateway_DataSourceAccessError","pbi.error":{"code":'
    '"DM_GWPipeline_Gateway_DataSourceAccessError","parameters":{},"details":[{"code":'
    '"DM_ErrorDetailNameCode_UnderlyingErrorCode","detail":{"type":1,"value":"-2146232060"}},'
    '{"code":"DM_ErrorDetailNameCode_UnderlyingErrorMessage","detail":{"type":1,"value":'
    '"Login failed for user \'admin\'."}},{"code":"DM_ErrorDetailNameCode_UnderlyingHResult",'
    '"detail":{"type":1,"value":"-2146232060"}},{"code":'
    '"DM_ErrorDetailNameCode_UnderlyingNativeErrorCode","detail":{"type":1,"value":"18456"}}]}}}'
)
SEMANTIC_LINK_LABS_ISSUE_1025 = (
    '{"requestId":"<uuid>","errorCode":"DM_GWPipeline_Gateway_DataSourceAccessError","moreDetails":'
    '[{"errorCode":"DM_ErrorDetailNameCode_UnderlyingErrorCode","message":"-2146232060"},'
    '{"errorCode":"DM_ErrorDetailNameCode_UnderlyingErrorMessage","message":'
    '"Could not login because the authentication failed."},{"errorCode":'
    '"DM_ErrorDetailNameCode_UnderlyingHResult","message":"-2146232060"},{"errorCode":'
    '"DM_ErrorDetailNameCode_UnderlyingNativeErrorCode","message":"18456"}],"message":'
    '"PowerBI service client received error HTTP response. HttpStatus: 400. PowerBIErrorCode: '
    'DM_GWPipeline_Gateway_DataSourceAccessError"}'
)
LOCKED_OUT = (
    "Login failed for user 'svc_pbi' because the account is currently locked out. "
    "The system administrator can unlock it."
)

# The service's error envelope, as the swagger's 400 example of Gateways_GetDatasourceStatus shows
# it (``exceptionCulprit`` optional: the real 18456 body has none).
ENVELOPE = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "pbi.error"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "minLength": 1},
                "pbi.error": {
                    "type": "object",
                    "required": ["code", "parameters", "details"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string"},
                        "parameters": {"type": "object"},
                        "details": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["code", "detail"],
                                "additionalProperties": False,
                                "properties": {
                                    "code": {"type": "string"},
                                    "detail": {
                                        "type": "object",
                                        "required": ["type", "value"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "type": {"type": "integer"},
                                            "value": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                        "exceptionCulprit": {"type": "integer"},
                    },
                },
            },
        }
    },
}


def _status_example() -> dict[str, Any]:
    doc = json.loads((EXAMPLES / "Gateways_GetDatasourceStatus.json").read_text(encoding="utf-8"))
    (example,) = [e for e in doc["x-ms-examples"].values() if "400" in e["responses"]]
    body: dict[str, Any] = example["responses"]["400"]["body"]
    return body


def assert_envelope(body: Any) -> dict[str, Any]:
    """``body`` is Power BI's error envelope (checked against the swagger's example and its keys)."""
    jsonschema.validate(_status_example(), ENVELOPE)  # the schema accepts the service's own example
    jsonschema.validate(body, ENVELOPE)
    assert body["error"]["pbi.error"]["code"] == body["error"]["code"]
    assert set(body["error"]["pbi.error"]) <= set(_status_example()["error"]["pbi.error"])
    result: dict[str, Any] = body
    return result


def details(body: dict[str, Any]) -> dict[str, str]:
    return {d["code"]: d["detail"]["value"] for d in body["error"]["pbi.error"]["details"]}


def more_details(body: dict[str, Any]) -> dict[str, str]:
    return {d["errorCode"]: d["message"] for d in body.get("moreDetails", [])}


def assert_powerbi_shape(
    shape: PowerBIRefusal, status: int, content_type: str, text: str, *, presented: str | None
) -> dict[str, Any] | None:
    """What Power BI answered is ``shape`` (``text`` is the body or a ``serviceExceptionJson``)."""
    assert status == 400
    if shape == "unreadable":
        assert content_type.startswith("text/html")
        with pytest.raises(ValueError):
            json.loads(text)
        return None
    body = assert_envelope(json.loads(text))
    code = body["error"]["code"]
    found = details(body)
    message = found.get("DM_ErrorDetailNameCode_UnderlyingErrorMessage", "")
    if shape in ("invalid-credentials", "echo"):
        assert code == INVALID_CONNECTION_CREDENTIALS
        assert found["Microsoft.Data.Mashup.CredentialError.Reason"] == "AccessUnauthorized"
        echoed = shape == "echo" and presented is not None
        assert (message == f"The value '{presented}' is not valid for password.") is echoed
    elif shape == "sql-login-failed":
        assert code == GATEWAY_DATA_SOURCE_ACCESS_ERROR
        assert message == "Login failed for user 'svc_pbi'."
        assert found["DM_ErrorDetailNameCode_UnderlyingNativeErrorCode"] == "18456"
        assert "exceptionCulprit" not in body["error"]["pbi.error"]
    elif shape == "password-incorrect":
        assert code == GATEWAY_DATA_SOURCE_ACCESS_ERROR
        assert message == "The user name or password is incorrect."
        assert found["DM_ErrorDetailNameCode_UnderlyingHResult"] == "-2147023570"
        assert "DM_ErrorDetailNameCode_UnderlyingNativeErrorCode" not in found
    elif shape == "unknown-gateway-code":
        assert code.startswith("DM_GWPipeline_")
        assert code not in (INVALID_CONNECTION_CREDENTIALS, GATEWAY_DATA_SOURCE_ACCESS_ERROR)
        assert message == "An error happened while reading data from the provider."
    else:
        assert shape == "unknown-code"
        assert not code.startswith("DM_GWPipeline_") and found == {}
    if shape != "invalid-credentials" and "Mashup" in json.dumps(body):
        assert shape == "echo"
    return body


def assert_fabric_shape(
    shape: FabricRefusal, response: requests.Response, *, presented: str | None
) -> dict[str, Any] | None:
    """What Fabric answered is ``shape``, in its ``ErrorResponse``."""
    assert response.status_code == 400, response.text
    if shape == "unreadable":
        assert response.headers["Content-Type"].startswith("text/html")
        with pytest.raises(ValueError):
            response.json()
        return None
    body: dict[str, Any] = response.json()
    specs.validate_fabric("ErrorResponse", body)
    uuid.UUID(body["requestId"])
    code, found = body["errorCode"], more_details(body)
    passed_through = f"PowerBIErrorCode: {code}"
    if shape in ("incorrect-credentials", "echo"):
        assert code == "IncorrectCredentials" and found == {}
        echoed = shape == "echo" and presented is not None
        if echoed:
            assert body["message"] == f"The value '{presented}' is not valid for password."
        else:
            assert body["message"] == "Failed to establish connection using the Credentials input"
    elif shape == "sql-login-failed":
        assert code == GATEWAY_DATA_SOURCE_ACCESS_ERROR and body["message"].endswith(passed_through)
        assert found["DM_ErrorDetailNameCode_UnderlyingNativeErrorCode"] == "18456"
    elif shape == "password-incorrect":
        assert code == GATEWAY_DATA_SOURCE_ACCESS_ERROR and body["message"].endswith(passed_through)
        assert (
            found["DM_ErrorDetailNameCode_UnderlyingErrorMessage"]
            == "The user name or password is incorrect."
        )
    elif shape == "unknown-gateway-code":
        assert code.startswith("DM_GWPipeline_") and code != GATEWAY_DATA_SOURCE_ACCESS_ERROR
        assert "DM_ErrorDetailNameCode_UnderlyingErrorMessage" in found
    else:
        assert shape == "unknown-code"
        assert not code.startswith("DM_GWPipeline_") and found == {}
    return body


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


@dataclass
class PowerBICalls:
    """Plain HTTPS calls to the sandbox's Power BI as the world's app."""

    world: World

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        token = self.world.sb.entra.issue_token("app", self.world.app.client_id, POWERBI_AUDIENCE).token
        headers = {"Authorization": f"Bearer {token}"}
        return requests.request(
            method, self.world.sb.powerbi.api_url + path, headers=headers, timeout=10, **kwargs
        )

    def ds_path(self, index: int = 0) -> str:
        return f"/gateways/{self.world.gateway_id}/datasources/{self.world.datasource_ids[index]}"

    def patch(self, password: str, index: int = 0) -> requests.Response:
        key = self.call("GET", f"/gateways/{self.world.gateway_id}").json()["publicKey"]
        plain = json.dumps(
            {
                "credentialData": [
                    {"name": "username", "value": "svc_pbi"},
                    {"name": "password", "value": password},
                ]
            }
        )
        body = {
            "credentialDetails": {
                "credentialType": "Basic",
                "credentials": encrypt_credentials(plain, GatewayPublicKey.from_api(key)),
                "encryptedConnection": "Encrypted",
                "encryptionAlgorithm": "RSA-OAEP",
                "privacyLevel": "Organizational",
            }
        }
        specs.validate_powerbi_request("Gateways_UpdateDatasource", body)
        return self.call("PATCH", self.ds_path(index), json=body)

    def refresh(self, index: int = 0) -> dict[str, Any]:
        """Refresh the dataset of data source ``index``; its history entry once finished."""
        path = f"/groups/{self.world.workspace_id}/datasets/{self.world.dataset_ids[index]}/refreshes"
        assert self.call("POST", path).status_code == 202
        history = self.call("GET", path, params={"$top": 1})
        specs.validate_powerbi_response("Datasets_GetRefreshHistoryInGroup", 200, history.json())
        (entry,) = history.json()["value"]
        result: dict[str, Any] = entry
        return result


def make_world(sb: Sandbox, shape: PowerBIRefusal, **kwargs: Any) -> tuple[World, PowerBICalls]:
    world = build_world(sb, refusal=shape, bits=1024, **kwargs)
    return world, PowerBICalls(world)


# -- the catalogue -------------------------------------------------------------------------------
def test_the_catalogue_names_seven_shapes_per_service_with_the_defaults_first() -> None:
    assert POWERBI_REFUSALS[0] == "invalid-credentials" and FABRIC_REFUSALS[0] == "incorrect-credentials"
    assert len(set(POWERBI_REFUSALS)) == len(set(FABRIC_REFUSALS)) == 7
    assert set(POWERBI_SHAPE_OF_FABRIC) == set(FABRIC_REFUSALS)
    assert set(POWERBI_SHAPE_OF_FABRIC.values()) == set(POWERBI_REFUSALS)


def test_the_default_power_bi_body_is_the_mashup_credential_error() -> None:
    refused = powerbi_refusal(
        "invalid-credentials", kind="SQL", path="sql.contoso.local;Sales", user="svc_pbi", presented=WRONG
    )
    assert refused.body == {
        "error": {
            "code": "DM_GWPipeline_Gateway_InvalidConnectionCredentials",
            "pbi.error": {
                "code": "DM_GWPipeline_Gateway_InvalidConnectionCredentials",
                "parameters": {},
                "details": [
                    {
                        "code": "DM_ErrorDetailNameCode_UnderlyingErrorCode",
                        "detail": {"type": 1, "value": "-2147467259"},
                    },
                    {
                        "code": "DM_ErrorDetailNameCode_UnderlyingErrorMessage",
                        "detail": {
                            "type": 1,
                            "value": "<ccon>The credentials provided for the SQL source are invalid. "
                            "(Source at sql.contoso.local;Sales.)</ccon>",
                        },
                    },
                    {
                        "code": "DM_ErrorDetailNameCode_UnderlyingHResult",
                        "detail": {"type": 1, "value": "-2147467259"},
                    },
                    {
                        "code": "Microsoft.Data.Mashup.CredentialError.DataSourceKind",
                        "detail": {"type": 1, "value": "SQL"},
                    },
                    {
                        "code": "Microsoft.Data.Mashup.CredentialError.DataSourcePath",
                        "detail": {"type": 1, "value": "<ccon>sql.contoso.local;Sales</ccon>"},
                    },
                    {
                        "code": "Microsoft.Data.Mashup.CredentialError.Reason",
                        "detail": {"type": 1, "value": "AccessUnauthorized"},
                    },
                ],
                "exceptionCulprit": 1,
            },
        }
    }
    locked = powerbi_refusal("invalid-credentials", kind="SQL", path="p", user="svc_pbi", locked=True)
    assert locked.body is not None
    assert (
        details(locked.body)["DM_ErrorDetailNameCode_UnderlyingErrorMessage"] == f"<ccon>{LOCKED_OUT} </ccon>"
    )


def test_sql_login_failed_is_the_real_power_bi_body_with_the_accounts_user_name() -> None:
    refused = powerbi_refusal("sql-login-failed", kind="SQL", path="p", user="admin", presented=WRONG)
    assert refused.body == json.loads(POWERBI_CLI_ISSUE_27)
    assert refused.text == POWERBI_CLI_ISSUE_27

    locked = powerbi_refusal("sql-login-failed", kind="SQL", path="p", user="svc_pbi", locked=True)
    assert locked.body is not None
    found = details(locked.body)
    assert found["DM_ErrorDetailNameCode_UnderlyingErrorMessage"] == LOCKED_OUT
    assert found["DM_ErrorDetailNameCode_UnderlyingNativeErrorCode"] == "18486"


def test_sql_login_failed_is_the_real_fabric_body() -> None:
    refused = fabric_refusal("sql-login-failed", user="admin", presented=WRONG)
    assert refused.body is not None
    uuid.UUID(refused.body["requestId"])
    assert refused.text == SEMANTIC_LINK_LABS_ISSUE_1025.replace("<uuid>", refused.body["requestId"])

    locked = fabric_refusal("sql-login-failed", user="svc_pbi", locked=True)
    assert locked.body is not None
    found = more_details(locked.body)
    assert found["DM_ErrorDetailNameCode_UnderlyingErrorMessage"] == LOCKED_OUT
    assert found["DM_ErrorDetailNameCode_UnderlyingNativeErrorCode"] == "18486"


@pytest.mark.parametrize("locked", [False, True])
@pytest.mark.parametrize("presented", [None, WRONG])
def test_every_shape_renders_in_its_services_error_shape(locked: bool, presented: str | None) -> None:
    for shape in POWERBI_REFUSALS:
        refused = powerbi_refusal(
            shape, kind="SQL", path="p", user="svc_pbi", locked=locked, presented=presented
        )
        if refused.body is None:
            assert shape == "unreadable" and refused.text == UNREADABLE_BODY and refused.code is None
        else:
            assert refused.code == assert_envelope(refused.body)["error"]["code"]
            assert json.loads(refused.text) == refused.body
        assert (WRONG in refused.text) is (shape == "echo" and presented is not None)
    for fabric_shape in FABRIC_REFUSALS:
        refused = fabric_refusal(fabric_shape, user="svc_pbi", locked=locked, presented=presented)
        if refused.body is None:
            assert fabric_shape == "unreadable"
        else:
            specs.validate_fabric("ErrorResponse", refused.body)
            assert refused.code == refused.body["errorCode"]
        assert (WRONG in refused.text) is (fabric_shape == "echo" and presented is not None)


def test_an_unknown_shape_is_refused(msb: Sandbox) -> None:
    world, _ = make_world(msb, "invalid-credentials")
    with pytest.raises(ValueError, match="sql-login-failed"):
        msb.powerbi.set_refusal(world.datasources[0], "login-failed")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        build_world(msb, refusal="nope", binding_name="other")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        powerbi_refusal("nope", kind="SQL", path="p", user="u")  # type: ignore[arg-type]


# -- Power BI, through HTTPS -----------------------------------------------------------------------
@pytest.mark.parametrize("shape", POWERBI_REFUSALS)
def test_a_wrong_value_is_refused_in_the_shape_after_one_counted_sign_in(
    msb: Sandbox, shape: PowerBIRefusal
) -> None:
    world, pbi = make_world(msb, shape)
    datasource = world.datasources[0]

    response = pbi.patch(WRONG)

    assert_powerbi_shape(
        shape, response.status_code, response.headers["Content-Type"], response.text, presented=WRONG
    )
    assert (WRONG in response.text) is (shape == "echo")  # echoed only where the shape echoes
    assert world.account.total_failures == 1 and world.account.failures_of(WRONG) == 1
    assert [f.cause for f in world.account.failures()] == ["update-test"]
    assert world.stored_secret(datasource) == world.secret  # nothing stored
    expected_outcome = "unreadable" if shape == "unreadable" else response.json()["error"]["code"]
    assert [a.outcome for a in datasource.update_attempts] == [expected_outcome]

    right = pbi.patch(world.secret)
    assert right.status_code == 200, right.text
    assert world.account.total_failures == 1 and world.account.failed_attempts == 0


@pytest.mark.parametrize("shape", POWERBI_REFUSALS)
def test_status_checks_and_refreshes_on_a_stale_value_fail_in_the_shape(
    msb: Sandbox, shape: PowerBIRefusal
) -> None:
    world, pbi = make_world(msb, shape)
    datasource, dataset = world.datasources[0], world.datasets[0]
    world.rotate_sources_only()  # Power BI now holds a stale password

    status = pbi.call("GET", pbi.ds_path() + "/status")
    assert_powerbi_shape(
        shape, status.status_code, status.headers["Content-Type"], status.text, presented=None
    )
    entry = pbi.refresh()
    assert entry["status"] == "Failed"
    for text in (entry["serviceExceptionJson"], entry["refreshAttempts"][0]["serviceExceptionJson"]):
        assert_powerbi_shape(shape, 400, "text/html" if shape == "unreadable" else "", text, presented=None)
    if shape == "unreadable":
        assert entry["serviceExceptionJson"] == UNREADABLE_BODY

    assert [f.cause for f in world.account.failures()] == ["status-check", "refresh"]
    assert dataset.schedule.enabled is False  # a credential failure, whatever its shape
    assert datasource.credential is not None


def test_the_shape_is_chosen_per_data_source_and_the_shared_account_counts_them_all(msb: Sandbox) -> None:
    world, pbi = make_world(msb, "invalid-credentials", sources=3)
    world.set_refusal("sql-login-failed", 1)
    world.set_refusal("unreadable", world.datasources[2])

    answers = [pbi.patch(WRONG, i) for i in range(3)]

    assert answers[0].json()["error"]["code"] == INVALID_CONNECTION_CREDENTIALS
    assert answers[1].json()["error"]["code"] == GATEWAY_DATA_SOURCE_ACCESS_ERROR
    assert answers[2].headers["Content-Type"].startswith("text/html")
    assert world.account.failures_of(WRONG) == 3  # one account, three sign-ins: the shape counts none
    assert [d.refusal for d in world.datasources] == ["invalid-credentials", "sql-login-failed", "unreadable"]
    world.set_refusal("password-incorrect")
    assert {d.refusal for d in world.datasources} == {"password-incorrect"}
    assert world.refusal == "password-incorrect"


@pytest.mark.parametrize("shape", ["sql-login-failed", "password-incorrect", "invalid-credentials"])
def test_a_locked_account_says_so_where_the_shape_can_when_lockouts_are_reported(
    msb: Sandbox, shape: PowerBIRefusal
) -> None:
    world, pbi = make_world(msb, shape)
    msb.powerbi.report_lockouts = True
    world.account.locked = True

    answers = [pbi.patch(world.secret), pbi.call("GET", pbi.ds_path() + "/status")]

    for answer in answers:
        message = details(answer.json())["DM_ErrorDetailNameCode_UnderlyingErrorMessage"]
        assert "locked out" in message
        if shape == "sql-login-failed":
            assert message == LOCKED_OUT
            assert details(answer.json())["DM_ErrorDetailNameCode_UnderlyingNativeErrorCode"] == "18486"
    assert [f.outcome for f in world.account.failures()] == ["locked", "locked"]


# -- Fabric, through HTTPS -------------------------------------------------------------------------
@dataclass
class FabricCalls:
    sb: Sandbox
    principal: str
    connection: FabricConnection

    def call(
        self, method: str, path: str, *, principal: str | None = None, **kwargs: Any
    ) -> requests.Response:
        token = self.sb.entra.issue_token("app", principal or self.principal, FABRIC_AUDIENCE).token
        headers = {"Authorization": f"Bearer {token}"}
        return requests.request(method, self.sb.fabric.api_url + path, headers=headers, timeout=10, **kwargs)

    def patch(self, password: str) -> requests.Response:
        body = {
            "connectivityType": "ShareableCloud",
            "credentialDetails": {
                "credentials": {"credentialType": "Basic", "username": "svc_pbi", "password": password},
                "skipTestConnection": False,
            },
        }
        return self.call("PATCH", f"/connections/{self.connection.id}", json=body)

    def test_connection(
        self, *, principal: str | None = None, connection_id: str | None = None
    ) -> requests.Response:
        return self.call(
            "POST", f"/connections/{connection_id or self.connection.id}/testConnection", principal=principal
        )


def make_fabric(sb: Sandbox, shape: FabricRefusal, **kwargs: Any) -> FabricCalls:
    principal = str(uuid.uuid4())
    source = sb.sources.add(f"lake-{uuid.uuid4().hex[:6]}", username="svc_pbi", secret="Right#1")
    connection = sb.fabric.add_connection(source, users=[principal], **kwargs)
    sb.fabric.set_refusal(connection, shape)
    return FabricCalls(sb, principal, connection)


@pytest.mark.parametrize("shape", FABRIC_REFUSALS)
def test_a_wrong_connection_credential_is_refused_in_the_shape_after_one_counted_sign_in(
    msb: Sandbox, shape: FabricRefusal
) -> None:
    f = make_fabric(msb, shape)
    account = f.connection.source.account

    response = f.patch(WRONG)

    assert_fabric_shape(shape, response, presented=WRONG)
    assert (WRONG in response.text) is (shape == "echo")
    assert account.total_failures == 1 and account.failures_of(WRONG) == 1
    assert f.connection.data["password"] == "Right#1" and f.connection.updates == 0  # nothing stored

    right = f.patch("Right#1")
    assert right.status_code == 200, right.text
    assert f.connection.updates == 1 and account.total_failures == 1


@pytest.mark.parametrize("shape", FABRIC_REFUSALS)
def test_test_connection_and_bound_refreshes_on_a_stale_value_fail_in_the_shape(
    msb: Sandbox, shape: FabricRefusal
) -> None:
    f = make_fabric(msb, shape)
    account = f.connection.source.account
    online = f.test_connection()
    assert online.status_code == 200 and online.json() == {"status": "Online", "errors": []}
    specs.validate_fabric("ConnectionStatusResponse", online.json())
    workspace = msb.powerbi.add_workspace("Lake", members=[f.principal])
    dataset = msb.powerbi.add_dataset(workspace, "Lake model", owner=f.principal, connections=[f.connection])
    account.set_secret("Rotated#2")  # the connection now holds a stale password

    refused = f.test_connection()
    assert_fabric_shape(shape, refused, presented=None)
    msb.powerbi.start_refresh(dataset)
    (entry,) = msb.powerbi.history(dataset)

    assert entry.status == "Failed" and entry.service_exception is not None
    assert_powerbi_shape(
        POWERBI_SHAPE_OF_FABRIC[shape],
        400,
        "text/html" if shape == "unreadable" else "",
        entry.service_exception,
        presented=None,
    )
    assert [f.cause for f in account.failures()] == ["test-connection", "refresh"]


def test_test_connection_is_for_users_of_the_connection_and_admins_of_its_gateway(msb: Sandbox) -> None:
    f = make_fabric(msb, "incorrect-credentials")
    stranger = str(uuid.uuid4())
    assert (
        f.test_connection(principal=stranger).json()["errorCode"]
        == "InsufficientPermissionsToManageConnection"
    )
    assert f.test_connection(connection_id=str(uuid.uuid4())).status_code == 404

    gateway = msb.fabric.add_gateway("gw", admins=[stranger])
    source = msb.sources.add("onprem-src", username="svc_pbi", secret="Right#1")
    onprem = msb.fabric.add_connection(source, connectivity_type="OnPremisesGateway", gateway=gateway)
    assert f.test_connection(principal=stranger, connection_id=onprem.id).json()["status"] == "Online"

    source.reachable = False
    offline = f.test_connection(principal=stranger, connection_id=onprem.id)
    assert offline.status_code == 200
    specs.validate_fabric("ConnectionStatusResponse", offline.json())
    assert offline.json()["status"] == "Offline"
    assert [e["errorCode"] for e in offline.json()["errors"]] == ["DM_GWPipeline_Client_GatewayUnreachable"]
    assert source.account.total_failures == 0 and msb.requests.find("fabric.test_connection")
