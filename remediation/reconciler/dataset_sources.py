"""A dataset's sources as the refresher heals them: the Fabric connections in their place, and their bindings.

**Semantic models bound to Fabric connections** follow the same rules as gateway data sources, the
connection standing for the data source. Which connections a model is bound to is read from Fabric
(``GET /workspaces/{ws}/items/{id}/connections``) when some binding targets connections. Whether
the ``datasourceId`` Power BI lists for such a source *is* the connection id is unconfirmed
(FABRIC.md), so both are handled: a data source whose id is a connection's is that connection;
otherwise it is the item connection it uniquely corresponds to (same type, its ``server;database``
path, the same gateway for on-premises ones: :func:`~remediation.rules.connections.is_connection_of`).
An item connection that no Power BI data source corresponds to is one more credential-bearing
source of the dataset. When the item connections cannot be read, only the first rule applies, and
a source it does not settle stays an unbound source (the dataset is then not refreshed: the safe
side).

Then each credential-bearing source gets its binding (:meth:`DatasetSources.bindings_of`): a data
source or connection no binding covers is reported as unbound. Logs as the refresher
(``remediation.reconciler.refresher``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from remediation.clients.api_errors import ApiError
from remediation.clients.fabric import Connection, FabricClient, ItemConnection
from remediation.clients.powerbi_models import DatasetDatasource
from remediation.config.bindings import CONNECTIONS, BindingSet, Target
from remediation.errors import RemediationError
from remediation.ledger import InventorySource, Outcome
from remediation.reconciler.report import Action
from remediation.reconciler.runs import Resolved, Run
from remediation.rules.accounts import source_locator, text_map
from remediation.rules.connections import corresponding_connection, is_connection_of
from remediation.rules.redact import describe_datasource

__all__ = ["DatasetSources"]

logger = logging.getLogger("remediation.reconciler.refresher")  # the refresher's log (runs.RUN_LOGGERS)


def _path_details(path: str | None) -> dict[str, str]:
    """A connection's path as the data source details a refresh failure is compared with."""
    text = path or ""
    server, _, database = text.partition(";")
    if database:
        return {"server": server, "database": database}
    return {"path": text} if text else {}


class DatasetSources:
    """Puts a dataset's Fabric connections in place of its data sources, and finds their bindings
    (thread-safe; one per refresher)."""

    def __init__(
        self,
        bindings: BindingSet,
        *,
        connections: Callable[[Run], list[Connection]],
        fabric: FabricClient | None = None,
    ) -> None:
        self.bindings = bindings
        self.fabric = fabric
        self._connections = connections

    def with_connections(
        self, workspace_id: str, dataset_id: str, sources: Sequence[DatasetDatasource], run: Run
    ) -> tuple[list[DatasetDatasource], dict[str, ItemConnection | Connection]]:
        """The dataset's sources with the Fabric connections it is bound to in their place (as
        ``(gatewayId "connections", connection id)``), and what is known of those connections
        (see the module docstring). Unchanged when no binding targets connections."""
        if self.fabric is None or not self.bindings.binds_connections:
            return list(sources), {}
        known: dict[str, ItemConnection | Connection] = {}
        try:
            known.update((c.id, c) for c in self._connections(run))
        except (ApiError, RemediationError) as exc:
            logger.warning("cannot list the Fabric connections: %s", exc)
        items: list[ItemConnection] = []
        try:
            items = [
                c for c in self.fabric.list_item_connections(workspace_id, dataset_id) if c.id is not None
            ]
        except (ApiError, RemediationError) as exc:
            logger.warning("dataset %s: cannot list the connections it is bound to: %s", dataset_id, exc)
        for item in items:
            assert item.id is not None
            known.setdefault(item.id, item)
        bound_ids = {t.connection_id for b in self.bindings for t in b.targets if t.connection_id is not None}
        item_ids = {c.id for c in items if c.id is not None}
        used: set[str] = set()
        out: list[DatasetDatasource] = []
        for source in sources:
            if not source.bound or source.gateway_id is None or source.datasource_id is None:
                out.append(source)
                continue
            connection_id = corresponding_connection(
                source.datasource_id,
                source.datasource_type,
                source.gateway_id,
                source.connection_details,
                [c for c in items if c.id not in used],
                ids=item_ids | bound_ids | set(known),
            )
            if connection_id is None:
                out.append(source)
                continue
            used.add(connection_id)
            if self._healed_as_datasource(source, known.get(connection_id), connection_id):
                out.append(source)  # bound as the gateway data source it also is: healed as that
                continue
            out.append(
                DatasetDatasource(
                    source.datasource_type, source.connection_details, CONNECTIONS, connection_id, source.name
                )
            )
        for item in items:
            assert item.id is not None
            if item.id not in used:
                out.append(
                    DatasetDatasource(
                        item.connection_type,
                        _path_details(item.path),
                        CONNECTIONS,
                        item.id,
                        item.display_name,
                    )
                )
        return out, known

    def _healed_as_datasource(
        self, source: DatasetDatasource, connection: ItemConnection | Connection | None, connection_id: str
    ) -> bool:
        """Whether a source that is also a Fabric connection is healed as the gateway data source:
        when a binding names it by gateway and data source id, or, with no binding for the
        connection, when a data source ``match`` selects it."""
        gateway_id, datasource_id = source.gateway_id or "", source.datasource_id or ""
        if self.bindings.for_target(gateway_id, datasource_id) is not None:
            return True
        try:
            if (
                self.bindings.for_connection(
                    connection_id,
                    connection_type=None if connection is None else connection.connection_type,
                    connectivity_type=None if connection is None else connection.connectivity_type,
                    path=None if connection is None else connection.path,
                )
                is not None
            ):
                return False
            matched = self.bindings.for_datasource(
                gateway_id,
                datasource_id,
                datasource_type=source.datasource_type or "",
                connection_details=text_map(source.connection_details),
            )
        except RemediationError:
            return False  # reported where the connection's binding is looked up again
        return matched is not None

    def bindings_of(
        self,
        sources: Sequence[DatasetDatasource],
        report: Callable[..., Outcome],
        connections: Mapping[str, ItemConnection | Connection] | None = None,
    ) -> tuple[list[Resolved], list[DatasetDatasource]]:
        """The dataset's bound targets, and its credential-bearing sources that have no binding."""
        resolved: list[Resolved] = []
        unbound: list[DatasetDatasource] = []
        for source in sources:
            if not source.bound or source.gateway_id is None or source.datasource_id is None:
                continue
            details = text_map(source.connection_details)
            if source.gateway_id == CONNECTIONS:
                connection_id = source.datasource_id
                connection = (connections or {}).get(connection_id)
                try:
                    binding = self.bindings.for_connection(
                        connection_id,
                        connection_type=None if connection is None else connection.connection_type,
                        connectivity_type=None if connection is None else connection.connectivity_type,
                        path=None if connection is None else connection.path,
                    )
                except RemediationError as exc:
                    report(Action.FAILED, str(exc))
                    unbound.append(source)
                    continue
                if binding is None:
                    unbound.append(source)
                    report(
                        Action.UNBOUND,
                        f"Fabric connection {connection_id} "
                        f"({describe_datasource(source.datasource_type, source.connection_details)}) has no "
                        "binding: add one to the bindings file so it can be healed",
                        gateway_id=CONNECTIONS,
                        datasource_id=connection_id,
                    )
                    continue
                target = next(
                    (t for t in binding.targets if t.connection_id == connection_id),
                    Target.connection(connection_id),
                )
                resolved.append(Resolved(binding, target, source_locator(source.datasource_type, details)))
                continue
            binding = self.bindings.for_target(source.gateway_id, source.datasource_id)
            if binding is None:
                try:
                    binding = self.bindings.for_datasource(
                        source.gateway_id,
                        source.datasource_id,
                        datasource_type=source.datasource_type or "",
                        connection_details=details,
                    )
                except RemediationError as exc:
                    report(Action.FAILED, str(exc))
                    unbound.append(source)
                    continue
            if binding is None:
                unbound.append(source)
                report(
                    Action.UNBOUND,
                    f"data source {describe_datasource(source.datasource_type, source.connection_details)} "
                    "has no binding: add one to the bindings file so it can be healed",
                    gateway_id=source.gateway_id.lower(),
                    datasource_id=source.datasource_id.lower(),
                )
                continue
            resolved.append(
                Resolved(
                    binding,
                    Target(source.gateway_id.lower(), source.datasource_id.lower()),
                    source_locator(source.datasource_type, details),
                )
            )
        return resolved, unbound

    def connection_users(self, wanted: set[str] | None, run: Run) -> Callable[[InventorySource], bool]:
        """Whether an inventory source may be one of the Fabric connections ``wanted`` (None:
        every connection some binding covers): its id is the connection's, or it corresponds to
        the connection (:func:`is_connection_of`). Candidates only:
        :meth:`~remediation.reconciler.refresher.Refresher.heal_dataset` reads
        the item's connections before anything is decided."""
        if self.fabric is None or not self.bindings.binds_connections or wanted == set():
            return lambda _source: False
        try:
            listed = self._connections(run)
        except (ApiError, RemediationError) as exc:
            logger.warning("cannot list the Fabric connections: %s", exc)
            listed = []
        ids = set(wanted or ()) | (
            {t.connection_id for b in self.bindings for t in b.targets if t.connection_id}
            if wanted is None
            else set()
        )
        chosen: list[Connection] = []
        for c in listed:
            if wanted is not None and c.id not in wanted:
                continue
            if wanted is None:
                try:
                    covered = (
                        self.bindings.for_connection(
                            c.id,
                            connection_type=c.connection_type,
                            connectivity_type=c.connectivity_type,
                            path=c.path,
                        )
                        is not None
                    )
                except RemediationError:
                    covered = True  # selected by several matches: bound (heal_dataset reports it)
                if not covered:
                    continue
            ids.add(c.id)
            chosen.append(c)

        def uses(source: InventorySource) -> bool:
            if source.datasource_id.lower() in ids:
                return True
            details = source.details()
            return any(
                is_connection_of(
                    c.connection_type,
                    c.connectivity_type,
                    c.gateway_id,
                    c.path,
                    source.datasource_type,
                    source.gateway_id,
                    details,
                )
                for c in chosen
            )

        return uses
