"""The ledger's invariants, as a suite every backend runs unchanged.

A backend's test module subclasses :class:`LedgerContract` and overrides the ``make_ledger``
fixture with a **picklable** zero-argument callable that opens a new handle on one fresh store
(e.g. ``functools.partial(SqliteLedger, tmp_path / "ledger.db")``). Each call must reach the same
store, so the suite can reopen it and hand it to other processes.

All times are synthetic epoch seconds: the ledger has no clock, so nothing here sleeps.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from remediation.ledger import (
    MAX_ACCOUNT_LENGTH,
    MAX_ATTEMPTS_KEPT,
    MAX_REASON_LENGTH,
    AccountVersion,
    Claim,
    DatasetRecord,
    Intent,
    InventorySource,
    Lease,
    LeaseLost,
    Ledger,
    Outcome,
    utc_day,
)
from remediation.safety.presenting import FANOUT_LICENCE_SECONDS

T = TypeVar("T")
LedgerFactory = Callable[[], Ledger]

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z
GW = "6F1C2B9E-0A4D-4E7B-9A51-3C2D1E0F9A8B"
DS = "D2A7C0F4-5B6E-4C3D-8E9F-0A1B2C3D4E5F"
SECRET = "sql-sales-password"
V1 = "0123456789abcdef0123456789abcdef"
V2 = "fedcba9876543210fedcba9876543210"
V3 = "11111111111111111111111111111111"
ACCOUNT = "user:contoso\\svc_pbi"
HOST = "sql01.contoso.local"
TARGET = f"{GW.lower()}/{DS.lower()}"


def race(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run ``fn(0..n-1)`` on n threads released together by a barrier; results in index order."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait(timeout=10)
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(run, i) for i in range(n)]
        return [f.result(timeout=30) for f in futures]


def _process_race_worker(
    factory: LedgerFactory, owner: str, targets: int, barrier: Any, results: Any
) -> None:
    """Child process: open the store together with the other child, then race it for every target."""
    barrier.wait(timeout=30)
    ledger = factory()
    try:
        barrier.wait(timeout=30)
        won = [
            i
            for i in range(targets)
            if ledger.acquire_lease(f"gw-{i}", "ds", owner, now=T0, ttl=60.0) is not None
        ]
        seen = [i for i in range(targets) if ledger.mark_event_seen(f"event-{i}", T0)]
        results.put((owner, won, seen))
    finally:
        ledger.close()


def _process_claim_worker(
    factory: LedgerFactory, owner: str, accounts: int, barrier: Any, results: Any
) -> None:
    """Child process: open the store together with the other child, then claim a presentation of
    the same version to every account."""
    barrier.wait(timeout=30)
    ledger = factory()
    try:
        barrier.wait(timeout=30)
        claims = [
            ledger.claim_presentation(
                f"account-{i}", SECRET, V1, locator=HOST, target=TARGET, owner=owner, now=T0, ttl=60.0
            )[0].value
            for i in range(accounts)
        ]
        results.put((owner, claims))
    finally:
        ledger.close()


def _run_processes(target: Callable[..., None], make_ledger: LedgerFactory, count: int) -> dict[str, Any]:
    """Run ``target(make_ledger, "proc-N", count, barrier, results)`` in two spawned processes;
    what each put on the queue, by owner. Fails early when a child dies."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(make_ledger, f"proc-{n}", count, barrier, results)) for n in range(2)
    ]
    for proc in procs:
        proc.start()
    outcome: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 60
        while len(outcome) < len(procs) and time.monotonic() < deadline:
            try:
                owner, *found = results.get(timeout=0.05)
                outcome[owner] = found
            except queue.Empty:
                if any(proc.exitcode not in (None, 0) for proc in procs):
                    break  # a child died: fail now rather than at the deadline
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0]
    return outcome


class LedgerContract:
    """Invariants of :class:`remediation.ledger.Ledger`; subclass and override ``make_ledger``."""

    @pytest.fixture
    def make_ledger(self) -> LedgerFactory:
        raise NotImplementedError("a backend's test class overrides make_ledger")

    @pytest.fixture
    def ledger(self, make_ledger: LedgerFactory) -> Iterator[Ledger]:
        handle = make_ledger()
        try:
            yield handle
        finally:
            handle.close()

    @staticmethod
    def _lease(ledger: Ledger, owner: str = "owner-a", now: float = T0, ttl: float = 60.0) -> Lease:
        lease = ledger.acquire_lease(GW, DS, owner, now, ttl)
        assert lease is not None
        return lease

    # -- target state -------------------------------------------------------------------------

    def test_unknown_target_has_the_empty_state(self, ledger: Ledger) -> None:
        state = ledger.target_state(GW, DS)
        assert (state.gateway_id, state.datasource_id) == (GW.lower(), DS.lower())
        assert state.applied_secret is None and state.applied_version is None and state.applied_at is None
        assert state.rejected_versions == frozenset() and state.rejections == ()
        assert state.attempts == ()
        assert state.lease_owner is None and state.lease_expires is None
        assert state.etag is None
        assert ledger.attempts_since(GW, DS, 0.0) == 0

    def test_ids_are_case_insensitive(self, ledger: Ledger) -> None:
        lease = self._lease(ledger)
        assert (lease.gateway_id, lease.datasource_id) == (GW.lower(), DS.lower())
        ledger.record_applied(lease, SECRET.upper(), V1.upper(), T0)
        state = ledger.target_state(GW.lower(), DS.upper())
        assert (state.applied_secret, state.applied_version) == (SECRET, V1)
        assert state.holds(SECRET.upper(), V1.upper())
        assert not state.holds(SECRET, V2)
        assert ledger.acquire_lease(GW.lower(), DS.lower(), "owner-b", T0, 60.0) is None

    def test_empty_ids_and_bad_times_are_refused(self, ledger: Ledger) -> None:
        with pytest.raises(ValueError):
            ledger.target_state(" ", DS)
        with pytest.raises(ValueError):
            ledger.acquire_lease(GW, DS, "", T0, 60.0)
        with pytest.raises(ValueError):
            ledger.acquire_lease(GW, DS, "owner-a", T0, 0.0)
        with pytest.raises(ValueError):
            ledger.acquire_lease(GW, DS, "owner-a", float("nan"), 60.0)
        with pytest.raises(ValueError):
            ledger.mark_event_seen("", T0)
        with pytest.raises(ValueError):
            ledger.record_refresh_post("dataset", "15/06/2025")

    def test_every_write_changes_the_etag(self, ledger: Ledger) -> None:
        lease = self._lease(ledger)
        etags = [ledger.target_state(GW, DS).etag]
        ledger.record_attempt(lease, T0 + 1)
        etags.append(ledger.target_state(GW, DS).etag)
        ledger.record_applied(lease, SECRET, V1, T0 + 2)
        etags.append(ledger.target_state(GW, DS).etag)
        ledger.record_rejected(lease, SECRET, V2, T0 + 3)
        etags.append(ledger.target_state(GW, DS).etag)
        assert None not in etags
        assert len(set(etags)) == len(etags)

    # -- leases -------------------------------------------------------------------------------

    def test_lease_is_exclusive_until_it_expires(self, ledger: Ledger) -> None:
        lease_a = self._lease(ledger, "owner-a", T0, ttl=60.0)
        assert lease_a.expires == T0 + 60.0
        assert ledger.acquire_lease(GW, DS, "owner-b", T0 + 1, 60.0) is None
        assert ledger.acquire_lease(GW, DS, "owner-b", T0 + 59.9, 60.0) is None
        state = ledger.target_state(GW, DS)
        assert state.lease_owner == "owner-a" and state.lease_expires == T0 + 60.0
        assert not state.lease_free(T0 + 59.9) and state.lease_free(T0 + 60.0)

    def test_same_owner_reacquires_its_own_lease(self, ledger: Ledger) -> None:
        lease = self._lease(ledger, "owner-a", T0, ttl=60.0)
        again = ledger.acquire_lease(GW, DS, "owner-a", T0 + 30, 60.0)
        assert again is not None
        assert again.lease_id == lease.lease_id and again.expires == T0 + 90.0
        ledger.record_applied(lease, SECRET, V1, T0 + 31)  # the earlier handle is still current

    def test_an_acceptance_can_give_the_lease_up_in_the_same_write(self, ledger: Ledger) -> None:
        lease_a = self._lease(ledger, "owner-a", T0, ttl=60.0)
        ledger.record_attempt(lease_a, T0, intent=self._intent(lease_a))
        before = ledger.target_state(GW, DS).etag
        ledger.record_applied(lease_a, SECRET, V1, T0 + 1, release=True)
        state = ledger.target_state(GW, DS)
        assert state.holds(SECRET, V1) and state.intent is None
        assert state.lease_owner is None and state.lease_expires is None and state.lease_free(T0 + 1)
        assert state.etag != before
        assert ledger.release_lease(lease_a) is False  # given up already: the holder's release is a no-op
        lease_b = ledger.acquire_lease(GW, DS, "owner-b", T0 + 2, 60.0)  # free at once, not at expiry
        assert lease_b is not None
        with pytest.raises(LeaseLost):  # a lost lease writes nothing, the holder's lease included
            ledger.record_applied(lease_a, SECRET, V2, T0 + 3, release=True)
        state = ledger.target_state(GW, DS)
        assert state.lease_owner == "owner-b" and state.holds(SECRET, V1)

    def test_expired_lease_is_taken_over_and_old_owner_writes_raise(self, ledger: Ledger) -> None:
        lease_a = self._lease(ledger, "owner-a", T0, ttl=60.0)
        ledger.record_applied(lease_a, SECRET, V1, T0 + 1)
        lease_b = ledger.acquire_lease(GW, DS, "owner-b", T0 + 60.0, 60.0)
        assert lease_b is not None and lease_b.lease_id != lease_a.lease_id
        assert ledger.target_state(GW, DS).lease_owner == "owner-b"

        with pytest.raises(LeaseLost):
            ledger.record_applied(lease_a, SECRET, V2, T0 + 61)
        with pytest.raises(LeaseLost):
            ledger.record_attempt(lease_a, T0 + 61)
        with pytest.raises(LeaseLost):
            ledger.renew_lease(lease_a, T0 + 61, 60.0)
        assert ledger.release_lease(lease_a) is False
        assert ledger.acquire_lease(GW, DS, "owner-a", T0 + 62, 60.0) is None

        state = ledger.target_state(GW, DS)
        assert (state.applied_version, state.applied_at) == (V1, T0 + 1)  # the stale write did not land
        assert state.lease_owner == "owner-b"
        ledger.record_applied(lease_b, SECRET, V2, T0 + 63)
        assert ledger.target_state(GW, DS).applied_version == V2

    def test_expired_lease_nobody_took_still_authorises_its_holder(self, ledger: Ledger) -> None:
        lease = self._lease(ledger, "owner-a", T0, ttl=10.0)
        ledger.record_applied(lease, SECRET, V1, T0 + 100)
        renewed = ledger.renew_lease(lease, T0 + 101, 10.0)
        assert renewed.expires == T0 + 111 and renewed.lease_id == lease.lease_id
        assert ledger.acquire_lease(GW, DS, "owner-b", T0 + 105, 10.0) is None

    def test_rejection_from_a_lost_lease_is_still_recorded(self, ledger: Ledger) -> None:
        lease_a = self._lease(ledger, "owner-a", T0, ttl=60.0)
        assert ledger.acquire_lease(GW, DS, "owner-b", T0 + 60, 60.0) is not None
        with pytest.raises(LeaseLost):
            ledger.record_rejected(lease_a, SECRET, V1, T0 + 61)
        assert ledger.target_state(GW, DS).is_rejected(V1)

    def test_released_lease_is_free_for_another_owner(self, ledger: Ledger) -> None:
        lease_a = self._lease(ledger, "owner-a", T0, ttl=60.0)
        assert ledger.release_lease(lease_a) is True
        assert ledger.target_state(GW, DS).lease_owner is None
        assert ledger.acquire_lease(GW, DS, "owner-b", T0 + 1, 60.0) is not None
        with pytest.raises(LeaseLost):
            ledger.record_applied(lease_a, SECRET, V1, T0 + 2)

    def test_renew_extends_the_lease(self, ledger: Ledger) -> None:
        lease = self._lease(ledger, "owner-a", T0, ttl=60.0)
        renewed = ledger.renew_lease(lease, T0 + 50, 60.0)
        assert renewed.expires == T0 + 110
        assert ledger.acquire_lease(GW, DS, "owner-b", T0 + 100, 60.0) is None
        assert ledger.acquire_lease(GW, DS, "owner-b", T0 + 110, 60.0) is not None

    def test_threads_racing_for_a_lease_get_exactly_one_winner(self, ledger: Ledger) -> None:
        leases = race(16, lambda i: ledger.acquire_lease(GW, DS, f"owner-{i}", T0, 60.0))
        winners = [lease for lease in leases if lease is not None]
        assert len(winners) == 1
        assert ledger.target_state(GW, DS).lease_owner == winners[0].owner

    def test_threads_racing_for_an_expired_lease_get_exactly_one_winner(self, ledger: Ledger) -> None:
        self._lease(ledger, "crashed", T0, ttl=5.0)
        leases = race(16, lambda i: ledger.acquire_lease(GW, DS, f"owner-{i}", T0 + 10, 60.0))
        assert sum(lease is not None for lease in leases) == 1

    def test_processes_racing_for_leases_get_exactly_one_winner(self, make_ledger: LedgerFactory) -> None:
        targets = 25
        outcome = _run_processes(_process_race_worker, make_ledger, targets)
        (won_0, seen_0), (won_1, seen_1) = outcome["proc-0"], outcome["proc-1"]
        assert sorted(won_0 + won_1) == list(range(targets))  # every target: exactly one winner
        assert sorted(seen_0 + seen_1) == list(range(targets))  # every event: exactly one first sight
        ledger = make_ledger()
        try:
            for i in range(targets):
                expected = "proc-0" if i in won_0 else "proc-1"
                assert ledger.target_state(f"gw-{i}", "ds").lease_owner == expected
        finally:
            ledger.close()

    # -- applied, rejected, attempts -----------------------------------------------------------

    def test_applied_version_survives_reopening(self, make_ledger: LedgerFactory) -> None:
        first = make_ledger()
        lease = self._lease(first)
        first.record_applied(lease, SECRET, V1, T0 + 5)
        first.close()
        second = make_ledger()
        try:
            state = second.target_state(GW, DS)
            assert (state.applied_secret, state.applied_version, state.applied_at) == (SECRET, V1, T0 + 5)
            assert state.holds(SECRET, V1)
        finally:
            second.close()

    def test_forgetting_the_applied_version_keeps_rejections_attempts_and_the_lease(
        self, ledger: Ledger
    ) -> None:
        assert ledger.forget_applied(GW, DS) is False  # never written: nothing to forget
        lease = self._lease(ledger)
        ledger.record_rejected(lease, SECRET, V1, T0 + 1)
        ledger.record_attempt(lease, T0 + 2)
        ledger.record_applied(lease, SECRET, V2, T0 + 3)
        other = ledger.acquire_lease(GW, DS, "owner-b", T0 + 10, 60.0)
        assert other is None  # owner-a still holds it; forgetting needs no lease

        assert ledger.forget_applied(GW.lower(), DS.upper()) is True
        state = ledger.target_state(GW, DS)
        assert (state.applied_secret, state.applied_version, state.applied_at) == (None, None, None)
        assert not state.holds(SECRET, V2)
        assert state.is_rejected(V1) and state.attempts == (T0 + 2,)
        assert state.lease_owner == "owner-a"
        assert ledger.forget_applied(GW, DS) is False
        ledger.record_applied(lease, SECRET, V2, T0 + 20)  # the holder writes on as before
        assert ledger.target_state(GW, DS).holds(SECRET, V2)

    def test_rejected_versions_accumulate_and_survive_reopening(self, make_ledger: LedgerFactory) -> None:
        first = make_ledger()
        lease = self._lease(first)
        first.record_rejected(lease, SECRET, V1, T0 + 1)
        first.record_rejected(lease, SECRET, V2, T0 + 2)
        first.record_rejected(lease, SECRET, V1.upper(), T0 + 3)  # again: no duplicate, time kept
        first.record_applied(lease, SECRET, V3, T0 + 4)  # applying another version clears nothing
        first.close()
        second = make_ledger()
        try:
            state = second.target_state(GW, DS)
            assert state.rejected_versions == {V1, V2}
            assert state.is_rejected(V2.upper()) and not state.is_rejected(V3)
            assert {(r.version, r.secret, r.at) for r in state.rejections} == {
                (V1, SECRET, T0 + 1),
                (V2, SECRET, T0 + 2),
            }
            lease = self._lease(second, "owner-b", T0 + 100)
            second.record_rejected(lease, SECRET, V3, T0 + 101)
            assert second.target_state(GW, DS).rejected_versions == {V1, V2, V3}
        finally:
            second.close()

    def test_rejections_are_per_target(self, ledger: Ledger) -> None:
        lease = self._lease(ledger)
        ledger.record_rejected(lease, SECRET, V1, T0)
        assert not ledger.target_state(GW, "other-datasource").is_rejected(V1)

    # -- the intent of a presentation (recorded before it is sent) ------------------------------

    @staticmethod
    def _intent(lease: Lease, at: float = T0) -> Intent:
        return Intent(SECRET, V1, ACCOUNT, HOST, at, lease.lease_id)

    def test_an_intent_is_kept_until_its_own_verdict_is_recorded(self, ledger: Ledger) -> None:
        lease = ledger.acquire_lease(GW, DS, "run-a", T0, 30.0)
        assert lease is not None
        ledger.record_attempt(lease, T0, intent=self._intent(lease))
        state = ledger.target_state(GW, DS)
        assert state.intent == self._intent(lease) and state.attempts == (T0,)
        ledger.record_applied(lease, SECRET, V1, T0 + 1)
        assert ledger.target_state(GW, DS).intent is None  # the verdict is recorded: it goes

        ledger.record_attempt(lease, T0 + 2, intent=self._intent(lease, T0 + 2))
        ledger.record_rejected(lease, SECRET, V1, T0 + 3)
        assert ledger.target_state(GW, DS).intent is None
        ledger.record_attempt(lease, T0 + 4, intent=self._intent(lease, T0 + 4))
        ledger.clear_intent(lease)
        assert ledger.target_state(GW, DS).intent is None

    def test_an_intent_left_by_a_dead_holder_survives_until_the_next_holder_doubts_it(
        self, ledger: Ledger
    ) -> None:
        dead = ledger.acquire_lease(GW, DS, "run-a", T0, 30.0)
        assert dead is not None
        ledger.record_attempt(dead, T0, intent=self._intent(dead))
        # The worker died: its lease expires, another run takes the target over.
        lease = ledger.acquire_lease(GW, DS, "run-b", T0 + 31, 30.0)
        assert lease is not None and lease.lease_id != dead.lease_id
        left = ledger.target_state(GW, DS).intent
        assert left == self._intent(dead)
        ledger.clear_intent(lease)  # only its own
        ledger.record_applied(lease, SECRET, V1, T0 + 32)
        assert ledger.target_state(GW, DS).intent == left  # another lease's verdict does not resolve it
        ledger.doubt_intent(lease, left)
        assert ledger.target_state(GW, DS).intent is None
        with pytest.raises(LeaseLost):
            ledger.doubt_intent(dead, left)
        with pytest.raises(ValueError):
            ledger.record_attempt(lease, T0 + 33, intent=self._intent(dead))  # not its own lease

    def test_a_stale_writers_attempt_keeps_no_intent(self, ledger: Ledger) -> None:
        dead = ledger.acquire_lease(GW, DS, "run-a", T0, 30.0)
        lease = ledger.acquire_lease(GW, DS, "run-b", T0 + 31, 30.0)
        assert dead is not None and lease is not None
        with pytest.raises(LeaseLost):
            ledger.record_attempt(dead, T0 + 32, intent=self._intent(dead, T0 + 32))
        state = ledger.target_state(GW, DS)
        assert state.intent is None and T0 + 32 in state.attempts  # the attempt counts all the same

    def test_attempts_since_counts_within_the_window_only(self, ledger: Ledger) -> None:
        lease = self._lease(ledger, ttl=3600.0)
        for t in (T0 + 10, T0 + 20, T0 + 30, T0 + 40):
            ledger.record_attempt(lease, t)
        assert ledger.attempts_since(GW, DS, T0) == 4
        assert ledger.attempts_since(GW, DS, T0 + 20) == 3  # inclusive bound
        assert ledger.attempts_since(GW, DS, T0 + 35) == 1
        assert ledger.attempts_since(GW, DS, T0 + 41) == 0
        assert ledger.attempts_since(GW.lower(), DS.lower(), T0 + 15) == 3
        assert ledger.target_state(GW, DS).attempts == (T0 + 10, T0 + 20, T0 + 30, T0 + 40)

    def test_attempt_history_is_bounded(self, ledger: Ledger) -> None:
        lease = self._lease(ledger, ttl=3600.0)
        for i in range(MAX_ATTEMPTS_KEPT + 6):
            ledger.record_attempt(lease, T0 + i)
        attempts = ledger.target_state(GW, DS).attempts
        assert len(attempts) == MAX_ATTEMPTS_KEPT
        assert attempts[-1] == T0 + MAX_ATTEMPTS_KEPT + 5  # the newest are kept
        assert ledger.attempts_since(GW, DS, T0 + MAX_ATTEMPTS_KEPT) == 6

    def test_attempts_recorded_from_many_threads_are_all_kept(self, ledger: Ledger) -> None:
        lease = self._lease(ledger, ttl=3600.0)
        race(16, lambda i: ledger.record_attempt(lease, T0 + i))
        assert ledger.attempts_since(GW, DS, T0) == 16

    # -- events -------------------------------------------------------------------------------

    def test_event_is_seen_once(self, ledger: Ledger) -> None:
        assert ledger.mark_event_seen("EVT-1", T0) is True
        assert ledger.mark_event_seen("evt-1", T0 + 1) is False
        assert ledger.mark_event_seen("EVT-1", T0 + 2) is False
        assert ledger.mark_event_seen("evt-2", T0 + 2) is True

    def test_event_seen_reads_without_marking(self, ledger: Ledger) -> None:
        assert ledger.event_seen("EVT-3") is False
        assert ledger.event_seen("EVT-3") is False  # asking does not mark it
        assert ledger.mark_event_seen("EVT-3", T0) is True
        assert ledger.event_seen("evt-3") is True

    def test_threads_racing_on_one_event_see_it_new_exactly_once(self, ledger: Ledger) -> None:
        firsts = race(16, lambda i: ledger.mark_event_seen("dup-event", T0 + i))
        assert firsts.count(True) == 1

    def test_prune_removes_only_old_events(self, ledger: Ledger) -> None:
        ledger.mark_event_seen("old", T0)
        ledger.mark_event_seen("edge", T0 + 100)
        ledger.mark_event_seen("new", T0 + 200)
        result = ledger.prune(T0 + 1100, retention_seconds=1000)
        assert result.events == 1
        assert ledger.mark_event_seen("edge", T0 + 1100) is False
        assert ledger.mark_event_seen("new", T0 + 1100) is False
        assert ledger.mark_event_seen("old", T0 + 1100) is True  # forgotten, so new again

    def test_prune_keeps_target_state_and_recent_outcomes(self, ledger: Ledger) -> None:
        lease = self._lease(ledger)
        ledger.record_rejected(lease, SECRET, V1, T0)
        ledger.add_outcome(Outcome(time=T0, action="ancient"))
        ledger.add_outcome(Outcome(time=T0 + 90 * 86400, action="recent"))
        result = ledger.prune(T0 + 100 * 86400, 86400, outcome_retention_seconds=30 * 86400)
        assert result.outcomes == 1
        assert [o.action for o in ledger.outcomes()] == ["recent"]
        assert ledger.target_state(GW, DS).is_rejected(V1)

    # -- outcomes -----------------------------------------------------------------------------

    def test_outcomes_newest_first_and_filtered_by_since(self, ledger: Ledger) -> None:
        for t, action in ((T0 + 20, "b"), (T0 + 10, "a"), (T0 + 30, "c"), (T0 + 30, "d")):
            ledger.add_outcome(Outcome(time=t, action=action))
        assert [o.action for o in ledger.outcomes()] == ["d", "c", "b", "a"]  # same time: later first
        assert [o.action for o in ledger.outcomes(since=T0 + 20)] == ["d", "c", "b"]
        assert [o.action for o in ledger.outcomes(limit=2)] == ["d", "c"]
        assert ledger.outcomes(since=T0 + 31) == []

    def test_outcome_round_trips_every_field(self, ledger: Ledger) -> None:
        outcome = Outcome(
            time=T0,
            trigger="keyvault-event",
            correlation_id="corr-1",
            binding="sales-sql",
            secret_name=SECRET,
            secret_version=V1,
            gateway_id=GW,
            datasource_id=DS,
            workspace_id="ws-1",
            dataset_id="ds-1",
            action="patched",
            reason="credential failure",
            refresh_request_id="req-1",
            refresh_state="Completed",
            duration=1.25,
            account=ACCOUNT,
        )
        ledger.add_outcome(outcome)
        assert ledger.outcomes() == [outcome]

    # -- refresh budget -----------------------------------------------------------------------

    def test_refresh_posts_count_per_dataset_and_day(self, ledger: Ledger) -> None:
        day = utc_day(T0)
        assert day == "2025-06-15"
        assert ledger.refresh_posts("DATASET-1", day) == 0
        assert ledger.record_refresh_post("DATASET-1", day) == 1
        assert ledger.record_refresh_post("dataset-1", day) == 2
        assert ledger.record_refresh_post("dataset-1", utc_day(T0 + 86400)) == 1
        assert ledger.record_refresh_post("dataset-2", day) == 1
        assert ledger.refresh_posts("dataset-1", day) == 2

    def test_refresh_post_counter_is_atomic_under_threads(self, ledger: Ledger) -> None:
        day = utc_day(T0)
        counts = race(16, lambda i: ledger.record_refresh_post("dataset-1", day))
        assert sorted(counts) == list(range(1, 17))
        assert ledger.refresh_posts("dataset-1", day) == 16

    def test_prune_drops_refresh_counters_before_yesterday(self, ledger: Ledger) -> None:
        for offset in (0, 1, 2):
            ledger.record_refresh_post("dataset-1", utc_day(T0 + offset * 86400))
        ledger.prune(T0 + 2 * 86400, 86400)
        assert ledger.refresh_posts("dataset-1", utc_day(T0)) == 0
        assert ledger.refresh_posts("dataset-1", utc_day(T0 + 86400)) == 1
        assert ledger.refresh_posts("dataset-1", utc_day(T0 + 2 * 86400)) == 1

    # -- presentations per account --------------------------------------------------------------

    @staticmethod
    def _claim(
        ledger: Ledger,
        owner: str = "run-a",
        now: float = T0,
        *,
        locator: str = HOST,
        version: str = V1,
        account: str = ACCOUNT,
        ttl: float = 60.0,
        request: str = "",
    ) -> tuple[Claim, AccountVersion]:
        return ledger.claim_presentation(
            account,
            SECRET,
            version,
            locator=locator,
            target=TARGET,
            owner=owner,
            now=now,
            ttl=ttl,
            request=request,
        )

    @staticmethod
    def _record(
        ledger: Ledger,
        verdict: Any,
        owner: str = "run-a",
        now: float = T0 + 1,
        *,
        locator: str = HOST,
        version: str = V1,
        reason: str = "the source said so",
        sent_at: float | None = None,
        request: str = "",
    ) -> AccountVersion:
        return ledger.record_presentation(
            ACCOUNT,
            SECRET,
            version,
            owner=owner,
            locator=locator,
            verdict=verdict,
            reason=reason,
            now=now,
            sent_at=sent_at,
            request=request,
        )

    def test_unknown_account_version_has_the_empty_state(self, ledger: Ledger) -> None:
        state = ledger.account_version(ACCOUNT.upper(), SECRET.upper(), V1.upper())
        assert state == AccountVersion(account=ACCOUNT, secret=SECRET, version=V1)
        assert state.etag is None and state.presentations == 0 and state.accepted == ()
        assert ledger.account_versions() == [] and ledger.account_versions(with_verdict_only=False) == []

    def test_first_claim_is_granted_and_counts_a_presentation(self, ledger: Ledger) -> None:
        claim, state = self._claim(ledger, "run-a", T0, ttl=30.0)
        assert claim is Claim.GRANTED
        assert (state.probe_owner, state.probe_locator, state.probe_target) == ("run-a", HOST, TARGET)
        assert state.probe_expires == T0 + 30.0 and state.presentations == 1 and state.verdict is None
        assert state.etag is not None
        assert ledger.account_version(ACCOUNT, SECRET, V1) == state

    def test_another_owner_is_busy_while_the_probe_lasts(self, ledger: Ledger) -> None:
        _, granted = self._claim(ledger, "run-a", T0)
        for now in (T0, T0 + 1, T0 + 59.9):
            claim, state = self._claim(ledger, "run-b", now, locator="other.contoso.local")
            assert claim is Claim.BUSY
            assert state == granted  # nothing written
        assert ledger.account_version(ACCOUNT, SECRET, V1).presentations == 1

    def test_the_same_owner_is_granted_again_without_a_new_presentation(self, ledger: Ledger) -> None:
        self._claim(ledger, "run-a", T0)
        claim, state = self._claim(ledger, "run-a", T0 + 50)
        assert claim is Claim.GRANTED
        assert state.probe_expires == T0 + 110 and state.presentations == 1
        assert self._claim(ledger, "run-b", T0 + 100)[0] is Claim.BUSY  # renewed, so still busy

    def test_one_owner_presents_to_one_target_at_a_time(self, ledger: Ledger) -> None:
        """A run's second target of the account waits for the first one's verdict: two probes at
        once would be two possible failed sign-ins."""
        self._claim(ledger, "run-a", T0)
        claim, state = ledger.claim_presentation(
            ACCOUNT,
            SECRET,
            V1,
            locator="other.contoso.local",
            target="g/second",
            owner="run-a",
            now=T0,
            ttl=60.0,
        )
        assert claim is Claim.BUSY and state.presentations == 1 and state.probe_target == TARGET

    def test_a_released_probe_counts_nothing_and_lets_the_next_claim_through(self, ledger: Ledger) -> None:
        self._claim(ledger, "run-a", T0)
        assert ledger.release_presentation(ACCOUNT, SECRET, V1, owner="run-b").probe_owner == "run-a"
        released = ledger.release_presentation(ACCOUNT, SECRET, V1, owner="run-a")
        assert released.probe_owner is None and released.verdict is None
        claim, state = self._claim(ledger, "run-b", T0 + 1)
        assert claim is Claim.GRANTED and state.probe_owner == "run-b"
        # A released probe never turns into "in doubt" when its time would have run out.
        assert self._claim(ledger, "run-c", T0 + 1000)[0] is Claim.IN_DOUBT  # run-b's expired, not run-a's
        assert "run-b" in (ledger.account_version(ACCOUNT, SECRET, V1).reason or "")

    def test_an_expired_probe_of_another_owner_makes_the_version_in_doubt(self, ledger: Ledger) -> None:
        self._claim(ledger, "run-a", T0, ttl=60.0)
        claim, state = self._claim(ledger, "run-b", T0 + 60.0)  # now >= expires: expired
        assert claim is Claim.IN_DOUBT
        assert state.verdict == "in-doubt" and state.verdict_at == T0 + 60.0
        assert state.reason is not None and "run-a" in state.reason and TARGET in state.reason
        assert state.probe_owner is None and state.probe_expires is None and state.probe_target is None
        assert state.presentations == 1
        assert ledger.account_version(ACCOUNT, SECRET, V1) == state
        for owner in ("run-a", "run-b", "run-c"):  # nobody presents it again, the old owner neither
            again, unchanged = self._claim(ledger, owner, T0 + 100)
            assert again is Claim.IN_DOUBT and unchanged == state

    def test_a_verdict_is_checked_before_acceptance_and_acceptance_before_a_probe(
        self, ledger: Ledger
    ) -> None:
        other = "other.contoso.local"
        self._claim(ledger, "run-a", T0)
        self._record(ledger, "accepted", "run-a", T0 + 1)
        assert self._claim(ledger, "run-b", T0 + 2, locator=other)[0] is Claim.GRANTED
        assert self._claim(ledger, "run-c", T0 + 3)[0] is Claim.ACCEPTED  # despite run-b's probe
        assert self._claim(ledger, "run-c", T0 + 3, locator=other)[0] is Claim.BUSY
        self._record(ledger, "rejected", "run-b", T0 + 4, locator=other)
        claim, state = self._claim(ledger, "run-c", T0 + 5)  # accepted here, but rejected by the account
        assert claim is Claim.REJECTED and state.accepted == (HOST,)

    def test_acceptance_adds_the_locator_once_and_clears_the_probe(self, ledger: Ledger) -> None:
        self._claim(ledger, "run-a", T0)
        first = self._record(ledger, "accepted", "run-a", T0 + 1)
        second = self._record(ledger, "accepted", "run-b", T0 + 2)
        assert first.accepted == second.accepted == (HOST,)
        assert first.probe_owner is None and first.verdict is None
        assert second.etag == first.etag  # an acceptance already known writes nothing (fan-out)
        for owner in ("run-a", "run-b", "run-c"):
            claim, state = self._claim(ledger, owner, T0 + 3)
            assert claim is Claim.ACCEPTED and state == second  # fan-out writes nothing
        assert self._claim(ledger, "run-c", T0 + 4, locator="")[0] is Claim.GRANTED  # another locator
        state = self._record(ledger, "accepted", "run-c", T0 + 5, locator="")
        assert state.accepted == (HOST, "") and state.presentations == 2

    def test_acceptance_clears_in_doubt_but_keeps_a_rejection(self, ledger: Ledger) -> None:
        self._claim(ledger, "run-a", T0)
        assert self._record(ledger, "in-doubt", "run-a", T0 + 1).verdict == "in-doubt"
        state = self._record(ledger, "accepted", "run-b", T0 + 2, reason="accepted by the source")
        assert state.verdict is None and state.accepted == (HOST,)
        assert (state.reason, state.verdict_at) == ("accepted by the source", T0 + 2)
        assert self._claim(ledger, "run-c", T0 + 3)[0] is Claim.ACCEPTED

        self._claim(ledger, "run-a", T0, version=V2)
        self._record(ledger, "rejected", "run-a", T0 + 1, version=V2, reason="login failed")
        state = self._record(ledger, "accepted", "run-b", T0 + 2, version=V2)
        assert state.verdict == "rejected" and state.reason == "login failed" and state.verdict_at == T0 + 1
        assert state.accepted == (HOST,)
        assert self._claim(ledger, "run-c", T0 + 3, version=V2)[0] is Claim.REJECTED

    def test_a_rejection_overrides_in_doubt_and_in_doubt_never_overrides_a_rejection(
        self, ledger: Ledger
    ) -> None:
        self._record(ledger, "in-doubt", "run-a", T0 + 1, reason="read timeout")
        state = self._record(ledger, "rejected", "run-b", T0 + 2, reason="login failed")
        assert (state.verdict, state.reason, state.verdict_at) == ("rejected", "login failed", T0 + 2)
        state = self._record(ledger, "in-doubt", "run-c", T0 + 3, reason="connection dropped")
        assert (state.verdict, state.reason, state.verdict_at) == ("rejected", "login failed", T0 + 2)
        # a later in-doubt replaces an earlier in-doubt's explanation (the presenter knows better)
        self._record(ledger, "in-doubt", "run-a", T0 + 1, version=V2, reason="stopped")
        state = self._record(ledger, "in-doubt", "run-a", T0 + 4, version=V2, reason="read timeout")
        assert (state.verdict, state.reason, state.verdict_at) == ("in-doubt", "read timeout", T0 + 4)

    def test_a_verdict_is_recorded_even_when_the_probe_was_lost_or_taken(self, ledger: Ledger) -> None:
        self._claim(ledger, "run-a", T0, ttl=10.0)
        assert self._claim(ledger, "run-b", T0 + 10)[0] is Claim.IN_DOUBT  # run-a's probe expired
        state = self._record(ledger, "rejected", "run-a", T0 + 11, reason="login failed")
        assert state.verdict == "rejected" and state.reason == "login failed"  # the late answer is a fact

        self._claim(ledger, "run-a", T0, version=V2)
        ledger.allow_again(
            ACCOUNT, SECRET, V2, request="req-1", now=T0 + 1, reason="operator"
        )  # clears the probe
        assert self._claim(ledger, "run-b", T0 + 2, version=V2)[0] is Claim.GRANTED
        state = self._record(ledger, "in-doubt", "run-a", T0 + 3, version=V2, reason="read timeout")
        assert state.verdict == "in-doubt" and state.probe_owner == "run-b"  # only the owner's probe goes
        state = self._record(ledger, "rejected", "run-b", T0 + 4, version=V2)
        assert state.probe_owner is None and state.verdict == "rejected"

    def test_allow_again_grants_one_more_presentation(self, ledger: Ledger) -> None:
        self._claim(ledger, "run-a", T0)
        self._record(ledger, "accepted", "run-a", T0 + 1, locator="other.contoso.local")
        self._claim(ledger, "run-a", T0 + 2)
        self._record(ledger, "rejected", "run-a", T0 + 3)
        assert self._claim(ledger, "run-b", T0 + 4)[0] is Claim.REJECTED
        granted, state = ledger.allow_again(
            ACCOUNT, SECRET, V1, request="req-1", now=T0 + 5, reason="password fixed at the source"
        )
        assert granted and state.verdict is None and state.overrides == 1 and state.probe_owner is None
        assert (state.reason, state.verdict_at) == ("password fixed at the source", T0 + 5)
        assert state.accepted == ("other.contoso.local",) and state.presentations == 2
        assert ledger.account_version(ACCOUNT, SECRET, V1) == state
        assert self._claim(ledger, "run-b", T0 + 6)[0] is Claim.GRANTED
        assert self._claim(ledger, "run-c", T0 + 7)[0] is Claim.BUSY  # once, not for everybody
        assert ledger.account_version(ACCOUNT, SECRET, V1).presentations == 3

    def test_allow_again_clears_an_in_flight_probe_and_an_unknown_version(self, ledger: Ledger) -> None:
        self._claim(ledger, "run-a", T0)
        _, state = ledger.allow_again(ACCOUNT, SECRET, V1, request="req-1", now=T0 + 1, reason="operator")
        assert state.probe_owner is None and state.overrides == 1
        _, state = ledger.allow_again(ACCOUNT, SECRET, V3, request="req-1", now=T0 + 1, reason="operator")
        assert state.overrides == 1 and state.etag is not None and state.presentations == 0

    def test_an_operator_request_lifts_a_verdict_once_whatever_its_parts_and_redeliveries(
        self, ledger: Ledger
    ) -> None:
        self._claim(ledger, "run-a", T0)
        self._record(ledger, "rejected", "run-a", T0 + 1)
        granted, state = ledger.allow_again(ACCOUNT, SECRET, V1, request="req-1", now=T0 + 2, reason="op")
        assert granted and state.verdict is None and state.grants == ("req-1",)
        assert self._claim(ledger, "part-1", T0 + 3)[0] is Claim.GRANTED  # the one presentation
        self._record(ledger, "rejected", "part-1", T0 + 4, reason="still wrong")
        # the request's other parts, re-queues and redeliveries find it used
        for now in (T0 + 5, T0 + 6):
            again, state = ledger.allow_again(ACCOUNT, SECRET, V1, request="req-1", now=now, reason="op")
            assert not again and state.verdict == "rejected" and state.reason == "still wrong"
            assert self._claim(ledger, "part-2", now)[0] is Claim.REJECTED
        granted, state = ledger.allow_again(ACCOUNT, SECRET, V1, request="req-2", now=T0 + 7, reason="op")
        assert granted and state.overrides == 2 and state.grants == ("req-1", "req-2")

    def test_threads_racing_to_use_one_request_get_exactly_one_grant(self, ledger: Ledger) -> None:
        self._record(ledger, "rejected", "run-a", T0)
        grants = race(
            12,
            lambda i: ledger.allow_again(ACCOUNT, SECRET, V1, request="req-1", now=T0 + 1, reason="op")[0],
        )
        assert sorted(grants) == [False] * 11 + [True]
        assert ledger.account_version(ACCOUNT, SECRET, V1).overrides == 1

    def test_a_granted_request_makes_earlier_acceptances_license_nothing(self, ledger: Ledger) -> None:
        self._claim(ledger, "run-a", T0)
        self._record(ledger, "accepted", "run-a", T0 + 1)
        self._record(ledger, "rejected", "run-b", T0 + 2, locator="other.contoso.local")
        ledger.allow_again(ACCOUNT, SECRET, V1, request="req-1", now=T0 + 3, reason="op")
        # accepted here before, but the version was contradicted since: one probe again
        assert self._claim(ledger, "run-c", T0 + 4)[0] is Claim.GRANTED
        assert self._claim(ledger, "run-d", T0 + 4)[0] is Claim.BUSY
        self._record(ledger, "accepted", "run-c", T0 + 5, sent_at=T0 + 4)
        assert self._claim(ledger, "run-d", T0 + 6)[0] is Claim.ACCEPTED

    def test_an_acceptance_licenses_the_parts_of_its_own_request_only(self, ledger: Ledger) -> None:
        self._claim(ledger, "part-1", T0, request="req-a")
        self._record(ledger, "accepted", "part-1", T0 + 1, request="req-a")
        assert self._claim(ledger, "part-2", T0 + 2, request="req-a")[0] is Claim.ACCEPTED
        # a later sweep did not see that acceptance: it checks the version on one target first
        claim, state = self._claim(ledger, "sweep", T0 + 3, request="req-b")
        assert claim is Claim.GRANTED and state.presentations == 2
        assert self._claim(ledger, "sweep-2", T0 + 3, request="req-b")[0] is Claim.BUSY
        state = self._record(ledger, "accepted", "sweep", T0 + 4, request="req-b")
        assert {(where, who) for where, _, who in state.licences} == {(HOST, "req-a"), (HOST, "req-b")}
        assert self._claim(ledger, "sweep-2", T0 + 5, request="req-b")[0] is Claim.ACCEPTED

    def test_an_acceptance_licenses_followers_for_a_while_only(self, ledger: Ledger) -> None:
        self._claim(ledger, "run-a", T0)
        state = self._record(ledger, "accepted", "run-a", T0 + 2, sent_at=T0 + 1)
        assert state.licence(HOST, "") == T0 + 1
        last = T0 + 1 + FANOUT_LICENCE_SECONDS
        assert self._claim(ledger, "run-b", last - 1)[0] is Claim.ACCEPTED
        claim, state = self._claim(ledger, "run-b", last)
        assert claim is Claim.GRANTED and state.presentations == 2  # a probe checks it again
        assert self._claim(ledger, "run-c", last)[0] is Claim.BUSY
        self._record(ledger, "accepted", "run-b", last + 1, sent_at=last)
        assert self._claim(ledger, "run-c", last + 2)[0] is Claim.ACCEPTED

    def test_a_lost_answer_contradicts_every_earlier_acceptance(self, ledger: Ledger) -> None:
        self._claim(ledger, "run-a", T0)
        self._record(ledger, "accepted", "run-a", T0 + 1)
        state = self._record(ledger, "in-doubt", "run-b", T0 + 10, reason="read timeout")
        assert state.verdict == "in-doubt" and state.contradicted_at == T0 + 10
        assert self._claim(ledger, "run-c", T0 + 11)[0] is Claim.IN_DOUBT
        # an acceptance of a presentation sent before the doubt was recorded proves nothing after it
        state = self._record(ledger, "accepted", "run-d", T0 + 12, sent_at=T0 + 9)
        assert state.verdict == "in-doubt"
        state = self._record(ledger, "accepted", "run-e", T0 + 13, sent_at=T0 + 11)
        assert state.verdict is None and state.licence(HOST, "") == T0 + 11
        assert self._claim(ledger, "run-f", T0 + 14)[0] is Claim.ACCEPTED

    def test_a_rejection_is_a_contradiction_that_stays(self, ledger: Ledger) -> None:
        self._record(ledger, "accepted", "run-a", T0 + 1)
        state = self._record(ledger, "rejected", "run-b", T0 + 2)
        assert state.contradicted_at == T0 + 2
        state = self._record(ledger, "in-doubt", "run-c", T0 + 3)
        assert state.verdict == "rejected" and state.contradicted_at == T0 + 3

    def test_keys_and_locators_are_normalised(self, ledger: Ledger) -> None:
        claim, state = ledger.claim_presentation(
            f"  {ACCOUNT.upper()} ",
            f" {SECRET.upper()}",
            V1.upper(),
            locator=f" {HOST.upper()} ",
            target=TARGET,
            owner=" run-a ",
            now=T0,
            ttl=60.0,
        )
        assert claim is Claim.GRANTED
        assert (state.account, state.secret, state.version) == (ACCOUNT, SECRET, V1)
        assert (state.probe_locator, state.probe_owner) == (HOST, "run-a")
        state = ledger.record_presentation(
            ACCOUNT.title(),
            SECRET,
            V1,
            owner="run-a",
            locator=HOST.upper(),
            verdict="accepted",
            reason="",
            now=T0,
        )
        assert state.accepted == (HOST,) and state.probe_owner is None
        assert self._claim(ledger, "run-b", T0 + 1, locator=f"\t{HOST.title()}")[0] is Claim.ACCEPTED

    def test_bad_arguments_are_refused(self, ledger: Ledger) -> None:
        def claim(**overrides: Any) -> tuple[Claim, AccountVersion]:
            args: dict[str, Any] = {
                "account": ACCOUNT,
                "secret": SECRET,
                "version": V1,
                "locator": HOST,
                "target": TARGET,
                "owner": "run-a",
                "now": T0,
                "ttl": 60.0,
            }
            args.update(overrides)
            return ledger.claim_presentation(
                args.pop("account"), args.pop("secret"), args.pop("version"), **args
            )

        bad_claims: list[dict[str, Any]] = [
            {"account": " "},
            {"secret": ""},
            {"version": "\t"},
            {"account": "a" * (MAX_ACCOUNT_LENGTH + 1)},
            {"owner": " "},
            {"now": float("nan")},
            {"now": float("inf")},
            {"ttl": 0.0},
            {"ttl": -1.0},
            {"ttl": float("nan")},
        ]
        for overrides in bad_claims:
            with pytest.raises(ValueError):
                claim(**overrides)
        with pytest.raises(ValueError):
            ledger.account_version("", SECRET, V1)
        with pytest.raises(ValueError):
            self._record(ledger, "maybe")
        with pytest.raises(ValueError):
            self._record(ledger, "accepted", owner="")
        with pytest.raises(ValueError):
            self._record(ledger, "rejected", now=float("nan"))
        with pytest.raises(ValueError):
            ledger.allow_again(ACCOUNT, SECRET, V1, request="req-1", now=T0, reason=" ")
        with pytest.raises(ValueError):
            ledger.allow_again(ACCOUNT, "", V1, request="req-1", now=T0, reason="operator")
        with pytest.raises(ValueError):
            ledger.allow_again(ACCOUNT, SECRET, V1, request="req-1", now=float("-inf"), reason="operator")
        with pytest.raises(ValueError):
            ledger.allow_again(ACCOUNT, SECRET, V1, request=" ", now=T0, reason="operator")
        with pytest.raises(ValueError):
            self._record(ledger, "accepted", now=T0, sent_at=float("nan"))
        assert ledger.account_versions(with_verdict_only=False) == []  # nothing was written
        assert claim(account="a" * MAX_ACCOUNT_LENGTH)[0] is Claim.GRANTED

    def test_accounts_are_opaque_text(self, ledger: Ledger) -> None:
        odd = ["user:contoso\\svc_pbi", "a/b#c?d", "tab\tand\u00e9\u4e2d", "secret:sql-key", "~" + "f" * 64]
        for i, account in enumerate(odd):
            claim, _ = self._claim(ledger, f"run-{i}", T0, account=account)
            assert claim is Claim.GRANTED
            ledger.record_presentation(
                account,
                SECRET,
                V1,
                owner=f"run-{i}",
                locator=HOST,
                verdict="rejected",
                reason=account,
                now=T0 + i,
            )
        for account in odd:
            state = ledger.account_version(account, SECRET, V1)
            assert (state.account, state.reason, state.verdict) == (account, account, "rejected")
        assert ledger.account_version("a/b#c", SECRET, V1).etag is None  # a different account
        assert [s.account for s in ledger.account_versions()] == odd[::-1]

    def test_verdicts_are_per_account_and_per_version(self, ledger: Ledger) -> None:
        self._claim(ledger, "run-a", T0)
        self._record(ledger, "rejected", "run-a", T0 + 1)
        assert self._claim(ledger, "run-b", T0 + 2, version=V2)[0] is Claim.GRANTED
        assert self._claim(ledger, "run-b", T0 + 2, account="secret:other")[0] is Claim.GRANTED
        other_secret = ledger.claim_presentation(
            ACCOUNT, "other-secret", V1, locator=HOST, target=TARGET, owner="run-b", now=T0, ttl=60.0
        )
        assert other_secret[0] is Claim.GRANTED

    def test_account_versions_lists_newest_verdict_first(self, ledger: Ledger) -> None:
        versions = [f"{i:032x}" for i in range(5)]
        for _i, version in enumerate(versions):
            self._claim(ledger, "run-a", T0, version=version)
        self._record(ledger, "rejected", now=T0 + 30, version=versions[0])
        self._record(ledger, "in-doubt", now=T0 + 10, version=versions[1])
        self._record(ledger, "rejected", now=T0 + 20, version=versions[2])
        self._record(ledger, "accepted", now=T0 + 40, version=versions[3])
        listed = ledger.account_versions()
        assert [(s.version, s.verdict) for s in listed] == [
            (versions[0], "rejected"),
            (versions[2], "rejected"),
            (versions[1], "in-doubt"),
        ]
        assert [s.version for s in ledger.account_versions(limit=2)] == [versions[0], versions[2]]
        assert ledger.account_versions(limit=0) == []
        every = ledger.account_versions(with_verdict_only=False)
        assert {s.version for s in every} == set(versions) and len(every) == 5
        assert [s.version for s in every[:3]] == [versions[0], versions[2], versions[1]]
        assert every[3].probe_owner == "run-a" or every[4].probe_owner == "run-a"  # never a verdict: last

    def test_every_account_write_changes_the_etag(self, ledger: Ledger) -> None:
        etags = [self._claim(ledger, "run-a", T0)[1].etag]
        etags.append(self._claim(ledger, "run-a", T0 + 1)[1].etag)  # renewal
        etags.append(self._record(ledger, "in-doubt", now=T0 + 2).etag)
        etags.append(self._record(ledger, "accepted", now=T0 + 3).etag)
        etags.append(
            ledger.allow_again(ACCOUNT, SECRET, V1, request="r", now=T0 + 4, reason="operator")[1].etag
        )
        assert None not in etags and len(set(etags)) == len(etags)
        assert ledger.account_version(ACCOUNT, SECRET, V1).etag == etags[-1]

    def test_a_long_reason_is_cut(self, ledger: Ledger) -> None:
        state = self._record(ledger, "rejected", reason="x" * (MAX_REASON_LENGTH + 50))
        assert state.reason is not None and len(state.reason) == MAX_REASON_LENGTH
        assert ledger.account_version(ACCOUNT, SECRET, V1).reason == state.reason

    def test_account_versions_survive_reopening_and_pruning(self, make_ledger: LedgerFactory) -> None:
        first = make_ledger()
        self._claim(first, "run-a", T0)
        self._record(first, "rejected", "run-a", T0 + 1)
        self._claim(first, "run-a", T0, version=V2)
        self._record(first, "accepted", "run-a", T0 + 1, version=V2)
        first.prune(T0 + 1000 * 86400, 86400, outcome_retention_seconds=86400)
        expected = (first.account_version(ACCOUNT, SECRET, V1), first.account_version(ACCOUNT, SECRET, V2))
        first.close()
        second = make_ledger()
        try:
            assert (
                second.account_version(ACCOUNT, SECRET, V1),
                second.account_version(ACCOUNT, SECRET, V2),
            ) == (expected)
            assert expected[0].verdict == "rejected" and expected[1].accepted == (HOST,)
            assert self._claim(second, "run-b", T0 + 2)[0] is Claim.REJECTED
            assert self._claim(second, "run-b", T0 + 2, version=V2)[0] is Claim.ACCEPTED
        finally:
            second.close()

    def test_threads_racing_to_claim_a_presentation_get_exactly_one_grant(self, ledger: Ledger) -> None:
        claims = race(16, lambda i: self._claim(ledger, f"run-{i}", T0)[0])
        assert sorted(claims) == sorted([Claim.GRANTED] + [Claim.BUSY] * 15)
        state = ledger.account_version(ACCOUNT, SECRET, V1)
        assert state.presentations == 1 and state.probe_owner == f"run-{claims.index(Claim.GRANTED)}"

    def test_threads_racing_on_an_expired_probe_all_find_it_in_doubt(self, ledger: Ledger) -> None:
        self._claim(ledger, "crashed", T0, ttl=5.0)
        claims = race(16, lambda i: self._claim(ledger, f"run-{i}", T0 + 10)[0])
        assert claims == [Claim.IN_DOUBT] * 16
        state = ledger.account_version(ACCOUNT, SECRET, V1)
        assert state.presentations == 1 and state.reason is not None and "crashed" in state.reason

    def test_processes_racing_to_claim_presentations_get_exactly_one_grant(
        self, make_ledger: LedgerFactory
    ) -> None:
        accounts = 20
        outcome = _run_processes(_process_claim_worker, make_ledger, accounts)
        (claims_0,), (claims_1,) = outcome["proc-0"], outcome["proc-1"]
        for i in range(accounts):
            assert sorted((claims_0[i], claims_1[i])) == ["busy", "granted"], i
        ledger = make_ledger()
        try:
            for i in range(accounts):
                state = ledger.account_version(f"account-{i}", SECRET, V1)
                winner = "proc-0" if claims_0[i] == "granted" else "proc-1"
                assert state.probe_owner == winner and state.presentations == 1
        finally:
            ledger.close()

    # -- the inventory of which datasets use which data sources, and markers --------------------

    @staticmethod
    def _dataset(
        workspace: str, dataset: str, learnt_at: float = T0, *, fingerprint: str = "a"
    ) -> DatasetRecord:
        source = InventorySource(GW, DS, "Sql", (("database", "sales"), ("server", "sql01.contoso.local")))
        return DatasetRecord(workspace, dataset, fingerprint, learnt_at, (source,))

    def test_inventory_round_trips_and_is_read_per_workspace(self, ledger: Ledger) -> None:
        assert ledger.inventory() == [] and ledger.inventory("WS-1") == []
        ledger.put_inventory(
            [self._dataset("WS-1", "DS-A"), self._dataset("ws-1", "ds-b"), self._dataset("ws-2", "ds-c")]
        )
        (a, b) = sorted(ledger.inventory("ws-1"), key=lambda r: r.dataset_id)
        assert (a.workspace_id, a.dataset_id, a.fingerprint, a.learnt_at) == ("ws-1", "ds-a", "a", T0)
        assert a.sources == (
            InventorySource(
                GW.lower(), DS.lower(), "Sql", (("database", "sales"), ("server", "sql01.contoso.local"))
            ),
        )
        assert a.sources[0].details() == {"database": "sales", "server": "sql01.contoso.local"}
        assert a.refreshable and b.dataset_id == "ds-b"
        assert sorted(r.dataset_id for r in ledger.inventory()) == ["ds-a", "ds-b", "ds-c"]

    def test_a_newer_observation_replaces_an_older_one_and_never_the_reverse(self, ledger: Ledger) -> None:
        ledger.put_inventory([self._dataset("ws", "ds", T0, fingerprint="old")])
        ledger.put_inventory([DatasetRecord("ws", "ds", "new", T0 + 10, (), refreshable=False)])
        (record,) = ledger.inventory("ws")
        assert (record.fingerprint, record.sources, record.refreshable) == ("new", (), False)
        ledger.put_inventory([self._dataset("ws", "ds", T0 + 5, fingerprint="stale")])
        assert ledger.inventory("ws")[0].fingerprint == "new"

    def test_many_datasets_of_one_workspace_are_written_and_dropped(self, ledger: Ledger) -> None:
        ledger.put_inventory(self._dataset("ws", f"ds-{i:03d}") for i in range(250))
        assert len(ledger.inventory("ws")) == 250
        ledger.drop_inventory("WS", [f"DS-{i:03d}" for i in range(0, 250, 2)] + ["never-seen"])
        assert sorted(r.dataset_id for r in ledger.inventory("ws")) == [
            f"ds-{i:03d}" for i in range(1, 250, 2)
        ]

    def test_inventory_and_markers_survive_reopening(self, make_ledger: LedgerFactory) -> None:
        ledger = make_ledger()
        try:
            assert ledger.marker("sweep-cursor") is None
            ledger.put_inventory([self._dataset("ws", "ds")])
            ledger.set_marker("Sweep-Cursor", "ws/ds-1", T0)
            ledger.set_marker("sweep-cursor", "ws/ds-2", T0 + 1)
        finally:
            ledger.close()
        ledger = make_ledger()
        try:
            assert ledger.marker("SWEEP-CURSOR") == "ws/ds-2"
            assert [r.dataset_id for r in ledger.inventory()] == ["ds"]
        finally:
            ledger.close()

    def test_a_raised_marker_only_ever_extends(self, ledger: Ledger) -> None:
        assert ledger.raise_marker("Throttle:PowerBI", T0 + 100, T0) == T0 + 100
        assert ledger.raise_marker("throttle:powerbi", T0 + 50, T0 + 1) == T0 + 100
        assert float(ledger.marker("throttle:powerbi") or "nan") == T0 + 100
        assert ledger.raise_marker("throttle:powerbi", T0 + 200, T0 + 2) == T0 + 200
        ledger.set_marker("odd", "not a number", T0)
        assert ledger.raise_marker("odd", 5.0, T0) == 5.0
        with pytest.raises(ValueError):
            ledger.raise_marker("odd", float("inf"), T0)

    def test_threads_raising_one_marker_leave_the_largest_whatever_the_order(self, ledger: Ledger) -> None:
        values = [T0 + (i * 7919) % 24 for i in range(24)]  # a shuffled order of T0 .. T0+23
        answers = race(24, lambda i: ledger.raise_marker("throttle:powerbi", values[i], T0))
        assert float(ledger.marker("throttle:powerbi") or "nan") == T0 + 23
        assert all(answer >= value for answer, value in zip(answers, values, strict=True))

    def test_threads_writing_one_dataset_leave_the_newest_observation(self, ledger: Ledger) -> None:
        order = [(i * 7) % 16 for i in range(16)]
        race(
            16,
            lambda i: ledger.put_inventory(
                [
                    self._dataset("ws", f"ds-{j}", T0 + order[i], fingerprint=f"seen-{order[i]}")
                    for j in range(3)
                ]
            ),
        )
        records = ledger.inventory("ws")
        assert sorted((r.dataset_id, r.learnt_at, r.fingerprint) for r in records) == [
            (f"ds-{j}", T0 + 15, "seen-15") for j in range(3)
        ]
