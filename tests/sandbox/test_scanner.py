"""The inventory's admin scanner path through the sandbox: built in a few calls, the same records
as the per-dataset path, the fallback when the admin APIs are refused (and the refusal
remembered), scans that fail or do not finish in time, and the sandbox's strictness."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import requests

from remediation.inventory.scanner import REFUSAL_MARKER, REFUSAL_SECONDS
from remediation.ledger import DatasetRecord
from remediation.reconciler.healer import Action, Report
from sandbox import Sandbox, specs
from sandbox.entra import POWERBI_AUDIENCE
from tests.sandbox.test_inventory import add_unbound, calls, deferred, history_reads, mark
from tests.support.harness import Harness, Make
from tests.support.world import build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


def allow_admin(h: Harness) -> None:
    """The tenant setting on, the app in its security group, no admin-consent permission."""
    h.sb.powerbi.admin_principals.add(h.world.app.client_id)


def scanner_calls(sb: Sandbox, since: int) -> dict[str, int]:
    return {route: calls(sb, since, route) for route in ("scan_get_info", "scan_status", "scan_result")}


def sweep(h: Harness, **kwargs: Any) -> tuple[Report, list[str]]:
    """A sweep, and what it said as it went (the CLI prints it)."""
    lines: list[str] = []
    return h.healer.sweep(progress=lines.append, **kwargs), lines


def comparable(records: list[DatasetRecord]) -> list[tuple[Any, ...]]:
    """Everything of a record but when it was learnt."""
    return sorted((r.workspace_id, r.dataset_id, r.fingerprint, r.sources, r.refreshable) for r in records)


def test_the_scanner_builds_the_inventory_in_a_few_calls_with_the_records_of_the_per_dataset_path(
    make: Make,
) -> None:
    h = make(sources=3)
    others = add_unbound(h, 40)
    allow_admin(h)
    h.sb.powerbi.scan_polls = 2
    ledger = h.runtime.ledger

    since = mark(h.sb)
    report, lines = sweep(h)
    assert report.exit_code == 0
    assert calls(h.sb, since, "get_datasources") == 0
    # two polls answer Running, the third Succeeded
    assert scanner_calls(h.sb, since) == {"scan_get_info": 1, "scan_status": 3, "scan_result": 1}
    assert calls(h.sb, since, "get_datasets") == 1
    assert sorted(history_reads(h.sb, since)) == sorted(h.world.dataset_ids)  # only the bound ones
    by_scanner = ledger.inventory()
    assert {r.dataset_id for r in by_scanner} == {d.id for d in [*h.world.datasets, *others]}
    assert any("inventory (admin scanner): 43 datasets, 3 use bound data sources" in line for line in lines)

    ledger.drop_inventory(h.world.workspace_id, [r.dataset_id for r in by_scanner])
    other = h.another_instance(REMEDIATION_INVENTORY_SOURCE="per-dataset")
    since = mark(h.sb)
    assert other.healer.sweep().exit_code == 0
    assert calls(h.sb, since, "get_datasources") == 43 and scanner_calls(h.sb, since)["scan_get_info"] == 0
    assert comparable(ledger.inventory()) == comparable(by_scanner)


def test_a_steady_sweep_on_the_scanner_path_scans_nothing_and_stays_within_the_bound(make: Make) -> None:
    h = make(sources=3)
    add_unbound(h, 20)
    allow_admin(h)
    h.healer.sweep()

    since = mark(h.sb)
    assert h.healer.sweep().exit_code == 0
    watched, bound = 1, 3
    assert calls(h.sb, since) == watched + bound <= 1 + watched + 2 * bound + 5
    assert scanner_calls(h.sb, since) == {"scan_get_info": 0, "scan_status": 0, "scan_result": 0}


def test_a_new_dataset_using_a_bound_source_is_picked_up_by_the_next_sweep_on_the_scanner_path(
    make: Make,
) -> None:
    h = make(sources=2)
    add_unbound(h, 5)
    allow_admin(h)
    h.healer.sweep()
    w = h.world
    newcomer = h.sb.powerbi.add_dataset(w.workspace, "new model", [w.datasources[1]], owner=w.app.client_id)

    since = mark(h.sb)
    h.healer.sweep()
    assert calls(h.sb, since, "get_datasources") == 0
    assert scanner_calls(h.sb, since)["scan_get_info"] == 1
    assert newcomer.id in history_reads(h.sb, since)
    (record,) = [r for r in h.runtime.ledger.inventory() if r.dataset_id == newcomer.id]
    assert [s.key for s in record.sources] == [(w.gateway_id, w.datasource_ids[1])]


def test_more_than_a_hundred_workspaces_are_scanned_in_batches_of_a_hundred(make: Make, sb: Sandbox) -> None:
    world = build_world(sb, sources=1)
    empty = [sb.powerbi.add_workspace(f"empty {i}", members=[world.app.client_id]) for i in range(120)]
    watch = [world.workspace.id, *(e.id for e in empty)]
    bindings = {"bindings": [world.binding()], "watch": {"workspaces": watch}}
    h = make(world, env={"REMEDIATION_BINDINGS": json.dumps(bindings)})
    allow_admin(h)

    since = mark(sb)
    assert h.healer.sweep().exit_code == 0
    assert scanner_calls(sb, since)["scan_get_info"] == 1  # only one workspace has datasets to learn
    for i, workspace in enumerate(empty):
        source = sb.sources.add(f"more-{i}", username="u", secret="x", lockout_threshold=None)
        sb.powerbi.add_dataset(workspace, f"model {i}", [sb.powerbi.add_datasource(world.gateway, source)])
    since = mark(sb)
    assert h.healer.sweep().exit_code == 0
    assert scanner_calls(sb, since) == {"scan_get_info": 2, "scan_status": 4, "scan_result": 2}  # 100 + 20
    assert calls(sb, since, "get_datasources") == 0
    assert len(h.runtime.ledger.inventory()) == 121


@pytest.mark.parametrize("status", [401, 403])
def test_refused_admin_apis_fall_back_per_dataset_and_the_refusal_is_remembered(
    make: Make, status: int
) -> None:
    now = [time.time()]
    h = make(sources=2, clock=lambda: now[0])
    add_unbound(h, 3)
    h.sb.powerbi.admin_refusal_status = status  # admin APIs are not allowed by default

    since = mark(h.sb)
    report, lines = sweep(h)
    assert report.exit_code == 0
    assert [r.status for r in h.sb.requests.all()[since:] if r.route == "powerbi.scan_get_info"] == [status]
    assert calls(h.sb, since, "get_datasources") == 5  # the per-dataset path, every dataset
    assert any("inventory (per-dataset)" in line for line in lines)
    until = float(h.runtime.ledger.marker(REFUSAL_MARKER) or "nan")
    assert until == pytest.approx(now[0] + REFUSAL_SECONDS)

    w = h.world
    h.sb.powerbi.add_dataset(w.workspace, "new model", [w.datasources[0]], owner=w.app.client_id)
    now[0] += REFUSAL_SECONDS / 2
    since = mark(h.sb)
    h.healer.sweep()
    assert calls(h.sb, since, "scan_get_info") == 0  # remembered: not asked again
    assert calls(h.sb, since, "get_datasources") == 1

    allow_admin(h)  # granted meanwhile: used once the refusal is forgotten
    h.sb.powerbi.add_dataset(w.workspace, "newer model", [w.datasources[1]], owner=w.app.client_id)
    now[0] += REFUSAL_SECONDS
    since = mark(h.sb)
    report, lines = sweep(h)
    assert scanner_calls(h.sb, since) == {"scan_get_info": 1, "scan_status": 2, "scan_result": 1}
    assert calls(h.sb, since, "get_datasources") == 0
    assert any("inventory (admin scanner)" in line for line in lines)


def test_admin_only_never_reads_per_dataset_and_defers_what_it_cannot_learn(make: Make) -> None:
    h = make(sources=2, env={"REMEDIATION_INVENTORY_SOURCE": "admin"})

    since = mark(h.sb)
    report, lines = sweep(h)  # refused: nothing is learnt, and that is said
    assert calls(h.sb, since, "get_datasources") == 0
    (tail,) = deferred(report)
    assert report.exit_code == 1 and "2 datasets new to the inventory were not read" in (tail.reason or "")
    assert h.runtime.ledger.marker(REFUSAL_MARKER) is None  # asked again next time

    allow_admin(h)
    since = mark(h.sb)
    report, lines = sweep(h)
    assert report.exit_code == 0 and deferred(report) == []
    assert calls(h.sb, since, "scan_get_info") == 1
    assert sorted(history_reads(h.sb, since)) == sorted(h.world.dataset_ids)


def test_a_failed_scan_falls_back_per_dataset_without_remembering_a_refusal(make: Make) -> None:
    h = make(sources=2)
    allow_admin(h)
    h.sb.powerbi.scan_outcome = "Failed"

    since = mark(h.sb)
    report, lines = sweep(h)
    assert report.exit_code == 0
    assert scanner_calls(h.sb, since) == {"scan_get_info": 1, "scan_status": 2, "scan_result": 0}
    assert calls(h.sb, since, "get_datasources") == 2
    assert any("inventory (per-dataset)" in line for line in lines)
    assert h.runtime.ledger.marker(REFUSAL_MARKER) is None


@pytest.mark.parametrize("source", ["auto", "admin"])
def test_a_scan_that_does_not_finish_in_time_falls_back_or_is_deferred_never_silently(
    make: Make, source: str
) -> None:
    now = [time.time()]
    h = make(sources=3, env={"REMEDIATION_INVENTORY_SOURCE": source}, clock=lambda: now[0])
    allow_admin(h)
    h.sb.powerbi.scan_polls = 10**6  # never finishes
    powerbi = h.runtime.powerbi
    poll = powerbi.get_scan_status

    def slow_poll(*args: Any, **kwargs: Any) -> Any:
        now[0] += 10.0  # each poll costs 10 s of the sweep's budget
        return poll(*args, **kwargs)

    powerbi.get_scan_status = slow_poll

    since = mark(h.sb)
    report, lines = sweep(h, budget_seconds=100)
    polls = calls(h.sb, since, "scan_status")
    assert 1 <= polls <= 5 and calls(h.sb, since, "scan_result") == 0  # waited at most half the budget
    if source == "auto":
        assert calls(h.sb, since, "get_datasources") == 3 and report.exit_code == 0
        assert sorted(history_reads(h.sb, since)) == sorted(h.world.dataset_ids)
    else:
        assert calls(h.sb, since, "get_datasources") == 0 and report.exit_code == 1
        (tail,) = deferred(report)
        assert "3 datasets new to the inventory were not read" in (tail.reason or "")
        h.sb.powerbi.scan_polls = 0
        since = mark(h.sb)
        report, lines = sweep(h, budget_seconds=100)
        assert report.exit_code == 0 and sorted(history_reads(h.sb, since)) == sorted(h.world.dataset_ids)


def test_no_secret_reaches_the_logs_the_report_or_the_inventory_on_the_scanner_path(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    h = make(sources=2)
    allow_admin(h)
    h.healer.heal_secret(h.world.secret_name)
    caplog.set_level(logging.DEBUG)
    report, lines = sweep(h)
    assert report.exit_code == 0
    texts = [caplog.text, "\n".join(lines), repr(report.outcomes), repr(h.runtime.ledger.inventory())]
    assert all(h.world.secret not in text for text in texts)


# -- the sandbox's scanner routes ------------------------------------------------------------------


def test_the_sandbox_scanner_is_as_strict_as_the_swagger(make: Make) -> None:
    h = make(sources=2)
    sb, w = h.sb, h.world
    base = f"{sb.powerbi.api_url}/admin/workspaces"
    session = requests.Session()  # trusts the sandbox CA through REQUESTS_CA_BUNDLE
    token = sb.entra.issue_token("app", w.app.client_id, POWERBI_AUDIENCE).token
    auth = {"Authorization": f"Bearer {token}"}

    def get_info(ids: list[str], query: str = "?lineage=True&datasourceDetails=True") -> requests.Response:
        return session.post(f"{base}/getInfo{query}", json={"workspaces": ids}, headers=auth)

    refused = get_info([w.workspace_id])
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "PowerBINotAuthorizedException"
    allow_admin(h)
    assert get_info([]).status_code == 400
    assert get_info([w.workspace_id] * 101).status_code == 400
    assert get_info(["not-a-guid"]).status_code == 400

    started = get_info([w.workspace_id])
    assert started.status_code == 202
    specs.validate_powerbi_response("WorkspaceInfo_PostWorkspaceInfo", 202, started.json())
    scan_id = started.json()["id"]
    assert session.get(f"{base}/scanResult/{scan_id}", headers=auth).status_code == 400  # not yet
    status = session.get(f"{base}/scanStatus/{scan_id}", headers=auth)
    specs.validate_powerbi_response("WorkspaceInfo_GetScanStatus", 200, status.json())
    assert status.json()["status"] == "Running"
    assert session.get(f"{base}/scanStatus/{scan_id}", headers=auth).json()["status"] == "Succeeded"
    result = session.get(f"{base}/scanResult/{scan_id}", headers=auth).json()
    specs.validate_powerbi_response("WorkspaceInfo_GetScanResult", 200, result)
    (workspace,) = result["workspaces"]
    usages = {
        d["id"]: [u["datasourceInstanceId"] for u in d["datasourceUsages"]] for d in workspace["datasets"]
    }
    assert usages == {d.id: [d.datasources[0].id] for d in w.datasets}
    assert {i["datasourceId"]: i["gatewayId"] for i in result["datasourceInstances"]} == dict.fromkeys(
        w.datasource_ids, w.gateway_id
    )
    assert w.secret not in repr(result)

    sb.powerbi.scan_polls = 0
    bare = get_info([w.workspace_id], query="")  # without lineage and details: no data sources
    session.get(f"{base}/scanStatus/{bare.json()['id']}", headers=auth)
    plain = session.get(f"{base}/scanResult/{bare.json()['id']}", headers=auth).json()
    assert "datasourceInstances" not in plain
    assert all("datasourceUsages" not in d for d in plain["workspaces"][0]["datasets"])


def test_an_action_of_a_refused_scan_is_not_a_failure_of_any_dataset(make: Make) -> None:
    h = make(sources=1)
    report, lines = sweep(h)
    assert all(o.action != Action.FAILED for o in report.outcomes)


def test_a_dry_run_sends_no_scan_and_learns_per_dataset(make: Make) -> None:
    h = make(sources=2)
    allow_admin(h)
    since = mark(h.sb)
    report, lines = sweep(h, dry_run=True)
    assert report.exit_code == 0 and calls(h.sb, since, "scan_get_info") == 0
    assert [r.method for r in h.sb.requests.all()[since:] if r.service == "powerbi"] == ["GET"] * calls(
        h.sb, since
    )
    assert any("inventory (per-dataset)" in line for line in lines)


def test_a_scanned_dataset_without_its_usages_is_learnt_per_dataset_not_taken_as_using_nothing(
    make: Make,
) -> None:
    h = make(sources=2)
    allow_admin(h)
    silent = h.world.datasets[0]
    h.sb.powerbi.scan_omits_usages.add(silent.id)

    since = mark(h.sb)
    report, _ = sweep(h)

    assert report.exit_code == 0
    assert calls(h.sb, since, "scan_get_info") == 1
    assert calls(h.sb, since, "get_datasources") == 1  # only the dataset the scan did not describe
    (record,) = [r for r in h.runtime.ledger.inventory() if r.dataset_id == silent.id]
    assert [s.datasource_id for s in record.sources] == [d.id for d in silent.datasources]


def test_an_admin_only_dry_run_sends_no_scan_and_defers_what_is_new(make: Make) -> None:
    h = make(sources=2, env={"REMEDIATION_INVENTORY_SOURCE": "admin"})
    allow_admin(h)

    since = mark(h.sb)
    report, _ = sweep(h, dry_run=True)

    assert calls(h.sb, since, "scan_get_info") == 0 and calls(h.sb, since, "get_datasources") == 0
    assert {r.method for r in h.sb.requests.all()[since:] if r.service == "powerbi"} == {"GET"}
    (tail,) = deferred(report)
    assert "2 datasets new to the inventory were not read" in (tail.reason or "")
