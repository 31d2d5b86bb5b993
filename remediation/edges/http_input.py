"""What the HTTP endpoints accept, and the one shape of their error answers.

``POST /api/remediate``'s body becomes the :class:`~remediation.inbound.workqueue.WorkCommand` it
asks for (or, for a body that is an event or an array of events, an :class:`EventsRequest`: what
an Activator → Power Automate flow posts; the service reads them as the event triggers do), the
``GET /api/remediations`` query a time and a limit, a correlation id of
``GET /api/remediations/{correlationId}`` is checked; anything else is a 4xx JSON error saying
what is wrong (``{"error": {"code", "message"}}``), never a traceback, never a secret.
Validation is strict: unknown fields, wrong types, ids that are not GUIDs and bodies over
:data:`MAX_BODY_BYTES` are refused. Nothing here runs a command:
:class:`remediation.edges.service.RemediationService` does, with what this accepted.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from remediation.config.bindings import CONNECTIONS
from remediation.inbound.workqueue import WorkCommand

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_LIST_LIMIT",
    "Answer",
    "EventsRequest",
    "ListQuery",
    "RemediateRequest",
    "correlation_id_error",
    "error",
    "list_query",
    "remediate_request",
    "status_base",
]

Answer = tuple[int, dict[str, Any]]

MAX_BODY_BYTES = 16 * 1024
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SECRET_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_VERSION = re.compile(r"[0-9A-Fa-f]{32}")
_SHAPES: tuple[frozenset[str], ...] = (
    frozenset({"secretName"}),
    frozenset({"secretName", "version"}),
    frozenset({"workspaceId", "datasetId"}),
    frozenset({"gatewayId", "datasourceId"}),
    frozenset({"connectionId"}),
)
_OPTIONS = frozenset({"dryRun", "presentAgain"})
_KNOWN = frozenset().union(*_SHAPES) | _OPTIONS

_EVENT_KEYS = frozenset({"specversion", "type", "eventType"})
"""A body with one of these keys is an event (CloudEvents 1.0 or Event Grid schema), not a command."""

_CORRELATION = re.compile(r"[0-9A-Za-z._:@+=-]{1,128}")

MAX_LIST_LIMIT = 1000
"""The most outcomes ``GET /api/remediations`` answers with (``limit``); 200 by default."""
_WHOLE_NUMBER = re.compile(r"[0-9]+")
_LIMIT_ERROR = f"limit must be a whole number from 1 to {MAX_LIST_LIMIT} (ASCII digits)"
_SINCE_ERROR = "since must be an ISO 8601 time, e.g. 2026-11-22T08:00:00Z"


def error(status: int, code: str, message: str) -> Answer:
    """An error answer in the one shape every failure has."""
    return status, {"error": {"code": code, "message": message}}


@dataclass(frozen=True)
class RemediateRequest:
    """An accepted ``POST /api/remediate``: the command (trigger ``http``, a new correlation id,
    the operator's ``presentAgain``) and whether only a plan is asked for."""

    command: WorkCommand
    dry_run: bool


@dataclass(frozen=True)
class EventsRequest:
    """An accepted ``POST /api/remediate`` whose body is one event or an array of them (JSON
    objects; the service reads each as the event triggers do, and refuses the whole request if
    one is unreadable)."""

    events: list[dict[str, Any]]


def remediate_request(body: bytes) -> RemediateRequest | EventsRequest | Answer:
    """``POST /api/remediate``'s body as the command it asks for, the events it carries, or the
    4xx saying what is wrong."""
    parsed = _json_document(body)
    if isinstance(parsed, tuple):
        return parsed
    if isinstance(parsed, list):
        if not parsed or not all(isinstance(item, dict) for item in parsed):
            return error(
                400, "InvalidJson", "the body must be a JSON object, or a non-empty array of events (objects)"
            )
        return EventsRequest(parsed)
    if _EVENT_KEYS & set(parsed):
        return EventsRequest([parsed])
    unknown = sorted(set(parsed) - _KNOWN)
    if unknown:
        return error(
            400,
            "UnknownField",
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KNOWN))}",
        )
    dry_run, present_again = parsed.get("dryRun", False), parsed.get("presentAgain", False)
    for name, flag in (("dryRun", dry_run), ("presentAgain", present_again)):
        if not isinstance(flag, bool):
            return error(400, "InvalidField", f"{name} must be true or false")
    given = frozenset(parsed) - _OPTIONS
    if given not in _SHAPES:
        return error(
            400,
            "InvalidRequest",
            'give one of {"secretName"[, "version"]}, '
            '{"workspaceId", "datasetId"}, {"gatewayId", "datasourceId"} or {"connectionId"}',
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

    correlation_id = str(uuid.uuid4())
    if "secretName" in given:
        command = WorkCommand.secret(
            parsed["secretName"], parsed.get("version"), trigger="http", correlation_id=correlation_id
        )
    elif "datasetId" in given:
        command = WorkCommand.dataset(
            parsed["workspaceId"], parsed["datasetId"], trigger="http", correlation_id=correlation_id
        )
    elif "connectionId" in given:  # a Fabric connection: its target is ("connections", id)
        command = WorkCommand.target(
            CONNECTIONS, parsed["connectionId"].lower(), trigger="http", correlation_id=correlation_id
        )
    else:
        command = WorkCommand.target(
            parsed["gatewayId"], parsed["datasourceId"], trigger="http", correlation_id=correlation_id
        )
    return RemediateRequest(command.with_present_again(present_again), dry_run)


def correlation_id_error(correlation_id: str) -> Answer | None:
    """The 400 for a ``{correlationId}`` no 202 answer could have given; None when it could."""
    if not _CORRELATION.fullmatch(correlation_id):
        return error(400, "InvalidParameter", "correlationId must be the id a 202 answer gave")
    return None


@dataclass(frozen=True)
class ListQuery:
    """An accepted ``GET /api/remediations`` query: outcomes since ``since`` (UTC), at most ``limit``."""

    since: datetime
    limit: int


def list_query(query: Mapping[str, str], now: float) -> ListQuery | Answer:
    """``GET /api/remediations?since=ISO-8601&limit=N``'s query, or the 400 saying what is wrong."""
    unknown = sorted(set(query) - {"since", "limit", "code"})
    if unknown:
        return error(
            400, "UnknownParameter", f"unknown parameter(s) {', '.join(unknown)}; allowed: since, limit"
        )
    since = _since(query.get("since") or "", now)
    if not isinstance(since, datetime):
        return since
    limit = _limit(query.get("limit") or "")
    if not isinstance(limit, int):
        return limit
    return ListQuery(since, limit)


def _since(text: str, now: float) -> datetime | Answer:
    """``since`` of ``GET /api/remediations`` in UTC (default: a day before ``now``), or the 400.

    Whatever the text, the answer is a time or a 400: a time whose UTC date is outside
    datetime's years 1-9999 (``9999-12-31T23:59:59-14:00``) is out of range, not a failure."""
    try:
        if not text:
            return datetime.fromtimestamp(now - 86400, UTC)
        if not text.isascii():
            return error(400, "InvalidParameter", _SINCE_ERROR)
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return error(400, "InvalidParameter", _SINCE_ERROR)
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        earliest = datetime.fromtimestamp(now, UTC) - timedelta(days=90)
    except (ValueError, OverflowError, OSError):
        return error(400, "InvalidParameter", "since is out of range (a UTC time from year 1 to 9999)")
    if moment < earliest:
        return error(400, "InvalidParameter", "since may be at most 90 days ago")
    return moment


def _limit(text: str) -> int | Answer:
    """``limit`` of ``GET /api/remediations`` (default 200), or the 400. ASCII digits only:
    ``str.isdigit`` also takes ``²`` and other digits ``int`` refuses, and ``int`` refuses more
    than 4300 digits, so the length (leading zeros aside) is checked before it is converted."""
    if not text:
        return 200
    digits = text.lstrip("0") or "0"
    if _WHOLE_NUMBER.fullmatch(text) is None or len(digits) > len(str(MAX_LIST_LIMIT)):
        return error(400, "InvalidParameter", _LIMIT_ERROR)
    limit = int(digits)
    if not 1 <= limit <= MAX_LIST_LIMIT:
        return error(400, "InvalidParameter", _LIMIT_ERROR)
    return limit


def status_base(request_url: str) -> str:
    """Where ``GET /api/remediations/{id}`` lives, from the URL ``POST /api/remediate`` came in
    on: same scheme, host and route prefix; the query (which may hold the function key) dropped."""
    parts = urlsplit(request_url)
    path = parts.path.rstrip("/")
    prefix = path.rsplit("/", 1)[0] if "/" in path else ""
    return urlunsplit((parts.scheme, parts.netloc, f"{prefix}/remediations", "", ""))


def _json_document(body: bytes) -> dict[str, Any] | list[Any] | Answer:
    """The body as a JSON object or array, or the 4xx."""
    if len(body) > MAX_BODY_BYTES:
        return error(413, "BodyTooLarge", f"the body is over {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return error(400, "EmptyBody", "the body must be a JSON object")
    try:
        parsed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return error(400, "InvalidJson", "the body is not valid UTF-8 JSON")
    if not isinstance(parsed, (dict, list)):
        return error(400, "InvalidJson", "the body must be a JSON object")
    return parsed
