"""Figures per binding and day, and rotation to healed refresh (pure), and ``history --figures``."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from remediation.cli import main
from remediation.figures import figures
from remediation.ledger import Outcome
from remediation.ledger_sqlite import SqliteLedger

DAY = 1_796_000_000.0  # 2026-11-30
INFRA = Path(__file__).resolve().parents[2] / "infra"


def _o(at: float, action: str, **kw: str) -> Outcome:
    return Outcome(time=at, action=action, **kw)  # type: ignore[arg-type]


def sample(base: float = DAY) -> list[Outcome]:
    v = {"secret_name": "sql", "secret_version": "a" * 32, "binding": "sales"}
    return [
        _o(base, "rejected", correlation_id="c1", **v),
        _o(base + 1, "blocked", correlation_id="c1", **v),
        _o(base + 60, "updated", correlation_id="c2", **{**v, "secret_version": "b" * 32}),
        _o(base + 61, "updated", correlation_id="c2", **{**v, "secret_version": "b" * 32}),
        _o(base + 90, "refreshed", correlation_id="c2", refresh_state="Completed", dataset_id="d"),
        _o(base + 100, "in-doubt", correlation_id="c3", binding="etl", secret_name="etl"),
        _o(base + 100, "deferred", correlation_id="c3", binding="etl"),
        _o(base + 100, "already-current", correlation_id="c3", binding="etl"),
    ]


def test_counts_per_binding_and_day_and_time_to_a_healed_refresh() -> None:
    doc = figures(reversed(sample()))
    assert doc["byBinding"] == [
        {
            "binding": "etl",
            "day": "2026-11-30",
            "healed": 0,
            "rejected": 0,
            "inDoubt": 1,
            "blocked": 0,
            "deferred": 1,
        },
        {
            "binding": "sales",
            "day": "2026-11-30",
            "healed": 2,
            "rejected": 1,
            "inDoubt": 0,
            "blocked": 1,
            "deferred": 0,
        },
    ]
    (rotation,) = doc["rotationToHealed"]
    assert (rotation["secretVersion"], rotation["seconds"], rotation["binding"]) == ("b" * 32, 30.0, "sales")


def test_a_rejected_version_never_counts_as_healed() -> None:
    assert figures(sample()[:2])["rotationToHealed"] == []


def test_history_figures_json_from_the_ledger(tmp_path: Path) -> None:
    state = tmp_path / "ledger.sqlite"
    ledger = SqliteLedger(str(state))
    for outcome in sample(time.time() - 600):
        ledger.add_outcome(outcome)
    ledger.close()
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["history", "--figures", "--json"],
        environ={"REMEDIATION_STATE_PATH": str(state)},
        stdout=out,
        stderr=err,
    )
    assert code == 0, err.getvalue()
    doc = json.loads(out.getvalue())
    assert {f["binding"] for f in doc["byBinding"]} == {"sales", "etl"}
    assert doc["rotationToHealed"][0]["seconds"] == 30.0


def test_the_workbook_charts_outcomes_per_binding_over_time() -> None:
    workbook = json.loads((INFRA / "workbook.json").read_text(encoding="utf-8"))
    (item,) = [i for i in workbook["items"] if "per binding over time" in i["content"].get("title", "")]
    query = item["content"]["query"]
    for action in ("updated", "rejected", "in-doubt", "blocked", "deferred"):
        assert f'"{action}"' in query
    assert "customDimensions.binding" in query and "timechart" in query
