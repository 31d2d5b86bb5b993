"""A ``match`` over Fabric connections (``{"match": {"kind": "connection", ...}}``), resolved
through ``GET /connections`` (paged) in the sandbox (issue 12)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from remediation.reconciler.healer import Action
from sandbox import Sandbox
from tests.sandbox.test_fabric import add_fabric, fabric_patches
from tests.support.harness import Make
from tests.support.world import build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


def match_binding(secret: str, **match: str) -> dict[str, Any]:
    return {
        "name": "lakes",
        "secret": secret,
        "credentialType": "Basic",
        "username": "svc_fabric",
        "targets": [{"match": {"kind": "connection", **match}}],
    }


def of(report: Any, connection_id: str) -> list[str]:
    return [o.action for o in report.targets() if o.datasource_id == connection_id]


def test_a_connection_match_heals_the_connections_it_selects_across_pages(make: Make, sb: Sandbox) -> None:
    sb.fabric.page_size = 1  # every connection on a page of its own: the continuation is followed
    w = build_world(sb)
    lake = add_fabric(sb, w.app.client_id, name="lake")
    other = add_fabric(sb, w.app.client_id, name="ware")  # another server: not selected
    binding = match_binding(lake.secret_name, connectionType="sql", server="LAKE-src.contoso.local")
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps(w.bindings(binding))})
    new = lake.rotate(sb)
    other_before = dict(other.connection.data)

    report = h.healer.heal_secret(lake.secret_name)

    assert of(report, lake.connection.id) == [Action.UPDATED]
    assert lake.connection.data["password"] == new
    assert of(report, other.connection.id) == [] and other.connection.data == other_before
    pages = sb.requests.find("fabric.list_connections")
    assert len(pages) == 2 and any("continuationToken" in p.query for p in pages)
    assert all(p.method == "GET" for p in pages)


def test_a_connection_that_signs_in_another_way_is_refused_not_sent(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    keyed = add_fabric(sb, w.app.client_id, credential_type="Key", name="lake")
    h = make(
        w,
        env={
            "REMEDIATION_BINDINGS": json.dumps(
                w.bindings(match_binding(keyed.secret_name, server="lake-src.contoso.local"))
            )
        },
    )
    keyed.rotate(sb)

    report = h.healer.heal_secret(keyed.secret_name)

    (outcome,) = [o for o in report.targets() if o.datasource_id == keyed.connection.id]
    assert outcome.action == Action.FAILED
    assert "signs in with Key, not Basic" in outcome.reason
    assert fabric_patches(sb) == []
    assert keyed.account.total_failures == 0


def test_a_matched_connection_marked_as_a_key_vault_reference_is_never_sent_a_copy(
    make: Make, sb: Sandbox
) -> None:
    w = build_world(sb)
    referenced = add_fabric(sb, w.app.client_id, name="lake", reference=True)
    binding = match_binding(referenced.secret_name, server="lake-src.contoso.local")
    binding["targets"].append({"connectionId": referenced.connection.id, "keyVaultReference": True})
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps(w.bindings(binding))})
    referenced.rotate(sb)

    report = h.healer.heal_secret(referenced.secret_name)

    assert of(report, referenced.connection.id) == [Action.REFERENCED]
    assert fabric_patches(sb) == []
    assert referenced.connection.reference_overwritten == 0


def test_a_heal_of_a_single_matched_connection_finds_its_binding(make: Make, sb: Sandbox) -> None:
    w = build_world(sb)
    lake = add_fabric(sb, w.app.client_id, name="lake")
    binding = match_binding(lake.secret_name, path="lake-src.contoso.local;lake-src")
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps(w.bindings(binding))})
    new = lake.rotate(sb)

    report = h.healer.heal_target("connections", lake.connection.id)

    assert of(report, lake.connection.id) == [Action.UPDATED]
    assert lake.connection.data["password"] == new


def test_a_single_heal_of_a_connection_that_signs_in_another_way_is_refused_too(
    make: Make, sb: Sandbox
) -> None:
    """The path a secret's fan-out takes (one queued heal per target) keeps the refusal."""
    w = build_world(sb)
    keyed = add_fabric(sb, w.app.client_id, credential_type="Key", name="lake")
    binding = match_binding(keyed.secret_name, server="lake-src.contoso.local")
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps(w.bindings(binding))})
    keyed.rotate(sb)
    assert ("connections", keyed.connection.id) in h.healer.secret_targets(keyed.secret_name)

    report = h.healer.heal_target("connections", keyed.connection.id)

    assert of(report, keyed.connection.id) == [Action.FAILED]
    assert fabric_patches(sb) == [] and keyed.account.total_failures == 0


def test_bindings_check_lists_what_a_connection_match_selects(make: Make, sb: Sandbox) -> None:
    from io import StringIO  # noqa: PLC0415

    from remediation.edges.cli import main  # noqa: PLC0415

    w = build_world(sb)
    lake = add_fabric(sb, w.app.client_id, name="lake")
    keyed = add_fabric(sb, w.app.client_id, credential_type="Key", name="lake2")
    binding = match_binding(lake.secret_name, connectionType="SQL", server="lake-src.contoso.local")
    other = match_binding(keyed.secret_name, server="lake2-src.contoso.local")
    other["name"] = "keyed"
    nothing = match_binding(lake.secret_name, server="nowhere.contoso.local")
    nothing["name"] = "nothing"
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps(w.bindings(binding, other, nothing))})
    out, err = StringIO(), StringIO()
    code = main(["--json", "bindings", "check"], environ=h.env, stdout=out, stderr=err)
    rows = {(r["binding"], r["datasource"]): r["status"] for r in json.loads(out.getvalue())}
    assert rows[("lakes", lake.connection.id)] == "ok (match)"
    assert "signs in with Key, not Basic" in rows[("keyed", keyed.connection.id)]
    assert rows[("nothing", "-")] == "match selects no connection"
    assert code == 1


@pytest.mark.parametrize("same_id", [False, True], ids=["other-id", "connection-id"])
def test_a_connection_match_leaves_alone_a_gateway_data_source_another_binding_covers(
    make: Make, sb: Sandbox, same_id: bool
) -> None:
    """Gateway data sources are Fabric connections too: a connection match that selects one a
    gateway binding covers does not heal it a second time through Fabric (with its own secret)."""
    sb.fabric.lists_gateway_datasources = True
    sb.fabric.datasource_ids_are_connection_ids = same_id
    w = build_world(sb)
    (ds,) = w.datasources
    sb.vault.set_secret("other-secret", "Other#" + w.secret_name)
    wide = match_binding("other-secret", server=ds.connection_details["server"])
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps(w.bindings(wide))})

    report = h.healer.heal_secret("other-secret")

    assert report.targets() == [], report.to_dict()
    assert fabric_patches(sb) == []
    assert h.healer.heal_secret(w.secret_name).targets()[0].datasource_id == ds.id
