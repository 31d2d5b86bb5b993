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

**Secret values.** Services echo submitted values in their validation messages (ASP.NET's "The
value '...' is not valid for ..."), so an error text may carry the very password the product sent.
A :class:`SecretMask` (or :func:`mask_secrets`) masks known secret values in any text, in every
form a service, a serializer or a traceback may show them (:func:`secret_forms`): as is;
JSON-escaped (``ensure_ascii`` on and off, the .NET ``System.Text.Json`` default encoder's
``\\u0027``-style escapes, and JSON inside a JSON string); ``repr``-escaped; URL-encoded
(``quote``, ``quote_plus``, JavaScript's and .NET's safe sets); HTML-escaped (``&#x27;``, ASP.NET's
``&#39;``, XML's ``&apos;``); hexadecimal escapes in upper and lower case. A value is found
anywhere, also inside a longer string; overlapping occurrences of several values become one mask,
and a JSON secret ``{"username", "password"}`` masks its password alone too (:func:`secret_parts`).

Very short values: a value of fewer than :data:`SHORT_SECRET` characters is masked only where it
stands alone, that is not glued to a letter or digit on either side (``'ab'``, ``=ab&``, ``"ab"``,
``ab.``), never inside a word (``about`` stays ``about``). Masking every ``a`` of a message would
destroy it and tell as much as it hides (the mask shows where the letters were); a password that
short is a few guesses away anyway. An echo always sets the value apart (quotes, ``=``, spaces),
so an echoed short password is still masked. From :data:`SHORT_SECRET` characters on, every
occurrence is masked, even inside a word.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any, Final
from urllib.parse import quote, quote_plus, urlsplit
from xml.sax.saxutils import escape as xml_escape

__all__ = [
    "HARMLESS_PARAMETERS",
    "MASK",
    "SHORT_SECRET",
    "SecretMask",
    "datasource_host",
    "describe_datasource",
    "mask_secrets",
    "mask_urls",
    "secret_forms",
    "secret_parts",
]

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
    if "://" not in text:
        return text
    return _URL.sub(_mask_url, text)


def _host_of(value: str) -> str | None:
    value = value.strip()
    if value.startswith("{"):
        try:
            inner = json.loads(value)  # a JSON text that starts with "{" is an object
        except (ValueError, RecursionError):
            return None
        return datasource_host(inner)
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
    host = re.split(r"[\\/,;:]", value)[0].strip()
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
        except (ValueError, RecursionError):
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
    host = datasource_host(connection_details)
    if not _TYPE.fullmatch(kind):
        return f"of unknown type on {host}" if host else "of unknown type"
    return f"{kind} on {host}" if host else kind


# -- secret values ------------------------------------------------------------------------------
SHORT_SECRET: Final = 4
"""Values shorter than this (in characters) are masked only where they stand alone (see above)."""

# The .NET System.Text.Json default encoder (JavaScriptEncoder.Default) escapes these as \uXXXX.
_NET_JSON_ESCAPED: Final = frozenset("\"&'+<>`")
_JSON_SHORT: Final = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
# Hexadecimal digits inside escapes: %2b, \u00e9, &#xe9; (serializers differ in their case).
_HEX_ESCAPE: Final = re.compile(r"%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|&#x[0-9A-Fa-f]+;")
_STANDS_ALONE_BEFORE: Final = r"(?<![^\W_])"  # not after a letter or digit
_STANDS_ALONE_AFTER: Final = r"(?![^\W_])"  # not before a letter or digit


def secret_parts(value: str) -> tuple[str, ...]:
    """The values to mask for one secret value: the value itself and, when it is a JSON object
    with a string ``password`` (the ``{"username", "password"}`` form of Basic and Windows
    secrets), that password too (a message may show it alone). Empty values are left out."""
    parts = [value] if value else []
    if value.lstrip().startswith("{"):
        try:
            doc = json.loads(value)
        except (ValueError, RecursionError):
            return tuple(parts)
        password = doc.get("password")  # a JSON text that starts with "{" is an object
        if isinstance(password, str) and password and password != value:
            parts.append(password)
    return tuple(parts)


def _net_json(value: str) -> str:
    """``value`` as System.Text.Json's default encoder writes it inside a JSON string."""
    out: list[str] = []
    for ch in value:
        code = ord(ch)
        if ch in _JSON_SHORT:
            out.append(_JSON_SHORT[ch])
        elif code < 0x20 or code >= 0x7F or ch in _NET_JSON_ESCAPED:
            if code > 0xFFFF:  # a surrogate pair
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04X}\\u{0xDC00 + (code & 0x3FF):04X}")
            else:
                out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    return "".join(out)


def secret_forms(value: str) -> frozenset[str]:
    """Every form in which ``value`` may appear in a text: see the module docstring."""
    if not value:
        return frozenset()
    forms = {value, repr(value)[1:-1], _net_json(value)}
    # json.dumps(value, ensure_ascii=True/False), as a string's JSON form is written.
    for encode in (encode_basestring_ascii, encode_basestring):
        once = encode(value)[1:-1]
        forms.add(once)
        forms.add(encode(once)[1:-1])  # JSON inside a JSON string
    # URL encodings: Python's default, RFC 3986 paths, encodeURIComponent; then form encoding:
    # Python, JavaScript, .NET's UrlEncode. (quote() never encodes a letter, so a safe set with
    # letters added, the only change a mutation tool makes to these lines, encodes the same.)
    for safe in ("", "/", "!'()*"):  # pragma: no mutate (equivalent: letters are always safe)
        forms.add(quote(value, safe=safe))
    for safe in ("", "!'()*", "!()*"):  # pragma: no mutate (equivalent: letters are always safe)
        forms.add(quote_plus(value, safe=safe))
    escaped = html.escape(value)
    forms |= {
        escaped,
        xml_escape(value),  # html.escape(value, quote=False): & < > only
        escaped.replace("&#x27;", "&#39;"),  # ASP.NET's HtmlEncode
        escaped.replace("&#x27;", "&apos;"),  # XML
    }
    cased = {_HEX_ESCAPE.sub(_upper_hex, f) for f in forms} | {_HEX_ESCAPE.sub(_lower_hex, f) for f in forms}
    return frozenset(f for f in forms | cased if f)


def _upper_hex(match: re.Match[str]) -> str:
    escape = match.group(0)
    cut = 3 if escape.startswith("&#x") else (1 if escape.startswith("%") else 2)
    return escape[:cut] + escape[cut:].upper()


def _lower_hex(match: re.Match[str]) -> str:
    return match.group(0).lower()


class SecretMask:
    """Known secret values, compiled once, masked in any text (immutable, thread-safe).

    ``SecretMask(values)`` masks each value (and the password inside a JSON one, see
    :func:`secret_parts`) in every form of :func:`secret_forms`; an empty mask changes nothing.
    Where occurrences overlap or touch (two values, or one inside another) they become one
    :data:`MASK`, so no piece of either is left. Its ``repr`` shows no value.
    """

    __slots__ = ("_any", "_at", "_size")
    _any: re.Pattern[str]

    def __init__(self, values: Iterable[str] = ()) -> None:
        anywhere: dict[str, bool] = {}
        size = 0
        for value in values:
            for part in secret_parts(value):
                size += 1
                alone = len(part) < SHORT_SECRET
                for form in secret_forms(part):
                    anywhere[form] = anywhere.get(form) or not alone
        self._size = size
        if not anywhere:
            self._at: re.Pattern[str] | None = None  # and no _any: it is read only beside an _at
            return
        # Longest first: at one position the longest form wins (no partial leftovers).
        ordered = sorted(anywhere, key=lambda f: (-len(f), f))
        items = [
            re.escape(f) if anywhere[f] else f"{_STANDS_ALONE_BEFORE}{re.escape(f)}{_STANDS_ALONE_AFTER}"
            for f in ordered
        ]
        alternatives = "|".join(items)
        # A plain search first (text with no value, most of them, costs one cheap scan), then every
        # start, overlapping ones too.
        self._any = re.compile(alternatives)
        self._at = re.compile(f"(?=({alternatives}))")

    def __bool__(self) -> bool:
        return self._at is not None

    def __repr__(self) -> str:
        return f"SecretMask({self._size} value{'s' if self._size != 1 else ''})"

    def mask(self, text: str) -> str:
        """``text`` with every occurrence of every value, in every form, replaced by :data:`MASK`."""
        if self._at is None or self._any.search(text) is None:
            return text
        spans: list[list[int]] = []
        for match in self._at.finditer(text):
            start, end = match.start(), match.start() + len(match.group(1))
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        # What is kept is the text between the masked spans: text[b0:b1], text[b2:b3], ...
        bounds = [0, *(i for span in spans for i in span), len(text)]
        return MASK.join(text[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2))

    def mask_value(self, value: Any) -> Any:
        """Strings masked; lists, tuples and dicts (values) of them recursively; others unchanged."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, tuple | list):
            return type(value)(self.mask_value(v) for v in value)
        if isinstance(value, dict):
            return {k: self.mask_value(v) for k, v in value.items()}
        return value


def mask_secrets(text: str, values: Iterable[str]) -> str:
    """``text`` with each of ``values`` masked in every form (see :class:`SecretMask`)."""
    return SecretMask(values).mask(text)
