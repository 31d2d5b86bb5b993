"""Power BI REST stand-in (``sb.powerbi``): workspaces, datasets, gateways, data source
credentials, refreshes and the admin scanner of one tenant.

It serves ``/v1.0/myorg/...`` in the shapes of Microsoft's swagger (``specs/powerbi``) and
behaves the way the platform does where the healer depends on it (DESIGN.md, "Facts of the
platform"): on-premises gateways hold a real RSA key and decrypt what they receive, every
credential update is tested against the source system (whose account counts failed sign-ins
from every cause -- update tests, refreshes, status checks -- and locks out; see
:mod:`sandbox.accounts`), refreshes sign in with the *stored* credential and fail when it is
stale, and a credential failure switches the refresh schedule off.

:class:`PowerBI` is one object: the tenant (:mod:`~sandbox.powerbi.tenant`: state, switches,
callers, sign-ins) with one part per API area, each in its own module with the behaviours it had
to decide: :mod:`~sandbox.powerbi.workspaces`, :mod:`~sandbox.powerbi.refreshes`,
:mod:`~sandbox.powerbi.gateways`, :mod:`~sandbox.powerbi.scanner`. Error shapes are in
:mod:`~sandbox.powerbi.wire`. This module only serves them: the route table, the ``RequestId``
of every answer, and 404/405 for anything else.

Routes (service ``"powerbi"``; the names are stable, tests and fault injection use them)::

    powerbi.get_groups               GET    /groups                       ($filter subset, $top, $skip)
    powerbi.get_datasets             GET    /groups/{g}/datasets
    powerbi.get_dataset              GET    /groups/{g}/datasets/{d}
    powerbi.get_datasources          GET    /groups/{g}/datasets/{d}/datasources
    powerbi.take_over                POST   /groups/{g}/datasets/{d}/Default.TakeOver
    powerbi.refresh_dataset          POST   /groups/{g}/datasets/{d}/refreshes
    powerbi.refresh_history          GET    /groups/{g}/datasets/{d}/refreshes   ($top)
    powerbi.refresh_details          GET    /groups/{g}/datasets/{d}/refreshes/{requestId}
    powerbi.get_refresh_schedule     GET    /groups/{g}/datasets/{d}/refreshSchedule
    powerbi.update_refresh_schedule  PATCH  /groups/{g}/datasets/{d}/refreshSchedule
    powerbi.get_gateways             GET    /gateways
    powerbi.get_gateway              GET    /gateways/{gw}
    powerbi.get_gateway_datasources  GET    /gateways/{gw}/datasources
    powerbi.get_gateway_datasource   GET    /gateways/{gw}/datasources/{ds}
    powerbi.get_datasource_status    GET    /gateways/{gw}/datasources/{ds}/status
    powerbi.update_datasource        PATCH  /gateways/{gw}/datasources/{ds}
    powerbi.scan_get_info            POST   /admin/workspaces/getInfo      (lineage, datasourceDetails)
    powerbi.scan_status              GET    /admin/workspaces/scanStatus/{scanId}
    powerbi.scan_result              GET    /admin/workspaces/scanResult/{scanId}
    powerbi.unknown                  any    anything else under /v1.0/myorg (404, or 405)
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from sandbox.entra import Entra
from sandbox.host import Host
from sandbox.powerbi.gateways import Gateways
from sandbox.powerbi.refreshes import Refreshes
from sandbox.powerbi.scanner import Scanner
from sandbox.powerbi.wire import fault_body
from sandbox.powerbi.workspaces import Workspaces
from sandbox.routing import HTTPError, Request, Response
from sandbox.sources import Sources

_BASE = r"/v1\.0/myorg"
_SEGMENT = r"(?P<{}>[^/]+)"


class PowerBI(Workspaces, Refreshes, Gateways, Scanner):
    """The Power BI service of one tenant (see the module docstring for what it decides)."""

    def __init__(self, host: Host, entra: Entra, sources: Sources) -> None:
        super().__init__(host, entra, sources)
        self._route_patterns: list[re.Pattern[str]] = []
        self._register_routes()

    def _register_routes(self) -> None:
        names = ("group", "dataset", "gateway", "datasource", "refresh")
        g, d, gw, ds, r = (_SEGMENT.format(n) for n in names)
        dataset = f"/groups/{g}/datasets/{d}"
        datasource = f"/gateways/{gw}/datasources/{ds}"
        routes: list[tuple[str, str, str, Callable[[Request], Response]]] = [
            ("get_groups", "GET", "/groups", self._get_groups),
            ("get_datasets", "GET", f"/groups/{g}/datasets", self._get_datasets),
            ("get_dataset", "GET", dataset, self._get_dataset),
            ("get_datasources", "GET", f"{dataset}/datasources", self._get_datasources),
            ("take_over", "POST", f"{dataset}/Default\\.TakeOver", self._take_over),
            ("refresh_dataset", "POST", f"{dataset}/refreshes", self._refresh_dataset),
            ("refresh_history", "GET", f"{dataset}/refreshes", self._refresh_history),
            ("refresh_details", "GET", f"{dataset}/refreshes/{r}", self._refresh_details),
            ("get_refresh_schedule", "GET", f"{dataset}/refreshSchedule", self._get_refresh_schedule),
            ("update_refresh_schedule", "PATCH", f"{dataset}/refreshSchedule", self._update_refresh_schedule),
            ("get_gateways", "GET", "/gateways", self._get_gateways),
            ("get_gateway", "GET", f"/gateways/{gw}", self._get_gateway),
            ("get_gateway_datasources", "GET", f"/gateways/{gw}/datasources", self._get_gateway_datasources),
            ("get_gateway_datasource", "GET", datasource, self._get_gateway_datasource),
            ("get_datasource_status", "GET", f"{datasource}/status", self._get_datasource_status),
            ("update_datasource", "PATCH", datasource, self._update_datasource),
            ("scan_get_info", "POST", "/admin/workspaces/getInfo", self._scan_get_info),
            (
                "scan_status",
                "GET",
                f"/admin/workspaces/scanStatus/{_SEGMENT.format('scan')}",
                self._scan_status,
            ),
            (
                "scan_result",
                "GET",
                f"/admin/workspaces/scanResult/{_SEGMENT.format('scan')}",
                self._scan_result,
            ),
        ]
        for name, method, pattern, handler in routes:
            self._route_patterns.append(re.compile(_BASE + pattern, re.IGNORECASE))
            self._host.router.add(
                "powerbi", f"powerbi.{name}", method, _BASE + pattern, self._wrap(handler), fault_body
            )
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            self._host.router.add(
                "powerbi",
                "powerbi.unknown",
                method,
                _BASE + r"(?:/.*)?",
                self._wrap(self._unknown),
                fault_body,
            )

    @staticmethod
    def _wrap(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        """Every answer carries a ``RequestId`` header, as Power BI's do."""

        def serve(request: Request) -> Response:
            request_id = str(uuid.uuid4())
            try:
                response = handler(request)
            except HTTPError as exc:
                exc.headers.setdefault("RequestId", request_id)
                raise
            response.headers.setdefault("RequestId", request_id)
            return response

        return serve

    def _unknown(self, request: Request) -> Response:
        if any(p.fullmatch(request.path) for p in self._route_patterns):
            raise HTTPError(
                405,
                {
                    "error": {
                        "code": "MethodNotAllowed",
                        "message": f"The requested resource does not support http method '{request.method}'.",
                    }
                },
            )
        raise HTTPError(
            404,
            {
                "error": {
                    "code": "NotFound",
                    "message": "No HTTP resource was found that matches the request URI.",
                }
            },
        )
