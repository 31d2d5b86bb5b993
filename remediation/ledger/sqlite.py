"""The embedded ledger backend: one SQLite file (``REMEDIATION_STATE_PATH``).

WAL mode with a busy timeout, safe for a pool of threads and for several processes at once. Every
target, account and inventory change is a one-row write (lists and sets are JSON columns), so it
keeps exactly the invariants :class:`remediation.ledger.base.EntityLedgerBase` defines, like the Table
storage backend. The schema is versioned in ``PRAGMA user_version`` and migrated on open; the
tables, their migrations and the statements that read and write a record are in
:mod:`remediation.ledger.sqlite_schema`.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from time import monotonic, sleep
from typing import TYPE_CHECKING

from remediation.ledger.base import (
    EntityLedgerBase,
    _check_positive,
    _day,
    _marker_number,
)
from remediation.ledger.protocol import Ledger
from remediation.ledger.records import (
    DEFAULT_OUTCOME_RETENTION_SECONDS,
    SCHEMA_VERSION,
    DatasetRecord,
    LedgerError,
    Outcome,
    PruneResult,
    TargetRecord,
    check_time,
    norm,
    normalised_record,
    utc_day,
)
from remediation.ledger.sqlite_schema import (
    INSERT_ACCOUNT_VERSION,
    INSERT_OUTCOME,
    INSERT_TARGET,
    MIGRATIONS,
    RAISE_MARKER,
    REPLACE_ACCOUNT_VERSION,
    REPLACE_TARGET,
    SCAN_ACCOUNT_VERSIONS,
    SELECT_ACCOUNT_VERSION,
    SELECT_INVENTORY,
    SELECT_OUTCOMES,
    SELECT_TARGET,
    UPSERT_INVENTORY,
    account_from_row,
    account_params,
    dataset_from_row,
    dataset_params,
    opt_text,
    outcome_from_row,
    target_from_row,
    target_params,
    text,
)
from remediation.safety.evidence import AccountVersion

__all__ = ["SqliteLedger"]

logger = logging.getLogger(__name__)


class SqliteLedger(EntityLedgerBase):
    """The embedded ledger: one SQLite file (or ``":memory:"``).

    One connection guarded by a lock serves all threads of a process (SQLite serialises writers
    anyway, and ledger calls are tiny next to the HTTP calls around them); WAL mode and a busy
    timeout let several processes share the file. Every write is one autocommitted statement,
    so a crash never leaves a half-written record. The schema version lives in
    ``PRAGMA user_version`` and is migrated forward on open; a file from a newer version is
    refused. Do not share an instance across ``fork``; open one per process.

    Raises :class:`LedgerError` (from the constructor and every method) when SQLite fails.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        _check_positive(busy_timeout, "busy_timeout")
        self._path = str(path)
        self._lock = threading.RLock()
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open ledger {self._path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            self._set_up(busy_timeout)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SqliteLedger({self._path!r})"

    @property
    def path(self) -> str:
        """The database path as given (``":memory:"`` for an in-memory ledger)."""
        return self._path

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise LedgerError("ledger is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger {self._path}: {exc}") from exc

    def _set_up(self, busy_timeout: float) -> None:
        # Switching to WAL (and the first read of a file another process is creating) can fail
        # with SQLITE_BUSY without SQLite's busy handler being consulted, so opening retries
        # by itself until the busy timeout is spent.
        deadline = monotonic() + busy_timeout
        while True:
            try:
                with self._db() as db:
                    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                    self._enable_wal(db)
                    db.execute("PRAGMA synchronous = FULL")
                    self._migrate(db)
                return
            except LedgerError as exc:
                if not _is_busy(exc.__cause__) or monotonic() >= deadline:
                    raise
            sleep(random.uniform(0.005, 0.05))

    def _enable_wal(self, db: sqlite3.Connection) -> None:
        if self._path == ":memory:":
            return
        mode = str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        if mode != "wal":
            logger.warning("ledger %s: journal_mode is %s, not WAL", self._path, mode)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        def version() -> int:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

        if version() == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            current = version()
            if current > SCHEMA_VERSION:
                raise LedgerError(
                    f"ledger schema version {current} is newer than this code's {SCHEMA_VERSION}"
                )
            for step in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    db.execute(statement)
                logger.info("ledger schema migrated to version %d", step + 1)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- target primitives --------------------------------------------------------------------

    def _get_target(self, gateway_id: str, datasource_id: str) -> TargetRecord | None:
        with self._db() as db:
            row = db.execute(SELECT_TARGET, (gateway_id, datasource_id)).fetchone()
        return None if row is None else target_from_row(row)

    def _insert_target(self, record: TargetRecord) -> str | None:
        with self._db() as db:
            cursor = db.execute(INSERT_TARGET, target_params(record))
            return "1" if cursor.rowcount == 1 else None

    def _replace_target(self, record: TargetRecord, if_match: str) -> str | None:
        try:
            expected = int(if_match)
        except ValueError:
            return None
        with self._db() as db:
            rows = db.execute(REPLACE_TARGET, {**target_params(record), "etag": expected}).fetchall()
        return str(rows[0][0]) if rows else None

    # -- account primitives -------------------------------------------------------------------

    def _get_account_version(self, account: str, secret: str, version: str) -> AccountVersion | None:
        with self._db() as db:
            row = db.execute(SELECT_ACCOUNT_VERSION, (account, secret, version)).fetchone()
        return None if row is None else account_from_row(row)

    def _insert_account_version(self, record: AccountVersion) -> str | None:
        with self._db() as db:
            cursor = db.execute(INSERT_ACCOUNT_VERSION, account_params(record))
            return "1" if cursor.rowcount == 1 else None

    def _replace_account_version(self, record: AccountVersion, if_match: str) -> str | None:
        try:
            expected = int(if_match)
        except ValueError:
            return None
        with self._db() as db:
            rows = db.execute(
                REPLACE_ACCOUNT_VERSION, {**account_params(record), "etag": expected}
            ).fetchall()
        return str(rows[0][0]) if rows else None

    def _scan_account_versions(self, with_verdict_only: bool) -> list[AccountVersion]:
        with self._db() as db:
            rows = db.execute(SCAN_ACCOUNT_VERSIONS, {"all": not with_verdict_only}).fetchall()
        return [account_from_row(row) for row in rows]

    # -- events, outcomes, refresh budget -----------------------------------------------------

    def mark_event_seen(self, event_id: str, now: float) -> bool:
        """See :meth:`Ledger.mark_event_seen`."""
        event = norm(event_id, "event_id")
        check_time(now, "now")
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO seen_events (event_id, seen_at) VALUES (?, ?) ON CONFLICT (event_id) DO NOTHING",
                (event, now),
            )
            return cursor.rowcount == 1

    def event_seen(self, event_id: str) -> bool:
        """See :meth:`Ledger.event_seen`."""
        event = norm(event_id, "event_id")
        with self._db() as db:
            row = db.execute("SELECT 1 FROM seen_events WHERE event_id = ?", (event,)).fetchone()
            return row is not None

    def prune(
        self,
        now: float,
        retention_seconds: float,
        *,
        outcome_retention_seconds: float = DEFAULT_OUTCOME_RETENTION_SECONDS,
    ) -> PruneResult:
        """See :meth:`Ledger.prune`."""
        check_time(now, "now")
        _check_positive(retention_seconds, "retention_seconds")
        _check_positive(outcome_retention_seconds, "outcome_retention_seconds")
        with self._db() as db:
            events = db.execute("DELETE FROM seen_events WHERE seen_at < ?", (now - retention_seconds,))
            outcomes = db.execute('DELETE FROM outcomes WHERE "time" < ?', (now - outcome_retention_seconds,))
            days = db.execute("DELETE FROM refresh_posts WHERE day < ?", (utc_day(now - 86400.0),))
            return PruneResult(events=events.rowcount, outcomes=outcomes.rowcount, refresh_days=days.rowcount)

    def add_outcome(self, outcome: Outcome) -> None:
        """See :meth:`Ledger.add_outcome`."""
        check_time(outcome.time, "outcome.time")
        with self._db() as db:
            db.execute(INSERT_OUTCOME, outcome.to_dict())

    def outcomes(self, since: float | None = None, limit: int = 500) -> list[Outcome]:
        """See :meth:`Ledger.outcomes`."""
        if since is not None:
            check_time(since, "since")
        if limit <= 0:
            return []
        with self._db() as db:
            rows = db.execute(SELECT_OUTCOMES, {"since": since, "limit": limit}).fetchall()
        return [outcome_from_row(row) for row in rows]

    def refresh_posts(self, dataset_id: str, day: str) -> int:
        """See :meth:`Ledger.refresh_posts`."""
        dataset, day = norm(dataset_id, "dataset_id"), _day(day)
        with self._db() as db:
            row = db.execute(
                "SELECT posts FROM refresh_posts WHERE dataset_id = ? AND day = ?", (dataset, day)
            ).fetchone()
        return int(row[0]) if row is not None else 0

    def record_refresh_post(self, dataset_id: str, day: str) -> int:
        """See :meth:`Ledger.record_refresh_post`."""
        dataset, day = norm(dataset_id, "dataset_id"), _day(day)
        with self._db() as db:
            rows = db.execute(
                "INSERT INTO refresh_posts (dataset_id, day, posts) VALUES (?, ?, 1) "
                "ON CONFLICT (dataset_id, day) DO UPDATE SET posts = posts + 1 RETURNING posts",
                (dataset, day),
            ).fetchall()
        return int(rows[0][0])

    # -- inventory and markers ----------------------------------------------------------------

    def inventory(self, workspace_id: str | None = None) -> list[DatasetRecord]:
        """See :meth:`Ledger.inventory`."""
        query = SELECT_INVENTORY
        params: tuple[str, ...] = ()
        if workspace_id is not None:
            query += " WHERE workspace_id = ?"
            params = (norm(workspace_id, "workspace_id"),)
        with self._db() as db:
            rows = db.execute(query, params).fetchall()
        return [dataset_from_row(row) for row in rows]

    def put_inventory(self, records: Iterable[DatasetRecord]) -> None:
        """See :meth:`Ledger.put_inventory`. One conditional upsert per record, all in one
        transaction (autocommit would make each its own synced transaction: seconds for a
        few thousand records)."""
        params = [dataset_params(r) for r in map(normalised_record, records)]
        if not params:
            return
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(UPSERT_INVENTORY, params)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def drop_inventory(self, workspace_id: str, dataset_ids: Iterable[str]) -> None:
        """See :meth:`Ledger.drop_inventory`."""
        workspace = norm(workspace_id, "workspace_id")
        pairs = [(workspace, norm(d, "dataset_id")) for d in dataset_ids]
        with self._db() as db:
            db.executemany("DELETE FROM inventory WHERE workspace_id = ? AND dataset_id = ?", pairs)

    def marker(self, name: str) -> str | None:
        """See :meth:`Ledger.marker`."""
        with self._db() as db:
            row = db.execute("SELECT mark FROM markers WHERE name = ?", (norm(name, "name"),)).fetchone()
        return None if row is None else text(row[0])

    def set_marker(self, name: str, value: str, now: float) -> None:
        """See :meth:`Ledger.set_marker`."""
        check_time(now, "now")
        with self._db() as db:
            db.execute(
                "INSERT INTO markers (name, mark, set_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET mark = excluded.mark, set_at = excluded.set_at",
                (norm(name, "name"), value, now),
            )

    def raise_marker(self, name: str, value: float, now: float) -> float:
        """See :meth:`Ledger.raise_marker`. One upsert whose update is conditioned on the stored
        number being lower (a text that is not a number reads as lower than any)."""
        check_time(now, "now")
        value = check_time(value, "value")
        key = norm(name, "name")
        with self._db() as db:
            db.execute(RAISE_MARKER, (key, repr(float(value)), now))
            row = db.execute("SELECT mark FROM markers WHERE name = ?", (key,)).fetchone()
        return _marker_number(None if row is None else opt_text(row[0]))

    def close(self) -> None:
        """See :meth:`Ledger.close`."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


if TYPE_CHECKING:
    _sqlite_is_a_ledger: type[Ledger] = SqliteLedger


def _is_busy(exc: BaseException | None) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
