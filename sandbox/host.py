"""What a stand-in is given by the world it is served in (:class:`~sandbox.world.Sandbox` is one).

Every stand-in registers its routes on the shared router, tells its address (a URL it hands out
in answers and environments, known once the server has started) and reads time from the
sandbox's clock. Nothing more: the other stand-ins a service talks to are given to it by name
in its constructor (``KeyVault(host, entra)``), so each module imports only what lies below it.
"""

from __future__ import annotations

from typing import Protocol

from sandbox.clock import Clock
from sandbox.routing import Router


class Host(Protocol):
    """The shared router, the address (``https://127.0.0.1:PORT``, no trailing slash), the clock."""

    @property
    def router(self) -> Router: ...

    @property
    def url(self) -> str: ...

    @property
    def clock(self) -> Clock: ...
