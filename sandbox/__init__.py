"""Local stand-ins for Entra ID, Key Vault, Power BI, Fabric and Application Insights, over real HTTPS.

:class:`Sandbox` (:mod:`sandbox.world`) builds them all; its modules, from the top down:

- ``world``: the sandbox, its rotations, and the product's environment pointing at it;
  ``demo``, ``demo_world``, ``__main__``: ``make demo`` and ``python -m sandbox``;
- the stand-ins: ``fabric/`` (Fabric connections and gateways), ``powerbi/`` (Power BI REST, one
  module per API area), ``keyvault`` (Key Vault secrets and their events), ``entra/`` (Entra ID:
  directory, token endpoint, discovery, managed identity), ``appinsights`` (ingestion);
- what stand-ins share: ``connections`` (Fabric's connections, which Power BI's models are bound
  to), ``credential_data`` (the ``credentials`` string both decode), ``sources`` (the systems
  behind the data sources), ``accounts`` (who signs in, and lockout), ``refusals`` (every shape
  of a refused sign-in), ``gateway_keys`` (the gateway's RSA keys), ``specs`` (Microsoft's specs);
- the server: ``host`` (what a stand-in is given: router, url, clock), ``server`` (HTTPS),
  ``routing`` (requests, answers, routes), ``faults``, ``recorder``, ``tls``, ``clock``.
"""

from sandbox.clock import Clock, ManualClock
from sandbox.world import Sandbox

__all__ = ["Clock", "ManualClock", "Sandbox"]
