"""Fabric's job events (Real-Time hub) for the semantic-model refreshes the sandbox runs.

``sb.job_events`` collects, for every refresh Power BI's stand-in starts and finishes, the CloudEvents
1.0 that Fabric's job events are (``Microsoft.Fabric.ItemJobCreated`` when it starts,
``ItemJobSucceeded`` or ``ItemJobFailed`` when it ends), shaped as Microsoft's table describes them
(MicrosoftDocs/fabric-docs, ``real-time-hub/explore-fabric-job-events.md``): ``source`` the tenant,
``subject`` ``/workspaces/{ws}/items/{item}/jobs/instances/{job}``, ``data`` with ``itemId``,
``itemKind``, ``itemName``, ``workspaceId``, ``workspaceName``, ``executingPricipalId``,
``executingPriciplaType``, ``jobInstanceId``, ``jobStatus``, ``jobType``, ``jobInovkeType`` (the
misspellings are Microsoft's), ``jobScheduleTime``, ``jobStartTime``, ``jobEndTime``, and no
failure reason. The job instance is the refresh's ``requestId``.

Nothing delivers them: a test takes them (:meth:`JobEvents.take`) and hands them to the Functions
app through ``azure.functions``' own Event Grid or Event Hubs converters, as an Eventstream custom
endpoint or an Event Grid subscription would (no broker is needed to prove the product's side).

What Microsoft does not say is a switch here, set to the guess a real tenant must confirm:

* whether semantic models raise job events at all (the current list of supported items omits
  them): :attr:`JobEvents.enabled` (on);
* ``itemKind``'s value for a semantic model: :attr:`JobEvents.item_kind` (``SemanticModel``;
  ``Dataset`` is the other plausible spelling);
* the delivered ``type``: :attr:`JobEvents.type_prefix` (``Microsoft.Fabric.``; subscriptions
  name ``Microsoft.Fabric.JobEvents.``, and one public project saw that form delivered);
* ``jobType``: :attr:`JobEvents.job_type` (``Refresh``; undocumented for semantic models);
* whether a workspace on shared capacity (Pro) has them: :attr:`JobEvents.shared_capacity`
  (off: Fabric's events come from Fabric capacities).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["JobEvents", "RefreshJob"]


@dataclass(frozen=True)
class RefreshJob:
    """What Power BI's stand-in tells about one refresh (plain values: no import of its models)."""

    workspace_id: str
    workspace_name: str
    dedicated_capacity: bool
    capacity_id: str | None
    dataset_id: str
    dataset_name: str
    request_id: str
    refresh_type: str  # Scheduled, ViaApi, ...
    requested_by: str | None
    start: float
    end: float | None
    status: str  # Unknown (running), Completed, Failed, ...


def _time(ts: float | None) -> str | None:
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


class JobEvents:
    """The job events of the sandbox's refreshes, in order, until a test takes them."""

    def __init__(self, tenant_id: Callable[[], str], clock: Callable[[], float]) -> None:
        self._tenant_id = tenant_id
        self._clock = clock
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []  # every event, taken or not
        self._taken = 0
        self.enabled = True
        self.item_kind = "SemanticModel"
        self.type_prefix = "Microsoft.Fabric."
        self.job_type = "Refresh"
        self.shared_capacity = False

    def refresh_started(self, job: RefreshJob) -> None:
        self._record("ItemJobCreated", job, "NotStarted")

    def refresh_finished(self, job: RefreshJob) -> None:
        if job.status == "Completed":
            self._record("ItemJobSucceeded", job, "Completed")
        elif job.status in ("Failed", "Cancelled", "Disabled"):
            self._record("ItemJobFailed", job, job.status)

    def take(self, *, failed_only: bool = False) -> list[dict[str, Any]]:
        """The events recorded since the last take (``failed_only``: the ``ItemJobFailed`` ones)."""
        with self._lock:
            fresh = self.events[self._taken :]
            self._taken = len(self.events)
        if failed_only:
            return [e for e in fresh if str(e["type"]).endswith("ItemJobFailed")]
        return fresh

    def _record(self, short_type: str, job: RefreshJob, status: str) -> None:
        if not self.enabled or (not job.dedicated_capacity and not self.shared_capacity):
            return
        principal = job.requested_by
        data: dict[str, Any] = {
            "itemId": job.dataset_id,
            "itemKind": self.item_kind,
            "itemName": job.dataset_name,
            "workspaceId": job.workspace_id,
            "workspaceName": job.workspace_name,
            "executingPricipalId": principal,
            "executingPriciplaType": "Service Principal" if principal else None,
            "jobInstanceId": job.request_id,
            "jobStatus": status,
            "jobType": self.job_type,
            "jobInovkeType": "Scheduled" if job.refresh_type == "Scheduled" else "Manual",
            "jobScheduleTime": _time(job.start),
            "jobStartTime": _time(job.start),
            "jobEndTime": _time(job.end),
        }
        subject = f"/workspaces/{job.workspace_id}/items/{job.dataset_id}/jobs/instances/{job.request_id}"
        event = {
            "specversion": "1.0",
            "type": self.type_prefix + short_type,
            "source": self._tenant_id(),
            "subject": subject,
            "time": _time(self._clock()),
            "id": str(uuid.uuid4()),
            "dataschemaversion": "1.0",
            "capacityId": job.capacity_id,
            "data": {k: v for k, v in data.items() if v is not None},
        }
        with self._lock:
            self.events.append(event)
