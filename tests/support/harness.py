"""The real healer over a sandbox world, for end-to-end tests (the ``make`` fixture)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from remediation.config.settings import Settings
from remediation.edges.runtime import Runtime, build_healer
from sandbox import Sandbox
from tests.support.clock import Sleeps
from tests.support.world import World, build_world


@dataclass
class Harness:
    world: World
    env: dict[str, str]
    runtime: Runtime
    sleeps: Sleeps
    state_path: Path
    clock: Callable[[], float] | None = None
    _others: list[Runtime] = field(default_factory=list)

    @property
    def sb(self) -> Sandbox:
        return self.world.sb

    @property
    def healer(self) -> Any:
        return self.runtime.healer

    def another_instance(self, *, clock: Callable[[], float] | None = None, **overrides: str) -> Runtime:
        """A second worker on the same ledger (another process or instance, as far as the
        healer can tell: its own clients, caches and lease owner)."""
        runtime = build_healer(
            Settings.from_env({**self.env, **overrides}),
            sleep=self.sleeps,
            poll_interval=0.01,
            **({"clock": clock or self.clock} if (clock or self.clock) else {}),
        )
        self._others.append(runtime)
        return runtime

    def close(self) -> None:
        for runtime in (self.runtime, *self._others):
            runtime.close()


Make = Callable[..., Harness]


def harness_factory(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Make]:
    """Build a world (or take one), point the environment at it, and build the real healer.

    ``env`` overrides settings; ``clock`` is the healer's clock (default: the wall clock).
    """
    harnesses: list[Harness] = []

    def make(
        world: World | None = None,
        *,
        env: dict[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        **kwargs: Any,
    ) -> Harness:
        world = world or build_world(sb, **kwargs)
        state_path = tmp_path / "ledger.db"
        full = world.env(state_path, **(env or {}))
        for key, value in full.items():  # CA trust (REQUESTS_CA_BUNDLE...) is read from os.environ
            monkeypatch.setenv(key, value)
        sleeps = Sleeps()
        extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
        runtime = build_healer(Settings.from_env(full), sleep=sleeps, poll_interval=0.01, **extra)
        harness = Harness(world, full, runtime, sleeps, state_path, clock)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        harness.close()
