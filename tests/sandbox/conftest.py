"""Fixtures of the end-to-end tests through the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import Sandbox
from tests.support.harness import Make, harness_factory
from tests.support.ports import require_user_realm_port


@pytest.fixture
def make(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Make]:
    """Build a world and the real healer over it (see :func:`tests.support.harness.harness_factory`)."""
    yield from harness_factory(sb, monkeypatch, tmp_path)


@pytest.fixture
def port_443(sb: Sandbox) -> None:
    """The test needs the sandbox on port 443 (msal's user-realm discovery): skipped without it,
    failed under ``CI=true`` (see :mod:`tests.support.ports`)."""
    require_user_realm_port(sb)
