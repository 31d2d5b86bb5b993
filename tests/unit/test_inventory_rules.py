"""What the resolver learns from the stored inventory: each gateway data source by its ids, and
the other data sources of its gateway (where a target signs in, without a call to Power BI)."""

from __future__ import annotations

from remediation.config.bindings_file import parse_bindings
from remediation.inventory.inventory import CACHE_SECONDS, Inventory, KnownSources
from remediation.ledger import DatasetRecord, InventorySource
from remediation.ledger.sqlite import SqliteLedger

GW = "6f1c2b9e-0a4d-4e7b-9a51-3c2d1e0f9a8b"


def _record(dataset: str, *sources: InventorySource) -> DatasetRecord:
    return DatasetRecord("ws", dataset, "f", 0.0, tuple(sources))


def _source(datasource: str, server: str, gateway: str = GW) -> InventorySource:
    return InventorySource(gateway.upper(), datasource.upper(), "Sql", (("server", server),))


def test_each_source_is_known_by_its_ids_as_the_first_dataset_using_it_describes_it() -> None:
    known = KnownSources.of(
        [
            _record("d1", _source("ds-a", "a.contoso.local"), _source("ds-b", "b.contoso.local")),
            _record("d2", _source("ds-a", "elsewhere"), _source("ds-c", "c.contoso.local", gateway="gw-2")),
        ]
    )

    assert known.by_key[(GW, "ds-a")].details() == {"server": "a.contoso.local"}
    assert set(known.by_key) == {(GW, "ds-a"), (GW, "ds-b"), ("gw-2", "ds-c")}
    assert known.by_gateway == {GW: frozenset({"ds-a", "ds-b"}), "gw-2": frozenset({"ds-c"})}
    assert KnownSources.of([]) == KnownSources({}, {})


def test_the_index_follows_the_stored_inventory_once_the_cached_one_is_stale() -> None:
    now = [1000.0]
    ledger = SqliteLedger(":memory:")
    inventory = Inventory(
        parse_bindings({"bindings": []}),
        powerbi=object(),  # type: ignore[arg-type]  # no call is made: everything here is stored
        ledger=ledger,
        refresh_seconds=86400.0,
        in_parallel=lambda fn, items: [fn(i) for i in items],  # type: ignore[arg-type,misc]
        clock=lambda: now[0],
    )
    ledger.put_inventory([_record("d1", _source("ds-a", "a.contoso.local"))])
    first = inventory.known_sources()
    assert set(first.by_key) == {(GW, "ds-a")}
    assert inventory.known_sources() is first  # asked once per target: built once

    ledger.put_inventory([_record("d2", _source("ds-b", "b.contoso.local"))])
    assert inventory.known_sources() is first  # the cached inventory still stands
    now[0] += CACHE_SECONDS + 1
    later = inventory.known_sources()
    assert set(later.by_key) == {(GW, "ds-a"), (GW, "ds-b")}
    ledger.close()
