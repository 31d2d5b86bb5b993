"""Power BI's error documents, read: ``serviceExceptionJson`` (a JSON document inside a string)
or an error body -> a :class:`ServiceError` (code, free text, detail entries).

Two shapes occur: ``{"errorCode", ["errorDescription"]}`` and the service envelope
``{"error": {"code", "pbi.error": {"code", "details": [{"code", "detail": {"value"}}]}}}``; the
value may also be absent, empty, doubly encoded, a bare error code or garbage. The input is
untrusted and nothing here raises on it. What a :class:`ServiceError` means is
:mod:`remediation.rules.diagnosis`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["ServiceError", "parse_service_exception"]


@dataclass(frozen=True)
class ServiceError:
    """The useful part of a Power BI error document: its code, free text and detail entries."""

    code: str | None
    description: str | None = None
    details: tuple[tuple[str, str], ...] = ()  # (detail code, detail value)

    @property
    def detail_codes(self) -> tuple[str, ...]:
        return tuple(code for code, _ in self.details)


def parse_service_exception(value: object) -> ServiceError | None:
    """The :class:`ServiceError` in a ``serviceExceptionJson`` value (or an error body); never raises.

    Accepts the JSON string, an already-decoded object, a doubly encoded string and a bare error
    code. Returns None for absent, empty and unusable values.
    """
    try:
        return _parse(value, depth=0)
    except (ValueError, TypeError, RecursionError):
        return None


def _parse(value: object, *, depth: int) -> ServiceError | None:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text[0] in '{["' and depth < 2:
            try:
                decoded = json.loads(text)
            except ValueError:
                return None
            return _parse(decoded, depth=depth + 1)
        if _looks_like_code(text):
            return ServiceError(text)
        return None
    if not isinstance(value, Mapping):
        return None
    if "errorCode" in value or "errorDescription" in value:
        return ServiceError(_text(value.get("errorCode")), _text(value.get("errorDescription")))
    envelope = value.get("error")
    if isinstance(envelope, str):
        return ServiceError(envelope) if _looks_like_code(envelope) else None
    if not isinstance(envelope, Mapping):
        return None
    code = _text(envelope.get("code"))
    details: list[tuple[str, str]] = []
    pbi = envelope.get("pbi.error")
    if isinstance(pbi, Mapping):
        code = _text(pbi.get("code")) or code
        raw_details = pbi.get("details")
        if isinstance(raw_details, Sequence) and not isinstance(raw_details, str):
            for item in raw_details:
                if not isinstance(item, Mapping):
                    continue
                detail_code = _text(item.get("code"))
                if detail_code is None:
                    continue
                detail = item.get("detail")
                detail_value = detail.get("value") if isinstance(detail, Mapping) else None
                details.append((detail_code, "" if detail_value is None else str(detail_value)))
    return ServiceError(code, _text(envelope.get("message")), tuple(details))


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _looks_like_code(text: str) -> bool:
    """An identifier such as ``DM_GWPipeline_UnknownError`` (not a number, not a JSON literal)."""
    return (
        len(text) <= 200
        and text[:1].isascii()
        and text[:1].isalpha()
        and text not in ("null", "true", "false")
        and all(ch.isascii() and (ch.isalnum() or ch in "_.-") for ch in text)
    )
