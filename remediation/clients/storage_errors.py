"""One-line, secret-free descriptions of Azure Storage errors (Table and Queue clients alike)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from azure.core.exceptions import AzureError, HttpResponseError

__all__ = ["describe_storage_error"]

_SECRET_IN_TEXT: Final = re.compile(
    r"(?i)\b(accountkey|sharedaccesssignature|sig|signature|token|password)=[^;&\s\"']*"
)


def describe_storage_error(exc: AzureError, redact: Iterable[str] = ()) -> str:
    """``Type status code: first line`` of ``exc``, with ``redact`` values (the account key of a
    connection string...) and any ``key=value`` secret masked, at most 300 characters."""
    parts = [type(exc).__name__]
    if isinstance(exc, HttpResponseError):
        if exc.status_code is not None:
            parts.append(str(exc.status_code))
        code = getattr(exc, "error_code", None)
        if code:
            parts.append(str(code))
    lines = str(exc.message or exc).strip().splitlines()
    text = f"{' '.join(parts)}: {lines[0] if lines else ''}"
    for secret in redact:
        text = text.replace(secret, "<redacted>")
    text = _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}=<redacted>", text)
    return text if len(text) <= 300 else text[:299] + "…"
