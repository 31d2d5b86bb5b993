"""Power BI REST stand-in (``sb.powerbi``), one module per part:

- :mod:`~sandbox.powerbi.service`: :class:`PowerBI`, the route table (and what it serves);
- :mod:`~sandbox.powerbi.workspaces`: workspaces, datasets and their data sources, Take Over;
- :mod:`~sandbox.powerbi.refreshes`: refreshes, the daily quota, refresh schedules;
- :mod:`~sandbox.powerbi.gateways`: gateways, data sources, status checks, credential updates;
- :mod:`~sandbox.powerbi.scanner`: the admin scanner APIs;
- :mod:`~sandbox.powerbi.tenant`: the state and switches they share, callers, sign-ins;
- :mod:`~sandbox.powerbi.models`: workspaces, datasets, gateways, data sources, refreshes;
- :mod:`~sandbox.powerbi.wire`: error codes and bodies, reading requests.
"""

from sandbox.powerbi.models import Dataset, Datasource, Gateway, Workspace
from sandbox.powerbi.service import PowerBI
from sandbox.powerbi.wire import GATEWAY_UNREACHABLE, UNKNOWN_GATEWAY_ERROR
from sandbox.refusals import INVALID_CONNECTION_CREDENTIALS, pbi_error  # what Power BI answers with

__all__ = [
    "GATEWAY_UNREACHABLE",
    "INVALID_CONNECTION_CREDENTIALS",
    "UNKNOWN_GATEWAY_ERROR",
    "Dataset",
    "Datasource",
    "Gateway",
    "PowerBI",
    "Workspace",
    "pbi_error",
]
