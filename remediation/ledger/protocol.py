"""The ledger: what the healer knows about each target, and the record of what it did.

The healer's safety rules live or die here, so the ledger keeps them as invariants rather than
leaving them to callers:

* **Idempotence.** Per target ``(gatewayId, datasourceId)`` the ledger holds the secret name and
  version last applied, and when. A target that already holds version V is not patched with V again.
  When Power BI resets a target's credentials (Take Over of a dataset), :meth:`Ledger.forget_applied`
  clears what it holds, so the next heal presents the current version again.
* **Lockout safety.** Per target, the set of versions the source *rejected* only ever grows: no
  call removes a rejection, and a rejection is recorded even by a writer that has just lost its
  lease (a set union cannot conflict with anybody, and forgetting a rejection invites an account
  lockout). Credential-update attempts are kept with their timestamps (the newest
  :data:`MAX_ATTEMPTS_KEPT`), so the healer can bound attempts per time window.
* **At most one failed sign-in per account and secret version.** Lockout policies count failed
  sign-ins per *account*, whatever the number of data sources signing in as it. Per
  ``(account, secret, version)`` the ledger keeps an :class:`AccountVersion`: before presenting a
  version the healer *claims* the presentation (:meth:`Ledger.claim_presentation`); of any number
  of concurrent claimers one is granted the *probe* and the others are told to wait, until the
  version is accepted somewhere (then it fans out freely to that locator). A rejection, or a
  presentation whose verdict never came back (the probe expired: the presenter died or lost the
  answer), stops the version for that account for good; only an operator's
  :meth:`Ledger.allow_again` lets it be presented once more. These records are never pruned.
* **One writer per target.** A lease per target: it is granted when there is none, when the
  current one has expired (``now >= expires``: crash safety, a dead writer's lease is taken over)
  or when the same owner asks again (a renewal). Every grant is a compare-and-swap on the target's
  ETag, so of any number of threads or processes racing for a free lease exactly one wins. The
  applied version is written only by the current lease holder: after a take-over the old holder's
  writes raise :class:`LeaseLost`.
* **Event dedupe.** :meth:`Ledger.mark_event_seen` answers True exactly once per event id, under
  any concurrency (Event Grid delivers at least once). Seen ids are pruned after a retention.
* **Daily refresh budget.** A per-dataset, per-UTC-day counter of refresh POSTs, incremented
  atomically.
* **No secret value, ever.** No record here has a field that could hold a password, key or token:
  secrets are referred to by Key Vault name and version only.

All times are float epoch seconds passed in by the caller; the ledger has no clock of its own.
Gateway, data source, dataset and event ids, secret names and versions are normalised to
lower case (Key Vault names and versions, and Power BI's GUIDs, are case-insensitive), so callers
may pass them in any case; :class:`TargetState` offers case-insensitive helpers for comparisons.

**Storage model.** The interface is shaped for Azure Table storage: every write is a single
entity insert or a conditional (``If-Match`` ETag) replace, never a multi-row transaction.
:class:`~remediation.ledger.base.EntityLedgerBase` implements all target semantics (leases,
applied, rejected, attempts) on top of three primitives -- read one target entity, insert it if
absent, replace it if its ETag still matches -- so a Table storage backend only supplies those
primitives plus the simple single-entity operations for events, outcomes and refresh counters.
Presentation verdicts per account (:class:`AccountVersion`) are built the same way, on three
primitives of their own. Suggested mapping:

===============  ===========================  =============================================
table            PartitionKey / RowKey        properties
===============  ===========================  =============================================
targets          gateway id / datasource id   applied*, rejections (JSON), attempts (JSON),
                                              lease_owner, lease_id, lease_expires; ETag
accounts         account / secret ``|``       account, secret_name, secret_version, verdict,
                 version (keys derived: the   reason, verdict_at, accepted (JSON), probe_*,
                 account is any text)         presentations, overrides, evidence (JSON); ETag
seenevents       first 2 chars / event id     seen_at (insert; 409 Conflict = duplicate)
outcomes         UTC day / inverted time+uuid Outcome fields (newest first within a day)
refreshposts     UTC day / dataset id         posts (conditional replace on ETag)
inventory        workspace id / dataset id    fingerprint, learnt_at, sources (JSON), refreshable
markers          "marker" / name              mark, set_at (the sweep's cursor, the pause, ...)
===============  ===========================  =============================================

In SQLite the accounts table is ``account_versions``, one row per (account, secret, version),
``accepted`` a JSON column, so every change stays a one-row write.

:class:`~remediation.ledger.sqlite.SqliteLedger` is the embedded backend
(``REMEDIATION_STATE_PATH``): one SQLite file in WAL mode with a busy timeout, safe for a pool of
threads and for several processes at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Protocol, runtime_checkable

from remediation.ledger.records import (
    DEFAULT_OUTCOME_RETENTION_SECONDS,
    DatasetRecord,
    Lease,
    Outcome,
    PruneResult,
)
from remediation.safety.evidence import AccountVersion, Claim, Intent, TargetState

__all__ = ["Ledger"]


@runtime_checkable
class Ledger(Protocol):
    """The healer's durable memory. Implementations are safe to share between threads.

    Every method that takes ids normalises them to lower case and raises ValueError for an empty
    id or a non-finite time. Storage failures raise :class:`LedgerError`.
    """

    def target_state(self, gateway_id: str, datasource_id: str) -> TargetState:
        """The target's state; the empty state (etag None) for a target never written."""
        ...

    def acquire_lease(
        self, gateway_id: str, datasource_id: str, owner: str, now: float, ttl: float
    ) -> Lease | None:
        """Grant ``owner`` the target's lease until ``now + ttl``, or return None.

        Granted when there is no lease, the current one expired (``now >= expires``; a take-over
        gives a new lease id, so the previous holder's writes raise :class:`LeaseLost`), or
        ``owner`` already holds it (a renewal, same lease id). Atomic: of concurrent callers
        racing for a free lease exactly one gets it. ``owner`` must be unique per concurrent
        writer (e.g. host, process and invocation id).
        """
        ...

    def renew_lease(self, lease: Lease, now: float, ttl: float) -> Lease:
        """Extend ``lease`` to ``now + ttl``. Raises :class:`LeaseLost` if it is not current."""
        ...

    def release_lease(self, lease: Lease) -> bool:
        """Give the lease up; True if it was still current (a lost lease is left alone)."""
        ...

    def record_applied(
        self, lease: Lease, secret: str, version: str, now: float, *, release: bool = False
    ) -> None:
        """Record that the target now holds ``secret``/``version`` (applied at ``now``); with
        ``release``, give the lease up in the same write (the last thing a holder writes after
        an acceptance: one write less per target of a fan-out).

        Written only while ``lease`` is current; otherwise nothing is written and
        :class:`LeaseLost` is raised. An expired lease nobody took over is still current.
        """
        ...

    def record_rejected(self, lease: Lease, secret: str, version: str, now: float) -> None:
        """Add ``version`` to the target's rejected set, for good.

        The rejection is recorded even when ``lease`` is no longer current (it is a fact, and
        losing it could lock the account); :class:`LeaseLost` is raised afterwards in that case.
        """
        ...

    def record_attempt(self, lease: Lease, now: float, *, intent: Intent | None = None) -> None:
        """Record a credential-update attempt at ``now`` (only the newest
        :data:`MAX_ATTEMPTS_KEPT` are kept), and the ``intent`` of the presentation about to be
        sent (its ``lease_id`` is ``lease``'s). Like rejections, recorded even when ``lease`` is
        no longer current, and then :class:`LeaseLost` is raised (the intent is then not kept)."""
        ...

    def clear_intent(self, lease: Lease) -> None:
        """Forget the intent ``lease`` recorded, once its verdict is recorded (an intent of
        another lease is left alone: only a verdict, or :meth:`doubt_intent`, resolves it).
        :meth:`record_applied` and :meth:`record_rejected` clear it too."""
        ...

    def doubt_intent(self, lease: Lease, intent: Intent) -> None:
        """Forget ``intent`` (recorded under another lease, now expired or released) once the
        caller has recorded its version in doubt for its account; written only while ``lease`` is
        current (else :class:`LeaseLost`), and only if the target still holds that intent."""
        ...

    def attempts_since(self, gateway_id: str, datasource_id: str, since: float) -> int:
        """Number of recorded attempts on the target at or after ``since``."""
        ...

    def forget_applied(self, gateway_id: str, datasource_id: str) -> bool:
        """Forget which secret version the target holds (Power BI reset its credentials, e.g. a
        Take Over of a dataset that uses it), so that the next heal presents the current version
        again; True when the ledger said it held one. Written whoever holds the lease (it is a
        fact about Power BI, like a rejection: a writer that applied it just before cannot tell
        whether its PATCH landed before the reset, and presenting an accepted version once more
        is harmless); rejections, attempts and the lease are kept."""
        ...

    def mark_event_seen(self, event_id: str, now: float) -> bool:
        """True the first time ``event_id`` is marked (until pruned), False for a duplicate.

        Atomic: of concurrent callers with the same id exactly one gets True.
        """
        ...

    def event_seen(self, event_id: str) -> bool:
        """Whether ``event_id`` has been marked (and not pruned). Read-only: callers that must
        not drop a redelivery check this first and mark the event only after handling it."""
        ...

    def prune(
        self,
        now: float,
        retention_seconds: float,
        *,
        outcome_retention_seconds: float = DEFAULT_OUTCOME_RETENTION_SECONDS,
    ) -> PruneResult:
        """Remove seen event ids older than ``now - retention_seconds``, outcomes older than
        ``now - outcome_retention_seconds`` and refresh counters of days before yesterday (UTC).

        Target state (applied and rejected versions) is never pruned. Keep ``retention_seconds``
        above Event Grid's retry period (24 h by default) or redeliveries are seen as new.
        """
        ...

    def add_outcome(self, outcome: Outcome) -> None:
        """Append ``outcome`` to the history (stored as given)."""
        ...

    def outcomes(self, since: float | None = None, limit: int = 500) -> list[Outcome]:
        """Outcomes with ``time >= since`` (all if None), newest first, at most ``limit``."""
        ...

    def refresh_posts(self, dataset_id: str, day: str) -> int:
        """Refresh POSTs recorded for the dataset on UTC ``day`` (``YYYY-MM-DD``); 0 if none."""
        ...

    def record_refresh_post(self, dataset_id: str, day: str) -> int:
        """Count one more refresh POST for the dataset on ``day``; returns the new count. Atomic."""
        ...

    def inventory(self, workspace_id: str | None = None) -> list[DatasetRecord]:
        """The inventory's records of ``workspace_id`` (every workspace if None), in no order."""
        ...

    def put_inventory(self, records: Iterable[DatasetRecord]) -> None:
        """Write inventory records (insert or replace, one entity each; batched per workspace
        where the backend can). A record older than the stored one (``learnt_at``) does not
        replace it, atomically: of concurrent writers (threads, processes, instances) of one
        dataset the newest observation stays, whatever the order of the writes."""
        ...

    def drop_inventory(self, workspace_id: str, dataset_ids: Iterable[str]) -> None:
        """Forget datasets that no longer exist (absent ones are ignored)."""
        ...

    def marker(self, name: str) -> str | None:
        """A named value kept between runs (the sweep's scan cursor, the inventory's last full
        read); None if never set."""
        ...

    def set_marker(self, name: str, value: str, now: float) -> None:
        """Set the named value (one entity; the last writer wins)."""
        ...

    def raise_marker(self, name: str, value: float, now: float) -> float:
        """Make the named marker hold the number ``value`` unless it holds a larger one already
        (a missing or non-numeric marker counts as lower); the number it holds afterwards.

        Atomic, only ever extends: of concurrent writers the largest value stays, whatever the
        order (the shared throttling pause: a shorter pause must never shorten a longer one).
        ``value`` must be a finite number of zero or more.
        """
        ...

    def account_version(self, account: str, secret: str, version: str) -> AccountVersion:
        """What is known about presenting ``secret``/``version`` to ``account``; the empty state
        (etag None) when nothing was ever recorded."""
        ...

    def claim_presentation(
        self,
        account: str,
        secret: str,
        version: str,
        *,
        locator: str,
        target: str,
        owner: str,
        now: float,
        ttl: float,
        request: str = "",
    ) -> tuple[Claim, AccountVersion]:
        """Ask to present ``version`` to ``account`` at ``locator`` (for ``target``), for the
        command ``request`` (its correlation id); the answer and the state after it. The rule is
        :func:`remediation.safety.presenting.claim_step`: a verdict answers REJECTED / IN_DOUBT;
        a locator licensed for ``request`` by a recent acceptance (younger than the last
        contradiction) ACCEPTED; otherwise one probe at a time per account (an expired probe of
        another owner makes the version in doubt).

        Atomic: of concurrent claimers with different owners exactly one is granted. A granted
        caller must call :meth:`record_presentation` with the source's verdict (or "in-doubt"
        when the answer was lost), and should claim again before presenting after ``ttl``.
        """
        ...

    def record_presentation(
        self,
        account: str,
        secret: str,
        version: str,
        *,
        owner: str,
        locator: str,
        verdict: Literal["accepted", "rejected", "in-doubt"],
        reason: str,
        now: float,
        sent_at: float | None = None,
        request: str = "",
    ) -> AccountVersion:
        """Record the source's verdict on a presentation of ``request`` sent at ``sent_at``
        (default ``now``); the new state. Written even when the caller's probe expired or was
        taken (a verdict is a fact). The rule is :func:`remediation.safety.presenting.verdict_step`:
        "accepted" records the locator's licence for ``request`` (and clears an "in-doubt" verdict
        recorded before it was sent), "rejected" and "in-doubt" set the verdict (a rejection is
        never replaced by doubt) and a contradiction at ``now``. ``owner``'s probe, if current,
        is cleared. Raises ValueError for another verdict.
        """
        ...

    def release_presentation(self, account: str, secret: str, version: str, *, owner: str) -> AccountVersion:
        """Give up ``owner``'s probe without a verdict: the request certainly never reached the
        source (not sent, throttled, refused before any test), so nothing was counted and the
        next claim may be granted. Another owner's probe is left alone; the state afterwards."""
        ...

    def allow_again(
        self, account: str, secret: str, version: str, *, request: str, now: float, reason: str
    ) -> tuple[bool, AccountVersion]:
        """An operator's request (``request``: its id, e.g. the command's correlation id) to let
        the version be presented to the account once more; (granted by this call, state after).

        Atomic and once per request (:func:`remediation.safety.presenting.grant_step`): the first
        call for a request clears the verdict and any probe, counts an override and makes every
        earlier acceptance license nothing (the next presentation is one probe); a later call
        with the same request changes nothing and answers False. ``reason`` is required.
        """
        ...

    def account_versions(self, *, with_verdict_only: bool = True, limit: int = 1000) -> list[AccountVersion]:
        """Account states with a verdict (or all of them), newest ``verdict_at`` first (never
        set: last), at most ``limit``. Never pruned."""
        ...

    def close(self) -> None:
        """Release the storage handle. Idempotent; any other call afterwards raises LedgerError."""
        ...
