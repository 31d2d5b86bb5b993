"""Which Fabric connection a Power BI data source is: one rule for every module that asks.

Power BI gateway data sources are Fabric connections, but whether the ``datasourceId`` Power BI
reports *is* the connection id is unconfirmed (FABRIC.md), so both sides are handled:

1. a connection whose id is the data source's id is that data source;
2. otherwise it is the **unique** connection that corresponds to it (:func:`is_connection_of`:
   the same type, every part of the ``server;database`` path among its details, the same gateway
   for on-premises ones). None, or several, is "unknown": never a guess.

Used by :mod:`remediation.reconciler.refresher` (the connections a semantic model is bound to),
:mod:`remediation.inventory.discover` and :mod:`remediation.reconciler.targets.gateway` (a data
source's current privacy level and encryption, which only Fabric reports).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from typing import Protocol

from remediation.config.bindings import Binding, CredentialType
from remediation.rules.accounts import FailedSource, source_matches

__all__ = [
    "ConnectionFacts",
    "ConnectionLike",
    "corresponding_connection",
    "fabric_credential_type",
    "is_connection_of",
    "match_refusal",
]

_ON_PREMISES = ("OnPremisesGateway", "OnPremisesGatewayPersonal")


class ConnectionLike(Protocol):
    """What the rule reads of a connection (:class:`~remediation.clients.fabric.Connection` and
    :class:`~remediation.clients.fabric.ItemConnection` both have it)."""

    @property
    def id(self) -> str | None: ...

    @property
    def connection_type(self) -> str | None: ...

    @property
    def connectivity_type(self) -> str: ...

    @property
    def gateway_id(self) -> str | None: ...

    @property
    def path(self) -> str | None: ...


def is_connection_of(
    connection_type: str | None,
    connectivity_type: str | None,
    connection_gateway: str | None,
    path: str | None,
    datasource_type: str | None,
    gateway_id: str | None,
    connection_details: Mapping[str, object] | None,
) -> bool:
    """True when a Power BI data source (type, gateway, ``connectionDetails``) may be the Fabric
    connection (``connectionDetails.type`` and ``.path``, its gateway): the same type, every
    part of the ``server;database`` path among its details, the same gateway when on-premises."""
    if not path:
        return False
    if (
        connectivity_type in _ON_PREMISES
        and connection_gateway
        and (gateway_id or "").lower() != connection_gateway
    ):
        return False
    return source_matches(
        FailedSource(kind=connection_type or "", path=path), datasource_type, connection_details
    )


def corresponding_connection(
    datasource_id: str,
    datasource_type: str | None,
    gateway_id: str | None,
    connection_details: Mapping[str, object] | None,
    connections: Iterable[ConnectionLike],
    *,
    ids: Container[str] = (),
) -> str | None:
    """The id of the connection the data source is, or None when that is not known.

    Its own id when it is among ``ids`` or the ``connections``' ids (rule 1); else the id of the
    only one of ``connections`` that corresponds to it (rule 2)."""
    datasource_id = datasource_id.lower()
    listed = list(connections)
    if datasource_id in ids or any((c.id or "").lower() == datasource_id for c in listed):
        return datasource_id
    candidates = {
        c.id.lower()
        for c in listed
        if c.id is not None
        and is_connection_of(
            c.connection_type,
            c.connectivity_type,
            c.gateway_id,
            c.path,
            datasource_type,
            gateway_id,
            connection_details,
        )
    }
    return candidates.pop() if len(candidates) == 1 else None


class ConnectionFacts(Protocol):
    """What these rules read of a Fabric connection (:class:`remediation.clients.fabric.Connection`
    has it): its id, connector type, connectivity type and credential type."""

    @property
    def id(self) -> str: ...

    @property
    def connection_type(self) -> str | None: ...

    @property
    def connectivity_type(self) -> str: ...

    @property
    def credential_type(self) -> str | None: ...


_FABRIC_TYPE = {CredentialType.SAS: "SharedAccessSignature"}


def fabric_credential_type(credential_type: CredentialType) -> str:
    """A binding's credential type as Fabric spells it (``SAS`` is ``SharedAccessSignature``)."""
    return _FABRIC_TYPE.get(credential_type, credential_type.value)


def match_refusal(binding: Binding, connection: ConnectionFacts) -> str:
    """Why a connection a ``match`` of ``binding`` selects is not sent its secret ("" if it is):
    it signs in with another credential type, or one Fabric does not say, so maybe as another
    account. (A connection named by ``connectionId`` is the operator's explicit choice.)"""
    wanted = fabric_credential_type(binding.credential_type)
    if connection.credential_type == wanted:
        return ""
    how = f"with {connection.credential_type}" if connection.credential_type else "in a way Fabric won't say"
    return (
        f"connection {connection.id} is selected by the match of {binding.name!r}, but it signs in {how}, "
        f"not {wanted}: it may be another account, so nothing is sent; narrow the match, or bind the "
        "connection by connectionId"
    )
