"""The healer: bring bound data sources to Key Vault's current secret, then retry what failed.

Four entry points, one per trigger kind: :meth:`Healer.heal_secret` (a new secret version),
:meth:`Healer.heal_dataset` (a dataset: its bound data sources, then its failed refresh),
:meth:`Healer.heal_target` (one data source) and :meth:`Healer.sweep` (the reconciler: drift
between Key Vault and the ledger, and failed refreshes no event reported). Each returns a
:class:`Report` of :class:`~remediation.ledger.Outcome`\\ s.

The rules of DESIGN.md are enforced here, above the target kinds:

* idempotent: a target whose ledger says it holds version V is not patched with V again;
* **per account, per secret version, at most one failed sign-in** (lockout counts per account):
  a version nobody has accepted yet is presented to *one* target of the account first (a claim
  in the ledger, so other runs, workers and instances wait), and fans out only once accepted; a
  rejection, or a presentation whose verdict never came back (*in doubt*), stops that version
  for every target of the account, in this run and later ones, until a new version or an
  explicit operator action (``present_again``);
* a version is not presented before Key Vault's ``created`` + ``REMEDIATION_SETTLE_SECONDS``
  (rotations that write Key Vault before the source); the report's ``retry_at`` says when;
* no refresh and no schedule re-enable while a credential-bearing source of the dataset is
  rejected, blocked, in doubt, unhealed or unbound-and-possibly-failing;
* one writer per target: a lease owned by the *run* (not the process), checked and renewed
  before every attempt of the PATCH, long enough for the request's worst case;
* credential updates per target are bounded per time window; non-credential failures change no
  credentials; no secret value is ever put in an outcome, a log record or an exception message.

Every outcome is written to the ledger as it happens, so a run that dies still leaves what it
did. Dry-run stops after deciding: no lease, no PATCH, no refresh, no ledger write.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Literal, TypeVar

from remediation.clients.fabric import Connection, FabricClient
from remediation.clients.http import ApiError, ThrottledPastDeadline, attempt_worst_case, deadline_scope
from remediation.clients.identity import AuthenticationError
from remediation.clients.keyvault import KeyVaultClient, SecretDisabled, SecretNotFound, SecretValue
from remediation.clients.powerbi import EntityNotFound, InvalidId, PowerBIClient, Refresh
from remediation.config.bindings import CONNECTIONS, Binding, BindingSet, CredentialType, Target
from remediation.config.settings import Settings
from remediation.errors import ConfigError, NotBound, RemediationError, SecretVersionNotFound
from remediation.ledger import Claim, Intent, Lease, LeaseLost, Ledger, Outcome
from remediation.reconciler.refresher import Refresher
from remediation.reconciler.report import HOLDS_CURRENT, PROBLEMS, Action, Report
from remediation.reconciler.resolver import TargetResolver
from remediation.reconciler.runs import Resolved, Run, recorded
from remediation.reconciler.targets import Presented, TargetKind, TargetRefused
from remediation.reconciler.targets.fabric import FabricKind
from remediation.reconciler.targets.gateway import GatewayKind, UserTokenFactory
from remediation.reconciler.targets.gateway_take_over import TakeOverRefused
from remediation.rules.accounts import account_key
from remediation.rules.credentials import ResolvedCredential, resolve_credential
from remediation.rules.redact import mask_urls
from remediation.safety.answers import Verdict, VerdictOf
from remediation.safety.presenting import Decision, account_decision, decide

__all__ = [
    "HOLDS_CURRENT",
    "PROBLEMS",
    "Action",
    "Decision",
    "Healer",
    "NotBound",
    "Report",
    "SecretVersionNotFound",
    "TakeOverRefused",
    "UserTokenFactory",
    "account_decision",
    "decide",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
_R = TypeVar("_R")


class _NotSent(Exception):
    """Raised before a PATCH attempt that must not be sent (deadline, lost claim)."""


class Sent:
    """When the last attempt of a presentation was sent (set before each attempt)."""

    def __init__(self, at: float) -> None:
        self.at = at


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
        fabric: FabricClient | None = None,
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
        self._clock = clock
        self._sleep = sleep
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self._poll_interval = poll_interval
        self.resolver = TargetResolver(
            bindings, powerbi=powerbi, fabric=fabric, inventory=lambda: self.refresher.inventory, clock=clock
        )
        self.gateway_kind = GatewayKind(
            powerbi=powerbi,
            keyvault=keyvault,
            bindings=bindings,
            ledger=ledger,
            inventory=lambda: self.refresher.inventory,
            user_tokens=user_tokens,
            clock=clock,
            fabric=fabric,
            connections=self.resolver.all_connections,
            source_facts=self.resolver.source_facts,
        )
        self.gateways = self.gateway_kind.gateways
        self.fabric_kind = None if fabric is None else FabricKind(fabric)
        self.refresher = Refresher(
            settings,
            bindings,
            powerbi=powerbi,
            ledger=ledger,
            targets=self,
            fabric=fabric,
            clock=clock,
            sleep=sleep,
            poll_interval=poll_interval,
        )

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
        present_again: bool = False,
        event_version: str | None = None,
    ) -> Report:
        """Push Key Vault's current version of ``name`` to every target bound to it, then retry
        the refreshes that failed on those data sources.

        ``version`` is a version an operator named: it must exist and be enabled (else
        :class:`SecretVersionNotFound`, nothing sent). ``event_version`` is the one an event
        announced (only logged). Either way the healer applies the *current* version: events
        arrive late and out of order, and an older version is never right. ``present_again`` is
        the operator's explicit "present it once more" for a current version that is rejected or
        in doubt. Raises :class:`NotBound` when no binding uses ``name``.
        """
        bindings = self.bindings.for_secret(name)
        if not bindings:
            raise NotBound(f"no binding uses the secret {name!r}")
        if version is not None:
            self._require_version(name, version)
        if event_version is not None:
            logger.info("secret %s: an event announced version %s", name, event_version)
        run = self._start(trigger, correlation_id, dry_run, deadline, present_again)
        run.named_version = version
        try:
            resolved = self.resolver.resolve(bindings, run)
            self.heal_targets(resolved, run)
            if retry_refreshes:
                healed = {
                    (o.gateway_id, o.datasource_id)
                    for o in run.outcomes
                    if o.action in (Action.UPDATED, Action.WOULD_UPDATE, Action.CURRENT)
                }
                if healed:
                    self.refresher.retry_failed_refreshes(healed, run)
        finally:
            report = self._finish(run)
        return report

    def heal_target(
        self,
        gateway_id: str,
        datasource_id: str,
        *,
        dry_run: bool = False,
        trigger: str = "manual",
        correlation_id: str | None = None,
        deadline: float | None = None,
        present_again: bool = False,
        retry_refreshes: bool = False,
    ) -> Report:
        """Bring one gateway data source (or, with ``gateway_id``
        :data:`~remediation.config.bindings.CONNECTIONS`, one Fabric connection) to its binding's
        current secret; with ``retry_refreshes`` (a part of a secret's fan-out), then retry the
        refreshes that failed for credentials on the datasets that use it, as :meth:`heal_secret`
        does."""
        gateway_id, datasource_id = gateway_id.lower(), datasource_id.lower()
        binding = self.bindings.for_target(gateway_id, datasource_id)
        run = self._start(trigger, correlation_id, dry_run, deadline, present_again)
        try:
            locator, refused = "", ""
            if binding is None:
                binding, locator, refused = self.resolver.binding_by_match(gateway_id, datasource_id, run)
            if binding is None and gateway_id == CONNECTIONS:
                raise NotBound(f"no binding covers connection {datasource_id}")
            if binding is None:
                raise NotBound(f"no binding covers gateway {gateway_id} data source {datasource_id}")
            # The binding's own target when it lists it (a Fabric connection's marks go along).
            target = next(
                (t for t in binding.targets if t.key == (gateway_id, datasource_id)),
                Target(gateway_id, datasource_id),
            )
            locator = locator or self.resolver.locator_of(target, run)
            (outcome,) = self.heal_targets([Resolved(binding, target, locator, refused)], run)
            if retry_refreshes and outcome.action in (Action.UPDATED, Action.CURRENT):
                self.refresher.retry_failed_refreshes({(gateway_id, datasource_id)}, run)
        finally:
            report = self._finish(run)
        return report

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
        present_again: bool = False,
    ) -> Report:
        """Bring the dataset's bound data sources to Key Vault's current versions (exactly as
        :meth:`heal_secret` does, same decisions and safety), then diagnose its last refresh: if
        it failed for credentials and every credential-bearing source is now good, retry it.
        Anything else is reported with the fix a person needs.

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
        run = self._start(trigger, correlation_id, dry_run, deadline, present_again)
        try:
            self.refresher.heal_dataset(
                workspace_id, dataset_id, run, latest=latest, latest_is_fresh=fresh, heal_credentials=True
            )
        finally:
            report = self._finish(run)
        return report

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

        Work not started within ``budget_seconds`` (or by ``deadline``) is reported as deferred;
        the next sweep picks it up (the state is in Key Vault, Power BI and the ledger).
        """
        run = self._start(trigger, correlation_id, dry_run, deadline)
        run.summarise = True  # a sweep over 1 000 current targets records one row, not 1 000
        budget = self.settings.sweep_budget_seconds if budget_seconds is None else budget_seconds
        run.deadline = min(run.started + budget, deadline if deadline is not None else float("inf"))
        say = progress or (lambda _m: None)
        try:
            resolved: list[Resolved] = []
            for secret in self.bindings.secrets():
                resolved.extend(self.resolver.resolve(self.bindings.for_secret(secret), run))
            say(f"checking {len(resolved)} bound data sources against Key Vault")
            self.heal_targets(resolved, run)

            failed = self.refresher.scan_failed_datasets(run, say)
            say(f"{len(failed)} datasets whose last refresh failed")

            self.refresher.heal_failed(
                failed, run, why_deferred="the sweep's time budget ran out; the next sweep continues"
            )
        finally:
            report = self._finish(run)
        return report

    def secret_targets(self, name: str) -> list[tuple[str, str]]:
        """The ``(gatewayId, datasourceId)`` of every target bound to secret ``name`` (``match``
        targets resolved), for a fan-out. Raises :class:`NotBound` when no binding uses it."""
        bindings = self.bindings.for_secret(name)
        if not bindings:
            raise NotBound(f"no binding uses the secret {name!r}")
        run = self._start("fanout", None, True)
        try:
            return [r.target.key for r in self.resolver.resolve(bindings, run)]
        finally:
            self._finish(run)

    def _require_version(self, name: str, version: str) -> None:
        """An explicit version must exist and be enabled; the value read is dropped at once."""
        try:
            self.keyvault.get_secret(name, version)
        except (SecretNotFound, SecretDisabled) as exc:
            raise SecretVersionNotFound(
                f"secret {name!r} has no enabled version {version!r} in Key Vault "
                f"({exc.code or 'not found'}); nothing was sent. Name an existing version, or leave "
                "the version out to apply the current one"
            ) from None

    # ------------------------------------------------------------------------------------------
    # Targets
    # ------------------------------------------------------------------------------------------
    def in_parallel(self, work: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        """``work`` over ``items`` with the configured concurrency; results in item order.
        (Every HTTP call also passes the pipeline's own limits, so nesting stays bounded.)"""
        workers = max(1, min(self.settings.concurrency, len(items)))
        if workers == 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="healer") as pool:
            # Each task runs in a copy of the caller's context (the run's deadline scope goes along).
            futures = [pool.submit(contextvars.copy_context().run, work, item) for item in items]
            return [f.result() for f in futures]

    def heal_targets(self, resolved: Sequence[Resolved], run: Run) -> list[Outcome]:
        """Heal ``resolved``, one presentation at a time per account: the first target of an
        account that needs the version is its probe; once it accepted, the account's other
        targets at the same locator follow in parallel, and the first target at another locator
        is the next probe (an acceptance on one server says nothing of another)."""
        groups: dict[str, list[int]] = {}
        resolved = [self._with_username(item, run) for item in resolved]
        for index, item in enumerate(resolved):
            groups.setdefault(self.account_of(item, run), []).append(index)
        results: dict[int, Outcome] = {}

        def heal_account(indices: list[int]) -> None:
            pending = list(indices)
            followers: list[tuple[int, Future[Outcome]]] = []
            with ThreadPoolExecutor(
                max_workers=max(1, self.settings.concurrency), thread_name_prefix="fanout"
            ) as pool:
                while pending:  # the probes, one at a time, in this thread
                    index = pending.pop(0)
                    outcome = self._heal_one(resolved[index], run)
                    results[index] = outcome
                    if outcome.action != Action.UPDATED:
                        continue
                    # Accepted: the rest of the account at this locator follows at once, while the
                    # next locator's probe goes on here.
                    where = resolved[index].where.lower()
                    follow = [i for i in pending if resolved[i].where.lower() == where]
                    pending = [i for i in pending if resolved[i].where.lower() != where]
                    for i in follow:
                        job = pool.submit(contextvars.copy_context().run, self._heal_one, resolved[i], run)
                        followers.append((i, job))
                for i, job in followers:
                    results[i] = job.result()

        self.in_parallel(heal_account, list(groups.values()))
        # A Take Over in this run reset the credentials of targets it had already handled (or was
        # handling): heal them again now, under the same rules (each once per run), and report
        # their new outcome in place of the stale one.
        again = run.take_reset_again()
        if again:
            latest = {
                item.target.key: o for item, o in zip(again, self.heal_targets(again, run), strict=True)
            }
            for index, item in enumerate(resolved):
                if item.target.key in latest:
                    results[index] = latest[item.target.key]
        return [results[i] for i in range(len(resolved))]

    def _with_username(self, item: Resolved, run: Run) -> Resolved:
        """``item`` with the user name its credential signs in as (a JSON secret may override the
        binding's), so that its locator is the right one; unchanged when it cannot be read."""
        binding = item.binding
        if binding.credential_type not in (CredentialType.BASIC, CredentialType.WINDOWS):
            return item
        try:
            return replace(
                item, username=resolve_credential(binding, self.secret(binding.secret, run).value).username
            )
        except RemediationError:
            return item  # _heal_one reports why

    def where_of(self, item: Resolved, run: Run) -> str:
        """Where an acceptance at ``item`` licenses (its locator, with the secret's user name)."""
        return self._with_username(item, run).where

    def account_of(self, item: Resolved, run: Run) -> str:
        """The account key of a target (its secret's username may override the binding's)."""
        binding = item.binding
        username = binding.username
        if binding.credential_type in (CredentialType.BASIC, CredentialType.WINDOWS):
            try:
                username = resolve_credential(binding, self.secret(binding.secret, run).value).username
            except RemediationError:
                return f"unresolved:{binding.name.lower()}"  # _heal_one reports why
        return account_key(binding, username)

    def _account_label(self, item: Resolved, run: Run) -> str | None:
        """The account key an outcome carries (figures per account): an identifier from the
        bindings file or the secret's ``username``, never a credential; None if it cannot be told."""
        try:
            return self.account_of(item, run)
        except Exception:  # noqa: BLE001 - a label must not stop the heal; _heal_one reports errors
            return None

    def _heal_one(self, item: Resolved, run: Run) -> Outcome:
        binding, target = item.binding, item.target
        started = self._clock()
        base = Outcome(
            time=started,
            trigger=run.trigger,
            correlation_id=run.correlation_id,
            binding=binding.name,
            account=self._account_label(item, run),
            secret_name=binding.secret,
            gateway_id=target.gateway_id,
            datasource_id=target.datasource_id,
        )

        def done(action: Action, reason: str, version: str | None = None) -> Outcome:
            named = run.named_version
            if named and version and named.lower() != version.lower() and action in HOLDS_CURRENT:
                reason += f" (version {named} was named; Key Vault's current version is what is applied)"
            if run.present_again and action in (Action.UPDATED, Action.REJECTED, Action.IN_DOUBT):
                reason += (
                    " [presented again at the operator's request (--present-again / presentAgain): "
                    "each such presentation may be one more failed sign-in]"
                )
            took_over = [t for t in run.take_overs if t.target == target.key]
            if took_over:
                reason += "".join(
                    f" (took over dataset {t.dataset_id}: Power BI reset the credentials of its other cloud "
                    f"data sources, {len(t.described)} of them; see the report's warnings)"
                    for t in took_over
                )
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
            with run.lock:
                previous = run.settled.get(target.key)
                if previous is None:
                    run.in_progress.add(target.key)
            if previous is not None:  # already handled in this run (e.g. a dataset retry after a heal)
                return previous
            try:
                outcome = self._heal_one_locked(item, run, done)
            except ThrottledPastDeadline as exc:
                outcome = done(Action.DEFERRED, str(exc))
            except Exception as exc:  # noqa: BLE001 - one target's failure must not stop the others
                logger.exception("target %s/%s failed", target.gateway_id, target.datasource_id)
                outcome = done(Action.FAILED, f"internal error ({type(exc).__name__}); see the logs")
            with run.lock:
                run.settled[target.key] = outcome
                run.in_progress.discard(target.key)
            return outcome

    def _heal_one_locked(self, item: Resolved, run: Run, done: Callable[..., Outcome]) -> Outcome:
        binding, target = item.binding, item.target
        if run.out_of_time(self._clock()):
            return done(Action.DEFERRED, "the time budget ran out; the next run continues")
        if item.refused:
            return done(Action.FAILED, item.refused)
        refused = self.resolver.match_refusal(item, run)
        if refused:
            return done(Action.FAILED, refused)
        if target.key_vault_reference:
            # Fabric reads the current version itself at run time; a copy would replace the reference.
            return done(
                Action.REFERENCED,
                f"connection {target.datasource_id} references Key Vault secret {binding.secret!r}: "
                "Fabric reads its current version itself, so no copy is sent",
            )
        try:
            secret = self.secret(binding.secret, run)
        except ThrottledPastDeadline as exc:
            return done(Action.DEFERRED, f"Key Vault: {exc}")
        except RemediationError as exc:
            return done(Action.FAILED, f"Key Vault: {exc}")
        version = secret.version
        decision = self._decide(target, binding, version, run)
        if decision.action is not Action.UPDATED:
            return done(decision.action, decision.reason, version)
        settles_at = self._settles_at(secret)
        if settles_at is not None:
            run.again_at(settles_at)
            return done(
                Action.SETTLING,
                f"version {version} is presented from {_iso(settles_at)} "
                f"(Key Vault created it at {_iso(settles_at - self.settings.settle_seconds)}; "
                f"REMEDIATION_SETTLE_SECONDS={self.settings.settle_seconds}), so that a rotation that "
                "writes Key Vault before the source is not mistaken for a wrong password",
                version,
            )
        try:
            resolved = resolve_credential(binding, secret.value)
        except RemediationError as exc:
            return done(Action.FAILED, str(exc), version)
        account = account_key(binding, resolved.username)
        item = replace(item, username=resolved.username)  # where an acceptance licenses (break 5)
        blocked = self._account_check(account, binding, version, run, item.where)
        if blocked is not None:
            return done(blocked.action, blocked.reason, version)
        if run.dry_run:
            return done(Action.WOULD_UPDATE, decision.reason, version)

        # Discovery (e.g. the gateway's kind and key) happens before the lease: it may be slow.
        try:
            kind = self.kind_of(target)
        except RemediationError as exc:
            return done(Action.FAILED, str(exc), version)
        try:
            found = kind.discover(item, run)
        except TargetRefused as exc:
            return done(Action.FAILED, str(exc), version)
        except ThrottledPastDeadline as exc:
            return done(Action.DEFERRED, str(exc), version)
        except RemediationError as exc:
            return done(Action.FAILED, f"could not read {kind.describe(item)}: {exc}", version)

        lease = self.ledger.acquire_lease(
            target.gateway_id, target.datasource_id, run.owner, self._clock(), self.lease_ttl()
        )
        if lease is None:
            return done(Action.BUSY, "another run is updating this data source", version)
        try:
            self._resolve_intent(lease, run)
            # Decide again under the lease: the previous holder may have just applied it.
            decision = self._decide(target, binding, version, run)
            if decision.action is not Action.UPDATED:
                return done(decision.action, decision.reason, version)
            claim, av = self.ledger.claim_presentation(
                account,
                binding.secret,
                version,
                locator=item.where,
                target=f"{target.gateway_id}/{target.datasource_id}",
                owner=run.owner,
                now=self._clock(),
                ttl=self.lease_ttl(),
                request=run.correlation_id,
            )
            if claim is Claim.BUSY:
                return done(
                    Action.BUSY,
                    f"another run ({av.probe_owner}) is presenting version {version} to account "
                    f"{account.split(':', 1)[-1]} first (on {av.probe_target}); this data source follows "
                    "once it is accepted",
                    version,
                )
            if claim in (Claim.REJECTED, Claim.IN_DOUBT):
                verdict = account_decision(av, present_again=False)
                assert verdict is not None
                return done(verdict.action, verdict.reason, version)
            action, reason = self._present(
                kind, item, secret, resolved, found, lease, account, probe=claim is Claim.GRANTED, run=run
            )
            return done(action, reason, version)
        except LeaseLost:
            return done(Action.BUSY, "the lease was taken over by another run", version)
        finally:
            try:
                self.ledger.release_lease(lease)
            except RemediationError:  # pragma: no cover - best effort; the lease expires anyway
                logger.warning(
                    "could not release the lease on %s/%s", target.gateway_id, target.datasource_id
                )

    def _decide(self, target: Target, binding: Binding, version: str, run: Run) -> Decision:
        state = self.ledger.target_state(target.gateway_id, target.datasource_id)
        return decide(
            state,
            binding.secret,
            version,
            now=self._clock(),
            max_attempts=self.settings.max_attempts,
            window_seconds=self.settings.attempt_window_seconds,
            present_again=run.present_again,
        )

    def _account_check(
        self, account: str, binding: Binding, version: str, run: Run, locator: str = ""
    ) -> Decision | None:
        """The account's verdict on ``version`` (:func:`~remediation.safety.presenting.account_decision`).

        An operator's ``present_again`` lifts it once per request: the request's correlation id is
        its grant in the ledger, consumed by the first call (any part, re-queue or redelivery of
        the request finds it consumed), so one request is one presentation to the account.
        (A version this run saw accepted at ``locator`` needs no second look: the claim under the
        lease still checks the ledger before anything is sent.)"""
        if (account, binding.secret.lower(), version.lower(), locator.lower()) in run.accepted:
            return None
        av = self.ledger.account_version(account, binding.secret, version)
        request = run.correlation_id
        if av.verdict is not None and run.present_again and not run.dry_run:
            granted, av = self.ledger.allow_again(
                account,
                binding.secret,
                version,
                request=request,
                now=self._clock(),
                reason=f"operator ({run.trigger}, request {request})",
            )
            if granted:
                logger.warning(
                    "operator: version %s of %s is presented to %s once more (request %s)",
                    version,
                    binding.secret,
                    account,
                    request,
                )
            blocked = account_decision(av, present_again=False)
            if blocked is None:
                return None
            return replace(
                blocked,
                reason=f"{blocked.reason} (this request's present-again, {request}, was used by one "
                "presentation already: each request presents once)",
            )
        unused = run.present_again and request.strip() not in av.grants
        return account_decision(av, present_again=unused and run.dry_run)

    def _settles_at(self, secret: SecretValue) -> float | None:
        """When ``secret`` may be presented, if that is still in the future."""
        settle = self.settings.settle_seconds
        if settle <= 0 or secret.created_on is None:
            return None
        at = secret.created_on.timestamp() + settle
        return at if self._clock() < at else None

    def _worst_case(self) -> float:
        """The longest one PATCH attempt can take: a wait for a request slot plus the attempt's
        total deadline (:func:`~remediation.clients.http.attempt_worst_case`, the pipeline's own bound)."""
        return attempt_worst_case(self.settings)

    def lease_ttl(self) -> float:
        """Leases and presentation claims: ``REMEDIATION_LEASE_SECONDS``, and always at least
        twice a PATCH's worst case (so one is never renewed on every attempt)."""
        return max(float(self.settings.lease_seconds), 2.0 * self._worst_case() + 10.0)

    def kind_of(self, target: Target) -> TargetKind:
        """The target kind that reads, builds and sends ``target``'s credential.

        Raises :class:`~remediation.errors.ConfigError` for a Fabric connection when the healer
        was built without a Fabric client."""
        if target.connection_id is None:
            return self.gateway_kind
        if self.fabric_kind is None:
            raise ConfigError("this healer has no Fabric client, so it cannot update Fabric connections")
        return self.fabric_kind

    def _present(
        self,
        kind: TargetKind,
        item: Resolved,
        secret: SecretValue,
        resolved: ResolvedCredential,
        found: object,
        lease: Lease,
        account: str,
        *,
        probe: bool,
        run: Run,
    ) -> tuple[Action, str]:
        """Present the version: password grant (caller identity), then the PATCH; record the
        verdict for the target and, for a probe, for the account."""
        binding, target = item.binding, item.target
        held = [lease]
        claim_until = [lease.expires]  # the probe was claimed with the lease's lifetime
        sent = Sent(self._clock())
        attempts = [0]

        def before_attempt() -> None:
            # Checked right before every attempt is sent (after any wait): a PATCH is sent only on
            # a lease and a claim that outlast its worst case; they are renewed when they would
            # not. A retry (after a 429) asks the account again: a verdict recorded meanwhile (a
            # follower elsewhere refused, say) stops it.
            now = self._clock()
            sent.at = now  # the verdict speaks of the presentation sent now (evidence has time)
            attempts[0] += 1
            if run.out_of_time(now):
                raise _NotSent("the run's deadline passed")
            if held[0].expires - now < self._worst_case() + 5.0:
                held[0] = self.ledger.renew_lease(held[0], now, self.lease_ttl())
            expiring = probe and claim_until[0] - now < self._worst_case() + 5.0
            if attempts[0] > 1 or expiring:
                claim, _ = self.ledger.claim_presentation(
                    account,
                    binding.secret,
                    secret.version,
                    locator=item.where,
                    target=f"{target.gateway_id}/{target.datasource_id}",
                    owner=run.owner,
                    now=now,
                    ttl=self.lease_ttl(),
                    request=run.correlation_id,
                )
                wanted = Claim.GRANTED if probe else Claim.ACCEPTED
                if claim is not wanted:
                    raise _NotSent(f"the account's claim changed before this attempt ({claim.value})")
                if probe:
                    claim_until[0] = now + self.lease_ttl()

        try:
            # The attempt counts toward the per-target bound (a password grant too: it is a sign-in),
            # and its intent is recorded before anything is sent: a verdict that is never recorded
            # (the worker dies, the ledger fails) leaves it, and the next holder finds it.
            now = self._clock()
            intent = Intent(
                secret=binding.secret.strip().lower(),
                version=secret.version.strip().lower(),
                account=account.strip().lower(),
                locator=item.where.strip().lower(),
                at=now,
                lease_id=lease.lease_id,
            )
            self.ledger.record_attempt(lease, now, intent=intent)
        except LeaseLost:
            lost = VerdictOf(Verdict.NOT_PRESENTED, "the lease was taken over before sending")
            return self._record(item, secret, account, lease, lost, probe, run, sent.at)
        try:
            kind.send(item, secret, resolved, found, run, before_attempt)
        except Presented as exc:
            return self._record(item, secret, account, lease, exc.verdict, probe, run, sent.at)
        except (_NotSent, LeaseLost) as exc:
            return self._record(
                item,
                secret,
                account,
                lease,
                VerdictOf(Verdict.NOT_PRESENTED, f"not sent: {exc}"),
                probe,
                run,
                sent.at,
            )
        except ThrottledPastDeadline as exc:
            # The service asked to wait past the run's deadline: nothing was served; a later run goes on.
            self._record(
                item, secret, account, lease, VerdictOf(Verdict.NOT_PRESENTED, str(exc)), probe, run, sent.at
            )
            return Action.DEFERRED, f"{exc}"
        except AuthenticationError as exc:
            # The product's own sign-in to the service failed: nothing of the binding was presented.
            return self._record(
                item,
                secret,
                account,
                lease,
                VerdictOf(Verdict.NOT_PRESENTED, f"the product could not sign in to {kind.service}: {exc}"),
                probe,
                run,
                sent.at,
            )
        except ApiError as exc:
            return self._record(item, secret, account, lease, kind.verdict(exc), probe, run, sent.at)
        except Exception as exc:  # noqa: BLE001 - the request may have been served: in doubt
            logger.exception("PATCH of %s/%s", target.gateway_id, target.datasource_id)
            verdict = VerdictOf(
                Verdict.IN_DOUBT, f"the update ended in an unexpected error ({type(exc).__name__})"
            )
            return self._record(item, secret, account, lease, verdict, probe, run, sent.at)
        return self._record(
            item, secret, account, held[0], VerdictOf(Verdict.ACCEPTED, ""), probe, run, sent.at
        )

    def _record(
        self,
        item: Resolved,
        secret: SecretValue,
        account: str,
        lease: Lease,
        verdict: VerdictOf,
        probe: bool,
        run: Run,
        sent_at: float,
    ) -> tuple[Action, str]:
        """Write the verdict (target and account) and say what it means. ``sent_at``: when the
        presentation the verdict speaks of was sent."""
        binding, target = item.binding, item.target
        version, now = secret.version, self._clock()
        who = account.split(":", 1)[-1]

        def account_verdict(value: Literal["accepted", "rejected", "in-doubt"], reason: str) -> None:
            self.ledger.record_presentation(
                account,
                binding.secret,
                version,
                owner=lease.owner,
                locator=item.where,
                verdict=value,
                reason=run.redact(f"{reason} [{target.gateway_id}/{target.datasource_id}]"),
                now=now,
                sent_at=min(sent_at, now),
                request=run.correlation_id,
            )

        if verdict.verdict is Verdict.ACCEPTED:
            known = (account, binding.secret.lower(), version.lower(), item.where.lower())
            if probe or known not in run.accepted:
                account_verdict("accepted", "accepted")
                with run.lock:
                    run.accepted.add(known)
            self.ledger.record_applied(lease, binding.secret, version, now)
            return Action.UPDATED, f"now holds version {version}"
        if verdict.verdict is Verdict.REJECTED:
            account_verdict("rejected", verdict.reason)
            with contextlib.suppress(LeaseLost):  # recorded all the same: a rejection is a fact
                self.ledger.record_rejected(lease, binding.secret, version, now)
            return Action.REJECTED, (
                f"version {version} was refused for account {who}: {verdict.reason}. It is not "
                "presented to any data source of that account again; put the right value in Key Vault "
                f"as a new version of {binding.secret!r}"
            )
        if verdict.verdict is Verdict.IN_DOUBT:
            # In doubt for the account, whoever sent it: a follower of an acceptance may have met a
            # password changed since, and its lost answer may be that failed sign-in.
            account_verdict("in-doubt", verdict.reason)
            self._clear_intent(lease)
            return Action.IN_DOUBT, (
                f"{verdict.reason}: the source may have counted a failed sign-in, so version "
                f"{version} is not presented to account {who} again automatically. Check the data "
                "source, then heal with --present-again (or put a new version in Key Vault)"
            )
        if probe:
            self.ledger.release_presentation(account, binding.secret, version, owner=lease.owner)
        self._clear_intent(lease)
        return Action.FAILED, verdict.reason

    def _clear_intent(self, lease: Lease) -> None:
        """The presentation's verdict is recorded: its intent goes (best effort; left, it makes
        the next holder record the version in doubt, which is the safe side)."""
        try:
            self.ledger.clear_intent(lease)
        except RemediationError as exc:  # pragma: no cover - storage errors only
            logger.warning(
                "could not clear the intent on %s/%s: %s", lease.gateway_id, lease.datasource_id, exc
            )

    def _resolve_intent(self, lease: Lease, run: Run) -> None:
        """An intent another lease left on the target: that presentation's verdict was never
        recorded, so its version is in doubt for its account (recorded, then the intent goes)."""
        intent = self.ledger.target_state(lease.gateway_id, lease.datasource_id).intent
        if intent is None or intent.lease_id == lease.lease_id:
            return
        logger.warning(
            "target %s/%s: a presentation of version %s sent at %s never got its verdict recorded; "
            "the version is in doubt for %s",
            lease.gateway_id,
            lease.datasource_id,
            intent.version,
            _iso(intent.at),
            intent.account,
        )
        self.ledger.record_presentation(
            intent.account,
            intent.secret,
            intent.version,
            owner=run.owner,
            locator=intent.locator,
            verdict="in-doubt",
            reason=(
                f"a presentation to {lease.gateway_id}/{lease.datasource_id} sent at {_iso(intent.at)} "
                "never got its verdict recorded (the worker stopped, or the ledger failed)"
            ),
            now=self._clock(),
            sent_at=intent.at,
            request=run.correlation_id,
        )
        self.ledger.doubt_intent(lease, intent)

    def all_connections(self, run: Run) -> list[Connection]:
        """Every Fabric connection the identity has a role on (see :class:`TargetResolver`)."""
        return self.resolver.all_connections(run)

    def secret(self, name: str, run: Run) -> SecretValue:
        key = name.lower()
        with run.key_lock(f"secret:{key}"):
            secret = run.secrets.get(key)
            if secret is None:
                secret = self.keyvault.get_secret(name)
                run.secrets[key] = secret
                run.hold_secret(secret.value)  # masked in every text the run lets out (runs.py)
            return secret

    # ------------------------------------------------------------------------------------------
    # Bookkeeping
    # ------------------------------------------------------------------------------------------
    def _start(
        self,
        trigger: str,
        correlation_id: str | None,
        dry_run: bool,
        deadline: float | None = None,
        present_again: bool = False,
    ) -> Run:
        """A run; ``deadline`` (epoch seconds) bounds it: work not started by then is deferred.
        Its lease owner is its own (two invocations of one worker are two writers)."""
        correlation_id = correlation_id or str(uuid.uuid4())
        run = Run(
            trigger=trigger,
            correlation_id=correlation_id,
            dry_run=dry_run,
            started=self._clock(),
            owner=f"{self.owner}:{uuid.uuid4().hex[:12]}",
            deadline=deadline,
            present_again=present_again,
            persist=None if dry_run else self._persist,
        )
        # Throttling waits that would outlast the run's deadline are not begun (the work is deferred).
        run.scopes.enter_context(deadline_scope(lambda: run.deadline, self._clock))
        return run

    def _persist(self, outcome: Outcome) -> None:
        try:
            self.ledger.add_outcome(outcome)
        except RemediationError as exc:  # reported, never fatal: the outcome is still returned
            logger.warning("could not record an outcome: %s", exc)
        recorded(outcome)  # telemetry as it happens, when the caller asked (runs.outcomes_to)

    def _finish(self, run: Run) -> Report:
        """End a run (also after an error): drop the secrets and their redactions."""
        run.scopes.close()
        run.drop_secrets()  # not kept past the command; an escaping exception is masked first
        recorded: list[Outcome] | None = None
        if run.quiet:
            summary = self._summary(run)
            if run.persist is not None:
                run.persist(summary)
            quiet = {id(o) for o in run.quiet}
            recorded = [o for o in run.outcomes if id(o) not in quiet] + [summary]
        return Report(
            outcomes=list(run.outcomes),
            dry_run=run.dry_run,
            correlation_id=run.correlation_id,
            recorded=recorded,
            retry_at=run.retry_at,
            warnings=run.target_warnings(),
        )

    def _summary(self, run: Run) -> Outcome:
        """One outcome for the targets a summarising run found already current: how many, of
        which secrets and versions (no target ids: the report returned to the caller has them)."""
        versions = sorted({f"{o.secret_name} {o.secret_version}" for o in run.quiet})
        shown = ", ".join(versions[:5]) + (f" and {len(versions) - 5} more" if len(versions) > 5 else "")
        count = len(run.quiet)
        return Outcome(
            time=self._clock(),
            trigger=run.trigger,
            correlation_id=run.correlation_id,
            action=Action.CURRENT.value,
            reason=(
                f"{count} bound data source{'s' if count != 1 else ''} already held the current version "
                f"({shown}): nothing was sent. One summary per run; changes and problems are recorded "
                "one by one"
            ),
            duration=round(self._clock() - run.started, 3),
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
