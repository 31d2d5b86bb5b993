"""The promise, through the sandbox: per account and per secret version, the healer causes at
most one failed sign-in, whatever the number of data sources, runs, invocations, instances,
crashes or lost answers (issue 10). The sandbox's source systems count failed sign-ins per
account from every cause, like a domain controller, and lock the account at a threshold.

Each test counts the failed sign-ins of one account with one presented value
(``Account.failures_of``), and ends with the world converging after a proper rotation.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from remediation.config.settings import Settings
from remediation.edges.runtime import build_healer
from remediation.ledger import Ledger, LedgerError
from remediation.reconciler.healer import Action, Report
from remediation.telemetry.redaction import REDACTOR
from sandbox import Sandbox
from sandbox.powerbi import INVALID_CONNECTION_CREDENTIALS, pbi_error
from tests.support.harness import Harness, Make
from tests.support.world import build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

ROOT = Path(__file__).resolve().parents[2]
UPN = "svc.dataflow@contoso.com"


def wrong_value() -> str:
    return "Wrong#" + secrets.token_urlsafe(8)


def actions(outcomes: list[Any]) -> list[str]:
    return sorted(o.action or "" for o in outcomes)


def patches(sb: Sandbox) -> list[Any]:
    return sb.requests.find("powerbi.update_datasource")


def converge(h: Harness, runtime: Any = None) -> None:
    """A proper rotation (source first) heals every target with no failed sign-in."""
    w = h.world
    w.rotate()
    new = w.secret
    report = (runtime or h.runtime).healer.heal_secret(w.secret_name)
    assert {o.action for o in report.targets()} == {Action.UPDATED}, report.to_dict()
    assert w.account.failures_of(new) == 0
    assert all(w.stored_secret(d) == new for d in w.datasources)


# -- 1. fan-out -------------------------------------------------------------------------------------
def test_a_wrong_value_on_twenty_data_sources_of_one_account_costs_one_failed_sign_in(make: Make) -> None:
    h = make(sources=20)
    w = h.world
    wrong = wrong_value()
    w.put_in_vault(wrong)

    first = h.healer.heal_secret(w.secret_name)
    sweeps = [h.healer.sweep() for _ in range(3)]
    elsewhere = h.another_instance().healer.heal_secret(w.secret_name)  # another instance, same ledger

    assert actions(first.targets()) == ["blocked"] * 19 + ["rejected"]
    assert all(o.action == Action.BLOCKED for r in (*sweeps, elsewhere) for o in r.targets())
    assert len(patches(h.sb)) == 1
    assert w.account.failures_of(wrong) == 1 and not w.account.locked
    assert first.exit_code == 1
    converge(h)


def test_the_version_fans_out_only_after_one_target_of_the_account_accepted_it(make: Make) -> None:
    h = make(sources=6)
    w = h.world
    w.rotate()

    report = h.healer.heal_secret(w.secret_name, retry_refreshes=False)

    assert actions(report.targets()) == ["updated"] * 6
    first, *others = sorted(patches(h.sb), key=lambda r: r.at)
    assert len(others) == 5
    # The first PATCH was answered before any other was sent.
    assert first.status == 200 and first.answered_at is not None
    assert [r for r in others if r.at < first.answered_at] == []


# -- 2. vault first, source later ------------------------------------------------------------------
def test_a_vault_first_rotation_waits_for_the_settle_time_and_does_not_burn_the_version(manual: Any) -> None:
    sb, clock, make = manual
    h = make(sources=3, env={"REMEDIATION_SETTLE_SECONDS": "60"}, clock=clock.now)
    w = h.world
    version = w.rotate(order="vault-first", delay=20)  # Key Vault now, the login 20 s later

    early = h.healer.heal_secret(w.secret_name, event_version=version)
    sweep = h.healer.sweep()
    assert {o.action for o in (*early.targets(), *sweep.targets())} == {Action.SETTLING}
    created = sb.vault.get_secret(w.secret_name).created
    assert early.retry_at == pytest.approx(created + 60)
    assert patches(sb) == [] and early.exit_code == 1

    clock.advance(61)
    healed = h.healer.heal_secret(w.secret_name)

    assert actions(healed.targets()) == ["updated"] * 3
    assert w.account.failures_of(w.secret) == 0


def test_without_a_settle_time_a_vault_first_rotation_burns_its_version_once(manual: Any) -> None:
    """What the settle time prevents (and proof that the sandbox plays the vault-first order)."""
    sb, clock, make = manual
    h = make(sources=3, env={"REMEDIATION_SETTLE_SECONDS": "0"}, clock=clock.now)
    w = h.world
    w.rotate(order="vault-first", delay=20)

    report = h.healer.heal_secret(w.secret_name)
    clock.advance(30)
    later = h.healer.sweep()

    assert actions(report.targets()) == ["blocked", "blocked", "rejected"]
    assert {o.action for o in later.targets()} == {Action.BLOCKED}  # burnt, but only once
    assert w.account.failures_of(w.secret) == 1


# -- 3. no refresh on known-bad credentials --------------------------------------------------------
def test_no_refresh_and_no_schedule_while_the_source_rejects_the_version_it_holds(make: Make) -> None:
    h = make()
    w = h.world
    w.rotate()
    h.healer.heal_secret(w.secret_name)
    held = w.secret
    w.rotate_sources_only()  # the password changed behind Key Vault's back
    w.fail_scheduled_refreshes()  # Power BI's own refresh: the one failed sign-in with `held`
    posts = len(h.sb.requests.find("powerbi.refresh_dataset"))

    reports = [h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])]
    reports += [h.healer.sweep() for _ in range(3)]

    for report in reports:
        assert {o.action for o in report.targets()} == {Action.BLOCKED}, report.to_dict()
        assert report.exit_code == 1
    assert {o.action for o in reports[0].datasets()} == {Action.BLOCKED}
    assert len(h.sb.requests.find("powerbi.refresh_dataset")) == posts
    assert h.sb.requests.find("powerbi.update_refresh_schedule") == []
    assert not w.datasets[0].schedule.enabled
    assert w.account.failures_of(held) == 1
    converge(h)


# -- 4. verdicts that never come back --------------------------------------------------------------
@pytest.mark.parametrize(
    "fault",
    [
        {"after": True, "drop": True},
        {"after": True, "status": 503},
        {"after": True, "delay": 2.5},
    ],
    ids=["dropped", "503-after-the-test", "answer-too-late"],
)
def test_a_lost_verdict_is_in_doubt_and_not_presented_again(make: Make, fault: dict[str, Any]) -> None:
    h = make(sources=3, env={"REMEDIATION_HTTP_TIMEOUT": "1"})
    w = h.world
    wrong = wrong_value()
    w.put_in_vault(wrong)
    h.sb.faults.add("powerbi.update_datasource", **fault)

    first = h.healer.heal_secret(w.secret_name)
    later = [h.healer.sweep() for _ in range(3)]

    assert actions(first.targets()) == ["in-doubt"] * 3
    assert all(o.action == Action.IN_DOUBT for r in later for o in r.targets())
    assert len(patches(h.sb)) == 1  # never retried, in the run or after
    assert w.account.failures_of(wrong) == 1
    assert "--present-again" in (first.targets()[0].reason or "")
    converge(h)


def test_a_patch_whose_answer_trickles_in_after_the_test_is_in_doubt_within_its_deadline(make: Make) -> None:
    """Each byte of the answer comes within the read timeout (1 s), so only the request's total
    deadline (connect 1 s + read 1 s) ends the wait: the verdict is lost, the run goes on."""
    h = make(sources=3, env={"REMEDIATION_HTTP_TIMEOUT": "1"})
    w = h.world
    wrong = wrong_value()
    w.put_in_vault(wrong)
    h.sb.faults.add("powerbi.update_datasource", after=True, trickle=0.1)

    started = time.monotonic()
    first = h.healer.heal_secret(w.secret_name)
    elapsed = time.monotonic() - started
    later = h.healer.sweep()

    assert actions(first.targets()) == ["in-doubt"] * 3, first.to_dict()
    assert elapsed < 4.0, elapsed  # about 2 s (the deadline), not the minute the answer takes
    assert all(o.action == Action.IN_DOUBT for o in later.targets())
    (patch,) = patches(h.sb)
    assert patch.processed_status == 400 and (patch.fault or "").startswith("after-trickle")
    assert w.account.failures_of(wrong) == 1
    converge(h)


def test_an_operator_presents_an_in_doubt_version_again_once_the_source_has_it(make: Make) -> None:
    h = make(sources=3)
    w = h.world
    version = w.rotate()
    h.sb.faults.add("powerbi.update_datasource", after=True, drop=True)  # accepted, answer lost
    assert {o.action for o in h.healer.heal_secret(w.secret_name).targets()} == {Action.IN_DOUBT}

    again = h.healer.heal_secret(w.secret_name, present_again=True)
    after = h.healer.heal_secret(w.secret_name)

    assert actions(again.targets()) == ["updated"] * 3
    assert actions(after.targets()) == ["already-current"] * 3
    assert [o.secret_version for o in again.targets()] == [version] * 3
    assert w.account.failures_of(w.secret) == 0


def test_a_healer_killed_mid_patch_leaves_the_version_in_doubt(make: Make, tmp_path: Path) -> None:
    h = make(sources=2)
    w = h.world
    wrong = wrong_value()
    w.put_in_vault(wrong)
    h.sb.faults.add("powerbi.update_datasource", after=True, hold=True)
    child = subprocess.Popen(
        [sys.executable, "-m", "remediation", "heal", "--secret", w.secret_name],
        cwd=ROOT,
        env={**os.environ, **h.env, "APPLICATIONINSIGHTS_CONNECTION_STRING": ""},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert h.sb.faults.wait_held("powerbi.update_datasource", timeout=60)
        child.send_signal(signal.SIGKILL)  # the worker dies after the source tested the value
        child.wait(timeout=30)
    finally:
        h.sb.faults.release_held()
        if child.poll() is None:
            child.kill()

    # Right away another run waits for the dead run's claim; once it has expired, in doubt.
    now = h.another_instance().healer.heal_secret(w.secret_name)
    later = h.another_instance(clock=lambda: time.time() + 3600).healer.heal_secret(w.secret_name)

    assert {o.action for o in now.targets()} == {Action.BUSY}
    assert {o.action for o in later.targets()} == {Action.IN_DOUBT}
    assert len(patches(h.sb)) == 1
    assert w.account.failures_of(wrong) == 1
    converge(h, h.another_instance(clock=lambda: time.time() + 3600))


# -- 5. two invocations in one worker --------------------------------------------------------------
def test_concurrent_invocations_of_one_worker_present_a_version_once(make: Make) -> None:
    h = make(sources=4)
    w = h.world
    wrong = wrong_value()
    w.put_in_vault(wrong)
    h.sb.faults.add("powerbi.update_datasource", after=True, hold=True)
    reports: dict[str, Report] = {}
    event = threading.Thread(
        target=lambda: reports.__setitem__("event", h.healer.heal_secret(w.secret_name, trigger="eventgrid"))
    )
    event.start()
    try:
        assert h.sb.faults.wait_held("powerbi.update_datasource", timeout=30)
        reports["timer"] = h.healer.sweep(trigger="timer")  # the same worker, meanwhile
        reports["dataset"] = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[1], trigger="refresh-event")
    finally:
        h.sb.faults.release_held()
        event.join(timeout=60)

    assert {o.action for o in reports["timer"].targets()} == {Action.BUSY}
    assert {o.action for o in reports["dataset"].targets()} == {Action.BUSY}
    assert actions(reports["event"].targets()) == ["blocked"] * 3 + ["rejected"]
    assert len(patches(h.sb)) == 1
    assert w.account.failures_of(wrong) == 1
    converge(h)


# -- 6. the product's own identity failing ---------------------------------------------------------
def test_the_products_own_sign_in_failing_is_never_a_rejection_of_the_binding(make: Make) -> None:
    h = make(sources=2)
    w = h.world
    version = w.rotate()
    app = w.app
    good = app.secret
    app.secret = "rotated-by-someone-" + secrets.token_hex(4)  # the product's client secret expired

    broken = h.another_instance().healer.heal_secret(w.secret_name)
    app.secret = good
    fixed = h.another_instance().healer.heal_secret(w.secret_name)

    assert {o.action for o in broken.targets()} == {Action.FAILED}, broken.to_dict()
    assert all("AADSTS" in (o.reason or "") or "sign in" in (o.reason or "") for o in broken.targets())
    assert actions(fixed.targets()) == ["updated", "updated"]
    assert [o.secret_version for o in fixed.targets()] == [version, version]
    state = h.runtime.ledger.account_version(f"user:{w.username}", w.secret_name, version)
    assert state.verdict is None


# -- 7. the password grant of caller-identity bindings ---------------------------------------------
@pytest.mark.usefixtures("port_443")
def test_a_wrong_password_of_a_caller_identity_account_is_tried_once(make: Make, sb: Sandbox) -> None:
    password = "Correct#Horse-Battery-1"
    sb.entra.add_user(UPN, password)
    w = build_world(
        sb,
        sources=3,
        cloud=True,
        credential_type="OAuth2",
        datasource_type="Extension",
        username=UPN,
        secret=password,
        secret_name="pbi-service-account",
        binding_name="dataflow",
        caller_identity_only=True,
        oauth2="caller-identity",
    )
    h = make(w)
    wrong = wrong_value()
    w.put_in_vault(wrong)

    first = h.healer.heal_secret(w.secret_name)
    later = [h.healer.sweep() for _ in range(2)]

    assert actions(first.targets()) == ["blocked", "blocked", "rejected"]
    assert "AADSTS50126" in (next(o for o in first.targets() if o.action == "rejected").reason or "")
    assert all(o.action == Action.BLOCKED for r in later for o in r.targets())
    account = sb.sources.account(UPN)
    assert account.failures_of(wrong) == 1 and not account.locked
    assert patches(sb) == []

    new = "Rotated#Horse-Battery-2"
    sb.entra.set_user_password(UPN, new)
    w.put_in_vault(new)
    healed = h.healer.heal_secret(w.secret_name)
    again = h.healer.heal_secret(w.secret_name)
    assert actions(healed.targets()) == ["updated"] * 3
    assert actions(again.targets()) == ["already-current"] * 3
    grants = [t for t in sb.entra.tokens_issued("user") if t.principal.lower() == UPN]
    assert len(grants) == 1  # one password grant for the version, not one per data source or heal


@pytest.mark.usefixtures("port_443")
def test_a_new_version_of_a_caller_identity_password_is_signed_in_with_never_a_cached_token(
    make: Make, sb: Sandbox
) -> None:
    """One worker, two requests: the token granted for version 1's password must not answer for
    version 2, whose password nobody has checked (it would be recorded accepted unchecked)."""
    password = "Correct#Horse-Battery-1"
    sb.entra.add_user(UPN, password)
    w = build_world(
        sb,
        sources=2,
        cloud=True,
        credential_type="OAuth2",
        datasource_type="Extension",
        username=UPN,
        secret=password,
        secret_name="pbi-service-account",
        binding_name="dataflow",
        caller_identity_only=True,
        oauth2="caller-identity",
    )
    h = make(w)
    first = h.healer.heal_secret(w.secret_name)
    assert actions(first.targets()) == ["updated"] * 2, first.to_dict()

    wrong = wrong_value()
    version = w.put_in_vault(wrong)  # within the hour of version 1's token
    second = h.healer.heal_secret(w.secret_name)

    assert actions(second.targets()) == ["blocked", "rejected"], second.to_dict()
    assert all(o.secret_version == version for o in second.targets())
    assert "AADSTS50126" in (next(o for o in second.targets() if o.action == "rejected").reason or "")
    account = sb.sources.account(UPN)
    assert account.failures_of(wrong) == 1
    grants = [t for t in sb.entra.tokens_issued("user") if t.principal.lower() == UPN]
    assert len(grants) == 1  # version 1's; version 2 got none


# -- 8. datasets with several sources --------------------------------------------------------------
def _two_source_dataset(h: Harness) -> Any:
    w = h.world
    return h.sb.powerbi.add_dataset(w.workspace, "Two sources", w.datasources[:2], owner=w.app.client_id)


def test_a_failure_is_blamed_only_on_the_data_source_it_names(make: Make) -> None:
    h = make(sources=2, shared_account=False)
    w = h.world
    w.rotate()
    h.healer.heal_secret(w.secret_name)
    dataset = _two_source_dataset(h)
    first, second = w.accounts
    held = w.secret
    first.set_secret("Changed#Behind-The-Back")  # only the first source's login changed
    h.sb.powerbi.start_refresh(dataset)
    h.sb.powerbi.settle()

    report = h.healer.heal_dataset(w.workspace_id, dataset.id)

    by_target = {o.datasource_id: o.action for o in report.targets()}
    assert by_target == {w.datasource_ids[0]: Action.BLOCKED, w.datasource_ids[1]: Action.CURRENT}
    assert {o.action for o in report.datasets()} == {Action.BLOCKED}
    ledger: Ledger = h.runtime.ledger
    assert ledger.target_state(w.gateway_id, w.datasource_ids[0]).is_rejected(w.version)
    assert not ledger.target_state(w.gateway_id, w.datasource_ids[1]).is_rejected(w.version)
    assert first.failures_of(held) == 1 and second.failures_of(held) == 0
    assert h.sb.requests.find("powerbi.refresh_dataset") == []


def test_no_refresh_while_an_unbound_source_of_the_dataset_is_failing(make: Make) -> None:
    h = make(sources=2, shared_account=False)
    w = h.world
    unbound = h.sb.sources.add("unbound-src", credential_type="Basic", username="other", secret="Other#1")
    other = h.sb.powerbi.add_datasource(
        w.gateway, unbound, connection_details={"server": "other", "database": "x"}
    )
    dataset = h.sb.powerbi.add_dataset(w.workspace, "Mixed", [w.datasources[0], other], owner=w.app.client_id)
    h.sb.powerbi.store_credential(other, {"username": "other", "password": "Stale#0"})
    w.rotate()
    h.sb.powerbi.add_refresh(
        dataset, status="Failed", service_exception=pbi_error(INVALID_CONNECTION_CREDENTIALS)
    )

    report = h.healer.heal_dataset(w.workspace_id, dataset.id)

    assert Action.UNBOUND in {o.action for o in report.datasets()}
    assert h.sb.requests.find("powerbi.refresh_dataset") == []


# -- 9. one failure stops nothing ------------------------------------------------------------------
class _BrokenFor:
    """A ledger that fails for one data source (a storage error), and works for the others."""

    def __init__(self, inner: Ledger, datasource_id: str) -> None:
        self._inner, self._broken = inner, datasource_id

    def acquire_lease(self, gateway_id: str, datasource_id: str, *args: Any, **kwargs: Any) -> Any:
        if datasource_id == self._broken:
            raise LedgerError("storage unavailable")
        return self._inner.acquire_lease(gateway_id, datasource_id, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_ledger_error_on_one_target_stops_nothing_else_and_every_outcome_is_kept(
    make: Make, tmp_path: Path
) -> None:
    h = make(sources=3)
    w = h.world
    w.rotate()
    settings = Settings.from_env(h.env)
    runtime = build_healer(
        settings,
        ledger=_BrokenFor(h.runtime.ledger, w.datasource_ids[1]),
        poll_interval=0.01,  # type: ignore[arg-type]
    )
    try:
        report = runtime.healer.heal_secret(w.secret_name, retry_refreshes=False)
    finally:
        runtime.healer.ledger = h.runtime.ledger

    by_target = {o.datasource_id: o.action for o in report.targets()}
    assert by_target[w.datasource_ids[1]] == Action.FAILED
    assert [by_target[d] for d in (w.datasource_ids[0], w.datasource_ids[2])] == [Action.UPDATED] * 2
    stored = {(o.datasource_id, o.action) for o in h.runtime.ledger.outcomes() if o.datasource_id}
    assert {(o.datasource_id, o.action) for o in report.targets()} <= stored
    assert REDACTOR.redact(w.secret) == w.secret  # the value is no longer held for redaction
