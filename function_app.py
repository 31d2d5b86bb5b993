"""Azure Functions entry point (Python v2 programming model).

Thin adapters only: each trigger becomes a command for the healer in ``remediation/``. The
triggers (Key Vault Event Grid events, refresh-failure events, the timer sweep and the HTTP
API) are registered here as they are built; see the README for what is deployed today.
"""

from __future__ import annotations

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
