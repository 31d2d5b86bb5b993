"""Semantic models bound to Fabric connections: their failed refresh is retried once the
connection is healed, under the same rules as gateway data sources (issue 12).

Whether Power BI lists a connection-bound source under the connection's own id is unconfirmed
(FABRIC.md), so every test runs on both sides of it (``sb.fabric.datasource_ids_are_connection_ids``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from remediation.clients.identity import PowerBITokenProvider
from remediation.reconciler.healer import Action
from sandbox import Sandbox
from sandbox.powerbi import Dataset
from sandbox.specs import fabric_errors
from tests.sandbox.test_fabric import FabricWorld, add_fabric, fabric_patches, harness
from tests.support.harness import Make
from tests.support.world import World, build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

SAME_ID = pytest.mark.parametrize("same_id", [False, True], ids=["other-id", "connection-id"])


def model(sb: Sandbox, w: World, name: str, *connections: FabricWorld) -> Dataset:
    """A semantic model bound to ``connections``, owned by the healer's identity."""
    return sb.powerbi.add_dataset(
        w.workspace, name, [], owner=w.app.client_id, connections=[f.connection for f in connections]
    )


def fail_now(sb: Sandbox, *datasets: Dataset) -> None:
    """A scheduled refresh of each, now, with what the connections hold."""
    for dataset in datasets:
        sb.powerbi.start_refresh(dataset)
    sb.powerbi.settle()


def of(report: Any, dataset: Dataset) -> list[str]:
    return [o.action for o in report.datasets() if o.dataset_id == dataset.id]


def api_refreshes(dataset: Dataset) -> list[Any]:
    return [r for r in dataset.refreshes if r.refresh_type == "ViaApi"]


@SAME_ID
@pytest.mark.parametrize("credential_type", ["ServicePrincipal", "Basic"])
def test_a_model_whose_refresh_failed_on_a_rotated_connection_is_refreshed_once_it_is_healed(
    make: Make, sb: Sandbox, same_id: bool, credential_type: str
) -> None:
    sb.fabric.datasource_ids_are_connection_ids = same_id
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, credential_type=credential_type, name="lake")
    other = add_fabric(sb, w.app.client_id, name="other")  # bound to nothing, its password is stale
    both = model(sb, w, "sales", f)
    mixed = model(sb, w, "mixed", other, f)
    h = harness(make, sb, f, world=w)
    f.account.set_secret("Rotated#" + f.secret_name)  # the source changes first: refreshes fail
    other.account.set_secret("Rotated#other")
    fail_now(sb, both, mixed)
    assert both.refreshes[-1].status == "Failed" and mixed.refreshes[-1].status == "Failed"
    sb.vault.set_secret(f.secret_name, "Rotated#" + f.secret_name)
    failures = f.account.total_failures

    report = h.healer.heal_secret(f.secret_name)

    assert [o.action for o in report.targets() if o.datasource_id == f.connection.id] == [Action.UPDATED]
    assert of(report, both) == [Action.REFRESHED], [o.reason for o in report.datasets()]
    (retried,) = api_refreshes(both)
    assert retried.status == "Completed"
    assert Action.REFRESHED not in of(report, mixed)
    assert Action.UNBOUND in of(report, mixed)  # its failing source has no binding
    assert api_refreshes(mixed) == []
    assert f.account.total_failures == failures  # the healed connection never failed again
    h.healer.heal_secret(f.secret_name)
    assert api_refreshes(both) == [retried]  # retried once: the refresh that followed is not failed


@SAME_ID
def test_a_model_is_not_refreshed_while_another_of_its_connections_is_not_known_good(
    make: Make, sb: Sandbox, same_id: bool
) -> None:
    sb.fabric.datasource_ids_are_connection_ids = same_id
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, name="lake")
    g = add_fabric(sb, w.app.client_id, name="ware")
    dataset = model(sb, w, "sales", f, g)
    h = harness(make, sb, f, g, world=w)
    f.account.set_secret("Rotated#lake")
    g.account.set_secret("Rotated#ware")  # its Key Vault secret is not rotated: the healer cannot cure it
    fail_now(sb, dataset)
    sb.vault.set_secret(f.secret_name, "Rotated#lake")
    failures = g.account.total_failures

    report = h.healer.heal_dataset(w.workspace_id, dataset.id)

    assert [o.action for o in report.targets() if o.datasource_id == f.connection.id] == [Action.UPDATED]
    # Key Vault's version of g was presented once (the one failed sign-in its account may cost)...
    assert [o.action for o in report.targets() if o.datasource_id == g.connection.id] == [Action.REJECTED]
    # ...and the model is not refreshed: a refresh would sign in with g's stale password again.
    assert of(report, dataset) == [Action.BLOCKED], [o.reason for o in report.datasets()]
    assert g.connection.id in next(o.reason for o in report.datasets())
    assert api_refreshes(dataset) == []
    h.healer.heal_dataset(w.workspace_id, dataset.id)
    h.healer.sweep()
    assert api_refreshes(dataset) == []
    assert g.account.total_failures == failures + 1


def test_when_fabric_cannot_tell_which_connections_a_model_uses_it_is_not_refreshed(
    make: Make, sb: Sandbox
) -> None:
    """Power BI lists the source under another id and Fabric refuses the item's connections: the
    source is unbound as far as the healer can tell, so the safe side is no refresh."""
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, name="lake")
    dataset = model(sb, w, "sales", f)
    h = harness(make, sb, f, world=w)
    f.account.set_secret("Rotated#lake")
    fail_now(sb, dataset)
    sb.vault.set_secret(f.secret_name, "Rotated#lake")
    sb.faults.add(
        "fabric.list_item_connections",
        status=403,
        body={"errorCode": "InsufficientPermissionsOverItem", "message": "no"},
        times=10,
    )

    report = h.healer.heal_secret(f.secret_name)

    assert [o.action for o in report.targets() if o.datasource_id == f.connection.id] == [Action.UPDATED]
    assert set(of(report, dataset)) == {Action.UNBOUND}, [o.reason for o in report.datasets()]
    assert api_refreshes(dataset) == []


def test_the_sweep_finds_a_model_on_a_bound_connection_and_refreshes_it(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, name="lake")
    dataset = model(sb, w, "sales", f)
    h = harness(make, sb, f, world=w)
    f.rotate(sb)
    fail_now(sb, dataset)

    report = h.healer.sweep()

    assert of(report, dataset) == [Action.REFRESHED], [o.reason for o in report.datasets()]
    assert [r.status for r in api_refreshes(dataset)] == ["Completed"]


def test_the_sandbox_answers_list_item_connections_and_paged_lists_as_the_spec_says(
    make: Make, sb: Sandbox
) -> None:
    sb.fabric.page_size = 1
    w = build_world(sb)
    f, g = add_fabric(sb, w.app.client_id, name="lake"), add_fabric(sb, w.app.client_id, name="ware")
    dataset = model(sb, w, "sales", f, g)
    h = harness(make, sb, f, g, world=w)
    fabric = h.runtime.fabric
    assert [c.id for c in fabric.list_item_connections(w.workspace_id, dataset.id)] == [
        f.connection.id,
        g.connection.id,
    ]
    assert {c.id for c in fabric.list_connections()} == {f.connection.id, g.connection.id}
    token = PowerBITokenProvider(h.runtime.settings, scope=h.runtime.settings.fabric_scope)()
    for path, definition in (
        (f"workspaces/{w.workspace_id}/items/{dataset.id}/connections", "ItemConnections"),
        ("connections", "ListConnectionsResponse"),
    ):
        url: str | None = f"{sb.fabric.api_url}/{path}"
        pages = 0
        while url is not None:
            answer = fabric.pipeline.request("GET", url, bearer=token)
            assert answer.status == 200
            body = answer.json()
            assert fabric_errors(definition, body) == []
            url, pages = body.get("continuationUri"), pages + 1
            assert (url is None) == ("continuationToken" not in body)
        assert pages == 2


@SAME_ID
def test_a_model_on_a_gateway_data_source_and_a_connection_is_refreshed_once_both_are_known_good(
    make: Make, sb: Sandbox, same_id: bool
) -> None:
    sb.fabric.datasource_ids_are_connection_ids = same_id
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id, name="lake")
    mixed = sb.powerbi.add_dataset(
        w.workspace, "mixed", [w.datasources[0]], owner=w.app.client_id, connections=[f.connection]
    )
    h = harness(make, sb, f, world=w)
    w.rotate()  # the gateway data source's account, then Key Vault
    fail_now(sb, mixed)
    assert mixed.refreshes[-1].status == "Failed"

    report = h.healer.heal_secret(w.secret_name)

    assert of(report, mixed) == [Action.REFRESHED], [o.reason for o in report.datasets()]
    # The connection was checked against Key Vault in the same run before the refresh signed in to it.
    assert [o.action for o in report.targets() if o.datasource_id == f.connection.id]
    assert [r.status for r in api_refreshes(mixed)] == ["Completed"]
    assert w.failed_sign_ins() + f.account.total_failures == 1  # only the scheduled refresh's


@SAME_ID
def test_a_dataset_heal_refuses_a_matched_connection_that_signs_in_another_way(
    make: Make, sb: Sandbox, same_id: bool
) -> None:
    """The refusal of a match-selected connection with another credential type holds on every
    path, the dataset heal (refresh-failure event, sweep) included, not only the secret fan-out."""
    sb.fabric.datasource_ids_are_connection_ids = same_id
    w = build_world(sb)
    keyed = add_fabric(sb, w.app.client_id, credential_type="Key", name="lake")
    sales = model(sb, w, "sales", keyed)
    binding = {
        "name": "lakes",
        "secret": keyed.secret_name,
        "credentialType": "Basic",
        "username": "svc_fabric",
        "targets": [{"match": {"kind": "connection", "server": "lake-src.contoso.local"}}],
    }
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps(w.bindings(binding))})
    keyed.account.set_secret("Rotated#" + keyed.secret_name)
    fail_now(sb, sales)
    sb.vault.set_secret(keyed.secret_name, "Rotated#" + keyed.secret_name)
    failures = keyed.account.total_failures

    report = h.healer.heal_dataset(w.workspace_id, sales.id)

    refused = [o for o in report.targets() if o.datasource_id == keyed.connection.id]
    assert refused and all(o.action == Action.FAILED for o in refused), [o.reason for o in report.targets()]
    assert "signs in with Key, not Basic" in refused[0].reason
    assert fabric_patches(sb) == []
    assert keyed.account.total_failures == failures
    assert api_refreshes(sales) == []
