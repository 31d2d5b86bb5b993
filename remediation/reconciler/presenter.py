"""Presenting one target: observe, ask the safety core, act, under the target's lease and the account's claim.

:meth:`Presenter.heal_one` brings one target (a gateway data source or a Fabric connection) to
Key Vault's current version of its binding's secret, once per run. In order, each step able to
stop it with an outcome that says why:

1. *observe*: the run's time, a refused ``match``, a Key Vault reference (never sent a copy, by
   the safety core's :func:`~remediation.safety.presenting.reference_decision`; its outcome still
   names the version Fabric reads, once settled), the secret
   (:class:`~remediation.reconciler.accounts.Accounts`), what the ledger holds for the target;
2. *decide* (:mod:`remediation.safety.presenting`): idempotent (a target holding version V is not
   sent V again), attempts bounded per window, the version settled since Key Vault's ``created``
   (``REMEDIATION_SETTLE_SECONDS``; the report's ``retry_at`` says when), the account's verdict on
   the version (a rejection or a presentation in doubt stops it for every target of the account,
   until a new version or an operator's ``present_again``, one presentation per request);
3. dry-run stops here; the kind *discovers* what it needs (slow reads, before the lease);
4. *the lease* (one writer per target, owned by the run), an intent left by a presentation whose
   verdict never came back read as in doubt, the decision asked again under the lease, then *the
   account's claim* (a version nobody has accepted yet goes to one target of the account first;
   other runs, workers and instances wait);
5. *act*: the attempt and its intent are recorded, then the kind sends the credential; before
   every attempt the lease and the claim are checked, and renewed when they would not outlast the
   attempt's worst case;
6. *the verdict* (the safety core's reading of the answer) is recorded for the target and the
   account, with the time the presentation was sent (evidence has time).

A :class:`Move` is a presentation that changes *how* a connection holds its credential (``adopt``:
onto a Key Vault reference): the same steps, through the move's own kind, sent even when the
target already holds the version (what changes is the copy, not the version).

Which target comes when (one presentation at a time per account) is the healer's
(:meth:`remediation.reconciler.healer.Healer.heal_targets`); how a kind reads, builds and sends is
its own (:mod:`remediation.reconciler.targets`). No secret value is ever put in an outcome, a log
record or an exception message. Logs as the healer (``remediation.reconciler.healer``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from remediation.clients.api_errors import ApiError, ThrottledPastDeadline
from remediation.clients.http import attempt_worst_case
from remediation.clients.identity import AuthenticationError
from remediation.clients.keyvault import SecretValue
from remediation.config.bindings import Binding, Target
from remediation.config.settings import Settings
from remediation.errors import ConfigError, RemediationError
from remediation.ledger import Claim, Intent, Lease, LeaseLost, Ledger, Outcome
from remediation.ledger.references import References
from remediation.reconciler.accounts import Accounts
from remediation.reconciler.report import HOLDS_CURRENT, Action
from remediation.reconciler.resolver import TargetResolver
from remediation.reconciler.runs import Resolved, Run
from remediation.reconciler.targets import Presented, TargetKind, TargetRefused
from remediation.rules.accounts import account_key
from remediation.rules.credentials import ResolvedCredential, resolve_credential
from remediation.rules.redact import mask_urls
from remediation.safety.answers import Verdict, VerdictOf
from remediation.safety.presenting import Decision, account_decision, decide

__all__ = ["Move", "Presenter", "Sent"]

logger = logging.getLogger("remediation.reconciler.healer")  # the healer's log (runs.RUN_LOGGERS)


class _NotSent(Exception):
    """Raised before a PATCH attempt that must not be sent (deadline, lost claim)."""


@dataclass(frozen=True)
class Move:
    """A presentation that changes how a target holds its credential: sent through ``kind``,
    even when the target already holds the version; ``plan`` says what it would do (dry run),
    ``action`` and ``done`` what it did once accepted (``done`` formatted with ``version``)."""

    kind: TargetKind
    action: Action
    plan: str
    done: str


class Sent:
    """When the last attempt of a presentation was sent (set before each attempt)."""

    def __init__(self, at: float) -> None:
        self.at = at


class Presenter:
    """Presents Key Vault's current version to one target at a time, under the healer's rules
    (thread-safe; one per healer)."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger,
        resolver: TargetResolver,
        accounts: Accounts,
        gateway_kind: TargetKind,
        fabric_kind: TargetKind | None,
        references: References | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.resolver = resolver
        self.accounts = accounts
        self.references = references or References(ledger)
        self.gateway_kind = gateway_kind
        self.fabric_kind = fabric_kind
        self._clock = clock

    def heal_one(self, item: Resolved, run: Run, move: Move | None = None) -> Outcome:
        """Bring ``item`` to Key Vault's current version, once per run (a target already handled in
        this run answers with that outcome); the outcome says why, and is recorded as it happens.
        With ``move``, make that presentation instead (see :class:`Move`)."""
        binding, target = item.binding, item.target
        started = self._clock()
        base = Outcome(
            time=started,
            trigger=run.trigger,
            correlation_id=run.correlation_id,
            binding=binding.name,
            account=self.accounts.label(item, run),
            secret_name=binding.secret,
            gateway_id=target.gateway_id,
            datasource_id=target.datasource_id,
        )

        def done(action: Action, reason: str, version: str | None = None) -> Outcome:
            named = run.named_version
            if named and version and named.lower() != version.lower() and action in HOLDS_CURRENT:
                reason += f" (version {named} was named; Key Vault's current version is what is applied)"
            if run.present_again and action in (Action.UPDATED, Action.REJECTED, Action.IN_DOUBT):
                reason += (
                    " [presented again at the operator's request (--present-again / presentAgain): "
                    "each such presentation may be one more failed sign-in]"
                )
            took_over = [t for t in run.take_overs if t.target == target.key]
            if took_over:
                reason += "".join(
                    f" (took over dataset {t.dataset_id}: Power BI reset the credentials of its other cloud "
                    f"data sources, {len(t.described)} of them; see the report's warnings)"
                    for t in took_over
                )
            outcome = replace(
                base,
                action=action.value,
                reason=mask_urls(reason),
                secret_version=version,
                duration=round(self._clock() - started, 3),
            )
            logger.info(
                "target %s/%s (%s): %s — %s",
                target.gateway_id,
                target.datasource_id,
                binding.name,
                action.value,
                reason,
            )
            return run.add(outcome)

        with run.key_lock(f"target:{target.gateway_id}/{target.datasource_id}"):
            with run.lock:
                previous = run.settled.get(target.key)
                if previous is None:
                    run.in_progress.add(target.key)
            if previous is not None:  # already handled in this run (e.g. a dataset retry after a heal)
                return previous
            try:
                outcome = self._heal_one_locked(item, run, done, move)
            except ThrottledPastDeadline as exc:
                outcome = done(Action.DEFERRED, str(exc))
            except Exception as exc:  # noqa: BLE001 - one target's failure must not stop the others
                logger.exception("target %s/%s failed", target.gateway_id, target.datasource_id)
                outcome = done(Action.FAILED, f"internal error ({type(exc).__name__}); see the logs")
            with run.lock:
                run.settled[target.key] = outcome
                run.in_progress.discard(target.key)
            return outcome

    def _heal_one_locked(
        self, item: Resolved, run: Run, done: Callable[..., Outcome], move: Move | None = None
    ) -> Outcome:
        binding, target = item.binding, item.target
        if run.out_of_time(self._clock()):
            return done(Action.DEFERRED, "the time budget ran out; the next run continues")
        if item.refused:
            return done(Action.FAILED, item.refused)
        refused = self.resolver.match_refusal(item, run)
        if refused:
            return done(Action.FAILED, refused)
        ruled = None if move is not None else self.references.decision(target)
        if ruled is not None and ruled.action is not Action.REFERENCED:
            return done(ruled.action, ruled.reason)
        try:
            secret = self.accounts.secret(binding.secret, run)
        except ThrottledPastDeadline as exc:
            return done(Action.DEFERRED, f"Key Vault: {exc}")
        except RemediationError as exc:
            if ruled is not None:  # referenced: nothing to send; only the version is unknown
                return done(ruled.action, f"{ruled.reason} (Key Vault could not be read: {exc})")
            return done(Action.FAILED, f"Key Vault: {exc}")
        version = secret.version
        settles_at = self._settles_at(secret)
        if ruled is not None:
            # Fabric reads the latest version itself at each refresh; a copy would replace the
            # reference. Until the version has settled its source may not know it yet, so the
            # models on the connection are not retried before then (the report says when).
            if settles_at is not None:
                run.again_at(settles_at)
                return done(
                    Action.SETTLING,
                    f"{ruled.reason}; version {version} is Key Vault's since "
                    f"{_iso(settles_at - self.settings.settle_seconds)}, and the models on the connection "
                    f"are retried from {_iso(settles_at)} (REMEDIATION_SETTLE_SECONDS="
                    f"{self.settings.settle_seconds})",
                    version,
                )
            return done(
                ruled.action, f"{ruled.reason}; it reads version {version} of {binding.secret!r}", version
            )
        decision = self._decide(target, binding, version, run)
        if not _goes_on(decision, move):
            return done(decision.action, decision.reason, version)
        if settles_at is not None:
            run.again_at(settles_at)
            return done(
                Action.SETTLING,
                f"version {version} is presented from {_iso(settles_at)} "
                f"(Key Vault created it at {_iso(settles_at - self.settings.settle_seconds)}; "
                f"REMEDIATION_SETTLE_SECONDS={self.settings.settle_seconds}), so that a rotation that "
                "writes Key Vault before the source is not mistaken for a wrong password",
                version,
            )
        try:
            resolved = resolve_credential(binding, secret.value)
        except RemediationError as exc:
            return done(Action.FAILED, str(exc), version)
        account = account_key(binding, resolved.username)
        item = replace(item, username=resolved.username)  # where an acceptance licenses (break 5)
        blocked = self._account_check(account, binding, version, run, item.where)
        if blocked is not None:
            return done(blocked.action, blocked.reason, version)
        if run.dry_run:
            return done(Action.WOULD_UPDATE, move.plan if move is not None else decision.reason, version)

        # Discovery (e.g. the gateway's kind and key) happens before the lease: it may be slow.
        try:
            kind = move.kind if move is not None else self.kind_of(target)
        except RemediationError as exc:
            return done(Action.FAILED, str(exc), version)
        try:
            found = kind.discover(item, run)
        except TargetRefused as exc:
            return done(Action.FAILED, str(exc), version)
        except ThrottledPastDeadline as exc:
            return done(Action.DEFERRED, str(exc), version)
        except RemediationError as exc:
            return done(Action.FAILED, f"could not read {kind.describe(item)}: {exc}", version)

        lease = self.ledger.acquire_lease(
            target.gateway_id, target.datasource_id, run.owner, self._clock(), self.lease_ttl()
        )
        if lease is None:
            return done(Action.BUSY, "another run is updating this data source", version)
        try:
            self._resolve_intent(lease, run)
            # Decide again under the lease: the previous holder may have just applied it.
            decision = self._decide(target, binding, version, run)
            if not _goes_on(decision, move):
                return done(decision.action, decision.reason, version)
            claim, av = self.ledger.claim_presentation(
                account,
                binding.secret,
                version,
                locator=item.where,
                target=f"{target.gateway_id}/{target.datasource_id}",
                owner=run.owner,
                now=self._clock(),
                ttl=self.lease_ttl(),
                request=run.correlation_id,
            )
            if claim is Claim.BUSY:
                return done(
                    Action.BUSY,
                    f"another run ({av.probe_owner}) is presenting version {version} to account "
                    f"{account.split(':', 1)[-1]} first (on {av.probe_target}); this data source follows "
                    "once it is accepted",
                    version,
                )
            if claim in (Claim.REJECTED, Claim.IN_DOUBT):
                verdict = account_decision(av, present_again=False)
                assert verdict is not None
                return done(verdict.action, verdict.reason, version)
            action, reason = self._present(
                kind, item, secret, resolved, found, lease, account, probe=claim is Claim.GRANTED, run=run
            )
            if move is not None and action is Action.UPDATED:
                action, reason = move.action, move.done.format(version=version)
            return done(action, reason, version)
        except LeaseLost:
            return done(Action.BUSY, "the lease was taken over by another run", version)
        finally:
            try:
                self.ledger.release_lease(lease)
            except RemediationError:  # pragma: no cover - best effort; the lease expires anyway
                logger.warning(
                    "could not release the lease on %s/%s", target.gateway_id, target.datasource_id
                )

    def _decide(self, target: Target, binding: Binding, version: str, run: Run) -> Decision:
        state = self.ledger.target_state(target.gateway_id, target.datasource_id)
        return decide(
            state,
            binding.secret,
            version,
            now=self._clock(),
            max_attempts=self.settings.max_attempts,
            window_seconds=self.settings.attempt_window_seconds,
            present_again=run.present_again,
        )

    def _account_check(
        self, account: str, binding: Binding, version: str, run: Run, locator: str = ""
    ) -> Decision | None:
        """The account's verdict on ``version`` (:func:`~remediation.safety.presenting.account_decision`).

        An operator's ``present_again`` lifts it once per request: the request's correlation id is
        its grant in the ledger, consumed by the first call (any part, re-queue or redelivery of
        the request finds it consumed), so one request is one presentation to the account.
        (A version this run saw accepted at ``locator`` needs no second look: the claim under the
        lease still checks the ledger before anything is sent.)"""
        if (account, binding.secret.lower(), version.lower(), locator.lower()) in run.accepted:
            return None
        av = self.ledger.account_version(account, binding.secret, version)
        request = run.correlation_id
        if av.verdict is not None and run.present_again and not run.dry_run:
            granted, av = self.ledger.allow_again(
                account,
                binding.secret,
                version,
                request=request,
                now=self._clock(),
                reason=f"operator ({run.trigger}, request {request})",
            )
            if granted:
                logger.warning(
                    "operator: version %s of %s is presented to %s once more (request %s)",
                    version,
                    binding.secret,
                    account,
                    request,
                )
            blocked = account_decision(av, present_again=False)
            if blocked is None:
                return None
            return replace(
                blocked,
                reason=f"{blocked.reason} (this request's present-again, {request}, was used by one "
                "presentation already: each request presents once)",
            )
        unused = run.present_again and request.strip() not in av.grants
        return account_decision(av, present_again=unused and run.dry_run)

    def _settles_at(self, secret: SecretValue) -> float | None:
        """When ``secret`` may be presented, if that is still in the future."""
        settle = self.settings.settle_seconds
        if settle <= 0 or secret.created_on is None:
            return None
        at = secret.created_on.timestamp() + settle
        return at if self._clock() < at else None

    def _worst_case(self) -> float:
        """The longest one PATCH attempt can take: a wait for a request slot plus the attempt's
        total deadline (:func:`~remediation.clients.http.attempt_worst_case`, the pipeline's own bound)."""
        return attempt_worst_case(self.settings)

    def lease_ttl(self) -> float:
        """Leases and presentation claims: ``REMEDIATION_LEASE_SECONDS``, and always at least
        twice a PATCH's worst case (so one is never renewed on every attempt)."""
        return max(float(self.settings.lease_seconds), 2.0 * self._worst_case() + 10.0)

    def kind_of(self, target: Target) -> TargetKind:
        """The target kind that reads, builds and sends ``target``'s credential.

        Raises :class:`~remediation.errors.ConfigError` for a Fabric connection when the healer
        was built without a Fabric client."""
        if target.connection_id is None:
            return self.gateway_kind
        if self.fabric_kind is None:
            raise ConfigError("this healer has no Fabric client, so it cannot update Fabric connections")
        return self.fabric_kind

    def _present(
        self,
        kind: TargetKind,
        item: Resolved,
        secret: SecretValue,
        resolved: ResolvedCredential,
        found: object,
        lease: Lease,
        account: str,
        *,
        probe: bool,
        run: Run,
    ) -> tuple[Action, str]:
        """Present the version: password grant (caller identity), then the PATCH; record the
        verdict for the target and, for a probe, for the account."""
        binding, target = item.binding, item.target
        held = [lease]
        claim_until = [lease.expires]  # the probe was claimed with the lease's lifetime
        sent = Sent(self._clock())
        attempts = [0]

        def before_attempt() -> None:
            # Checked right before every attempt is sent (after any wait): a PATCH is sent only on
            # a lease and a claim that outlast its worst case; they are renewed when they would
            # not. A retry (after a 429) asks the account again: a verdict recorded meanwhile (a
            # follower elsewhere refused, say) stops it.
            now = self._clock()
            sent.at = now  # the verdict speaks of the presentation sent now (evidence has time)
            attempts[0] += 1
            if run.out_of_time(now):
                raise _NotSent("the run's deadline passed")
            if held[0].expires - now < self._worst_case() + 5.0:
                held[0] = self.ledger.renew_lease(held[0], now, self.lease_ttl())
            expiring = probe and claim_until[0] - now < self._worst_case() + 5.0
            if attempts[0] > 1 or expiring:
                claim, _ = self.ledger.claim_presentation(
                    account,
                    binding.secret,
                    secret.version,
                    locator=item.where,
                    target=f"{target.gateway_id}/{target.datasource_id}",
                    owner=run.owner,
                    now=now,
                    ttl=self.lease_ttl(),
                    request=run.correlation_id,
                )
                wanted = Claim.GRANTED if probe else Claim.ACCEPTED
                if claim is not wanted:
                    raise _NotSent(f"the account's claim changed before this attempt ({claim.value})")
                if probe:
                    claim_until[0] = now + self.lease_ttl()

        try:
            # The attempt counts toward the per-target bound (a password grant too: it is a sign-in),
            # and its intent is recorded before anything is sent: a verdict that is never recorded
            # (the worker dies, the ledger fails) leaves it, and the next holder finds it.
            now = self._clock()
            intent = Intent(
                secret=binding.secret.strip().lower(),
                version=secret.version.strip().lower(),
                account=account.strip().lower(),
                locator=item.where.strip().lower(),
                at=now,
                lease_id=lease.lease_id,
            )
            self.ledger.record_attempt(lease, now, intent=intent)
        except LeaseLost:
            lost = VerdictOf(Verdict.NOT_PRESENTED, "the lease was taken over before sending")
            return self._record(item, secret, account, lease, lost, probe, run, sent.at)
        try:
            kind.send(item, secret, resolved, found, run, before_attempt)
        except Presented as exc:
            return self._record(item, secret, account, lease, exc.verdict, probe, run, sent.at)
        except (_NotSent, LeaseLost) as exc:
            return self._record(
                item,
                secret,
                account,
                lease,
                VerdictOf(Verdict.NOT_PRESENTED, f"not sent: {exc}"),
                probe,
                run,
                sent.at,
            )
        except ThrottledPastDeadline as exc:
            # The service asked to wait past the run's deadline: nothing was served; a later run goes on.
            self._record(
                item, secret, account, lease, VerdictOf(Verdict.NOT_PRESENTED, str(exc)), probe, run, sent.at
            )
            return Action.DEFERRED, f"{exc}"
        except AuthenticationError as exc:
            # The product's own sign-in to the service failed: nothing of the binding was presented.
            return self._record(
                item,
                secret,
                account,
                lease,
                VerdictOf(Verdict.NOT_PRESENTED, f"the product could not sign in to {kind.service}: {exc}"),
                probe,
                run,
                sent.at,
            )
        except ApiError as exc:
            return self._record(item, secret, account, lease, kind.verdict(exc), probe, run, sent.at)
        except Exception as exc:  # noqa: BLE001 - the request may have been served: in doubt
            logger.exception("PATCH of %s/%s", target.gateway_id, target.datasource_id)
            verdict = VerdictOf(
                Verdict.IN_DOUBT, f"the update ended in an unexpected error ({type(exc).__name__})"
            )
            return self._record(item, secret, account, lease, verdict, probe, run, sent.at)
        return self._record(
            item, secret, account, held[0], VerdictOf(Verdict.ACCEPTED, ""), probe, run, sent.at
        )

    def _record(
        self,
        item: Resolved,
        secret: SecretValue,
        account: str,
        lease: Lease,
        verdict: VerdictOf,
        probe: bool,
        run: Run,
        sent_at: float,
    ) -> tuple[Action, str]:
        """Write the verdict (target and account) and say what it means. ``sent_at``: when the
        presentation the verdict speaks of was sent."""
        binding, target = item.binding, item.target
        version, now = secret.version, self._clock()
        who = account.split(":", 1)[-1]

        def account_verdict(value: Literal["accepted", "rejected", "in-doubt"], reason: str) -> None:
            self.ledger.record_presentation(
                account,
                binding.secret,
                version,
                owner=lease.owner,
                locator=item.where,
                verdict=value,
                reason=run.redact(f"{reason} [{target.gateway_id}/{target.datasource_id}]"),
                now=now,
                sent_at=min(sent_at, now),
                request=run.correlation_id,
            )

        if verdict.verdict is Verdict.ACCEPTED:
            known = (account, binding.secret.lower(), version.lower(), item.where.lower())
            if probe or known not in run.accepted:
                account_verdict("accepted", "accepted")
                with run.lock:
                    run.accepted.add(known)
            # The lease goes with the verdict (the run's release after this finds it given up).
            self.ledger.record_applied(lease, binding.secret, version, now, release=True)
            return Action.UPDATED, f"now holds version {version}"
        if verdict.verdict is Verdict.REJECTED:
            account_verdict("rejected", verdict.reason)
            with contextlib.suppress(LeaseLost):  # recorded all the same: a rejection is a fact
                self.ledger.record_rejected(lease, binding.secret, version, now)
            return Action.REJECTED, (
                f"version {version} was refused for account {who}: {verdict.reason}. It is not "
                "presented to any data source of that account again; put the right value in Key Vault "
                f"as a new version of {binding.secret!r}"
            )
        if verdict.verdict is Verdict.IN_DOUBT:
            # In doubt for the account, whoever sent it: a follower of an acceptance may have met a
            # password changed since, and its lost answer may be that failed sign-in.
            account_verdict("in-doubt", verdict.reason)
            self._clear_intent(lease)
            return Action.IN_DOUBT, (
                f"{verdict.reason}: the source may have counted a failed sign-in, so version "
                f"{version} is not presented to account {who} again automatically. Check the data "
                "source, then heal with --present-again (or put a new version in Key Vault)"
            )
        if probe:
            self.ledger.release_presentation(account, binding.secret, version, owner=lease.owner)
        self._clear_intent(lease)
        return Action.FAILED, verdict.reason

    def _clear_intent(self, lease: Lease) -> None:
        """The presentation's verdict is recorded: its intent goes (best effort; left, it makes
        the next holder record the version in doubt, which is the safe side)."""
        try:
            self.ledger.clear_intent(lease)
        except RemediationError as exc:  # pragma: no cover - storage errors only
            logger.warning(
                "could not clear the intent on %s/%s: %s", lease.gateway_id, lease.datasource_id, exc
            )

    def _resolve_intent(self, lease: Lease, run: Run) -> None:
        """An intent another lease left on the target: that presentation's verdict was never
        recorded, so its version is in doubt for its account (recorded, then the intent goes)."""
        intent = self.ledger.target_state(lease.gateway_id, lease.datasource_id).intent
        if intent is None or intent.lease_id == lease.lease_id:
            return
        logger.warning(
            "target %s/%s: a presentation of version %s sent at %s never got its verdict recorded; "
            "the version is in doubt for %s",
            lease.gateway_id,
            lease.datasource_id,
            intent.version,
            _iso(intent.at),
            intent.account,
        )
        self.ledger.record_presentation(
            intent.account,
            intent.secret,
            intent.version,
            owner=run.owner,
            locator=intent.locator,
            verdict="in-doubt",
            reason=(
                f"a presentation to {lease.gateway_id}/{lease.datasource_id} sent at {_iso(intent.at)} "
                "never got its verdict recorded (the worker stopped, or the ledger failed)"
            ),
            now=self._clock(),
            sent_at=intent.at,
            request=run.correlation_id,
        )
        self.ledger.doubt_intent(lease, intent)


def _goes_on(decision: Decision, move: Move | None) -> bool:
    """Whether the presentation goes on after the target's decision: an update, or a move to a
    target that already holds the version (what a move changes is how it holds it)."""
    return decision.action is Action.UPDATED or (move is not None and decision.action is Action.CURRENT)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
