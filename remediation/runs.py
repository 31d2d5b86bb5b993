"""One run of a command: what it learns as it goes, and the targets it works on."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from remediation.accounts import presentation_locator
from remediation.bindings import Binding, Target
from remediation.fabric import Connection
from remediation.keyvault import SecretValue
from remediation.ledger import Outcome
from remediation.powerbi import GatewayDatasource

__all__ = ["QUIET_ACTION", "Resolved", "Run", "TakeOver"]

QUIET_ACTION = "already-current"
"""The action a summarising run records once, as a count: a target that already holds the
current version (nothing was sent, nothing changed)."""


_SINK: contextvars.ContextVar[Callable[[Outcome], None] | None] = contextvars.ContextVar(
    "remediation_outcome_sink", default=None
)


@contextmanager
def outcomes_to(sink: Callable[[Outcome], None]) -> Iterator[None]:
    """While the block runs, every outcome the healer records (ledger, as it happens) is also
    given to ``sink``, in the recording thread: the caller emits it to telemetry at once, so a
    worker that dies mid-run has reported what it did so far. (Worker threads of a run copy the
    caller's context, so they see the sink too.)"""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


def recorded(outcome: Outcome) -> None:
    """Give a recorded outcome to the current sink, if any; a failing sink breaks nothing."""
    sink = _SINK.get()
    if sink is None:
        return
    try:
        sink(outcome)
    except Exception:  # noqa: BLE001 - telemetry must never stop a heal
        logging.getLogger(__name__).warning("the outcome sink failed", exc_info=True)


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
    take_overs: list[TakeOver] = field(default_factory=list)  # Take Overs done in this run
    in_progress: set[tuple[str, str]] = field(default_factory=set)  # targets being healed now
    # Bound targets whose credentials a Take Over reset, to heal again (once per run) before the
    # run reports them (see Healer.heal_targets); True when the run had handled or begun them
    # before the reset (what it settled for them is stale).
    reset_again: dict[tuple[str, str], tuple[Resolved, bool]] = field(default_factory=dict)
    reset_done: set[tuple[str, str]] = field(default_factory=set)
    notes: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # see warn()

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

    def record_take_over(self, take_over: TakeOver) -> None:
        """A Take Over happened: its bound reset targets are healed (again) in this run; the report
        warns on the target it was done for."""
        with self.lock:
            self.take_overs.append(take_over)
            for item in take_over.reset:
                key = item.target.key
                if key not in self.reset_done:
                    self.reset_again[key] = (item, key in self.settled or key in self.in_progress)

    def take_reset_again(self) -> list[Resolved]:
        """The reset targets to heal (again) now, each once per run: those handled before the
        reset (what the run settled for them is forgotten) and those the run has not handled
        at all; not those it handled after the reset (their outcome is already fresh)."""
        with self.lock:
            items: list[Resolved] = []
            for key, (item, stale) in self.reset_again.items():
                self.reset_done.add(key)
                if stale:
                    old = self.settled.pop(key, None)
                    if old is not None:  # the report shows the new outcome instead (the ledger has both)
                        self.outcomes = [o for o in self.outcomes if o is not old]
                        self.quiet = [o for o in self.quiet if o is not old]
                    items.append(item)
                elif key not in self.settled:
                    items.append(item)
            self.reset_again.clear()
            return items

    def warn(self, target: tuple[str, str], warning: str) -> None:
        """Something a person should know about ``target`` (gateway id, data source id) although
        it may be healed, e.g. settings sent as defaults; shown once on the report's target."""
        with self.lock:
            said = self.notes.setdefault(target, [])
            if warning not in said:
                said.append(warning)

    def target_warnings(self) -> dict[tuple[str, str], list[str]]:
        """Per target (gateway id, data source id): the warnings of the Take Overs done for it,
        then those given with :meth:`warn`."""
        with self.lock:
            found: dict[tuple[str, str], list[str]] = {}
            for take_over in self.take_overs:
                found.setdefault(take_over.target, []).append(take_over.warning())
            for target, said in self.notes.items():
                found.setdefault(target, []).extend(said)
            return found

    def again_at(self, when: float) -> None:
        with self.lock:
            self.retry_at = when if self.retry_at is None else min(self.retry_at, when)


@dataclass(frozen=True)
class Resolved:
    binding: Binding
    target: Target
    locator: str = ""  # where at the source it signs in, when known (see accounts.source_locator)
    refused: str = ""  # why a match's selection is not healed (nothing is sent), when it is not

    @property
    def where(self) -> str:
        """The locator the account rules use (see :func:`remediation.accounts.presentation_locator`):
        a Windows account's domain, else the source's server, else one of this target alone."""
        return presentation_locator(self.binding, self.locator, self.target.key)


@dataclass(frozen=True)
class TakeOver:
    """A Take Over done to update ``target``: Power BI made the caller the owner of the dataset
    and reset the credentials of the dataset's other cloud data sources (``reset``, bound, healed
    again; ``described`` names each as type and host, and its ids)."""

    target: tuple[str, str]
    workspace_id: str
    dataset_id: str
    reset: tuple[Resolved, ...]
    described: tuple[str, ...]

    def warning(self) -> str:
        others = "; ".join(self.described) if self.described else "none"
        return (
            f"took over dataset {self.dataset_id} (workspace {self.workspace_id}) to update this data "
            f"source: the identity owns it now, and Power BI reset the credentials of its other cloud "
            f"data sources ({others}); the healer presents their current versions again"
        )
