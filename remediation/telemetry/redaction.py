"""The redaction layer no secret gets past: the redactor, the log filter and the OpenTelemetry
processors that apply it (:mod:`remediation.telemetry.appinsights` attaches them).

:data:`REDACTOR` is the process-wide :class:`Redactor`. It masks, in any text:

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
  length (:meth:`remediation.reconciler.runs.Run.hold_secret`);
  :class:`~remediation.telemetry.appinsights.Telemetry` registers ``AZURE_CLIENT_SECRET`` and
  ``AZURE_CLIENT_CERTIFICATE_PASSWORD`` for the life of the process.

It is applied (a) to log records, by :class:`RedactingFilter` on the ``remediation`` logger and
on every handler of the root and ``remediation`` loggers at configuration time
(:func:`~remediation.telemetry.appinsights.install_log_redaction`; the Functions
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
:meth:`~remediation.telemetry.appinsights.Telemetry.configure` (the filter is attached to the
handlers present then); span names (not rewritten -- the instrumentations name spans after the
method and route, never a query); and the ``on_end`` span scrub writes the SDK's ``ReadableSpan``
private fields (``_attributes``, ``_events``, ``_status``): if a future SDK renames them the
end-of-span scrub is skipped (logged once) while the start-of-span scrub, which uses the public API,
keeps working. Registered values shorter than :data:`remediation.rules.redact.SHORT_SECRET`
characters are masked only where they stand alone (not inside a word), as
:class:`~remediation.rules.redact.SecretMask` explains.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import count
from typing import Any, Final

from remediation.rules.redact import MASK, SecretMask, mask_urls

__all__ = [
    "REDACTOR",
    "RedactingFilter",
    "Redactor",
    "redact",
    "redacting_processors",
]

logger = logging.getLogger(__name__)

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


def redacting_processors(redactor: Redactor) -> tuple[object, object]:
    """A span processor and a log record processor that redact, built on first use (lazy import);
    :mod:`remediation.telemetry.appinsights` runs them before the exporters' own."""
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
