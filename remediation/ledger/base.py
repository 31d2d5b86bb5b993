"""The ledger's rules implemented once for both backends (:class:`EntityLedgerBase`).

:mod:`remediation.ledger` says what the ledger keeps and promises (the :class:`~remediation.ledger.Ledger`
protocol and its records); this module keeps those promises over single-entity storage
primitives (read, insert if absent, replace if the ETag matches), so that the SQLite file
(:mod:`remediation.ledger.sqlite`) and Table storage (:mod:`remediation.ledger.tables`) differ
only in how they store an entity, never in what a lease, a claim or a verdict means. One job: the
rules of targets and of accounts over those primitives, and the argument checks both backends share.
"""

from __future__ import annotations

import abc
import logging
import math
import random
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from time import sleep
from types import TracebackType
from typing import Final, Literal, Self, TypeVar

from remediation.ledger.records import (
    MAX_ACCOUNT_LENGTH,
    MAX_ATTEMPTS_KEPT,
    MAX_REASON_LENGTH,
    Lease,
    LeaseLost,
    LedgerConflict,
    LedgerError,
    TargetRecord,
    check_time,
    norm,
)
from remediation.safety.evidence import (
    AccountVersion,
    Claim,
    Intent,
    Rejection,
    TargetState,
    is_number,
)
from remediation.safety.presenting import (
    ClaimStep,
    claim_step,
    grant_step,
    release_step,
    verdict_step,
)

__all__ = ["EntityLedgerBase"]

logger = logging.getLogger(__name__)

_REJECTED: Final = "rejected"
_IN_DOUBT: Final = "in-doubt"
_ACCEPTED: Final = "accepted"
_MAX_CAS_RETRIES: Final = 200
_DAY_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# ---------------------------------------------------------------------------------------------
# Shared target semantics over single-entity conditional writes
# ---------------------------------------------------------------------------------------------


_Entity = TypeVar("_Entity", TargetRecord, AccountVersion)


class EntityLedgerBase(abc.ABC):
    """Target semantics (leases, applied, rejected, attempts) and account semantics (presentation
    claims and verdicts) over single-entity storage primitives.

    A backend supplies, per kind of entity, a read (``_get_target``, ``_get_account_version``),
    an insert if absent (``_insert_*``) and a replace if the ETag still matches (``_replace_*``),
    plus a scan of account states and the remaining :class:`Ledger` methods. Every change here is
    read, compute, conditional write, retried on a lost race (:meth:`_compare_and_swap`); so two
    writers never both succeed from the same read.
    """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend's connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @abc.abstractmethod
    def _get_target(self, gateway_id: str, datasource_id: str) -> TargetRecord | None:
        """The stored record with its current ``etag``, or None."""

    @abc.abstractmethod
    def _insert_target(self, record: TargetRecord) -> str | None:
        """Insert ``record`` if no entity exists for its key; its new ETag, or None if one exists."""

    @abc.abstractmethod
    def _replace_target(self, record: TargetRecord, if_match: str) -> str | None:
        """Replace the entity if its ETag is still ``if_match``; the new ETag, or None if not."""

    @abc.abstractmethod
    def _get_account_version(self, account: str, secret: str, version: str) -> AccountVersion | None:
        """The stored account state with its current ``etag``, or None."""

    @abc.abstractmethod
    def _insert_account_version(self, record: AccountVersion) -> str | None:
        """Insert ``record`` if no entity exists for its key; its new ETag, or None if one exists."""

    @abc.abstractmethod
    def _replace_account_version(self, record: AccountVersion, if_match: str) -> str | None:
        """Replace the entity if its ETag is still ``if_match``; the new ETag, or None if not."""

    @abc.abstractmethod
    def _scan_account_versions(self, with_verdict_only: bool) -> Iterable[AccountVersion]:
        """Every stored account state, in any order; a backend may leave out those without a
        verdict when ``with_verdict_only`` (the caller filters, sorts and limits anyway)."""

    @staticmethod
    def _compare_and_swap(
        what: str,
        read: Callable[[], _Entity | None],
        insert: Callable[[_Entity], str | None],
        replace_if: Callable[[_Entity, str], str | None],
        change: Callable[[_Entity | None], _Entity | None],
    ) -> _Entity | None:
        """Apply ``change`` (current entity or None -> new entity, or None for no write) atomically.

        Returns the entity as written (with its new etag), or the current one (None if absent)
        when ``change`` decided to write nothing. Raises :class:`LedgerConflict` after too many
        lost races.
        """
        for attempt in range(_MAX_CAS_RETRIES):
            current = read()
            new = change(current)
            if new is None:
                return current
            new = replace(new, etag=None)
            if current is None or current.etag is None:
                etag = insert(new)
            else:
                etag = replace_if(new, current.etag)
            if etag is not None:
                return replace(new, etag=etag)
            sleep(random.random() * min(0.05, 0.0005 * 2 ** min(attempt, 7)))
        raise LedgerConflict(f"too many concurrent writes to {what}")

    def _cas(
        self,
        gateway_id: str,
        datasource_id: str,
        change: Callable[[TargetRecord | None], TargetRecord | None],
    ) -> None:
        """Apply ``change`` to a target atomically (see :meth:`_compare_and_swap`)."""
        self._compare_and_swap(
            f"target {gateway_id}/{datasource_id}",
            lambda: self._get_target(gateway_id, datasource_id),
            self._insert_target,
            self._replace_target,
            change,
        )

    def _account_cas(
        self, key: tuple[str, str, str], change: Callable[[AccountVersion], AccountVersion | None]
    ) -> AccountVersion:
        """Apply ``change`` (current or empty state -> new state, or None for no write) to an
        account state atomically; the state afterwards."""
        account, secret, version = key

        def read() -> AccountVersion | None:
            return self._read_account_version(account, secret, version)

        def on_current(current: AccountVersion | None) -> AccountVersion | None:
            return change(current or AccountVersion(account=account, secret=secret, version=version))

        after = self._compare_and_swap(
            f"account {account!r} for {secret}/{version}",
            read,
            self._insert_account_version,
            self._replace_account_version,
            on_current,
        )
        return after or AccountVersion(account=account, secret=secret, version=version)

    def _read_account_version(self, account: str, secret: str, version: str) -> AccountVersion | None:
        record = self._get_account_version(account, secret, version)
        if record is not None:
            _check_stored_account_version(record)
        return record

    # -- Ledger methods ----------------------------------------------------------------------

    def target_state(self, gateway_id: str, datasource_id: str) -> TargetState:
        """See :meth:`Ledger.target_state`."""
        gw, ds = norm(gateway_id, "gateway_id"), norm(datasource_id, "datasource_id")
        record = self._get_target(gw, ds)
        return record.state() if record is not None else TargetState(gateway_id=gw, datasource_id=ds)

    def acquire_lease(
        self, gateway_id: str, datasource_id: str, owner: str, now: float, ttl: float
    ) -> Lease | None:
        """See :meth:`Ledger.acquire_lease`."""
        gw, ds = norm(gateway_id, "gateway_id"), norm(datasource_id, "datasource_id")
        owner = _owner(owner)
        check_time(now, "now")
        _check_positive(ttl, "ttl")
        granted: Lease | None = None
        taken_from: str | None = None

        def change(current: TargetRecord | None) -> TargetRecord | None:
            nonlocal granted, taken_from
            granted, taken_from = None, None
            record = current or TargetRecord(gateway_id=gw, datasource_id=ds)
            held = record.lease_id is not None
            if held and record.lease_owner != owner and not record.state().lease_free(now):
                return None
            if held and record.lease_owner == owner and record.lease_id is not None:
                lease_id = record.lease_id
            else:
                lease_id = uuid.uuid4().hex
                taken_from = record.lease_owner if held else None
            granted = Lease(
                gateway_id=gw, datasource_id=ds, owner=owner, lease_id=lease_id, expires=now + ttl
            )
            return replace(record, lease_owner=owner, lease_id=lease_id, lease_expires=now + ttl)

        self._cas(gw, ds, change)
        if granted is not None and taken_from is not None:
            logger.info("lease on target %s/%s taken over from %s by %s", gw, ds, taken_from, owner)
        return granted

    def renew_lease(self, lease: Lease, now: float, ttl: float) -> Lease:
        """See :meth:`Ledger.renew_lease`."""
        gw, ds = _lease_key(lease)
        check_time(now, "now")
        _check_positive(ttl, "ttl")
        lost = False

        def change(current: TargetRecord | None) -> TargetRecord | None:
            nonlocal lost
            lost = current is None or not current.held_by(lease)
            if current is None or lost:
                return None
            return replace(current, lease_expires=now + ttl)

        self._cas(gw, ds, change)
        if lost:
            raise LeaseLost(f"lease on target {gw}/{ds} held by {lease.owner} is no longer current")
        return replace(lease, gateway_id=gw, datasource_id=ds, expires=now + ttl)

    def release_lease(self, lease: Lease) -> bool:
        """See :meth:`Ledger.release_lease`."""
        gw, ds = _lease_key(lease)
        released = False

        def change(current: TargetRecord | None) -> TargetRecord | None:
            nonlocal released
            released = current is not None and current.held_by(lease)
            if current is None or not released:
                return None
            return replace(current, lease_owner=None, lease_id=None, lease_expires=None)

        self._cas(gw, ds, change)
        return released

    def record_applied(
        self, lease: Lease, secret: str, version: str, now: float, *, release: bool = False
    ) -> None:
        """See :meth:`Ledger.record_applied`."""
        gw, ds = _lease_key(lease)
        secret, version = norm(secret, "secret"), norm(version, "version")
        check_time(now, "now")
        lost = False

        def change(current: TargetRecord | None) -> TargetRecord | None:
            nonlocal lost
            lost = current is None or not current.held_by(lease)
            if current is None or lost:
                return None
            applied = replace(
                current,
                applied_secret=secret,
                applied_version=version,
                applied_at=now,
                intent=_without_own_intent(current, lease),
            )
            if release:
                return replace(applied, lease_owner=None, lease_id=None, lease_expires=None)
            return applied

        self._cas(gw, ds, change)
        if lost:
            raise LeaseLost(f"lease on target {gw}/{ds} held by {lease.owner} is no longer current")

    def record_rejected(self, lease: Lease, secret: str, version: str, now: float) -> None:
        """See :meth:`Ledger.record_rejected`."""
        gw, ds = _lease_key(lease)
        secret, version = norm(secret, "secret"), norm(version, "version")
        check_time(now, "now")
        lost = False

        def change(current: TargetRecord | None) -> TargetRecord | None:
            nonlocal lost
            lost = current is None or not current.held_by(lease)
            record = current or TargetRecord(gateway_id=gw, datasource_id=ds)
            intent = _without_own_intent(record, lease)
            if any(r.version == version for r in record.rejections):
                return None if intent == record.intent else replace(record, intent=intent)
            rejection = Rejection(secret=secret, version=version, at=now)
            return replace(record, rejections=(*record.rejections, rejection), intent=intent)

        self._cas(gw, ds, change)
        if lost:
            logger.warning(
                "rejection of version %s on %s/%s recorded after losing the lease", version, gw, ds
            )
            raise LeaseLost(f"lease on target {gw}/{ds} held by {lease.owner} is no longer current")

    def record_attempt(self, lease: Lease, now: float, *, intent: Intent | None = None) -> None:
        """See :meth:`Ledger.record_attempt`."""
        gw, ds = _lease_key(lease)
        check_time(now, "now")
        if intent is not None and intent.lease_id != lease.lease_id:
            raise ValueError("an intent is recorded under its own lease")
        lost = False

        def change(current: TargetRecord | None) -> TargetRecord | None:
            nonlocal lost
            lost = current is None or not current.held_by(lease)
            record = current or TargetRecord(gateway_id=gw, datasource_id=ds)
            attempts = tuple(sorted((*record.attempts, now)))[-MAX_ATTEMPTS_KEPT:]
            if lost or intent is None:
                return replace(record, attempts=attempts)
            return replace(record, attempts=attempts, intent=intent)

        self._cas(gw, ds, change)
        if lost:
            raise LeaseLost(f"lease on target {gw}/{ds} held by {lease.owner} is no longer current")

    def clear_intent(self, lease: Lease) -> None:
        """See :meth:`Ledger.clear_intent`."""
        gw, ds = _lease_key(lease)

        def change(current: TargetRecord | None) -> TargetRecord | None:
            if current is None:
                return None
            intent = _without_own_intent(current, lease)
            return None if intent == current.intent else replace(current, intent=intent)

        self._cas(gw, ds, change)

    def doubt_intent(self, lease: Lease, intent: Intent) -> None:
        """See :meth:`Ledger.doubt_intent`."""
        gw, ds = _lease_key(lease)
        lost = False

        def change(current: TargetRecord | None) -> TargetRecord | None:
            nonlocal lost
            lost = current is None or not current.held_by(lease)
            if current is None or lost or current.intent != intent:
                return None
            return replace(current, intent=None)

        self._cas(gw, ds, change)
        if lost:
            raise LeaseLost(f"lease on target {gw}/{ds} held by {lease.owner} is no longer current")

    def attempts_since(self, gateway_id: str, datasource_id: str, since: float) -> int:
        """See :meth:`Ledger.attempts_since`."""
        check_time(since, "since")
        return self.target_state(gateway_id, datasource_id).attempts_since(since)

    def forget_applied(self, gateway_id: str, datasource_id: str) -> bool:
        """See :meth:`Ledger.forget_applied`."""
        gw, ds = norm(gateway_id, "gateway_id"), norm(datasource_id, "datasource_id")
        forgot = False

        def change(current: TargetRecord | None) -> TargetRecord | None:
            nonlocal forgot
            forgot = current is not None and current.applied_version is not None
            if current is None or not forgot:
                return None
            return replace(current, applied_secret=None, applied_version=None, applied_at=None)

        self._cas(gw, ds, change)
        return forgot

    # -- presentations per account -------------------------------------------------------------

    def account_version(self, account: str, secret: str, version: str) -> AccountVersion:
        """See :meth:`Ledger.account_version`."""
        key = _account_key(account, secret, version)
        record = self._read_account_version(*key)
        return record if record is not None else AccountVersion(*key)

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
        """See :meth:`Ledger.claim_presentation`; the rule is :func:`.presenting.claim_step`."""
        key = _account_key(account, secret, version)
        locator, target, owner = _locator(locator), target.strip(), _owner(owner)
        now, ttl = check_time(now, "now"), _check_positive(ttl, "ttl")
        steps: list[ClaimStep] = []

        def change(record: AccountVersion) -> AccountVersion | None:
            step = claim_step(
                record, locator=locator, target=target, owner=owner, request=request.strip(), now=now, ttl=ttl
            )
            steps[:] = [step]
            if step.record is not None and step.record.reason is not None:
                return replace(step.record, reason=_reason(step.record.reason))
            return step.record

        state = self._account_cas(key, change)
        step = steps[-1]
        if step.stale is not None:
            logger.warning(
                "version %s of %s is in doubt for account %r: run %s presenting it to %s stopped "
                "before its verdict was recorded",
                key[2],
                key[1],
                key[0],
                *step.stale,
            )
        return step.claim, state

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
        """See :meth:`Ledger.record_presentation`; the rule is :func:`.presenting.verdict_step`."""
        key = _account_key(account, secret, version)
        owner, locator, why = _owner(owner), _locator(locator), _reason(reason)
        now = check_time(now, "now")
        sent = now if sent_at is None else check_time(sent_at, "sent_at")
        if verdict not in (_ACCEPTED, _REJECTED, _IN_DOUBT):
            raise ValueError("verdict must be 'accepted', 'rejected' or 'in-doubt'")

        def change(record: AccountVersion) -> AccountVersion | None:
            return verdict_step(
                record,
                verdict=verdict,
                owner=owner,
                locator=locator,
                reason=why,
                sent_at=sent,
                now=now,
                request=request.strip(),
            )

        return self._account_cas(key, change)

    def release_presentation(self, account: str, secret: str, version: str, *, owner: str) -> AccountVersion:
        """See :meth:`Ledger.release_presentation`."""
        key = _account_key(account, secret, version)
        owner = _owner(owner)

        def change(record: AccountVersion) -> AccountVersion | None:
            return release_step(record, owner=owner)

        return self._account_cas(key, change)

    def allow_again(
        self, account: str, secret: str, version: str, *, request: str, now: float, reason: str
    ) -> tuple[bool, AccountVersion]:
        """See :meth:`Ledger.allow_again`; the rule is :func:`.presenting.grant_step`."""
        key = _account_key(account, secret, version)
        now = check_time(now, "now")
        why = _reason(reason)
        if why is None:
            raise ValueError("reason must not be empty: say why the version may be presented again")
        granted: list[bool] = []

        def change(record: AccountVersion) -> AccountVersion | None:
            done, after = grant_step(record, request=request, reason=why, now=now)
            granted[:] = [done]
            return after

        state = self._account_cas(key, change)
        if granted[-1]:
            logger.warning(
                "operator allowed version %s of %s to be presented to account %r again (request %s): %s",
                key[2],
                key[1],
                key[0],
                request,
                why,
            )
        return granted[-1], state

    def account_versions(self, *, with_verdict_only: bool = True, limit: int = 1000) -> list[AccountVersion]:
        """See :meth:`Ledger.account_versions`."""
        if limit <= 0:
            return []
        records = list(self._scan_account_versions(with_verdict_only))
        for record in records:
            _check_stored_account_version(record)
        if with_verdict_only:
            records = [r for r in records if r.verdict is not None]

        def newest_first(r: AccountVersion) -> tuple[bool, float, str, str, str]:
            return (r.verdict_at is None, -(r.verdict_at or 0.0), r.account, r.secret, r.version)

        return sorted(records, key=newest_first)[:limit]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _marker_number(text: str | None) -> float:
    """A marker's text as a number (:meth:`Ledger.raise_marker`); ``-inf`` when it is missing or
    not a finite number."""
    try:
        value = float(text) if text else -math.inf
    except ValueError:
        return -math.inf
    return value if math.isfinite(value) else -math.inf


def _without_own_intent(record: TargetRecord, lease: Lease) -> Intent | None:
    """The record's intent, unless it is ``lease``'s own (its verdict is being recorded)."""
    if record.intent is not None and record.intent.lease_id == lease.lease_id:
        return None
    return record.intent


def _owner(owner: str) -> str:
    owner = owner.strip()
    if not owner:
        raise ValueError("owner must not be empty")
    return owner


def _account_key(account: str, secret: str, version: str) -> tuple[str, str, str]:
    """The normalised key of an :class:`AccountVersion`; ValueError when a part is empty or the
    account is longer than :data:`MAX_ACCOUNT_LENGTH`."""
    normalised = norm(account, "account")
    if len(normalised) > MAX_ACCOUNT_LENGTH:
        raise ValueError(f"account must be at most {MAX_ACCOUNT_LENGTH} characters")
    return normalised, norm(secret, "secret"), norm(version, "version")


def _locator(locator: str) -> str:
    """A normalised locator (source host); ``""`` stands for an unknown one."""
    return locator.strip().lower()


def _reason(reason: str) -> str | None:
    """``reason`` stripped and cut to :data:`MAX_REASON_LENGTH` characters; None when empty."""
    reason = reason.strip()
    if len(reason) > MAX_REASON_LENGTH:
        reason = reason[: MAX_REASON_LENGTH - 1] + "…"
    return reason or None


def _check_stored_account_version(record: AccountVersion) -> None:
    """Raise :class:`LedgerError` when a stored account state could not have been written here."""
    if record.verdict is not None and record.verdict not in (_REJECTED, _IN_DOUBT):
        raise LedgerError("corrupt ledger record: verdict")
    if record.presentations < 0 or record.overrides < 0:
        raise LedgerError("corrupt ledger record: counters")


def _lease_key(lease: Lease) -> tuple[str, str]:
    return norm(lease.gateway_id, "gateway_id"), norm(lease.datasource_id, "datasource_id")


def _day(day: str) -> str:
    day = day.strip()
    if not _DAY_RE.match(day):
        raise ValueError("day must be a UTC date written YYYY-MM-DD")
    return day


def _check_positive(value: float, what: str) -> float:
    if not is_number(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds")
    return float(value)
