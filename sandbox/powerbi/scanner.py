"""The admin scanner APIs: ``admin/workspaces/getInfo``, ``scanStatus`` and ``scanResult``.

They are refused to every principal unless it is in :attr:`Scanner.admin_principals` (the tenant
setting "Service principals can access read-only admin APIs" with the principal in its allowed
security group, and no Power BI admin-consent permission on the app): 401
``PowerBINotAuthorizedException`` (what callers report; :attr:`Scanner.admin_refusal_status`
makes it 403). ``getInfo`` takes 1 to 100 workspace GUIDs (else 400), scans every workspace of
the tenant whatever the caller's membership (unknown ids are left out of the result), and
answers 202 ``NotStarted``; ``scanStatus`` answers ``Running`` :attr:`Scanner.scan_polls` times,
then :attr:`Scanner.scan_outcome` (``Succeeded``, or ``Failed`` with an ``error``);
``scanResult`` is 400 until a poll has reported ``Succeeded``. ``datasourceUsages`` appear only
with ``lineage=True``, ``datasourceInstances`` only with ``datasourceDetails=True`` (the
swagger's shapes: ``WorkspaceInfoResponse``). Another principal's scan id is 404.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from sandbox.entra import Entra, TokenInfo
from sandbox.host import Host
from sandbox.powerbi.tenant import Tenant, contains, same
from sandbox.powerbi.wire import (
    GUID,
    NOT_AUTHORIZED,
    bad_request,
    iso,
    json_body,
    not_found,
    path_id,
    query_true,
    validate_body,
)
from sandbox.refusals import pbi_error
from sandbox.routing import HTTPError, Request, Response
from sandbox.sources import Sources


@dataclass(eq=False)
class Scan:
    """One ``getInfo`` request: what it scanned (a snapshot taken when it was asked)."""

    id: str
    principal: str
    created: float
    result: dict[str, Any] = field(repr=False)
    polls_left: int
    outcome: str
    reported: str = "NotStarted"


class Scanner(Tenant):
    """The admin scanner: who may call it, how a scan goes, and its routes."""

    def __init__(self, host: Host, entra: Entra, sources: Sources) -> None:
        super().__init__(host, entra, sources)
        self.admin_principals: set[str] = set()
        self.admin_refusal_status = 401
        self.scan_polls = 1  # scanStatus answers "Running" this many times, then the outcome
        self.scan_outcome = "Succeeded"  # or "Failed"
        # Datasets a scan result lists without ``datasourceUsages`` (the real service omits them
        # for some datasets): the product must not read that as "no data sources".
        self.scan_omits_usages: set[str] = set()
        self.scans: dict[str, Scan] = {}

    def _admin(self, request: Request) -> TokenInfo:
        caller = self._authenticate(request)
        if not contains(self.admin_principals, caller.principal):
            raise HTTPError(self.admin_refusal_status, pbi_error(NOT_AUTHORIZED))
        return caller

    def _scan_get_info(self, request: Request) -> Response:
        caller = self._admin(request)
        body = json_body(request, required=True)
        validate_body("WorkspaceInfo_PostWorkspaceInfo", body)
        ids = body.get("workspaces")
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            raise bad_request("'workspaces' must list 1 to 100 workspace ids.")
        if not all(isinstance(i, str) and GUID.fullmatch(i) for i in ids):
            raise bad_request("Every workspace id must be a GUID.")
        lineage, details = query_true(request, "lineage"), query_true(request, "datasourceDetails")
        with self._lock:
            result = self._scan_snapshot([i.lower() for i in ids], lineage=lineage, details=details)
            scan = Scan(
                str(uuid.uuid4()),
                caller.principal,
                self._host.clock.now(),
                result,
                max(self.scan_polls, 0),
                self.scan_outcome,
            )
            self.scans[scan.id] = scan
        return Response(
            202, self._scan_json(scan), {"Location": f"{self.api_url}/admin/workspaces/scanStatus/{scan.id}"}
        )

    def _scan_snapshot(self, ids: list[str], *, lineage: bool, details: bool) -> dict[str, Any]:
        workspaces, instances = [], {}
        for workspace_id in dict.fromkeys(ids):
            workspace = self.workspaces.get(workspace_id)
            if workspace is None:
                continue
            datasets = []
            for dataset in workspace.datasets.values():
                entry: dict[str, Any] = {
                    "id": dataset.id,
                    "name": dataset.name,
                    "configuredBy": dataset.owner,
                    "targetStorageMode": "Abf",
                    "CreatedDate": iso(dataset.created),
                }
                if lineage:
                    entry["upstreamDataflows"] = []
                    if dataset.id not in self.scan_omits_usages:
                        entry["datasourceUsages"] = [
                            {"datasourceInstanceId": d.id} for d in dataset.datasources
                        ]
                for d in dataset.datasources:
                    instances[d.id] = {
                        "datasourceType": d.datasource_type,
                        "connectionDetails": dict(d.connection_details),
                        "datasourceId": d.id,
                        "gatewayId": d.gateway.id,
                    }
                datasets.append(entry)
            workspaces.append(
                {
                    "id": workspace.id,
                    "name": workspace.name,
                    "type": "Workspace",
                    "state": "Active",
                    "isOnDedicatedCapacity": workspace.dedicated_capacity,
                    "datasets": datasets,
                }
            )
        result: dict[str, Any] = {"workspaces": workspaces}
        if details:
            result["datasourceInstances"] = list(instances.values())
            result["misconfiguredDatasourceInstances"] = []
        return result

    @staticmethod
    def _scan_json(scan: Scan) -> dict[str, Any]:
        body: dict[str, Any] = {"id": scan.id, "createdDateTime": iso(scan.created), "status": scan.reported}
        if scan.reported == "Failed":
            body["error"] = {"code": "ScanFailed", "message": "The scan failed; try again later."}
        return body

    def _scan(self, request: Request) -> Scan:
        caller = self._admin(request)
        scan_id = path_id(request, "scan")
        scan = self.scans.get(scan_id)
        if scan is None or not same(scan.principal, caller.principal):
            raise not_found()
        return scan

    def _scan_status(self, request: Request) -> Response:
        with self._lock:
            scan = self._scan(request)
            if scan.polls_left > 0:
                scan.polls_left -= 1
                scan.reported = "Running"
            else:
                scan.reported = scan.outcome
            body = self._scan_json(scan)
        return Response(200, body)

    def _scan_result(self, request: Request) -> Response:
        with self._lock:
            scan = self._scan(request)
            if scan.reported != "Succeeded":
                raise bad_request("The scan has not succeeded; ask its status first.")
            body = json.loads(json.dumps(scan.result))
        return Response(200, body)
