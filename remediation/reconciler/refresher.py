"""Datasets: read a failed refresh as evidence, heal their sources, and retry them when it is safe.

A refresh signs in to every data source of the dataset with its stored credential, and so does
every scheduled slot once the schedule is back on. Whether a dataset may be refreshed, and its
schedule re-enabled, is the safety core's decision
(:func:`remediation.safety.refreshing.may_refresh`): this module gathers the evidence it needs
(which sources the dataset uses, what this run did to them, what the ledger knows of their
targets and accounts) and acts on the answer (refresh, schedule, follow-up).

A failed refresh is evidence about the version each data source held *when it started*. It is
blamed on a data source only when the failure names it (the ``DataSourceKind``/``DataSourcePath``
details) or it is the dataset's only credential-bearing source; a refused sign-in there after the
current version was applied proves the version wrong (recorded as rejected, for the target and
the account); a failure without a sign-in (no credentials, a lapsed OAuth2 token) only makes the
ledger forget what the source holds. Failures on an account that could not sign in at all
(locked, disabled) are read the same way and retried by the sweep, so that a new version heals
the dataset once an administrator has unlocked the account and rotated.

**Semantic models bound to Fabric connections** follow the same rules, the connection standing
for the data source. Which connections a model is bound to is read from Fabric
(``GET /workspaces/{ws}/items/{id}/connections``) when some binding targets connections. Whether
the ``datasourceId`` Power BI lists for such a source *is* the connection id is unconfirmed
(FABRIC.md), so both are handled: a data source whose id is a connection's is that connection;
otherwise it is the item connection it uniquely corresponds to (same type, its ``server;database``
path, the same gateway for on-premises ones: :func:`is_connection_of`). An item connection that
no Power BI data source corresponds to is one more credential-bearing source of the dataset.
When the item connections cannot be read, only the first rule applies, and a source it does not
settle stays an unbound source (the dataset is then not refreshed: the safe side).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

from remediation.clients.fabric import Connection, FabricClient, ItemConnection
from remediation.clients.http import ApiError, ThrottledPastDeadline
from remediation.clients.powerbi import (
    DatasetDatasource,
    PowerBIClient,
    Refresh,
    RefreshAlreadyRunning,
    RefreshQuotaExceeded,
)
from remediation.config.bindings import CONNECTIONS, BindingSet, Target
from remediation.config.settings import Settings
from remediation.errors import RemediationError
from remediation.inventory.inventory import Inventory
from remediation.inventory.scanner import InventoryPath
from remediation.ledger import DatasetRecord, InventorySource, Ledger, Outcome, utc_day
from remediation.reconciler.accounts import Accounts
from remediation.reconciler.report import Action
from remediation.reconciler.runs import Resolved, Run
from remediation.rules.accounts import failed_source, source_locator, source_matches, text_map
from remediation.rules.connections import corresponding_connection, is_connection_of
from remediation.rules.diagnosis import Category, Diagnosis, diagnose_refresh
from remediation.rules.redact import describe_datasource, mask_urls
from remediation.safety.presenting import licensed
from remediation.safety.refreshing import FailureEvidence, RefreshDecision, SourceEvidence, may_refresh

__all__ = ["Refresher", "TargetHealer", "is_connection_of"]

logger = logging.getLogger(__name__)
_CURSOR = "sweep-cursor"
"""The ledger marker of the sweep's scan cursor: ``workspace/dataset`` where the next scan starts."""
_T = TypeVar("_T")
_R = TypeVar("_R")
_CURABLE = (Category.CREDENTIAL, Category.ACCOUNT)
"""Refresh failures a new version can cure: credentials, and an account that could not sign in
(an administrator unlocks it and rotates; the new version heals the dataset with no operator)."""


class TargetHealer(Protocol):
    """What the refresher needs of the healer: healing targets under its rules."""

    def heal_targets(self, resolved: Sequence[Resolved], run: Run) -> list[Outcome]: ...

    def in_parallel(self, work: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]: ...


def _path_details(path: str | None) -> dict[str, str]:
    """A connection's path as the data source details a refresh failure is compared with."""
    text = path or ""
    server, _, database = text.partition(";")
    if database:
        return {"server": server, "database": database}
    return {"path": text} if text else {}


@dataclass(frozen=True)
class _Plan:
    """A dataset read and learnt from, ready to heal: its last refresh, the diagnosis of its
    failure when a credential can cure it (else None), its credential-bearing sources, their
    bound targets and the source the failure names."""

    workspace_id: str
    dataset_id: str
    latest: Refresh | None
    diagnosis: Diagnosis | None
    credential_bearing: tuple[DatasetDatasource, ...]
    resolved: tuple[Resolved, ...]
    culprit: DatasetDatasource | None


class Refresher:
    """Heals datasets: their bound sources through the healer, then their refresh."""

    def __init__(
        self,
        settings: Settings,
        bindings: BindingSet,
        *,
        powerbi: PowerBIClient,
        ledger: Ledger,
        targets: TargetHealer,
        accounts: Accounts,
        lease_ttl: Callable[[], float],
        connections: Callable[[Run], list[Connection]],
        fabric: FabricClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = 5.0,
    ) -> None:
        self.settings = settings
        self.bindings = bindings
        self.powerbi = powerbi
        self.fabric = fabric
        self.ledger = ledger
        self._targets = targets
        self._accounts = accounts
        self._lease_ttl = lease_ttl
        self._connections = connections
        self._clock = clock
        self._sleep = sleep
        self._poll_interval = poll_interval
        self.inventory = Inventory(
            bindings,
            powerbi=powerbi,
            ledger=ledger,
            refresh_seconds=settings.inventory_refresh_seconds,
            in_parallel=targets.in_parallel,
            clock=clock,
            path=InventoryPath(settings.inventory_source),
            sleep=sleep,
            poll_interval=poll_interval,
        )

    def heal_dataset(
        self,
        workspace_id: str,
        dataset_id: str,
        run: Run,
        latest: Refresh | None = None,
        sources: Sequence[DatasetDatasource] | None = None,
        *,
        latest_is_fresh: bool = False,
        heal_credentials: bool = False,
    ) -> None:
        """Heal a dataset. ``heal_credentials``: bring its bound data sources to the current
        versions even when its last refresh did not fail (an operator's or an event's heal).

        A last refresh that failed on credentials (or on an account that cannot sign in) is first
        read as evidence (:meth:`_learn_from_failure`), then the bound sources are healed under
        the account rules, then the safety core decides whether the dataset may be refreshed
        (:func:`~remediation.safety.refreshing.may_refresh`)."""
        plan = self._prepare(
            workspace_id, dataset_id, run, latest, sources, heal_credentials=heal_credentials
        )
        if plan is not None:
            self._finish(plan, run, latest_is_fresh=latest_is_fresh)

    def heal_failed(self, found: Sequence[tuple[str, str, Refresh]], run: Run, *, why_deferred: str) -> None:
        """Heal datasets whose last refresh failed (a sweep's, or a rotation's retry), in two
        passes: every failure is read as evidence first, then the datasets are healed and maybe
        refreshed. So one dataset's failure on a version stops another dataset's refresh on that
        version in the same run, whichever is handled first."""

        def prepare(item: tuple[str, str, Refresh]) -> _Plan | None:
            workspace_id, dataset_id, latest = item
            if run.out_of_time(self._clock()):
                self.report_dataset(run, workspace_id, dataset_id, Action.DEFERRED, why_deferred)
                return None
            return self._prepare(workspace_id, dataset_id, run, latest, None, heal_credentials=False)

        plans = self._targets.in_parallel(prepare, list(found))

        def finish(plan: _Plan | None) -> None:
            if plan is not None:
                self._finish(plan, run, latest_is_fresh=True)

        self._targets.in_parallel(finish, plans)

    def _prepare(
        self,
        workspace_id: str,
        dataset_id: str,
        run: Run,
        latest: Refresh | None,
        sources: Sequence[DatasetDatasource] | None,
        *,
        heal_credentials: bool,
    ) -> _Plan | None:
        """Read the dataset (its last refresh, its data sources and their bindings) and learn from
        its failure; None when there is nothing more to do (reported)."""
        report = partial(self.report_dataset, run, workspace_id, dataset_id)
        try:
            if latest is None:
                history = self.powerbi.get_refresh_history_in_group(workspace_id, dataset_id, top=1)
                latest = history[0] if history else None
        except ApiError as exc:
            report(Action.FAILED, f"could not read the refresh history: {exc}")
            return None
        diagnosis = diagnose(latest) if latest is not None and latest.failed else None
        curable = diagnosis is not None and diagnosis.category in _CURABLE
        if (diagnosis is not None and not curable) or (not curable and not heal_credentials):
            # A failure a credential cannot cure changes no credential (the gateway is offline, the
            # source unreachable...): PATCHing would only add sign-ins, or fail the same way.
            self._report_refresh_state(report, latest)
            return None
        if sources is None:
            try:
                sources = self.powerbi.get_datasources_in_group(workspace_id, dataset_id)
            except ApiError as exc:
                report(Action.FAILED, f"could not list the dataset's data sources: {exc}")
                return None
        sources, connections = self._with_connections(workspace_id, dataset_id, sources, run)
        resolved, _unbound = self._dataset_bindings(sources, report, connections)
        credential_bearing = [s for s in sources if s.bound]
        culprit = self._culprit(latest, credential_bearing) if curable else None
        if curable and diagnosis is not None and latest is not None and not run.dry_run:
            self._learn_from_failure(diagnosis, latest, culprit, resolved, run)
        return _Plan(
            workspace_id,
            dataset_id,
            latest,
            diagnosis if curable else None,
            tuple(credential_bearing),
            tuple(resolved),
            culprit,
        )

    def _finish(self, plan: _Plan, run: Run, *, latest_is_fresh: bool) -> None:
        """Heal the dataset's bound sources, then refresh it if the safety core allows."""
        report = partial(self.report_dataset, run, plan.workspace_id, plan.dataset_id)
        outcomes = self._targets.heal_targets(plan.resolved, run)
        latest, diagnosis = plan.latest, plan.diagnosis
        if latest is None or diagnosis is None:
            self._report_refresh_state(report, latest)
            return

        def decide() -> RefreshDecision:
            return may_refresh(
                self._evidence(plan.credential_bearing, plan.resolved, outcomes, run),
                FailureEvidence(
                    latest.start_time.timestamp()
                    if latest is not None and latest.start_time is not None
                    else None,
                    None if plan.culprit is None else _source_key(plan.culprit),
                ),
            )

        decision = decide()
        if decision.allowed:
            self._refresh_in_turn(
                plan, run, decision.probe_accounts, decide, check_running=not latest_is_fresh
            )
            return
        account = f" {diagnosis.message}. {diagnosis.fix}" if diagnosis.category is Category.ACCOUNT else ""
        if decision.unbound and not plan.resolved:
            report(
                Action.UNBOUND,
                "the refresh failed for credentials but none of the dataset's data sources is bound: "
                "add a binding" + account,
            )
            return
        if decision.unbound:
            report(
                Action.UNBOUND,
                "not refreshed: the failure may come from a data source no binding covers, and a refresh "
                "would only sign in with its wrong credential again; add a binding for it" + account,
            )
            return
        assert decision.action is not None
        report(
            decision.action,
            "not refreshed, and its schedule is left as it is: a refresh signs in to every data source, "
            "and these are not known to hold a working credential: "
            + ", ".join(decision.waiting)
            + "."
            + account,
            refresh_request_id=latest.request_id,
            refresh_state=latest.status,
        )

    def _culprit(
        self, latest: Refresh | None, credential_bearing: Sequence[DatasetDatasource]
    ) -> DatasetDatasource | None:
        """The data source a failed refresh is about: the one its details name (when exactly one
        source matches), or the dataset's only credential-bearing source; None when unknown."""
        if latest is None:
            return None
        named = failed_source(latest.service_exception_json)
        if named is not None:
            matching = [
                s
                for s in credential_bearing
                if source_matches(named, s.datasource_type, s.connection_details)
            ]
            return matching[0] if len(matching) == 1 else None
        return credential_bearing[0] if len(credential_bearing) == 1 else None

    def _evidence(
        self,
        credential_bearing: Sequence[DatasetDatasource],
        resolved: Sequence[Resolved],
        outcomes: Sequence[Outcome],
        run: Run,
    ) -> list[SourceEvidence]:
        """What the ledger knows of each credential-bearing source after the heal (for the core)."""
        healed = {item.target.key: (item, outcome) for item, outcome in zip(resolved, outcomes, strict=True)}
        evidence: list[SourceEvidence] = []
        for source in credential_bearing:
            key = _source_key(source)
            label = f"{key[0]}/{key[1]}"
            found = healed.get(key)
            if found is None:
                evidence.append(SourceEvidence(key, label, None))
                continue
            item, outcome = found
            action = Action(outcome.action or Action.FAILED.value)
            if action not in (Action.UPDATED, Action.CURRENT):
                evidence.append(SourceEvidence(key, label, action))
                continue
            try:
                version = self._accounts.secret(item.binding.secret, run).version
                account = self._accounts.account_of(item, run)
                state = self.ledger.target_state(*key)
                av = self.ledger.account_version(account, item.binding.secret, version)
            except RemediationError as exc:
                logger.warning("dataset source %s: cannot read its evidence: %s", label, exc)
                evidence.append(SourceEvidence(key, label, Action.FAILED))
                continue
            where = self._accounts.where_of(item, run)
            evidence.append(
                SourceEvidence(
                    key,
                    label,
                    action,
                    holds_current=state.holds(item.binding.secret, version),
                    applied_at=state.applied_at,
                    account_verdict=av.verdict,
                    contradicted_at=av.contradicted_at,
                    account=f"{account}|{item.binding.secret.lower()}|{version.lower()}",
                    licensed_now=licensed(av, where, run.correlation_id, self._clock()),
                )
            )
        return evidence

    def _learn_from_failure(
        self,
        diagnosis: Diagnosis,
        latest: Refresh,
        culprit: DatasetDatasource | None,
        resolved: Sequence[Resolved],
        run: Run,
    ) -> None:
        """Read a failed refresh as evidence about the version each source held *when it started*
        (never about a version applied after it):

        * a refused sign-in (a wrong password, or an account that cannot sign in) by the culprit,
          which held Key Vault's current version since before the refresh started: that version
          is rejected for the target and the account (that refresh was its failed sign-in);
        * no credentials at all, or an OAuth2 token that lapsed: no sign-in happened and the
          password is not in question, but the source no longer holds what the ledger says; the
          ledger forgets it, so the heal presents the current version again (under the account
          rules). Without a known culprit every bound source of the dataset is forgotten.
        """
        if latest.start_time is None:
            return
        started = latest.start_time.timestamp()
        key = None if culprit is None else _source_key(culprit)
        if not diagnosis.refused_sign_in:
            for item in resolved:
                if key is not None and item.target.key != key:
                    continue
                state = self.ledger.target_state(item.target.gateway_id, item.target.datasource_id)
                if state.applied_at is not None and state.applied_at <= started:
                    self.ledger.forget_applied(item.target.gateway_id, item.target.datasource_id)
                    logger.info(
                        "target %s/%s: %s; it is sent the current version again",
                        item.target.gateway_id,
                        item.target.datasource_id,
                        diagnosis.message,
                    )
            return
        if key is None:
            return
        for item in resolved:
            if item.target.key != key:
                continue
            state = self.ledger.target_state(item.target.gateway_id, item.target.datasource_id)
            if state.applied_at is None or state.applied_at > started or state.applied_version is None:
                return  # the failure speaks of what it held before: healing it is the cure
            try:
                secret = self._accounts.secret(item.binding.secret, run)
            except RemediationError:
                return
            if not state.holds(item.binding.secret, secret.version):
                return  # it holds an older version: healing it is the cure
            account = self._accounts.account_of(item, run)
            what = (
                f"a refresh reported the account unusable ({diagnosis.message})"
                if diagnosis.category is Category.ACCOUNT
                else "a refresh failed for credentials on this data source"
            )
            refresh = latest.request_id or "without id"
            reason = f"{what} after version {secret.version} was applied (refresh {refresh})"
            self.ledger.record_presentation(
                account,
                item.binding.secret,
                secret.version,
                owner=run.owner,
                locator=item.where,
                verdict="rejected",
                reason=reason,
                now=self._clock(),
                sent_at=started,
            )
            lease = self.ledger.acquire_lease(
                item.target.gateway_id,
                item.target.datasource_id,
                run.owner,
                self._clock(),
                self._lease_ttl(),
            )
            if lease is not None:
                try:
                    self.ledger.record_rejected(lease, item.binding.secret, secret.version, self._clock())
                finally:
                    self.ledger.release_lease(lease)
            return

    def _report_refresh_state(self, report: Callable[..., Outcome], latest: Refresh | None) -> None:
        if latest is None:
            report(Action.HEALTHY, "the dataset has no refresh history")
        elif latest.running:
            report(
                Action.REFRESH_RUNNING,
                "a refresh is running; nothing to do until it ends",
                refresh_request_id=latest.request_id,
                refresh_state=latest.status,
            )
        elif not latest.failed:
            report(Action.HEALTHY, f"the last refresh is {latest.status}", refresh_state=latest.status)
        else:
            diagnosis = diagnose(latest)
            report(
                Action.NOT_CREDENTIAL,
                f"{diagnosis.message}. {diagnosis.fix}",
                refresh_request_id=latest.request_id,
                refresh_state=latest.status,
            )

    def _with_connections(
        self, workspace_id: str, dataset_id: str, sources: Sequence[DatasetDatasource], run: Run
    ) -> tuple[list[DatasetDatasource], dict[str, ItemConnection | Connection]]:
        """The dataset's sources with the Fabric connections it is bound to in their place (as
        ``(gatewayId "connections", connection id)``), and what is known of those connections
        (see the module docstring). Unchanged when no binding targets connections."""
        if self.fabric is None or not self.bindings.binds_connections:
            return list(sources), {}
        known: dict[str, ItemConnection | Connection] = {}
        try:
            known.update((c.id, c) for c in self._connections(run))
        except (ApiError, RemediationError) as exc:
            logger.warning("cannot list the Fabric connections: %s", exc)
        items: list[ItemConnection] = []
        try:
            items = [
                c for c in self.fabric.list_item_connections(workspace_id, dataset_id) if c.id is not None
            ]
        except (ApiError, RemediationError) as exc:
            logger.warning("dataset %s: cannot list the connections it is bound to: %s", dataset_id, exc)
        for item in items:
            assert item.id is not None
            known.setdefault(item.id, item)
        bound_ids = {t.connection_id for b in self.bindings for t in b.targets if t.connection_id is not None}
        item_ids = {c.id for c in items if c.id is not None}
        used: set[str] = set()
        out: list[DatasetDatasource] = []
        for source in sources:
            if not source.bound or source.gateway_id is None or source.datasource_id is None:
                out.append(source)
                continue
            connection_id = corresponding_connection(
                source.datasource_id,
                source.datasource_type,
                source.gateway_id,
                source.connection_details,
                [c for c in items if c.id not in used],
                ids=item_ids | bound_ids | set(known),
            )
            if connection_id is None:
                out.append(source)
                continue
            used.add(connection_id)
            if self._healed_as_datasource(source, known.get(connection_id), connection_id):
                out.append(source)  # bound as the gateway data source it also is: healed as that
                continue
            out.append(
                DatasetDatasource(
                    source.datasource_type, source.connection_details, CONNECTIONS, connection_id, source.name
                )
            )
        for item in items:
            assert item.id is not None
            if item.id not in used:
                out.append(
                    DatasetDatasource(
                        item.connection_type,
                        _path_details(item.path),
                        CONNECTIONS,
                        item.id,
                        item.display_name,
                    )
                )
        return out, known

    def _healed_as_datasource(
        self, source: DatasetDatasource, connection: ItemConnection | Connection | None, connection_id: str
    ) -> bool:
        """Whether a source that is also a Fabric connection is healed as the gateway data source:
        when a binding names it by gateway and data source id, or, with no binding for the
        connection, when a data source ``match`` selects it."""
        gateway_id, datasource_id = source.gateway_id or "", source.datasource_id or ""
        if self.bindings.for_target(gateway_id, datasource_id) is not None:
            return True
        try:
            if (
                self.bindings.for_connection(
                    connection_id,
                    connection_type=None if connection is None else connection.connection_type,
                    connectivity_type=None if connection is None else connection.connectivity_type,
                    path=None if connection is None else connection.path,
                )
                is not None
            ):
                return False
            matched = self.bindings.for_datasource(
                gateway_id,
                datasource_id,
                datasource_type=source.datasource_type or "",
                connection_details=text_map(source.connection_details),
            )
        except RemediationError:
            return False  # reported where the connection's binding is looked up again
        return matched is not None

    def _dataset_bindings(
        self,
        sources: Sequence[DatasetDatasource],
        report: Callable[..., Outcome],
        connections: Mapping[str, ItemConnection | Connection] | None = None,
    ) -> tuple[list[Resolved], list[DatasetDatasource]]:
        """The dataset's bound targets, and its credential-bearing sources that have no binding."""
        resolved: list[Resolved] = []
        unbound: list[DatasetDatasource] = []
        for source in sources:
            if not source.bound or source.gateway_id is None or source.datasource_id is None:
                continue
            details = text_map(source.connection_details)
            if source.gateway_id == CONNECTIONS:
                connection_id = source.datasource_id
                connection = (connections or {}).get(connection_id)
                try:
                    binding = self.bindings.for_connection(
                        connection_id,
                        connection_type=None if connection is None else connection.connection_type,
                        connectivity_type=None if connection is None else connection.connectivity_type,
                        path=None if connection is None else connection.path,
                    )
                except RemediationError as exc:
                    report(Action.FAILED, str(exc))
                    unbound.append(source)
                    continue
                if binding is None:
                    unbound.append(source)
                    report(
                        Action.UNBOUND,
                        f"Fabric connection {connection_id} "
                        f"({describe_datasource(source.datasource_type, source.connection_details)}) has no "
                        "binding: add one to the bindings file so it can be healed",
                        gateway_id=CONNECTIONS,
                        datasource_id=connection_id,
                    )
                    continue
                target = next(
                    (t for t in binding.targets if t.connection_id == connection_id),
                    Target.connection(connection_id),
                )
                resolved.append(Resolved(binding, target, source_locator(source.datasource_type, details)))
                continue
            binding = self.bindings.for_target(source.gateway_id, source.datasource_id)
            if binding is None:
                try:
                    binding = self.bindings.for_datasource(
                        source.gateway_id,
                        source.datasource_id,
                        datasource_type=source.datasource_type or "",
                        connection_details=details,
                    )
                except RemediationError as exc:
                    report(Action.FAILED, str(exc))
                    unbound.append(source)
                    continue
            if binding is None:
                unbound.append(source)
                report(
                    Action.UNBOUND,
                    f"data source {describe_datasource(source.datasource_type, source.connection_details)} "
                    "has no binding: add one to the bindings file so it can be healed",
                    gateway_id=source.gateway_id.lower(),
                    datasource_id=source.datasource_id.lower(),
                )
                continue
            resolved.append(
                Resolved(
                    binding,
                    Target(source.gateway_id.lower(), source.datasource_id.lower()),
                    source_locator(source.datasource_type, details),
                )
            )
        return resolved, unbound

    def _refresh_in_turn(
        self,
        plan: _Plan,
        run: Run,
        accounts: Sequence[str],
        decide: Callable[[], RefreshDecision],
        *,
        check_running: bool,
    ) -> None:
        """Refresh the dataset, one dataset at a time per account whose version this command has
        not seen accepted (``accounts``, from the safety core): the first refresh proves the
        version (or records its rejection); the others follow once it completed. One whose outcome
        is still unknown when the follow-up ends leaves the others of its accounts for a later run.
        """
        keys = sorted(f"refresh-proof:{account}" for account in accounts)
        if not keys:
            self._refresh(plan, run, decide, check_running=check_running)
            return
        report = partial(self.report_dataset, run, plan.workspace_id, plan.dataset_id)
        with contextlib.ExitStack() as held:
            for key in keys:
                held.enter_context(run.key_lock(key))
            with run.lock:
                pending = [k for k in keys if k in run.refresh_pending]
                unproven = [k for k in keys if k not in run.refresh_proven]
            if pending:
                who = ", ".join(k.split(":", 1)[1].split("|", 1)[0].split(":", 1)[-1] for k in pending)
                report(
                    Action.DEFERRED,
                    f"not refreshed yet: another dataset's refresh is the first to sign in as {who} with "
                    "this version, and its outcome is not known yet (a refresh is a sign-in); the next "
                    "run continues",
                )
                return
            if not unproven:
                held.close()  # proven in this run: refreshes follow concurrently
                self._refresh(plan, run, decide, check_running=check_running)
                return
            final = self._refresh(plan, run, decide, check_running=check_running)
            with run.lock:
                if final is not None and final.status == "Completed":
                    run.refresh_proven.update(unproven)
                elif final is None or final.running:
                    run.refresh_pending.update(unproven)

    def _refresh(
        self,
        plan: _Plan,
        run: Run,
        decide: Callable[[], RefreshDecision],
        *,
        check_running: bool,
    ) -> Refresh | None:
        """Retry the refresh: never while one runs, within the daily budget, schedule re-enabled;
        the safety core is asked again right before the schedule and the refresh (another run may
        have recorded evidence against the version since). The refresh is followed; a failure on
        credentials is evidence at once (:meth:`_learn_from_failure`). Returns how it ended (None:
        not started, or not seen).

        ``check_running`` reads the history first; it is skipped when this run has just read it
        (a refresh started since is refused by Power BI and reported as running, not retried).
        """
        workspace_id, dataset_id = plan.workspace_id, plan.dataset_id
        report = partial(self.report_dataset, run, workspace_id, dataset_id)

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
                return None
            used = self.ledger.refresh_posts(dataset_id, day)
            if used >= self.settings.refresh_daily_budget:
                report(
                    Action.REFRESH_BUDGET,
                    f"{used} refreshes started today (budget "
                    f"{self.settings.refresh_daily_budget}); the next scheduled refresh will run",
                )
                return None
            schedule = self.powerbi.get_refresh_schedule_in_group(workspace_id, dataset_id)
            if run.dry_run:
                again = "" if schedule.enabled else " and re-enable its schedule"
                report(Action.WOULD_REFRESH, f"would refresh the dataset{again}")
                return None
            again_now = decide()
            if not again_now.allowed:
                report(
                    again_now.action or Action.BLOCKED,
                    "not refreshed, and its schedule is left as it is: evidence against a data source's "
                    "credential arrived meanwhile: " + ", ".join(again_now.waiting),
                )
                return None
            notes = []
            if not schedule.enabled and schedule.days:
                self.powerbi.update_refresh_schedule_in_group(workspace_id, dataset_id, True)
                notes.append("schedule re-enabled")
            self.ledger.record_refresh_post(dataset_id, day)
            request = self.powerbi.refresh_dataset_in_group(workspace_id, dataset_id)
        except RefreshAlreadyRunning:
            report(Action.REFRESH_RUNNING, "a refresh is already running: not starting another")
            return None
        except RefreshQuotaExceeded as exc:
            report(Action.REFRESH_BUDGET, f"Power BI's daily refresh limit is reached: {exc}")
            return None
        except ThrottledPastDeadline as exc:
            report(Action.DEFERRED, f"not refreshed: {exc}")
            return None
        except ApiError as exc:
            report(Action.FAILED, f"could not refresh: {exc}")
            return None
        final = self._follow(workspace_id, dataset_id, request.request_id, run)
        state = final.status if final is not None else "Unknown"
        reason = f"refresh {state}"
        action = Action.REFRESHED
        if final is not None and final.failed:
            diagnosis = diagnose(final)
            reason += f": {diagnosis.message}"
            if diagnosis.category in _CURABLE:
                # The refresh was a sign-in with the version: its failure is evidence now.
                action = Action.FAILED
                credential_bearing = list(plan.credential_bearing)
                self._learn_from_failure(
                    diagnosis, final, self._culprit(final, credential_bearing), plan.resolved, run
                )
        elif final is None or final.running:
            reason += " within this run's time; it goes on in Power BI"
        if notes:
            reason += f" ({', '.join(notes)})"
        report(action, reason, refresh_request_id=request.request_id, refresh_state=state)
        return final

    def _follow(self, workspace_id: str, dataset_id: str, request_id: str, run: Run) -> Refresh | None:
        """Poll the history until the refresh ``request_id`` ends, the follow-up time limit or the
        run's deadline passes."""
        deadline = self._clock() + self.settings.refresh_timeout_seconds
        if run.deadline is not None:
            deadline = min(deadline, run.deadline)
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

    def retry_failed_refreshes(self, healed: set[tuple[str | None, str | None]], run: Run) -> None:
        """After a secret change: refresh the datasets on the healed data sources whose last
        refresh failed for credentials. Which datasets those are comes from the stored inventory
        (no scan of the tenant); only their refresh history is read."""
        keys = {(g.lower(), d.lower()) for g, d in healed if g is not None and d is not None}
        uses_connection = self._connection_users({d for g, d in keys if g == CONNECTIONS}, run)
        records = [
            r
            for r in self.inventory.stored(run)
            if r.refreshable
            and (self.inventory.uses_any(r, keys) or any(uses_connection(s) for s in r.sources))
        ]
        failed = self._failed_among(records, run, cursor=None)
        self.heal_failed(failed, run, why_deferred="the run's time ran out before this dataset")

    def scan_failed_datasets(self, run: Run, say: Callable[[str], None]) -> list[tuple[str, str, Refresh]]:
        """Datasets using bound data sources whose last refresh failed for credentials.

        The inventory is brought up to date first (one dataset list per workspace, the data
        sources of new, changed and due datasets); then one history call per dataset that uses a
        bound data source, concurrently, starting where the previous sweep ran out of time (the
        scan cursor, a ledger marker), so that a tenant too big for one sweep is still scanned
        whole, over several. What is not reached is reported as deferred.
        """
        try:
            sync = self.inventory.sync(run)
        except ApiError as exc:
            logger.warning("cannot list workspaces: %s", exc)
            return []
        uses_connection = self._connection_users(None, run)
        records = [
            r
            for r in sync.records
            if r.refreshable and (self.inventory.uses_bound(r) or any(uses_connection(s) for s in r.sources))
        ]
        say(
            f"inventory ({sync.path}): {len(sync.records)} datasets, {len(records)} use bound data sources "
            f"({sync.scanned} learnt from admin scans, {sync.read} data source lists read)"
            + "".join(f"; {problem}" for problem in sync.problems[:3])
        )
        if sync.unread:
            workspace_id, dataset_id = sync.unread[0]
            self.report_dataset(
                run,
                workspace_id,
                dataset_id,
                Action.DEFERRED,
                f"the data sources of {len(sync.unread)} datasets new to the inventory were not read "
                "(time ran out, or Power BI failed; see the logs), starting with this one; the next sweep "
                "reads them",
            )
        return self._failed_among(records, run, cursor=_CURSOR)

    def _connection_users(self, wanted: set[str] | None, run: Run) -> Callable[[InventorySource], bool]:
        """Whether an inventory source may be one of the Fabric connections ``wanted`` (None:
        every connection some binding covers): its id is the connection's, or it corresponds to
        the connection (:func:`is_connection_of`). Candidates only: :meth:`heal_dataset` reads
        the item's connections before anything is decided."""
        if self.fabric is None or not self.bindings.binds_connections or wanted == set():
            return lambda _source: False
        try:
            listed = self._connections(run)
        except (ApiError, RemediationError) as exc:
            logger.warning("cannot list the Fabric connections: %s", exc)
            listed = []
        ids = set(wanted or ()) | (
            {t.connection_id for b in self.bindings for t in b.targets if t.connection_id}
            if wanted is None
            else set()
        )
        chosen: list[Connection] = []
        for c in listed:
            if wanted is not None and c.id not in wanted:
                continue
            if wanted is None:
                try:
                    covered = (
                        self.bindings.for_connection(
                            c.id,
                            connection_type=c.connection_type,
                            connectivity_type=c.connectivity_type,
                            path=c.path,
                        )
                        is not None
                    )
                except RemediationError:
                    covered = True  # selected by several matches: bound (heal_dataset reports it)
                if not covered:
                    continue
            ids.add(c.id)
            chosen.append(c)

        def uses(source: InventorySource) -> bool:
            if source.datasource_id.lower() in ids:
                return True
            details = source.details()
            return any(
                is_connection_of(
                    c.connection_type,
                    c.connectivity_type,
                    c.gateway_id,
                    c.path,
                    source.datasource_type,
                    source.gateway_id,
                    details,
                )
                for c in chosen
            )

        return uses

    def _failed_among(
        self, records: Sequence[DatasetRecord], run: Run, *, cursor: str | None
    ) -> list[tuple[str, str, Refresh]]:
        """Read the last refresh of each dataset of ``records`` (in id order, from the ``cursor``
        marker on when given); those that failed for credentials. A dataset not reached before
        the run's deadline is reported as deferred (one outcome for all of them, naming the
        first), and the cursor is left on it."""
        pairs = sorted({(r.workspace_id, r.dataset_id) for r in records})
        start = ""
        if cursor is not None:
            start = self.ledger.marker(cursor) or ""
            at = next((i for i, pair in enumerate(pairs) if "/".join(pair) >= start), 0) if start else 0
            pairs = pairs[at:] + pairs[:at]
        unreached = object()

        def latest(pair: tuple[str, str]) -> tuple[str, str, Refresh] | object | None:
            if run.out_of_time(self._clock()):
                return unreached
            try:
                history = self.powerbi.get_refresh_history_in_group(pair[0], pair[1], top=1)
            except ThrottledPastDeadline:
                return unreached
            except ApiError as exc:
                logger.warning("dataset %s: cannot read refresh history: %s", pair[1], exc)
                return None
            if history and history[0].failed and diagnose(history[0]).category in _CURABLE:
                return pair[0], pair[1], history[0]
            return None

        answers = self._targets.in_parallel(latest, pairs)
        missed = [pair for pair, answer in zip(pairs, answers, strict=True) if answer is unreached]
        if missed:
            self.report_dataset(
                run,
                missed[0][0],
                missed[0][1],
                Action.DEFERRED,
                f"time ran out before the refresh history of {len(missed)} of {len(pairs)} datasets using "
                "the bound data sources was read, starting with this one"
                + ("; the next sweep starts here" if cursor is not None else ""),
            )
        if cursor is not None and not run.dry_run:
            following = "/".join(missed[0]) if missed else ""
            if following != start:
                self.ledger.set_marker(cursor, following, self._clock())
        return [a for a in answers if isinstance(a, tuple)]

    def report_dataset(
        self,
        run: Run,
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


def diagnose(refresh: Refresh) -> Diagnosis:
    """The diagnosis of a refresh-history entry."""
    entry: dict[str, object] = {"status": refresh.status}
    if refresh.service_exception_json is not None:
        entry["serviceExceptionJson"] = refresh.service_exception_json
    return diagnose_refresh(entry)


def _source_key(source: DatasetDatasource) -> tuple[str, str]:
    return (source.gateway_id or "").lower(), (source.datasource_id or "").lower()
