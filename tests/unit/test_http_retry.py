"""The one retry loop: what is retried, how long it waits, what it counts, what it never logs.

Policy math is tested as pure functions; the pipeline is tested against the real sandbox HTTPS
server (a tiny test route plus queued faults), with ``sleep``/``rand``/``clock`` injected so no
test actually waits.
"""

from __future__ import annotations

import email.utils
import logging
import math
import pickle
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from requests.structures import CaseInsensitiveDict

from remediation.clients.api_errors import ThrottledPastDeadline
from remediation.clients.http import (
    ApiConnectionError,
    ApiError,
    CallStats,
    HttpPipeline,
    RetryPolicy,
    parse_error_body,
    parse_retry_after,
)
from remediation.clients.identity import AuthenticationError
from remediation.clients.keyvault import SecretAccessDenied
from remediation.clients.powerbi import InvalidId, RefreshAlreadyRunning
from remediation.clients.retry import deadline_scope
from remediation.ledger.pause import LedgerPause
from remediation.ledger.sqlite import SqliteLedger
from sandbox import Sandbox
from sandbox.routing import HTTPError, Request, Response

NOW = 1_790_000_000.0
BODY_SECRET = "Pw!do-not-leak-9f3c"
TOKEN = "sbx.test-bearer-token-1234567890"


# --- pure policy math -------------------------------------------------------------------------
def test_backoff_is_full_jitter_under_an_exponential_bound_capped_at_max_delay() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0)
    assert [policy.backoff(n, lambda: 1.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [policy.backoff(n, lambda: 0.5) for n in range(1, 4)] == [0.25, 0.5, 1.0]
    assert policy.backoff(1, lambda: 0.0) == 0.0
    assert policy.backoff(10_000, lambda: 1.0) == 3.0  # no overflow far out


def test_retry_after_wins_over_backoff_and_is_capped() -> None:
    policy = RetryPolicy(max_retry_after=120.0)
    assert policy.delay(1, 7.0, lambda: 1.0) == 7.0
    assert policy.delay(1, 3600.0, lambda: 1.0) == 120.0
    assert policy.delay(3, None, lambda: 1.0) == 2.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": " 0 "}, 0.0),
        ({"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"Retry-After": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),  # in the past: now
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ms-retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    headers: dict[str, str], expected: float | None
) -> None:
    assert parse_retry_after(CaseInsensitiveDict(headers), lambda: NOW) == expected


def test_a_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)


def test_call_stats_are_exact_under_concurrency() -> None:
    stats = CallStats()

    def work() -> None:
        for _ in range(500):
            stats.record_attempt()
            stats.record_retry(0.5)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = stats.snapshot()
    assert (snap.attempts, snap.retries, snap.wait_seconds) == (4000, 4000, 2000.0)
    assert stats.reset().attempts == 4000
    assert stats.attempts == 0


def test_error_bodies_of_every_service_shape_are_parsed() -> None:
    pbi = (
        b'{"error":{"code":"DM_GWPipeline_Gateway_InvalidConnectionCredentials","pbi.error":{"code":'
        b'"DM_GWPipeline_Gateway_InvalidConnectionCredentials","parameters":{},"details":[{"code":'
        b'"DM_ErrorDetailNameCode_UnderlyingErrorCode","detail":{"type":1,"value":"-2147467259"}}],'
        b'"exceptionCulprit":1}}}'
    )
    code, inner, message, details = parse_error_body(pbi)
    assert code == "DM_GWPipeline_Gateway_InvalidConnectionCredentials"
    assert inner is None and message is None
    assert details == [("DM_ErrorDetailNameCode_UnderlyingErrorCode", "-2147467259")]
    assert parse_error_body(b'{"error":{"code":"InvalidRequest","message":"Another refresh"}}')[::2] == (
        "InvalidRequest",
        "Another refresh",
    )
    kv = b'{"error":{"code":"Forbidden","message":"no","innererror":{"code":"AccessDenied"}}}'
    assert parse_error_body(kv)[:3] == ("Forbidden", "AccessDenied", "no")
    entra = b'{"error":"invalid_grant","error_description":"AADSTS50126: bad"}'
    assert parse_error_body(entra)[:3] == ("invalid_grant", None, "AADSTS50126: bad")
    assert parse_error_body(b"<html>oops</html>") == (None, None, None, [])


# --- through the sandbox ---------------------------------------------------------------------
def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class Recorder:
    """An injected ``sleep`` that records instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def route(sb: Sandbox, sandbox_env: dict[str, str]) -> str:
    """``/t/{word}`` for GET, POST and PATCH (route names ``test.get`` / ``test.post`` / ``test.patch``).

    ``word``: ``ok`` -> 200 echo; ``missing`` -> 404; ``bad`` -> 400 in the Power BI envelope.
    """

    def handler(request: Request) -> Response:
        word = request.params["word"]
        if word == "missing":
            raise HTTPError(404, {"error": {"code": "PowerBIEntityNotFound"}}, {"RequestId": "rid-404"})
        if word == "bad":
            raise HTTPError(
                400,
                {
                    "error": {
                        "code": "DM_GWPipeline_Gateway_InvalidConnectionCredentials",
                        "pbi.error": {
                            "code": "DM_GWPipeline_Gateway_InvalidConnectionCredentials",
                            "parameters": {},
                            "details": [
                                {"code": "Reason", "detail": {"type": 1, "value": "AccessUnauthorized"}}
                            ],
                            "exceptionCulprit": 1,
                        },
                    }
                },
                {"x-ms-request-id": "rid-400"},
            )
        return Response(200, {"word": word, "method": request.method}, {"x-ms-request-id": "rid-200"})

    for method in ("GET", "POST", "PATCH"):
        sb.router.add("test", f"test.{method.lower()}", method, r"/t/(?P<word>\w+)", handler, _error)
    return f"{sb.url}/t"


def _pipeline(
    sleep: Callable[[float], None],
    *,
    policy: RetryPolicy | None = None,
    stats: CallStats | None = None,
    rand: Callable[[], float] = lambda: 1.0,
    timeout: tuple[float, float] = (5.0, 5.0),
) -> HttpPipeline:
    return HttpPipeline(
        service="test",
        timeout=timeout,
        concurrency=3,
        policy=policy,
        stats=stats,
        sleep=sleep,
        rand=rand,
        clock=lambda: NOW,
    )


@pytest.mark.sandbox
def test_throttled_three_times_still_succeeds_after_waiting_the_retry_after(sb: Sandbox, route: str) -> None:
    sb.faults.throttle("test.get", retry_after=7, times=3)
    sleep, stats = Recorder(), CallStats()
    response = _pipeline(sleep, stats=stats).request("GET", f"{route}/ok")
    assert response.status == 200 and response.json() == {"word": "ok", "method": "GET"}
    assert response.attempts == 4 and response.request_id == "rid-200"
    assert sleep.waits == [7.0, 7.0, 7.0]
    snap = stats.snapshot()
    assert (snap.calls, snap.attempts, snap.retries, snap.throttled, snap.wait_seconds) == (1, 4, 3, 3, 21.0)
    assert [r.status for r in sb.requests.find("test.get")] == [429, 429, 429, 200]


@pytest.mark.sandbox
def test_an_http_date_retry_after_is_honoured(sb: Sandbox, route: str) -> None:
    when = email.utils.formatdate(NOW + 42, usegmt=True)
    sb.faults.add("test.get", status=429, headers={"Retry-After": when})
    sleep = Recorder()
    _pipeline(sleep).request("GET", f"{route}/ok")
    assert sleep.waits == [42.0]


@pytest.mark.sandbox
def test_a_huge_retry_after_is_capped_and_reported_uncapped_when_attempts_run_out(
    sb: Sandbox, route: str
) -> None:
    sb.faults.throttle("test.get", retry_after=3600, times=2)
    sleep = Recorder()
    policy = RetryPolicy(max_attempts=2, max_retry_after=120.0)
    with pytest.raises(ApiError) as caught:
        _pipeline(sleep, policy=policy).request("GET", f"{route}/ok")
    assert sleep.waits == [120.0]
    assert (caught.value.status, caught.value.retry_after, caught.value.attempts) == (429, 3600.0, 2)


@pytest.mark.sandbox
def test_5xx_is_retried_with_bounded_exponential_backoff(sb: Sandbox, route: str) -> None:
    sb.faults.add("test.get", status=503, times=2)
    sb.faults.add("test.get", status=502)
    sb.faults.add("test.get", status=500)
    sleep = Recorder()
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=3.0)
    response = _pipeline(sleep, policy=policy, rand=lambda: 1.0).request("GET", f"{route}/ok")
    assert response.status == 200
    assert sleep.waits == [1.0, 2.0, 3.0, 3.0]


@pytest.mark.sandbox
def test_jitter_comes_from_the_injected_rand(sb: Sandbox, route: str) -> None:
    sb.faults.add("test.get", status=504, times=2)
    sleep = Recorder()
    draws = iter([0.25, 0.5])
    _pipeline(sleep, rand=lambda: next(draws)).request("GET", f"{route}/ok")
    assert sleep.waits == [0.125, 0.5]  # 0.25 * 0.5, 0.5 * 1.0


@pytest.mark.sandbox
def test_attempts_are_bounded_and_the_last_error_is_typed(sb: Sandbox, route: str) -> None:
    sb.faults.add("test.get", status=503, times=10)
    sleep, stats = Recorder(), CallStats()
    with pytest.raises(ApiError) as caught:
        _pipeline(sleep, policy=RetryPolicy(max_attempts=3), stats=stats).request("GET", f"{route}/ok")
    error = caught.value
    assert (error.status, error.code, error.attempts) == (503, "ServiceUnavailable", 3)
    assert len(sb.requests.find("test.get")) == 3
    assert len(sleep.waits) == 2
    assert stats.snapshot().failures == 1


@pytest.mark.sandbox
@pytest.mark.parametrize("word", ["missing", "bad"])
def test_other_4xx_are_answers_and_never_retried(sb: Sandbox, route: str, word: str) -> None:
    sleep = Recorder()
    with pytest.raises(ApiError) as caught:
        _pipeline(sleep).request("GET", f"{route}/{word}")
    assert sleep.waits == []
    assert len(sb.requests.find("test.get")) == 1
    if word == "missing":
        assert (caught.value.status, caught.value.code, caught.value.request_id) == (
            404,
            "PowerBIEntityNotFound",
            "rid-404",
        )
    else:
        assert caught.value.status == 400
        assert caught.value.code == "DM_GWPipeline_Gateway_InvalidConnectionCredentials"
        assert caught.value.details == [("Reason", "AccessUnauthorized")]
        assert caught.value.detail("reason") == "AccessUnauthorized"
        assert caught.value.request_id == "rid-400"


@pytest.mark.sandbox
def test_a_post_is_retried_only_when_the_service_did_not_take_it(sb: Sandbox, route: str) -> None:
    sleep = Recorder()
    pipeline = _pipeline(sleep)
    sb.faults.throttle("test.post", retry_after=1)
    sb.faults.add("test.post", status=503)
    assert pipeline.request("POST", f"{route}/ok", json_body={}).status == 200
    assert sleep.waits == [1.0, 1.0]  # Retry-After, then the backoff bound of retry 2 (0.5 * 2)

    for status in (500, 502, 504):
        sb.faults.add("test.post", status=status)
        with pytest.raises(ApiError) as caught:
            pipeline.request("POST", f"{route}/ok", json_body={})
        assert (caught.value.status, caught.value.attempts) == (status, 1)
    assert sb.faults.pending() == 0


@pytest.mark.sandbox
def test_a_patch_declared_idempotent_is_retried_on_500_and_one_that_is_not_is_not(
    sb: Sandbox, route: str
) -> None:
    sleep = Recorder()
    pipeline = _pipeline(sleep)
    sb.faults.add("test.patch", status=500)
    assert pipeline.request("PATCH", f"{route}/ok", json_body={"v": 1}, idempotent=True).attempts == 2
    sb.faults.add("test.patch", status=500)
    with pytest.raises(ApiError):
        pipeline.request("PATCH", f"{route}/ok", json_body={"v": 1})


@pytest.mark.sandbox
def test_a_dropped_connection_is_retried_for_a_get_but_not_for_a_post(sb: Sandbox, route: str) -> None:
    sleep = Recorder()
    pipeline = _pipeline(sleep)
    sb.faults.add("test.get", drop=True)
    assert pipeline.request("GET", f"{route}/ok").attempts == 2

    sb.faults.add("test.post", drop=True)
    with pytest.raises(ApiConnectionError) as caught:
        pipeline.request("POST", f"{route}/ok", json_body={})
    assert (caught.value.status, caught.value.code, caught.value.attempts) == (None, "ConnectionError", 1)
    assert [r.fault for r in sb.requests.find("test.post")] == ["drop"]


@pytest.mark.sandbox
def test_a_read_timeout_is_retried_for_a_get(sb: Sandbox, route: str) -> None:
    sb.faults.add("test.get", status=200, delay=1.0)  # answers too late
    sleep = Recorder()
    response = _pipeline(sleep, timeout=(5.0, 0.3)).request("GET", f"{route}/ok")
    assert response.attempts == 2 and len(sleep.waits) == 1


@pytest.mark.sandbox
@pytest.mark.parametrize(
    ("path", "trickle"),
    [("ok", 0.05), ("big", 0.001)],  # "big": 5 kB, its headers in time, its body not
    ids=["cut-in-the-status-line", "cut-in-the-body"],
)
def test_an_answer_that_trickles_in_is_cut_at_the_total_deadline(
    sb: Sandbox, route: str, path: str, trickle: float
) -> None:
    """Each byte comes well within the read timeout (0.3 s), so only the total deadline (connect
    + read = 0.6 s) ends the wait: the connection is shut, and the answer is lost (sent=True)."""
    sb.router.add("test", "test.big", "GET", r"/big", lambda _r: Response(200, {"pad": "x" * 5000}), _error)
    route_name, url = ("test.big", f"{sb.url}/big") if path == "big" else ("test.get", f"{route}/ok")
    sb.faults.add(route_name, after=True, trickle=trickle)
    pipeline = _pipeline(Recorder(), policy=RetryPolicy(max_attempts=1), timeout=(0.3, 0.3))
    assert pipeline.deadline == 0.6

    started = time.monotonic()
    with pytest.raises(ApiConnectionError) as caught:
        pipeline.request("GET", url)
    elapsed = time.monotonic() - started

    assert (caught.value.code, caught.value.sent, caught.value.attempts) == ("Timeout", True, 1)
    assert "deadline" in str(caught.value)
    assert 0.6 <= elapsed < 1.5, elapsed
    # The pool goes on with a fresh connection; a GET cut so is retried (idempotent).
    assert pipeline.request("GET", f"{route}/ok").status == 200
    sb.faults.add(route_name, after=True, trickle=trickle)
    retried = _pipeline(Recorder(), timeout=(0.3, 0.3)).request("GET", url)
    assert (retried.status, retried.attempts) == (200, 2)


def test_a_connection_refused_is_retried_even_for_a_post_because_nothing_was_sent(
    sandbox_env: dict[str, str],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    sleep, stats = Recorder(), CallStats()
    with pytest.raises(ApiConnectionError) as caught:
        _pipeline(sleep, policy=RetryPolicy(max_attempts=3), stats=stats).request(
            "POST", f"https://127.0.0.1:{port}/t/ok", json_body={}
        )
    assert caught.value.attempts == 3 and len(sleep.waits) == 2
    assert stats.snapshot().failures == 1


@pytest.mark.sandbox
def test_tls_verification_failure_is_not_retried(
    sb: Sandbox, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    sleep = Recorder()
    with pytest.raises(ApiConnectionError) as caught:
        _pipeline(sleep).request("GET", f"{route}/ok")
    assert caught.value.code == "CertificateVerificationFailed"
    assert sleep.waits == [] and caught.value.attempts == 1


@pytest.mark.sandbox
def test_the_pool_is_sized_to_the_concurrency_and_verification_is_on(route: str) -> None:
    pipeline = _pipeline(Recorder())
    adapter = pipeline.session.get_adapter("https://127.0.0.1/")
    assert adapter._pool_maxsize == 3  # type: ignore[attr-defined]
    assert pipeline.session.verify is True


@pytest.mark.sandbox
def test_no_token_or_body_reaches_a_log_record_or_an_error_message(
    sb: Sandbox, route: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sb.faults.throttle("test.post", retry_after=1)
    pipeline = _pipeline(Recorder())
    pipeline.request("POST", f"{route}/ok", bearer=TOKEN, json_body={"password": BODY_SECRET})
    with pytest.raises(ApiError) as caught:
        pipeline.request("POST", f"{route}/bad", bearer=TOKEN, json_body={"password": BODY_SECRET})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "/t/ok" in text  # the path is logged
    for secret in (TOKEN, BODY_SECRET):
        assert secret not in text
        assert secret not in str(caught.value) and secret not in repr(caught.value)
    recorded = sb.requests.find("test.post")[-1]
    assert recorded.headers["Authorization"] == f"Bearer {TOKEN}"  # the token was sent, just not logged


def test_typed_errors_survive_pickling_with_their_fields() -> None:
    api = RefreshAlreadyRunning("busy", status=400, code="InvalidRequest", details=[("a", "b")], attempts=2)
    denied = SecretAccessDenied("no", secret_name="s", hint="grant get", status=403, path="/secrets/s")
    auth = AuthenticationError("refused", principal="u@x", code="AADSTS50126")
    bad = InvalidId("gateway_id", "../x")
    for error in (api, denied, auth, bad):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and vars(copy) == vars(error)


# --- requests that present credentials (the credentials PATCH) -----------------------------------
@pytest.mark.sandbox
@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_credential_presenting_request_is_never_retried_after_a_5xx(
    sb: Sandbox, route: str, status: int
) -> None:
    """A 503 is retried for every other method, but Power BI may answer 503 after the gateway
    tested the password: a second attempt would be a second sign-in."""
    sb.faults.add("test.patch", status=status)
    with pytest.raises(ApiError) as caught:
        _pipeline(Recorder()).request("PATCH", f"{route}/ok", json_body={}, presents_credentials=True)
    assert (caught.value.status, caught.value.attempts) == (status, 1)
    assert len(sb.requests.find("test.patch")) == 1


@pytest.mark.sandbox
def test_a_credential_presenting_request_is_retried_after_a_429_and_checks_before_every_attempt(
    sb: Sandbox, route: str
) -> None:
    sb.faults.throttle("test.patch", retry_after=3, times=2)
    checks: list[int] = []
    response = _pipeline(Recorder()).request(
        "PATCH",
        f"{route}/ok",
        json_body={},
        presents_credentials=True,
        before_attempt=lambda: checks.append(len(checks)),
    )
    assert response.attempts == 3 and checks == [0, 1, 2]


@pytest.mark.sandbox
def test_what_before_attempt_raises_stops_the_call_and_nothing_more_is_sent(sb: Sandbox, route: str) -> None:
    sb.faults.throttle("test.patch", retry_after=3, times=1)
    calls = {"n": 0}

    def lease_check() -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise LookupError("the lease is gone")

    with pytest.raises(LookupError):
        _pipeline(Recorder()).request(
            "PATCH", f"{route}/ok", json_body={}, presents_credentials=True, before_attempt=lease_check
        )
    assert len(sb.requests.find("test.patch")) == 1


@pytest.mark.sandbox
def test_a_lost_answer_says_it_may_have_been_sent_and_a_refused_connection_that_it_was_not(
    sb: Sandbox, route: str
) -> None:
    sb.faults.add("test.patch", drop=True)
    with pytest.raises(ApiConnectionError) as caught:
        _pipeline(Recorder()).request("PATCH", f"{route}/ok", json_body={}, presents_credentials=True)
    assert caught.value.sent is True and caught.value.attempts == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ApiConnectionError) as refused:
        _pipeline(Recorder(), policy=RetryPolicy(max_attempts=2)).request(
            "PATCH", f"https://127.0.0.1:{port}/t/ok", json_body={}, presents_credentials=True
        )
    assert refused.value.sent is False


# --- Retry-After as long as asked, within the run's deadline; the pause shared across instances ---
@pytest.mark.sandbox
def test_a_retry_after_longer_than_two_minutes_is_waited_in_full_within_the_deadline(
    sb: Sandbox, route: str
) -> None:
    sb.faults.throttle("test.get", retry_after=600, times=1)
    sleep = Recorder()
    with deadline_scope(lambda: NOW + 1000, clock=lambda: NOW):
        response = _pipeline(sleep).request("GET", f"{route}/ok")
    assert response.status == 200 and sleep.waits == [600.0]


@pytest.mark.sandbox
def test_a_retry_after_past_the_deadline_is_not_waited_and_says_so(sb: Sandbox, route: str) -> None:
    sb.faults.throttle("test.get", retry_after=600, times=1)
    sleep = Recorder()
    with deadline_scope(lambda: NOW + 300, clock=lambda: NOW), pytest.raises(ThrottledPastDeadline) as caught:
        _pipeline(sleep).request("GET", f"{route}/ok")
    assert sleep.waits == [] and len(sb.requests.find("test.get")) == 1
    assert (caught.value.status, caught.value.retry_after) == (429, 600.0)
    assert "deadline" in str(caught.value)


def test_a_shorter_pause_shared_after_a_longer_one_never_shortens_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    first, second = SqliteLedger(path), SqliteLedger(path)  # two instances, one ledger
    try:
        long_pause, short_pause = (
            LedgerPause(first, clock=lambda: NOW),
            LedgerPause(second, clock=lambda: NOW),
        )
        assert short_pause.resume_at() == -math.inf  # read before the long pause was drawn
        long_pause.pause_until(NOW + 120)
        short_pause.pause_until(NOW + 30)  # a 429 with a shorter Retry-After, written later
        assert float(first.marker("throttle:powerbi") or "nan") == NOW + 120
        assert short_pause.resume_at() == NOW + 120  # learnt from its own write, not stale
        assert LedgerPause(first, clock=lambda: NOW).resume_at() == NOW + 120
    finally:
        first.close()
        second.close()


@pytest.mark.sandbox
def test_a_pause_one_instance_drew_holds_the_others_through_the_ledger(
    sb: Sandbox, route: str, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.db"
    first, second = SqliteLedger(path), SqliteLedger(path)  # two instances, one ledger
    try:
        a_sleep, b_sleep = Recorder(), Recorder()
        a, b = _pipeline(a_sleep), _pipeline(b_sleep)
        a.shared_pause = LedgerPause(first, clock=lambda: NOW)
        b.shared_pause = LedgerPause(second, clock=lambda: NOW)
        sb.faults.throttle("test.get", retry_after=30, times=1)

        assert a.request("GET", f"{route}/ok").attempts == 2  # drew the 429, waited, retried
        assert a_sleep.waits == [30.0]
        assert b.request("GET", f"{route}/ok").attempts == 1  # waited before sending anything
        assert b_sleep.waits == [30.0]
        assert [r.status for r in sb.requests.find("test.get")] == [429, 200, 200]

        c = _pipeline(Recorder())  # a third instance, whose run ends in 10 s
        c.shared_pause = LedgerPause(second, clock=lambda: NOW)
        with deadline_scope(lambda: NOW + 10, clock=lambda: NOW), pytest.raises(ThrottledPastDeadline):
            c.request("GET", f"{route}/ok")
        assert len(sb.requests.find("test.get")) == 3  # nothing sent past the deadline
    finally:
        first.close()
        second.close()
