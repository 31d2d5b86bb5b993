"""Decision 3 of the safety core: may a dataset whose refresh failed on credentials be refreshed,
and its schedule turned back on? (:func:`remediation.safety.refreshing.may_refresh`)

A refresh signs in to every data source of the dataset, so each "allowed" here is a sign-in on
every account behind it. These pin every rule and every boundary of the gate: what makes it wait
(and what the outcome then says), and the only evidence that opens it.
"""

from __future__ import annotations

import pytest

from remediation.reconciler.report import Action
from remediation.safety.refreshing import FailureEvidence, RefreshDecision, SourceEvidence, may_refresh

A, B = ("gw", "ds-a"), ("gw", "ds-b")
STARTED = 1_000.0  # when the failed refresh started
AFTER, BEFORE = STARTED + 1, STARTED - 1


def fixed(key: tuple[str, str] = A, action: Action = Action.UPDATED, **changes: object) -> SourceEvidence:
    """A source holding the current version, accepted after the failure, nothing against it."""
    fields: dict[str, object] = {"holds_current": True, "applied_at": AFTER} | changes
    return SourceEvidence(key, f"{key[0]}/{key[1]}", action, **fields)  # type: ignore[arg-type]


def failure(culprit: tuple[str, str] | None = A, started_at: float | None = STARTED) -> FailureEvidence:
    return FailureEvidence(started_at, culprit)


def test_a_source_updated_now_lets_the_dataset_refresh() -> None:
    assert may_refresh([fixed()], failure()) == RefreshDecision(True)


def test_no_bound_source_at_all_is_unbound_and_never_refreshed() -> None:
    decision = may_refresh([SourceEvidence(A, "gw/ds-a", None)], failure())
    assert decision == RefreshDecision(False, Action.UNBOUND, (), unbound=True)


@pytest.mark.parametrize("culprit", [None, B], ids=["culprit-unknown", "culprit-is-the-unbound-one"])
def test_an_unbound_source_that_may_be_the_culprit_keeps_the_dataset_from_refreshing(
    culprit: tuple[str, str] | None,
) -> None:
    sources = [fixed(A), SourceEvidence(B, "gw/ds-b", None)]
    decision = may_refresh(sources, failure(culprit))
    assert decision == RefreshDecision(False, Action.UNBOUND, ("gw/ds-b",), unbound=True)


def test_an_unbound_source_the_failure_does_not_name_does_not_hold_the_dataset_back() -> None:
    sources = [fixed(A), SourceEvidence(B, "gw/ds-b", None)]
    assert may_refresh(sources, failure(A)) == RefreshDecision(True)


def test_an_unbound_source_listed_first_does_not_hide_a_bound_one_that_waits() -> None:
    sources = [SourceEvidence(B, "gw/ds-b", None), fixed(A, account_verdict="in-doubt")]
    decision = may_refresh(sources, failure(A))
    assert decision == RefreshDecision(
        False, Action.BLOCKED, ("gw/ds-a (its account's verdict on this version is in-doubt)",)
    )


def test_a_dry_run_would_refresh_what_the_update_would_fix() -> None:
    source = SourceEvidence(A, "gw/ds-a", Action.WOULD_UPDATE)
    assert may_refresh([source], failure(A)).allowed


@pytest.mark.parametrize("culprit", [A, None], ids=["the-failure-is-its-own", "culprit-unknown"])
def test_a_key_vault_reference_waits_when_its_version_predates_a_failure_that_may_be_its_own(
    culprit: tuple[str, str] | None,
) -> None:
    """Fabric reads Key Vault's latest version itself: a referenced connection holds a version
    from Key Vault's ``created`` plus the settle time (the refresher's evidence). A version settled
    before the failure started is not known to fix it."""
    referenced = SourceEvidence(A, "gw/ds-a", Action.REFERENCED, holds_current=True, applied_at=STARTED - 10)
    decision = may_refresh([referenced, fixed(B)], failure(culprit))
    assert decision == RefreshDecision(False, Action.BLOCKED, ("gw/ds-a (unchanged since the failure)",))


def test_a_key_vault_reference_whose_version_is_unknown_waits_whatever_the_failure_names() -> None:
    referenced = SourceEvidence(A, "gw/ds-a", Action.REFERENCED)
    decision = may_refresh([referenced, fixed(B)], failure(B))
    assert decision == RefreshDecision(
        False, Action.BLOCKED, ("gw/ds-a (not known to hold the current version)",)
    )


def test_a_key_vault_reference_does_not_wait_when_the_failure_names_another_source() -> None:
    referenced = SourceEvidence(A, "gw/ds-a", Action.REFERENCED, holds_current=True, applied_at=STARTED - 10)
    assert may_refresh([referenced, fixed(B)], failure(B)).allowed


def test_a_key_vault_reference_settled_after_the_failure_started_is_known_to_fix_it() -> None:
    referenced = SourceEvidence(A, "gw/ds-a", Action.REFERENCED, holds_current=True, applied_at=STARTED + 10)
    assert may_refresh([referenced, fixed(B)], failure(A)).allowed


@pytest.mark.parametrize(
    "action", [Action.BLOCKED, Action.REJECTED, Action.IN_DOUBT, Action.FAILED, Action.BUSY, Action.LIMITED]
)
def test_a_source_that_was_not_healed_waits_under_its_own_outcome(action: Action) -> None:
    decision = may_refresh([SourceEvidence(A, "gw/ds-a", action)], failure())
    assert decision == RefreshDecision(False, Action.BLOCKED, (f"gw/ds-a ({action.value})",))


def test_only_settling_sources_make_the_dataset_settle() -> None:
    settling = [SourceEvidence(k, f"{k[0]}/{k[1]}", Action.SETTLING) for k in (A, B)]
    decision = may_refresh(settling, failure(None))
    assert decision == RefreshDecision(False, Action.SETTLING, ("gw/ds-a (settling)", "gw/ds-b (settling)"))


def test_settling_and_blocked_sources_together_are_blocked() -> None:
    sources = [SourceEvidence(A, "gw/ds-a", Action.SETTLING), SourceEvidence(B, "gw/ds-b", Action.BLOCKED)]
    decision = may_refresh(sources, failure(None))
    assert decision == RefreshDecision(False, Action.BLOCKED, ("gw/ds-a (settling)", "gw/ds-b (blocked)"))


@pytest.mark.parametrize(
    "changes",
    [{"holds_current": False}, {"applied_at": None}],
    ids=["not-holding-the-current-version", "applied-time-unknown"],
)
def test_a_source_not_known_to_hold_the_current_version_waits(changes: dict[str, object]) -> None:
    decision = may_refresh([fixed(**changes)], failure())
    assert decision == RefreshDecision(
        False, Action.BLOCKED, ("gw/ds-a (not known to hold the current version)",)
    )


@pytest.mark.parametrize("verdict", ["rejected", "in-doubt"])
def test_a_verdict_on_the_account_against_the_version_waits(verdict: str) -> None:
    decision = may_refresh([fixed(account_verdict=verdict)], failure(B))
    assert decision == RefreshDecision(
        False, Action.BLOCKED, (f"gw/ds-a (its account's verdict on this version is {verdict})",)
    )


@pytest.mark.parametrize("at", [AFTER, AFTER + 5], ids=["same-time-as-the-acceptance", "newer"])
def test_evidence_against_the_version_no_older_than_the_acceptance_waits(at: float) -> None:
    decision = may_refresh([fixed(contradicted_at=at)], failure(B))
    assert decision == RefreshDecision(
        False,
        Action.BLOCKED,
        ("gw/ds-a (evidence against this version on its account is newer than its acceptance)",),
    )


def test_evidence_older_than_the_acceptance_does_not_wait() -> None:
    assert may_refresh([fixed(contradicted_at=AFTER - 0.5)], failure(B)).allowed


UNCHANGED = RefreshDecision(False, Action.BLOCKED, ("gw/ds-a (unchanged since the failure)",))


@pytest.mark.parametrize(
    ("applied_at", "started_at"),
    [(BEFORE, STARTED), (STARTED, STARTED), (AFTER, None)],
    ids=["applied-before-the-failure", "applied-as-it-started", "start-unknown"],
)
def test_a_source_already_holding_the_version_the_failure_may_be_about_waits(
    applied_at: float, started_at: float | None
) -> None:
    """CURRENT: nothing was sent now. The failed refresh may have signed in with this very
    version: refreshing again would only repeat the failed sign-in."""
    source = fixed(action=Action.CURRENT, applied_at=applied_at)
    assert may_refresh([source], failure(A, started_at)) == UNCHANGED


def test_a_source_already_holding_a_version_applied_after_the_failure_started_does_not_wait() -> None:
    source = fixed(action=Action.CURRENT, applied_at=AFTER)
    assert may_refresh([source], failure(A, STARTED)) == RefreshDecision(True)


def test_a_source_the_failure_does_not_name_does_not_wait_although_unchanged() -> None:
    source = fixed(action=Action.CURRENT, applied_at=BEFORE)
    assert may_refresh([source, fixed(B)], failure(B)) == RefreshDecision(True)


def test_with_an_unknown_culprit_every_unchanged_source_waits() -> None:
    sources = [fixed(A, Action.CURRENT, applied_at=BEFORE), fixed(B)]
    assert may_refresh(sources, failure(None)) == UNCHANGED


def test_one_waiting_source_among_fixed_ones_keeps_the_dataset_from_refreshing() -> None:
    sources = [fixed(A), fixed(B, account_verdict="in-doubt")]
    decision = may_refresh(sources, failure(None))
    assert not decision.allowed
    assert decision.waiting == ("gw/ds-b (its account's verdict on this version is in-doubt)",)
