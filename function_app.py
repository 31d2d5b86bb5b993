"""Azure Functions entry point (Python v2 programming model): thin adapters only.

Each function turns its trigger into a call on :mod:`remediation.service`, which knows nothing of
Azure Functions; the service is built on first use, once per worker.

- ``keyvault_events``  Event Grid (Key Vault system topic): SecretNewVersionCreated heals; near
                       expiry / expired are reported as warnings.
- ``refresh_events``   Event Grid (custom topic): ``PowerBI.RefreshFailed`` (and Fabric's
                       ``Microsoft.Fabric.ItemJobFailed`` for semantic models) heals the dataset.
- ``sweep``            timer, ``%REMEDIATION_SWEEP_SCHEDULE%`` (every 15 minutes by default).
- ``remediate``        ``POST /api/remediate`` (function key).
- ``remediations``     ``GET /api/remediations?since=...`` (function key).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from remediation.errors import RemediationError
from remediation.events import EventError
from remediation.service import Answer, RemediationService, error, get_service

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
logger = logging.getLogger("remediation.functions")


def _event(event: func.EventGridEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "eventType": event.event_type,
        "subject": event.subject,
        "topic": event.topic,
        "data": event.get_json(),
        "dataVersion": event.data_version,
    }


def _handle(event: func.EventGridEvent, trigger: str) -> None:
    service = get_service()
    try:
        service.handle_event(_event(event), trigger=trigger)
    except EventError as exc:
        # A malformed event will not get better by redelivery: acknowledge it, say why.
        logger.warning("event %s ignored: %s", event.id, exc)
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


@app.function_name("sweep")
@app.timer_trigger(
    arg_name="timer", schedule="%REMEDIATION_SWEEP_SCHEDULE%", run_on_startup=False, use_monitor=True
)
def sweep(timer: func.TimerRequest) -> None:
    if timer.past_due:
        logger.info("the sweep is running late")
    service = get_service()
    try:
        service.sweep()
    finally:
        service.telemetry.flush()


def _respond(answer: Answer) -> func.HttpResponse:
    status, body = answer
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


def _http(call: Callable[[RemediationService], Answer]) -> func.HttpResponse:
    """Run ``call`` on the service; any failure still answers in JSON, without a traceback."""
    try:
        service = get_service()
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
    body = req.get_body()
    return _http(lambda service: service.remediate(body))


@app.function_name("remediations")
@app.route(route="remediations", methods=["GET"])
def remediations(req: func.HttpRequest) -> func.HttpResponse:
    query = dict(req.params)
    return _http(lambda service: service.recent(query))
