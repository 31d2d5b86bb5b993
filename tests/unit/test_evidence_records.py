"""The stored form of the safety core's evidence (remediation/safety/evidence.py): what an old or
empty record reads as, and a corrupt one refused with a message that names what is corrupt (a
record the core cannot read must stop the healer, not read as "no evidence")."""

from __future__ import annotations

import json

import pytest

from remediation.errors import LedgerError
from remediation.safety.evidence import AccountVersion, Intent, TargetState


@pytest.mark.parametrize("text", [None, "", "   "])
def test_a_record_without_evidence_reads_as_none(text: str | None) -> None:
    assert AccountVersion.parse_evidence(text) == ((), None, ())
    if text is None or text == "":
        assert AccountVersion.parse_accepted(text) == ()


def test_stored_evidence_reads_back_as_written() -> None:
    stored = json.dumps(
        {"licences": [["sql.contoso.local", 100, "req-1"]], "contradictedAt": 120, "grants": ["g"]}
    )
    assert AccountVersion.parse_evidence(stored) == ((("sql.contoso.local", 100.0, "req-1"),), 120.0, ("g",))


@pytest.mark.parametrize(
    "doc",
    [
        "{",  # not JSON
        "[]",  # not an object
        json.dumps({"licences": "all"}),
        json.dumps({"licences": [["sql", "soon", "req"]]}),
        json.dumps({"licences": [], "contradictedAt": "yesterday"}),
        json.dumps({"licences": [], "grants": "g"}),  # a string, not a list of them
        json.dumps({"licences": [], "grants": [1]}),
    ],
    ids=["not-json", "not-object", "licences", "licence-time", "contradicted", "grants", "grant"],
)
def test_corrupt_evidence_is_refused_naming_it(doc: str) -> None:
    with pytest.raises(LedgerError) as raised:
        AccountVersion.parse_evidence(doc)
    assert str(raised.value) == "corrupt ledger record: evidence"


@pytest.mark.parametrize(
    "doc", ["{", json.dumps({"a": 1}), json.dumps([1])], ids=["not-json", "object", "number"]
)
def test_a_corrupt_list_of_acceptances_is_refused_naming_it(doc: str) -> None:
    with pytest.raises(LedgerError) as raised:
        AccountVersion.parse_accepted(doc)
    assert str(raised.value) == "corrupt ledger record: accepted"


INTENT = {
    "secret": "sql-pw",
    "version": "v2",
    "account": "user:svc",
    "locator": "sql01",
    "at": 100,
    "leaseId": "l",
}


@pytest.mark.parametrize("text", [None, "", "   "])
def test_an_empty_intent_record_reads_as_no_intent(text: str | None) -> None:
    assert Intent.parse(text) is None


def test_a_stored_intent_reads_back_as_written() -> None:
    intent = Intent("sql-pw", "v2", "user:svc", "sql01", 100.0, "l")
    assert Intent.parse(intent.to_json()) == intent
    assert Intent.parse(json.dumps(INTENT)) == intent


@pytest.mark.parametrize(
    "doc",
    [
        "{",  # not JSON
        "[]",  # not an object
        json.dumps(INTENT | {"at": "soon"}),  # every name, but no time
        json.dumps({k: v for k, v in INTENT.items() if k != "leaseId"}),  # a time, but a name missing
        json.dumps(INTENT | {"account": 7}),
    ],
    ids=["not-json", "not-object", "time", "lease", "account"],
)
def test_a_corrupt_intent_record_is_refused_naming_it(doc: str) -> None:
    """An intent is a presentation whose verdict may be lost: one that cannot be read must stop
    the healer (it would otherwise read as "nothing in flight" and present again)."""
    with pytest.raises(LedgerError) as raised:
        Intent.parse(doc)
    assert str(raised.value) == "corrupt ledger record: intent"


def test_a_lease_without_an_expiry_or_an_owner_is_free() -> None:
    assert TargetState("gw", "ds", lease_owner="run-a", lease_expires=None).lease_free(0.0)
    assert TargetState("gw", "ds", lease_owner=None, lease_expires=100.0).lease_free(0.0)
    assert not TargetState("gw", "ds", lease_owner="run-a", lease_expires=100.0).lease_free(99.9)
    assert TargetState("gw", "ds", lease_owner="run-a", lease_expires=100.0).lease_free(100.0)
