"""The Power BI REST API's answers, as small frozen models, and the strict readers that build them.

Each model is what one operation of :class:`~remediation.clients.powerbi.PowerBIClient` returns
(:class:`Group`, :class:`Dataset`, :class:`DatasetDatasource`, :class:`Gateway`,
:class:`GatewayDatasource`, :class:`DatasourceStatus`, :class:`RefreshRequest`, :class:`Refresh`,
:class:`RefreshSchedule`, and the admin scanner's :class:`ScanStatus` and :class:`ScanResult`
with its :class:`ScannedDataset`). The ``read_*`` functions parse and *validate* one answer at the
client boundary: a response that is not what the API documents raises
:class:`~remediation.clients.api_errors.ResponseValidationError` naming the field (``where``),
never a ``KeyError`` later. Ids are GUIDs (:func:`is_guid`), returned lower-case; a gateway's
public key is validated as it is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from remediation.clients.api_errors import ApiError
from remediation.clients.http import ApiResponse
from remediation.rules.gateway_crypto import GatewayKeyError, GatewayPublicKey

__all__ = [
    "Dataset",
    "DatasetDatasource",
    "DatasourceStatus",
    "Gateway",
    "GatewayDatasource",
    "Group",
    "Refresh",
    "RefreshRequest",
    "RefreshSchedule",
    "ScanResult",
    "ScanStatus",
    "ScannedDataset",
    "is_guid",
    "read_dataset",
    "read_dataset_datasource",
    "read_gateway",
    "read_gateway_datasource",
    "read_group",
    "read_list",
    "read_refresh",
    "read_scan_result",
    "read_scan_status",
    "read_schedule",
]

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_guid(value: object) -> bool:
    """True for a canonical ``8-4-4-4-12`` hexadecimal GUID string."""
    return isinstance(value, str) and _GUID.fullmatch(value) is not None


# --- models ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """A workspace."""

    id: str
    name: str
    is_read_only: bool = False
    is_on_dedicated_capacity: bool = False
    capacity_id: str | None = None


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    configured_by: str | None = None
    is_refreshable: bool | None = None
    is_on_prem_gateway_required: bool | None = None
    created_date: str | None = None  # as Power BI spells it (only compared, never parsed)


@dataclass(frozen=True)
class DatasetDatasource:
    """A data source a dataset uses, and the gateway data source bound to it (if any)."""

    datasource_type: str | None
    connection_details: Mapping[str, Any]
    gateway_id: str | None
    datasource_id: str | None
    name: str | None = None

    @property
    def bound(self) -> bool:
        """True when it names a gateway data source (whose credentials can be updated)."""
        return self.gateway_id is not None and self.datasource_id is not None


@dataclass(frozen=True)
class ScanStatus:
    """``ScanRequest``: a scan's id and state (``NotStarted``, ``Running``, ``Succeeded``,
    ``Failed``) and, for a failed one, its error code."""

    id: str
    status: str
    error: str | None = None


@dataclass(frozen=True)
class ScannedDataset:
    """A dataset of a scan result and the ids of the data source instances it uses."""

    workspace_id: str
    id: str
    datasource_instance_ids: tuple[str, ...]
    usages_described: bool = True
    """False when the scan did not say which sources it uses (no ``datasourceUsages``): that is
    not "none", so the dataset is learnt another way."""


@dataclass(frozen=True)
class ScanResult:
    """``WorkspaceInfoResponse``, reduced to what the inventory needs: the workspaces found
    (lower-case ids), their datasets, and the data source instances by (lower-case) id."""

    workspace_ids: frozenset[str]
    datasets: tuple[ScannedDataset, ...]
    instances: Mapping[str, DatasetDatasource]


@dataclass(frozen=True)
class Gateway:
    """A gateway. ``public_key`` is None for the virtual gateway of cloud data sources."""

    id: str
    name: str | None
    type: str | None
    public_key: GatewayPublicKey | None = field(default=None, repr=False)
    status: str | None = None

    @property
    def is_cloud(self) -> bool:
        """No public key: credentials go in plain JSON with ``encryptionAlgorithm: "None"``."""
        return self.public_key is None


@dataclass(frozen=True)
class GatewayDatasource:
    """A data source on a gateway. ``connection_details`` is the API's JSON *string*."""

    id: str
    gateway_id: str
    credential_type: str
    datasource_type: str | None = None
    datasource_name: str | None = None
    connection_details: str | None = None

    def connection(self) -> dict[str, Any] | None:
        """``connection_details`` decoded, or None when absent or not a JSON object."""
        if not self.connection_details:
            return None
        try:
            value = json.loads(self.connection_details)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class DatasourceStatus:
    """``Gateways_GetDatasourceStatus``: reachable with the stored credentials, or why not."""

    ok: bool
    code: str | None = None
    details: tuple[tuple[str, str], ...] = ()
    request_id: str | None = None

    def detail(self, code: str) -> str | None:
        for name, value in self.details:
            if name.lower() == code.lower():
                return value
        return None


@dataclass(frozen=True)
class RefreshRequest:
    """An accepted refresh: ``request_id`` (``x-ms-request-id``) matches history's ``requestId``."""

    request_id: str
    location: str | None = None


@dataclass(frozen=True)
class Refresh:
    """One refresh history entry. ``service_exception_json`` is the raw string, as sent."""

    request_id: str | None
    refresh_type: str | None
    start_time: datetime | None
    end_time: datetime | None
    status: str
    service_exception_json: str | None = None
    id: int | None = None

    @property
    def running(self) -> bool:
        """``Unknown`` is what Power BI reports while a refresh runs."""
        return self.status == "Unknown"

    @property
    def failed(self) -> bool:
        return self.status == "Failed"


@dataclass(frozen=True)
class RefreshSchedule:
    days: tuple[str, ...]
    times: tuple[str, ...]
    enabled: bool
    local_time_zone_id: str | None = None
    notify_option: str | None = None


# --- validation -----------------------------------------------------------------------------------
class _Reader:
    """Typed reads from one JSON object of a response; every failure names the field."""

    def __init__(self, response: ApiResponse, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise response.invalid(f"{where} must be a JSON object")
        self._response = response
        self._obj: dict[str, Any] = obj
        self._where = where

    def _bad(self, key: str, what: str) -> ApiError:
        return self._response.invalid(f"{self._where}.{key} {what}")

    def has(self, key: str) -> bool:
        return self._obj.get(key) is not None

    def raw(self, key: str) -> Any:
        return self._obj.get(key)

    def text(self, key: str) -> str:
        value = self._obj.get(key)
        if value is None:
            raise self._bad(key, "is missing")
        if not isinstance(value, str):
            raise self._bad(key, "must be a string")
        return value

    def opt_text(self, key: str) -> str | None:
        return self.text(key) if self._obj.get(key) is not None else None

    def guid(self, key: str) -> str:
        value = self.text(key)
        if not is_guid(value):
            raise self._bad(key, "must be a GUID")
        return value.lower()

    def opt_guid(self, key: str) -> str | None:
        return self.guid(key) if self._obj.get(key) is not None else None

    def opt_bool(self, key: str) -> bool | None:
        value = self._obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise self._bad(key, "must be a boolean")

    def boolean(self, key: str) -> bool:
        value = self.opt_bool(key)
        if value is None:
            raise self._bad(key, "is missing")
        return value

    def opt_int(self, key: str) -> int | None:
        value = self._obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "must be an integer")
        return value

    def opt_time(self, key: str) -> datetime | None:
        value = self.opt_text(key)
        if value is None or value == "":
            return None
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise self._bad(key, "must be an ISO 8601 date-time") from None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._obj.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "must be an array of strings")
        return tuple(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._obj.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._bad(key, "must be an object")
        return dict(value)


def _values(response: ApiResponse, where: str) -> list[Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise response.invalid(f"{where}: the body must be a JSON object")
    value = body.get("value")
    if not isinstance(value, list):
        raise response.invalid(f"{where}: 'value' must be an array")
    return value


def read_group(response: ApiResponse, obj: object, where: str) -> Group:
    r = _Reader(response, obj, where)
    return Group(
        id=r.guid("id"),
        name=r.opt_text("name") or "",
        is_read_only=bool(r.opt_bool("isReadOnly")),
        is_on_dedicated_capacity=bool(r.opt_bool("isOnDedicatedCapacity")),
        capacity_id=r.opt_text("capacityId"),
    )


def read_dataset(response: ApiResponse, obj: object, where: str) -> Dataset:
    r = _Reader(response, obj, where)
    return Dataset(
        id=r.guid("id"),
        name=r.opt_text("name") or "",
        configured_by=r.opt_text("configuredBy"),
        is_refreshable=r.opt_bool("isRefreshable"),
        is_on_prem_gateway_required=r.opt_bool("isOnPremGatewayRequired"),
        created_date=r.opt_text("createdDate"),
    )


def read_dataset_datasource(response: ApiResponse, obj: object, where: str) -> DatasetDatasource:
    r = _Reader(response, obj, where)
    details = r.raw("connectionDetails")
    if isinstance(details, str):  # tolerate the gateway API's string form
        try:
            details = json.loads(details) if details else {}
        except json.JSONDecodeError:
            raise response.invalid(f"{where}.connectionDetails is not valid JSON") from None
    if details is None:
        details = {}
    if not isinstance(details, dict):
        raise response.invalid(f"{where}.connectionDetails must be an object")
    return DatasetDatasource(
        datasource_type=r.opt_text("datasourceType"),
        connection_details=dict(details),
        gateway_id=r.opt_guid("gatewayId"),
        datasource_id=r.opt_guid("datasourceId"),
        name=r.opt_text("name"),
    )


def read_gateway(response: ApiResponse, obj: object, where: str) -> Gateway:
    r = _Reader(response, obj, where)
    key: GatewayPublicKey | None = None
    if r.has("publicKey"):
        try:
            key = GatewayPublicKey.from_api(r.raw("publicKey"))
        except GatewayKeyError as exc:
            raise response.invalid(f"{where}.{exc}") from None
    return Gateway(
        id=r.guid("id"),
        name=r.opt_text("name"),
        type=r.opt_text("type"),
        public_key=key,
        status=r.opt_text("gatewayStatus"),
    )


def read_gateway_datasource(response: ApiResponse, obj: object, where: str) -> GatewayDatasource:
    r = _Reader(response, obj, where)
    details = r.raw("connectionDetails")
    if details is not None and not isinstance(details, str):
        details = json.dumps(details)  # tolerate an object where the API documents a string
    return GatewayDatasource(
        id=r.guid("id"),
        gateway_id=r.guid("gatewayId"),
        credential_type=r.text("credentialType"),
        datasource_type=r.opt_text("datasourceType"),
        datasource_name=r.opt_text("datasourceName"),
        connection_details=details,
    )


def read_refresh(response: ApiResponse, obj: object, where: str) -> Refresh:
    r = _Reader(response, obj, where)
    exception = r.raw("serviceExceptionJson")
    if exception is not None and not isinstance(exception, str):
        raise response.invalid(f"{where}.serviceExceptionJson must be a string")
    return Refresh(
        request_id=r.opt_text("requestId"),
        refresh_type=r.opt_text("refreshType"),
        start_time=r.opt_time("startTime"),
        end_time=r.opt_time("endTime"),
        status=r.text("status"),
        service_exception_json=exception or None,
        id=r.opt_int("id"),
    )


def read_schedule(response: ApiResponse, obj: object) -> RefreshSchedule:
    r = _Reader(response, obj, "refreshSchedule")
    notify = r.opt_text("notifyOption") if r.has("notifyOption") else r.opt_text("NotifyOption")
    return RefreshSchedule(
        days=r.strings("days"),
        times=r.strings("times"),
        enabled=r.boolean("enabled"),
        local_time_zone_id=r.opt_text("localTimeZoneId"),
        notify_option=notify,
    )


def read_scan_status(response: ApiResponse) -> ScanStatus:
    r = _Reader(response, response.json(), "scan")
    error = r.mapping("error")
    code = error.get("code")
    return ScanStatus(id=r.guid("id"), status=r.text("status"), error=code if isinstance(code, str) else None)


def read_scan_result(response: ApiResponse) -> ScanResult:
    body = response.json()
    if not isinstance(body, dict):
        raise response.invalid("scanResult: the body must be a JSON object")
    workspaces = body.get("workspaces") or []
    if not isinstance(workspaces, list):
        raise response.invalid("scanResult.workspaces must be an array")
    found: set[str] = set()
    datasets: list[ScannedDataset] = []
    for i, item in enumerate(workspaces):
        where = f"scanResult.workspaces[{i}]"
        workspace_id = _Reader(response, item, where).guid("id").lower()
        found.add(workspace_id)
        entries = item.get("datasets") or []
        if not isinstance(entries, list):
            raise response.invalid(f"{where}.datasets must be an array")
        for j, entry in enumerate(entries):
            r = _Reader(response, entry, f"{where}.datasets[{j}]")
            described = r.raw("datasourceUsages") is not None
            usages = r.raw("datasourceUsages") or []
            if not isinstance(usages, list):
                raise response.invalid(f"{where}.datasets[{j}].datasourceUsages must be an array")
            ids = tuple(
                _Reader(response, u, f"{where}.datasets[{j}].datasourceUsages[{k}]")
                .guid("datasourceInstanceId")
                .lower()
                for k, u in enumerate(usages)
            )
            datasets.append(ScannedDataset(workspace_id, r.guid("id").lower(), ids, described))
    instances: dict[str, DatasetDatasource] = {}
    raw_instances = body.get("datasourceInstances") or []
    if not isinstance(raw_instances, list):
        raise response.invalid("scanResult.datasourceInstances must be an array")
    for i, item in enumerate(raw_instances):
        source = read_dataset_datasource(response, item, f"scanResult.datasourceInstances[{i}]")
        if source.datasource_id is not None:
            instances[source.datasource_id.lower()] = source
    return ScanResult(frozenset(found), tuple(datasets), instances)


_T = TypeVar("_T")


def read_list(response: ApiResponse, where: str, parse: Callable[[ApiResponse, object, str], _T]) -> list[_T]:
    return [parse(response, item, f"{where}[{i}]") for i, item in enumerate(_values(response, where))]
