"""Accounts: what a lockout policy counts against, shared by any number of source systems.

Active Directory, SQL Server logins with ``CHECK_POLICY`` and Entra ID smart lockout count
failed sign-ins **per account**, whatever caused them: the credential test of an Update
Datasource, a refresh or a status check on a stored wrong password, a resource-owner password
grant, a Fabric ``testConnection``. Many data sources sign in as one service account, so the
sandbox keeps the account (its username, its current secret, the consecutive-failure count that
locks it) apart from the systems that use it (:mod:`sandbox.sources`) and from Entra's users
(:mod:`sandbox.entra`), which are accounts too.

Every refused sign-in is recorded with its time, cause and a :func:`fingerprint` of the
presented secret, so tests can assert the product's promise: per account and per presented
value, at most one failed sign-in.

A password change may be *pending* (a vault-first rotation: Key Vault has the new version, the
account gets it only ``delay`` seconds later). Pending changes are applied lazily, whenever the
account is read or signed in to, against the sandbox clock, so they work with
``ManualClock.advance`` and with the wall clock alike.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DEFAULT_LOCKOUT_THRESHOLD",
    "Account",
    "Cause",
    "FailedSignIn",
    "SignInOutcome",
    "fingerprint",
]

DEFAULT_LOCKOUT_THRESHOLD = 5

Cause = Literal["update-test", "refresh", "status-check", "password-grant", "test-connection"]
SignInOutcome = Literal["ok", "invalid", "locked"]


def fingerprint(value: str | None) -> str:
    """A stable, non-reversible tag of a presented secret (SHA-256, first 16 hex digits).

    Tests compare fingerprints ("this value failed once") without keeping secrets around.
    """
    return hashlib.sha256((value or "").encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class FailedSignIn:
    """One refused sign-in: ``outcome`` is ``"invalid"`` (wrong secret, counted toward lockout)
    or ``"locked"`` (refused because the account is locked, whatever was presented)."""

    at: float
    cause: Cause
    fingerprint: str
    outcome: SignInOutcome
    via: str  # the source system's id, or "entra" for a password grant


@dataclass(frozen=True)
class _PendingChange:
    due: float
    secret: str
    username: str | None


@dataclass(eq=False)
class Account:
    """A sign-in identity with a lockout policy (AD's ``badPwdCount`` and ``lockoutThreshold``).

    ``lockout_threshold`` consecutive failures lock the account (``None``: never); a successful
    sign-in resets the count; a locked account refuses even the right secret until
    :meth:`unlock`. Use the methods, not the fields, from tests running alongside requests.
    """

    name: str  # e.g. "CONTOSO\\svc_pbi", a SQL login, or an Entra UPN
    _username: str | None = None
    _secret: str | None = field(default=None, repr=False)
    lockout_threshold: int | None = DEFAULT_LOCKOUT_THRESHOLD
    clock: Callable[[], float] = field(default=lambda: 0.0, repr=False)
    failed_attempts: int = 0  # consecutive (badPwdCount)
    locked: bool = False
    failed_sign_ins: list[FailedSignIn] = field(default_factory=list, repr=False)
    successful_sign_ins: int = 0
    _pending: list[_PendingChange] = field(default_factory=list, repr=False)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # -- the credential ------------------------------------------------------------------------
    @property
    def username(self) -> str | None:
        with self.lock:
            self._apply_due()
            return self._username

    @username.setter
    def username(self, value: str | None) -> None:
        with self.lock:
            self._username = value

    @property
    def secret(self) -> str | None:
        with self.lock:
            self._apply_due()
            return self._secret

    @secret.setter
    def secret(self, value: str | None) -> None:
        with self.lock:
            self._secret = value

    def set_secret(self, secret: str, *, username: str | None = None, at: float | None = None) -> None:
        """Change the secret now, or when the sandbox clock reaches ``at`` (a pending change)."""
        with self.lock:
            self._apply_due()
            if at is not None and at > self.clock():
                self._pending.append(_PendingChange(at, secret, username))
                self._pending.sort(key=lambda p: p.due)
                return
            self._secret = secret
            if username is not None:
                self._username = username

    @property
    def pending_changes(self) -> int:
        """Password changes scheduled but not yet due."""
        with self.lock:
            self._apply_due()
            return len(self._pending)

    def _apply_due(self) -> None:
        if not self._pending:
            return
        now = self.clock()
        while self._pending and self._pending[0].due <= now:
            change = self._pending.pop(0)
            self._secret = change.secret
            if change.username is not None:
                self._username = change.username

    # -- sign-ins --------------------------------------------------------------------------------
    def sign_in(
        self,
        matches: Callable[[str | None, str | None], bool],
        presented: str | None,
        *,
        cause: Cause,
        via: str,
    ) -> SignInOutcome:
        """One sign-in. ``matches(username, secret)`` says whether what was presented is right
        for the account's current credential; ``presented`` is the secret (for the record)."""
        with self.lock:
            self._apply_due()
            if self.locked:
                self._record(cause, presented, "locked", via)
                return "locked"
            if matches(self._username, self._secret):
                self.failed_attempts = 0
                self.successful_sign_ins += 1
                return "ok"
            self.failed_attempts += 1
            if self.lockout_threshold is not None and self.failed_attempts >= self.lockout_threshold:
                self.locked = True
            self._record(cause, presented, "invalid", via)
            return "invalid"

    def _record(self, cause: Cause, presented: str | None, outcome: SignInOutcome, via: str) -> None:
        self.failed_sign_ins.append(FailedSignIn(self.clock(), cause, fingerprint(presented), outcome, via))

    def unlock(self) -> None:
        """An administrator unlocks the account (and the count starts again)."""
        with self.lock:
            self.locked = False
            self.failed_attempts = 0

    # -- for tests ---------------------------------------------------------------------------------
    def failures(self, *, cause: Cause | None = None, include_locked: bool = True) -> list[FailedSignIn]:
        """Refused sign-ins, oldest first, optionally of one cause; ``include_locked=False``
        keeps only wrong-secret ones."""
        with self.lock:
            return [
                f
                for f in self.failed_sign_ins
                if (cause is None or f.cause == cause) and (include_locked or f.outcome == "invalid")
            ]

    @property
    def total_failures(self) -> int:
        """Every refused sign-in (wrong secret or locked)."""
        with self.lock:
            return len(self.failed_sign_ins)

    def failures_by_fingerprint(self, *, include_locked: bool = True) -> dict[str, int]:
        """``{fingerprint(presented value): refused sign-ins}``: the promise is every count <= 1."""
        return dict(Counter(f.fingerprint for f in self.failures(include_locked=include_locked)))

    def failures_of(self, value: str | None) -> int:
        """Refused sign-ins that presented ``value``."""
        tag = fingerprint(value)
        return sum(1 for f in self.failures() if f.fingerprint == tag)
