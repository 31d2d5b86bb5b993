"""Event Grid and CloudEvents payloads -> commands for the healer.

Both schemas occur (Event Grid: ``eventType``/``data``; CloudEvents 1.0: ``type``/``data``), one
event or an array. Key Vault's data keys vary in case and values carry stray spaces in real
payloads, so keys are matched case-insensitively and values trimmed; the secret name and version
come from the ``Id`` URL, which must point at the configured vault (same scheme, host and port
as ``KEY_VAULT_URL``) — ``VaultName`` is not trusted.

The refresh-failure event (our custom topic) is::

    {"id": "...", "eventType": "PowerBI.RefreshFailed", "subject": "workspaces/<w>/datasets/<d>",
     "data": {"workspaceId": "<guid>", "datasetId": "<guid>", "requestId": "<guid>?", "error": "...?"},
     "dataVersion": "1.0", "eventTime": "..."}

Microsoft Fabric's **job events** (Real-Time hub; CloudEvents 1.0) are read as the same refresh
failure when a semantic model's job failed, as Microsoft delivers them (MicrosoftDocs/fabric-docs,
``real-time-hub/explore-fabric-job-events.md``)::

    {"specversion": "1.0", "type": "Microsoft.Fabric.ItemJobFailed", "id": "...",
     "source": "<tenant id>", "subject": "/workspaces/<w>/items/<item>/jobs/instances/<job>",
     "data": {"itemId", "itemKind", "itemName", "workspaceId", "jobInstanceId", "jobStatus",
              "jobType", "jobInovkeType", "jobScheduleTime", "jobStartTime", "jobEndTime", ...}}

* the type as delivered (``Microsoft.Fabric.ItemJobFailed``) or as subscriptions name it
  (``Microsoft.Fabric.JobEvents.ItemJobFailed``, seen delivered too); the other job event types
  (created, status changed, succeeded) are acknowledged and ignored;
* what is read of ``data``: ``itemId``, ``itemKind``, ``workspaceId``, ``jobInstanceId`` and the
  invoke type under Microsoft's spelling (``jobInovkeType``) or the corrected one
  (``jobInvokeType``), keys in any case; the rest (names, times, ``executingPricipalId``...) is
  not needed;
* workspace and item from ``data``, else from ``subject``; the job instance likewise;
* only a semantic model is acted on: ``itemKind`` ``SemanticModel`` or ``Dataset`` (the value is
  undocumented), compared case-insensitively; any other kind, or none, is ignored;
* the event carries **no failure reason**: the healer reads the dataset's refresh history before
  it changes anything, exactly as for ``PowerBI.RefreshFailed``;
* :attr:`Event.dedupe_keys`: the event id and ``fabric-job:<jobInstanceId>``, so one job's failure
  delivered twice, or through two paths (Event Grid, Eventstream, HTTP), is handled once.

:func:`events_in_message` reads the events of one Event Hubs message (an Eventstream custom
endpoint): one JSON object, an array of them, or one object per line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from urllib.parse import unquote, urlsplit

from remediation.errors import RemediationError

SECRET_NEW_VERSION = "Microsoft.KeyVault.SecretNewVersionCreated"
SECRET_NEAR_EXPIRY = "Microsoft.KeyVault.SecretNearExpiry"
SECRET_EXPIRED = "Microsoft.KeyVault.SecretExpired"
REFRESH_FAILED = "PowerBI.RefreshFailed"
FABRIC_JOB_FAILED = "Microsoft.Fabric.ItemJobFailed"
FABRIC_JOB_FAILED_SUBSCRIBED = "Microsoft.Fabric.JobEvents.ItemJobFailed"
"""The spelling Real-Time hub subscriptions use; one public project saw it delivered too."""
FABRIC_JOB_PREFIXES = ("microsoft.fabric.itemjob", "microsoft.fabric.jobevents.itemjob")
"""Every Fabric job event type, in both spellings (created, status changed, succeeded, failed)."""
JOB_KEY_PREFIX = "fabric-job:"
_SEMANTIC_MODEL_KINDS = frozenset({"semanticmodel", "dataset"})
_JOB_SUBJECT = re.compile(
    r"/?workspaces/(?P<workspace>[^/]+)/items/(?P<item>[^/]+)(?:/jobs/instances/(?P<job>[^/]+))?/?",
    re.IGNORECASE,
)
SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"

MAX_EVENTS = 5000
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SECRET_PATH = re.compile(r"/secrets/(?P<name>[0-9A-Za-z-]{1,127})(?:/(?P<version>[0-9A-Fa-f]{32}))?/?")


class EventError(RemediationError):
    """A payload that is not an event we can read (the message says what is wrong)."""


class Kind(StrEnum):
    SECRET_NEW_VERSION = "secret-new-version"
    SECRET_NEAR_EXPIRY = "secret-near-expiry"
    SECRET_EXPIRED = "secret-expired"
    REFRESH_FAILED = "refresh-failed"
    VALIDATION = "subscription-validation"
    OTHER = "other"  # acknowledged and ignored


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    kind: Kind
    secret_name: str | None = None
    secret_version: str | None = None
    foreign_vault: bool = False  # a Key Vault event of another vault: ignored
    workspace_id: str | None = None
    dataset_id: str | None = None
    request_id: str | None = None
    error: str | None = None
    validation_code: str | None = None
    job_instance_id: str | None = None  # a Fabric job event's job instance (lower-case GUID)
    item_kind: str | None = None  # a Fabric job event's itemKind, as sent
    note: str | None = None  # why an acknowledged event is ignored, when the type does not say

    @property
    def dedupe_keys(self) -> tuple[str, ...]:
        """The ledger keys under which this event counts as handled: its id, and for a Fabric job
        event its job instance (the same job's failure may come twice, or by two paths)."""
        if self.job_instance_id:
            return (self.id, JOB_KEY_PREFIX + self.job_instance_id)
        return (self.id,)


def parse_events(payload: object, *, vault_origin: tuple[str, str, int] | None) -> list[Event]:
    """Parse one event or an array of them. ``vault_origin`` is ``Settings.vault_origin``."""
    if isinstance(payload, (bytes, str)):
        try:
            payload = json.loads(payload)
        except (ValueError, RecursionError):
            raise EventError("the payload is not valid JSON") from None
    items = payload if isinstance(payload, list) else [payload]
    if len(items) > MAX_EVENTS:
        raise EventError(f"{len(items)} events in one payload; at most {MAX_EVENTS}")
    return [parse_event(item, vault_origin=vault_origin, index=i) for i, item in enumerate(items)]


def events_in_message(body: bytes | str, *, index: int = 0) -> list[object]:
    """The events in one Event Hubs message body (an Eventstream custom endpoint): a JSON object,
    an array of objects, or one object per line (JSON Lines). Raises :class:`EventError` for a
    body that is none of these; the events themselves are read by :func:`parse_event`."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise EventError(f"message {index} is not UTF-8 text") from None
    text = body.lstrip("\ufeff").strip()
    if not text:
        raise EventError(f"message {index} is empty")
    try:
        parsed: object = json.loads(text)
    except (ValueError, RecursionError):
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise EventError(f"message {index} is not JSON") from None
        try:
            parsed = [json.loads(line) for line in lines]
        except (ValueError, RecursionError):
            raise EventError(f"message {index} is neither JSON nor JSON Lines") from None
    items = parsed if isinstance(parsed, list) else [parsed]
    if not items:
        raise EventError(f"message {index} is an empty array")
    if len(items) > MAX_EVENTS:
        raise EventError(f"message {index} holds {len(items)} events; at most {MAX_EVENTS}")
    return items


def parse_event(raw: object, *, vault_origin: tuple[str, str, int] | None, index: int = 0) -> Event:
    """One Event Grid or CloudEvents event -> :class:`Event`."""
    if not isinstance(raw, Mapping):
        raise EventError(f"event {index} is not a JSON object")
    event_id = _text(raw.get("id"))
    event_type = _text(raw.get("eventType")) or _text(raw.get("type"))
    if not event_id or not event_type:
        raise EventError(f"event {index} has no id or no eventType/type")
    data = raw.get("data")
    data = data if isinstance(data, Mapping) else {}
    folded = {str(k).strip().lower(): v for k, v in data.items()}

    if event_type == SUBSCRIPTION_VALIDATION:
        return Event(
            event_id, event_type, Kind.VALIDATION, validation_code=_text(folded.get("validationcode"))
        )
    kinds = {
        SECRET_NEW_VERSION.lower(): Kind.SECRET_NEW_VERSION,
        SECRET_NEAR_EXPIRY.lower(): Kind.SECRET_NEAR_EXPIRY,
        SECRET_EXPIRED.lower(): Kind.SECRET_EXPIRED,
    }
    kind = kinds.get(event_type.lower())
    if kind is not None:
        object_id = _text(folded.get("id"))
        if not object_id:
            raise EventError(f"event {event_id}: data.Id (the secret's URL) is missing")
        name, version, foreign = _secret_from_id(object_id, vault_origin)
        if name is None:
            raise EventError(f"event {event_id}: data.Id is not a Key Vault secret URL")
        return Event(
            event_id, event_type, kind, secret_name=name, secret_version=version, foreign_vault=foreign
        )
    if event_type.lower() == REFRESH_FAILED.lower():
        return _refresh_failed(
            event_id,
            event_type,
            workspace=folded.get("workspaceid"),
            dataset=folded.get("datasetid"),
            request=folded.get("requestid"),
            error=folded.get("error"),
            names="data.workspaceId and data.datasetId",
        )
    if event_type.lower() in (FABRIC_JOB_FAILED.lower(), FABRIC_JOB_FAILED_SUBSCRIBED.lower()):
        return _fabric_job_failed(event_id, event_type, folded, raw.get("subject"))
    if event_type.lower().startswith(FABRIC_JOB_PREFIXES):
        return Event(event_id, event_type, Kind.OTHER, note="a Fabric job event that is not a failure")
    return Event(event_id, event_type, Kind.OTHER)


def _fabric_job_failed(event_id: str, event_type: str, data: Mapping[str, object], subject: object) -> Event:
    """Fabric's ``ItemJobFailed`` (see the module docstring) for a semantic model is a refresh
    failure with no reason; other item kinds (a pipeline, a notebook...) are ignored.

    Microsoft's current list of items that raise job events does not name semantic models, while
    its prerequisites page uses one as its example: only a real tenant can say whether they come,
    and with which ``itemKind``; both documented spellings are taken."""
    parts = _JOB_SUBJECT.fullmatch(_text(subject) or "")
    item = _text(data.get("itemid")) or (parts.group("item") if parts else None)
    workspace = _text(data.get("workspaceid")) or (parts.group("workspace") if parts else None)
    job = _text(data.get("jobinstanceid")) or (parts.group("job") if parts else None)
    kind = _text(data.get("itemkind"))
    folded_kind = re.sub(r"[^a-z]", "", (kind or "").lower())
    if folded_kind not in _SEMANTIC_MODEL_KINDS:
        what = f"of a {kind[:40]}" if kind else "without an itemKind"
        return Event(
            event_id,
            event_type,
            Kind.OTHER,
            item_kind=kind,
            note=f"a Fabric job failure {what}, not a semantic model: ignored",
        )
    event = _refresh_failed(
        event_id,
        event_type,
        workspace=workspace,
        dataset=item,
        request=job,
        error=None,
        names="the workspace and item ids (data.workspaceId and data.itemId, or the subject)",
    )
    job_id = event.request_id
    invoke = _text(data.get("jobinvoketype")) or _text(data.get("jobinovketype"))  # Microsoft's spelling
    return replace(
        event,
        job_instance_id=job_id,
        item_kind=kind,
        note=f"a {invoke[:20]} job" if invoke else None,
    )


def _refresh_failed(
    event_id: str,
    event_type: str,
    *,
    workspace: object,
    dataset: object,
    request: object,
    error: object,
    names: str,
) -> Event:
    """A refresh failure of dataset ``dataset`` in ``workspace`` (both must be GUIDs)."""
    workspace_id, dataset_id, request_id = _text(workspace), _text(dataset), _text(request)
    if (
        not workspace_id
        or not _GUID.fullmatch(workspace_id)
        or not dataset_id
        or not _GUID.fullmatch(dataset_id)
    ):
        raise EventError(f"event {event_id}: {names} must be GUIDs")
    return Event(
        event_id,
        event_type,
        Kind.REFRESH_FAILED,
        workspace_id=workspace_id.lower(),
        dataset_id=dataset_id.lower(),
        request_id=request_id.lower() if request_id and _GUID.fullmatch(request_id) else None,
        error=(_text(error) or "")[:500] or None,
    )


def _secret_from_id(
    object_id: str, vault_origin: tuple[str, str, int] | None
) -> tuple[str | None, str | None, bool]:
    parts = urlsplit(object_id)
    match = _SECRET_PATH.fullmatch(unquote(parts.path))
    if parts.scheme.lower() != "https" or not parts.hostname or match is None:
        return None, None, False
    port = parts.port or 443
    foreign = vault_origin is None or (parts.scheme.lower(), parts.hostname.lower(), port) != vault_origin
    version = match.group("version")
    return match.group("name"), version.lower() if version else None, foreign


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None
