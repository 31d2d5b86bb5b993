"""The sweep's scan cursor (the refresher's ``_failed_among``): where a sweep starts reading refresh
histories, what it says about the datasets it did not reach, and where the next sweep starts.

Each sweep reads every dataset on a bound data source once, in id order from the cursor on; a
dataset not reached is reported deferred and the cursor left on it. Asserted as a user sees it:
which histories Power BI was asked for, in what order, the deferred outcome, the cursor marker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from remediation.reconciler.healer import Action, Report
from tests.support.harness import Harness, Make

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

CURSOR = "sweep-cursor"


def history_reads(h: Harness, since: int) -> list[str]:
    return [
        r.path.split("/datasets/")[1].split("/")[0]
        for r in h.sb.requests.all()[since:]
        if r.route == "powerbi.refresh_history"
    ]


def deferred(report: Report) -> list[Any]:
    return [o for o in report.datasets() if o.action == Action.DEFERRED]


NOW = [0.0]


def slow_world(make: Make, sources: int = 4) -> tuple[Harness, list[str]]:
    """A world whose refresh history reads take 10 s each of the healer's clock (``NOW[0]``), one
    at a time; the dataset ids in the order a sweep reads them."""
    NOW[0] = 1_790_000_000.0
    now = NOW
    h = make(sources=sources, env={"REMEDIATION_CONCURRENCY": "1"}, clock=lambda: now[0])
    read: Callable[..., Any] = h.runtime.powerbi.get_refresh_history_in_group

    def slow(*args: Any, **kwargs: Any) -> Any:
        now[0] += 10.0
        return read(*args, **kwargs)

    h.runtime.powerbi.get_refresh_history_in_group = slow
    return h, sorted(h.world.dataset_ids)


def test_a_sweep_that_reads_everything_starts_at_the_first_dataset_and_writes_no_cursor(make: Make) -> None:
    h, order = slow_world(make)
    since = len(h.sb.requests.all())

    report = h.healer.sweep(budget_seconds=100)

    assert history_reads(h, since) == order and deferred(report) == []
    assert h.runtime.ledger.marker(CURSOR) is None


def test_the_unread_tail_is_reported_in_full_and_the_cursor_left_on_it(make: Make) -> None:
    h, order = slow_world(make)

    report = h.healer.sweep(budget_seconds=25)

    (tail,) = deferred(report)
    assert (tail.workspace_id, tail.dataset_id) == (h.world.workspace_id, order[3])
    assert tail.reason == (
        "time ran out before the refresh history of 1 of 4 datasets using the bound data sources was "
        "read, starting with this one; the next sweep starts here"
    )
    assert h.runtime.ledger.marker(CURSOR) == f"{h.world.workspace_id}/{order[3]}"


def test_a_cursor_past_the_last_dataset_starts_again_at_the_first(make: Make) -> None:
    """The dataset the cursor was left on is gone (or the ids sort before it): every dataset is
    read once, from the first."""
    h, order = slow_world(make)
    h.runtime.ledger.set_marker(CURSOR, "ffffffff-ffff-ffff-ffff-ffffffffffff/gone", 1_790_000_000.0)
    since = len(h.sb.requests.all())

    report = h.healer.sweep(budget_seconds=100)

    assert history_reads(h, since) == order and deferred(report) == []
    assert h.runtime.ledger.marker(CURSOR) == ""


def test_a_dry_run_sweep_leaves_the_cursor_where_it_was(make: Make) -> None:
    h, order = slow_world(make)

    report = h.healer.sweep(budget_seconds=25, dry_run=True)

    assert len(deferred(report)) == 1
    assert h.runtime.ledger.marker(CURSOR) is None


def test_a_rotation_out_of_time_before_every_failed_dataset_was_read_says_so_without_a_cursor(
    make: Make,
) -> None:
    """After a secret change the datasets on the healed sources are read to retry their failed
    refreshes; those not reached in the run's time are reported (no cursor: the next sweep reads
    every dataset anyway)."""
    h, order = slow_world(make)
    h.world.rotate()
    h.world.fail_scheduled_refreshes()
    report = h.healer.heal_secret(h.world.secret_name, deadline=NOW[0] + 25)

    (tail,) = [o for o in deferred(report) if (o.reason or "").startswith("time ran out")]
    assert (tail.dataset_id, tail.reason) == (
        order[3],
        "time ran out before the refresh history of 1 of 4 datasets using the bound data sources was read, "
        "starting with this one",
    )
    assert h.runtime.ledger.marker(CURSOR) is None
