"""Fabric connections as a target kind: ``PATCH /v1/connections/{id}``.

What is particular to them (FABRIC.md; ``specs/fabric/``):

* **The body depends on the connection's ``connectivityType``.** Cloud and virtual network
  gateway connections take the credential as plain JSON fields (Basic/Windows ``username`` and
  ``password``, Key ``key``, SharedAccessSignature ``token``, ServicePrincipal ``tenantId``,
  ``servicePrincipalClientId`` and ``servicePrincipalSecret``). An on-premises gateway takes
  ``values: [{gatewayId, encryptedCredentials}]`` with **one entry per member of the cluster**,
  each encrypted with that member's own public key (``GET /gateways/{id}/members``; the scheme is
  chosen per key size by :mod:`remediation.rules.gateway_crypto`); a personal gateway takes one
  ``encryptedCredentials`` under its key (``GET /gateways/{id}``). What is encrypted is the same
  ``credentialData`` JSON as for Power BI gateway data sources.
* **``skipTestConnection`` is false**: Fabric tests the credential at the source, which is how a
  wrong value is caught, and it is a sign-in; so the PATCH is a presentation like Power BI's.
* **Partial update.** ``privacyLevel`` and ``connectionEncryption`` are sent only when the
  binding sets them (Fabric keeps what an admin chose otherwise).
* **A Key Vault reference** (``adopt``, :class:`ReferenceKind`): the PATCH carries only the
  reference ``{connectionId, secretName}`` in the field the credential type has for it
  (:func:`~remediation.rules.references.reference_field`), with the fields the reference does not
  stand for (Basic's username, a service principal's tenant and client ids), never the secret nor a
  version (Key Vault versioning breaks references). Fabric then tests it, reading the secret itself:
  the same sign-in, so the same verdicts.
* **Verdicts** are the safety core's (:mod:`remediation.safety.answers`): ``IncorrectCredentials``
  or a refused sign-in in the details (18456 under ``DM_GWPipeline_Gateway_DataSourceAccessError``)
  is a rejection; only the refusals its table proves came before any test (throttling,
  permissions, not found, ``InvalidCredentialDetails``) present nothing; everything else is in
  doubt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from remediation.clients.api_errors import ApiError
from remediation.clients.fabric import (
    Connection,
    ConnectivityType,
    FabricClient,
    GatewayMember,
)
from remediation.clients.keyvault import SecretValue
from remediation.config.bindings import Binding, CredentialType
from remediation.errors import RemediationError
from remediation.reconciler.runs import Resolved, Run
from remediation.reconciler.targets import Presented, TargetRefused, answer_of
from remediation.rules.connections import fabric_credential_type, match_refusal
from remediation.rules.credentials import ResolvedCredential, credentials_json
from remediation.rules.gateway_crypto import GatewayPublicKey, encrypt_credentials
from remediation.rules.references import reference_field
from remediation.safety.answers import Verdict, VerdictOf, verdict_of

__all__ = [
    "FabricKind",
    "FabricTarget",
    "ReferenceKind",
    "fabric_verdict",
    "reference_request",
    "update_connection_request",
]

logger = logging.getLogger(__name__)

_PLAIN = (
    ConnectivityType.SHAREABLE_CLOUD,
    ConnectivityType.PERSONAL_CLOUD,
    ConnectivityType.VIRTUAL_NETWORK_GATEWAY,
    ConnectivityType.STREAMING_VIRTUAL_NETWORK_GATEWAY,
)


class UnsupportedConnection(RemediationError):
    """The connection cannot take this binding's credential (nothing is sent); says why."""


@dataclass(frozen=True)
class FabricTarget:
    """What discovery read: the connection, and the keys its credential is encrypted with."""

    connection: Connection
    members: tuple[GatewayMember, ...] = ()  # OnPremisesGateway: every member of the cluster
    personal_key: GatewayPublicKey | None = None  # OnPremisesGatewayPersonal


def _plain_credentials(binding: Binding, resolved: ResolvedCredential) -> dict[str, object]:
    ctype = binding.credential_type
    creds: dict[str, object] = {"credentialType": fabric_credential_type(ctype)}
    if ctype in (CredentialType.BASIC, CredentialType.WINDOWS):
        creds["username"] = resolved.username
        creds["password"] = resolved.secret
    elif ctype is CredentialType.KEY:
        creds["key"] = resolved.secret
    elif ctype is CredentialType.SAS:
        creds["token"] = resolved.secret
    elif ctype is CredentialType.SERVICE_PRINCIPAL:
        creds["tenantId"] = binding.tenant_id
        creds["servicePrincipalClientId"] = binding.client_id
        creds["servicePrincipalSecret"] = resolved.secret
    else:
        raise UnsupportedConnection(f"Fabric connections take no {ctype} credential through the API")
    return creds


def update_connection_request(
    binding: Binding,
    resolved: ResolvedCredential,
    target: FabricTarget,
    *,
    encrypt: Callable[[str, GatewayPublicKey], str] = lambda text, key: encrypt_credentials(text, key),
) -> dict[str, object]:
    """The ``UpdateConnectionRequest`` for ``target`` (pure but for ``encrypt``'s randomness).

    Raises :class:`UnsupportedConnection` for a connectivity type or credential type that cannot
    be updated this way (nothing is sent).
    """
    connection = target.connection
    ctype = connection.connectivity_type
    if binding.credential_type is CredentialType.WINDOWS and ctype in _PLAIN:
        raise UnsupportedConnection(
            f"connection {connection.id} is {ctype}: Windows credentials exist only for on-premises gateways"
        )
    if ctype in _PLAIN:
        credentials = _plain_credentials(binding, resolved)
    elif ctype in (ConnectivityType.ON_PREMISES_GATEWAY, ConnectivityType.ON_PREMISES_GATEWAY_PERSONAL):
        if binding.credential_type is CredentialType.SERVICE_PRINCIPAL:
            raise UnsupportedConnection(
                f"connection {connection.id} is on an on-premises gateway; the healer sends "
                "ServicePrincipal credentials only to cloud and virtual network gateway connections"
            )
        plaintext = credentials_json(resolved)
        fabric_type = fabric_credential_type(binding.credential_type)
        if ctype == ConnectivityType.ON_PREMISES_GATEWAY:
            if not target.members:
                raise UnsupportedConnection(
                    f"gateway {connection.gateway_id} of connection {connection.id} lists no members "
                    "to encrypt for"
                )
            values = [
                {"gatewayId": m.id, "encryptedCredentials": encrypt(plaintext, m.public_key)}
                for m in target.members
            ]
            credentials = {"credentialType": fabric_type, "values": values}
        else:
            if target.personal_key is None:
                raise UnsupportedConnection(
                    f"personal gateway {connection.gateway_id} of connection {connection.id} "
                    "has no public key"
                )
            credentials = {
                "credentialType": fabric_type,
                "encryptedCredentials": encrypt(plaintext, target.personal_key),
            }
    else:
        raise UnsupportedConnection(
            f"connection {connection.id} is {ctype}; its credentials cannot be updated"
        )
    details: dict[str, object] = {"credentials": credentials, "skipTestConnection": False}
    if binding.encrypted_connection_given:
        details["connectionEncryption"] = binding.encrypted_connection.value
    body: dict[str, object] = {"connectivityType": ctype, "credentialDetails": details}
    if binding.privacy_level_given:
        body["privacyLevel"] = binding.privacy_level.value
    return body


def reference_request(
    binding: Binding,
    resolved: ResolvedCredential,
    connection: Connection,
    *,
    vault_connection_id: str,
    secret_name: str,
) -> dict[str, object]:
    """The ``UpdateConnectionRequest`` that moves ``connection`` onto a Key Vault reference to
    ``secret_name`` through the Key Vault connection ``vault_connection_id`` (pure; no secret in
    it, no version). ``skipTestConnection`` is false: Fabric reads the secret and tests it.

    Raises :class:`UnsupportedConnection` where the API has no reference field (nothing is sent).
    """
    ctype = connection.connectivity_type
    field = reference_field(binding.credential_type)
    if ctype not in _PLAIN or field is None:
        raise UnsupportedConnection(
            f"connection {connection.id} is {ctype} with {fabric_credential_type(binding.credential_type)} "
            "credentials: the API has no Key Vault reference field there"
        )
    credentials: dict[str, object] = {"credentialType": fabric_credential_type(binding.credential_type)}
    if binding.credential_type is CredentialType.BASIC:
        credentials["username"] = resolved.username
    elif binding.credential_type is CredentialType.SERVICE_PRINCIPAL:
        credentials["tenantId"] = binding.tenant_id
        credentials["servicePrincipalClientId"] = binding.client_id
    credentials[field] = {"connectionId": vault_connection_id, "secretName": secret_name}
    return {
        "connectivityType": ctype,
        "credentialDetails": {"credentials": credentials, "skipTestConnection": False},
    }


def fabric_verdict(exc: ApiError) -> VerdictOf:
    """The verdict of a connection PATCH (``skipTestConnection`` false) or ``testConnection``
    that raised ``exc``: the safety core's reading of Fabric's answer."""
    return verdict_of(answer_of("fabric", exc))


class FabricKind:
    """Fabric connections (:class:`~remediation.reconciler.targets.TargetKind`)."""

    service = "Fabric"

    def __init__(self, fabric: FabricClient) -> None:
        self.fabric = fabric

    def describe(self, item: Resolved) -> str:
        return f"connection {item.target.datasource_id}"

    def discover(self, item: Resolved, run: Run) -> FabricTarget:
        """The connection, and its cluster's member keys (on-premises) or the personal gateway's key.

        Raises :class:`~remediation.reconciler.targets.TargetRefused` for a connection a ``match`` selected
        (not named by ``connectionId``) that signs in another way, whichever path reached it."""
        connection_id = item.target.connection_id
        assert connection_id is not None
        connection = self.fabric.get_connection(connection_id)
        if not any(t.connection_id == connection_id for t in item.binding.targets):
            why = match_refusal(item.binding, connection)
            if why:
                raise TargetRefused(why)
        if connection.connectivity_type == ConnectivityType.ON_PREMISES_GATEWAY and connection.gateway_id:
            members = tuple(self.fabric.list_gateway_members(connection.gateway_id))
            return FabricTarget(connection, members=members)
        if (
            connection.connectivity_type == ConnectivityType.ON_PREMISES_GATEWAY_PERSONAL
            and connection.gateway_id
        ):
            gateway = self.fabric.get_gateway(connection.gateway_id)
            return FabricTarget(connection, personal_key=gateway.public_key)
        return FabricTarget(connection)

    def verdict(self, exc: ApiError) -> VerdictOf:
        return fabric_verdict(exc)

    def send(
        self,
        item: Resolved,
        secret: SecretValue,
        resolved: ResolvedCredential,
        found: object,
        run: Run,
        before_attempt: Callable[[], None],
    ) -> None:
        assert isinstance(found, FabricTarget)
        try:
            body = update_connection_request(item.binding, resolved, found)
        except UnsupportedConnection as exc:
            raise Presented(VerdictOf(Verdict.NOT_PRESENTED, str(exc))) from None
        self.fabric.update_connection(found.connection.id, body, before_attempt=before_attempt)


class ReferenceKind:
    """Fabric connections moved onto a Key Vault reference (``adopt``): a
    :class:`~remediation.reconciler.targets.TargetKind` whose presentation is the reference, which
    Fabric resolves and tests (one sign-in with Key Vault's current version)."""

    service = "Fabric"

    def __init__(self, fabric: FabricClient, *, vault_connection_id: str, secret_name: str) -> None:
        self.fabric = fabric
        self.vault_connection_id = vault_connection_id
        self.secret_name = secret_name

    def describe(self, item: Resolved) -> str:
        return f"connection {item.target.datasource_id}"

    def discover(self, item: Resolved, run: Run) -> FabricTarget:
        connection_id = item.target.connection_id
        assert connection_id is not None
        return FabricTarget(self.fabric.get_connection(connection_id))

    def verdict(self, exc: ApiError) -> VerdictOf:
        return fabric_verdict(exc)

    def send(
        self,
        item: Resolved,
        secret: SecretValue,
        resolved: ResolvedCredential,
        found: object,
        run: Run,
        before_attempt: Callable[[], None],
    ) -> None:
        assert isinstance(found, FabricTarget)
        try:
            body = reference_request(
                item.binding,
                resolved,
                found.connection,
                vault_connection_id=self.vault_connection_id,
                secret_name=self.secret_name,
            )
        except UnsupportedConnection as exc:
            raise Presented(VerdictOf(Verdict.NOT_PRESENTED, str(exc))) from None
        self.fabric.update_connection(found.connection.id, body, before_attempt=before_attempt)
