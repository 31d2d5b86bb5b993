"""Time for tests: a ``sleep`` that returns at once and remembers what it was asked to wait."""

from __future__ import annotations


class Sleeps:
    """Pass as ``sleep=``; ``waits`` lists every requested wait in seconds."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
