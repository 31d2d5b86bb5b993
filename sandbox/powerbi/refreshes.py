"""Refreshes and refresh schedules: the refresh engine, the daily quota, and their routes.

* **Refresh**: a sign-in per data source, in order, stopping at the first failure (a mashup
  evaluation aborts on the first error); a refused one fails the refresh with the data source's
  refusal shape as ``serviceExceptionJson`` (``unreadable``: a string that is not JSON); through
  a Fabric connection, with the connection's shape in Power BI's terms. The refresh finishes
  ``duration`` seconds after it started, evaluated lazily when history is read or a refresh is
  requested. Credential
  failure (wrong, locked out, or no credentials at all) disables the schedule; gateway or
  source unreachability does not.
* **Daily quota**: shared capacity allows 8 refreshes (API and scheduled) per dataset; the
  9th within 24 hours is refused with 400 ``InvalidRequest`` "Invalid dataset refresh
  request. Number of refresh requests in last 24 hours exceeded limit" -- the text users
  report (one report shows the code ``Request Throttled``), and a 400 rather than a 429: it is
  not a throttle a client should retry with ``Retry-After``. The window is a rolling 24 hours
  of ``sb.clock``, as that message says. Dedicated (Premium) capacity has no limit here.
* **Service principals** may not ask for mail: ``notifyOption`` other than ``NoNotification``
  from an app or managed identity -> 400 ``Invalid NotifyOption value ... for app only owner
  requests`` (for refreshes and for schedules).
* **Update Refresh Schedule** requires the dataset owner (the API's documented permission).
* **Job events**: each refresh started and finished is told to ``job_events``
  (:mod:`sandbox.job_events`), which records the Fabric job events a real tenant may raise.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any

from sandbox.entra import Entra, TokenInfo
from sandbox.host import Host
from sandbox.job_events import RefreshJob
from sandbox.powerbi.models import Dataset, Refresh, RefreshSchedule
from sandbox.powerbi.tenant import Tenant, same, user_of
from sandbox.powerbi.wire import (
    CREDENTIALS_NOT_SPECIFIED,
    GATEWAY_UNREACHABLE,
    bad_request,
    compact,
    int_param,
    iso,
    json_body,
    not_found,
    path_id,
    validate_body,
)
from sandbox.refusals import POWERBI_SHAPE_OF_FABRIC, pbi_error, powerbi_refusal
from sandbox.routing import Request, Response
from sandbox.sources import Sources

logger = logging.getLogger(__name__)


SHARED_MAX_SCHEDULE_TIMES = 8
PREMIUM_MAX_SCHEDULE_TIMES = 48
QUOTA_WINDOW_SECONDS = 24 * 3600.0
_TIME_OF_DAY = re.compile(r"(?:[01]\d|2[0-3]):(?:00|30)")


class RefreshRefused(Exception):
    """A refresh request the service turns down; ``message`` is what the API says."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Refreshes(Tenant):
    """Refreshes and schedules: world building, the engine, and routes."""

    def __init__(self, host: Host, entra: Entra, sources: Sources) -> None:
        super().__init__(host, entra, sources)
        self.refresh_duration = 0.0  # seconds a refresh takes unless the dataset says otherwise
        self._next_refresh_id = 100_000

    # -- world building (tests) ------------------------------------------------------------------
    def set_refresh_duration(self, seconds: float) -> None:
        """How long refreshes take by ``sb.clock`` (0: done at the first poll after the start)."""
        with self._lock:
            self.refresh_duration = float(seconds)

    def add_refresh(
        self,
        dataset: Dataset,
        *,
        status: str = "Failed",
        service_exception: str | Mapping[str, Any] | None = None,
        start: float | None = None,
        end: float | None = None,
        refresh_type: str = "Scheduled",
    ) -> Refresh:
        """Seed an entry in the refresh history (e.g. an old scheduled failure).

        ``service_exception`` is the ``serviceExceptionJson`` (a mapping is JSON-encoded); a
        Failed entry defaults to ``{"errorCode":"ModelRefreshFailed_CredentialsNotSpecified"}``.
        """
        with self._lock:
            now = self._host.clock.now()
            begin = start if start is not None else now - 3600.0
            finish = end if end is not None else begin + 60.0
            text: str | None
            if isinstance(service_exception, Mapping):
                text = json.dumps(service_exception, separators=(",", ":"))
            else:
                text = service_exception
            if status == "Failed" and text is None:
                text = json.dumps({"errorCode": CREDENTIALS_NOT_SPECIFIED}, separators=(",", ":"))
            # A seeded "Unknown" entry is a refresh still running until ``end``; it settles like any other.
            refresh = Refresh(
                str(uuid.uuid4()),
                self._refresh_id(),
                refresh_type,
                begin,
                finish,
                status,
                None if status == "Unknown" else finish,
                text if status == "Failed" else None,
            )
            dataset.refreshes.append(refresh)
            dataset.refreshes.sort(key=lambda r: (r.start, r.id))
            return refresh

    def start_refresh(
        self, dataset: Dataset, *, refresh_type: str = "Scheduled", requested_by: str | None = None
    ) -> Refresh:
        """Start a refresh as the service would (scheduler or API); raises :class:`RefreshRefused`."""
        with self._lock:
            self._settle(dataset)
            if any(r.running for r in dataset.refreshes):
                raise RefreshRefused(
                    "Invalid dataset refresh request. Another refresh request is already executing"
                )
            now = self._host.clock.now()
            if dataset.refresh_limit is not None:
                recent = [r for r in dataset.refreshes if r.start > now - QUOTA_WINDOW_SECONDS]
                if len(recent) >= dataset.refresh_limit:
                    raise RefreshRefused(
                        "Invalid dataset refresh request. "
                        "Number of refresh requests in last 24 hours exceeded limit"
                    )
            duration = self.refresh_duration if dataset.refresh_seconds is None else dataset.refresh_seconds
            refresh = Refresh(
                str(uuid.uuid4()),
                self._refresh_id(),
                refresh_type,
                now,
                now + duration,
                requested_by=requested_by,
            )
            dataset.refreshes.append(refresh)
            if self.job_events is not None:
                self.job_events.refresh_started(self._job(dataset, refresh))
            return refresh

    def settle(self) -> None:
        """Finish every refresh whose time has come (reads do this lazily per dataset)."""
        with self._lock:
            for workspace in self.workspaces.values():
                for dataset in workspace.datasets.values():
                    self._settle(dataset)

    def history(self, dataset: Dataset) -> list[Refresh]:
        """The dataset's refresh history, newest first, settled against the clock."""
        with self._lock:
            self._settle(dataset)
            return sorted(dataset.refreshes, key=lambda r: (r.start, r.id), reverse=True)

    # -- the refresh engine ----------------------------------------------------------------------
    def _refresh_id(self) -> int:
        self._next_refresh_id += 1
        return self._next_refresh_id

    def _settle(self, dataset: Dataset) -> None:
        now = self._host.clock.now()
        for refresh in dataset.refreshes:
            if refresh.running and refresh.ends_at <= now:
                self._finish(dataset, refresh)
                if self.job_events is not None:
                    self.job_events.refresh_finished(self._job(dataset, refresh))

    @staticmethod
    def _job(dataset: Dataset, refresh: Refresh) -> RefreshJob:
        workspace = dataset.workspace
        return RefreshJob(
            workspace_id=workspace.id,
            workspace_name=workspace.name,
            dedicated_capacity=workspace.dedicated_capacity,
            capacity_id=workspace.capacity_id,
            dataset_id=dataset.id,
            dataset_name=dataset.name,
            request_id=refresh.request_id,
            refresh_type=refresh.refresh_type,
            requested_by=refresh.requested_by,
            start=refresh.start,
            end=refresh.end,
            status=refresh.status,
        )

    def _finish(self, dataset: Dataset, refresh: Refresh) -> None:
        """Sign in to each data source with the stored credential; the first failure decides."""
        refresh.end = refresh.ends_at
        for datasource in dataset.datasources:
            result = self._sign_in(datasource, datasource.credential, cause="refresh")
            if result == "ok":
                continue
            refresh.status = "Failed"
            if result == "missing":
                error = compact({"errorCode": CREDENTIALS_NOT_SPECIFIED})
            elif result == "unreachable":
                error = compact(pbi_error(GATEWAY_UNREACHABLE))
            else:
                error = self._refusal(datasource, locked=result == "locked").text
            self._fail_refresh(dataset, refresh, result, error)
            return
        for connection in dataset.connections:
            unread = self._fabric_link().reference_failure(connection)
            if unread is not None:  # a Key Vault reference Fabric cannot read: no sign-in at all
                refresh.status = "Failed"
                self._fail_refresh(dataset, refresh, "reference", compact(unread))
                return
            result = self._fabric_link().sign_in(connection, cause="refresh")
            if result == "ok":
                continue
            refresh.status = "Failed"
            if result == "unreachable":
                error = compact(pbi_error(GATEWAY_UNREACHABLE))
            else:
                # The connection's Fabric shape, in Power BI's terms (a refresh is Power BI's).
                error = powerbi_refusal(
                    POWERBI_SHAPE_OF_FABRIC[connection.refusal],
                    kind=connection.connection_type,
                    path=connection.path,
                    user=user_of(connection.source),
                    locked=result == "locked" and self.report_lockouts,
                ).text
            self._fail_refresh(dataset, refresh, result, error)
            return
        refresh.status = "Completed"

    def _fail_refresh(self, dataset: Dataset, refresh: Refresh, result: str, error: str) -> None:
        """``error`` is the ``serviceExceptionJson`` string (normally JSON; see sandbox.refusals)."""
        refresh.service_exception = error
        if result != "unreachable":
            # Power BI turns the schedule off after a credential failure.
            dataset.schedule.enabled = False
        logger.info("sandbox powerbi: refresh %s of %s failed (%s)", refresh.request_id, dataset.id, result)

    # -- routes ----------------------------------------------------------------------------------
    def _refresh_dataset(self, request: Request) -> Response:
        caller = self._authenticate(request)
        body = json_body(request, required=False)
        if body is not None:
            validate_body("Datasets_RefreshDatasetInGroup", body)
        with self._lock:
            dataset = self._dataset(caller, request)
            if body is not None:
                if not dataset.workspace.dedicated_capacity and set(body) - {"notifyOption"}:
                    raise bad_request(
                        "Invalid dataset refresh request. Only notifyOption can be specified "
                        "for datasets on shared capacity."
                    )
                notify = body.get("notifyOption")
                if caller.kind != "user" and notify not in (None, "NoNotification"):
                    raise bad_request(f"Invalid NotifyOption value '{notify}' for app only owner requests")
            try:
                refresh = self.start_refresh(dataset, refresh_type="ViaApi", requested_by=caller.principal)
            except RefreshRefused as exc:
                raise bad_request(exc.message) from None
        location = (
            f"{self.api_url}/groups/{dataset.workspace.id}/datasets/{dataset.id}"
            f"/refreshes/{refresh.request_id}"
        )
        return Response(
            202,
            None,
            {"x-ms-request-id": refresh.request_id, "Location": location, "RequestId": refresh.request_id},
        )

    def _refresh_history(self, request: Request) -> Response:
        caller = self._authenticate(request)
        top = int_param(request, "$top", minimum=1)
        with self._lock:
            dataset = self._dataset(caller, request)
            history = self.history(dataset)
            value = [self._refresh_json(r) for r in (history if top is None else history[:top])]
        return Response(200, self._odata("refreshes", value))

    def _refresh_details(self, request: Request) -> Response:
        """Get Refresh Execution Details: what the ``Location`` of a refresh points at."""
        caller = self._authenticate(request)
        refresh_id = path_id(request, "refresh")
        with self._lock:
            dataset = self._dataset(caller, request)
            self._settle(dataset)
            refresh = next((r for r in dataset.refreshes if r.request_id == refresh_id), None)
            if refresh is None:
                raise not_found()
            entry = self._refresh_json(refresh)
        body: dict[str, Any] = {
            "startTime": entry["startTime"],
            "type": "Full",
            "commitMode": "Transactional",
            "status": refresh.status,
            "extendedStatus": "InProgress" if refresh.running else refresh.status,
            "currentRefreshType": "Full",
            "numberOfAttempts": 1,
            "objects": [],
            "messages": [],
        }
        if "endTime" in entry:
            body["endTime"] = entry["endTime"]
            body["refreshAttempts"] = entry["refreshAttempts"]
        if refresh.status == "Failed":
            body["messages"] = [
                {"code": "ModelRefreshFailed", "message": "The refresh failed.", "type": "Error"}
            ]
        return Response(202 if refresh.running else 200, body)

    def _get_refresh_schedule(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            dataset = self._dataset(caller, request)
            body = self._schedule_json(dataset.schedule)
        return Response(200, {"@odata.context": f"{self.api_url}/$metadata#refreshSchedule", **body})

    def _update_refresh_schedule(self, request: Request) -> Response:
        caller = self._authenticate(request)
        body = json_body(request, required=True)
        validate_body("Datasets_UpdateRefreshScheduleInGroup", body)
        value = body["value"]
        if not isinstance(value, dict):
            raise bad_request(
                "The request body does not match RefreshScheduleRequest: value: must be an object"
            )
        with self._lock:
            dataset = self._dataset(caller, request)
            if not same(dataset.owner, caller.principal):
                raise self._forbidden()
            self._apply_schedule(dataset, value, caller)
        return Response(200)

    def _apply_schedule(self, dataset: Dataset, value: dict[str, Any], caller: TokenInfo) -> None:
        schedule = dataset.schedule
        if value.get("enabled") is False and set(value) - {"enabled"}:
            raise bad_request("A request that disables the refresh schedule should contain no other changes.")
        days = value.get("days", schedule.days)
        if not days:
            raise bad_request("At least one day must be specified in the refresh schedule.")
        times = value.get("times", schedule.times)
        bad = [t for t in times if not _TIME_OF_DAY.fullmatch(t)]
        if bad:
            raise bad_request("times: each time must be hh:mm with mm 00 or 30.")
        premium = dataset.workspace.dedicated_capacity
        limit = PREMIUM_MAX_SCHEDULE_TIMES if premium else SHARED_MAX_SCHEDULE_TIMES
        if len(times) > limit:
            raise bad_request(f"times: at most {limit} refresh times per day on this capacity.")
        notify = value.get("notifyOption", value.get("NotifyOption", schedule.notify_option))
        if notify not in ("NoNotification", "MailOnFailure"):
            raise bad_request("notifyOption: must be one of NoNotification, MailOnFailure")
        asked = "notifyOption" in value or "NotifyOption" in value
        if caller.kind != "user" and notify != "NoNotification" and asked:
            raise bad_request(f"Invalid NotifyOption value '{notify}' for app only owner requests")
        schedule.days, schedule.times, schedule.notify_option = list(days), list(times), notify
        schedule.local_time_zone_id = value.get("localTimeZoneId", schedule.local_time_zone_id)
        if "enabled" in value:
            schedule.enabled = bool(value["enabled"])

    # -- JSON shapes -----------------------------------------------------------------------------
    @staticmethod
    def _refresh_json(refresh: Refresh) -> dict[str, Any]:
        body: dict[str, Any] = {
            "requestId": refresh.request_id,
            "id": refresh.id,
            "refreshType": refresh.refresh_type,
            "startTime": iso(refresh.start),
            "status": refresh.status,
        }
        if refresh.end is not None:
            body["endTime"] = iso(refresh.end)
            attempt: dict[str, Any] = {
                "attemptId": 1,
                "startTime": iso(refresh.start),
                "endTime": iso(refresh.end),
                "type": "Data",
            }
            if refresh.service_exception is not None:
                body["serviceExceptionJson"] = refresh.service_exception
                attempt["serviceExceptionJson"] = refresh.service_exception
            body["refreshAttempts"] = [attempt]
        return body

    @staticmethod
    def _schedule_json(schedule: RefreshSchedule) -> dict[str, Any]:
        return {
            "days": list(schedule.days),
            "times": list(schedule.times),
            "enabled": schedule.enabled,
            "localTimeZoneId": schedule.local_time_zone_id,
            "notifyOption": schedule.notify_option,
        }
