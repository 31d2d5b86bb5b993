"""Decision 3: may dataset D be refreshed, or its schedule turned back on? (pure)

A refresh signs in to every data source of the dataset with its stored credential, and so does
every scheduled slot once the schedule is back on: each is a possible failed sign-in on the
accounts behind them (Power BI turns the schedule off at once on invalid credentials, and an
enhanced refresh's ``retryCount`` is 0: the product keeps it so). So a dataset whose last refresh
failed on credentials is refreshed only when, for **every** credential-bearing data source:

* it is bound, and its target holds Key Vault's current version (updated now, or before);
* that holding is **accepted and not contradicted**: the account has no verdict against the
  version, and no evidence against it (a rejection, an in-doubt answer, a refresh that failed on
  it: ``contradicted_at``) is younger than the target's acceptance (``applied_at``);
* and it is **known to be fixed since the failure**: the version was applied after the failed
  refresh started, or the failure names another data source (then this one was not the cause);
* a Fabric connection that references Key Vault holds no copy: Fabric reads the latest version
  at each refresh. Its ``applied_at`` is when Key Vault's current version became presentable
  (Key Vault's ``created`` plus the settle time), so it counts as fixed when the failed refresh
  started before that (it read an older version, or one its source did not know yet), or the
  failure names another data source; a refresh that failed *on* that version waits for a new one;
* an unbound source is acceptable only when the failure names another, bound data source.

A refresh is itself a sign-in with the stored credentials. Where this command has not just seen
the version accepted (a sweep, days after the update), the answer names the accounts whose
version the refresh would be the first to try again (``probe_accounts``): per account, one
dataset refreshes first, and the others follow only once that refresh completed, exactly like
presentations follow a probe.

Anything the evidence does not show is a reason to wait, never a licence: an unknown culprit, an
unknown applied time, a lost answer anywhere on the account.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from remediation.safety.actions import Action

__all__ = ["FailureEvidence", "RefreshDecision", "SourceEvidence", "may_refresh"]


@dataclass(frozen=True)
class SourceEvidence:
    """What is known of one credential-bearing data source of the dataset, after this run's heal.

    ``action`` is the run's outcome for its target (None: no binding covers it). ``applied_at``
    is when the target's current version was applied (accepted by the source's test; for a
    connection that references Key Vault, when Key Vault's current version became presentable);
    ``holds_current`` whether the ledger says it holds Key Vault's current version. The account
    fields come from the account's record for that version.
    """

    key: tuple[str, str]
    label: str
    action: Action | None
    holds_current: bool = False
    applied_at: float | None = None
    account_verdict: str | None = None
    contradicted_at: float | None = None
    account: str | None = None
    licensed_now: bool = False
    """Whether this command saw the version accepted for the account, at the source's locator,
    within the licence (:func:`remediation.safety.presenting.licensed`)."""

    @property
    def bound(self) -> bool:
        return self.action is not None


@dataclass(frozen=True)
class FailureEvidence:
    """The failed refresh: when it started (None: unknown) and which source it names (None: none,
    or several could be meant)."""

    started_at: float | None
    culprit: tuple[str, str] | None


@dataclass(frozen=True)
class RefreshDecision:
    """``allowed``, or the action to report (blocked, settling, unbound) and what waits."""

    allowed: bool
    action: Action | None = None
    waiting: tuple[str, ...] = ()
    unbound: bool = False
    probe_accounts: tuple[str, ...] = ()
    """Accounts whose version this command has not seen accepted: a refresh is a sign-in, so for
    each of them one dataset's refresh goes first, and the others follow only once it completed."""


def may_refresh(sources: Sequence[SourceEvidence], failure: FailureEvidence) -> RefreshDecision:
    """Whether the dataset may be refreshed and its schedule turned back on (module docstring)."""
    culprit = failure.culprit
    if not any(s.bound for s in sources):
        return RefreshDecision(False, Action.UNBOUND, unbound=True)
    unbound = [s for s in sources if not s.bound]
    if unbound and (culprit is None or culprit in {s.key for s in unbound}):
        return RefreshDecision(False, Action.UNBOUND, tuple(s.label for s in unbound), unbound=True)
    waiting: list[str] = []
    settling = 0
    for source in sources:
        if not source.bound:
            continue
        why = _waits(source, failure)
        if why is None:
            continue
        waiting.append(f"{source.label} ({why})")
        settling += source.action is Action.SETTLING
    if not waiting:
        probes = sorted(
            {s.account for s in sources if s.bound and s.account is not None and not s.licensed_now}
        )
        return RefreshDecision(True, probe_accounts=tuple(probes))
    action = Action.SETTLING if settling == len(waiting) else Action.BLOCKED
    return RefreshDecision(False, action, tuple(waiting))


def _waits(source: SourceEvidence, failure: FailureEvidence) -> str | None:
    """Why ``source`` keeps the dataset from refreshing, or None."""
    elsewhere = failure.culprit is not None and failure.culprit != source.key
    if source.action is Action.WOULD_UPDATE:
        return None  # a dry run: what would be, were the update accepted
    if source.action not in (Action.UPDATED, Action.CURRENT, Action.REFERENCED):
        return str(source.action)  # its action's value (a StrEnum): may_refresh passes bound sources only
    if not source.holds_current or source.applied_at is None:
        return "not known to hold the current version"
    if source.account_verdict is not None:
        return f"its account's verdict on this version is {source.account_verdict}"
    if source.contradicted_at is not None and source.contradicted_at >= source.applied_at:
        return "evidence against this version on its account is newer than its acceptance"
    if elsewhere or source.action is Action.UPDATED:
        return None
    if failure.started_at is not None and source.applied_at > failure.started_at:
        return None
    return "unchanged since the failure"
