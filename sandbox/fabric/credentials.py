"""What a Fabric connection's credential carries, read the way its source system checks it.

The plain fields each credential type carries (:data:`FIELDS`), a source's current credential in
those fields (:func:`source_data`: what a new connection holds, and what a Key Vault reference
resolves to when Fabric reads it), and what a ``PATCH /connections/{id}`` brings
(:func:`read_credentials`): cloud and virtual network gateway connections take plain credential
fields; an on-premises gateway connection needs one ``values`` entry per member of its cluster,
each decrypted with **that member's** private key (a missing or undecryptable entry: 400
``InvalidCredentialDetails``, nothing tested); a personal gateway one ``encryptedCredentials``.

A PATCH may carry a Key Vault reference instead of the secret (:func:`read_reference`): only in
the field the spec gives its credential type (:data:`REFERENCE_FIELDS`), only on connections whose
credentials are plain fields (on-premises gateway credentials have none), never beside the value
it stands for. What the reference resolves to is the caller's to read (``sb.fabric``).
"""

from __future__ import annotations

import logging
from typing import Any

from sandbox.connections import FabricConnection
from sandbox.credential_data import CredentialFormatError, parse_credentials
from sandbox.gateway_keys import GatewayDecryptError
from sandbox.refusals import fabric_error
from sandbox.routing import HTTPError
from sandbox.sources import SourceSystem

logger = logging.getLogger(__name__)

# Connectivity types whose PATCH carries the credential's plain fields (no gateway decrypts it).
PLAIN = ("ShareableCloud", "PersonalCloud", "VirtualNetworkGateway", "StreamingVirtualNetworkGateway")
# Fabric credential type -> the source system's (sb.sources) spelling.
SOURCE_TYPE = {"SharedAccessSignature": "SAS"}
# The plain credential fields each type carries (what the source is asked to check).
FIELDS = {
    "Basic": ("username", "password"),
    "Windows": ("username", "password"),
    "Key": ("key",),
    "SharedAccessSignature": ("token",),
    "ServicePrincipal": ("tenantId", "servicePrincipalClientId", "servicePrincipalSecret"),
}
# The field of each credential type that a Key Vault reference stands for, and the reference's own
# field (specs/fabric connections.json: BasicCredentials.passwordReference, ...). Windows and
# KeyPair credentials have none, nor do on-premises gateway credentials.
SECRET_FIELD = {
    "Basic": "password",
    "Key": "key",
    "SharedAccessSignature": "token",
    "ServicePrincipal": "servicePrincipalSecret",
}
REFERENCE_FIELDS = {kind: f"{name}Reference" for kind, name in SECRET_FIELD.items()}


def source_data(source: SourceSystem, credential_type: str) -> dict[str, str]:
    """The source's current credential in the fields of ``credential_type``."""
    secret = source.secret or ""
    if credential_type in ("Basic", "Windows"):
        return {"username": source.username or "", "password": secret}
    if credential_type == "ServicePrincipal":
        return {"servicePrincipalClientId": source.username or "", "servicePrincipalSecret": secret}
    return {"key": secret} if credential_type == "Key" else {"token": secret}


def read_reference(
    connection: FabricConnection, credential_type: str, credentials: dict[str, Any]
) -> tuple[dict[str, str], dict[str, str]] | None:
    """What a PATCH that references Key Vault carries: the plain fields the reference does not
    stand for (Basic's username, a service principal's ids) and the reference
    (``{"connectionId", "secretName"[, "version"]}``); None when it carries no reference."""

    def invalid(message: str) -> HTTPError:
        return HTTPError(400, fabric_error("InvalidCredentialDetails", message))

    given = sorted(k for k in credentials if k.endswith("Reference"))
    if not given:
        return None
    if connection.connectivity_type not in PLAIN:
        raise invalid(f"{connection.connectivity_type} credentials take no Key Vault reference.")
    field = REFERENCE_FIELDS.get(credential_type)
    if field is None or given != [field]:
        raise invalid(f"{credential_type} credentials take no {', '.join(given)}.")
    secret = SECRET_FIELD[credential_type]
    if secret in credentials:
        raise invalid(f"Use {secret} or {field}. You can't use both at the same time.")
    names = [n for n in FIELDS[credential_type] if n != secret]
    missing = [n for n in names if not isinstance(credentials.get(n), str) or not credentials[n]]
    if missing:
        raise invalid(f"credentials is missing {', '.join(missing)}.")
    raw = credentials[field]
    reference = {"connectionId": str(raw["connectionId"]).lower(), "secretName": str(raw["secretName"])}
    if raw.get("version"):
        reference["version"] = str(raw["version"])
    return {n: credentials[n] for n in names}, reference


def read_credentials(
    connection: FabricConnection, credential_type: str, credentials: dict[str, Any]
) -> dict[str, str]:
    """The name/value pairs the PATCH carries: plain fields, or decrypted by every member."""

    def invalid(message: str) -> HTTPError:
        return HTTPError(400, fabric_error("InvalidCredentialDetails", message))

    ctype = connection.connectivity_type
    if ctype in PLAIN:
        if credential_type == "Windows":
            raise invalid("Windows credentials are only supported for on-premises gateways.")
        names = FIELDS.get(credential_type)
        if names is None:
            raise invalid(f"Credential type {credential_type} cannot be set through this API.")
        missing = [n for n in names if not isinstance(credentials.get(n), str) or not credentials[n]]
        if missing:
            raise invalid(f"credentials is missing {', '.join(missing)}.")
        data = {n: credentials[n] for n in names}
        connection.received.append(dict(data))
        return data
    gateway = connection.gateway
    assert gateway is not None
    source_type = SOURCE_TYPE.get(credential_type, credential_type)
    if ctype == "OnPremisesGatewayPersonal":
        if "encryptedCredentials" not in credentials:
            raise invalid("A personal gateway connection takes one encryptedCredentials.")
        blobs = {gateway.members[0].id: credentials["encryptedCredentials"]}
    else:
        values = credentials.get("values") or []
        blobs = {str(v["gatewayId"]).lower(): v["encryptedCredentials"] for v in values}
        missing = [m.id for m in gateway.members if m.id not in blobs]
        extra = sorted(set(blobs) - {m.id for m in gateway.members})
        if missing or extra:
            raise invalid(
                f"values must have one entry per member of gateway {gateway.id}: "
                f"missing {missing}, not members {extra}."
            )
    decoded: list[dict[str, str]] = []
    for member in gateway.members:
        try:
            plaintext = member.keys.decrypt(blobs[member.id])
            decoded.append(parse_credentials(source_type, plaintext))
        except (GatewayDecryptError, CredentialFormatError) as exc:
            logger.info("sandbox fabric: member %s refused credentials: %s", member.id, exc)
            raise invalid(f"Gateway member {member.id} could not decrypt its credentials.") from None
    if any(d != decoded[0] for d in decoded):
        raise invalid("The members of the gateway received different credentials.")
    connection.received.append(dict(decoded[0]))
    return decoded[0]
