"""The Power BI REST API, as the operations the healer uses.

:class:`PowerBIClient` methods are named after the API's operations (``Groups_GetGroups`` ->
:meth:`~PowerBIClient.get_groups`, ``Gateways_UpdateDatasource`` ->
:meth:`~PowerBIClient.update_datasource`, ...). Each returns small frozen models
(:mod:`remediation.clients.powerbi_models`) parsed and *validated* at this boundary: a response
that is not what the API documents raises
:class:`~remediation.clients.api_errors.ResponseValidationError` naming the field, never a
``KeyError`` later. Every id is checked to be a GUID before it goes into a URL
(:class:`InvalidId`), so no caller input can reach another path. This module is the operations
themselves: URLs, paging, which calls may be retried, and the typing of Power BI's errors.

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

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from remediation.clients.api_errors import ApiError, restore_exception
from remediation.clients.http import ApiResponse, HttpPipeline, error_from_response
from remediation.clients.powerbi_models import (
    Dataset,
    DatasetDatasource,
    DatasourceStatus,
    Gateway,
    GatewayDatasource,
    Group,
    Refresh,
    RefreshRequest,
    RefreshSchedule,
    ScanResult,
    ScanStatus,
    is_guid,
    read_dataset,
    read_dataset_datasource,
    read_gateway,
    read_gateway_datasource,
    read_group,
    read_list,
    read_refresh,
    read_scan_result,
    read_scan_status,
    read_schedule,
)
from remediation.errors import RemediationError

__all__ = [
    "EntityNotFound",
    "InvalidId",
    "PowerBIClient",
    "PowerBINotAuthorized",
    "RefreshAlreadyRunning",
    "RefreshQuotaExceeded",
    "RefreshRefused",
]

logger = logging.getLogger(__name__)

_E = TypeVar("_E", bound=ApiError)
_NOTIFY_OPTIONS = ("NoNotification", "MailOnFailure", "MailOnCompletion")
MAX_SCAN_WORKSPACES = 100
"""Workspaces one ``getInfo`` call may scan (the swagger's ``RequiredWorkspaces``: 1 to 100)."""
DEFAULT_PAGE_SIZE = 1000
MAX_PAGES = 1000


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
            page = read_list(response, "groups", read_group)
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
        return read_list(self._call("GET", url), "datasets", read_dataset)

    def get_datasources_in_group(self, group_id: str, dataset_id: str) -> list[DatasetDatasource]:
        """``Datasets_GetDatasourcesInGroup``: the data sources a dataset uses."""
        url = self._url(
            "groups", _id("group_id", group_id), "datasets", _id("dataset_id", dataset_id), "datasources"
        )
        return read_list(self._call("GET", url), "datasources", read_dataset_datasource)

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
        return read_list(self._call("GET", url, params={"$top": top}), "refreshes", read_refresh)

    def get_refresh_schedule_in_group(self, group_id: str, dataset_id: str) -> RefreshSchedule:
        """``Datasets_GetRefreshScheduleInGroup``."""
        url = self._url(
            "groups", _id("group_id", group_id), "datasets", _id("dataset_id", dataset_id), "refreshSchedule"
        )
        response = self._call("GET", url)
        return read_schedule(response, response.json())

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
        return read_list(self._call("GET", self._url("gateways")), "gateways", read_gateway)

    def get_gateway(self, gateway_id: str) -> Gateway:
        """``Gateways_GetGateway``, with its validated public key (None for a cloud gateway)."""
        response = self._call("GET", self._url("gateways", _id("gateway_id", gateway_id)))
        return read_gateway(response, response.json(), "gateway")

    def get_datasources(self, gateway_id: str) -> list[GatewayDatasource]:
        """``Gateways_GetDatasources``."""
        url = self._url("gateways", _id("gateway_id", gateway_id), "datasources")
        return read_list(self._call("GET", url), "datasources", read_gateway_datasource)

    def get_datasource(self, gateway_id: str, datasource_id: str) -> GatewayDatasource:
        """``Gateways_GetDatasource``."""
        url = self._url(
            "gateways", _id("gateway_id", gateway_id), "datasources", _id("datasource_id", datasource_id)
        )
        response = self._call("GET", url)
        return read_gateway_datasource(response, response.json(), "datasource")

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
        return read_scan_status(response)

    def get_scan_status(self, scan_id: str) -> ScanStatus:
        """``WorkspaceInfo_GetScanStatus``."""
        return read_scan_status(
            self._call("GET", self._url("admin", "workspaces", "scanStatus", _id("scan_id", scan_id)))
        )

    def get_scan_result(self, scan_id: str) -> ScanResult:
        """``WorkspaceInfo_GetScanResult`` (only after a status of ``Succeeded``)."""
        url = self._url("admin", "workspaces", "scanResult", _id("scan_id", scan_id))
        return read_scan_result(self._call("GET", url))


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
