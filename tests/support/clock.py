"""Time for tests: a ``sleep`` that returns at once and remembers what it was asked to wait."""

from __future__ import annotations


class EndlessWait(BaseException):
    """The code under test asked to wait more times than any test needs: a loop that does not end.

    A ``BaseException``, so the product's ``except Exception`` (which turns a fault into an outcome)
    cannot swallow it: the test fails at once instead of spinning until its deadline. This is what
    makes a mutant that breaks a polling loop's exit fail fast under ``make mutate`` rather than
    run into mutmut's timeout."""


class Sleeps:
    """Pass as ``sleep=``; ``waits`` lists every requested wait in seconds.

    With waits that return at once, a polling loop whose exit is broken spins on the wall clock
    until its deadline; after ``limit`` waits (no test needs more than a few dozen) the next one
    raises :class:`EndlessWait`."""

    def __init__(self, limit: int = 1000) -> None:
        self.waits: list[float] = []
        self.limit = limit

    def __call__(self, seconds: float) -> None:
        if len(self.waits) >= self.limit:
            raise EndlessWait(f"asked to wait {len(self.waits) + 1} times: a loop that does not end")
        self.waits.append(seconds)
