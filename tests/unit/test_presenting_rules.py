"""Decision 2 of the safety core, at its edges: may version V be presented to target T of account
A now? (:mod:`remediation.safety.presenting`)

Each presentation of a version nobody has accepted is a possible failed sign-in on the account,
so these pin the boundaries a slip would move: when a rejection disproves what a target holds,
when an acceptance stops licensing followers, who may probe, what a verdict or an operator's
"present again" writes, and what the outcome tells the operator.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from remediation.ledger import AccountVersion, Claim, Rejection, TargetState
from remediation.reconciler.report import Action
from remediation.safety.presenting import (
    FANOUT_LICENCE_SECONDS,
    MAX_GRANTS_KEPT,
    MAX_LICENCES_KEPT,
    ClaimStep,
    Decision,
    account_decision,
    claim_step,
    decide,
    grant_step,
    licensed,
    release_step,
    verdict_step,
)

NOW = 1_800_000_000.0
V1, V2 = "a" * 32, "b" * 32
HERE, THERE = "sql01", "sql02"
RUN, OTHER = "run-1", "run-2"


def target(**kw: object) -> TargetState:
    return TargetState(gateway_id="g", datasource_id="d", **kw)  # type: ignore[arg-type]


def holding(at: float = NOW - 60, *rejections: Rejection) -> TargetState:
    return target(applied_secret="pw", applied_version=V2, applied_at=at, rejections=rejections)


def decision(state: TargetState, version: str = V2, *, present_again: bool = False) -> Decision:
    return decide(
        state, "pw", version, now=NOW, max_attempts=3, window_seconds=3600, present_again=present_again
    )


def record(**kw: object) -> AccountVersion:
    fields: dict[str, object] = {"account": "user:svc", "secret": "sql-pw", "version": V2} | kw
    return AccountVersion(**fields)  # type: ignore[arg-type]


# -- decide ---------------------------------------------------------------------------------------
def test_a_target_holding_the_version_is_current_and_says_so() -> None:
    assert decision(holding()) == Decision(Action.CURRENT, f"holds version {V2} since the last update")


def test_a_rejection_recorded_the_instant_the_version_was_applied_disproves_it() -> None:
    """A refresh that failed on the version is read at once: same clock reading, still evidence."""
    assert decision(holding(NOW - 60, Rejection("pw", V2, NOW - 60))).action is Action.BLOCKED
    assert decision(holding(NOW - 60, Rejection("pw", V2, NOW - 61))).action is Action.CURRENT


def test_a_rejection_of_another_version_does_not_disprove_what_the_target_holds() -> None:
    assert decision(holding(NOW - 60, Rejection("pw", V1, NOW))).action is Action.CURRENT


def test_the_version_is_compared_whatever_its_case_and_spaces() -> None:
    disproved = holding(NOW - 60, Rejection("pw", V2, NOW))
    assert decision(disproved, f" {V2.upper()} ").action is Action.BLOCKED


def test_a_rejected_version_is_blocked_and_the_operator_told_what_to_do() -> None:
    rejected = target(applied_version=V1, rejections=(Rejection("pw", V2, NOW - 86400),))
    assert decision(rejected) == Decision(
        Action.BLOCKED,
        f"the source rejected version {V2} before; it is not presented again. Put the right value in "
        "Key Vault as a new version of 'pw'",
    )


def test_present_again_lets_a_rejected_version_be_sent_but_not_one_already_held() -> None:
    rejected = target(applied_version=V1, rejections=(Rejection("pw", V2, NOW - 86400),))
    assert decision(rejected, present_again=True).action is Action.UPDATED
    assert decision(holding(), present_again=True).action is Action.CURRENT


@pytest.mark.parametrize(("attempts", "action"), [(2, Action.UPDATED), (3, Action.LIMITED)])
def test_the_attempt_limit_counts_the_window_up_to_its_first_second(attempts: int, action: Action) -> None:
    times = tuple([NOW - 3600.0] + [NOW - 10.0] * (attempts - 1)) + (NOW - 3601.0,)
    assert decision(target(attempts=times)).action is action


def test_a_limited_target_says_how_many_updates_in_what_window() -> None:
    busy = target(attempts=(NOW - 30, NOW - 20, NOW - 10, NOW - 5))
    assert decision(busy) == Decision(
        Action.LIMITED,
        "4 credential updates in the last 3600 s (limit 3); the next run after the window tries again",
    )


def test_an_update_says_what_the_target_held() -> None:
    assert decision(target(applied_version=V1)) == Decision(Action.UPDATED, f"holds {V1}, not {V2}")
    assert decision(target()) == Decision(Action.UPDATED, f"holds an unknown version, not {V2}")


# -- account_decision -----------------------------------------------------------------------------
def test_an_account_without_a_verdict_goes_on() -> None:
    assert account_decision(record(), present_again=False) is None


@pytest.mark.parametrize("verdict", ["rejected", "in-doubt"])
def test_an_operators_request_lifts_the_accounts_verdict(verdict: str) -> None:
    assert account_decision(record(verdict=verdict), present_again=True) is None


def test_a_rejection_on_the_account_blocks_every_target_and_says_why() -> None:
    rejected = record(verdict="rejected", reason="Login failed", account="user:contoso:svc")
    assert account_decision(rejected, present_again=False) == Decision(
        Action.BLOCKED,
        f"account contoso:svc rejected version {V2} (Login failed); it is not presented to any of its "
        "data sources again. Put the right value in Key Vault as a new version of 'sql-pw', or, once the "
        "source has it, heal with --present-again",
    )
    unexplained = account_decision(record(verdict="rejected"), present_again=False)
    assert unexplained is not None and "(no reason recorded)" in unexplained.reason


def test_a_lost_verdict_on_the_account_is_in_doubt_and_says_what_to_check() -> None:
    doubted = record(verdict="in-doubt", reason="the answer was lost")
    assert account_decision(doubted, present_again=False) == Decision(
        Action.IN_DOUBT,
        f"version {V2} was presented to account svc and its verdict never came back (the answer was "
        "lost); it is not presented again automatically, since that could be a second failed sign-in. "
        "Check the data source, then heal with --present-again (or put a new version in Key Vault)",
    )
    unexplained = account_decision(record(verdict="in-doubt"), present_again=False)
    assert unexplained is not None and "(no reason recorded)" in unexplained.reason


def test_an_account_recorded_without_a_kind_is_named_whole() -> None:
    """The ledger treats an account as opaque text: one without ``user:``/``secret:`` is still named."""
    rejected = record(verdict="rejected", reason="Login failed", account="svc_pbi")
    decided = account_decision(rejected, present_again=False)
    assert decided is not None and decided.reason.startswith(f"account svc_pbi rejected version {V2} ")


# -- licensed -------------------------------------------------------------------------------------
def accepted(at: float, request: str = "req", **kw: object) -> AccountVersion:
    return record(accepted=(HERE,), licences=((HERE, at, request),), **kw)


def test_an_acceptance_licenses_the_same_request_at_the_same_locator_only() -> None:
    fresh = accepted(NOW - 10)
    assert licensed(fresh, HERE, "req", NOW)
    assert not licensed(fresh, THERE, "req", NOW)
    assert not licensed(fresh, HERE, "another-request", NOW)


def test_a_licence_expires_after_the_fanout_window() -> None:
    assert licensed(accepted(NOW - FANOUT_LICENCE_SECONDS + 0.5), HERE, "req", NOW)
    assert not licensed(accepted(NOW - FANOUT_LICENCE_SECONDS), HERE, "req", NOW)


def test_evidence_against_the_version_no_older_than_the_acceptance_revokes_it() -> None:
    assert not licensed(accepted(NOW - 10, contradicted_at=NOW - 10), HERE, "req", NOW)
    assert licensed(accepted(NOW - 10, contradicted_at=NOW - 11), HERE, "req", NOW)


def test_a_verdict_on_the_account_revokes_every_licence() -> None:
    assert not licensed(accepted(NOW - 10, verdict="in-doubt"), HERE, "req", NOW)


# -- claim_step -----------------------------------------------------------------------------------
def claim(rec: AccountVersion, *, owner: str = RUN, target_id: str = "g/d1", at: float = NOW) -> ClaimStep:
    return claim_step(rec, locator=HERE, target=target_id, owner=owner, request="req", now=at, ttl=30)


@pytest.mark.parametrize(("verdict", "answer"), [("rejected", Claim.REJECTED), ("in-doubt", Claim.IN_DOUBT)])
def test_a_verdict_refuses_every_claim_without_a_write(verdict: str, answer: Claim) -> None:
    assert claim(record(verdict=verdict)) == ClaimStep(answer, None)


def test_a_licensed_follower_presents_without_a_write() -> None:
    assert claim(accepted(NOW - 10)) == ClaimStep(Claim.ACCEPTED, None)


def test_the_first_claim_gets_the_probe_and_counts_a_presentation() -> None:
    step = claim(record(presentations=2))
    assert step == ClaimStep(
        Claim.GRANTED,
        record(
            presentations=3, probe_owner=RUN, probe_locator=HERE, probe_target="g/d1", probe_expires=NOW + 30
        ),
    )


def test_the_probes_owner_claiming_its_target_again_renews_it_without_counting() -> None:
    probing = claim(record()).record
    assert probing is not None
    again = claim(probing, at=NOW + 20)
    assert again == ClaimStep(Claim.GRANTED, replace(probing, probe_expires=NOW + 50))


def test_one_presentation_at_a_time_per_account() -> None:
    probing = claim(record()).record
    assert probing is not None
    assert claim(probing, owner=OTHER, at=NOW + 29.5) == ClaimStep(Claim.BUSY, None)
    assert claim(probing, target_id="g/d2", at=NOW + 10) == ClaimStep(Claim.BUSY, None)
    assert claim(probing, target_id="g/d2", at=NOW + 60) == ClaimStep(Claim.BUSY, None)  # expired, own


def test_a_probe_that_expired_before_its_verdict_makes_the_version_in_doubt() -> None:
    probing = claim(record(contradicted_at=NOW - 100)).record
    assert probing is not None
    step = claim(probing, owner=OTHER, at=NOW + 30)
    assert step.claim is Claim.IN_DOUBT and step.stale == (RUN, "g/d1")
    assert step.record == record(
        presentations=1,
        verdict="in-doubt",
        reason=f"the run {RUN} presenting it to g/d1 stopped before its verdict was recorded",
        verdict_at=NOW + 30,
        contradicted_at=NOW + 30,
    )


def test_a_stale_probe_keeps_evidence_recorded_later_by_another_clock() -> None:
    ahead = record(probe_owner=RUN, probe_target="g/d1", probe_expires=NOW - 1, contradicted_at=NOW + 100)
    step = claim(ahead, owner=OTHER)
    assert step.record is not None and step.record.contradicted_at == NOW + 100


def test_a_stale_probe_without_a_target_is_named_as_such() -> None:
    stale = record(probe_owner=RUN, probe_expires=NOW - 1)
    step = claim(stale, owner=OTHER)
    assert step.stale == (RUN, "an unknown target")
    assert step.record is not None and step.record.contradicted_at == NOW


# -- verdict_step ---------------------------------------------------------------------------------
def verdict(
    rec: AccountVersion,
    what: str,
    *,
    owner: str = RUN,
    sent_at: float = NOW - 1,
    request: str = "req",
    reason: str | None = "why",
) -> AccountVersion | None:
    return verdict_step(
        rec,
        verdict=what,  # type: ignore[arg-type]
        owner=owner,
        locator=HERE,
        reason=reason,
        sent_at=sent_at,
        now=NOW,
        request=request,
    )


def test_an_acceptance_clears_the_owners_probe_and_licenses_its_request_from_when_it_was_sent() -> None:
    probing = record(probe_owner=RUN, probe_locator=HERE, probe_target="g/d1", probe_expires=NOW + 30)
    after = verdict(probing, "accepted", request=" req ")
    assert after == record(accepted=(HERE,), licences=((HERE, NOW - 1, "req"),))


def test_another_owners_verdict_leaves_the_probe_alone() -> None:
    probing = record(probe_owner=OTHER, probe_target="g/d1", probe_expires=NOW + 30)
    after = verdict(probing, "accepted")
    assert after is not None and (after.probe_owner, after.probe_expires) == (OTHER, NOW + 30)


def test_a_fresh_licence_is_not_rewritten_by_every_follower() -> None:
    licensed_now = accepted(NOW - 10)
    assert verdict(licensed_now, "accepted", sent_at=NOW - 5) is None  # nothing to write
    half = NOW - 10 + FANOUT_LICENCE_SECONDS / 2
    renewed = verdict(licensed_now, "accepted", sent_at=half)
    assert renewed is not None and renewed.licence(HERE, "req") == half
    assert verdict(licensed_now, "accepted", sent_at=half - 0.5) is None


def test_a_licence_older_than_the_evidence_against_it_is_renewed_by_a_later_acceptance() -> None:
    contradicted = accepted(NOW - 10, contradicted_at=NOW - 10)
    renewed = verdict(contradicted, "accepted", sent_at=NOW - 5)
    assert renewed is not None and renewed.licence(HERE, "req") == NOW - 5
    assert verdict(contradicted, "accepted", sent_at=NOW - 20) is None  # never moved back in time


def test_an_acceptance_no_newer_than_a_contradicted_licence_writes_nothing() -> None:
    rec = record(
        accepted=(HERE,),
        licences=((HERE, NOW - 10, "req"), (THERE, NOW - 5, "req")),
        contradicted_at=NOW - 10,
    )
    assert verdict(rec, "accepted", sent_at=NOW - 10) is None


def test_an_acceptance_sent_after_an_in_doubt_verdict_clears_it() -> None:
    doubted = record(verdict="in-doubt", reason="lost", verdict_at=NOW - 5)
    cleared = verdict(doubted, "accepted", sent_at=NOW - 5, reason="accepted at sql01")
    assert cleared is not None
    assert (cleared.verdict, cleared.reason, cleared.verdict_at) == (None, "accepted at sql01", NOW)
    kept = verdict(doubted, "accepted", sent_at=NOW - 6)
    assert kept is not None and kept.verdict == "in-doubt"


def test_an_acceptance_never_clears_a_rejection() -> None:
    rejected = record(verdict="rejected", verdict_at=NOW - 100)
    after = verdict(rejected, "accepted", sent_at=NOW - 1)
    assert after is not None and after.verdict == "rejected"


@pytest.mark.parametrize("what", ["rejected", "in-doubt"])
def test_a_rejection_or_a_lost_answer_is_the_verdict_and_evidence_against_the_version(what: str) -> None:
    after = verdict(record(contradicted_at=NOW - 50, verdict="in-doubt"), what)
    assert after == record(verdict=what, reason="why", verdict_at=NOW, contradicted_at=NOW)
    later = verdict(record(contradicted_at=NOW + 50), what)
    assert later is not None and later.contradicted_at == NOW + 50


def test_a_lost_answer_after_a_rejection_keeps_the_rejection() -> None:
    rejected = record(verdict="rejected", reason="Login failed", verdict_at=NOW - 100)
    after = verdict(rejected, "in-doubt")
    assert after == replace(rejected, contradicted_at=NOW)


def test_an_unknown_verdict_is_refused() -> None:
    with pytest.raises(ValueError, match="^verdict must be .accepted., .rejected. or .in-doubt.$"):
        verdict(record(), "maybe")


# -- release_step and grant_step ------------------------------------------------------------------
def test_only_the_owner_releases_its_probe() -> None:
    probing = record(probe_owner=RUN, probe_locator=HERE, probe_target="g/d1", probe_expires=NOW + 30)
    assert release_step(probing, owner=RUN) == record()
    assert release_step(probing, owner=OTHER) is None


def test_an_operators_request_lifts_a_verdict_once() -> None:
    rejected = record(
        verdict="rejected", probe_owner=RUN, probe_expires=NOW + 30, overrides=1, grants=("old",)
    )
    granted, after = grant_step(rejected, request=" req-7 ", reason="operator", now=NOW)
    assert granted
    assert after == record(
        reason="operator", verdict_at=NOW, overrides=2, grants=("old", "req-7"), contradicted_at=NOW
    )
    assert grant_step(after, request="req-7", reason="operator", now=NOW + 1) == (False, None)


def test_a_grant_is_evidence_no_earlier_than_what_is_known() -> None:
    _, after = grant_step(record(contradicted_at=NOW + 5), request="r", reason=None, now=NOW)
    assert after is not None and after.contradicted_at == NOW + 5


@pytest.mark.parametrize("request_id", ["", "   "])
def test_a_grant_needs_a_request(request_id: str) -> None:
    with pytest.raises(ValueError, match="^request must not be empty: grants are kept per operator request$"):
        grant_step(record(), request=request_id, reason=None, now=NOW)


def test_the_newest_grants_and_licences_are_kept() -> None:
    many = record(grants=tuple(f"g{i}" for i in range(MAX_GRANTS_KEPT)))
    _, after = grant_step(many, request="newest", reason=None, now=NOW)
    assert after is not None and len(after.grants) == MAX_GRANTS_KEPT
    assert after.grants[0] == "g1" and after.grants[-1] == "newest"

    full = record(licences=tuple((f"h{i}", NOW - 100, "req") for i in range(MAX_LICENCES_KEPT)))
    added = verdict(full, "accepted")
    assert added is not None and len(added.licences) == MAX_LICENCES_KEPT
    assert added.licences[0][0] == "h1" and added.licences[-1] == (HERE, NOW - 1, "req")


def test_a_new_licence_replaces_the_old_one_for_its_locator_and_request_only() -> None:
    rec = record(licences=((HERE, NOW - 800, "req"), (HERE, NOW - 800, "other"), (THERE, NOW - 800, "req")))
    after = verdict(rec, "accepted")
    assert after is not None
    assert sorted(after.licences) == sorted(
        [(HERE, NOW - 800, "other"), (THERE, NOW - 800, "req"), (HERE, NOW - 1, "req")]
    )
