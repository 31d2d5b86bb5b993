"""Datasets: which failed, heal their sources, then refresh them when the safety core allows.

The dataset flow, as one Key Vault event or a sweep takes it: the datasets whose last refresh
failed for credentials are found (:meth:`Refresher.retry_failed_refreshes` from the stored
inventory after a rotation, :meth:`Refresher.scan_failed_datasets` over the whole tenant for a
sweep, from where the previous one ran out of time); each is read (its last refresh, its sources,
the Fabric connections in their place and their bindings: :mod:`.dataset_sources`) and its
failure read as evidence (:mod:`.refresh_evidence`), all of them before any is healed, so that one
dataset's failure on a version stops another's refresh on that version in the same run. Then the
bound sources are healed by the healer, under its rules, and the safety core decides whether the
dataset may be refreshed and its schedule re-enabled
(:func:`remediation.safety.refreshing.may_refresh`, asked with :mod:`.refresh_evidence`); the
refresh is started and followed one dataset at a time per account (:mod:`.refreshes`).

Failures on an account that could not sign in at all (locked, disabled) are read like credential
failures and retried by the sweep, so that a new version heals the dataset once an administrator
has unlocked the account and rotated. Every dataset ends in an outcome that says why
(:meth:`Refresher.report_dataset`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol, TypeVar

from remediation.clients.api_errors import ApiError, ThrottledPastDeadline
from remediation.clients.fabric import Connection, FabricClient
from remediation.clients.powerbi import PowerBIClient
from remediation.clients.powerbi_models import DatasetDatasource, Refresh
from remediation.config.bindings import CONNECTIONS, BindingSet
from remediation.config.settings import Settings
from remediation.inventory.inventory import Inventory
from remediation.inventory.scanner import InventoryPath
from remediation.ledger import DatasetRecord, Ledger, Outcome
from remediation.ledger.references import References
from remediation.reconciler.accounts import Accounts
from remediation.reconciler.dataset_sources import DatasetSources
from remediation.reconciler.refresh_evidence import (
    CURABLE,
    DatasetPlan,
    RefreshEvidence,
    culprit,
    diagnose,
    source_key,
)
from remediation.reconciler.refreshes import Refreshes
from remediation.reconciler.report import Action
from remediation.reconciler.runs import Resolved, Run
from remediation.rules.diagnosis import Category
from remediation.rules.redact import mask_urls
from remediation.safety.refreshing import FailureEvidence, RefreshDecision, may_refresh

__all__ = ["Refresher", "TargetHealer"]

logger = logging.getLogger(__name__)
_CURSOR = "sweep-cursor"
"""The ledger marker of the sweep's scan cursor: ``workspace/dataset`` where the next scan starts."""
_T = TypeVar("_T")
_R = TypeVar("_R")


class TargetHealer(Protocol):
    """What the refresher needs of the healer: healing targets under its rules."""

    def heal_targets(self, resolved: Sequence[Resolved], run: Run) -> list[Outcome]: ...

    def in_parallel(self, work: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]: ...


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
        references: References | None = None,
        connections: Callable[[Run], list[Connection]],
        fabric: FabricClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = 5.0,
    ) -> None:
        self.settings = settings
        self.bindings = bindings
        self.powerbi = powerbi
        self.ledger = ledger
        self._targets = targets
        self._clock = clock
        self.dataset_sources = DatasetSources(bindings, connections=connections, fabric=fabric)
        self.evidence = RefreshEvidence(
            ledger=ledger,
            accounts=accounts,
            lease_ttl=lease_ttl,
            references=references or References(ledger),
            settle_seconds=settings.settle_seconds,
            clock=clock,
        )
        self.refreshes = Refreshes(
            settings,
            powerbi=powerbi,
            ledger=ledger,
            evidence=self.evidence,
            clock=clock,
            sleep=sleep,
            poll_interval=poll_interval,
        )
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
        read as evidence (:meth:`RefreshEvidence.learn_from_failure`), then the bound sources are
        healed under the account rules, then the safety core decides whether the dataset may be
        refreshed (:func:`~remediation.safety.refreshing.may_refresh`)."""
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

        def prepare(item: tuple[str, str, Refresh]) -> DatasetPlan | None:
            workspace_id, dataset_id, latest = item
            if run.out_of_time(self._clock()):
                self.report_dataset(run, workspace_id, dataset_id, Action.DEFERRED, why_deferred)
                return None
            return self._prepare(workspace_id, dataset_id, run, latest, None, heal_credentials=False)

        plans = self._targets.in_parallel(prepare, list(found))

        def finish(plan: DatasetPlan | None) -> None:
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
    ) -> DatasetPlan | None:
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
        curable = diagnosis is not None and diagnosis.category in CURABLE
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
        sources, connections = self.dataset_sources.with_connections(workspace_id, dataset_id, sources, run)
        resolved, _unbound = self.dataset_sources.bindings_of(sources, report, connections)
        credential_bearing = [s for s in sources if s.bound]
        # Here a diagnosis is a curable one: any other was reported above.
        if curable and diagnosis is not None and latest is not None and not run.dry_run:
            blamed = culprit(latest, credential_bearing)
            self.evidence.learn_from_failure(diagnosis, latest, blamed, resolved, run)
        return DatasetPlan(
            workspace_id, dataset_id, latest, diagnosis, tuple(credential_bearing), tuple(resolved)
        )

    def _finish(self, plan: DatasetPlan, run: Run, *, latest_is_fresh: bool) -> None:
        """Heal the dataset's bound sources, then refresh it if the safety core allows."""
        report = partial(self.report_dataset, run, plan.workspace_id, plan.dataset_id)
        outcomes = self._targets.heal_targets(plan.resolved, run)
        latest, diagnosis = plan.latest, plan.diagnosis
        if latest is None or diagnosis is None:
            self._report_refresh_state(report, latest)
            return

        blamed = culprit(latest, plan.credential_bearing)

        def decide() -> RefreshDecision:
            return may_refresh(
                self.evidence.of_sources(plan.credential_bearing, plan.resolved, outcomes, run),
                FailureEvidence(
                    latest.start_time.timestamp()
                    if latest is not None and latest.start_time is not None
                    else None,
                    None if blamed is None else source_key(blamed),
                ),
            )

        decision = decide()
        if decision.allowed:
            self.refreshes.refresh_in_turn(
                plan, run, decision.probe_accounts, decide, report, check_running=not latest_is_fresh
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

    def retry_failed_refreshes(self, healed: set[tuple[str | None, str | None]], run: Run) -> None:
        """After a secret change: refresh the datasets on the healed data sources whose last
        refresh failed for credentials. Which datasets those are comes from the stored inventory
        (no scan of the tenant); only their refresh history is read."""
        keys = {(g.lower(), d.lower()) for g, d in healed if g is not None and d is not None}
        uses_connection = self.dataset_sources.connection_users({d for g, d in keys if g == CONNECTIONS}, run)
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
        uses_connection = self.dataset_sources.connection_users(None, run)
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

    def _failed_among(
        self, records: Sequence[DatasetRecord], run: Run, *, cursor: str | None
    ) -> list[tuple[str, str, Refresh]]:
        """Read the last refresh of each dataset of ``records`` (in id order, from the ``cursor``
        marker on when given); those that failed for credentials. A dataset not reached before
        the run's deadline is reported as deferred (one outcome for all of them, naming the
        first), and the cursor is left on it."""
        pairs = sorted({(r.workspace_id, r.dataset_id) for r in records})
        if cursor is not None:
            start = self.ledger.marker(cursor) or ""
            at = next((i for i, pair in enumerate(pairs) if "/".join(pair) >= start), 0)
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
            # Credential failures are healed; a Key Vault reference Fabric could not read is only
            # reported, with the fix a person needs (nothing a healer pushes cures it).
            if (
                history
                and history[0].failed
                and diagnose(history[0]).category in (*CURABLE, Category.REFERENCE)
            ):
                return pair[0], pair[1], history[0]
            return None

        answers = self._targets.in_parallel(latest, pairs)
        read = zip(pairs, answers, strict=True)  # pragma: no mutate (equivalent: one answer per dataset)
        missed = [pair for pair, answer in read if answer is unreached]
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
            if following != start:  # start: the cursor's marker, read above
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
