"""Figures per binding and day, and rotation to healed refresh (pure), and ``history --figures``."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

from remediation.edges.cli import main
from remediation.ledger import Outcome
from remediation.ledger.sqlite import SqliteLedger
from remediation.telemetry.figures import figures
from remediation.telemetry.outcomes import OUTCOME_PROPERTIES

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


def test_counts_per_account_join_the_bindings_that_sign_in_as_one_account() -> None:
    svc = {"account": "user:svc_pbi", "secret_name": "sql", "secret_version": "c" * 32}
    rows = [
        _o(DAY, "updated", binding="sales", correlation_id="c1", **svc),
        _o(DAY + 1, "updated", binding="finance", correlation_id="c1", **svc),
        _o(DAY + 2, "blocked", binding="finance", correlation_id="c1", **svc),
        _o(DAY + 3, "rejected", binding="erp", account="secret:erp-key", secret_name="erp-key"),
        _o(DAY + 4, "already-current", binding="sales", **svc),  # not one of the columns
        _o(DAY + 5, "deferred", binding="sales"),  # recorded before outcomes carried the account
        _o(DAY + 86400, "in-doubt", binding="sales", **svc),
        _o(DAY + 9, "refreshed", correlation_id="c1", refresh_state="Completed", dataset_id="d"),
    ]
    doc = figures(rows)
    zero = {"healed": 0, "rejected": 0, "inDoubt": 0, "blocked": 0, "deferred": 0}
    assert doc["byAccount"] == [
        {"account": "secret:erp-key", "day": "2026-11-30", **zero, "rejected": 1},
        {"account": "user:svc_pbi", "day": "2026-11-30", **zero, "healed": 2, "blocked": 1},
        {"account": "user:svc_pbi", "day": "2026-12-01", **zero, "inDoubt": 1},
    ]
    assert sum(f["deferred"] for f in doc["byBinding"]) == 1  # still counted per binding
    (rotation,) = doc["rotationToHealed"]
    assert (rotation["accounts"], rotation["seconds"]) == (["user:svc_pbi"], 9.0)


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


def test_the_workbook_charts_per_account_and_the_time_to_a_healed_refresh() -> None:
    workbook = json.loads((INFRA / "workbook.json").read_text(encoding="utf-8"))
    by_name = {i["name"]: i["content"] for i in workbook["items"]}
    over_time = by_name["per-account-over-time"]
    for action in ("updated", "rejected", "in-doubt", "blocked", "deferred"):
        assert f'"{action}"' in over_time["query"]
    assert "customDimensions.account" in over_time["query"] and over_time["visualization"] == "timechart"
    table = by_name["per-account-and-binding"]["query"]
    assert "by account, binding" in table
    healed = by_name["rotation-to-healed-refresh"]
    assert "rotation to healed refresh" in healed["title"].lower()
    assert '"refreshed"' in healed["query"] and '=~ "Completed"' in healed["query"]
    assert "join kind=inner healedRefreshes on correlationId" in healed["query"]
    assert healed["visualization"] in ("barchart", "timechart", "linechart", "scatterchart")


def test_every_dimension_the_workbook_reads_is_one_the_healer_emits() -> None:
    """A query on a dimension no event carries shows an empty chart, silently: the workbook may
    read only what ``outcome_properties`` emits, and its KQL is balanced."""
    workbook = json.loads((INFRA / "workbook.json").read_text(encoding="utf-8"))
    queries = [i["content"]["query"] for i in workbook["items"] if "query" in i["content"]]
    read = {name for q in queries for name in re.findall(r"customDimensions\.(\w+)", q)}
    assert "account" in read
    assert read <= set(OUTCOME_PROPERTIES), read - set(OUTCOME_PROPERTIES)
    for query in queries:
        text = re.sub(r'"(?:\\.|[^"\\])*"', '""', query)  # string literals cannot unbalance it
        assert text.count('"') % 2 == 0, query
        for opening, closing in ("()", "[]", "{}"):
            assert text.count(opening) == text.count(closing), query
        assert all(
            line.startswith(("|", "let ", "customEvents", "outcomes", "workspace")) or not line
            for line in query.splitlines()[1:]
        ), query
