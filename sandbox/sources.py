"""The systems behind the data sources (SQL servers, web APIs, storage), which hold the truth.

A source system knows how it is reached and which :class:`~sandbox.accounts.Account` signs in
to it; the account holds the credential and, like Active Directory or a database server, counts
consecutive failed sign-ins from every cause and locks at a threshold. Many sources may share one
account (one service account behind many data sources, which is the real case), so a careless
healer's fan-out of a wrong password shows up as what it is: many failed sign-ins of one account.

    svc = sb.sources.add_account("CONTOSO\\svc_pbi", username="svc_pbi", secret=pw)
    sb.sources.add("sql-sales", account=svc)
    sb.sources.add("sql-dw", account=svc)
    sb.sources.add("sql-hr", username="svc_hr", secret=pw2)   # makes its own account "sql-hr"
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

from sandbox.accounts import DEFAULT_LOCKOUT_THRESHOLD, Account, Cause
from sandbox.clock import Clock

__all__ = ["CheckResult", "SourceSystem", "Sources", "presented_secret"]

CheckResult = Literal["ok", "invalid", "locked", "unreachable"]

_SECRET_NAMES = ("password", "key", "token", "servicePrincipalSecret")


def presented_secret(data: dict[str, str]) -> str | None:
    """The secret a sign-in with ``data`` presents (its password, key, token or client secret;
    the user name when it carries none, as an OAuth2 caller identity does)."""
    return next((data[n] for n in _SECRET_NAMES if n in data), data.get("username"))


@dataclass(eq=False)
class SourceSystem:
    """One system a data source connects to. Its credential is its account's."""

    id: str
    account: Account = field(repr=False)
    credential_type: str = "Basic"  # Basic | Windows | Key | SAS | OAuth2 | Anonymous | ServicePrincipal
    reachable: bool = True
    total_failures: int = 0  # refused sign-ins through this source (the account counts all)
    history: list[str] = field(default_factory=list)  # "ok" / "invalid" / "locked" per attempt here

    # The account's state, seen from the source (what older tests and tools read).
    @property
    def username(self) -> str | None:
        return self.account.username

    @username.setter
    def username(self, value: str | None) -> None:
        self.account.username = value

    @property
    def secret(self) -> str | None:
        return self.account.secret

    @secret.setter
    def secret(self, value: str | None) -> None:
        self.account.secret = value

    @property
    def lockout_threshold(self) -> int | None:
        return self.account.lockout_threshold

    @property
    def failed_attempts(self) -> int:
        """The account's consecutive failures."""
        return self.account.failed_attempts

    @property
    def locked(self) -> bool:
        return self.account.locked

    def unlock(self) -> None:
        self.account.unlock()

    def check(
        self, credential_type: str, data: dict[str, str], *, cause: Cause = "update-test"
    ) -> CheckResult:
        """Try to sign in with ``data`` (the decoded ``credentialData`` name/value pairs)."""
        if not self.reachable:
            return "unreachable"
        presented = presented_secret(data)
        with self.account.lock:
            result = self.account.sign_in(
                lambda username, secret: self._matches(credential_type, data, username, secret),
                presented,
                cause=cause,
                via=self.id,
            )
            self.history.append(result)
            if result != "ok":
                self.total_failures += 1
        return result

    def _matches(
        self, credential_type: str, data: dict[str, str], username: str | None, secret: str | None
    ) -> bool:
        if credential_type != self.credential_type:
            return False
        if credential_type in ("Basic", "Windows"):
            return data.get("username") == username and data.get("password") == secret
        if credential_type == "Key":
            return data.get("key") == secret
        if credential_type == "SAS":
            return data.get("token") == secret
        if credential_type == "ServicePrincipal":
            # An app registration's client secret (Fabric connections): the account is the app.
            return (
                data.get("servicePrincipalClientId") == username
                and data.get("servicePrincipalSecret") == secret
            )
        if credential_type == "Anonymous":
            return True
        if credential_type == "OAuth2":
            # For OAuth2 the gateway signs in as a user; ``data`` carries {"username": upn}.
            return data.get("username") == username
        return False


class Sources:
    """Registry of :class:`SourceSystem` by id and of :class:`Account` by name."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock  # when a failed sign-in happened, and when a pending change is due
        self._lock = threading.RLock()
        self._items: dict[str, SourceSystem] = {}
        self._accounts: dict[str, Account] = {}

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    # -- accounts ------------------------------------------------------------------------------
    def add_account(
        self,
        name: str,
        *,
        username: str | None = None,
        secret: str | None = None,
        lockout_threshold: int | None = DEFAULT_LOCKOUT_THRESHOLD,
    ) -> Account:
        """An account (``CONTOSO\\svc_pbi``, a SQL login, an Entra UPN) any sources may share.

        ``lockout_threshold``: consecutive failures that lock it (``None``: never).
        """
        with self._lock:
            if name in self._accounts:
                raise ValueError(f"account {name!r} exists")
            account = Account(name, username, secret, lockout_threshold, clock=self._clock.now)
            self._accounts[name] = account
            return account

    def account(self, name: str) -> Account:
        """The account called ``name`` (a source added without ``account=`` has one named after it)."""
        with self._lock:
            return self._accounts[name]

    def find_account(self, name: str) -> Account | None:
        with self._lock:
            return self._accounts.get(name)

    def accounts(self) -> list[Account]:
        with self._lock:
            return list(self._accounts.values())

    def account_of(self, name: str) -> Account:
        """The account of the source ``name``, or else the account called ``name``."""
        with self._lock:
            if name in self._items:
                return self._items[name].account
            return self._accounts[name]

    # -- sources -------------------------------------------------------------------------------
    def add(
        self,
        source_id: str,
        *,
        credential_type: str = "Basic",
        username: str | None = None,
        secret: str | None = None,
        lockout_threshold: int | None = DEFAULT_LOCKOUT_THRESHOLD,
        account: Account | str | None = None,
    ) -> SourceSystem:
        """A source system. With ``account`` (an :class:`Account` or its name) it signs in as that
        shared account (then pass no ``username``/``secret``); without, it gets its own account
        named ``source_id`` with ``username``, ``secret`` and ``lockout_threshold``."""
        with self._lock:
            if source_id in self._items:
                raise ValueError(f"source {source_id!r} exists")
            if account is None:
                shared = self.add_account(
                    source_id, username=username, secret=secret, lockout_threshold=lockout_threshold
                )
            else:
                if username is not None or secret is not None:
                    raise ValueError(
                        "a source on a shared account takes its username and secret from the account"
                    )
                shared = self._accounts[account] if isinstance(account, str) else account
                if self._accounts.get(shared.name) is not shared:
                    raise ValueError(f"account {shared.name!r} is not registered here")
            source = SourceSystem(source_id, shared, credential_type)
            self._items[source_id] = source
            return source

    def get(self, source_id: str) -> SourceSystem:
        with self._lock:
            return self._items[source_id]

    def all(self) -> list[SourceSystem]:
        with self._lock:
            return list(self._items.values())

    def using(self, account: Account | str) -> list[SourceSystem]:
        """The sources that sign in as ``account``."""
        name = account if isinstance(account, str) else account.name
        with self._lock:
            return [s for s in self._items.values() if s.account.name == name]

    def check(
        self, source_id: str, credential_type: str, data: dict[str, str], *, cause: Cause = "update-test"
    ) -> CheckResult:
        with self._lock:
            source = self._items[source_id]
        return source.check(credential_type, data, cause=cause)

    def set_secret(
        self, source_id: str, secret: str, username: str | None = None, *, at: float | None = None
    ) -> None:
        """Change the credential of the source's account (every source sharing it sees it), now or
        when the sandbox clock reaches ``at``. Key Vault is not told: on its own, a wrong secret."""
        self.account_of(source_id).set_secret(secret, username=username, at=at)
