"""FabricClient against the sandbox: typed errors from Fabric's error body, long-running operations."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from requests.structures import CaseInsensitiveDict

from remediation.clients.fabric import (
    FabricClient,
    FabricEntityNotFound,
    FabricError,
    FabricNotAuthorized,
    IncorrectCredentials,
    OperationFailed,
)
from remediation.clients.http import ApiResponse, HttpPipeline
from remediation.clients.identity import PowerBITokenProvider
from remediation.config.settings import Settings
from sandbox import Sandbox
from sandbox.routing import Request, Response
from tests.support.clock import Sleeps
from tests.support.world import build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


@pytest.fixture
def client(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FabricClient, str, Sleeps]]:
    world = build_world(sb)
    env = sb.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env(env)
    sleeps = Sleeps()
    pipeline = HttpPipeline.from_settings(settings, service="fabric", sleep=sleeps)
    fabric = FabricClient(
        settings.fabric_api_url,
        PowerBITokenProvider(settings, scope=settings.fabric_scope),
        pipeline,
        sleep=sleeps,
    )
    yield fabric, world.app.client_id, sleeps
    pipeline.close()


def _connection(sb: Sandbox, principal: str, **kwargs: object):  # type: ignore[no-untyped-def]
    source = sb.sources.add(f"c-{uuid.uuid4().hex[:6]}", username="svc", secret="Right#1")
    return sb.fabric.add_connection(source, users=[principal], **kwargs)  # type: ignore[arg-type]


def _body(password: str) -> dict[str, object]:
    return {
        "connectivityType": "ShareableCloud",
        "credentialDetails": {
            "credentials": {"credentialType": "Basic", "username": "svc", "password": password},
            "skipTestConnection": False,
        },
    }


def test_fabric_errors_are_typed_with_their_details(
    sb: Sandbox, client: tuple[FabricClient, str, Sleeps]
) -> None:
    fabric, principal, _ = client
    connection = _connection(sb, principal)
    assert fabric.get_connection(connection.id).connectivity_type == "ShareableCloud"
    with pytest.raises(IncorrectCredentials) as wrong:
        fabric.update_connection(connection.id, _body("Wrong#1"))
    assert (wrong.value.status, wrong.value.code) == (400, "IncorrectCredentials")
    assert "Wrong#1" not in str(wrong.value)
    connection.source.reachable = False
    with pytest.raises(FabricError) as unreachable:
        fabric.update_connection(connection.id, _body("Right#1"))
    assert unreachable.value.code == "UpdateGatewayConnectionFailed"
    assert [d.error_code for d in unreachable.value.more_details] == [
        "DM_GWPipeline_Client_GatewayUnreachable"
    ]
    with pytest.raises(FabricEntityNotFound):
        fabric.get_connection(str(uuid.uuid4()))
    hidden = _connection(sb, "someone-else")
    with pytest.raises(FabricNotAuthorized) as refused:
        fabric.get_connection(hidden.id)
    assert refused.value.code == "InsufficientPermissionsToManageConnection"


def test_a_throttled_read_waits_retry_after(sb: Sandbox, client: tuple[FabricClient, str, Sleeps]) -> None:
    fabric, principal, sleeps = client
    connection = _connection(sb, principal)
    sb.faults.throttle("fabric.get_connection", retry_after=3)
    assert fabric.get_connection(connection.id).id == connection.id
    assert any(wait >= 3 for wait in sleeps.waits)


@pytest.mark.parametrize("outcome", ["Succeeded", "Failed"])
def test_long_running_operations_are_followed_to_their_end(
    sb: Sandbox, client: tuple[FabricClient, str, Sleeps], outcome: str
) -> None:
    fabric, _, sleeps = client
    operation = str(uuid.uuid4())
    states = iter(["Running", outcome])

    def state(request: Request) -> Response:
        status = next(states)
        body: dict[str, object] = {"status": status, "percentComplete": 50 if status == "Running" else 100}
        if status == "Failed":
            body["error"] = {"errorCode": "GatewayUnreachable", "message": "The gateway is offline"}
        return Response(200, body, {"Retry-After": "2"} if status == "Running" else {})

    sb.router.add(
        "fabric", "fabric.get_operation", "GET", r"/v1/operations/(?P<operation>[^/]+)", state, dict
    )
    accepted = ApiResponse(
        method="POST",
        path="/v1/connections/x/testConnection",
        status=202,
        headers=CaseInsensitiveDict(
            {
                "x-ms-operation-id": operation,
                "Location": f"{fabric.api_url}/operations/{operation}",
                "Retry-After": "1",
            }
        ),
        content=b"",
        service="fabric",
    )
    if outcome == "Succeeded":
        assert fabric.wait_for_operation(accepted).status == "Succeeded"
    else:
        with pytest.raises(OperationFailed) as failed:
            fabric.wait_for_operation(accepted)
        assert failed.value.code == "GatewayUnreachable"
    assert sleeps.waits[:2] == [1.0, 2.0]
    assert len(sb.requests.find("fabric.get_operation")) == 2
