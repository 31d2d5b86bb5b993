"""Fabric's connections and gateway clusters, as data: what Fabric and Power BI share.

``sb.fabric`` (:mod:`sandbox.fabric`) holds and serves them. ``sb.powerbi``
(:mod:`sandbox.powerbi`) binds semantic models to them (``add_dataset(connections=...)``): its
dataset's data sources list shows each, and a refresh signs in through each with the credential
it holds. For those two things Power BI asks Fabric, through a :class:`FabricLink` that the
sandbox gives it once both exist (Fabric, which reads Power BI's workspaces and gateways, is
built on top of Power BI, never the other way round).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sandbox.accounts import Cause
from sandbox.gateway_keys import GatewayKeyPair
from sandbox.refusals import FabricRefusal
from sandbox.sources import CheckResult, SourceSystem

__all__ = ["FabricConnection", "FabricGateway", "FabricLink", "GatewayMember", "KeyVaultConnection"]


@dataclass(eq=False)
class GatewayMember:
    """One member of a gateway cluster: its own key pair."""

    id: str
    name: str
    keys: GatewayKeyPair = field(repr=False)
    enabled: bool = True


@dataclass(eq=False)
class FabricGateway:
    """An on-premises gateway cluster (or a personal gateway: one member, type ``OnPremisesPersonal``)."""

    id: str
    name: str
    type: str
    members: list[GatewayMember]
    admins: set[str] = field(default_factory=set)


@dataclass(eq=False)
class FabricConnection:
    """A connection and the source system its credential signs in to."""

    id: str
    display_name: str
    connectivity_type: str
    source: SourceSystem = field(repr=False)
    credential_type: str
    gateway: FabricGateway | None = None
    connection_type: str = "SQL"
    path: str = ""
    privacy_level: str = "Organizational"
    connection_encryption: str = "Encrypted"
    users: set[str] = field(default_factory=set)
    key_vault_reference: dict[str, str] | None = None  # {"connectionId", "secretName"[, "version"]}, no copy
    data: dict[str, str] = field(default_factory=dict, repr=False)  # the stored copy (with a reference:
    # only the fields the reference does not stand for, e.g. Basic's username)
    updates: int = 0  # accepted PATCHes
    reference_overwritten: int = 0  # PATCHes that replaced a Key Vault reference with a copy
    references_set: int = 0  # accepted PATCHes that put a Key Vault reference in place
    received: list[dict[str, Any]] = field(default_factory=list, repr=False)  # decrypted per PATCH
    refusal: FabricRefusal = "incorrect-credentials"  # how a refused sign-in is answered (set_refusal)


@dataclass(eq=False)
class KeyVaultConnection:
    """A Key Vault connection ("Azure Key Vault reference" in Manage connections and gateways):
    what a connection's ``*Reference`` points at with its ``connectionId``. It reads ``vault_url``
    (the sandbox's vault when that is its URL) with an OAuth 2.0 sign-in of its own.

    ``public_network``: False plays a vault that refuses the public network (Fabric reads
    references from there); ``sign_in_expired``: True plays its OAuth 2.0 sign-in lapsed."""

    id: str
    display_name: str
    vault_url: str
    users: set[str] = field(default_factory=set)
    public_network: bool = True
    sign_in_expired: bool = False


class FabricLink(Protocol):
    """What Power BI asks Fabric about a connection a semantic model is bound to."""

    def sign_in(self, connection: FabricConnection, *, cause: Cause = "refresh") -> CheckResult:
        """One sign-in at the connection's source with what the connection holds (it counts)."""
        ...

    def powerbi_datasource_json(self, connection: FabricConnection) -> dict[str, Any]:
        """How Power BI's dataset data sources list shows a source bound to ``connection``."""
        ...

    def reference_failure(self, connection: FabricConnection) -> dict[str, Any] | None:
        """Why ``connection``'s Key Vault reference cannot be read now, as Power BI's error envelope
        for a refresh's ``serviceExceptionJson`` (None: no reference, or it reads fine)."""
        ...
