"""Shared fixtures: a running sandbox per test, and the product's environment pointing at it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from sandbox import Sandbox
from tests.support.azurite import Azurite, start_azurite

# Property tests (Hypothesis). "deterministic", the default: the same examples every run
# (derandomized: the seed comes from the test's own code), no example database (nothing written to
# .hypothesis/). "long" (HYPOTHESIS_PROFILE=long): more examples, new random ones each run; a
# failure prints the @reproduce_failure line that replays it.
settings.register_profile("deterministic", derandomize=True, max_examples=60, print_blob=True)
settings.register_profile("long", max_examples=1000, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


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
