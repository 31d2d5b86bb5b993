"""The CLI and Fabric job events, through the sandbox: ``events check`` says which watched semantic
models job events could cover (a workspace on a capacity) and which rely on the sweep alone
(shared capacity), with the last refresh-failure event the app received for each, read-only; and
``replay`` of job events heals each job's dataset once."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remediation.config.settings import Settings
from remediation.edges.cli import main
from remediation.edges.service import RemediationService
from sandbox import ManualClock, Sandbox
from tests.support.world import World, build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


def run(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), environ=env, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    """A sandbox whose time stands still (refreshes end when read), from the wall clock's now."""
    with Sandbox(clock=ManualClock(start=time.time())) as sandbox:
        yield sandbox


@pytest.fixture
def tenant(sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Two watched workspaces, one on a Fabric capacity (two models), one on shared capacity (one
    model); a third bound world whose workspace is not watched; an unbound model."""
    fabric = build_world(sb, sources=2, dedicated_capacity=True)
    pro = build_world(sb, secret_name="pro-pw", binding_name="pro", prefix="pro")
    elsewhere = build_world(
        sb, secret_name="else-pw", binding_name="else", prefix="else", dedicated_capacity=True
    )
    loose = sb.sources.add("loose-src", username="svc_loose", secret="x")
    sb.powerbi.add_dataset(
        fabric.workspace,
        "unbound model",
        [sb.powerbi.add_datasource(fabric.gateway, loose)],
        owner=fabric.app.client_id,
    )
    document = {
        "bindings": [fabric.binding(), pro.binding(), elsewhere.binding()],
        "watch": {"workspaces": [fabric.workspace.id, pro.workspace.id]},
    }
    env = fabric.env(tmp_path / "ledger.sqlite", REMEDIATION_BINDINGS=json.dumps(document))
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING")
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    for key, value in env.items():  # the SDKs read the CA bundle from the process environment
        monkeypatch.setenv(key, value)
    return {"fabric": fabric, "pro": pro, "elsewhere": elsewhere, "env": env}


def models(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    code, out, err = run(env, "events", "check", "--json")
    assert code == 0, err
    document = json.loads(out)
    return {m["datasetId"]: m for m in document["models"]} | {"summary": document["summary"]}


def test_events_check_says_which_models_job_events_could_cover_and_which_rely_on_the_sweep(
    sb: Sandbox, tenant: dict[str, Any]
) -> None:
    fabric: World = tenant["fabric"]
    pro: World = tenant["pro"]
    before = len(sb.requests.all())

    found = models(tenant["env"])

    summary = found.pop("summary")
    assert sorted(found) == sorted([*fabric.dataset_ids, *pro.dataset_ids])  # watched and bound only
    assert summary == {"models": 3, "jobEventsPossible": 2, "sweepOnly": 1}
    for dataset_id in fabric.dataset_ids:
        assert found[dataset_id]["capacity"] == "dedicated" and found[dataset_id]["jobEvents"] == "possible"
        assert found[dataset_id]["bindings"] == [fabric.binding_name]
        assert found[dataset_id]["lastEvent"] is None
    (pro_model,) = pro.dataset_ids
    assert (found[pro_model]["capacity"], found[pro_model]["jobEvents"]) == ("shared", "sweep-only")
    assert "sweep" in found[pro_model]["reason"]
    writes = [r for r in sb.requests.all()[before:] if r.service != "entra" and r.method != "GET"]
    assert writes == []  # read-only


def test_a_job_event_received_shows_as_the_models_last_event(sb: Sandbox, tenant: dict[str, Any]) -> None:
    fabric: World = tenant["fabric"]
    fabric.rotate()
    sb.job_events.take()
    fabric.fail_scheduled_refreshes()
    failed = sb.job_events.take(failed_only=True)
    service = RemediationService.from_settings(Settings.from_env(tenant["env"]))
    try:
        service.handle_event_batch([json.dumps(failed[0]).encode()], trigger="eventstream")
    finally:
        service.close()

    found = models(tenant["env"])

    assert found[fabric.dataset_ids[0]]["lastEvent"]["trigger"] == "eventstream"
    assert found[fabric.dataset_ids[1]]["lastEvent"] is None  # its failure is the sweep's
    code, table, _ = run(tenant["env"], "events", "check")
    assert code == 0
    assert (
        "3 watched semantic models: 2 could be covered by Fabric job events, 1 rely on the sweep alone."
        in table
    )
    assert "(eventstream)" in table and "none seen" in table


def test_replaying_a_jobs_failure_under_two_event_ids_heals_it_once(
    sb: Sandbox, tenant: dict[str, Any], tmp_path: Path
) -> None:
    fabric: World = tenant["fabric"]
    fabric.rotate()
    sb.job_events.take()
    fabric.fail_scheduled_refreshes()
    failed = sb.job_events.take(failed_only=True)[0]
    again = {**failed, "id": "another-id", "type": "Microsoft.Fabric.JobEvents.ItemJobFailed"}
    path = tmp_path / "events.json"
    path.write_text(json.dumps([failed, again]), encoding="utf-8")

    code, out, err = run(tenant["env"], "replay", "--json", str(path))
    assert code == 0, err
    assert [d["dataset_id"] for d in json.loads(out)["datasets"]] == [fabric.dataset_ids[0]]  # one heal
    code, out, err = run(tenant["env"], "replay", "--json", str(path))  # again: both already handled

    assert code == 0, err
    assert json.loads(out)["datasets"] == []
    assert len(sb.requests.find("powerbi.update_datasource")) == 1
    assert len(sb.requests.find("powerbi.refresh_dataset")) == 1
    assert sb.powerbi.history(fabric.datasets[0])[0].status == "Completed"
