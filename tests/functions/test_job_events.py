"""Fabric job events, end to end: the sandbox raises them for the refreshes it runs (as Microsoft's
table describes them, ``sb.job_events``), and they reach the Functions app through
``azure.functions``' own converters, as the worker would build them: an Eventstream custom
endpoint's Event Hubs batches (``job_events``, ``cardinality=many``), an Event Grid subscription
(``refresh_events``), or an Activator → Power Automate flow posting them to ``/api/remediate``.
No broker is needed to prove the product's side; what Fabric really sends is the sandbox's
reading of Microsoft's documentation (see ``sandbox/job_events.py``).

Whatever the path, a job event only starts the dataset heal a ``PowerBI.RefreshFailed`` starts:
the refresh history is read before anything changes (the event has no reason), and the safety
core decides the rest. The sandbox's time is a ``ManualClock``: nothing here sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remediation.edges import service as service_module
from sandbox import ManualClock, Sandbox
from sandbox.recorder import RecordedRequest
from tests.functions.host import (
    FUNCTIONS,
    HttpAnswer,
    event_datum,
    eventhub_datum,
    http_datum,
    invoke,
    timer_datum,
)
from tests.support.world import World, build_world

pytestmark = pytest.mark.sandbox
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock() -> ManualClock:
    """The sandbox's time stands still (refreshes end when read; nothing waits); it starts at the
    wall clock's now, which the Functions app's service keeps reading, so the two agree."""
    return ManualClock(start=time.time())


@pytest.fixture
def world(clock: ManualClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[World]:
    """Two datasets on two data sources of one account, in a workspace on a Fabric capacity; the
    embedded mode (no storage account: commands run inline)."""
    sb = Sandbox(clock=clock).start()
    try:
        w = build_world(sb, sources=2, dedicated_capacity=True)
        env = w.env(tmp_path / "ledger.sqlite")
        env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
        monkeypatch.delenv("AzureWebJobsStorage", raising=False)
        service_module.reset_service()
        yield w
    finally:
        service_module.reset_service()
        sb.stop()


# -- helpers ----------------------------------------------------------------------------------------
def patches(sb: Sandbox) -> list[RecordedRequest]:
    return sb.requests.find("powerbi.update_datasource")


def writes(sb: Sandbox) -> list[RecordedRequest]:
    return [r for r in sb.requests.all() if r.service in ("powerbi", "fabric") and r.method != "GET"]


def refreshes_started(sb: Sandbox) -> list[RecordedRequest]:
    return sb.requests.find("powerbi.refresh_dataset")


def patched_datasources(sb: Sandbox) -> list[str]:
    return sorted(p.path.rsplit("/", 1)[-1] for p in patches(sb))


def broken(world: World) -> list[dict[str, Any]]:
    """A rotation the Power BI data sources missed, and a scheduled refresh of each dataset that
    fails on it: the ``ItemJobFailed`` events the sandbox raised for them, one per dataset."""
    world.rotate()
    world.sb.job_events.take()
    world.fail_scheduled_refreshes()
    failed = world.sb.job_events.take(failed_only=True)
    assert [e["data"]["itemId"] for e in failed] == world.dataset_ids
    return failed


def deliver(bodies: list[bytes], *, data_type: str = "collection_bytes") -> None:
    """One Event Hubs batch, as the host hands it to the worker (``cardinality=many``)."""
    datum, metadata = eventhub_datum(bodies, data_type=data_type)
    invoke("job_events", datum, metadata)


def encoded(*events: dict[str, Any]) -> list[bytes]:
    return [json.dumps(e).encode() for e in events]


def post(body: Any) -> HttpAnswer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer: HttpAnswer = invoke("remediate", http_datum("POST", "remediate", raw))
    return answer


def healed(world: World, index: int) -> bool:
    return (
        world.stored_secret(world.datasources[index]) == world.secret
        and world.sb.powerbi.history(world.datasets[index])[0].status == "Completed"
    )


def history_read_before_any_write(world: World, index: int) -> None:
    """The heal of dataset ``index`` read its refresh history before it changed anything of it: its
    data source's credentials, its schedule, a refresh."""
    dataset_id, datasource_id = world.dataset_ids[index], world.datasource_ids[index]
    calls = [r for r in world.sb.requests.all() if r.service in ("powerbi", "fabric")]
    mine = [i for i, r in enumerate(calls) if dataset_id in r.path.lower() or datasource_id in r.path.lower()]
    writes_ = [i for i in mine if calls[i].method != "GET"]
    reads = [i for i in mine if calls[i].route == "powerbi.refresh_history"]
    assert writes_ and reads and reads[0] < writes_[0], [(calls[i].method, calls[i].route) for i in mine]


# -- the sandbox's job events -------------------------------------------------------------------------
def test_the_sandbox_raises_job_events_shaped_as_microsoft_documents_them(world: World) -> None:
    world.rotate()
    world.sb.powerbi.start_refresh(world.datasets[0])
    world.sb.powerbi.settle()

    created, failed = world.sb.job_events.take()

    assert (created["type"], failed["type"]) == (
        "Microsoft.Fabric.ItemJobCreated",
        "Microsoft.Fabric.ItemJobFailed",
    )
    assert failed["specversion"] == "1.0" and failed["source"] == world.sb.entra.tenant_id
    refresh = world.sb.powerbi.history(world.datasets[0])[0]
    assert failed["subject"] == (
        f"/workspaces/{world.workspace_id}/items/{world.dataset_ids[0]}/jobs/instances/{refresh.request_id}"
    )
    data = failed["data"]
    assert {k: data[k] for k in ("itemId", "itemKind", "workspaceId", "jobInstanceId", "jobStatus")} == {
        "itemId": world.dataset_ids[0],
        "itemKind": "SemanticModel",
        "workspaceId": world.workspace_id,
        "jobInstanceId": refresh.request_id,
        "jobStatus": "Failed",
    }
    assert data["jobInovkeType"] == "Scheduled"  # Microsoft's spelling
    assert not {"error", "errorCode", "reason", "serviceExceptionJson"} & set(data)  # no reason


def test_a_workspace_on_shared_capacity_raises_no_job_events(clock: ManualClock) -> None:
    with Sandbox(clock=clock) as sb:
        w = build_world(sb, sources=1)
        w.fail_scheduled_refreshes()
        assert sb.job_events.take() == []


# -- the Event Hubs function (an Eventstream custom endpoint) ----------------------------------------
@pytest.mark.parametrize("data_type", ["collection_bytes", "collection_string"])
def test_a_job_event_batch_heals_each_failed_dataset_reading_its_history_first(
    world: World, data_type: str
) -> None:
    failed = broken(world)
    created = [e for e in world.sb.job_events.events if e["type"].endswith("ItemJobCreated")]
    world.sb.requests.clear()

    deliver(encoded(*created[:2], *failed), data_type=data_type)

    assert patched_datasources(world.sb) == sorted(world.datasource_ids)
    assert healed(world, 0) and healed(world, 1)
    history_read_before_any_write(world, 0)
    history_read_before_any_write(world, 1)
    assert world.account.failures_of(world.secret) == 0


def test_bad_entries_of_a_batch_are_skipped_and_logged_and_the_rest_handled(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    failed = broken(world)
    pipeline = json.loads(json.dumps(failed[1]))
    pipeline["id"] = "pipeline-run"
    pipeline["data"].update(itemKind="Pipeline", itemId="0f0f0f0f-0000-4000-8000-000000000001")
    pipeline["data"]["jobInstanceId"] = "0f0f0f0f-0000-4000-8000-000000000002"
    no_ids = json.loads(json.dumps(failed[1]))
    no_ids["id"] = "no-ids"
    no_ids["subject"] = "elsewhere"
    del no_ids["data"]["itemId"]
    bad = [b"\xff\xfe not utf-8", b"{not json", b'{"id": "x"}', b"[]", json.dumps(no_ids).encode()]

    deliver([*bad[:3], *encoded(pipeline, failed[0]), *bad[3:]])

    assert patched_datasources(world.sb) == [world.datasource_ids[0]]  # the pipeline's is ignored
    assert healed(world, 0) and not healed(world, 1)
    skipped = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "skipped" in r.getMessage()
    ]
    assert len(skipped) == 5, skipped
    assert any("message 0 is not UTF-8" in m for m in skipped)
    assert any("no id or no eventType/type" in m for m in skipped)
    assert any("must be GUIDs" in m for m in skipped)


def test_a_redelivered_batch_and_the_same_job_by_another_path_heal_once(world: World) -> None:
    failed = broken(world)
    event = failed[0]
    batch = encoded(event)

    deliver(batch)
    assert patched_datasources(world.sb) == [world.datasource_ids[0]] and healed(world, 0)
    world.sb.requests.clear()

    deliver(batch)  # the host restarted before its checkpoint: the batch comes again
    again = {**event, "id": "another-delivery-id", "type": "Microsoft.Fabric.JobEvents.ItemJobFailed"}
    deliver(encoded(again))  # the same job's failure, under the subscription's type spelling
    invoke("refresh_events", event_datum(again))  # and through an Event Grid subscription

    assert [r for r in world.sb.requests.all() if r.service in ("powerbi", "fabric")] == []  # not even a read


def test_a_job_failure_that_is_not_a_credential_failure_changes_no_credential(world: World) -> None:
    world.rotate()
    world.sources[0].reachable = False  # the gateway cannot reach the source: no credential is at fault
    world.sb.job_events.take()
    world.fail_scheduled_refreshes()
    failed = world.sb.job_events.take(failed_only=True)
    world.sb.requests.clear()

    deliver(encoded(failed[0]))

    assert writes(world.sb) == []
    assert world.sb.requests.find("powerbi.refresh_history")  # it looked, and left it
    assert world.sb.powerbi.history(world.datasets[0])[0].status == "Failed"


def test_job_events_that_are_not_failures_or_not_of_semantic_models_change_nothing(world: World) -> None:
    world.sb.job_events.take()
    world.fail_scheduled_refreshes()  # nothing rotated: every refresh completes
    succeeded = world.sb.job_events.take()
    assert {e["type"] for e in succeeded} == {
        "Microsoft.Fabric.ItemJobCreated",
        "Microsoft.Fabric.ItemJobSucceeded",
    }
    world.rotate()
    world.fail_scheduled_refreshes()
    notebook = world.sb.job_events.take(failed_only=True)[0]
    notebook["data"]["itemKind"] = "Notebook"
    world.sb.requests.clear()

    deliver(encoded(*succeeded, notebook))

    assert writes(world.sb) == [] and world.sb.requests.all() == []


@pytest.mark.parametrize("kind", ["Dataset", "semanticmodel"])
def test_the_other_spellings_of_a_semantic_models_item_kind_are_acted_on(world: World, kind: str) -> None:
    world.sb.job_events.item_kind = kind
    failed = broken(world)

    deliver(encoded(failed[1]))

    assert patched_datasources(world.sb) == [world.datasource_ids[1]]


# -- Event Grid ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["Microsoft.Fabric.", "Microsoft.Fabric.JobEvents."])
def test_a_job_event_through_the_event_grid_converter_heals_the_dataset(world: World, prefix: str) -> None:
    world.sb.job_events.type_prefix = prefix
    failed = broken(world)
    world.sb.requests.clear()

    invoke("refresh_events", event_datum(failed[1]))  # a CloudEvents 1.0 subscription

    assert patched_datasources(world.sb) == [world.datasource_ids[1]]
    assert healed(world, 1) and not healed(world, 0)
    history_read_before_any_write(world, 1)


# -- the sweep, when no event comes --------------------------------------------------------------------
def test_the_sweep_still_heals_the_datasets_when_the_job_events_never_come(world: World) -> None:
    broken(world)  # the events are lost: no Eventstream, a region without Fabric events, ...

    invoke("sweep", timer_datum())

    assert patched_datasources(world.sb) == sorted(world.datasource_ids)
    assert healed(world, 0) and healed(world, 1)


# -- HTTP (an Activator rule -> Power Automate "HTTP" -> POST /api/remediate) ---------------------------
def test_post_remediate_takes_one_job_event_or_a_batch_and_dedupes_them(world: World) -> None:
    failed = broken(world)

    one = post(failed[0])
    assert one.status == 200
    (entry,) = one.json()["events"]
    assert (entry["id"], entry["kind"], entry["status"]) == (failed[0]["id"], "refresh-failed", "done")
    assert entry["report"]["datasets"][0]["action"] == "refreshed"
    assert world.secret not in one.body.decode()

    batch = post([failed[0], failed[1]])
    assert batch.status == 200
    assert [e["status"] for e in batch.json()["events"]] == ["duplicate", "done"]
    assert patched_datasources(world.sb) == sorted(world.datasource_ids)
    assert healed(world, 0) and healed(world, 1)


def test_post_remediate_refuses_a_batch_with_an_unreadable_event_and_does_nothing(world: World) -> None:
    failed = broken(world)
    world.sb.requests.clear()

    bad_id = {**failed[1], "id": "an id with spaces"}
    for body in (
        [failed[0], {"id": "x"}],
        [failed[0], 5],
        {"type": "Microsoft.Fabric.ItemJobFailed"},
        [failed[0], bad_id],
    ):
        answer = post(body)
        assert answer.status == 400, answer.body
        assert answer.json()["error"]["code"] in ("InvalidEvent", "InvalidJson")

    assert world.sb.requests.all() == []


class FakeQueue:
    """The deployed app's work queue, as far as the functions see it."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, command: Any, *, delay: float = 0.0) -> None:
        self.sent.append(command)

    def close(self) -> None:
        pass


def test_with_a_work_queue_job_events_are_queued_once_per_job(world: World) -> None:
    failed = broken(world)
    service = service_module.get_service()
    queue = FakeQueue()
    service.work_queue = queue  # type: ignore[assignment]

    deliver(encoded(failed[0]))
    answer = post([{**failed[0], "id": "by-http"}, failed[1]])

    assert [(c.kind.value, c.dataset_id, c.trigger) for c in queue.sent] == [
        ("dataset", world.dataset_ids[0], "eventstream"),
        ("dataset", world.dataset_ids[1], "http-event"),
    ]
    entries = answer.json()["events"]
    assert [e["status"] for e in entries] == ["duplicate", "queued"]
    assert entries[1]["statusUrl"].endswith(f"/api/remediations/{failed[1]['id']}")
    assert writes(world.sb) == []


# -- the function exists only with its connection -------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import json, os, sys
    found = {}
    for name, env in json.loads(sys.argv[1]).items():
        for key in [k for k in os.environ if k.startswith("REMEDIATION_EVENTSTREAM")]:
            del os.environ[key]
        os.environ.update(env)
        sys.modules.pop("function_app", None)
        import function_app
        found[name] = sorted(f.get_function_name() for f in function_app.app.get_functions())
    print(json.dumps(found))
    """
)


def test_the_event_hubs_function_exists_only_when_its_connection_is_set() -> None:
    variants = {
        "absent": {},
        "empty": {"REMEDIATION_EVENTSTREAM_CONNECTION": "  "},
        "connection string": {"REMEDIATION_EVENTSTREAM_CONNECTION": "@Microsoft.KeyVault(SecretUri=x)"},
        "identity": {
            "REMEDIATION_EVENTSTREAM_CONNECTION__fullyQualifiedNamespace": "es-1.servicebus.windows.net"
        },
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATION_EVENTSTREAM")}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(variants)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert child.returncode == 0, child.stderr[-3000:]
    found = json.loads(child.stdout.strip().splitlines()[-1])
    always = sorted(set(FUNCTIONS) - {"job_events"})
    assert found == {
        "absent": always,
        "empty": always,
        "connection string": sorted([*always, "job_events"]),
        "identity": sorted([*always, "job_events"]),
    }
