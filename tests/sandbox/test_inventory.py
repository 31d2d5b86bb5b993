"""Large tenants through the sandbox: the inventory of which datasets use which bound data sources,
what a sweep and an event cost once it is known (counted Power BI requests), and fair scanning.

A world here is one bound secret on ``bound`` data sources (one dataset each) in a workspace that
also holds ``unbound`` datasets on data sources no binding covers: the tenant the issue describes,
where most datasets have nothing to do with the healer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from remediation.config.settings import Settings
from remediation.reconciler.healer import Action, Report
from remediation.telemetry.appinsights import Telemetry
from sandbox import Sandbox
from sandbox.powerbi import Dataset
from tests.support.harness import Harness, Make
from tests.support.world import build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


def add_unbound(h: Harness, count: int, *, prefix: str = "other") -> list[Dataset]:
    """``count`` datasets in the world's workspace on data sources that no binding covers."""
    sb, w = h.sb, h.world
    out = []
    for i in range(count):
        source = sb.sources.add(f"{prefix}-{i}", username=f"user{i}", secret="x", lockout_threshold=None)
        datasource = sb.powerbi.add_datasource(w.gateway, source)
        out.append(sb.powerbi.add_dataset(w.workspace, f"{prefix} {i}", [datasource], owner=w.app.client_id))
    return out


def calls(sb: Sandbox, since: int, route: str | None = None) -> int:
    """Power BI requests recorded after index ``since`` (of ``route`` when given)."""
    return sum(
        1
        for r in sb.requests.all()[since:]
        if r.service == "powerbi" and (route is None or r.route == f"powerbi.{route}")
    )


def history_reads(sb: Sandbox, since: int) -> list[str]:
    """The dataset ids whose refresh history was read after index ``since``, in order."""
    return [
        r.path.split("/datasets/")[1].split("/")[0]
        for r in sb.requests.all()[since:]
        if r.route == "powerbi.refresh_history"
    ]


def patches_sent(sb: Sandbox) -> int:
    return len(sb.requests.find("powerbi.update_datasource"))


def mark(sb: Sandbox) -> int:
    return len(sb.requests.all())


def deferred(report: Report) -> list[Any]:
    return [o for o in report.datasets() if o.action == Action.DEFERRED]


def test_the_inventory_is_built_once_then_only_new_and_changed_datasets_are_read_again(make: Make) -> None:
    h = make(sources=2)
    others = add_unbound(h, 10)
    ledger = h.runtime.ledger

    first = mark(h.sb)
    report = h.healer.sweep()
    assert report.exit_code == 0
    assert calls(h.sb, first, "get_datasources") == 12  # every dataset, once
    assert sorted(history_reads(h.sb, first)) == sorted(h.world.dataset_ids)  # only the bound ones
    records = {r.dataset_id: r for r in ledger.inventory(h.world.workspace_id)}
    assert set(records) == {d.id for d in [*h.world.datasets, *others]}
    bound = records[h.world.dataset_ids[0]]
    assert [s.key for s in bound.sources] == [(h.world.gateway_id, h.world.datasource_ids[0])]
    assert bound.learnt_at > 0

    second = mark(h.sb)
    assert h.healer.sweep().exit_code == 0
    assert calls(h.sb, second, "get_datasources") == 0
    assert calls(h.sb, second, "get_datasets") == 1

    others[3].owner = "someone.else@contoso.com"  # Take Over by a person: configuredBy changes
    h.sb.powerbi.workspaces[h.world.workspace_id].datasets.pop(others[4].id)  # deleted
    third = mark(h.sb)
    assert h.healer.sweep().exit_code == 0
    reads = [r.path for r in h.sb.requests.all()[third:] if r.route == "powerbi.get_datasources"]
    assert len(reads) == 1 and others[3].id in reads[0]
    assert others[4].id not in {r.dataset_id for r in ledger.inventory(h.world.workspace_id)}


def test_a_steady_state_sweep_stays_within_the_call_bound(make: Make) -> None:
    h = make(sources=3)
    add_unbound(h, 40)
    h.healer.sweep()  # builds the inventory

    since = mark(h.sb)
    report = h.healer.sweep()

    watched, bound = 1, 3
    assert report.exit_code == 0
    assert calls(h.sb, since) <= 1 + watched + 2 * bound + 5
    assert calls(h.sb, since) == watched + bound  # one dataset list, one history read per bound dataset
    assert sorted(history_reads(h.sb, since)) == sorted(h.world.dataset_ids)


def test_a_new_dataset_using_a_bound_source_is_picked_up_by_the_next_sweep(make: Make) -> None:
    h = make(sources=2)
    add_unbound(h, 5)
    h.healer.sweep()
    w = h.world
    newcomer = h.sb.powerbi.add_dataset(w.workspace, "new model", [w.datasources[1]], owner=w.app.client_id)
    h.sb.powerbi.add_refresh(newcomer, status="Failed")  # failed for credentials before the heal

    since = mark(h.sb)
    report = h.healer.sweep()

    assert calls(h.sb, since, "get_datasources") >= 1
    assert newcomer.id in history_reads(h.sb, since)
    (outcome,) = [o for o in report.datasets() if o.dataset_id == newcomer.id]
    assert outcome.action == Action.REFRESHED and outcome.refresh_state == "Completed"
    assert any(
        r.dataset_id == newcomer.id and [s.key for s in r.sources] == [(w.gateway_id, w.datasource_ids[1])]
        for r in h.runtime.ledger.inventory()
    )


def test_an_event_reads_the_history_of_its_own_datasets_only_and_scans_nothing(
    make: Make, sb: Sandbox
) -> None:
    h = make(sources=2)
    add_unbound(h, 20)
    other = build_world(sb, sources=3, secret_name="other-secret", binding_name="other", prefix="o")
    h.runtime.close()
    bindings = h.world.bindings(other.binding())
    bindings["watch"]["workspaces"].append(other.workspace_id)
    runtime = h.another_instance(REMEDIATION_BINDINGS=json.dumps(bindings))
    runtime.healer.sweep()  # the inventory of both workspaces
    h.world.rotate()
    h.sb.powerbi.add_refresh(h.world.datasets[0], status="Failed")

    since = mark(h.sb)
    report = runtime.healer.heal_secret(h.world.secret_name)

    assert report.exit_code == 0
    assert calls(h.sb, since, "get_datasets") == 0 and calls(h.sb, since, "get_groups") == 0
    assert sorted(set(history_reads(h.sb, since))) == sorted(h.world.dataset_ids)
    assert calls(h.sb, since, "get_datasources") == 1  # the failed dataset's, before refreshing it
    assert [o.dataset_id for o in report.datasets() if o.action == Action.REFRESHED] == [
        h.world.dataset_ids[0]
    ]


def test_an_unscanned_tail_is_reported_deferred_and_reached_by_the_next_sweep(make: Make) -> None:
    now = [time.time()]

    def clock() -> float:
        return now[0]

    h = make(sources=5, env={"REMEDIATION_CONCURRENCY": "1"}, clock=clock)
    powerbi = h.runtime.powerbi
    read_history: Callable[..., Any] = powerbi.get_refresh_history_in_group

    def slow_history(*args: Any, **kwargs: Any) -> Any:
        now[0] += 10.0  # each history read takes 10 s of the sweep's budget
        return read_history(*args, **kwargs)

    powerbi.get_refresh_history_in_group = slow_history
    order = sorted(h.world.dataset_ids)

    since = mark(h.sb)
    report = h.healer.sweep(budget_seconds=25)
    assert history_reads(h.sb, since) == order[:3]
    (tail,) = deferred(report)
    assert tail.dataset_id == order[3] and "2 of 5" in (tail.reason or "")
    assert report.exit_code == 1

    since = mark(h.sb)
    report = h.healer.sweep(budget_seconds=25)
    assert history_reads(h.sb, since) == [order[3], order[4], order[0]]  # the tail first
    (tail,) = deferred(report)
    assert tail.dataset_id == order[1]

    since = mark(h.sb)
    report = h.healer.sweep(budget_seconds=100)
    assert history_reads(h.sb, since) == [*order[1:], order[0]]
    assert deferred(report) == [] and report.exit_code == 0


def test_a_sweep_over_a_thousand_current_targets_records_one_summary_row_and_one_event(make: Make) -> None:
    h = make(sources=1000)
    w, ledger = h.world, h.runtime.ledger
    now = time.time()
    for datasource_id in w.datasource_ids:  # every target already holds the current version
        lease = ledger.acquire_lease(w.gateway_id, datasource_id, "setup", now, 60.0)
        assert lease is not None
        ledger.record_applied(lease, w.secret_name, w.version, now)
        ledger.release_lease(lease)
    h.healer.sweep()  # builds the inventory
    before = len(ledger.outcomes(limit=10_000))

    report = h.healer.sweep()

    assert [o.action for o in report.targets()] == [Action.CURRENT] * 1000  # the caller sees each
    assert report.exit_code == 0 and patches_sent(h.sb) == 0
    rows = ledger.outcomes(limit=10_000)[: len(ledger.outcomes(limit=10_000)) - before]
    (summary,) = rows
    assert summary.action == Action.CURRENT and summary.correlation_id == report.correlation_id
    assert summary.datasource_id is None and "1000 bound data sources already held" in (summary.reason or "")
    assert w.version in (summary.reason or "")
    assert report.recorded_outcomes() == [summary]
    assert Telemetry(Settings()).emit_outcomes(report) == 1


def test_changes_and_problems_are_still_recorded_one_by_one_beside_the_summary(make: Make) -> None:
    h = make(sources=3)
    w, ledger = h.world, h.runtime.ledger
    h.healer.heal_secret(w.secret_name)
    h.sb.powerbi.add_refresh(w.datasets[2], status="Failed")
    ledger_rows = len(ledger.outcomes())

    assert h.healer.sweep().exit_code == 0

    rows = ledger.outcomes()[: len(ledger.outcomes()) - ledger_rows]
    assert sorted(o.action or "" for o in rows) == sorted([Action.CURRENT, Action.REFRESHED])
    (refreshed,) = [o for o in rows if o.action == Action.REFRESHED]
    assert refreshed.dataset_id == w.dataset_ids[2]
    assert "3 bound data sources already held" in next(
        o.reason or "" for o in rows if o.action == Action.CURRENT
    )


def test_a_match_binding_selects_its_datasets_from_the_connection_details_the_inventory_keeps(
    make: Make,
) -> None:
    h = make(sources=3)
    w = h.world
    chosen = w.datasources[1]
    server = chosen.connection_details["server"]
    binding = {**w.binding(), "targets": [{"match": {"datasourceType": "Sql", "server": server.upper()}}]}
    bindings = {"bindings": [binding], "watch": {"workspaces": [w.workspace_id]}}
    runtime = h.another_instance(REMEDIATION_BINDINGS=json.dumps(bindings))
    add_unbound(h, 4)

    since = mark(h.sb)
    report = runtime.healer.sweep()

    assert history_reads(h.sb, since) == [w.dataset_ids[1]]  # only the dataset on the matched source
    assert report.exit_code == 0
    (record,) = [r for r in runtime.ledger.inventory() if r.dataset_id == w.dataset_ids[1]]
    assert record.sources[0].details()["server"] == server


def test_new_datasets_whose_sources_were_not_read_in_time_are_deferred_and_read_first_next(
    make: Make,
) -> None:
    now = [time.time()]
    h = make(sources=2, env={"REMEDIATION_CONCURRENCY": "1"}, clock=lambda: now[0])
    add_unbound(h, 3)
    powerbi = h.runtime.powerbi
    read_sources: Callable[..., Any] = powerbi.get_datasources_in_group

    def slow_sources(*args: Any, **kwargs: Any) -> Any:
        now[0] += 10.0  # each data source list takes 10 s of the sweep's budget
        return read_sources(*args, **kwargs)

    powerbi.get_datasources_in_group = slow_sources

    since = mark(h.sb)
    report = h.healer.sweep(budget_seconds=25)
    assert calls(h.sb, since, "get_datasources") == 3
    outcomes = deferred(report)
    (new,) = [o for o in outcomes if "new to the inventory" in (o.reason or "")]
    assert "2 datasets new to the inventory were not read" in (new.reason or "")
    # No time was left for refresh histories either: deferred too, when the three datasets read
    # (in an order the ids decide) include one on a bound source.
    known = {r.dataset_id for r in h.runtime.ledger.inventory()}
    on_bound = any(d.lower() in known for d in h.world.dataset_ids)
    tails = [o for o in outcomes if "refresh history" in (o.reason or "")]
    assert len(tails) == (1 if on_bound else 0) and len(outcomes) == 1 + len(tails)
    assert report.exit_code == 1 and len(known) == 3

    since = mark(h.sb)
    report = h.healer.sweep(budget_seconds=100)
    assert calls(h.sb, since, "get_datasources") == 2  # only the two left over
    assert deferred(report) == [] and report.exit_code == 0
    assert len(h.runtime.ledger.inventory()) == 5
