"""Figures from the ledger's outcomes (pure): what happened per binding and day, and how long a
rotation took to reach a healed refresh. ``python -m remediation history --figures [--json]``
prints them; the workbook (``infra/workbook.json``) draws the same from Application Insights.

* ``byBinding``: per binding and UTC day, how many targets were healed (``updated``), rejected,
  in doubt, blocked and deferred.
* ``byAccount``: the same per account (the account key the per-account lockout rules count
  against: ``user:svc_pbi``, ``app:<client id>``, ``secret:<name>``), so that one service account
  behind several bindings shows as one row. Outcomes recorded before outcomes carried the account
  are not counted here (they still are per binding).
* ``rotationToHealed``: per secret version, from the first outcome that names it (the ledger does
  not know Key Vault's ``created`` time; the workbook uses Key Vault's own log) to the first
  completed refresh of a run that applied it, with the accounts it was applied to.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from remediation.ledger import Outcome

__all__ = ["COLUMNS", "figures"]

_Counts = dict[tuple[str, str], dict[str, int]]

COLUMNS = {
    "updated": "healed",
    "rejected": "rejected",
    "in-doubt": "inDoubt",
    "blocked": "blocked",
    "deferred": "deferred",
}


def _day(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d")


def _count(counts: _Counts, key: str, moment: float, column: str) -> None:
    bucket = counts.setdefault((key, _day(moment)), dict.fromkeys(COLUMNS.values(), 0))
    bucket[column] += 1


def figures(outcomes: Iterable[Outcome]) -> dict[str, Any]:
    """The figures of ``outcomes`` (any order)."""
    rows = sorted(outcomes, key=lambda o: o.time)
    counts: _Counts = {}
    per_account: _Counts = {}
    first_seen: dict[tuple[str, str], float] = {}
    applied_in: dict[str, set[tuple[str, str]]] = {}  # correlation id -> versions applied in it
    healed_at: dict[tuple[str, str], float] = {}
    binding_of: dict[tuple[str, str], str] = {}
    accounts_of: dict[tuple[str, str], set[str]] = {}
    for o in rows:
        if o.secret_name and o.secret_version:
            key = (o.secret_name, o.secret_version)
            first_seen.setdefault(key, o.time)
            if o.binding:
                binding_of.setdefault(key, o.binding)
            if o.action == "updated" and o.correlation_id:
                applied_in.setdefault(o.correlation_id, set()).add(key)
            if o.action == "updated" and o.account:
                accounts_of.setdefault(key, set()).add(o.account)
        column = COLUMNS.get(o.action or "")
        if column is not None and o.binding:
            _count(counts, o.binding, o.time, column)
        if column is not None and o.account:
            _count(per_account, o.account, o.time, column)
        if o.action == "refreshed" and (o.refresh_state or "").casefold() == "completed" and o.correlation_id:
            for key in applied_in.get(o.correlation_id, ()):
                healed_at.setdefault(key, o.time)
    return {
        "byBinding": [{"binding": b, "day": d, **c} for (b, d), c in sorted(counts.items())],
        "byAccount": [{"account": a, "day": d, **c} for (a, d), c in sorted(per_account.items())],
        "rotationToHealed": [
            {
                "secretName": name,
                "secretVersion": version,
                "binding": binding_of.get((name, version)),
                "accounts": sorted(accounts_of.get((name, version), ())),
                "firstSeen": datetime.fromtimestamp(first_seen[(name, version)], UTC).isoformat(),
                "healedAt": datetime.fromtimestamp(at, UTC).isoformat(),
                "seconds": round(at - first_seen[(name, version)], 3),
            }
            for (name, version), at in sorted(healed_at.items(), key=lambda item: item[1])
        ],
    }
