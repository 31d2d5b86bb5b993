"""docs/troubleshooting.md covers every code and cause the diagnosis knows."""

from __future__ import annotations

from pathlib import Path

from remediation.rules import diagnosis

DOC = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text(encoding="utf-8")


def test_every_error_code_the_diagnosis_knows_is_in_the_guide() -> None:
    tables = (
        diagnosis._CREDENTIAL_CODES,
        diagnosis._GATEWAY_CODES,
        diagnosis._SOURCE_CODES,
        diagnosis._QUOTA_CODES,
        diagnosis._PERMISSION_CODES,
    )
    missing = [code for table in tables for code in table if f"`{code}`" not in DOC]
    assert missing == []


def test_every_account_cause_is_in_the_guide_with_what_it_refuses() -> None:
    for cause, *_ in diagnosis._ACCOUNT_RULES:
        assert f"`{cause}`" in DOC
    assert "--present-again" in DOC and "lockout" in DOC.casefold()
