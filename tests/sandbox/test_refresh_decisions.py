"""The refresh gate end to end: the evidence the refresher gathers for each of a dataset's data
sources, and what the dataset's outcome then says (the refresher's ``_prepare``, ``_evidence``
and ``_finish`` around :func:`remediation.safety.refreshing.may_refresh`).

Each test asserts what a user sees: whether a refresh is posted, the dataset's outcome and its
reason (which data sources hold the refresh back, and why), and what a dry run leaves in the
ledger. Time is a manual clock shared by the sandbox and the healer.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from remediation.clients.powerbi_models import Refresh
from remediation.config.settings import Settings
from remediation.edges.runtime import build_healer
from remediation.ledger import Ledger, LedgerError
from remediation.reconciler.healer import Action, Report
from sandbox import Sandbox
from sandbox.clock import ManualClock
from sandbox.refusals import credentials_error, pbi_error
from tests.support.clock import Sleeps
from tests.support.harness import Harness
from tests.support.world import World

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

GATE = (
    "not refreshed, and its schedule is left as it is: a refresh signs in to every data source, and these "
    "are not known to hold a working credential: "
)


def refresh_posts(sb: Sandbox) -> int:
    return len(sb.requests.find("powerbi.refresh_dataset"))


def targets(report: Report) -> list[str]:
    return [o.action or "" for o in report.targets()]


def dataset_outcome(report: Report) -> Any:
    """The dataset's own outcome (not the per-data-source ones some reports add)."""
    (found,) = [o for o in report.datasets() if o.datasource_id is None]
    return found


def label(w: World, index: int) -> str:
    return f"{w.gateway_id}/{w.datasource_ids[index]}"


def naming(w: World, index: int) -> dict[str, Any]:
    """A refused sign-in naming data source ``index`` of ``w`` (its ``server;database``)."""
    details = w.datasources[index].connection_details
    return credentials_error("SQL", f"{details['server']};{details['database']}", w.username or "")


def both_sources(h: Harness) -> Any:
    w = h.world
    return h.sb.powerbi.add_dataset(w.workspace, "Two sources", w.datasources, owner=w.app.client_id)


# -- what the outcome says when the gate waits -----------------------------------------------------
def test_a_blocked_dataset_names_every_source_that_waits_and_the_refresh_it_read(manual: Any) -> None:
    """A wrong value in Key Vault: the account's probe is rejected, the other source is blocked
    with it. The dataset's outcome lists both, in order, with the failed refresh it is about."""
    sb, clock, make = manual
    h = make(sources=2, clock=clock.now)
    w = h.world
    dataset = both_sources(h)
    failed = sb.powerbi.add_refresh(dataset, status="Failed", service_exception=naming(w, 0))
    w.put_in_vault("Wrong#Value-1")
    clock.advance(60)

    report = h.healer.heal_dataset(w.workspace_id, dataset.id)

    assert sorted(targets(report)) == [Action.BLOCKED, Action.REJECTED]
    outcome = dataset_outcome(report)
    by_target = {o.datasource_id: o.action for o in report.targets()}
    assert outcome.action == Action.BLOCKED
    first, second = (f"{label(w, i)} ({by_target[w.datasource_ids[i]]})" for i in (0, 1))
    assert outcome.reason == GATE + f"{first}, {second}."
    assert (outcome.refresh_request_id, outcome.refresh_state) == (failed.request_id, "Failed")
    assert (outcome.workspace_id, outcome.dataset_id) == (w.workspace_id, dataset.id)
    assert refresh_posts(sb) == 0


def test_a_dataset_none_of_whose_sources_is_bound_says_to_add_a_binding(manual: Any) -> None:
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    stray = sb.sources.add("stray-src", credential_type="Basic", username="other", secret="Other#1")
    other = sb.powerbi.add_datasource(
        w.gateway, stray, connection_details={"server": "other", "database": "x"}
    )
    dataset = sb.powerbi.add_dataset(w.workspace, "Unbound", [other], owner=w.app.client_id)
    sb.powerbi.add_refresh(
        dataset, status="Failed", service_exception=pbi_error("ModelRefreshFailed_CredentialsNotSpecified")
    )

    outcome = dataset_outcome(h.healer.heal_dataset(w.workspace_id, dataset.id))

    assert (outcome.action, outcome.reason) == (
        Action.UNBOUND,
        "the refresh failed for credentials but none of the dataset's data sources is bound: add a binding",
    )
    assert refresh_posts(sb) == 0


def test_a_dataset_with_an_unbound_source_that_may_have_failed_says_so(manual: Any) -> None:
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    stray = sb.sources.add("stray-src", credential_type="Basic", username="other", secret="Other#1")
    other = sb.powerbi.add_datasource(
        w.gateway, stray, connection_details={"server": "other", "database": "x"}
    )
    dataset = sb.powerbi.add_dataset(w.workspace, "Mixed", [w.datasources[0], other], owner=w.app.client_id)
    sb.powerbi.add_refresh(
        dataset, status="Failed", service_exception=pbi_error("ModelRefreshFailed_CredentialsNotSpecified")
    )
    w.rotate()

    outcome = dataset_outcome(h.healer.heal_dataset(w.workspace_id, dataset.id))

    assert (outcome.action, outcome.reason) == (
        Action.UNBOUND,
        "not refreshed: the failure may come from a data source no binding covers, and a refresh would only "
        "sign in with its wrong credential again; add a binding for it",
    )
    assert refresh_posts(sb) == 0


def test_an_unbound_source_the_failure_does_not_name_does_not_hide_the_bound_one_after_it(
    manual: Any,
) -> None:
    """The unbound source comes first in the dataset; the failure names the bound one, which is
    healed now: the dataset is refreshed."""
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    stray = sb.sources.add("stray-src", credential_type="Basic", username="other", secret="Other#1")
    other = sb.powerbi.add_datasource(
        w.gateway, stray, connection_details={"server": "other", "database": "x"}
    )
    dataset = sb.powerbi.add_dataset(w.workspace, "Mixed", [other, w.datasources[0]], owner=w.app.client_id)
    sb.powerbi.add_refresh(dataset, status="Failed", service_exception=naming(w, 0))
    w.rotate()
    clock.advance(60)

    report = h.healer.heal_dataset(w.workspace_id, dataset.id)

    assert targets(report) == [Action.UPDATED]
    assert dataset_outcome(report).action == Action.REFRESHED


def test_a_failure_naming_one_source_does_not_hold_back_another_that_did_not_change(manual: Any) -> None:
    """Two data sources under two secrets: the first one's password rotates and the refresh fails
    naming it; the second holds its version since before the failure. Once the first is healed
    the dataset is refreshed: the second was not the cause."""
    sb, clock, make = manual
    h0 = make(sources=2, shared_account=False, clock=clock.now)
    w = h0.world
    second = {**w.binding(), "name": "second", "secret": "second-password"}
    second["targets"] = [{"gatewayId": w.gateway_id, "datasourceId": w.datasource_ids[1]}]
    first = {**w.binding(), "targets": [{"gatewayId": w.gateway_id, "datasourceId": w.datasource_ids[0]}]}
    sb.vault.set_secret("second-password", w.secret)
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps({"bindings": [first, second]})}, clock=clock.now)
    assert targets(h.healer.heal_secret("second-password", retry_refreshes=False)) == [Action.UPDATED]
    dataset = both_sources(h)
    clock.advance(60)
    new = "Rotated#First-1"
    w.accounts[0].set_secret(new)
    failed_at = clock.now()
    sb.powerbi.add_refresh(dataset, status="Failed", service_exception=naming(w, 0), start=failed_at)
    sb.vault.set_secret(w.secret_name, new)
    clock.advance(60)

    report = h.healer.heal_dataset(w.workspace_id, dataset.id)

    by_target = {o.datasource_id: o.action for o in report.targets()}
    assert by_target == {w.datasource_ids[0]: Action.UPDATED, w.datasource_ids[1]: Action.CURRENT}
    assert dataset_outcome(report).action == Action.REFRESHED


# -- the account's evidence ------------------------------------------------------------------------
def test_a_lost_answer_on_the_account_holds_back_a_source_that_holds_the_version(manual: Any) -> None:
    """Two data sources, one account, one server: the first is accepted, the second's answer is
    lost (the account's verdict on the version is in doubt). A dataset on the first is not
    refreshed: its account may have counted a failed sign-in with the version."""
    sb, clock, make = manual
    h = make(sources=2, servers=1, env={"REMEDIATION_HTTP_TIMEOUT": "1"}, clock=clock.now)
    w = h.world
    sb.powerbi.add_refresh(w.datasets[0], status="Failed", service_exception=naming(w, 0))
    w.rotate()
    clock.advance(60)
    assert targets(h.healer.heal_target(w.gateway_id, w.datasource_ids[0])) == [Action.UPDATED]
    sb.faults.add("powerbi.update_datasource", after=True, drop=True)
    assert targets(h.healer.heal_target(w.gateway_id, w.datasource_ids[1])) == [Action.IN_DOUBT]
    clock.advance(60)

    outcome = dataset_outcome(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0]))

    assert outcome.action == Action.BLOCKED
    assert outcome.reason == GATE + f"{label(w, 0)} (its account's verdict on this version is in-doubt)."
    assert refresh_posts(sb) == 0


def test_an_operators_present_again_holds_back_what_was_accepted_before_it(manual: Any) -> None:
    """After an operator's "present again" (which is evidence: the version is in question), a data
    source that holds the version since before it is not refreshed on until it is seen accepted
    again."""
    sb, clock, make = manual
    h = make(sources=2, servers=1, env={"REMEDIATION_HTTP_TIMEOUT": "1"}, clock=clock.now)
    w = h.world
    sb.powerbi.add_refresh(w.datasets[0], status="Failed", service_exception=naming(w, 0))
    w.rotate()
    clock.advance(60)
    h.healer.heal_target(w.gateway_id, w.datasource_ids[0])
    sb.faults.add("powerbi.update_datasource", after=True, drop=True)
    h.healer.heal_target(w.gateway_id, w.datasource_ids[1])
    clock.advance(60)
    again = h.healer.heal_target(w.gateway_id, w.datasource_ids[1], present_again=True)
    assert targets(again) == [Action.UPDATED]
    clock.advance(60)

    outcome = dataset_outcome(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0]))

    assert outcome.reason == (
        GATE + f"{label(w, 0)} (evidence against this version on its account is newer than its acceptance)."
    )
    assert refresh_posts(sb) == 0


class _NoAccountEvidence:
    """A ledger whose account records cannot be read (a storage error); the rest works."""

    def __init__(self, inner: Ledger) -> None:
        self._inner = inner

    def account_version(self, *args: Any, **kwargs: Any) -> Any:
        raise LedgerError("storage unavailable")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_evidence_that_cannot_be_read_holds_back_every_source_it_concerns(manual: Any) -> None:
    """Both data sources hold the current version since after the failure (nothing to present),
    but their accounts' records cannot be read: the dataset waits, naming both."""
    sb, clock, make = manual
    h = make(sources=2, clock=clock.now)
    w = h.world
    dataset = both_sources(h)
    sb.powerbi.add_refresh(dataset, status="Failed", service_exception=naming(w, 0))
    w.rotate()
    clock.advance(60)
    assert targets(h.healer.heal_secret(w.secret_name, retry_refreshes=False)) == [Action.UPDATED] * 2
    broken = build_healer(
        Settings.from_env(h.env),
        ledger=_NoAccountEvidence(h.runtime.ledger),  # type: ignore[arg-type]
        clock=clock.now,
        sleep=h.sleeps,
        poll_interval=0.01,
    )
    try:
        report = broken.healer.heal_dataset(w.workspace_id, dataset.id)
    finally:
        broken.close()

    assert targets(report) == [Action.CURRENT, Action.CURRENT]
    outcome = dataset_outcome(report)
    assert outcome.reason == GATE + f"{label(w, 0)} (failed), {label(w, 1)} (failed)."
    assert refresh_posts(sb) == 0


# -- reading the refresh and its data sources -------------------------------------------------------
def test_a_dry_run_neither_learns_from_the_failure_nor_says_it_would_refresh_on_it(manual: Any) -> None:
    """The source refused the version it holds (named by the failure): a dry run reports the
    dataset blocked, and leaves the ledger as it was (no rejection recorded)."""
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    w.rotate()
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    clock.advance(60)
    w.rotate_sources_only()
    sb.powerbi.add_refresh(w.datasets[0], status="Failed", service_exception=naming(w, 0), start=clock.now())
    clock.advance(60)
    before = h.runtime.ledger.target_state(w.gateway_id, w.datasource_ids[0])

    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0], dry_run=True)

    assert targets(report) == [Action.CURRENT]
    outcome = dataset_outcome(report)
    assert (outcome.action, outcome.reason) == (
        Action.BLOCKED,
        GATE + f"{label(w, 0)} (unchanged since the failure).",
    )
    after = h.runtime.ledger.target_state(w.gateway_id, w.datasource_ids[0])
    assert (after.rejections, after.applied_version) == (before.rejections, before.applied_version)


def test_a_refresh_history_that_fails_once_is_read_again(manual: Any) -> None:
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()
    clock.advance(60)
    sb.faults.add("powerbi.refresh_history", status=403, body={"error": {"code": "Forbidden"}})

    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])

    assert targets(report) == [Action.UPDATED]
    assert dataset_outcome(report).action == Action.REFRESHED


def test_a_refresh_history_that_cannot_be_read_is_reported_for_the_dataset(manual: Any) -> None:
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()
    sb.faults.add("powerbi.refresh_history", status=403, body={"error": {"code": "Forbidden"}}, times=2)

    outcome = dataset_outcome(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0]))

    assert outcome.action == Action.FAILED
    assert outcome.reason.startswith("could not read the refresh history: ") and "403" in outcome.reason
    assert (outcome.workspace_id, outcome.dataset_id) == (w.workspace_id, w.dataset_ids[0])
    assert sb.requests.find("powerbi.update_datasource") == [] and refresh_posts(sb) == 0


def test_a_dataset_whose_data_sources_cannot_be_listed_is_reported_and_not_refreshed(manual: Any) -> None:
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()
    sb.faults.add("powerbi.get_datasources", status=403, body={"error": {"code": "Forbidden"}}, times=5)

    outcome = dataset_outcome(h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0]))

    assert outcome.action == Action.FAILED
    assert (
        outcome.reason.startswith("could not list the dataset's data sources: ") and "403" in outcome.reason
    )
    assert (outcome.workspace_id, outcome.dataset_id) == (w.workspace_id, w.dataset_ids[0])
    assert refresh_posts(sb) == 0


def test_a_failure_reported_without_its_start_time_still_lets_a_healed_dataset_refresh(manual: Any) -> None:
    """An event may carry a failed refresh without a start time: nothing is learnt from it (it
    cannot be placed against the versions), and a source healed now lets the dataset refresh."""
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    w.rotate()
    clock.advance(60)
    failed = Refresh(
        request_id="0f8fad5b-d9cb-469f-a165-70867728950e",
        refresh_type="Scheduled",
        start_time=None,
        end_time=datetime.fromtimestamp(clock.now(), UTC),
        status="Failed",
        service_exception_json=json.dumps(naming(w, 0)),
    )

    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0], latest=failed)

    assert targets(report) == [Action.UPDATED]
    assert dataset_outcome(report).action == Action.REFRESHED


# -- following a refresh to its end ----------------------------------------------------------------
def _following_healer(h: Harness, clock: ManualClock, waits: list[float], poll: float) -> Any:
    """The healer of ``h`` with the production poll cadence: its waits advance the shared clock
    (and, as every test's waits, end a loop that never stops waiting: ``Sleeps``' limit)."""
    limit = Sleeps()

    def sleep(seconds: float) -> None:
        limit(seconds)
        waits.append(seconds)
        clock.advance(seconds)

    return build_healer(Settings.from_env(h.env), clock=clock.now, sleep=sleep, poll_interval=poll)


def test_a_refresh_is_followed_to_its_end_with_polls_that_back_off_to_the_poll_interval(manual: Any) -> None:
    """A refresh that takes 20 s is followed until it completes: the history is read after 1,
    2 and 4 s, then every 5 s (the poll interval), and no more often."""
    sb, clock, make = manual
    h = make(clock=clock.now)
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()
    clock.advance(60)
    sb.powerbi.set_refresh_duration(20)
    waits: list[float] = []
    healer = _following_healer(h, clock, waits, poll=5.0)
    try:
        report = healer.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])
    finally:
        healer.close()

    assert dataset_outcome(report).action == Action.REFRESHED
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]  # 17 s then 22 s: done at 20
    assert len(sb.requests.find("powerbi.refresh_history")) >= len(waits) + 1
    assert refresh_posts(sb) == 1


@pytest.mark.parametrize("bound", ["follow-up limit", "run deadline"])
def test_a_refresh_is_followed_no_longer_than_the_follow_up_limit_or_the_run(manual: Any, bound: str) -> None:
    """REMEDIATION_REFRESH_TIMEOUT (or the run's deadline, if sooner) bounds the follow-up: a
    refresh still running then is reported as going on in Power BI, after the polls that fit."""
    sb, clock, make = manual
    limit = "12" if bound == "follow-up limit" else "600"
    h = make(clock=clock.now, env={"REMEDIATION_REFRESH_TIMEOUT": limit})
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()
    clock.advance(60)
    sb.powerbi.set_refresh_duration(3600)
    waits: list[float] = []
    healer = _following_healer(h, clock, waits, poll=5.0)
    try:
        deadline = None if bound == "follow-up limit" else clock.now() + 12
        report = healer.healer.heal_dataset(w.workspace_id, w.dataset_ids[0], deadline=deadline)
    finally:
        healer.close()

    assert waits == [1.0, 2.0, 4.0, 5.0]  # a poll at 12 s is within the 12 s; the next is not
    outcome = dataset_outcome(report)
    assert outcome.action == Action.REFRESHED and outcome.refresh_state in ("Unknown", "NotStarted")
    assert "it goes on in Power BI" in outcome.reason
    assert refresh_posts(sb) == 1
