"""A pytest plugin for ``make mutate`` only: a mutant's tests run fastest first.

mutmut runs each mutant against every test that covered its function (with ``-x``: it stops at
the first failure) but hands them to pytest in no particular order. A mutant is nearly always
killed by a fast unit test, so running the fast ones first makes a killed mutant cost about one
unit test instead of a random share of the sandbox tests; a surviving mutant still runs them all.
The durations are the ones mutmut measured in its stats run (``duration_by_test``); a test it did
not time goes last. Outside a mutant (mutmut's stats and clean runs, or any other pytest run) the
order is left alone. Loaded by ``-p tests.support.mutation_order`` in ``[tool.mutmut]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

#: mutmut names every mutant ``<module>.<function>__mutmut_<n>``; its other runs use "stats",
#: "fail" or an empty name.
_MUTANT = "__mutmut_"


def fastest_first(nodeids: list[str], durations: Mapping[str, float]) -> list[str]:
    """``nodeids`` ordered by their measured duration, untimed ones last, ties in the given order."""
    return sorted(nodeids, key=lambda nodeid: durations.get(nodeid, float("inf")))


def _durations() -> Mapping[str, float]:
    from mutmut.state import state  # only importable where mutmut is installed: make mutate

    return state().duration_by_test


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _MUTANT not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    by_id = {item.nodeid: item for item in items}
    items[:] = [by_id[nodeid] for nodeid in fastest_first(list(by_id), _durations())]
