"""The healer: bring bound data sources to Key Vault's current secret, then retry what failed.

Four entry points, one per trigger kind: :meth:`Healer.heal_secret` (a new secret version),
:meth:`Healer.heal_dataset` (a refresh failed), :meth:`Healer.heal_target` (one data source) and
:meth:`Healer.sweep` (the reconciler: drift between Key Vault and the ledger, and failed refreshes
no event reported). Each returns a :class:`Report` of :class:`~remediation.ledger.Outcome`\\ s.

For every target the healer first *decides* (:func:`decide`, pure, from the ledger's state) and
only then acts. The rules of DESIGN.md are enforced here:

* idempotent: a target whose ledger says it holds version V is not patched with V again;
* lockout-safe: a version the source rejected is never presented to that target again, and
  credential updates per target are bounded per time window;
* one writer per target: the update happens under the target's ledger lease;
* non-credential failures change no credentials;
* no secret value is ever put in an outcome, a log record or an exception message.

Dry-run stops after deciding: no lease, no PATCH, no refresh, no ledger write.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from typing import TypeVar

from remediation.bindings import Binding, BindingSet, CredentialType, Target
from remediation.credentials import (
    ResolvedCredential,
    credential_details,
    resolve_credential,
    update_datasource_request,
)
from remediation.diagnosis import Category, Diagnosis, diagnose_api_error, diagnose_refresh
from remediation.errors import RemediationError
from remediation.gateway_crypto import encrypt_credentials
from remediation.http import ApiError
from remediation.identity import AuthenticationError
from remediation.keyvault import KeyVaultClient, SecretValue
from remediation.ledger import Lease, LeaseLost, Ledger, Outcome, TargetState, utc_day
from remediation.powerbi import (
    DatasetDatasource,
    EntityNotFound,
    Gateway,
    GatewayDatasource,
    InvalidId,
    PowerBIClient,
    PowerBINotAuthorized,
    Refresh,
    RefreshAlreadyRunning,
    RefreshQuotaExceeded,
)
from remediation.redact import describe_datasource, mask_urls
from remediation.settings import Settings
from remediation.telemetry import REDACTOR

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
_R = TypeVar("_R")

UserTokenFactory = Callable[[str, Callable[[], str]], Callable[[], str]]
"""``(username, password_supplier) -> token provider`` for OAuth2 caller-identity bindings."""


class Action(StrEnum):
    """What happened to a target or a dataset. The first group changes nothing."""

    # targets
    UPDATED = "updated"  # the PATCH was accepted: the target holds the version now
    CURRENT = "already-current"  # the ledger says the target holds the version: nothing sent
    REJECTED = "rejected"  # the source refused the version just now; it will not be sent again
    BLOCKED = "blocked"  # the source refused this version before; waiting for a new version
    LIMITED = "attempt-limit"  # too many updates in the window; waiting for the window to pass
    BUSY = "busy"  # another writer holds the target's lease
    FAILED = "failed"  # an error that is not the source's verdict (network, permission, ...)
    IN_DOUBT = "in-doubt"  # presented, but the verdict never came back: not presented again
    SETTLING = "settling"  # the version is younger than REMEDIATION_SETTLE_SECONDS: later
    WOULD_UPDATE = "would-update"  # dry-run
    # datasets
    REFRESHED = "refreshed"  # a refresh was started (and followed: see refresh_state)
    WOULD_REFRESH = "would-refresh"  # dry-run
    REFRESH_RUNNING = "refresh-running"  # a refresh already runs: no second one
    REFRESH_BUDGET = "refresh-budget"  # the daily refresh budget for this dataset is used up
    HEALTHY = "healthy"  # the last refresh did not fail
    NOT_CREDENTIAL = "not-credential"  # it failed for a reason a credential cannot cure
    UNBOUND = "unbound"  # a data source no binding covers
    DEFERRED = "deferred"  # the sweep's time budget ran out before this


# Actions after which a target holds the current version (exit code 0).
HOLDS_CURRENT = frozenset({Action.UPDATED, Action.CURRENT})
# Actions that mean "something needs a person or a later run" (exit code 1).
PROBLEMS = frozenset(
    {
        Action.REJECTED,
        Action.BLOCKED,
        Action.LIMITED,
        Action.BUSY,
        Action.FAILED,
        Action.IN_DOUBT,
        Action.SETTLING,
        Action.UNBOUND,
        Action.DEFERRED,
    }
)


GATEWAY_CACHE_SECONDS = 3600.0
"""How long a gateway's public key is reused across runs (a changed key is detected anyway)."""


class NotBound(RemediationError):
    """The secret, data source or dataset named by a command is not in the bindings."""


class SecretVersionNotFound(NotBound):
    """An explicit version named by a command does not exist in Key Vault, or is disabled.

    Nothing is sent: the operator asked for that version, and applying another one instead
    would do something they did not ask for. (HTTP 404 ``SecretVersionNotFound``, exit 2.)"""


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def decide(
    state: TargetState,
    secret: str,
    version: str,
    *,
    now: float,
    max_attempts: int,
    window_seconds: float,
) -> Decision:
    """What to do for one target, from its ledger state alone (pure).

    Order matters: a target that already holds the version is fine whatever else is true; a
    version the source rejected stays blocked however long ago that was; only then do the
    attempt bound and the update itself come in.
    """
    if state.holds(secret, version):
        return Decision(Action.CURRENT, f"holds version {version} since the last update")
    if state.is_rejected(version):
        return Decision(
            Action.BLOCKED,
            f"the source rejected version {version} before; it is not presented again. Put the "
            f"right value in Key Vault as a new version of {secret!r}",
        )
    attempts = state.attempts_since(now - window_seconds)
    if attempts >= max_attempts:
        return Decision(
            Action.LIMITED,
            f"{attempts} credential updates in the last {int(window_seconds)} s (limit {max_attempts}); "
            "the next run after the window tries again",
        )
    return Decision(Action.UPDATED, f"holds {state.applied_version or 'an unknown version'}, not {version}")


@dataclass
class Report:
    """The outcomes of one command, in the order they were produced."""

    outcomes: list[Outcome] = field(default_factory=list)
    dry_run: bool = False
    correlation_id: str = ""
    retry_at: float | None = None
    """Epoch seconds at which the same command should run again (a version still settling),
    or None. The CLI waits for it; the Functions app re-queues the command with that delay."""

    @property
    def exit_code(self) -> int:
        """0: every target in scope holds the current secret (or, dry-run, could); 1: not."""
        return 1 if any(o.action in PROBLEMS for o in self.outcomes) else 0

    def targets(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.datasource_id is not None]

    def datasets(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.datasource_id is None and o.dataset_id is not None]

    def to_dict(self) -> dict[str, object]:
        return {
            "correlationId": self.correlation_id,
            "dryRun": self.dry_run,
            "exitCode": self.exit_code,
            "retryAt": self.retry_at,
            "targets": [o.to_dict() for o in self.targets()],
            "datasets": [o.to_dict() for o in self.datasets()],
        }


@dataclass
class _Run:
    """What one command learns as it goes: secrets and gateways are fetched once per run."""

    trigger: str
    correlation_id: str
    dry_run: bool
    started: float
    deadline: float | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    secrets: dict[str, SecretValue] = field(default_factory=dict)
    redactions: list[int] = field(default_factory=list)
    gateways: dict[str, Gateway] = field(default_factory=dict)
    gateway_datasources: list[tuple[str, GatewayDatasource]] | None = None
    settled: dict[tuple[str, str], Outcome] = field(default_factory=dict)  # targets done this run
    lock: threading.Lock = field(default_factory=threading.Lock)
    key_locks: dict[str, threading.Lock] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> Outcome:
        with self.lock:
            self.outcomes.append(outcome)
        return outcome

    def key_lock(self, key: str) -> threading.Lock:
        with self.lock:
            return self.key_locks.setdefault(key, threading.Lock())


@dataclass(frozen=True)
class _Resolved:
    binding: Binding
    target: Target


class Healer:
    """Plans and executes remediation. Thread-safe; one instance serves many commands."""

    def __init__(
        self,
        settings: Settings,
        bindings: BindingSet,
        *,
        powerbi: PowerBIClient,
        keyvault: KeyVaultClient,
        ledger: Ledger,
        user_tokens: UserTokenFactory | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        owner: str | None = None,
        poll_interval: float = 5.0,
    ) -> None:
        self.settings = settings
        self.bindings = bindings
        self.powerbi = powerbi
        self.keyvault = keyvault
        self.ledger = ledger
        self._user_tokens = user_tokens
        self._user_providers: dict[tuple[str, str, str], Callable[[], str]] = {}
        self._user_lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._poll_interval = poll_interval
        self._gateways: dict[str, tuple[Gateway, float]] = {}  # id -> (gateway, read at)
        self._gateway_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------
    # Entry points
    # ------------------------------------------------------------------------------------------
    def heal_secret(
        self,
        name: str,
        version: str | None = None,
        *,
        dry_run: bool = False,
        trigger: str = "manual",
        correlation_id: str | None = None,
        retry_refreshes: bool = True,
        deadline: float | None = None,
    ) -> Report:
        """Push Key Vault's current version of ``name`` to every target bound to it, then retry
        the refreshes that failed on those data sources.

        ``version`` is the version an event announced. The healer always applies the *current*
        version: events arrive late and out of order, and an older version is never right.
        Raises :class:`NotBound` when no binding uses ``name``.
        """
        bindings = self.bindings.for_secret(name)
        if not bindings:
            raise NotBound(f"no binding uses the secret {name!r}")
        run = self._start(trigger, correlation_id, dry_run, deadline)
        if version is not None:
            logger.info("secret %s: event announced version %s", name, version)
        resolved = self._resolve_targets(bindings, run)
        self._heal_targets(resolved, run)
        if retry_refreshes:
            healed = {
                (o.gateway_id, o.datasource_id)
                for o in run.outcomes
                if o.action in (Action.UPDATED, Action.WOULD_UPDATE, Action.CURRENT)
            }
            if healed:
                self._retry_failed_refreshes(healed, run)
        return self._finish(run)

    def heal_target(
        self,
        gateway_id: str,
        datasource_id: str,
        *,
        dry_run: bool = False,
        trigger: str = "manual",
        correlation_id: str | None = None,
        deadline: float | None = None,
    ) -> Report:
        """Bring one gateway data source to its binding's current secret."""
        gateway_id, datasource_id = gateway_id.lower(), datasource_id.lower()
        binding = self.bindings.for_target(gateway_id, datasource_id)
        run = self._start(trigger, correlation_id, dry_run, deadline)
        if binding is None:
            binding = self._binding_by_match(gateway_id, datasource_id, run)
        if binding is None:
            raise NotBound(f"no binding covers gateway {gateway_id} data source {datasource_id}")
        self._heal_targets([_Resolved(binding, Target(gateway_id, datasource_id))], run)
        return self._finish(run)

    def heal_dataset(
        self,
        workspace_id: str,
        dataset_id: str,
        *,
        dry_run: bool = False,
        trigger: str = "manual",
        correlation_id: str | None = None,
        latest: Refresh | None = None,
        deadline: float | None = None,
    ) -> Report:
        """Diagnose the dataset's last refresh; if it failed for credentials, reapply the current
        secret to its bound data sources and retry the refresh. Anything else is reported with
        the fix a person needs, and no credential is touched.

        Raises :class:`NotBound` when the dataset does not exist or the identity cannot see it.
        """
        workspace_id, dataset_id = workspace_id.lower(), dataset_id.lower()
        fresh = latest is None
        if latest is None:
            try:
                history = self.powerbi.get_refresh_history_in_group(workspace_id, dataset_id, top=1)
            except (EntityNotFound, InvalidId):
                raise NotBound(
                    f"dataset {dataset_id} was not found in workspace {workspace_id}, or the identity "
                    "is not a member of that workspace"
                ) from None
            except ApiError:
                history = []  # reported by _heal_dataset, which reads it again
            latest = history[0] if history else None
        run = self._start(trigger, correlation_id, dry_run, deadline)
        self._heal_dataset(workspace_id, dataset_id, run, latest=latest, latest_is_fresh=fresh)
        return self._finish(run)

    def sweep(
        self,
        *,
        dry_run: bool = False,
        trigger: str = "timer",
        correlation_id: str | None = None,
        budget_seconds: float | None = None,
        progress: Callable[[str], None] | None = None,
        deadline: float | None = None,
    ) -> Report:
        """The reconciler. First every binding's targets are brought to Key Vault's current
        version (a lost event must not matter), then the watched workspaces (or all visible
        ones) are scanned for refreshes that failed for credentials, which are healed.

        Work not started within ``budget_seconds`` is reported as deferred; the next sweep
        picks it up (nothing is lost: the state is in Key Vault, Power BI and the ledger).
        """
        run = self._start(trigger, correlation_id, dry_run, deadline)
        budget = self.settings.sweep_budget_seconds if budget_seconds is None else budget_seconds
        run.deadline = min(run.started + budget, deadline if deadline is not None else float("inf"))
        say = progress or (lambda _m: None)

        resolved: list[_Resolved] = []
        for secret in self.bindings.secrets():
            resolved.extend(self._resolve_targets(self.bindings.for_secret(secret), run))
        say(f"checking {len(resolved)} bound data sources against Key Vault")
        self._heal_targets(resolved, run)

        failed = self._scan_failed_datasets(run, say)
        say(f"{len(failed)} datasets whose last refresh failed")

        def heal(found: tuple[str, str, Refresh]) -> None:
            workspace_id, dataset_id, latest = found
            if self._out_of_time(run):
                self._report_dataset(
                    run,
                    workspace_id,
                    dataset_id,
                    Action.DEFERRED,
                    "the sweep's time budget ran out; the next sweep continues",
                )
                return
            self._heal_dataset(workspace_id, dataset_id, run, latest=latest, latest_is_fresh=True)

        self._in_parallel(heal, failed)
        return self._finish(run)

    # ------------------------------------------------------------------------------------------
    # Targets
    # ------------------------------------------------------------------------------------------
    def _in_parallel(self, work: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        """``work`` over ``items`` with the configured concurrency; results in item order.
        (Every HTTP call also passes the pipeline's own limits, so nesting stays bounded.)"""
        workers = max(1, min(self.settings.concurrency, len(items)))
        if workers == 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="healer") as pool:
            return list(pool.map(work, items))

    def _heal_targets(self, resolved: Sequence[_Resolved], run: _Run) -> list[Outcome]:
        return self._in_parallel(lambda item: self._heal_one(item, run), resolved)

    def _heal_one(self, item: _Resolved, run: _Run) -> Outcome:
        binding, target = item.binding, item.target
        started = self._clock()
        base = Outcome(
            time=started,
            trigger=run.trigger,
            correlation_id=run.correlation_id,
            binding=binding.name,
            secret_name=binding.secret,
            gateway_id=target.gateway_id,
            datasource_id=target.datasource_id,
        )

        def done(action: Action, reason: str, version: str | None = None) -> Outcome:
            outcome = replace(
                base,
                action=action.value,
                reason=mask_urls(reason),
                secret_version=version,
                duration=round(self._clock() - started, 3),
            )
            logger.info(
                "target %s/%s (%s): %s — %s",
                target.gateway_id,
                target.datasource_id,
                binding.name,
                action.value,
                reason,
            )
            return run.add(outcome)

        with run.key_lock(f"target:{target.gateway_id}/{target.datasource_id}"):
            previous = run.settled.get(target.key)
            if previous is not None:  # already handled in this run (e.g. a dataset retry after a heal)
                return previous
            outcome = self._heal_one_locked(item, run, done)
            run.settled[target.key] = outcome
            return outcome

    def _heal_one_locked(self, item: _Resolved, run: _Run, done: Callable[..., Outcome]) -> Outcome:
        binding, target = item.binding, item.target
        if self._out_of_time(run):
            return done(Action.DEFERRED, "the time budget ran out; the next run continues")
        try:
            secret = self._secret(binding.secret, run)
        except RemediationError as exc:
            return done(Action.FAILED, f"Key Vault: {exc}")
        version = secret.version
        decision = self._decide(target, binding, version)
        if decision.action is not Action.UPDATED:
            return done(decision.action, decision.reason, version)
        if run.dry_run:
            return done(Action.WOULD_UPDATE, decision.reason, version)

        lease = self.ledger.acquire_lease(
            target.gateway_id, target.datasource_id, self.owner, self._clock(), self.settings.lease_seconds
        )
        if lease is None:
            return done(Action.BUSY, "another instance is updating this data source", version)
        try:
            # Decide again under the lease: the previous holder may have just applied it.
            decision = self._decide(target, binding, version)
            if decision.action is not Action.UPDATED:
                return done(decision.action, decision.reason, version)
            action, reason = self._apply(binding, target, secret, lease, run)
            return done(action, reason, version)
        except LeaseLost:
            return done(Action.BUSY, "the lease was taken over by another instance", version)
        finally:
            try:
                self.ledger.release_lease(lease)
            except RemediationError:  # pragma: no cover - best effort; the lease expires anyway
                logger.warning(
                    "could not release the lease on %s/%s", target.gateway_id, target.datasource_id
                )

    def _decide(self, target: Target, binding: Binding, version: str) -> Decision:
        state = self.ledger.target_state(target.gateway_id, target.datasource_id)
        return decide(
            state,
            binding.secret,
            version,
            now=self._clock(),
            max_attempts=self.settings.max_attempts,
            window_seconds=self.settings.attempt_window_seconds,
        )

    def _apply(
        self, binding: Binding, target: Target, secret: SecretValue, lease: Lease, run: _Run
    ) -> tuple[Action, str]:
        """Build the payload, record the attempt, PATCH, and record the source's verdict."""
        try:
            resolved = resolve_credential(binding, secret.value)
            token: str | None = None
            gateway: Gateway | None = None
            if binding.credential_type is CredentialType.OAUTH2:
                token = self._user_token(binding, secret)()
                body = update_datasource_request(credential_details(binding, resolved, encrypt=None))
            else:
                try:
                    gateway = self._gateway(target.gateway_id, run)
                except PowerBINotAuthorized:
                    # A cloud data source's gateway is visible to owners of a dataset using it.
                    if not (binding.take_over and self._take_over_for(target, run)):
                        raise
                    gateway = self._gateway(target.gateway_id, run)
                body = _request_body(binding, resolved, gateway)
            del resolved
        except AuthenticationError as exc:
            if exc.credentials_rejected:
                self.ledger.record_rejected(lease, binding.secret, secret.version, self._clock())
                return Action.REJECTED, f"Entra ID rejected the password of {binding.username}: {exc}"
            return Action.FAILED, f"could not sign in as {binding.username}: {exc}"
        except RemediationError as exc:
            return Action.FAILED, str(exc)

        self.ledger.record_attempt(lease, self._clock())
        try:
            try:
                self._update(binding, target, body, token, run)
            except ApiError as exc:
                fresh = None if gateway is None else self._fresh_key_after(exc, gateway, run)
                if fresh is None:
                    raise
                # The gateway could not decrypt: its key changed since we cached it. Nothing reached
                # the source, so sending again under the new key costs no sign-in attempt.
                body = _request_body(binding, resolve_credential(binding, secret.value), fresh)
                self._update(binding, target, body, token, run)
        except ApiError as exc:
            diagnosis = diagnose_api_error(
                exc.status or 0, exc.code, message=exc.message, detail_codes=[c for c, _ in exc.details]
            )
            if exc.status == 400 and diagnosis.credential_related:
                self.ledger.record_rejected(lease, binding.secret, secret.version, self._clock())
                return Action.REJECTED, (
                    f"the source rejected version {secret.version} ({exc.code}); it will not be presented "
                    f"again. {diagnosis.fix}"
                )
            return Action.FAILED, f"{diagnosis.message}. {diagnosis.fix}"
        self.ledger.record_applied(lease, binding.secret, secret.version, self._clock())
        return Action.UPDATED, f"now holds version {secret.version}"

    def _update(
        self, binding: Binding, target: Target, body: dict[str, object], token: str | None, run: _Run
    ) -> None:
        try:
            self.powerbi.update_datasource(target.gateway_id, target.datasource_id, body, token=token)
        except PowerBINotAuthorized:
            # A cloud data source needs the caller to own a dataset that uses it (Take Over).
            if not binding.take_over or token is not None or not self._take_over_for(target, run):
                raise
            self.powerbi.update_datasource(target.gateway_id, target.datasource_id, body)

    def _take_over_for(self, target: Target, run: _Run) -> bool:
        """Take over a dataset that uses ``target`` (bindings with ``takeOver`` only)."""
        owner_of = self._dataset_using(target, run)
        if owner_of is None:
            return False
        self.powerbi.take_over_in_group(*owner_of)
        logger.info("took over dataset %s to update %s", owner_of[1], target.datasource_id)
        return True

    def _user_token(self, binding: Binding, secret: SecretValue) -> Callable[[], str]:
        if self._user_tokens is None:
            raise RemediationError(f"binding {binding.name!r} needs user tokens, which are not configured")
        username = binding.username or ""
        key = (username.lower(), binding.secret, secret.version)
        with self._user_lock:
            provider = self._user_providers.get(key)
            if provider is None:
                # The provider asks Key Vault again when it needs the password, so no copy is kept.
                provider = self._user_tokens(
                    username, lambda: self.keyvault.get_secret(secret.name, secret.version).value
                )
                self._user_providers[key] = provider
        return provider

    # ------------------------------------------------------------------------------------------
    # Datasets
    # ------------------------------------------------------------------------------------------
    def _heal_dataset(
        self,
        workspace_id: str,
        dataset_id: str,
        run: _Run,
        latest: Refresh | None = None,
        sources: Sequence[DatasetDatasource] | None = None,
        *,
        latest_is_fresh: bool = False,
    ) -> None:
        report = partial(self._report_dataset, run, workspace_id, dataset_id)

        try:
            if latest is None:
                history = self.powerbi.get_refresh_history_in_group(workspace_id, dataset_id, top=1)
                latest = history[0] if history else None
        except ApiError as exc:
            report(Action.FAILED, f"could not read the refresh history: {exc}")
            return
        if latest is None:
            report(Action.HEALTHY, "the dataset has no refresh history")
            return
        if latest.running:
            report(
                Action.REFRESH_RUNNING,
                "a refresh is running; nothing to do until it ends",
                refresh_request_id=latest.request_id,
                refresh_state=latest.status,
            )
            return
        if not latest.failed:
            report(Action.HEALTHY, f"the last refresh is {latest.status}", refresh_state=latest.status)
            return
        diagnosis = _diagnose(latest)
        if not diagnosis.credential_related:
            report(
                Action.NOT_CREDENTIAL,
                f"{diagnosis.message}. {diagnosis.fix}",
                refresh_request_id=latest.request_id,
                refresh_state=latest.status,
            )
            return

        if sources is None:
            try:
                sources = self.powerbi.get_datasources_in_group(workspace_id, dataset_id)
            except ApiError as exc:
                report(Action.FAILED, f"could not list the dataset's data sources: {exc}")
                return
        resolved: list[_Resolved] = []
        for source in sources:
            if not source.bound or source.gateway_id is None or source.datasource_id is None:
                continue
            binding = self.bindings.for_target(source.gateway_id, source.datasource_id)
            if binding is None:
                try:
                    binding = self.bindings.for_datasource(
                        source.gateway_id,
                        source.datasource_id,
                        datasource_type=source.datasource_type or "",
                        connection_details=_text_map(source.connection_details),
                    )
                except RemediationError as exc:
                    report(Action.FAILED, str(exc))
                    continue
            if binding is None:
                report(
                    Action.UNBOUND,
                    f"data source {describe_datasource(source.datasource_type, source.connection_details)} "
                    "has no binding: add one to the bindings file so it can be healed",
                    gateway_id=source.gateway_id.lower(),
                    datasource_id=source.datasource_id.lower(),
                )
                continue
            resolved.append(
                _Resolved(binding, Target(source.gateway_id.lower(), source.datasource_id.lower()))
            )
        outcomes = self._heal_targets(resolved, run)
        if resolved and all(o.action in HOLDS_CURRENT or o.action == Action.WOULD_UPDATE for o in outcomes):
            self._mark_rejected_if_current_failed(resolved, outcomes, latest, run)
            outcomes = [o for o in run.outcomes if o.dataset_id is None and o in outcomes]
        if not resolved:
            report(
                Action.UNBOUND,
                "the refresh failed for credentials but none of the dataset's "
                "data sources is bound: add a binding",
            )
            return
        if all(o.action in HOLDS_CURRENT or o.action == Action.WOULD_UPDATE for o in outcomes):
            self._refresh(workspace_id, dataset_id, run, check_running=not latest_is_fresh)
        else:
            report(
                Action.FAILED,
                "not refreshed: a data source of this dataset could not be healed (see its outcome)",
            )

    def _mark_rejected_if_current_failed(
        self, resolved: Sequence[_Resolved], outcomes: Sequence[Outcome], latest: Refresh, run: _Run
    ) -> None:
        """A credential failure *after* the current version was applied means the source rejects
        the current version itself. Then retrying would only count toward a lockout: the version
        is recorded as rejected (so it is never presented again) and the refresh is not retried.
        """
        if run.dry_run or latest.start_time is None:
            return
        failed_at = latest.start_time.timestamp()
        for item, outcome in zip(resolved, outcomes, strict=True):
            if outcome.action != Action.CURRENT:
                continue
            state = self.ledger.target_state(item.target.gateway_id, item.target.datasource_id)
            if state.applied_at is None or state.applied_at > failed_at or outcome.secret_version is None:
                continue
            lease = self.ledger.acquire_lease(
                item.target.gateway_id,
                item.target.datasource_id,
                self.owner,
                self._clock(),
                self.settings.lease_seconds,
            )
            if lease is None:
                continue
            try:
                self.ledger.record_rejected(lease, item.binding.secret, outcome.secret_version, self._clock())
            finally:
                self.ledger.release_lease(lease)
            with run.lock:
                index = run.outcomes.index(outcome)
                run.outcomes[index] = replace(
                    outcome,
                    action=Action.BLOCKED.value,
                    reason=f"a refresh failed for credentials after version {outcome.secret_version} was "
                    "applied: the source rejects it, so it is not presented again. Put the right value in "
                    f"Key Vault as a new version of {item.binding.secret!r}",
                )

    def _refresh(self, workspace_id: str, dataset_id: str, run: _Run, *, check_running: bool) -> None:
        """Retry the refresh: never while one runs, within the daily budget, schedule re-enabled.

        ``check_running`` reads the history first; it is skipped when this run has just read it
        (a refresh started since is refused by Power BI and reported as running, not retried).
        """

        report = partial(self._report_dataset, run, workspace_id, dataset_id)

        now = self._clock()
        day = utc_day(now)
        try:
            history = (
                self.powerbi.get_refresh_history_in_group(workspace_id, dataset_id, top=1)
                if check_running
                else []
            )
            if history and history[0].running:
                report(
                    Action.REFRESH_RUNNING,
                    "a refresh is already running: not starting another",
                    refresh_request_id=history[0].request_id,
                    refresh_state=history[0].status,
                )
                return
            used = self.ledger.refresh_posts(dataset_id, day)
            if used >= self.settings.refresh_daily_budget:
                report(
                    Action.REFRESH_BUDGET,
                    f"{used} refreshes started today (budget "
                    f"{self.settings.refresh_daily_budget}); the next scheduled refresh will run",
                )
                return
            schedule = self.powerbi.get_refresh_schedule_in_group(workspace_id, dataset_id)
            if run.dry_run:
                again = "" if schedule.enabled else " and re-enable its schedule"
                report(Action.WOULD_REFRESH, f"would refresh the dataset{again}")
                return
            notes = []
            if not schedule.enabled and schedule.days:
                self.powerbi.update_refresh_schedule_in_group(workspace_id, dataset_id, True)
                notes.append("schedule re-enabled")
            self.ledger.record_refresh_post(dataset_id, day)
            request = self.powerbi.refresh_dataset_in_group(workspace_id, dataset_id)
        except RefreshAlreadyRunning:
            report(Action.REFRESH_RUNNING, "a refresh is already running: not starting another")
            return
        except RefreshQuotaExceeded as exc:
            report(Action.REFRESH_BUDGET, f"Power BI's daily refresh limit is reached: {exc}")
            return
        except ApiError as exc:
            report(Action.FAILED, f"could not refresh: {exc}")
            return
        final = self._follow(workspace_id, dataset_id, request.request_id)
        state = final.status if final is not None else "Unknown"
        reason = f"refresh {state}"
        if final is not None and final.failed:
            reason += f": {_diagnose(final).message}"
        elif final is None or final.running:
            reason += f" after {self.settings.refresh_timeout_seconds} s; it goes on in Power BI"
        if notes:
            reason += f" ({', '.join(notes)})"
        report(Action.REFRESHED, reason, refresh_request_id=request.request_id, refresh_state=state)

    def _follow(self, workspace_id: str, dataset_id: str, request_id: str) -> Refresh | None:
        """Poll the history until the refresh ``request_id`` ends or the time limit passes."""
        deadline = self._clock() + self.settings.refresh_timeout_seconds
        interval = min(self._poll_interval, 1.0)
        last: Refresh | None = None
        while True:
            try:
                for entry in self.powerbi.get_refresh_history_in_group(workspace_id, dataset_id, top=5):
                    if (entry.request_id or "").lower() == request_id:
                        last = entry
                        break
            except ApiError as exc:
                logger.warning("following refresh %s: %s", request_id, exc)
            if last is not None and not last.running:
                return last
            if self._clock() + interval > deadline:
                return last
            self._sleep(interval)
            interval = min(interval * 2, self._poll_interval)

    def _retry_failed_refreshes(self, healed: set[tuple[str | None, str | None]], run: _Run) -> None:
        """After a secret change: refresh the datasets on the healed data sources whose last
        refresh failed for credentials."""

        def retry(found: tuple[str, str, Refresh]) -> None:
            workspace_id, dataset_id, latest = found
            try:
                sources = self.powerbi.get_datasources_in_group(workspace_id, dataset_id)
            except ApiError as exc:
                logger.warning("dataset %s: cannot list data sources: %s", dataset_id, exc)
                return
            uses = {((s.gateway_id or "").lower(), (s.datasource_id or "").lower()) for s in sources}
            if uses & healed:
                self._heal_dataset(
                    workspace_id, dataset_id, run, latest=latest, sources=sources, latest_is_fresh=True
                )

        self._in_parallel(retry, self._scan_failed_datasets(run, lambda _m: None))

    def _scan_failed_datasets(self, run: _Run, say: Callable[[str], None]) -> list[tuple[str, str, Refresh]]:
        """Datasets (in the watched workspaces, or all visible) whose last refresh failed for
        credentials. One history call per dataset, concurrently."""
        try:
            workspaces = list(self.bindings.watch_workspaces) or [g.id for g in self.powerbi.get_groups()]
        except ApiError as exc:
            logger.warning("cannot list workspaces: %s", exc)
            return []
        datasets: list[tuple[str, str]] = []
        for workspace_id in workspaces:
            try:
                datasets.extend(
                    (workspace_id.lower(), d.id.lower())
                    for d in self.powerbi.get_datasets_in_group(workspace_id)
                    if d.is_refreshable is not False
                )
            except ApiError as exc:
                logger.warning("workspace %s: cannot list datasets: %s", workspace_id, exc)
        say(f"scanning {len(datasets)} datasets in {len(workspaces)} workspaces")

        def latest(pair: tuple[str, str]) -> tuple[str, str, Refresh] | None:
            if self._out_of_time(run):
                return None
            try:
                history = self.powerbi.get_refresh_history_in_group(pair[0], pair[1], top=1)
            except ApiError as exc:
                logger.warning("dataset %s: cannot read refresh history: %s", pair[1], exc)
                return None
            if history and history[0].failed and _diagnose(history[0]).category is Category.CREDENTIAL:
                return pair[0], pair[1], history[0]
            return None

        return [found for found in self._in_parallel(latest, datasets) if found is not None]

    # ------------------------------------------------------------------------------------------
    # Resolution and caches
    # ------------------------------------------------------------------------------------------
    def _resolve_targets(self, bindings: Iterable[Binding], run: _Run) -> list[_Resolved]:
        resolved: list[_Resolved] = []
        seen: set[tuple[str, str]] = set()
        for binding in bindings:
            for target in binding.targets:
                if target.key not in seen:
                    seen.add(target.key)
                    resolved.append(_Resolved(binding, target))
            if binding.matches:
                for gateway_id, datasource_id in self._matching_datasources(binding, run):
                    if (gateway_id, datasource_id) not in seen:
                        seen.add((gateway_id, datasource_id))
                        resolved.append(_Resolved(binding, Target(gateway_id, datasource_id)))
        return resolved

    def _matching_datasources(self, binding: Binding, run: _Run) -> list[tuple[str, str]]:
        found = []
        for gateway_id, datasource in self._all_gateway_datasources(run):
            details = _text_map(datasource.connection() or {})
            if binding.matches_datasource(datasource.datasource_type or "", details):
                explicit = self.bindings.for_target(gateway_id, datasource.id)
                if explicit is None or explicit.name == binding.name:
                    found.append((gateway_id, datasource.id.lower()))
        return found

    def _binding_by_match(self, gateway_id: str, datasource_id: str, run: _Run) -> Binding | None:
        for gw, datasource in self._all_gateway_datasources(run):
            if gw == gateway_id and datasource.id.lower() == datasource_id:
                return self.bindings.for_datasource(
                    gateway_id,
                    datasource_id,
                    datasource_type=datasource.datasource_type or "",
                    connection_details=_text_map(datasource.connection() or {}),
                )
        return None

    def _all_gateway_datasources(self, run: _Run) -> list[tuple[str, GatewayDatasource]]:
        """Every data source of every gateway the caller administers (once per run)."""
        with run.key_lock("gateway-datasources"):
            if run.gateway_datasources is None:
                found: list[tuple[str, GatewayDatasource]] = []
                for gateway in self.powerbi.get_gateways():
                    found.extend((gateway.id.lower(), d) for d in self.powerbi.get_datasources(gateway.id))
                run.gateway_datasources = found
            return run.gateway_datasources

    def _dataset_using(self, target: Target, run: _Run) -> tuple[str, str] | None:
        workspaces = list(self.bindings.watch_workspaces) or [g.id for g in self.powerbi.get_groups()]
        for workspace_id in workspaces:
            for dataset in self.powerbi.get_datasets_in_group(workspace_id):
                for source in self.powerbi.get_datasources_in_group(workspace_id, dataset.id):
                    if (
                        (source.gateway_id or "").lower(),
                        (source.datasource_id or "").lower(),
                    ) == target.key:
                        return workspace_id, dataset.id
        return None

    def _secret(self, name: str, run: _Run) -> SecretValue:
        key = name.lower()
        with run.key_lock(f"secret:{key}"):
            secret = run.secrets.get(key)
            if secret is None:
                secret = self.keyvault.get_secret(name)
                run.secrets[key] = secret
                # While the value is in memory, the telemetry redactor masks it wherever it shows.
                run.redactions.extend(REDACTOR.register(v) for v in _secret_parts(secret.value))
            return secret

    def _gateway(self, gateway_id: str, run: _Run) -> Gateway:
        """The gateway and its public key, cached across runs for :data:`GATEWAY_CACHE_SECONDS`
        (a stale key is noticed by :meth:`_fresh_key_after`)."""
        with run.key_lock(f"gateway:{gateway_id}"):
            with self._gateway_lock:
                cached = self._gateways.get(gateway_id)
            if cached is not None and self._clock() - cached[1] < GATEWAY_CACHE_SECONDS:
                return cached[0]
            gateway = self.powerbi.get_gateway(gateway_id)
            with self._gateway_lock:
                self._gateways[gateway_id] = (gateway, self._clock())
            run.gateways[gateway_id] = gateway
            return gateway

    def _fresh_key_after(self, exc: ApiError, used: Gateway, run: _Run) -> Gateway | None:
        """After ``DM_GWPipeline_UnknownError``: if ``used`` came from an earlier run's cache and
        the gateway's key has changed since, the gateway with its new key; else None (the error
        stands). Concurrent targets on one gateway read the new key once."""
        if exc.code != "DM_GWPipeline_UnknownError" or used.public_key is None:
            return None
        with run.key_lock(f"gateway:{used.id}"):
            with self._gateway_lock:
                current = self._gateways.get(used.id)
            if current is not None and current[0].public_key != used.public_key:
                return current[0]  # another target already read the new key
            if run.gateways.get(used.id) is used:
                return None  # read during this very run: the key is not stale
            fresh = self.powerbi.get_gateway(used.id)
            with self._gateway_lock:
                self._gateways[used.id] = (fresh, self._clock())
            run.gateways[used.id] = fresh
        if fresh.public_key is None or fresh.public_key == used.public_key:
            return None
        logger.info("gateway %s has a new public key; sending again under it", used.id)
        return fresh

    # ------------------------------------------------------------------------------------------
    # Bookkeeping
    # ------------------------------------------------------------------------------------------
    def _start(
        self, trigger: str, correlation_id: str | None, dry_run: bool, deadline: float | None = None
    ) -> _Run:
        """A run; ``deadline`` (epoch seconds) bounds it: work not started by then is deferred."""
        return _Run(
            trigger=trigger,
            correlation_id=correlation_id or str(uuid.uuid4()),
            dry_run=dry_run,
            started=self._clock(),
            deadline=deadline,
        )

    def _out_of_time(self, run: _Run) -> bool:
        return run.deadline is not None and self._clock() >= run.deadline

    def _report_dataset(
        self,
        run: _Run,
        workspace_id: str,
        dataset_id: str,
        action: Action,
        reason: str,
        *,
        refresh_request_id: str | None = None,
        refresh_state: str | None = None,
        gateway_id: str | None = None,
        datasource_id: str | None = None,
    ) -> Outcome:
        """Record a dataset outcome (with the data source it concerns, when one is named)."""
        logger.info("dataset %s/%s: %s — %s", workspace_id, dataset_id, action.value, reason)
        return run.add(
            Outcome(
                time=self._clock(),
                trigger=run.trigger,
                correlation_id=run.correlation_id,
                workspace_id=workspace_id,
                dataset_id=dataset_id,
                action=action.value,
                reason=mask_urls(reason),
                refresh_request_id=refresh_request_id,
                refresh_state=refresh_state,
                gateway_id=gateway_id,
                datasource_id=datasource_id,
            )
        )

    def _finish(self, run: _Run) -> Report:
        run.secrets.clear()  # the secret values are not kept past the command
        for handle in run.redactions:
            REDACTOR.unregister(handle)
        run.redactions.clear()
        if not run.dry_run:
            for outcome in run.outcomes:
                try:
                    self.ledger.add_outcome(outcome)
                except RemediationError as exc:  # pragma: no cover - reported, never fatal
                    logger.warning("could not record an outcome: %s", exc)
        return Report(outcomes=list(run.outcomes), dry_run=run.dry_run, correlation_id=run.correlation_id)


def _diagnose(refresh: Refresh) -> Diagnosis:
    entry: dict[str, object] = {"status": refresh.status}
    if refresh.service_exception_json is not None:
        entry["serviceExceptionJson"] = refresh.service_exception_json
    return diagnose_refresh(entry)


def _request_body(binding: Binding, resolved: ResolvedCredential, gateway: Gateway) -> dict[str, object]:
    """The PATCH body: encrypted for an on-premises gateway, plain for a cloud data source."""
    encrypt = None
    if gateway.public_key is not None:
        encrypt = partial(encrypt_credentials, key=gateway.public_key)
    return update_datasource_request(credential_details(binding, resolved, encrypt=encrypt))


def _secret_parts(value: str) -> list[str]:
    """The value, and the password inside a ``{"username", "password"}`` value (messages may show
    the password alone)."""
    parts = [value]
    if value.lstrip().startswith("{"):
        try:
            doc = json.loads(value)
        except (ValueError, RecursionError):
            return parts
        if isinstance(doc, dict) and isinstance(doc.get("password"), str) and doc["password"]:
            parts.append(doc["password"])
    return parts


def _text_map(details: object) -> dict[str, str]:
    """Connection details as strings (the API's values are strings; anything else is dropped)."""
    if not isinstance(details, dict):
        return {}
    return {str(k): v for k, v in details.items() if isinstance(v, str)}
