"""What a failed refresh proves, and when the healer may start another one (end to end).

A refresh signs in to every data source of its dataset, so the refresher reads a failure only as
evidence against what it proves wrong (the source it names, the version that source held when it
started), and refreshes within the dataset's daily budget. Each test asserts what a user sees:
refresh POSTs, outcomes, which versions are blocked, and the source accounts' failed sign-ins.
Time is a manual clock shared by the sandbox and the healer.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from remediation.reconciler.healer import Action, Report
from sandbox import Sandbox
from sandbox.clock import ManualClock
from sandbox.refusals import credentials_error, pbi_error
from tests.sandbox.conftest import manual_world
from tests.support.harness import Harness, Make

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

DAY = 86_400.0


@pytest.fixture
def manual(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Sandbox, ManualClock, Make]]:
    """A sandbox and a healer on one manual clock, at 00:10 UTC of a day."""
    clock = ManualClock(start=1_790_000_000.0 - 1_790_000_000.0 % DAY + 600)
    yield from manual_world(monkeypatch, tmp_path, clock=clock)


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


# -- the refresh itself, and what its outcome says -------------------------------------------------
def outcome(report: Report) -> Any:
    (found,) = report.datasets()
    return found


def history_reads(sb: Sandbox) -> list[str | None]:
    return [r.query.get("$top") for r in sb.requests.find("powerbi.refresh_history")]


def test_a_refresh_is_reported_with_its_request_and_state_and_the_schedule_it_turned_back_on(
    manual: Any,
) -> None:
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    fail_with_a_rotation(h, clock)
    assert not w.datasets[0].schedule.enabled
    before = len(sb.requests.find("powerbi.refresh_history"))

    refreshed = outcome(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0]))

    newest = sb.powerbi.history(w.datasets[0])[0]
    assert (refreshed.action, refreshed.reason) == (
        Action.REFRESHED,
        "refresh Completed (schedule re-enabled)",
    )
    assert (refreshed.refresh_request_id, refreshed.refresh_state) == (newest.request_id, "Completed")
    assert (refreshed.workspace_id, refreshed.dataset_id) == (w.workspace_id, w.dataset_ids[0])
    # The history the heal read first is fresh: no second look before the POST, one to follow it.
    assert history_reads(sb)[before:] == ["1", "5"]


def test_an_enabled_schedule_and_one_without_days_are_left_as_they_are(manual: Any) -> None:
    sb, clock, make = manual
    h = make(sources=2, clock=clock.now)
    w = h.world
    w.rotate()
    for dataset in w.datasets:  # a failed on-demand refresh: the schedule is not switched off
        sb.powerbi.add_refresh(
            dataset, status="Failed", service_exception=credentials_error("SQL", "x", "svc")
        )
    w.datasets[1].schedule.enabled, w.datasets[1].schedule.days = False, []  # never scheduled
    clock.advance(60)

    reports = [h.healer.heal_dataset(w.workspace_id, d) for d in w.dataset_ids]

    assert [(outcome(r).action, outcome(r).reason) for r in reports] == [
        (Action.REFRESHED, "refresh Completed"),
        (Action.REFRESHED, "refresh Completed"),
    ]
    assert sb.requests.find("powerbi.update_refresh_schedule") == []
    assert [d.schedule.enabled for d in w.datasets] == [True, False]


def test_a_refresh_that_fails_again_says_why(manual: Any) -> None:
    """The gateway goes offline while the refresh is being started: the refresh fails, and the
    outcome says so with the failure's diagnosis."""
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    fail_with_a_rotation(h, clock)
    sb.faults.add("powerbi.refresh_dataset", after=True, hold=True)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(h.healer.heal_dataset, w.workspace_id, w.dataset_ids[0])
        assert sb.faults.wait_held("powerbi.refresh_dataset")
        sb.powerbi.set_gateway_online(w.gateway, False)
        sb.faults.release_held("powerbi.refresh_dataset")
        failed = outcome(running.result(timeout=60))

    assert (failed.action, failed.refresh_state) == (Action.REFRESHED, "Failed")
    assert failed.reason.startswith("refresh Failed: ") and failed.reason.endswith(" (schedule re-enabled)")
    assert "gateway" in failed.reason.lower()


def test_a_refresh_still_running_when_the_follow_up_ends_goes_on_in_power_bi(manual: Any) -> None:
    sb, clock, make = manual
    h = make(env={"REMEDIATION_REFRESH_TIMEOUT": "0"}, clock=clock.now)
    w = h.world
    fail_with_a_rotation(h, clock)
    sb.powerbi.set_refresh_duration(3600)

    running = outcome(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0]))

    assert (running.action, running.refresh_state) == (Action.REFRESHED, "Unknown")
    assert running.reason == (
        "refresh Unknown within this run's time; it goes on in Power BI (schedule re-enabled)"
    )


def test_a_refresh_whose_history_cannot_be_read_afterwards_is_unknown(manual: Any) -> None:
    sb, clock, make = manual
    h = make(env={"REMEDIATION_REFRESH_TIMEOUT": "0"}, clock=clock.now)
    w = h.world
    fail_with_a_rotation(h, clock)
    sb.faults.add("powerbi.refresh_dataset", after=True, hold=True)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(h.healer.heal_dataset, w.workspace_id, w.dataset_ids[0])
        assert sb.faults.wait_held("powerbi.refresh_dataset")
        sb.faults.add("powerbi.refresh_history", status=503, times=50)
        sb.faults.release_held("powerbi.refresh_dataset")
        unknown = outcome(running.result(timeout=60))

    assert (unknown.action, unknown.refresh_state) == (Action.REFRESHED, "Unknown")
    assert unknown.refresh_request_id == sb.powerbi.history(w.datasets[0])[0].request_id
    assert unknown.reason == (
        "refresh Unknown within this run's time; it goes on in Power BI (schedule re-enabled)"
    )


def test_a_dry_run_says_it_would_refresh_and_whether_it_would_turn_the_schedule_back_on(manual: Any) -> None:
    sb, clock, make = manual
    h = make(sources=2, clock=clock.now)
    w = h.world
    fail_with_a_rotation(h, clock)  # both schedules switched off by the failure
    w.datasets[1].schedule.enabled = True

    reports = [h.healer.heal_dataset(w.workspace_id, d, dry_run=True) for d in w.dataset_ids]

    assert [(outcome(r).action, outcome(r).reason) for r in reports] == [
        (Action.WOULD_REFRESH, "would refresh the dataset and re-enable its schedule"),
        (Action.WOULD_REFRESH, "would refresh the dataset"),
    ]
    assert refresh_posts(sb) == 0


def test_a_refresh_already_running_is_not_started_again(manual: Any) -> None:
    """An event reports the failure (so the history is read again first): someone has started a
    refresh since. Nothing is posted, and the outcome names the running refresh."""
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    fail_with_a_rotation(h, clock)
    (failed,) = h.runtime.powerbi.get_refresh_history_in_group(w.workspace_id, w.dataset_ids[0], top=1)
    sb.powerbi.set_refresh_duration(3600)
    started = sb.powerbi.start_refresh(w.datasets[0], refresh_type="OnDemand")

    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0], latest=failed)

    running = outcome(report)
    assert (running.action, running.reason) == (
        Action.REFRESH_RUNNING,
        "a refresh is already running: not starting another",
    )
    assert (running.refresh_request_id, running.refresh_state) == (started.request_id, "Unknown")
    assert refresh_posts(sb) == 0


_ALREADY_RUNNING = {
    "error": {
        "code": "InvalidRequest",
        "message": "Invalid dataset refresh request. Another refresh request is already executing",
    }
}


def test_a_refresh_started_by_someone_else_just_before_the_post_is_reported_running(manual: Any) -> None:
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    fail_with_a_rotation(h, clock)
    sb.faults.add("powerbi.refresh_dataset", status=400, body=_ALREADY_RUNNING)

    running = outcome(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0]))

    assert (running.action, running.reason) == (
        Action.REFRESH_RUNNING,
        "a refresh is already running: not starting another",
    )
    assert len(sb.requests.find("powerbi.refresh_dataset")) == 1  # not retried


def test_power_bis_daily_refresh_limit_is_reported_as_the_budget(manual: Any) -> None:
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    fail_with_a_rotation(h, clock)
    w.datasets[0].refresh_limit = 1  # the failed scheduled refresh used it up

    limited = outcome(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0]))

    assert limited.action == Action.REFRESH_BUDGET
    assert limited.reason.startswith("Power BI's daily refresh limit is reached: ")
    assert "exceeded limit" in limited.reason


def test_a_refresh_throttled_past_the_runs_deadline_is_deferred(manual: Any) -> None:
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    fail_with_a_rotation(h, clock)
    sb.faults.throttle("powerbi.refresh_dataset", retry_after=900)

    deferred = outcome(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0], deadline=clock.now() + 120))

    assert deferred.action == Action.DEFERRED
    assert deferred.reason.startswith("not refreshed: ") and "deadline" in deferred.reason
    assert max(h.sleeps.waits, default=0.0) < 900


def test_a_refresh_power_bi_refuses_is_reported_failed(manual: Any) -> None:
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    fail_with_a_rotation(h, clock)
    sb.faults.add("powerbi.refresh_dataset", status=403, body={"error": {"code": "Forbidden"}})

    failed = outcome(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0]))

    assert failed.action == Action.FAILED
    assert failed.reason.startswith("could not refresh: ") and "403" in failed.reason


# -- what a failure is evidence of -----------------------------------------------------------------
NO_CREDENTIALS = "DM_GWPipeline_Gateway_CredentialsNotSpecified"


def _naming(datasource: Any) -> list[dict[str, Any]]:
    details = datasource.connection_details
    path = f"{details['server']};{details['database']}"
    return [
        {
            "code": "Microsoft.Data.Mashup.CredentialError.DataSourceKind",
            "detail": {"type": 1, "value": "SQL"},
        },
        {
            "code": "Microsoft.Data.Mashup.CredentialError.DataSourcePath",
            "detail": {"type": 1, "value": path},
        },
    ]


def _two_source_dataset(h: Harness, clock: ManualClock) -> Any:
    """Two data sources (two logins, one secret) healed to the current version, and a dataset
    using both; the clock then moves on a minute."""
    w = h.world
    w.rotate()
    assert targets(h.healer.heal_secret(w.secret_name, retry_refreshes=False)) == [Action.UPDATED] * 2
    dataset = h.sb.powerbi.add_dataset(w.workspace, "Two sources", w.datasources, owner=w.app.client_id)
    clock.advance(60)
    return dataset


def test_a_failure_without_a_sign_in_on_an_unknown_source_makes_every_source_present_again(
    manual: Any,
) -> None:
    """Power BI lost the credentials (no sign-in happened, the password is not in question) and
    does not say of which source: the ledger forgets what both hold, both are sent the current
    version again, and the dataset is refreshed."""
    sb, clock, make = manual
    h = make(sources=2, shared_account=False, clock=clock.now)
    dataset = _two_source_dataset(h, clock)
    sb.powerbi.add_refresh(
        dataset, status="Failed", service_exception=pbi_error(NO_CREDENTIALS), start=clock.now()
    )
    clock.advance(60)

    report = h.healer.heal_dataset(h.world.workspace_id, dataset.id)

    assert targets(report) == [Action.UPDATED, Action.UPDATED]
    assert datasets(report) == [Action.REFRESHED]
    assert len(sb.requests.find("powerbi.update_datasource")) == 4


def test_a_failure_without_a_sign_in_that_names_its_source_makes_only_that_one_present_again(
    manual: Any,
) -> None:
    sb, clock, make = manual
    h = make(sources=2, shared_account=False, clock=clock.now)
    w = h.world
    dataset = _two_source_dataset(h, clock)
    error = pbi_error(NO_CREDENTIALS, _naming(w.datasources[1]))
    sb.powerbi.add_refresh(dataset, status="Failed", service_exception=error, start=clock.now())
    clock.advance(60)

    report = h.healer.heal_dataset(w.workspace_id, dataset.id)

    by_target = {o.datasource_id: o.action for o in report.targets()}
    assert by_target == {w.datasource_ids[0]: Action.CURRENT, w.datasource_ids[1]: Action.UPDATED}
    assert datasets(report) == [Action.REFRESHED]
    resent = sb.requests.find("powerbi.update_datasource")[2:]
    assert [r.path.rsplit("/", 1)[-1] for r in resent] == [w.datasource_ids[1]]


def test_a_failure_without_a_sign_in_that_started_as_the_version_was_applied_speaks_of_it(
    manual: Any,
) -> None:
    """Applied and the refresh started at the same clock reading: the refresh may have used it."""
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    w.rotate()
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    sb.powerbi.add_refresh(
        w.datasets[0], status="Failed", service_exception=pbi_error(NO_CREDENTIALS), start=clock.now()
    )
    clock.advance(60)

    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])

    assert targets(report) == [Action.UPDATED]
    assert datasets(report) == [Action.REFRESHED]


def test_a_refused_sign_in_that_started_as_the_version_was_applied_rejects_it_for_the_account(
    manual: Any,
) -> None:
    """Two data sources signing in as one account, the first healed; a refresh of its dataset,
    started as the version was applied, is refused. That was the account's one failed sign-in with
    the version: it is rejected for the target and the account, so the second data source is not
    sent it, and says why."""
    sb, clock, make = manual
    h = make(sources=2, clock=clock.now)
    w = h.world
    w.rotate()
    assert targets(h.healer.heal_target(w.gateway_id, w.datasource_ids[0])) == [Action.UPDATED]
    w.rotate_sources_only()  # the password changed behind Key Vault's back
    details = w.datasources[0].connection_details
    failed = sb.powerbi.add_refresh(
        w.datasets[0],
        status="Failed",
        service_exception=credentials_error(
            "SQL", f"{details['server']};{details['database']}", w.username or ""
        ),
        start=clock.now(),
    )
    clock.advance(60)

    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])

    assert targets(report) == [Action.BLOCKED]
    assert datasets(report) == [Action.BLOCKED]
    assert h.runtime.ledger.target_state(w.gateway_id, w.datasource_ids[0]).is_rejected(w.version)
    other = h.healer.heal_target(w.gateway_id, w.datasource_ids[1])
    assert targets(other) == [Action.BLOCKED]
    assert (
        f"(a refresh failed for credentials on this data source after version {w.version} was applied "
        f"(refresh {failed.request_id}))"
    ) in (other.targets()[0].reason or "")
    assert refresh_posts(sb) == 0
    assert len(sb.requests.find("powerbi.update_datasource")) == 1


def test_a_refresh_that_found_the_account_locked_blocks_the_version_for_the_account_and_says_so(
    manual: Any,
) -> None:
    """The same with an account that cannot sign in at all (locked), and a history entry that
    carries no request id."""
    sb, clock, make = manual
    h = make(sources=2, clock=clock.now)
    w = h.world
    sb.powerbi.report_lockouts = True
    w.rotate()
    assert targets(h.healer.heal_target(w.gateway_id, w.datasource_ids[0])) == [Action.UPDATED]
    w.account.locked = True  # someone else's stale password locked it
    failed = sb.powerbi.start_refresh(w.datasets[0])
    sb.powerbi.settle()
    assert failed.status == "Failed"
    failed.request_id = None  # type: ignore[assignment]
    clock.advance(60)

    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])
    other = h.healer.heal_target(w.gateway_id, w.datasource_ids[1])

    assert targets(report) == [Action.BLOCKED] and targets(other) == [Action.BLOCKED]
    reason = other.targets()[0].reason or ""
    assert "(a refresh reported the account unusable (" in reason
    assert f"after version {w.version} was applied (refresh without id))" in reason
    assert len(sb.requests.find("powerbi.update_datasource")) == 1


def test_a_refusal_that_names_no_source_is_blamed_on_the_datasets_only_source(manual: Any) -> None:
    """SQL Server's failed login as Power BI reports it (error 18456, no data source named) on a
    dataset with one data source: that source refused the version it held."""
    sb, clock, make = manual
    h = make(refusal="sql-login-failed", clock=clock.now)
    w = h.world
    w.rotate()
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    clock.advance(60)
    w.rotate_sources_only()
    w.fail_scheduled_refreshes()
    clock.advance(60)

    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])

    assert targets(report) == [Action.BLOCKED]
    assert h.runtime.ledger.target_state(w.gateway_id, w.datasource_ids[0]).is_rejected(w.version)
    assert refresh_posts(sb) == 0


def test_a_failure_names_its_source_by_kind_as_well_as_by_path(manual: Any) -> None:
    """A SQL database and an Analysis Services model at the same server and database name, both
    bound: the failure names the SQL one, which alone is blamed."""
    sb, clock, make = manual
    h0 = make(sources=1, clock=clock.now)
    w = h0.world
    details = dict(w.datasources[0].connection_details)
    model_source = sb.sources.add("as-src", credential_type="Basic", account=w.account)
    model = sb.powerbi.add_datasource(
        w.gateway, model_source, datasource_type="AnalysisServices", connection_details=details
    )
    w.sources.append(model_source)
    w.datasources.append(model)
    h = make(w, clock=clock.now)
    w.rotate()
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    dataset = sb.powerbi.add_dataset(w.workspace, "SQL and model", w.datasources, owner=w.app.client_id)
    clock.advance(60)
    sb.powerbi.add_refresh(
        dataset,
        status="Failed",
        service_exception=credentials_error("SQL", f"{details['server']};{details['database']}", "svc"),
        start=clock.now(),
    )
    clock.advance(60)

    h.healer.heal_dataset(w.workspace_id, dataset.id)

    ledger = h.runtime.ledger
    assert ledger.target_state(w.gateway_id, w.datasource_ids[0]).is_rejected(w.version)
    assert not ledger.target_state(w.gateway_id, w.datasource_ids[1]).is_rejected(w.version)
