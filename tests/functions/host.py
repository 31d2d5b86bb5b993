"""What the Functions host and the Python worker do around a function, without the host.

The host sends each invocation's trigger as typed data (``meta.Datum``) plus trigger metadata;
the worker checks the parameter's annotation against the binding's converter
(``check_input_type_annotation``, at indexing), builds the argument with the converter's
``decode``, calls the function, and encodes an HTTP return value with the ``http`` out
converter. :func:`invoke` does exactly that, with the converters of the installed
``azure-functions``; the builders below shape payloads as the host sends them.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from azure.functions import meta

import function_app


def _functions() -> dict[str, Any]:
    """Every function ``function_app`` can have: the app's, and the Eventstream function, which
    the app registers only when its connection is set (tests drive it either way)."""
    found = {f.get_function_name(): f for f in function_app.app.get_functions()}
    if "job_events" not in found:
        optional = func.FunctionApp()
        optional.register_functions(function_app.eventstream)
        found.update((f.get_function_name(), f) for f in optional.get_functions())
    return found


FUNCTIONS = _functions()
HOST = "https://healer.azurewebsites.net"


def converter(binding_type: str) -> Any:
    found = meta.get_binding_registry().get(binding_type)
    assert found is not None, f"azure.functions has no converter for {binding_type}"
    return found


def annotation_is_accepted(name: str) -> bool:
    """The worker's indexing check: the trigger parameter's annotation suits its converter."""
    fn = FUNCTIONS[name]
    trigger = fn.get_trigger()
    hints = typing.get_type_hints(fn.get_user_function(), vars(function_app))
    return bool(converter(trigger.type).check_input_type_annotation(hints[trigger.name]))


def invoke(name: str, datum: meta.Datum, metadata: Mapping[str, meta.Datum] | None = None) -> Any:
    """Invoke function ``name`` as the worker does; an HTTP answer comes back as :class:`HttpAnswer`."""
    fn = FUNCTIONS[name]
    trigger = fn.get_trigger()
    assert annotation_is_accepted(name), f"{name}: the worker would refuse the annotation"
    argument = converter(trigger.type).decode(datum, trigger_metadata=dict(metadata or {}))
    result = fn.get_user_function()(**{trigger.name: argument})
    if trigger.type == "httpTrigger":
        return HttpAnswer.from_datum(converter("http").encode(result, expected_type=None))
    return result


# -- payloads as the host sends them ----------------------------------------------------------
def event_datum(raw: Mapping[str, Any]) -> meta.Datum:
    """One event of an Event Grid delivery (Event Grid or CloudEvents 1.0 schema): the host
    splits the array and sends each event as JSON."""
    return meta.Datum(json.dumps(raw), "json")


def eventhub_datum(
    bodies: list[bytes],
    *,
    data_type: str = "collection_bytes",
    first_sequence_number: int = 100,
    enqueued: datetime | None = None,
) -> tuple[meta.Datum, dict[str, meta.Datum]]:
    """An Event Hubs trigger with ``cardinality=many``: the bodies as the host sends a batch
    (``collection_bytes`` for ``dataType: binary``, ``collection_string`` for ``string``: a
    protobuf message whose repeated field the converter reads as ``.bytes`` / ``.string``), and the
    trigger metadata with one entry per event (``SystemPropertiesArray``, which the converter
    reads, and the other ``...Array`` values the host sends beside it)."""
    moment = (enqueued or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    system = [
        {
            "x-opt-sequence-number": first_sequence_number + i,
            "x-opt-offset": str(4096 * (first_sequence_number + i)),
            "x-opt-enqueued-time": moment,
            "SequenceNumber": first_sequence_number + i,
            "Offset": str(4096 * (first_sequence_number + i)),
            "PartitionKey": None,
            "EnqueuedTimeUtc": moment,
        }
        for i in range(len(bodies))
    ]
    if data_type == "collection_bytes":
        value: Any = SimpleNamespace(bytes=list(bodies))
    elif data_type == "collection_string":
        value = SimpleNamespace(string=[b.decode("utf-8") for b in bodies])
    else:
        raise ValueError(data_type)

    def as_json(obj: Any) -> meta.Datum:
        return meta.Datum(json.dumps(obj), "json")

    metadata = {
        "SystemPropertiesArray": as_json(system),
        "PropertiesArray": as_json([{} for _ in bodies]),
        "PartitionKeyArray": as_json([None for _ in bodies]),
        "OffsetArray": as_json([p["Offset"] for p in system]),
        "SequenceNumberArray": as_json([p["SequenceNumber"] for p in system]),
        "EnqueuedTimeUtcArray": as_json([moment for _ in bodies]),
        "PartitionContext": as_json(
            {"ConsumerGroup": "$Default", "EventHubName": "es_healer", "PartitionId": "0"}
        ),
    }
    return meta.Datum(value, data_type), metadata


def timer_datum(*, past_due: bool = False) -> meta.Datum:
    now = datetime.now(UTC)
    return meta.Datum(
        json.dumps(
            {
                "Schedule": {"AdjustForDST": True},
                "ScheduleStatus": {
                    "Last": (now - timedelta(minutes=15)).isoformat(),
                    "Next": (now + timedelta(minutes=15)).isoformat(),
                    "LastUpdated": now.isoformat(),
                },
                "IsPastDue": past_due,
            }
        ),
        "json",
    )


def http_datum(
    method: str,
    route: str,
    body: bytes = b"",
    *,
    params: Mapping[str, str] | None = None,
    route_params: Mapping[str, str] | None = None,
    body_type: str = "bytes",
) -> meta.Datum:
    """An HTTP trigger's RpcHttp: method, url (with the function key in the query, as callers
    send it), headers, query, route params and the body as ``bytes`` or ``string``."""
    query = {"code": "function-key-not-a-secret-here", **(params or {})}
    url = f"{HOST}/api/{route}?" + "&".join(f"{k}={v}" for k, v in query.items())
    return meta.Datum(
        {
            "method": meta.Datum(method, "string"),
            "url": meta.Datum(url, "string"),
            "headers": {
                "content-type": meta.Datum("application/json", "string"),
                "host": meta.Datum(urlsplit(HOST).netloc, "string"),
            },
            "query": {k: meta.Datum(v, "string") for k, v in query.items()},
            "params": {k: meta.Datum(v, "string") for k, v in (route_params or {}).items()},
            "body": meta.Datum(body.decode("utf-8", "replace") if body_type == "string" else body, body_type),
        },
        "http",
    )


def queue_datum(
    content: str,
    *,
    message_id: str = "8b4c7c4e-0000-0000-0000-000000000001",
    dequeue_count: int = 1,
    pop_receipt: str = "AgAAAAMAAAAAAAAA",
    inserted: datetime | None = None,
    next_visible: datetime | None = None,
    expires: datetime | None = None,
) -> tuple[meta.Datum, dict[str, meta.Datum]]:
    """A queue trigger: the message text (the host has already base64-decoded it) and its
    metadata (``Id``, ``DequeueCount``, ``PopReceipt``, ``InsertionTime``, ``NextVisibleTime``,
    ``ExpirationTime``)."""
    now = datetime.now(UTC)

    def when(moment: datetime | None, default: datetime) -> meta.Datum:
        return meta.Datum(json.dumps((moment or default).strftime("%Y-%m-%dT%H:%M:%S+00:00")), "json")

    metadata = {
        "Id": meta.Datum(message_id, "string"),
        "DequeueCount": meta.Datum(str(dequeue_count), "json"),
        "PopReceipt": meta.Datum(pop_receipt, "string"),
        "InsertionTime": when(inserted, now),
        "NextVisibleTime": when(next_visible, now + timedelta(minutes=10)),
        "ExpirationTime": when(expires, now + timedelta(days=7)),
    }
    return meta.Datum(content, "string"), metadata


@dataclass
class HttpAnswer:
    """An HTTP function's answer as the worker hands it back to the host."""

    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def from_datum(cls, datum: meta.Datum) -> HttpAnswer:
        assert datum.type == "http"
        value = datum.value
        headers = {k.lower(): v.value for k, v in value["headers"].items()}
        return cls(int(value["status_code"].value), headers, value["body"].value)

    def json(self) -> dict[str, Any]:
        assert self.headers.get("content-type") == "application/json"
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


def route_of(url: str) -> tuple[str, dict[str, str]]:
    """``https://host/api/remediations/ID?x=y`` -> (``remediations/ID``, query)."""
    parts = urlsplit(url)
    return parts.path.removeprefix("/api/"), dict(parse_qsl(parts.query))
