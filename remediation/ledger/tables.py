"""The ledger on Azure Table storage: the Functions app's storage account (``AzureWebJobsStorage``).

:class:`TableLedger` keeps exactly the invariants of :class:`remediation.ledger.SqliteLedger`
(the same contract suite runs against both). Table storage has no multi-entity transactions
across partitions, so every change is one entity: an insert (``409 Conflict`` when it exists) or a
replace conditioned on the entity's ETag (``412 Precondition Failed`` when someone wrote first).
The target rules (leases, applied, rejected, attempts) and the account rules (presentation
claims and verdicts) are implemented once in :class:`~remediation.ledger.base.EntityLedgerBase`; this
module supplies their primitives and the single-entity operations for events, outcomes,
refresh counters, the inventory and markers.

Seven tables, named ``{prefix}targets``, ``{prefix}accounts``, ``{prefix}events``,
``{prefix}outcomes``, ``{prefix}refreshes``, ``{prefix}inventory`` and ``{prefix}markers``
(created when missing). Their keys and properties, and why, are in
:mod:`remediation.ledger.tables_layout`; the service calls and what their failures mean (never a
secret in an error message; ``write_id`` to recognise an SDK retry of our own write) are in
:mod:`remediation.ledger.tables_access`.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from remediation.clients.http import timeouts_from
from remediation.clients.identity import build_azure_credential
from remediation.config.settings import Settings
from remediation.errors import ConfigError
from remediation.ledger.base import (
    _MAX_CAS_RETRIES,
    EntityLedgerBase,
    _check_positive,
    _day,
    _marker_number,
)
from remediation.ledger.records import (
    DEFAULT_OUTCOME_RETENTION_SECONDS,
    DatasetRecord,
    LedgerConflict,
    LedgerError,
    Outcome,
    PruneResult,
    TargetRecord,
    check_time,
    norm,
    normalised_record,
    utc_day,
)
from remediation.ledger.tables_access import (
    BATCH,
    DEFAULT_CLIENT_OPTIONS,
    TableAccess,
    connection_string_secrets,
)
from remediation.ledger.tables_layout import (
    MAX_OUTCOME_TIME,
    TABLE_SUFFIXES,
    account_entity,
    account_from_entity,
    account_row_key,
    count,
    dataset_entity,
    dataset_from_entity,
    event_entity,
    event_keys,
    opt_str,
    outcome_entity,
    outcome_partition,
    table_key,
    target_entity,
    target_from_entity,
)
from remediation.safety.evidence import AccountVersion

if TYPE_CHECKING:
    from remediation.ledger.protocol import Ledger

__all__ = ["DEFAULT_TABLE_PREFIX", "TableLedger"]

logger = logging.getLogger(__name__)

DEFAULT_TABLE_PREFIX: Final = "healer"
"""Prefix of the five table names (``healertargets``, ``healerevents``, ...)."""

# Table names: alphanumeric, 3-63 characters, starting with a letter; the longest suffix is 9.
_PREFIX_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9]{0,53}")


class TableLedger(EntityLedgerBase, TableAccess):
    """The ledger in Azure Table storage (or Azurite). Safe to share between threads.

    Build it with :meth:`from_settings` (the product's ``AzureWebJobsStorage`` settings),
    :meth:`from_connection_string`, or from a ready :class:`TableServiceClient`. Opening creates
    the tables when missing. Several processes and hosts may open the same tables at once:
    every write is a single-entity insert or ETag-conditioned replace.

    Raises :class:`LedgerError` (from the constructor and every method) when the service cannot
    be reached or refuses a call, and after :meth:`close`.
    """

    def __init__(
        self,
        service: TableServiceClient,
        *,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        redact: Iterable[str] = (),
    ) -> None:
        """Use ``service`` (closed by :meth:`close`); ``redact`` lists strings (keys, SAS tokens)
        that must never appear in an error message."""
        if not _PREFIX_RE.fullmatch(table_prefix):
            raise ValueError(
                "table_prefix must be 1 to 54 letters and digits, starting with a letter "
                "(Table storage table names are alphanumeric)"
            )
        self._service = service
        self._prefix = table_prefix
        self._redact = tuple(s for s in redact if len(s) >= 4)
        self._closed = False
        self._seq_lock = threading.Lock()
        self._last_seq = 0
        clients: dict[str, TableClient] = {}
        try:
            for suffix in TABLE_SUFFIXES:
                name = table_prefix + suffix
                with self._storage(f"create table {name}", check_open=False):
                    clients[suffix] = service.create_table_if_not_exists(name)
        except BaseException:
            self._closed = True
            self._close_clients(clients.values())
            raise
        self._targets = clients["targets"]
        self._events = clients["events"]
        self._outcomes = clients["outcomes"]
        self._refreshes = clients["refreshes"]
        self._accounts = clients["accounts"]
        self._inventory = clients["inventory"]
        self._markers = clients["markers"]

    @classmethod
    def from_connection_string(
        cls, connection_string: str, *, table_prefix: str = DEFAULT_TABLE_PREFIX, **client_options: Any
    ) -> TableLedger:
        """Open the ledger in the account of ``connection_string`` (account key or SAS).

        ``client_options`` go to the SDK client (``retry_total``, ``connection_timeout``...);
        defaults keep a storage outage from holding a caller for minutes.

        Raises:
            ConfigError: the connection string is malformed (its text is never quoted).
            LedgerError: the service cannot be reached or refuses to create the tables.
        """
        options = {**DEFAULT_CLIENT_OPTIONS, **client_options}
        try:
            service = TableServiceClient.from_connection_string(connection_string, **options)
        except (ValueError, TypeError, AzureError) as exc:
            raise ConfigError(
                "AzureWebJobsStorage is not a usable storage connection string "
                f"({type(exc).__name__}); give DefaultEndpointsProtocol, AccountName, AccountKey "
                "or SharedAccessSignature, and TableEndpoint or EndpointSuffix"
            ) from None
        return cls(service, table_prefix=table_prefix, redact=connection_string_secrets(connection_string))

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        credential: TokenCredential | None = None,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
    ) -> TableLedger:
        """Open the ledger of the Functions app's storage account, as ``settings.storage`` says.

        A connection string (``AzureWebJobsStorage``) wins; otherwise the identity-based
        endpoint ``AzureWebJobsStorage__tableServiceUri``, or
        ``https://{AzureWebJobsStorage__accountName}.table.core.windows.net``, signed in with
        ``credential`` (default: :func:`remediation.clients.identity.build_azure_credential`). The
        identity needs the *Storage Table Data Contributor* role on the account. Timeouts and
        retries follow ``REMEDIATION_HTTP_TIMEOUT`` and ``REMEDIATION_MAX_ATTEMPTS``.

        Raises:
            ConfigError: no storage is configured, the connection string is malformed, or the
                identity-based endpoint is not HTTPS.
            LedgerError: the service cannot be reached or refuses to create the tables.
        """
        storage = settings.storage
        if storage is None:
            raise ConfigError(
                "no storage account configured: set AzureWebJobsStorage, "
                "AzureWebJobsStorage__accountName or AzureWebJobsStorage__tableServiceUri"
            )
        connect, read = timeouts_from(settings)
        options: dict[str, Any] = {
            **DEFAULT_CLIENT_OPTIONS,
            "retry_total": max(settings.max_attempts - 1, 0),
            "connection_timeout": connect,
            "read_timeout": read,
        }
        if storage.connection_string is not None:
            return cls.from_connection_string(storage.connection_string, table_prefix=table_prefix, **options)
        endpoint = storage.table_service_uri or f"https://{storage.account_name}.table.core.windows.net"
        try:
            service = TableServiceClient(
                endpoint, credential=credential or build_azure_credential(settings), **options
            )
        except ValueError:
            raise ConfigError(
                "AzureWebJobsStorage__tableServiceUri must be an https:// URL for identity-based "
                "access (a token is never sent in clear text)"
            ) from None
        return cls(service, table_prefix=table_prefix)

    def __repr__(self) -> str:
        return f"TableLedger({self._service.url!r}, table_prefix={self._prefix!r})"

    @property
    def table_names(self) -> tuple[str, ...]:
        """The table names: targets, events, outcomes, refreshes, accounts, inventory, markers."""
        return tuple(self._prefix + suffix for suffix in TABLE_SUFFIXES)

    @staticmethod
    def _close_clients(clients: Iterable[TableClient]) -> None:
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                logger.debug("closing a table client failed", exc_info=True)

    # -- target primitives --------------------------------------------------------------------

    def _get_target(self, gateway_id: str, datasource_id: str) -> TargetRecord | None:
        entity = self._get(self._targets, table_key(gateway_id), table_key(datasource_id))
        return None if entity is None else target_from_entity(entity, gateway_id, datasource_id)

    def _insert_target(self, record: TargetRecord) -> str | None:
        return self._create(self._targets, target_entity(record))

    def _replace_target(self, record: TargetRecord, if_match: str) -> str | None:
        return self._replace(self._targets, target_entity(record), if_match)

    # -- account primitives -------------------------------------------------------------------

    def _get_account_version(self, account: str, secret: str, version: str) -> AccountVersion | None:
        entity = self._get(self._accounts, table_key(account), account_row_key(secret, version))
        return None if entity is None else account_from_entity(entity)

    def _insert_account_version(self, record: AccountVersion) -> str | None:
        return self._create(self._accounts, account_entity(record))

    def _replace_account_version(self, record: AccountVersion, if_match: str) -> str | None:
        return self._replace(self._accounts, account_entity(record), if_match)

    def _scan_account_versions(self, with_verdict_only: bool) -> list[AccountVersion]:
        """A scan of the whole accounts table (one entity per account and version ever claimed):
        there is no index on verdicts, and the base class filters and sorts."""
        with self._storage(f"query {self._accounts.table_name}"):
            entities = list(self._accounts.list_entities())
        return [account_from_entity({**e, "etag": e.metadata.get("etag")}) for e in entities]

    # -- events -------------------------------------------------------------------------------

    def mark_event_seen(self, event_id: str, now: float) -> bool:
        """See :meth:`Ledger.mark_event_seen`. One insert: a ``409 Conflict`` means a duplicate."""
        event = norm(event_id, "event_id")
        now = check_time(now, "now")
        return self._create(self._events, event_entity(event, now)) is not None

    def event_seen(self, event_id: str) -> bool:
        """See :meth:`Ledger.event_seen`. One point read."""
        return self._get(self._events, *event_keys(norm(event_id, "event_id"))) is not None

    # -- outcomes -----------------------------------------------------------------------------

    def add_outcome(self, outcome: Outcome) -> None:
        """See :meth:`Ledger.add_outcome`. Only :class:`Outcome`'s fields are stored (and keys).

        Raises ValueError for a time outside ``[0, 10**10)`` seconds (the RowKey's range).
        """
        at = check_time(outcome.time, "outcome.time")
        if not 0 <= at < MAX_OUTCOME_TIME:
            raise ValueError("outcome.time must lie between 1970 and 2286 (epoch seconds)")
        entity = outcome_entity(outcome, at, self._next_seq())
        with self._storage(f"insert into {self._outcomes.table_name}"):
            self._outcomes.create_entity(entity)

    def _next_seq(self) -> int:
        """A strictly increasing insertion stamp (nanoseconds) within this process."""
        with self._seq_lock:
            self._last_seq = max(self._last_seq + 1, time.time_ns())
            return self._last_seq

    def outcomes(self, since: float | None = None, limit: int = 500) -> list[Outcome]:
        """See :meth:`Ledger.outcomes`. One query, newest first by key order, stopped at ``limit``."""
        if since is not None:
            since = check_time(since, "since")
            if since >= MAX_OUTCOME_TIME:
                return []
        if limit <= 0:
            return []
        if since is None or since < 0:
            query, parameters = "", None
        else:
            query = "PartitionKey le @day and time ge @since"
            parameters = {"day": outcome_partition(since), "since": since}
        out: list[Outcome] = []
        with self._storage(f"query {self._outcomes.table_name}"):
            pages = (
                self._outcomes.query_entities(query, parameters=parameters, results_per_page=min(limit, 1000))
                if query
                else self._outcomes.list_entities(results_per_page=min(limit, 1000))
            )
            for entity in pages:
                try:
                    out.append(Outcome.from_dict(entity))
                except ValueError as exc:
                    raise LedgerError(f"corrupt ledger record: outcome ({exc})") from None
                if len(out) >= limit:
                    break
        return out

    # -- refresh budget -----------------------------------------------------------------------

    def refresh_posts(self, dataset_id: str, day: str) -> int:
        """See :meth:`Ledger.refresh_posts`."""
        dataset, day = norm(dataset_id, "dataset_id"), _day(day)
        entity = self._get(self._refreshes, day, table_key(dataset))
        return 0 if entity is None else count(entity, "posts")

    def record_refresh_post(self, dataset_id: str, day: str) -> int:
        """See :meth:`Ledger.record_refresh_post`. Read, then insert or ETag-conditioned replace,
        retried on a lost race: exactly one increment per call."""
        dataset, day = norm(dataset_id, "dataset_id"), _day(day)
        pk, rk = day, table_key(dataset)
        for attempt in range(_MAX_CAS_RETRIES):
            current = self._get(self._refreshes, pk, rk)
            posts = 1 if current is None else count(current, "posts") + 1
            entity = {
                "PartitionKey": pk,
                "RowKey": rk,
                "dataset_id": dataset,
                "posts": posts,
                "write_id": uuid.uuid4().hex,
            }
            if current is None:
                etag = self._create(self._refreshes, entity)
            else:
                etag = self._replace(self._refreshes, entity, str(current["etag"]))
            if etag is not None:
                return posts
            self._backoff(attempt)
        raise LedgerConflict(f"too many concurrent refresh counts for dataset {dataset} on {day}")

    # -- inventory and markers ----------------------------------------------------------------

    def inventory(self, workspace_id: str | None = None) -> list[DatasetRecord]:
        """See :meth:`Ledger.inventory`. One partition query per workspace (all: a table scan)."""
        with self._storage(f"query {self._inventory.table_name}"):
            if workspace_id is None:
                entities = list(self._inventory.list_entities())
            else:
                entities = list(
                    self._inventory.query_entities(
                        "PartitionKey eq @pk",
                        parameters={"pk": table_key(norm(workspace_id, "workspace_id"))},
                    )
                )
        return [dataset_from_entity(e) for e in entities]

    def put_inventory(self, records: Iterable[DatasetRecord]) -> None:
        """See :meth:`Ledger.put_inventory`. Per partition (workspace): read the stored entities'
        ``learnt_at`` and ETags, then write in entity-group transactions of up to 100 an insert
        where nothing is stored and a replace conditioned on the ETag read where the stored
        record is not newer (nothing where it is). A transaction voided by another writer
        (``409``: inserted first; ``412``/``404``: changed or dropped since the read) is redone
        from a new read, so an older observation never overwrites a newer one from another
        instance, whatever the interleaving."""
        by_partition: dict[str, dict[str, DatasetRecord]] = {}
        for record in map(normalised_record, records):
            by_partition.setdefault(table_key(record.workspace_id), {})[table_key(record.dataset_id)] = record
        for pk, rows in by_partition.items():
            for attempt in range(_MAX_CAS_RETRIES):
                rows = self._put_inventory_once(pk, rows)
                if not rows:
                    break
                self._backoff(attempt)
            else:
                raise LedgerConflict(f"too many concurrent inventory writes in workspace {pk}")

    def _put_inventory_once(self, pk: str, rows: dict[str, DatasetRecord]) -> dict[str, DatasetRecord]:
        """One conditional pass of :meth:`put_inventory` over one partition; the rows of the
        transactions another writer voided (to be redone)."""
        stored = {str(e["RowKey"]): e for e in self._stored_learnt(pk) if str(e["RowKey"]) in rows}
        operations: list[tuple[str, DatasetRecord, Any]] = []
        for rk, record in rows.items():
            current = stored.get(rk)
            entity = dataset_entity(record)
            if current is None:
                operations.append((rk, record, ("create", entity)))
            elif float(current.get("learnt_at") or 0.0) <= record.learnt_at:
                condition = {
                    "mode": UpdateMode.REPLACE,
                    "etag": current.metadata.get("etag"),
                    "match_condition": MatchConditions.IfNotModified,
                }
                operations.append((rk, record, ("update", entity, condition)))
        again: dict[str, DatasetRecord] = {}
        for start in range(0, len(operations), BATCH):
            batch = operations[start : start + BATCH]
            with self._storage(f"write into {self._inventory.table_name}"):
                try:
                    self._inventory.submit_transaction([op for _, _, op in batch])
                except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
                    again.update((rk, record) for rk, record, _ in batch)
                except HttpResponseError as exc:
                    if exc.status_code not in (404, 409, 412):
                        raise
                    again.update((rk, record) for rk, record, _ in batch)
        return again

    def _stored_learnt(self, pk: str) -> list[Any]:
        with self._storage(f"query {self._inventory.table_name}"):
            return list(
                self._inventory.query_entities(
                    "PartitionKey eq @pk", parameters={"pk": pk}, select=["RowKey", "learnt_at"]
                )
            )

    def drop_inventory(self, workspace_id: str, dataset_ids: Iterable[str]) -> None:
        """See :meth:`Ledger.drop_inventory`. Deletes in transactions of up to 100."""
        pk = table_key(norm(workspace_id, "workspace_id"))
        keys = sorted({table_key(norm(d, "dataset_id")) for d in dataset_ids})
        for start in range(0, len(keys), BATCH):
            batch = [{"PartitionKey": pk, "RowKey": rk} for rk in keys[start : start + BATCH]]
            with self._storage(f"delete in {self._inventory.table_name}"):
                try:
                    self._inventory.submit_transaction([("delete", e) for e in batch])
                    continue
                except HttpResponseError as exc:
                    if exc.status_code not in (400, 404):
                        raise
            for entity in batch:  # one was gone already: delete the rest one by one
                with self._storage(f"delete in {self._inventory.table_name}"):
                    self._inventory.delete_entity(entity["PartitionKey"], entity["RowKey"])

    def marker(self, name: str) -> str | None:
        """See :meth:`Ledger.marker`. One point read."""
        entity = self._get(self._markers, "marker", table_key(norm(name, "name")))
        return None if entity is None else opt_str(entity, "mark")

    def set_marker(self, name: str, value: str, now: float) -> None:
        """See :meth:`Ledger.set_marker`. One upsert."""
        key = norm(name, "name")
        entity = {
            "PartitionKey": "marker",
            "RowKey": table_key(key),
            "name": key,
            "mark": value,
            "set_at": check_time(now, "now"),
        }
        with self._storage(f"upsert into {self._markers.table_name}"):
            self._markers.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def raise_marker(self, name: str, value: float, now: float) -> float:
        """See :meth:`Ledger.raise_marker`. Read, then insert (``409``: someone was first) or
        replace conditioned on the ETag (``412``: someone wrote meanwhile), retried after a lost
        race; nothing is written when the stored number is not lower."""
        check_time(now, "now")
        value = float(check_time(value, "value"))
        key = norm(name, "name")
        pk, rk = "marker", table_key(key)
        for attempt in range(_MAX_CAS_RETRIES):
            current = self._get(self._markers, pk, rk)
            stored = -math.inf if current is None else _marker_number(opt_str(current, "mark"))
            if stored >= value:
                return stored
            entity = {
                "PartitionKey": pk,
                "RowKey": rk,
                "name": key,
                "mark": repr(value),
                "set_at": now,
                "write_id": uuid.uuid4().hex,
            }
            if current is None:
                etag = self._create(self._markers, entity)
            else:
                etag = self._replace(self._markers, entity, str(current["etag"]))
            if etag is not None:
                return value
            self._backoff(attempt)
        raise LedgerConflict(f"too many concurrent writes of marker {key}")

    # -- housekeeping -------------------------------------------------------------------------

    def prune(
        self,
        now: float,
        retention_seconds: float,
        *,
        outcome_retention_seconds: float = DEFAULT_OUTCOME_RETENTION_SECONDS,
    ) -> PruneResult:
        """See :meth:`Ledger.prune`. Queries by property (events, outcomes) or by PartitionKey
        range (outcome days, refresh days), then deletes what it found if it is unchanged."""
        now = check_time(now, "now")
        retention = _check_positive(retention_seconds, "retention_seconds")
        outcome_retention = _check_positive(outcome_retention_seconds, "outcome_retention_seconds")
        events = self._delete_all(self._events, "seen_at lt @cut", {"cut": now - retention})
        outcome_cut = now - outcome_retention
        outcomes = 0
        if outcome_cut > 0:
            if outcome_cut < MAX_OUTCOME_TIME:
                query = "PartitionKey ge @day and time lt @cut"
                params: dict[str, Any] = {"day": outcome_partition(outcome_cut), "cut": outcome_cut}
            else:
                query, params = "time lt @cut", {"cut": outcome_cut}
            outcomes = self._delete_all(self._outcomes, query, params)
        days = self._delete_all(self._refreshes, "PartitionKey lt @day", {"day": utc_day(now - 86400.0)})
        return PruneResult(events=events, outcomes=outcomes, refresh_days=days)

    def close(self) -> None:
        """See :meth:`Ledger.close`. Closes the table clients and the service client."""
        if self._closed:
            return
        self._closed = True
        self._close_clients(
            (
                self._targets,
                self._events,
                self._outcomes,
                self._refreshes,
                self._accounts,
                self._inventory,
                self._markers,
            )
        )
        try:
            self._service.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            logger.debug("closing the table service client failed", exc_info=True)


if TYPE_CHECKING:
    _tables_is_a_ledger: type[Ledger] = TableLedger
