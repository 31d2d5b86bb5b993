"""``events check``: which watched semantic models refresh-failure events can cover, and which rely
on the sweep alone.

The timer sweep is the source of truth; events are how a failed refresh is healed in seconds
instead of at the next sweep. The only Microsoft service that raises an event for a failed
refresh is Fabric, as a **job event** (Real-Time hub, ``Microsoft.Fabric.ItemJobFailed``), and
only through an Eventstream or Activator: see ``docs/events.md``. What this module can tell from
the APIs, read-only (GET requests only, as ``discover``):

* the semantic models in scope: the datasets that use a bound data source or a bound Fabric
  connection (what :func:`remediation.inventory.discover.scan` finds), in the watched workspaces
  (``watch.workspaces``, or every workspace the identity sees when none is set);
* their workspace's capacity (``GET /groups``: ``isOnDedicatedCapacity``): Fabric's events come
  from Fabric (and Premium) capacities, so a model on **shared capacity** (a Pro workspace) relies
  on the sweep alone; one on a capacity **could** be covered by job events. Whether Fabric raises
  them for semantic models at all is contradictory in Microsoft's pages (the current list of
  supported items omits them; the prerequisites page uses one as its example): only a real tenant
  can confirm it, which is what the next point shows;
* the evidence in the ledger: the last refresh-failure event the app received for the model
  (an outcome of trigger ``eventstream``, ``refresh-event`` or ``http-event``), within the ledger's
  retention (7 days).

:func:`coverage` is pure; :func:`render` prints it (JSON or a table).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from remediation.clients.powerbi_models import Group
from remediation.inventory.discover import Inventory
from remediation.ledger import Outcome

__all__ = ["EVENT_TRIGGERS", "Capacity", "ModelCoverage", "coverage", "render"]

EVENT_TRIGGERS = frozenset({"eventstream", "refresh-event", "http-event"})
"""The triggers of refresh-failure events: an Eventstream's Event Hubs batch, an Event Grid
delivery, events posted to ``POST /api/remediate``."""

Capacity = Literal["dedicated", "shared", "unknown"]

_WHY = {
    "dedicated": (
        "on a Fabric or Premium capacity: Fabric's job events (an Eventstream custom endpoint, or "
        "Activator with Power Automate) can report its failed refreshes in seconds, if Fabric raises "
        "them for semantic models (only your tenant can confirm it: see lastEvent)"
    ),
    "shared": (
        "on shared capacity (a Pro workspace): Fabric's job events come from Fabric capacities, so "
        "its failed refreshes are healed by the sweep (REMEDIATION_SWEEP_SCHEDULE), or by a "
        "PowerBI.RefreshFailed or POST /api/remediate from a publisher of yours"
    ),
    "unknown": (
        "its workspace is watched but not listed for the identity, so its capacity is unknown: "
        "the sweep covers it"
    ),
}


@dataclass(frozen=True)
class ModelCoverage:
    """One watched semantic model and whether events can cover it."""

    workspace_id: str
    dataset_id: str
    bindings: tuple[str, ...]
    capacity: Capacity
    last_event: float | None = None
    last_event_trigger: str | None = None

    @property
    def job_events(self) -> bool:
        """True when Fabric's job events could report its failures (see the module docstring)."""
        return self.capacity == "dedicated"

    @property
    def reason(self) -> str:
        return _WHY[self.capacity]

    def to_dict(self) -> dict[str, Any]:
        last = None
        if self.last_event is not None:
            last = {"time": _iso(self.last_event), "trigger": self.last_event_trigger}
        return {
            "workspaceId": self.workspace_id,
            "datasetId": self.dataset_id,
            "bindings": list(self.bindings),
            "capacity": self.capacity,
            "jobEvents": "possible" if self.job_events else "sweep-only",
            "reason": self.reason,
            "lastEvent": last,
        }


def coverage(
    inventory: Inventory,
    groups: Sequence[Group],
    outcomes: Iterable[Outcome],
    *,
    watched: Sequence[str] = (),
) -> list[ModelCoverage]:
    """The semantic models on bound data sources or connections (in ``watched`` workspaces when
    given), each with its workspace's capacity and the last refresh-failure event received for it
    among ``outcomes``; sorted by workspace and dataset."""
    scope = {w.lower() for w in watched}
    found: dict[tuple[str, str], set[str]] = {}
    uses = [(s.binding, s.datasets) for s in inventory.sources]
    uses += [(c.binding, c.datasets) for c in inventory.connections]
    for binding, datasets in uses:
        if binding is None:
            continue
        for use in datasets:
            key = (use.workspace_id.lower(), use.dataset_id.lower())
            if scope and key[0] not in scope:
                continue
            found.setdefault(key, set()).add(binding)
    capacity: dict[str, Capacity] = {
        g.id.lower(): "dedicated" if g.is_on_dedicated_capacity else "shared" for g in groups
    }
    last: dict[str, tuple[float, str]] = {}
    for o in outcomes:
        if o.trigger in EVENT_TRIGGERS and o.dataset_id:
            dataset_key = o.dataset_id.lower()
            if dataset_key not in last or o.time > last[dataset_key][0]:
                last[dataset_key] = (o.time, o.trigger)
    rows = []
    for (workspace, dataset), bindings in sorted(found.items()):
        seen = last.get(dataset)
        rows.append(
            ModelCoverage(
                workspace,
                dataset,
                tuple(sorted(bindings)),
                capacity.get(workspace, "unknown"),
                seen[0] if seen else None,
                seen[1] if seen else None,
            )
        )
    return rows


def render(rows: Sequence[ModelCoverage], out: TextIO, *, as_json: bool) -> None:
    """``events check``'s answer: ``{"models": [...], "summary": {...}}``, or a table and a summary."""
    possible = sum(r.job_events for r in rows)
    summary = {"models": len(rows), "jobEventsPossible": possible, "sweepOnly": len(rows) - possible}
    if as_json:
        json.dump({"models": [r.to_dict() for r in rows], "summary": summary}, out, indent=2)
        out.write("\n")
        return
    if not rows:
        out.write("No watched semantic model uses a bound data source or connection.\n")
        return
    header = ("workspace", "dataset", "capacity", "job events", "last event")
    table = [
        (
            r.workspace_id,
            r.dataset_id,
            r.capacity,
            "possible" if r.job_events else "sweep only",
            f"{_iso(r.last_event)} ({r.last_event_trigger})" if r.last_event is not None else "none seen",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *table, strict=True)]
    for line in (header, *table):
        out.write("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() + "\n")
    out.write(
        f"\n{len(rows)} watched semantic models: {possible} could be covered by Fabric job events, "
        f"{len(rows) - possible} rely on the sweep alone.\n"
    )
    for capacity in ("dedicated", "shared", "unknown"):
        if any(r.capacity == capacity for r in rows):
            label = {"dedicated": "possible", "shared": "sweep only", "unknown": "unknown capacity"}[capacity]
            out.write(f"{label}: {_WHY[capacity]}.\n")
    out.write("How to connect each publisher: docs/events.md.\n")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
