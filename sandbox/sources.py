"""The systems behind the data sources (SQL servers, web APIs, storage), which hold the truth.

A source knows its current credential and, like Active Directory or a database server, counts
consecutive failed sign-ins and locks the account at a threshold. That makes the sandbox able to
show the harm a careless healer does: presenting a rejected password again and again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from sandbox.world import Sandbox

CheckResult = Literal["ok", "invalid", "locked", "unreachable"]


@dataclass
class SourceSystem:
    id: str
    credential_type: str = "Basic"  # Basic | Windows | Key | SAS | OAuth2 | Anonymous
    username: str | None = None
    secret: str | None = None  # password, key or SAS token
    lockout_threshold: int | None = 5  # consecutive failures that lock the account; None: never
    reachable: bool = True
    failed_attempts: int = 0  # consecutive
    total_failures: int = 0
    locked: bool = False
    history: list[str] = field(default_factory=list)  # "ok" / "invalid" / "locked" per attempt

    def check(self, credential_type: str, data: dict[str, str]) -> CheckResult:
        """Try to sign in with ``data`` (the decoded ``credentialData`` name/value pairs)."""
        if not self.reachable:
            return "unreachable"
        if self.locked:
            self.history.append("locked")
            return "locked"
        if self._matches(credential_type, data):
            self.failed_attempts = 0
            self.history.append("ok")
            return "ok"
        self.failed_attempts += 1
        self.total_failures += 1
        if self.lockout_threshold is not None and self.failed_attempts >= self.lockout_threshold:
            self.locked = True
        self.history.append("invalid")
        return "invalid"

    def _matches(self, credential_type: str, data: dict[str, str]) -> bool:
        if credential_type != self.credential_type:
            return False
        if credential_type in ("Basic", "Windows"):
            return data.get("username") == self.username and data.get("password") == self.secret
        if credential_type == "Key":
            return data.get("key") == self.secret
        if credential_type == "SAS":
            return data.get("token") == self.secret
        if credential_type == "Anonymous":
            return True
        if credential_type == "OAuth2":
            # For OAuth2 the gateway signs in as a user; ``data`` carries {"username": upn}.
            return data.get("username") == self.username
        return False

    def unlock(self) -> None:
        self.locked = False
        self.failed_attempts = 0


class Sources:
    """Registry of :class:`SourceSystem` by id."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._lock = threading.RLock()
        self._items: dict[str, SourceSystem] = {}

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def add(
        self,
        source_id: str,
        *,
        credential_type: str = "Basic",
        username: str | None = None,
        secret: str | None = None,
        lockout_threshold: int | None = 5,
    ) -> SourceSystem:
        with self._lock:
            if source_id in self._items:
                raise ValueError(f"source {source_id!r} exists")
            source = SourceSystem(source_id, credential_type, username, secret, lockout_threshold)
            self._items[source_id] = source
            return source

    def get(self, source_id: str) -> SourceSystem:
        with self._lock:
            return self._items[source_id]

    def all(self) -> list[SourceSystem]:
        with self._lock:
            return list(self._items.values())

    def check(self, source_id: str, credential_type: str, data: dict[str, str]) -> CheckResult:
        with self._lock:
            return self._items[source_id].check(credential_type, data)

    def set_secret(self, source_id: str, secret: str, username: str | None = None) -> None:
        """Change the source's credential alone (Key Vault left stale: a wrong secret)."""
        with self._lock:
            source = self._items[source_id]
            source.secret = secret
            if username is not None:
                source.username = username
