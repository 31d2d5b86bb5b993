"""Triggers -> commands -> healer -> answers, for any host (the Functions app is one).

Nothing here knows Azure Functions: events arrive as dicts, HTTP as method + body bytes + query,
and answers go back as ``(status, JSON body)``. :mod:`function_app` only adapts its trigger
objects to these calls, so every rule below is testable without the Functions host.

Validation at this boundary is strict: unknown fields, wrong types, ids that are not GUIDs and
bodies over :data:`MAX_BODY_BYTES` are refused with a 4xx JSON error saying what is wrong
(``{"error": {"code", "message"}}``), never a traceback, never a secret.

Long work leaves the push triggers (DESIGN.md: Event Grid waits seconds, the HTTP front end
cuts at about 230 s). With a storage account configured (``AzureWebJobsStorage``), an event or
a ``POST /api/remediate`` is validated, put on the work queue (:mod:`remediation.inbound.workqueue`) as
a :class:`WorkCommand`, and answered; :meth:`RemediationService.process_work` runs it from the
queue-triggered function. Without one (the embedded SQLite mode) the command runs inline. A
report with ``retry_at`` (a version still settling) is run again then: re-queued with that delay,
or, inline, after a sleep bounded by the run's deadline. Every run has a deadline below
``host.json``'s ``functionTimeout`` (:data:`RUN_SECONDS`; :data:`HTTP_RUN_SECONDS` for an inline
HTTP run).

Event dedupe is by event id (a queued command's correlation id) in the ledger: Event Grid and the
queue deliver at least once. A command is marked done only *after* it was handled, so a failed
invocation's redelivery runs it again (the healer is idempotent) instead of being dropped.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from remediation.clients.keyvault import SecretDisabled, SecretNotFound
from remediation.clients.powerbi import EntityNotFound, InvalidId
from remediation.config.bindings import CONNECTIONS
from remediation.config.settings import Settings
from remediation.edges.runtime import Runtime, build_healer
from remediation.errors import ConfigError, RemediationError
from remediation.inbound.events import Event, EventError, Kind, parse_event
from remediation.inbound.workqueue import (
    MAX_DELAY_SECONDS,
    WorkCommand,
    WorkKind,
    WorkMessageError,
    WorkQueue,
)
from remediation.reconciler.healer import Action, NotBound, Report, SecretVersionNotFound
from remediation.reconciler.runs import outcomes_to
from remediation.telemetry.appinsights import LiveOutcomes, Telemetry

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
    frozenset({"connectionId"}),
)
_OPTIONS = frozenset({"dryRun", "presentAgain"})
_KNOWN = frozenset().union(*_SHAPES) | _OPTIONS

_CORRELATION = re.compile(r"[0-9A-Za-z._:@+=-]{1,128}")

Answer = tuple[int, dict[str, Any]]

RUN_SECONDS = 540.0
"""Deadline of a run (event, queue, sweep): ``host.json``'s ``functionTimeout`` (600 s) less a
minute to record outcomes, re-queue and answer."""
HTTP_RUN_SECONDS = 200.0
"""Deadline of an inline HTTP run (embedded mode, dry runs): the front end cuts at about 230 s."""
MAX_SETTLE_ATTEMPTS = 48
"""Re-runs of one command for a settling version before it is left to the sweep."""
BUSY_RETRY_SECONDS = 5.0
"""How long a part of a fan-out that found its account's first presentation in flight elsewhere
waits before it runs again (the probe's verdict usually comes within a second or two)."""


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
    """One per worker: the healer, its ledger, telemetry, and (with a storage account) the work queue."""

    def __init__(
        self,
        runtime: Runtime,
        telemetry: Telemetry,
        *,
        work_queue: WorkQueue | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.runtime = runtime
        self.telemetry = telemetry
        self.work_queue = work_queue
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings) -> RemediationService:
        """Built on the worker's first invocation. Telemetry is configured first, so the calls
        that follow are reported as dependencies (importing this module configures nothing).
        With a storage account the work queue is used; without one commands run inline."""
        telemetry = Telemetry(settings)
        telemetry.configure()
        runtime = build_healer(settings)
        work_queue = WorkQueue.from_settings(settings) if settings.storage is not None else None
        return cls(runtime, telemetry, work_queue=work_queue)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def close(self) -> None:
        self.runtime.close()
        if self.work_queue is not None:
            self.work_queue.close()

    # -- events ---------------------------------------------------------------------------------
    def handle_event(self, raw: Mapping[str, Any], *, trigger: str = "eventgrid") -> EventResult:
        """One Event Grid / CloudEvents event. Raises :class:`EventError` for an unreadable one.

        With the work queue, the command is queued and this returns at once; otherwise it runs
        inline (waiting for a settling version within the deadline)."""
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

        try:
            if event.kind is Kind.SECRET_NEW_VERSION:
                command = WorkCommand.secret(
                    event.secret_name or "",
                    None,
                    event_version=event.secret_version,
                    trigger=trigger,
                    correlation_id=event.id,
                )
            else:
                command = WorkCommand.dataset(
                    event.workspace_id or "", event.dataset_id or "", trigger=trigger, correlation_id=event.id
                )
        except ValueError as exc:
            raise EventError(f"event {event.id[:128]}: {exc}") from None
        if ledger.event_seen(command.correlation_id):
            return skip("a duplicate delivery: already handled")
        if self.work_queue is not None:
            self.work_queue.send(command)
            return EventResult(event.id, event.kind.value, True, "queued")
        try:
            report = self._run_inline(command, deadline=self._clock() + RUN_SECONDS)
        except NotBound as exc:
            ledger.mark_event_seen(command.correlation_id, self._clock())
            return skip(str(exc))
        return EventResult(event.id, event.kind.value, True, f"{len(report.outcomes)} outcomes", report)

    # -- commands -------------------------------------------------------------------------------
    def run_command(self, command: WorkCommand, *, deadline: float, dry_run: bool = False) -> Report:
        """Run ``command`` once through the healer, bounded by ``deadline`` (epoch seconds), and
        emit its outcomes. Raises :class:`NotBound` (and :class:`SecretVersionNotFound`)."""
        healer = self.runtime.healer
        live = self._live()
        common: dict[str, Any] = {
            "dry_run": dry_run,
            "trigger": command.trigger,
            "correlation_id": command.correlation_id,
            "deadline": deadline,
            "present_again": command.present_again,
        }
        with outcomes_to(live):
            if command.kind is WorkKind.SECRET:
                report = healer.heal_secret(
                    command.secret_name or "", command.version, event_version=command.event_version, **common
                )
            elif command.kind is WorkKind.DATASET:
                report = healer.heal_dataset(command.workspace_id or "", command.dataset_id or "", **common)
            else:
                report = healer.heal_target(
                    command.gateway_id or "",
                    command.datasource_id or "",
                    retry_refreshes=command.part,
                    **common,
                )
        live.finish(report)
        return report

    def _run_inline(self, command: WorkCommand, *, deadline: float, dry_run: bool = False) -> Report:
        """Run ``command`` now; while its report asks for a later run (a settling version) and
        that time is before ``deadline``, sleep until then and run it again. Marks an event-like
        command done (its correlation id) once it was handled, not before."""
        while True:
            report = self.run_command(command, deadline=deadline, dry_run=dry_run)
            retry_at = None if dry_run else report.retry_at
            if retry_at is None:
                break
            if retry_at > deadline or command.attempt + 1 >= MAX_SETTLE_ATTEMPTS:
                logger.warning(
                    "%s command %s: a version is still settling until %s, past this run's deadline; "
                    "the sweep will present it",
                    command.kind.value,
                    command.correlation_id,
                    datetime.fromtimestamp(retry_at, UTC).isoformat(),
                )
                break
            self._sleep(max(retry_at - self._clock(), 0.0))
            command = command.again()
        if not dry_run:
            self.runtime.ledger.mark_event_seen(command.correlation_id, self._clock())
        return report

    def process_work(self, message: str | bytes, *, dequeue_count: int | None = None) -> Report | None:
        """One message of the work queue (the queue-triggered function).

        A malformed message, or one for something no longer bound, is logged and dropped (None);
        a command already done is dropped too. A report with ``retry_at`` re-queues the same
        command with that delay (capped at 7 days); otherwise the command is marked done.
        Service errors propagate, so the host retries the message (then moves it to the poison
        queue after ``maxDequeueCount``)."""
        try:
            command = WorkCommand.parse(message)
        except WorkMessageError as exc:
            logger.warning("work message dropped (dequeue count %s): %s", dequeue_count, exc)
            return None
        ledger = self.runtime.ledger
        if ledger.event_seen(command.done_key):
            logger.info("work %s: already done, dropped", command.done_key)
            return None
        started = self._clock()
        try:
            if self._fans_out(command):
                return None
            report = self.run_command(command, deadline=started + RUN_SECONDS)
        except NotBound as exc:
            logger.warning("work %s dropped: %s", command.done_key, exc)
            ledger.mark_event_seen(command.done_key, self._clock())
            return None
        busy = command.part and any(o.action == Action.BUSY for o in report.targets())
        if busy and command.attempt + 1 < MAX_SETTLE_ATTEMPTS:
            # Another instance presents the version to this account first (or holds the lease):
            # this part runs again shortly, and then follows the accepted version (or stops).
            self._queue().send(command.again(), delay=BUSY_RETRY_SECONDS)
            return report
        if report.retry_at is not None:
            if command.attempt + 1 >= MAX_SETTLE_ATTEMPTS:
                logger.warning(
                    "work %s: still settling after %d attempts; left to the sweep",
                    command.correlation_id,
                    command.attempt + 1,
                )
            else:
                delay = min(max(report.retry_at - self._clock(), 0.0), float(MAX_DELAY_SECONDS))
                self._queue().send(command.again(), delay=delay)
                return report
        ledger.mark_event_seen(command.done_key, self._clock())
        return report

    def _fans_out(self, command: WorkCommand) -> bool:
        """A secret command with more than ``REMEDIATION_FANOUT_TARGETS`` targets becomes one
        queued part per target, so that the platform spreads them over instances (the ledger's
        decisions, claims and leases still rule each part); the command is then done."""
        threshold = self.settings.fanout_targets
        if command.kind is not WorkKind.SECRET or threshold <= 0 or command.version is not None:
            return False
        targets = self.runtime.healer.secret_targets(command.secret_name or "")
        if len(targets) <= threshold:
            return False
        queue = self._queue()
        for gateway_id, datasource_id in targets:
            queue.send(command.fan_out(gateway_id, datasource_id))
        logger.info(
            "work %s: secret %s fanned out to %d queued targets",
            command.correlation_id,
            command.secret_name,
            len(targets),
        )
        self.runtime.ledger.mark_event_seen(command.correlation_id, self._clock())
        return True

    def _queue(self) -> WorkQueue:
        if self.work_queue is None:
            raise ConfigError("the work queue needs a storage account: set AzureWebJobsStorage")
        return self.work_queue

    # -- timer ----------------------------------------------------------------------------------
    def sweep(self) -> Report:
        live = self._live()
        with outcomes_to(live):
            report = self.runtime.healer.sweep(trigger="timer", deadline=self._clock() + RUN_SECONDS)
        live.finish(report)
        try:
            self.runtime.ledger.prune(self._clock(), retention_seconds=7 * 86400)
        except RemediationError as exc:
            logger.warning("could not prune the ledger: %s", exc)
        return report

    # -- HTTP -----------------------------------------------------------------------------------
    def remediate(self, body: bytes, *, status_base: str | None = None) -> Answer:
        """``POST /api/remediate``: validate the body, then run the command.

        With the work queue (and not a dry run) the command is checked synchronously (bound,
        explicit version exists) and queued: **202** ``{"correlationId", "status": "queued",
        "statusUrl"}`` where ``statusUrl`` is ``{status_base}/{correlationId}``. Otherwise it runs
        inline and the answer is its report (200)."""
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
        if present_again:
            logger.warning("operator: present the current version once more (%s)", command.correlation_id)
        command = command.with_present_again(present_again)
        try:
            if self.work_queue is not None and not dry_run:
                self._check_exists(command)
                self.work_queue.send(command)
                status_url = f"{(status_base or '/api/remediations').rstrip('/')}/{command.correlation_id}"
                return 202, {
                    "correlationId": command.correlation_id,
                    "status": "queued",
                    "statusUrl": status_url,
                }
            report = self._run_inline(command, deadline=self._clock() + HTTP_RUN_SECONDS, dry_run=dry_run)
        except SecretVersionNotFound as exc:
            return error(404, "SecretVersionNotFound", str(exc))
        except NotBound as exc:
            return error(404, "NotFound", str(exc))
        except ConfigError as exc:
            logger.error("configuration error: %s", exc)
            return error(500, "ConfigurationError", str(exc))
        except RemediationError as exc:
            logger.error("remediation failed: %s", exc)
            return error(502, "UpstreamError", str(exc))
        return 200, report.to_dict()

    def _check_exists(self, command: WorkCommand) -> None:
        """What a queued command is checked for before the 202: that it is bound, and that an
        explicit version exists and is enabled. Raises :class:`NotBound` /
        :class:`SecretVersionNotFound` (other client errors propagate)."""
        bindings = self.runtime.bindings
        if command.kind is WorkKind.SECRET:
            name = command.secret_name or ""
            if not bindings.for_secret(name):
                raise NotBound(f"no binding uses the secret {name!r}")
            if command.version is not None:
                try:
                    self.runtime.keyvault.get_secret(name, command.version)  # the value is dropped
                except (SecretNotFound, SecretDisabled):
                    raise SecretVersionNotFound(
                        f"secret {name!r} has no enabled version {command.version}"
                    ) from None
        elif command.kind is WorkKind.TARGET:
            gateway, datasource = command.gateway_id or "", command.datasource_id or ""
            if bindings.for_target(gateway, datasource) is None and not any(
                b.matches for b in bindings.bindings
            ):
                if gateway == CONNECTIONS:
                    raise NotBound(f"no binding covers connection {datasource}")
                raise NotBound(f"no binding covers gateway {gateway} data source {datasource}")
        else:
            workspace, dataset = command.workspace_id or "", command.dataset_id or ""
            try:
                self.runtime.powerbi.get_refresh_history_in_group(workspace, dataset, top=1)
            except (EntityNotFound, InvalidId):
                raise NotBound(
                    f"dataset {dataset} was not found in workspace {workspace}, or the identity "
                    "is not a member of that workspace"
                ) from None

    def status(self, correlation_id: str) -> Answer:
        """``GET /api/remediations/{correlationId}``: the outcomes of one command from the ledger,
        and whether it is ``queued`` (nothing yet), ``running`` (outcomes, not done: e.g. a version
        still settling) or ``done``."""
        if not _CORRELATION.fullmatch(correlation_id):
            return error(400, "InvalidParameter", "correlationId must be the id a 202 answer gave")
        now = self._clock()
        outcomes = [
            o
            for o in self.runtime.ledger.outcomes(since=now - 7 * 86400, limit=5000)
            if o.correlation_id == correlation_id
        ]
        done = self.runtime.ledger.event_seen(correlation_id)
        state = "done" if done else ("running" if outcomes else "queued")
        return 200, {
            "correlationId": correlation_id,
            "status": state,
            "outcomes": [o.to_dict() for o in reversed(outcomes)],
        }

    def recent(self, query: Mapping[str, str]) -> Answer:
        """``GET /api/remediations?since=ISO-8601&limit=N``: outcomes from the ledger, newest first."""
        unknown = sorted(set(query) - {"since", "limit", "code"})
        if unknown:
            return error(
                400, "UnknownParameter", f"unknown parameter(s) {', '.join(unknown)}; allowed: since, limit"
            )
        now = self._clock()
        since = _since(query.get("since") or "", now)
        if not isinstance(since, datetime):
            return since
        limit = _limit(query.get("limit") or "")
        if not isinstance(limit, int):
            return limit
        outcomes = self.runtime.ledger.outcomes(since=since.timestamp(), limit=limit)
        return 200, {
            "since": since.isoformat(),
            "outcomes": [o.to_dict() for o in outcomes],
        }

    # -- telemetry ------------------------------------------------------------------------------
    def _live(self) -> LiveOutcomes:
        """One telemetry event per outcome as it is recorded, with this command's share of the
        API calls so far (see :class:`~remediation.telemetry.appinsights.LiveOutcomes`)."""
        before = self.runtime.stats.snapshot()
        return self.telemetry.live(lambda: self.runtime.stats.snapshot() - before)


MAX_LIST_LIMIT = 1000
"""The most outcomes ``GET /api/remediations`` answers with (``limit``); 200 by default."""
_WHOLE_NUMBER = re.compile(r"[0-9]+")
_LIMIT_ERROR = f"limit must be a whole number from 1 to {MAX_LIST_LIMIT} (ASCII digits)"
_SINCE_ERROR = "since must be an ISO 8601 time, e.g. 2026-11-22T08:00:00Z"


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
            _service.close()
        _service = None


__all__ = [
    "EventError",
    "EventResult",
    "MAX_BODY_BYTES",
    "RemediationService",
    "error",
    "get_service",
    "reset_service",
    "status_base",
]
