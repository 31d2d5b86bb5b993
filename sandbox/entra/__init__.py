"""Entra ID stand-in (``sb.entra``): a directory, its token endpoint, and what the SDKs call.

- :mod:`~sandbox.entra.directory`: principals and the tokens issued to them (and their audiences);
- :mod:`~sandbox.entra.oauth`: the token endpoint (client authentication, grants, OAuth errors);
- :mod:`~sandbox.entra.service`: :class:`Entra`, its routes, discovery, user realm, managed identity.
"""

from sandbox.entra.directory import (
    KEYVAULT_AUDIENCE,
    POWERBI_AUDIENCE,
    App,
    ManagedIdentity,
    TokenInfo,
    TokenRejected,
    User,
)
from sandbox.entra.service import Entra

__all__ = [
    "KEYVAULT_AUDIENCE",
    "POWERBI_AUDIENCE",
    "App",
    "Entra",
    "ManagedIdentity",
    "TokenInfo",
    "TokenRejected",
    "User",
]
