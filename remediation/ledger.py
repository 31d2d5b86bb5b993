"""The ledger: what the healer knows about each target, and the record of what it did.

The healer's safety rules live or die here, so the ledger keeps them as invariants rather than
leaving them to callers:

* **Idempotence.** Per target ``(gatewayId, datasourceId)`` the ledger holds the secret name and
  version last applied, and when. A target that already holds version V is not patched with V again.
  When Power BI resets a target's credentials (Take Over of a dataset), :meth:`Ledger.forget_applied`
  clears what it holds, so the next heal presents the current version again.
* **Lockout safety.** Per target, the set of versions the source *rejected* only ever grows: no
  call removes a rejection, and a rejection is recorded even by a writer that has just lost its
  lease (a set union cannot conflict with anybody, and forgetting a rejection invites an account
  lockout). Credential-update attempts are kept with their timestamps (the newest
  :data:`MAX_ATTEMPTS_KEPT`), so the healer can bound attempts per time window.
* **At most one failed sign-in per account and secret version.** Lockout policies count failed
  sign-ins per *account*, whatever the number of data sources signing in as it. Per
  ``(account, secret, version)`` the ledger keeps an :class:`AccountVersion`: before presenting a
  version the healer *claims* the presentation (:meth:`Ledger.claim_presentation`); of any number
  of concurrent claimers one is granted the *probe* and the others are told to wait, until the
  version is accepted somewhere (then it fans out freely to that locator). A rejection, or a
  presentation whose verdict never came back (the probe expired: the presenter died or lost the
  answer), stops the version for that account for good; only an operator's
  :meth:`Ledger.allow_again` lets it be presented once more. These records are never pruned.
* **One writer per target.** A lease per target: it is granted when there is none, when the
  current one has expired (``now >= expires``: crash safety, a dead writer's lease is taken over)
  or when the same owner asks again (a renewal). Every grant is a compare-and-swap on the target's
  ETag, so of any number of threads or processes racing for a free lease exactly one wins. The
  applied version is written only by the current lease holder: after a take-over the old holder's
  writes raise :class:`LeaseLost`.
* **Event dedupe.** :meth:`Ledger.mark_event_seen` answers True exactly once per event id, under
  any concurrency (Event Grid delivers at least once). Seen ids are pruned after a retention.
* **Daily refresh budget.** A per-dataset, per-UTC-day counter of refresh POSTs, incremented
  atomically.
* **No secret value, ever.** No record here has a field that could hold a password, key or token:
  secrets are referred to by Key Vault name and version only.

All times are float epoch seconds passed in by the caller; the ledger has no clock of its own.
Gateway, data source, dataset and event ids, secret names and versions are normalised to
lower case (Key Vault names and versions, and Power BI's GUIDs, are case-insensitive), so callers
may pass them in any case; :class:`TargetState` offers case-insensitive helpers for comparisons.

**Storage model.** The interface is shaped for Azure Table storage: every write is a single
entity insert or a conditional (``If-Match`` ETag) replace, never a multi-row transaction.
:class:`~remediation.ledger_base.EntityLedgerBase` implements all target semantics (leases,
applied, rejected, attempts) on top of three primitives -- read one target entity, insert it if
absent, replace it if its ETag still matches -- so a Table storage backend only supplies those
primitives plus the simple single-entity operations for events, outcomes and refresh counters.
Presentation verdicts per account (:class:`AccountVersion`) are built the same way, on three
primitives of their own. Suggested mapping:

===============  ===========================  =============================================
table            PartitionKey / RowKey        properties
===============  ===========================  =============================================
targets          gateway id / datasource id   applied*, rejections (JSON), attempts (JSON),
                                              lease_owner, lease_id, lease_expires; ETag
accounts         account / secret ``|``       account, secret_name, secret_version, verdict,
                 version (keys derived: the   reason, verdict_at, accepted (JSON), probe_*,
                 account is any text)         presentations, overrides, evidence (JSON); ETag
seenevents       first 2 chars / event id     seen_at (insert; 409 Conflict = duplicate)
outcomes         UTC day / inverted time+uuid Outcome fields (newest first within a day)
refreshposts     UTC day / dataset id         posts (conditional replace on ETag)
inventory        workspace id / dataset id    fingerprint, learnt_at, sources (JSON), refreshable
markers          "marker" / name              mark, set_at (the sweep's cursor, the pause, ...)
===============  ===========================  =============================================

In SQLite the accounts table is ``account_versions``, one row per (account, secret, version),
``accepted`` a JSON column, so every change stays a one-row write.

:class:`~remediation.ledger_sqlite.SqliteLedger` is the embedded backend
(``REMEDIATION_STATE_PATH``): one SQLite file in WAL mode with a busy timeout, safe for a pool of
threads and for several processes at once.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, Literal, Protocol, TypeGuard, runtime_checkable

from remediation.errors import RemediationError

__all__ = [
    "DEFAULT_OUTCOME_RETENTION_SECONDS",
    "MAX_ACCOUNT_LENGTH",
    "MAX_ATTEMPTS_KEPT",
    "MAX_REASON_LENGTH",
    "SCHEMA_VERSION",
    "AccountVersion",
    "Claim",
    "DatasetRecord",
    "Intent",
    "InventorySource",
    "Lease",
    "LeaseLost",
    "Ledger",
    "LedgerConflict",
    "LedgerError",
    "Outcome",
    "PruneResult",
    "Rejection",
    "TargetRecord",
    "TargetState",
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


class LedgerError(RemediationError):
    """The ledger could not be read or written (storage error, closed ledger, corrupt record)."""


class LeaseLost(LedgerError):
    """The caller's lease on a target is no longer the current one: another owner took it over
    (after it expired) or it was released. The caller must stop working on that target."""


class LedgerConflict(LedgerError):
    """A conditional write kept losing to concurrent writers and the ledger gave up."""


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def utc_day(now: float) -> str:
    """The UTC calendar day of epoch seconds ``now`` as ``YYYY-MM-DD`` (the refresh budget's key)."""
    return datetime.fromtimestamp(_check_time(now, "now"), tz=UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Rejection:
    """A secret version the source rejected for one target, and when that was recorded."""

    secret: str
    version: str
    at: float


@dataclass(frozen=True)
class Intent:
    """A presentation about to be sent to a target, recorded before it is sent (with the attempt)
    and cleared with its verdict. One that a later lease holder finds is a presentation whose
    verdict was never recorded (the worker died, or the ledger failed after sending): the
    version is in doubt for ``account`` (the healer records it so before anything else)."""

    secret: str
    version: str
    account: str
    locator: str
    at: float
    lease_id: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "secret": self.secret,
                "version": self.version,
                "account": self.account,
                "locator": self.locator,
                "at": self.at,
                "leaseId": self.lease_id,
            },
            separators=(",", ":"),
        )

    @staticmethod
    def parse(text: str | None) -> Intent | None:
        """Read :meth:`to_json` back (empty: none); raises :class:`LedgerError` if malformed."""
        if text is None or not text.strip():
            return None
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise LedgerError("corrupt ledger record: intent") from exc
        if not isinstance(doc, dict):
            raise LedgerError("corrupt ledger record: intent")
        names = ("secret", "version", "account", "locator", "leaseId")
        if not all(isinstance(doc.get(n), str) for n in names) or not _is_number(doc.get("at")):
            raise LedgerError("corrupt ledger record: intent")
        return Intent(
            doc["secret"], doc["version"], doc["account"], doc["locator"], float(doc["at"]), doc["leaseId"]
        )


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
class TargetState:
    """What the ledger knows about one target. An unknown target has the empty state (etag None).

    ``attempts`` are epoch seconds, oldest first, at most :data:`MAX_ATTEMPTS_KEPT` of them.
    ``etag`` changes with every write to the target (lease grants included).
    """

    gateway_id: str
    datasource_id: str
    applied_secret: str | None = None
    applied_version: str | None = None
    applied_at: float | None = None
    rejections: tuple[Rejection, ...] = ()
    attempts: tuple[float, ...] = ()
    lease_owner: str | None = None
    lease_expires: float | None = None
    etag: str | None = None
    intent: Intent | None = None

    @property
    def rejected_versions(self) -> frozenset[str]:
        """Versions the source rejected for this target: never to be presented to it again."""
        return frozenset(r.version for r in self.rejections)

    def is_rejected(self, version: str) -> bool:
        """True when ``version`` (any case) was rejected by this target's source."""
        return version.strip().lower() in self.rejected_versions

    def holds(self, secret: str, version: str) -> bool:
        """True when the target was last given exactly this secret version (any case)."""
        return (
            self.applied_secret == secret.strip().lower() and self.applied_version == version.strip().lower()
        )

    def attempts_since(self, since: float) -> int:
        """Number of recorded attempts at or after ``since``."""
        return sum(1 for t in self.attempts if t >= since)

    def lease_free(self, now: float) -> bool:
        """True when nobody holds an unexpired lease on this target at ``now``."""
        return self.lease_owner is None or self.lease_expires is None or now >= self.lease_expires


@dataclass(frozen=True)
class TargetRecord:
    """The stored form of a target (one entity): :class:`TargetState` plus the current lease id.

    Backends store and return it; only :class:`~remediation.ledger_base.EntityLedgerBase`
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
        items = _json_list(text, "rejections")
        out: list[Rejection] = []
        for item in items:
            if not isinstance(item, dict):
                raise LedgerError("corrupt ledger record: rejections")
            secret, version, at = item.get("secret"), item.get("version"), item.get("at")
            if not isinstance(secret, str) or not isinstance(version, str) or not _is_number(at):
                raise LedgerError("corrupt ledger record: rejections")
            out.append(Rejection(secret=secret, version=version, at=float(at)))
        return tuple(out)

    @staticmethod
    def parse_attempts(text: str | None) -> tuple[float, ...]:
        """Read :meth:`attempts_json` back; raises :class:`LedgerError` if it is malformed."""
        out: list[float] = []
        for item in _json_list(text, "attempts"):
            if not _is_number(item):
                raise LedgerError("corrupt ledger record: attempts")
            out.append(float(item))
        return tuple(out)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One outcome of the healer for a target or a dataset. No field can hold a secret value.

    ``time`` is epoch seconds; ``duration`` is seconds. ``secret_name``/``secret_version`` name a
    Key Vault secret version; they are references, not values. ``account`` is the account key the
    per-account rules count a target's sign-ins against (:func:`remediation.accounts.account_key`:
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
        if not _is_number(time):
            raise ValueError("outcome time must be a number")
        duration = data.get("duration")
        if duration is not None and not _is_number(duration):
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
        for item in _json_list(text, "sources"):
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


def _normalised_record(record: DatasetRecord) -> DatasetRecord:
    _check_time(record.learnt_at, "learnt_at")
    return replace(
        record,
        workspace_id=_norm(record.workspace_id, "workspace_id"),
        dataset_id=_norm(record.dataset_id, "dataset_id"),
        sources=tuple(
            replace(
                s,
                gateway_id=_norm(s.gateway_id, "gateway_id"),
                datasource_id=_norm(s.datasource_id, "datasource_id"),
            )
            for s in record.sources
        ),
    )


class Claim(StrEnum):
    """The answer of :meth:`Ledger.claim_presentation`: may the caller present the version now?"""

    GRANTED = "granted"
    """The caller presents the version now, and must record a verdict afterwards."""
    ACCEPTED = "accepted"
    """The version was accepted at this locator before: present it freely (fan-out)."""
    BUSY = "busy"
    """Another owner is presenting it first, right now (an unexpired probe): wait."""
    REJECTED = "rejected"
    """The account's source rejected it: never present it again automatically."""
    IN_DOUBT = "in-doubt"
    """It was presented and its verdict never recorded: never present it again automatically."""


@dataclass(frozen=True)
class AccountVersion:
    """What the ledger knows about presenting one secret version to one account. No secret value.

    An *account* is what a source's lockout policy counts failed sign-ins against; the healer
    chooses its key (e.g. ``"user:contoso\\svc_pbi"`` or ``"secret:sql-key"``), and the ledger
    treats it as opaque text (normalised with ``strip().lower()``, at most
    :data:`MAX_ACCOUNT_LENGTH` characters). ``secret`` is the Key Vault secret's *name*.

    ``verdict`` is None, ``"rejected"`` or ``"in-doubt"``; ``reason`` and ``verdict_at`` tell
    why and when the verdict last changed (set, or cleared by an acceptance or an operator).
    ``accepted`` lists the locators (source hosts, normalised to lower case; ``""`` = unknown)
    where the version was accepted. The ``probe_*`` fields describe the one presentation in
    flight, if any. ``presentations`` counts the probes granted (each is a possible failed
    sign-in); ``overrides`` the times an operator allowed the version again. ``etag`` changes
    with every write (None: never written).

    **Evidence has time** (the rules are :mod:`remediation.safety.presenting`'s):
    ``licences`` hold, per locator and operator request (a command's correlation id, shared by
    the parts of its fan-out), when the presentation last seen accepted there was *sent*;
    ``contradicted_at`` is the last time evidence spoke against the version (a rejection, an
    in-doubt answer, a refresh that failed on it): an acceptance licenses nothing unless it is
    younger. ``grants`` are the operator requests (``present again``) already consumed: each
    lifts a verdict once.
    """

    account: str
    secret: str
    version: str
    verdict: str | None = None
    reason: str | None = None
    verdict_at: float | None = None
    accepted: tuple[str, ...] = ()
    probe_owner: str | None = None
    probe_locator: str | None = None
    probe_target: str | None = None
    probe_expires: float | None = None
    presentations: int = 0
    overrides: int = 0
    etag: str | None = None
    licences: tuple[tuple[str, float, str], ...] = ()
    contradicted_at: float | None = None
    grants: tuple[str, ...] = ()

    def licence(self, locator: str, request: str) -> float | None:
        """When the latest presentation of ``request`` accepted at ``locator`` was sent (None:
        none, or only acceptances recorded before times were kept, which license nothing)."""
        wanted, by = locator.strip().lower(), request.strip()
        times = [at for where, at, who in self.licences if where == wanted and who == by]
        return max(times) if times else None

    def evidence_json(self) -> str:
        """``licences``, ``contradicted_at`` and ``grants`` as one JSON object (stored form)."""
        return json.dumps(
            {
                "licences": [[where, at, who] for where, at, who in self.licences],
                "contradictedAt": self.contradicted_at,
                "grants": list(self.grants),
            },
            separators=(",", ":"),
        )

    @staticmethod
    def parse_evidence(
        text: str | None,
    ) -> tuple[tuple[tuple[str, float, str], ...], float | None, tuple[str, ...]]:
        """Read :meth:`evidence_json` back (empty text: no evidence); raises :class:`LedgerError`
        if it is malformed."""
        if text is None or not text.strip():
            return (), None, ()
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise LedgerError("corrupt ledger record: evidence") from exc
        if not isinstance(doc, dict):
            raise LedgerError("corrupt ledger record: evidence")
        licences, contradicted = doc.get("licences", []), doc.get("contradictedAt")
        grants = doc.get("grants", [])
        if (
            not isinstance(licences, list)
            or not all(
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], str)
                and _is_number(item[1])
                and isinstance(item[2], str)
                for item in licences
            )
            or (contradicted is not None and not _is_number(contradicted))
            or not isinstance(grants, list)
            or not all(isinstance(g, str) for g in grants)
        ):
            raise LedgerError("corrupt ledger record: evidence")
        return (
            tuple((str(w), float(t), str(r)) for w, t, r in licences),
            None if contradicted is None else float(contradicted),
            tuple(grants),
        )

    def probe_active(self, now: float) -> bool:
        """True when a probe is in flight and has not expired at ``now``."""
        return self.probe_owner is not None and self.probe_expires is not None and now < self.probe_expires

    def accepted_json(self) -> str:
        """``accepted`` as a JSON array of strings (the stored form)."""
        return json.dumps(list(self.accepted))

    @staticmethod
    def parse_accepted(text: str | None) -> tuple[str, ...]:
        """Read :meth:`accepted_json` back; raises :class:`LedgerError` if it is malformed."""
        items = _json_list(text, "accepted")
        if not all(isinstance(item, str) for item in items):
            raise LedgerError("corrupt ledger record: accepted")
        return tuple(str(item) for item in items)


# ---------------------------------------------------------------------------------------------
# Interface
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class Ledger(Protocol):
    """The healer's durable memory. Implementations are safe to share between threads.

    Every method that takes ids normalises them to lower case and raises ValueError for an empty
    id or a non-finite time. Storage failures raise :class:`LedgerError`.
    """

    def target_state(self, gateway_id: str, datasource_id: str) -> TargetState:
        """The target's state; the empty state (etag None) for a target never written."""
        ...

    def acquire_lease(
        self, gateway_id: str, datasource_id: str, owner: str, now: float, ttl: float
    ) -> Lease | None:
        """Grant ``owner`` the target's lease until ``now + ttl``, or return None.

        Granted when there is no lease, the current one expired (``now >= expires``; a take-over
        gives a new lease id, so the previous holder's writes raise :class:`LeaseLost`), or
        ``owner`` already holds it (a renewal, same lease id). Atomic: of concurrent callers
        racing for a free lease exactly one gets it. ``owner`` must be unique per concurrent
        writer (e.g. host, process and invocation id).
        """
        ...

    def renew_lease(self, lease: Lease, now: float, ttl: float) -> Lease:
        """Extend ``lease`` to ``now + ttl``. Raises :class:`LeaseLost` if it is not current."""
        ...

    def release_lease(self, lease: Lease) -> bool:
        """Give the lease up; True if it was still current (a lost lease is left alone)."""
        ...

    def record_applied(self, lease: Lease, secret: str, version: str, now: float) -> None:
        """Record that the target now holds ``secret``/``version`` (applied at ``now``).

        Written only while ``lease`` is current; otherwise nothing is written and
        :class:`LeaseLost` is raised. An expired lease nobody took over is still current.
        """
        ...

    def record_rejected(self, lease: Lease, secret: str, version: str, now: float) -> None:
        """Add ``version`` to the target's rejected set, for good.

        The rejection is recorded even when ``lease`` is no longer current (it is a fact, and
        losing it could lock the account); :class:`LeaseLost` is raised afterwards in that case.
        """
        ...

    def record_attempt(self, lease: Lease, now: float, *, intent: Intent | None = None) -> None:
        """Record a credential-update attempt at ``now`` (only the newest
        :data:`MAX_ATTEMPTS_KEPT` are kept), and the ``intent`` of the presentation about to be
        sent (its ``lease_id`` is ``lease``'s). Like rejections, recorded even when ``lease`` is
        no longer current, and then :class:`LeaseLost` is raised (the intent is then not kept)."""
        ...

    def clear_intent(self, lease: Lease) -> None:
        """Forget the intent ``lease`` recorded, once its verdict is recorded (an intent of
        another lease is left alone: only a verdict, or :meth:`doubt_intent`, resolves it).
        :meth:`record_applied` and :meth:`record_rejected` clear it too."""
        ...

    def doubt_intent(self, lease: Lease, intent: Intent) -> None:
        """Forget ``intent`` (recorded under another lease, now expired or released) once the
        caller has recorded its version in doubt for its account; written only while ``lease`` is
        current (else :class:`LeaseLost`), and only if the target still holds that intent."""
        ...

    def attempts_since(self, gateway_id: str, datasource_id: str, since: float) -> int:
        """Number of recorded attempts on the target at or after ``since``."""
        ...

    def forget_applied(self, gateway_id: str, datasource_id: str) -> bool:
        """Forget which secret version the target holds (Power BI reset its credentials, e.g. a
        Take Over of a dataset that uses it), so that the next heal presents the current version
        again; True when the ledger said it held one. Written whoever holds the lease (it is a
        fact about Power BI, like a rejection: a writer that applied it just before cannot tell
        whether its PATCH landed before the reset, and presenting an accepted version once more
        is harmless); rejections, attempts and the lease are kept."""
        ...

    def mark_event_seen(self, event_id: str, now: float) -> bool:
        """True the first time ``event_id`` is marked (until pruned), False for a duplicate.

        Atomic: of concurrent callers with the same id exactly one gets True.
        """
        ...

    def event_seen(self, event_id: str) -> bool:
        """Whether ``event_id`` has been marked (and not pruned). Read-only: callers that must
        not drop a redelivery check this first and mark the event only after handling it."""
        ...

    def prune(
        self,
        now: float,
        retention_seconds: float,
        *,
        outcome_retention_seconds: float = DEFAULT_OUTCOME_RETENTION_SECONDS,
    ) -> PruneResult:
        """Remove seen event ids older than ``now - retention_seconds``, outcomes older than
        ``now - outcome_retention_seconds`` and refresh counters of days before yesterday (UTC).

        Target state (applied and rejected versions) is never pruned. Keep ``retention_seconds``
        above Event Grid's retry period (24 h by default) or redeliveries are seen as new.
        """
        ...

    def add_outcome(self, outcome: Outcome) -> None:
        """Append ``outcome`` to the history (stored as given)."""
        ...

    def outcomes(self, since: float | None = None, limit: int = 500) -> list[Outcome]:
        """Outcomes with ``time >= since`` (all if None), newest first, at most ``limit``."""
        ...

    def refresh_posts(self, dataset_id: str, day: str) -> int:
        """Refresh POSTs recorded for the dataset on UTC ``day`` (``YYYY-MM-DD``); 0 if none."""
        ...

    def record_refresh_post(self, dataset_id: str, day: str) -> int:
        """Count one more refresh POST for the dataset on ``day``; returns the new count. Atomic."""
        ...

    def inventory(self, workspace_id: str | None = None) -> list[DatasetRecord]:
        """The inventory's records of ``workspace_id`` (every workspace if None), in no order."""
        ...

    def put_inventory(self, records: Iterable[DatasetRecord]) -> None:
        """Write inventory records (insert or replace, one entity each; batched per workspace
        where the backend can). A record older than the stored one (``learnt_at``) does not
        replace it, atomically: of concurrent writers (threads, processes, instances) of one
        dataset the newest observation stays, whatever the order of the writes."""
        ...

    def drop_inventory(self, workspace_id: str, dataset_ids: Iterable[str]) -> None:
        """Forget datasets that no longer exist (absent ones are ignored)."""
        ...

    def marker(self, name: str) -> str | None:
        """A named value kept between runs (the sweep's scan cursor, the inventory's last full
        read); None if never set."""
        ...

    def set_marker(self, name: str, value: str, now: float) -> None:
        """Set the named value (one entity; the last writer wins)."""
        ...

    def raise_marker(self, name: str, value: float, now: float) -> float:
        """Make the named marker hold the number ``value`` unless it holds a larger one already
        (a missing or non-numeric marker counts as lower); the number it holds afterwards.

        Atomic, only ever extends: of concurrent writers the largest value stays, whatever the
        order (the shared throttling pause: a shorter pause must never shorten a longer one).
        ``value`` must be a finite number of zero or more.
        """
        ...

    def account_version(self, account: str, secret: str, version: str) -> AccountVersion:
        """What is known about presenting ``secret``/``version`` to ``account``; the empty state
        (etag None) when nothing was ever recorded."""
        ...

    def claim_presentation(
        self,
        account: str,
        secret: str,
        version: str,
        *,
        locator: str,
        target: str,
        owner: str,
        now: float,
        ttl: float,
        request: str = "",
    ) -> tuple[Claim, AccountVersion]:
        """Ask to present ``version`` to ``account`` at ``locator`` (for ``target``), for the
        command ``request`` (its correlation id); the answer and the state after it. The rule is
        :func:`remediation.safety.presenting.claim_step`: a verdict answers REJECTED / IN_DOUBT;
        a locator licensed for ``request`` by a recent acceptance (younger than the last
        contradiction) ACCEPTED; otherwise one probe at a time per account (an expired probe of
        another owner makes the version in doubt).

        Atomic: of concurrent claimers with different owners exactly one is granted. A granted
        caller must call :meth:`record_presentation` with the source's verdict (or "in-doubt"
        when the answer was lost), and should claim again before presenting after ``ttl``.
        """
        ...

    def record_presentation(
        self,
        account: str,
        secret: str,
        version: str,
        *,
        owner: str,
        locator: str,
        verdict: Literal["accepted", "rejected", "in-doubt"],
        reason: str,
        now: float,
        sent_at: float | None = None,
        request: str = "",
    ) -> AccountVersion:
        """Record the source's verdict on a presentation of ``request`` sent at ``sent_at``
        (default ``now``); the new state. Written even when the caller's probe expired or was
        taken (a verdict is a fact). The rule is :func:`remediation.safety.presenting.verdict_step`:
        "accepted" records the locator's licence for ``request`` (and clears an "in-doubt" verdict
        recorded before it was sent), "rejected" and "in-doubt" set the verdict (a rejection is
        never replaced by doubt) and a contradiction at ``now``. ``owner``'s probe, if current,
        is cleared. Raises ValueError for another verdict.
        """
        ...

    def release_presentation(self, account: str, secret: str, version: str, *, owner: str) -> AccountVersion:
        """Give up ``owner``'s probe without a verdict: the request certainly never reached the
        source (not sent, throttled, refused before any test), so nothing was counted and the
        next claim may be granted. Another owner's probe is left alone; the state afterwards."""
        ...

    def allow_again(
        self, account: str, secret: str, version: str, *, request: str, now: float, reason: str
    ) -> tuple[bool, AccountVersion]:
        """An operator's request (``request``: its id, e.g. the command's correlation id) to let
        the version be presented to the account once more; (granted by this call, state after).

        Atomic and once per request (:func:`remediation.safety.presenting.grant_step`): the first
        call for a request clears the verdict and any probe, counts an override and makes every
        earlier acceptance license nothing (the next presentation is one probe); a later call
        with the same request changes nothing and answers False. ``reason`` is required.
        """
        ...

    def account_versions(self, *, with_verdict_only: bool = True, limit: int = 1000) -> list[AccountVersion]:
        """Account states with a verdict (or all of them), newest ``verdict_at`` first (never
        set: last), at most ``limit``. Never pruned."""
        ...

    def close(self) -> None:
        """Release the storage handle. Idempotent; any other call afterwards raises LedgerError."""
        ...


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _norm(value: str, what: str) -> str:
    normalised = value.strip().lower()
    if not normalised:
        raise ValueError(f"{what} must not be empty")
    return normalised


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_time(value: float, what: str) -> float:
    if not _is_number(value):
        raise ValueError(f"{what} must be finite epoch seconds")
    return float(value)


def _json_list(text: str | None, what: str) -> list[object]:
    if text is None or text == "":
        return []
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise LedgerError(f"corrupt ledger record: {what}") from exc
    if not isinstance(value, list):
        raise LedgerError(f"corrupt ledger record: {what}")
    return value
