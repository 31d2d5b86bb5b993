"""Fabric REST stand-in (``sb.fabric``): connections and gateways under ``/v1``.

- :mod:`~sandbox.fabric.service`: :class:`Fabric`, its routes and what they decide;
- :mod:`~sandbox.fabric.credentials`: what a connection's credential carries, and reading a PATCH's.

The connections and gateway clusters are data Fabric shares with Power BI:
:mod:`sandbox.connections`.
"""

from sandbox.connections import FabricConnection, FabricGateway, GatewayMember
from sandbox.fabric.service import FABRIC_AUDIENCE, Fabric

__all__ = ["FABRIC_AUDIENCE", "Fabric", "FabricConnection", "FabricGateway", "GatewayMember"]
