"""make mutate runs first the tests that killed a function's other mutants, then the rest fastest
first (tests/support/mutation_order.py), so a killed mutant costs about one test; outside a mutant
the order is pytest's. And a test's waits end
a loop that never stops waiting (tests/support/clock.py), so such a mutant fails fast instead of
running into mutmut's timeout."""

from __future__ import annotations

from pathlib import Path
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


def test_the_tests_that_killed_the_function_s_other_mutants_run_first_most_kills_first() -> None:
    durations = {"unit::fast": 0.01, "sandbox::slow": 2.0, "sandbox::mid": 0.3, "sandbox::other": 0.2}
    ids = ["unit::fast", "sandbox::slow", "sandbox::mid", "sandbox::other"]
    kills = ["sandbox::mid", "sandbox::slow", "sandbox::slow", "gone::renamed"]
    assert mutation_order.killers_first(ids, durations, kills) == [
        "sandbox::slow",
        "sandbox::mid",
        "unit::fast",
        "sandbox::other",
    ]


def test_a_kill_is_kept_for_the_next_mutant_of_the_same_function_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # mutmut's working directory
    monkeypatch.setattr(mutation_order, "_durations", lambda: {"a": 0.1, "b": 0.2, "c": 0.3})
    monkeypatch.setenv("MUTANT_UNDER_TEST", "remediation.rules.redact.x_mask_urls__mutmut_3")

    def report(nodeid: str, failed: bool) -> None:
        passed_on: Any = SimpleNamespace(nodeid=nodeid, failed=failed)
        mutation_order.pytest_runtest_logreport(passed_on)

    report("c", failed=True)
    report("a", failed=False)

    def order() -> list[str]:
        items: list[Any] = [SimpleNamespace(nodeid=n) for n in "abc"]
        mutation_order.pytest_collection_modifyitems(items)
        return [item.nodeid for item in items]

    monkeypatch.setenv("MUTANT_UNDER_TEST", "remediation.rules.redact.x_mask_urls__mutmut_4")
    assert order() == ["c", "a", "b"]
    monkeypatch.setenv("MUTANT_UNDER_TEST", "remediation.rules.redact.x_secret_forms__mutmut_1")
    assert order() == ["a", "b", "c"]
    monkeypatch.setenv("MUTANT_UNDER_TEST", "stats")  # mutmut's own runs: nothing written
    report("b", failed=True)
    assert [p.name for p in (tmp_path / "killers").iterdir()] == ["remediation.rules.redact.x_mask_urls"]


def test_a_loop_that_never_stops_waiting_fails_the_test_instead_of_spinning() -> None:
    sleeps = Sleeps(limit=3)
    for _ in range(3):
        sleeps(0.5)
    with pytest.raises(EndlessWait, match="4 times"):
        sleeps(0.5)
    assert not isinstance(EndlessWait(), Exception)  # no `except Exception` in the product hides it
