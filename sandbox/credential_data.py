"""The ``credentials`` string of Power BI's credential API, decoded strictly into name/value pairs.

``{"credentialData": [{"name": "username", "value": ...}, ...]}``: what a Power BI data source's
``PATCH`` carries (in the clear for a cloud source, encrypted to the gateway's key for an
on-premises one), and what each member of a Fabric gateway cluster decrypts from its share of a
connection's ``PATCH``. Power BI (:mod:`sandbox.powerbi.gateways`) and Fabric
(:mod:`sandbox.fabric`) both read it with :func:`parse_credentials`.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["CREDENTIAL_NAMES", "CredentialFormatError", "parse_credentials"]

# credentialData names each credential type takes (strict: exactly these, once each).
CREDENTIAL_NAMES: dict[str, tuple[str, ...]] = {
    "Basic": ("username", "password"),
    "Windows": ("username", "password"),
    "Key": ("key",),
    "SAS": ("token",),
    "OAuth2": ("accessToken",),
    "Anonymous": (),
}


class CredentialFormatError(Exception):
    """The ``credentials`` string is not what the credential type needs (message safe to show)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def parse_credentials(credential_type: str, text: str, *, caller_identity: bool = False) -> dict[str, str]:
    """Decode a ``credentials`` string strictly into ``{name: value}``.

    ``{"credentialData": [{"name": ..., "value": ...}, ...]}`` with exactly the names the type
    needs; Anonymous (and OAuth2 with ``useCallerAADIdentity``) take ``""`` or ``[]``. Raises
    :class:`CredentialFormatError` with a message that never contains a submitted value.
    """
    try:
        doc = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_pairs)
    except (ValueError, TypeError):
        raise CredentialFormatError("credentials is not a strict JSON document") from None
    if not isinstance(doc, dict) or set(doc) != {"credentialData"}:
        raise CredentialFormatError("credentials must be an object with exactly 'credentialData'")
    data = doc["credentialData"]
    names = () if caller_identity else CREDENTIAL_NAMES.get(credential_type, ())
    if not names:
        if data not in ("", []):
            raise CredentialFormatError(
                f"credentialData must be empty for {credential_type}"
                + (" with useCallerAADIdentity" if caller_identity else "")
            )
        return {}
    if not isinstance(data, list):
        raise CredentialFormatError("credentialData must be an array of {name, value}")
    found: dict[str, str] = {}
    for entry in data:
        if (
            not isinstance(entry, dict)
            or set(entry) != {"name", "value"}
            or not isinstance(entry["name"], str)
            or not isinstance(entry["value"], str)
        ):
            raise CredentialFormatError('each credentialData entry must be {"name": str, "value": str}')
        if entry["name"] in found:
            raise CredentialFormatError(f"credentialData names '{entry['name']}' twice")
        found[entry["name"]] = entry["value"]
    if sorted(found) != sorted(names):
        raise CredentialFormatError(f"{credential_type} credentialData needs exactly: {', '.join(names)}")
    return found
