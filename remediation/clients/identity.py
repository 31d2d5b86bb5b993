"""Who the product is when it calls Key Vault and Power BI, and how it gets its tokens.

* :func:`build_azure_credential`: the ``azure-identity`` credential for Key Vault. A service
  principal (``AZURE_TENANT_ID`` + ``AZURE_CLIENT_ID`` + ``AZURE_CLIENT_SECRET``, or
  ``AZURE_CLIENT_CERTIFICATE_PATH`` [+ ``AZURE_CLIENT_CERTIFICATE_PASSWORD``] instead of the
  secret: a PEM file with the private key and the certificate, or a .pfx) when one is
  configured, else the managed identity (user-assigned when ``AZURE_CLIENT_ID`` is set without a
  secret, system-assigned otherwise).
* :class:`PowerBITokenProvider`: bearer tokens for the Power BI REST API as the product itself,
  from ``msal`` for a service principal, from the managed identity otherwise.
* :class:`UserTokenProvider`: a *user's* token for Power BI (resource-owner password grant), for
  OAuth2 data sources bound with ``"oauth2": "caller-identity"``, where the data source owner
  must be the caller. The app registration ``AZURE_CLIENT_ID`` must allow public client flows
  ("Allow public client flows" = Yes), because this is a public-client grant.

Token endpoints are called by ``msal`` / ``azure-identity``, which keep their own small, bounded
retries for token requests (msal: one urllib3 retry on connection errors; azure-identity: its
pipeline's policy, bounded here to our attempt count). Those are the libraries' protocol
internals; every call to a *resource* API goes through :mod:`remediation.clients.http`.

Tokens, secrets and passwords are never logged, never put into an exception message, and a
password is held only for the duration of the call that uses it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msal
import msal.exceptions
import requests
from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError
from azure.identity import (
    CertificateCredential,
    ClientSecretCredential,
    CredentialUnavailableError,
    ManagedIdentityCredential,
)

from remediation.clients.api_errors import restore_exception
from remediation.clients.http import sent_before_failure, timeouts_from
from remediation.clients.retry import RetryPolicy
from remediation.config.settings import Settings
from remediation.errors import ConfigError, RemediationError

__all__ = [
    "AuthenticationError",
    "PowerBITokenProvider",
    "TokenProvider",
    "UserTokenCache",
    "UserTokenProvider",
    "build_azure_credential",
]

logger = logging.getLogger(__name__)

REFRESH_MARGIN_SECONDS = 300.0
"""A cached token is replaced this long before it expires (or at half its life, if shorter)."""

_AADSTS = re.compile(r"AADSTS\d+")

# AADSTS codes that mean "these credentials were presented and refused".
INVALID_CREDENTIAL_CODES = frozenset(
    {
        "AADSTS50126",  # invalid username or password
        "AADSTS50034",  # the user account does not exist in the directory
        "AADSTS7000215",  # invalid client secret
        "AADSTS7000222",  # the client secret has expired
    }
)
LOCKED_CODES = frozenset({"AADSTS50053"})  # account locked (too many sign-ins with a wrong password)

_HINTS: Mapping[str, str] = {
    "AADSTS50126": "the password in Key Vault is not the user's current password",
    "AADSTS50034": "the user does not exist in this tenant; check the binding's username",
    "AADSTS50053": "the account is locked; wait for the lockout to end, do not retry",
    "AADSTS50055": "the user's password has expired; set a new one and store it in Key Vault",
    "AADSTS50057": "the user account is disabled",
    "AADSTS50076": "the user needs MFA, which the password grant cannot do; exclude this account "
    "from MFA by Conditional Access or bind the data source differently",
    "AADSTS50079": "the user must register for MFA, which the password grant cannot do",
    "AADSTS7000218": "the app registration does not allow public client flows; set "
    '"Allow public client flows" to Yes',
    "AADSTS7000215": "AZURE_CLIENT_SECRET is not a valid secret of AZURE_CLIENT_ID",
    "AADSTS7000222": "AZURE_CLIENT_SECRET has expired; create a new client secret",
    "AADSTS700016": "AZURE_CLIENT_ID is not an application in this tenant",
    "AADSTS90002": "AZURE_TENANT_ID is not a known tenant",
}


class TokenProvider(Protocol):
    """A callable returning a bearer token string for one audience (Power BI)."""

    def __call__(self) -> str: ...


class AuthenticationError(RemediationError):
    """A token could not be obtained.

    ``principal``: the client id or user name that tried; ``code``: the ``AADSTS...`` code when
    Entra ID gave one; ``error``: the OAuth2 ``error`` (``invalid_grant``, ...) or the failure's
    kind; ``hint``: what to fix. Never carries a password, secret or token.
    """

    def __init__(
        self,
        message: str,
        *,
        principal: str | None = None,
        code: str | None = None,
        error: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.principal = principal
        self.code = code
        self.error = error
        self.hint = hint
        parts = [message]
        if code:
            parts.append(f"({code})")
        if hint:
            parts.append(f"- {hint}")
        super().__init__(" ".join(parts))

    def __reduce__(self) -> tuple[Any, ...]:
        return (restore_exception, (type(self), self.args, dict(self.__dict__)))

    @property
    def credentials_rejected(self) -> bool:
        """True when Entra ID refused the presented password or secret itself."""
        return self.code in INVALID_CREDENTIAL_CODES

    @property
    def account_locked(self) -> bool:
        return self.code in LOCKED_CODES


def _aadsts(result: Mapping[str, Any]) -> str | None:
    codes = result.get("error_codes")
    if isinstance(codes, list) and codes and isinstance(codes[0], int):
        return f"AADSTS{codes[0]}"
    match = _AADSTS.search(str(result.get("error_description") or ""))
    return match.group(0) if match else None


def _first_line(text: str, *, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _error_from_msal(result: Mapping[str, Any], principal: str, what: str) -> AuthenticationError:
    code = _aadsts(result)
    error = str(result.get("error") or "unknown_error")
    description = _first_line(str(result.get("error_description") or ""))
    message = f"{what} for {principal} failed: {error}"
    if description:
        message += f": {description}"
    return AuthenticationError(
        message, principal=principal, code=code, error=error, hint=_HINTS.get(code or "")
    )


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float
    refresh_at: float


def _cache_entry(value: str, expires_at: float, now: float) -> _Token:
    lifetime = max(expires_at - now, 0.0)
    margin = min(REFRESH_MARGIN_SECONDS, lifetime / 2)
    return _Token(value=value, expires_at=expires_at, refresh_at=expires_at - margin)


# --- Azure credential (Key Vault) -------------------------------------------------------------
def build_azure_credential(settings: Settings, *, policy: RetryPolicy | None = None) -> TokenCredential:
    """The credential the product uses for Key Vault (and, without a secret, for Power BI).

    A service principal (``ClientSecretCredential``) when tenant, client id and secret are all
    set; otherwise the managed identity, user-assigned when ``AZURE_CLIENT_ID`` is set alone.
    A non-Microsoft authority host (the sandbox) gets no instance discovery.

    Raises:
        ConfigError: a client secret is set without a tenant or client id.
    """
    policy = policy or RetryPolicy()
    connect, read = timeouts_from(settings)
    transport_options: dict[str, Any] = {
        "connection_timeout": connect,
        "read_timeout": read,
        "retry_total": policy.max_attempts - 1,
        "retry_backoff_factor": policy.base_delay,
        "retry_backoff_max": policy.max_delay,
    }
    if settings.client_secret or settings.client_certificate_path:
        which = "AZURE_CLIENT_SECRET" if settings.client_secret else "AZURE_CLIENT_CERTIFICATE_PATH"
        if not settings.client_id or not settings.tenant_id:
            raise ConfigError(
                f"{which} is set but AZURE_CLIENT_ID or AZURE_TENANT_ID is not; set all three for a "
                f"service principal, or leave {which} unset for a managed identity"
            )
        logger.debug("Azure credential: service principal %s", settings.client_id)
        common: dict[str, Any] = {
            "authority": settings.authority_host,
            "disable_instance_discovery": not settings.authority_is_microsoft,
            **transport_options,
        }
        if settings.client_secret:
            return ClientSecretCredential(
                settings.tenant_id, settings.client_id, settings.client_secret, **common
            )
        return CertificateCredential(
            settings.tenant_id,
            settings.client_id,
            certificate_data=_certificate_file(settings).data,
            password=settings.client_certificate_password,
            **common,
        )
    if settings.client_id:
        logger.debug("Azure credential: user-assigned managed identity %s", settings.client_id)
        return ManagedIdentityCredential(client_id=settings.client_id, **transport_options)
    logger.debug("Azure credential: system-assigned managed identity")
    return ManagedIdentityCredential(**transport_options)


_PEM_KEY = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.S)
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True, repr=False)
class _CertificateFile:
    data: bytes  # PEM (private key + certificate) or PKCS#12
    is_pem: bool


def _certificate_file(settings: Settings) -> _CertificateFile:
    """Read ``AZURE_CLIENT_CERTIFICATE_PATH`` (PEM with key and certificate, or a .pfx/.p12)."""
    path = settings.client_certificate_path or ""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"AZURE_CLIENT_CERTIFICATE_PATH={path}: cannot be read ({exc.strerror})") from None
    is_pem = b"-----BEGIN" in data
    if is_pem and (b"PRIVATE KEY-----" not in data or b"CERTIFICATE-----" not in data):
        raise ConfigError(
            f"AZURE_CLIENT_CERTIFICATE_PATH={path}: a PEM file needs both the private key and the certificate"
        )
    return _CertificateFile(data, is_pem)


def _msal_client_credential(settings: Settings) -> str | dict[str, Any]:
    """msal's ``client_credential``: the secret, or the certificate (signed assertions, SHA-256
    thumbprint and PS256, as msal does when it is given the public certificate)."""
    if settings.client_secret:
        return settings.client_secret
    certificate = _certificate_file(settings)
    passphrase = settings.client_certificate_password
    if not certificate.is_pem:
        return {"private_key_pfx_path": settings.client_certificate_path, "passphrase": passphrase}
    text = certificate.data.decode("ascii", "replace")
    key = _PEM_KEY.search(text)
    cert = _PEM_CERT.search(text)
    if key is None or cert is None:  # _certificate_file saw the markers; a broken block is here
        raise ConfigError(f"AZURE_CLIENT_CERTIFICATE_PATH={settings.client_certificate_path}: malformed PEM")
    credential: dict[str, Any] = {"private_key": key.group(0), "public_certificate": cert.group(0)}
    if passphrase:
        credential["passphrase"] = passphrase
    return credential


_App = TypeVar("_App", msal.ConfidentialClientApplication, msal.PublicClientApplication)


def _msal_application(
    factory: type[_App],
    settings: Settings,
    client_id: str | None,
    authority: str,
    principal: str,
    **kwargs: Any,
) -> _App:
    """An msal application for ``authority``; instance discovery and authority validation only
    for Microsoft's own hosts. Authority problems become :class:`AuthenticationError`."""
    microsoft = settings.authority_is_microsoft
    try:
        return factory(
            client_id,
            authority=authority,
            validate_authority=microsoft,
            instance_discovery=microsoft,
            timeout=timeouts_from(settings),
            **kwargs,
        )
    except ValueError as exc:  # msal reports a bad tenant/authority this way
        raise AuthenticationError(
            f"the authority {authority} was refused: {_first_line(str(exc))}",
            principal=principal,
            error="invalid_authority",
            hint="check AZURE_TENANT_ID and AZURE_AUTHORITY_HOST",
        ) from None
    except OSError as exc:
        raise AuthenticationError(
            f"the authority could not be reached ({type(exc).__name__})",
            principal=principal,
            error="connection_error",
        ) from None
    except msal.exceptions.MsalError as exc:  # e.g. a 5xx from the sign-in discovery
        raise AuthenticationError(
            f"the authority could not be asked: {_first_line(str(exc))}",
            principal=principal,
            error="service_error",
        ) from None


# --- Power BI as the product -----------------------------------------------------------------
class PowerBITokenProvider:
    """Bearer tokens for Power BI as the product's own identity; call it to get one.

    With a service principal secret in ``settings``: ``msal.ConfidentialClientApplication`` with
    authority ``{authority_host}/{tenant}`` (no instance discovery and no authority validation for
    a non-Microsoft host). Otherwise ``credential`` (by default :func:`build_azure_credential`, the
    managed identity). Tokens are cached until :data:`REFRESH_MARGIN_SECONDS` before expiry;
    thread-safe (one token request at a time). ``principal`` names who the tokens are for.

    Calling raises :class:`AuthenticationError` when no token can be had.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        credential: TokenCredential | None = None,
        clock: Callable[[], float] = time.time,
        scope: str | None = None,
    ) -> None:
        self._settings = settings
        self._scope = scope or settings.powerbi_scope
        self._clock = clock
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self._app: msal.ConfidentialClientApplication | None = None
        self._use_msal = settings.uses_service_principal and credential is None
        if self._use_msal and not settings.tenant_id:
            raise ConfigError("AZURE_TENANT_ID is not set; a service principal needs its tenant id")
        self._credential = credential
        self.principal = settings.client_id or "managed identity"
        self.kind = "service_principal" if self._use_msal else "managed_identity"

    def __call__(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._token.refresh_at:
                return self._token.value
            self._token = self._acquire(now)
            return self._token.value

    def invalidate(self) -> None:
        """Forget the cached token (e.g. after the service refused it)."""
        with self._lock:
            self._token = None

    def _acquire(self, now: float) -> _Token:
        if self._use_msal:
            return self._acquire_msal(now)
        return self._acquire_credential(now)

    def _msal_app(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            settings = self._settings
            self._app = _msal_application(
                msal.ConfidentialClientApplication,
                settings,
                settings.client_id,
                f"{settings.authority_host.rstrip('/')}/{settings.tenant_id}",
                self.principal,
                client_credential=_msal_client_credential(settings),
            )
        return self._app

    def _acquire_msal(self, now: float) -> _Token:
        app = self._msal_app()
        try:
            result = app.acquire_token_for_client(scopes=[self._scope])
        except OSError as exc:  # requests' connection errors are OSErrors
            raise AuthenticationError(
                f"the token endpoint could not be reached ({type(exc).__name__})",
                principal=self.principal,
                error="connection_error",
            ) from None
        except msal.exceptions.MsalError as exc:  # msal raises for some answers (a 5xx, say)
            raise AuthenticationError(
                f"the token endpoint could not be asked: {_first_line(str(exc))}",
                principal=self.principal,
                error="service_error",
            ) from None
        if not isinstance(result, dict) or "access_token" not in result:
            raise _error_from_msal(result or {}, self.principal, "Power BI token request")
        lifetime = float(result.get("expires_in") or 3600)
        logger.debug("Power BI token for %s acquired (valid %.0fs)", self.principal, lifetime)
        return _cache_entry(str(result["access_token"]), now + lifetime, now)

    def _acquire_credential(self, now: float) -> _Token:
        if self._credential is None:
            self._credential = build_azure_credential(self._settings)
        try:
            access = self._credential.get_token(self._scope)
        except CredentialUnavailableError as exc:
            raise AuthenticationError(
                f"no managed identity is available: {_first_line(str(exc))}",
                principal=self.principal,
                error="credential_unavailable",
                hint="run where a managed identity is assigned, or set AZURE_TENANT_ID, "
                "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET",
            ) from None
        except ClientAuthenticationError as exc:
            text = _first_line(str(exc.message or exc))
            match = _AADSTS.search(text)
            code = match.group(0) if match else None
            raise AuthenticationError(
                f"Power BI token request for {self.principal} failed: {text}",
                principal=self.principal,
                code=code,
                error="authentication_failed",
                hint=_HINTS.get(code or ""),
            ) from None
        except AzureError as exc:
            raise AuthenticationError(
                f"Power BI token request for {self.principal} failed ({type(exc).__name__})",
                principal=self.principal,
                error="connection_error",
            ) from None
        logger.debug("Power BI token for %s acquired from the Azure credential", self.principal)
        return _cache_entry(access.token, float(access.expires_on), now)


# --- Power BI as a user (OAuth2 caller identity) -----------------------------------------------
_UserKey = tuple[str, str, str, str]


class UserTokenCache:
    """Users' Power BI tokens, shared by :class:`UserTokenProvider` instances (thread-safe).

    Keyed by authority, client id, lower-cased user name and the password's secret version (a
    token proves only the password it was granted for); entries are replaced near expiry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[_UserKey, _Token] = {}

    def get(self, key: _UserKey, now: float) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
        return token.value if token is not None and now < token.refresh_at else None

    def put(self, key: _UserKey, token: _Token) -> None:
        with self._lock:
            self._tokens[key] = token

    def forget(self, key: _UserKey) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


class UserTokenProvider:
    """A user's bearer token for Power BI, by the resource-owner password grant; call it.

    ``password_supplier`` is called only when a new token is needed, and the password it returns
    lives only for that token request. Uses ``msal.PublicClientApplication`` with
    ``settings.client_id`` as the public client (the app registration must allow public client
    flows). msal first asks ``https://<authority host>/common/userrealm/<user>`` (on port 443,
    whatever port the authority has). Tokens are cached per user and per ``version`` (the Key
    Vault version of the password) in ``cache`` (one of its own unless shared) until
    :data:`REFRESH_MARGIN_SECONDS` before expiry: a token granted for one version's password never
    answers for another version, whose password has not been checked yet.

    Calling raises :class:`AuthenticationError` with the ``AADSTS`` code (e.g. ``AADSTS50126`` for
    a wrong password, ``credentials_rejected`` is then True); the password is never in it.
    A rejected password is not retried here: presenting it again is how accounts get locked.
    """

    def __init__(
        self,
        settings: Settings,
        username: str,
        password_supplier: Callable[[], str],
        *,
        version: str = "",
        cache: UserTokenCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.user_client_id:
            raise ConfigError(
                "POWERBI_PUBLIC_CLIENT_ID (or AZURE_CLIENT_ID) is not set; OAuth2 caller-identity bindings "
                "need an app registration that allows public client flows"
            )
        if not username or not username.strip():
            raise ConfigError("a caller-identity binding needs a username")
        self._settings = settings
        self.username = username.strip()
        self._password_supplier = password_supplier
        self._cache = cache if cache is not None else UserTokenCache()
        self._clock = clock
        self._lock = threading.Lock()
        self._app: msal.PublicClientApplication | None = None
        tenant = settings.tenant_id or "organizations"
        self._authority = f"{settings.authority_host.rstrip('/')}/{tenant}"
        self._key = (self._authority.lower(), settings.user_client_id, self.username.lower(), version)

    def __call__(self) -> str:
        with self._lock:
            cached = self._cache.get(self._key, self._clock())
            if cached is not None:
                return cached
            token = self._acquire()
            self._cache.put(self._key, token)
            return token.value

    def invalidate(self) -> None:
        """Forget this user's cached token."""
        self._cache.forget(self._key)

    def _public_app(self) -> msal.PublicClientApplication:
        if self._app is None:
            self._app = _msal_application(
                msal.PublicClientApplication,
                self._settings,
                self._settings.user_client_id,
                self._authority,
                self.username,
            )
        return self._app

    def _acquire(self) -> _Token:
        app = self._public_app()
        now = self._clock()
        password = self._password_supplier()
        try:
            result = app.acquire_token_by_username_password(
                self.username, password, scopes=[self._settings.powerbi_scope]
            )
        except OSError as exc:
            # "not_sent": the password certainly never left (refused, connect timeout): no sign-in.
            unsent = isinstance(exc, requests.RequestException) and sent_before_failure(exc) is True
            raise AuthenticationError(
                f"sign-in for {self.username} could not reach Entra ID ({type(exc).__name__})",
                principal=self.username,
                error="not_sent" if unsent else "connection_error",
            ) from None
        except Exception as exc:  # noqa: BLE001 - msal raises bare exceptions; never chain (no password)
            raise AuthenticationError(
                f"sign-in for {self.username} failed ({type(exc).__name__})",
                principal=self.username,
                error="client_error",
            ) from None
        finally:
            del password
        if not isinstance(result, dict) or "access_token" not in result:
            error = _error_from_msal(result or {}, self.username, "Power BI sign-in")
            logger.warning("Power BI sign-in for %s refused: %s", self.username, error.code or error.error)
            raise error
        lifetime = float(result.get("expires_in") or 3600)
        logger.debug("Power BI user token for %s acquired (valid %.0fs)", self.username, lifetime)
        return _cache_entry(str(result["access_token"]), now + lifetime, now)
