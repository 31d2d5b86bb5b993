"""make mutate runs a mutant's tests fastest first (tests/support/mutation_order.py), so a killed
mutant costs about one fast test; outside a mutant the order is pytest's. And a test's waits end
a loop that never stops waiting (tests/support/clock.py), so such a mutant fails fast instead of
running into mutmut's timeout."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.support import mutation_order
from tests.support.clock import EndlessWait, Sleeps


def test_the_tests_mutmut_timed_run_fastest_first_and_the_untimed_last_in_their_order() -> None:
    durations = {"sandbox::slow": 2.0, "unit::fast": 0.01, "unit::also_fast": 0.01, "sandbox::mid": 0.3}
    ids = ["sandbox::slow", "new::untimed", "unit::fast", "sandbox::mid", "other::untimed", "unit::also_fast"]
    assert mutation_order.fastest_first(ids, durations) == [
        "unit::fast",
        "unit::also_fast",
        "sandbox::mid",
        "sandbox::slow",
        "new::untimed",
        "other::untimed",
    ]


@pytest.mark.parametrize(
    ("under_test", "reordered"),
    [("remediation.rules.redact.x_mask_urls__mutmut_3", True), ("stats", False), ("", False)],
)
def test_only_a_mutant_s_run_is_reordered(
    under_test: str, reordered: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUTANT_UNDER_TEST", under_test)
    monkeypatch.setattr(mutation_order, "_durations", lambda: {"a": 3.0, "b": 1.0, "c": 2.0})
    items: list[Any] = [SimpleNamespace(nodeid=n) for n in "abc"]
    mutation_order.pytest_collection_modifyitems(items)
    assert [item.nodeid for item in items] == (["b", "c", "a"] if reordered else ["a", "b", "c"])


def test_a_loop_that_never_stops_waiting_fails_the_test_instead_of_spinning() -> None:
    sleeps = Sleeps(limit=3)
    for _ in range(3):
        sleeps(0.5)
    with pytest.raises(EndlessWait, match="4 times"):
        sleeps(0.5)
    assert not isinstance(EndlessWait(), Exception)  # no `except Exception` in the product hides it
