"""Fixtures of the end-to-end tests through the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import Sandbox
from sandbox.clock import ManualClock
from tests.support.harness import Make, harness_factory
from tests.support.ports import require_user_realm_port


@pytest.fixture
def make(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Make]:
    """Build a world and the real healer over it (see :func:`tests.support.harness.harness_factory`)."""
    yield from harness_factory(sb, monkeypatch, tmp_path)


def manual_world(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *,
    clock: ManualClock | None = None,
    token_lifetime: float | None = None,
) -> Iterator[tuple[Sandbox, ManualClock, Make]]:
    """A started sandbox and a harness factory's first healer on one manual clock (settle times,
    refresh times and evidence ages without waiting); the sandbox is stopped afterwards.
    ``token_lifetime``: Entra's, for tests whose clock jumps further than the SDKs' token cache
    (which reads the wall clock) would follow."""
    clock = clock or ManualClock()
    sb = Sandbox(clock=clock).start()
    if token_lifetime is not None:
        sb.entra.token_lifetime = token_lifetime
    factory = harness_factory(sb, monkeypatch, tmp_path)
    try:
        yield sb, clock, next(factory)
    finally:
        sb.stop()


@pytest.fixture
def manual(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Sandbox, ManualClock, Make]]:
    """A sandbox and a healer on one manual clock (see :func:`manual_world`)."""
    yield from manual_world(monkeypatch, tmp_path)


@pytest.fixture
def port_443(sb: Sandbox) -> None:
    """The test needs the sandbox on port 443 (msal's user-realm discovery): skipped without it,
    failed under ``CI=true`` (see :mod:`tests.support.ports`)."""
    require_user_realm_port(sb)
