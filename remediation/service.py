"""Triggers -> commands -> healer -> answers, for any host (the Functions app is one).

Nothing here knows Azure Functions: events arrive as dicts, HTTP as method + body bytes + query,
and answers go back as ``(status, JSON body)``. :mod:`function_app` only adapts its trigger
objects to these calls, so every rule below is testable without the Functions host.

Validation at this boundary is strict: unknown fields, wrong types, ids that are not GUIDs and
bodies over :data:`MAX_BODY_BYTES` are refused with a 4xx JSON error saying what is wrong
(``{"error": {"code", "message"}}``), never a traceback, never a secret.

Event dedupe is by event id in the ledger (Event Grid delivers at least once). An event is marked
seen before it is handled, so a handler that fails is not retried for that event; the sweep
reconciles whatever it left (a lost event must not matter: DESIGN.md).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from remediation.errors import ConfigError, RemediationError
from remediation.events import Event, EventError, Kind, parse_event
from remediation.healer import NotBound, Report
from remediation.http import StatsSnapshot
from remediation.runtime import Runtime, build_healer
from remediation.settings import Settings
from remediation.telemetry import Telemetry

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SECRET_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_VERSION = re.compile(r"[0-9A-Fa-f]{32}")
_SHAPES: tuple[frozenset[str], ...] = (
    frozenset({"secretName"}),
    frozenset({"secretName", "version"}),
    frozenset({"workspaceId", "datasetId"}),
    frozenset({"gatewayId", "datasourceId"}),
)
_KNOWN = frozenset().union(*_SHAPES) | {"dryRun"}

Answer = tuple[int, dict[str, Any]]


def error(status: int, code: str, message: str) -> Answer:
    """An error answer in the one shape every failure has."""
    return status, {"error": {"code": code, "message": message}}


@dataclass(frozen=True)
class EventResult:
    """What became of one event (for logs and tests)."""

    event_id: str
    kind: str
    handled: bool
    note: str
    report: Report | None = None


class RemediationService:
    """One per worker: the healer, its ledger, and telemetry."""

    def __init__(self, runtime: Runtime, telemetry: Telemetry, *, clock: Callable[[], float] = time.time):
        self.runtime = runtime
        self.telemetry = telemetry
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> RemediationService:
        """Built on the worker's first invocation. Telemetry is configured first, so the calls
        that follow are reported as dependencies (importing this module configures nothing)."""
        telemetry = Telemetry(settings)
        telemetry.configure()
        return cls(build_healer(settings), telemetry)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    # -- events ---------------------------------------------------------------------------------
    def handle_event(self, raw: Mapping[str, Any], *, trigger: str = "eventgrid") -> EventResult:
        """One Event Grid / CloudEvents event. Raises :class:`EventError` for an unreadable one."""
        event = parse_event(raw, vault_origin=self.settings.vault_origin)
        result = self._dispatch(event, trigger)
        level = logging.INFO if result.handled else logging.DEBUG  # ignored events are routine
        logger.log(level, "event %s (%s): %s", event.id, event.type, result.note)
        return result

    def _dispatch(self, event: Event, trigger: str) -> EventResult:
        healer, ledger = self.runtime.healer, self.runtime.ledger

        def skip(note: str) -> EventResult:
            return EventResult(event.id, event.kind.value, False, note)

        if event.kind in (Kind.SECRET_NEW_VERSION, Kind.SECRET_NEAR_EXPIRY, Kind.SECRET_EXPIRED):
            if event.foreign_vault:
                return skip("a secret of another vault: ignored")
            bindings = healer.bindings.for_secret(event.secret_name or "")
            if not bindings:
                return skip(f"secret {event.secret_name} is not bound: ignored")
            if event.kind is not Kind.SECRET_NEW_VERSION:
                names = sorted(b.name for b in bindings)
                self.telemetry.emit_warning(
                    "CredentialSecretExpiry",
                    {
                        "eventType": event.type,
                        "secretName": event.secret_name or "",
                        "bindings": ",".join(names),
                        "correlationId": event.id,
                    },
                )
                logger.warning(
                    "secret %s (%s): bindings %s need a new version soon",
                    event.secret_name,
                    event.type,
                    ", ".join(names),
                )
                return EventResult(event.id, event.kind.value, True, "expiry warning reported")
        elif event.kind is not Kind.REFRESH_FAILED:
            return skip(f"event type {event.type} is not one the healer acts on")

        if not ledger.mark_event_seen(event.id, self._clock()):
            return skip("a duplicate delivery: already handled")
        started, before = self._clock(), self.runtime.stats.snapshot()
        if event.kind is Kind.SECRET_NEW_VERSION:
            report = healer.heal_secret(
                event.secret_name or "", event.secret_version, trigger=trigger, correlation_id=event.id
            )
        else:
            try:
                report = healer.heal_dataset(
                    event.workspace_id or "",
                    event.dataset_id or "",
                    trigger=trigger,
                    correlation_id=event.id,
                )
            except NotBound as exc:
                return skip(str(exc))
        self._emit(report, started, before)
        return EventResult(event.id, event.kind.value, True, f"{len(report.outcomes)} outcomes", report)

    # -- timer ----------------------------------------------------------------------------------
    def sweep(self) -> Report:
        started, before = self._clock(), self.runtime.stats.snapshot()
        report = self.runtime.healer.sweep(trigger="timer")
        self._emit(report, started, before)
        try:
            self.runtime.ledger.prune(self._clock(), retention_seconds=7 * 86400)
        except RemediationError as exc:
            logger.warning("could not prune the ledger: %s", exc)
        return report

    # -- HTTP -----------------------------------------------------------------------------------
    def remediate(self, body: bytes) -> Answer:
        """``POST /api/remediate``: validate the body, run the command, answer with its report."""
        parsed = _json_object(body)
        if isinstance(parsed, tuple):
            return parsed
        unknown = sorted(set(parsed) - _KNOWN)
        if unknown:
            return error(
                400,
                "UnknownField",
                f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KNOWN))}",
            )
        dry_run = parsed.get("dryRun", False)
        if not isinstance(dry_run, bool):
            return error(400, "InvalidField", "dryRun must be true or false")
        given = frozenset(parsed) - {"dryRun"}
        if given not in _SHAPES:
            return error(
                400,
                "InvalidRequest",
                'give one of {"secretName"[, "version"]}, '
                '{"workspaceId", "datasetId"} or {"gatewayId", "datasourceId"}',
            )
        for name in given:
            if not isinstance(parsed[name], str):
                return error(400, "InvalidField", f"{name} must be a string")
        checks = {
            "secretName": (_SECRET_NAME, "a Key Vault secret name (letters, digits, -)"),
            "version": (_VERSION, "a Key Vault version (32 hex characters)"),
        }
        for name in given:
            pattern, what = checks.get(name, (_GUID, "a GUID"))
            if not pattern.fullmatch(parsed[name]):
                return error(400, "InvalidField", f"{name} must be {what}")

        healer = self.runtime.healer
        started, before = self._clock(), self.runtime.stats.snapshot()
        try:
            if "secretName" in given:
                report = healer.heal_secret(
                    parsed["secretName"], parsed.get("version"), dry_run=dry_run, trigger="http"
                )
            elif "datasetId" in given:
                report = healer.heal_dataset(
                    parsed["workspaceId"], parsed["datasetId"], dry_run=dry_run, trigger="http"
                )
            else:
                report = healer.heal_target(
                    parsed["gatewayId"], parsed["datasourceId"], dry_run=dry_run, trigger="http"
                )
        except NotBound as exc:
            return error(404, "NotFound", str(exc))
        except ConfigError as exc:
            logger.error("configuration error: %s", exc)
            return error(500, "ConfigurationError", str(exc))
        except RemediationError as exc:
            logger.error("remediation failed: %s", exc)
            return error(502, "UpstreamError", str(exc))
        self._emit(report, started, before)
        return 200, report.to_dict()

    def recent(self, query: Mapping[str, str]) -> Answer:
        """``GET /api/remediations?since=ISO-8601&limit=N``: outcomes from the ledger, newest first."""
        unknown = sorted(set(query) - {"since", "limit", "code"})
        if unknown:
            return error(
                400, "UnknownParameter", f"unknown parameter(s) {', '.join(unknown)}; allowed: since, limit"
            )
        since = self._clock() - 86400
        if query.get("since"):
            try:
                moment = datetime.fromisoformat(query["since"].replace("Z", "+00:00"))
            except ValueError:
                return error(
                    400, "InvalidParameter", "since must be an ISO 8601 time, e.g. 2026-11-22T08:00:00Z"
                )
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            if moment < datetime.now(UTC) - timedelta(days=90):
                return error(400, "InvalidParameter", "since may be at most 90 days ago")
            since = moment.timestamp()
        limit = 200
        if query.get("limit"):
            if not query["limit"].isdigit() or not 1 <= int(query["limit"]) <= 1000:
                return error(400, "InvalidParameter", "limit must be a whole number from 1 to 1000")
            limit = int(query["limit"])
        outcomes = self.runtime.ledger.outcomes(since=since, limit=limit)
        return 200, {
            "since": datetime.fromtimestamp(since, UTC).isoformat(),
            "outcomes": [o.to_dict() for o in outcomes],
        }

    # -- telemetry ------------------------------------------------------------------------------
    def _emit(self, report: Report, started: float, before: StatsSnapshot) -> None:
        """One telemetry event per outcome, with this command's share of the API calls."""
        stats = self.runtime.stats.snapshot() - before
        self.telemetry.emit_outcomes(report, stats=stats, duration=self._clock() - started)


def _json_object(body: bytes) -> dict[str, Any] | Answer:
    if len(body) > MAX_BODY_BYTES:
        return error(413, "BodyTooLarge", f"the body is over {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return error(400, "EmptyBody", "the body must be a JSON object")
    try:
        parsed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return error(400, "InvalidJson", "the body is not valid UTF-8 JSON")
    if not isinstance(parsed, dict):
        return error(400, "InvalidJson", "the body must be a JSON object")
    return parsed


_service: RemediationService | None = None
_service_lock = threading.Lock()


def get_service() -> RemediationService:
    """The worker's service, built on first use (cold start pays only for what it uses)."""
    global _service
    with _service_lock:
        if _service is None:
            _service = RemediationService.from_settings(Settings.from_env())
        return _service


def reset_service() -> None:
    """Forget the worker's service (tests, or after a settings change)."""
    global _service
    with _service_lock:
        if _service is not None:
            _service.runtime.close()
        _service = None


__all__ = [
    "EventError",
    "EventResult",
    "MAX_BODY_BYTES",
    "RemediationService",
    "error",
    "get_service",
    "reset_service",
]
