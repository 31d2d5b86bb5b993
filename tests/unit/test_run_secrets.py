"""A run's secret values never leave it: outcomes, verdict reasons, warnings, log records and
exceptions on their way out are masked (runs.py), without telemetry being configured."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from remediation.clients.http import ApiError
from remediation.ledger import Outcome
from remediation.reconciler.runs import Run
from remediation.rules.redact import MASK
from remediation.telemetry.redaction import REDACTOR

PASSWORD = 'Pw "with" \\ & + spaces'
JSON_SECRET = json.dumps({"username": "svc_pbi", "password": PASSWORD})


_RUNS: list[Run] = []


@pytest.fixture(autouse=True)
def _drop_every_run() -> Iterator[None]:
    """Each run ends with its test (telemetry's process-wide redactor forgets its values)."""
    yield
    while _RUNS:
        _RUNS.pop().drop_secrets()


def a_run(persisted: list[Outcome] | None = None) -> Run:
    sink = persisted.append if persisted is not None else None
    run = Run(trigger="manual", correlation_id="c1", dry_run=False, started=0.0, owner="o", persist=sink)
    _RUNS.append(run)
    return run


def test_an_outcome_is_kept_recorded_and_returned_masked() -> None:
    persisted: list[Outcome] = []
    run = a_run(persisted)
    run.hold_secret(JSON_SECRET)
    outcome = Outcome(
        time=1.0,
        action="failed",
        reason=f"Fabric refused (InvalidParameter): The value '{PASSWORD}' is not valid; see "
        f"https://h.io/x?key={json.dumps(PASSWORD)[1:-1]}",
        refresh_state=f"Failed {PASSWORD}",
    )

    returned = run.add(outcome)

    expected = (
        f"Fabric refused (InvalidParameter): The value '{MASK}' is not valid; see https://h.io/x?key={MASK}"
    )
    assert returned.reason == expected and returned.refresh_state == f"Failed {MASK}"
    assert run.outcomes == [returned] and persisted == [returned]


def test_a_warning_and_a_verdict_reason_are_masked() -> None:
    run = a_run()
    run.hold_secret(PASSWORD)

    run.warn(("g", "d"), f"sent {PASSWORD}")

    assert run.target_warnings() == {("g", "d"): [f"sent {MASK}"]}
    assert run.redact(f"rejected: {PASSWORD!r}") == f"rejected: '{MASK}'"


def test_an_exception_leaving_the_run_is_masked_in_place_with_its_cause() -> None:
    run = a_run()
    run.hold_secret(JSON_SECRET)
    with pytest.raises(ApiError) as raised:
        try:
            try:
                raise ValueError(f"bad {PASSWORD}")
            except ValueError as cause:
                raise ApiError(
                    f"The value '{PASSWORD}' is not valid",
                    status=400,
                    code="InvalidRequest",
                    details=[("Value", PASSWORD)],
                    method="PATCH",
                    path="/x",
                ) from cause
        finally:
            run.drop_secrets()

    exc = raised.value
    assert str(exc) == f"PATCH /x -> 400 InvalidRequest: The value '{MASK}' is not valid"
    assert exc.details == [("Value", MASK)] and exc.code == "InvalidRequest"
    assert PASSWORD not in repr(exc) and str(exc.__cause__) == f"bad {MASK}"
    # The values are forgotten: telemetry's redactor releases them, the run masks nothing now.
    assert run.redact(PASSWORD) == PASSWORD and REDACTOR.redact(PASSWORD) == PASSWORD
    assert run.secrets == {} and run.redactions == []


def test_a_run_that_ends_without_an_exception_touches_none() -> None:
    run = a_run()
    run.hold_secret(PASSWORD)
    run.drop_secrets()

    assert run.redact(PASSWORD) == PASSWORD


def test_telemetrys_redactor_holds_the_values_and_the_json_password_while_the_run_does() -> None:
    run = a_run()
    run.hold_secret(JSON_SECRET)
    try:
        assert REDACTOR.redact(f"x {PASSWORD} y") == f"x {MASK} y"
    finally:
        run.drop_secrets()


@pytest.mark.parametrize(
    "name",
    [
        "remediation.reconciler.healer",
        "remediation.reconciler.refresher",
        "remediation.reconciler.targets.fabric",
    ],
)
def test_log_records_of_the_reconciler_are_masked_exception_text_included(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run = a_run()
    run.hold_secret(JSON_SECRET)
    log = logging.getLogger(name)
    try:
        log.info("target: %s", f"The value '{PASSWORD}' is not valid", extra={"detail": PASSWORD})
        try:
            raise RuntimeError(f"echo {json.dumps(PASSWORD)}")
        except RuntimeError:
            log.exception("PATCH of g/d")
    finally:
        run.drop_secrets()
    log.info("after the run: %s", "nothing held")

    assert PASSWORD not in caplog.text and json.dumps(PASSWORD)[1:-1] not in caplog.text
    assert MASK in caplog.records[0].getMessage() and caplog.records[0].detail == MASK  # type: ignore[attr-defined]
    assert "RuntimeError" in caplog.text and caplog.records[-1].getMessage() == "after the run: nothing held"
