"""Guard the operator's settings (issue 13): a heal keeps the privacy level and encryption an
admin set on a gateway data source, read from the Fabric connection it is, unless the binding
says otherwise; when they cannot be read the defaults are sent and the report's target says so.

Whether Fabric's connection id is Power BI's ``datasourceId`` is unconfirmed (FABRIC.md), so the
tests that read run on both sides of it (``sb.fabric.datasource_ids_are_connection_ids``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from remediation.reconciler.healer import Action
from sandbox import Sandbox
from sandbox.powerbi import Datasource
from tests.support.harness import Harness, Make
from tests.support.world import World, build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

SAME_ID = pytest.mark.parametrize("same_id", [False, True], ids=["other-id", "connection-id"])
FABRIC_READS = ("fabric.get_connection", "fabric.list_connections")


def world(sb: Sandbox, *, same_id: bool = False, listed: bool = True, **kwargs: Any) -> World:
    sb.fabric.lists_gateway_datasources = listed
    sb.fabric.datasource_ids_are_connection_ids = same_id
    return build_world(sb, **kwargs)


def heal(make: Make, w: World, **binding: Any) -> tuple[Harness, Any]:
    entry = {**w.binding(), **binding}
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps({"bindings": [entry]})})
    w.rotate()
    return h, h.healer.heal_secret(w.secret_name)


def settings(datasource: Datasource) -> tuple[str, str]:
    """What Power BI holds now: set by the last accepted PATCH (or by the admin)."""
    return datasource.privacy_level, datasource.connection_encryption


def target(report: Any, datasource: Datasource) -> dict[str, Any]:
    (entry,) = [t for t in report.to_dict()["targets"] if t["datasource_id"] == datasource.id]
    return entry


def fabric_reads(sb: Sandbox) -> int:
    return sum(len(sb.requests.find(route)) for route in FABRIC_READS)


@SAME_ID
def test_a_heal_keeps_the_privacy_level_and_encryption_an_admin_set(
    make: Make, sb: Sandbox, same_id: bool
) -> None:
    w = world(sb, same_id=same_id)
    (ds,) = w.datasources
    sb.powerbi.set_datasource_settings(ds, privacy_level="Private", connection_encryption="NotEncrypted")
    failures = w.failed_sign_ins()

    h, report = heal(make, w)

    assert target(report, ds)["action"] == Action.UPDATED
    assert w.stored_secret(ds) == w.secret
    assert settings(ds) == ("Private", "NotEncrypted")  # what the admin chose, not the defaults
    assert ds.credential is not None and ds.credential.privacy_level == "Private"
    assert "warnings" not in target(report, ds)
    assert w.failed_sign_ins() == failures  # reading Fabric is no sign-in anywhere
    if not same_id:  # Power BI's id is no connection's: found by gateway, type and path instead
        assert sb.requests.find("fabric.list_connections")


@SAME_ID
def test_a_cloud_data_source_keeps_its_settings_too(make: Make, sb: Sandbox, same_id: bool) -> None:
    w = world(sb, same_id=same_id, cloud=True, credential_type="Key", username=None)
    (ds,) = w.datasources
    sb.powerbi.set_datasource_settings(ds, privacy_level="Public", connection_encryption="NotEncrypted")

    h, report = heal(make, w)

    assert target(report, ds)["action"] == Action.UPDATED
    assert settings(ds) == ("Public", "NotEncrypted")
    assert "warnings" not in target(report, ds)


@SAME_ID
def test_the_binding_s_explicit_values_win_and_giving_both_reads_nothing(
    make: Make, sb: Sandbox, same_id: bool
) -> None:
    w = world(sb, same_id=same_id)
    (ds,) = w.datasources
    sb.powerbi.set_datasource_settings(ds, privacy_level="Private", connection_encryption="NotEncrypted")

    h, report = heal(make, w, privacyLevel="Public", encryptedConnection="Encrypted")

    assert target(report, ds)["action"] == Action.UPDATED
    assert settings(ds) == ("Public", "Encrypted")
    assert fabric_reads(sb) == 0  # nothing to read when the binding gives both
    assert "warnings" not in target(report, ds)


def test_a_binding_that_gives_one_value_keeps_the_other(make: Make, sb: Sandbox) -> None:
    w = world(sb)
    (ds,) = w.datasources
    sb.powerbi.set_datasource_settings(ds, privacy_level="Private", connection_encryption="NotEncrypted")

    h, report = heal(make, w, privacyLevel="Organizational")

    assert settings(ds) == ("Organizational", "NotEncrypted")
    assert "warnings" not in target(report, ds)


@pytest.mark.parametrize("refusal", ["not-listed", "forbidden"])
def test_when_fabric_cannot_tell_the_defaults_are_sent_and_the_report_says_so(
    make: Make, sb: Sandbox, refusal: str
) -> None:
    w = world(sb, listed=refusal != "not-listed")
    (ds,) = w.datasources
    sb.powerbi.set_datasource_settings(ds, privacy_level="Private", connection_encryption="NotEncrypted")
    if refusal == "forbidden":
        for route in FABRIC_READS:
            sb.faults.add(
                route,
                status=403,
                body={"errorCode": "InsufficientPermissionsToManageConnection", "message": "no"},
                times=10,
            )
    failures = w.failed_sign_ins()

    h, report = heal(make, w)

    entry = target(report, ds)
    assert entry["action"] == Action.UPDATED  # a failed read never fails the heal
    assert w.stored_secret(ds) == w.secret
    assert settings(ds) == ("Organizational", "Encrypted")
    (warning,) = entry["warnings"]
    assert "privacyLevel (Organizational) and encryptedConnection (Encrypted) set to the defaults" in warning
    assert "could not be read" in warning and "in the binding" in warning
    if refusal == "forbidden":
        assert "403" in warning
    assert w.failed_sign_ins() == failures
    assert h.healer.heal_secret(w.secret_name).to_dict()["targets"][0]["action"] == Action.CURRENT


def test_two_connections_that_could_be_the_data_source_are_no_guess(make: Make, sb: Sandbox) -> None:
    w = world(sb)  # Power BI's ids are not the connections': only the path could tell
    (ds,) = w.datasources
    twin = sb.powerbi.add_datasource(w.gateway, w.sources[0], connection_details=dict(ds.connection_details))
    sb.powerbi.set_datasource_settings(twin, privacy_level="Public", connection_encryption="NotEncrypted")
    sb.powerbi.set_datasource_settings(ds, privacy_level="Private", connection_encryption="NotEncrypted")

    h, report = heal(make, w)

    assert settings(ds) == ("Organizational", "Encrypted")  # neither twin's settings were borrowed
    (warning,) = target(report, ds)["warnings"]
    assert "no single Fabric connection" in warning


def test_fabric_s_any_is_sent_as_encrypted_and_the_report_says_why(make: Make, sb: Sandbox) -> None:
    w = world(sb, same_id=True)
    (ds,) = w.datasources
    sb.powerbi.set_datasource_settings(ds, privacy_level="Private", connection_encryption="Any")

    h, report = heal(make, w)

    assert settings(ds) == ("Private", "Encrypted")
    (warning,) = target(report, ds)["warnings"]
    assert "Any" in warning and '"encryptedConnection": "NotEncrypted"' in warning


@SAME_ID
def test_the_sandbox_shows_gateway_data_sources_as_connections_consistently(
    make: Make, sb: Sandbox, same_id: bool
) -> None:
    w = world(sb, same_id=same_id)
    (ds,) = w.datasources
    sb.powerbi.set_datasource_settings(ds, privacy_level="Private", connection_encryption="Any")
    fabric = make(w).healer.fabric_kind.fabric
    connection_id = sb.fabric.datasource_connection_id(ds)
    assert (connection_id == ds.id) is same_id

    listed = {c.id: c for c in fabric.list_connections()}
    got = fabric.get_connection(connection_id)

    assert listed[connection_id] == got
    assert got.connectivity_type == "OnPremisesGateway" and got.gateway_id == ds.gateway_id
    assert (got.privacy_level, got.connection_encryption) == ("Private", "Any")
    assert got.path == "{server};{database}".format(**ds.connection_details)
    sb.fabric.lists_gateway_datasources = False
    assert connection_id not in {c.id for c in fabric.list_connections()}


@pytest.mark.parametrize("refusal", [None, 403])
def test_a_fan_out_reads_the_connections_once_and_a_refusal_costs_one_call(
    make: Make, sb: Sandbox, refusal: int | None
) -> None:
    """Ten data sources: one paged list of the connections serves them all, and an identity
    without Fabric rights pays one refused call, not one per data source (nor a second in the next
    run of the same instance)."""
    w = world(sb, sources=10)
    for ds in w.datasources:
        sb.powerbi.set_datasource_settings(ds, privacy_level="Private", connection_encryption="NotEncrypted")
    if refusal:
        sb.faults.add(
            "fabric.list_connections",
            status=refusal,
            body={"errorCode": "InsufficientPermissionsToManageConnection", "message": "no"},
            times=100,
        )

    h, report = heal(make, w)

    assert {t["action"] for t in report.to_dict()["targets"]} == {Action.UPDATED}
    expected = ("Organizational", "Encrypted") if refusal else ("Private", "NotEncrypted")
    assert {settings(ds) for ds in w.datasources} == {expected}
    assert len(sb.requests.find("fabric.get_connection")) == 0
    assert len(sb.requests.find("fabric.list_connections")) == 1
    w.rotate()
    h.healer.heal_secret(w.secret_name)
    assert len(sb.requests.find("fabric.list_connections")) == 1


# -- a gateway data source whose Fabric connection reads Key Vault itself ----------------------------
@SAME_ID
@pytest.mark.parametrize("known_by", ["bindings-mark", "adopt-record"])
def test_a_data_source_whose_connection_references_key_vault_is_never_sent_a_copy_through_power_bi(
    make: Make, sb: Sandbox, same_id: bool, known_by: str
) -> None:
    w = world(sb, same_id=same_id, cloud=True, credential_type="Key", username=None)
    (ds,) = w.datasources
    connection_id = sb.fabric.datasource_connection_id(ds)
    entries = [w.binding()]
    if known_by == "bindings-mark":  # the connection is bound too, marked as reading Key Vault
        entries.append(
            {
                "name": "the-connection",
                "secret": w.secret_name,
                "credentialType": "Key",
                "targets": [{"connectionId": connection_id, "keyVaultReference": True}],
            }
        )
    h = make(w, env={"REMEDIATION_BINDINGS": json.dumps({"bindings": entries})})
    if known_by == "adopt-record":  # `adopt` moved it (the ledger's record), nobody marked it yet
        from remediation.ledger.references import ReferenceRecord, References

        References(h.runtime.ledger).record(
            connection_id,
            ReferenceRecord(
                state="referenced", secret=w.secret_name, vault_connection="kv", at=0.0, request="adopt-1"
            ),
        )
    w.rotate()
    before = ds.credential

    report = h.healer.heal_secret(w.secret_name)

    (entry,) = [
        t
        for t in report.to_dict()["targets"]
        if t["datasource_id"] == ds.id
        and t["gateway_id"] == ds.gateway_id  # the data source, not its connection
    ]
    assert entry["action"] == Action.FAILED and "Key Vault" in entry["reason"], entry
    assert not sb.requests.find("powerbi.update_datasource")  # no copy replaced the reference
    assert ds.credential is before
