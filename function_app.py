"""Azure Functions entry point (Python v2 programming model): thin adapters only.

Each function turns its trigger into a call on :mod:`remediation.edges.service`, which knows nothing of
Azure Functions; the service is built on first use, once per worker. Importing this module loads
only ``azure.functions`` (what indexing needs) and :mod:`remediation.config.settings` (to know
whether the Eventstream connection exists): the product is imported on the first invocation.

- ``keyvault_events``   Event Grid (Key Vault system topic), Event Grid or CloudEvents 1.0 schema:
                        SecretNewVersionCreated heals; near expiry / expired are warnings.
- ``refresh_events``    Event Grid (custom topic): ``PowerBI.RefreshFailed`` (and Fabric's
                        ``Microsoft.Fabric.ItemJobFailed`` for semantic models) heals the dataset.
- ``job_events``        Event Hubs, batches (an Eventstream's custom endpoint): Fabric job events,
                        read as ``refresh_events`` reads them. Registered only when the connection
                        ``REMEDIATION_EVENTSTREAM_CONNECTION`` is set (or its identity-based
                        ``__fullyQualifiedNamespace``); hub ``%REMEDIATION_EVENTSTREAM_HUB%``,
                        consumer group ``%REMEDIATION_EVENTSTREAM_CONSUMER_GROUP%``.
- ``remediation_work``  queue ``%REMEDIATION_WORK_QUEUE%`` on ``AzureWebJobsStorage``: the
                        commands the push triggers queued (with a storage account).
- ``sweep``             timer, ``%REMEDIATION_SWEEP_SCHEDULE%`` (every 15 minutes by default).
- ``remediate``         ``POST /api/remediate`` (function key); 202 + status URL when queued.
- ``remediations``      ``GET /api/remediations?since=...`` (function key).
- ``remediation_status`` ``GET /api/remediations/{correlationId}`` (function key).
"""

from __future__ import annotations

import json
import logging
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import azure.functions as func

from remediation.config.settings import connection_configured

if TYPE_CHECKING:
    from remediation.edges.http_input import Answer
    from remediation.edges.service import RemediationService

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
logger = logging.getLogger("remediation.functions")


def _service() -> RemediationService:
    from remediation.edges.service import get_service

    return get_service()


def _event(event: func.EventGridEvent | func.CloudEvent) -> dict[str, Any]:
    """The event as the JSON it came in: the converter gives a ``CloudEvent`` for a CloudEvents
    1.0 subscription, an ``EventGridEvent`` otherwise (the parameter's annotation is the same)."""
    if isinstance(event, func.CloudEvent):
        return {
            "id": event.id,
            "type": event.type,
            "source": event.source,
            "subject": event.subject,
            "specversion": event.specversion,
            "data": event.get_json(),
        }
    return {
        "id": event.id,
        "eventType": event.event_type,
        "subject": event.subject,
        "topic": event.topic,
        "data": event.get_json(),
        "dataVersion": event.data_version,
    }


def _handle(event: func.EventGridEvent, trigger: str) -> None:
    from remediation.inbound.events import EventError

    service = _service()
    try:
        service.handle_event(_event(event), trigger=trigger)
    except EventError as exc:
        # A malformed event will not get better by redelivery: acknowledge it, say why.
        logger.warning("event %s ignored: %s", str(event.id)[:128], exc)
    finally:
        service.telemetry.flush()


@app.function_name("keyvault_events")
@app.event_grid_trigger(arg_name="event")
def keyvault_events(event: func.EventGridEvent) -> None:
    _handle(event, "eventgrid")


@app.function_name("refresh_events")
@app.event_grid_trigger(arg_name="event")
def refresh_events(event: func.EventGridEvent) -> None:
    _handle(event, "refresh-event")


EVENTSTREAM_CONNECTION = "REMEDIATION_EVENTSTREAM_CONNECTION"
eventstream = func.Blueprint()
"""The Eventstream function: on the app only when its connection is set (below)."""


@eventstream.function_name("job_events")
@eventstream.event_hub_message_trigger(
    arg_name="events",
    connection=EVENTSTREAM_CONNECTION,
    event_hub_name="%REMEDIATION_EVENTSTREAM_HUB%",
    consumer_group="%REMEDIATION_EVENTSTREAM_CONSUMER_GROUP%",
    cardinality=func.Cardinality.MANY,
    data_type=func.DataType.BINARY,
)
def job_events(events: typing.List[func.EventHubEvent]) -> None:  # noqa: UP006 - the worker refuses list[...]
    """A batch from an Eventstream custom endpoint: each entry's events are handled on their own;
    an unreadable one is skipped and logged, the rest are handled (Event Hubs checkpoints the
    batch whatever happens here; the sweep heals what an entry that failed reported)."""
    service = _service()
    try:
        service.handle_event_batch([event.get_body() for event in events], trigger="eventstream")
    finally:
        service.telemetry.flush()


if connection_configured(EVENTSTREAM_CONNECTION):
    app.register_functions(eventstream)


@app.function_name("remediation_work")
@app.queue_trigger(arg_name="msg", queue_name="%REMEDIATION_WORK_QUEUE%", connection="AzureWebJobsStorage")
def remediation_work(msg: func.QueueMessage) -> None:
    service = _service()
    try:
        service.process_work(msg.get_body(), dequeue_count=msg.dequeue_count)
    finally:
        service.telemetry.flush()


@app.function_name("sweep")
@app.timer_trigger(
    arg_name="timer", schedule="%REMEDIATION_SWEEP_SCHEDULE%", run_on_startup=False, use_monitor=True
)
def sweep(timer: func.TimerRequest) -> None:
    if timer.past_due:
        logger.info("the sweep is running late")
    service = _service()
    try:
        service.sweep()
    finally:
        service.telemetry.flush()


def _respond(answer: Answer) -> func.HttpResponse:
    status, body = answer
    headers = {"Location": body["statusUrl"]} if status == 202 and "statusUrl" in body else None
    return func.HttpResponse(
        json.dumps(body), status_code=status, mimetype="application/json", headers=headers
    )


def _http(call: Callable[[RemediationService], Answer]) -> func.HttpResponse:
    """Run ``call`` on the service; any failure still answers in JSON, without a traceback."""
    from remediation.edges.http_input import error
    from remediation.errors import RemediationError

    try:
        service = _service()
    except RemediationError as exc:
        logger.error("the service could not start: %s", exc)
        return _respond(error(500, "ConfigurationError", str(exc)))
    except Exception:  # noqa: BLE001 - never a traceback to the caller
        logger.exception("the service could not start")
        return _respond(error(500, "InternalError", "the service could not start; see its logs"))
    try:
        return _respond(call(service))
    except Exception:  # noqa: BLE001 - as above
        logger.exception("the request failed")
        return _respond(error(500, "InternalError", "the request failed; see the logs"))
    finally:
        service.telemetry.flush()


@app.function_name("remediate")
@app.route(route="remediate", methods=["POST"])
def remediate(req: func.HttpRequest) -> func.HttpResponse:
    from remediation.edges.http_input import status_base

    body, base = req.get_body(), status_base(req.url)
    return _http(lambda service: service.remediate(body, status_base=base))


@app.function_name("remediations")
@app.route(route="remediations", methods=["GET"])
def remediations(req: func.HttpRequest) -> func.HttpResponse:
    query = dict(req.params)
    return _http(lambda service: service.recent(query))


@app.function_name("remediation_status")
@app.route(route="remediations/{correlationId}", methods=["GET"])
def remediation_status(req: func.HttpRequest) -> func.HttpResponse:
    correlation_id = req.route_params.get("correlationId", "")
    return _http(lambda service: service.status(correlation_id))
