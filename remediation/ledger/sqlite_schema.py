"""The embedded ledger's schema: its tables and their migrations, the statements that read and
write a record, and rows <-> records (no connection: :mod:`remediation.ledger.sqlite` runs them).

One job: what the SQLite file holds and how a record is written as a row. Lists and sets of one
target or account are JSON columns, so that every change stays a one-row write (the Table storage
backend has no multi-entity transactions across partitions). The schema is versioned in
``PRAGMA user_version``: :data:`MIGRATIONS` take a file of any older version to
:data:`~remediation.ledger.records.SCHEMA_VERSION`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Final

from remediation.ledger.records import SCHEMA_VERSION, DatasetRecord, LedgerError, Outcome, TargetRecord
from remediation.safety.evidence import AccountVersion, Intent, is_number

__all__ = [
    "INSERT_ACCOUNT_VERSION",
    "INSERT_OUTCOME",
    "INSERT_TARGET",
    "MIGRATIONS",
    "RAISE_MARKER",
    "REPLACE_ACCOUNT_VERSION",
    "REPLACE_TARGET",
    "SCAN_ACCOUNT_VERSIONS",
    "SELECT_ACCOUNT_VERSION",
    "SELECT_INVENTORY",
    "SELECT_OUTCOMES",
    "SELECT_TARGET",
    "UPSERT_INVENTORY",
    "account_from_row",
    "account_params",
    "dataset_from_row",
    "dataset_params",
    "opt_text",
    "outcome_from_row",
    "target_from_row",
    "target_params",
    "text",
]

# Each entry upgrades the schema by one version; entry i takes user_version i to i + 1.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
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
assert len(MIGRATIONS) == SCHEMA_VERSION

SELECT_TARGET: Final = """
    SELECT gateway_id, datasource_id, applied_secret, applied_version, applied_at, rejections, attempts,
           lease_owner, lease_id, lease_expires, etag, intent
    FROM targets WHERE gateway_id = ? AND datasource_id = ?
"""
INSERT_TARGET: Final = """
    INSERT INTO targets (gateway_id, datasource_id, applied_secret, applied_version, applied_at,
                         rejections, attempts, lease_owner, lease_id, lease_expires, intent, etag)
    VALUES (:gateway_id, :datasource_id, :applied_secret, :applied_version, :applied_at,
            :rejections, :attempts, :lease_owner, :lease_id, :lease_expires, :intent, 1)
    ON CONFLICT (gateway_id, datasource_id) DO NOTHING
"""
REPLACE_TARGET: Final = """
    UPDATE targets SET applied_secret = :applied_secret, applied_version = :applied_version,
                       applied_at = :applied_at, rejections = :rejections, attempts = :attempts,
                       lease_owner = :lease_owner, lease_id = :lease_id, lease_expires = :lease_expires,
                       intent = :intent, etag = etag + 1
    WHERE gateway_id = :gateway_id AND datasource_id = :datasource_id AND etag = :etag
    RETURNING etag
"""


def target_params(record: TargetRecord) -> dict[str, object]:
    """The named parameters of :data:`INSERT_TARGET` / :data:`REPLACE_TARGET` for ``record``."""
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


def target_from_row(row: tuple[Any, ...]) -> TargetRecord:
    """A :class:`TargetRecord` from a row of :data:`SELECT_TARGET`'s columns."""
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


SELECT_ACCOUNT_VERSION: Final = """
    SELECT account, secret_name, secret_version, verdict, reason, verdict_at, accepted,
           probe_owner, probe_locator, probe_target, probe_expires, presentations, overrides, etag,
           evidence
    FROM account_versions WHERE account = ? AND secret_name = ? AND secret_version = ?
"""
SCAN_ACCOUNT_VERSIONS: Final = """
    SELECT account, secret_name, secret_version, verdict, reason, verdict_at, accepted,
           probe_owner, probe_locator, probe_target, probe_expires, presentations, overrides, etag,
           evidence
    FROM account_versions WHERE (:all OR verdict IS NOT NULL)
"""
INSERT_ACCOUNT_VERSION: Final = """
    INSERT INTO account_versions (account, secret_name, secret_version, verdict, reason, verdict_at,
                                  accepted, probe_owner, probe_locator, probe_target, probe_expires,
                                  presentations, overrides, evidence, etag)
    VALUES (:account, :secret_name, :secret_version, :verdict, :reason, :verdict_at,
            :accepted, :probe_owner, :probe_locator, :probe_target, :probe_expires,
            :presentations, :overrides, :evidence, 1)
    ON CONFLICT (account, secret_name, secret_version) DO NOTHING
"""
REPLACE_ACCOUNT_VERSION: Final = """
    UPDATE account_versions SET verdict = :verdict, reason = :reason, verdict_at = :verdict_at,
                                accepted = :accepted, probe_owner = :probe_owner,
                                probe_locator = :probe_locator, probe_target = :probe_target,
                                probe_expires = :probe_expires, presentations = :presentations,
                                overrides = :overrides, evidence = :evidence, etag = etag + 1
    WHERE account = :account AND secret_name = :secret_name AND secret_version = :secret_version
      AND etag = :etag
    RETURNING etag
"""


def account_params(record: AccountVersion) -> dict[str, object]:
    """The named parameters of :data:`INSERT_ACCOUNT_VERSION` / :data:`REPLACE_ACCOUNT_VERSION`."""
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


def account_from_row(row: tuple[object, ...]) -> AccountVersion:
    """An :class:`AccountVersion` from a row of :data:`SELECT_ACCOUNT_VERSION`'s columns."""
    account, secret, version = (text(v) for v in row[:3])
    licences, contradicted_at, grants = AccountVersion.parse_evidence(opt_text(row[14]))
    return AccountVersion(
        account=account,
        secret=secret,
        version=version,
        verdict=opt_text(row[3]),
        reason=opt_text(row[4]),
        verdict_at=_opt_real(row[5]),
        accepted=AccountVersion.parse_accepted(opt_text(row[6])),
        probe_owner=opt_text(row[7]),
        probe_locator=opt_text(row[8]),
        probe_target=opt_text(row[9]),
        probe_expires=_opt_real(row[10]),
        presentations=_count(row[11]),
        overrides=_count(row[12]),
        etag=str(row[13]),
        licences=licences,
        contradicted_at=contradicted_at,
        grants=grants,
    )


INSERT_OUTCOME: Final = """
    INSERT INTO outcomes ("time", "trigger", correlation_id, binding, secret_name, secret_version,
                          gateway_id, datasource_id, workspace_id, dataset_id, "action", reason,
                          refresh_request_id, refresh_state, duration, account)
    VALUES (:time, :trigger, :correlation_id, :binding, :secret_name, :secret_version,
            :gateway_id, :datasource_id, :workspace_id, :dataset_id, :action, :reason,
            :refresh_request_id, :refresh_state, :duration, :account)
"""
SELECT_OUTCOMES: Final = """
    SELECT "time", "trigger", correlation_id, binding, secret_name, secret_version,
           gateway_id, datasource_id, workspace_id, dataset_id, "action", reason,
           refresh_request_id, refresh_state, duration, account
    FROM outcomes
    WHERE (:since IS NULL OR "time" >= :since)
    ORDER BY "time" DESC, id DESC
    LIMIT :limit
"""
_OUTCOME_COLUMNS: Final = tuple(f.name for f in fields(Outcome))


def outcome_from_row(row: tuple[object, ...]) -> Outcome:
    """An :class:`Outcome` from a row of :data:`SELECT_OUTCOMES`' columns."""
    return Outcome.from_dict(dict(zip(_OUTCOME_COLUMNS, row, strict=True)))


SELECT_INVENTORY: Final = (
    "SELECT workspace_id, dataset_id, fingerprint, learnt_at, sources, refreshable FROM inventory"
)
UPSERT_INVENTORY: Final = """
    INSERT INTO inventory (workspace_id, dataset_id, fingerprint, learnt_at, sources, refreshable)
    VALUES (:workspace_id, :dataset_id, :fingerprint, :learnt_at, :sources, :refreshable)
    ON CONFLICT (workspace_id, dataset_id) DO UPDATE SET
        fingerprint = excluded.fingerprint, learnt_at = excluded.learnt_at,
        sources = excluded.sources, refreshable = excluded.refreshable
    WHERE excluded.learnt_at >= inventory.learnt_at
"""


def dataset_params(record: DatasetRecord) -> dict[str, object]:
    """The named parameters of :data:`UPSERT_INVENTORY` for ``record``."""
    return {
        "workspace_id": record.workspace_id,
        "dataset_id": record.dataset_id,
        "fingerprint": record.fingerprint,
        "learnt_at": record.learnt_at,
        "sources": record.sources_json(),
        "refreshable": int(record.refreshable),
    }


def dataset_from_row(row: tuple[object, ...]) -> DatasetRecord:
    """A :class:`DatasetRecord` from a row of :data:`SELECT_INVENTORY`'s columns."""
    return DatasetRecord(
        workspace_id=text(row[0]),
        dataset_id=text(row[1]),
        fingerprint=text(row[2]),
        learnt_at=float(_opt_real(row[3]) or 0.0),
        sources=DatasetRecord.parse_sources(opt_text(row[4])),
        refreshable=bool(row[5]),
    )


RAISE_MARKER: Final = """
    INSERT INTO markers (name, mark, set_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET mark = excluded.mark, set_at = excluded.set_at
    WHERE markers.mark IS NULL OR CAST(markers.mark AS REAL) < CAST(excluded.mark AS REAL)
"""


# -- column values ---------------------------------------------------------------------------


def text(value: object) -> str:
    if not isinstance(value, str):
        raise LedgerError("corrupt ledger record: account version")
    return value


def opt_text(value: object) -> str | None:
    return None if value is None else text(value)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LedgerError("corrupt ledger record: account version")
    return value


def _opt_real(value: object) -> float | None:
    if value is None:
        return None
    if not is_number(value):
        raise LedgerError("corrupt ledger record: account version")
    return float(value)
