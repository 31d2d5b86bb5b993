"""Evidence about a dataset's sources: what a failed refresh proves, and what the refresh gate asks.

A failed refresh is evidence about the version each data source held *when it started*. It is
blamed on a data source only when the failure names it (the ``DataSourceKind``/``DataSourcePath``
details) or it is the dataset's only credential-bearing source (:func:`culprit`); a refused
sign-in there after the current version was applied proves the version wrong (recorded as
rejected, for the target and the account); a failure without a sign-in (no credentials, a lapsed
OAuth2 token) only makes the ledger forget what the source holds
(:meth:`RefreshEvidence.learn_from_failure`). Failures on an account that could not sign in at all
(locked, disabled) are read the same way (:data:`CURABLE`).

Whether a dataset may be refreshed is the safety core's decision
(:func:`remediation.safety.refreshing.may_refresh`); :meth:`RefreshEvidence.of_sources` gathers
what it asks for: what the ledger knows of each credential-bearing source after the heal. Logs as
the refresher (``remediation.reconciler.refresher``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from remediation.clients.powerbi_models import DatasetDatasource, Refresh
from remediation.errors import RemediationError
from remediation.ledger import Ledger, Outcome
from remediation.reconciler.accounts import Accounts
from remediation.reconciler.report import Action
from remediation.reconciler.runs import Resolved, Run
from remediation.rules.accounts import failed_source, source_matches
from remediation.rules.diagnosis import Category, Diagnosis, diagnose_refresh
from remediation.safety.presenting import licensed
from remediation.safety.refreshing import SourceEvidence

__all__ = ["CURABLE", "DatasetPlan", "RefreshEvidence", "culprit", "diagnose", "source_key"]

logger = logging.getLogger("remediation.reconciler.refresher")  # the refresher's log (runs.RUN_LOGGERS)

CURABLE = (Category.CREDENTIAL, Category.ACCOUNT)
"""Refresh failures a new version can cure: credentials, and an account that could not sign in
(an administrator unlocks it and rotates; the new version heals the dataset with no operator)."""


def diagnose(refresh: Refresh) -> Diagnosis:
    """The diagnosis of a refresh-history entry."""
    entry: dict[str, object] = {"status": refresh.status}
    if refresh.service_exception_json is not None:
        entry["serviceExceptionJson"] = refresh.service_exception_json
    return diagnose_refresh(entry)


def source_key(source: DatasetDatasource) -> tuple[str, str]:
    return (source.gateway_id or "").lower(), (source.datasource_id or "").lower()


def culprit(
    latest: Refresh | None, credential_bearing: Sequence[DatasetDatasource]
) -> DatasetDatasource | None:
    """The data source a failed refresh is about: the one its details name (when exactly one
    source matches), or the dataset's only credential-bearing source; None when unknown."""
    if latest is None:
        return None
    named = failed_source(latest.service_exception_json)
    if named is not None:
        matching = [
            s for s in credential_bearing if source_matches(named, s.datasource_type, s.connection_details)
        ]
        return matching[0] if len(matching) == 1 else None
    return credential_bearing[0] if len(credential_bearing) == 1 else None


@dataclass(frozen=True)
class DatasetPlan:
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


class RefreshEvidence:
    """Reads and records the evidence about a dataset's sources (thread-safe; one per refresher)."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        accounts: Accounts,
        lease_ttl: Callable[[], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self._accounts = accounts
        self._lease_ttl = lease_ttl
        self._clock = clock

    def learn_from_failure(
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
        key = None if culprit is None else source_key(culprit)
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

    def of_sources(
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
            key = source_key(source)
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
