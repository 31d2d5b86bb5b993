"""Long and deferred work behind the push triggers: the work queue on the app's storage account
(Azurite's Table and Queue services), driven through the functions as the worker invokes them.

With ``AzureWebJobsStorage`` set, Event Grid functions validate, queue and return; ``POST
/api/remediate`` answers 202 with a status URL; ``remediation_work`` runs the commands; a report
whose version is still settling is queued again with the right delay. Without it (the embedded
mode) commands run inline and a settling version is waited for within the run's deadline.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from remediation.config.settings import Settings
from remediation.edges import service as service_module
from remediation.edges.service import MAX_SETTLE_ATTEMPTS, RemediationService, get_service
from remediation.errors import RemediationError
from remediation.inbound.workqueue import (
    MAX_DELAY_SECONDS,
    WorkCommand,
    WorkKind,
    WorkMessageError,
    WorkQueue,
)
from remediation.reconciler.healer import Report
from sandbox import Sandbox
from sandbox.recorder import RecordedRequest
from tests.functions.host import HttpAnswer, event_datum, http_datum, invoke, queue_datum, route_of
from tests.functions.test_function_app import key_vault_event
from tests.support.azurite import Azurite, start_azurite
from tests.support.world import World, build_world

pytestmark = pytest.mark.sandbox
KV_EVENT = "spec_event-grid-schema_secret_new_version_created.json"
KV_CLOUD_EVENT = "spec_cloud-events-schema_secret_new_version_created.json"
QUEUE = "remediation-work"
V_MISSING = "0" * 32


@pytest.fixture
def storage() -> Iterator[Azurite]:
    server = start_azurite(queue=True)
    try:
        yield server
    finally:
        server.stop()


def _apply(w: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = w.env(tmp_path / "ledger.sqlite")
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING", None)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("REMEDIATION_WORK_QUEUE", raising=False)


@pytest.fixture
def queued(sb: Sandbox, storage: Azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[World]:
    """A world whose Functions app has a storage account: the queued mode."""
    w = build_world(sb, sources=2)
    _apply(w, monkeypatch, tmp_path)
    monkeypatch.setenv("AzureWebJobsStorage", storage.connection_string)
    service_module.reset_service()
    yield w
    service_module.reset_service()


@pytest.fixture
def embedded(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[World]:
    """A world without a storage account: the embedded mode (SQLite ledger, inline runs)."""
    w = build_world(sb, sources=2)
    _apply(w, monkeypatch, tmp_path)
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    service_module.reset_service()
    yield w
    service_module.reset_service()


@pytest.fixture
def work(storage: Azurite) -> Iterator[WorkQueue]:
    """The test's own handle on the work queue (as the Functions host's listener would read it)."""
    queue = WorkQueue.from_connection_string(storage.connection_string, QUEUE)
    queue.create_queue()  # as provisioned (infra/); a missing queue is created on first send
    yield queue
    queue.close()


def patches(sb: Sandbox) -> list[RecordedRequest]:
    return sb.requests.find("powerbi.update_datasource")


def pump(work: WorkQueue, *, limit: int = 20) -> int:
    """Deliver every visible message to ``remediation_work`` as the host does: decode, invoke,
    delete on success (a failure leaves it for redelivery). Returns how many ran."""
    ran = 0
    for message in work.receive(max_messages=limit, visibility_timeout=120):
        datum, metadata = queue_datum(
            message.content,
            message_id=message.id,
            dequeue_count=message.dequeue_count,
            pop_receipt=message.pop_receipt,
        )
        invoke("remediation_work", datum, metadata)
        work.delete(message)
        ran += 1
    return ran


def post(body: dict[str, Any]) -> HttpAnswer:
    answer: HttpAnswer = invoke("remediate", http_datum("POST", "remediate", json.dumps(body).encode()))
    return answer


def get(url: str) -> HttpAnswer:
    route, query = route_of(url)
    correlation_id = route.rsplit("/", 1)[-1]
    answer: HttpAnswer = invoke(
        "remediation_status",
        http_datum("GET", route, params=query, route_params={"correlationId": correlation_id}),
    )
    return answer


# -- the client, against Azurite's Queue service ------------------------------------------------
def test_a_command_goes_through_the_queue_base64_encoded_and_comes_back_equal(
    storage: Azurite, work: WorkQueue
) -> None:
    command = WorkCommand.secret("sql-pw", "a" * 32, trigger="eventgrid", correlation_id="evt-1")

    work.send(command)

    raw = QueueClient.from_connection_string(storage.connection_string, QUEUE)
    (peeked,) = raw.peek_messages()
    raw.close()
    text = base64.b64decode(peeked.content).decode()  # what the host decodes (messageEncoding base64)
    assert json.loads(text) == {
        "kind": "secret",
        "secretName": "sql-pw",
        "version": "a" * 32,
        "trigger": "eventgrid",
        "correlationId": "evt-1",
        "attempt": 0,
    }
    (received,) = work.receive()
    assert WorkCommand.parse(received.content) == command


def _spy(queue: WorkQueue) -> list[dict[str, Any]]:
    """Record the keyword arguments of every send_message the queue client makes (still sent)."""
    client = queue._client
    real = client.send_message
    calls: list[dict[str, Any]] = []

    def send_message(content: object, **kwargs: Any) -> Any:
        calls.append({**kwargs, "content": content})
        return real(content, **kwargs)

    client.send_message = send_message  # type: ignore[method-assign]
    return calls


def test_a_delayed_command_stays_invisible_for_its_delay_capped_at_seven_days(work: WorkQueue) -> None:
    calls = _spy(work)
    dataset = WorkCommand.dataset(
        "11111111-1111-1111-1111-111111111111",
        "22222222-2222-2222-2222-222222222222",
        trigger="http",
        correlation_id="c-1",
    )

    work.send(dataset, delay=89.2)
    work.send(WorkCommand.secret("pw", None, trigger="http", correlation_id="c-2"), delay=30 * 86400)
    work.send(WorkCommand.secret("pw", None, trigger="http", correlation_id="c-3"))

    assert [c.get("visibility_timeout") for c in calls] == [90, MAX_DELAY_SECONDS, None]
    assert {c["time_to_live"] for c in calls} == {-1}  # a delayed command never expires unseen
    assert [WorkCommand.parse(m.content).correlation_id for m in work.receive()] == ["c-3"]


def test_a_queue_that_does_not_exist_yet_is_created_on_first_send(storage: Azurite) -> None:
    queue = WorkQueue.from_connection_string(storage.connection_string, "brand-new-queue")
    queue.send(WorkCommand.secret("pw", None, trigger="http", correlation_id="c-1"))
    assert [WorkCommand.parse(m.content).correlation_id for m in queue.receive()] == ["c-1"]
    queue.close()


@pytest.mark.parametrize(
    "text",
    [
        b"\xff\xfe",
        "not json",
        "[]",
        '{"kind": "password"}',
        '{"kind": "secret", "secretName": "pw", "trigger": "http", "correlationId": "c", "value": "hunter2"}',
        '{"kind": "secret", "secretName": "bad/name", "trigger": "http", "correlationId": "c"}',
        '{"kind": "dataset", "workspaceId": "x", "datasetId": "y", "trigger": "http", "correlationId": "c"}',
        '{"kind": "secret", "secretName": "pw", "trigger": "http", "correlationId": "c", "attempt": "1"}',
        '{"kind": "secret", "secretName": "pw", "trigger": "http", "correlationId": "c d"}',
        '{"kind": "secret", "secretName": "pw", "trigger": "http", "correlationId": "c", "attempt": -1}',
        '{"kind": "secret", "secretName": "pw", "correlationId": "c"}',
        "x" * 5000,
    ],
)
def test_a_malformed_message_is_refused_without_quoting_it(text: str | bytes) -> None:
    with pytest.raises(WorkMessageError) as caught:
        WorkCommand.parse(text)
    assert "hunter2" not in str(caught.value)


def test_the_connection_string_never_appears_in_a_queue_error(storage: Azurite) -> None:
    dead = storage.connection_string.replace(str(storage.queue_port), "1")  # nothing listens there
    queue = WorkQueue.from_connection_string(dead, QUEUE, retry_total=0, connection_timeout=1)
    with pytest.raises(RemediationError) as caught:
        queue.send(WorkCommand.secret("pw", None, trigger="http", correlation_id="c"))
    from tests.support.azurite import ACCOUNT_KEY

    assert ACCOUNT_KEY not in str(caught.value)


# -- HTTP: 202, a status URL, outcomes later ----------------------------------------------------
def test_a_queued_http_command_answers_202_and_its_status_url_shows_the_outcomes_later(
    queued: World, work: WorkQueue
) -> None:
    version = queued.rotate()

    answer = post({"secretName": queued.secret_name})

    assert answer.status == 202
    body = answer.json()
    assert body["status"] == "queued" and answer.headers["location"] == body["statusUrl"]
    assert body["statusUrl"] == f"https://healer.azurewebsites.net/api/remediations/{body['correlationId']}"
    assert "code=" not in body["statusUrl"]  # the function key is not echoed
    assert patches(queued.sb) == []  # nothing done inside the HTTP request
    pending = get(body["statusUrl"])
    assert (pending.status, pending.json()["status"], pending.json()["outcomes"]) == (200, "queued", [])

    assert pump(work) == 1

    done = get(body["statusUrl"]).json()
    assert done["status"] == "done"
    targets = [o for o in done["outcomes"] if o["datasource_id"]]
    assert sorted(o["datasource_id"] for o in targets) == sorted(queued.datasource_ids)
    assert {(o["action"], o["secret_version"], o["trigger"]) for o in targets} == {
        ("updated", version, "http")
    }
    assert queued.secret not in json.dumps(done)
    assert all(queued.stored_secret(ds) == queued.secret for ds in queued.datasources)


@pytest.mark.parametrize(
    ("make_body", "code"),
    [
        (lambda w: {"secretName": "not-bound-anywhere"}, "NotFound"),
        (lambda w: {"secretName": w.secret_name, "version": V_MISSING}, "SecretVersionNotFound"),
        (
            lambda w: {
                "workspaceId": w.workspace_id,
                "datasetId": "22222222-2222-2222-2222-222222222222",
            },
            "NotFound",
        ),
        (
            lambda w: {
                "gatewayId": "11111111-1111-1111-1111-111111111111",
                "datasourceId": "22222222-2222-2222-2222-222222222222",
            },
            "NotFound",
        ),
    ],
    ids=["unbound-secret", "unknown-version", "unknown-dataset", "unbound-target"],
)
def test_a_queued_command_is_validated_before_the_202(
    queued: World, work: WorkQueue, make_body: Callable[[World], dict[str, str]], code: str
) -> None:
    answer = post(make_body(queued))

    assert (answer.status, answer.json()["error"]["code"]) == (404, code)
    assert work.receive() == []


def test_a_queued_command_with_an_existing_version_is_accepted(queued: World, work: WorkQueue) -> None:
    version = queued.rotate()

    answer = post({"secretName": queued.secret_name, "version": version})

    assert answer.status == 202
    (message,) = work.receive()
    assert WorkCommand.parse(message.content).version == version


def test_a_dry_run_is_answered_at_once_even_with_the_queue(queued: World, work: WorkQueue) -> None:
    queued.rotate()

    answer = post({"secretName": queued.secret_name, "dryRun": True})

    assert answer.status == 200 and answer.json()["dryRun"] is True
    assert work.receive() == [] and patches(queued.sb) == []


def test_a_status_id_that_is_not_one_of_ours_is_a_400(queued: World) -> None:
    answer: HttpAnswer = invoke(
        "remediation_status",
        http_datum("GET", "remediations/x", route_params={"correlationId": "a b"}),
    )
    assert (answer.status, answer.json()["error"]["code"]) == (400, "InvalidParameter")


# -- Event Grid: queued, then processed ---------------------------------------------------------
@pytest.mark.parametrize("sample", [KV_EVENT, KV_CLOUD_EVENT])
def test_a_key_vault_event_is_queued_then_healed_by_the_queue_function(
    queued: World, work: WorkQueue, sample: str
) -> None:
    version = queued.rotate()
    event = event_datum(key_vault_event(sample, queued, version))

    invoke("keyvault_events", event)

    assert patches(queued.sb) == []  # Event Grid got its answer before any heal
    assert pump(work) == 1
    assert sorted(p.path.rsplit("/", 1)[-1] for p in patches(queued.sb)) == sorted(queued.datasource_ids)

    invoke("keyvault_events", event)  # a redelivery after it was handled: not queued again
    assert work.receive() == []


def test_a_duplicate_message_is_dropped_once_its_command_is_done(queued: World, work: WorkQueue) -> None:
    version = queued.rotate()
    raw = key_vault_event(KV_EVENT, queued, version)
    invoke("keyvault_events", event_datum(raw))
    invoke("keyvault_events", event_datum(raw))  # two deliveries before either ran: both queued

    assert pump(work) == 2

    assert len(patches(queued.sb)) == len(queued.datasource_ids)  # the second found the work done


def test_a_malformed_queue_message_is_logged_and_dropped(
    queued: World, caplog: pytest.LogCaptureFixture
) -> None:
    datum, metadata = queue_datum('{"kind": "secret", "secretName": "pw", "password": "hunter2"}')

    invoke("remediation_work", datum, metadata)  # returns: the host deletes it, no retry

    assert any("dropped" in r.getMessage() for r in caplog.records)
    assert "hunter2" not in caplog.text


def test_a_command_that_is_no_longer_bound_is_dropped(
    queued: World, caplog: pytest.LogCaptureFixture
) -> None:
    message = WorkCommand.secret("gone-secret", None, trigger="http", correlation_id="c-gone").to_message()
    datum, metadata = queue_datum(message)

    invoke("remediation_work", datum, metadata)

    assert any("dropped" in r.getMessage() for r in caplog.records)
    assert patches(queued.sb) == []


# -- settling versions --------------------------------------------------------------------------
def _settling_first(service: RemediationService, seconds: float) -> list[float | None]:
    """Make the healer's first heal_secret report a version settling for ``seconds``; later
    calls are the real thing. Returns the deadlines the healer was given."""
    healer = service.runtime.healer
    real = healer.heal_secret
    deadlines: list[float | None] = []

    def heal_secret(name: str, version: str | None = None, **kwargs: Any) -> Report:
        deadlines.append(kwargs.get("deadline"))
        if len(deadlines) == 1:
            return Report(correlation_id=str(kwargs.get("correlation_id")), retry_at=time.time() + seconds)
        return real(name, version, **kwargs)

    healer.heal_secret = heal_secret  # type: ignore[method-assign]
    return deadlines


def test_a_settling_report_is_queued_again_with_its_delay(queued: World, work: WorkQueue) -> None:
    version = queued.rotate()
    service = get_service()
    assert service.work_queue is not None
    calls = _spy(service.work_queue)
    deadlines = _settling_first(service, 120)
    invoke("keyvault_events", event_datum(key_vault_event(KV_EVENT, queued, version)))
    started = time.time()

    assert pump(work) == 1

    assert patches(queued.sb) == []
    assert work.receive() == []  # hidden until the version has settled
    assert deadlines[0] is not None and started < deadlines[0] <= started + 600  # below functionTimeout
    first, again = calls
    assert first.get("visibility_timeout") is None
    assert 115 <= again["visibility_timeout"] <= 121
    command = WorkCommand.parse(str(again["content"]))
    assert (command.kind, command.secret_name, command.attempt) == (WorkKind.SECRET, queued.secret_name, 1)
    assert get(f"https://healer.azurewebsites.net/api/remediations/{'x' * 8}").json()["status"] == "queued"


def test_a_settle_delay_past_seven_days_is_capped(queued: World, work: WorkQueue) -> None:
    service = get_service()
    assert service.work_queue is not None
    calls = _spy(service.work_queue)
    _settling_first(service, 30 * 86400)
    queued.rotate()
    message = WorkCommand.secret(queued.secret_name, None, trigger="eventgrid", correlation_id="e-1")

    invoke("remediation_work", *queue_datum(message.to_message()))

    assert [c["visibility_timeout"] for c in calls] == [MAX_DELAY_SECONDS]
    assert work.receive() == []


def test_in_the_embedded_mode_a_settling_version_is_waited_for_inline(embedded: World) -> None:
    version = embedded.rotate()
    service = get_service()
    slept: list[float] = []
    service._sleep = slept.append
    deadlines = _settling_first(service, 5)

    invoke("keyvault_events", event_datum(key_vault_event(KV_EVENT, embedded, version)))

    assert len(slept) == 1 and 3 < slept[0] <= 5
    assert len(deadlines) == 2 and deadlines[0] == deadlines[1]  # one run, one deadline
    assert sorted(p.path.rsplit("/", 1)[-1] for p in patches(embedded.sb)) == sorted(embedded.datasource_ids)


def test_in_the_embedded_mode_a_settle_time_past_the_deadline_is_left_to_the_sweep(
    embedded: World, caplog: pytest.LogCaptureFixture
) -> None:
    version = embedded.rotate()
    service = get_service()
    slept: list[float] = []
    service._sleep = slept.append
    _settling_first(service, 3600)

    invoke("keyvault_events", event_datum(key_vault_event(KV_EVENT, embedded, version)))

    assert slept == [] and patches(embedded.sb) == []
    assert any("sweep" in r.getMessage() for r in caplog.records)
    assert MAX_SETTLE_ATTEMPTS > 1


# -- at least once, done after handled ----------------------------------------------------------
def test_a_failed_invocation_is_not_dropped_as_a_duplicate_on_redelivery(embedded: World) -> None:
    version = embedded.rotate()
    service = get_service()
    healer = service.runtime.healer
    real = healer.heal_secret
    calls = []

    def fail_once(*args: Any, **kwargs: Any) -> Report:
        calls.append(1)
        if len(calls) == 1:
            raise RemediationError("the ledger was unreachable")
        return real(*args, **kwargs)

    healer.heal_secret = fail_once  # type: ignore[method-assign]
    event = event_datum(key_vault_event(KV_EVENT, embedded, version))

    with pytest.raises(RemediationError):
        invoke("keyvault_events", event)  # the host sees the failure; Event Grid redelivers
    invoke("keyvault_events", event)

    assert sorted(p.path.rsplit("/", 1)[-1] for p in patches(embedded.sb)) == sorted(embedded.datasource_ids)
    invoke("keyvault_events", event)  # now it is done: a third delivery is a duplicate
    assert len(calls) == 2


# -- two workers, one storage account -----------------------------------------------------------
def test_two_workers_racing_on_two_deliveries_update_each_target_once(queued: World, work: WorkQueue) -> None:
    settings = Settings.from_env()
    workers = [RemediationService.from_settings(settings) for _ in range(2)]
    version = queued.rotate()
    queued.sb.faults.latency = 0.02  # widen the window in which both could act
    for index, worker in enumerate(workers):
        event = key_vault_event(KV_EVENT, queued, version)
        event["id"] = f"delivery-{index}"  # two different deliveries (e.g. two subscriptions)
        worker.handle_event(event)
    messages = work.receive()
    assert len(messages) == 2
    start = threading.Barrier(len(workers))

    def run(worker: RemediationService, content: str) -> Callable[[], None]:
        def go() -> None:
            start.wait()
            worker.process_work(content, dequeue_count=1)

        return go

    threads = [threading.Thread(target=run(w, m.content)) for w, m in zip(workers, messages, strict=True)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for worker in workers:
            worker.close()

    assert sorted(p.path.rsplit("/", 1)[-1] for p in patches(queued.sb)) == sorted(queued.datasource_ids)


# -- host.json agrees with the code -------------------------------------------------------------
def test_host_json_matches_how_the_queue_is_written_and_how_long_runs_may_take() -> None:
    from azure.storage.queue import TextBase64EncodePolicy

    from remediation.edges.service import HTTP_RUN_SECONDS, RUN_SECONDS
    from tests.functions.host import FUNCTIONS

    host = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())
    queues = host["extensions"]["queues"]
    assert queues["messageEncoding"] == "base64"
    queue = WorkQueue.from_connection_string("UseDevelopmentStorage=true", QUEUE)
    assert isinstance(queue._client._message_encode_policy, TextBase64EncodePolicy)
    queue.close()
    assert 1 <= queues["maxDequeueCount"] <= 10  # a failing message ends in the poison queue
    hours, minutes, seconds = (int(p) for p in host["functionTimeout"].split(":"))
    timeout = hours * 3600 + minutes * 60 + seconds
    assert timeout >= RUN_SECONDS + 30 and HTTP_RUN_SECONDS < 230
    trigger = FUNCTIONS["remediation_work"].get_trigger()
    assert trigger.queue_name == "%REMEDIATION_WORK_QUEUE%"


# -- settings -----------------------------------------------------------------------------------
class _NoToken:
    """A token credential that is never asked (nothing is sent in this test)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise AssertionError("no request expected")


def test_the_work_queue_follows_the_storage_settings() -> None:
    from remediation.errors import ConfigError

    identity = Settings.from_env({"AzureWebJobsStorage__accountName": "healerstore"})
    assert identity.work_queue == "remediation-work"
    queue = WorkQueue.from_settings(identity, credential=_NoToken())  # type: ignore[arg-type]
    assert queue._client.url.startswith("https://healerstore.queue.core.windows.net/remediation-work")
    queue.close()
    custom = Settings.from_env(
        {
            "AzureWebJobsStorage__accountName": "healerstore",
            "AzureWebJobsStorage__queueServiceUri": "https://q.example.net/",
            "REMEDIATION_WORK_QUEUE": "my-work",
        }
    )
    queue = WorkQueue.from_settings(custom, credential=_NoToken())  # type: ignore[arg-type]
    assert queue._client.url.startswith("https://q.example.net/my-work")
    queue.close()
    for bad in ({"REMEDIATION_WORK_QUEUE": "Bad_Name"}, {"REMEDIATION_WORK_QUEUE": "a--b"}):
        with pytest.raises(ConfigError, match="REMEDIATION_WORK_QUEUE"):
            Settings.from_env(bad)
    clear = Settings.from_env(
        {
            "AzureWebJobsStorage__accountName": "healerstore",
            "AzureWebJobsStorage__queueServiceUri": "http://q.example.net",
        }
    )
    with pytest.raises(ConfigError, match="https"):
        WorkQueue.from_settings(clear, credential=_NoToken())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="storage account"):
        WorkQueue.from_settings(Settings.from_env({}))


def test_a_fresh_key_vault_version_is_queued_again_until_it_has_settled(
    queued: World, work: WorkQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real healer, the real settle time: an event that arrives as the version is written
    presents nothing, and the queue gets the same command back, hidden until it has settled."""
    monkeypatch.setenv("REMEDIATION_SETTLE_SECONDS", "90")
    service_module.reset_service()
    version = queued.rotate(order="vault-first", delay=30)
    service = get_service()
    assert service.work_queue is not None
    calls = _spy(service.work_queue)
    invoke("keyvault_events", event_datum(key_vault_event(KV_EVENT, queued, version)))

    assert pump(work) == 1

    assert patches(queued.sb) == []
    again = calls[-1]
    assert 80 <= again["visibility_timeout"] <= 91
    assert WorkCommand.parse(str(again["content"])).attempt == 1
    assert queued.account.failures_of(queued.secret) == 0


def test_an_operator_presents_an_in_doubt_version_again_over_http(
    embedded: World,
) -> None:
    version = embedded.rotate()
    embedded.sb.faults.add("powerbi.update_datasource", after=True, drop=True)
    first = post({"secretName": embedded.secret_name})
    assert {t["action"] for t in first.json()["targets"]} == {"in-doubt"}

    again = post({"secretName": embedded.secret_name, "presentAgain": True})

    assert again.status == 200
    assert {t["action"] for t in again.json()["targets"]} == {"updated"}
    assert {t["secret_version"] for t in again.json()["targets"]} == {version}
    assert post({"secretName": embedded.secret_name, "presentAgain": "yes"}).status == 400


# -- a large fan-out spread over instances ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_consumers_heal_a_500_target_secret_with_one_patch_per_target_under_the_same_rules(
    sb: Sandbox, storage: Azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, work: WorkQueue
) -> None:
    w = build_world(sb, sources=500, servers=1)  # 500 databases of one server, one login
    _apply(w, monkeypatch, tmp_path)
    monkeypatch.setenv("AzureWebJobsStorage", storage.connection_string)
    monkeypatch.setenv("REMEDIATION_FANOUT_TARGETS", "100")
    monkeypatch.setattr(service_module, "BUSY_RETRY_SECONDS", 0.2)
    settings = Settings.from_env()
    consumers = [RemediationService.from_settings(settings) for _ in range(2)]
    version = w.rotate()
    command = WorkCommand.secret(w.secret_name, None, trigger="eventgrid", correlation_id="rotation-1")
    work.send(command)
    work.send(command)  # Event Grid delivers at least once
    errors: list[BaseException] = []

    def consume(service: RemediationService) -> None:
        """One instance's queue listener: batches of 8, run concurrently (as the host does)."""

        def run(message: Any) -> None:
            try:
                service.process_work(message.content, dequeue_count=message.dequeue_count)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            work.delete(message)

        idle = 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            while idle < 6:
                messages = work.receive(max_messages=8, visibility_timeout=120)
                if not messages:
                    idle += 1
                    time.sleep(0.25)
                    continue
                idle = 0
                list(pool.map(run, messages))

    threads = [threading.Thread(target=consume, args=(c,)) for c in consumers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        ledger = consumers[0].runtime.ledger
        held = [ledger.target_state(w.gateway_id, d).holds(w.secret_name, version) for d in w.datasource_ids]
        accounts = [
            a
            for a in ledger.account_versions(with_verdict_only=False)
            if (a.secret, a.version) == (w.secret_name, version)
        ]
    finally:
        for consumer in consumers:
            consumer.close()

    assert errors == []
    served = [p.path.rsplit("/", 1)[-1] for p in patches(sb) if p.status == 200]
    assert sorted(served) == sorted(w.datasource_ids)  # one PATCH per target, none twice
    assert len(patches(sb)) == 500
    assert all(held)
    (account,) = accounts  # one account: one target presented first, the rest followed
    assert account.presentations == 1 and account.verdict is None
    assert w.failed_sign_ins() == 0
    assert all(stored == w.secret for stored in (w.stored_secret(d) for d in w.datasources))


def test_a_part_of_a_fan_out_round_trips_and_is_done_on_its_own() -> None:
    parent = WorkCommand.secret("sql-sales-password", None, trigger="eventgrid", correlation_id="evt-1")
    gateway, datasource = "6f1c2b9e-0a4d-4e7b-9a51-3c2d1e0f9a8b", "d2a7c0f4-5b6e-4c3d-8e9f-0a1b2c3d4e5f"
    part = parent.fan_out(gateway.upper(), datasource)
    assert WorkCommand.parse(part.to_message()) == part
    assert (part.kind, part.correlation_id, part.part) == (WorkKind.TARGET, "evt-1", True)
    assert part.done_key == f"evt-1|{gateway}|{datasource}" and parent.done_key == "evt-1"
    with pytest.raises(WorkMessageError, match="part"):
        WorkCommand.parse(json.dumps({**parent.to_dict(), "part": True}))


# -- an operator's "present again" is one presentation, whatever the queue does with it ---------
def test_a_queued_present_again_fanned_out_and_redelivered_is_one_presentation_to_the_account(
    sb: Sandbox, storage: Azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, work: WorkQueue
) -> None:
    w = build_world(sb, sources=4)
    _apply(w, monkeypatch, tmp_path)
    monkeypatch.setenv("AzureWebJobsStorage", storage.connection_string)
    monkeypatch.setenv("REMEDIATION_FANOUT_TARGETS", "1")  # every target is a queued part
    service_module.reset_service()
    try:
        wrong = "Wrong#" + "x" * 12
        w.put_in_vault(wrong)
        assert post({"secretName": w.secret_name}).status == 202
        while pump(work):
            pass
        assert w.account.failures_of(wrong) == 1  # the rotation's one failed sign-in

        assert post({"secretName": w.secret_name, "presentAgain": True}).status == 202
        (message,) = work.receive(max_messages=32, visibility_timeout=120)
        request = WorkCommand.parse(message.content)
        assert request.present_again
        for _ in range(2):  # delivered at least once: the same request arrives twice more
            work.send(request)
        work.send(request, delay=0)
        work.delete(message)
        while pump(work):  # each delivery fans out again; every part carries presentAgain
            pass

        assert w.account.failures_of(wrong) == 2  # one more: the request's one presentation
    finally:
        service_module.reset_service()
