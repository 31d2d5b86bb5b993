"""One run of a command: what it learns as it goes, and the targets it works on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

from remediation.bindings import Binding, Target
from remediation.fabric import Connection
from remediation.keyvault import SecretValue
from remediation.ledger import Outcome
from remediation.powerbi import GatewayDatasource

__all__ = ["QUIET_ACTION", "Resolved", "Run"]

QUIET_ACTION = "already-current"
"""The action a summarising run records once, as a count: a target that already holds the
current version (nothing was sent, nothing changed)."""


@dataclass
class Run:
    """What one command learns as it goes: secrets and gateways are fetched once per run."""

    trigger: str
    correlation_id: str
    dry_run: bool
    started: float
    owner: str
    deadline: float | None = None
    present_again: bool = False
    named_version: str | None = None  # an operator's --version (the current one is applied)
    outcomes: list[Outcome] = field(default_factory=list)
    secrets: dict[str, SecretValue] = field(default_factory=dict)
    redactions: list[int] = field(default_factory=list)
    gateway_datasources: list[tuple[str, GatewayDatasource]] | None = None
    fabric_connections: list[Connection] | None = None  # GET /connections, read once per run
    workspaces: list[str] | None = None  # the watched (or visible) workspaces, read once per run
    settled: dict[tuple[str, str], Outcome] = field(default_factory=dict)  # targets done this run
    allowed_again: set[tuple[str, str, str]] = field(default_factory=set)
    # (account, secret, version, locator) this run saw accepted: its fan-out skips re-reading it
    accepted: set[tuple[str, str, str, str]] = field(default_factory=set)
    retry_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    key_locks: dict[str, threading.Lock] = field(default_factory=dict)
    persist: Callable[[Outcome], None] | None = None
    summarise: bool = False
    """Record targets found already current as one summary at the end (sweeps), not one by one."""
    quiet: list[Outcome] = field(default_factory=list)  # the outcomes the summary stands for
    scopes: ExitStack = field(default_factory=ExitStack)  # closed when the run ends

    def add(self, outcome: Outcome) -> Outcome:
        """Keep the outcome (the caller's report lists it) and record it (ledger, as it happens),
        unless it is a repetition that the run's summary will stand for."""
        quiet = self.summarise and outcome.action == QUIET_ACTION and outcome.dataset_id is None
        with self.lock:
            self.outcomes.append(outcome)
            if quiet:
                self.quiet.append(outcome)
        if self.persist is not None and not quiet:
            self.persist(outcome)
        return outcome

    def key_lock(self, key: str) -> threading.Lock:
        with self.lock:
            return self.key_locks.setdefault(key, threading.Lock())

    def out_of_time(self, now: float) -> bool:
        """True once the run's deadline has passed: work not started by then is deferred."""
        return self.deadline is not None and now >= self.deadline

    def again_at(self, when: float) -> None:
        with self.lock:
            self.retry_at = when if self.retry_at is None else min(self.retry_at, when)


@dataclass(frozen=True)
class Resolved:
    binding: Binding
    target: Target
    locator: str = ""  # where at the source it signs in, when known (see accounts.source_locator)
    refused: str = ""  # why a match's selection is not healed (nothing is sent), when it is not
