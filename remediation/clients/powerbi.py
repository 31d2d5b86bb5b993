"""The Power BI REST API, as the operations the healer uses.

:class:`PowerBIClient` methods are named after the API's operations (``Groups_GetGroups`` ->
:meth:`~PowerBIClient.get_groups`, ``Gateways_UpdateDatasource`` ->
:meth:`~PowerBIClient.update_datasource`, ...). Each returns small frozen models parsed and
*validated* at this boundary: a response that is not what the API documents raises
:class:`~remediation.clients.api_errors.ResponseValidationError` naming the field, never a ``KeyError``
later.
Every id is checked to be a GUID before it goes into a URL (:class:`InvalidId`), so no caller
input can reach another path.

HTTP goes through :class:`~remediation.clients.http.HttpPipeline` (retries, timeouts, typed errors; the
bearer token goes into ``Authorization`` and is never logged). Which calls may be retried after
the service may have acted is decided per operation: the refresh-schedule PATCH and Take Over
are idempotent; the refresh POST and the credentials PATCH are not (see :mod:`remediation.clients.http`).

Typed errors beyond :class:`~remediation.clients.api_errors.ApiError`: :class:`RefreshAlreadyRunning` and
:class:`RefreshQuotaExceeded` (both :class:`RefreshRefused`), :class:`PowerBINotAuthorized`,
:class:`EntityNotFound`.

The admin scanner operations (:meth:`PowerBIClient.post_workspace_info`,
:meth:`~PowerBIClient.get_scan_status`, :meth:`~PowerBIClient.get_scan_result`) need a tenant
that lets the identity call read-only admin APIs; see :mod:`remediation.inventory.scanner`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from remediation.clients.api_errors import ApiError, restore_exception
from remediation.clients.http import ApiResponse, HttpPipeline, error_from_response
from remediation.errors import RemediationError
from remediation.rules.gateway_crypto import GatewayKeyError, GatewayPublicKey

__all__ = [
    "Dataset",
    "DatasetDatasource",
    "DatasourceStatus",
    "EntityNotFound",
    "Gateway",
    "GatewayDatasource",
    "Group",
    "InvalidId",
    "PowerBIClient",
    "PowerBINotAuthorized",
    "Refresh",
    "RefreshAlreadyRunning",
    "RefreshQuotaExceeded",
    "RefreshRefused",
    "RefreshRequest",
    "RefreshSchedule",
    "ScanResult",
    "ScanStatus",
    "ScannedDataset",
    "is_guid",
]

logger = logging.getLogger(__name__)

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_E = TypeVar("_E", bound=ApiError)
_NOTIFY_OPTIONS = ("NoNotification", "MailOnFailure", "MailOnCompletion")
MAX_SCAN_WORKSPACES = 100
"""Workspaces one ``getInfo`` call may scan (the swagger's ``RequiredWorkspaces``: 1 to 100)."""
DEFAULT_PAGE_SIZE = 1000
MAX_PAGES = 1000


def is_guid(value: object) -> bool:
    """True for a canonical ``8-4-4-4-12`` hexadecimal GUID string."""
    return isinstance(value, str) and _GUID.fullmatch(value) is not None


# --- errors ---------------------------------------------------------------------------------------
class InvalidId(RemediationError, ValueError):
    """An id that is not a GUID was given where the API takes one (it never reaches a URL)."""

    def __init__(self, what: str, value: object) -> None:
        shown = repr(value) if isinstance(value, str) and len(value) <= 64 else type(value).__name__
        super().__init__(f"{what} must be a GUID, got {shown}")
        self.what = what

    def __reduce__(self) -> tuple[Any, ...]:
        return (restore_exception, (type(self), self.args, dict(self.__dict__)))


class EntityNotFound(ApiError):
    """404: the workspace, dataset, gateway or data source does not exist or is not visible."""


class PowerBINotAuthorized(ApiError):
    """``PowerBINotAuthorizedException`` (401 or 403): the caller may not do this (not a gateway
    admin, not the dataset owner, or an app calling where only a user may)."""


class RefreshRefused(ApiError):
    """Power BI turned a refresh request down (400)."""


class RefreshAlreadyRunning(RefreshRefused):
    """A refresh of the dataset is already executing. ``attempts > 1`` means our own earlier
    attempt may be the one running (a retried POST after a 429/503 or an unsent request)."""


class RefreshQuotaExceeded(RefreshRefused):
    """The dataset used its daily refreshes (8 a day on shared capacity): try again tomorrow."""


def _retyped(cls: type[_E], error: ApiError) -> _E:
    return cls(
        error.message,
        status=error.status,
        code=error.code,
        inner_code=error.inner_code,
        details=error.details,
        request_id=error.request_id,
        method=error.method,
        path=error.path,
        service=error.service,
        retry_after=error.retry_after,
        attempts=error.attempts,
    )


def _typed(error: ApiError) -> ApiError:
    """The most specific class for a Power BI error."""
    codes = {error.code, error.inner_code}
    if "PowerBINotAuthorizedException" in codes:
        return _retyped(PowerBINotAuthorized, error)
    if error.status == 404:
        return _retyped(EntityNotFound, error)
    return error


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


def _group(response: ApiResponse, obj: object, where: str) -> Group:
    r = _Reader(response, obj, where)
    return Group(
        id=r.guid("id"),
        name=r.opt_text("name") or "",
        is_read_only=bool(r.opt_bool("isReadOnly")),
        is_on_dedicated_capacity=bool(r.opt_bool("isOnDedicatedCapacity")),
        capacity_id=r.opt_text("capacityId"),
    )


def _dataset(response: ApiResponse, obj: object, where: str) -> Dataset:
    r = _Reader(response, obj, where)
    return Dataset(
        id=r.guid("id"),
        name=r.opt_text("name") or "",
        configured_by=r.opt_text("configuredBy"),
        is_refreshable=r.opt_bool("isRefreshable"),
        is_on_prem_gateway_required=r.opt_bool("isOnPremGatewayRequired"),
        created_date=r.opt_text("createdDate"),
    )


def _dataset_datasource(response: ApiResponse, obj: object, where: str) -> DatasetDatasource:
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


def _gateway(response: ApiResponse, obj: object, where: str) -> Gateway:
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


def _gateway_datasource(response: ApiResponse, obj: object, where: str) -> GatewayDatasource:
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


def _refresh(response: ApiResponse, obj: object, where: str) -> Refresh:
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


def _schedule(response: ApiResponse, obj: object) -> RefreshSchedule:
    r = _Reader(response, obj, "refreshSchedule")
    notify = r.opt_text("notifyOption") if r.has("notifyOption") else r.opt_text("NotifyOption")
    return RefreshSchedule(
        days=r.strings("days"),
        times=r.strings("times"),
        enabled=r.boolean("enabled"),
        local_time_zone_id=r.opt_text("localTimeZoneId"),
        notify_option=notify,
    )


def _scan_status(response: ApiResponse) -> ScanStatus:
    r = _Reader(response, response.json(), "scan")
    error = r.mapping("error")
    code = error.get("code")
    return ScanStatus(id=r.guid("id"), status=r.text("status"), error=code if isinstance(code, str) else None)


def _scan_result(response: ApiResponse) -> ScanResult:
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
        source = _dataset_datasource(response, item, f"scanResult.datasourceInstances[{i}]")
        if source.datasource_id is not None:
            instances[source.datasource_id.lower()] = source
    return ScanResult(frozenset(found), tuple(datasets), instances)


_T = TypeVar("_T")


def _list(response: ApiResponse, where: str, parse: Callable[[ApiResponse, object, str], _T]) -> list[_T]:
    return [parse(response, item, f"{where}[{i}]") for i, item in enumerate(_values(response, where))]


# --- the client -----------------------------------------------------------------------------------
class PowerBIClient:
    """Power BI REST operations at ``api_url`` (``.../v1.0/myorg``) as ``token_provider``'s identity.

    ``token_provider`` is called for each request (it caches); ``pipeline`` carries the HTTP.
    Methods raise :class:`~remediation.clients.api_errors.ApiError` (or a subclass listed in the
    module docstring) for error answers, :class:`~remediation.clients.api_errors.ApiConnectionError`
    when the service cannot be reached, :class:`~remediation.clients.api_errors.ResponseValidationError`
    for malformed answers, and :class:`InvalidId` for ids that are not GUIDs.
    """

    def __init__(self, api_url: str, token_provider: Callable[[], str], pipeline: HttpPipeline) -> None:
        parts = urlsplit(api_url)
        if parts.scheme != "https" or not parts.netloc:
            raise ValueError("api_url must be an https URL")
        self.api_url = api_url.rstrip("/")
        self._origin = (parts.scheme, parts.netloc.lower())
        self._token_provider = token_provider
        self._pipeline = pipeline

    @property
    def pipeline(self) -> HttpPipeline:
        return self._pipeline

    # -- plumbing ------------------------------------------------------------------------------
    def _url(self, *segments: str) -> str:
        return self.api_url + "/" + "/".join(quote(s, safe=".") for s in segments)

    def _call(
        self,
        method: str,
        url: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        idempotent: bool | None = None,
        accept: Iterable[int] = (),
        presents_credentials: bool = False,
        before_attempt: Callable[[], None] | None = None,
    ) -> ApiResponse:
        if params:
            # OData system query options keep their literal "$" ($top, $skip), as Power BI documents.
            url = f"{url}?{urlencode(params, safe='$')}"
        fresh_token_tried = token is not None
        while True:
            bearer = token if token is not None else self._token_provider()
            try:
                return self._pipeline.request(
                    method,
                    url,
                    bearer=bearer,
                    json_body=json_body,
                    idempotent=idempotent,
                    accept=accept,
                    presents_credentials=presents_credentials,
                    before_attempt=before_attempt,
                )
            except ApiError as exc:
                # An expired token (clock skew past our early refresh) is worth one new token;
                # any other 401/403 (PowerBINotAuthorizedException, ...) is an answer.
                invalidate = getattr(self._token_provider, "invalidate", None)
                if exc.code == "TokenExpired" and not fresh_token_tried and callable(invalidate):
                    logger.info("%s %s: token expired; getting a new one", method, exc.path)
                    invalidate()
                    fresh_token_tried = True
                    continue
                raise _typed(exc) from None

    # -- groups and datasets -----------------------------------------------------------------
    def get_groups(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> list[Group]:
        """``Groups_GetGroups``: every workspace the caller is a member of.

        Pages with ``$top``/``$skip`` and follows ``@odata.nextLink`` (only to the API's own
        origin: the token is never sent elsewhere).
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        groups: list[Group] = []
        url: str | None = self._url("groups")
        params: dict[str, str | int] | None = {"$top": page_size, "$skip": 0}
        for _ in range(MAX_PAGES):
            assert url is not None
            response = self._call("GET", url, params=params)
            page = _list(response, "groups", _group)
            groups.extend(page)
            body = response.json()
            next_link = body.get("@odata.nextLink") if isinstance(body, dict) else None
            if next_link is not None:
                url, params = self._same_origin(response, next_link), None
            elif params is not None and len(page) >= page_size:
                params = {"$top": page_size, "$skip": len(groups)}
            else:
                return _unique(groups)
        raise ValueError(f"get_groups stopped after {MAX_PAGES} pages")

    def _same_origin(self, response: ApiResponse, link: object) -> str:
        if not isinstance(link, str):
            raise response.invalid("@odata.nextLink must be a string")
        parts = urlsplit(link)
        if (parts.scheme, parts.netloc.lower()) != self._origin:
            raise response.invalid("@odata.nextLink points outside the Power BI API")
        return link

    def get_datasets_in_group(self, group_id: str) -> list[Dataset]:
        """``Datasets_GetDatasetsInGroup``."""
        url = self._url("groups", _id("group_id", group_id), "datasets")
        return _list(self._call("GET", url), "datasets", _dataset)

    def get_datasources_in_group(self, group_id: str, dataset_id: str) -> list[DatasetDatasource]:
        """``Datasets_GetDatasourcesInGroup``: the data sources a dataset uses."""
        url = self._url(
            "groups", _id("group_id", group_id), "datasets", _id("dataset_id", dataset_id), "datasources"
        )
        return _list(self._call("GET", url), "datasources", _dataset_datasource)

    def take_over_in_group(self, group_id: str, dataset_id: str) -> None:
        """``Datasets_TakeOverInGroup``: make the caller the dataset's owner (idempotent)."""
        url = self._url(
            "groups",
            _id("group_id", group_id),
            "datasets",
            _id("dataset_id", dataset_id),
            "Default.TakeOver",
        )
        self._call("POST", url, idempotent=True)

    # -- refreshes -------------------------------------------------------------------------------
    def refresh_dataset_in_group(
        self, group_id: str, dataset_id: str, notify_option: str = "NoNotification"
    ) -> RefreshRequest:
        """``Datasets_RefreshDatasetInGroup``: start a refresh (202).

        Raises:
            RefreshAlreadyRunning: another refresh is executing (400).
            RefreshQuotaExceeded: the daily refresh limit is used up (400).
        """
        if notify_option not in _NOTIFY_OPTIONS:
            raise ValueError(f"notify_option must be one of {', '.join(_NOTIFY_OPTIONS)}")
        url = self._url(
            "groups", _id("group_id", group_id), "datasets", _id("dataset_id", dataset_id), "refreshes"
        )
        try:
            response = self._call("POST", url, json_body={"notifyOption": notify_option}, idempotent=False)
        except ApiError as exc:
            if exc.status == 400:
                text = (exc.message or "").lower()
                if "already executing" in text or "already running" in text:
                    raise _retyped(RefreshAlreadyRunning, exc) from None
                if (
                    "exceeded limit" in text
                    or "exceeded the amount" in text
                    or exc.code == "Request Throttled"
                ):
                    raise _retyped(RefreshQuotaExceeded, exc) from None
            raise
        location = response.headers.get("Location")
        request_id = response.headers.get("x-ms-request-id") or response.headers.get("RequestId")
        if not request_id and location:
            request_id = location.rstrip("/").rsplit("/", 1)[-1]
        if not request_id or not is_guid(request_id):
            raise response.invalid("the refresh answer carries no x-ms-request-id GUID")
        return RefreshRequest(request_id=request_id.lower(), location=location)

    def get_refresh_history_in_group(self, group_id: str, dataset_id: str, top: int = 10) -> list[Refresh]:
        """``Datasets_GetRefreshHistoryInGroup``: the latest ``top`` refreshes, newest first."""
        if top < 1:
            raise ValueError("top must be at least 1")
        url = self._url(
            "groups", _id("group_id", group_id), "datasets", _id("dataset_id", dataset_id), "refreshes"
        )
        return _list(self._call("GET", url, params={"$top": top}), "refreshes", _refresh)

    def get_refresh_schedule_in_group(self, group_id: str, dataset_id: str) -> RefreshSchedule:
        """``Datasets_GetRefreshScheduleInGroup``."""
        url = self._url(
            "groups", _id("group_id", group_id), "datasets", _id("dataset_id", dataset_id), "refreshSchedule"
        )
        response = self._call("GET", url)
        return _schedule(response, response.json())

    def update_refresh_schedule_in_group(self, group_id: str, dataset_id: str, enabled: bool) -> None:
        """``Datasets_UpdateRefreshScheduleInGroup`` with ``{"value": {"enabled": enabled}}``.

        Idempotent (an absolute value), so retried like a read. Needs the dataset owner.
        """
        url = self._url(
            "groups", _id("group_id", group_id), "datasets", _id("dataset_id", dataset_id), "refreshSchedule"
        )
        self._call("PATCH", url, json_body={"value": {"enabled": bool(enabled)}}, idempotent=True)

    # -- gateways --------------------------------------------------------------------------------
    def get_gateways(self) -> list[Gateway]:
        """``Gateways_GetGateways``: the gateways the caller administers."""
        return _list(self._call("GET", self._url("gateways")), "gateways", _gateway)

    def get_gateway(self, gateway_id: str) -> Gateway:
        """``Gateways_GetGateway``, with its validated public key (None for a cloud gateway)."""
        response = self._call("GET", self._url("gateways", _id("gateway_id", gateway_id)))
        return _gateway(response, response.json(), "gateway")

    def get_datasources(self, gateway_id: str) -> list[GatewayDatasource]:
        """``Gateways_GetDatasources``."""
        url = self._url("gateways", _id("gateway_id", gateway_id), "datasources")
        return _list(self._call("GET", url), "datasources", _gateway_datasource)

    def get_datasource(self, gateway_id: str, datasource_id: str) -> GatewayDatasource:
        """``Gateways_GetDatasource``."""
        url = self._url(
            "gateways", _id("gateway_id", gateway_id), "datasources", _id("datasource_id", datasource_id)
        )
        response = self._call("GET", url)
        return _gateway_datasource(response, response.json(), "datasource")

    def get_datasource_status(self, gateway_id: str, datasource_id: str) -> DatasourceStatus:
        """``Gateways_GetDatasourceStatus``: 200 is ok; a 400 ``DM_GWPipeline_*`` (or other
        ``DM*`` gateway code) is the answer "not ok, because ..." rather than an error.

        Note that the gateway really connects with the stored credentials: each call is a
        sign-in attempt at the source (and counts toward its lockout).
        """
        url = self._url(
            "gateways",
            _id("gateway_id", gateway_id),
            "datasources",
            _id("datasource_id", datasource_id),
            "status",
        )
        response = self._call("GET", url, accept=(400,))
        if response.status != 400:
            return DatasourceStatus(ok=True, request_id=response.request_id)
        error = error_from_response(response)
        if not (error.code or "").upper().startswith("DM"):
            raise _typed(error)
        return DatasourceStatus(
            ok=False, code=error.code, details=tuple(error.details), request_id=error.request_id
        )

    def update_datasource(
        self,
        gateway_id: str,
        datasource_id: str,
        request_body: Mapping[str, Any],
        *,
        token: str | None = None,
        before_attempt: Callable[[], None] | None = None,
    ) -> None:
        """``Gateways_UpdateDatasource``: set a data source's credentials.

        ``request_body`` is the ``UpdateDatasourceRequest`` (``{"credentialDetails": {...}}``);
        it is never logged nor put into an error. ``token`` overrides the provider's token (an
        OAuth2 caller-identity update must be made with the data source owner's user token).
        Serving it is a sign-in at the source: retried only after a 429 or when it was certainly
        not sent, never after a 5xx or a lost answer (see :mod:`remediation.clients.http`).
        ``before_attempt`` runs before every attempt (the healer renews its lease there).
        """
        details = request_body.get("credentialDetails") if isinstance(request_body, Mapping) else None
        if not isinstance(details, Mapping):
            raise ValueError("request_body must be an UpdateDatasourceRequest with 'credentialDetails'")
        url = self._url(
            "gateways", _id("gateway_id", gateway_id), "datasources", _id("datasource_id", datasource_id)
        )
        self._call(
            "PATCH",
            url,
            token=token,
            json_body=dict(request_body),
            idempotent=False,
            presents_credentials=True,
            before_attempt=before_attempt,
        )

    # -- admin: the scanner ------------------------------------------------------------------------
    def post_workspace_info(self, workspace_ids: Iterable[str]) -> ScanStatus:
        """``WorkspaceInfo_PostWorkspaceInfo`` with ``lineage`` and ``datasourceDetails``: start
        a scan of 1 to 100 workspaces (their datasets, the data source instances each uses).
        Read-only, so it may be retried (a retry may start a second scan, nothing worse)."""
        ids = [_id("workspace_id", w) for w in workspace_ids]
        if not 1 <= len(ids) <= MAX_SCAN_WORKSPACES:
            raise ValueError(f"a scan takes 1 to {MAX_SCAN_WORKSPACES} workspaces")
        response = self._call(
            "POST",
            self._url("admin", "workspaces", "getInfo"),
            params={"lineage": "True", "datasourceDetails": "True"},
            json_body={"workspaces": ids},
            idempotent=True,
        )
        return _scan_status(response)

    def get_scan_status(self, scan_id: str) -> ScanStatus:
        """``WorkspaceInfo_GetScanStatus``."""
        return _scan_status(
            self._call("GET", self._url("admin", "workspaces", "scanStatus", _id("scan_id", scan_id)))
        )

    def get_scan_result(self, scan_id: str) -> ScanResult:
        """``WorkspaceInfo_GetScanResult`` (only after a status of ``Succeeded``)."""
        url = self._url("admin", "workspaces", "scanResult", _id("scan_id", scan_id))
        return _scan_result(self._call("GET", url))


def _id(what: str, value: object) -> str:
    if not is_guid(value):
        raise InvalidId(what, value)
    assert isinstance(value, str)
    return value.lower()


def _unique(groups: list[Group]) -> list[Group]:
    seen: set[str] = set()
    result: list[Group] = []
    for group in groups:
        if group.id not in seen:
            seen.add(group.id)
            result.append(group)
    return result
