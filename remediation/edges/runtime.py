"""Wiring: settings -> one client per service, the ledger, and the healer.

The only place that knows which concrete classes make up a running healer; the CLI and the
Functions app both call :func:`build_healer`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from azure.core.credentials import TokenCredential

from remediation.clients.fabric import FabricClient
from remediation.clients.http import HttpPipeline
from remediation.clients.identity import (
    PowerBITokenProvider,
    UserTokenCache,
    UserTokenProvider,
    build_azure_credential,
)
from remediation.clients.keyvault import KeyVaultClient
from remediation.clients.powerbi import PowerBIClient
from remediation.clients.stats import CallStats
from remediation.config.bindings import BindingSet
from remediation.config.bindings_file import load_bindings
from remediation.config.settings import Settings
from remediation.errors import ConfigError
from remediation.ledger import Ledger
from remediation.ledger.pause import LedgerPause
from remediation.ledger.sqlite import SqliteLedger
from remediation.ledger.tables import TableLedger
from remediation.reconciler.healer import Healer


@dataclass
class Runtime:
    """A healer and the parts it is made of (kept for ``close()`` and call statistics)."""

    settings: Settings
    bindings: BindingSet
    healer: Healer
    ledger: Ledger
    keyvault: KeyVaultClient
    powerbi: PowerBIClient
    stats: CallStats
    fabric: FabricClient | None = None

    def close(self) -> None:
        self.keyvault.close()
        self.powerbi.pipeline.close()
        if self.fabric is not None:
            self.fabric.pipeline.close()
        self.ledger.close()


APP_ROOT = Path(__file__).resolve().parents[1]
"""Where ``function_app.py`` lives: a relative bindings path is also looked for here."""


def load_bindings_from(settings: Settings) -> BindingSet:
    """The bindings of ``REMEDIATION_BINDINGS``: inline JSON, or a path (a relative one is taken
    from the working directory, else from the app root, where a deployed ``bindings.json`` is)."""
    if not settings.bindings:
        raise ConfigError("REMEDIATION_BINDINGS is not set: give the path of the bindings file or its JSON")
    source = settings.bindings
    if not source.lstrip().startswith("{"):
        path = Path(source)
        if not path.is_absolute() and not path.exists() and (APP_ROOT / path).exists():
            source = str(APP_ROOT / path)
    return load_bindings(source)


def open_ledger(settings: Settings, *, credential: TokenCredential | None = None) -> Ledger:
    """The ledger: in Table storage when the Functions app's storage account is configured
    (``AzureWebJobsStorage``, or its identity-based ``__accountName`` / ``__tableServiceUri``,
    signed in with ``credential`` or the product's Azure credential), otherwise the embedded
    SQLite ledger at ``REMEDIATION_STATE_PATH``.

    Raises :class:`ConfigError` for unusable storage settings, :class:`LedgerError` when the
    store cannot be opened.
    """
    if settings.storage is not None:
        return TableLedger.from_settings(settings, credential=credential)
    return SqliteLedger(settings.state_path)


def build_powerbi(settings: Settings) -> PowerBIClient:
    """A Power BI client alone (``discover`` needs nothing else: no ledger, no Key Vault)."""
    pipeline = HttpPipeline.from_settings(settings, service="powerbi", stats=CallStats())
    return PowerBIClient(settings.powerbi_api_url, PowerBITokenProvider(settings), pipeline)


FABRIC_PAUSE = "throttle:fabric"
"""The ledger marker of Fabric's throttling pause (Power BI's is ``throttle:powerbi``)."""


def build_fabric(settings: Settings) -> FabricClient:
    """A Fabric client alone (``discover`` reads the connections with it: GET requests only)."""
    pipeline = HttpPipeline.from_settings(settings, service="fabric", stats=CallStats())
    return FabricClient(
        settings.fabric_api_url, PowerBITokenProvider(settings, scope=settings.fabric_scope), pipeline
    )


def build_healer(
    settings: Settings,
    *,
    bindings: BindingSet | None = None,
    ledger: Ledger | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    poll_interval: float = 5.0,
) -> Runtime:
    """Everything a command needs, from ``settings``. Raises :class:`ConfigError`."""
    bindings = bindings if bindings is not None else load_bindings_from(settings)
    stats = CallStats()
    credential = build_azure_credential(settings)
    keyvault = KeyVaultClient(settings, credential, stats=stats, sleep=sleep)
    ledger = ledger if ledger is not None else open_ledger(settings, credential=credential)
    pipeline = HttpPipeline.from_settings(settings, service="powerbi", stats=stats, sleep=sleep)
    # Power BI throttles per principal: a 429's pause holds for every instance (through the ledger).
    pipeline.shared_pause = LedgerPause(ledger)
    powerbi = PowerBIClient(settings.powerbi_api_url, PowerBITokenProvider(settings), pipeline)
    # Fabric throttles per principal too; its pause is its own (another service, another budget),
    # shared across instances in its own ledger marker.
    fabric_pipeline = HttpPipeline.from_settings(settings, service="fabric", stats=stats, sleep=sleep)
    fabric_pipeline.shared_pause = LedgerPause(ledger, FABRIC_PAUSE)
    fabric = FabricClient(
        settings.fabric_api_url,
        PowerBITokenProvider(settings, scope=settings.fabric_scope),
        fabric_pipeline,
        sleep=sleep,
    )
    user_cache = UserTokenCache()

    def user_tokens(username: str, version: str, password: Callable[[], str]) -> Callable[[], str]:
        return UserTokenProvider(settings, username, password, version=version, cache=user_cache)

    healer = Healer(
        settings,
        bindings,
        powerbi=powerbi,
        keyvault=keyvault,
        ledger=ledger,
        user_tokens=user_tokens,
        fabric=fabric,
        clock=clock,
        sleep=sleep,
        poll_interval=poll_interval,
    )
    return Runtime(settings, bindings, healer, ledger, keyvault, powerbi, stats, fabric)
