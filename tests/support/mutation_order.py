"""A pytest plugin for ``make mutate`` only: a mutant's tests run in the order likeliest to kill it
soonest.

mutmut runs each mutant against every test that covered its function (with ``-x``: it stops at
the first failure) but hands them to pytest in no particular order. Two things make a kill cheap:

* The tests that killed another mutant of the same function run first (most kills first). mutmut
  runs a function's mutants one after another, and one test (often a sandbox test of that
  behaviour) usually kills most of them. Each kill is appended to ``killers/<function>`` in
  mutmut's working directory (``mutants/``).
* The rest run fastest first, by the durations mutmut measured in its stats run
  (``duration_by_test``); a test it did not time goes last.

Only the order changes: a surviving mutant still runs every test that covers it, so the score is
the same in any order. Outside a mutant (mutmut's stats and clean runs, or any other pytest run)
nothing is reordered or written. Loaded by ``-p tests.support.mutation_order`` in
``[tool.mutmut]``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

#: mutmut names every mutant ``<module>.<function>__mutmut_<n>``; its other runs use "stats",
#: "fail" or an empty name.
_MUTANT = "__mutmut_"
#: Where the kills are kept, relative to mutmut's working directory.
KILLERS = Path("killers")


def fastest_first(nodeids: list[str], durations: Mapping[str, float]) -> list[str]:
    """``nodeids`` ordered by their measured duration, untimed ones last, ties in the given order."""
    return sorted(nodeids, key=lambda nodeid: durations.get(nodeid, float("inf")))


def killers_first(nodeids: list[str], durations: Mapping[str, float], kills: Sequence[str]) -> list[str]:
    """The tests in ``kills`` (the kills of this function's other mutants) first, most kills
    first, then the others fastest first."""
    counted = Counter(kills)
    ordered = fastest_first(nodeids, durations)
    return sorted(ordered, key=lambda nodeid: -counted[nodeid])  # stable: fastest first within a count


def _mutant() -> str | None:
    name = os.environ.get("MUTANT_UNDER_TEST", "")
    return name if _MUTANT in name else None


def _kills_file(mutant: str) -> Path:
    return KILLERS / mutant.rpartition(_MUTANT)[0]


def _durations() -> Mapping[str, float]:
    from mutmut.state import state  # only importable where mutmut is installed: make mutate

    return state().duration_by_test


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mutant = _mutant()
    if mutant is None:
        return
    path = _kills_file(mutant)
    kills = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    by_id = {item.nodeid: item for item in items}
    items[:] = [by_id[nodeid] for nodeid in killers_first(list(by_id), _durations(), kills)]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    mutant = _mutant()
    if mutant is None or not report.failed:
        return
    path = _kills_file(mutant)
    path.parent.mkdir(exist_ok=True)
    with path.open("a", encoding="utf-8") as kills:  # one short append: atomic between children
        kills.write(report.nodeid + "\n")
