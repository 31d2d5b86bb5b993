"""What an outcome event says: the ``CredentialRemediation`` event of one
:class:`~remediation.ledger.Outcome` (always the same properties, "" for unknown) and its one-line
text, and the property values of other custom events. Pure; sending them is
:class:`remediation.telemetry.appinsights.Telemetry`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from remediation.ledger import Outcome

if TYPE_CHECKING:
    from remediation.clients.stats import StatsSnapshot

__all__ = [
    "OUTCOME_EVENT",
    "OUTCOME_PROPERTIES",
    "SECRET_EXPIRY_EVENT",
    "describe_outcome",
    "event_properties",
    "outcome_properties",
]

OUTCOME_EVENT: Final = "CredentialRemediation"
SECRET_EXPIRY_EVENT: Final = "CredentialSecretExpiry"

OUTCOME_PROPERTIES: Final = (
    "trigger",
    "correlationId",
    "workspaceId",
    "datasetId",
    "gatewayId",
    "datasourceId",
    "binding",
    "account",
    "secretName",
    "secretVersion",
    "action",
    "reason",
    "refreshRequestId",
    "refreshState",
    "durationMs",
    "apiCalls",
    "retries",
    "throttled",
)
"""The properties of every ``CredentialRemediation`` event, always all present ("" = unknown).
``account`` is the account key a target's sign-ins count against (``user:svc_pbi``,
``app:<client id>``, ``secret:<name>``): a user name from the bindings file or a JSON secret's
``username`` (also in the reasons), never a credential (docs/operations.md, "Ledger and telemetry": the
account dimension)."""


def outcome_properties(
    outcome: Outcome,
    *,
    trigger: str | None = None,
    correlation_id: str | None = None,
    stats: StatsSnapshot | None = None,
    duration: float | None = None,
) -> dict[str, str | int]:
    """The ``CredentialRemediation`` properties of one outcome (exactly :data:`OUTCOME_PROPERTIES`).

    The outcome's own trigger, correlation id and duration win over the run's (the arguments).
    Unknown values are "" so every event has the same keys. ``durationMs`` is whole milliseconds;
    ``apiCalls``, ``retries`` and ``throttled`` are the run's totals from ``stats``.
    """
    seconds = outcome.duration if outcome.duration is not None else duration
    props: dict[str, str | int] = {
        "trigger": outcome.trigger or trigger or "",
        "correlationId": outcome.correlation_id or correlation_id or "",
        "workspaceId": outcome.workspace_id or "",
        "datasetId": outcome.dataset_id or "",
        "gatewayId": outcome.gateway_id or "",
        "datasourceId": outcome.datasource_id or "",
        "binding": outcome.binding or "",
        "account": outcome.account or "",
        "secretName": outcome.secret_name or "",
        "secretVersion": outcome.secret_version or "",
        "action": str(outcome.action or ""),
        "reason": outcome.reason or "",
        "refreshRequestId": outcome.refresh_request_id or "",
        "refreshState": outcome.refresh_state or "",
        "durationMs": "" if seconds is None else max(0, round(seconds * 1000)),
        "apiCalls": "" if stats is None else stats.calls,
        "retries": "" if stats is None else stats.retries,
        "throttled": "" if stats is None else stats.throttled,
    }
    return props


def describe_outcome(props: Mapping[str, str | int]) -> str:
    """The one-line text of an outcome event (its log message): action, target, dataset, secret,
    refresh state, correlation id and reason, the empty ones left out."""
    target = f"{props['gatewayId']}/{props['datasourceId']}" if props["datasourceId"] else ""
    dataset = f"{props['workspaceId']}/{props['datasetId']}" if props["datasetId"] else ""
    parts = [
        f"action={props['action']}",
        f"target={target}" if target else "",
        f"dataset={dataset}" if dataset else "",
        f"secret={props['secretName']}@{props['secretVersion']}" if props["secretName"] else "",
        f"refresh={props['refreshState']}" if props["refreshState"] else "",
        f"correlationId={props['correlationId']}",
        f"reason={props['reason']}" if props["reason"] else "",
    ]
    return " ".join(p for p in parts if p)


def event_properties(properties: Mapping[str, object]) -> dict[str, str | int | float]:
    """A custom event's properties as Application Insights takes them: strings or numbers (None:
    "", booleans ``true``/``false``, sequences comma-separated)."""
    return {str(k): _scalar(v) for k, v in properties.items()}


def _scalar(value: object) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(v) for v in value)
    return str(value)
