"""Fixtures of the end-to-end tests through the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import Sandbox
from tests.support.harness import Make, harness_factory


@pytest.fixture
def make(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Make]:
    """Build a world and the real healer over it (see :func:`tests.support.harness.harness_factory`)."""
    yield from harness_factory(sb, monkeypatch, tmp_path)


@pytest.fixture
def port_443(sb: Sandbox) -> None:
    if 443 not in sb.http.extra_ports_bound:
        pytest.skip("port 443 could not be bound; msal's user-realm discovery needs it")
