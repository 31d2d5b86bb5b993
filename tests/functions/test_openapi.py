"""docs/openapi.json against the running functions, driven as the worker drives them
(:mod:`tests.functions.host`): every documented request shape gets the documented answer, and a
hypothesis run of a few thousand generated requests through the converters finds no 5xx, no
answer outside the document, no traceback and no secret."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from remediation.edges import service as service_module
from sandbox import Sandbox
from tests.functions.host import HttpAnswer, http_datum, invoke
from tests.support.world import World, build_world

pytestmark = pytest.mark.sandbox
DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
DOC: dict[str, Any] = json.loads(DOC_PATH.read_text(encoding="utf-8"))
_BASE = "urn:openapi"
_REGISTRY = Registry().with_resource(_BASE, Resource.from_contents(DOC, default_specification=DRAFT202012))
ROUTES = {("POST", "remediate"): "/remediate", ("GET", "remediations"): "/remediations"}


class FakeQueue:
    """The work queue of the deployed app, as far as the HTTP function sees it."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, command: Any, *, delay: float = 0.0) -> None:
        self.sent.append(command)

    def close(self) -> None:
        pass


CONNECTION_SECRET = "Lake#secret-4c1d"


@pytest.fixture
def world(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[World]:
    w = build_world(sb, sources=2)
    source = sb.sources.add("lake-src", username="svc_lake", secret=CONNECTION_SECRET)
    connection = sb.fabric.add_connection(source, users=[w.app.client_id])
    sb.vault.set_secret("lake-secret", CONNECTION_SECRET)
    lake = {
        "name": "lake",
        "secret": "lake-secret",
        "credentialType": "Basic",
        "username": "svc_lake",
        "targets": [{"connectionId": connection.id}],
    }
    env = w.env(tmp_path / "ledger.sqlite", REMEDIATION_BINDINGS=w.bindings_json(lake))
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    service_module.reset_service()
    yield w
    service_module.reset_service()


def call(
    method: str,
    route: str,
    body: bytes = b"",
    *,
    params: dict[str, str] | None = None,
    body_type: str = "bytes",
) -> HttpAnswer:
    name = {"remediate": "remediate", "remediations": "remediations"}.get(route, "remediation_status")
    route_params = {"correlationId": route.split("/", 1)[1]} if name == "remediation_status" else None
    datum = http_datum(method, route, body, params=params, route_params=route_params, body_type=body_type)
    answer: HttpAnswer = invoke(name, datum)
    return answer


def documented(method: str, route: str, answer: HttpAnswer) -> dict[str, Any]:
    """Check ``answer`` against the document; returns its body."""
    path = ROUTES.get((method, route), "/remediations/{correlationId}")
    responses = DOC["paths"][path][method.lower()]["responses"]
    assert str(answer.status) in responses, f"{method} {path} answered {answer.status}, not documented"
    response = responses[str(answer.status)]
    body = answer.json()
    schema = response["content"]["application/json"]["schema"]
    errors = sorted(Draft202012Validator(_anchored(schema), registry=_REGISTRY).iter_errors(body), key=str)
    assert not errors, f"{method} {path} {answer.status}: {errors[0].message}"
    for name in response.get("headers", {}):
        assert name.lower() in answer.headers
    return body


def _anchored(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``#/...`` references resolved in the document."""
    text = json.dumps(schema).replace('"$ref": "#/', f'"$ref": "{_BASE}#/')
    anchored: dict[str, Any] = json.loads(text)
    return anchored


def no_leak(answer: HttpAnswer, world: World) -> None:
    text = answer.body.decode("utf-8", "replace")
    assert "Traceback" not in text and 'File "' not in text
    assert world.secret not in text and CONNECTION_SECRET not in text
    assert answer.status < 500, text


# -- the document itself ---------------------------------------------------------------------------
def test_the_document_is_openapi_3_1_and_its_schemas_are_valid_json_schema() -> None:
    assert DOC["openapi"].startswith("3.1.")
    for schema in DOC["components"]["schemas"].values():
        Draft202012Validator.check_schema(_anchored(schema))
    operations = {(m, p) for p, item in DOC["paths"].items() for m in item}
    assert operations == {
        ("post", "/remediate"),
        ("get", "/remediations"),
        ("get", "/remediations/{correlationId}"),
    }


def test_every_error_code_the_service_can_answer_is_documented() -> None:
    source = Path(service_module.__file__).read_text(encoding="utf-8")
    answered = set(re.findall(r'error\(\s*\d{3},\s*"([A-Za-z]+)"', source))
    answered |= {"InternalError", "ConfigurationError"}  # function_app.py's own answers
    documented_codes = {
        code
        for item in DOC["paths"].values()
        for op in item.values()
        for response in op["responses"].values()
        for part in response["content"]["application/json"]["schema"].get("allOf", [])[1:]
        for code in part["properties"]["error"]["properties"]["code"]["enum"]
    }
    assert answered <= documented_codes, answered - documented_codes


# -- every documented shape, answered as documented -------------------------------------------------
def test_every_request_shape_is_answered_as_documented(sb: Sandbox, world: World) -> None:
    w = world
    version = w.version
    shapes = [
        {"secretName": w.secret_name, "dryRun": True},
        {"secretName": w.secret_name, "version": version, "dryRun": True},
        {"workspaceId": w.workspace_id, "datasetId": w.dataset_ids[0], "dryRun": True},
        {"gatewayId": w.gateway_id, "datasourceId": w.datasource_ids[0], "dryRun": True},
        {"connectionId": next(iter(sb.fabric.connections)).upper(), "dryRun": True},
        {"secretName": w.secret_name},
        {"secretName": w.secret_name, "presentAgain": True},
    ]
    for body in shapes:
        answer = call("POST", "remediate", json.dumps(body).encode())
        assert answer.status == 200, answer.body
        report = documented("POST", "remediate", answer)
        assert report["dryRun"] is bool(body.get("dryRun"))
        no_leak(answer, w)
        status = call("GET", f"remediations/{report['correlationId']}")
        assert documented("GET", "remediations/x", status)["status"] in ("done", "running", "queued")

    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    listed = call("GET", "remediations", params={"since": since, "limit": "5"})
    assert listed.status == 200
    assert len(documented("GET", "remediations", listed)["outcomes"]) <= 5

    errors = {
        (b"", 400, "EmptyBody"),
        (b"[1]", 400, "InvalidJson"),
        (b'{"secretName": "x", "bogus": 1}', 400, "UnknownField"),
        (b'{"secretName": 5}', 400, "InvalidField"),
        (b'{"secretName": "x", "datasetId": "y"}', 400, "InvalidRequest"),
        (b'{"secretName": "not-bound-here"}', 404, "NotFound"),
        (b'{"connectionId": "6952a7b2-aea3-414f-9d85-6c0fe5d34539"}', 404, "NotFound"),
        (b'{"connectionId": "lake"}', 400, "InvalidField"),
        (
            b'{"connectionId": "6952a7b2-aea3-414f-9d85-6c0fe5d34539", "gatewayId": "x"}',
            400,
            "InvalidRequest",
        ),
        (
            json.dumps({"secretName": w.secret_name, "version": "0" * 32}).encode(),
            404,
            "SecretVersionNotFound",
        ),
        (b'{"secretName": "' + b"a" * 17000 + b'"}', 413, "BodyTooLarge"),
        (b'{"type": "Microsoft.Fabric.ItemJobFailed"}', 400, "InvalidEvent"),
        (b'[{"id": "e", "eventType": "PowerBI.RefreshFailed", "data": {}}]', 400, "InvalidEvent"),
        (b"[]", 400, "InvalidJson"),
    }
    for body, status, code in errors:
        answer = call("POST", "remediate", body)
        assert (answer.status, documented("POST", "remediate", answer)["error"]["code"]) == (status, code)
    for params, code in (({"bogus": "1"}, "UnknownParameter"), ({"limit": "0"}, "InvalidParameter")):
        answer = call("GET", "remediations", params=params)
        assert documented("GET", "remediations", answer)["error"]["code"] == code
    answer = call("GET", "remediations/" + "x" * 200)
    assert documented("GET", "remediations/x", answer)["error"]["code"] == "InvalidParameter"


def job_event(world: World, event_id: str, *, kind: str = "SemanticModel") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "type": "Microsoft.Fabric.ItemJobFailed",
        "source": "tenant",
        "id": event_id,
        "subject": f"/workspaces/{world.workspace_id}/items/{world.dataset_ids[0]}/jobs/instances/{event_id}",
        "data": {
            "itemId": world.dataset_ids[0],
            "itemKind": kind,
            "workspaceId": world.workspace_id,
            "jobInstanceId": "9b2e1c4d-5f6a-4b7c-8d9e-0f1a2b3c4d5" + event_id[-1],
        },
    }


def test_posted_events_are_answered_as_documented(sb: Sandbox, world: World) -> None:
    one = call("POST", "remediate", json.dumps(job_event(world, "e-1")).encode())
    assert [e["status"] for e in documented("POST", "remediate", one)["events"]] == ["done"]
    batch = [
        job_event(world, "e-1"),
        job_event(world, "e-2", kind="Pipeline"),
        {"id": "k", "type": "Other.Thing"},
    ]
    answer = call("POST", "remediate", json.dumps(batch).encode())
    assert [e["status"] for e in documented("POST", "remediate", answer)["events"]] == [
        "duplicate",
        "ignored",
        "ignored",
    ]
    no_leak(answer, world)
    service = service_module.get_service()
    service.work_queue = FakeQueue()  # type: ignore[assignment]
    queued = call("POST", "remediate", json.dumps([job_event(world, "e-3")]).encode())
    (entry,) = documented("POST", "remediate", queued)["events"]
    assert entry["status"] == "queued" and entry["statusUrl"].endswith("/remediations/e-3")


def test_a_queued_command_is_answered_202_with_its_status_url(sb: Sandbox, world: World) -> None:
    service = service_module.get_service()
    queue = FakeQueue()
    service.work_queue = queue  # type: ignore[assignment]
    answer = call("POST", "remediate", json.dumps({"secretName": world.secret_name}).encode())
    assert answer.status == 202
    body = documented("POST", "remediate", answer)
    assert answer.headers["location"] == body["statusUrl"] and body["statusUrl"].endswith(
        body["correlationId"]
    )
    assert len(queue.sent) == 1
    pending = call("GET", f"remediations/{body['correlationId']}")
    assert documented("GET", "remediations/x", pending)["status"] == "queued"


# -- generated requests ---------------------------------------------------------------------------
def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
        max_leaves=8,
    )


def _bodies(world: World) -> st.SearchStrategy[bytes]:
    guid = st.uuids().map(str) | st.sampled_from(
        [
            world.workspace_id,
            world.gateway_id,
            *world.dataset_ids,
            *world.datasource_ids,
            *world.sb.fabric.connections,
        ]
    )
    names = st.sampled_from([world.secret_name, "not-bound", "a" * 127]) | st.from_regex(
        r"[0-9A-Za-z-]{1,20}", fullmatch=True
    )
    versions = st.sampled_from([world.version]) | st.from_regex(r"[0-9a-f]{32}", fullmatch=True)
    flags = st.fixed_dictionaries({}, optional={"dryRun": st.just(True), "presentAgain": st.booleans()})
    shapes = st.one_of(
        st.fixed_dictionaries({"secretName": names}),
        st.fixed_dictionaries({"secretName": names, "version": versions}),
        st.fixed_dictionaries({"workspaceId": guid, "datasetId": guid}),
        st.fixed_dictionaries({"gatewayId": guid, "datasourceId": guid}),
        st.fixed_dictionaries({"connectionId": guid}),
    )
    valid = st.builds(lambda s, f: {**s, **f, "dryRun": True} if "dryRun" in f else {**s, **f}, shapes, flags)
    keys = st.sampled_from(
        [
            "secretName",
            "version",
            "workspaceId",
            "datasetId",
            "gatewayId",
            "datasourceId",
            "connectionId",
            "dryRun",
            "presentAgain",
            "extra",
            "type",
            "",
        ]
    )
    mangled = st.dictionaries(keys, _json_values(), max_size=4)
    event = st.fixed_dictionaries(
        {
            "id": st.text(max_size=8) | st.sampled_from(["e-1", "e-2"]),
            "type": st.sampled_from(
                [
                    "Microsoft.Fabric.ItemJobFailed",
                    "Microsoft.Fabric.JobEvents.ItemJobFailed",
                    "Microsoft.Fabric.ItemJobSucceeded",
                    "PowerBI.RefreshFailed",
                    "Other",
                ]
            ),
        },
        optional={
            "specversion": st.just("1.0"),
            "subject": st.text(max_size=20),
            "data": st.fixed_dictionaries(
                {},
                optional={
                    "itemId": guid,
                    "datasetId": guid,
                    "workspaceId": guid,
                    "itemKind": st.sampled_from(["SemanticModel", "Dataset", "Pipeline", ""]),
                    "jobInstanceId": guid,
                },
            )
            | _json_values(),
        },
    )
    events = event | st.lists(event, max_size=3)
    documents = (valid | mangled | events | _json_values()).map(lambda v: json.dumps(v).encode())
    raw = st.binary(max_size=64) | st.sampled_from([b"{", b"\xff\xfe", b"[" * 2000, b'{"a":' * 600, b" "])
    return documents | raw


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def _fuzz(data: st.DataObject, world: World, counts: dict[int, int]) -> None:
    kind = data.draw(st.sampled_from(["post", "post", "post", "list", "status"]))
    if kind == "post":
        body = data.draw(_bodies(world))
        body_type = data.draw(st.sampled_from(["bytes", "string"]))
        method, route = "POST", "remediate"
        answer = call(method, route, body, body_type=body_type)
    elif kind == "list":
        params = data.draw(
            st.dictionaries(
                st.sampled_from(["since", "limit", "bogus"]),
                st.one_of(
                    st.text(alphabet=st.characters(codec="ascii", exclude_characters="&=#%+ "), max_size=30),
                    st.text(alphabet=st.characters(exclude_characters="&=#%+ "), max_size=12),
                    st.sampled_from(
                        ["2026-11-22T08:00:00Z", "2026-11-22T08:00:00", "5", "1000", "1001", "0"]
                        + [
                            "\u00b2",
                            "\u0665",
                            "9" * 5000,
                            "9999-12-31T23:59:59-14:00",
                            "0001-01-01T00:00:00+14:00",
                        ]
                    ),
                ),
                max_size=3,
            )
        )
        method, route = "GET", "remediations"
        answer = call(method, route, params=params)
    else:
        ident = data.draw(
            st.text(
                alphabet=st.characters(codec="ascii", exclude_characters="/?#%&"), min_size=1, max_size=140
            )
        )
        method, route = "GET", f"remediations/{ident}"
        answer = call(method, route)
    no_leak(answer, world)
    documented(method, route, answer)
    counts[answer.status] = counts.get(answer.status, 0) + 1


def test_generated_requests_find_no_5xx_no_traceback_and_no_secret(sb: Sandbox, world: World) -> None:
    counts: dict[int, int] = {}
    _fuzz(world=world, counts=counts)  # about 30 s on an idle 2-core machine (counted, not timed)
    assert sum(counts.values()) >= 2000
    assert {200, 400, 404}.issubset(counts), counts
    print(f"generated requests by status: {dict(sorted(counts.items()))}")
