"""The sandbox: one HTTPS server and a world of Azure and Power BI stand-ins.

    with Sandbox() as sb:
        svc = sb.sources.add_account("CONTOSO\\svc_pbi", username="svc_pbi", secret="Old#1")
        sql = sb.sources.add("sql-sales", account=svc)
        ...
        env = sb.env()   # the product's environment (contract of DESIGN.md), pointing here

Services (each in its own module, each registering its routes on the shared router):
``sb.entra`` (Entra ID + App Service managed identity), ``sb.vault`` (Key Vault secrets),
``sb.powerbi`` (Power BI REST), ``sb.fabric`` (Fabric connections and gateways),
``sb.appinsights`` (ingestion), ``sb.job_events`` (Fabric's job events of the refreshes run here,
for tests to hand to the Functions app), ``sb.sources`` (the systems
behind the data sources and the accounts they sign in as, which hold the real passwords and
count failed sign-ins). ``sb.requests`` records every request;
``sb.faults`` queues failures and sets latency.

This module is the top of the sandbox: it builds the stand-ins and hands each what it uses (the
sandbox itself as their :class:`~sandbox.host.Host`, and the other stand-ins by name); none of
them imports it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import weakref
from types import TracebackType
from typing import Any, Literal

from sandbox.appinsights import AppInsights
from sandbox.clock import Clock
from sandbox.entra import Entra
from sandbox.fabric import Fabric
from sandbox.faults import Faults
from sandbox.job_events import JobEvents
from sandbox.keyvault import KeyVault
from sandbox.powerbi import PowerBI
from sandbox.recorder import Recorder
from sandbox.routing import Router
from sandbox.server import HTTPSService
from sandbox.sources import Sources
from sandbox.tls import make_tls

RotationOrder = Literal["source-first", "vault-first"]

USER_REALM_PORT = 443  # msal's user-realm discovery always calls port 443 of the authority host

SERVE_USER_REALM = True
"""Whether a sandbox also serves :data:`USER_REALM_PORT` when not told (only one process can bind
it at a time). The test suite turns it off, and on for the tests marked ``user_realm`` (which run
one at a time), so that two test processes can run at once (tests/conftest.py)."""


def _serves_user_realm(asked: bool | None) -> bool:
    return SERVE_USER_REALM if asked is None else asked


def generate_password() -> str:
    """A fresh password of the kind rotation tools produce (with characters that need escaping)."""
    return "Pw!" + secrets.token_urlsafe(12) + '"\\{'


class Sandbox:
    """A local Azure + Power BI world served over HTTPS on 127.0.0.1."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        tls_dir: str | None = None,
        port: int = 0,
        serve_user_realm: bool | None = None,
    ) -> None:
        self.clock = clock or Clock()
        if tls_dir is None:  # a directory of its own for the CA file, removed with the sandbox
            tls_dir = tempfile.mkdtemp(prefix="pbi-sandbox-")
            weakref.finalize(self, shutil.rmtree, tls_dir, ignore_errors=True)
        self.tls = make_tls(tls_dir)
        self.router = Router()
        self.http = HTTPSService(
            self.router,
            self.tls.server_context,
            port=port,
            extra_ports=(USER_REALM_PORT,) if _serves_user_realm(serve_user_realm) else (),
        )
        # Each stand-in is given this sandbox as its Host (router, url, clock) and, by name, the
        # stand-ins it talks to. The order is the routes' order (the first match wins).
        self.sources = Sources(self.clock)
        self.entra = Entra(self, self.sources)
        self.vault = KeyVault(self, self.entra)
        self.powerbi = PowerBI(self, self.entra, self.sources)
        self.fabric = Fabric(self, self.entra, self.sources, self.powerbi, vault=self.vault)
        self.powerbi.fabric = self.fabric  # refreshes of models bound to connections sign in through it
        self.job_events = JobEvents(lambda: self.entra.tenant_id, self.clock.now)
        self.powerbi.job_events = self.job_events  # the refreshes it runs raise Fabric job events
        self.appinsights = AppInsights(self)
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Sandbox:
        if not self._started:
            self.http.start()
            self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self.http.stop()
            self._started = False

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what happens in the world -----------------------------------------------------------
    def rotate(
        self,
        source_id: str,
        secret_name: str,
        new_secret: str | None = None,
        *,
        username: str | None = None,
        as_json: bool = False,
        order: RotationOrder = "source-first",
        delay: float = 0.0,
    ) -> str:
        """A rotation as it happens in production: the password of the account behind
        ``source_id`` (a source id, or an account name) changes and a new version of
        ``secret_name`` is written to Key Vault (which notifies its subscribers at once).

        ``order="source-first"``: the account changes, then Key Vault. ``"vault-first"`` (as
        Microsoft's SQL rotation sample does): Key Vault first, the account only once the sandbox
        clock reaches now + ``delay`` seconds (right after the write when ``delay`` is 0), so for a
        while Key Vault holds a password the source does not know yet. ``as_json`` stores
        ``{"username", "password"}`` (rotation schemes that alternate accounts). Returns the new
        Key Vault version.
        """
        if order not in ("source-first", "vault-first"):
            raise ValueError(f"order must be 'source-first' or 'vault-first', not {order!r}")
        if delay < 0 or (delay and order == "source-first"):
            raise ValueError("delay is for vault-first rotations, in seconds >= 0")
        new_secret = new_secret if new_secret is not None else generate_password()
        account = self.sources.account_of(source_id)
        value = new_secret
        if as_json:
            value = json.dumps(
                {"username": username if username is not None else account.username, "password": new_secret}
            )
        if order == "source-first":
            account.set_secret(new_secret, username=username)
            return self.vault.set_secret(secret_name, value)
        at = self.clock.now() + delay
        version: str = self.vault.set_secret(secret_name, value)
        account.set_secret(new_secret, username=username, at=at if delay else None)
        return version

    def rotate_source_only(self, source_id: str, new_secret: str | None = None) -> str:
        """The source's password changes but Key Vault is not told: Key Vault now holds a wrong
        secret. Returns the source's new secret."""
        new_secret = new_secret if new_secret is not None else generate_password()
        self.sources.set_secret(source_id, new_secret)
        return new_secret

    # -- addresses ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT`` (no trailing slash)."""
        return self.http.url

    @property
    def requests(self) -> Recorder:
        return self.http.recorder

    @property
    def faults(self) -> Faults:
        return self.http.faults

    def env(self, **overrides: str) -> dict[str, str]:
        """The product's environment (DESIGN.md contract) pointing at this sandbox.

        Includes the service principal registered as ``entra.default_app`` when there is one.
        """
        env: dict[str, str] = {
            "KEY_VAULT_URL": self.vault.url,
            "POWERBI_API_URL": self.powerbi.api_url,
            "FABRIC_API_URL": self.fabric.api_url,
            "AZURE_AUTHORITY_HOST": self.url,
            "AZURE_TENANT_ID": self.entra.tenant_id,
            "APPLICATIONINSIGHTS_CONNECTION_STRING": self.appinsights.connection_string,
            "REQUESTS_CA_BUNDLE": self.tls.ca_path,
            "SSL_CERT_FILE": self.tls.ca_path,
            # The exporter's own usage statistics go to Microsoft's hosts; never from here.
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            # ... nor its control plane, nor the VM metadata service (169.254.169.254).
            "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_app_service",
        }
        app = self.entra.default_app
        if app is not None:
            env["AZURE_CLIENT_ID"] = app.client_id
            if app.secret is not None:
                env["AZURE_CLIENT_SECRET"] = app.secret
        env.update(overrides)
        return env

    def shell_exports(self) -> str:
        """``export NAME='value'`` lines for :meth:`env`, for a person's shell."""
        return "\n".join(f"export {k}='{v}'" for k, v in sorted(self.env().items()))

    def apply_env(self, environ: Any = os.environ) -> None:
        """Write :meth:`env` into ``environ`` (tests pass monkeypatch-backed mappings)."""
        for key, value in self.env().items():
            environ[key] = value
