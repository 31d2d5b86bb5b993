"""The inventory: which datasets use which gateway data sources, kept in the ledger.

Without it, every sweep, Key Vault event and secret heal had to read the refresh history of every
dataset in the watched workspaces to find the few that use a bound data source: 10 000 datasets
every 15 minutes is about a million calls a day from one principal, right in Power BI's
throttling. With it, refresh history is read only for the datasets that use bound data sources
(all of them for a sweep; those of the healed data sources for an event or a secret heal).

How it is kept current (:meth:`Inventory.sync`, once per sweep):

* ``GET /groups/{g}/datasets`` per watched workspace (W calls, always): this is how a new dataset,
  a changed one and a removed one are noticed;
* ``GET /groups/{g}/datasets/{d}/datasources`` for a dataset that is new, whose *fingerprint*
  (what the list says of it: ``configuredBy``, ``isRefreshable``, ``isOnPremGatewayRequired``,
  ``createdDate``) changed, or whose record is *due*: a republished model may change its sources
  without the list showing it, so every record is re-read within
  ``REMEDIATION_INVENTORY_REFRESH`` seconds of being learnt (default a day), at a point between
  half and all of that period chosen by the dataset id, so that a big tenant's re-reads spread over
  many sweeps instead of falling into one. Datasets Power BI cannot refresh are recorded without
  reading their sources.
* New datasets are read first, then changed ones, then due ones, oldest first, each only while the
  run has time; a new dataset not read in time is reported by the caller as deferred (the next
  sweep reads it), a due or changed one keeps its previous record until then.

Where the identity may use the admin scanner APIs (``REMEDIATION_INVENTORY_SOURCE``, default
``auto``), the new, changed and due datasets are learnt by scanning their workspaces instead
(:mod:`remediation.inventory.scanner`: three calls per 100 workspaces, whatever the number of datasets);
the listing per workspace stays, as the exact, cheap way to notice what changed. A dataset the
scans did not give (refused, failed, not finished in time, not in the result) is read per
dataset with ``auto``, or left unread (new ones deferred) with ``admin``. A dry run with ``auto``
uses the per-dataset path (GET requests only; ``getInfo`` is a POST, although it writes
nothing). On the scanner path a scan refreshes every record of the workspace at once, so records
fall due per workspace (the spread is chosen by the workspace id) and a workspace is scanned
again about once per ``REMEDIATION_INVENTORY_REFRESH``. :attr:`Sync.path` says which path learnt what.

An event or a heal of a secret reads the stored inventory only (:meth:`Inventory.stored`): no
call to Power BI, unless nothing was ever stored for the watched workspaces (then it is built).
Records are written only when they change (and ``learnt_at`` moves on), in batches per workspace.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from remediation.clients.api_errors import ApiError
from remediation.clients.powerbi import EntityNotFound, PowerBIClient
from remediation.clients.powerbi_models import Dataset, DatasetDatasource
from remediation.config.bindings import BindingSet
from remediation.errors import RemediationError
from remediation.inventory.scanner import InventoryPath, Scanner, ScanOutcome
from remediation.ledger import DatasetRecord, InventorySource, Ledger
from remediation.rules.accounts import text_map
from remediation.rules.redact import mask_urls

__all__ = ["InventoryRun", "CACHE_SECONDS", "Inventory", "KnownSources", "Sync", "fingerprint"]


@dataclass(frozen=True)
class KnownSources:
    """The inventory's gateway data sources: each as the first dataset using it describes it,
    by ``(gateway id, data source id)``, and the data source ids of each gateway (lower-case)."""

    by_key: dict[tuple[str, str], InventorySource]
    by_gateway: dict[str, frozenset[str]]

    @classmethod
    def of(cls, records: list[DatasetRecord]) -> KnownSources:
        by_key: dict[tuple[str, str], InventorySource] = {}
        by_gateway: dict[str, set[str]] = {}
        for record in records:
            for source in record.sources:
                key = source.key
                by_key.setdefault(key, source)
                by_gateway.setdefault(key[0], set()).add(key[1])
        return cls(by_key, {gateway: frozenset(ids) for gateway, ids in by_gateway.items()})


class InventoryRun(Protocol):
    """What the inventory needs of the command it runs in (a :class:`~remediation.reconciler.runs.Run`):
    whether it is a dry run, its deadline, the workspaces it read once, and a lock per key."""

    @property
    def dry_run(self) -> bool: ...

    @property
    def deadline(self) -> float | None: ...

    workspaces: list[str] | None

    def key_lock(self, key: str) -> threading.Lock: ...

    def out_of_time(self, now: float) -> bool: ...


logger = logging.getLogger(__name__)
_T = TypeVar("_T")
_R = TypeVar("_R")


CACHE_SECONDS = 60.0
"""How long the stored inventory read by an event or a heal is reused in memory (a sweep always
reads the ledger, and refreshes this copy)."""


class InParallel(Protocol):
    """``work`` over ``items`` concurrently, results in item order (:meth:`Healer.in_parallel`)."""

    def __call__(self, work: Callable[[_T], _R], items: Sequence[_T], /) -> list[_R]: ...


def fingerprint(dataset: Dataset) -> str:
    """What the dataset list says of a dataset that may change with its data sources."""
    parts = (
        dataset.configured_by or "",
        str(dataset.is_refreshable),
        str(dataset.is_on_prem_gateway_required),
        dataset.created_date or "",
    )
    return "|".join(parts).lower()


@dataclass
class Sync:
    """What one :meth:`Inventory.sync` found."""

    records: list[DatasetRecord] = field(default_factory=list)
    """The inventory of the watched workspaces after the sync (including records not re-read)."""
    read: int = 0
    """``GET .../datasources`` calls made."""
    unread: list[tuple[str, str]] = field(default_factory=list)
    """New datasets whose sources could not be read (time ran out, or Power BI failed)."""
    scanned: int = 0
    """Datasets whose sources the admin scanner gave."""
    problems: list[str] = field(default_factory=list)
    """Why the scanner gave less than asked (refused, failed, not finished in time)."""

    @property
    def path(self) -> str:
        """Which path learnt the sources this time: ``admin scanner``, ``per-dataset``, both
        (``admin scanner + per-dataset``), or ``stored`` (nothing needed learning)."""
        paths = [
            name for name, count in (("admin scanner", self.scanned), ("per-dataset", self.read)) if count
        ]
        return " + ".join(paths) or "stored"


class Inventory:
    """Keeps the ledger's inventory current and answers which datasets use which sources."""

    def __init__(
        self,
        bindings: BindingSet,
        *,
        powerbi: PowerBIClient,
        ledger: Ledger,
        refresh_seconds: float,
        in_parallel: InParallel,
        clock: Callable[[], float] = time.time,
        path: InventoryPath = InventoryPath.PER_DATASET,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = 5.0,
    ) -> None:
        self.bindings = bindings
        self.powerbi = powerbi
        self.ledger = ledger
        self.refresh_seconds = refresh_seconds
        self.path = path
        self._in_parallel = in_parallel
        self._clock = clock
        self.scanner = Scanner(
            powerbi, ledger, in_parallel=in_parallel, clock=clock, sleep=sleep, poll_interval=poll_interval
        )
        self._cache: tuple[float, list[DatasetRecord]] | None = None
        self._sources: tuple[tuple[float, list[DatasetRecord]], KnownSources] | None = None  # of _cache
        self._cache_lock = threading.Lock()

    # -- which workspaces, which datasets ---------------------------------------------------------
    def workspaces(self, run: InventoryRun) -> list[str]:
        """The watched workspaces, or every workspace the identity can see (read once per run).

        Raises:
            ApiError: the workspaces cannot be listed.
        """
        with run.key_lock("inventory:workspaces"):
            if run.workspaces is None:
                watched = list(self.bindings.watch_workspaces) or [g.id for g in self.powerbi.get_groups()]
                run.workspaces = sorted({w.lower() for w in watched})
            return list(run.workspaces)

    def uses_bound(self, record: DatasetRecord) -> bool:
        """True when the dataset uses a data source some binding covers (by id or ``match``; a
        source that several matches select counts as bound: it is not ignored)."""
        for source in record.sources:
            try:
                binding = self.bindings.for_datasource(
                    source.gateway_id,
                    source.datasource_id,
                    datasource_type=source.datasource_type or "",
                    connection_details=source.details(),
                )
            except RemediationError:
                return True
            if binding is not None:
                return True
        return False

    @staticmethod
    def uses_any(record: DatasetRecord, keys: set[tuple[str, str]]) -> bool:
        """True when the dataset uses one of the ``(gatewayId, datasourceId)`` in ``keys``."""
        return any(source.key in keys for source in record.sources)

    def known(self) -> list[DatasetRecord]:
        """The stored inventory of the watched workspaces (all stored, without a watch list),
        kept in memory for :data:`CACHE_SECONDS`: the many small runs of a fan-out (one per
        target) would otherwise each read all of it from the ledger."""
        return list(self._cached()[1])

    def _cached(self) -> tuple[float, list[DatasetRecord]]:
        """The cached inventory (read from the ledger when stale), not copied: callers read it."""
        now = self._clock()
        with self._cache_lock:
            if self._cache is not None and 0 <= now - self._cache[0] < CACHE_SECONDS:
                return self._cache
        if not self.bindings.watch_workspaces:
            records = self.ledger.inventory()
        else:
            records = []
            for workspace in sorted({w.lower() for w in self.bindings.watch_workspaces}):
                records.extend(self.ledger.inventory(workspace))
        return self._remember(now, records)

    def _remember(self, now: float, records: list[DatasetRecord]) -> tuple[float, list[DatasetRecord]]:
        with self._cache_lock:
            self._cache = (now, list(records))
            return self._cache

    def known_sources(self) -> KnownSources:
        """The gateway data sources of :meth:`known`, by key and by gateway; built once per
        stored inventory read (a rotation asks once per target, and scanning every dataset each
        time would cost targets x datasets)."""
        cache = self._cached()
        with self._cache_lock:
            if self._sources is not None and self._sources[0] is cache:
                return self._sources[1]
        index = KnownSources.of(cache[1])
        with self._cache_lock:
            if self._cache is cache:
                self._sources = (cache, index)
        return index

    def stored(self, run: InventoryRun) -> list[DatasetRecord]:
        """The stored inventory of the watched workspaces, with no call to Power BI; built by a
        :meth:`sync` when nothing was ever stored for them."""
        records = self.known()
        if records:
            return records
        try:
            return self.sync(run).records
        except ApiError as exc:
            logger.warning("cannot build the inventory: %s", exc)
            return []

    # -- keeping it current -----------------------------------------------------------------------
    def sync(self, run: InventoryRun) -> Sync:
        """List the datasets of every watched workspace and re-read the sources of the new,
        changed and due ones, while the run has time (see the module docstring).

        Raises:
            ApiError: the workspaces cannot be listed (a failing workspace is skipped, its records
                kept).
        """
        result = Sync()
        now = self._clock()
        to_read: list[tuple[int, float, str, Dataset, DatasetRecord | None]] = []
        workspaces = self.workspaces(run)
        # A dry run sends GET requests only, so it does not start a scan (a POST): with ``admin``
        # what is new is then deferred, with ``auto`` it is read per dataset.
        use_scanner = not run.dry_run and (
            self.path is InventoryPath.ADMIN
            or (self.path is InventoryPath.AUTO and self.scanner.refused_until() <= now)
        )
        listed_refreshable: dict[str, list[Dataset]] = {}

        def listing(workspace: str) -> list[Dataset] | None:
            try:
                return self.powerbi.get_datasets_in_group(workspace)
            except ApiError as exc:
                logger.warning(
                    "workspace %s: cannot list datasets, its inventory is kept: %s", workspace, exc
                )
                return None

        listings: list[list[Dataset] | None] = self._in_parallel(listing, workspaces)
        for workspace, listed in zip(workspaces, listings, strict=True):
            stored = {r.dataset_id: r for r in self.ledger.inventory(workspace)}
            if listed is None:
                result.records.extend(stored.values())
                continue
            seen: set[str] = set()
            unrefreshable: list[DatasetRecord] = []
            listed_refreshable[workspace] = [d for d in listed if d.is_refreshable is not False]
            for dataset in listed:
                dataset_id = dataset.id.lower()
                seen.add(dataset_id)
                record = stored.get(dataset_id)
                mark = fingerprint(dataset)
                if dataset.is_refreshable is False:
                    if record is None or record.fingerprint != mark:
                        record = DatasetRecord(workspace, dataset_id, mark, now, (), refreshable=False)
                        unrefreshable.append(record)
                    result.records.append(record)
                    continue
                if record is None:
                    to_read.append((0, 0.0, workspace, dataset, None))
                elif record.fingerprint != mark or not record.refreshable:
                    to_read.append((1, record.learnt_at, workspace, dataset, record))
                    result.records.append(record)
                else:
                    if self._due(record, now, by_workspace=use_scanner):
                        to_read.append((2, record.learnt_at, workspace, dataset, record))
                    result.records.append(record)
            gone = [d for d in stored if d not in seen]
            if not run.dry_run:
                if gone:
                    self.ledger.drop_inventory(workspace, gone)
                if unrefreshable:
                    self.ledger.put_inventory(unrefreshable)
        to_read.sort(key=lambda item: (item[0], item[1], item[2], item[3].id.lower()))

        def read(item: tuple[int, float, str, Dataset, DatasetRecord | None]) -> DatasetRecord | str | None:
            """The new record, ``"unread"`` (no time, or an error), or None (the dataset is gone)."""
            _, _, workspace, dataset, _previous = item
            if run.out_of_time(self._clock()):
                return "unread"
            try:
                sources = self.powerbi.get_datasources_in_group(workspace, dataset.id)
            except EntityNotFound:
                return None
            except ApiError as exc:
                logger.warning("dataset %s: cannot list its data sources: %s", dataset.id, exc)
                return "unread"
            return DatasetRecord(
                workspace, dataset.id.lower(), fingerprint(dataset), self._clock(), _sources(sources)
            )

        fresh: dict[tuple[str, str], DatasetRecord] = {}
        changed: list[DatasetRecord] = []
        per_dataset = to_read
        if use_scanner and to_read:
            learnt = self._scan(run, to_read, listed_refreshable, result)
            fresh.update(learnt)
            changed.extend(learnt.values())
            per_dataset = [item for item in to_read if (item[2], item[3].id.lower()) not in learnt]
        if self.path is InventoryPath.ADMIN:  # no per-dataset reads: what is new is deferred
            result.unread.extend((item[2], item[3].id.lower()) for item in per_dataset if item[4] is None)
            per_dataset = []
        answers = self._in_parallel(read, per_dataset)
        vanished: set[tuple[str, str]] = set()
        for item, answer in zip(per_dataset, answers, strict=True):
            _, _, workspace, dataset, previous = item
            if isinstance(answer, DatasetRecord):
                result.read += 1
                fresh[(answer.workspace_id, answer.dataset_id)] = answer
                changed.append(answer)
            elif answer == "unread" and previous is None:
                result.unread.append((workspace, dataset.id.lower()))
            elif answer is None and previous is not None:
                vanished.add((workspace, previous.dataset_id))
                if not run.dry_run:
                    self.ledger.drop_inventory(workspace, [previous.dataset_id])
        if changed and not run.dry_run:
            self.ledger.put_inventory(changed)
        result.records = [
            fresh.pop((r.workspace_id, r.dataset_id), r)
            for r in result.records
            if (r.workspace_id, r.dataset_id) not in vanished
        ]
        result.records.extend(fresh.values())
        if not run.dry_run:
            self._remember(now, result.records)
        logger.info(
            "inventory (%s): %d datasets in %d workspaces, %d from admin scans, %d data source reads, "
            "%d not read",
            result.path,
            len(result.records),
            len(run.workspaces or ()),
            result.scanned,
            result.read,
            len(result.unread),
        )
        return result

    def _scan(
        self,
        run: InventoryRun,
        to_read: list[tuple[int, float, str, Dataset, DatasetRecord | None]],
        listed: dict[str, list[Dataset]],
        result: Sync,
    ) -> dict[tuple[str, str], DatasetRecord]:
        """Scan the workspaces of ``to_read``; new records for every listed refreshable dataset
        of a scanned workspace that the scans described (see the module docstring)."""
        if run.out_of_time(self._clock()):
            return {}
        outcome: ScanOutcome = self.scanner.scan(sorted({item[2] for item in to_read}), run)
        if outcome.refused and self.path is InventoryPath.AUTO and not run.dry_run:
            self.scanner.remember_refusal()
        # With ``auto`` a refusal is an expected answer (no tenant setting): said, not warned.
        expected = outcome.refused and self.path is InventoryPath.AUTO
        for problem in outcome.problems:
            logger.log(logging.INFO if expected else logging.WARNING, "inventory: %s", problem)
        result.problems.extend(outcome.problems)
        learnt_at = self._clock()
        records: dict[tuple[str, str], DatasetRecord] = {}
        for workspace in sorted(outcome.scanned):
            for dataset in listed.get(workspace, ()):
                key = (workspace, dataset.id.lower())
                sources = outcome.sources.get(key)
                if sources is not None:
                    records[key] = DatasetRecord(
                        workspace, key[1], fingerprint(dataset), learnt_at, _sources(sources)
                    )
        result.scanned = len(records)
        return records

    def _due(self, record: DatasetRecord, now: float, *, by_workspace: bool = False) -> bool:
        """A record is re-read between half and all of the refresh period after it was learnt,
        at a point fixed by the dataset id (spreads a tenant's re-reads over many sweeps), or
        by the workspace id on the scanner path (a scan re-learns a whole workspace at once)."""
        if self.refresh_seconds <= 0:
            return True
        key = record.workspace_id if by_workspace else record.dataset_id
        spread = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
        return now - record.learnt_at >= self.refresh_seconds * (0.5 + 0.5 * spread)


def _sources(sources: Iterable[DatasetDatasource]) -> tuple[InventorySource, ...]:
    """The gateway data sources of a dataset (others have no credentials to heal), with the
    connection details a ``match`` compares, URLs masked (no query value is stored)."""
    out: list[InventorySource] = []
    for source in sources:
        if not source.bound or source.gateway_id is None or source.datasource_id is None:
            continue
        details = {k: mask_urls(v) for k, v in text_map(source.connection_details).items()}
        out.append(
            InventorySource(
                source.gateway_id.lower(),
                source.datasource_id.lower(),
                source.datasource_type,
                tuple(sorted(details.items())),
            )
        )
    return tuple(out)
