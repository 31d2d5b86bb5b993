"""The suite's own rule that no test leaves telemetry behind (tests/support/leftovers.py and the
fixtures of tests/conftest.py that apply it)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from remediation.telemetry import appinsights as telemetry
from tests.support import leftovers

CONNECTION_STRING = (
    "InstrumentationKey=00000000-0000-0000-0000-0000000000ab;IngestionEndpoint=https://127.0.0.1:9/"
)


def test_new_storage_folders_are_reported_and_old_ones_are_not(tmp_path: Path) -> None:
    (tmp_path / "Microsoft-AzureMonitor-old").mkdir()
    (tmp_path / "unrelated").mkdir()
    before = leftovers.storage_folders(str(tmp_path))
    assert leftovers.problems(before, str(tmp_path)) == []

    (tmp_path / "Microsoft-AzureMonitor-new").mkdir()

    [problem] = leftovers.problems(before, str(tmp_path))
    assert problem.endswith(": Microsoft-AzureMonitor-new") and str(tmp_path) in problem


def test_a_live_exporter_thread_is_reported_until_it_stops() -> None:
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="OtelBatchSpanRecordProcessor", daemon=True)
    worker.start()
    try:
        assert "OtelBatchSpanRecordProcessor" in leftovers.exporter_threads()
        assert any("exporter threads" in p for p in leftovers.problems(set()))
    finally:
        stop.set()
        worker.join()
    assert "OtelBatchSpanRecordProcessor" not in leftovers.exporter_threads()


def test_the_product_cannot_configure_the_real_distro_in_the_pytest_process() -> None:
    with pytest.raises(pytest.fail.Exception, match="child process with TMPDIR"):
        telemetry._configure_azure_monitor(CONNECTION_STRING, telemetry.Redactor())
    assert leftovers.exporter_threads() == []


def test_a_fake_distro_may_be_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.monitor.opentelemetry as distro

    seen: list[str] = []
    monkeypatch.setattr(distro, "configure_azure_monitor", lambda **kw: seen.append(kw["connection_string"]))
    telemetry._configure_azure_monitor(CONNECTION_STRING, telemetry.Redactor())
    assert seen == [CONNECTION_STRING]
