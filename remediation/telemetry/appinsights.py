"""Outcomes to Application Insights as custom events: the Azure Monitor exporter, configured once
per process, and :class:`Telemetry`, which sends the events through it.

:class:`Telemetry` turns the healer's :class:`~remediation.ledger.Outcome`\\ s into one custom event
``CredentialRemediation`` each (and warnings such as ``CredentialSecretExpiry``), through the
standard :mod:`logging` module: a record on the ``remediation.events`` logger whose ``extra``
carries ``microsoft.custom_event.name`` becomes an ``EventData`` envelope in the Azure Monitor
OpenTelemetry distro (1.8.x); every other record of the ``remediation`` logger tree becomes a
trace, and ``requests`` calls become dependency telemetry. What each event says is
:mod:`remediation.telemetry.outcomes`; :class:`LiveOutcomes` sends a command's events as its
outcomes are recorded.

**Lazy, once per process.** Importing this module imports neither ``azure.monitor.opentelemetry``
nor the OpenTelemetry SDK (cold start matters in a Functions worker). The first
:meth:`Telemetry.configure` / :meth:`Telemetry.emit_outcomes` / :meth:`Telemetry.emit_warning`
calls ``configure_azure_monitor`` exactly once per process (it installs process-global providers),
under a lock, and only when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set (with
``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` saying ``Authorization=AAD``, ingestion is signed
with the managed identity). Without it :class:`Telemetry` exports nothing, but still writes every
outcome to the standard logger (one INFO line per outcome), so a console or the Functions host log
shows them.

**Redaction** (:mod:`remediation.telemetry.redaction`): configuring attaches the process-wide
redactor's log filter to the ``remediation`` logger and to the handlers present
(:func:`install_log_redaction`), and puts its span and log record processors before the
exporter's, so no secret reaches a handler, the exporter or its offline storage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from remediation.config.settings import Settings
from remediation.ledger import Outcome
from remediation.telemetry.outcomes import (
    OUTCOME_EVENT,
    SECRET_EXPIRY_EVENT,
    describe_outcome,
    event_properties,
    outcome_properties,
)
from remediation.telemetry.redaction import REDACTOR, RedactingFilter, Redactor, redacting_processors

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from remediation.clients.stats import StatsSnapshot

__all__ = [
    "EVENTS_LOGGER",
    "LIBRARY_LOG_LEVELS",
    "SERVICE_NAME",
    "TELEMETRY_LOGGER",
    "AadIngestion",
    "LiveOutcomes",
    "ReportLike",
    "Telemetry",
    "azure_monitor_credential",
    "install_log_redaction",
    "parse_authentication_string",
    "set_library_log_levels",
]


class ReportLike(Protocol):
    """What telemetry reads of a command's report (:class:`remediation.reconciler.report.Report`):
    the outcomes it recorded and its correlation id."""

    @property
    def correlation_id(self) -> str: ...

    def recorded_outcomes(self) -> list[Outcome]: ...


logger = logging.getLogger(__name__)

TELEMETRY_LOGGER: Final = "remediation"
"""The logger tree exported to Application Insights (the distro's ``logger_name``)."""
EVENTS_LOGGER: Final = "remediation.events"
"""Custom events are records of this logger (level INFO, whatever the tree's level is)."""
SERVICE_NAME: Final = "pbi-credential-healer"
CUSTOM_EVENT_ATTRIBUTE: Final = "microsoft.custom_event.name"

_CONFIGURE_LOCK = threading.Lock()
_CONFIGURED_WITH: str | None = None  # the connection string configure_azure_monitor got, if any
_SETTINGS_SECRETS: set[tuple[int, str]] = set()  # (redactor, value) registered from Settings


class Telemetry:
    """Outcomes and warnings to Application Insights (when configured) and to the standard log.

    Build one per process (or per function invocation: configuration happens once per process
    regardless) from :class:`~remediation.config.settings.Settings`. Thread-safe.
    """

    def __init__(self, settings: Settings, *, redactor: Redactor = REDACTOR) -> None:
        self._connection_string = settings.appinsights_connection_string
        # Entra ID ingestion (Application Insights with local auth off).
        self._authentication_string = settings.appinsights_authentication_string
        self._redactor = redactor
        # The product's own credentials are masked for the life of the process.
        for value in (settings.client_secret, settings.client_certificate_password):
            if value and (id(redactor), value) not in _SETTINGS_SECRETS:
                _SETTINGS_SECRETS.add((id(redactor), value))
                redactor.register(value)
        self._configured = False
        self._events = logging.getLogger(EVENTS_LOGGER)
        # Outcome events are INFO records: keep them whatever level the tree has (WARNING by default).
        if self._events.level == logging.NOTSET or self._events.level > logging.INFO:
            self._events.setLevel(logging.INFO)

    @property
    def enabled(self) -> bool:
        """True when a connection string is set: events are exported to Application Insights."""
        return self._connection_string is not None

    def configure(self) -> bool:
        """Configure the Azure Monitor distro for this process, once; True when exporting.

        Without a connection string this only installs the log redaction filter and sets the
        levels of :data:`LIBRARY_LOG_LEVELS`. A second :class:`Telemetry` with another connection
        string cannot re-point the process-global providers: it logs a warning and keeps the first
        configuration.
        """
        global _CONFIGURED_WITH
        set_library_log_levels()
        install_log_redaction(self._redactor)
        if self._connection_string is None:
            return False
        if self._configured:  # fast path, no lock
            return True
        with _CONFIGURE_LOCK:
            if _CONFIGURED_WITH is None:
                _configure_azure_monitor(
                    self._connection_string, self._redactor, authentication_string=self._authentication_string
                )
                _CONFIGURED_WITH = self._connection_string
                install_log_redaction(self._redactor)  # the distro's handler exists now
            elif self._connection_string != _CONFIGURED_WITH:
                logger.warning("telemetry is already configured for another connection string; kept it")
            self._configured = True
        return True

    def emit_outcomes(
        self,
        report_or_outcomes: ReportLike | Iterable[Outcome],
        *,
        trigger: str | None = None,
        correlation_id: str | None = None,
        stats: StatsSnapshot | None = None,
        duration: float | None = None,
    ) -> int:
        """One ``CredentialRemediation`` event per outcome; returns how many were emitted. Of a
        report, its recorded outcomes (a sweep's already-current targets are one summary).

        ``report_or_outcomes`` is a healer :class:`~remediation.reconciler.healer.Report` (its correlation
        id is the default) or any iterable of outcomes. ``stats`` are the run's API counters and
        ``duration`` the run's seconds (used for outcomes without their own duration).
        """
        self.configure()
        outcomes: Iterable[Outcome]
        if isinstance(report_or_outcomes, Iterable):
            outcomes = report_or_outcomes
        else:
            outcomes = report_or_outcomes.recorded_outcomes()
            correlation_id = correlation_id or report_or_outcomes.correlation_id or None
        emitted = 0
        for outcome in outcomes:
            props = outcome_properties(
                outcome, trigger=trigger, correlation_id=correlation_id, stats=stats, duration=duration
            )
            self._emit(logging.INFO, OUTCOME_EVENT, props, describe_outcome(props))
            emitted += 1
        return emitted

    def live(self, stats: Callable[[], StatsSnapshot], *, trigger: str | None = None) -> LiveOutcomes:
        """An emitter of one command's outcomes as they are recorded (pass it to
        :func:`remediation.reconciler.runs.outcomes_to`), then of the rest of its report
        (:meth:`LiveOutcomes.finish`). ``stats`` gives the command's API counters so far."""
        return LiveOutcomes(self, stats, trigger=trigger)

    def emit_warning(self, name: str, properties: Mapping[str, object]) -> None:
        """A custom event ``name`` (e.g. ``CredentialSecretExpiry``). Values become strings or
        numbers (None: ""). Like every event record it is logged at INFO (Application Insights
        events have no severity): the caller logs its own human-readable warning if it wants one."""
        self.configure()
        props = event_properties(properties)
        described = " ".join(f"{k}={v}" for k, v in props.items())
        self._emit(logging.INFO, name, props, described)

    def emit_secret_expiry(
        self,
        *,
        secret_name: str,
        secret_version: str | None,
        expires_on: str,
        days_left: float,
        bindings: Sequence[str],
        correlation_id: str | None = None,
    ) -> None:
        """A ``CredentialSecretExpiry`` warning: the secret feeding ``bindings`` expires soon."""
        self.emit_warning(
            SECRET_EXPIRY_EVENT,
            {
                "secretName": secret_name,
                "secretVersion": secret_version,
                "expiresOn": expires_on,
                "daysLeft": round(days_left, 1),
                "bindings": ",".join(sorted(bindings)),
                "correlationId": correlation_id,
            },
        )

    def flush(self, timeout_millis: int = 10_000) -> bool:
        """Export everything buffered now (end of every function invocation: a frozen worker
        loses what is still buffered). True when every provider flushed in time (or none is set)."""
        if _CONFIGURED_WITH is None:
            return True
        from opentelemetry import metrics, trace
        from opentelemetry._logs import get_logger_provider

        ok = True
        for provider in (trace.get_tracer_provider(), get_logger_provider(), metrics.get_meter_provider()):
            force_flush = getattr(provider, "force_flush", None)
            if callable(force_flush):
                try:
                    ok = bool(force_flush(timeout_millis)) and ok
                except Exception:  # noqa: BLE001 - telemetry must never break the caller
                    logger.warning("telemetry flush failed", exc_info=True)
                    ok = False
        return ok

    def _emit(self, level: int, event: str, props: Mapping[str, str | int | float], text: str) -> None:
        extra: dict[str, object] = {CUSTOM_EVENT_ATTRIBUTE: event, **props}
        try:
            self._events.log(level, "%s %s", event, text, extra=extra)
        except Exception:  # noqa: BLE001 - telemetry must never break the caller
            logger.warning("could not emit the %s event", event, exc_info=True)


class LiveOutcomes:
    """One command's ``CredentialRemediation`` events, each sent when its outcome is recorded
    (so a worker that dies mid-run has reported what it did), and at the end the outcomes that
    were not recorded on the way (a dry run records nothing). ``apiCalls``, ``retries`` and
    ``throttled`` are the command's counters when the event is sent; ``durationMs`` of an outcome
    without its own duration is the time since the command started. Thread-safe."""

    def __init__(
        self,
        telemetry: Telemetry,
        stats: Callable[[], StatsSnapshot],
        *,
        trigger: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._telemetry = telemetry
        self._stats = stats
        self._trigger = trigger
        self._clock = clock
        self._started = clock()
        self._sent: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, outcome: Outcome) -> None:
        with self._lock:
            if id(outcome) in self._sent:
                return
            self._sent.add(id(outcome))
        self._telemetry.emit_outcomes(
            [outcome], trigger=self._trigger, stats=self._stats(), duration=self._clock() - self._started
        )

    def finish(self, report: ReportLike) -> int:
        """Send the report's recorded outcomes not sent yet; returns how many."""
        with self._lock:
            rest = [o for o in report.recorded_outcomes() if id(o) not in self._sent]
            self._sent.update(id(o) for o in rest)
        return self._telemetry.emit_outcomes(
            rest,
            trigger=self._trigger,
            correlation_id=report.correlation_id or None,
            stats=self._stats(),
            duration=self._clock() - self._started,
        )


# -- configuring the exporter and the logging it reads ------------------------------------------
def install_log_redaction(redactor: Redactor = REDACTOR) -> RedactingFilter:
    """Attach one :class:`RedactingFilter` to the ``remediation`` logger and to every handler of
    the root and ``remediation`` loggers present now (idempotent). Returns the filter."""
    with _INSTALL_LOCK:
        global _FILTER
        if _FILTER is None:
            _FILTER = RedactingFilter(redactor)
        flt = _FILTER
        tree = logging.getLogger(TELEMETRY_LOGGER)
        targets: list[logging.Filterer] = [tree, *tree.handlers, *logging.getLogger().handlers]
        for target in targets:
            if flt not in target.filters:
                target.addFilter(flt)
        return flt


_INSTALL_LOCK = threading.Lock()
_FILTER: RedactingFilter | None = None

LIBRARY_LOG_LEVELS: Final[Mapping[str, int]] = {
    # The Azure SDK logs every request's URL and headers at INFO. host.json's ``logLevel`` only
    # filters the host's own categories, not the Python worker's loggers, so it is set here.
    "azure.core.pipeline.policies.http_logging_policy": logging.WARNING,
}
"""Levels for libraries' loggers, set by :func:`set_library_log_levels`."""


def set_library_log_levels(levels: Mapping[str, int] = LIBRARY_LOG_LEVELS) -> None:
    """Give each logger of ``levels`` its level, unless one was set explicitly (not NOTSET), so
    an operator's own ``logging`` configuration (e.g. DEBUG to see the requests) wins."""
    for name, level in levels.items():
        library = logging.getLogger(name)
        if library.level == logging.NOTSET:
            library.setLevel(level)


AUTHENTICATION_STRING_VARIABLE: Final = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"


@dataclass(frozen=True)
class AadIngestion:
    """Entra ID ingestion as ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` asks for it.

    ``client_id`` is the user-assigned managed identity's client id; None means the
    system-assigned identity.
    """

    client_id: str | None = None


def parse_authentication_string(value: str | None) -> AadIngestion | None:
    """``ClientId=<guid>;Authorization=AAD`` (the Functions host's format) -> :class:`AadIngestion`.

    Keys are matched case-insensitively, values trimmed. None when the string is unset or does
    not say ``Authorization=AAD`` (then ingestion uses the connection string alone).
    """
    if not value:
        return None
    parts: dict[str, str] = {}
    for item in value.split(";"):
        key, sep, val = item.partition("=")
        if sep:
            parts[key.strip().lower()] = val.strip()
    if parts.get("authorization", "").lower() != "aad":
        return None
    return AadIngestion(client_id=parts.get("clientid") or None)


def azure_monitor_credential(authentication_string: str | None) -> TokenCredential | None:
    """The credential the exporter signs ingestion with, or None for key-based ingestion."""
    aad = parse_authentication_string(authentication_string)
    if aad is None:
        return None
    from azure.identity import ManagedIdentityCredential

    if aad.client_id:
        return ManagedIdentityCredential(client_id=aad.client_id)
    return ManagedIdentityCredential()


def _configure_azure_monitor(
    connection_string: str, redactor: Redactor, *, authentication_string: str | None = None
) -> None:
    """The one call of ``configure_azure_monitor`` (imports the distro: ~0.5-1 s, so only here).

    With ``authentication_string`` saying ``Authorization=AAD`` the exporter signs ingestion
    with the managed identity (user-assigned with ``ClientId=``), as Application Insights with
    local authentication disabled requires.
    """
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry.sdk.resources import Resource

    span_processor, log_processor = redacting_processors(redactor)
    credential = azure_monitor_credential(authentication_string)
    extra: dict[str, Any] = {} if credential is None else {"credential": credential}
    configure_azure_monitor(
        **extra,
        connection_string=connection_string,
        # Only the product's logger tree is exported (not azure.*, urllib3, the worker's own).
        logger_name=TELEMETRY_LOGGER,
        # Offline storage stays ON: a batch that ingestion refuses or that times out is written to
        # the instance's temp directory and retried with a later export, instead of being lost.
        # A Functions instance has a writable local temp directory; the files hold only
        # redacted telemetry (the processors below run before the exporter).
        disable_offline_storage=False,
        # Live metrics and performance counters: extra threads and endpoints, nothing we need,
        # and the performance-counter exporter delays process exit by ~30 s.
        enable_live_metrics=False,
        enable_performance_counters=False,
        # Outcome events must never be sampled out. They are log records, which the span
        # sampler does not touch as long as trace-based sampling of logs stays off; and 1.0
        # keeps every dependency span too (the default rate-limited sampler drops spans).
        sampling_ratio=1.0,
        enable_trace_based_sampling_for_logs=False,
        # `requests` (every service client here) becomes dependency telemetry; the Azure SDK's
        # own spans (Key Vault) too. urllib3/urllib would duplicate each requests call, and the
        # web frameworks are not used (instrumenting them would only cost import time).
        instrumentation_options={
            "requests": {"enabled": True},
            "azure_sdk": {"enabled": True},
            "urllib3": {"enabled": False},
            "urllib": {"enabled": False},
            "httpx": {"enabled": False},
            "django": {"enabled": False},
            "fastapi": {"enabled": False},
            "flask": {"enabled": False},
            "psycopg2": {"enabled": False},
        },
        resource=Resource.create({"service.name": SERVICE_NAME}),
        # Run before the exporters' batch processors (the distro adds these first).
        span_processors=[span_processor],
        log_record_processors=[log_processor],
    )
