"""Shared fixtures: a running sandbox per test, and the product's environment pointing at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox import Sandbox
from tests.support.azurite import Azurite, start_azurite


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    """A started sandbox (HTTPS on a free 127.0.0.1 port), stopped after the test."""
    sandbox = Sandbox()
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def sandbox_env(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Apply ``sb.env()`` to ``os.environ`` for this test (CA trust included) and return it."""
    env = sb.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def azurite() -> Iterator[Azurite]:
    """Azurite's Table service on a free loopback port, in memory, stopped after the test."""
    server = start_azurite()
    try:
        yield server
    finally:
        server.stop()
