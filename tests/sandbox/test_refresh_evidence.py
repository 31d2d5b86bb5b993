"""What a failed refresh proves, and when the healer may start another one (end to end).

A refresh signs in to every data source of its dataset, so the refresher reads a failure only as
evidence against what it proves wrong (the source it names, the version that source held when it
started), and refreshes within the dataset's daily budget. Each test asserts what a user sees:
refresh POSTs, outcomes, which versions are blocked, and the source accounts' failed sign-ins.
Time is a manual clock shared by the sandbox and the healer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remediation.healer import Action, Report
from sandbox import Sandbox
from sandbox.clock import ManualClock
from sandbox.refusals import credentials_error
from tests.support.harness import Harness, Make, harness_factory

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

DAY = 86_400.0


@pytest.fixture
def manual(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Sandbox, ManualClock, Make]]:
    """A sandbox and a healer on one manual clock, at 00:10 UTC of a day."""
    clock = ManualClock(start=1_790_000_000.0 - 1_790_000_000.0 % DAY + 600)
    sb = Sandbox(clock=clock).start()
    factory = harness_factory(sb, monkeypatch, tmp_path)
    try:
        yield sb, clock, next(factory)
    finally:
        sb.stop()


def refresh_posts(sb: Sandbox) -> int:
    return len(sb.requests.find("powerbi.refresh_dataset"))


def targets(report: Report) -> list[str]:
    return [o.action or "" for o in report.targets()]


def datasets(report: Report) -> list[str]:
    return [o.action or "" for o in report.datasets()]


def fail_with_a_rotation(h: Harness, clock: ManualClock) -> None:
    """The password changes (then Key Vault), and the dataset's next scheduled refresh fails."""
    clock.advance(60)
    h.world.rotate()
    h.world.fail_scheduled_refreshes()
    clock.advance(60)


# -- the daily refresh budget ----------------------------------------------------------------------
def test_the_daily_refresh_budget_stops_the_next_refresh_until_the_next_day(manual: Any) -> None:
    sb, clock, make = manual
    h = make(env={"REMEDIATION_REFRESH_BUDGET": "1"}, clock=clock.now)
    w = h.world

    fail_with_a_rotation(h, clock)
    first = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])
    assert datasets(first) == [Action.REFRESHED] and refresh_posts(sb) == 1

    fail_with_a_rotation(h, clock)  # another rotation the same day, and another failure
    second = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])

    assert targets(second) == [Action.UPDATED]
    assert datasets(second) == [Action.REFRESH_BUDGET]
    assert "1 refreshes started today (budget 1)" in (second.datasets()[0].reason or "")
    assert refresh_posts(sb) == 1  # no second refresh today
    assert not w.datasets[0].schedule.enabled  # nor its schedule turned back on
    assert len(sb.requests.find("powerbi.update_refresh_schedule")) == 1  # the first heal's

    clock.advance(DAY)  # the next UTC day (a new instance: the first one's tokens have expired)
    fail_with_a_rotation(h, clock)
    third = h.another_instance().healer.heal_dataset(w.workspace_id, w.dataset_ids[0])
    assert datasets(third) == [Action.REFRESHED]
    assert refresh_posts(sb) == 2
    assert w.datasets[0].schedule.enabled


def test_a_budget_of_two_allows_a_second_refresh_the_same_day(manual: Any) -> None:
    sb, clock, make = manual
    h = make(env={"REMEDIATION_REFRESH_BUDGET": "2"}, clock=clock.now)
    w = h.world
    for expected in (1, 2):
        fail_with_a_rotation(h, clock)
        report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])
        assert datasets(report) == [Action.REFRESHED] and refresh_posts(sb) == expected
    fail_with_a_rotation(h, clock)
    assert datasets(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])) == [Action.REFRESH_BUDGET]


# -- which source a failure is blamed on -----------------------------------------------------------
def test_a_failure_that_names_a_server_of_two_databases_blames_neither(manual: Any) -> None:
    """Two databases on one server, each its own login; a refresh fails naming only the server.
    Either login may have refused: recording a rejection against one would block a version that
    may be right, so none is recorded, and the dataset is not refreshed (both are unchanged since
    the failure)."""
    sb, clock, make = manual
    h = make(sources=2, shared_account=False, servers=1, clock=clock.now)
    w = h.world
    w.rotate()
    healed = h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    assert targets(healed) == [Action.UPDATED, Action.UPDATED]
    dataset = sb.powerbi.add_dataset(w.workspace, "Two databases", w.datasources, owner=w.app.client_id)
    w.accounts[0].set_secret("Changed#Behind-The-Back")
    clock.advance(60)
    sb.powerbi.add_refresh(
        dataset,
        status="Failed",
        service_exception=credentials_error("SQL", "sql0.local", w.username or ""),
        start=clock.now(),
    )
    clock.advance(120)

    report = h.healer.heal_dataset(w.workspace_id, dataset.id)

    assert targets(report) == [Action.CURRENT, Action.CURRENT]
    assert datasets(report) == [Action.BLOCKED]
    assert "unchanged since the failure" in (report.datasets()[0].reason or "")
    ledger = h.runtime.ledger
    assert not any(ledger.target_state(w.gateway_id, d).is_rejected(w.version) for d in w.datasource_ids)
    assert refresh_posts(sb) == 0


def test_a_failure_naming_its_database_blames_that_one_only(manual: Any) -> None:
    """The same two databases, the failure naming ``server;database``: that login's version is
    rejected (the failed refresh was its one failed sign-in), the other's is not."""
    sb, clock, make = manual
    h = make(sources=2, shared_account=False, servers=1, clock=clock.now)
    w = h.world
    w.rotate()
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    dataset = sb.powerbi.add_dataset(w.workspace, "Two databases", w.datasources, owner=w.app.client_id)
    w.accounts[1].set_secret("Changed#Behind-The-Back")
    named = w.datasources[1].connection_details
    clock.advance(60)
    sb.powerbi.add_refresh(
        dataset,
        status="Failed",
        service_exception=credentials_error(
            "SQL", f"{named['server']};{named['database']}", w.username or ""
        ),
        start=clock.now(),
    )
    clock.advance(120)

    report = h.healer.heal_dataset(w.workspace_id, dataset.id)

    by_target = {o.datasource_id: o.action for o in report.targets()}
    assert by_target == {w.datasource_ids[0]: Action.CURRENT, w.datasource_ids[1]: Action.BLOCKED}
    ledger = h.runtime.ledger
    assert ledger.target_state(w.gateway_id, w.datasource_ids[1]).is_rejected(w.version)
    assert not ledger.target_state(w.gateway_id, w.datasource_ids[0]).is_rejected(w.version)
    assert datasets(report) == [Action.BLOCKED] and refresh_posts(sb) == 0


# -- what version a failure is about ---------------------------------------------------------------
def test_a_failure_on_the_version_before_a_rotation_does_not_block_the_new_one(manual: Any) -> None:
    """The target holds version 1 (applied by the healer); the password rotates and Key Vault
    gets version 2; the next scheduled refresh signs in with version 1 and fails. That failure
    speaks of version 1: version 2 is presented, accepted, and the dataset refreshed."""
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    w.rotate()
    first = h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    assert targets(first) == [Action.UPDATED]

    fail_with_a_rotation(h, clock)
    assert sb.powerbi.history(w.datasets[0])[0].status == "Failed"
    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])

    assert targets(report) == [Action.UPDATED]
    assert datasets(report) == [Action.REFRESHED]
    assert w.account.failures_of(w.secret) == 0
    assert not h.runtime.ledger.target_state(w.gateway_id, w.datasource_ids[0]).is_rejected(w.version)
