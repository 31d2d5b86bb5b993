"""Throttling: the sandbox's rate limit, and the pipeline's adaptive concurrency against it.

8 threads share one :class:`HttpPipeline` (as the healer's workers do) against a route limited to
40 requests a second (a token bucket holding one second's worth) with 20 ms of latency. Real
sleeps happen only where ``Retry-After`` (1 s) asks for them.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from remediation.clients.http import HttpPipeline, RetryPolicy
from remediation.clients.limiter import LimiterSnapshot
from sandbox import Sandbox
from sandbox.faults import Faults
from sandbox.routing import Request, Response, Route

pytestmark = pytest.mark.sandbox

N = 120
THREADS = 8
RATE = 40.0
LATENCY = 0.02


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@pytest.fixture
def echo(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", sb.tls.ca_path)
    monkeypatch.setenv("SSL_CERT_FILE", sb.tls.ca_path)

    def handler(request: Request) -> Response:
        return Response(200, {"ok": True})

    sb.router.add("test", "test.echo", "GET", r"/echo", handler, _error)
    return f"{sb.url}/echo"


# --- the sandbox's rate limit ----------------------------------------------------------------
def test_over_the_rate_the_sandbox_answers_429_with_retry_after_in_the_service_shape(
    sb: Sandbox, echo: str
) -> None:
    sb.faults.rate_limit("test", 0.5, burst=2, retry_after=1)  # by service name
    answers = [requests.get(echo, timeout=5) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    # One token every 2 s: the next is about 2 s away, said in whole seconds, rounded up.
    assert answers[2].headers["Retry-After"] == "2"
    assert answers[2].json()["error"]["code"] == "TooManyRequests"
    assert [r.fault for r in sb.requests.find("test.echo")] == [None, None, "429"]
    assert (sb.faults.throttled("test"), sb.faults.throttled("test.echo")) == (1, 0)

    sb.faults.clear_rate_limits()
    assert requests.get(echo, timeout=5).status_code == 200
    assert sb.faults.throttled("test") == 0


def test_retry_after_is_the_time_to_the_next_token_at_least_the_configured_seconds() -> None:
    now = [0.0]
    faults = Faults(clock=lambda: now[0])
    route = Route("test.echo", "test", "GET", re.compile("/echo"), lambda r: Response(), _error)
    faults.rate_limit("test.echo", 0.25, burst=1, retry_after=1)
    faults.rate_limit("*", 1.0, burst=5, retry_after=3)
    assert faults.admit(route) is None  # both buckets had a token
    assert faults.admit(route) == 4  # 1 token at 0.25/s: 4 s away (refused: no token taken)
    now[0] = 3.0
    assert faults.admit(route) == 1  # 0.25 tokens short: 1 s, rounded up
    now[0] = 4.0
    assert faults.admit(route) is None
    assert (faults.throttled("test.echo"), faults.throttled("*")) == (2, 0)
    faults.rate_limit("test.echo", 1000.0, burst=1)
    for _ in range(4):
        assert faults.admit(route) is None  # "*" had 4 left; "test.echo" refills 1 a millisecond
        now[0] += 0.001
    assert faults.admit(route) == 3  # "*" is empty: 1 s to its next token, but at least 3 s
    assert (faults.throttled("test.echo"), faults.throttled("*")) == (2, 1)


def test_rate_limit_arguments_are_checked(sb: Sandbox) -> None:
    with pytest.raises(ValueError):
        sb.faults.rate_limit("*", 0.0)
    with pytest.raises(ValueError):
        sb.faults.rate_limit("*", 1.0, burst=0)
    with pytest.raises(ValueError):
        sb.faults.rate_limit("*", 1.0, retry_after=0)


# --- the pipeline against it -----------------------------------------------------------------
@dataclass
class Run:
    throttled: int  # 429s the sandbox served
    failures: int
    round_trips: int  # requests the sandbox served
    waits: list[float]  # every wait the pipeline asked for (slept for real: the bucket is real time)
    limiter: LimiterSnapshot | None


def _run(sb: Sandbox, url: str, *, adaptive: bool) -> Run:
    sb.faults.clear_rate_limits()
    sb.faults.rate_limit("test.echo", RATE)  # a full bucket for each run
    sb.faults.latency = LATENCY
    sb.requests.clear()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    pipeline = HttpPipeline(
        service="test",
        timeout=(5.0, 10.0),
        concurrency=THREADS,
        policy=RetryPolicy(max_attempts=10),
        adaptive=adaptive,
        sleep=sleep,
    )

    def get(_: int) -> bool:
        return pipeline.request("GET", url).status == 200

    with pipeline, ThreadPoolExecutor(THREADS) as pool:
        ok = list(pool.map(get, range(N)))
    limiter = pipeline.limiter.snapshot() if pipeline.limiter is not None else None
    served = len(sb.requests.find("test.echo"))
    return Run(sb.faults.throttled("test.echo"), ok.count(False), served, sorted(waits), limiter)


def test_eight_threads_through_one_pipeline_learn_the_rate_with_few_429s(sb: Sandbox, echo: str) -> None:
    alone = _run(sb, echo, adaptive=False)
    adaptive = _run(sb, echo, adaptive=True)
    print(f"\nwithout the limiter: {alone}\nwith the limiter:    {adaptive}")

    assert alone.failures == adaptive.failures == 0
    assert adaptive.limiter is not None and adaptive.limiter.throttled == adaptive.throttled
    # Every 429 comes from a request already in flight when a window opened: the first window
    # costs at most the 8 in flight, the second (limit 4) at most 4. Nothing is sent during a
    # pause, and the limit does not grow back within a window, so there is no third.
    assert adaptive.limiter.decreases <= 2
    assert adaptive.throttled <= THREADS + THREADS // 2
    assert adaptive.throttled < alone.throttled
    # Counted, not timed: each request went out once more per 429 and never otherwise, the
    # pipeline paused at most twice, and no wait was longer than the 1 s Retry-After.
    assert (alone.round_trips, adaptive.round_trips) == (N + alone.throttled, N + adaptive.throttled)
    assert adaptive.limiter.pauses <= 2
    assert max(adaptive.waits) <= 1.0, adaptive.waits
