"""The evidence the safety core decides from: what is known of a target and of an account's
version, with times (pure records; the ledger stores them, :mod:`remediation.safety.presenting`
reads and changes them).

* :class:`TargetState`: what a target holds, what its source rejected, its attempts, its lease,
  and the :class:`Intent` of a presentation sent but not yet answered;
* :class:`AccountVersion`: per account and secret version, the verdict, the licences of
  acceptances (per locator and command), the last contradiction and the operator's grants;
* :class:`Claim`: the answer to "may I present it now?".

No record has a field that could hold a secret value: secrets are named, never carried.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeGuard

from remediation.errors import LedgerError

__all__ = [
    "AccountVersion",
    "Claim",
    "Intent",
    "Rejection",
    "TargetState",
    "is_number",
    "json_list",
]

_COMPACT = (",", ":")
"""JSON without spaces, for the records the ledger stores (and only ever reads back)."""


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
            separators=_COMPACT,  # pragma: no mutate (equivalent: the stored JSON is only parsed back)
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
        if not all(isinstance(doc.get(n), str) for n in names) or not is_number(doc.get("at")):
            raise LedgerError("corrupt ledger record: intent")
        return Intent(
            doc["secret"], doc["version"], doc["account"], doc["locator"], float(doc["at"]), doc["leaseId"]
        )


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
            separators=_COMPACT,  # pragma: no mutate (equivalent: the stored JSON is only parsed back)
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
                and is_number(item[1])
                and isinstance(item[2], str)
                for item in licences
            )
            or (contradicted is not None and not is_number(contradicted))
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
        items = json_list(text, "accepted")
        if not all(isinstance(item, str) for item in items):
            raise LedgerError("corrupt ledger record: accepted")
        return tuple(str(item) for item in items)


def is_number(value: object) -> TypeGuard[int | float]:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def json_list(text: str | None, what: str) -> list[object]:
    """A stored JSON array (empty text: empty); :class:`LedgerError` when it is not one."""
    if text is None or text == "":
        return []
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise LedgerError(f"corrupt ledger record: {what}") from exc
    if not isinstance(value, list):
        raise LedgerError(f"corrupt ledger record: {what}")
    return value
