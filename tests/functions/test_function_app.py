"""The Functions app, called through its registered functions with real ``azure.functions`` objects
against the sandbox (the Functions host itself cannot be installed here)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

import function_app
from remediation import service as service_module
from remediation.service import RemediationService
from remediation.settings import Settings
from sandbox import Sandbox
from sandbox.server import RecordedRequest
from tests.support.azurite import Azurite
from tests.support.network_guard import GUARD
from tests.support.world import World, build_world

pytestmark = pytest.mark.sandbox
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "specs" / "eventgrid" / "samples"
FUNCTIONS = {f.get_function_name(): f for f in function_app.app.get_functions()}


def call(name: str, *args: Any) -> Any:
    return FUNCTIONS[name].get_user_function()(*args)


@pytest.fixture
def world(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[World]:
    w = build_world(sb, sources=2)
    env = w.env(tmp_path / "ledger.sqlite")
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING")  # telemetry is proven in test_telemetry.py
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    service_module.reset_service()
    yield w
    service_module.reset_service()


def patches(sb: Sandbox) -> list[RecordedRequest]:
    return sb.requests.find("powerbi.update_datasource")


def writes(sb: Sandbox) -> list[RecordedRequest]:
    return [r for r in sb.requests.find(service="powerbi") if r.method != "GET"]


def eventgrid_event(raw: dict[str, Any]) -> func.EventGridEvent:
    """What the Functions host hands the function, for either schema."""
    return func.EventGridEvent(
        id=raw["id"],
        data=raw["data"],
        topic=raw.get("topic") or raw.get("source", ""),
        subject=raw.get("subject", ""),
        event_type=raw.get("eventType") or raw["type"],
        event_time=None,
        data_version=raw.get("dataVersion", "1"),
    )


def key_vault_event(sample: str, world: World, version: str) -> dict[str, Any]:
    """Microsoft's sample, pointed at the sandbox vault, the world's secret and ``version``."""
    raw: dict[str, Any] = copy.deepcopy(json.loads((SAMPLES / sample).read_text()))
    raw["data"]["Id"] = f"{world.sb.vault.url}secrets/{world.secret_name}/{version}"
    raw["data"]["ObjectName"] = world.secret_name
    raw["data"]["Version"] = version
    raw["subject"] = world.secret_name
    return raw


def http(
    method: str, route: str, body: bytes = b"", params: dict[str, str] | None = None
) -> func.HttpRequest:
    return func.HttpRequest(
        method,
        f"https://healer.azurewebsites.net/api/{route}",
        body=body,
        params=params or {},
        headers={"Content-Type": "application/json"},
    )


def answer(response: func.HttpResponse) -> tuple[int, dict[str, Any]]:
    assert response.mimetype == "application/json"
    body: dict[str, Any] = json.loads(response.get_body())
    return response.status_code, body


# -- the deployed surface ------------------------------------------------------------------------
def test_the_deployed_surface_is_exactly_these_functions() -> None:
    surface = {}
    for name, fn in FUNCTIONS.items():
        trigger = fn.get_trigger()
        bindings = sorted((b.name, b.type) for b in fn.get_bindings())
        extra = {
            k: getattr(trigger, k, None)
            for k in ("schedule", "run_on_startup", "use_monitor", "route", "methods", "auth_level")
        }
        surface[name] = (trigger.type, bindings, {k: v for k, v in extra.items() if v is not None})

    def methods(*names: str) -> list[func.HttpMethod]:
        return [func.HttpMethod(n) for n in names]

    assert surface == {
        "keyvault_events": ("eventGridTrigger", [("event", "eventGridTrigger")], {}),
        "refresh_events": ("eventGridTrigger", [("event", "eventGridTrigger")], {}),
        "sweep": (
            "timerTrigger",
            [("timer", "timerTrigger")],
            {"schedule": "%REMEDIATION_SWEEP_SCHEDULE%", "run_on_startup": False, "use_monitor": True},
        ),
        "remediate": (
            "httpTrigger",
            [("$return", "http"), ("req", "httpTrigger")],
            {"route": "remediate", "methods": methods("POST"), "auth_level": func.AuthLevel.FUNCTION},
        ),
        "remediations": (
            "httpTrigger",
            [("$return", "http"), ("req", "httpTrigger")],
            {"route": "remediations", "methods": methods("GET"), "auth_level": func.AuthLevel.FUNCTION},
        ),
    }


# -- Key Vault events ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sample",
    [
        "spec_event-grid-schema_secret_new_version_created.json",
        "spec_legacy_secret_new_version_created.json",
        "spec_cloud-events-schema_secret_new_version_created.json",
    ],
)
def test_a_new_secret_version_heals_every_target_once_even_when_delivered_twice(
    world: World, sample: str
) -> None:
    version = world.rotate()
    event = eventgrid_event(key_vault_event(sample, world, version))

    call("keyvault_events", event)
    call("keyvault_events", event)  # Event Grid delivers at least once

    assert sorted(p.path.rsplit("/", 1)[-1] for p in patches(world.sb)) == sorted(world.datasource_ids)
    assert all(world.stored_secret(ds) == world.secret for ds in world.datasources)


def test_a_key_vault_event_of_another_vault_or_an_unbound_secret_is_ignored(world: World) -> None:
    world.rotate()
    foreign = json.loads((SAMPLES / "spec_event-grid-schema_secret_new_version_created.json").read_text())
    unbound = key_vault_event("spec_event-grid-schema_secret_new_version_created.json", world, "a" * 32)
    unbound["data"]["Id"] = f"{world.sb.vault.url}secrets/some-other-secret/{'a' * 32}"

    call("keyvault_events", eventgrid_event(foreign))
    call("keyvault_events", eventgrid_event(unbound))

    assert patches(world.sb) == []


def test_near_expiry_and_expired_secrets_are_warnings_that_change_nothing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    for event_type in ("Microsoft.KeyVault.SecretNearExpiry", "Microsoft.KeyVault.SecretExpired"):
        raw = key_vault_event("spec_event-grid-schema_secret_new_version_created.json", world, world.version)
        raw["eventType"] = event_type
        raw["id"] = event_type
        call("keyvault_events", eventgrid_event(raw))

    assert writes(world.sb) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum(world.binding_name in w and world.secret_name in w for w in warnings) == 2


def test_a_malformed_event_is_acknowledged_and_changes_nothing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    raw = key_vault_event("spec_event-grid-schema_secret_new_version_created.json", world, world.version)
    raw["data"] = {"VaultName": "x"}  # no Id

    call("keyvault_events", eventgrid_event(raw))

    assert writes(world.sb) == []
    assert any("ignored" in r.getMessage() for r in caplog.records)


# -- refresh-failure events ---------------------------------------------------------------------
def _refresh_failed(world: World, index: int = 0, *, fabric: bool = False) -> dict[str, Any]:
    if fabric:
        return {
            "id": f"fabric-{index}",
            "type": "Microsoft.Fabric.ItemJobFailed",
            "specversion": "1.0",
            "source": "tenant",
            "subject": f"/workspaces/{world.workspace_id}/items/x/jobs/instances/y",
            "data": {
                "itemId": world.dataset_ids[index],
                "itemKind": "SemanticModel",
                "workspaceId": world.workspace_id,
                "jobInstanceId": "0" * 8 + "-0000-0000-0000-" + "0" * 12,
                "jobStatus": "Failed",
            },
        }
    return {
        "id": f"refresh-{index}",
        "eventType": "PowerBI.RefreshFailed",
        "subject": f"workspaces/{world.workspace_id}/datasets/{world.dataset_ids[index]}",
        "data": {
            "workspaceId": world.workspace_id,
            "datasetId": world.dataset_ids[index],
            "error": "DM_GWPipeline_Gateway_InvalidConnectionCredentials",
        },
        "dataVersion": "1.0",
    }


@pytest.mark.parametrize("fabric", [False, True], ids=["custom-event", "fabric-item-job-failed"])
def test_a_refresh_failure_event_heals_that_dataset_and_refreshes_it(world: World, fabric: bool) -> None:
    world.rotate()
    world.fail_scheduled_refreshes()

    call("refresh_events", eventgrid_event(_refresh_failed(world, 0, fabric=fabric)))

    assert [p.path.rsplit("/", 1)[-1] for p in patches(world.sb)] == [world.datasource_ids[0]]
    assert world.sb.powerbi.history(world.datasets[0])[0].status == "Completed"
    assert world.sb.powerbi.history(world.datasets[1])[0].status == "Failed"  # no event for it yet


# -- timer ---------------------------------------------------------------------------------------
def test_the_timer_sweep_heals_what_no_event_reported(world: World) -> None:
    world.rotate()
    world.fail_scheduled_refreshes()

    call("sweep", TimerRequest(past_due=True))

    assert len(patches(world.sb)) == 2
    assert [world.sb.powerbi.history(d)[0].status for d in world.datasets] == ["Completed", "Completed"]


# -- HTTP ----------------------------------------------------------------------------------------
def test_post_remediate_heals_a_secret_and_answers_with_the_report(world: World) -> None:
    version = world.rotate()

    status, body = answer(
        call("remediate", http("POST", "remediate", json.dumps({"secretName": world.secret_name}).encode()))
    )

    assert status == 200
    assert {t["action"] for t in body["targets"]} == {"updated"}
    assert {t["secret_version"] for t in body["targets"]} == {version}
    assert body["exitCode"] == 0 and body["dryRun"] is False
    assert world.secret not in json.dumps(body)


def test_post_remediate_dry_run_plans_and_writes_nothing(world: World) -> None:
    world.rotate()
    world.fail_scheduled_refreshes()
    before = len(writes(world.sb))
    request = {"workspaceId": world.workspace_id, "datasetId": world.dataset_ids[0], "dryRun": True}

    status, body = answer(call("remediate", http("POST", "remediate", json.dumps(request).encode())))

    assert status == 200 and body["dryRun"] is True
    assert [t["action"] for t in body["targets"]] == ["would-update"]
    assert [d["action"] for d in body["datasets"]] == ["would-refresh"]
    assert len(writes(world.sb)) == before


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "InvalidJson"),
        (b"[]", 400, "InvalidJson"),
        (b"", 400, "EmptyBody"),
        (b'{"secretName": "pw", "extra": 1}', 400, "UnknownField"),
        (b'{"workspaceId": "not-a-guid", "datasetId": "x"}', 400, "InvalidField"),
        (b'{"secretName": "bad/name"}', 400, "InvalidField"),
        (b'{"secretName": "pw", "dryRun": "yes"}', 400, "InvalidField"),
        (b'{"secretName": "pw", "datasetId": "x"}', 400, "InvalidRequest"),
        (b'{"secretName": "not-bound-anywhere"}', 404, "NotFound"),
        (
            b'{"workspaceId": "11111111-1111-1111-1111-111111111111", '
            b'"datasetId": "22222222-2222-2222-2222-222222222222"}',
            404,
            "NotFound",
        ),
        (
            b'{"gatewayId": "11111111-1111-1111-1111-111111111111", '
            b'"datasourceId": "22222222-2222-2222-2222-222222222222"}',
            404,
            "NotFound",
        ),
        (b'{"secretName": "' + b"a" * 20000 + b'"}', 413, "BodyTooLarge"),
    ],
)
def test_bad_requests_get_a_json_error_that_says_what_is_wrong(
    world: World, body: bytes, status: int, code: str
) -> None:
    got_status, got = answer(call("remediate", http("POST", "remediate", body)))

    assert (got_status, got["error"]["code"]) == (status, code)
    assert got["error"]["message"] and "Traceback" not in got["error"]["message"]
    assert writes(world.sb) == []


def test_a_configuration_fault_is_a_json_500_without_a_traceback(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMEDIATION_BINDINGS", '{"bindings": [{"name": "x"}]}')
    service_module.reset_service()

    status, body = answer(call("remediate", http("POST", "remediate", b'{"secretName": "pw"}')))

    assert status == 500 and body["error"]["code"] == "ConfigurationError"
    assert "Traceback" not in json.dumps(body)


def test_get_remediations_lists_recent_outcomes(world: World) -> None:
    world.rotate()
    call("remediate", http("POST", "remediate", json.dumps({"secretName": world.secret_name}).encode()))

    status, body = answer(
        call("remediations", http("GET", "remediations", params={"since": "2020-01-01T00:00:00Z"}))
    )
    assert status == 400  # more than 90 days ago

    status, body = answer(call("remediations", http("GET", "remediations", params={"code": "function-key"})))
    assert status == 200
    assert sorted(o["datasource_id"] for o in body["outcomes"] if o["datasource_id"]) == sorted(
        world.datasource_ids
    )

    status, body = answer(call("remediations", http("GET", "remediations", params={"since": "yesterday"})))
    assert (status, body["error"]["code"]) == (400, "InvalidParameter")


# -- two workers, one Table storage ledger ------------------------------------------------------
def test_two_workers_racing_on_one_event_update_each_target_once(
    world: World, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    settings = Settings.from_env()
    workers = [RemediationService.from_settings(settings) for _ in range(2)]
    version = world.rotate()
    world.sb.faults.latency = 0.02  # widen the window in which both could act
    events = [
        key_vault_event("spec_event-grid-schema_secret_new_version_created.json", world, version)
        for _ in workers
    ]
    for index, event in enumerate(events):
        event["id"] = f"delivery-{index}"  # two different deliveries (e.g. two subscriptions)
    start = threading.Barrier(len(workers))

    def run(worker: RemediationService, event: dict[str, Any]) -> Callable[[], None]:
        def go() -> None:
            start.wait()
            worker.handle_event(event)

        return go

    threads = [threading.Thread(target=run(w, e)) for w, e in zip(workers, events, strict=True)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for worker in workers:
            worker.runtime.close()

    assert sorted(p.path.rsplit("/", 1)[-1] for p in patches(world.sb)) == sorted(world.datasource_ids)


# -- telemetry, end to end ----------------------------------------------------------------------
CHILD = GUARD + textwrap.dedent(
    """
    from azure.functions import EventGridEvent
    import function_app

    raw = json.loads(sys.argv[1])
    event = EventGridEvent(id=raw["id"], data=raw["data"], topic=raw["topic"], subject=raw["subject"],
                           event_type=raw["eventType"], event_time=None, data_version="1")
    (fn,) = [f for f in function_app.app.get_functions() if f.get_function_name() == "keyvault_events"]
    fn.get_user_function()(event)
    print(json.dumps({"attempts": attempts}))
    """
)


def test_a_key_vault_event_is_reported_to_application_insights_without_the_secret(
    sb: Sandbox, tmp_path: Path
) -> None:
    w = build_world(sb, sources=2)
    version = w.rotate()
    event = key_vault_event("spec_event-grid-schema_secret_new_version_created.json", w, version)
    env = {**os.environ, **w.env(tmp_path / "ledger.sqlite"), "TMPDIR": str(tmp_path)}
    env.pop("AzureWebJobsStorage", None)

    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(event)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert child.returncode == 0, child.stderr[-3000:]
    assert json.loads(child.stdout.strip().splitlines()[-1])["attempts"] == []
    events = sb.appinsights.custom_events("CredentialRemediation")
    targets = sorted(
        (e["properties"]["datasourceId"], e["properties"]["action"])
        for e in events
        if e["properties"]["datasourceId"]
    )
    assert targets == sorted((ds, "updated") for ds in w.datasource_ids)
    assert {e["properties"]["trigger"] for e in events} == {"eventgrid"}
    assert {e["properties"]["correlationId"] for e in events} == {event["id"]}
    assert {e["properties"]["secretVersion"] for e in events if e["properties"]["datasourceId"]} == {version}
    assert sb.appinsights.dependencies(), "outgoing calls are reported as dependencies"
    everything = json.dumps(sb.appinsights.envelopes)
    assert w.secret not in everything and json.dumps(w.secret)[1:-1] not in everything
    assert not [
        r for r in sb.requests.all() if r.service not in ("entra", "keyvault", "powerbi", "appinsights")
    ]
