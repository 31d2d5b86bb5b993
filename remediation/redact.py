"""Pure text redaction for data source connection details and URLs (no state, no I/O).

Web, OData and extension data sources carry keys in their URLs (``?apikey=...``, ``?code=...``,
``?sig=...&sv=...``, ``#access_token=...``, ``https://user:password@host``). Nothing the product
reports, persists or emits may repeat them, so:

* :func:`describe_datasource` says what a data source is by its **type and host only**
  (``Web on api.contoso.com``): the words the healer uses in its outcomes;
* :func:`mask_urls` masks, in any text, the user info and the value of every query and fragment
  parameter of every URL (``scheme://...``) it contains. The telemetry redaction layer applies it
  to every log record, span and event, and the healer to every outcome before it is recorded.

Parameter **names** are kept (they tell an operator which URL it was); values are replaced by
:data:`MASK`, except those of :data:`HARMLESS_PARAMETERS` (API versions and paging). A URL is
taken to end at whitespace, a quote, a backslash (JSON-escaped text), ``<``, ``>`` or a backtick.
Not covered: URLs without a scheme (``contoso.com/x?key=v``) and percent-encoded URLs that stand
alone outside another URL's query string (inside one, they are masked with it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

__all__ = ["HARMLESS_PARAMETERS", "MASK", "datasource_host", "describe_datasource", "mask_urls"]

MASK: Final = "[REDACTED]"

HARMLESS_PARAMETERS: Final = frozenset({"api-version", "$top", "$skip"})
"""Query parameters whose values are kept: they never carry a secret and help read a URL."""

_STOP = r"\s\"'<>\\`"
_URL: Final = re.compile(
    rf"(?i)\b(?P<scheme>[a-z][a-z0-9+.-]*://)"
    rf"(?P<authority>[^{_STOP}/?#]*)"
    rf"(?P<path>[^{_STOP}?#]*)"
    rf"(?P<query>\?[^{_STOP}#]*)?"
    rf"(?P<fragment>#[^{_STOP}]*)?"
)
_TYPE: Final = re.compile(r"[A-Za-z][A-Za-z0-9 _.-]{0,63}")
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
# Connection detail keys that name where a source lives, in the order they are tried.
_HOST_KEYS: Final = (
    "server",
    "url",
    "host",
    "domain",
    "account",
    "path",
    "extensiondatasourcepath",
)


def _mask_parameters(text: str) -> str:
    """``a=1&b=2`` -> ``a=[REDACTED]&b=[REDACTED]``; a bare value (``?abc``) becomes the mask."""
    parts: list[str] = []
    for part in text.split("&"):
        name, sep, _value = part.partition("=")
        if not part:
            parts.append(part)
        elif not sep:
            parts.append(MASK)
        elif name.lower() in HARMLESS_PARAMETERS:
            parts.append(part)
        else:
            parts.append(f"{name}={MASK}")
    return "&".join(parts)


def _mask_url(match: re.Match[str]) -> str:
    authority = match.group("authority")
    userinfo, at, host = authority.rpartition("@")
    if at and userinfo:
        authority = f"{MASK}@{host}"
    query = match.group("query")
    if query:
        query = "?" + _mask_parameters(query[1:])
    fragment = match.group("fragment")
    if fragment:
        fragment = "#" + _mask_parameters(fragment[1:])
    return f"{match.group('scheme')}{authority}{match.group('path')}{query or ''}{fragment or ''}"


def mask_urls(text: str) -> str:
    """``text`` with the user info and every query/fragment parameter value of each URL masked.

    ``https://u:p@h/x?apikey=k&api-version=1#t=2`` becomes
    ``https://[REDACTED]@h/x?apikey=[REDACTED]&api-version=1#t=[REDACTED]``.
    Idempotent; text without ``://`` is returned unchanged.
    """
    if not text or "://" not in text:
        return text
    return _URL.sub(_mask_url, text)


def _host_of(value: str) -> str | None:
    value = value.strip()
    if value.startswith("{"):
        try:
            inner = json.loads(value)
        except ValueError:
            return None
        return datasource_host(inner) if isinstance(inner, dict) else None
    if "://" in value:
        try:
            host = urlsplit(value).hostname
        except ValueError:
            return None
        return host if host and _HOSTNAME.fullmatch(host) else None
    if value.startswith("\\\\"):  # a UNC path: \\server\share\file
        value = value[2:]
    elif re.match(r"(?i)[a-z]:[\\/]", value):  # a local path (C:\data\x.xlsx): no host
        return None
    else:
        value = re.sub(r"(?i)^(?:tcp|np|lpc|admin):", "", value)  # SQL Server protocol prefixes
    host = re.split(r"[\\/,;:]", value, maxsplit=1)[0].strip()
    return host.lower() if _HOSTNAME.fullmatch(host) else None


def datasource_host(connection_details: Mapping[str, object] | str | None) -> str | None:
    """The host a data source's connection details point at (server, URL host, UNC server), or None.

    ``connection_details`` is the API's object, or its JSON string. Only a plain host name is
    returned (never a path, a query or credentials); None when there is none to tell.
    """
    details: object = connection_details
    if isinstance(details, str):
        try:
            details = json.loads(details)
        except ValueError:
            return None
    if not isinstance(details, Mapping):
        return None
    by_key = {str(k).lower(): v for k, v in details.items()}
    for key in _HOST_KEYS:
        value = by_key.get(key)
        if isinstance(value, str) and value.strip():
            host = _host_of(value)
            if host:
                return host
    return None


def describe_datasource(
    datasource_type: str | None, connection_details: Mapping[str, object] | str | None
) -> str:
    """A data source as its type and host only: ``Web on api.contoso.com``, ``Sql on sql01``,
    ``File`` (no host to tell), ``of unknown type``. Never a URL path, query or credential."""
    kind = (datasource_type or "").strip()
    if not _TYPE.fullmatch(kind):
        kind = ""
    host = datasource_host(connection_details)
    if not kind:
        return f"of unknown type on {host}" if host else "of unknown type"
    return f"{kind} on {host}" if host else kind
