"""The embedded SQLite ledger: the shared ledger contract, plus what is specific to SQLite."""

from __future__ import annotations

import dataclasses
import functools
import re
import sqlite3
from pathlib import Path

import pytest

from remediation.ledger import (
    SCHEMA_VERSION,
    AccountVersion,
    Claim,
    Lease,
    Ledger,
    LedgerError,
    Outcome,
    TargetState,
)
from remediation.ledger.sqlite import SqliteLedger
from remediation.ledger.sqlite_schema import MIGRATIONS as _MIGRATIONS
from tests.ledger_contract import DS, GW, SECRET, T0, V1, LedgerContract, LedgerFactory

# Column names that could only exist to hold a secret value.
SECRET_VALUE_NAME = re.compile(r"value|password|passwd|pwd|credential|token|key|^secret$|plaintext", re.I)

EXPECTED_SCHEMA = {
    "targets": [
        "gateway_id",
        "datasource_id",
        "applied_secret",
        "applied_version",
        "applied_at",
        "rejections",
        "attempts",
        "lease_owner",
        "lease_id",
        "lease_expires",
        "etag",
        "intent",
    ],
    "seen_events": ["event_id", "seen_at"],
    "outcomes": ["id", *(f.name for f in dataclasses.fields(Outcome))],
    "refresh_posts": ["dataset_id", "day", "posts"],
    "account_versions": [
        "account",
        "secret_name",
        "secret_version",
        "verdict",
        "reason",
        "verdict_at",
        "accepted",
        "probe_owner",
        "probe_locator",
        "probe_target",
        "probe_expires",
        "presentations",
        "overrides",
        "etag",
        "evidence",
    ],
    "inventory": ["workspace_id", "dataset_id", "fingerprint", "learnt_at", "sources", "refreshable"],
    "markers": ["name", "mark", "set_at"],
}


class TestSqliteLedgerContract(LedgerContract):
    @pytest.fixture
    def make_ledger(self, tmp_path: Path) -> LedgerFactory:
        return functools.partial(SqliteLedger, tmp_path / "state" / "ledger.db")


def _columns(path: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    try:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {t: [row[1] for row in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    finally:
        conn.close()


def test_sqlite_ledger_satisfies_the_ledger_protocol(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as ledger:
        assert isinstance(ledger, Ledger)


def test_creates_parent_directories_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ledger.db"
    SqliteLedger(path).close()
    assert path.is_file()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_schema_is_exactly_the_expected_one_with_no_place_for_a_secret_value(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    SqliteLedger(path).close()
    columns = _columns(path)
    assert columns == EXPECTED_SCHEMA
    offending = [f"{t}.{c}" for t, cols in columns.items() for c in cols if SECRET_VALUE_NAME.search(c)]
    assert offending == []


def test_records_have_no_field_for_a_secret_value() -> None:
    for record in (Outcome, TargetState, Lease):
        names = [f.name for f in dataclasses.fields(record)]
        assert [n for n in names if SECRET_VALUE_NAME.search(n)] == [], record.__name__
    # AccountVersion.secret is the Key Vault secret's *name* (the healer's interface spells it so).
    names = [f.name for f in dataclasses.fields(AccountVersion)]
    assert [n for n in names if SECRET_VALUE_NAME.search(n)] == ["secret"]


def test_a_version_1_file_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)  # a ledger file as the version 1 code wrote it
    for statement in _MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO targets (gateway_id, datasource_id, applied_secret, applied_version, applied_at, etag) "
        "VALUES (?, ?, ?, ?, ?, 7)",
        (GW.lower(), DS.lower(), SECRET, V1, T0),
    )
    conn.execute("INSERT INTO seen_events (event_id, seen_at) VALUES ('evt-1', ?)", (T0,))
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    assert "account_versions" not in _columns(path)

    with SqliteLedger(path) as ledger:
        assert ledger.target_state(GW, DS).applied_version == V1
        assert ledger.target_state(GW, DS).etag == "7"
        assert ledger.mark_event_seen("evt-1", T0) is False
        claim, _ = ledger.claim_presentation(
            "user:svc", SECRET, V1, locator="host", target="gw/ds", owner="run-a", now=T0, ttl=60.0
        )
        assert claim is Claim.GRANTED
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    finally:
        conn.close()
    assert _columns(path) == EXPECTED_SCHEMA
    with SqliteLedger(path) as ledger:  # opening a migrated file changes nothing
        assert ledger.account_version("user:svc", SECRET, V1).probe_owner == "run-a"


def test_a_version_4_file_keeps_its_verdicts_and_its_old_acceptances_license_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)  # a ledger file as the version 4 code wrote it
    for step in _MIGRATIONS[:4]:
        for statement in step:
            conn.execute(statement)
    conn.execute(
        "INSERT INTO account_versions (account, secret_name, secret_version, verdict, accepted, etag) "
        "VALUES ('user:svc', ?, ?, NULL, '[\"host\"]', 3), ('user:svc', ?, ?, 'rejected', '[]', 2)",
        (SECRET, V1, SECRET, V1 + "0"),
    )
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()

    with SqliteLedger(path) as ledger:
        old = ledger.account_version("user:svc", SECRET, V1)
        assert old.accepted == ("host",) and old.licence("host", "") is None
        assert ledger.account_version("user:svc", SECRET, V1 + "0").verdict == "rejected"
        # An acceptance of unknown age proves nothing about now: the next presentation is a probe.
        claim, _ = ledger.claim_presentation(
            "user:svc", SECRET, V1, locator="host", target="gw/ds", owner="run-a", now=T0, ttl=60.0
        )
        assert claim is Claim.GRANTED
    assert _columns(path) == EXPECTED_SCHEMA


def test_a_version_3_file_gets_the_outcome_account_column_and_keeps_its_outcomes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)  # a ledger file as the version 3 code wrote it
    for step in _MIGRATIONS[:3]:
        for statement in step:
            conn.execute(statement)
    conn.execute(
        'INSERT INTO outcomes ("time", binding, secret_name, "action") VALUES (?, ?, ?, ?)',
        (T0, "sales", SECRET, "updated"),
    )
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    assert "account" not in _columns(path)["outcomes"]

    with SqliteLedger(path) as ledger:
        (old,) = ledger.outcomes()
        assert (old.binding, old.action, old.account) == ("sales", "updated", None)
        ledger.add_outcome(Outcome(time=T0 + 1, binding="sales", action="rejected", account="user:svc_pbi"))
        assert [o.account for o in ledger.outcomes()] == ["user:svc_pbi", None]
    assert _columns(path) == EXPECTED_SCHEMA
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_corrupt_account_record_raises_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SqliteLedger(path) as ledger:
        ledger.record_presentation(
            "user:svc", SECRET, V1, owner="run-a", locator="", verdict="rejected", reason="no", now=T0
        )
    for corruption in (
        "accepted = 'not json'",
        "verdict = 'perhaps'",
        "presentations = -1",
        "evidence = '[1]'",
        'evidence = \'{"licences": [["host", "soon", "req"]]}\'',
        "evidence = '{\"grants\": [1]}'",
    ):
        conn = sqlite3.connect(path)
        conn.execute(
            "UPDATE account_versions SET accepted = '[]', verdict = 'rejected', presentations = 0, "
            "evidence = '{}'"
        )
        conn.execute(f"UPDATE account_versions SET {corruption}")
        conn.commit()
        conn.close()
        with SqliteLedger(path) as ledger:
            with pytest.raises(LedgerError, match="corrupt"):
                ledger.account_version("user:svc", SECRET, V1)
            with pytest.raises(LedgerError, match="corrupt"):
                ledger.account_versions()


def test_outcome_to_dict_round_trips_and_rejects_wrong_types() -> None:
    outcome = Outcome(time=T0, action="patched", duration=0.5, gateway_id=GW)
    data = outcome.to_dict()
    assert data["time"] == T0 and data["action"] == "patched" and data["reason"] is None
    assert list(data) == [f.name for f in dataclasses.fields(Outcome)]
    assert Outcome.from_dict({**data, "future_field": 1}) == outcome
    with pytest.raises(ValueError):
        Outcome.from_dict({**data, "reason": 42})
    with pytest.raises(ValueError):
        Outcome.from_dict({**data, "time": "yesterday"})


def test_reopening_keeps_the_schema_and_data(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SqliteLedger(path) as ledger:
        lease = ledger.acquire_lease(GW, DS, "owner-a", T0, 60.0)
        assert lease is not None
        ledger.record_applied(lease, SECRET, V1, T0)
    with SqliteLedger(path) as ledger:
        assert ledger.target_state(GW, DS).applied_version == V1
    assert _columns(path) == EXPECTED_SCHEMA


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    SqliteLedger(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerError, match="newer"):
        SqliteLedger(path)


def test_in_memory_ledger_works(tmp_path: Path) -> None:
    with SqliteLedger(":memory:") as ledger:
        assert ledger.mark_event_seen("e1", T0) is True
        assert ledger.mark_event_seen("e1", T0) is False
        assert ledger.acquire_lease(GW, DS, "owner-a", T0, 60.0) is not None
    assert list(tmp_path.iterdir()) == []


def test_closed_ledger_refuses_calls_and_close_is_idempotent(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.close()
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.target_state(GW, DS)


def test_corrupt_target_record_raises_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SqliteLedger(path) as ledger:
        assert ledger.acquire_lease(GW, DS, "owner-a", T0, 60.0) is not None
    conn = sqlite3.connect(path)
    conn.execute("UPDATE targets SET rejections = 'not json'")
    conn.commit()
    conn.close()
    with SqliteLedger(path) as ledger, pytest.raises(LedgerError, match="corrupt"):
        ledger.target_state(GW, DS)


def test_unwritable_location_raises_ledger_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(LedgerError):
        SqliteLedger(blocker / "ledger.db")
