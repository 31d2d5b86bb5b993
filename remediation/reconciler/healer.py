"""The healer: bring bound data sources to Key Vault's current secret, then retry what failed.

Four entry points, one per trigger kind: :meth:`Healer.heal_secret` (a new secret version),
:meth:`Healer.heal_dataset` (a dataset: its bound data sources, then its failed refresh),
:meth:`Healer.heal_target` (one data source) and :meth:`Healer.sweep` (the reconciler: drift
between Key Vault and the ledger, and failed refreshes no event reported); and an operator's
:meth:`Healer.move_connection` (``adopt``: a Fabric connection onto a Key Vault reference, or
back). Each starts a :class:`~remediation.reconciler.runs.Run`, finds its targets
(:mod:`.resolver`), heals them in the order the account rules ask for
(:meth:`Healer.heal_targets`), hands the datasets to the refresher (:mod:`.refresher`) and
returns a :class:`Report` of
:class:`~remediation.ledger.Outcome`\\ s.

The rules of DESIGN.md are kept here and in the presenter (:mod:`.presenter`), above the target
kinds, asking the safety core (:mod:`remediation.safety`) at every step:

* idempotent: a target whose ledger says it holds version V is not patched with V again;
* **per account, per secret version, at most one failed sign-in** (lockout counts per account):
  a version nobody has accepted yet is presented to *one* target of the account first (here, one
  probe at a time per account and locator; in the presenter, a claim in the ledger, so other
  runs, workers and instances wait), and fans out only once accepted; a rejection, or a
  presentation whose verdict never came back (*in doubt*), stops that version for every target of
  the account, in this run and later ones, until a new version or an explicit operator action
  (``present_again``);
* a version is not presented before Key Vault's ``created`` + ``REMEDIATION_SETTLE_SECONDS``
  (rotations that write Key Vault before the source); the report's ``retry_at`` says when;
* no refresh and no schedule re-enable while a credential-bearing source of the dataset is
  rejected, blocked, in doubt, unhealed or unbound-and-possibly-failing (the refresher);
* one writer per target: a lease owned by the *run* (not the process), checked and renewed
  before every attempt of the PATCH, long enough for the request's worst case;
* credential updates per target are bounded per time window; non-credential failures change no
  credentials; no secret value is ever put in an outcome, a log record or an exception message.

Every outcome is written to the ledger as it happens, so a run that dies still leaves what it
did. Dry-run stops after deciding: no lease, no PATCH, no refresh, no ledger write.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from remediation.clients.api_errors import ApiError
from remediation.clients.fabric import FabricClient
from remediation.clients.keyvault import KeyVaultClient, SecretDisabled, SecretNotFound
from remediation.clients.powerbi import EntityNotFound, InvalidId, PowerBIClient
from remediation.clients.powerbi_models import Refresh
from remediation.clients.retry import deadline_scope
from remediation.config.bindings import CONNECTIONS, Binding, BindingSet, Target
from remediation.config.settings import Settings
from remediation.errors import NotBound, RemediationError, SecretVersionNotFound
from remediation.ledger import Ledger, Outcome
from remediation.ledger.references import RecordState, ReferenceRecord, References
from remediation.reconciler.accounts import Accounts
from remediation.reconciler.adopt import MovePlan
from remediation.reconciler.presenter import Move, Presenter
from remediation.reconciler.refresher import Refresher
from remediation.reconciler.report import HOLDS_CURRENT, PROBLEMS, Action, Report
from remediation.reconciler.resolver import TargetResolver
from remediation.reconciler.runs import Resolved, Run, recorded
from remediation.reconciler.targets.fabric import FabricKind, ReferenceKind
from remediation.reconciler.targets.gateway import GatewayKind, UserTokenFactory
from remediation.reconciler.targets.gateway_take_over import TakeOverRefused
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
        self.fabric = fabric
        self.accounts = Accounts(keyvault)
        self.references = References(ledger)
        self.presenter = Presenter(
            settings,
            ledger=ledger,
            resolver=self.resolver,
            accounts=self.accounts,
            gateway_kind=self.gateway_kind,
            fabric_kind=self.fabric_kind,
            references=self.references,
            clock=clock,
        )
        self.refresher = Refresher(
            settings,
            bindings,
            powerbi=powerbi,
            ledger=ledger,
            targets=self,
            accounts=self.accounts,
            references=self.references,
            lease_ttl=self.presenter.lease_ttl,
            connections=self.resolver.all_connections,
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
            self._read_ahead(bindings, run)
            resolved = self.resolver.resolve(bindings, run)
            self.heal_targets(resolved, run)
            if retry_refreshes:
                # Connections that reference Key Vault hold the new version without being sent it:
                # the models on them are retried too (once it has settled), under the same gate.
                healed = {
                    (o.gateway_id, o.datasource_id)
                    for o in run.outcomes
                    if o.action in (Action.UPDATED, Action.WOULD_UPDATE, Action.CURRENT, Action.REFERENCED)
                }
                if healed:
                    self.refresher.retry_failed_refreshes(healed, run)
        finally:
            report = self._finish(run)
        return report

    def _read_ahead(self, bindings: Sequence[Binding], run: Run) -> None:
        """Start what a rotation reads anyway beside the resolver's lists, not after them: the
        secret (read for every target a binding names), and a Fabric token when the data
        sources' settings will be read from Fabric's connection list. Nothing decides on them
        here: the presenter and the safety core take them as they would have read them."""
        if any(b.targets for b in bindings):
            self.accounts.read_ahead(bindings[0].secret, run)
        if self.fabric is not None and any(
            b.matches_connections
            or any(t.connection_id is None for t in b.targets)
            and not (b.privacy_level_given and b.encrypted_connection_given)
            for b in bindings
        ):
            run.read_ahead("fabric-token", self.fabric.sign_in)

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
            if retry_refreshes and outcome.action in (Action.UPDATED, Action.CURRENT, Action.REFERENCED):
                self.refresher.retry_failed_refreshes({(gateway_id, datasource_id)}, run)
        finally:
            report = self._finish(run)
        return report

    def move_connection(
        self,
        plan: MovePlan,
        *,
        dry_run: bool = False,
        trigger: str = "manual",
        correlation_id: str | None = None,
        deadline: float | None = None,
    ) -> Report:
        """Move a Fabric connection onto a Key Vault reference (``adopt``), or back to a copy
        (``plan.release``), as planned by :mod:`.adopt`. Either way Fabric tests what it is sent
        (one sign-in with Key Vault's current version), so the move is a presentation under every
        rule of the presenter: settle time, the account's verdict, one probe per account, the
        lease, the intent, the verdict recorded (:class:`~.presenter.Move`). Before sending, the
        ledger's record of the connection's reference says ``in-doubt``; after, ``referenced``
        (adopted), ``released`` (moved back), ``in-doubt`` (the answer was lost), or what it said
        before (refused, or not sent: the connection is as it was)."""
        if self.fabric is None or self.fabric_kind is None:
            raise NotBound("this healer has no Fabric client")
        connection_id = plan.connection_id
        run = self._start(trigger, correlation_id, dry_run, deadline)
        try:
            target = Target.connection(connection_id)
            item = Resolved(plan.binding, target, self.resolver.locator_of(target, run))
            if plan.release:
                move = Move(
                    self.fabric_kind,
                    Action.UPDATED,
                    f"would move connection {connection_id} back from its Key Vault reference: Key Vault's "
                    "current version is sent as a copy (Fabric tests it)",
                    "moved back from its Key Vault reference: holds a copy of version {version} again",
                )
            else:
                assert plan.vault_connection is not None
                kind = ReferenceKind(
                    self.fabric, vault_connection_id=plan.vault_connection.id, secret_name=plan.secret
                )
                move = Move(
                    kind,
                    Action.ADOPTED,
                    f"would move connection {connection_id} onto a Key Vault reference to {plan.secret!r} "
                    f"(Key Vault connection {plan.vault_connection.id}); Fabric tests it",
                    f"now references Key Vault secret {plan.secret!r} through Key Vault connection "
                    f"{plan.vault_connection.id}: Fabric tested version {{version}} and the source "
                    "accepted it; Fabric reads every new version itself from now on",
                )
            before = None if dry_run else self.references.of(connection_id)
            if not dry_run:  # the intent: until the verdict is known, nobody sends it a copy
                self._record_reference(connection_id, "in-doubt", plan, run)
            outcome = self.presenter.heal_one(item, run, move)
            if not dry_run:
                state: RecordState | None = None
                if outcome.action == Action.ADOPTED:
                    state = "referenced"
                elif outcome.action == Action.UPDATED and plan.release:
                    state = "released"
                elif outcome.action == Action.IN_DOUBT:
                    state = "in-doubt"
                if state is None:  # refused, or not sent: the connection is as it was
                    self.references.restore(connection_id, before, self._clock())
                else:
                    self._record_reference(connection_id, state, plan, run)
        finally:
            report = self._finish(run)
        return report

    def _record_reference(self, connection_id: str, state: RecordState, plan: MovePlan, run: Run) -> None:
        vault = plan.vault_connection.id if plan.vault_connection is not None else ""
        if plan.release:
            previous = self.references.of(connection_id)
            vault = vault or (previous.vault_connection if previous is not None else "")
        self.references.record(
            connection_id, ReferenceRecord(state, plan.secret, vault, self._clock(), run.correlation_id)
        )

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
    # Scheduling: which target is presented when
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
        resolved = [self.accounts.with_username(item, run) for item in resolved]
        for index, item in enumerate(resolved):
            groups.setdefault(self.accounts.account_of(item, run), []).append(index)
        results: dict[int, Outcome] = {}

        def heal_account(indices: list[int]) -> None:
            pending = list(indices)
            followers: list[tuple[int, Future[Outcome]]] = []
            with ThreadPoolExecutor(
                max_workers=max(1, self.settings.concurrency), thread_name_prefix="fanout"
            ) as pool:
                while pending:  # the probes, one at a time, in this thread
                    index = pending.pop(0)
                    outcome = self.presenter.heal_one(resolved[index], run)
                    results[index] = outcome
                    if outcome.action != Action.UPDATED:
                        continue
                    # Accepted: the rest of the account at this locator follows at once, while the
                    # next locator's probe goes on here.
                    where = resolved[index].where.lower()
                    follow = [i for i in pending if resolved[i].where.lower() == where]
                    pending = [i for i in pending if resolved[i].where.lower() != where]
                    for i in follow:
                        job = pool.submit(
                            contextvars.copy_context().run, self.presenter.heal_one, resolved[i], run
                        )
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

    # ------------------------------------------------------------------------------------------
    # Runs: started, recorded, finished into a report
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
