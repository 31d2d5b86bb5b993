"""Event Grid and CloudEvents payloads -> commands for the healer.

Both schemas occur (Event Grid: ``eventType``/``data``; CloudEvents 1.0: ``type``/``data``), one
event or an array. Key Vault's data keys vary in case and values carry stray spaces in real
payloads, so keys are matched case-insensitively and values trimmed; the secret name and version
come from the ``Id`` URL, which must point at the configured vault (same scheme, host and port
as ``KEY_VAULT_URL``) — ``VaultName`` is not trusted.

Microsoft Fabric's ``Microsoft.Fabric.ItemJobFailed`` for a semantic model routed to the topic
is read as the same refresh failure. The refresh-failure event (our custom topic) is::

    {"id": "...", "eventType": "PowerBI.RefreshFailed", "subject": "workspaces/<w>/datasets/<d>",
     "data": {"workspaceId": "<guid>", "datasetId": "<guid>", "requestId": "<guid>?", "error": "...?"},
     "dataVersion": "1.0", "eventTime": "..."}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote, urlsplit

from remediation.errors import RemediationError

SECRET_NEW_VERSION = "Microsoft.KeyVault.SecretNewVersionCreated"
SECRET_NEAR_EXPIRY = "Microsoft.KeyVault.SecretNearExpiry"
SECRET_EXPIRED = "Microsoft.KeyVault.SecretExpired"
REFRESH_FAILED = "PowerBI.RefreshFailed"
FABRIC_JOB_FAILED = "Microsoft.Fabric.ItemJobFailed"
_SEMANTIC_MODEL_KINDS = frozenset({"semanticmodel", "dataset"})
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
    if event_type.lower() == FABRIC_JOB_FAILED.lower():
        return _fabric_job_failed(event_id, event_type, folded)
    return Event(event_id, event_type, Kind.OTHER)


def _fabric_job_failed(event_id: str, event_type: str, data: Mapping[str, object]) -> Event:
    """Fabric's job event (CloudEvents; ``data.itemId``, ``itemKind``, ``workspaceId``,
    ``jobInstanceId``) for a semantic model is a refresh failure; other item kinds are ignored.
    (Microsoft's list of item kinds that raise job events does not name semantic models yet; the
    healer takes them when they are routed to its topic.)"""
    kind = (_text(data.get("itemkind")) or "").lower()
    if kind not in _SEMANTIC_MODEL_KINDS:
        return Event(event_id, event_type, Kind.OTHER)
    return _refresh_failed(
        event_id,
        event_type,
        workspace=data.get("workspaceid"),
        dataset=data.get("itemid"),
        request=data.get("jobinstanceid"),
        error=None,
        names="data.workspaceId and data.itemId",
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
