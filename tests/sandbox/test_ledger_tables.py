"""The Table storage ledger against Azurite: the shared ledger contract, plus what is specific to
Table storage (entity layout, key encoding, outcome order across days, errors, wiring)."""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.data.tables import TableServiceClient

import remediation.ledger.tables as ledger_tables
from remediation.config.settings import Settings
from remediation.edges.runtime import open_ledger
from remediation.errors import ConfigError
from remediation.ledger import (
    AccountVersion,
    Claim,
    DatasetRecord,
    InventorySource,
    Ledger,
    LedgerError,
    Outcome,
    Rejection,
    TargetRecord,
)
from remediation.ledger.sqlite import SqliteLedger
from remediation.ledger.tables import TableLedger
from tests.ledger_contract import DS, GW, SECRET, T0, V1, LedgerContract, LedgerFactory
from tests.support.azurite import ACCOUNT_KEY, Azurite, start_azurite

pytestmark = pytest.mark.azurite

OUTCOME_FIELDS = {f.name for f in dataclasses.fields(Outcome)}
ACCOUNT_PROPERTIES = {
    *(f.name for f in dataclasses.fields(AccountVersion)),
    "secret_name",
    "secret_version",
    "write_id",
    "evidence",  # licences, contradicted_at and grants, one JSON property
} - {"secret", "version", "etag", "licences", "contradicted_at", "grants"}


@pytest.fixture(scope="module")
def shared_azurite() -> Iterator[Azurite]:
    """One Azurite for the module (starting one per test costs more than the tests); every test
    gets its own tables through a fresh table prefix."""
    server = start_azurite()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def tables(shared_azurite: Azurite, prefix: str) -> Iterator[TableLedger]:
    ledger = TableLedger.from_connection_string(shared_azurite.connection_string, table_prefix=prefix)
    try:
        yield ledger
    finally:
        ledger.close()


@pytest.fixture
def service(shared_azurite: Azurite) -> Iterator[TableServiceClient]:
    """A raw client on the same account, to look at the stored entities."""
    client = TableServiceClient.from_connection_string(shared_azurite.connection_string)
    try:
        yield client
    finally:
        client.close()


class TestTableLedgerContract(LedgerContract):
    @pytest.fixture
    def make_ledger(self, shared_azurite: Azurite, prefix: str) -> LedgerFactory:
        return functools.partial(
            TableLedger.from_connection_string, shared_azurite.connection_string, table_prefix=prefix
        )


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_table_ledger_satisfies_the_ledger_protocol(
    tables: TableLedger, service: TableServiceClient, prefix: str
) -> None:
    assert isinstance(tables, Ledger)
    suffixes = ("targets", "events", "outcomes", "refreshes", "accounts", "inventory", "markers")
    assert tables.table_names == tuple(f"{prefix}{s}" for s in suffixes)
    names = {t.name for t in service.list_tables()}
    assert set(tables.table_names) <= names


def test_account_entity_has_valid_keys_and_readable_properties(
    tables: TableLedger, service: TableServiceClient, prefix: str
) -> None:
    odd_part = "user:CONTOSO\\svc_pbi/#?\t"
    account = odd_part + "x" * (512 - len(odd_part))  # the longest account key
    claim, _ = tables.claim_presentation(
        account, SECRET, V1, locator="SQL01", target=f"{GW}/{DS}", owner="run-a", now=T0, ttl=60.0
    )
    assert claim is Claim.GRANTED
    tables.record_presentation(
        account, SECRET, V1, owner="run-a", locator="sql01", verdict="accepted", reason="", now=T0 + 1
    )
    tables.claim_presentation(
        "secret:sql-key", SECRET, V1, locator="", target="t", owner="run-a", now=T0, ttl=60.0
    )
    entities = {e["account"]: e for e in service.get_table_client(f"{prefix}accounts").list_entities()}
    odd, plain = entities[account.strip().lower()], entities["secret:sql-key"]
    for entity in (odd, plain):
        for key in (entity["PartitionKey"], entity["RowKey"]):
            assert len(key.encode("utf-8")) <= 1024
            assert not set(key) & set("/\\#?") and all(ord(c) >= 0x20 and c != "\x7f" for c in key)
    assert odd["PartitionKey"].startswith("~") and plain["PartitionKey"] == "secret:sql-key"
    assert odd["RowKey"] == plain["RowKey"] == f"{SECRET}|{V1}"
    assert (odd["secret_name"], odd["secret_version"], odd["accepted"]) == (SECRET, V1, '["sql01"]')
    assert odd["presentations"] == 1 and "probe_owner" not in odd and "verdict" not in odd
    assert plain["probe_owner"] == "run-a" and plain["probe_expires"] == T0 + 60.0
    assert set(odd) - {"PartitionKey", "RowKey"} <= ACCOUNT_PROPERTIES


def test_target_entity_is_keyed_by_gateway_and_datasource(
    tables: TableLedger, service: TableServiceClient, prefix: str
) -> None:
    lease = tables.acquire_lease(GW, DS, "owner-a", T0, 60.0)
    assert lease is not None
    tables.record_applied(lease, SECRET, V1, T0 + 1)
    entity = service.get_table_client(f"{prefix}targets").get_entity(GW.lower(), DS.lower())
    assert entity["applied_version"] == V1 and entity["applied_at"] == T0 + 1
    assert entity["lease_owner"] == "owner-a" and entity["rejections"] == "[]"


def test_ids_that_are_not_valid_keys_still_work(tables: TableLedger) -> None:
    gw, ds = "gw/with#odd?chars\\", "ds\tmore"
    lease = tables.acquire_lease(gw, ds, "owner-a", T0, 60.0)
    assert lease is not None
    tables.record_applied(lease, SECRET, V1, T0)
    state = tables.target_state(gw.upper(), ds)
    assert (state.gateway_id, state.datasource_id, state.applied_version) == (gw, ds, V1)
    assert tables.target_state("gw", ds).applied_version is None  # a different key
    assert tables.mark_event_seen("/subscriptions/x/events#1?", T0) is True
    assert tables.mark_event_seen("/SUBSCRIPTIONS/x/events#1?", T0) is False


def test_rejections_beyond_one_property_are_split_and_read_back(tables: TableLedger) -> None:
    rejections = tuple(Rejection(SECRET, f"{i:032x}", T0 + i) for i in range(700))  # ~70 KB of JSON
    record = TargetRecord(gateway_id="gw-big", datasource_id="ds", rejections=rejections)
    assert len(record.rejections_json()) > 2 * 30_000
    assert tables._insert_target(record) is not None
    state = tables.target_state("gw-big", "ds")
    assert state.rejections == rejections


def test_a_retried_write_that_landed_is_recognised_as_ours(tables: TableLedger) -> None:
    # An SDK retry of an insert whose response was lost meets 409: its write_id tells it apart.
    entity = {"PartitionKey": "p", "RowKey": "r", "posts": 1, "write_id": "mine"}
    assert tables._create(tables._refreshes, dict(entity)) is not None
    assert tables._create(tables._refreshes, dict(entity)) is not None
    assert tables._create(tables._refreshes, {**entity, "write_id": "theirs"}) is None


def test_outcomes_are_newest_first_across_a_utc_day_boundary(
    tables: TableLedger, service: TableServiceClient, prefix: str
) -> None:
    times = {
        "day1-morning": _at("2025-06-15T08:00:00"),
        "day1-late": _at("2025-06-15T23:59:59.250"),
        "day2-early": _at("2025-06-16T00:00:00.500"),
        "day2-noon": _at("2025-06-16T12:00:00"),
        "day3": _at("2025-06-17T00:00:00"),
    }
    for action in ("day2-early", "day1-morning", "day3", "day1-late", "day2-noon"):
        tables.add_outcome(Outcome(time=times[action], action=action))

    newest_first = ["day3", "day2-noon", "day2-early", "day1-late", "day1-morning"]
    assert [o.action for o in tables.outcomes()] == newest_first
    assert [o.action for o in tables.outcomes(limit=3)] == newest_first[:3]
    assert [o.action for o in tables.outcomes(since=times["day1-late"])] == newest_first[:4]
    assert [o.action for o in tables.outcomes(since=times["day2-early"], limit=2)] == newest_first[:2]
    assert tables.outcomes(since=times["day3"] + 0.001) == []

    stored = list(service.get_table_client(f"{prefix}outcomes").list_entities())
    assert [e["action"] for e in stored] == newest_first  # the key order itself is newest first
    assert {e["PartitionKey"][-8:] for e in stored} == {"20250615", "20250616", "20250617"}
    for entity in stored:  # nothing but Outcome's fields (and the keys) is stored
        assert set(entity) - {"PartitionKey", "RowKey"} <= OUTCOME_FIELDS


def test_prune_removes_outcomes_across_days(tables: TableLedger) -> None:
    for day in range(5):
        tables.add_outcome(Outcome(time=T0 + day * 86400, action=f"day{day}"))
    result = tables.prune(T0 + 4 * 86400, 86400, outcome_retention_seconds=2 * 86400)
    assert result.outcomes == 2  # day0 and day1; day2 is exactly at the cut, so kept
    assert [o.action for o in tables.outcomes()] == ["day4", "day3", "day2"]


def test_storage_down_raises_ledger_error_without_the_account_key(azurite: Azurite, prefix: str) -> None:
    ledger = TableLedger.from_connection_string(azurite.connection_string, table_prefix=prefix, retry_total=1)
    try:
        azurite.stop()
        for call in (
            lambda: ledger.target_state(GW, DS),
            lambda: ledger.acquire_lease(GW, DS, "owner-a", T0, 60.0),
            lambda: ledger.mark_event_seen("event-1", T0),
            lambda: ledger.outcomes(),
            lambda: ledger.record_refresh_post("dataset-1", "2025-06-15"),
        ):
            with pytest.raises(LedgerError) as info:
                call()
            message = str(info.value)
            assert "\n" not in message and ACCOUNT_KEY not in message and ACCOUNT_KEY[:20] not in message
            assert info.value.__cause__ is None and "table storage" in message
    finally:
        ledger.close()
    with pytest.raises(LedgerError) as info:
        TableLedger.from_connection_string(azurite.connection_string, table_prefix=prefix, retry_total=0)
    assert ACCOUNT_KEY not in str(info.value)


def test_malformed_connection_string_is_a_config_error_that_does_not_quote_it() -> None:
    with pytest.raises(ConfigError) as info:
        TableLedger.from_connection_string("AccountKey=c2VjcmV0LWtleS12YWx1ZQ==;nonsense")
    assert "c2VjcmV0" not in str(info.value)


def test_closed_ledger_refuses_calls_and_close_is_idempotent(tables: TableLedger) -> None:
    tables.close()
    tables.close()
    with pytest.raises(LedgerError, match="closed"):
        tables.target_state(GW, DS)
    with pytest.raises(LedgerError, match="closed"):
        tables.mark_event_seen("e", T0)


def test_bad_table_prefix_is_refused(service: TableServiceClient) -> None:
    for bad in ("", "1abc", "has-dash", "x" * 55):
        with pytest.raises(ValueError, match="table_prefix"):
            TableLedger(service, table_prefix=bad)


def test_open_ledger_uses_table_storage_when_azure_web_jobs_storage_is_set(
    shared_azurite: Azurite, tmp_path: Path
) -> None:
    state = tmp_path / "ledger.db"
    settings = Settings.from_env(
        {"AzureWebJobsStorage": shared_azurite.connection_string, "REMEDIATION_STATE_PATH": str(state)}
    )
    ledger = open_ledger(settings)
    try:
        assert isinstance(ledger, TableLedger)
        assert ledger.mark_event_seen("wired", T0) is True
    finally:
        ledger.close()
    assert not state.exists()

    embedded = open_ledger(Settings.from_env({"REMEDIATION_STATE_PATH": str(state)}))
    try:
        assert isinstance(embedded, SqliteLedger)
    finally:
        embedded.close()


class _RecordingCredential:
    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("not-a-real-token", 2_000_000_000)


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({"AzureWebJobsStorage__accountName": "healerstore"}, "https://healerstore.table.core.windows.net"),
        (
            {"AzureWebJobsStorage__tableServiceUri": "https://tables.example.net/"},
            "https://tables.example.net",
        ),
    ],
)
def test_identity_based_settings_pick_the_endpoint_and_the_credential(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], endpoint: str
) -> None:
    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake_client(url: str, *, credential: object, **options: object) -> TableServiceClient:
        seen.update(url=url, credential=credential, **options)
        raise Stop

    monkeypatch.setattr(ledger_tables, "TableServiceClient", fake_client)
    credential = _RecordingCredential()
    with pytest.raises(Stop):
        TableLedger.from_settings(Settings.from_env(env), credential=credential)
    assert seen["url"] == endpoint and seen["credential"] is credential
    assert seen["retry_total"] == 2 and seen["read_timeout"] == 30.0


def test_identity_sign_in_asks_for_a_storage_token(prefix: str) -> None:
    # Azurite takes OAuth over HTTPS only; a closed loopback HTTPS port still shows the credential
    # being asked for a storage token before the request, and the failure mapped to LedgerError.
    settings = Settings.from_env(
        {"AzureWebJobsStorage__tableServiceUri": "https://127.0.0.1:9/acct", "REMEDIATION_MAX_ATTEMPTS": "1"}
    )
    credential = _RecordingCredential()
    with pytest.raises(LedgerError) as info:
        TableLedger.from_settings(settings, credential=credential, table_prefix=prefix)
    assert credential.scopes == [("https://storage.azure.com/.default",)]
    assert "not-a-real-token" not in str(info.value)


def test_identity_over_plain_http_is_refused() -> None:
    settings = Settings.from_env({"AzureWebJobsStorage__tableServiceUri": "http://127.0.0.1:9/acct"})
    with pytest.raises(ConfigError, match="https"):
        TableLedger.from_settings(settings, credential=_RecordingCredential())


def _inventory_record(dataset: str, learnt_at: float, fingerprint: str) -> DatasetRecord:
    return DatasetRecord("ws", dataset, fingerprint, learnt_at, (InventorySource(GW, DS, "Sql"),))


@pytest.mark.parametrize("stored_first", [True, False], ids=["replace-412", "insert-409"])
def test_an_older_observation_never_overwrites_a_newer_one_written_between_read_and_write(
    tables: TableLedger,
    shared_azurite: Azurite,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    stored_first: bool,
) -> None:
    """Another instance writes a newer record of the dataset after this one read the stored
    ``learnt_at`` and before it wrote: the conditional write fails (412 on a replace, 409 on an
    insert), is redone from a new read, and the newer record stays."""
    other = TableLedger.from_connection_string(shared_azurite.connection_string, table_prefix=prefix)
    if stored_first:
        tables.put_inventory([_inventory_record("ds", T0, "first")])
    read = tables._stored_learnt
    reads: list[int] = []

    def read_then_let_the_other_write(pk: str) -> list[Any]:
        stored = read(pk)
        reads.append(len(stored))
        if len(reads) == 1:
            other.put_inventory([_inventory_record("ds", T0 + 20, "newer")])
        return stored

    monkeypatch.setattr(tables, "_stored_learnt", read_then_let_the_other_write)
    try:
        tables.put_inventory([_inventory_record("ds", T0 + 10, "older")])
        (record,) = other.inventory("ws")
        assert (record.fingerprint, record.learnt_at) == ("newer", T0 + 20)
        assert reads == [int(stored_first), 1]  # read, voided, read again, nothing to write
    finally:
        other.close()


def test_a_shorter_pause_written_after_a_longer_one_read_it_as_absent_never_shortens_it(
    tables: TableLedger, shared_azurite: Azurite, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = TableLedger.from_connection_string(shared_azurite.connection_string, table_prefix=prefix)
    get = tables._get
    interleaved: list[int] = []

    def read_then_let_the_other_write(table: Any, pk: str, rk: str) -> dict[str, Any] | None:
        entity = get(table, pk, rk)
        if table is tables._markers and not interleaved:
            interleaved.append(1)
            assert other.raise_marker("throttle:powerbi", T0 + 120, T0) == T0 + 120
        return entity

    monkeypatch.setattr(tables, "_get", read_then_let_the_other_write)
    try:
        assert tables.raise_marker("throttle:powerbi", T0 + 30, T0) == T0 + 120
        assert other.marker("throttle:powerbi") == repr(T0 + 120) and interleaved == [1]
    finally:
        other.close()
