"""The sandbox's HTTPS server: TLS trust, recording, injected faults and latency, error shapes."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sandbox import Sandbox
from sandbox.routing import HTTPError, Request, Response
from tests.support.ports import require_user_realm_port

pytestmark = pytest.mark.sandbox


def _error(status: int, code: str, message: str) -> dict[str, object]:
    return {"error": {"code": code, "message": message}}


@pytest.fixture
def echo(sb: Sandbox, sandbox_env: dict[str, str]) -> str:
    def handler(request: Request) -> Response:
        if request.params["word"] == "teapot":
            raise HTTPError(418, _error(418, "Teapot", "I am a teapot."))
        if request.params["word"] == "crash":
            raise RuntimeError("secret-ish internal detail")
        body = request.json(lambda m: HTTPError(400, _error(400, "BadRequest", m))) if request.body else None
        return Response(200, {"word": request.params["word"], "body": body})

    sb.router.add("test", "test.echo", "POST", r"/echo/(?P<word>\w+)", handler, _error)
    return f"{sb.url}/echo"


def test_clients_trust_the_sandbox_through_the_ca_bundle_variable(sb: Sandbox, echo: str) -> None:
    answer = requests.post(f"{echo}/hello", json={"a": 1}, timeout=5).json()
    assert answer == {"word": "hello", "body": {"a": 1}}


def test_without_the_sandbox_ca_tls_verification_fails(
    sb: Sandbox, echo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(f"{echo}/hello", timeout=5)


def test_every_request_is_recorded_with_its_body_and_status(sb: Sandbox, echo: str) -> None:
    requests.post(f"{echo}/one", json={"x": "y"}, timeout=5)
    requests.post(f"{echo}/teapot", timeout=5)
    recorded = sb.requests.find("test.echo")
    assert [(r.path, r.status, r.body) for r in recorded] == [
        ("/echo/one", 200, {"x": "y"}),
        ("/echo/teapot", 418, None),
    ]


def test_the_answer_time_is_recorded_before_the_client_can_send_again_and_none_when_dropped(
    sb: Sandbox, echo: str
) -> None:
    sb.faults.add("test", drop=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{echo}/a", timeout=5)
    requests.post(f"{echo}/b", timeout=5)
    requests.post(f"{echo}/c", timeout=5)
    dropped, first, second = sb.requests.find("test.echo")
    assert dropped.answered_at is None
    assert first.answered_at is not None and first.at <= first.answered_at <= second.at


def test_a_queued_429_carries_retry_after_then_the_route_recovers(sb: Sandbox, echo: str) -> None:
    sb.faults.throttle("test.echo", retry_after=7, times=2)
    first = requests.post(f"{echo}/a", timeout=5)
    second = requests.post(f"{echo}/a", timeout=5)
    third = requests.post(f"{echo}/a", timeout=5)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "7")
    assert first.json()["error"]["code"] == "TooManyRequests"
    assert second.status_code == 429
    assert third.status_code == 200
    assert sb.faults.pending() == 0


def test_a_dropped_connection_is_seen_by_the_client_as_a_connection_error(sb: Sandbox, echo: str) -> None:
    sb.faults.add("test", drop=True)  # by service name
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{echo}/a", timeout=5)
    assert requests.post(f"{echo}/a", timeout=5).status_code == 200
    assert [r.fault for r in sb.requests.find("test.echo")] == ["drop", None]


def test_latency_is_added_to_every_request(sb: Sandbox, echo: str) -> None:
    sb.faults.latency = 0.2
    started = time.monotonic()
    requests.post(f"{echo}/a", timeout=5)
    assert time.monotonic() - started >= 0.2


def test_handler_failures_answer_in_the_service_shape_without_a_traceback(sb: Sandbox, echo: str) -> None:
    crashed = requests.post(f"{echo}/crash", timeout=5)
    malformed = requests.post(
        f"{echo}/x", data=b"{not json", headers={"Content-Type": "application/json"}, timeout=5
    )
    assert crashed.status_code == 500
    assert crashed.json() == _error(500, "InternalServerError", "The sandbox failed to serve this.")
    assert "Traceback" not in crashed.text and "secret-ish" not in crashed.text
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "BadRequest"


def test_unknown_paths_and_methods_get_404_and_405(sb: Sandbox, echo: str) -> None:
    assert requests.get(f"{echo}/a", timeout=5).status_code == 405
    assert requests.get(f"{sb.url}/nowhere", timeout=5).status_code == 404


def test_gzip_bodies_are_decoded(sb: Sandbox, echo: str) -> None:
    data = gzip.compress(json.dumps({"z": 1}).encode())
    response = requests.post(
        f"{echo}/g",
        data=data,
        timeout=5,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.json()["body"] == {"z": 1}


@pytest.mark.user_realm
def test_port_443_serves_the_same_routes_for_msal_user_realm_discovery(sb: Sandbox, echo: str) -> None:
    require_user_realm_port(sb)
    assert requests.post("https://127.0.0.1:443/echo/realm", timeout=5).json()["word"] == "realm"


# -- faults after processing: the work is done, the answer is lost ---------------------------------
@pytest.fixture
def work(sb: Sandbox, sandbox_env: dict[str, str]) -> list[str]:
    """A route that records each request it processed (the 'work')."""
    done: list[str] = []

    def handler(request: Request) -> Response:
        done.append(request.params["item"])
        return Response(201, {"stored": request.params["item"]})

    sb.router.add("test", "test.work", "POST", r"/work/(?P<item>\w+)", handler, _error)
    return done


def test_a_drop_after_processing_does_the_work_and_loses_the_answer(sb: Sandbox, work: list[str]) -> None:
    sb.faults.add("test.work", after=True, drop=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{sb.url}/work/a", timeout=5)
    assert requests.post(f"{sb.url}/work/b", timeout=5).status_code == 201

    assert work == ["a", "b"]
    first, second = sb.requests.find("test.work")
    assert (first.fault, first.status, first.processed_status) == ("after-drop", 0, 201)
    assert (second.fault, second.status, second.processed_status) == (None, 201, None)


def test_a_5xx_after_processing_replaces_an_answer_the_handler_gave(sb: Sandbox, work: list[str]) -> None:
    sb.faults.add("test.work", after=True, status=503)
    response = requests.post(f"{sb.url}/work/a", timeout=5)
    assert response.status_code == 503 and response.json()["error"]["code"] == "ServiceUnavailable"
    assert work == ["a"]
    [recorded] = sb.requests.find("test.work")
    assert (recorded.fault, recorded.status, recorded.processed_status) == ("after-503", 503, 201)


def test_a_delay_after_processing_makes_a_client_read_timeout_fire(sb: Sandbox, work: list[str]) -> None:
    sb.faults.add("test.work", after=True, delay=0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{sb.url}/work/a", timeout=(5, 0.1))
    assert work == ["a"]  # processed although the client gave up
    sb.faults.add("test.work", after=True, delay=0.1)
    assert requests.post(f"{sb.url}/work/b", timeout=5).status_code == 201  # late, but answered


def test_a_held_answer_waits_for_release_after_processing(sb: Sandbox, work: list[str]) -> None:
    sb.faults.add("test.work", after=True, hold=True)
    assert not sb.faults.wait_held("test.work", timeout=0.01)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(requests.post, f"{sb.url}/work/a", timeout=5)

        assert sb.faults.wait_held("test.work", timeout=5)
        assert sb.faults.wait_held("test", timeout=0) and sb.faults.held("test.work") == 1
        assert work == ["a"] and not answer.done()
        [recorded] = sb.requests.find("test.work")  # recorded once processed
        assert (recorded.fault, recorded.processed_status) == ("after-hold+answer", 201)
        assert sb.faults.release_held("test.work") == 1

        assert answer.result().status_code == 201
    assert sb.faults.held() == 0


def test_a_held_drop_lets_a_test_kill_the_client_first(sb: Sandbox, work: list[str]) -> None:
    sb.faults.add("test.work", after=True, hold=True, drop=True)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(requests.post, f"{sb.url}/work/a", timeout=5)
        assert sb.faults.wait_held("test.work", timeout=5)
        sb.faults.release_held()
        with pytest.raises(requests.exceptions.ConnectionError):
            answer.result()
    assert work == ["a"] and sb.requests.find("test.work")[0].fault == "after-hold+drop"


def test_before_processing_faults_never_reach_the_handler(sb: Sandbox, work: list[str]) -> None:
    sb.faults.add("test.work", drop=True)
    sb.faults.add("test.work", status=500)
    sb.faults.add("test.work", hold=True)  # held before processing, then served normally
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{sb.url}/work/a", timeout=5)
    assert requests.post(f"{sb.url}/work/b", timeout=5).status_code == 500
    assert work == []
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(requests.post, f"{sb.url}/work/c", timeout=5)
        assert sb.faults.wait_held("test.work", timeout=5)
        assert work == []
        sb.faults.release_held()
        assert answer.result().status_code == 201
    assert work == ["c"]


def test_a_client_process_killed_while_its_answer_is_held_leaves_the_work_done(
    sb: Sandbox, sandbox_env: dict[str, str], work: list[str]
) -> None:
    sb.faults.add("test.work", after=True, hold=True)
    code = f"import requests; requests.post({sb.url + '/work/a'!r}, timeout=30)"
    client = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **sandbox_env})
    try:
        assert sb.faults.wait_held("test.work", timeout=20)
        client.kill()
        client.wait(timeout=10)
    finally:
        if client.poll() is None:
            client.kill()
    assert sb.faults.release_held() == 1
    assert work == ["a"] and sb.requests.find("test.work")[0].processed_status == 201
    assert requests.post(f"{sb.url}/work/b", timeout=5).status_code == 201  # the server carries on
