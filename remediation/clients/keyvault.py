"""Key Vault secrets, read through ``azure-keyvault-secrets`` with the product's retry policy.

Retries live in one place (:mod:`remediation.clients.retry`): the SDK's own retry policy is switched off
(``retry_total=0``) and every operation runs inside :class:`~remediation.clients.retry.Retrier`, which
retries 429 (honouring ``Retry-After``, capped), 5xx and connection failures with bounded
backoff, counts into the shared :class:`~remediation.clients.stats.CallStats`, and sleeps through the
injected ``sleep``. Every operation here is a read, so every transient fault is retried. The
SDK still answers Key Vault's authentication challenge itself (the first request of a client
goes without a token to learn the tenant): that is a handshake, not a retry.

Errors are typed at this boundary: :class:`SecretNotFound` (404), :class:`SecretDisabled` (403
``SecretDisabled``), :class:`SecretAccessDenied` (other 401/403), :class:`KeyVaultError` (other
statuses), :class:`~remediation.clients.api_errors.ApiConnectionError` (no answer) and
:class:`~remediation.clients.identity.AuthenticationError` (no token). Each names the secret and says how
to fix it; none ever carries a secret value, and the SDK's exception is never chained.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict, TypeVar

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.secrets import SecretClient, SecretProperties

from remediation.clients.api_errors import ApiConnectionError, ApiError, parse_error_body, request_id_of
from remediation.clients.http import timeouts_from
from remediation.clients.identity import AuthenticationError
from remediation.clients.retry import (
    ALWAYS_RETRIED_STATUSES,
    IDEMPOTENT_RETRIED_STATUSES,
    Retrier,
    RetryPolicy,
    RetryVerdict,
    parse_retry_after,
)
from remediation.clients.stats import CallStats
from remediation.config.settings import Settings
from remediation.errors import RemediationError

__all__ = [
    "KeyVaultClient",
    "KeyVaultError",
    "SecretAccessDenied",
    "SecretDisabled",
    "SecretNotFound",
    "SecretValue",
    "SecretVersionInfo",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_VERSION = re.compile(r"[0-9A-Fa-f]{32}")
_RETRIED_STATUSES = ALWAYS_RETRIED_STATUSES | IDEMPOTENT_RETRIED_STATUSES  # reads: all transient faults


# --- models -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SecretValue:
    """One version of a secret with its value. ``repr()`` and ``str()`` never show the value."""

    name: str
    version: str
    value: str
    enabled: bool = True
    content_type: str | None = None
    created_on: datetime | None = None

    def __repr__(self) -> str:
        return (
            f"SecretValue(name={self.name!r}, version={self.version!r}, value=<redacted>, "
            f"enabled={self.enabled!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class SecretVersionInfo:
    """One version of a secret, without its value."""

    name: str
    version: str
    enabled: bool
    created_on: datetime | None = None
    updated_on: datetime | None = None
    content_type: str | None = None


# --- errors -------------------------------------------------------------------------------------
class KeyVaultError(ApiError):
    """Key Vault refused an operation on ``secret_name``; ``hint`` says what to fix."""

    def __init__(
        self,
        message: str,
        *,
        secret_name: str,
        hint: str | None = None,
        status: int | None = None,
        code: str | None = None,
        inner_code: str | None = None,
        details: Iterable[tuple[str, str]] = (),
        request_id: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(
            message,
            status=status,
            code=code,
            inner_code=inner_code,
            details=details,
            request_id=request_id,
            method="GET" if path else None,
            path=path,
            service="keyvault",
            retry_after=retry_after,
            attempts=attempts,
        )
        self.secret_name = secret_name
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} - {self.hint}" if self.hint else text


class SecretNotFound(KeyVaultError):
    """The secret (or the version) does not exist in the vault."""


class SecretAccessDenied(KeyVaultError):
    """The product's identity may not read the secret (or its token was refused)."""


class SecretDisabled(KeyVaultError):
    """The secret version exists but is disabled."""


# --- the client ---------------------------------------------------------------------------------
class KeyVaultClient:
    """Reads secrets from the vault at ``settings.key_vault_url`` as ``credential``.

    ``stats``, ``policy``, ``sleep`` and ``rand`` are the retry loop's (see :mod:`remediation.clients.retry`).
    ``verify_challenge_resource`` is off only for a loopback vault (the sandbox), whose host is
    not a ``*.vault.azure.net`` name. TLS verification is on; ``REQUESTS_CA_BUNDLE`` applies.

    Raises:
        ConfigError: ``KEY_VAULT_URL`` is not set.
    """

    def __init__(
        self,
        settings: Settings,
        credential: TokenCredential,
        *,
        stats: CallStats | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.vault_url = settings.require_key_vault_url()
        connect, read = timeouts_from(settings)
        self._retrier = Retrier(policy, sleep=sleep, rand=rand, stats=stats)
        self._clock = clock
        self._client = SecretClient(
            self.vault_url,
            credential,
            verify_challenge_resource=not settings.vault_is_loopback,
            retry_total=0,  # retries happen in self._retrier, once, for every service
            connection_timeout=connect,
            read_timeout=read,
        )

    @property
    def stats(self) -> CallStats:
        return self._retrier.stats

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KeyVaultClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- operations --------------------------------------------------------------------------
    def get_secret(self, name: str, version: str | None = None) -> SecretValue:
        """The value of ``name`` at ``version`` (default: the current version).

        Raises:
            SecretNotFound, SecretDisabled, SecretAccessDenied, KeyVaultError, ApiConnectionError,
            AuthenticationError.
        """
        _check(name, version)
        secret = self._run("get_secret", name, lambda: self._client.get_secret(name, version or None))
        properties = secret.properties
        if secret.value is None or not properties.version:
            raise KeyVaultError(
                "Key Vault returned a secret without a value or version",
                secret_name=name,
                code="InvalidResponse",
            )
        return SecretValue(
            name=properties.name or name,
            version=properties.version,
            value=secret.value,
            enabled=bool(properties.enabled) if properties.enabled is not None else True,
            content_type=properties.content_type,
            created_on=properties.created_on,
        )

    def get_current_version(self, name: str) -> str:
        """The id of the current (latest) version of ``name``; the value is dropped at once.

        Key Vault has no properties-only read of the current version: ``GET /secrets/{name}`` is
        the only exact answer (listing versions needs the ``list`` permission, pages through
        every version, and orders only by ``created`` seconds, which ties for versions created
        within one second). So this reads the current version and returns only its id.

        Raises:
            as :meth:`get_secret`; :class:`SecretDisabled` when the current version is disabled.
        """
        _check(name, None)
        secret = self._run("get_current_version", name, lambda: self._client.get_secret(name))
        version = secret.properties.version
        del secret
        if not version:
            raise KeyVaultError(
                "Key Vault returned a secret without a version",
                secret_name=name,
                code="InvalidResponse",
            )
        return version

    def list_versions(self, name: str) -> list[SecretVersionInfo]:
        """Every version of ``name`` without values, newest first (needs the ``list`` permission).

        An unknown secret has no versions (Key Vault answers an empty list, not 404).

        Raises:
            SecretAccessDenied, KeyVaultError, ApiConnectionError, AuthenticationError.
        """
        _check(name, None)

        def collect() -> list[SecretProperties]:
            return list(self._client.list_properties_of_secret_versions(name))

        items = self._run("list_versions", name, collect)
        infos = [_version_info(name, p) for p in items if p.version]
        order = sorted(range(len(infos)), key=lambda i: (_timestamp(infos[i].created_on), i), reverse=True)
        return [infos[i] for i in order]

    # -- plumbing ------------------------------------------------------------------------------
    def _run(self, operation: str, name: str, call: Callable[[], _T]) -> _T:
        label = f"keyvault {operation} {name}"
        attempts = 0

        def attempt(number: int) -> _T:
            nonlocal attempts
            attempts = number
            return call()

        try:
            result = self._retrier.run(attempt, label=label, classify_error=self._classify)
        except AzureError as exc:
            raise self._map(exc, operation, name, attempts) from None
        logger.debug("%s: ok (attempt %d)", label, attempts)
        return result

    def _classify(self, exc: Exception) -> RetryVerdict | None:
        if isinstance(exc, ClientAuthenticationError):
            return None  # a refused token or credential does not get better by asking again
        if isinstance(exc, ServiceRequestError):
            return RetryVerdict(f"{type(exc).__name__} (not sent)")
        if isinstance(exc, ServiceResponseError):
            return RetryVerdict(f"{type(exc).__name__} (no answer)")
        if isinstance(exc, HttpResponseError):
            status = exc.status_code or 0
            if status in _RETRIED_STATUSES:
                _, headers = _response_parts(exc)
                return RetryVerdict(
                    f"HTTP {status}", parse_retry_after(headers, self._clock), throttled=status == 429
                )
        return None

    def _map(self, exc: AzureError, operation: str, name: str, attempts: int) -> RemediationError:
        path = f"/secrets/{name}"
        if isinstance(exc, ClientAuthenticationError) and exc.response is None:
            return AuthenticationError(
                f"no token for Key Vault: {type(exc).__name__}: {_first_line(exc.message)}",
                error="authentication_failed",
                hint="check AZURE_TENANT_ID / AZURE_CLIENT_ID / AZURE_CLIENT_SECRET or the managed identity",
            )
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            timeout = "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower()
            return ApiConnectionError(
                f"Key Vault could not be reached ({type(exc).__name__})",
                code="Timeout" if timeout else "ConnectionError",
                method="GET",
                path=path,
                service="keyvault",
                attempts=attempts,
            )
        if not isinstance(exc, HttpResponseError):
            return ApiConnectionError(
                f"Key Vault call failed ({type(exc).__name__})",
                code="ClientError",
                method="GET",
                path=path,
                service="keyvault",
                attempts=attempts,
            )
        status = exc.status_code
        content, headers = _response_parts(exc)
        code, inner, message, details = parse_error_body(content)
        common = _Common(
            status=status,
            code=code,
            inner_code=inner,
            details=details,
            request_id=request_id_of(headers),
            path=path,
            retry_after=parse_retry_after(headers, self._clock),
            attempts=attempts,
        )
        text = _first_line(message or exc.reason or f"HTTP {status}")
        if status == 404:
            return SecretNotFound(
                f"secret {name!r} was not found in {self.vault_url}: {text}",
                hint="create the secret, or fix the binding's secret name",
                secret_name=name,
                **common,
            )
        if status == 403 and (inner or "").lower() == "secretdisabled":
            return SecretDisabled(
                f"secret {name!r} is disabled: {text}",
                hint="enable the secret version in Key Vault, or add a new enabled version",
                secret_name=name,
                **common,
            )
        if status in (401, 403):
            permission = "list" if operation == "list_versions" else "get"
            return SecretAccessDenied(
                f"access to secret {name!r} was denied: {text}",
                hint=f"grant the product's identity the secrets/{permission} permission "
                "(role 'Key Vault Secrets User' or an access policy) on this vault",
                secret_name=name,
                **common,
            )
        return KeyVaultError(
            f"Key Vault {operation} for secret {name!r} failed: {text}", secret_name=name, **common
        )


class _Common(TypedDict):
    status: int | None
    code: str | None
    inner_code: str | None
    details: list[tuple[str, str]]
    request_id: str | None
    path: str
    retry_after: float | None
    attempts: int


def _response_parts(exc: HttpResponseError) -> tuple[bytes, Mapping[str, str]]:
    """Body and headers of the failed response (the SDK types them loosely)."""
    response = exc.response
    if response is None:
        return b"", {}
    headers = getattr(response, "headers", None)
    try:
        body = response.body() if hasattr(response, "body") else b""
    except Exception:  # noqa: BLE001 - a body that cannot be read is just no body
        body = b""
    return (body if isinstance(body, bytes) else b""), (headers if isinstance(headers, Mapping) else {})


def _timestamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0


def _check(name: str, version: str | None) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError("a Key Vault secret name is 1-127 letters, digits and dashes")
    if version is not None and version != "" and not _VERSION.fullmatch(version):
        raise ValueError("a Key Vault secret version is 32 hexadecimal characters")


def _version_info(name: str, properties: SecretProperties) -> SecretVersionInfo:
    return SecretVersionInfo(
        name=properties.name or name,
        version=properties.version or "",
        enabled=bool(properties.enabled) if properties.enabled is not None else True,
        created_on=properties.created_on,
        updated_on=properties.updated_on,
        content_type=properties.content_type,
    )


def _first_line(text: str | None, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
