"""Decision 2: may version V be presented to target T of account A now? (pure)

Lockout policies count failed sign-ins per *account*, so the answer comes from two records of the
ledger's evidence: the target's (:class:`~remediation.ledger.TargetState`: what it holds, what
its source rejected, how often it was tried) and the account's for that version
(:class:`~remediation.ledger.AccountVersion`). The rules:

* **Idempotent.** A target that holds V is not sent V again, unless its source rejected V since
  it was applied (a refresh failed on it).
* **One presentation at a time per account.** A version nobody has accepted is presented to one
  target (the *probe*, claimed in the ledger so that other runs, workers and instances wait); the
  others follow only once it was accepted at the same locator (an acceptance on one SQL server
  says nothing of another's login).
* **Evidence has time.** An acceptance licenses followers of the same command (the parts of one
  fan-out) only while it is younger than :data:`FANOUT_LICENCE_SECONDS` and younger than the last
  evidence against the version (a rejection, an in-doubt answer, a refresh that failed on it:
  ``contradicted_at``). Another command, or a later one, probes again: an acceptance is not a
  blank cheque. A lost answer is in doubt for the account, whoever sent it.
* **A rejected or in-doubt version is not presented again** to any target of the account. Only a
  new version or an operator's request lifts it, and a request lifts it once (:func:`grant_step`),
  however many parts, re-queues or redeliveries it goes through.
* **A connection that references Key Vault is never sent a copy** (:func:`reference_decision`):
  a copy would replace the reference. Fabric's API does not say which connections hold one, so
  the bindings' ``keyVaultReference`` mark and the ledger's record of ``adopt`` say it; where
  they disagree in a way that leaves the connection's state unknown, nothing is sent.

The ledger applies the ``*_step`` functions inside its atomic compare-and-swap, so the rules
hold across threads, processes and instances; the healer asks :func:`decide` and
:func:`account_decision` before it takes a lease.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal

from remediation.safety.actions import Action
from remediation.safety.evidence import AccountVersion, Claim, TargetState

__all__ = [
    "FANOUT_LICENCE_SECONDS",
    "MAX_GRANTS_KEPT",
    "MAX_LICENCES_KEPT",
    "ClaimStep",
    "Decision",
    "account_decision",
    "claim_step",
    "decide",
    "grant_step",
    "licensed",
    "reference_decision",
    "release_step",
    "verdict_step",
]

FANOUT_LICENCE_SECONDS: Final = 120.0
"""How long an acceptance at a locator lets other targets there follow without a probe. A
rotation's fan-out takes seconds; a licence older than this may predate an out-of-band password
change nobody has seen yet, so the next presentation re-checks the version on one target."""

MAX_GRANTS_KEPT: Final = 64
"""Operator requests remembered per account and version (the newest)."""

MAX_LICENCES_KEPT: Final = 64
"""Licences (locator, request) kept per account and version (the newest)."""

_REJECTED: Final = "rejected"
_IN_DOUBT: Final = "in-doubt"
_ACCEPTED: Final = "accepted"


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
    """What to do for one target, from its ledger state alone.

    Order matters: a target that already holds the version is fine, unless the source rejected
    that version *since* it was applied (a refresh failed on it: the password changed behind Key
    Vault's back); a version the source rejected stays blocked however long ago that was (unless
    an operator asks to present it once more: the account's grant then decides, see
    :func:`grant_step`); only then do the attempt bound and the update.
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
    """What the account's record says about presenting its version at all; None: go on.

    ``present_again`` is an operator's request that has not been consumed yet (a consumed one
    is no licence: see :func:`grant_step`)."""
    if av.verdict is None or present_again:
        return None
    what = av.account.split(":", 1)[-1]
    if av.verdict == _REJECTED:
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


def reference_decision(*, marked: bool, recorded: str | None, connection: str) -> Decision | None:
    """May a Fabric connection be sent a copy of its secret? None: yes (it holds a copy).

    ``marked``: the bindings mark its target ``"keyVaultReference": true``; ``recorded``: what the
    ledger's record of ``adopt`` says (``"referenced"``, ``"in-doubt"``: adopt's answer was lost,
    ``"released"``: moved back with ``adopt --release``, None: never moved). A connection known
    to reference Key Vault is :attr:`Action.REFERENCED` (nothing sent: Fabric reads the latest
    version itself); one whose state is unknown is :attr:`Action.FAILED`, nothing sent, with what
    a person must do."""
    if recorded == "in-doubt":
        return Decision(
            Action.FAILED,
            f"`adopt` is moving connection {connection}, or the answer to `adopt` was lost: whether it "
            "references Key Vault or still holds its copy is unknown, so nothing is sent. Look at it in "
            "Manage connections and gateways, then run `adopt ... --yes` again or `adopt --release`",
        )
    if recorded == "released" and marked:
        return Decision(
            Action.FAILED,
            f"connection {connection} was moved back to a copy (`adopt --release`), but the bindings "
            'still mark it "keyVaultReference": true: remove the mark (nothing is sent until the two agree)',
        )
    if marked:
        return Decision(
            Action.REFERENCED,
            f"connection {connection} references Key Vault: Fabric reads the current version itself, so "
            "no copy is sent",
        )
    if recorded == "referenced":
        return Decision(
            Action.REFERENCED,
            f"connection {connection} was moved onto a Key Vault reference by `adopt` (the ledger says "
            'so): no copy is sent; mark its target "keyVaultReference": true in the bindings',
        )
    return None


def licensed(record: AccountVersion, locator: str, request: str, now: float) -> bool:
    """Whether an acceptance lets a presentation of ``request`` at ``locator`` go without a
    probe: the account has no verdict, and a presentation of the same request (the parts of one
    fan-out share it) was accepted there, sent after the last evidence against the version and
    less than :data:`FANOUT_LICENCE_SECONDS` ago. Another request, a later sweep say, probes
    again: an acceptance it did not see is no licence for it."""
    if record.verdict is not None:
        return False
    at = record.licence(locator, request)
    if at is None:
        return False
    if record.contradicted_at is not None and at <= record.contradicted_at:
        return False
    return now - at < FANOUT_LICENCE_SECONDS


@dataclass(frozen=True)
class ClaimStep:
    """The answer to a claim, the record to write (None: no write), and the presenter that
    stopped before its verdict (owner, target) when this claim found it so."""

    claim: Claim
    record: AccountVersion | None
    stale: tuple[str, str] | None = None


def claim_step(
    record: AccountVersion,
    *,
    locator: str,
    target: str,
    owner: str,
    request: str,
    now: float,
    ttl: float,
) -> ClaimStep:
    """May ``owner`` (a run of ``request``) present the version to ``target`` at ``locator``
    now? In this order:

    1. a verdict is set: :attr:`Claim.REJECTED` or :attr:`Claim.IN_DOUBT`;
    2. the locator is :func:`licensed` for ``request``: :attr:`Claim.ACCEPTED` (a follower, no
       write);
    3. ``owner``'s own probe for the same target: :attr:`Claim.GRANTED` again (renewed);
       ``owner``'s probe for another target, or another owner's unexpired probe:
       :attr:`Claim.BUSY` (one presentation at a time); another owner's expired probe: the
       presenter stopped before its verdict, so the version is in doubt for the account;
    4. otherwise ``owner`` gets the probe (``presentations`` + 1): :attr:`Claim.GRANTED`.
    """
    if record.verdict is not None:
        return ClaimStep(Claim.REJECTED if record.verdict == _REJECTED else Claim.IN_DOUBT, None)
    if licensed(record, locator, request, now):
        return ClaimStep(Claim.ACCEPTED, None)
    if record.probe_owner == owner and record.probe_target == target:
        return ClaimStep(Claim.GRANTED, replace(record, probe_expires=now + ttl))
    if record.probe_active(now) or record.probe_owner == owner:
        return ClaimStep(Claim.BUSY, None)
    if record.probe_owner is not None:
        stale = (record.probe_owner, record.probe_target or "an unknown target")
        doubted = _without_probe(
            replace(
                record,
                verdict=_IN_DOUBT,
                reason=(
                    f"the run {stale[0]} presenting it to {stale[1]} stopped before its verdict was recorded"
                ),
                verdict_at=now,
                contradicted_at=_later(record.contradicted_at, now),
            )
        )
        return ClaimStep(Claim.IN_DOUBT, doubted, stale)
    return ClaimStep(
        Claim.GRANTED,
        replace(
            record,
            probe_owner=owner,
            probe_locator=locator,
            probe_target=target,
            probe_expires=now + ttl,
            presentations=record.presentations + 1,
        ),
    )


def verdict_step(
    record: AccountVersion,
    *,
    verdict: Literal["accepted", "rejected", "in-doubt"],
    owner: str,
    locator: str,
    reason: str | None,
    sent_at: float,
    now: float,
    request: str,
) -> AccountVersion | None:
    """The record after a presentation's verdict (None: nothing to write). ``owner``'s probe is
    cleared. A verdict is written even when the probe expired or was taken: it is a fact.

    * accepted: the locator is accepted, and its licence for ``request`` becomes ``sent_at``
      (when it is new, older than the last contradiction, or half a licence old: followers'
      acceptances write rarely); an in-doubt verdict is cleared when the acceptance was sent
      after it was recorded (the version is proven good since); a rejection stays.
    * rejected: the verdict (over an in-doubt one), and a contradiction at ``now``.
    * in-doubt: the verdict unless it is a rejection, and a contradiction at ``now``.
    """
    before = record
    if record.probe_owner == owner:
        record = _without_probe(record)
    if verdict == _ACCEPTED:
        if locator not in record.accepted:
            record = replace(record, accepted=(*record.accepted, locator))
        known = record.licence(locator, request)
        stale = (
            known is None
            or (record.contradicted_at is not None and known <= record.contradicted_at)
            or sent_at - known >= FANOUT_LICENCE_SECONDS / 2
        )
        if stale and (known is None or sent_at > known):
            record = _with_licence(record, locator, request.strip(), sent_at)
        if record.verdict == _IN_DOUBT and record.verdict_at is not None and sent_at >= record.verdict_at:
            record = replace(record, verdict=None, reason=reason, verdict_at=now)
        return None if record == before else record
    contradicted = _later(record.contradicted_at, now)
    if verdict == _IN_DOUBT and record.verdict == _REJECTED:
        return replace(record, contradicted_at=contradicted)  # a rejection is the stronger fact
    if verdict not in (_REJECTED, _IN_DOUBT):
        raise ValueError("verdict must be 'accepted', 'rejected' or 'in-doubt'")
    return replace(record, verdict=verdict, reason=reason, verdict_at=now, contradicted_at=contradicted)


def release_step(record: AccountVersion, *, owner: str) -> AccountVersion | None:
    """Give up ``owner``'s probe without a verdict (the request certainly never reached the
    source); another owner's probe is left alone."""
    return _without_probe(record) if record.probe_owner == owner else None


def grant_step(
    record: AccountVersion, *, request: str, reason: str | None, now: float
) -> tuple[bool, AccountVersion | None]:
    """An operator's request to present the version once more; (granted now, record to write).

    A request lifts the verdict once: a request already in ``grants`` changes nothing, so the
    parts of one fan-out, its re-queues and its redeliveries share one presentation. A granted
    request clears the verdict and any probe and counts as a contradiction at ``now``: every
    earlier acceptance stops licensing followers, so the next presentation is one probe.
    """
    key = request.strip()
    if not key:
        raise ValueError("request must not be empty: grants are kept per operator request")
    if key in record.grants:
        return False, None
    granted = _without_probe(
        replace(
            record,
            verdict=None,
            reason=reason,
            verdict_at=now,
            overrides=record.overrides + 1,
            grants=(*record.grants, key)[-MAX_GRANTS_KEPT:],
            contradicted_at=_later(record.contradicted_at, now),
        )
    )
    return True, granted


def _later(at: float | None, now: float) -> float:
    return now if at is None else max(at, now)


def _with_licence(record: AccountVersion, locator: str, request: str, at: float) -> AccountVersion:
    kept = [item for item in record.licences if (item[0], item[2]) != (locator, request)]
    return replace(record, licences=(*kept, (locator, at, request))[-MAX_LICENCES_KEPT:])


def _without_probe(record: AccountVersion) -> AccountVersion:
    return replace(record, probe_owner=None, probe_locator=None, probe_target=None, probe_expires=None)
