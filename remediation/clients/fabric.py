"""The Fabric REST API (``https://api.fabric.microsoft.com/v1``): connections and gateways.

:class:`FabricClient` methods are named after the API's operations (``Connections_GetConnection``
-> :meth:`~FabricClient.get_connection`, ``Connections_UpdateConnection`` ->
:meth:`~FabricClient.update_connection`, ``Gateways_ListGatewayMembers`` ->
:meth:`~FabricClient.list_gateway_members`, ...). Answers are parsed and validated into small
frozen models at this boundary; ids are checked to be GUIDs before they go into a URL.

Errors are Fabric's ``ErrorResponse`` (``errorCode``, ``message``, ``moreDetails``,
``relatedResource``, ``isRetriable``), raised as :class:`FabricError` or a subclass:
:class:`IncorrectCredentials` (the source refused the credential: the rejection),
:class:`FabricEntityNotFound` (404 / ``EntityNotFound``) and :class:`FabricNotAuthorized`
(401/403, ``InsufficientPermissionsToManage*``). HTTP goes through the one
:class:`~remediation.clients.http.HttpPipeline`: 429 with ``Retry-After`` is waited out there; the
credentials PATCH is ``presents_credentials`` (its serving is a sign-in at the source: retried
only after a 429, never after a 5xx or a lost answer).

Long-running operations (202 with ``Location`` and ``x-ms-operation-id``) are followed by
:meth:`FabricClient.wait_for_operation`: ``GET /operations/{id}`` until ``Succeeded`` or
``Failed``, waiting ``Retry-After`` between polls. Update Connection is not one (200 or 429 only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from remediation.clients.api_errors import ApiError
from remediation.clients.http import ApiResponse, HttpPipeline
from remediation.clients.powerbi import InvalidId
from remediation.clients.powerbi_models import is_guid
from remediation.clients.retry import parse_retry_after
from remediation.rules.gateway_crypto import GatewayKeyError, GatewayPublicKey

__all__ = [
    "Connection",
    "ConnectivityType",
    "FabricClient",
    "FabricEntityNotFound",
    "FabricError",
    "FabricGateway",
    "FabricNotAuthorized",
    "GatewayMember",
    "IncorrectCredentials",
    "ItemConnection",
    "Operation",
    "OperationFailed",
]

logger = logging.getLogger(__name__)

MAX_PAGES = 1000
_ERROR_STATUSES = (400, 401, 403, 404, 409)


class ConnectivityType:
    """``connectivityType`` values the healer knows how to update."""

    SHAREABLE_CLOUD = "ShareableCloud"
    PERSONAL_CLOUD = "PersonalCloud"
    ON_PREMISES_GATEWAY = "OnPremisesGateway"
    ON_PREMISES_GATEWAY_PERSONAL = "OnPremisesGatewayPersonal"
    VIRTUAL_NETWORK_GATEWAY = "VirtualNetworkGateway"
    STREAMING_VIRTUAL_NETWORK_GATEWAY = "StreamingVirtualNetworkGateway"


# --- errors ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorDetail:
    """One ``moreDetails`` entry."""

    error_code: str
    message: str


class FabricError(ApiError):
    """A Fabric ``ErrorResponse``. Beyond :class:`~remediation.clients.api_errors.ApiError` (whose ``code`` is
    ``errorCode`` and whose ``details`` are the ``moreDetails`` pairs): ``more_details``,
    ``related_resource`` (``(resourceType, resourceId)``) and ``is_retriable``."""

    more_details: tuple[ErrorDetail, ...] = ()
    related_resource: tuple[str, str] | None = None
    is_retriable: bool | None = None


class IncorrectCredentials(FabricError):
    """``IncorrectCredentials``: the source refused the credential (a failed sign-in)."""


class FabricEntityNotFound(FabricError):
    """404 or ``EntityNotFound``: the connection, gateway or operation does not exist (for the caller)."""


class FabricNotAuthorized(FabricError):
    """401/403 or ``InsufficientPermissionsToManage*``: the caller lacks a role on it."""


class OperationFailed(FabricError):
    """A long-running operation ended ``Failed`` (its ``error`` is the message and code)."""


def _fabric_error(response: ApiResponse) -> FabricError:
    """The typed error a 4xx Fabric answer stands for (no request body, no header is kept)."""
    try:
        body = response.json()
    except ApiError:
        body = None
    doc: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
    code = _text(doc.get("errorCode"))
    message = _text(doc.get("message")) or response.reason or f"HTTP {response.status}"
    more: list[ErrorDetail] = []
    for item in doc.get("moreDetails") or []:
        if isinstance(item, Mapping) and _text(item.get("errorCode")):
            more.append(ErrorDetail(str(item["errorCode"]), _text(item.get("message")) or ""))
    related = doc.get("relatedResource")
    resource = None
    if isinstance(related, Mapping) and _text(related.get("resourceId")):
        resource = (_text(related.get("resourceType")) or "", str(related["resourceId"]))
    retriable = doc.get("isRetriable")
    cls: type[FabricError] = FabricError
    if code == "IncorrectCredentials":
        cls = IncorrectCredentials
    elif response.status == 404 or code == "EntityNotFound":
        cls = FabricEntityNotFound
    elif response.status in (401, 403) or (code or "").startswith("InsufficientPermissions"):
        cls = FabricNotAuthorized
    error = cls(
        message[:500],
        status=response.status,
        code=code,
        details=[(d.error_code, d.message) for d in more],
        request_id=_text(doc.get("requestId")) or response.request_id,
        method=response.method,
        path=response.path,
        service=response.service,
        retry_after=parse_retry_after(response.headers),
        attempts=response.attempts,
    )
    error.more_details = tuple(more)
    error.related_resource = resource
    error.is_retriable = retriable if isinstance(retriable, bool) else None
    return error


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# --- models ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Connection:
    """``Connection``: no secret is ever returned, only the credential's type."""

    id: str
    connectivity_type: str
    display_name: str | None = None
    gateway_id: str | None = None
    connection_type: str | None = None  # connectionDetails.type (e.g. SQL)
    path: str | None = None  # connectionDetails.path (e.g. "server;database")
    credential_type: str | None = None
    privacy_level: str | None = None
    single_sign_on_type: str | None = None
    connection_encryption: str | None = None


@dataclass(frozen=True)
class ItemConnection:
    """``ItemConnection``: a connection an item (a semantic model) is bound to. ``id`` is None
    for a virtual connection (e.g. Direct Lake), which has no credential of its own."""

    id: str | None
    connectivity_type: str
    display_name: str | None = None
    gateway_id: str | None = None
    connection_type: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class GatewayMember:
    """``OnPremisesGatewayMember``: each member of a cluster has its own key."""

    id: str
    public_key: GatewayPublicKey
    enabled: bool
    display_name: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class FabricGateway:
    """``Gateway``: its type, and the primary member's key when on-premises (or personal)."""

    id: str
    type: str
    display_name: str | None = None
    public_key: GatewayPublicKey | None = None


@dataclass(frozen=True)
class Operation:
    """``OperationState`` of a long-running operation."""

    id: str
    status: str  # NotStarted, Running, Succeeded, Failed, Undefined
    error_code: str | None = None
    message: str | None = None


def _obj(response: ApiResponse, obj: object, where: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise response.invalid(f"{where} must be a JSON object")
    return obj


def _str(
    response: ApiResponse, obj: Mapping[str, Any], key: str, where: str, *, required: bool
) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise response.invalid(f"{where}.{key} is missing")
        return None
    if not isinstance(value, str):
        raise response.invalid(f"{where}.{key} must be a string")
    return value


def _guid(response: ApiResponse, obj: Mapping[str, Any], key: str, where: str) -> str:
    value = _str(response, obj, key, where, required=True)
    if not is_guid(value):
        raise response.invalid(f"{where}.{key} must be a GUID")
    assert value is not None
    return value.lower()


def _key(response: ApiResponse, raw: object, where: str) -> GatewayPublicKey:
    try:
        return GatewayPublicKey.from_api(raw)
    except GatewayKeyError as exc:
        raise response.invalid(f"{where}.{exc}") from None


def _connection(response: ApiResponse, raw: object, where: str) -> Connection:
    obj = _obj(response, raw, where)
    details = obj.get("connectionDetails") or {}
    creds = obj.get("credentialDetails") or {}
    if not isinstance(details, Mapping) or not isinstance(creds, Mapping):
        raise response.invalid(f"{where}.connectionDetails and credentialDetails must be objects")
    gateway_id = obj.get("gatewayId")
    return Connection(
        id=_guid(response, obj, "id", where),
        connectivity_type=_str(response, obj, "connectivityType", where, required=True) or "",
        display_name=_str(response, obj, "displayName", where, required=False),
        gateway_id=_guid(response, obj, "gatewayId", where) if gateway_id is not None else None,
        connection_type=_str(response, details, "type", where + ".connectionDetails", required=False),
        path=_str(response, details, "path", where + ".connectionDetails", required=False),
        credential_type=_str(response, creds, "credentialType", where + ".credentialDetails", required=False),
        privacy_level=_str(response, obj, "privacyLevel", where, required=False),
        single_sign_on_type=_str(
            response, creds, "singleSignOnType", where + ".credentialDetails", required=False
        ),
        connection_encryption=_str(
            response, creds, "connectionEncryption", where + ".credentialDetails", required=False
        ),
    )


def _item_connection(response: ApiResponse, raw: object, where: str) -> ItemConnection:
    obj = _obj(response, raw, where)
    details = obj.get("connectionDetails") or {}
    if not isinstance(details, Mapping):
        raise response.invalid(f"{where}.connectionDetails must be an object")
    return ItemConnection(
        id=_guid(response, obj, "id", where) if obj.get("id") is not None else None,
        connectivity_type=_str(response, obj, "connectivityType", where, required=True) or "",
        display_name=_str(response, obj, "displayName", where, required=False),
        gateway_id=_guid(response, obj, "gatewayId", where) if obj.get("gatewayId") is not None else None,
        connection_type=_str(response, details, "type", where + ".connectionDetails", required=False),
        path=_str(response, details, "path", where + ".connectionDetails", required=False),
    )


def _member(response: ApiResponse, raw: object, where: str) -> GatewayMember:
    obj = _obj(response, raw, where)
    enabled = obj.get("enabled")
    if not isinstance(enabled, bool):
        raise response.invalid(f"{where}.enabled must be a boolean")
    return GatewayMember(
        id=_guid(response, obj, "id", where),
        public_key=_key(response, obj.get("publicKey"), where + ".publicKey"),
        enabled=enabled,
        display_name=_str(response, obj, "displayName", where, required=False),
        version=_str(response, obj, "version", where, required=False),
    )


def _gateway(response: ApiResponse, raw: object, where: str) -> FabricGateway:
    obj = _obj(response, raw, where)
    key = obj.get("publicKey")
    return FabricGateway(
        id=_guid(response, obj, "id", where),
        type=_str(response, obj, "type", where, required=True) or "",
        display_name=_str(response, obj, "displayName", where, required=False),
        public_key=None if key is None else _key(response, key, where + ".publicKey"),
    )


# --- client ---------------------------------------------------------------------------------------
class FabricClient:
    """Fabric REST operations at ``api_url`` (``.../v1``) as ``token_provider``'s identity.

    Methods raise :class:`FabricError` (or a subclass) for error answers,
    :class:`~remediation.clients.api_errors.ApiError` for 5xx answers and
    :class:`~remediation.clients.api_errors.ApiConnectionError` when Fabric cannot be reached,
    :class:`~remediation.clients.api_errors.ResponseValidationError` for malformed answers and
    :class:`~remediation.clients.powerbi.InvalidId` for ids that are not GUIDs.
    """

    def __init__(
        self,
        api_url: str,
        token_provider: Callable[[], str],
        pipeline: HttpPipeline,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(api_url)
        if parts.scheme != "https" or not parts.netloc:
            raise ValueError("api_url must be an https URL")
        self.api_url = api_url.rstrip("/")
        self._origin = (parts.scheme, parts.netloc.lower())
        self._token_provider = token_provider
        self._pipeline = pipeline
        self._sleep = sleep

    @property
    def pipeline(self) -> HttpPipeline:
        return self._pipeline

    def sign_in(self) -> None:
        """Get a token now (cached by the provider), so that a first request later does not
        wait for it. Raises what the token provider raises."""
        self._token_provider()

    def _url(self, *segments: str) -> str:
        return self.api_url + "/" + "/".join(quote(s, safe="") for s in segments)

    def _call(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        idempotent: bool | None = None,
        presents_credentials: bool = False,
        before_attempt: Callable[[], None] | None = None,
        accept: Iterable[int] = (),
    ) -> ApiResponse:
        response = self._pipeline.request(
            method,
            url,
            bearer=self._token_provider(),
            json_body=json_body,
            idempotent=idempotent,
            accept=tuple(_ERROR_STATUSES) + tuple(accept),
            presents_credentials=presents_credentials,
            before_attempt=before_attempt,
        )
        if response.status >= 400:
            raise _fabric_error(response)
        return response

    def _same_origin(self, response: ApiResponse, link: object) -> str:
        if not isinstance(link, str):
            raise response.invalid("continuationUri must be a string")
        parts = urlsplit(link)
        if (parts.scheme, parts.netloc.lower()) != self._origin:
            raise response.invalid("continuationUri points outside the Fabric API")
        return link

    def _paged(self, url: str, where: str) -> list[Any]:
        """Every ``value`` of a paged list, following ``continuationUri`` (same origin only)."""
        items: list[Any] = []
        next_url: str | None = url
        for _ in range(MAX_PAGES):
            assert next_url is not None
            response = self._call("GET", next_url)
            body = _obj(response, response.json(), where)
            value = body.get("value")
            if not isinstance(value, list):
                raise response.invalid(f"{where}: 'value' must be an array")
            items.extend((response, v) for v in value)
            link = body.get("continuationUri")
            if link is None:
                return items
            next_url = self._same_origin(response, link)
        raise response.invalid(f"{where}: stopped after {MAX_PAGES} pages (the continuation never ends)")

    # -- connections ---------------------------------------------------------------------------
    def list_connections(self) -> list[Connection]:
        """``Connections_ListConnections``: the connections the caller has a role on."""
        return [
            _connection(r, v, "connections") for r, v in self._paged(self._url("connections"), "connections")
        ]

    def get_connection(self, connection_id: str) -> Connection:
        """``Connections_GetConnection``."""
        response = self._call("GET", self._url("connections", _id("connection_id", connection_id)))
        return _connection(response, response.json(), "connection")

    def update_connection(
        self,
        connection_id: str,
        request_body: Mapping[str, Any],
        *,
        before_attempt: Callable[[], None] | None = None,
    ) -> Connection:
        """``Connections_UpdateConnection``: ``PATCH /connections/{id}`` with an
        ``UpdateConnectionRequest`` (``connectivityType`` and ``credentialDetails``).

        With ``skipTestConnection`` false Fabric tests the credential at the source: serving it
        is a sign-in, so it is retried only after a 429 or when it was certainly not sent. The
        body is never logged nor put into an error. Raises :class:`IncorrectCredentials` when
        the source refused it.
        """
        if not isinstance(request_body, Mapping) or "connectivityType" not in request_body:
            raise ValueError("request_body must be an UpdateConnectionRequest with 'connectivityType'")
        url = self._url("connections", _id("connection_id", connection_id))
        response = self._call(
            "PATCH",
            url,
            json_body=dict(request_body),
            idempotent=False,
            presents_credentials=True,
            before_attempt=before_attempt,
        )
        return _connection(response, response.json(), "connection")

    # -- items ---------------------------------------------------------------------------------
    def list_item_connections(self, workspace_id: str, item_id: str) -> list[ItemConnection]:
        """``Items_ListItemConnections``: the connections a semantic model (or other item) is
        bound to. The caller needs read and write permission on the item."""
        url = self._url(
            "workspaces", _id("workspace_id", workspace_id), "items", _id("item_id", item_id), "connections"
        )
        return [_item_connection(r, v, "item connections") for r, v in self._paged(url, "item connections")]

    # -- gateways ------------------------------------------------------------------------------
    def get_gateway(self, gateway_id: str) -> FabricGateway:
        """``Gateways_GetGateway``."""
        response = self._call("GET", self._url("gateways", _id("gateway_id", gateway_id)))
        return _gateway(response, response.json(), "gateway")

    def list_gateway_members(self, gateway_id: str) -> list[GatewayMember]:
        """``Gateways_ListGatewayMembers``: each member of an on-premises gateway cluster, with its key."""
        url = self._url("gateways", _id("gateway_id", gateway_id), "members")
        response = self._call("GET", url)
        body = _obj(response, response.json(), "members")
        value = body.get("value")
        if not isinstance(value, list):
            raise response.invalid("members: 'value' must be an array")
        return [_member(response, v, f"members[{i}]") for i, v in enumerate(value)]

    # -- long-running operations ---------------------------------------------------------------
    def get_operation_state(self, operation_id: str) -> tuple[Operation, float | None]:
        """``LongRunningOperations_GetOperationState``, and the ``Retry-After`` it asks for."""
        response = self._call("GET", self._url("operations", _id("operation_id", operation_id)))
        obj = _obj(response, response.json(), "operation")
        error = obj.get("error")
        error_obj: Mapping[str, Any] = error if isinstance(error, Mapping) else {}
        state = Operation(
            id=operation_id.lower(),
            status=_str(response, obj, "status", "operation", required=True) or "",
            error_code=_text(error_obj.get("errorCode")),
            message=_text(error_obj.get("message")),
        )
        return state, parse_retry_after(response.headers)

    def wait_for_operation(self, accepted: ApiResponse, *, timeout: float = 300.0) -> Operation:
        """Follow a 202 (``x-ms-operation-id``, ``Location``) until the operation ends.

        Raises :class:`OperationFailed` when it ends ``Failed``, :class:`TimeoutError` past ``timeout``.
        """
        operation_id = accepted.headers.get("x-ms-operation-id")
        if not is_guid(operation_id):
            location = accepted.headers.get("Location") or ""
            operation_id = location.rstrip("/").rsplit("/", 1)[-1]
        if not is_guid(operation_id):
            raise accepted.invalid("a 202 answer without x-ms-operation-id or an operation Location")
        assert operation_id is not None
        wait = parse_retry_after(accepted.headers) or 1.0
        deadline = time.monotonic() + timeout
        while True:
            self._sleep(min(max(wait, 0.0), 60.0))
            state, retry_after = self.get_operation_state(operation_id)
            if state.status == "Succeeded":
                return state
            if state.status == "Failed":
                raise OperationFailed(
                    state.message or "the operation failed",
                    status=accepted.status,
                    code=state.error_code,
                    method=accepted.method,
                    path=accepted.path,
                    service=accepted.service,
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"operation {operation_id} still {state.status} after {timeout:.0f} s")
            wait = retry_after or wait


def _id(what: str, value: object) -> str:
    if not is_guid(value):
        raise InvalidId(what, value)
    assert isinstance(value, str)
    return value.lower()
