"""Triggers -> commands -> healer -> answers, for any host (the Functions app is one).

Nothing here knows Azure Functions: events arrive as dicts, HTTP as method + body bytes + query,
and answers go back as ``(status, JSON body)``. :mod:`function_app` only adapts its trigger
objects to these calls, so every rule below is testable without the Functions host.

Validation at this boundary is strict (:mod:`remediation.edges.http_input`: what the HTTP
endpoints accept): unknown fields, wrong types, ids that are not GUIDs and oversized bodies are
refused with a 4xx JSON error saying what is wrong (``{"error": {"code", "message"}}``), never a
traceback, never a secret.

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
invocation's redelivery runs it again (the healer is idempotent) instead of being dropped. A Fabric
job event is also deduplicated by its job instance (``fabric-job:<id>``), so one job's failure that
comes twice, or by two paths (Event Grid, an Eventstream's Event Hubs, HTTP), is handled once; that
key is recorded when the event is handled inline, or as soon as its command is queued.

Fabric job events from an Eventstream custom endpoint arrive as Event Hubs batches
(:meth:`RemediationService.handle_event_batch`): each entry is read and handled on its own; an
unreadable entry is skipped and logged, and the rest are handled. They may also be posted to
``POST /api/remediate``, one or an array (:meth:`RemediationService.remediate`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from remediation.clients.keyvault import SecretDisabled, SecretNotFound
from remediation.clients.powerbi import EntityNotFound, InvalidId
from remediation.config.bindings import CONNECTIONS
from remediation.config.settings import Settings
from remediation.edges.http_input import (
    Answer,
    EventsRequest,
    ListQuery,
    RemediateRequest,
    correlation_id_error,
    error,
    list_query,
    remediate_request,
)
from remediation.edges.runtime import Runtime, build_healer
from remediation.errors import ConfigError, RemediationError
from remediation.inbound.events import Event, EventError, Kind, events_in_message, parse_event
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


@dataclass(frozen=True)
class EventResult:
    """What became of one event (for logs, tests and the HTTP answer to posted events).

    ``state``: ``done`` (run inline), ``queued``, ``warned`` (an expiry warning), ``duplicate``
    (already handled) or ``ignored`` (nothing to do; ``note`` says why)."""

    event_id: str
    kind: str
    handled: bool
    note: str
    report: Report | None = None
    state: str = "ignored"
    correlation_id: str | None = None

    def to_dict(self, status_base: str | None = None) -> dict[str, Any]:
        """The entry of ``POST /api/remediate``'s answer to posted events."""
        body: dict[str, Any] = {
            "id": self.event_id,
            "kind": self.kind,
            "status": self.state,
            "note": self.note,
        }
        if self.correlation_id is not None:
            body["correlationId"] = self.correlation_id
            if self.state == "queued":
                body["statusUrl"] = (
                    f"{(status_base or '/api/remediations').rstrip('/')}/{self.correlation_id}"
                )
        if self.report is not None:
            body["report"] = self.report.to_dict()
        return body


@dataclass(frozen=True)
class BatchResult:
    """What became of one Event Hubs batch: each readable event's result, and how many entries
    were skipped as unreadable."""

    results: list[EventResult]
    skipped: int


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
    def handle_event(self, raw: object, *, trigger: str = "eventgrid") -> EventResult:
        """One Event Grid / CloudEvents event. Raises :class:`EventError` for an unreadable one.

        With the work queue, the command is queued and this returns at once; otherwise it runs
        inline (waiting for a settling version within the deadline)."""
        event = parse_event(raw, vault_origin=self.settings.vault_origin)
        return self._handle_parsed(event, trigger)

    def _handle_parsed(self, event: Event, trigger: str) -> EventResult:
        result = self._dispatch(event, trigger)
        level = logging.INFO if result.handled else logging.DEBUG  # ignored events are routine
        logger.log(level, "event %s (%s): %s", event.id, event.type, result.note)
        return result

    def handle_event_batch(
        self, bodies: Sequence[bytes | str], *, trigger: str = "eventstream"
    ) -> BatchResult:
        """One Event Hubs batch (an Eventstream custom endpoint; ``cardinality=many``): each
        message holds one event, an array, or JSON Lines (:func:`events_in_message`).

        Every entry is handled on its own: an unreadable message or event is skipped with a
        warning (redelivery would not fix it) and the rest are handled; an entry whose handling
        fails is logged as an error and left to the sweep (Event Hubs checkpoints the batch
        whatever the function does, so raising would only lose the entries after it). A batch
        delivered again finds its events already handled (dedupe by event id and job instance)."""
        results: list[EventResult] = []
        skipped = 0
        for index, body in enumerate(bodies):
            try:
                items = events_in_message(body, index=index)
            except EventError as exc:
                logger.warning("event hub message skipped: %s", exc)
                skipped += 1
                continue
            for position, raw in enumerate(items):
                try:
                    results.append(self.handle_event(raw, trigger=trigger))
                except EventError as exc:
                    logger.warning("event hub message %d, event %d skipped: %s", index, position, exc)
                    skipped += 1
                except RemediationError as exc:
                    logger.error(
                        "event hub message %d, event %d failed (the sweep will heal what it reported): %s",
                        index,
                        position,
                        exc,
                    )
                    skipped += 1
                except Exception:  # noqa: BLE001 - one entry's fault must not lose the rest of the batch
                    logger.exception(
                        "event hub message %d, event %d failed (the sweep will heal what it reported)",
                        index,
                        position,
                    )
                    skipped += 1
        return BatchResult(results, skipped)

    def _dispatch(self, event: Event, trigger: str) -> EventResult:
        healer, ledger = self.runtime.healer, self.runtime.ledger

        def skip(note: str, state: str = "ignored") -> EventResult:
            return EventResult(event.id, event.kind.value, False, note, state=state)

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
                return EventResult(
                    event.id, event.kind.value, True, "expiry warning reported", state="warned"
                )
        elif event.kind is not Kind.REFRESH_FAILED:
            return skip(event.note or f"event type {event.type} is not one the healer acts on")

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
        keys = event.dedupe_keys
        if any(ledger.event_seen(key) for key in keys):
            return skip("a duplicate delivery: already handled", "duplicate")
        others = [key for key in keys if key != command.correlation_id]
        if self.work_queue is not None:
            self.work_queue.send(command)
            self._mark_seen(others)  # the job is the queue's now; the event id when it is done
            return EventResult(
                event.id,
                event.kind.value,
                True,
                "queued",
                state="queued",
                correlation_id=command.correlation_id,
            )
        try:
            report = self._run_inline(command, deadline=self._clock() + RUN_SECONDS)
        except NotBound as exc:
            self._mark_seen(keys)
            return skip(str(exc))
        self._mark_seen(others)
        return EventResult(
            event.id,
            event.kind.value,
            True,
            f"{len(report.outcomes)} outcomes",
            report,
            state="done",
            correlation_id=command.correlation_id,
        )

    def _mark_seen(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.runtime.ledger.mark_event_seen(key, self._clock())

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
        request = remediate_request(body)
        if isinstance(request, EventsRequest):
            return self._posted_events(request, status_base=status_base)
        if not isinstance(request, RemediateRequest):
            return request
        command, dry_run = request.command, request.dry_run
        if command.present_again:
            logger.warning("operator: present the current version once more (%s)", command.correlation_id)
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

    def _posted_events(self, request: EventsRequest, *, status_base: str | None) -> Answer:
        """Events posted to ``POST /api/remediate`` (an Activator → Power Automate flow): read
        all first (one unreadable event refuses the request, 400 ``InvalidEvent``, and nothing is
        done), then each is handled as the event triggers handle it (trigger ``http-event``):
        deduplicated, queued or run, a job event's dataset heal reading the refresh history first.
        200 ``{"events": [{"id", "kind", "status", "note", "correlationId"?, "statusUrl"?,
        "report"?}]}``."""
        origin = self.settings.vault_origin
        try:
            events = [parse_event(raw, vault_origin=origin, index=i) for i, raw in enumerate(request.events)]
        except EventError as exc:
            return error(400, "InvalidEvent", str(exc))
        for index, event in enumerate(events):
            if correlation_id_error(event.id) is not None:  # it becomes the command's correlation id
                return error(
                    400, "InvalidEvent", f"event {index}: its id must be 1-128 letters, digits or ._:@+=-"
                )
        results = []
        try:
            for event in events:
                results.append(self._handle_parsed(event, "http-event"))
        except ConfigError as exc:
            logger.error("configuration error: %s", exc)
            return error(500, "ConfigurationError", str(exc))
        except RemediationError as exc:
            logger.error("remediation failed: %s", exc)
            return error(502, "UpstreamError", str(exc))
        return 200, {"events": [r.to_dict(status_base) for r in results]}

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
        invalid = correlation_id_error(correlation_id)
        if invalid is not None:
            return invalid
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
        asked = list_query(query, self._clock())
        if not isinstance(asked, ListQuery):
            return asked
        since, limit = asked.since, asked.limit
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
    "BatchResult",
    "EventError",
    "EventResult",
    "RemediationService",
    "get_service",
    "reset_service",
]
