"""The ledger's records that are not evidence: leases, the stored form of a target, outcomes, the
inventory's datasets, and the errors and limits of the ledger (see :mod:`remediation.ledger`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Final

from remediation.errors import LedgerError
from remediation.safety.evidence import Intent, Rejection, TargetState, is_number, json_list

__all__ = [
    "DEFAULT_OUTCOME_RETENTION_SECONDS",
    "MAX_ACCOUNT_LENGTH",
    "MAX_ATTEMPTS_KEPT",
    "MAX_REASON_LENGTH",
    "SCHEMA_VERSION",
    "DatasetRecord",
    "InventorySource",
    "Lease",
    "LeaseLost",
    "LedgerConflict",
    "LedgerError",
    "Outcome",
    "PruneResult",
    "TargetRecord",
    "utc_day",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 5
"""Version of the SQLite schema, kept in ``PRAGMA user_version``."""

MAX_ATTEMPTS_KEPT: Final = 64
"""Attempt timestamps kept per target (the newest). Any sane attempt bound is far below this."""

DEFAULT_OUTCOME_RETENTION_SECONDS: Final = 90 * 86400.0
"""Outcomes older than this are removed by :meth:`Ledger.prune` unless told otherwise."""

MAX_ACCOUNT_LENGTH: Final = 512
"""Longest account key (characters, after normalisation) :class:`AccountVersion` accepts."""

MAX_REASON_LENGTH: Final = 1000
"""Longest reason kept in an :class:`AccountVersion` (a longer one is cut, marked with ``…``)."""


class LeaseLost(LedgerError):
    """The caller's lease on a target is no longer the current one: another owner took it over
    (after it expired) or it was released. The caller must stop working on that target."""


class LedgerConflict(LedgerError):
    """A conditional write kept losing to concurrent writers and the ledger gave up."""


def utc_day(now: float) -> str:
    """The UTC calendar day of epoch seconds ``now`` as ``YYYY-MM-DD`` (the refresh budget's key)."""
    return datetime.fromtimestamp(check_time(now, "now"), tz=UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Lease:
    """Proof of being the one writer of a target, as granted by :meth:`Ledger.acquire_lease`.

    ``lease_id`` identifies this grant: a renewal keeps it, a take-over by another owner replaces
    it, which is how the ledger tells a stale holder from the current one.
    """

    gateway_id: str
    datasource_id: str
    owner: str
    lease_id: str
    expires: float

    def expired(self, now: float) -> bool:
        """True when the lease may be taken over by another owner (``now >= expires``)."""
        return now >= self.expires


@dataclass(frozen=True)
class TargetRecord:
    """The stored form of a target (one entity): :class:`TargetState` plus the current lease id.

    Backends store and return it; only :class:`~remediation.ledger.base.EntityLedgerBase`
    decides what goes into it.
    """

    gateway_id: str
    datasource_id: str
    applied_secret: str | None = None
    applied_version: str | None = None
    applied_at: float | None = None
    rejections: tuple[Rejection, ...] = ()
    attempts: tuple[float, ...] = ()
    lease_owner: str | None = None
    lease_id: str | None = None
    lease_expires: float | None = None
    etag: str | None = None
    intent: Intent | None = None

    def state(self) -> TargetState:
        """The public view (without the lease id)."""
        return TargetState(
            gateway_id=self.gateway_id,
            datasource_id=self.datasource_id,
            applied_secret=self.applied_secret,
            applied_version=self.applied_version,
            applied_at=self.applied_at,
            rejections=self.rejections,
            attempts=self.attempts,
            lease_owner=self.lease_owner if self.lease_id is not None else None,
            lease_expires=self.lease_expires if self.lease_id is not None else None,
            etag=self.etag,
            intent=self.intent,
        )

    def held_by(self, lease: Lease) -> bool:
        """True when ``lease`` is the current grant on this target (expired or not)."""
        return (
            self.lease_id is not None and self.lease_id == lease.lease_id and self.lease_owner == lease.owner
        )

    def rejections_json(self) -> str:
        """``rejections`` as a JSON array (the stored form)."""
        return json.dumps([{"secret": r.secret, "version": r.version, "at": r.at} for r in self.rejections])

    def attempts_json(self) -> str:
        """``attempts`` as a JSON array of numbers (the stored form)."""
        return json.dumps(list(self.attempts))

    @staticmethod
    def parse_rejections(text: str | None) -> tuple[Rejection, ...]:
        """Read :meth:`rejections_json` back; raises :class:`LedgerError` if it is malformed."""
        items = json_list(text, "rejections")
        out: list[Rejection] = []
        for item in items:
            if not isinstance(item, dict):
                raise LedgerError("corrupt ledger record: rejections")
            secret, version, at = item.get("secret"), item.get("version"), item.get("at")
            if not isinstance(secret, str) or not isinstance(version, str) or not is_number(at):
                raise LedgerError("corrupt ledger record: rejections")
            out.append(Rejection(secret=secret, version=version, at=float(at)))
        return tuple(out)

    @staticmethod
    def parse_attempts(text: str | None) -> tuple[float, ...]:
        """Read :meth:`attempts_json` back; raises :class:`LedgerError` if it is malformed."""
        out: list[float] = []
        for item in json_list(text, "attempts"):
            if not is_number(item):
                raise LedgerError("corrupt ledger record: attempts")
            out.append(float(item))
        return tuple(out)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One outcome of the healer for a target or a dataset. No field can hold a secret value.

    ``time`` is epoch seconds; ``duration`` is seconds. ``secret_name``/``secret_version`` name a
    Key Vault secret version; they are references, not values. ``account`` is the account key the
    per-account rules count a target's sign-ins against (:func:`remediation.rules.accounts.account_key`:
    ``user:<bare user name>``, ``app:<client id>`` or ``secret:<secret name>``): an identifier
    from the bindings file or from a JSON secret's ``username``, never a credential; None for
    datasets and summaries.
    """

    time: float
    trigger: str | None = None
    correlation_id: str | None = None
    binding: str | None = None
    secret_name: str | None = None
    secret_version: str | None = None
    gateway_id: str | None = None
    datasource_id: str | None = None
    workspace_id: str | None = None
    dataset_id: str | None = None
    action: str | None = None
    reason: str | None = None
    refresh_request_id: str | None = None
    refresh_state: str | None = None
    duration: float | None = None
    account: str | None = None  # last: the column schema version 4 added

    def to_dict(self) -> dict[str, object]:
        """All fields by name (None included), JSON-serialisable."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Outcome:
        """Inverse of :meth:`to_dict`. Unknown keys are ignored; wrong types raise ValueError."""
        time = data.get("time")
        if not is_number(time):
            raise ValueError("outcome time must be a number")
        duration = data.get("duration")
        if duration is not None and not is_number(duration):
            raise ValueError("outcome duration must be a number")

        def text(name: str) -> str | None:
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"outcome {name} must be a string")
            return value

        return cls(
            time=float(time),
            trigger=text("trigger"),
            correlation_id=text("correlation_id"),
            binding=text("binding"),
            account=text("account"),
            secret_name=text("secret_name"),
            secret_version=text("secret_version"),
            gateway_id=text("gateway_id"),
            datasource_id=text("datasource_id"),
            workspace_id=text("workspace_id"),
            dataset_id=text("dataset_id"),
            action=text("action"),
            reason=text("reason"),
            refresh_request_id=text("refresh_request_id"),
            refresh_state=text("refresh_state"),
            duration=None if duration is None else float(duration),
        )


@dataclass(frozen=True)
class PruneResult:
    """How many records :meth:`Ledger.prune` removed, per kind."""

    events: int = 0
    outcomes: int = 0
    refresh_days: int = 0


@dataclass(frozen=True)
class InventorySource:
    """A gateway data source a dataset uses, as the inventory learnt it: its ids, its type and
    the connection details a binding's ``match`` compares (strings, URLs masked). No credential."""

    gateway_id: str
    datasource_id: str
    datasource_type: str | None = None
    connection_details: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return self.gateway_id.lower(), self.datasource_id.lower()

    def details(self) -> dict[str, str]:
        return dict(self.connection_details)


@dataclass(frozen=True)
class DatasetRecord:
    """The inventory's entry for one dataset: the gateway data sources it uses, learnt at
    ``learnt_at`` (epoch seconds) from ``GET .../datasets/{d}/datasources``. ``fingerprint`` is
    what the workspace's dataset list said of it then (a change means: read its sources again);
    ``refreshable`` is False for datasets Power BI cannot refresh (their sources are not read)."""

    workspace_id: str
    dataset_id: str
    fingerprint: str
    learnt_at: float
    sources: tuple[InventorySource, ...] = ()
    refreshable: bool = True

    def sources_json(self) -> str:
        """``sources`` as the stored JSON array."""
        return json.dumps(
            [
                {
                    "gatewayId": s.gateway_id,
                    "datasourceId": s.datasource_id,
                    "datasourceType": s.datasource_type,
                    "connectionDetails": dict(s.connection_details),
                }
                for s in self.sources
            ],
            separators=(",", ":"),
        )

    @staticmethod
    def parse_sources(text: str | None) -> tuple[InventorySource, ...]:
        """Read :meth:`sources_json` back; raises :class:`LedgerError` if it is malformed."""
        out: list[InventorySource] = []
        for item in json_list(text, "sources"):
            if not isinstance(item, dict):
                raise LedgerError("corrupt ledger record: sources")
            gateway, datasource = item.get("gatewayId"), item.get("datasourceId")
            kind, details = item.get("datasourceType"), item.get("connectionDetails") or {}
            if (
                not isinstance(gateway, str)
                or not isinstance(datasource, str)
                or not isinstance(details, dict)
            ):
                raise LedgerError("corrupt ledger record: sources")
            out.append(
                InventorySource(
                    gateway,
                    datasource,
                    kind if isinstance(kind, str) else None,
                    tuple(sorted((str(k), v) for k, v in details.items() if isinstance(v, str))),
                )
            )
        return tuple(out)


def normalised_record(record: DatasetRecord) -> DatasetRecord:
    check_time(record.learnt_at, "learnt_at")
    return replace(
        record,
        workspace_id=norm(record.workspace_id, "workspace_id"),
        dataset_id=norm(record.dataset_id, "dataset_id"),
        sources=tuple(
            replace(
                s,
                gateway_id=norm(s.gateway_id, "gateway_id"),
                datasource_id=norm(s.datasource_id, "datasource_id"),
            )
            for s in record.sources
        ),
    )


def norm(value: str, what: str) -> str:
    """``value`` stripped and lower-cased; ValueError when that is empty (ids, names, versions)."""
    normalised = value.strip().lower()
    if not normalised:
        raise ValueError(f"{what} must not be empty")
    return normalised


def check_time(value: float, what: str) -> float:
    """``value`` as float epoch seconds; ValueError when it is not a finite number."""
    if not is_number(value):
        raise ValueError(f"{what} must be finite epoch seconds")
    return float(value)
