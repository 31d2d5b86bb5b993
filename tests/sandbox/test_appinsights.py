"""The Application Insights ingestion stand-in, proven with the real azure-monitor-opentelemetry.

``configure_azure_monitor`` installs process-global providers, so it runs in a child process.
Settings that keep the distro (1.8.11, exporter 1.0.0b58) off Microsoft's hosts and quick to exit,
all needed by the product too:
- ``APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL=true``: no usage statistics to Microsoft's ingestion.
- ``APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED=true``: no "OneSettings" poll of settings.sdk.monitor.azure.com.
- ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=azure_app_service``: the default adds ``azure_vm``, which calls
  the instance metadata service at 169.254.169.254.
- ``enable_live_metrics=False`` (default True since 1.8; the sandbox's connection string routes it
  here anyway) and ``enable_performance_counters=False`` (their exporter delays exit by ~30 s).
- ``sampling_ratio=1.0``: the default rate-limited sampler (5 spans/s) can drop the first span.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import requests

from sandbox import Sandbox, specs
from sandbox.appinsights import INSTRUMENTATION_KEY
from tests.support.network_guard import GUARD

pytestmark = pytest.mark.sandbox

CHILD = GUARD + textwrap.dedent(
    """

    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry import trace
    from opentelemetry._logs import get_logger_provider
    from opentelemetry.metrics import get_meter_provider

    configure_azure_monitor(
        connection_string=os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"],
        disable_offline_storage=True,
        enable_live_metrics=False,
        enable_performance_counters=False,
        sampling_ratio=1.0,
        logger_name="remediation",
    )
    log = logging.getLogger("remediation")
    log.setLevel(logging.INFO)
    with trace.get_tracer("remediation").start_as_current_span("heal-secret"):
        log.info("CredentialRemediation", extra={
            "microsoft.custom_event.name": "CredentialRemediation",
            "outcome": "healed", "secretName": "sql-sales-password", "targets": "2",
        })
        log.warning("a plain trace line")
    trace.get_tracer_provider().force_flush()
    get_logger_provider().force_flush()
    get_meter_provider().force_flush()
    import threading
    threads = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
    print(json.dumps({"attempts": attempts, "threads": threads}))
    """
)


def _envelope(name: str = "Microsoft.ApplicationInsights.Event", **changes: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "ver": 1,
        "name": name,
        "time": "2026-01-01T00:00:00.000000Z",
        "sampleRate": 100.0,
        "iKey": INSTRUMENTATION_KEY,
        "tags": {"ai.cloud.role": "healer"},
        "data": {"baseType": "EventData", "baseData": {"ver": 2, "name": "Probe", "properties": {"a": "b"}}},
    }
    envelope.update(changes)
    return envelope


def _post(sb: Sandbox, body: bytes, **headers: str) -> requests.Response:
    return requests.post(
        f"{sb.url}/v2.1/track", data=body, timeout=10, headers={"Content-Type": "application/json", **headers}
    )


#: What the product's environment must add to ``sb.env()`` for the distro to stay on this machine.
OFFLINE_DISTRO_ENV = {
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_app_service",
}


#: The exporter threads that end with the child: they flush once at exit, then stop.
EXPORT_THREADS = {
    "OtelBatchLogRecordProcessor",
    "OtelBatchSpanRecordProcessor",
    "OtelPeriodicExportingMetricReader",
}


def _run_child(env: dict[str, str]) -> dict[str, list[str]]:
    """Run :data:`CHILD` with ``env`` over this process's environment: its blocked network
    ``attempts`` and the ``threads`` alive at its end (besides the main one)."""
    child = subprocess.run(
        [sys.executable, "-c", CHILD],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result: dict[str, list[str]] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_exporter_delivers_a_custom_event_and_a_span_to_the_sandbox_only(
    sb: Sandbox, sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", raising=False)

    child = _run_child({**sandbox_env, **OFFLINE_DISTRO_ENV})

    assert child["attempts"] == []
    # Quick to exit: only the batch processors and metric readers are left, which flush once at
    # exit; no live metrics, offline-storage maintenance or settings poller keeps the process.
    assert set(child["threads"]) <= EXPORT_THREADS, child["threads"]
    [event] = sb.appinsights.wait_for(lambda: sb.appinsights.custom_events("CredentialRemediation"))
    expected = {"outcome": "healed", "secretName": "sql-sales-password", "targets": "2"}
    assert expected.items() <= event["properties"].items()
    assert "heal-secret" in [d["name"] for d in sb.appinsights.dependencies()]
    assert "a plain trace line" in [t["message"] for t in sb.appinsights.traces()]
    for envelope in sb.appinsights.envelopes:
        specs.validate(specs.APPINSIGHTS, "TelemetryEnvelope", envelope)
    [event_envelope] = [e for e in sb.appinsights.envelopes if e["data"]["baseType"] == "EventData"]
    specs.validate(specs.APPINSIGHTS, "EventData", event_envelope["data"]["baseData"])
    # Nothing but the ingestion endpoint was called, and every batch was accepted whole.
    assert {(r.route, r.method, r.path, r.status) for r in sb.requests.all()} == {
        ("appinsights.track", "POST", "/v2.1/track", 200)
    }


def test_track_accepts_json_arrays_ndjson_and_gzip(sb: Sandbox, sandbox_env: dict[str, str]) -> None:
    array = _post(sb, json.dumps([_envelope(), _envelope()]).encode())
    ndjson = _post(
        sb,
        "\n".join(json.dumps(_envelope()) for _ in range(3)).encode(),
        **{"Content-Type": "application/x-json-stream"},
    )
    zipped = _post(sb, gzip.compress(json.dumps([_envelope()]).encode()), **{"Content-Encoding": "gzip"})

    assert [r.status_code for r in (array, ndjson, zipped)] == [200, 200, 200]
    assert ndjson.json() == {"itemsReceived": 3, "itemsAccepted": 3, "errors": []}
    for response in (array, ndjson, zipped):
        specs.validate(specs.APPINSIGHTS, "TrackResponse", response.json())
    assert len(sb.appinsights.custom_events("Probe")) == 6


def test_track_reports_rejected_items_one_by_one(sb: Sandbox, sandbox_env: dict[str, str]) -> None:
    no_time = _envelope()
    del no_time["time"]
    no_event_name = _envelope(data={"baseType": "EventData", "baseData": {"ver": 2}})

    partial = _post(sb, json.dumps([_envelope(), no_time, no_event_name]).encode())
    none = _post(sb, json.dumps([no_time]).encode())
    wrong_key = _post(sb, json.dumps([_envelope(iKey="11111111-1111-1111-1111-111111111111")]).encode())
    garbage = _post(sb, b"{not json")

    assert partial.status_code == 206
    assert partial.json()["itemsReceived"] == 3 and partial.json()["itemsAccepted"] == 1
    assert [(e["index"], e["statusCode"]) for e in partial.json()["errors"]] == [(1, 400), (2, 400)]
    assert none.status_code == 400 and none.json()["itemsAccepted"] == 0
    assert wrong_key.status_code == 400
    assert wrong_key.json()["errors"][0]["message"] == "Invalid instrumentation key"
    assert garbage.status_code == 400 and garbage.json()["itemsReceived"] == 0
    for response in (partial, none, wrong_key, garbage):
        specs.validate(specs.APPINSIGHTS, "TrackResponse", response.json())
    assert len(sb.appinsights.envelopes) == 1


def test_queries_filter_by_kind_and_clear_forgets(sb: Sandbox, sandbox_env: dict[str, str]) -> None:
    message = _envelope(
        "Microsoft.ApplicationInsights.Message",
        data={"baseType": "MessageData", "baseData": {"ver": 2, "message": "hello", "severityLevel": 1}},
    )
    _post(sb, json.dumps([_envelope(), message]).encode())

    assert [e["name"] for e in sb.appinsights.custom_events()] == ["Probe"]
    assert sb.appinsights.custom_events("Other") == []
    assert [t["message"] for t in sb.appinsights.traces()] == ["hello"]
    assert sb.appinsights.dependencies() == [] and sb.appinsights.requests() == []
    sb.appinsights.clear()
    assert sb.appinsights.envelopes == []
    with pytest.raises(TimeoutError):
        sb.appinsights.wait_for(sb.appinsights.custom_events, timeout=0.1)


def test_connection_string_points_ingestion_at_the_sandbox(sb: Sandbox) -> None:
    parts = dict(p.split("=", 1) for p in sb.appinsights.connection_string.split(";"))

    assert parts["InstrumentationKey"] == INSTRUMENTATION_KEY
    assert parts["IngestionEndpoint"] == sb.url + "/"
    assert parts["LiveEndpoint"] == sb.url + "/"


@pytest.mark.slow
def test_distro_defaults_would_leave_the_machine(
    sb: Sandbox, sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why :data:`OFFLINE_DISTRO_ENV` exists (and proof that the child's network guard works)."""
    for name in OFFLINE_DISTRO_ENV:
        monkeypatch.delenv(name, raising=False)
    defaults = {k: v for k, v in sandbox_env.items() if k not in OFFLINE_DISTRO_ENV}

    child = _run_child(defaults)
    attempts = child["attempts"]

    assert "dns 169.254.169.254" in attempts  # the azure_vm resource detector asks the VM's IMDS
    assert "ConfigurationWorker" in child["threads"]  # the OneSettings poller, alive to the end
    assert sb.appinsights.custom_events("CredentialRemediation")  # telemetry itself still came here
