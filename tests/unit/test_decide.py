"""The healer's pure decision per target, and what the exit code tells an operator."""

from __future__ import annotations

import pytest

from remediation.ledger import Outcome, Rejection, TargetState
from remediation.reconciler.healer import Action, Report, decide

NOW = 1_800_000_000.0
V1, V2 = "a" * 32, "b" * 32


def state(**kw: object) -> TargetState:
    return TargetState(gateway_id="g", datasource_id="d", **kw)  # type: ignore[arg-type]


def verdict(s: TargetState, version: str = V2) -> Action:
    return decide(s, "pw", version, now=NOW, max_attempts=3, window_seconds=3600).action


def test_a_target_holding_the_version_is_not_patched_again() -> None:
    assert verdict(state(applied_secret="pw", applied_version=V2)) is Action.CURRENT


def test_a_version_the_source_rejected_stays_blocked_however_long_ago() -> None:
    old = state(applied_version=V1, rejections=(Rejection("pw", V2, NOW - 30 * 86400),))
    assert verdict(old) is Action.BLOCKED
    assert verdict(old, version="c" * 32) is Action.UPDATED  # only a new version is tried


def test_attempts_are_bounded_per_window() -> None:
    busy = state(attempts=(NOW - 10, NOW - 20, NOW - 30))
    assert verdict(busy) is Action.LIMITED
    assert verdict(state(attempts=(NOW - 7200, NOW - 7300, NOW - 10))) is Action.UPDATED


def test_holding_the_version_wins_over_an_old_rejection_of_it() -> None:
    s = state(applied_secret="pw", applied_version=V2, rejections=(Rejection("pw", V2, NOW - 5),))
    assert verdict(s) is Action.CURRENT


@pytest.mark.parametrize(
    ("action", "code"),
    [
        (Action.UPDATED, 0),
        (Action.CURRENT, 0),
        (Action.WOULD_UPDATE, 0),
        (Action.REFRESHED, 0),
        (Action.NOT_CREDENTIAL, 0),
        (Action.REJECTED, 1),
        (Action.BLOCKED, 1),
        (Action.LIMITED, 1),
        (Action.BUSY, 1),
        (Action.FAILED, 1),
        (Action.UNBOUND, 1),
        (Action.DEFERRED, 1),
    ],
)
def test_exit_code_says_whether_every_target_holds_the_current_secret(action: Action, code: int) -> None:
    report = Report(
        outcomes=[Outcome(time=NOW, action=Action.UPDATED.value), Outcome(time=NOW, action=action.value)]
    )
    assert report.exit_code == code


def test_a_version_rejected_after_it_was_applied_is_blocked_although_the_target_holds_it() -> None:
    """A refresh failed on the version after it was applied: the source changed behind Key Vault's
    back, and presenting it (or refreshing on it) again would be another failed sign-in."""
    s = state(
        applied_secret="pw",
        applied_version=V2,
        applied_at=NOW - 60,
        rejections=(Rejection("pw", V2, NOW - 5),),
    )
    assert verdict(s) is Action.BLOCKED
