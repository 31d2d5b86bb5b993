"""The port-443 rule of the test suite itself (tests/support/ports.py): a caller-identity test is
skipped without port 443, but fails under CI=true, saying what to do."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.support import ports


def _sandbox(*bound: int) -> Any:
    return SimpleNamespace(http=SimpleNamespace(extra_ports_bound=list(bound)))


@pytest.fixture
def denied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "bind_problem", lambda *a, **k: "Permission denied")


@pytest.mark.usefixtures("denied")
def test_without_port_443_a_caller_identity_test_is_skipped_outside_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"port 443 could not be bound \(Permission denied\)"):
        ports.require_user_realm_port(_sandbox())
    assert ports.user_realm_port_served(_sandbox()) is False


@pytest.mark.usefixtures("denied")
@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_under_ci_it_fails_and_says_what_to_do(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    for check in (ports.require_user_realm_port, ports.user_realm_port_served):
        with pytest.raises(pytest.fail.Exception) as failed:
            check(_sandbox())
        message = str(failed.value)
        assert "Permission denied" in message
        assert "as root" in message and "cap_net_bind_service" in message
        assert "two test runs at once" in message


def test_with_port_443_served_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    ports.require_user_realm_port(_sandbox(443))
    assert ports.user_realm_port_served(_sandbox(443)) is True


def test_the_make_check_says_in_one_line_whether_443_can_be_bound(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ports, "bind_problem", lambda *a, **k: None)
    assert ports.main() == 0
    monkeypatch.setattr(ports, "bind_problem", lambda *a, **k: "Address already in use")
    assert ports.main() == 0
    can, cannot = capsys.readouterr().out.splitlines()
    assert can.startswith("port 443: can bind")
    assert cannot.startswith("port 443: cannot bind (Address already in use)") and "CI=true" in cannot
