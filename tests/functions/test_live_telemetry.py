"""Outcomes reach telemetry as they are recorded, not when the command ends: a worker that dies
mid-run (an instance recycled, out of memory) has reported what it did so far."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from remediation.config.settings import Settings
from remediation.edges.service import RemediationService
from remediation.inbound.workqueue import WorkCommand
from remediation.telemetry.appinsights import EVENTS_LOGGER
from remediation.telemetry.outcomes import OUTCOME_EVENT
from sandbox import Sandbox
from tests.functions.test_work_queue import _apply
from tests.support.world import build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


class Events(logging.Handler):
    """The ``CredentialRemediation`` events, as the telemetry logger emits them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.actions: list[tuple[str, str]] = []  # (emit runs under the handler's own lock)

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(OUTCOME_EVENT):
            self.actions.append(
                (str(getattr(record, "datasourceId", "")), str(getattr(record, "action", "")))
            )


@pytest.fixture
def events() -> Any:
    handler = Events()
    logger = logging.getLogger(EVENTS_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_outcomes_recorded_before_a_worker_dies_have_reached_telemetry(
    sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: Events
) -> None:
    """The worker dies after the updates, in the refresh phase (simulated: the refresher raises):
    the updates were reported all the same. Until now the events went out when the command ended."""
    w = build_world(sb, sources=2)
    _apply(w, monkeypatch, tmp_path)
    service = RemediationService.from_settings(Settings.from_env())
    w.rotate()

    def dies(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the worker died")

    monkeypatch.setattr(service.runtime.healer.refresher, "retry_failed_refreshes", dies)
    command = WorkCommand.secret(w.secret_name, None, trigger="eventgrid", correlation_id="rotation-1")
    try:
        with pytest.raises(RuntimeError):
            service.run_command(command, deadline=9e9)
    finally:
        service.close()

    assert sorted(events.actions) == sorted((d, "updated") for d in w.datasource_ids)


def test_every_recorded_outcome_is_emitted_once(
    sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: Events
) -> None:
    w = build_world(sb, sources=2)
    _apply(w, monkeypatch, tmp_path)
    service = RemediationService.from_settings(Settings.from_env())
    w.rotate()
    w.fail_scheduled_refreshes()
    command = WorkCommand.secret(w.secret_name, None, trigger="eventgrid", correlation_id="rotation-1")
    try:
        report = service.run_command(command, deadline=9e9)
        dry = service.run_command(command, deadline=9e9, dry_run=True)  # records nothing: sent at the end
    finally:
        service.close()

    expected = [
        (o.datasource_id or "", str(o.action))
        for o in (*report.recorded_outcomes(), *dry.recorded_outcomes())
    ]
    assert sorted(events.actions) == sorted(expected)
    assert {a for _, a in events.actions} >= {"updated", "refreshed"}
