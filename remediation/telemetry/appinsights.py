"""Outcomes to Application Insights as custom events, with a redaction layer no secret gets past.

:class:`Telemetry` turns the healer's :class:`~remediation.ledger.Outcome`\\ s into one custom event
``CredentialRemediation`` each (and warnings such as ``CredentialSecretExpiry``), through the
standard :mod:`logging` module: a record on the ``remediation.events`` logger whose ``extra``
carries ``microsoft.custom_event.name`` becomes an ``EventData`` envelope in the Azure Monitor
OpenTelemetry distro (1.8.x); every other record of the ``remediation`` logger tree becomes a
trace, and ``requests`` calls become dependency telemetry.

**Lazy, once per process.** Importing this module imports neither ``azure.monitor.opentelemetry``
nor the OpenTelemetry SDK (cold start matters in a Functions worker). The first
:meth:`Telemetry.configure` / :meth:`Telemetry.emit_outcomes` / :meth:`Telemetry.emit_warning`
calls ``configure_azure_monitor`` exactly once per process (it installs process-global providers),
under a lock, and only when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set. Without it
:class:`Telemetry` exports nothing, but still writes every outcome to the standard logger (one
INFO line per outcome), so a console or the Functions host log shows them.

**Redaction.** :data:`REDACTOR` is the process-wide :class:`Redactor`. It masks, in any text:

* ``Bearer <token>`` and ``Basic <base64>`` (authorization header values);
* JWT-shaped strings: ``eyJ...`` with two or more dots, and any three base64url segments of 16+
  characters each, joined by dots;
* key/value forms of secrets, as ``k=v``, ``k: v`` and JSON ``"k": "v"``, for ``access_token``,
  ``refresh_token``, ``id_token``, ``client_secret``, ``client_assertion``, ``password``,
  ``passwd``, ``pwd``, ``AccountKey``, ``SharedAccessKey``, ``SharedAccessSignature``, ``sig``,
  ``apikey`` / ``api-key`` / ``api_key`` and ``subscription-key``
  (case-insensitive; camelCase and snake_case), e.g. storage connection strings and SAS URLs;
* Power BI ``credentialData`` pairs ``{"name": "password"|"key"|"token"|..., "value": "..."}``;
* in every URL (``scheme://...``): the user info (``https://user:password@host``) and the value
  of every query and fragment parameter (``?apikey=``, ``?code=``, ``?sig=&sv=``,
  ``#access_token=``...; names are kept, and the values of ``api-version``, ``$top``, ``$skip``),
  by :func:`remediation.rules.redact.mask_urls`, which the healer also applies to every outcome;
* every value registered with :meth:`Redactor.register` while it is registered -- verbatim and as
  it appears JSON-escaped, ``repr``-escaped, URL-encoded and HTML-escaped, and the password inside
  a JSON ``{"username", "password"}`` value (:class:`remediation.rules.redact.SecretMask`, the masking
  every run applies to its own texts too). A run registers each secret value it holds for its
  length (:meth:`remediation.reconciler.runs.Run.hold_secret`); :class:`Telemetry` registers
  ``AZURE_CLIENT_SECRET`` and ``AZURE_CLIENT_CERTIFICATE_PASSWORD`` for the life of the process.

It is applied (a) to log records, by :class:`RedactingFilter` on the ``remediation`` logger and
on every handler of the root and ``remediation`` loggers at configuration time (the Functions
host's handler, a console, the distro's OpenTelemetry handler): message, arguments, string
``extra`` values, the formatted exception text and the stack text are replaced by their redacted
form before any handler formats them; (b) to the OpenTelemetry log pipeline, by a log record
processor running before the exporter's: the body and every string attribute, including
``exception.message`` and ``exception.stacktrace`` which the OpenTelemetry handler takes from the
live exception object; (c) to spans, by a span processor running before the exporter's batch
processor: span attributes at start (e.g. ``http.url`` with ``?sig=...``) and, at the end, the
attributes, event attributes (recorded exceptions) and the status description.

What it cannot cover: a secret that is neither registered nor in one of the shapes above (an
unregistered password in free text); a secret that was transformed in another way (split,
base64-encoded, hashed) -- though nothing in this product does that to a secret in a message;
records of loggers outside the ``remediation`` tree that go to handlers added after
:meth:`Telemetry.configure` (the filter is attached to the handlers present then); span names
(not rewritten -- the instrumentations name spans after the method and route, never a query); and
the ``on_end`` span scrub writes the SDK's ``ReadableSpan`` private fields (``_attributes``,
``_events``, ``_status``): if a future SDK renames them the end-of-span scrub is skipped (logged
once) while the start-of-span scrub, which uses the public API, keeps working. Registered values
shorter than :data:`remediation.rules.redact.SHORT_SECRET` characters are masked only where they stand
alone (not inside a word), as :class:`~remediation.rules.redact.SecretMask` explains.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from typing import TYPE_CHECKING, Any, Final, Protocol

from remediation.config.settings import Settings
from remediation.ledger import Outcome
from remediation.rules.redact import MASK, SecretMask, mask_urls

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from remediation.clients.stats import StatsSnapshot

__all__ = [
    "ReportLike",
    "EVENTS_LOGGER",
    "LIBRARY_LOG_LEVELS",
    "MASK",
    "OUTCOME_EVENT",
    "OUTCOME_PROPERTIES",
    "LiveOutcomes",
    "REDACTOR",
    "SECRET_EXPIRY_EVENT",
    "SERVICE_NAME",
    "TELEMETRY_LOGGER",
    "RedactingFilter",
    "Redactor",
    "Telemetry",
    "install_log_redaction",
    "outcome_properties",
    "redact",
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
OUTCOME_EVENT: Final = "CredentialRemediation"
SECRET_EXPIRY_EVENT: Final = "CredentialSecretExpiry"
SERVICE_NAME: Final = "pbi-credential-healer"
CUSTOM_EVENT_ATTRIBUTE: Final = "microsoft.custom_event.name"

OUTCOME_PROPERTIES: Final = (
    "trigger",
    "correlationId",
    "workspaceId",
    "datasetId",
    "gatewayId",
    "datasourceId",
    "binding",
    "account",
    "secretName",
    "secretVersion",
    "action",
    "reason",
    "refreshRequestId",
    "refreshState",
    "durationMs",
    "apiCalls",
    "retries",
    "throttled",
)
"""The properties of every ``CredentialRemediation`` event, always all present ("" = unknown).
``account`` is the account key a target's sign-ins count against (``user:svc_pbi``,
``app:<client id>``, ``secret:<name>``): a user name from the bindings file or a JSON secret's
``username`` (also in the reasons), never a credential (README, "Ledger and telemetry": the
account dimension)."""

# ---------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------

_B64URL = r"[A-Za-z0-9_-]"
_AUTH_SCHEME = re.compile(r"(?i)\b(Bearer|Basic)(\s+)[^\s\"',;]+")
_JWT = re.compile(
    rf"\beyJ{_B64URL}+\.{_B64URL}+\.{_B64URL}*(?:\.{_B64URL}*){{0,2}}"  # JWS / JWE (eyJ = '{"')
    rf"|(?<![A-Za-z0-9_.-]){_B64URL}{{16,}}\.{_B64URL}{{16,}}\.{_B64URL}{{16,}}(?![A-Za-z0-9_-])"
)
_SECRET_KEYS = (
    r"access_?token|refresh_?token|id_?token|client_?secret|client_?assertion|password|passwd|pwd"
    r"|account_?key|shared_?access_?key|shared_?access_?signature|sig"
    r"|api[-_]?key|subscription[-_]?key"
)
_KEY_VALUE = re.compile(
    rf"(?i)(?<![A-Za-z0-9_])((?:{_SECRET_KEYS})[\"']?\s*[=:]\s*)(?!{re.escape(MASK)})"
    r"(\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'|[^\s;&\"',}\]]+)"
)
_SAS_HEADER = re.compile(r"(?i)\b(SharedAccessSignature)(\s+)[^\s\"',;]+")
# A Power BI credentialData pair, in JSON (prefix "") or in JSON inside a JSON string (prefix "\\",
# and so on): the value runs to the quote that closes it at the same escape level (_mask_json_values).
_CREDENTIAL_DATA = re.compile(
    r"(?i)(\\*)\"name\1\"\s*:\s*\1\"(?:password|key|token|accesstoken|secret)\1\"\s*,\s*"
    r"\1\"value\1\"\s*:\s*\1\""
)


def _mask_key_value(match: re.Match[str]) -> str:
    value = match.group(2)
    if value[:1] in ("'", '"'):
        return f"{match.group(1)}{value[0]}{MASK}{value[0]}"
    return f"{match.group(1)}{MASK}"


def _mask_json_values(text: str) -> str:
    out: list[str] = []
    pos = 0
    for match in _CREDENTIAL_DATA.finditer(text):
        if match.start() < pos:
            continue
        level = len(match.group(1))
        i = match.end()
        while i < len(text):
            if text[i] == "\\":
                run = i
                while run < len(text) and text[run] == "\\":
                    run += 1
                if run < len(text) and text[run] == '"' and (run - i) % (2 * (level + 1)) == level:
                    i = run  # the closing quote (preceded by this level's escape prefix)
                    break
                i = run + 1
            elif text[i] == '"' and level == 0:
                break
            else:
                i += 1
        close = i - level  # keep the escape prefix of the closing quote
        out.append(text[pos : match.end()])
        out.append(MASK)
        pos = max(close, match.end())
    out.append(text[pos:])
    return "".join(out)


class Redactor:
    """A thread-safe set of secret values to mask, plus the fixed patterns of secrets.

    ``register(value)`` returns a handle; the value is masked until ``unregister(handle)``. The
    same value may be registered several times (by concurrent runs); it stays masked until every
    handle is released. :meth:`redact` is safe to call from any thread at any time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[int, str] = {}
        self._ids = count(1)
        self._mask = SecretMask()

    def register(self, value: str) -> int:
        """Mask ``value`` (and its escaped and encoded forms) from now on; returns a handle.

        An empty value is accepted and ignored (there is nothing to mask).
        """
        with self._lock:
            handle = next(self._ids)
            self._handles[handle] = value
            if value:
                self._rebuild()
        return handle

    def unregister(self, handle: int) -> None:
        """Stop masking the value of ``handle`` (unless another handle holds it). Unknown: no-op."""
        with self._lock:
            if self._handles.pop(handle, ""):
                self._rebuild()

    @contextmanager
    def registered(self, *values: str) -> Iterator[None]:
        """``with REDACTOR.registered(secret): ...``: masked for the duration of the block."""
        handles = [self.register(v) for v in values]
        try:
            yield
        finally:
            for handle in handles:
                self.unregister(handle)

    def __len__(self) -> int:
        """Number of live handles."""
        with self._lock:
            return len(self._handles)

    def _rebuild(self) -> None:  # caller holds the lock
        self._mask = SecretMask(sorted({v for v in self._handles.values() if v}))

    def redact(self, text: str) -> str:
        """``text`` with every registered value and every secret-shaped substring masked."""
        if not text:
            return text
        text = self._mask.mask(text)  # one atomic read: a consistent snapshot
        text = mask_urls(text)
        text = _mask_json_values(text)
        text = _AUTH_SCHEME.sub(rf"\1\2{MASK}", text)
        text = _SAS_HEADER.sub(rf"\1\2{MASK}", text)
        text = _KEY_VALUE.sub(_mask_key_value, text)
        return _JWT.sub(MASK, text)

    def redact_value(self, value: Any) -> Any:
        """Strings redacted; lists/tuples/dicts of them redacted recursively; others unchanged."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, tuple | list):
            return type(value)(self.redact_value(v) for v in value)
        if isinstance(value, dict):
            return {k: self.redact_value(v) for k, v in value.items()}
        if isinstance(value, bytes | bytearray):
            return self.redact(bytes(value).decode("utf-8", "replace"))
        return value


REDACTOR: Final = Redactor()
"""The process-wide redactor: every filter and processor of this module uses it."""


def redact(text: str) -> str:
    """:meth:`Redactor.redact` of the process-wide :data:`REDACTOR`."""
    return REDACTOR.redact(text)


# LogRecord attributes that are not ``extra`` (the OpenTelemetry handler skips the same ones).
_RECORD_FIELDS: Final = frozenset(
    vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)).keys() | {"message", "asctime"}
)


class RedactingFilter(logging.Filter):
    """Rewrites a log record in place so that nothing after it can see a secret.

    The message is formatted with its arguments and redacted (``args`` cleared), string ``extra``
    values are redacted, the exception text is formatted and redacted into ``exc_text`` (which
    every :class:`logging.Formatter` uses instead of formatting ``exc_info`` again), and so is
    ``stack_info``. Always returns True (it filters nothing out). Applying it twice is harmless.
    """

    def __init__(self, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        r = self._redactor
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            message = str(record.msg)
        record.msg, record.args = r.redact(message), None
        for key, value in list(vars(record).items()):
            if key not in _RECORD_FIELDS and isinstance(value, str | tuple | list | dict):
                setattr(record, key, r.redact_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = r.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = r.redact(record.stack_info)
        return True


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


def _otel_processors(redactor: Redactor) -> tuple[object, object]:
    """A span processor and a log record processor that redact, built on first use (lazy import)."""
    from opentelemetry.sdk._logs import LogRecordProcessor, ReadWriteLogRecord
    from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
    from opentelemetry.trace import Status

    def clean(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if attributes is None:
            return None
        return {k: redactor.redact_value(v) for k, v in attributes.items()}

    class RedactingSpanProcessor(SpanProcessor):
        warned = False

        def on_start(self, span: Span, parent_context: Any = None) -> None:
            for key, value in (span.attributes or {}).items():
                cleaned = redactor.redact_value(value)
                if cleaned != value:
                    span.set_attribute(key, cleaned)

        def on_end(self, span: ReadableSpan) -> None:
            try:
                span._attributes = clean(span._attributes)
                span._events = tuple(Event(e.name, clean(e.attributes), e.timestamp) for e in span._events)
                status = span._status
                if status.description:
                    span._status = Status(status.status_code, redactor.redact(status.description))
            except AttributeError:  # a future SDK without these fields: the start scrub remains
                if not RedactingSpanProcessor.warned:
                    RedactingSpanProcessor.warned = True
                    logger.warning("span attributes set after start cannot be redacted by this SDK")

        def shutdown(self) -> None:
            return None

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    class RedactingLogRecordProcessor(LogRecordProcessor):
        def on_emit(self, log_record: ReadWriteLogRecord) -> None:
            record = log_record.log_record
            record.body = redactor.redact_value(record.body)
            attributes = record.attributes
            if attributes:
                for key, value in list(attributes.items()):
                    cleaned = redactor.redact_value(value)
                    if cleaned != value:
                        attributes[key] = cleaned  # type: ignore[index]

        def shutdown(self) -> None:
            return None

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return RedactingSpanProcessor(), RedactingLogRecordProcessor()


# ---------------------------------------------------------------------------------------------
# Telemetry
# ---------------------------------------------------------------------------------------------

_CONFIGURE_LOCK = threading.Lock()
_CONFIGURED_WITH: str | None = None  # the connection string configure_azure_monitor got, if any
_SETTINGS_SECRETS: set[tuple[int, str]] = set()  # (redactor, value) registered from Settings


def outcome_properties(
    outcome: Outcome,
    *,
    trigger: str | None = None,
    correlation_id: str | None = None,
    stats: StatsSnapshot | None = None,
    duration: float | None = None,
) -> dict[str, str | int]:
    """The ``CredentialRemediation`` properties of one outcome (exactly :data:`OUTCOME_PROPERTIES`).

    The outcome's own trigger, correlation id and duration win over the run's (the arguments).
    Unknown values are "" so every event has the same keys. ``durationMs`` is whole milliseconds;
    ``apiCalls``, ``retries`` and ``throttled`` are the run's totals from ``stats``.
    """
    seconds = outcome.duration if outcome.duration is not None else duration
    props: dict[str, str | int] = {
        "trigger": outcome.trigger or trigger or "",
        "correlationId": outcome.correlation_id or correlation_id or "",
        "workspaceId": outcome.workspace_id or "",
        "datasetId": outcome.dataset_id or "",
        "gatewayId": outcome.gateway_id or "",
        "datasourceId": outcome.datasource_id or "",
        "binding": outcome.binding or "",
        "account": outcome.account or "",
        "secretName": outcome.secret_name or "",
        "secretVersion": outcome.secret_version or "",
        "action": str(outcome.action or ""),
        "reason": outcome.reason or "",
        "refreshRequestId": outcome.refresh_request_id or "",
        "refreshState": outcome.refresh_state or "",
        "durationMs": "" if seconds is None else max(0, round(seconds * 1000)),
        "apiCalls": "" if stats is None else stats.calls,
        "retries": "" if stats is None else stats.retries,
        "throttled": "" if stats is None else stats.throttled,
    }
    return props


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
            self._emit(logging.INFO, OUTCOME_EVENT, props, _describe(props))
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
        props = {str(k): _scalar(v) for k, v in properties.items()}
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


def _describe(props: Mapping[str, str | int]) -> str:
    target = f"{props['gatewayId']}/{props['datasourceId']}" if props["datasourceId"] else ""
    dataset = f"{props['workspaceId']}/{props['datasetId']}" if props["datasetId"] else ""
    parts = [
        f"action={props['action']}",
        f"target={target}" if target else "",
        f"dataset={dataset}" if dataset else "",
        f"secret={props['secretName']}@{props['secretVersion']}" if props["secretName"] else "",
        f"refresh={props['refreshState']}" if props["refreshState"] else "",
        f"correlationId={props['correlationId']}",
        f"reason={props['reason']}" if props["reason"] else "",
    ]
    return " ".join(p for p in parts if p)


def _scalar(value: object) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(v) for v in value)
    return str(value)


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

    span_processor, log_processor = _otel_processors(redactor)
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
