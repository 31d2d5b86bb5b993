"""What the operator CLI prints (:mod:`remediation.edges.cli`): a command's report, ``history``
(outcomes, or ``--figures``), ``bindings check`` rows and ``discover``'s inventory, as JSON or
as text for a person. Writes to the streams it is given; decides nothing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from remediation.config.bindings import CONNECTIONS
from remediation.inventory import rendering
from remediation.inventory.discover import Inventory
from remediation.ledger import Outcome
from remediation.reconciler.healer import Action, Report

__all__ = [
    "WARNING_TARGETS_SHOWN",
    "print_check",
    "print_figures",
    "print_history",
    "print_inventory",
    "print_report",
    "warning_lines",
]


def print_report(
    report: Report, out: TextIO, as_json: bool, *, extra: Mapping[str, object] | None = None
) -> None:
    """A command's report: as JSON (with ``extra`` keys, e.g. ``adopt``'s plan), or the outcome
    table, its warnings and a summary line."""
    if as_json:
        json.dump({**report.to_dict(), **(extra or {})}, out, indent=2)
        out.write("\n")
        return
    if not report.outcomes:
        out.write("Nothing to do.\n")
        return
    _outcome_table(report.outcomes, out)
    for line in warning_lines(report):
        out.write(line + "\n")
    counts: dict[str, int] = {}
    for o in report.outcomes:
        counts[o.action or "?"] = counts.get(o.action or "?", 0) + 1
    summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
    prefix = "dry run: " if report.dry_run else ""
    out.write(f"\n{prefix}{summary}. Correlation id {report.correlation_id}.\n")


WARNING_TARGETS_SHOWN = 3
"""How many targets a warning shared by several names (then: "and N more"; ``--json`` has each)."""


def warning_lines(report: Report) -> list[str]:
    """The report's warnings as ``warning:`` lines: one per warning of a single target, naming
    it; one per warning several targets share, said once with their count and the first
    :data:`WARNING_TARGETS_SHOWN` of them as the table shows them (see
    :meth:`~remediation.reconciler.report.Report.grouped_warnings`)."""
    lines: list[str] = []
    for group in report.grouped_warnings():
        if len(group.targets) == 1:
            ((gateway_id, datasource_id),) = group.targets
            where = (
                f"connection {datasource_id}"
                if gateway_id == CONNECTIONS
                else f"{gateway_id}/{datasource_id}"
            )
            lines.append(f"warning: {where}: {group.text}")
            continue
        kinds = {gateway_id == CONNECTIONS for gateway_id, _ in group.targets}
        noun = "targets" if len(kinds) > 1 else ("connections" if True in kinds else "data sources")
        shown = ", ".join(_short_target(g, d) for g, d in group.targets[:WARNING_TARGETS_SHOWN])
        more = len(group.targets) - WARNING_TARGETS_SHOWN
        tail = f" and {more} more" if more > 0 else ""
        lines.append(f"warning: {len(group.targets)} {noun}: {group.text} ({shown}{tail})")
    return lines


def _short_target(gateway_id: str, datasource_id: str) -> str:
    """A target as the table's ``what`` column shows it, without the word "source"."""
    if gateway_id == CONNECTIONS:
        return f"connection {datasource_id[:8]}…"
    return f"{gateway_id[:8]}…/{datasource_id[:8]}…"


def print_history(outcomes: Sequence[Outcome], out: TextIO, as_json: bool) -> None:
    """``history``: the outcomes as JSON, or a table with their times."""
    if as_json:
        json.dump([o.to_dict() for o in outcomes], out, indent=2)
        out.write("\n")
    else:
        _outcome_table(outcomes, out, with_time=True)


def print_figures(doc: Mapping[str, Any], out: TextIO, as_json: bool) -> None:
    """``history --figures``: :func:`remediation.telemetry.figures.figures` as JSON, or one line per
    binding and day, per account and day, and per rotation to a healed refresh."""
    if as_json:
        json.dump(doc, out, indent=2)
        out.write("\n")
        return
    out.write("BINDING  DAY  HEALED  REJECTED  IN-DOUBT  BLOCKED  DEFERRED\n")
    for f in doc["byBinding"]:
        out.write(
            f"{f['binding']}  {f['day']}  {f['healed']}  {f['rejected']}  {f['inDoubt']}  "
            f"{f['blocked']}  {f['deferred']}\n"
        )
    if doc["byAccount"]:
        out.write("\nACCOUNT  DAY  HEALED  REJECTED  IN-DOUBT  BLOCKED  DEFERRED\n")
    for f in doc["byAccount"]:
        out.write(
            f"{f['account']}  {f['day']}  {f['healed']}  {f['rejected']}  {f['inDoubt']}  "
            f"{f['blocked']}  {f['deferred']}\n"
        )
    for r in doc["rotationToHealed"]:
        out.write(f"{r['secretName']}@{r['secretVersion'][:8]}: healed refresh {r['seconds']:.0f} s after\n")


def print_check(rows: Sequence[Mapping[str, object]], out: TextIO, as_json: bool) -> None:
    """``bindings check``: its rows (binding, gateway, data source, status, warnings) as JSON, or
    one line per row and each warning once, naming every binding it concerns."""
    if as_json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return
    width = max([len(str(r["binding"])) for r in rows] + [7])
    for r in rows:
        out.write(f"{r['binding']!s:<{width}}  {r['gateway']}  {r['datasource']}  {r['status']}\n")
    # Each warning once, naming every binding it concerns (JSON keeps it on each row).
    concerns: dict[str, list[str]] = {}
    for r in rows:
        for warning in r.get("warnings", []):  # type: ignore[attr-defined]
            names = concerns.setdefault(warning, [])
            if str(r["binding"]) not in names:
                names.append(str(r["binding"]))
    for warning, names in concerns.items():
        who = names[0] if len(names) == 1 else f"{len(names)} bindings ({', '.join(names)})"
        out.write(f"warning: {who}: {warning}\n")


def print_inventory(inventory: Inventory, out: TextIO, err: TextIO, *, as_json: bool, as_csv: bool) -> None:
    """``discover``: the inventory as JSON, CSV or a table (:mod:`remediation.inventory.rendering`);
    with JSON or CSV, what could not be read goes to ``err`` (the table carries it)."""
    if as_json:
        json.dump(rendering.to_json(inventory), out, indent=2)
        out.write("\n")
    elif as_csv:
        csv.writer(out, lineterminator="\n").writerows(rendering.to_csv_rows(inventory))
    else:
        out.write("\n".join(rendering.table_lines(inventory)) + "\n")
    if (as_json or as_csv) and inventory.problems:
        for problem in inventory.problems:
            print(f"warning: {problem}", file=err)


def _outcome_table(outcomes: Sequence[Outcome], out: TextIO, *, with_time: bool = False) -> None:
    headers = (["time"] if with_time else []) + ["what", "binding", "version", "action", "reason"]
    rows = []
    for o in outcomes:
        if o.datasource_id and o.gateway_id == CONNECTIONS:
            what = f"connection {o.datasource_id[:8]}…"
        elif o.datasource_id:
            what = f"source {o.gateway_id[:8] if o.gateway_id else '?'}…/{o.datasource_id[:8]}…"
        else:
            what = f"dataset {(o.dataset_id or '?')[:8]}…"
        reason = o.reason or ""
        if o.refresh_state and o.action == Action.REFRESHED:
            reason = f"[{o.refresh_state}] {reason}"
        row = [what, o.binding or "", (o.secret_version or "")[:8], o.action or "", reason]
        if with_time:
            row.insert(0, datetime.fromtimestamp(o.time, UTC).strftime("%Y-%m-%d %H:%M:%S"))
        rows.append(row)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if i < len(headers) - 1 else 0 for i, h in enumerate(headers)
    ]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    out.write(line + "\n")
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
