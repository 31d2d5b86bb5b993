"""The ledger's layout in Azure Table storage: tables, keys, and entities <-> records (pure).

One job: how :class:`~remediation.ledger.tables.TableLedger` writes a record as an entity and reads
it back (key encoding, property names, chunked JSON properties). Nothing here talks to the service.

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
* **write_id** tells an SDK retry of our own write from someone else's: see
  :mod:`remediation.ledger.tables_access`.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from remediation.ledger.records import DatasetRecord, LedgerError, Outcome, TargetRecord
from remediation.safety.evidence import AccountVersion, Intent

__all__ = [
    "MAX_OUTCOME_TIME",
    "TABLE_SUFFIXES",
    "account_entity",
    "account_from_entity",
    "account_row_key",
    "count",
    "dataset_entity",
    "dataset_from_entity",
    "event_entity",
    "event_keys",
    "opt_float",
    "opt_str",
    "outcome_entity",
    "outcome_partition",
    "read_chunked",
    "table_key",
    "target_entity",
    "target_from_entity",
    "write_chunked",
]

TABLE_SUFFIXES: Final = ("targets", "events", "outcomes", "refreshes", "accounts", "inventory", "markers")
"""The tables, each named ``{prefix}{suffix}``."""
_PLAIN_KEY_RE: Final = re.compile(r"[a-z0-9][a-z0-9._:@=+-]{0,254}")
_CHUNK: Final = 30_000
"""Characters per string property: 64 KiB of UTF-16, with room to spare."""
_MAX_CHUNKS: Final = 30
MAX_OUTCOME_TIME: Final = 10**10
"""Outcome times lie in ``[0, MAX_OUTCOME_TIME)`` seconds (the RowKey's range)."""
_INVERT_DAY: Final = 99_999_999
_INVERT_US: Final = 10**16
_INVERT_SEQ: Final = 10**20
_MAX_EVENT_ID_KEPT: Final = 1024


# -- keys -----------------------------------------------------------------------------------------


def table_key(value: str) -> str:
    """``value`` as a PartitionKey/RowKey: itself when plain, else ``~`` + its SHA-256 hex."""
    if _PLAIN_KEY_RE.fullmatch(value):
        return value
    return "~" + hashlib.sha256(value.encode("utf-8")).hexdigest()


def account_row_key(secret: str, version: str) -> str:
    """``{secret}|{version}``, each encoded by :func:`table_key` (which never yields ``|``)."""
    return f"{table_key(secret)}|{table_key(version)}"


def outcome_partition(at: float) -> str:
    """``{99999999 - YYYYMMDD}-{YYYYMMDD}``: newer days sort first."""
    day = int(datetime.fromtimestamp(at, tz=UTC).strftime("%Y%m%d"))
    return f"{_INVERT_DAY - day:08d}-{day:08d}"


def event_keys(event: str) -> tuple[str, str]:
    """PartitionKey and RowKey of a normalised event id: its SHA-256's first two hex digits, and
    the whole."""
    digest = hashlib.sha256(event.encode("utf-8")).hexdigest()
    return digest[:2], digest


# -- entities <-> records -------------------------------------------------------------------------


def target_entity(record: TargetRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": table_key(record.gateway_id),
        "RowKey": table_key(record.datasource_id),
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
    write_chunked(entity, "rejections", record.rejections_json())
    write_chunked(entity, "attempts", record.attempts_json())
    return entity


def target_from_entity(entity: Mapping[str, Any], gateway_id: str, datasource_id: str) -> TargetRecord:
    """The target stored as ``entity`` (with its ``"etag"``), read under ``gateway_id`` and
    ``datasource_id``."""
    return TargetRecord(
        gateway_id=opt_str(entity, "gateway_id") or gateway_id,
        datasource_id=opt_str(entity, "datasource_id") or datasource_id,
        applied_secret=opt_str(entity, "applied_secret"),
        applied_version=opt_str(entity, "applied_version"),
        applied_at=opt_float(entity, "applied_at"),
        rejections=TargetRecord.parse_rejections(read_chunked(entity, "rejections")),
        attempts=TargetRecord.parse_attempts(read_chunked(entity, "attempts")),
        lease_owner=opt_str(entity, "lease_owner"),
        lease_id=opt_str(entity, "lease_id"),
        lease_expires=opt_float(entity, "lease_expires"),
        etag=str(entity["etag"]),
        intent=Intent.parse(opt_str(entity, "intent")),
    )


def account_entity(record: AccountVersion) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": table_key(record.account),
        "RowKey": account_row_key(record.secret, record.version),
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
    write_chunked(entity, "accepted", record.accepted_json())
    write_chunked(entity, "evidence", record.evidence_json())
    return entity


def account_from_entity(entity: Mapping[str, Any]) -> AccountVersion:
    account, secret, version = (
        opt_str(entity, "account"),
        opt_str(entity, "secret_name"),
        opt_str(entity, "secret_version"),
    )
    if account is None or secret is None or version is None:
        raise LedgerError("corrupt ledger record: account version")
    licences, contradicted_at, grants = AccountVersion.parse_evidence(read_chunked(entity, "evidence"))
    return AccountVersion(
        account=account,
        secret=secret,
        version=version,
        verdict=opt_str(entity, "verdict"),
        reason=opt_str(entity, "reason"),
        verdict_at=opt_float(entity, "verdict_at"),
        accepted=AccountVersion.parse_accepted(read_chunked(entity, "accepted")),
        probe_owner=opt_str(entity, "probe_owner"),
        probe_locator=opt_str(entity, "probe_locator"),
        probe_target=opt_str(entity, "probe_target"),
        probe_expires=opt_float(entity, "probe_expires"),
        presentations=count(entity, "presentations"),
        overrides=count(entity, "overrides"),
        etag=str(entity["etag"]),
        licences=licences,
        contradicted_at=contradicted_at,
        grants=grants,
    )


def event_entity(event: str, now: float) -> dict[str, Any]:
    """The entity that marks normalised event id ``event`` seen at ``now``."""
    pk, rk = event_keys(event)
    return {
        "PartitionKey": pk,
        "RowKey": rk,
        "event_id": event[:_MAX_EVENT_ID_KEPT],
        "seen_at": now,
        "write_id": uuid.uuid4().hex,
    }


def outcome_entity(outcome: Outcome, at: float, seq: int) -> dict[str, Any]:
    """The entity of ``outcome`` at time ``at`` (checked by the caller to lie in
    ``[0, MAX_OUTCOME_TIME)``), ``seq`` its insertion stamp in this process: only the fields that
    are not None, and the keys."""
    entity: dict[str, Any] = {
        "PartitionKey": outcome_partition(at),
        "RowKey": f"{_INVERT_US - int(at * 1_000_000):016d}-{_INVERT_SEQ - seq:020d}-{uuid.uuid4().hex[:8]}",
    }
    for name, value in outcome.to_dict().items():
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # time, duration: always Edm.Double, never Int32/Int64
        entity[name] = value
    return entity


def dataset_entity(record: DatasetRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": table_key(record.workspace_id),
        "RowKey": table_key(record.dataset_id),
        "workspace_id": record.workspace_id,
        "dataset_id": record.dataset_id,
        "fingerprint": record.fingerprint,
        "learnt_at": float(record.learnt_at),
        "refreshable": record.refreshable,
    }
    write_chunked(entity, "sources", record.sources_json())
    return entity


def dataset_from_entity(entity: Mapping[str, Any]) -> DatasetRecord:
    workspace, dataset = opt_str(entity, "workspace_id"), opt_str(entity, "dataset_id")
    if workspace is None or dataset is None:
        raise LedgerError("corrupt ledger record: inventory")
    refreshable = entity.get("refreshable", True)
    return DatasetRecord(
        workspace_id=workspace,
        dataset_id=dataset,
        fingerprint=opt_str(entity, "fingerprint") or "",
        learnt_at=opt_float(entity, "learnt_at") or 0.0,
        sources=DatasetRecord.parse_sources(read_chunked(entity, "sources")),
        refreshable=bool(refreshable),
    )


# -- properties -----------------------------------------------------------------------------------


def write_chunked(entity: dict[str, Any], name: str, text: str) -> None:
    chunks = [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [""]
    if len(chunks) > _MAX_CHUNKS:
        raise LedgerError(f"ledger record too large: {name} ({len(text)} characters)")
    entity[name] = chunks[0]
    for i, chunk in enumerate(chunks[1:], start=1):
        entity[f"{name}_{i}"] = chunk


def read_chunked(entity: Mapping[str, Any], name: str) -> str | None:
    first = opt_str(entity, name)
    if first is None:
        return None
    parts = [first]
    for i in itertools.count(1):
        part = opt_str(entity, f"{name}_{i}")
        if part is None:
            break
        parts.append(part)
    return "".join(parts)


def opt_str(entity: Mapping[str, Any], name: str) -> str | None:
    value = entity.get(name)
    if value is not None and not isinstance(value, str):
        raise LedgerError(f"corrupt ledger record: {name}")
    return value


def opt_float(entity: Mapping[str, Any], name: str) -> float | None:
    value = entity.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LedgerError(f"corrupt ledger record: {name}")
    return float(value)


def count(entity: Mapping[str, Any], name: str) -> int:
    value = entity.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LedgerError(f"corrupt ledger record: {name}")
    return value
