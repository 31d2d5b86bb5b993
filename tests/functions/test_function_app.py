"""The Functions app, invoked as the worker invokes it: trigger payloads shaped as the host sends
them, turned into arguments by ``azure.functions``' own converters (:mod:`tests.functions.host`),
against the sandbox (the Functions host itself cannot be installed here). These run in the
embedded mode (no storage account: commands run inline); ``test_work_queue.py`` covers the
queued mode against Azurite."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remediation.edges import service as service_module
from sandbox import Sandbox
from sandbox.recorder import RecordedRequest
from tests.functions.host import (
    FUNCTIONS,
    HttpAnswer,
    annotation_is_accepted,
    converter,
    event_datum,
    http_datum,
    invoke,
    timer_datum,
)
from tests.support.network_guard import GUARD
from tests.support.world import World, build_world

pytestmark = pytest.mark.sandbox
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "specs" / "eventgrid" / "samples"


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


def key_vault_event(sample: str, world: World, version: str) -> dict[str, Any]:
    """Microsoft's sample, pointed at the sandbox vault, the world's secret and ``version``."""
    raw: dict[str, Any] = copy.deepcopy(json.loads((SAMPLES / sample).read_text()))
    if "type" in raw:  # CloudEvents 1.0 requires specversion; Microsoft's sample leaves it out
        raw.setdefault("specversion", "1.0")
    raw["data"]["Id"] = f"{world.sb.vault.url}secrets/{world.secret_name}/{version}"
    raw["data"]["ObjectName"] = world.secret_name
    raw["data"]["Version"] = version
    raw["subject"] = world.secret_name
    return raw


def post(body: bytes, *, body_type: str = "bytes") -> HttpAnswer:
    answer: HttpAnswer = invoke("remediate", http_datum("POST", "remediate", body, body_type=body_type))
    return answer


def answer(response: HttpAnswer) -> tuple[int, dict[str, Any]]:
    return response.status, response.json()


# -- the deployed surface ------------------------------------------------------------------------
def test_the_deployed_surface_is_exactly_these_functions() -> None:
    surface = {}
    for name, fn in FUNCTIONS.items():
        trigger = fn.get_trigger()
        bindings = sorted((b.name, b.type) for b in fn.get_bindings())
        extra = {
            k: getattr(trigger, k, None)
            for k in (
                "schedule",
                "run_on_startup",
                "use_monitor",
                "route",
                "methods",
                "auth_level",
                "queue_name",
                "connection",
                "event_hub_name",
                "consumer_group",
                "cardinality",
                "data_type",
            )
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
        "remediation_status": (
            "httpTrigger",
            [("$return", "http"), ("req", "httpTrigger")],
            {
                "route": "remediations/{correlationId}",
                "methods": methods("GET"),
                "auth_level": func.AuthLevel.FUNCTION,
            },
        ),
        "remediation_work": (
            "queueTrigger",
            [("msg", "queueTrigger")],
            {"queue_name": "%REMEDIATION_WORK_QUEUE%", "connection": "AzureWebJobsStorage"},
        ),
        # Registered on the app only when its connection is set (test_job_events.py).
        "job_events": (
            "eventHubTrigger",
            [("events", "eventHubTrigger")],
            {
                "connection": "REMEDIATION_EVENTSTREAM_CONNECTION",
                "event_hub_name": "%REMEDIATION_EVENTSTREAM_HUB%",
                "consumer_group": "%REMEDIATION_EVENTSTREAM_CONSUMER_GROUP%",
                "cardinality": func.Cardinality.MANY,
                "data_type": func.DataType.BINARY.value,  # the trigger keeps the value
            },
        ),
    }


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_the_worker_accepts_every_trigger_annotation(name: str) -> None:
    assert annotation_is_accepted(name)


@pytest.mark.parametrize(
    ("sample", "shape"),
    [
        ("spec_event-grid-schema_secret_new_version_created.json", func.EventGridEvent),
        ("spec_cloud-events-schema_secret_new_version_created.json", func.CloudEvent),
    ],
)
def test_the_converter_builds_an_event_grid_event_or_a_cloud_event(sample: str, shape: type) -> None:
    raw = json.loads((SAMPLES / sample).read_text())
    if "type" in raw:
        raw.setdefault("specversion", "1.0")

    built = converter("eventGridTrigger").decode(event_datum(raw), trigger_metadata={})

    assert type(built) is shape  # the function's annotation is EventGridEvent either way
    assert built.id == raw["id"] and built.get_json() == raw["data"]


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
    event = event_datum(key_vault_event(sample, world, version))

    invoke("keyvault_events", event)
    invoke("keyvault_events", event)  # Event Grid delivers at least once

    assert sorted(p.path.rsplit("/", 1)[-1] for p in patches(world.sb)) == sorted(world.datasource_ids)
    assert all(world.stored_secret(ds) == world.secret for ds in world.datasources)


def test_a_key_vault_event_of_another_vault_or_an_unbound_secret_is_ignored(world: World) -> None:
    world.rotate()
    foreign = json.loads((SAMPLES / "spec_event-grid-schema_secret_new_version_created.json").read_text())
    unbound = key_vault_event("spec_event-grid-schema_secret_new_version_created.json", world, "a" * 32)
    unbound["data"]["Id"] = f"{world.sb.vault.url}secrets/some-other-secret/{'a' * 32}"

    invoke("keyvault_events", event_datum(foreign))
    invoke("keyvault_events", event_datum(unbound))

    assert patches(world.sb) == []


def test_near_expiry_and_expired_secrets_are_warnings_that_change_nothing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    for event_type in ("Microsoft.KeyVault.SecretNearExpiry", "Microsoft.KeyVault.SecretExpired"):
        raw = key_vault_event("spec_event-grid-schema_secret_new_version_created.json", world, world.version)
        raw["eventType"] = event_type
        raw["id"] = event_type
        invoke("keyvault_events", event_datum(raw))

    assert writes(world.sb) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum(world.binding_name in w and world.secret_name in w for w in warnings) == 2


def test_a_malformed_event_is_acknowledged_and_changes_nothing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    raw = key_vault_event("spec_event-grid-schema_secret_new_version_created.json", world, world.version)
    raw["data"] = {"VaultName": "x"}  # no Id

    invoke("keyvault_events", event_datum(raw))

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

    invoke("refresh_events", event_datum(_refresh_failed(world, 0, fabric=fabric)))

    assert [p.path.rsplit("/", 1)[-1] for p in patches(world.sb)] == [world.datasource_ids[0]]
    assert world.sb.powerbi.history(world.datasets[0])[0].status == "Completed"
    assert world.sb.powerbi.history(world.datasets[1])[0].status == "Failed"  # no event for it yet
    # Fabric job events as Microsoft delivers them, the Event Hubs function and HTTP: test_job_events.py


# -- timer ---------------------------------------------------------------------------------------
def test_the_timer_sweep_heals_what_no_event_reported(world: World) -> None:
    world.rotate()
    world.fail_scheduled_refreshes()

    invoke("sweep", timer_datum(past_due=True))

    assert len(patches(world.sb)) == 2
    assert [world.sb.powerbi.history(d)[0].status for d in world.datasets] == ["Completed", "Completed"]


# -- HTTP ----------------------------------------------------------------------------------------
def test_post_remediate_heals_a_secret_and_answers_with_the_report(world: World) -> None:
    version = world.rotate()

    status, body = answer(post(json.dumps({"secretName": world.secret_name}).encode()))

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

    status, body = answer(post(json.dumps(request).encode()))

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
    got_status, got = answer(post(body))

    assert (got_status, got["error"]["code"]) == (status, code)
    assert got["error"]["message"] and "Traceback" not in got["error"]["message"]
    assert writes(world.sb) == []


def test_a_configuration_fault_is_a_json_500_without_a_traceback(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMEDIATION_BINDINGS", '{"bindings": [{"name": "x"}]}')
    service_module.reset_service()

    status, body = answer(post(b'{"secretName": "pw"}'))

    assert status == 500 and body["error"]["code"] == "ConfigurationError"
    assert "Traceback" not in json.dumps(body)


def test_get_remediations_lists_recent_outcomes(world: World) -> None:
    world.rotate()
    post(json.dumps({"secretName": world.secret_name}).encode())

    status, body = answer(
        invoke("remediations", http_datum("GET", "remediations", params={"since": "2020-01-01T00:00:00Z"}))
    )
    assert status == 400  # more than 90 days ago

    status, body = answer(invoke("remediations", http_datum("GET", "remediations")))
    assert status == 200
    assert sorted(o["datasource_id"] for o in body["outcomes"] if o["datasource_id"]) == sorted(
        world.datasource_ids
    )

    status, body = answer(
        invoke("remediations", http_datum("GET", "remediations", params={"since": "yesterday"}))
    )
    assert (status, body["error"]["code"]) == (400, "InvalidParameter")


def listing(**params: str) -> tuple[int, dict[str, Any]]:
    return answer(invoke("remediations", http_datum("GET", "remediations", params=params)))


def assert_invalid_parameter(status: int, body: dict[str, Any]) -> None:
    assert (status, sorted(body), sorted(body["error"])) == (400, ["error"], ["code", "message"])
    assert body["error"]["code"] == "InvalidParameter" and body["error"]["message"]
    assert "Traceback" not in json.dumps(body)


@pytest.mark.parametrize(
    "since",
    [
        "9999-12-31T23:59:59-14:00",  # year 10000 in UTC
        "9999-12-31T23:59:59.999999-00:01",
        "0001-01-01T00:00:00+14:00",  # year 0 in UTC
        "0001-01-01T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-01-01T00:00:00+24:00",
        "\u0662\u0660\u0662\u0666-01-01T00:00:00Z",  # Arabic-Indic digits
        "\uff12\uff10\uff12\uff16-01-01T00:00:00Z",  # full-width digits
        "2026-01-01T00:00:00.\u0665Z",
        "\u00b2026-01-01",
        "2026-01-01T00:00:00\x00",
        " 2026-01-01T00:00:00Z",
        "yesterday",
        "Z",
        "9" * 5000,
    ],
)
def test_get_remediations_answers_400_for_any_since_that_is_not_a_time_in_range(
    world: World, since: str
) -> None:
    assert_invalid_parameter(*listing(since=since))


@pytest.mark.parametrize(
    "limit",
    [
        "\u00b2",
        "\u00b9\u2070",
        "\u0663",
        "\uff15",
        "\u09e7\u09e6",
        "0",
        "1001",
        "9" * 5000,
        "-1",
        "+5",
        " 5",
        "5 ",
        "1e3",
        "1.0",
        "0x10",
        "1_000",
        "\u2155",
    ],
)
def test_get_remediations_answers_400_for_any_limit_that_is_not_1_to_1000_in_ascii_digits(
    world: World, limit: str
) -> None:
    assert_invalid_parameter(*listing(limit=limit))


def test_get_remediations_takes_the_edges_of_its_ranges(world: World) -> None:
    world.rotate()
    post(json.dumps({"secretName": world.secret_name}).encode())

    for params in (
        {"limit": "1"},
        {"limit": "1000"},
        {"limit": "0001000"},
        {"limit": "0" * 4400 + "5"},
        {"since": "9999-12-31T23:59:59+14:00"},
    ):
        status, body = listing(**params)
        assert status == 200, (params, body)
    assert len(listing(limit="1")[1]["outcomes"]) == 1
    assert listing(since="9999-12-31T23:59:59Z")[1] == {"since": "9999-12-31T23:59:59+00:00", "outcomes": []}
    recent = datetime.now(UTC) - timedelta(hours=1)
    status, body = listing(since=recent.strftime("%Y-%m-%dT%H:%M:%S+00:00"))
    assert status == 200 and body["outcomes"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    since=st.one_of(st.none(), st.text(max_size=40), st.datetimes().map(str)),
    limit=st.one_of(st.none(), st.text(max_size=8)),
)
def test_get_remediations_never_fails_on_its_query(
    world: World, since: str | None, limit: str | None
) -> None:
    params = {k: v for k, v in (("since", since), ("limit", limit)) if v is not None}

    status, body = listing(**params)

    assert status in (200, 400), body
    if status == 400:
        assert_invalid_parameter(status, body)


# -- telemetry, end to end ----------------------------------------------------------------------
CHILD = GUARD + textwrap.dedent(
    """
    from tests.functions.host import event_datum, invoke

    invoke("keyvault_events", event_datum(json.loads(sys.argv[1])))
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
    reasons = [e["properties"].get("reason") for e in events]
    assert targets == sorted((ds, "updated") for ds in w.datasource_ids), reasons
    assert {e["properties"]["trigger"] for e in events} == {"eventgrid"}
    assert {e["properties"]["correlationId"] for e in events} == {event["id"]}
    assert {e["properties"]["secretVersion"] for e in events if e["properties"]["datasourceId"]} == {version}
    assert sb.appinsights.dependencies(), "outgoing calls are reported as dependencies"
    everything = json.dumps(sb.appinsights.envelopes)
    assert w.secret not in everything and json.dumps(w.secret)[1:-1] not in everything
    # Fabric is only read (the data sources' current privacy level and encryption).
    assert not [
        r
        for r in sb.requests.all()
        if r.service not in ("entra", "keyvault", "powerbi", "appinsights")
        and (r.service, r.method) != ("fabric", "GET")
    ]
