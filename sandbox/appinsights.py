"""Application Insights ingestion stand-in (the "Breeze" endpoint ``POST /v2.1/track``).

azure-monitor-opentelemetry-exporter posts a JSON array of ``TelemetryEnvelope`` objects
(``application/json``, not compressed); the service also accepts newline-delimited JSON
(``x-json-stream``) and gzip bodies, so the sandbox does too. Each envelope is validated against
``TelemetryEnvelope`` of ``specs/appinsights/v2.1/swagger.json`` and its ``baseData`` against the
definition its ``baseType`` names. Like the real service, the answer is a ``TrackResponse``:
200 when every item was accepted, 206 when some were, 400 when none were, with one
``{index, statusCode, message}`` per rejected item.

The connection string also names the sandbox as ``LiveEndpoint``, so live metrics, if a caller
leaves them on, talk to the sandbox (which answers "not subscribed") instead of Microsoft.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sandbox import specs
from sandbox.routing import HTTPError, Response

if TYPE_CHECKING:
    from sandbox.host import Host
    from sandbox.routing import Request

T = TypeVar("T")

INSTRUMENTATION_KEY = "00000000-0000-0000-0000-0000000000aa"


class AppInsights:
    """Accepted telemetry, queryable by kind, with a polling helper for the asynchronous exporter."""

    def __init__(self, host: Host, instrumentation_key: str = INSTRUMENTATION_KEY) -> None:
        self._host = host
        self.instrumentation_key = instrumentation_key
        self._lock = threading.Lock()
        self._envelopes: list[dict[str, Any]] = []
        self._register_routes()

    @property
    def connection_string(self) -> str:
        return (
            f"InstrumentationKey={self.instrumentation_key};IngestionEndpoint={self._host.url}/;"
            f"LiveEndpoint={self._host.url}/"
        )

    # -- queries -----------------------------------------------------------------------------
    @property
    def envelopes(self) -> list[dict[str, Any]]:
        """Every accepted envelope, in arrival order (a copy)."""
        with self._lock:
            return list(self._envelopes)

    def _base_data(self, base_type: str) -> list[dict[str, Any]]:
        return [
            e["data"]["baseData"]
            for e in self.envelopes
            if isinstance(e.get("data"), dict)
            and e["data"].get("baseType") == base_type
            and isinstance(e["data"].get("baseData"), dict)
        ]

    def custom_events(self, name: str | None = None) -> list[dict[str, Any]]:
        """``baseData`` of ``EventData`` envelopes (``name``, ``properties``, ``measurements``)."""
        return [d for d in self._base_data("EventData") if name is None or d.get("name") == name]

    def traces(self) -> list[dict[str, Any]]:
        """``baseData`` of ``MessageData`` envelopes (log records that are not events)."""
        return self._base_data("MessageData")

    def dependencies(self) -> list[dict[str, Any]]:
        """``baseData`` of ``RemoteDependencyData`` envelopes (client and internal spans)."""
        return self._base_data("RemoteDependencyData")

    def requests(self) -> list[dict[str, Any]]:
        """``baseData`` of ``RequestData`` envelopes (server spans)."""
        return self._base_data("RequestData")

    def exceptions(self) -> list[dict[str, Any]]:
        return self._base_data("ExceptionData")

    def clear(self) -> None:
        with self._lock:
            self._envelopes.clear()

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
        """Poll ``predicate`` until it returns something truthy, and return that.

        The exporter sends from a background thread; call the provider's ``force_flush()`` first
        so the wait is short. Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"telemetry condition not met within {timeout} s")
            time.sleep(interval)

    # -- HTTP --------------------------------------------------------------------------------
    def _register_routes(self) -> None:
        add = self._host.router.add
        add("appinsights", "appinsights.track", "POST", r"/v2(?:\.1)?/track", self._track, _track_error)
        add(
            "appinsights",
            "appinsights.live",
            "POST",
            r"/QuickPulseService\.svc/(?:ping|post)",
            self._live,
            _track_error,
        )

    def _track(self, request: Request) -> Response:
        items = _parse_items(request.body)
        errors: list[dict[str, Any]] = []
        accepted: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            problem = self._problem(item)
            if problem is None:
                accepted.append(item)
            else:
                errors.append({"index": index, "statusCode": 400, "message": problem})
        with self._lock:
            self._envelopes.extend(accepted)
        status = 200 if not errors else 206 if accepted else 400
        body = {"itemsReceived": len(items), "itemsAccepted": len(accepted), "errors": errors}
        return Response(status, body)

    def _problem(self, item: Any) -> str | None:
        """Why the service would reject ``item``, or None."""
        problems = specs.errors(specs.APPINSIGHTS, "TelemetryEnvelope", item)
        if problems:
            return "Invalid telemetry item: " + "; ".join(problems[:5])
        if str(item.get("iKey", "")).lower() != self.instrumentation_key:
            return "Invalid instrumentation key"
        data = item.get("data") or {}
        base_type, base_data = data.get("baseType"), data.get("baseData")
        if base_type is not None:
            definition = _BASE_TYPE_DEFINITIONS.get(str(base_type), str(base_type))
            try:
                problems = specs.errors(specs.APPINSIGHTS, definition, _as_swagger_spells_it(base_data))
            except KeyError:
                return f"Unknown baseType '{base_type}'"
            if problems:
                return f"Invalid {base_type}: " + "; ".join(problems[:5])
        return None

    def _live(self, request: Request) -> Response:
        # Live metrics: always "nobody is watching", so the client just keeps pinging slowly.
        return Response(
            200, None, {"x-ms-qps-subscribed": "false", "x-ms-qps-service-polling-interval-hint": "60000"}
        )


#: Wire ``baseType`` -> swagger definition, where they differ: the exporter (and every other
#: Application Insights SDK) sends "MetricData"; the swagger names the definition "MetricsData".
_BASE_TYPE_DEFINITIONS = {"MetricData": "MetricsData"}
#: ``severityLevel`` is a string enum in the swagger; the Python exporter sends the integer form
#: (0 = Verbose ... 4 = Critical), which the service accepts.
_SEVERITY_LEVELS = ("Verbose", "Information", "Warning", "Error", "Critical")


def _as_swagger_spells_it(base_data: Any) -> Any:
    """``base_data`` with the integer ``severityLevel`` the service accepts spelled as the swagger's enum."""
    if isinstance(base_data, dict):
        level = base_data.get("severityLevel")
        if isinstance(level, int) and not isinstance(level, bool) and 0 <= level < len(_SEVERITY_LEVELS):
            return {**base_data, "severityLevel": _SEVERITY_LEVELS[level]}
    return base_data


def _parse_items(body: bytes) -> list[Any]:
    """A JSON array, or newline-delimited JSON objects (``x-json-stream``)."""
    try:
        text = body.decode("utf-8").strip()
        if not text:
            raise ValueError("empty body")
        if text.startswith("["):
            items = json.loads(text)
            if not isinstance(items, list):
                raise ValueError("not an array")
            return items
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPError(
            400,
            {
                "itemsReceived": 0,
                "itemsAccepted": 0,
                "errors": [
                    {
                        "index": 0,
                        "statusCode": 400,
                        "message": f"Invalid JSON payload: {exc.__class__.__name__}",
                    }
                ],
            },
        ) from None


def _track_error(status: int, code: str, message: str) -> dict[str, Any]:
    """Breeze answers failures with a ``TrackResponse`` too."""
    return {
        "itemsReceived": 0,
        "itemsAccepted": 0,
        "errors": [{"index": 0, "statusCode": status, "message": f"{code}: {message}"}],
    }
