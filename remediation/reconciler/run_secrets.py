"""A run's secrets out of the texts nobody hands back to it: log records and escaping exceptions.

A :class:`~remediation.reconciler.runs.Run` masks the secret values it fetched in every text it
lets out itself (outcomes, verdict reasons, warnings). Two kinds of text do not pass through it:

* log records, which do not know their run: :class:`RunSecretsFilter`, on the loggers of the code
  a run executes (:data:`RUN_LOGGERS`; installed when this module is imported, so it does not wait
  for telemetry to be configured), masks them, exception text included, with the values of every
  run that holds secrets now (:data:`LIVE_RUNS`);
* an exception on its way out of a run: :func:`scrub_exception` masks its message and string
  attributes, and those of its causes, in place (the run calls it when it ends), so that
  ``str(exc)`` in the CLI's error line or an HTTP error answer shows no secret.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Final

from remediation.rules.redact import SecretMask

__all__ = ["LIVE_RUNS", "RUN_LOGGERS", "RunSecretsFilter", "scrub_exception"]


def scrub_exception(exc: BaseException, mask: SecretMask) -> None:
    """Mask ``mask``'s values in place in ``exc`` and in its causes and contexts: the ``args``
    and every string (or list, tuple, dict of strings) attribute, so that ``str()``, ``repr()``
    and a formatted traceback of it show none (an :class:`~remediation.clients.api_errors.ApiError`'s
    ``message`` and ``details`` are attributes). Attributes that cannot be set are left alone."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        _scrub_one(current, mask)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _scrub_one(exc: BaseException, mask: SecretMask) -> None:
    with contextlib.suppress(AttributeError, TypeError):  # an exception type that refuses
        exc.args = tuple(mask.mask_value(a) for a in exc.args)
    for name, value in list(vars(exc).items()):
        if isinstance(value, str | list | tuple | dict):
            cleaned = mask.mask_value(value)
            if cleaned != value:
                with contextlib.suppress(AttributeError, TypeError):  # a read-only attribute
                    setattr(exc, name, cleaned)


class _LiveRuns:
    """The masks of the runs that hold secrets now (for log records, which do not know their run)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._masks: dict[int, SecretMask] = {}

    def hold(self, run: object, mask: SecretMask) -> None:
        with self._lock:
            self._masks[id(run)] = mask

    def drop(self, run: object) -> None:
        with self._lock:
            self._masks.pop(id(run), None)

    def masks(self) -> list[SecretMask]:
        with self._lock:
            return list(self._masks.values())

    def redact(self, text: str) -> str:
        for mask in self.masks():
            text = mask.mask(text)
        return text

    def redact_value(self, value: Any) -> Any:
        for mask in self.masks():
            value = mask.mask_value(value)
        return value


LIVE_RUNS: Final = _LiveRuns()
"""The runs that hold secrets now, by identity, with their masks."""

# LogRecord attributes that are not ``extra``.
_RECORD_FIELDS: Final = frozenset(
    vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)).keys() | {"message", "asctime"}
)

RUN_LOGGERS: Final = (
    "remediation.reconciler.healer",
    "remediation.reconciler.refresher",
    "remediation.reconciler.resolver",
    "remediation.ledger.base",
    "remediation.reconciler.targets.gateway",
    "remediation.reconciler.targets.fabric",
    "remediation.clients.http",
    "remediation.clients.retry",
    "remediation.clients.powerbi",
    "remediation.clients.fabric",
    "remediation.clients.identity",
    "remediation.reconciler.runs",
)
"""The loggers of the code a run executes: their records are masked by :class:`RunSecretsFilter`.
(The reconciler's modules log under these names: the presenter as the healer,
the refresher's parts as the refresher, the gateway kind's parts as the gateway kind.)"""


class RunSecretsFilter(logging.Filter):
    """Masks the secret values of every run that holds some, in a log record, before any handler
    sees it: the message (formatted with its arguments), string ``extra`` values, the exception
    text (formatted from ``exc_info``) and the stack text. A record with nothing to mask is left
    as it is. Always returns True."""

    def filter(self, record: logging.LogRecord) -> bool:
        masks = LIVE_RUNS.masks()
        if not masks:
            return True

        def clean(value: Any) -> Any:
            for mask in masks:
                value = mask.mask_value(value)
            return value

        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            message = str(record.msg)
        masked = clean(message)
        if masked != message:
            record.msg, record.args = masked, None
        for key, value in list(vars(record).items()):
            if key not in _RECORD_FIELDS and isinstance(value, str | tuple | list | dict):
                setattr(record, key, clean(value))
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if clean(text) != text:
                record.exc_text = clean(text)
        elif record.exc_text:
            record.exc_text = clean(record.exc_text)
        if record.stack_info:
            record.stack_info = clean(record.stack_info)
        return True


def _install_log_filter() -> None:
    flt = RunSecretsFilter()
    for name in RUN_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, RunSecretsFilter) for f in target.filters):
            target.addFilter(flt)


_install_log_filter()
