"""Accounts count like a domain controller: per account, from every cause, through HTTPS.

Many data sources sign in as one account; every failed sign-in (a credential test of Update
Datasource, a refresh or a status check on a stored wrong password, a password grant) counts
against it, consecutive failures lock it, and each is recorded with a fingerprint of what was
presented. Rotations can change Key Vault before the account. All on a ``ManualClock``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from sandbox import ManualClock, Sandbox
from sandbox import clock as sandbox_clock
from sandbox.accounts import fingerprint
from sandbox.entra import KEYVAULT_AUDIENCE, POWERBI_AUDIENCE
from tests.support.world import World, build_world

pytestmark = pytest.mark.sandbox

UPN = "svc_flows@contoso.com"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def msb(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    sandbox = Sandbox(clock=clock, serve_user_realm=False)
    sandbox.start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", sandbox.tls.ca_path)
    try:
        yield sandbox
    finally:
        sandbox.stop()


def _world(sb: Sandbox, **kwargs: Any) -> World:
    """A cloud world (plain-JSON credentials, so the tests need no gateway crypto)."""
    return build_world(sb, cloud=True, **kwargs)


def _pbi(world: World, method: str, path: str, **kwargs: Any) -> requests.Response:
    token = world.sb.entra.issue_token("app", world.app.client_id, POWERBI_AUDIENCE).token
    return requests.request(
        method,
        world.sb.powerbi.api_url + path,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        **kwargs,
    )


def _patch_basic(world: World, index: int, password: str) -> requests.Response:
    credentials = json.dumps(
        {
            "credentialData": [
                {"name": "username", "value": world.username},
                {"name": "password", "value": password},
            ]
        }
    )
    body = {
        "credentialDetails": {
            "credentialType": "Basic",
            "credentials": credentials,
            "encryptedConnection": "Encrypted",
            "encryptionAlgorithm": "None",
            "privacyLevel": "Organizational",
        }
    }
    return _pbi(
        world, "PATCH", f"/gateways/{world.gateway_id}/datasources/{world.datasource_ids[index]}", json=body
    )


def _refresh(world: World, index: int) -> None:
    path = f"/groups/{world.workspace_id}/datasets/{world.dataset_ids[index]}/refreshes"
    assert _pbi(world, "POST", path).status_code == 202
    world.sb.powerbi.settle()


def _status(world: World, index: int) -> requests.Response:
    path = f"/gateways/{world.gateway_id}/datasources/{world.datasource_ids[index]}/status"
    return _pbi(world, "GET", path)


def _password_grant(sb: Sandbox, username: str, password: str) -> requests.Response:
    app = sb.entra.default_app or sb.entra.add_app(name="public")
    form = {
        "grant_type": "password",
        "client_id": app.client_id,
        "username": username,
        "password": password,
        "scope": f"{POWERBI_AUDIENCE}/.default",
    }
    return requests.post(f"{sb.url}/{sb.entra.tenant_id}/oauth2/v2.0/token", data=form, timeout=10)


# -- the model -------------------------------------------------------------------------------------
def test_fingerprint_is_pure_stable_and_reveals_nothing() -> None:
    assert fingerprint("Pw!one") == fingerprint("Pw!one")
    assert fingerprint("Pw!one") != fingerprint("Pw!two")
    assert len(fingerprint("x")) == 16 and "Pw!one" not in fingerprint("Pw!one")
    assert fingerprint(None) == fingerprint("")


def test_a_source_added_alone_gets_its_own_account_and_shared_ones_take_theirs(msb: Sandbox) -> None:
    alone = msb.sources.add("sql-hr", username="svc_hr", secret="a", lockout_threshold=3)
    assert msb.sources.account("sql-hr") is alone.account
    assert (alone.username, alone.secret, alone.lockout_threshold) == ("svc_hr", "a", 3)

    svc = msb.sources.add_account("CONTOSO\\svc_pbi", username="svc_pbi", secret="b", lockout_threshold=None)
    one = msb.sources.add("sql-sales", account=svc)
    two = msb.sources.add("sql-dw", account="CONTOSO\\svc_pbi")
    assert one.account is two.account is svc and msb.sources.using(svc) == [one, two]
    msb.sources.set_secret("sql-sales", "c")  # changing the source changes the account, for both
    assert two.secret == "c"
    with pytest.raises(ValueError, match="from the account"):
        msb.sources.add("sql-x", account=svc, secret="other")
    with pytest.raises(ValueError, match="exists"):
        msb.sources.add_account("CONTOSO\\svc_pbi")


# -- every cause counts against the one account ------------------------------------------------------
def test_failures_through_many_sources_from_every_cause_count_against_one_account(msb: Sandbox) -> None:
    world = _world(msb, sources=3, lockout_threshold=10)
    wrong = "Pw!wrong"
    world.rotate_sources_only("Pw!rotated-behind-the-vaults-back")  # Power BI still holds the old one

    assert _patch_basic(world, 0, wrong).status_code == 400  # update-test
    _refresh(world, 1)  # refresh on the stored (now wrong) credential
    assert _status(world, 2).status_code == 400  # status check
    msb.powerbi.start_refresh(world.datasets[2])  # a scheduled refresh
    msb.powerbi.settle()

    account = world.account
    assert [f.cause for f in account.failed_sign_ins] == ["update-test", "refresh", "status-check", "refresh"]
    assert [f.via for f in account.failed_sign_ins] == [
        s.id for s in (world.sources[0], world.sources[1], world.sources[2], world.sources[2])
    ]
    assert account.failed_attempts == 4 and not account.locked
    old = world.stored_secret(world.datasources[1])
    assert account.failures_by_fingerprint() == {fingerprint(wrong): 1, fingerprint(old): 3}
    assert account.failures_of(old) == 3 and world.worst_repeat() == 3
    assert [s.total_failures for s in world.sources] == [1, 1, 2]


def test_consecutive_failures_lock_the_shared_account_and_a_success_resets_the_count(
    msb: Sandbox, clock: ManualClock
) -> None:
    world = _world(msb, sources=3, lockout_threshold=3)
    right = world.secret

    assert _patch_basic(world, 0, "Pw!bad-1").status_code == 400
    assert _patch_basic(world, 1, "Pw!bad-2").status_code == 400
    assert _patch_basic(world, 2, right).status_code == 200  # badPwdCount back to 0
    assert world.account.failed_attempts == 0
    clock.advance(5)
    for i, value in enumerate(("Pw!bad-3", "Pw!bad-4", "Pw!bad-5")):
        assert _patch_basic(world, i, value).status_code == 400
    assert world.account.locked

    refused = _patch_basic(world, 0, right)  # locked: even the right password is refused
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "DM_GWPipeline_Gateway_InvalidConnectionCredentials"
    last = world.account.failed_sign_ins[-1]
    assert (last.outcome, last.fingerprint, last.at) == ("locked", fingerprint(right), clock.now())
    assert len(world.account.failures(include_locked=False)) == 5
    assert _status(world, 1).status_code == 400  # every source of the account is locked out

    world.account.unlock()
    assert _patch_basic(world, 0, right).status_code == 200


def test_a_world_can_give_each_source_its_own_account(msb: Sandbox) -> None:
    world = _world(msb, sources=2, shared_account=False, lockout_threshold=1)
    assert len(world.accounts) == 2 and world.accounts[0] is not world.accounts[1]

    assert _patch_basic(world, 0, "Pw!bad").status_code == 400

    assert world.accounts[0].locked and not world.accounts[1].locked
    assert _patch_basic(world, 1, world.secret).status_code == 200


def test_a_default_world_shares_one_account_across_its_sources(msb: Sandbox) -> None:
    world = _world(msb, sources=4)
    assert len(world.accounts) == 1 and {s.account.name for s in world.sources} == {world.account.name}
    assert world.account.lockout_threshold == 5 and world.account.secret == world.secret


# -- Entra users are accounts too -------------------------------------------------------------------
def test_password_grants_count_lock_with_aadsts50053_and_share_the_users_account(msb: Sandbox) -> None:
    msb.entra.add_app(name="public")
    user = msb.entra.add_user(UPN, "Pw!right", lockout_threshold=3)
    flow = msb.sources.add("dataflow", credential_type="OAuth2", account=UPN)
    assert flow.account is user.account is msb.sources.account(UPN)

    ok = _password_grant(msb, UPN, "Pw!right")
    assert ok.status_code == 200 and "access_token" in ok.json()
    bad = _password_grant(msb, UPN, "Pw!wrong")
    assert bad.status_code == 400 and bad.json()["error_codes"] == [50126]
    assert _password_grant(msb, UPN, "Pw!right").status_code == 200  # resets the count
    for _ in range(3):
        assert _password_grant(msb, UPN, "Pw!wrong").json()["error_codes"] == [50126]
    locked = _password_grant(msb, UPN, "Pw!right")

    assert locked.status_code == 400 and locked.json()["error_codes"] == [50053]
    assert locked.json()["error"] == "invalid_grant"
    causes = {f.cause for f in user.account.failed_sign_ins}
    assert causes == {"password-grant"} and user.account.failures_of("Pw!wrong") == 4
    assert flow.locked  # the data source signing in as this user is locked out with it


def test_a_world_of_caller_identity_sources_signs_in_as_the_entra_users_account(msb: Sandbox) -> None:
    user = msb.entra.add_user(UPN, "Pw!owner")
    world = build_world(
        msb,
        cloud=True,
        credential_type="OAuth2",
        datasource_type="Extension",
        username=UPN,
        secret="Pw!owner",
        caller_identity_only=True,
        oauth2="caller-identity",
    )
    assert world.account is user.account
    world.rotate("Pw!owner-2")
    assert user.password == "Pw!owner-2"
    assert _password_grant(msb, UPN, "Pw!owner").json()["error_codes"] == [50126]


# -- rotation order --------------------------------------------------------------------------------
def test_a_vault_first_rotation_changes_the_account_only_when_the_clock_gets_there(
    msb: Sandbox, clock: ManualClock
) -> None:
    world = _world(msb, sources=2)
    old = world.secret
    seen_at_event: list[str | None] = []
    msb.vault.subscribe(lambda event: seen_at_event.append(world.account.secret))

    version = world.rotate("Pw!next", order="vault-first", delay=30)

    assert msb.vault.get_secret(world.secret_name).version == version
    assert msb.vault.get_secret(world.secret_name).value == "Pw!next"
    assert seen_at_event == [old]  # the event fired at once, before the account changed
    assert _patch_basic(world, 0, "Pw!next").status_code == 400  # too early: a failed sign-in
    assert world.account.pending_changes == 1
    clock.advance(29.9)
    assert world.account.secret == old
    clock.advance(0.1)
    assert _patch_basic(world, 1, "Pw!next").status_code == 200  # applied lazily at the sign-in
    assert world.account.secret == "Pw!next" and world.account.pending_changes == 0


def test_a_vault_first_rotation_without_delay_still_notifies_before_the_account_changes(msb: Sandbox) -> None:
    svc = msb.sources.add("sql-sales", username="svc_pbi", secret="Pw!old")
    seen: list[str | None] = []
    msb.vault.subscribe(lambda event: seen.append(svc.secret))

    msb.rotate("sql-sales", "sql-sales-password", "Pw!new", order="vault-first")
    msb.rotate("sql-sales", "sql-sales-password", "Pw!newer")  # source-first: the account already has it

    assert seen == ["Pw!old", "Pw!newer"] and svc.secret == "Pw!newer"
    with pytest.raises(ValueError, match="vault-first"):
        msb.rotate("sql-sales", "sql-sales-password", delay=5)


def test_a_vault_first_rotation_works_with_the_wall_clock(
    sb: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default clock reads the wall clock (``time.time``), here a stand-in that this test moves:
    no sleeping, and no race with a loaded machine."""
    assert type(sb.clock) is sandbox_clock.Clock
    now = [time.time()]
    monkeypatch.setattr(sandbox_clock, "time", SimpleNamespace(time=lambda: now[0]))
    account = sb.sources.add_account("CONTOSO\\svc_pbi", username="svc_pbi", secret="Pw!old")
    sb.sources.add("sql-sales", account=account)
    sb.rotate("CONTOSO\\svc_pbi", "sql-sales-password", "Pw!new", order="vault-first", delay=30)
    assert account.secret == "Pw!old"
    now[0] += 29.9
    assert account.secret == "Pw!old"
    now[0] += 0.1
    assert account.secret == "Pw!new"


def test_key_vault_version_times_come_from_the_sandbox_clock(msb: Sandbox, clock: ManualClock) -> None:
    clock.advance(1234.6)
    first = msb.vault.set_secret("sql-sales-password", "Pw!one")
    created_first = int(clock.now())
    clock.advance(60)
    second = msb.vault.set_secret("sql-sales-password", "Pw!two")
    msb.vault.disable("sql-sales-password", first)
    app = msb.entra.add_app(name="reader")
    token = msb.entra.issue_token("app", app.client_id, KEYVAULT_AUDIENCE).token
    headers = {"Authorization": f"Bearer {token}"}
    base = f"{msb.vault.url}secrets/sql-sales-password"

    current = requests.get(f"{base}/{second}", params={"api-version": "7.4"}, headers=headers, timeout=10)
    listing = requests.get(f"{base}/versions", params={"api-version": "7.4"}, headers=headers, timeout=10)

    now = int(clock.now())
    assert current.status_code == 200
    assert (current.json()["attributes"]["created"], current.json()["attributes"]["updated"]) == (now, now)
    times = {
        item["id"].rsplit("/", 1)[-1]: (item["attributes"]["created"], item["attributes"]["updated"])
        for item in listing.json()["value"]
    }
    assert times == {first: (created_first, now), second: (now, now)}
