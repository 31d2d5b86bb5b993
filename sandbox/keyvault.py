"""Key Vault stand-in: the secrets data plane of ``specs/keyvault/2025-07-01/secrets.json``.

Routes (service ``keyvault``)::

    keyvault.list_secrets    GET  /secrets                          (GetSecrets, paged)
    keyvault.list_versions   GET  /secrets/{name}/versions          (GetSecretVersions, paged)
    keyvault.set_secret      PUT  /secrets/{name}                   (SetSecret)
    keyvault.get_secret      GET  /secrets/{name}[/{version}]       (GetSecret; "" or no version = latest)

Authentication is Key Vault's challenge protocol, as azure-keyvault-secrets expects it: a request
without a usable bearer token gets ``401`` with
``WWW-Authenticate: Bearer authorization="{authority}/{tenant}", resource="https://vault.azure.net"``
(the SDK takes the tenant from the ``authorization`` URL's path and asks its credential for
``{resource}/.default``). The SDK's first request of every client is sent without a token and
without a body to collect that challenge, so authentication is checked before anything else.

Every new version, whether it arrives by ``PUT`` or :meth:`KeyVault.set_secret`, is announced to
subscribers as a ``Microsoft.KeyVault.SecretNewVersionCreated`` event in the Event Grid or
CloudEvents schema, shaped like Microsoft's samples in ``specs/eventgrid/samples``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import logging
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from sandbox import specs
from sandbox.entra import KEYVAULT_AUDIENCE, Entra, TokenInfo, TokenRejected
from sandbox.routing import HTTPError, Response

if TYPE_CHECKING:
    from sandbox.host import Host
    from sandbox.routing import Request

logger = logging.getLogger(__name__)

Permission = Literal["get", "list", "set"]
EventSchema = Literal["EventGridSchema", "CloudEventSchema"]
EventCallback = Callable[[dict[str, Any]], None]

RECOVERY_LEVEL = "Recoverable+Purgeable"
RECOVERABLE_DAYS = 90
MAX_PAGE_SIZE = 25  # Key Vault's maximum (and default) ``maxresults``
MAX_VALUE_LENGTH = 25 * 1024  # Key Vault refuses secret values above 25 KiB
SERVICE_VERSION = "1.9.2000.1"  # what Key Vault reports in x-ms-keyvault-service-version (illustrative)

_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_VERSION = re.compile(r"[0-9a-f]{32}")
_API_VERSION = re.compile(r"(\d+\.\d+|\d{4}-\d{2}-\d{2})(-preview(\.\d+)?)?")
_EVENT_TYPES = ("SecretNewVersionCreated", "SecretNearExpiry", "SecretExpired")


@dataclass(frozen=True)
class SecretVersion:
    """One version of a secret, as the sandbox holds it (a snapshot; changing it changes nothing)."""

    name: str
    version: str
    value: str
    tags: dict[str, str]
    content_type: str | None
    enabled: bool
    created: int
    updated: int = 0
    not_before: int | None = None
    expires: int | None = None


@dataclass
class _Version:
    version: str
    value: str
    tags: dict[str, str]
    content_type: str | None
    enabled: bool
    created: int
    updated: int
    not_before: int | None
    expires: int | None


@dataclass
class _Subscriber:
    callback: EventCallback
    schema: EventSchema
    id: int = field(default=0)


class KeyVault:
    """One vault's secrets, its access policy, its event subscribers, and its HTTP endpoints."""

    def __init__(
        self,
        host: Host,
        entra: Entra,
        *,
        name: str = "sandbox-kv",
        subscription_id: str = "00000000-0000-4000-8000-0000000000a1",
        resource_group: str = "sandbox-rg",
    ) -> None:
        self._host = host
        self._entra = entra  # whose tokens it accepts
        self.name = name
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self._lock = threading.RLock()
        self._secrets: dict[str, list[_Version]] = {}  # lower-case name -> versions, oldest first
        self._names: dict[str, str] = {}  # lower-case name -> name as first set
        self._restricted = False
        self._grants: dict[str, set[str]] = {}
        self._subscribers: list[_Subscriber] = []
        self._next_subscriber = 0
        self.events: list[dict[str, Any]] = []  # every event emitted, in the Event Grid schema
        self._register_routes()

    # -- addresses ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The vault URL with a trailing slash, as ``KEY_VAULT_URL`` carries it."""
        return self._host.url + "/"

    @property
    def resource_id(self) -> str:
        """The ARM id Event Grid uses as ``topic`` / ``source``."""
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.KeyVault/vaults/{self.name}"
        )

    def secret_id(self, name: str, version: str | None = None) -> str:
        base = f"{self.url}secrets/{name}"
        return f"{base}/{version}" if version else base

    # -- Python API --------------------------------------------------------------------------
    def set_secret(
        self,
        name: str,
        value: str,
        *,
        tags: dict[str, str] | None = None,
        content_type: str | None = None,
        enabled: bool = True,
        not_before: int | None = None,
        expires: int | None = None,
        notify: bool = True,
    ) -> str:
        """Add a new version of ``name`` and return it; subscribers hear of it when ``notify``."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid secret name {name!r}")
        now = int(self._host.clock.now())
        record = _Version(
            uuid.uuid4().hex, value, dict(tags or {}), content_type, enabled, now, now, not_before, expires
        )
        with self._lock:
            key = name.lower()
            self._names.setdefault(key, name)
            self._secrets.setdefault(key, []).append(record)
            stored_name = self._names[key]
        if notify:
            self.emit("SecretNewVersionCreated", stored_name, record.version)
        return record.version

    def get_secret(self, name: str, version: str | None = None) -> SecretVersion:
        """The latest version of ``name`` (or ``version``). Raises ``KeyError`` when missing."""
        with self._lock:
            record = self._find(name, version)
            if record is None:
                raise KeyError(f"{name}/{version}" if version else name)
            return self._snapshot(name, record)

    def versions(self, name: str) -> list[SecretVersion]:
        """Every version of ``name``, oldest first (empty when there is no such secret)."""
        with self._lock:
            return [self._snapshot(name, r) for r in self._secrets.get(name.lower(), [])]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._names.values())

    def disable(self, name: str, version: str) -> None:
        """Disable one version: reading it then fails with ``403 Forbidden`` / ``SecretDisabled``."""
        self._set_enabled(name, version, False)

    def enable(self, name: str, version: str) -> None:
        self._set_enabled(name, version, True)

    def _set_enabled(self, name: str, version: str, enabled: bool) -> None:
        with self._lock:
            record = self._find(name, version)
            if record is None:
                raise KeyError(f"{name}/{version}")
            record.enabled = enabled
            record.updated = int(self._host.clock.now())

    # Access ------------------------------------------------------------------------------
    def restrict(self) -> None:
        """Turn the access policy on: from now only granted principals may use the vault."""
        with self._lock:
            self._restricted = True

    def grant(self, principal_id: str, *permissions: Permission) -> None:
        """Allow ``principal_id`` (client id, UPN or managed identity client id) ``permissions``."""
        with self._lock:
            self._grants.setdefault(principal_id.lower(), set()).update(permissions)

    def revoke(self, principal_id: str, *permissions: Permission) -> None:
        with self._lock:
            granted = self._grants.get(principal_id.lower(), set())
            granted.difference_update(permissions or set(granted))

    def allowed(self, principal_id: str, permission: Permission) -> bool:
        with self._lock:
            return not self._restricted or permission in self._grants.get(principal_id.lower(), set())

    # Events ------------------------------------------------------------------------------
    def subscribe(
        self, callback: EventCallback, schema: EventSchema = "EventGridSchema"
    ) -> Callable[[], None]:
        """Deliver every event to ``callback`` (one dict per event); returns the unsubscribe function.

        Delivery is synchronous, on the thread that created the version (an HTTP handler thread
        for ``PUT``). A failing subscriber is logged and skipped: it never fails the write.
        """
        if schema not in ("EventGridSchema", "CloudEventSchema"):
            raise ValueError(f"unknown event schema {schema!r}")
        with self._lock:
            self._next_subscriber += 1
            subscriber = _Subscriber(callback, schema, self._next_subscriber)
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s.id != subscriber.id]

        return unsubscribe

    def emit(self, event_type: str, name: str, version: str | None = None) -> list[dict[str, Any]]:
        """Announce ``event_type`` (``SecretNewVersionCreated``, ``SecretNearExpiry``,
        ``SecretExpired``; with or without the ``Microsoft.KeyVault.`` prefix) for ``name``'s
        ``version`` (default: the latest). Returns the events delivered, one per subscriber.
        """
        short = event_type.removeprefix("Microsoft.KeyVault.")
        if short not in _EVENT_TYPES:
            raise ValueError(f"unsupported event type {event_type!r}")
        with self._lock:
            record = self._find(name, version)
            if record is None:
                raise KeyError(f"{name}/{version}" if version else name)
            snapshot = self._snapshot(name, record)
            subscribers = list(self._subscribers)
            event_id, now = str(uuid.uuid4()), self._host.clock.now()
            self.events.append(
                self._event(f"Microsoft.KeyVault.{short}", snapshot, "EventGridSchema", event_id, now)
            )
        delivered = []
        for subscriber in subscribers:
            event = self._event(f"Microsoft.KeyVault.{short}", snapshot, subscriber.schema, event_id, now)
            try:
                subscriber.callback(event)
            except Exception:  # noqa: BLE001 - a subscriber's failure must not fail the write
                logger.exception("keyvault: event subscriber failed for %s", event["id"])
            delivered.append(event)
        return delivered

    def _event(
        self, event_type: str, secret: SecretVersion, schema: EventSchema, event_id: str, now: float
    ) -> dict[str, Any]:
        name = secret.name
        data = {
            "Id": self.secret_id(name, secret.version),
            "VaultName": self.name,
            "ObjectType": "Secret",
            "ObjectName": name,
            "Version": secret.version,
            # The spec types NBF/EXP as numbers (epoch seconds); unset dates are null.
            "NBF": secret.not_before,
            "EXP": secret.expires,
        }
        if schema == "CloudEventSchema":
            return {
                "source": self.resource_id,
                "subject": name,
                "type": event_type,
                "time": _event_time(now),
                "id": event_id,
                "data": data,
                "specversion": "1.0",
            }
        return {
            "id": event_id,
            "topic": self.resource_id,
            "subject": name,
            "eventType": event_type,
            "eventTime": _event_time(now),
            "data": data,
            "dataVersion": "1",
            "metadataVersion": "1",
        }

    # -- internals ---------------------------------------------------------------------------
    def _find(self, name: str, version: str | None) -> _Version | None:
        versions = self._secrets.get(name.lower())
        if not versions:
            return None
        if not version:
            return versions[-1]
        return next((v for v in versions if v.version == version.lower()), None)

    def _snapshot(self, name: str, r: _Version) -> SecretVersion:
        return SecretVersion(
            self._names.get(name.lower(), name),
            r.version,
            r.value,
            dict(r.tags),
            r.content_type,
            r.enabled,
            r.created,
            r.updated,
            r.not_before,
            r.expires,
        )

    def _attributes(self, r: _Version) -> dict[str, Any]:
        attributes: dict[str, Any] = {"enabled": r.enabled}
        if r.not_before is not None:
            attributes["nbf"] = r.not_before
        if r.expires is not None:
            attributes["exp"] = r.expires
        attributes.update(
            created=r.created,
            updated=r.updated,
            recoveryLevel=RECOVERY_LEVEL,
            recoverableDays=RECOVERABLE_DAYS,
        )
        return attributes

    def _bundle(self, name: str, r: _Version) -> dict[str, Any]:
        body: dict[str, Any] = {"value": r.value, "id": self.secret_id(name, r.version)}
        if r.content_type is not None:
            body["contentType"] = r.content_type
        body["attributes"] = self._attributes(r)
        if r.tags:
            body["tags"] = dict(r.tags)
        return body

    def _item(self, item_id: str, r: _Version) -> dict[str, Any]:
        item: dict[str, Any] = {"id": item_id, "attributes": self._attributes(r)}
        if r.content_type is not None:
            item["contentType"] = r.content_type
        if r.tags:
            item["tags"] = dict(r.tags)
        return item

    # -- HTTP --------------------------------------------------------------------------------
    def _register_routes(self) -> None:
        add = self._host.router.add
        name = r"(?P<name>[^/]+)"
        add("keyvault", "keyvault.list_secrets", "GET", r"/secrets/?", self._http_list_secrets, _error_body)
        add(
            "keyvault",
            "keyvault.list_versions",
            "GET",
            rf"/secrets/{name}/versions/?",
            self._http_list_versions,
            _error_body,
        )
        add(
            "keyvault",
            "keyvault.set_secret",
            "PUT",
            rf"/secrets/{name}/?",
            self._http_set_secret,
            _error_body,
        )
        add(
            "keyvault",
            "keyvault.get_secret",
            "GET",
            rf"/secrets/{name}(?:/(?P<version>[^/]*))?",
            self._http_get_secret,
            _error_body,
        )

    def _authorize(self, request: Request, permission: Permission) -> TokenInfo:
        """Authenticate like Key Vault (401 + challenge), then apply the access policy (403)."""
        try:
            info = self._entra.verify(request, KEYVAULT_AUDIENCE)
        except TokenRejected as exc:
            raise HTTPError(
                401,
                _error_body(401, "Unauthorized", _UNAUTHORIZED[exc.reason]),
                {"WWW-Authenticate": self._challenge()},
            ) from None
        api_version = request.query.get("api-version")
        if not api_version:
            raise _bad_parameter("The 'api-version' query parameter is missing.")
        if not _API_VERSION.fullmatch(api_version):
            raise _bad_parameter(
                f"The specified version ({api_version}) is not recognized. Consider using "
                "the latest supported version (2025-07-01)."
            )
        if not self.allowed(info.principal, permission):
            raise HTTPError(
                403,
                _error_body(
                    403,
                    "Forbidden",
                    f"The user, group or application '{_caller(info)}' does not have secrets {permission} "
                    f"permission on key vault '{self.name};location=westeurope'. For help resolving this "
                    "issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
                    inner="AccessDenied",
                ),
            )
        return info

    def _challenge(self) -> str:
        return (
            f'Bearer authorization="{self._host.url}/{self._entra.tenant_id}", resource="{KEYVAULT_AUDIENCE}"'
        )

    def _headers(self) -> dict[str, str]:
        return {
            "x-ms-request-id": str(uuid.uuid4()),
            "x-ms-keyvault-service-version": SERVICE_VERSION,
            "x-ms-keyvault-region": "westeurope",
            "Cache-Control": "no-cache",
        }

    def _http_get_secret(self, request: Request) -> Response:
        self._authorize(request, "get")
        name, version = request.params["name"], request.params.get("version") or None
        _check_name(name)
        with self._lock:
            record = (
                self._find(name, version) if version is None or _VERSION.fullmatch(version.lower()) else None
            )
            if record is None:
                raise _not_found(name, version)
            if not record.enabled:
                raise HTTPError(
                    403,
                    _error_body(
                        403,
                        "Forbidden",
                        "Operation get is not allowed on a disabled secret.",
                        inner="SecretDisabled",
                    ),
                    self._headers(),
                )
            body = self._bundle(self._names[name.lower()], record)
        return Response(200, body, self._headers())

    def _http_set_secret(self, request: Request) -> Response:
        self._authorize(request, "set")
        name = request.params["name"]
        _check_name(name)
        params = request.json(_bad_parameter)
        problems = specs.errors(specs.KEYVAULT, "SecretSetParameters", params)
        if problems:
            raise _bad_parameter("The body is not a valid SecretSetParameters: " + "; ".join(problems))
        value = params["value"]
        if len(value) > MAX_VALUE_LENGTH:
            raise _bad_parameter(f"The secret value exceeds the maximum length of {MAX_VALUE_LENGTH}.")
        attributes = params.get("attributes") or {}
        version = self.set_secret(
            name,
            value,
            tags=params.get("tags"),
            content_type=params.get("contentType"),
            enabled=attributes.get("enabled", True),
            not_before=attributes.get("nbf"),
            expires=attributes.get("exp"),
        )
        with self._lock:
            record = self._find(name, version)
            assert record is not None
            body = self._bundle(self._names[name.lower()], record)
        return Response(200, body, self._headers())

    def _http_list_versions(self, request: Request) -> Response:
        self._authorize(request, "list")
        name = request.params["name"]
        _check_name(name)
        with self._lock:
            stored = self._names.get(name.lower(), name)
            items = [
                self._item(self.secret_id(stored, r.version), r) for r in self._secrets.get(name.lower(), [])
            ]
        # Listing versions of a missing secret is an empty list, not a 404, in Key Vault.
        return self._page(request, items, f"{self.url}secrets/{quote(name)}/versions")

    def _http_list_secrets(self, request: Request) -> Response:
        self._authorize(request, "list")
        with self._lock:
            items = [
                self._item(self.secret_id(self._names[key]), versions[-1])
                for key, versions in sorted(self._secrets.items())
            ]
        return self._page(request, items, f"{self.url}secrets")

    def _page(self, request: Request, items: list[dict[str, Any]], link_base: str) -> Response:
        raw_size = request.query.get("maxresults")
        try:
            size = int(raw_size) if raw_size else MAX_PAGE_SIZE
        except ValueError:
            raise _bad_parameter(f"The value '{raw_size}' of maxresults is not an integer.") from None
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise _bad_parameter(f"maxresults must be between 1 and {MAX_PAGE_SIZE}.")
        start = _decode_skiptoken(request.query.get("$skiptoken"))
        body: dict[str, Any] = {"value": items[start : start + size]}
        if start + size < len(items):
            api_version = request.query["api-version"]
            body["nextLink"] = (
                f"{link_base}?api-version={api_version}"
                f"&$skiptoken={_encode_skiptoken(start + size)}&maxresults={size}"
            )
        # The real service sends "nextLink": null on the last page; the spec types it as a string,
        # so the sandbox leaves it out (the SDK treats both the same).
        return Response(200, body, self._headers())


_UNAUTHORIZED = {
    "missing": "AKV10000: Request is missing a Bearer or PoP token.",
    "malformed": "AKV10000: Request is missing a Bearer or PoP token.",
    "unknown": "Error validating token: the token is not valid.",
    "expired": "Error validating token: the token has expired.",
    "audience": f"AKV10022: Invalid audience. Expected {KEYVAULT_AUDIENCE}.",
}


def _error_body(status: int, code: str, message: str, *, inner: str | None = None) -> dict[str, Any]:
    """Key Vault's ``KeyVaultError`` shape: ``{"error": {"code", "message"[, "innererror"]}}``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if inner is not None:
        error["innererror"] = {"code": inner}
    return {"error": error}


def _bad_parameter(message: str) -> HTTPError:
    return HTTPError(400, _error_body(400, "BadParameter", message))


def _not_found(name: str, version: str | None) -> HTTPError:
    what = f"{name}/{version}" if version else name
    return HTTPError(
        404,
        _error_body(
            404,
            "SecretNotFound",
            f"A secret with (name/id) {what} was not found in this key vault. If you recently deleted this "
            "secret you may be able to recover it using the correct recovery command. For help resolving "
            "this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
        ),
    )


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise _bad_parameter(f"The request URI contains an invalid name: {name}")


def _caller(info: TokenInfo) -> str:
    if info.kind == "user":
        return f"upn={info.principal};tid={info.tenant}"
    return f"appid={info.principal};tid={info.tenant}"


def _event_time(now: float) -> str:
    """Event Grid's timestamp: UTC with seven fractional digits, e.g. ``2019-07-25T01:08:33.1036736Z``."""
    stamp = _dt.datetime.fromtimestamp(now, _dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}0Z"


def _encode_skiptoken(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode("ascii").rstrip("=")


def _decode_skiptoken(token: str | None) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        prefix, _, number = text.partition(":")
        if prefix != "offset" or not number.isdigit():
            raise ValueError(token)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_parameter("The $skiptoken is not valid.") from None
