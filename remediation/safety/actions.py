"""What can happen to a target or a dataset: the vocabulary of the safety core's decisions and of
every outcome the product reports (pure)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["HOLDS_CURRENT", "PROBLEMS", "Action"]


class Action(StrEnum):
    """What happened to a target or a dataset. The first group changes nothing."""

    # targets
    UPDATED = "updated"  # the PATCH was accepted: the target holds the version now
    CURRENT = "already-current"  # the ledger says the target holds the version: nothing sent
    REJECTED = "rejected"  # the source refused the version just now; it will not be sent again
    BLOCKED = "blocked"  # refused before (here or elsewhere on the account); waiting for a new version
    LIMITED = "attempt-limit"  # too many updates in the window; waiting for the window to pass
    BUSY = "busy"  # another writer holds the target's lease, or presents the version first
    FAILED = "failed"  # an error that is not the source's verdict (network, permission, ...)
    IN_DOUBT = "in-doubt"  # presented, but the verdict never came back: not presented again
    SETTLING = "settling"  # the version is younger than REMEDIATION_SETTLE_SECONDS: later
    WOULD_UPDATE = "would-update"  # dry-run
    REFERENCED = "key-vault-reference"  # a Fabric connection that reads the secret itself: no copy sent
    ADOPTED = "adopted"  # `adopt` moved a Fabric connection onto a Key Vault reference (Fabric tested it)
    # datasets
    REFRESHED = "refreshed"  # a refresh was started (and followed: see refresh_state)
    WOULD_REFRESH = "would-refresh"  # dry-run
    REFRESH_RUNNING = "refresh-running"  # a refresh already runs: no second one
    REFRESH_BUDGET = "refresh-budget"  # the daily refresh budget for this dataset is used up
    HEALTHY = "healthy"  # the last refresh did not fail
    NOT_CREDENTIAL = "not-credential"  # it failed for a reason a credential cannot cure
    UNBOUND = "unbound"  # a data source no binding covers
    DEFERRED = "deferred"  # the time budget ran out before this


# Actions after which a target holds the current version (exit code 0).
HOLDS_CURRENT = frozenset({Action.UPDATED, Action.CURRENT, Action.REFERENCED, Action.ADOPTED})
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
