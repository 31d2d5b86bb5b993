"""The ledger on Azure Table storage: the Functions app's storage account (``AzureWebJobsStorage``).

:class:`TableLedger` keeps exactly the invariants of :class:`remediation.ledger.SqliteLedger`
(the same contract suite runs against both). Table storage has no multi-entity transactions
across partitions, so every change is one entity: an insert (``409 Conflict`` when it exists) or a
replace conditioned on the entity's ETag (``412 Precondition Failed`` when someone wrote first).
The target rules (leases, applied, rejected, attempts) and the account rules (presentation
claims and verdicts) are implemented once in :class:`~remediation.ledger.base.EntityLedgerBase`; this
module supplies their primitives and the single-entity operations for events, outcomes and
refresh counters.

Seven tables, named ``{prefix}targets``, ``{prefix}accounts``, ``{prefix}events``,
``{prefix}outcomes``, ``{prefix}refreshes``, ``{prefix}inventory`` and ``{prefix}markers``
(created when missing):

==========  ==============================  ===================================================
table       PartitionKey / RowKey           properties
==========  ==============================  ===================================================
targets     gateway id / datasource id      gateway_id, datasource_id, applied_secret,
            (see *keys* below)              applied_version, applied_at, rejections (JSON),
                                            attempts (JSON), lease_owner, lease_id,
                                            lease_expires, write_id; the ETag is the version
accounts    account / secret ``|`` version  account, secret_name, secret_version, verdict,
            (see *keys* below)              reason, verdict_at, accepted (JSON), probe_owner,
                                            probe_locator, probe_target, probe_expires,
                                            presentations, overrides, evidence (JSON), write_id; ETag
events      sha256(id)[:2] / sha256(id)     event_id, seen_at, write_id (insert only: a
                                            ``409`` means "seen before")
outcomes    inverted day ``-`` ``YYYYMMDD``  the fields of :class:`Outcome` that are not None,
            / inverted µs ``-`` sequence    and nothing else
refreshes   ``YYYY-MM-DD`` / dataset id     dataset_id, posts, write_id (conditional replace)
inventory   workspace id / dataset id       workspace_id, dataset_id, fingerprint, learnt_at,
                                            sources (JSON, chunked), refreshable; inserts and
                                            ETag-conditioned replaces in transactions of 100
                                            per partition (an older ``learnt_at`` never wins)
markers     ``marker`` / name               name, mark, set_at (upsert: last writer wins;
                                            :meth:`raise_marker`: conditional, only extends)
==========  ==============================  ===================================================

Why this layout:

* **Targets** are one partition per gateway, so the targets of one gateway sit together and
  every lease grant or record is one conditional replace of one entity (point reads and writes
  only). Absent values are absent properties (Table storage has no null). Lists are JSON strings;
  a string property holds at most 64 KiB, so a JSON list longer than :data:`_CHUNK` characters
  continues in ``rejections_1``, ``rejections_2``... (attempts are capped at 64 by the base class;
  rejections only grow, slowly).
* **Keys**: PartitionKey and RowKey may not contain ``/ \\ # ?`` or control characters. Ids that
  are plain (lower-case letters, digits and ``. _ : @ = + -``, like Power BI's GUIDs) are used as
  they are, so the table reads naturally; any other id becomes ``~`` + its SHA-256 hex (a plain
  id never starts with ``~``, so the two cannot collide). The ids themselves are always kept as
  properties.
* **Accounts** are one partition per account (the healer's account key, opaque text such as
  ``user:contoso\\svc_pbi``, so usually hashed as above), with one entity per secret version:
  RowKey ``{secret}|{version}``, each part encoded as above (``|`` occurs in neither). Every
  claim or verdict is one conditional replace of that entity. ``accepted`` is chunked like
  ``rejections``.
* **Events** are keyed by the SHA-256 of the normalised id (any Event Grid id is a valid key that
  way), spread over 256 partitions by its first two hex digits. Dedupe is an insert: atomic by
  construction.
* **Outcomes** must come back newest first, and the ledger has no clock of its own (callers pass
  times in), so a query cannot start from "today". Table storage returns entities ordered by
  PartitionKey, then RowKey, across partitions; so the PartitionKey is the *inverted* UTC day
  (``99999999 - YYYYMMDD``, followed by the readable day) and the RowKey the inverted time in
  microseconds, followed by an inverted per-process insertion sequence (same time: later first)
  and a random suffix (unique across processes). One query with ``PartitionKey le`` the day of
  ``since`` and ``time ge since`` then reads newest first, one partition per day, and stops at
  ``limit``. Outcome times must lie in ``[0, 10**10)`` seconds (until the year 2286).
* **Refresh counters** are one partition per UTC day, so pruning old days is a range query on
  the PartitionKey. Incrementing is read, then insert (absent) or conditional replace, retried
  on a lost race: exactly one increment per call.
* **write_id**: every insert or conditional replace of a target, event or counter carries a
  fresh random id. When the SDK retries a write whose first try landed but whose response was
  lost, the retry fails with 409/412; reading the entity back and finding our own ``write_id``
  tells "my write landed" from "someone else wrote first" (otherwise an event would be lost as
  a "duplicate", or a refresh counted twice).

Errors: every service failure (connection, authentication, 5xx after the SDK's own retries)
raises :class:`LedgerError` with a one-line message that never carries the connection string,
its account key or a SAS signature (the original exception is not chained, because transport
errors quote request URLs, which may hold a SAS token).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from time import sleep
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
from remediation.clients.storage_errors import describe_storage_error
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
from remediation.safety.evidence import (
    AccountVersion,
    Intent,
)

if TYPE_CHECKING:
    from remediation.ledger.protocol import Ledger

__all__ = ["DEFAULT_TABLE_PREFIX", "TableLedger"]

logger = logging.getLogger(__name__)

DEFAULT_TABLE_PREFIX: Final = "healer"
"""Prefix of the five table names (``healertargets``, ``healerevents``, ...)."""

_TABLE_SUFFIXES: Final = ("targets", "events", "outcomes", "refreshes", "accounts", "inventory", "markers")
# Table names: alphanumeric, 3-63 characters, starting with a letter; the longest suffix is 9.
_PREFIX_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9]{0,53}")
_PLAIN_KEY_RE: Final = re.compile(r"[a-z0-9][a-z0-9._:@=+-]{0,254}")
_CHUNK: Final = 30_000
"""Characters per string property: 64 KiB of UTF-16, with room to spare."""
_MAX_CHUNKS: Final = 30
_MAX_OUTCOME_TIME: Final = 10**10
_INVERT_DAY: Final = 99_999_999
_INVERT_US: Final = 10**16
_INVERT_SEQ: Final = 10**20
_BATCH: Final = 100
"""Most operations in one entity-group transaction (all in one partition)."""
_MAX_EVENT_ID_KEPT: Final = 1024

# Defaults for clients built here (the SDK's own default is 10 retries with 2-minute backoffs,
# which would hold a healer invocation for many minutes when storage is down).
_DEFAULT_CLIENT_OPTIONS: Final[Mapping[str, Any]] = {
    "retry_total": 3,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 8,
    "connection_timeout": 10,
    "read_timeout": 30,
}


class TableLedger(EntityLedgerBase):
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
            for suffix in _TABLE_SUFFIXES:
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
        options = {**_DEFAULT_CLIENT_OPTIONS, **client_options}
        try:
            service = TableServiceClient.from_connection_string(connection_string, **options)
        except (ValueError, TypeError, AzureError) as exc:
            raise ConfigError(
                "AzureWebJobsStorage is not a usable storage connection string "
                f"({type(exc).__name__}); give DefaultEndpointsProtocol, AccountName, AccountKey "
                "or SharedAccessSignature, and TableEndpoint or EndpointSuffix"
            ) from None
        return cls(service, table_prefix=table_prefix, redact=_connection_string_secrets(connection_string))

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
            **_DEFAULT_CLIENT_OPTIONS,
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
        return tuple(self._prefix + suffix for suffix in _TABLE_SUFFIXES)

    # -- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _storage(self, what: str, *, check_open: bool = True) -> Iterator[None]:
        """Turn the SDK's errors into :class:`LedgerError` with a clean one-line message."""
        if check_open and self._closed:
            raise LedgerError("ledger is closed")
        try:
            yield
        except AzureError as exc:
            raise LedgerError(f"table storage: {what} failed: {self._describe(exc)}") from None

    def _describe(self, exc: AzureError) -> str:
        return describe_storage_error(exc, self._redact)

    @staticmethod
    def _close_clients(clients: Iterable[TableClient]) -> None:
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                logger.debug("closing a table client failed", exc_info=True)

    def _get(self, table: TableClient, pk: str, rk: str) -> dict[str, Any] | None:
        """The entity (with ``"etag"`` added from its metadata), or None if absent."""
        with self._storage(f"read {table.table_name}"):
            try:
                entity = table.get_entity(pk, rk)
            except ResourceNotFoundError:
                return None
        return {**entity, "etag": entity.metadata.get("etag")}

    def _create(self, table: TableClient, entity: dict[str, Any]) -> str | None:
        """Insert ``entity``; its ETag, or None if an entity with its keys exists (not ours)."""
        with self._storage(f"insert into {table.table_name}"):
            try:
                return str(table.create_entity(entity)["etag"])
            except ResourceExistsError:
                pass
        return self._ours(table, entity)

    def _replace(self, table: TableClient, entity: dict[str, Any], if_match: str) -> str | None:
        """Replace the entity if its ETag is ``if_match``; the new ETag, or None if it changed."""
        with self._storage(f"update {table.table_name}"):
            try:
                metadata = table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=if_match,
                    match_condition=MatchConditions.IfNotModified,
                )
                return str(metadata["etag"])
            except (ResourceModifiedError, ResourceNotFoundError):
                pass
            except HttpResponseError as exc:
                if exc.status_code != 412:
                    raise
        return self._ours(table, entity)

    def _ours(self, table: TableClient, entity: Mapping[str, Any]) -> str | None:
        """After a 409/412: the entity's ETag if the stored entity is our own write (an SDK retry
        of a write that had landed), else None."""
        write_id = entity.get("write_id")
        if write_id is None:
            return None
        stored = self._get(table, entity["PartitionKey"], entity["RowKey"])
        if stored is not None and stored.get("write_id") == write_id:
            return str(stored["etag"])
        return None

    def _delete_all(self, table: TableClient, query: str, parameters: dict[str, Any]) -> int:
        """Delete every entity matching ``query`` (each only if unchanged since read); the count.

        Deletes go in entity-group transactions of up to 100 per partition; a transaction that
        fails (an entity changed or vanished meanwhile) is redone one entity at a time.
        """
        with self._storage(f"query {table.table_name}"):
            found = list(
                table.query_entities(query, parameters=parameters, select=["PartitionKey", "RowKey"])
            )
        by_partition: dict[str, list[Any]] = {}
        for entity in found:
            by_partition.setdefault(str(entity["PartitionKey"]), []).append(entity)
        deleted = 0
        for entities in by_partition.values():
            for start in range(0, len(entities), _BATCH):
                deleted += self._delete_batch(table, entities[start : start + _BATCH])
        return deleted

    def _delete_batch(self, table: TableClient, entities: list[Any]) -> int:
        conditions = [
            {"etag": e.metadata.get("etag"), "match_condition": MatchConditions.IfNotModified}
            for e in entities
        ]
        with self._storage(f"delete in {table.table_name}"):
            try:
                table.submit_transaction(
                    [("delete", e, c) for e, c in zip(entities, conditions, strict=True)]
                )
                return len(entities)
            except HttpResponseError as exc:
                if exc.status_code not in (400, 404, 412):
                    raise
        deleted = 0
        for entity, condition in zip(entities, conditions, strict=True):
            with self._storage(f"delete in {table.table_name}"):
                try:
                    table.delete_entity(entity, **condition)
                    deleted += 1
                except (ResourceModifiedError, ResourceNotFoundError):
                    pass
                except HttpResponseError as exc:
                    if exc.status_code != 412:
                        raise
        return deleted

    @staticmethod
    def _backoff(attempt: int) -> None:
        sleep(random.random() * min(0.05, 0.0005 * 2 ** min(attempt, 7)))

    # -- target primitives --------------------------------------------------------------------

    def _get_target(self, gateway_id: str, datasource_id: str) -> TargetRecord | None:
        entity = self._get(self._targets, _key(gateway_id), _key(datasource_id))
        if entity is None:
            return None
        return TargetRecord(
            gateway_id=_opt_str(entity, "gateway_id") or gateway_id,
            datasource_id=_opt_str(entity, "datasource_id") or datasource_id,
            applied_secret=_opt_str(entity, "applied_secret"),
            applied_version=_opt_str(entity, "applied_version"),
            applied_at=_opt_float(entity, "applied_at"),
            rejections=TargetRecord.parse_rejections(_read_chunked(entity, "rejections")),
            attempts=TargetRecord.parse_attempts(_read_chunked(entity, "attempts")),
            lease_owner=_opt_str(entity, "lease_owner"),
            lease_id=_opt_str(entity, "lease_id"),
            lease_expires=_opt_float(entity, "lease_expires"),
            etag=str(entity["etag"]),
            intent=Intent.parse(_opt_str(entity, "intent")),
        )

    def _insert_target(self, record: TargetRecord) -> str | None:
        return self._create(self._targets, _target_entity(record))

    def _replace_target(self, record: TargetRecord, if_match: str) -> str | None:
        return self._replace(self._targets, _target_entity(record), if_match)

    # -- account primitives -------------------------------------------------------------------

    def _get_account_version(self, account: str, secret: str, version: str) -> AccountVersion | None:
        entity = self._get(self._accounts, _key(account), _account_row_key(secret, version))
        return None if entity is None else _account_from_entity(entity)

    def _insert_account_version(self, record: AccountVersion) -> str | None:
        return self._create(self._accounts, _account_entity(record))

    def _replace_account_version(self, record: AccountVersion, if_match: str) -> str | None:
        return self._replace(self._accounts, _account_entity(record), if_match)

    def _scan_account_versions(self, with_verdict_only: bool) -> list[AccountVersion]:
        """A scan of the whole accounts table (one entity per account and version ever claimed):
        there is no index on verdicts, and the base class filters and sorts."""
        with self._storage(f"query {self._accounts.table_name}"):
            entities = list(self._accounts.list_entities())
        return [_account_from_entity({**e, "etag": e.metadata.get("etag")}) for e in entities]

    # -- events -------------------------------------------------------------------------------

    def mark_event_seen(self, event_id: str, now: float) -> bool:
        """See :meth:`Ledger.mark_event_seen`. One insert: a ``409 Conflict`` means a duplicate."""
        event = norm(event_id, "event_id")
        now = check_time(now, "now")
        digest = hashlib.sha256(event.encode("utf-8")).hexdigest()
        entity = {
            "PartitionKey": digest[:2],
            "RowKey": digest,
            "event_id": event[:_MAX_EVENT_ID_KEPT],
            "seen_at": now,
            "write_id": uuid.uuid4().hex,
        }
        return self._create(self._events, entity) is not None

    def event_seen(self, event_id: str) -> bool:
        """See :meth:`Ledger.event_seen`. One point read."""
        digest = hashlib.sha256(norm(event_id, "event_id").encode("utf-8")).hexdigest()
        return self._get(self._events, digest[:2], digest) is not None

    # -- outcomes -----------------------------------------------------------------------------

    def add_outcome(self, outcome: Outcome) -> None:
        """See :meth:`Ledger.add_outcome`. Only :class:`Outcome`'s fields are stored (and keys).

        Raises ValueError for a time outside ``[0, 10**10)`` seconds (the RowKey's range).
        """
        at = check_time(outcome.time, "outcome.time")
        if not 0 <= at < _MAX_OUTCOME_TIME:
            raise ValueError("outcome.time must lie between 1970 and 2286 (epoch seconds)")
        entity: dict[str, Any] = {
            "PartitionKey": _outcome_partition(at),
            "RowKey": f"{_INVERT_US - int(at * 1_000_000):016d}-{_INVERT_SEQ - self._next_seq():020d}-"
            f"{uuid.uuid4().hex[:8]}",
        }
        for name, value in outcome.to_dict().items():
            if value is None:
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # time, duration: always Edm.Double, never Int32/Int64
            entity[name] = value
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
            if since >= _MAX_OUTCOME_TIME:
                return []
        if limit <= 0:
            return []
        if since is None or since < 0:
            query, parameters = "", None
        else:
            query = "PartitionKey le @day and time ge @since"
            parameters = {"day": _outcome_partition(since), "since": since}
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
        entity = self._get(self._refreshes, day, _key(dataset))
        return 0 if entity is None else _count(entity, "posts")

    def record_refresh_post(self, dataset_id: str, day: str) -> int:
        """See :meth:`Ledger.record_refresh_post`. Read, then insert or ETag-conditioned replace,
        retried on a lost race: exactly one increment per call."""
        dataset, day = norm(dataset_id, "dataset_id"), _day(day)
        pk, rk = day, _key(dataset)
        for attempt in range(_MAX_CAS_RETRIES):
            current = self._get(self._refreshes, pk, rk)
            posts = 1 if current is None else _count(current, "posts") + 1
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
                        "PartitionKey eq @pk", parameters={"pk": _key(norm(workspace_id, "workspace_id"))}
                    )
                )
        return [_record_from_entity(e) for e in entities]

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
            by_partition.setdefault(_key(record.workspace_id), {})[_key(record.dataset_id)] = record
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
            entity = _record_entity(record)
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
        for start in range(0, len(operations), _BATCH):
            batch = operations[start : start + _BATCH]
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
        pk = _key(norm(workspace_id, "workspace_id"))
        keys = sorted({_key(norm(d, "dataset_id")) for d in dataset_ids})
        for start in range(0, len(keys), _BATCH):
            batch = [{"PartitionKey": pk, "RowKey": rk} for rk in keys[start : start + _BATCH]]
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
        entity = self._get(self._markers, "marker", _key(norm(name, "name")))
        return None if entity is None else _opt_str(entity, "mark")

    def set_marker(self, name: str, value: str, now: float) -> None:
        """See :meth:`Ledger.set_marker`. One upsert."""
        key = norm(name, "name")
        entity = {
            "PartitionKey": "marker",
            "RowKey": _key(key),
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
        pk, rk = "marker", _key(key)
        for attempt in range(_MAX_CAS_RETRIES):
            current = self._get(self._markers, pk, rk)
            stored = -math.inf if current is None else _marker_number(_opt_str(current, "mark"))
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
            if outcome_cut < _MAX_OUTCOME_TIME:
                query = "PartitionKey ge @day and time lt @cut"
                params: dict[str, Any] = {"day": _outcome_partition(outcome_cut), "cut": outcome_cut}
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


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _key(value: str) -> str:
    """``value`` as a PartitionKey/RowKey: itself when plain, else ``~`` + its SHA-256 hex."""
    if _PLAIN_KEY_RE.fullmatch(value):
        return value
    return "~" + hashlib.sha256(value.encode("utf-8")).hexdigest()


def _outcome_partition(at: float) -> str:
    """``{99999999 - YYYYMMDD}-{YYYYMMDD}``: newer days sort first."""
    day = int(datetime.fromtimestamp(at, tz=UTC).strftime("%Y%m%d"))
    return f"{_INVERT_DAY - day:08d}-{day:08d}"


def _account_row_key(secret: str, version: str) -> str:
    """``{secret}|{version}``, each encoded by :func:`_key` (which never yields ``|``)."""
    return f"{_key(secret)}|{_key(version)}"


def _account_entity(record: AccountVersion) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": _key(record.account),
        "RowKey": _account_row_key(record.secret, record.version),
        "account": record.account,
        "secret_name": record.secret,
        "secret_version": record.version,
        "presentations": record.presentations,
        "overrides": record.overrides,
        "write_id": uuid.uuid4().hex,
    }
    optional: dict[str, object] = {
        "verdict": record.verdict,
        "reason": record.reason,
        "verdict_at": None if record.verdict_at is None else float(record.verdict_at),
        "probe_owner": record.probe_owner,
        "probe_locator": record.probe_locator,
        "probe_target": record.probe_target,
        "probe_expires": None if record.probe_expires is None else float(record.probe_expires),
    }
    entity.update({name: value for name, value in optional.items() if value is not None})
    _write_chunked(entity, "accepted", record.accepted_json())
    _write_chunked(entity, "evidence", record.evidence_json())
    return entity


def _account_from_entity(entity: Mapping[str, Any]) -> AccountVersion:
    account, secret, version = (
        _opt_str(entity, "account"),
        _opt_str(entity, "secret_name"),
        _opt_str(entity, "secret_version"),
    )
    if account is None or secret is None or version is None:
        raise LedgerError("corrupt ledger record: account version")
    licences, contradicted_at, grants = AccountVersion.parse_evidence(_read_chunked(entity, "evidence"))
    return AccountVersion(
        account=account,
        secret=secret,
        version=version,
        verdict=_opt_str(entity, "verdict"),
        reason=_opt_str(entity, "reason"),
        verdict_at=_opt_float(entity, "verdict_at"),
        accepted=AccountVersion.parse_accepted(_read_chunked(entity, "accepted")),
        probe_owner=_opt_str(entity, "probe_owner"),
        probe_locator=_opt_str(entity, "probe_locator"),
        probe_target=_opt_str(entity, "probe_target"),
        probe_expires=_opt_float(entity, "probe_expires"),
        presentations=_count(entity, "presentations"),
        overrides=_count(entity, "overrides"),
        etag=str(entity["etag"]),
        licences=licences,
        contradicted_at=contradicted_at,
        grants=grants,
    )


def _record_entity(record: DatasetRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": _key(record.workspace_id),
        "RowKey": _key(record.dataset_id),
        "workspace_id": record.workspace_id,
        "dataset_id": record.dataset_id,
        "fingerprint": record.fingerprint,
        "learnt_at": float(record.learnt_at),
        "refreshable": record.refreshable,
    }
    _write_chunked(entity, "sources", record.sources_json())
    return entity


def _record_from_entity(entity: Mapping[str, Any]) -> DatasetRecord:
    workspace, dataset = _opt_str(entity, "workspace_id"), _opt_str(entity, "dataset_id")
    if workspace is None or dataset is None:
        raise LedgerError("corrupt ledger record: inventory")
    refreshable = entity.get("refreshable", True)
    return DatasetRecord(
        workspace_id=workspace,
        dataset_id=dataset,
        fingerprint=_opt_str(entity, "fingerprint") or "",
        learnt_at=_opt_float(entity, "learnt_at") or 0.0,
        sources=DatasetRecord.parse_sources(_read_chunked(entity, "sources")),
        refreshable=bool(refreshable),
    )


def _target_entity(record: TargetRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": _key(record.gateway_id),
        "RowKey": _key(record.datasource_id),
        "gateway_id": record.gateway_id,
        "datasource_id": record.datasource_id,
        "write_id": uuid.uuid4().hex,
    }
    optional: dict[str, object] = {
        "applied_secret": record.applied_secret,
        "applied_version": record.applied_version,
        "applied_at": None if record.applied_at is None else float(record.applied_at),
        "lease_owner": record.lease_owner,
        "lease_id": record.lease_id,
        "lease_expires": None if record.lease_expires is None else float(record.lease_expires),
        "intent": None if record.intent is None else record.intent.to_json(),
    }
    entity.update({name: value for name, value in optional.items() if value is not None})
    _write_chunked(entity, "rejections", record.rejections_json())
    _write_chunked(entity, "attempts", record.attempts_json())
    return entity


def _write_chunked(entity: dict[str, Any], name: str, text: str) -> None:
    chunks = [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [""]
    if len(chunks) > _MAX_CHUNKS:
        raise LedgerError(f"ledger record too large: {name} ({len(text)} characters)")
    entity[name] = chunks[0]
    for i, chunk in enumerate(chunks[1:], start=1):
        entity[f"{name}_{i}"] = chunk


def _read_chunked(entity: Mapping[str, Any], name: str) -> str | None:
    first = _opt_str(entity, name)
    if first is None:
        return None
    parts = [first]
    for i in itertools.count(1):
        part = _opt_str(entity, f"{name}_{i}")
        if part is None:
            break
        parts.append(part)
    return "".join(parts)


def _opt_str(entity: Mapping[str, Any], name: str) -> str | None:
    value = entity.get(name)
    if value is not None and not isinstance(value, str):
        raise LedgerError(f"corrupt ledger record: {name}")
    return value


def _opt_float(entity: Mapping[str, Any], name: str) -> float | None:
    value = entity.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LedgerError(f"corrupt ledger record: {name}")
    return float(value)


def _count(entity: Mapping[str, Any], name: str) -> int:
    value = entity.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LedgerError(f"corrupt ledger record: {name}")
    return value


def _connection_string_secrets(connection_string: str) -> list[str]:
    """The values of a connection string that must never be shown (key, SAS), and the whole."""
    secrets = [connection_string]
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature") and value.strip():
            secrets.append(value.strip())
    return secrets
