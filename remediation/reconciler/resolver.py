"""Which targets a binding has, which binding a target belongs to, and where each signs in.

The healer reconciles targets; this module finds them. A binding's targets are the ones it
names by id and the ones its ``match`` selects (gateway data sources across the gateways the
identity administers, Fabric connections through ``GET /connections``). A target that several
matches select, or that signs in with another credential type than the binding's, is refused
(nothing is sent: which secret, or which account, would be a guess). Each target also gets its
*locator*, where at the source it signs in (:func:`remediation.rules.accounts.source_locator`), from
the inventory (no call) or its gateway's data source list, read once per gateway and minute per
instance: an acceptance licenses a version only at its locator.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial

from remediation.clients.api_errors import ApiError
from remediation.clients.fabric import Connection, FabricClient
from remediation.clients.powerbi import PowerBIClient
from remediation.clients.powerbi_models import GatewayDatasource
from remediation.config.bindings import CONNECTIONS, Binding, BindingSet, Target
from remediation.errors import BindingsError, RemediationError
from remediation.inventory.inventory import CACHE_SECONDS, Inventory
from remediation.ledger import Outcome
from remediation.reconciler.report import Action
from remediation.reconciler.runs import Resolved, Run
from remediation.reconciler.targets.gateway_settings import SourceFacts
from remediation.rules.accounts import source_locator, text_map
from remediation.rules.connections import corresponding_connection, is_connection_of, match_refusal
from remediation.rules.redact import mask_urls

__all__ = ["TargetResolver"]

logger = logging.getLogger(__name__)


class TargetResolver:
    """Resolves bindings to targets for the healer (thread-safe; one per healer)."""

    def __init__(
        self,
        bindings: BindingSet,
        *,
        powerbi: PowerBIClient,
        fabric: FabricClient | None,
        inventory: Callable[[], Inventory],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bindings = bindings
        self.powerbi = powerbi
        self._fabric = fabric
        self._inventory = inventory
        self._clock = clock
        self._listed: dict[str, tuple[float, list[GatewayDatasource]]] = {}
        self._listed_lock = threading.Lock()

    def resolve(self, bindings: Iterable[Binding], run: Run) -> list[Resolved]:
        bindings = list(bindings)
        self._read_lists_ahead(bindings, run)
        resolved: list[Resolved] = []
        seen: set[tuple[str, str]] = set()
        for binding in bindings:
            for target in binding.targets:
                if target.key not in seen:
                    seen.add(target.key)
                    resolved.append(Resolved(binding, target, self.locator_of(target, run)))
            if any(not m.selects_connections for m in binding.matches):
                for item in self._matching_datasources(binding, run):
                    if item.target.key not in seen:
                        seen.add(item.target.key)
                        resolved.append(item)
            if binding.matches_connections:
                for item in self._matching_connections(binding, run):
                    if item.target.key not in seen:
                        seen.add(item.target.key)
                        resolved.append(item)
        return resolved

    def _read_lists_ahead(self, bindings: list[Binding], run: Run) -> None:
        """Start reading, side by side, the data source lists of the gateways whose targets the
        bindings name and the inventory does not describe: each is read anyway (a target's
        locator), and one after another they would be as many round trips in series."""
        known = self._inventory().known_sources().by_key
        gateways = sorted(
            {
                t.gateway_id
                for b in bindings
                for t in b.targets
                if t.connection_id is None and t.key not in known
            }
        )
        if len(gateways) < 2:
            return  # one list is read when it is needed, as soon
        for gateway_id in gateways:
            if self._cached_listing(gateway_id) is None:
                run.read_ahead(f"datasources:{gateway_id}", partial(self.powerbi.get_datasources, gateway_id))

    def _matching_connections(self, binding: Binding, run: Run) -> list[Resolved]:
        """The Fabric connections a connection ``match`` of ``binding`` selects (``GET
        /connections``, once per run). A connection another binding names by id is that
        binding's (a Key Vault reference is marked there, and never sent a copy). One whose
        credential type is not the binding's is refused: it signs in another way, maybe as
        another account, and presenting this secret there would be a failed sign-in."""
        try:
            connections = self.all_connections(run)
        except (ApiError, RemediationError) as exc:
            run.add(
                Outcome(
                    time=self._clock(),
                    trigger=run.trigger,
                    correlation_id=run.correlation_id,
                    binding=binding.name,
                    secret_name=binding.secret,
                    action=Action.FAILED.value,
                    reason=mask_urls(f"could not list the Fabric connections its match selects from: {exc}"),
                )
            )
            return []
        bound_twins = self._bound_gateway_twins(connections, run)
        unknown = (
            ""
            if bound_twins is not None
            else (
                "the gateways' data sources could not be listed, so it is not known whether this "
                "connection is a gateway data source another binding covers; nothing is sent now, "
                "the next run tries again"
            )
        )
        found: list[Resolved] = []
        for connection in connections:
            if not binding.matches_connection(
                connection.connection_type, connection.connectivity_type, connection.path
            ):
                continue
            if (
                bound_twins is not None
                and connection.id.lower() in bound_twins
                and self.bindings.for_target(CONNECTIONS, connection.id) is None
            ):
                continue  # a gateway data source a binding covers: healed as that, not twice
            try:
                owner = self.bindings.for_connection(
                    connection.id,
                    connection_type=connection.connection_type,
                    connectivity_type=connection.connectivity_type,
                    path=connection.path,
                )
                refused = ""
            except BindingsError as exc:  # several matches select it: which secret is a guess
                owner, refused = binding, str(exc)
            if owner is None or owner.name != binding.name:
                continue
            target = next(
                (t for t in binding.targets if t.connection_id == connection.id),
                Target.connection(connection.id),
            )
            refused = refused or unknown or match_refusal(binding, connection)
            found.append(Resolved(binding, target, _connection_locator(connection), refused))
        return found

    def _bound_gateway_twins(self, connections: list[Connection], run: Run) -> set[str] | None:
        """The ids of the connections that are gateway data sources some binding covers (gateway
        data sources are Fabric connections too; see :mod:`remediation.rules.connections`). None when
        the gateways cannot be listed: then it is not known, and no matched connection is sent."""
        # Rule 1 needs no listing: a connection whose id a binding names as a gateway data source.
        twins: set[str] = {
            t.datasource_id for b in self.bindings for t in b.targets if t.connection_id is None
        }
        try:
            datasources = self.all_gateway_datasources(run)
        except ApiError as exc:
            if exc.status not in (401, 403, 404):
                return None  # cannot tell which connections are bound data sources: send none
            datasources = []  # no gateway visible to the identity: only rule 1 applies
        except RemediationError:
            return None
        on_premises = [c for c in connections if c.connectivity_type.startswith("OnPremisesGateway")]
        for gateway_id, datasource in datasources:
            details = text_map(datasource.connection() or {})
            try:
                covered = self.bindings.for_datasource(
                    gateway_id,
                    datasource.id,
                    datasource_type=datasource.datasource_type or "",
                    connection_details=details,
                )
            except BindingsError:  # several bindings want it: refused there, and not sent here
                covered = None
            else:
                if covered is None:
                    continue
            cid = corresponding_connection(
                datasource.id, datasource.datasource_type, gateway_id, details, on_premises
            )
            if cid is not None:
                twins.add(cid.lower())
            else:  # none, or several that could be it: each of those counts as its twin
                twins.update(
                    c.id.lower()
                    for c in on_premises
                    if is_connection_of(
                        c.connection_type,
                        c.connectivity_type,
                        c.gateway_id,
                        c.path,
                        datasource.datasource_type,
                        gateway_id,
                        details,
                    )
                )
        return twins

    def all_connections(self, run: Run) -> list[Connection]:
        """Every Fabric connection the identity has a role on (``GET /connections``, paged; once
        per run). Empty without a Fabric client. Raises :class:`~remediation.clients.api_errors.ApiError`."""
        if self._fabric is None:
            return []
        with run.key_lock("fabric-connections"):
            if run.fabric_connections is None:
                run.fabric_connections = self._fabric.list_connections()
            return run.fabric_connections

    def _matching_datasources(self, binding: Binding, run: Run) -> list[Resolved]:
        """The gateway data sources ``binding``'s matches select and no other binding owns (one
        that several matches select is refused: which secret to send would be a guess)."""
        found = []
        for gateway_id, datasource in self.all_gateway_datasources(run):
            details = text_map(datasource.connection() or {})
            if not binding.matches_datasource(datasource.datasource_type or "", details):
                continue
            try:
                owner = self.bindings.for_datasource(
                    gateway_id,
                    datasource.id,
                    datasource_type=datasource.datasource_type or "",
                    connection_details=details,
                )
                refused = ""
            except BindingsError as exc:
                owner, refused = binding, str(exc)
            if owner is not None and owner.name == binding.name:
                locator = source_locator(datasource.datasource_type, details)
                found.append(Resolved(binding, Target(gateway_id, datasource.id.lower()), locator, refused))
        return found

    def binding_by_match(
        self, gateway_id: str, datasource_id: str, run: Run
    ) -> tuple[Binding | None, str, str]:
        """The binding whose ``match`` selects the target, where it signs in, and why it is
        refused (a connection with another credential type, or several matches selecting it:
        then the first of them carries the refusal), if it is."""
        try:
            return self._binding_by_match_or_raise(gateway_id, datasource_id, run)
        except BindingsError as exc:
            binding = self.bindings.by_name(exc.binding or "")
            if binding is None:
                raise
            return binding, "", str(exc)

    def _binding_by_match_or_raise(
        self, gateway_id: str, datasource_id: str, run: Run
    ) -> tuple[Binding | None, str, str]:
        if gateway_id == CONNECTIONS:
            for connection in self.all_connections(run):
                if connection.id == datasource_id:
                    binding = self.bindings.for_connection(
                        datasource_id,
                        connection_type=connection.connection_type,
                        connectivity_type=connection.connectivity_type,
                        path=connection.path,
                    )
                    refused = "" if binding is None else match_refusal(binding, connection)
                    return binding, _connection_locator(connection), refused
            return None, "", ""
        for gw, datasource in self.all_gateway_datasources(run):
            if gw == gateway_id and datasource.id.lower() == datasource_id:
                details = text_map(datasource.connection() or {})
                binding = self.bindings.for_datasource(
                    gateway_id,
                    datasource_id,
                    datasource_type=datasource.datasource_type or "",
                    connection_details=details,
                )
                return binding, source_locator(datasource.datasource_type, details), ""
        return None, "", ""

    def match_refusal(self, item: Resolved, run: Run) -> str:
        """Why a gateway data source a ``match`` selected is not sent the binding's secret ("" if
        it is): Power BI says it signs in with another credential type, so as another account
        (whichever path reached it: fan-out, single heal, dataset heal). One the binding names by
        id is the operator's explicit choice; one whose type Power BI does not list is let be."""
        binding, target = item.binding, item.target
        if target.connection_id is not None or any(t.key == target.key for t in binding.targets):
            return ""
        listed = self._listing(target.gateway_id, run)
        if listed is None:  # a fault, not an answer: the credential type cannot be checked now
            return (
                f"data source {target.gateway_id}/{target.datasource_id} is selected by the match of "
                f"{binding.name!r}, and Power BI's list of its gateway's data sources could not be read "
                "to check how it signs in, so nothing is sent now; the next run tries again"
            )
        for datasource in listed:
            if datasource.id.lower() != target.datasource_id:
                continue
            actual = (datasource.credential_type or "").strip()
            if actual and actual.lower() != binding.credential_type.value.lower():
                return (
                    f"data source {target.gateway_id}/{target.datasource_id} is selected by the match of "
                    f"{binding.name!r}, but it signs in with {actual}, not {binding.credential_type.value}: "
                    "it may be another account, so nothing is sent; narrow the match, or bind the data "
                    "source by gatewayId and datasourceId"
                )
        return ""

    def locator_of(self, target: Target, run: Run) -> str:
        """Where a target named by its ids signs in (``""`` when unknown, see
        :attr:`Resolved.where`): from the inventory (no call), else from its gateway's data source
        list (one read per gateway, shared by the instance's runs for a minute)."""
        facts = self.source_facts(target, run)
        return "" if facts is None else source_locator(facts.datasource_type, facts.connection_details)

    def source_facts(self, target: Target, run: Run) -> SourceFacts | None:
        """How Power BI describes a gateway data source (None when unknown): from the inventory
        (no call), else from its gateway's data source list (as :meth:`locator_of`)."""
        if target.connection_id is not None:
            return None
        known = self._inventory().known_sources()
        source = known.by_key.get(target.key)
        found = None if source is None else SourceFacts(source.datasource_type, source.details())
        others = set(known.by_gateway.get(target.gateway_id, ())) - {target.datasource_id}
        for datasource in self.gateway_datasources(target.gateway_id, run) if found is None else []:
            if datasource.id.lower() == target.datasource_id:
                found = SourceFacts(datasource.datasource_type, text_map(datasource.connection() or {}))
            else:
                others.add(datasource.id.lower())
        return None if found is None else replace(found, others=frozenset(others))

    def gateway_datasources(self, gateway_id: str, run: Run) -> list[GatewayDatasource]:
        """The data sources of one gateway, read at most once a minute per instance ([] when it
        cannot be read: a cloud gateway has no list, and the locator is then unknown)."""
        found = self._listing(gateway_id, run)
        return [] if found is None else found

    def _listing(self, gateway_id: str, run: Run) -> list[GatewayDatasource] | None:
        """This run's list of the gateway's data sources when it listed every gateway already,
        else :meth:`_read_gateway_datasources` (None: it could not be read)."""
        if run.gateway_datasources is not None:
            return [d for gw, d in run.gateway_datasources if gw == gateway_id]
        return self._read_gateway_datasources(gateway_id, run)

    def _read_gateway_datasources(self, gateway_id: str, run: Run) -> list[GatewayDatasource] | None:
        """One gateway's data sources: cached for a minute when Power BI answered (a 4xx, as for
        a cloud gateway, is the answer "none listed"); None, not cached, when it could not be
        read (a 5xx, 429, timeout): then nothing may be concluded from it."""
        cached = self._cached_listing(gateway_id)
        if cached is not None:
            return cached
        try:
            found = run.take_read(
                f"datasources:{gateway_id}", partial(self.powerbi.get_datasources, gateway_id)
            )
        except ApiError as exc:
            if exc.status is None or exc.status >= 500 or exc.status == 429:
                logger.info("gateway %s: data sources could not be read (%s)", gateway_id, exc)
                return None
            logger.info("gateway %s: data sources not listed (%s); locators unknown", gateway_id, exc)
            found = []
        except RemediationError as exc:
            logger.info("gateway %s: data sources could not be read (%s)", gateway_id, exc)
            return None
        with self._listed_lock:
            self._listed[gateway_id] = (self._clock(), found)
        return found

    def _cached_listing(self, gateway_id: str) -> list[GatewayDatasource] | None:
        """The gateway's data sources read within the last minute by this instance, or None."""
        with self._listed_lock:
            cached = self._listed.get(gateway_id)
        if cached is not None and 0 <= self._clock() - cached[0] < CACHE_SECONDS:
            return cached[1]
        return None

    def all_gateway_datasources(self, run: Run) -> list[tuple[str, GatewayDatasource]]:
        """Every data source of every gateway the caller administers (once per run)."""
        with run.key_lock("gateway-datasources"):
            if run.gateway_datasources is None:
                gateways = [gateway.id for gateway in self.powerbi.get_gateways()]
                for gateway_id in gateways:  # side by side; taken in order below
                    run.read_ahead(
                        f"datasources:{gateway_id.lower()}", partial(self.powerbi.get_datasources, gateway_id)
                    )
                found: list[tuple[str, GatewayDatasource]] = []
                for gateway_id in gateways:
                    listed = run.take_read(
                        f"datasources:{gateway_id.lower()}", partial(self.powerbi.get_datasources, gateway_id)
                    )
                    found.extend((gateway_id.lower(), d) for d in listed)
                run.gateway_datasources = found
            return run.gateway_datasources


def _connection_locator(connection: Connection) -> str:
    """Where a connection signs in: the server of a ``server;database`` path, a URL's host."""
    path = connection.path or ""
    first = path.split(";", 1)[0]
    return source_locator(connection.connection_type, {"server": first} if ";" in path else {"path": path})
