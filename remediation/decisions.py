"""The healer's decisions for one target, from the ledger's state alone (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass

from remediation.ledger import AccountVersion, TargetState
from remediation.report import Action

__all__ = ["Decision", "account_decision", "decide"]


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def decide(
    state: TargetState,
    secret: str,
    version: str,
    *,
    now: float,
    max_attempts: int,
    window_seconds: float,
    present_again: bool = False,
) -> Decision:
    """What to do for one target, from its ledger state alone (pure).

    Order matters: a target that already holds the version is fine, unless the source rejected
    that version *since* it was applied (a refresh failed on it: the password changed behind Key
    Vault's back); a version the source rejected stays blocked however long ago that was (unless
    an operator asks to present it once more); only then do the attempt bound and the update.
    """
    wanted = version.strip().lower()
    disproved = any(
        r.version == wanted and state.applied_at is not None and r.at >= state.applied_at
        for r in state.rejections
    )
    if state.holds(secret, version) and not disproved:
        return Decision(Action.CURRENT, f"holds version {version} since the last update")
    if state.is_rejected(version) and not present_again:
        return Decision(
            Action.BLOCKED,
            f"the source rejected version {version} before; it is not presented again. Put the "
            f"right value in Key Vault as a new version of {secret!r}",
        )
    attempts = state.attempts_since(now - window_seconds)
    if attempts >= max_attempts:
        return Decision(
            Action.LIMITED,
            f"{attempts} credential updates in the last {int(window_seconds)} s (limit {max_attempts}); "
            "the next run after the window tries again",
        )
    return Decision(Action.UPDATED, f"holds {state.applied_version or 'an unknown version'}, not {version}")


def account_decision(av: AccountVersion, *, present_again: bool) -> Decision | None:
    """What the account's record says about presenting its version at all (pure); None: go on."""
    if av.verdict is None or present_again:
        return None
    what = av.account.split(":", 1)[-1]
    if av.verdict == "rejected":
        return Decision(
            Action.BLOCKED,
            f"account {what} rejected version {av.version} ({av.reason or 'no reason recorded'}); it is "
            f"not presented to any of its data sources again. Put the right value in Key Vault as a new "
            f"version of {av.secret!r}, or, once the source has it, heal with --present-again",
        )
    return Decision(
        Action.IN_DOUBT,
        f"version {av.version} was presented to account {what} and its verdict never came back "
        f"({av.reason or 'no reason recorded'}); it is not presented again automatically, since that "
        "could be a second failed sign-in. Check the data source, then heal with --present-again "
        "(or put a new version in Key Vault)",
    )
