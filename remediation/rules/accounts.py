"""Who a credential signs in as, and which data source a failed refresh names (pure).

Lockout policies (Active Directory, SQL Server logins with ``CHECK_POLICY``, Entra ID smart
lockout) count failed sign-ins **per account**, whatever the number of data sources that use it.
The healer's rule is therefore stated per account: per account and per secret version it causes
at most one failed sign-in. This module names the account a binding's credential signs in as
(:func:`account_key`), where at the source it signs in (:func:`source_locator`, so an acceptance
on one server does not license presenting the version to another), and which data source a
refresh failure is about (:func:`failed_source`), so that a failure is blamed only on a data
source it proves wrong.

Account keys are deliberately coarse: ``CONTOSO\\svc_pbi``, ``svc_pbi@contoso.com`` and
``svc_pbi`` are one account, because they may be (merging two accounts only makes the healer
more careful; splitting one would let it fail twice).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from remediation.config.bindings import Binding, CredentialType

__all__ = [
    "FailedSource",
    "account_key",
    "failed_source",
    "presentation_locator",
    "source_locator",
    "source_matches",
    "text_map",
]

_KIND_DETAIL = "Microsoft.Data.Mashup.CredentialError.DataSourceKind"
_PATH_DETAIL = "Microsoft.Data.Mashup.CredentialError.DataSourcePath"
_CCON = re.compile(r"</?ccon>", re.IGNORECASE)


def _bare_user(username: str) -> str:
    name = username.strip().lower().rpartition("\\")[2]  # CONTOSO\svc: svc
    return name.partition("@")[0]  # svc@contoso.com: svc


def account_key(binding: Binding, username: str | None) -> str:
    """The account a binding's credential signs in as, for the per-account rules.

    ``username`` is the resolved one (a JSON secret's ``username`` overrides the binding's).
    Credentials without a user (Key, SAS, Anonymous) are their own account: the secret's name;
    a ServicePrincipal's account is its application (client id).
    """
    if binding.credential_type is CredentialType.SERVICE_PRINCIPAL and binding.client_id:
        return f"app:{binding.client_id.lower()}"  # Entra ID counts sign-ins per application
    if binding.credential_type in (CredentialType.BASIC, CredentialType.WINDOWS, CredentialType.OAUTH2):
        user = _bare_user(username or binding.username or "")
        if user:
            return f"user:{user}"
    return f"secret:{binding.secret.strip().lower()}"


def source_locator(datasource_type: str | None, connection_details: Mapping[str, object] | None) -> str:
    """Where at the source a data source signs in: its server or host, lower case ("" unknown).

    Windows and Entra accounts are domain-wide, so the locator only refines *where a version
    was seen to work*; a rejection anywhere still stops the version for the whole account.
    """
    if not connection_details:
        return ""
    details = {str(k).lower(): v for k, v in connection_details.items() if isinstance(v, str)}
    for key in ("server", "host", "account", "domain"):
        if details.get(key):
            return details[key].strip().lower()
    for key in ("url", "path", "sharepointsiteurl"):
        value = details.get(key)
        if value:
            return _host_of(value)
    return ""


def presentation_locator(
    binding: Binding, server: str, target: tuple[str, str], username: str | None = None
) -> str:
    """Where an acceptance of a version licenses presenting it again without a probe.

    ``username`` is the one the credential signs in as (a JSON secret's ``username`` overrides
    the binding's); without it, the binding's.

    * A Windows account named with its domain (``CONTOSO\\svc``, ``svc@contoso.com``) is one
      directory account wherever it signs in: accepted on one server, it is right on all of them
      (``domain:<name>``).
    * Otherwise an account may be a login of each server (SQL logins have a password per
      server): the source's server (``server``, see :func:`source_locator`).
    * A server that is not known must not be shared with other targets (two of them may be two
      logins with two passwords): ``unknown:<gatewayId>/<datasourceId>``, a locator of its own.
    """
    user = binding.username if username is None else username
    if binding.credential_type is CredentialType.WINDOWS and user:
        name = user.strip().lower()
        domain = name.partition("\\")[0] if "\\" in name else name.partition("@")[2]
        if domain:
            return f"domain:{domain}"
    if server:
        return server.strip().lower()
    return f"unknown:{target[0].lower()}/{target[1].lower()}"


def _host_of(value: str) -> str:
    text = value.strip()
    if text.startswith("\\\\"):  # \\server\share
        return text[2:].partition("\\")[0].lower()
    parts = urlsplit(text)
    if parts.hostname:
        return parts.hostname.lower()
    return text.partition(";")[0].lower()


@dataclass(frozen=True)
class FailedSource:
    """The data source a refresh failure names (``DataSourceKind`` / ``DataSourcePath``)."""

    kind: str
    path: str


def failed_source(service_exception_json: str | None) -> FailedSource | None:
    """The data source a credential failure names in its details, or None when it names none.

    Reads both shapes of ``serviceExceptionJson`` (the ``pbi.error`` envelope with ``details``,
    and a flat object); never raises on malformed input.
    """
    if not service_exception_json:
        return None
    try:
        doc = json.loads(service_exception_json)
    except (ValueError, RecursionError):
        return None
    details = _details(doc)
    kind = _CCON.sub("", details.get(_KIND_DETAIL, "")).strip()
    path = _CCON.sub("", details.get(_PATH_DETAIL, "")).strip()
    if not kind and not path:
        return None
    return FailedSource(kind=kind, path=path)


def _details(doc: object) -> dict[str, str]:
    found: dict[str, str] = {}

    def walk(node: object, depth: int) -> None:
        if depth > 8:
            return
        if isinstance(node, Mapping):
            code, detail = node.get("code"), node.get("detail")
            if isinstance(code, str) and isinstance(detail, Mapping) and isinstance(detail.get("value"), str):
                found.setdefault(code, detail["value"])
            for value in node.values():
                walk(value, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)

    walk(doc, 0)
    return found


def source_matches(
    named: FailedSource, datasource_type: str | None, connection_details: Mapping[str, object] | None
) -> bool:
    """True when the data source could be the one ``named`` (kind and path agree, loosely)."""
    kind = (datasource_type or "").lower()
    if named.kind and kind and named.kind.lower() != kind:
        return False
    if not named.path:
        return True
    values = [str(v).lower() for v in (connection_details or {}).values() if isinstance(v, str) and v]
    if not values:
        return False
    parts = [part.strip() for part in named.path.lower().split(";") if part.strip()]
    if len(parts) > 1:  # "server;database": every part must be one of its details
        return all(part in values for part in parts)
    path = parts[0] if parts else ""
    return any(v == path or path in v or v in path for v in values if len(v) >= 4)


def text_map(details: object) -> dict[str, str]:
    """Connection details as strings (the API's values are strings; anything else is dropped)."""
    if not isinstance(details, Mapping):
        return {}
    return {str(k): v for k, v in details.items() if isinstance(v, str)}
