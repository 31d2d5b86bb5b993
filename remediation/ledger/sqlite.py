"""The embedded ledger backend: one SQLite file (``REMEDIATION_STATE_PATH``).

WAL mode with a busy timeout, safe for a pool of threads and for several processes at once. Every
target, account and inventory change is a one-row write (lists and sets are JSON columns), so it
keeps exactly the invariants :class:`remediation.ledger.base.EntityLedgerBase` defines, like the Table
storage backend. The schema is versioned in ``PRAGMA user_version`` and migrated on open.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from time import monotonic, sleep
from typing import TYPE_CHECKING, Final

from remediation.ledger.base import (
    EntityLedgerBase,
    _check_positive,
    _count,
    _day,
    _is_busy,
    _marker_number,
    _opt_real,
    _opt_text,
    _text,
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
from remediation.safety.evidence import (
    AccountVersion,
    Intent,
)

__all__ = ["SqliteLedger"]

logger = logging.getLogger(__name__)

# Each entry upgrades the schema by one version; entry i takes user_version i to i + 1.
# Lists and sets of one target are JSON columns so that every change stays a one-row write
# (the Table storage backend has no multi-entity transactions across partitions).
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """
        CREATE TABLE IF NOT EXISTS targets (
            gateway_id      TEXT NOT NULL,
            datasource_id   TEXT NOT NULL,
            applied_secret  TEXT,
            applied_version TEXT,
            applied_at      REAL,
            rejections      TEXT NOT NULL DEFAULT '[]',
            attempts        TEXT NOT NULL DEFAULT '[]',
            lease_owner     TEXT,
            lease_id        TEXT,
            lease_expires   REAL,
            etag            INTEGER NOT NULL,
            PRIMARY KEY (gateway_id, datasource_id)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE IF NOT EXISTS seen_events (
            event_id TEXT PRIMARY KEY,
            seen_at  REAL NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX IF NOT EXISTS seen_events_by_time ON seen_events (seen_at)",
        """
        CREATE TABLE IF NOT EXISTS outcomes (
            id                 INTEGER PRIMARY KEY AUTOINCREMENT,
            "time"             REAL NOT NULL,
            "trigger"          TEXT,
            correlation_id     TEXT,
            binding            TEXT,
            secret_name        TEXT,
            secret_version     TEXT,
            gateway_id         TEXT,
            datasource_id      TEXT,
            workspace_id       TEXT,
            dataset_id         TEXT,
            "action"           TEXT,
            reason             TEXT,
            refresh_request_id TEXT,
            refresh_state      TEXT,
            duration           REAL
        )
        """,
        'CREATE INDEX IF NOT EXISTS outcomes_by_time ON outcomes ("time")',
        """
        CREATE TABLE IF NOT EXISTS refresh_posts (
            dataset_id TEXT NOT NULL,
            day        TEXT NOT NULL,
            posts      INTEGER NOT NULL,
            PRIMARY KEY (dataset_id, day)
        ) WITHOUT ROWID
        """,
    ),
    # 1 -> 2: presentation verdicts per account (AccountVersion), one row per account and version.
    (
        """
        CREATE TABLE IF NOT EXISTS account_versions (
            account        TEXT NOT NULL,
            secret_name    TEXT NOT NULL,
            secret_version TEXT NOT NULL,
            verdict        TEXT,
            reason         TEXT,
            verdict_at     REAL,
            accepted       TEXT NOT NULL DEFAULT '[]',
            probe_owner    TEXT,
            probe_locator  TEXT,
            probe_target   TEXT,
            probe_expires  REAL,
            presentations  INTEGER NOT NULL DEFAULT 0,
            overrides      INTEGER NOT NULL DEFAULT 0,
            etag           INTEGER NOT NULL,
            PRIMARY KEY (account, secret_name, secret_version)
        ) WITHOUT ROWID
        """,
    ),
    # 2 -> 3: the inventory of which datasets use which gateway data sources, and named markers.
    (
        """
        CREATE TABLE IF NOT EXISTS inventory (
            workspace_id TEXT NOT NULL,
            dataset_id   TEXT NOT NULL,
            fingerprint  TEXT NOT NULL,
            learnt_at    REAL NOT NULL,
            sources      TEXT NOT NULL DEFAULT '[]',
            refreshable  INTEGER NOT NULL DEFAULT 1,
            PRIMARY KEY (workspace_id, dataset_id)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE IF NOT EXISTS markers (
            name   TEXT PRIMARY KEY,
            mark   TEXT NOT NULL,
            set_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    # 3 -> 4: the account each outcome's sign-ins count against (per-account figures).
    ("ALTER TABLE outcomes ADD COLUMN account TEXT",),
    # 4 -> 5: evidence with times per account and version (acceptance times, the last
    # contradiction, the operator requests consumed), one JSON column.
    # The intent of a presentation about to be sent to a target (cleared with its verdict).
    (
        "ALTER TABLE account_versions ADD COLUMN evidence TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE targets ADD COLUMN intent TEXT",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_SELECT_TARGET: Final = """
    SELECT gateway_id, datasource_id, applied_secret, applied_version, applied_at, rejections, attempts,
           lease_owner, lease_id, lease_expires, etag, intent
    FROM targets WHERE gateway_id = ? AND datasource_id = ?
"""
_INSERT_TARGET: Final = """
    INSERT INTO targets (gateway_id, datasource_id, applied_secret, applied_version, applied_at,
                         rejections, attempts, lease_owner, lease_id, lease_expires, intent, etag)
    VALUES (:gateway_id, :datasource_id, :applied_secret, :applied_version, :applied_at,
            :rejections, :attempts, :lease_owner, :lease_id, :lease_expires, :intent, 1)
    ON CONFLICT (gateway_id, datasource_id) DO NOTHING
"""
_REPLACE_TARGET: Final = """
    UPDATE targets SET applied_secret = :applied_secret, applied_version = :applied_version,
                       applied_at = :applied_at, rejections = :rejections, attempts = :attempts,
                       lease_owner = :lease_owner, lease_id = :lease_id, lease_expires = :lease_expires,
                       intent = :intent, etag = etag + 1
    WHERE gateway_id = :gateway_id AND datasource_id = :datasource_id AND etag = :etag
    RETURNING etag
"""


def _target_params(record: TargetRecord) -> dict[str, object]:
    """The named parameters of :data:`_INSERT_TARGET` / :data:`_REPLACE_TARGET` for ``record``."""
    return {
        "gateway_id": record.gateway_id,
        "datasource_id": record.datasource_id,
        "applied_secret": record.applied_secret,
        "applied_version": record.applied_version,
        "applied_at": record.applied_at,
        "rejections": record.rejections_json(),
        "attempts": record.attempts_json(),
        "lease_owner": record.lease_owner,
        "lease_id": record.lease_id,
        "lease_expires": record.lease_expires,
        "intent": None if record.intent is None else record.intent.to_json(),
    }


_SELECT_ACCOUNT_VERSION: Final = """
    SELECT account, secret_name, secret_version, verdict, reason, verdict_at, accepted,
           probe_owner, probe_locator, probe_target, probe_expires, presentations, overrides, etag,
           evidence
    FROM account_versions WHERE account = ? AND secret_name = ? AND secret_version = ?
"""
_SCAN_ACCOUNT_VERSIONS: Final = """
    SELECT account, secret_name, secret_version, verdict, reason, verdict_at, accepted,
           probe_owner, probe_locator, probe_target, probe_expires, presentations, overrides, etag,
           evidence
    FROM account_versions WHERE (:all OR verdict IS NOT NULL)
"""
_INSERT_ACCOUNT_VERSION: Final = """
    INSERT INTO account_versions (account, secret_name, secret_version, verdict, reason, verdict_at,
                                  accepted, probe_owner, probe_locator, probe_target, probe_expires,
                                  presentations, overrides, evidence, etag)
    VALUES (:account, :secret_name, :secret_version, :verdict, :reason, :verdict_at,
            :accepted, :probe_owner, :probe_locator, :probe_target, :probe_expires,
            :presentations, :overrides, :evidence, 1)
    ON CONFLICT (account, secret_name, secret_version) DO NOTHING
"""
_REPLACE_ACCOUNT_VERSION: Final = """
    UPDATE account_versions SET verdict = :verdict, reason = :reason, verdict_at = :verdict_at,
                                accepted = :accepted, probe_owner = :probe_owner,
                                probe_locator = :probe_locator, probe_target = :probe_target,
                                probe_expires = :probe_expires, presentations = :presentations,
                                overrides = :overrides, evidence = :evidence, etag = etag + 1
    WHERE account = :account AND secret_name = :secret_name AND secret_version = :secret_version
      AND etag = :etag
    RETURNING etag
"""


def _account_params(record: AccountVersion) -> dict[str, object]:
    """The named parameters of :data:`_INSERT_ACCOUNT_VERSION` / :data:`_REPLACE_ACCOUNT_VERSION`."""
    return {
        "account": record.account,
        "secret_name": record.secret,
        "secret_version": record.version,
        "verdict": record.verdict,
        "reason": record.reason,
        "verdict_at": record.verdict_at,
        "accepted": record.accepted_json(),
        "probe_owner": record.probe_owner,
        "probe_locator": record.probe_locator,
        "probe_target": record.probe_target,
        "probe_expires": record.probe_expires,
        "presentations": record.presentations,
        "overrides": record.overrides,
        "evidence": record.evidence_json(),
    }


def _account_from_row(row: tuple[object, ...]) -> AccountVersion:
    """An :class:`AccountVersion` from a row of :data:`_SELECT_ACCOUNT_VERSION`'s columns."""
    account, secret, version = (_text(v) for v in row[:3])
    licences, contradicted_at, grants = AccountVersion.parse_evidence(_opt_text(row[14]))
    return AccountVersion(
        account=account,
        secret=secret,
        version=version,
        verdict=_opt_text(row[3]),
        reason=_opt_text(row[4]),
        verdict_at=_opt_real(row[5]),
        accepted=AccountVersion.parse_accepted(_opt_text(row[6])),
        probe_owner=_opt_text(row[7]),
        probe_locator=_opt_text(row[8]),
        probe_target=_opt_text(row[9]),
        probe_expires=_opt_real(row[10]),
        presentations=_count(row[11]),
        overrides=_count(row[12]),
        etag=str(row[13]),
        licences=licences,
        contradicted_at=contradicted_at,
        grants=grants,
    )


_INSERT_OUTCOME: Final = """
    INSERT INTO outcomes ("time", "trigger", correlation_id, binding, secret_name, secret_version,
                          gateway_id, datasource_id, workspace_id, dataset_id, "action", reason,
                          refresh_request_id, refresh_state, duration, account)
    VALUES (:time, :trigger, :correlation_id, :binding, :secret_name, :secret_version,
            :gateway_id, :datasource_id, :workspace_id, :dataset_id, :action, :reason,
            :refresh_request_id, :refresh_state, :duration, :account)
"""
_SELECT_OUTCOMES: Final = """
    SELECT "time", "trigger", correlation_id, binding, secret_name, secret_version,
           gateway_id, datasource_id, workspace_id, dataset_id, "action", reason,
           refresh_request_id, refresh_state, duration, account
    FROM outcomes
    WHERE (:since IS NULL OR "time" >= :since)
    ORDER BY "time" DESC, id DESC
    LIMIT :limit
"""
_OUTCOME_COLUMNS: Final = tuple(f.name for f in fields(Outcome))
_UPSERT_INVENTORY: Final = """
    INSERT INTO inventory (workspace_id, dataset_id, fingerprint, learnt_at, sources, refreshable)
    VALUES (:workspace_id, :dataset_id, :fingerprint, :learnt_at, :sources, :refreshable)
    ON CONFLICT (workspace_id, dataset_id) DO UPDATE SET
        fingerprint = excluded.fingerprint, learnt_at = excluded.learnt_at,
        sources = excluded.sources, refreshable = excluded.refreshable
    WHERE excluded.learnt_at >= inventory.learnt_at
"""

_RAISE_MARKER: Final = """
    INSERT INTO markers (name, mark, set_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET mark = excluded.mark, set_at = excluded.set_at
    WHERE markers.mark IS NULL OR CAST(markers.mark AS REAL) < CAST(excluded.mark AS REAL)
"""


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
                for statement in _MIGRATIONS[step]:
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
            row = db.execute(_SELECT_TARGET, (gateway_id, datasource_id)).fetchone()
        if row is None:
            return None
        return TargetRecord(
            gateway_id=row[0],
            datasource_id=row[1],
            applied_secret=row[2],
            applied_version=row[3],
            applied_at=row[4],
            rejections=TargetRecord.parse_rejections(row[5]),
            attempts=TargetRecord.parse_attempts(row[6]),
            lease_owner=row[7],
            lease_id=row[8],
            lease_expires=row[9],
            etag=str(row[10]),
            intent=Intent.parse(row[11]),
        )

    def _insert_target(self, record: TargetRecord) -> str | None:
        with self._db() as db:
            cursor = db.execute(_INSERT_TARGET, _target_params(record))
            return "1" if cursor.rowcount == 1 else None

    def _replace_target(self, record: TargetRecord, if_match: str) -> str | None:
        try:
            expected = int(if_match)
        except ValueError:
            return None
        with self._db() as db:
            rows = db.execute(_REPLACE_TARGET, {**_target_params(record), "etag": expected}).fetchall()
        return str(rows[0][0]) if rows else None

    # -- account primitives -------------------------------------------------------------------

    def _get_account_version(self, account: str, secret: str, version: str) -> AccountVersion | None:
        with self._db() as db:
            row = db.execute(_SELECT_ACCOUNT_VERSION, (account, secret, version)).fetchone()
        return None if row is None else _account_from_row(row)

    def _insert_account_version(self, record: AccountVersion) -> str | None:
        with self._db() as db:
            cursor = db.execute(_INSERT_ACCOUNT_VERSION, _account_params(record))
            return "1" if cursor.rowcount == 1 else None

    def _replace_account_version(self, record: AccountVersion, if_match: str) -> str | None:
        try:
            expected = int(if_match)
        except ValueError:
            return None
        with self._db() as db:
            rows = db.execute(
                _REPLACE_ACCOUNT_VERSION, {**_account_params(record), "etag": expected}
            ).fetchall()
        return str(rows[0][0]) if rows else None

    def _scan_account_versions(self, with_verdict_only: bool) -> list[AccountVersion]:
        with self._db() as db:
            rows = db.execute(_SCAN_ACCOUNT_VERSIONS, {"all": not with_verdict_only}).fetchall()
        return [_account_from_row(row) for row in rows]

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
            db.execute(_INSERT_OUTCOME, outcome.to_dict())

    def outcomes(self, since: float | None = None, limit: int = 500) -> list[Outcome]:
        """See :meth:`Ledger.outcomes`."""
        if since is not None:
            check_time(since, "since")
        if limit <= 0:
            return []
        with self._db() as db:
            rows = db.execute(_SELECT_OUTCOMES, {"since": since, "limit": limit}).fetchall()
        return [Outcome.from_dict(dict(zip(_OUTCOME_COLUMNS, row, strict=True))) for row in rows]

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
        query = "SELECT workspace_id, dataset_id, fingerprint, learnt_at, sources, refreshable FROM inventory"
        params: tuple[str, ...] = ()
        if workspace_id is not None:
            query += " WHERE workspace_id = ?"
            params = (norm(workspace_id, "workspace_id"),)
        with self._db() as db:
            rows = db.execute(query, params).fetchall()
        return [
            DatasetRecord(
                workspace_id=_text(row[0]),
                dataset_id=_text(row[1]),
                fingerprint=_text(row[2]),
                learnt_at=float(_opt_real(row[3]) or 0.0),
                sources=DatasetRecord.parse_sources(_opt_text(row[4])),
                refreshable=bool(row[5]),
            )
            for row in rows
        ]

    def put_inventory(self, records: Iterable[DatasetRecord]) -> None:
        """See :meth:`Ledger.put_inventory`. One conditional upsert per record, all in one
        transaction (autocommit would make each its own synced transaction: seconds for a
        few thousand records)."""
        params = [
            {
                "workspace_id": r.workspace_id,
                "dataset_id": r.dataset_id,
                "fingerprint": r.fingerprint,
                "learnt_at": r.learnt_at,
                "sources": r.sources_json(),
                "refreshable": int(r.refreshable),
            }
            for r in map(normalised_record, records)
        ]
        if not params:
            return
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_UPSERT_INVENTORY, params)
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
        return None if row is None else _text(row[0])

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
            db.execute(_RAISE_MARKER, (key, repr(float(value)), now))
            row = db.execute("SELECT mark FROM markers WHERE name = ?", (key,)).fetchone()
        return _marker_number(None if row is None else _opt_text(row[0]))

    def close(self) -> None:
        """See :meth:`Ledger.close`."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


if TYPE_CHECKING:
    _sqlite_is_a_ledger: type[Ledger] = SqliteLedger
