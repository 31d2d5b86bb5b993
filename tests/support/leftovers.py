"""What a test run must not leave behind: Azure Monitor exporters and their offline storage.

``configure_azure_monitor`` installs process-global providers; their exporters run in threads
until the process exits and keep their offline storage in
``<tempdir>/Microsoft-AzureMonitor-<hash>/``. In the pytest process they would outlive the test
that configured them (retrying its stopped sandbox after the run, filling the system temp
directory), so telemetry is only ever configured in a child process, with ``TMPDIR`` set to the
test's ``tmp_path`` (see ``test_telemetry.py``): the child's exporters stop when it exits and
its storage is inside the test's own directory. ``tests/conftest.py`` enforces it: in-process
configuration fails the test, and the session fails if new storage folders or exporter threads
appeared anyway.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

STORAGE_PREFIX = "Microsoft-AzureMonitor-"
_EXPORTER_MODULES = ("opentelemetry", "azure.monitor")
_EXPORTER_THREAD_NAMES = ("Otel", "Quickpulse", "ConfigurationWorker")

IN_PROCESS = (
    "configure_azure_monitor was called in the pytest process: its exporters would outlive this "
    "test (retrying its stopped sandbox) and write to the system temp directory. Configure "
    "telemetry in a child process with TMPDIR set to tmp_path (see tests/sandbox/test_telemetry.py), "
    "or drop APPLICATIONINSIGHTS_CONNECTION_STRING from the environment the product reads here."
)


def storage_folders(root: str | None = None) -> set[str]:
    """The Azure Monitor offline-storage folders in ``root`` (default: the system temp directory)."""
    return {p.name for p in Path(root or tempfile.gettempdir()).glob(STORAGE_PREFIX + "*")}


def exporter_threads() -> list[str]:
    """Names of the live threads that belong to OpenTelemetry or Azure Monitor exporters."""
    return sorted(
        t.name
        for t in threading.enumerate()
        if t.is_alive()
        and (t.name.startswith(_EXPORTER_THREAD_NAMES) or type(t).__module__.startswith(_EXPORTER_MODULES))
    )


def problems(folders_before: set[str], root: str | None = None) -> list[str]:
    """What appeared since ``folders_before`` was taken: new storage folders, live exporter threads."""
    found = []
    new = sorted(storage_folders(root) - folders_before)
    if new:
        where = root or tempfile.gettempdir()
        found.append(f"new Azure Monitor storage folders in {where}: {', '.join(new)}")
    threads = exporter_threads()
    if threads:
        found.append(f"exporter threads still running: {', '.join(threads)}")
    return found
