"""What the refresher says of a failed refresh-history entry (the reason an operator reads)."""

from __future__ import annotations

from remediation.clients.powerbi_models import Refresh
from remediation.reconciler.refresh_evidence import diagnose


def entry(status: str) -> Refresh:
    return Refresh(request_id=None, refresh_type=None, start_time=None, end_time=None, status=status)


def test_a_failed_refresh_without_an_error_code_is_told_by_its_status() -> None:
    assert diagnose(entry("Failed")).message == "Refresh Failed without an error code."


def test_a_cancelled_refresh_is_told_as_cancelled() -> None:
    assert diagnose(entry("Cancelled")).message == "The refresh was cancelled."
