"""Evidence about a dataset's sources: what a failed refresh proves, and what the refresh gate asks.

A failed refresh is evidence about the version each data source held *when it started*. It is
blamed on a data source only when the failure names it (the ``DataSourceKind``/``DataSourcePath``
details) or it is the dataset's only credential-bearing source (:func:`culprit`); a refused
sign-in there after the current version was applied proves the version wrong (recorded as
rejected, for the target and the account); a failure without a sign-in (no credentials, a lapsed
OAuth2 token) only makes the ledger forget what the source holds
(:meth:`RefreshEvidence.learn_from_failure`). Failures on an account that could not sign in at all
(locked, disabled) are read the same way (:data:`CURABLE`).

A Fabric connection that references Key Vault holds no copy: at each refresh Fabric reads Key
Vault's latest version. Its "applied" time is therefore when Key Vault's current version became
presentable (``created`` plus ``REMEDIATION_SETTLE_SECONDS``): a refused sign-in in a refresh
that started after that proves the version wrong, exactly as for a copy applied before the
refresh; one that started earlier speaks of an older version (or of one the source did not know
yet) and proves nothing about the current one.

Whether a dataset may be refreshed is the safety core's decision
(:func:`remediation.safety.refreshing.may_refresh`); :meth:`RefreshEvidence.of_sources` gathers
what it asks for: what the ledger knows of each credential-bearing source after the heal. Logs as
the refresher (``remediation.reconciler.refresher``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from remediation.clients.powerbi_models import DatasetDatasource, Refresh
from remediation.errors import RemediationError
from remediation.ledger import Ledger, Outcome
from remediation.ledger.references import References
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
    """The target key of a bound data source (every caller's are: credential-bearing ones)."""
    assert source.gateway_id is not None
    assert source.datasource_id is not None
    return source.gateway_id.lower(), source.datasource_id.lower()


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
    failure when a credential can cure it (else None), its credential-bearing sources and their
    bound targets (the source the failure names is :func:`culprit` of the last refresh and those)."""

    workspace_id: str
    dataset_id: str
    latest: Refresh | None
    diagnosis: Diagnosis | None
    credential_bearing: tuple[DatasetDatasource, ...]
    resolved: tuple[Resolved, ...]


class RefreshEvidence:
    """Reads and records the evidence about a dataset's sources (thread-safe; one per refresher)."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        accounts: Accounts,
        lease_ttl: Callable[[], float],
        references: References,
        settle_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self._accounts = accounts
        self._lease_ttl = lease_ttl
        self._references = references
        self._settle_seconds = settle_seconds
        self._clock = clock

    def _presentable_since(self, item: Resolved, run: Run) -> tuple[str, float] | None:
        """For a connection that references Key Vault: Key Vault's current version of its secret
        and when it became presentable (``created`` + the settle time); None when unknown."""
        try:
            secret = self._accounts.secret(item.binding.secret, run)
        except RemediationError:
            return None
        if secret.created_on is None:
            return None
        return secret.version, secret.created_on.timestamp() + max(0.0, self._settle_seconds)

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
                if self._references.referenced(item.target):
                    continue  # it holds no copy to forget: Fabric reads Key Vault at each refresh
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
            if self._references.referenced(item.target):
                presentable = self._presentable_since(item, run)
                if presentable is None or presentable[1] > started:
                    return  # it read an older version, or one its source did not know yet
                version = presentable[0]
            else:
                state = self.ledger.target_state(item.target.gateway_id, item.target.datasource_id)
                if state.applied_at is None or state.applied_at > started or state.applied_version is None:
                    return  # the failure speaks of what it held before: healing it is the cure
                try:
                    secret = self._accounts.secret(item.binding.secret, run)
                except RemediationError:
                    return
                if not state.holds(item.binding.secret, secret.version):
                    return  # it holds an older version: healing it is the cure
                version = secret.version
            account = self._accounts.account_of(item, run)
            what = (
                f"a refresh reported the account unusable ({diagnosis.message})"
                if diagnosis.category is Category.ACCOUNT
                else "a refresh failed for credentials on this data source"
            )
            refresh = latest.request_id or "without id"
            reason = f"{what} after version {version} was applied (refresh {refresh})"
            self.ledger.record_presentation(
                account,
                item.binding.secret,
                version,
                owner=run.owner,
                locator=item.where,
                verdict="rejected",
                reason=reason,
                now=self._clock(),
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
                    self.ledger.record_rejected(lease, item.binding.secret, version, self._clock())
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
        pairs = zip(resolved, outcomes, strict=True)  # pragma: no mutate (equivalent: one outcome per target)
        healed = {item.target.key: (item, outcome) for item, outcome in pairs}
        evidence: list[SourceEvidence] = []
        for source in credential_bearing:
            key = source_key(source)
            unbound = SourceEvidence(key, f"{key[0]}/{key[1]}", None)
            found = healed.get(key)
            if found is None:
                evidence.append(unbound)
                continue
            item, outcome = found
            action = Action(outcome.action or Action.FAILED.value)
            if action not in (Action.UPDATED, Action.CURRENT, Action.REFERENCED):
                evidence.append(replace(unbound, action=action))
                continue
            try:
                version = self._accounts.secret(item.binding.secret, run).version
                account = self._accounts.account_of(item, run)
                av = self.ledger.account_version(account, item.binding.secret, version)
                if action is Action.REFERENCED:  # no copy: it reads Key Vault's latest version
                    presentable = self._presentable_since(item, run)
                    holds = presentable is not None
                    applied_at = None if presentable is None else presentable[1]
                else:
                    state = self.ledger.target_state(*key)
                    holds, applied_at = state.holds(item.binding.secret, version), state.applied_at
            except RemediationError as exc:
                logger.warning("dataset source %s: cannot read its evidence: %s", unbound.label, exc)
                evidence.append(replace(unbound, action=Action.FAILED))
                continue
            where = self._accounts.where_of(item, run)
            evidence.append(
                replace(
                    unbound,
                    action=action,
                    holds_current=holds,
                    applied_at=applied_at,
                    account_verdict=av.verdict,
                    contradicted_at=av.contradicted_at,
                    # The account key is lower case already: one case for the secret and its version.
                    account=f"{account}|{item.binding.secret}|{version}".lower(),
                    licensed_now=licensed(av, where, run.correlation_id, self._clock()),
                )
            )
        return evidence
