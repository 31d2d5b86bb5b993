"""``events check``'s classification (pure): capacity per workspace, the watched scope, the last
refresh-failure event per model."""

from __future__ import annotations

from remediation.clients.powerbi_models import Group
from remediation.inventory.discover import DatasetUse, DiscoveredSource, Inventory
from remediation.inventory.event_coverage import coverage
from remediation.ledger import Outcome

W1, W2, W3 = (
    "11111111-0000-4000-8000-000000000001",
    "11111111-0000-4000-8000-000000000002",
    "11111111-0000-4000-8000-000000000003",
)
D1, D2, D3 = (
    "22222222-0000-4000-8000-000000000001",
    "22222222-0000-4000-8000-000000000002",
    "22222222-0000-4000-8000-000000000003",
)


def source(binding: str | None, *uses: tuple[str, str]) -> DiscoveredSource:
    return DiscoveredSource(
        gateway_id="g",
        datasource_id=f"ds-{binding}",
        datasource_type="Sql",
        connection_details={},
        credential_type="Basic",
        on_premises=True,
        binding=binding,
        datasets=[DatasetUse(w, d, "Failed") for w, d in uses],
    )


def test_models_are_classified_by_capacity_scope_and_last_event() -> None:
    inventory = Inventory(
        sources=[source("a", (W1, D1), (W2, D2)), source(None, (W1, D3)), source("b", (W3, D3.upper()))]
    )
    groups = [Group(W1, "fabric", is_on_dedicated_capacity=True), Group(W2, "pro")]  # W3 not listed
    outcomes = [
        Outcome(time=100.0, trigger="refresh-event", dataset_id=D1),
        Outcome(time=200.0, trigger="eventstream", dataset_id=D1.upper()),
        Outcome(time=300.0, trigger="timer", dataset_id=D1),  # the sweep: not an event
        Outcome(time=400.0, trigger="http-event", dataset_id=D2),
    ]

    rows = {r.dataset_id: r for r in coverage(inventory, groups, outcomes, watched=[W1, W2, W3])}

    assert sorted(rows) == [D1, D2, D3]  # the unbound use of D3 in W1 is not in scope; W3's is
    assert (rows[D1].capacity, rows[D1].job_events, rows[D1].last_event, rows[D1].last_event_trigger) == (
        "dedicated",
        True,
        200.0,
        "eventstream",
    )
    assert (rows[D2].capacity, rows[D2].job_events, rows[D2].last_event_trigger) == (
        "shared",
        False,
        "http-event",
    )
    assert (rows[D3].capacity, rows[D3].job_events, rows[D3].bindings) == ("unknown", False, ("b",))
    assert rows[D3].to_dict()["jobEvents"] == "sweep-only"


def test_without_watched_workspaces_every_visible_one_is_in_scope_and_a_watch_list_narrows_it() -> None:
    inventory = Inventory(sources=[source("a", (W1, D1), (W2, D2))])
    groups = [Group(W1, "fabric", is_on_dedicated_capacity=True), Group(W2, "pro")]
    assert [r.dataset_id for r in coverage(inventory, groups, [])] == [D1, D2]
    assert [r.dataset_id for r in coverage(inventory, groups, [], watched=[W2.upper()])] == [D2]
