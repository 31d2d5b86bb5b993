"""Workspaces (groups), their datasets and the datasets' data sources, and Take Over.

* **Get Groups** takes ``$top``, ``$skip`` and the subset of OData ``$filter`` its examples use.
* **Data sources** of a dataset: those on gateways, then one per Fabric connection the model is
  bound to, as Fabric shows them to Power BI (:class:`sandbox.connections.FabricLink`). A
  dataset's ``isOnPremGatewayRequired`` is true iff one of its data sources is on an on-premises
  gateway.
* **Take Over** makes the caller the owner and resets the stored credentials of the dataset's
  cloud data sources (refreshes then fail with ``CredentialsNotSpecified`` until someone sets
  them again); data sources on an on-premises gateway keep theirs.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from sandbox.connections import FabricConnection
from sandbox.powerbi.models import Dataset, Datasource, RefreshSchedule, Workspace
from sandbox.powerbi.tenant import Tenant, contains
from sandbox.powerbi.wire import bad_request, int_param, iso
from sandbox.routing import Request, Response

logger = logging.getLogger(__name__)


class Workspaces(Tenant):
    """Workspaces and datasets: world building and routes."""

    # -- world building (tests) ------------------------------------------------------------------
    def add_workspace(
        self, name: str, *, members: Iterable[str] = (), dedicated_capacity: bool = False
    ) -> Workspace:
        """A workspace; only ``members`` (token principals) see it and act in it."""
        workspace = Workspace(
            str(uuid.uuid4()),
            name,
            set(members),
            dedicated_capacity,
            str(uuid.uuid4()) if dedicated_capacity else None,
        )
        with self._lock:
            self.workspaces[workspace.id] = workspace
        return workspace

    def add_member(self, workspace: Workspace, principal: str) -> None:
        with self._lock:
            workspace.members.add(principal)

    def add_dataset(
        self,
        workspace: Workspace,
        name: str,
        datasources: Iterable[Datasource] = (),
        *,
        owner: str = "owner@contoso.com",
        schedule_enabled: bool = True,
        refresh_seconds: float | None = None,
        connections: Iterable[FabricConnection] = (),
    ) -> Dataset:
        """A dataset using ``datasources`` (and bound to Fabric ``connections``), configured by
        ``owner`` (a token principal)."""
        with self._lock:
            dataset = Dataset(
                id=str(uuid.uuid4()),
                name=name,
                workspace=workspace,
                datasources=list(datasources),
                connections=list(connections),
                owner=owner,
                schedule=RefreshSchedule(enabled=schedule_enabled),
                refresh_seconds=refresh_seconds,
                refresh_limit=None if workspace.dedicated_capacity else self.shared_refresh_limit,
                created=self._host.clock.now(),
            )
            workspace.datasets[dataset.id] = dataset
            return dataset

    # -- routes ----------------------------------------------------------------------------------
    def _get_groups(self, request: Request) -> Response:
        caller = self._authenticate(request)
        top = int_param(request, "$top", minimum=0)
        skip = int_param(request, "$skip", minimum=0) or 0
        matches = _odata_filter(request.query_ci("$filter"))
        with self._lock:
            groups = [
                self._group_json(w) for w in self.workspaces.values() if contains(w.members, caller.principal)
            ]
        groups = [g for g in groups if matches(g)][skip:]
        if top is not None:
            groups = groups[:top]
        return Response(200, self._odata("groups", groups))

    def _get_datasets(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            workspace = self._workspace(caller, request)
            value = [self._dataset_json(d) for d in workspace.datasets.values()]
        return Response(200, self._odata(f"groups('{workspace.id}')/datasets", value))

    def _get_dataset(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            dataset = self._dataset(caller, request)
            body = self._dataset_json(dataset)
        context = f"{self.api_url}/$metadata#groups('{dataset.workspace.id}')/datasets/$entity"
        return Response(200, {"@odata.context": context, **body})

    def _get_datasources(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            dataset = self._dataset(caller, request)
            value = [
                {
                    "datasourceType": d.datasource_type,
                    "connectionDetails": dict(d.connection_details),
                    "datasourceId": d.id,
                    "gatewayId": d.gateway.id,
                }
                for d in dataset.datasources
            ]
            value += [self._fabric_link().powerbi_datasource_json(c) for c in dataset.connections]
        return Response(200, self._odata("datasources", value))

    def _take_over(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            dataset = self._dataset(caller, request)
            previous, dataset.owner = dataset.owner, caller.principal
            # The new owner must give the cloud sources its own credentials: Power BI resets them.
            # (On-premises gateway data sources keep theirs; the gateway holds them.)
            reset = [d for d in dataset.datasources if d.gateway.cloud]
            for datasource in reset:
                datasource.credential = None
        logger.info(
            "sandbox powerbi: %s took over dataset %s from %s; reset the credentials of %d cloud "
            "data sources",
            caller.principal,
            dataset.id,
            previous,
            len(reset),
        )
        return Response(200)

    # -- JSON shapes -----------------------------------------------------------------------------
    @staticmethod
    def _group_json(workspace: Workspace) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": workspace.id,
            "isReadOnly": False,
            "isOnDedicatedCapacity": workspace.dedicated_capacity,
            "type": "Workspace",
            "name": workspace.name,
        }
        if workspace.capacity_id:
            body["capacityId"] = workspace.capacity_id
        return body

    @staticmethod
    def _dataset_json(dataset: Dataset) -> dict[str, Any]:
        base = f"https://app.powerbi.com/groups/{dataset.workspace.id}"
        return {
            "id": dataset.id,
            "name": dataset.name,
            "webUrl": f"{base}/datasets/{dataset.id}",
            "addRowsAPIEnabled": False,
            "configuredBy": dataset.owner,
            "isRefreshable": True,
            "isEffectiveIdentityRequired": False,
            "isEffectiveIdentityRolesRequired": False,
            "isOnPremGatewayRequired": any(not d.gateway.cloud for d in dataset.datasources),
            "targetStorageMode": "Abf",
            "createdDate": iso(dataset.created),
            "createReportEmbedURL": f"https://app.powerbi.com/reportEmbed?config={dataset.id}",
            "qnaEmbedURL": f"https://app.powerbi.com/qnaEmbed?config={dataset.id}",
            "upstreamDatasets": [],
            "users": [],
        }


_FILTER_EQ = re.compile(r"(name|id|type)\s+eq\s+'((?:[^']|'')*)'", re.IGNORECASE)
_FILTER_CONTAINS = re.compile(r"contains\(\s*name\s*,\s*'((?:[^']|'')*)'\s*\)", re.IGNORECASE)
_FILTER_BOOL = re.compile(r"(isReadOnly|isOnDedicatedCapacity)\s+eq\s+(true|false)", re.IGNORECASE)


def _odata_filter(expression: str | None) -> Callable[[dict[str, Any]], bool]:
    """A predicate for the subset of OData ``$filter`` that Get Groups examples use.

    ``name eq '..'``, ``id eq '..'``, ``type eq '..'``, ``contains(name,'..')``,
    ``isOnDedicatedCapacity eq true|false`` joined by ``and`` / ``or`` (no parentheses).
    Anything else is a 400, as OData parsing errors are.
    """
    if expression is None or not expression.strip():
        return lambda _group: True
    alternatives: list[list[Callable[[dict[str, Any]], bool]]] = []
    for alternative in re.split(r"\s+or\s+", expression.strip()):
        terms: list[Callable[[dict[str, Any]], bool]] = []
        for term in re.split(r"\s+and\s+", alternative.strip()):
            terms.append(_filter_term(term.strip()))
        alternatives.append(terms)
    return lambda group: any(all(t(group) for t in terms) for terms in alternatives)


def _filter_term(term: str) -> Callable[[dict[str, Any]], bool]:
    if m := _FILTER_EQ.fullmatch(term):
        prop, literal = m.group(1).lower(), m.group(2).replace("''", "'")
        if prop == "id":
            return lambda g: str(g["id"]).lower() == literal.lower()
        return lambda g: str(g.get(prop, "")) == literal
    if m := _FILTER_CONTAINS.fullmatch(term):
        needle = m.group(1).replace("''", "'")
        return lambda g: needle.lower() in str(g.get("name", "")).lower()
    if m := _FILTER_BOOL.fullmatch(term):
        prop = "isReadOnly" if m.group(1).lower() == "isreadonly" else "isOnDedicatedCapacity"
        expected = m.group(2).lower() == "true"
        return lambda g: bool(g.get(prop)) == expected
    raise bad_request("The $filter expression is not supported.")
