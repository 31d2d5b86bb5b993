"""Starting and following a dataset's refresh, one dataset at a time per account (end to end).

What the refresher's turn-taking and following show a user: which refreshes are posted, what a
dataset's outcome says word for word (an operator reads it in the CLI, HTTP and App Insights),
how much of the refresh history is read, and the account's failed sign-ins. Time is a manual
clock shared by the sandbox and the healer.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from remediation.reconciler.healer import Action, Report
from sandbox import Sandbox
from sandbox.world import generate_password
from tests.sandbox.test_fabric import add_fabric
from tests.sandbox.test_fabric_references import api_refreshes, model, of, referenced, vault_connection
from tests.support.clock import Sleeps
from tests.support.world import build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


def refresh_posts(sb: Sandbox) -> int:
    return len(sb.requests.find("powerbi.refresh_dataset"))


def history_tops(sb: Sandbox) -> list[str | None]:
    """The ``$top`` of every refresh-history read, in order."""
    return [r.query.get("$top") for r in sb.requests.find("powerbi.refresh_history")]


def dataset_outcome(report: Report) -> Any:
    (found,) = [o for o in report.datasets() if o.datasource_id is None]
    return found


def in_time(work: Any, seconds: float = 120.0) -> Any:
    """Run ``work`` on a thread and return its result; fail (not hang) if it does not end in time."""
    done: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: done.setdefault("result", work()), daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert not thread.is_alive(), "the run did not end"
    return done["result"]


# -- following a refresh ---------------------------------------------------------------------------
def test_a_refresh_that_takes_a_while_is_followed_until_it_completes(
    manual: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb, clock, make = manual
    wait = Sleeps.__call__  # its limit too: a loop that never stops waiting fails the test
    monkeypatch.setattr(
        Sleeps, "__call__", lambda self, seconds: (wait(self, seconds), clock.advance(seconds))
    )
    h = make(clock=clock.now)
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()
    clock.advance(60)
    sb.powerbi.set_refresh_duration(0.05)

    refreshed = dataset_outcome(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0]))

    assert (refreshed.action, refreshed.reason, refreshed.refresh_state) == (
        Action.REFRESHED,
        "refresh Completed (schedule re-enabled)",
        "Completed",
    )
    assert h.sleeps.waits  # it waited between its looks at the history
    assert refresh_posts(sb) == 1


# -- how much history is read ----------------------------------------------------------------------
def test_a_dataset_without_refresh_history_is_healthy_and_only_its_last_refresh_is_asked_for(
    manual: Any,
) -> None:
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    quiet = sb.powerbi.add_dataset(w.workspace, "Never refreshed", w.datasources, owner=w.app.client_id)
    sb.requests.clear()

    outcome = dataset_outcome(h.healer.heal_dataset(w.workspace_id, quiet.id))

    assert (outcome.action, outcome.reason) == (Action.HEALTHY, "the dataset has no refresh history")
    assert history_tops(sb) == ["1", "1"]  # the healer's look, and the refresher's own


def test_a_heal_told_of_a_failure_looks_at_the_last_refresh_only_before_it_refreshes(manual: Any) -> None:
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()
    (failed,) = h.runtime.powerbi.get_refresh_history_in_group(w.workspace_id, w.dataset_ids[0], top=1)
    clock.advance(60)
    sb.requests.clear()

    refreshed = dataset_outcome(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0], latest=failed))

    assert refreshed.action == Action.REFRESHED
    assert history_tops(sb) == ["1", "5"]  # is one running? then following its own refresh


def test_a_sweep_reads_only_the_last_refresh_of_each_dataset(manual: Any) -> None:
    sb, clock, make = manual
    h = make(sources=2, clock=clock.now)
    h.healer.sweep()  # the inventory is stored
    sb.requests.clear()

    h.healer.sweep()

    assert history_tops(sb) == ["1", "1"]


# -- a Key Vault reference with no settle time -----------------------------------------------------
def test_without_a_settle_time_a_refusal_as_the_version_was_stored_blocks_it(manual: Any) -> None:
    """No settle time: a referenced connection reads Key Vault's version from the moment it is
    stored. A refresh that started that very second and was refused proves it wrong: the dataset
    is not refreshed again with it (that would be a second failed sign-in)."""
    sb, clock, make = manual
    w = build_world(sb)
    kv = vault_connection(sb, w)
    f = referenced(sb, w, kv)
    sales = model(sb, w, "sales", f)
    bindings = json.dumps(w.bindings(f.binding))
    h = make(w, env={"REMEDIATION_BINDINGS": bindings, "REMEDIATION_SETTLE_SECONDS": "0"}, clock=clock.now)
    wrong = "Wrong#" + generate_password()
    sb.vault.set_secret(f.secret_name, wrong)
    sb.powerbi.start_refresh(sales)  # the same second
    sb.powerbi.settle()
    assert sales.refreshes[-1].status == "Failed"
    clock.advance(60)

    report = h.healer.heal_secret(f.secret_name)

    assert of(report, sales) == [Action.BLOCKED], [o.reason for o in report.datasets()]
    assert api_refreshes(sales) == []
    assert f.account.failures_of(wrong) == 1


def test_without_a_settle_time_a_refusal_as_the_version_was_stored_stops_it_for_the_account(
    manual: Any,
) -> None:
    """The same refusal, read from the model's failure, rejects the version for the account: a
    connection holding a copy, signing in as the same account, is not sent it (that would be a
    second failed sign-in)."""
    sb, clock, make = manual
    w = build_world(sb)
    kv = vault_connection(sb, w)
    f = referenced(sb, w, kv)
    g = add_fabric(sb, w.app.client_id, name="ware")
    g.account = f.account
    g.connection.source.account = f.account
    g.binding["secret"] = f.secret_name  # one secret, one account: a reference and a copy
    sales = model(sb, w, "sales", f)
    bindings = json.dumps(w.bindings(f.binding, g.binding))
    h = make(w, env={"REMEDIATION_BINDINGS": bindings, "REMEDIATION_SETTLE_SECONDS": "0"}, clock=clock.now)
    wrong = "Wrong#" + generate_password()
    sb.vault.set_secret(f.secret_name, wrong)
    sb.powerbi.start_refresh(sales)  # the same second
    sb.powerbi.settle()
    clock.advance(60)

    first = h.healer.heal_dataset(w.workspace_id, sales.id)
    then = h.healer.heal_secret(f.secret_name)

    assert of(first, sales) == [Action.BLOCKED], [o.reason for o in first.datasets()]
    assert [o.action for o in then.targets() if o.datasource_id == g.connection.id] == [Action.BLOCKED]
    assert g.connection.data.get("password") != wrong
    assert f.account.failures_of(wrong) == 1


# -- one dataset at a time per account -------------------------------------------------------------
def accepted_elsewhere(manual: Any) -> tuple[Sandbox, Any]:
    """Three datasets of one account whose rotation's update was accepted in another command (so
    this run has not seen the version work) and whose refreshes failed; no follow-up time."""
    sb, clock, make = manual
    h = make(sources=3, servers=1, clock=clock.now, env={"REMEDIATION_REFRESH_TIMEOUT": "0"})
    h.world.rotate()
    h.world.fail_scheduled_refreshes()
    clock.advance(60)
    h.healer.heal_secret(h.world.secret_name, retry_refreshes=False)  # accepted, in another command
    clock.advance(60)
    return sb, h


def test_datasets_wait_for_the_first_refresh_of_their_account_and_say_who_it_is(manual: Any) -> None:
    """The sweep has not seen the version accepted: one dataset's refresh goes first for the
    account, and it still runs when the follow-up ends, so the others wait for a later run and say
    so, naming the account."""
    sb, h = accepted_elsewhere(manual)
    sb.powerbi.set_refresh_duration(3600)

    report = in_time(h.healer.sweep)

    reasons = sorted(o.reason for o in report.datasets() if o.action == Action.DEFERRED)
    assert (
        reasons
        == [
            "not refreshed yet: another dataset's refresh is the first to sign in as svc_pbi with this "
            "version, and its outcome is not known yet (a refresh is a sign-in); the next run continues"
        ]
        * 2
    )
    assert refresh_posts(sb) == 1


def test_once_the_first_refresh_completes_the_accounts_other_datasets_refresh_together(
    manual: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first refresh for the account completes: the version is proven, and the account's
    other datasets are refreshed without waiting for one another, even though theirs still run
    when the follow-up ends (none is left for a later run)."""
    sb, h = accepted_elsewhere(manual)
    start, lock = sb.powerbi.start_refresh, threading.Lock()
    started: list[str] = []

    def first_quick_then_long(dataset: Any, **kwargs: Any) -> Any:
        with lock:
            sb.powerbi.set_refresh_duration(3600 if started else 0)
            started.append(dataset.id)
            return start(dataset, **kwargs)

    monkeypatch.setattr(sb.powerbi, "start_refresh", first_quick_then_long)

    report = in_time(h.healer.sweep)

    outcomes = sorted((o.action, o.refresh_state) for o in report.datasets())
    assert outcomes == [(Action.REFRESHED, "Completed")] + [(Action.REFRESHED, "Unknown")] * 2, [
        o.reason for o in report.datasets()
    ]
    assert refresh_posts(sb) == 3


def test_a_dataset_signing_in_as_two_accounts_waits_for_both_and_names_each_in_full(manual: Any) -> None:
    """Two datasets, each signing in as two accounts whose versions the sweep has not seen
    accepted: one refresh goes first for both accounts (and still runs when the follow-up ends);
    the other dataset waits, naming both accounts, each by its whole name (a colon in one
    included)."""
    sb, clock, make = manual
    sales = build_world(sb, sources=2, servers=1, username="svc_sales", binding_name="sales-sql")
    stock = build_world(
        sb,
        sources=2,
        servers=1,
        username="etl:stock",
        binding_name="stock-sql",
        secret_name="sql-stock-password",
    )
    both = [
        sb.powerbi.add_dataset(
            sales.workspace,
            f"Sales and stock {i}",
            [sales.datasources[i], stock.datasources[i]],
            owner=sales.app.client_id,
        )
        for i in (0, 1)
    ]
    bindings = json.dumps(sales.bindings(stock.binding()))
    h = make(
        sales, env={"REMEDIATION_BINDINGS": bindings, "REMEDIATION_REFRESH_TIMEOUT": "0"}, clock=clock.now
    )
    sales.rotate()
    stock.rotate()
    for dataset in both:
        sb.powerbi.start_refresh(dataset)  # fails on the old values
    sb.powerbi.settle()
    clock.advance(60)
    for w in (sales, stock):
        h.healer.heal_secret(w.secret_name, retry_refreshes=False)  # accepted, in another command
    clock.advance(60)
    sb.powerbi.set_refresh_duration(3600)

    report = in_time(h.healer.sweep, 30)  # a dataset that took its lock twice would hang

    outcomes = sorted((o.action, o.reason) for o in report.datasets() if o.dataset_id in {d.id for d in both})
    assert outcomes == [
        (
            Action.DEFERRED,
            "not refreshed yet: another dataset's refresh is the first to sign in as etl:stock, svc_sales "
            "with this version, and its outcome is not known yet (a refresh is a sign-in); the next run "
            "continues",
        ),
        (
            Action.REFRESHED,
            "refresh Unknown within this run's time; it goes on in Power BI (schedule re-enabled)",
        ),
    ], [o.reason for o in report.datasets()]
    assert refresh_posts(sb) == 1


def test_evidence_arriving_before_the_refresh_names_every_source_it_holds_back(manual: Any) -> None:
    """A dataset on two data sources of one account may be refreshed (its failure predates the
    heal); while its schedule is read, another instance learns the version is rejected for the
    account. The refresh is not started, and the reason names both data sources."""
    sb, clock, make = manual
    h = make(sources=2, servers=1, clock=clock.now)
    w = h.world
    w.rotate()
    together = sb.powerbi.add_dataset(w.workspace, "Two sources", w.datasources, owner=w.app.client_id)
    for dataset in (together, w.datasets[1]):
        sb.powerbi.start_refresh(dataset)  # both fail on the old value
    sb.powerbi.settle()
    clock.advance(60)
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    clock.advance(60)
    w.rotate_sources_only()
    sb.powerbi.start_refresh(w.datasets[1])  # Power BI's scheduled refresh fails on the healed version
    sb.powerbi.settle()
    clock.advance(60)
    sb.faults.add("powerbi.get_refresh_schedule", hold=True)
    done: dict[str, Any] = {}
    first = threading.Thread(
        target=lambda: done.setdefault("r", h.healer.heal_dataset(w.workspace_id, together.id)), daemon=True
    )
    first.start()
    try:
        assert sb.faults.wait_held("powerbi.get_refresh_schedule", timeout=30)
        h.another_instance(clock=clock.now).healer.heal_dataset(w.workspace_id, w.dataset_ids[1])
    finally:
        sb.faults.release_held()
        first.join(timeout=60)

    held_back = dataset_outcome(done["r"])
    verdict = "(its account's verdict on this version is rejected)"
    assert (held_back.action, held_back.reason) == (
        Action.BLOCKED,
        "not refreshed, and its schedule is left as it is: evidence against a data source's credential "
        f"arrived meanwhile: {w.gateway_id}/{w.datasource_ids[0]} {verdict}, "
        f"{w.gateway_id}/{w.datasource_ids[1]} {verdict}",
    )
    assert [r for r in sb.requests.find("powerbi.refresh_dataset") if together.id in r.path] == []
