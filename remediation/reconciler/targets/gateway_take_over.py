"""Take Over: making the caller the owner of a dataset, so that it may update a cloud data source.

Power BI lets the caller update a cloud data source's credentials only when it owns a dataset
that uses it; a binding with ``takeOver`` lets the gateway kind take such a dataset over after a
401 (nothing was tested then). Take Over resets the credentials of the dataset's other cloud data
sources, so it is refused (:class:`TakeOverRefused`, nothing presented) unless every one of them
has a binding that puts its credential back; the ledger forgets what those hold first, and the
run heals them again (:meth:`remediation.reconciler.runs.Run.record_take_over`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from remediation.clients.api_errors import ApiError, ThrottledPastDeadline
from remediation.clients.powerbi import PowerBIClient
from remediation.clients.powerbi_models import DatasetDatasource
from remediation.config.bindings import BindingSet, Target
from remediation.errors import RemediationError
from remediation.inventory.inventory import Inventory
from remediation.ledger import Ledger
from remediation.reconciler.runs import Resolved, Run, TakeOver
from remediation.reconciler.targets import in_few_words
from remediation.reconciler.targets.gateway_keys import GatewayKeys
from remediation.rules.accounts import source_locator, text_map
from remediation.rules.redact import describe_datasource

__all__ = ["TakeOverRefused", "TakeOvers"]

logger = logging.getLogger("remediation.reconciler.targets.gateway")  # the gateway kind's log


class TakeOverRefused(RemediationError):
    """Take Over was needed and refused (nothing was presented); the message says why."""


class TakeOvers:
    """Takes over the dataset that uses a gateway data source, when its binding allows it
    (thread-safe; one per gateway kind)."""

    def __init__(
        self,
        *,
        powerbi: PowerBIClient,
        bindings: BindingSet,
        ledger: Ledger,
        gateways: GatewayKeys,
        inventory: Callable[[], Inventory],
    ) -> None:
        self.powerbi = powerbi
        self.bindings = bindings
        self.ledger = ledger
        self.gateways = gateways
        self._inventory = inventory

    def take_over_for(self, target: Target, run: Run) -> None:
        """Take over a dataset that uses ``target`` (bindings with ``takeOver`` only).

        Take Over resets the credentials of the dataset's other cloud data sources, so it is
        refused (:class:`TakeOverRefused`, nothing presented) when one of them, as Power BI lists
        them right before, has no binding that could put its credential back. Raises it too when
        no dataset uses ``target``, or when the dataset's data sources cannot be read.
        """
        found = self._dataset_using(target)
        if found is None:
            raise TakeOverRefused(
                f"no dataset in the watched workspaces uses {target.gateway_id}/{target.datasource_id}, "
                "so there is none to take over; make the identity a user of the data source instead"
            )
        workspace_id, dataset_id, sources = found
        others = [s for s in sources if s.bound and _source_key(s) != target.key]
        unbound = [s for s in others if self._binding_of(s) is None]
        if unbound:
            first = describe_datasource(unbound[0].datasource_type, unbound[0].connection_details)
            raise TakeOverRefused(
                f"not taking over dataset {dataset_id}: Take Over resets the credentials of its other "
                f"data sources, and {len(unbound)} of them ({first}{', …' if len(unbound) > 1 else ''}) "
                "have no binding to put them back. Bind them, or give the identity access to the data "
                "source another way"
            )
        # Power BI resets the credentials of the dataset's other cloud data sources (those on an
        # on-premises gateway keep theirs: the gateway holds them). The ledger must stop saying
        # they hold a version, or they would not be healed again until the next version; so that
        # is forgotten first, and without it there is no Take Over (forgetting a version a source
        # still holds costs one PATCH of an accepted value, never a failed sign-in).
        reset = [s for s in others if not self.gateways.listed_on_premises(s.gateway_id or "")]
        for source in reset:
            gateway_id, datasource_id = _source_key(source)
            try:
                self.ledger.forget_applied(gateway_id, datasource_id)
            except RemediationError as exc:
                raise TakeOverRefused(
                    f"not taking over dataset {dataset_id}: the ledger could not forget what "
                    f"{gateway_id}/{datasource_id} holds ({exc}), so that source would not be healed "
                    "again after Power BI resets it; the next run tries again"
                ) from None
        try:
            self.powerbi.take_over_in_group(workspace_id, dataset_id)
        except ThrottledPastDeadline:
            raise
        except ApiError as exc:
            # Not a presentation (no credential is in it): the credential was not sent. Whether
            # Power BI took it over is unknown, so the reset sources stay forgotten (healed again).
            raise TakeOverRefused(
                f"the Take Over of dataset {dataset_id} failed ({in_few_words(exc)}); nothing was presented, "
                "and the next run tries again"
            ) from None
        logger.warning(
            "took over dataset %s to update %s; its other data sources' credentials are reset by Power BI",
            dataset_id,
            target.datasource_id,
        )
        items: list[Resolved] = []
        for source in reset:
            resolved = self._binding_of(source)
            if resolved is not None:
                items.append(resolved)
        run.record_take_over(
            TakeOver(
                target=target.key,
                workspace_id=workspace_id,
                dataset_id=dataset_id,
                reset=tuple(items),
                described=tuple(
                    f"{describe_datasource(s.datasource_type, s.connection_details)} "
                    f"({s.gateway_id}/{s.datasource_id})"
                    for s in reset
                ),
            )
        )

    def _binding_of(self, source: DatasetDatasource) -> Resolved | None:
        """The binding that covers a dataset's data source (its own target, or a ``match``), as
        the healer resolves it; None when none does."""
        gateway_id, datasource_id = _source_key(source)
        explicit = self.bindings.for_target(gateway_id, datasource_id)
        if explicit is not None:
            target = next(
                (t for t in explicit.targets if t.key == (gateway_id, datasource_id)),
                Target(gateway_id, datasource_id),
            )
            return Resolved(explicit, target)
        details = text_map(source.connection_details)
        try:
            matched = self.bindings.for_datasource(
                gateway_id,
                datasource_id,
                datasource_type=source.datasource_type or "",
                connection_details=details,
            )
        except RemediationError:
            return None
        if matched is None:
            return None
        return Resolved(
            matched, Target(gateway_id, datasource_id), source_locator(source.datasource_type, details)
        )

    def _dataset_using(self, target: Target) -> tuple[str, str, list[DatasetDatasource]] | None:
        """A dataset (workspace, id, its data sources) that uses ``target``, with the data sources
        as Power BI lists them now: Take Over is decided on them, and a republished model may use
        sources the stored inventory (up to a day old) does not know. The inventory only says which
        dataset to ask about; without one that uses ``target``, the watched workspaces are scanned.

        Raises :class:`TakeOverRefused` when Power BI cannot be asked (nothing is presented then),
        :class:`~remediation.clients.api_errors.ThrottledPastDeadline` when it asks to wait past the run.
        """
        try:
            for record in self._inventory().known():
                if any(source.key == target.key for source in record.sources):
                    sources = self.powerbi.get_datasources_in_group(record.workspace_id, record.dataset_id)
                    if any(_source_key(s) == target.key for s in sources):
                        return record.workspace_id, record.dataset_id, sources
                    # Republished without the target since the inventory learnt it: look further.
            workspaces = list(self.bindings.watch_workspaces) or [g.id for g in self.powerbi.get_groups()]
            for workspace_id in workspaces:
                for dataset in self.powerbi.get_datasets_in_group(workspace_id):
                    sources = self.powerbi.get_datasources_in_group(workspace_id, dataset.id)
                    if any(_source_key(s) == target.key for s in sources):
                        return workspace_id, dataset.id, sources
        except ThrottledPastDeadline:
            raise
        except RemediationError as exc:
            raise TakeOverRefused(
                f"not taking over a dataset to update {target.gateway_id}/{target.datasource_id}: the "
                "data sources of the dataset that uses it could not be read "
                f"({in_few_words(exc)}); Take Over resets the credentials of those in the cloud, so it "
                "is decided on what Power BI lists right before it, never on the stored inventory. "
                "Nothing was presented; the next run tries again"
            ) from None
        return None


def _source_key(source: DatasetDatasource) -> tuple[str, str]:
    return ((source.gateway_id or "").lower(), (source.datasource_id or "").lower())
