"""Fail closed, through the sandbox: the promise holds against the answers the real services give.

Per account and secret version the healer causes at most one failed sign-in (beyond exactly one
per operator request), and never starts a refresh or turns a schedule on while a dataset's
credentials are known bad. Each test here is a case that broke it (issue 17); each counts the
failed sign-ins of one account with one presented value (``Account.failures_of``), and refreshes
and schedules as Power BI saw them.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from remediation.reconciler.healer import Action
from sandbox import Sandbox
from sandbox.refusals import POWERBI_REFUSALS
from tests.sandbox.conftest import manual_world
from tests.support.harness import Make

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


def wrong_value() -> str:
    return "Wrong#" + secrets.token_urlsafe(8)


def patches(sb: Sandbox) -> list[Any]:
    return sb.requests.find("powerbi.update_datasource")


def refreshes(sb: Sandbox) -> list[Any]:
    return sb.requests.find("powerbi.refresh_dataset")


def schedule_updates(sb: Sandbox) -> list[Any]:
    return sb.requests.find("powerbi.update_refresh_schedule")


@pytest.fixture
def manual(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A sandbox and healers on one manual clock (refresh times and evidence ages without waiting);
    Entra's tokens outlive its jumps (the SDKs cache them by the wall clock)."""
    yield from manual_world(monkeypatch, tmp_path, token_lifetime=30 * 86400.0)


# -- 1. a refused SQL login is a rejection, in every shape -------------------------------------------
@pytest.mark.parametrize("shape", POWERBI_REFUSALS)
def test_six_data_sources_of_one_account_cost_one_failed_sign_in_whatever_shape_the_refusal_takes(
    make: Make, shape: str
) -> None:
    h = make(sources=6, refusal=shape)
    w = h.world
    wrong = wrong_value()
    w.put_in_vault(wrong)

    reports = [h.healer.heal_secret(w.secret_name), h.healer.heal_secret(w.secret_name), h.healer.sweep()]

    assert w.account.failures_of(wrong) == 1, (shape, w.account.failures_by_fingerprint())
    assert len(patches(h.sb)) == 1
    first = {o.action for o in reports[0].targets()}
    # A refusal it recognises is a rejection; one it does not is in doubt: never "not presented".
    assert first <= {Action.REJECTED, Action.IN_DOUBT, Action.BLOCKED}, reports[0].to_dict()
    assert all(r.exit_code == 1 for r in reports)
    if shape in ("unknown-gateway-code", "unknown-code", "unreadable"):
        assert Action.IN_DOUBT in first
    else:
        assert Action.REJECTED in first
    # A proper rotation still heals everything, with no failed sign-in.
    w.rotate()
    healed = h.healer.heal_secret(w.secret_name)
    assert {o.action for o in healed.targets()} == {Action.UPDATED}
    assert w.account.failures_of(w.secret) == 0


def test_a_refused_sql_login_found_by_a_refresh_is_healed_as_a_credential_failure(make: Make) -> None:
    """The sweep reads DataSourceAccessError with "Login failed" (18456) as a credential failure:
    a rotation nobody announced is healed, and the dataset refreshed."""
    h = make(sources=1, refusal="sql-login-failed")
    w = h.world
    w.rotate()  # source first; Key Vault has it, the event is lost
    w.fail_scheduled_refreshes()
    assert "DataSourceAccessError" in (w.datasets[0].refreshes[-1].service_exception or "")

    report = h.healer.sweep()

    assert [o.action for o in report.targets()] == [Action.UPDATED]
    assert [o.action for o in report.datasets()] == [Action.REFRESHED], report.to_dict()
    assert w.account.failures_of(w.secret) == 0


# -- 2. no refresh on a version known bad ------------------------------------------------------------
def test_a_dataset_is_not_refreshed_on_a_version_another_dataset_proved_bad(manual: Any) -> None:
    sb, clock, make = manual
    h = make(sources=2, servers=1, clock=clock.now)
    w = h.world
    first, second = w.datasets
    w.rotate()
    w.fail_scheduled_refreshes()  # both fail on the old value: Power BI's doing
    clock.advance(60)
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)  # the new value is accepted
    current = w.secret

    clock.advance(60)
    w.rotate_sources_only()  # the password changes behind Key Vault's back
    sb.powerbi.start_refresh(first)  # the first dataset's scheduled refresh fails on it
    sb.powerbi.settle()
    assert w.account.failures_of(current) == 1
    clock.advance(60)
    h.healer.heal_dataset(w.workspace_id, first.id)  # its failure is read: the version is bad
    sb.requests.clear()

    # The second dataset's last failure predates the heal; its source holds the version.
    report = h.healer.heal_dataset(w.workspace_id, second.id)

    (dataset,) = report.datasets()
    assert dataset.action == Action.BLOCKED, report.to_dict()
    assert refreshes(sb) == [] and schedule_updates(sb) == []
    assert not second.schedule.enabled
    assert w.account.failures_of(current) == 1
    assert report.exit_code == 1


def test_in_one_sweep_a_failure_on_a_version_stops_the_refresh_of_every_dataset_on_it(manual: Any) -> None:
    """Both failures are read before either dataset is refreshed, whatever the order."""
    sb, clock, make = manual
    h = make(sources=3, servers=1, clock=clock.now)
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()
    clock.advance(60)
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    current = w.secret
    clock.advance(60)
    w.rotate_sources_only()
    sb.powerbi.start_refresh(w.datasets[2])  # only the last one has seen the new password fail
    sb.powerbi.settle()
    clock.advance(60)
    sb.requests.clear()

    report = h.healer.sweep()

    assert refreshes(sb) == [], report.to_dict()
    assert w.account.failures_of(current) == 1  # the scheduled refresh's, nothing of the healer's


def test_an_unchanged_source_is_not_refreshed_when_the_failure_names_no_source(manual: Any) -> None:
    """A dataset on two accounts whose failure names neither: a source that holds the current
    version since before the failure may be the one failing; no refresh until that is settled."""
    sb, clock, make = manual
    h = make(sources=2, shared_account=False, clock=clock.now)
    w = h.world
    dataset = sb.powerbi.add_dataset(w.workspace, "two sources", w.datasources, owner=w.app.client_id)
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)  # both hold the current version
    clock.advance(60)
    w.sources[1].account.set_secret("changed-behind-the-vault-" + secrets.token_hex(4))
    w.set_refusal("sql-login-failed")  # no DataSourceKind/Path: the failure names no source
    sb.powerbi.start_refresh(dataset)
    sb.powerbi.settle()
    failures = w.accounts[1].total_failures
    clock.advance(60)
    sb.requests.clear()

    report = h.healer.heal_dataset(w.workspace_id, dataset.id)

    assert refreshes(sb) == [], report.to_dict()
    assert [o.action for o in report.datasets()] == [Action.BLOCKED]
    assert w.accounts[1].total_failures == failures


@pytest.mark.parametrize("first", ["completes", "still runs"])
def test_a_later_command_refreshes_one_dataset_per_account_and_waits_for_its_outcome(
    manual: Any, first: str
) -> None:
    """A command that has not seen the version accepted itself refreshes one dataset per account
    first (a refresh is a sign-in). Once that refresh completed, the account's other datasets
    follow; while its outcome is unknown, they wait for a later run, naming the account."""
    sb, clock, make = manual
    h = make(sources=3, servers=1, clock=clock.now, env={"REMEDIATION_REFRESH_TIMEOUT": "0"})
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()
    clock.advance(60)
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)  # accepted, in another command
    clock.advance(60)
    sb.powerbi.set_refresh_duration(0 if first == "completes" else 3600)
    sb.requests.clear()

    report = h.healer.sweep()

    outcomes = sorted((o.action, o.reason, o.refresh_state) for o in report.datasets())
    if first == "completes":
        assert len(refreshes(sb)) == 3, outcomes
        assert [(a, s) for a, _, s in outcomes] == [(Action.REFRESHED, "Completed")] * 3
        assert all(d.schedule.enabled for d in w.datasets)
    else:
        assert len(refreshes(sb)) == 1, outcomes
        assert [a for a, _, _ in outcomes].count(Action.DEFERRED) == 2, outcomes
        for action, reason, _ in outcomes:
            if action == Action.DEFERRED:
                assert f"first to sign in as {w.username} with this version" in reason
    assert w.account.failures_of(w.secret) == 0


# -- 3. "present again" is one presentation per request ----------------------------------------------
def test_present_again_is_one_presentation_per_request_whatever_its_parts_and_redeliveries(
    make: Make,
) -> None:
    h = make(sources=4)
    w = h.world
    wrong = wrong_value()
    w.put_in_vault(wrong)
    h.healer.heal_secret(w.secret_name)
    assert w.account.failures_of(wrong) == 1

    # One operator request, fanned out to a part per target, and redelivered.
    request = "operator-request-1"
    for _ in range(2):
        for datasource in w.datasources:
            h.healer.heal_target(
                w.gateway_id, datasource.id, present_again=True, correlation_id=request, trigger="queue"
            )
        h.healer.heal_secret(w.secret_name, present_again=True, correlation_id=request)

    assert w.account.failures_of(wrong) == 2  # the rotation's one, and the request's one
    # Another request is one more presentation, and only one.
    h.healer.heal_secret(w.secret_name, present_again=True, correlation_id="operator-request-2")
    h.healer.heal_secret(w.secret_name, present_again=True, correlation_id="operator-request-2")
    assert w.account.failures_of(wrong) == 3


def test_present_again_after_the_source_got_the_value_heals_everything_with_one_probe(make: Make) -> None:
    h = make(sources=4, servers=1)
    w = h.world
    value = wrong_value()
    w.put_in_vault(value)
    h.healer.heal_secret(w.secret_name)  # rejected: the source did not have it yet
    for account in w.accounts:
        account.set_secret(value)  # now it does
    sb = h.sb
    sb.requests.clear()

    report = h.healer.heal_secret(w.secret_name, present_again=True, correlation_id="fixed-at-source")

    assert {o.action for o in report.targets()} == {Action.UPDATED}, report.to_dict()
    assert w.account.failures_of(value) == 1  # the first, before the source had it


# -- 4. an acceptance is not a blank cheque -----------------------------------------------------------
def test_a_lost_answer_after_an_acceptance_is_in_doubt_for_the_account_and_not_presented_again(
    make: Make,
) -> None:
    h = make(sources=3, servers=1)
    w = h.world
    w.rotate()
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    current = w.secret
    w.rotate_sources_only()  # behind Key Vault's back; nobody has seen it yet
    for datasource in w.datasources[1:]:  # two targets must be sent the value again (a Take Over)
        h.runtime.ledger.forget_applied(w.gateway_id, datasource.id)
    h.sb.faults.add("powerbi.update_datasource", after=True, drop=True, times=1)

    reports = [h.healer.sweep(), h.healer.sweep(), h.another_instance().healer.sweep()]

    assert w.account.failures_of(current) == 1, w.account.failures_by_fingerprint()
    actions = [o.action for r in reports for o in r.targets() if o.datasource_id != w.datasources[0].id]
    assert Action.IN_DOUBT in actions and Action.UPDATED not in actions


def test_the_parts_of_a_later_fan_out_check_an_old_acceptance_on_one_target_first(make: Make) -> None:
    """Queue parts run at the same moment, each its own run: an acceptance another command saw
    earlier does not let them all present at once."""
    h = make(sources=4, servers=1)
    w = h.world
    w.rotate()
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    current = w.secret
    w.rotate_sources_only()  # behind Key Vault's back
    for datasource in w.datasources:  # every target must be sent the value again (a Take Over)
        h.runtime.ledger.forget_applied(w.gateway_id, datasource.id)
    parts = [h.another_instance() for _ in w.datasources]

    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        reports = list(
            pool.map(
                lambda pair: pair[0].healer.heal_target(
                    w.gateway_id, pair[1].id, correlation_id="fan-out-2", trigger="queue"
                ),
                zip(parts, w.datasources, strict=True),
            )
        )

    assert w.account.failures_of(current) == 1, [o.action for r in reports for o in r.targets()]


# -- 5. recovery without an operator -----------------------------------------------------------------
def test_a_locked_account_heals_with_no_operator_once_it_is_unlocked_and_rotated(manual: Any) -> None:
    sb, clock, make = manual
    h = make(sources=2, servers=1, clock=clock.now)
    sb.powerbi.report_lockouts = True
    w = h.world
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    w.account.locked = True  # someone else's stale password locked it
    w.fail_scheduled_refreshes()
    clock.advance(60)
    blocked = h.healer.sweep()
    assert {o.action for o in blocked.datasets()} == {Action.BLOCKED}, blocked.to_dict()

    clock.advance(3600)
    w.account.unlock()  # an administrator unlocks the account and rotates the password
    w.rotate()
    clock.advance(60)
    sb.requests.clear()
    healed = h.healer.sweep()

    assert {o.action for o in healed.targets()} == {Action.UPDATED}, healed.to_dict()
    assert {o.action for o in healed.datasets()} == {Action.REFRESHED}, healed.to_dict()
    assert all(d.schedule.enabled for d in w.datasets)
    assert w.account.failures_of(w.secret) == 0


def test_a_late_refresh_failure_event_does_not_reject_a_newer_accepted_version(manual: Any) -> None:
    sb, clock, make = manual
    h = make(sources=1, clock=clock.now)
    sb.powerbi.report_lockouts = True
    w = h.world
    w.account.locked = True
    w.fail_scheduled_refreshes()  # fails: locked, with the version of then
    clock.advance(60)
    w.account.unlock()
    w.rotate()
    clock.advance(60)
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)  # the new version is accepted
    clock.advance(60)

    # The failure's event arrives late (or is redelivered): it speaks of the old version.
    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])

    assert [o.action for o in report.datasets()] == [Action.REFRESHED], report.to_dict()
    state = h.runtime.ledger.account_version(report.targets()[0].account or "", w.secret_name, w.version)
    assert state.verdict is None


# -- 6. failures that involve no sign-in are not rejections --------------------------------------------
def test_credentials_cleared_at_the_source_are_put_back_not_taken_for_a_rejection(manual: Any) -> None:
    sb, clock, make = manual
    h = make(sources=1, cloud=True, clock=clock.now)
    w = h.world
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    clock.advance(60)
    sb.powerbi.clear_credentials(w.datasources[0])  # e.g. a Take Over in the portal
    w.fail_scheduled_refreshes()
    assert "CredentialsNotSpecified" in (w.datasets[0].refreshes[-1].service_exception or "")
    clock.advance(60)

    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])

    assert [o.action for o in report.targets()] == [Action.UPDATED], report.to_dict()
    assert [o.action for o in report.datasets()] == [Action.REFRESHED]
    assert w.stored_secret(w.datasources[0]) == w.secret
    assert w.account.total_failures == 0
