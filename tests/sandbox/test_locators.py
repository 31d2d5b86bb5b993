"""Where an acceptance licenses a version (issue 10's residual risk): targets named only by
their ids learn their server from the gateway (or the inventory), a server that cannot be learnt
is a locator of its own, and an account on several servers is probed once per server.

The sandbox's accounts count failed sign-ins per account; here two SQL logins share a username
on two servers (two accounts, two passwords: the real case of per-server logins).
"""

from __future__ import annotations

from typing import Any

import pytest

from remediation.config.bindings_file import parse_bindings
from remediation.reconciler.healer import Action
from remediation.rules.accounts import presentation_locator
from sandbox import Sandbox
from sandbox.powerbi import Datasource
from sandbox.world import generate_password
from tests.support.harness import Make
from tests.support.world import World, build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


def _second_server(sb: Sandbox, world: World, databases: int, *, password: str) -> list[Datasource]:
    """``databases`` data sources on server b.contoso.local, all signing in as one SQL login with
    the username of ``world`` but its own ``password``; added to the world's binding by id."""
    login = sb.sources.add_account("b.contoso.local\\svc_pbi", username=world.username, secret=password)
    added = []
    for i in range(databases):
        source = sb.sources.add(f"b-db{i}", credential_type="Basic", account=login)
        datasource = sb.powerbi.add_datasource(
            world.gateway, source, connection_details={"server": "b.contoso.local", "database": f"db{i}"}
        )
        world.sources.append(source)
        world.datasources.append(datasource)
        added.append(datasource)
    return added


def _patches_by_target(sb: Sandbox) -> list[Any]:
    return sorted(sb.requests.find("powerbi.update_datasource"), key=lambda r: r.at)


def test_a_version_right_on_one_server_is_probed_once_on_another_that_refuses_it(
    make: Make, sb: Sandbox
) -> None:
    world = build_world(sb, sources=1)  # server src-0.contoso.local, its own login
    other = generate_password()
    on_b = _second_server(sb, world, 3, password=other)
    h = make(world)
    world.rotate()  # changes the first login only: the second keeps `other`
    new = world.secret
    login_b = sb.sources.account_of("b-db0")

    report = h.healer.heal_secret(world.secret_name, retry_refreshes=False)

    by_target = {o.datasource_id: o.action for o in report.targets()}
    assert by_target[world.datasources[0].id] == Action.UPDATED
    assert sorted(by_target[d.id] for d in on_b) == [Action.BLOCKED, Action.BLOCKED, Action.REJECTED]
    # The second server's login saw the new value once, not once per database.
    assert login_b.failures_of(new) == 1 and not login_b.locked
    assert len(_patches_by_target(sb)) == 2
    # Nothing more on later runs.
    again = h.healer.heal_secret(world.secret_name, retry_refreshes=False)
    assert login_b.failures_of(new) == 1
    assert {o.action for o in again.targets() if o.datasource_id != world.datasources[0].id} == {
        Action.BLOCKED
    }


def test_an_account_on_three_servers_is_probed_once_per_server_and_no_target_is_left_busy(
    make: Make, sb: Sandbox
) -> None:
    world = build_world(sb, sources=3)  # one shared account, three servers
    h = make(world)
    world.rotate()

    report = h.healer.heal_secret(world.secret_name, retry_refreshes=False)

    assert [o.action for o in report.targets()] == [Action.UPDATED] * 3
    assert len(_patches_by_target(sb)) == 3
    assert report.exit_code == 0
    # Each server was a probe of its own (claimed, answered, recorded), none a free follower.
    state = h.healer.ledger.account_version("user:svc_pbi", world.secret_name, world.version)
    assert state.presentations == 3
    assert sorted(state.accepted) == sorted(f"{s.id}.contoso.local" for s in world.sources)


def test_a_gateway_whose_sources_cannot_be_listed_gives_each_target_a_locator_of_its_own(
    make: Make, sb: Sandbox
) -> None:
    world = build_world(sb, sources=1, cloud=True)  # a cloud gateway has no data source list
    other = generate_password()
    login = sb.sources.add_account("b\\svc_pbi", username=world.username, secret=other)
    added = []
    for i in range(3):
        source = sb.sources.add(f"c-db{i}", credential_type="Basic", account=login)
        added.append(sb.powerbi.add_datasource(world.gateway, source))
    world.datasources.extend(added)
    h = make(world)
    world.rotate()
    new = world.secret

    report = h.healer.heal_secret(world.secret_name, retry_refreshes=False)

    assert login.failures_of(new) == 1, report.to_dict()
    assert sorted(o.action for o in report.targets() if o.datasource_id in {d.id for d in added}) == [
        Action.BLOCKED,
        Action.BLOCKED,
        Action.REJECTED,
    ]


def test_presentation_locators() -> None:
    def binding(credential_type: str, username: str | None) -> Any:
        entry: dict[str, Any] = {
            "name": "b",
            "secret": "s",
            "credentialType": credential_type,
            "targets": [
                {
                    "gatewayId": "0" * 8 + "-0000-0000-0000-" + "0" * 12,
                    "datasourceId": "1" * 8 + "-1111-1111-1111-" + "1" * 12,
                }
            ],
        }
        if username is not None:
            entry["username"] = username
        return parse_bindings({"bindings": [entry]}).bindings[0]

    target = ("GW", "DS")
    assert presentation_locator(binding("Windows", "CONTOSO\\svc"), "sql1", target) == "domain:contoso"
    assert presentation_locator(binding("Windows", "svc@contoso.com"), "sql1", target) == "domain:contoso.com"
    assert presentation_locator(binding("Windows", "svc"), "SQL1", target) == "sql1"
    assert presentation_locator(binding("Basic", "CONTOSO\\svc"), "sql1", target) == "sql1"
    assert presentation_locator(binding("Basic", "svc"), "", target) == "unknown:gw/ds"


def test_a_domain_account_accepted_on_one_server_fans_out_to_the_others(make: Make, sb: Sandbox) -> None:
    world = build_world(sb, sources=3, credential_type="Windows", username="CONTOSO\\svc_pbi")
    h = make(world)
    world.rotate()

    report = h.healer.heal_secret(world.secret_name, retry_refreshes=False)

    assert [o.action for o in report.targets()] == [Action.UPDATED] * 3
    state = h.healer.ledger.account_version("user:svc_pbi", world.secret_name, world.version)
    assert state.presentations == 1 and state.accepted == ("domain:contoso",)
