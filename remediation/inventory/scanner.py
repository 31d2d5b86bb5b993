"""The admin scanner path of the inventory: which datasets use which gateway data sources, for
whole workspaces at once, in a few calls.

The per-dataset path (:mod:`remediation.inventory.inventory`) reads ``GET .../datasets/{d}/datasources``
once per dataset to learn: 30 000 datasets are 30 000 calls. Where the identity may call the
read-only admin APIs, the *scanner* learns the same for up to 100 workspaces per scan:

1. ``POST admin/workspaces/getInfo?lineage=True&datasourceDetails=True`` with 1 to 100
   workspace ids (``lineage`` gives each dataset's ``datasourceUsages``, ``datasourceDetails``
   the ``datasourceInstances`` they point at: ``gatewayId``, ``datasourceId``,
   ``datasourceType``, ``connectionDetails``: the shape of the per-dataset answer);
2. ``GET admin/workspaces/scanStatus/{id}`` until ``Succeeded`` or ``Failed``, within the run's
   time (see :meth:`Scanner.scan`);
3. ``GET admin/workspaces/scanResult/{id}`` once.

So an inventory of W workspaces costs ``3·⌈W/100⌉`` calls plus the extra polls, whatever the
number of datasets. Batches run concurrently (Power BI allows 16 simultaneous ``getInfo``; the
healer's concurrency is at most 64 but ``REMEDIATION_CONCURRENCY`` defaults to 8).

Who may call it (checked by Power BI, not here): a Fabric administrator, or a service principal
in the security group allowed by the tenant setting *Service principals can access read-only
admin APIs*, whose app registration has **no** Power BI admin-consent permissions (with one, the
call is refused). Refused calls answer 401 (sometimes 403) ``PowerBINotAuthorizedException``.
With ``REMEDIATION_INVENTORY_SOURCE=auto`` such a refusal is remembered in the ledger marker
:data:`REFUSAL_MARKER` for :data:`REFUSAL_SECONDS`, shared by every instance, so that sweeps
in that time do not pay for it again; the per-dataset path is used meanwhile.

Nothing here decides anything about credentials: the scanner only tells the inventory which
gateway data sources a dataset uses, as the per-dataset path would.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from remediation.clients.api_errors import ApiError
from remediation.clients.powerbi import MAX_SCAN_WORKSPACES, PowerBIClient
from remediation.clients.powerbi_models import DatasetDatasource, ScanResult
from remediation.ledger import Ledger, LedgerError

__all__ = [
    "ScanRun",
    "MAX_SCAN_WAIT_SECONDS",
    "REFUSAL_MARKER",
    "REFUSAL_SECONDS",
    "InventoryPath",
    "ScanOutcome",
    "Scanner",
]


class ScanRun(Protocol):
    """What a scan needs of the command it runs in: its deadline (epoch seconds, None: none)."""

    @property
    def deadline(self) -> float | None: ...


logger = logging.getLogger(__name__)

REFUSAL_MARKER = "inventory:admin-refused-until"
"""Ledger marker: until when (epoch seconds) the admin APIs are taken as refused (``auto``)."""
REFUSAL_SECONDS = 3600.0
"""How long a refusal is remembered: a sweep every 15 minutes pays for one refused call an hour,
and permissions granted later are used within the hour."""
MAX_SCAN_WAIT_SECONDS = 120.0
"""The longest a run waits for scans to finish (and never more than half of the time it has
left, so that the per-dataset fallback and the refresh-history reads still fit)."""


class InventoryPath(StrEnum):
    """``REMEDIATION_INVENTORY_SOURCE``: how the inventory learns which sources a dataset uses."""

    AUTO = "auto"
    """The scanner where the identity may use it; the per-dataset path for what it did not give."""
    ADMIN = "admin"
    """The scanner only: what it cannot give is deferred (reported), never read per dataset."""
    PER_DATASET = "per-dataset"
    """One ``GET .../datasources`` per dataset to learn (no admin rights needed)."""


@dataclass
class ScanOutcome:
    """What :meth:`Scanner.scan` learnt."""

    sources: dict[tuple[str, str], tuple[DatasetDatasource, ...]] = field(default_factory=dict)
    """``(workspace, dataset)`` (lower case) -> the data sources it uses, for every dataset the
    scans returned whose every data source instance they described."""
    scanned: set[str] = field(default_factory=set)
    """The workspaces whose scan succeeded."""
    refused: bool = False
    """The admin APIs were refused (401/403)."""
    problems: list[str] = field(default_factory=list)
    """Why some workspaces were not scanned (failed, not finished in time, an error)."""


class Scanner:
    """Runs admin scans of workspaces and remembers a refusal (see the module docstring)."""

    def __init__(
        self,
        powerbi: PowerBIClient,
        ledger: Ledger,
        *,
        in_parallel: Callable[[Callable[[list[str]], ScanOutcome], Sequence[list[str]]], list[ScanOutcome]],
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = 5.0,
    ) -> None:
        self.powerbi = powerbi
        self.ledger = ledger
        self._in_parallel = in_parallel
        self._clock = clock
        self._sleep = sleep
        self._poll_interval = max(poll_interval, 0.0)

    def refused_until(self) -> float:
        """Until when a refusal is remembered (``-inf``: none, or the ledger cannot say)."""
        try:
            text = self.ledger.marker(REFUSAL_MARKER)
        except LedgerError as exc:
            logger.warning("cannot read the admin API refusal marker: %s", exc)
            return -math.inf
        try:
            value = float(text) if text else -math.inf
        except ValueError:
            return -math.inf
        return value if math.isfinite(value) else -math.inf

    def remember_refusal(self) -> None:
        now = self._clock()
        try:
            self.ledger.set_marker(REFUSAL_MARKER, repr(now + REFUSAL_SECONDS), now)
        except LedgerError as exc:
            logger.warning("cannot remember that the admin APIs were refused: %s", exc)

    def scan(self, workspaces: Sequence[str], run: ScanRun) -> ScanOutcome:
        """Scan ``workspaces`` in batches of 100, concurrently; each batch's status is polled
        every ``poll_interval`` seconds until it ends or the wait would pass the scan deadline
        (:data:`MAX_SCAN_WAIT_SECONDS`, at most half of the run's time left). A refusal stops
        the batches not yet started."""
        ids = sorted({w.lower() for w in workspaces})
        batches = [ids[i : i + MAX_SCAN_WORKSPACES] for i in range(0, len(ids), MAX_SCAN_WORKSPACES)]
        now = self._clock()
        wait = MAX_SCAN_WAIT_SECONDS
        if run.deadline is not None:
            wait = min(wait, max(run.deadline - now, 0.0) / 2)
        until = now + wait
        refused: list[bool] = []

        def one(batch: list[str]) -> ScanOutcome:
            if refused:
                return ScanOutcome(refused=True)
            outcome = self._scan_batch(batch, until)
            if outcome.refused:
                refused.append(True)
            return outcome

        merged = ScanOutcome()
        for outcome in self._in_parallel(one, batches):
            merged.sources.update(outcome.sources)
            merged.scanned |= outcome.scanned
            merged.refused = merged.refused or outcome.refused
            merged.problems.extend(outcome.problems)
        return merged

    def _scan_batch(self, batch: list[str], until: float) -> ScanOutcome:
        what = f"scan of {len(batch)} workspaces"
        try:
            status = self.powerbi.post_workspace_info(batch)
            polls = 0
            while status.status not in ("Succeeded", "Failed"):
                if self._clock() + self._poll_interval > until or polls >= _MAX_POLLS:
                    return ScanOutcome(problems=[f"{what} did not finish in time ({status.status})"])
                self._sleep(self._poll_interval)
                status = self.powerbi.get_scan_status(status.id)
                polls += 1
            if status.status == "Failed":
                return ScanOutcome(problems=[f"{what} failed ({status.error or 'no error code'})"])
            result = self.powerbi.get_scan_result(status.id)
        except ApiError as exc:
            if exc.status in (401, 403):
                return ScanOutcome(refused=True, problems=[f"the admin APIs were refused: {exc}"])
            return ScanOutcome(problems=[f"{what}: {exc}"])
        return _outcome(result, batch)


_MAX_POLLS = 1000
"""A bound on status polls per scan whatever the clock says (a clock that does not move)."""


def _outcome(result: ScanResult, batch: list[str]) -> ScanOutcome:
    wanted = set(batch)
    outcome = ScanOutcome(scanned=wanted & set(result.workspace_ids))
    for dataset in result.datasets:
        if dataset.workspace_id not in wanted or not dataset.usages_described:
            continue  # (usages not described: learnt another way)
        sources = [result.instances.get(i) for i in dataset.datasource_instance_ids]
        if any(s is None for s in sources):
            continue  # an instance the scan did not describe: learnt another way
        outcome.sources[(dataset.workspace_id, dataset.id)] = tuple(s for s in sources if s is not None)
    return outcome
