"""The healer through the sandbox, with the real SDK clients built by ``build_healer``.

Each test builds its own world (``tests.support.world``) and asserts what a user would notice:
the requests Power BI received, what the source systems saw, refresh history and schedules, and
the ledger.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import sqlite3
import time
from collections import Counter
from typing import Any

import pytest

from remediation.config.settings import Settings
from remediation.edges.cli import main
from remediation.edges.runtime import Runtime, build_healer
from remediation.errors import RemediationError
from remediation.reconciler.healer import Action, Report
from sandbox import Sandbox
from sandbox.gateway_keys import GatewayKeyPair
from sandbox.powerbi import GATEWAY_UNREACHABLE, INVALID_CONNECTION_CREDENTIALS, Datasource, pbi_error
from sandbox.recorder import RecordedRequest
from tests.support.harness import Harness, Make
from tests.support.world import World, build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

UPN = "svc.dataflow@contoso.com"


# -- helpers ------------------------------------------------------------------------------------
def patches(sb: Sandbox) -> list[RecordedRequest]:
    return sb.requests.find("powerbi.update_datasource")


def powerbi_writes(sb: Sandbox) -> list[RecordedRequest]:
    return [r for r in sb.requests.find(service="powerbi") if r.method != "GET"]


def refresh_posts(sb: Sandbox) -> list[RecordedRequest]:
    return sb.requests.find("powerbi.refresh_dataset")


def actions(report: Report) -> list[str]:
    return [o.action or "" for o in report.outcomes]


def target_actions(report: Report) -> list[str]:
    return [o.action or "" for o in report.targets()]


def dataset_actions(report: Report) -> list[str]:
    return [o.action or "" for o in report.datasets()]


def latest_status(world: World, index: int = 0) -> str:
    return world.sb.powerbi.history(world.datasets[index])[0].status


def stored_matches_source(ds: Datasource) -> bool:
    cred = ds.credential
    assert cred is not None
    source = ds.source
    if source.credential_type in ("Basic", "Windows"):
        return cred.data == {"username": source.username, "password": source.secret}
    if source.credential_type == "Key":
        return cred.data == {"key": source.secret}
    if source.credential_type == "SAS":
        return cred.data == {"token": source.secret}
    return False


def failed_attempts(ds: Datasource) -> int:
    return sum(1 for a in ds.update_attempts if a.outcome != "ok")


# -- credential types and encryption ------------------------------------------------------------
@pytest.mark.parametrize(
    ("credential_type", "datasource_type", "username"),
    [
        ("Basic", "Sql", "svc_pbi"),
        ("Windows", "Folder", "CONTOSO\\svc_pbi"),
        ("Key", "AzureTables", None),
        ("SAS", "AzureBlobs", None),
    ],
)
def test_each_credential_type_is_healed_after_rotation(
    make: Make, credential_type: str, datasource_type: str, username: str | None
) -> None:
    h = make(credential_type=credential_type, datasource_type=datasource_type, username=username)
    w = h.world
    version = w.rotate()

    report = h.healer.heal_secret(w.secret_name)

    assert target_actions(report) == [Action.UPDATED]
    assert report.exit_code == 0
    (patch,) = patches(h.sb)
    assert patch.status == 200
    assert patch.body["credentialDetails"]["credentialType"] == credential_type
    assert stored_matches_source(w.datasources[0])
    assert w.sources[0].history[-1] == "ok" and w.sources[0].total_failures == 0
    assert h.runtime.ledger.target_state(w.gateway_id, w.datasource_ids[0]).holds(w.secret_name, version)


@pytest.mark.parametrize("bits", [1024, 2048])
def test_both_gateway_encryption_schemes_are_accepted(make: Make, bits: int) -> None:
    h = make(bits=bits)
    w = h.world
    w.rotate()

    report = h.healer.heal_secret(w.secret_name)

    assert target_actions(report) == [Action.UPDATED]
    (patch,) = patches(h.sb)
    details = patch.body["credentialDetails"]
    assert details["encryptionAlgorithm"] == "RSA-OAEP"
    assert w.secret not in details["credentials"]
    if bits == 1024:  # 128-byte blocks, base64 once
        assert len(base64.b64decode(details["credentials"])) % 128 == 0
    else:  # base64(rsa(keys)) (256 bytes -> 344 chars) + base64(blob)
        assert len(base64.b64decode(details["credentials"][:344])) == 256
    assert stored_matches_source(w.datasources[0])


def test_cloud_gateway_sources_get_plain_json(make: Make) -> None:
    h = make(cloud=True)
    w = h.world
    w.rotate()

    report = h.healer.heal_secret(w.secret_name)

    assert target_actions(report) == [Action.UPDATED]
    (patch,) = patches(h.sb)
    details = patch.body["credentialDetails"]
    assert details["encryptionAlgorithm"] == "None"
    assert isinstance(details["credentials"], str)
    data = {e["name"]: e["value"] for e in json.loads(details["credentials"])["credentialData"]}
    assert data == {"username": "svc_pbi", "password": w.secret}
    assert stored_matches_source(w.datasources[0])


@pytest.mark.usefixtures("port_443")
def test_oauth2_caller_identity_updates_as_the_user_without_a_token(make: Make, sb: Sandbox) -> None:
    password = "Correct#Horse-Battery-1"
    sb.entra.add_app(name="healer")
    sb.entra.add_user(UPN, password)
    w = build_world(
        sb,
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
    new_password = "Rotated#Horse-Battery-2"
    sb.entra.set_user_password(UPN, new_password)
    version = w.put_in_vault(new_password)

    report = h.healer.heal_secret(w.secret_name)

    assert target_actions(report) == [Action.UPDATED], report.to_dict()
    (patch,) = patches(sb)
    assert patch.status == 200
    assert patch.token_kind == "user" and (patch.principal or "").lower() == UPN
    details = patch.body["credentialDetails"]
    assert details["credentialType"] == "OAuth2"
    assert details["useCallerAADIdentity"] is True
    assert details["encryptionAlgorithm"] == "None"
    assert "credentials" not in details  # exactly the payload known to work (issue 9, point 1)
    assert new_password not in json.dumps(patch.body)
    cred = w.datasources[0].credential
    assert cred is not None and (cred.signed_in_as or "").lower() == UPN
    assert h.runtime.ledger.target_state(w.gateway_id, w.datasource_ids[0]).holds(w.secret_name, version)


# -- rotation, retry of failed refreshes, idempotence --------------------------------------------
def test_rotation_patches_each_target_once_and_retries_the_failed_refresh(make: Make) -> None:
    h = make(sources=2)
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()  # the old password fails; Power BI switches the schedule off
    assert [latest_status(w, i) for i in range(2)] == ["Failed", "Failed"]
    assert not any(d.schedule.enabled for d in w.datasets)

    report = h.healer.heal_secret(w.secret_name)

    assert sorted(target_actions(report)) == [Action.UPDATED, Action.UPDATED]
    found = patches(h.sb)
    assert len(found) == 2
    assert sorted(r.path.rsplit("/", 1)[-1] for r in found) == sorted(w.datasource_ids)
    assert dataset_actions(report) == [Action.REFRESHED, Action.REFRESHED]
    assert all(o.refresh_state == "Completed" for o in report.datasets())
    assert [latest_status(w, i) for i in range(2)] == ["Completed", "Completed"]
    assert all(d.schedule.enabled for d in w.datasets)
    assert len(refresh_posts(h.sb)) == 2
    assert report.exit_code == 0


def test_healing_the_same_secret_twice_sends_nothing_the_second_time(make: Make) -> None:
    h = make(sources=3)
    w = h.world
    w.rotate()
    first = h.healer.heal_secret(w.secret_name)
    assert target_actions(first) == [Action.UPDATED] * 3
    before = len(powerbi_writes(h.sb))

    second = h.healer.heal_secret(w.secret_name)

    assert target_actions(second) == [Action.CURRENT] * 3
    assert len(patches(h.sb)) == 3
    assert len(powerbi_writes(h.sb)) == before
    assert second.exit_code == 0


# -- lockout safety -----------------------------------------------------------------------------
def test_a_wrong_secret_is_presented_once_and_never_again_until_a_new_version(make: Make) -> None:
    h = make()
    w = h.world
    ds, source = w.datasources[0], w.sources[0]
    right = h.sb.rotate_source_only(source.id)  # the source changes, Key Vault is not told
    w.fail_scheduled_refreshes()  # the stale stored password fails the refresh
    wrong_version = w.put_in_vault("Wrong#Password-0000")

    first = h.healer.heal_secret(w.secret_name)
    assert target_actions(first) == [Action.REJECTED]
    assert first.exit_code == 1
    assert len(patches(h.sb)) == 1 and failed_attempts(ds) == 1

    for _ in range(3):
        again = h.healer.heal_secret(w.secret_name)
        assert target_actions(again) == [Action.BLOCKED]
        assert again.exit_code == 1
        swept = h.healer.sweep()
        assert Action.BLOCKED in target_actions(swept)
        assert swept.exit_code == 1
        h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])
    assert len(patches(h.sb)) == 1 and failed_attempts(ds) == 1
    assert refresh_posts(h.sb) == []
    state = h.runtime.ledger.target_state(w.gateway_id, w.datasource_ids[0])
    assert state.is_rejected(wrong_version)

    good_version = w.put_in_vault(right)
    healed = h.healer.heal_secret(w.secret_name)

    assert target_actions(healed) == [Action.UPDATED]
    assert [o.secret_version for o in healed.targets()] == [good_version]
    assert len(patches(h.sb)) == 2
    assert stored_matches_source(ds)
    assert latest_status(w) == "Completed" and w.datasets[0].schedule.enabled
    assert not source.locked
    assert source.failed_attempts == 0
    assert source.total_failures <= 2  # the scheduled refresh and the one rejected PATCH


# -- transient faults ---------------------------------------------------------------------------
def test_throttling_and_transient_faults_are_ridden_out(make: Make) -> None:
    h = make(sources=2)
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()
    h.sb.faults.throttle("powerbi.update_datasource", 1, times=2)
    h.sb.faults.add("powerbi.refresh_history", status=503)
    h.sb.faults.add("powerbi.get_gateways", drop=True)

    report = h.healer.heal_secret(w.secret_name)

    assert sorted(target_actions(report)) == [Action.UPDATED, Action.UPDATED], report.to_dict()
    assert h.sb.faults.pending() == 0
    assert [p.status for p in patches(h.sb)].count(429) == 2
    patched = [p for p in patches(h.sb) if p.status == 200]
    assert sorted(p.path.rsplit("/", 1)[-1] for p in patched) == sorted(w.datasource_ids)
    assert max(h.sleeps.waits) >= 1.0
    assert all(stored_matches_source(d) for d in w.datasources)
    assert [latest_status(w, i) for i in range(2)] == ["Completed", "Completed"]
    assert not any(s.locked for s in w.sources)


def test_a_retry_after_past_the_deadline_is_deferred_not_burnt_and_a_later_run_heals(make: Make) -> None:
    h = make(sources=2)
    w = h.world
    w.rotate()
    h.sb.faults.throttle("powerbi.update_datasource", retry_after=900, times=1)

    report = h.healer.heal_secret(w.secret_name, deadline=time.time() + 120)

    assert Action.DEFERRED in target_actions(report) and report.exit_code == 1
    deferred = next(o for o in report.targets() if o.action == Action.DEFERRED)
    assert "past this run's deadline" in (deferred.reason or "")
    assert [p.status for p in patches(h.sb)] == [429]  # nothing was served, nothing waited
    assert max(h.sleeps.waits, default=0.0) < 900
    assert w.failed_sign_ins() == 0
    # The pause is in the ledger: another instance does not send either before it ends.
    other = h.another_instance()
    again = other.healer.heal_secret(w.secret_name, deadline=time.time() + 120)
    assert set(target_actions(again)) == {Action.DEFERRED} and len(patches(h.sb)) == 1

    h.runtime.ledger.set_marker("throttle:powerbi", "0", time.time())  # the pause is over
    healed = h.another_instance().healer.heal_secret(w.secret_name)
    assert target_actions(healed) == [Action.UPDATED] * 2
    assert all(stored_matches_source(d) for d in w.datasources) and w.failed_sign_ins() == 0


# -- dataset diagnosis --------------------------------------------------------------------------
def test_a_gateway_failure_changes_no_credentials_and_says_what_to_do(make: Make) -> None:
    h = make()
    w = h.world
    h.sb.powerbi.add_refresh(w.datasets[0], status="Failed", service_exception=pbi_error(GATEWAY_UNREACHABLE))

    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])

    assert actions(report) == [Action.NOT_CREDENTIAL]
    (outcome,) = report.outcomes
    assert "gateway" in (outcome.reason or "").lower()
    assert len((outcome.reason or "").split(". ", 1)[-1]) > 10  # a fix follows the diagnosis
    assert patches(h.sb) == [] and powerbi_writes(h.sb) == []
    assert report.exit_code == 0


def test_no_second_refresh_while_one_runs(make: Make) -> None:
    h = make()
    w = h.world
    h.sb.powerbi.add_refresh(
        w.datasets[0], status="Failed", service_exception=pbi_error(INVALID_CONNECTION_CREDENTIALS)
    )
    # what a refresh-failed event reports; meanwhile someone starts a long refresh
    (failed,) = h.runtime.powerbi.get_refresh_history_in_group(w.workspace_id, w.dataset_ids[0], top=1)
    h.sb.powerbi.set_refresh_duration(3600)
    h.sb.powerbi.start_refresh(w.datasets[0], refresh_type="OnDemand")

    from_history = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])
    from_event = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0], latest=failed)

    # A dataset heal brings its bound data sources to the current version first (issue 9.3).
    assert target_actions(from_history) == [Action.UPDATED]
    assert dataset_actions(from_history) == [Action.REFRESH_RUNNING]
    assert dataset_actions(from_event) == [Action.REFRESH_RUNNING]
    assert refresh_posts(h.sb) == []
    assert len([r for r in h.sb.powerbi.history(w.datasets[0]) if r.running]) == 1


def test_a_credential_failure_is_healed_and_the_disabled_schedule_turned_back_on(make: Make) -> None:
    h = make()
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()
    assert not w.datasets[0].schedule.enabled

    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])

    assert target_actions(report) == [Action.UPDATED]
    assert dataset_actions(report) == [Action.REFRESHED]
    assert w.datasets[0].schedule.enabled
    (schedule,) = h.sb.requests.find("powerbi.update_refresh_schedule")
    assert schedule.body == {"value": {"enabled": True}} and schedule.status == 200
    assert latest_status(w) == "Completed"


# -- dry run ------------------------------------------------------------------------------------
def test_dry_run_changes_nothing(make: Make) -> None:
    h = make(sources=2)
    w = h.world
    w.rotate()
    w.fail_scheduled_refreshes()
    ledger = h.runtime.ledger
    states_before = [ledger.target_state(w.gateway_id, d) for d in w.datasource_ids]

    reports = [
        h.healer.heal_secret(w.secret_name, dry_run=True),
        h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0], dry_run=True),
        h.healer.heal_target(w.gateway_id, w.datasource_ids[1], dry_run=True),
        h.healer.sweep(dry_run=True),
    ]

    assert Action.WOULD_UPDATE in target_actions(reports[0])
    assert Action.WOULD_REFRESH in dataset_actions(reports[0])
    assert all(r.dry_run for r in reports)
    assert powerbi_writes(h.sb) == []
    assert [ledger.target_state(w.gateway_id, d) for d in w.datasource_ids] == states_before
    assert ledger.outcomes() == []
    assert all(ledger.refresh_posts(d, time.strftime("%Y-%m-%d", time.gmtime())) == 0 for d in w.dataset_ids)
    assert [latest_status(w, i) for i in range(2)] == ["Failed", "Failed"]
    assert not any(d.schedule.enabled for d in w.datasets)


# -- scale --------------------------------------------------------------------------------------
def test_two_hundred_targets_on_one_secret(make: Make) -> None:
    h = make(sources=200, bits=2048)
    w = h.world
    h.sb.powerbi.set_refresh_duration(0)
    w.rotate()

    report = h.healer.heal_secret(w.secret_name)

    assert target_actions(report) == [Action.UPDATED] * 200
    assert len(patches(h.sb)) == 200
    assert len({r.path for r in patches(h.sb)}) == 200
    assert all(stored_matches_source(d) for d in w.datasources)
    assert report.exit_code == 0
    # What the time goes into, counted instead of timed: one round trip per target and route at
    # most (the update, and a refreshed dataset's data sources and history), every other read
    # once or a few times whatever the number of targets, and nothing waited or retried.
    calls = Counter(r.route for r in h.sb.requests.all())
    per_target = {"powerbi.update_datasource", "powerbi.get_datasources", "powerbi.refresh_history"}
    assert all(calls[route] <= 200 for route in per_target), calls
    assert max(n for route, n in calls.items() if route not in per_target) <= 10, calls
    assert h.sleeps.waits == [] and h.runtime.stats.snapshot().retries == 0


# -- the reconciler -----------------------------------------------------------------------------
def test_sweep_fixes_drift_and_failed_refreshes_no_event_reported(make: Make) -> None:
    h = make(sources=2)
    w = h.world
    first_version = w.version
    assert target_actions(h.healer.heal_secret(w.secret_name)) == [Action.UPDATED] * 2
    new_version = w.rotate()  # the event is lost: nobody calls heal_secret
    h.sb.powerbi.start_refresh(w.datasets[0])  # and a scheduled refresh fails; nobody reports it
    h.sb.powerbi.settle()
    assert latest_status(w, 0) == "Failed" and h.sb.powerbi.history(w.datasets[1]) == []
    ledger = h.runtime.ledger
    assert ledger.target_state(w.gateway_id, w.datasource_ids[0]).holds(w.secret_name, first_version)
    patched = len(patches(h.sb))

    report = h.healer.sweep()

    assert sorted(target_actions(report)) == [Action.UPDATED] * 2
    assert {o.secret_version for o in report.targets()} == {new_version}
    assert len(patches(h.sb)) == patched + 2
    refreshed = [o for o in report.datasets() if o.action == Action.REFRESHED]
    assert [o.dataset_id for o in refreshed] == [w.dataset_ids[0]]
    assert latest_status(w, 0) == "Completed" and w.datasets[0].schedule.enabled
    assert all(
        ledger.target_state(w.gateway_id, d).holds(w.secret_name, new_version) for d in w.datasource_ids
    )
    assert report.exit_code == 0


# -- no secret anywhere -------------------------------------------------------------------------
def test_no_secret_value_in_logs_reports_ledger_or_errors(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    marker = "Zq7-NEVER-SHOW-" + secrets.token_hex(6)
    right = marker + "-right"
    wrong = marker + "-wrong"
    caplog.set_level(logging.DEBUG)
    h = make(sources=2, secret=marker + "-initial")
    w = h.world
    texts: list[str] = []

    w.rotate(right)
    w.fail_scheduled_refreshes()
    texts.append(json.dumps(h.healer.heal_secret(w.secret_name).to_dict()))
    # a wrong version: rejected, then blocked
    w.rotate_sources_only(marker + "-elsewhere")
    w.put_in_vault(wrong)
    rejected = h.healer.heal_secret(w.secret_name)
    assert Action.REJECTED in target_actions(rejected)
    texts.append(json.dumps(rejected.to_dict()))
    texts.append(json.dumps(h.healer.sweep().to_dict()))
    texts.extend(repr(o) for o in rejected.outcomes)
    # the CLI too, verbose, table and JSON
    w.rotate(marker + "-cli")
    w.fail_scheduled_refreshes()
    for argv in (["-v", "heal", "--secret", w.secret_name], ["--json", "sweep"], ["history", "--json"]):
        out, err = io.StringIO(), io.StringIO()
        quiet = {k: v for k, v in h.env.items() if k != "APPLICATIONINSIGHTS_CONNECTION_STRING"}
        assert main(argv, environ=quiet, stdout=out, stderr=err) in (0, 1)
        texts += [out.getvalue(), err.getvalue()]
    # errors raised by the clients
    h.sb.faults.add("keyvault", status=500, times=5)
    with pytest.raises(RemediationError) as raised:
        h.runtime.keyvault.get_secret(w.secret_name)
    texts += [str(raised.value), repr(raised.value)]
    assert h.sb.faults.pending() == 0
    h.sb.faults.add("powerbi.update_datasource", status=400, body=pbi_error(INVALID_CONNECTION_CREDENTIALS))
    w.put_in_vault(marker + "-last")
    texts.append(json.dumps(h.healer.heal_secret(w.secret_name).to_dict()))

    texts += [r.getMessage() for r in caplog.records]
    texts += [caplog.text]
    texts += [repr(r.args) for r in caplog.records]
    ledger_bytes = b"".join(p.read_bytes() for p in h.state_path.parent.glob(h.state_path.name + "*"))
    with sqlite3.connect(h.state_path) as db:
        tables = [t for (t,) in db.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            texts += [repr(row) for row in db.execute(f"select * from {table}")]  # noqa: S608

    assert len(patches(h.sb)) >= 4  # the secret did travel, to Power BI only
    assert texts and caplog.records
    assert marker.encode() not in ledger_bytes
    leaks = [t for t in texts if marker in t]
    assert leaks == []


def _runtime_with_bindings(h: Harness, bindings: dict[str, Any]) -> Runtime:
    env = {**h.env, "REMEDIATION_BINDINGS": json.dumps(bindings)}
    runtime = build_healer(Settings.from_env(env), sleep=h.sleeps, poll_interval=0.01)
    return runtime


def test_match_targets_are_found_by_connection_details_across_gateways(make: Make) -> None:
    h = make(sources=3)
    w = h.world
    chosen = w.datasources[1]
    binding = {
        **w.binding(),
        "targets": [
            {"match": {"datasourceType": "Sql", "server": chosen.connection_details["server"].upper()}}
        ],
    }
    runtime = _runtime_with_bindings(h, {"bindings": [binding]})
    try:
        w.rotate()
        report = runtime.healer.heal_secret(w.secret_name, retry_refreshes=False)
    finally:
        runtime.close()

    assert [(o.datasource_id, o.action) for o in report.targets()] == [(chosen.id, Action.UPDATED)]
    assert [r.path.rsplit("/", 1)[-1] for r in patches(h.sb)] == [chosen.id]


def test_a_cloud_source_owned_by_someone_else_is_taken_over_only_when_allowed(make: Make) -> None:
    h = make(cloud=True)
    w = h.world
    w.datasets[0].owner = "someone.else@contoso.com"
    w.gateway.admins.discard(w.app.client_id)  # only dataset ownership lets it update a cloud source
    w.rotate()

    refused = h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    runtime = _runtime_with_bindings(
        h, {"bindings": [{**w.binding(), "takeOver": True}], "watch": {"workspaces": [w.workspace.id]}}
    )
    try:
        allowed = runtime.healer.heal_secret(w.secret_name, retry_refreshes=False)
    finally:
        runtime.close()

    assert target_actions(refused) == [Action.FAILED]
    assert target_actions(allowed) == [Action.UPDATED]
    assert [r.status for r in h.sb.requests.find("powerbi.take_over")] == [200]
    assert w.datasets[0].owner == w.app.client_id
    assert stored_matches_source(w.datasources[0])


def test_no_take_over_of_a_dataset_whose_other_sources_could_not_be_put_back(make: Make) -> None:
    """Take Over resets the credentials of the dataset's other data sources: with one of them
    unbound, the healer refuses, presents nothing, and says why."""
    h = make(cloud=True)
    w = h.world
    w.datasets[0].owner = "someone.else@contoso.com"
    w.gateway.admins.discard(w.app.client_id)
    other_source = h.sb.sources.add("other-cloud", credential_type="Basic", username="u", secret="S#1")
    details = {"server": "other.example"}
    other = h.sb.powerbi.add_datasource(w.gateway, other_source, connection_details=details)
    w.datasets[0].datasources.append(other)
    w.rotate()
    runtime = _runtime_with_bindings(
        h, {"bindings": [{**w.binding(), "takeOver": True}], "watch": {"workspaces": [w.workspace.id]}}
    )
    try:
        report = runtime.healer.heal_secret(w.secret_name, retry_refreshes=False)
    finally:
        runtime.close()

    (outcome,) = report.targets()
    assert outcome.action == Action.FAILED and "not taking over" in (outcome.reason or "")
    assert h.sb.requests.find("powerbi.take_over") == []
    assert w.datasets[0].owner == "someone.else@contoso.com"
    assert w.account.failures_of(w.secret) == 0


def test_after_a_take_over_the_other_cloud_source_is_healed_again_and_the_refresh_succeeds(
    make: Make,
) -> None:
    """Take Over resets the credentials of the dataset's other cloud sources: a bound one that the
    ledger said held its current version is healed again in the same run (its version was
    accepted before: no failed sign-in), the dataset refresh succeeds, and the report warns on the
    target the Take Over was done for. A second run has nothing to do."""
    h = make(cloud=True)
    w = h.world
    b_source = h.sb.sources.add("erp-cloud", credential_type="Basic", username="svc_erp", secret="Erp#1")
    b = h.sb.powerbi.add_datasource(w.gateway, b_source, connection_details={"server": "erp.example"})
    w.datasets[0].datasources.append(b)
    h.sb.vault.set_secret("erp-password", "Erp#1")
    erp = {
        "name": "erp",
        "secret": "erp-password",
        "credentialType": "Basic",
        "username": "svc_erp",
        "targets": [{"gatewayId": w.gateway_id, "datasourceId": b.id}],
    }
    runtime = _runtime_with_bindings(
        h, {"bindings": [{**w.binding(), "takeOver": True}, erp], "watch": {"workspaces": [w.workspace.id]}}
    )
    try:
        assert target_actions(runtime.healer.heal_secret("erp-password", retry_refreshes=False)) == [
            Action.UPDATED
        ]
        # Now only dataset ownership lets the identity update the cloud sources, and A's password rotates.
        w.datasets[0].owner = "someone.else@contoso.com"
        w.gateway.admins.discard(w.app.client_id)
        w.rotate()
        w.fail_scheduled_refreshes()
        assert latest_status(w) == "Failed"
        h.sb.requests.clear()

        healed = runtime.healer.heal_secret(w.secret_name)
        h.sb.powerbi.settle()
        writes_before = len(powerbi_writes(h.sb))
        again = runtime.healer.heal_secret(w.secret_name)
        writes_after = len(powerbi_writes(h.sb))
    finally:
        runtime.close()

    a = w.datasources[0]
    assert [(o.datasource_id, o.action) for o in healed.targets()] == [
        (a.id, Action.UPDATED),
        (b.id, Action.UPDATED),
    ]
    assert [r.status for r in h.sb.requests.find("powerbi.take_over")] == [200]
    assert stored_matches_source(a) and stored_matches_source(b)
    assert dataset_actions(healed) == [Action.REFRESHED] and latest_status(w) == "Completed"
    assert w.failed_sign_ins() == 1  # the failed scheduled refresh; the healer added none
    assert b_source.account.total_failures == 0
    (warning,) = took_over(healed.to_dict()["targets"][0])  # type: ignore[index]
    assert w.datasets[0].id in warning and "Sql on erp.example" in warning and b.id in warning
    assert took_over(healed.to_dict()["targets"][1]) == []  # type: ignore[index]
    assert target_actions(again) == [Action.CURRENT] and writes_after == writes_before
    assert "warnings" not in again.to_dict()["targets"][0]  # type: ignore[index]


def _inventory_knows_one_cloud_source_then_the_model_gains_an_unbound_one(
    h: Harness,
) -> tuple[Runtime, Datasource]:
    """A take-over binding; a sweep stores the inventory (the dataset uses the bound source A
    only); then the model is republished with a second cloud source B that no binding covers,
    whose credential Power BI holds; then only ownership lets the identity update A."""
    w = h.world
    runtime = _runtime_with_bindings(
        h, {"bindings": [{**w.binding(), "takeOver": True}], "watch": {"workspaces": [w.workspace.id]}}
    )
    runtime.healer.sweep()
    (record,) = [r for r in runtime.ledger.inventory(w.workspace_id) if r.dataset_id == w.dataset_ids[0]]
    assert [s.datasource_id for s in record.sources] == [w.datasource_ids[0]]
    b_source = h.sb.sources.add("crm-cloud", credential_type="Basic", username="svc_crm", secret="Crm#1")
    b = h.sb.powerbi.add_datasource(w.gateway, b_source, connection_details={"server": "crm.example"})
    h.sb.powerbi.store_credential(b, {"username": "svc_crm", "password": "Crm#1"})
    w.datasets[0].datasources.append(b)  # republished: the inventory does not know it yet
    w.datasets[0].owner = "someone.else@contoso.com"
    w.gateway.admins.discard(w.app.client_id)
    w.rotate()
    h.sb.requests.clear()
    return runtime, b


def test_take_over_is_decided_on_the_datasets_sources_as_power_bi_lists_them_not_the_stored_inventory(
    make: Make,
) -> None:
    h = make(cloud=True)
    w = h.world
    runtime, b = _inventory_knows_one_cloud_source_then_the_model_gains_an_unbound_one(h)
    try:
        report = runtime.healer.heal_secret(w.secret_name, retry_refreshes=False)
    finally:
        runtime.close()

    (outcome,) = report.targets()
    assert outcome.action == Action.FAILED and "not taking over" in (outcome.reason or "")
    assert "Sql on crm.example" in (outcome.reason or "")
    assert h.sb.requests.find("powerbi.take_over") == []
    assert len(h.sb.requests.find("powerbi.get_datasources")) == 1  # read right before deciding
    assert b.credential is not None and b.credential.data["password"] == "Crm#1"  # intact
    assert w.datasets[0].owner == "someone.else@contoso.com"
    assert w.account.failures_of(w.secret) == 0


def test_no_take_over_when_the_datasets_sources_cannot_be_read_right_before_it(make: Make) -> None:
    h = make(cloud=True)
    w = h.world
    runtime, b = _inventory_knows_one_cloud_source_then_the_model_gains_an_unbound_one(h)
    h.sb.faults.add("powerbi.get_datasources", status=500, times=10)
    try:
        report = runtime.healer.heal_secret(w.secret_name, retry_refreshes=False)
    finally:
        runtime.close()

    (outcome,) = report.targets()
    assert outcome.action == Action.FAILED, outcome
    assert "not taking over" in (outcome.reason or "") and "HTTP 500" in (outcome.reason or "")
    assert h.sb.requests.find("powerbi.take_over") == []
    assert b.credential is not None and b.credential.data["password"] == "Crm#1"
    assert w.account.failures_of(w.secret) == 0


def took_over(target: dict[str, Any]) -> list[str]:
    """The target's Take Over warnings (not those about settings sent as defaults)."""
    return [w for w in target.get("warnings", []) if w.startswith("took over")]


def test_a_take_over_leaves_the_datasets_on_premises_sources_alone(make: Make) -> None:
    """Take Over resets cloud sources only: a source of the dataset on an on-premises gateway
    keeps its credential (the gateway holds it), so it is neither forgotten nor sent again."""
    h = make(cloud=True)
    w = h.world
    c_source = h.sb.sources.add("sql-onprem", credential_type="Basic", username="svc_dw", secret="Dw#1")
    on_premises = h.sb.powerbi.add_gateway("GW-01", bits=1024, admins=[w.app.client_id])
    c = h.sb.powerbi.add_datasource(on_premises, c_source, connection_details={"server": "dw01"})
    w.datasets[0].datasources.append(c)
    h.sb.vault.set_secret("dw-password", "Dw#1")
    dw = {
        "name": "dw",
        "secret": "dw-password",
        "credentialType": "Basic",
        "username": "svc_dw",
        "targets": [{"gatewayId": on_premises.id, "datasourceId": c.id}],
    }
    runtime = _runtime_with_bindings(
        h, {"bindings": [{**w.binding(), "takeOver": True}, dw], "watch": {"workspaces": [w.workspace.id]}}
    )
    try:
        assert target_actions(runtime.healer.heal_secret("dw-password", retry_refreshes=False)) == [
            Action.UPDATED
        ]
        w.datasets[0].owner = "someone.else@contoso.com"
        w.gateway.admins.discard(w.app.client_id)
        w.rotate()
        h.sb.requests.clear()
        healed = runtime.healer.heal_secret(w.secret_name, retry_refreshes=False)
        held = runtime.ledger.target_state(on_premises.id, c.id)
    finally:
        runtime.close()

    assert target_actions(healed) == [Action.UPDATED]
    assert [r.status for r in h.sb.requests.find("powerbi.take_over")] == [200]
    # A's PATCH, refused (not the owner), then sent again after the Take Over; none to C.
    assert [r.path.rsplit("/", 1)[-1] for r in patches(h.sb)] == [w.datasources[0].id] * 2
    assert stored_matches_source(c) and held.applied_version is not None
    (warning,) = took_over(healed.to_dict()["targets"][0])  # type: ignore[index]
    assert c.id not in warning and "(none)" in warning


def test_a_sweep_heals_again_an_other_cloud_source_it_had_found_current_before_the_take_over(
    make: Make,
) -> None:
    """The sweep handles the dataset's other cloud source B first (current), then A needs Take
    Over, which resets B: the run heals B again, and reports B once, with its new outcome."""
    h = make(cloud=True, env={"REMEDIATION_CONCURRENCY": "1"})
    w = h.world
    b_source = h.sb.sources.add("erp-cloud", credential_type="Basic", username="svc_erp", secret="Erp#1")
    b = h.sb.powerbi.add_datasource(w.gateway, b_source, connection_details={"server": "erp.example"})
    w.datasets[0].datasources.append(b)
    h.sb.vault.set_secret("erp-password", "Erp#1")
    erp = {
        "name": "erp",
        "secret": "erp-password",
        "credentialType": "Basic",
        "username": "svc_erp",
        "targets": [{"gatewayId": w.gateway_id, "datasourceId": b.id}],
    }
    # B's binding first: the sweep resolves (and, one at a time, heals) it before A's.
    runtime = _runtime_with_bindings(
        h, {"bindings": [erp, {**w.binding(), "takeOver": True}], "watch": {"workspaces": [w.workspace.id]}}
    )
    try:
        assert Action.UPDATED in target_actions(runtime.healer.sweep())
        w.datasets[0].owner = "someone.else@contoso.com"
        w.gateway.admins.discard(w.app.client_id)
        w.rotate()
        swept = runtime.healer.sweep()
    finally:
        runtime.close()

    a = w.datasources[0]
    assert sorted((o.datasource_id or "", o.action or "") for o in swept.targets()) == sorted(
        [(a.id, Action.UPDATED), (b.id, Action.UPDATED)]
    )
    assert stored_matches_source(a) and stored_matches_source(b)
    assert [r.status for r in h.sb.requests.find("powerbi.take_over")] == [200]
    assert b_source.account.total_failures == 0


def test_a_gateway_key_is_read_once_across_runs_and_a_changed_key_is_picked_up(make: Make) -> None:
    h = make(sources=2)
    w = h.world
    w.rotate()
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    w.rotate()
    h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    # The on-premises gateways and their keys come from one GET /gateways, cached across runs.
    assert len(h.sb.requests.find("powerbi.get_gateways")) == 1
    assert h.sb.requests.find("powerbi.get_gateway") == []

    w.gateway.keys = GatewayKeyPair.generate(2048)  # the gateway was reinstalled: a new key
    w.rotate()
    report = h.healer.heal_secret(w.secret_name, retry_refreshes=False)

    assert target_actions(report) == [Action.UPDATED, Action.UPDATED]
    assert len(h.sb.requests.find("powerbi.get_gateway")) == 1  # the new key, read once
    statuses = [r.status for r in patches(h.sb)]
    # The first target could not be decrypted and was sent again; the second got the new key.
    assert statuses[:4] == [200, 200, 200, 200] and statuses[4:] == [400, 200, 200]
    assert all(stored_matches_source(ds) for ds in w.datasources)
    assert all(ds.source.total_failures == 0 for ds in w.datasources)  # undecryptable: no sign-in happened


# -- cloud gateways whose gateway cannot be read (issue 9.2) -----------------------------------------
@pytest.mark.parametrize("answer", ["id-only", "not-found", "unauthorized", "forbidden"])
def test_a_cloud_source_is_healed_whatever_its_virtual_gateway_answers(make: Make, answer: str) -> None:
    """``GET /gateways/{id}`` of a cloud data source's gateway answers without a key, 404, 401 or
    403 in the field; none of them may stop the heal, and the credential goes in plain JSON."""
    h = make(cloud=True)
    w = h.world
    h.sb.powerbi.set_cloud_gateway_answer(w.gateway, answer)  # type: ignore[arg-type]
    w.rotate()

    report = h.healer.heal_secret(w.secret_name)

    assert target_actions(report) == [Action.UPDATED], report.to_dict()
    (patch,) = patches(h.sb)
    assert patch.body["credentialDetails"]["encryptionAlgorithm"] == "None"
    assert stored_matches_source(w.datasources[0])


# -- a dataset heal heals its credentials (issue 9.3) -------------------------------------------------
def test_healing_a_dataset_brings_its_sources_to_the_current_version_even_after_a_good_refresh(
    make: Make,
) -> None:
    h = make(sources=2)
    w = h.world
    h.sb.powerbi.start_refresh(w.datasets[0])
    h.sb.powerbi.settle()
    assert latest_status(w) == "Completed"
    w.rotate()  # a rotation whose event was lost; the last refresh (before it) was fine

    report = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])
    again = h.healer.heal_dataset(w.workspace_id, w.dataset_ids[0])

    assert target_actions(report) == [Action.UPDATED]
    assert dataset_actions(report) == [Action.HEALTHY]
    assert target_actions(again) == [Action.CURRENT]
    assert refresh_posts(h.sb) == []  # nothing failed: no refresh
    assert w.stored_secret(w.datasources[0]) == w.secret
    assert w.stored_secret(w.datasources[1]) != w.secret  # another dataset's source: not in scope


# -- an explicit version must exist (issue 9.4) -------------------------------------------------------
def test_an_explicit_version_that_key_vault_lacks_or_disabled_is_refused_and_nothing_sent(make: Make) -> None:
    from remediation.reconciler.healer import SecretVersionNotFound

    h = make()
    w = h.world
    old = w.version
    w.rotate()
    h.sb.vault.disable(w.secret_name, old)

    for version in ("0" * 32, old):
        with pytest.raises(SecretVersionNotFound, match="nothing was sent"):
            h.healer.heal_secret(w.secret_name, version)
    assert powerbi_writes(h.sb) == []

    h.sb.vault.enable(w.secret_name, old)
    report = h.healer.heal_secret(w.secret_name, old)  # an existing, older version: the current one
    assert target_actions(report) == [Action.UPDATED]
    (outcome,) = report.targets()
    assert outcome.secret_version == w.version and f"version {old} was named" in (outcome.reason or "")


def test_a_data_source_two_bindings_match_is_sent_neither_secret(make: Make, sb: Sandbox) -> None:
    """Two bindings whose matches select one data source: which secret is right is a guess, so
    each secret's heal refuses it (and says how to fix the bindings) instead of PATCHing its own."""

    w = build_world(sb, sources=1)
    server = w.datasources[0].connection_details["server"]
    sb.vault.set_secret("other-password", "Other#" + secrets.token_urlsafe(8))

    def matching(name: str, secret: str) -> dict[str, Any]:
        return {
            "name": name,
            "secret": secret,
            "credentialType": "Basic",
            "username": "svc_pbi",
            "targets": [{"match": {"server": server}}],
        }

    doc = {
        "bindings": [matching("first", w.secret_name), matching("second", "other-password")],
        "watch": {"workspaces": [w.workspace_id]},
    }
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps(doc)})
    w.rotate()

    for secret in (w.secret_name, "other-password"):
        report = h.healer.heal_secret(secret, retry_refreshes=False)
        (outcome,) = report.targets()
        assert outcome.action == Action.FAILED and "selected by the matches of bindings" in outcome.reason
    assert sb.requests.find("powerbi.update_datasource") == []


def test_a_match_does_not_send_its_secret_to_a_data_source_that_signs_in_another_way(make: Make) -> None:
    """A broad match (every Sql source) selects a Windows data source too: Power BI says it signs
    in another way, so maybe as another account; it is refused on the fan-out and on a dataset
    heal, and the Basic one is healed."""
    h = make(sources=2, servers=1)  # two databases of one server
    w = h.world
    windows = w.datasources[1]
    h.sb.powerbi.store_credential(
        windows, {"username": "CONTOSO\\other", "password": "x"}, credential_type="Windows"
    )
    binding = {**w.binding(), "targets": [{"match": {"datasourceType": "Sql", "server": "sql0.local"}}]}
    runtime = _runtime_with_bindings(h, {"bindings": [binding], "watch": {"workspaces": [w.workspace.id]}})
    try:
        w.rotate()
        report = runtime.healer.heal_secret(w.secret_name, retry_refreshes=False)
        by_dataset = runtime.healer.heal_dataset(w.workspace.id, w.datasets[1].id)
    finally:
        runtime.close()

    actions = {o.datasource_id: o for o in report.targets()}
    assert actions[w.datasources[0].id].action == Action.UPDATED
    assert actions[windows.id].action == Action.FAILED
    assert "signs in with Windows, not Basic" in (actions[windows.id].reason or "")
    assert [o.action for o in by_dataset.targets() if o.datasource_id == windows.id] == [Action.FAILED]
    assert [r.path.rsplit("/", 1)[-1] for r in patches(h.sb)] == [w.datasources[0].id]


def test_a_matched_data_source_whose_gateway_list_cannot_be_read_is_sent_nothing_now(make: Make) -> None:
    """The credential-type check of a match needs the gateway's data source list: when Power BI
    fails to answer it (503), the data source is not sent the secret on a guess; the next run is."""
    h = make(sources=1)
    w = h.world
    binding = {
        **w.binding(),
        "targets": [
            {"match": {"datasourceType": "Sql", "server": w.datasources[0].connection_details["server"]}}
        ],
    }
    runtime = _runtime_with_bindings(h, {"bindings": [binding], "watch": {"workspaces": [w.workspace.id]}})
    try:
        w.rotate()
        h.sb.faults.add("powerbi.get_gateway_datasources", status=503, times=50)
        refused = runtime.healer.heal_dataset(w.workspace.id, w.datasets[0].id)
        assert patches(h.sb) == []
        assert [o.action for o in refused.targets()] == [Action.FAILED]
        assert "could not be read" in (refused.targets()[0].reason or "")
        h.sb.faults.clear()
        healed = runtime.healer.heal_dataset(w.workspace.id, w.datasets[0].id)
    finally:
        runtime.close()
    assert [o.action for o in healed.targets()] == [Action.UPDATED]


def test_a_token_endpoint_that_fails_is_reported_as_the_products_own_sign_in_and_nothing_is_sent(
    make: Make,
) -> None:
    """Entra ID answers the product's token requests with 503 (msal raises for some of those):
    every target says the product could not sign in, nothing is sent, no error escapes."""
    h = make(sources=2)
    w = h.world
    w.rotate()
    h.sb.faults.add("entra.token", status=503, times=100)

    report = h.healer.heal_secret(w.secret_name, retry_refreshes=False)

    assert patches(h.sb) == []
    assert {o.action for o in report.targets()} == {Action.FAILED}, report.to_dict()
    assert all("internal error" not in (o.reason or "") for o in report.outcomes), report.to_dict()
    assert all("token" in (o.reason or "") for o in report.targets()), report.to_dict()
    assert w.account.total_failures == 0
