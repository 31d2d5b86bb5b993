"""The environment, read once into a frozen :class:`Settings` object.

This is the only module that reads ``os.environ`` (the contract's variables are listed in
DESIGN.md). Everything else receives a :class:`Settings`. Unset and empty variables mean the
same thing (App Service writes empty app settings as empty strings). A bad value raises
:class:`~remediation.errors.ConfigError` whose message names the variable and what is allowed;
values of secret variables are never echoed.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

from remediation.errors import ConfigError

__all__ = [
    "DEFAULT_AUTHORITY_HOST",
    "DEFAULT_FABRIC_API_URL",
    "DEFAULT_POWERBI_API_URL",
    "DEFAULT_POWERBI_SCOPE",
    "MICROSOFT_AUTHORITY_HOSTS",
    "Settings",
    "StorageSettings",
    "connection_configured",
    "fabric_scope_for",
    "powerbi_scope_for",
]

DEFAULT_POWERBI_API_URL = "https://api.powerbi.com/v1.0/myorg"
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_FABRIC_API_URL = "https://api.fabric.microsoft.com/v1"
DEFAULT_FABRIC_SCOPE = "https://api.fabric.microsoft.com/.default"
DEFAULT_STATE_PATH = ".state/ledger.sqlite"
DEFAULT_POWERBI_SCOPE = "https://analysis.windows.net/powerbi/api/.default"

# Entra ID authority hosts of Microsoft's clouds (public, US Gov, China, the retired Germany
# cloud) and their legacy aliases. Any other host (the sandbox) gets no instance discovery and no
# authority validation.
MICROSOFT_AUTHORITY_HOSTS: tuple[str, ...] = (
    "login.microsoftonline.com",
    "login.microsoft.com",
    "login.windows.net",
    "sts.windows.net",
    "login.microsoftonline.us",
    "login.usgovcloudapi.net",
    "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
    "login.microsoftonline.de",
)

# Power BI API host -> token scope (Microsoft's national-cloud embedding docs). A host not listed
# (a sandbox, a test double) gets the commercial scope; POWERBI_SCOPE overrides either way.
_POWERBI_SCOPES: dict[str, str] = {
    "api.powerbi.com": DEFAULT_POWERBI_SCOPE,
    "api.powerbigov.us": "https://analysis.usgovcloudapi.net/powerbi/api/.default",  # GCC
    "api.high.powerbigov.us": "https://analysis.high.powerbigov.us/powerbi/api/.default",  # GCC High
    "api.mil.powerbigov.us": "https://analysis.dod.powerbigov.us/powerbi/api/.default",  # DoD
    "api.powerbi.cn": "https://analysis.chinacloudapi.cn/powerbi/api/.default",  # 21Vianet
}

_INT = re.compile(r"[+-]?[0-9]+")
_STORAGE_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_QUEUE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
DEFAULT_WORK_QUEUE = "remediation-work"
"""``REMEDIATION_WORK_QUEUE``: the Storage queue of deferred and long work (the Functions app)."""
INVENTORY_SOURCES = ("auto", "admin", "per-dataset")
"""``REMEDIATION_INVENTORY_SOURCE``: how the inventory learns datasets' sources
(:mod:`remediation.inventory.scanner`)."""


def fabric_scope_for(api_url: str) -> str:
    """The Entra ID scope of the Fabric API at ``api_url``: ``https://<host>/.default`` for a
    Fabric host, the public Fabric scope for any other host (a sandbox), as for Power BI."""
    host = (urlsplit(api_url).hostname or "").lower()
    if host == "fabric.microsoft.com" or host.endswith(".fabric.microsoft.com"):
        return f"https://{host}/.default"
    return DEFAULT_FABRIC_SCOPE


def powerbi_scope_for(api_url: str) -> str:
    """The Entra ID scope for the Power BI API at ``api_url`` (by host; commercial otherwise)."""
    host = (urlsplit(api_url).hostname or "").lower()
    return _POWERBI_SCOPES.get(host, DEFAULT_POWERBI_SCOPE)


def connection_configured(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the Functions connection setting ``name`` is set: the setting itself (a connection
    string, or an App Service Key Vault reference to one) or its identity-based
    ``name__fullyQualifiedNamespace``, as the Functions host reads a trigger's ``connection``.
    Empty means unset (App Service writes empty app settings as empty strings).

    ``function_app.py`` asks it for ``REMEDIATION_EVENTSTREAM_CONNECTION`` when it is imported:
    the Event Hubs function exists only when that connection does (a trigger whose connection is
    missing would be an indexing error of the host). The value is never read or shown here."""
    env = os.environ if environ is None else environ
    return any((env.get(key) or "").strip() for key in (name, f"{name}__fullyQualifiedNamespace"))


@dataclass(frozen=True, repr=False)
class StorageSettings:
    """Where the Functions host's storage account is: a connection string or an identity.

    ``AzureWebJobsStorage`` (a connection string, possibly with an account key) wins over the
    identity-based ``AzureWebJobsStorage__accountName`` / ``AzureWebJobsStorage__tableServiceUri``,
    as in the Functions host.
    """

    connection_string: str | None = None
    account_name: str | None = None
    table_service_uri: str | None = None
    queue_service_uri: str | None = None

    @property
    def uses_identity(self) -> bool:
        """True when there is no connection string: sign in with the app's identity."""
        return self.connection_string is None

    def __repr__(self) -> str:
        secret = None if self.connection_string is None else "<redacted>"
        return (
            f"StorageSettings(connection_string={secret}, account_name={self.account_name!r}, "
            f"table_service_uri={self.table_service_uri!r}, queue_service_uri={self.queue_service_uri!r})"
        )


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything the product takes from its environment, validated. Build with :meth:`from_env`.

    Direct construction (tests) is not validated; every field has the documented default.
    """

    key_vault_url: str | None = None
    powerbi_api_url: str = DEFAULT_POWERBI_API_URL
    fabric_api_url: str = DEFAULT_FABRIC_API_URL
    authority_host: str = DEFAULT_AUTHORITY_HOST
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    client_certificate_path: str | None = None
    client_certificate_password: str | None = None
    public_client_id: str | None = None
    bindings: str | None = None
    state_path: str = DEFAULT_STATE_PATH
    storage: StorageSettings | None = None
    appinsights_connection_string: str | None = None
    appinsights_authentication_string: str | None = None
    powerbi_scope_override: str | None = None
    concurrency: int = 8
    refresh_daily_budget: int = 3
    max_attempts: int = 3
    attempt_window_seconds: int = 86400
    refresh_timeout_seconds: int = 600
    http_timeout_seconds: int = 30
    sweep_budget_seconds: int = 240
    inventory_refresh_seconds: int = 86400
    inventory_source: str = "auto"
    fanout_targets: int = 100
    lease_seconds: int = 300
    settle_seconds: int = 60
    work_queue: str = DEFAULT_WORK_QUEUE

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read and validate the environment.

        Raises:
            ConfigError: a variable has a value that is not allowed (the message names it).
        """
        env = _Env(environ)
        return cls(
            key_vault_url=env.https_url("KEY_VAULT_URL", trailing_slash=True, example=_VAULT_EXAMPLE),
            powerbi_api_url=env.https_url(
                "POWERBI_API_URL",
                default=DEFAULT_POWERBI_API_URL,
                need_path=True,
                example=DEFAULT_POWERBI_API_URL,
            )
            or DEFAULT_POWERBI_API_URL,
            fabric_api_url=env.https_url(
                "FABRIC_API_URL",
                default=DEFAULT_FABRIC_API_URL,
                need_path=True,
                example=DEFAULT_FABRIC_API_URL,
            )
            or DEFAULT_FABRIC_API_URL,
            authority_host=env.https_url(
                "AZURE_AUTHORITY_HOST",
                default=DEFAULT_AUTHORITY_HOST,
                no_path=True,
                allow_bare_host=True,
                example=DEFAULT_AUTHORITY_HOST,
            )
            or DEFAULT_AUTHORITY_HOST,
            tenant_id=env.text("AZURE_TENANT_ID"),
            client_id=env.text("AZURE_CLIENT_ID"),
            client_secret=env.secret("AZURE_CLIENT_SECRET"),
            client_certificate_path=env.text("AZURE_CLIENT_CERTIFICATE_PATH"),
            client_certificate_password=env.secret("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
            public_client_id=env.text("POWERBI_PUBLIC_CLIENT_ID"),
            bindings=env.raw("REMEDIATION_BINDINGS"),
            state_path=env.text("REMEDIATION_STATE_PATH") or DEFAULT_STATE_PATH,
            storage=env.storage(),
            appinsights_connection_string=env.text("APPLICATIONINSIGHTS_CONNECTION_STRING"),
            appinsights_authentication_string=env.text("APPLICATIONINSIGHTS_AUTHENTICATION_STRING"),
            powerbi_scope_override=env.scope("POWERBI_SCOPE"),
            concurrency=env.integer("REMEDIATION_CONCURRENCY", 8, 1, 64),
            refresh_daily_budget=env.integer("REMEDIATION_REFRESH_BUDGET", 3, 0, 8),
            max_attempts=env.integer("REMEDIATION_MAX_ATTEMPTS", 3, 1, 10),
            attempt_window_seconds=env.integer("REMEDIATION_ATTEMPT_WINDOW", 86400, 60, 7 * 86400),
            refresh_timeout_seconds=env.integer("REMEDIATION_REFRESH_TIMEOUT", 600, 0, 7200),
            http_timeout_seconds=env.integer("REMEDIATION_HTTP_TIMEOUT", 30, 1, 300),
            sweep_budget_seconds=env.integer("REMEDIATION_SWEEP_BUDGET", 240, 10, 3600),
            inventory_refresh_seconds=env.integer("REMEDIATION_INVENTORY_REFRESH", 86400, 0, 30 * 86400),
            inventory_source=env.choice("REMEDIATION_INVENTORY_SOURCE", INVENTORY_SOURCES, "auto"),
            fanout_targets=env.integer("REMEDIATION_FANOUT_TARGETS", 100, 0, 100_000),
            lease_seconds=env.integer("REMEDIATION_LEASE_SECONDS", 300, 30, 86400),
            settle_seconds=env.integer("REMEDIATION_SETTLE_SECONDS", 60, 0, 3600),
            work_queue=env.queue_name("REMEDIATION_WORK_QUEUE"),
        )

    def __post_init__(self) -> None:
        if self.client_secret and self.client_certificate_path:
            raise ConfigError(
                "AZURE_CLIENT_SECRET and AZURE_CLIENT_CERTIFICATE_PATH are both set; "
                "set one of them for the service principal"
            )

    # -- derived -----------------------------------------------------------------------------------
    def require_key_vault_url(self) -> str:
        """The vault URL, for code paths that heal.

        Raises:
            ConfigError: ``KEY_VAULT_URL`` is not set.
        """
        if self.key_vault_url is None:
            raise ConfigError(f"KEY_VAULT_URL is not set: set it to the vault URL, e.g. {_VAULT_EXAMPLE}")
        return self.key_vault_url

    @property
    def powerbi_scope(self) -> str:
        """Scope of Power BI tokens: ``POWERBI_SCOPE`` if set, else derived from the API host."""
        return self.powerbi_scope_override or powerbi_scope_for(self.powerbi_api_url)

    @property
    def fabric_scope(self) -> str:
        """Scope of Fabric tokens, derived from ``FABRIC_API_URL``'s host."""
        return fabric_scope_for(self.fabric_api_url)

    @property
    def authority_is_microsoft(self) -> bool:
        """True when the authority is one of Microsoft's Entra ID hosts (or a subdomain of one).

        False means a stand-in: no instance discovery, no authority validation.
        """
        host = (urlsplit(self.authority_host).hostname or "").lower().rstrip(".")
        return any(host == known or host.endswith("." + known) for known in MICROSOFT_AUTHORITY_HOSTS)

    @property
    def vault_is_loopback(self) -> bool:
        """True when the vault is on this machine (127.0.0.0/8, ::1, localhost): the sandbox."""
        if self.key_vault_url is None:
            return False
        return _is_loopback(urlsplit(self.key_vault_url).hostname or "")

    @property
    def vault_origin(self) -> tuple[str, str, int] | None:
        """``(scheme, host, port)`` of the vault, to tell whether a Key Vault event is ours."""
        if self.key_vault_url is None:
            return None
        parts = urlsplit(self.key_vault_url)
        return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or 443)

    @property
    def has_client_secret(self) -> bool:
        """True when a service principal (client id + secret) is configured."""
        return bool(self.client_id and self.client_secret)

    @property
    def has_client_certificate(self) -> bool:
        """True when a service principal (client id + certificate file) is configured."""
        return bool(self.client_id and self.client_certificate_path)

    @property
    def user_client_id(self) -> str | None:
        """The app registration that signs users in for OAuth2 caller-identity bindings:
        ``POWERBI_PUBLIC_CLIENT_ID``, else ``AZURE_CLIENT_ID`` (a managed identity's client id
        cannot run the password grant, so a managed-identity deployment needs the former)."""
        return self.public_client_id or self.client_id

    @property
    def uses_service_principal(self) -> bool:
        """A service principal (secret or certificate) rather than the managed identity."""
        return self.has_client_secret or self.has_client_certificate

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("client_secret", "client_certificate_password") and value is not None:
                shown.append(f"{f.name}=<redacted>")
            else:
                shown.append(f"{f.name}={value!r}")
        return "Settings(" + ", ".join(shown) + ")"


_VAULT_EXAMPLE = "https://kv.vault.azure.net/"


def _is_loopback(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Env:
    """Typed reads of one environment mapping; each raises ConfigError naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or not value.strip():
            return None
        return value

    def text(self, name: str) -> str | None:
        value = self.raw(name)
        return None if value is None else value.strip()

    def secret(self, name: str) -> str | None:
        # Secrets are used as given (a trailing space may be part of one); only "empty" is unset.
        return self.raw(name)

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.text(name)
        if value is None:
            return default
        if value.lower() not in allowed:
            raise ConfigError(
                f"{name}={_shown(value)} is not allowed; set it to one of {', '.join(allowed)} "
                f"(default {default})"
            )
        return value.lower()

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.text(name)
        allowed = f"set it to a whole number from {low} to {high} (default {default})"
        if value is None:
            return default
        if not _INT.fullmatch(value):
            raise ConfigError(f"{name}={_shown(value)} is not a whole number; {allowed}")
        number = int(value)
        if not low <= number <= high:
            raise ConfigError(f"{name}={number} is out of range; {allowed}")
        return number

    def https_url(
        self,
        name: str,
        *,
        example: str,
        default: str | None = None,
        trailing_slash: bool = False,
        need_path: bool = False,
        no_path: bool = False,
        allow_bare_host: bool = False,
    ) -> str | None:
        value = self.text(name)
        if value is None:
            return default
        how = f"set it to an https URL like {example}"
        if "@" in value:
            # Never echo what may be user:password@host.
            raise ConfigError(f"{name} must not carry a user name or password; {how}")
        if allow_bare_host and "://" not in value:
            value = "https://" + value  # azure-identity accepts "login.microsoftonline.us" too
        shown = _shown(value)
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"{name}={shown} is not a valid URL; {how}") from None
        if parts.scheme.lower() != "https":
            raise ConfigError(f"{name}={shown} must use https (TLS is never optional); {how}")
        if not parts.hostname:
            raise ConfigError(f"{name}={shown} has no host; {how}")
        if parts.query or parts.fragment:
            raise ConfigError(f"{name}={shown} must not have a query or fragment; {how}")
        path = parts.path.rstrip("/")
        if need_path and not path:
            raise ConfigError(f"{name}={shown} has no API path; {how}")
        if no_path and path:
            raise ConfigError(f"{name}={shown} must be a bare host without a path; {how}")
        base = f"https://{parts.netloc}{path}"
        return base + "/" if trailing_slash else base

    def scope(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and any(ch.isspace() for ch in value):
            raise ConfigError(
                f"{name}={_shown(value)} must be one scope without spaces, e.g. {DEFAULT_POWERBI_SCOPE}"
            )
        return value

    def storage(self) -> StorageSettings | None:
        connection_string = self.secret("AzureWebJobsStorage")
        account_name = self.text("AzureWebJobsStorage__accountName")
        table_uri = self.text("AzureWebJobsStorage__tableServiceUri")
        queue_uri = self.text("AzureWebJobsStorage__queueServiceUri")
        if account_name is not None and not _STORAGE_ACCOUNT.fullmatch(account_name):
            raise ConfigError(
                f"AzureWebJobsStorage__accountName={_shown(account_name)} is not a storage account "
                "name; use 3 to 24 lower-case letters and digits"
            )
        if table_uri is not None:
            parts = urlsplit(table_uri)
            if parts.scheme.lower() not in ("https", "http") or not parts.hostname or "@" in parts.netloc:
                raise ConfigError(
                    "AzureWebJobsStorage__tableServiceUri is not a table endpoint URL; "
                    "set it like https://ACCOUNT.table.core.windows.net"
                )
            table_uri = table_uri.rstrip("/")
        if queue_uri is not None:
            parts = urlsplit(queue_uri)
            if parts.scheme.lower() not in ("https", "http") or not parts.hostname or "@" in parts.netloc:
                raise ConfigError(
                    "AzureWebJobsStorage__queueServiceUri is not a queue endpoint URL; "
                    "set it like https://ACCOUNT.queue.core.windows.net"
                )
            queue_uri = queue_uri.rstrip("/")
        if connection_string is None and account_name is None and table_uri is None:
            return None
        return StorageSettings(connection_string, account_name, table_uri, queue_uri)

    def queue_name(self, name: str) -> str:
        value = self.text(name) or DEFAULT_WORK_QUEUE
        if not _QUEUE_NAME.fullmatch(value) or "--" in value:
            raise ConfigError(
                f"{name}={_shown(value)} is not a Storage queue name; use 3 to 63 lower-case letters, "
                "digits and single hyphens, starting and ending with a letter or digit"
            )
        return value


def _shown(value: str) -> str:
    """A non-secret value as it may appear in a message: quoted and cut to a sane length."""
    return repr(value if len(value) <= 80 else value[:77] + "...")
