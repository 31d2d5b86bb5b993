"""The AIMD limiter's rules, on an injected clock: no threads, no sleeps."""

from __future__ import annotations

import math

import pytest

from remediation.clients.limiter import AdaptiveLimiter, LimiterTicket


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _ticket(limiter: AdaptiveLimiter, served_until: float = -math.inf) -> LimiterTicket:
    got = limiter.try_acquire(served_until)
    assert isinstance(got, LimiterTicket), got
    return got


def _succeed(limiter: AdaptiveLimiter, times: int) -> None:
    for _ in range(times):
        limiter.on_success(_ticket(limiter))


def test_it_starts_at_the_ceiling_and_admits_no_more_than_the_limit() -> None:
    limiter = AdaptiveLimiter(3, clock=Clock())
    tickets = [_ticket(limiter) for _ in range(3)]
    assert limiter.limit == 3 and limiter.in_flight == 3
    assert limiter.try_acquire() is None  # no slot: wait for a release
    limiter.release(tickets[0])
    assert isinstance(limiter.try_acquire(), LimiterTicket)


def test_a_burst_of_429s_from_requests_already_in_flight_halves_once_and_pauses_everyone() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(8, clock=clock)
    in_flight = [_ticket(limiter) for _ in range(8)]
    until = limiter.on_throttled(in_flight[0], 1.0)
    assert (limiter.limit, until, limiter.resume_at) == (4, 101.0, 101.0)
    clock.now += 0.05
    for ticket in in_flight[1:6]:  # sent under the old limit: not news
        limiter.on_throttled(ticket, 1.0)
    assert limiter.limit == 4
    snap = limiter.snapshot()
    assert (snap.throttled, snap.decreases, snap.pauses) == (6, 1, 1)
    assert limiter.resume_at == pytest.approx(101.05)  # the latest Retry-After moment is honoured
    # Nobody sends during the pause, whatever their slot situation: try_acquire names its end.
    assert limiter.try_acquire() == pytest.approx(101.05)


def test_a_429_for_a_request_sent_after_the_decrease_halves_again_down_to_the_floor() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(8, floor=2, clock=clock)
    for expected in (4, 2, 2):
        ticket = _ticket(limiter)
        limiter.on_throttled(ticket, 1.0)
        assert limiter.limit == expected
        clock.now = limiter.resume_at  # the pause is over
    assert limiter.snapshot().decreases == 3


def test_the_thread_that_drew_the_429_does_not_wait_the_same_pause_twice() -> None:
    clock = Clock()  # never moves: as with an injected sleep in tests
    limiter = AdaptiveLimiter(4, clock=clock)
    served = limiter.on_throttled(_ticket(limiter), 7.0)  # it sleeps 7 s in the retry loop
    assert isinstance(limiter.try_acquire(served), LimiterTicket)
    assert limiter.try_acquire() == 107.0  # every other caller waits for the pause


def test_acquire_waits_the_pause_through_the_given_sleep_then_takes_a_slot() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(2, clock=clock)
    limiter.on_throttled(_ticket(limiter), 2.0)
    slept: list[float] = []
    heard: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    ticket = limiter.acquire(timeout=5.0, sleep=sleep, on_pause=heard.append)
    assert isinstance(ticket, LimiterTicket)
    assert slept == heard == [2.0]


def test_acquire_gives_up_when_no_slot_comes_within_the_timeout() -> None:
    limiter = AdaptiveLimiter(1, clock=Clock())
    _ticket(limiter)
    assert limiter.acquire(timeout=0.0) is None


def test_no_pause_without_a_retry_after_but_the_limit_still_halves() -> None:
    limiter = AdaptiveLimiter(4, clock=Clock())
    assert limiter.on_throttled(_ticket(limiter), None) == -math.inf
    assert (limiter.limit, limiter.snapshot().pauses) == (2, 0)
    assert isinstance(limiter.try_acquire(), LimiterTicket)


def test_successes_add_one_after_limit_in_a_row_once_per_window_up_to_the_ceiling() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(4, clock=clock)
    limiter.on_throttled(_ticket(limiter), 1.0)  # 4 -> 2, paused until 101, no growth before 102
    clock.now = 101.0
    _succeed(limiter, 5)
    assert limiter.limit == 2  # the successes right after a pause spend the service's refill
    clock.now = 102.0
    _succeed(limiter, 1)  # the streak was long enough; the window has passed
    assert limiter.limit == 3
    _succeed(limiter, 3)
    assert limiter.limit == 3  # at most one increase per window
    clock.now = 103.0
    _succeed(limiter, 3)
    assert limiter.limit == 4
    clock.now = 110.0
    _succeed(limiter, 20)
    assert limiter.limit == 4  # the ceiling
    assert limiter.snapshot().increases == 2


def test_successes_of_requests_sent_before_a_decrease_do_not_count_toward_growth() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(4, min_window=0.0, clock=clock)
    old = [_ticket(limiter) for _ in range(3)]
    limiter.on_throttled(_ticket(limiter), None)  # 4 -> 2
    for ticket in old:
        limiter.on_success(ticket)
    assert limiter.limit == 2
    _succeed(limiter, 2)
    assert limiter.limit == 3


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError):
        AdaptiveLimiter(0)
    with pytest.raises(ValueError):
        AdaptiveLimiter(2, floor=3)
