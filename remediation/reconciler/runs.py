"""One run of a command: what it learns as it goes, and the targets it works on.

**The run's secrets never leave it.** Services echo submitted values in their validation
messages, so any text a run produces after it sent a secret may carry it. A run therefore knows
the secret values it fetched (:meth:`Run.hold_secret`) and masks them, in every form a service
could echo them (:class:`remediation.rules.redact.SecretMask`), wherever a text leaves memory:

* every outcome it records (:meth:`Run.add`): the ledger's outcomes, telemetry, the report, the
  CLI's and the HTTP answers all come from these;
* the reasons written with an account's verdict (:meth:`Run.redact`, used by the healer);
* the warnings shown on a target (:meth:`Run.warn`);
* the log records of the reconciler's loggers, exception text included, with the values of every
  run still holding secrets (:mod:`remediation.reconciler.run_secrets`, installed on import);
* an exception on its way out of the run (:meth:`Run.drop_secrets`, when the run ends): its
  message and string attributes, and those of its causes, are masked in place, so that
  ``str(exc)`` in the CLI's error line or an HTTP error answer shows no secret.

The values are forgotten when the run ends. (Telemetry's process-wide ``REDACTOR`` is told about
them too, for spans and exported records; this does not depend on it.)
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from remediation.clients.fabric import Connection
from remediation.clients.keyvault import SecretValue
from remediation.clients.powerbi_models import GatewayDatasource
from remediation.config.bindings import Binding, Target
from remediation.ledger import Outcome
from remediation.reconciler.run_secrets import LIVE_RUNS, scrub_exception
from remediation.rules.accounts import presentation_locator
from remediation.rules.redact import SecretMask, mask_urls
from remediation.telemetry.redaction import REDACTOR

__all__ = [
    "QUIET_ACTION",
    "Resolved",
    "Run",
    "TakeOver",
    "outcomes_to",
    "recorded",
]

QUIET_ACTION = "already-current"
"""The action a summarising run records once, as a count: a target that already holds the
current version (nothing was sent, nothing changed)."""


_T = TypeVar("_T")

READ_AHEAD_THREADS = 8
"""How many of a run's reads ahead (:meth:`Run.read_ahead`) are in flight at once."""

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
    # Accounts (and versions) a refresh of this run proved (completed), or is still proving: see
    # Refreshes.refresh_in_turn (a refresh is a sign-in; one dataset per account goes first).
    refresh_proven: set[str] = field(default_factory=set)
    refresh_pending: set[str] = field(default_factory=set)
    # The secret values fetched in this run, and their mask (see the module docstring).
    held: list[str] = field(default_factory=list, repr=False)
    mask: SecretMask = field(default_factory=SecretMask, repr=False)
    # Reads started before they are needed (read_ahead), by key, until someone takes them.
    ahead: dict[str, Future[Any]] = field(default_factory=dict, repr=False)
    ahead_pool: ThreadPoolExecutor | None = field(default=None, repr=False)

    def read_ahead(self, key: str, read: Callable[[], Any]) -> None:
        """Start ``read`` now, beside the run's other work, for whoever needs it under ``key``
        later (:meth:`take_read`). Once per key and run; what no one takes is dropped when the
        run ends. A read ahead is a request and its answer: it never waits for another read
        ahead, and a run lock it takes (the gateway list's) is never held by a thread waiting
        for a read ahead, so no thread waits in a circle."""
        with self.lock:
            if key in self.ahead:
                return
            if self.ahead_pool is None:
                self.ahead_pool = ThreadPoolExecutor(READ_AHEAD_THREADS, thread_name_prefix="read-ahead")
                self.scopes.callback(self._end_reads_ahead)
            self.ahead[key] = self.ahead_pool.submit(contextvars.copy_context().run, read)

    def take_read(self, key: str, read: Callable[[], _T]) -> _T:
        """The answer of the read started under ``key`` (its error is raised here, as if the read
        had been made now), or ``read()`` when none was started or it was taken already: a read
        ahead replaces exactly the first read of its key, so a failed one is asked again by the
        next caller, as without it."""
        with self.lock:
            started = self.ahead.pop(key, None)
        if started is None:
            return read()
        result: _T = started.result()
        return result

    def _end_reads_ahead(self) -> None:
        """The run ends: wait for its reads still in flight (none outlives the run), then drop
        the answers no one took (a secret among them is not kept)."""
        pool = self.ahead_pool
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            self.ahead.clear()

    def hold_secret(self, value: str) -> None:
        """A secret value this run fetched: from now until :meth:`drop_secrets` it is masked in
        every text the run lets out (and the password inside a JSON value too), and telemetry's
        ``REDACTOR`` masks it in spans and exported records."""
        if not value:
            return
        handle = REDACTOR.register(value)
        with self.lock:
            self.redactions.append(handle)
            if value not in self.held:
                self.held.append(value)
                self.mask = SecretMask(self.held)
                LIVE_RUNS.hold(self, self.mask)

    def redact(self, text: str) -> str:
        """``text`` without the run's secret values (in any form) and without URL keys."""
        return mask_urls(self.mask.mask(text))

    def drop_secrets(self) -> None:
        """The run ends: an exception on its way out of it (the one being raised or handled
        now) is masked in place (:func:`scrub_exception`), then the secret values are forgotten
        and telemetry's redactions released."""
        escaping = sys.exc_info()[1]
        if escaping is not None and self.mask:
            scrub_exception(escaping, self.mask)
        LIVE_RUNS.drop(self)
        with self.lock:
            self.secrets.clear()  # the secret values are not kept past the command
            self.held.clear()
            self.mask = SecretMask()
            handles, self.redactions = self.redactions, []
        for handle in handles:
            REDACTOR.unregister(handle)

    def add(self, outcome: Outcome) -> Outcome:
        """Keep the outcome (the caller's report lists it) and record it (ledger, as it happens),
        unless it is a repetition that the run's summary will stand for. Its texts are masked
        first (:meth:`redact`): what is kept, recorded and returned is the masked outcome."""
        outcome = self._masked(outcome)
        quiet = self.summarise and outcome.action == QUIET_ACTION and outcome.dataset_id is None
        with self.lock:
            self.outcomes.append(outcome)
            if quiet:
                self.quiet.append(outcome)
        if self.persist is not None and not quiet:
            self.persist(outcome)
        return outcome

    def _masked(self, outcome: Outcome) -> Outcome:
        reason = self.redact(outcome.reason) if outcome.reason else outcome.reason
        state = self.redact(outcome.refresh_state) if outcome.refresh_state else outcome.refresh_state
        if reason == outcome.reason and state == outcome.refresh_state:
            return outcome
        return replace(outcome, reason=reason, refresh_state=state)

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
        warning = self.redact(warning)
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
    username: str | None = None  # the user it signs in as, once the secret is read (JSON overrides)

    @property
    def where(self) -> str:
        """The locator the account rules use (see :func:`remediation.rules.accounts.presentation_locator`):
        a Windows account's domain, else the source's server, else one of this target alone. Set
        :attr:`username` first (the healer does, from the secret): a JSON secret's user name
        decides whether a Windows account is a domain account."""
        return presentation_locator(self.binding, self.locator, self.target.key, self.username)


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
