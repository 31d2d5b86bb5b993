"""A warning that many targets share is said once, with the count and the first targets, in the
human-readable report (the CLI's table, the demo); the JSON report keeps every warning on its own
target (the contract)."""

from __future__ import annotations

import json

from remediation.config.bindings import CONNECTIONS
from remediation.edges.render import warning_lines
from remediation.ledger import Outcome
from remediation.reconciler.report import OWN_ID, Report

GW = "98122ae8-e193-4a41-aae5-74dbc74d070e"
LEGACY = "a1a60f35-2fbe-462b-972d-b57e97d5b8d8"
DS = [f"{i:08d}-c9fc-452b-8824-92ba8f48179c" for i in range(1, 7)]
TARGETS = [(GW, DS[0]), (LEGACY, DS[1]), *((GW, d) for d in DS[2:])]


def defaults_warning(datasource_id: str) -> str:
    """The warning the gateway kind gives when a data source's settings could not be read: it
    names the data source's own id, so no two targets' texts are equal."""
    return (
        "privacyLevel (Organizational) and encryptedConnection (Encrypted) set to the defaults because "
        f"the data source's current setting could not be read (no Fabric connection has the id "
        f"{datasource_id}; no single Fabric connection has its gateway, type and path); write the data "
        "source's own values in the binding to keep them"
    )


def report(targets: list[tuple[str, str]], warnings: dict[tuple[str, str], list[str]]) -> Report:
    outcomes = [
        Outcome(time=0.0, binding="sales-sql", gateway_id=g, datasource_id=d, action="updated")
        for g, d in targets
    ]
    outcomes.append(Outcome(time=0.0, workspace_id="w", dataset_id="d", action="refreshed"))
    return Report(outcomes=outcomes, correlation_id="c", warnings=warnings)


def test_six_data_sources_with_the_same_warning_are_one_line_with_the_count_and_three_of_them() -> None:
    r = report(TARGETS, {t: [defaults_warning(t[1])] for t in TARGETS})

    (group,) = r.grouped_warnings()
    (line,) = warning_lines(r)

    assert group.targets == tuple(TARGETS)  # in the report's order
    assert not any(d in group.text for d in DS) and f"has the id {OWN_ID};" in group.text
    assert line == (
        f"warning: 6 data sources: {group.text} "
        "(98122ae8…/00000001…, a1a60f35…/00000002…, 98122ae8…/00000003… and 3 more)"
    )


def test_the_json_report_keeps_each_warning_on_its_own_target() -> None:
    r = report(TARGETS, {t: [defaults_warning(t[1])] for t in TARGETS})

    doc = json.loads(json.dumps(r.to_dict()))

    assert [t["warnings"] for t in doc["targets"]] == [[defaults_warning(d)] for _, d in TARGETS]
    assert "warnings" not in doc["datasets"][0]


def test_a_warning_of_one_target_names_it_in_full_with_its_own_text() -> None:
    only = TARGETS[0]
    r = report(TARGETS[:2], {only: [defaults_warning(only[1])]})

    assert warning_lines(r) == [f"warning: {GW}/{DS[0]}: {defaults_warning(DS[0])}"]


def test_two_targets_are_both_named_and_different_warnings_stay_apart() -> None:
    took_over = "took over dataset 7 (workspace w) to update this data source"
    r = report(
        TARGETS[:3],
        {
            TARGETS[0]: [defaults_warning(DS[0]), took_over],
            TARGETS[1]: [defaults_warning(DS[1])],
            TARGETS[2]: ["the connection allows an unencrypted fallback"],
        },
    )

    lines = warning_lines(r)

    assert len(lines) == 3
    assert lines[0].startswith("warning: 2 data sources: privacyLevel (Organizational)")
    assert lines[0].endswith("(98122ae8…/00000001…, a1a60f35…/00000002…)")  # no "and 0 more"
    assert lines[1] == f"warning: {GW}/{DS[0]}: {took_over}"
    assert lines[2] == f"warning: {GW}/{DS[2]}: the connection allows an unencrypted fallback"


def test_another_target_s_id_in_a_warning_is_not_set_aside() -> None:
    """Only a target's *own* ids make its warning like another's: a warning that names other
    data sources (a Take Over's reset list) differs when they differ."""
    r = report(
        TARGETS[:2],
        {
            TARGETS[0]: [f"reset {DS[4]}"],
            TARGETS[1]: [f"reset {DS[5]}"],
        },
    )

    assert [len(g.targets) for g in r.grouped_warnings()] == [1, 1]


def test_connections_are_counted_as_connections_and_a_mix_as_targets() -> None:
    connections = [(CONNECTIONS, d) for d in DS[:4]]
    same = {t: ["Fabric throttled the read"] for t in connections}

    (line,) = warning_lines(report(connections, same))
    (mixed,) = warning_lines(
        report([*connections, TARGETS[0]], {**same, TARGETS[0]: [same[connections[0]][0]]})
    )

    assert line == (
        "warning: 4 connections: Fabric throttled the read "
        "(connection 00000001…, connection 00000002…, connection 00000003… and 1 more)"
    )
    assert mixed.startswith("warning: 5 targets: Fabric throttled the read (")
    # The word "connections" (a connection target's gateway id) is not one of its own ids.
    (kept,) = warning_lines(
        report(connections[:2], {t: ["no Fabric connections listed"] for t in connections[:2]})
    )
    assert "no Fabric connections listed" in kept


def test_a_target_reported_twice_counts_once() -> None:
    """A batch of commands (replay) merges reports: the same target and warning is one target."""
    r = report(TARGETS[:2], {t: [defaults_warning(t[1])] for t in TARGETS[:2]})
    r.merge(report(TARGETS[:1], {TARGETS[0]: [defaults_warning(DS[0])]}))

    (group,) = r.grouped_warnings()

    assert group.targets == tuple(TARGETS[:2])
