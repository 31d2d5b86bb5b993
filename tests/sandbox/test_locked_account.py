"""A locked account at the source, through the sandbox (which then answers like SQL Server: error
18486): the healer says so, with the fix, and presents nothing to that account until a new
version or ``--present-again``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from remediation.edges.cli import main
from sandbox import Sandbox
from tests.support.world import World, build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


def run(env: dict[str, str], *argv: str) -> tuple[int, dict[str, Any]]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--json", *argv], environ=env, stdout=out, stderr=err)
    return code, json.loads(out.getvalue())


@pytest.fixture
def world(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[World, dict[str, str]]:
    world = build_world(sb, sources=3)
    sb.powerbi.report_lockouts = True
    env = world.env(tmp_path / "ledger.db")
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING", None)
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return world, env


def test_a_refresh_failing_on_a_locked_account_is_reported_and_changes_nothing(
    sb: Sandbox, world: tuple[World, dict[str, str]]
) -> None:
    w, env = world
    assert run(env, "heal", "--secret", w.secret_name)[0] == 0  # the ledger knows what each holds
    w.account.locked = True  # someone else's stale password locked it
    w.fail_scheduled_refreshes()
    failures_before = w.account.total_failures
    sb.requests.clear()
    code, report = run(env, "heal", "--workspace", w.workspace_id, "--dataset", w.dataset_ids[0])
    (dataset,) = report["datasets"]
    assert code == 1 and dataset["action"] == "blocked"  # a person must act: exit 1
    assert "locked" in dataset["reason"] and "Unlock" in dataset["reason"]
    assert "--present-again" in dataset["reason"]
    code, report = run(env, "sweep")
    assert not sb.requests.find("powerbi.update_datasource"), "nothing is presented to a locked account"
    assert not sb.requests.find("powerbi.refresh_dataset"), "a refresh would be another failed sign-in"
    assert w.account.total_failures == failures_before


def test_a_new_version_refused_because_the_account_is_locked_blocks_the_account(
    sb: Sandbox, world: tuple[World, dict[str, str]]
) -> None:
    w, env = world
    w.account.locked = True
    w.rotate()  # the account gets the new password, Key Vault the new version; still locked
    code, report = run(env, "heal", "--secret", w.secret_name)
    assert code == 1
    actions = sorted(t["action"] for t in report["targets"])
    assert actions.count("rejected") == 1, "one target per account first"
    rejected = next(t for t in report["targets"] if t["action"] == "rejected")
    assert "refused the account" in rejected["reason"] and "Unlock" in rejected["reason"]
    for _ in range(2):
        run(env, "sweep")
    assert len(sb.requests.find("powerbi.update_datasource")) == 1, "never presented again automatically"
    assert w.worst_repeat() <= 1

    # Unlocked by an administrator, the operator presents the version once more: it heals.
    w.account.unlock()
    code, report = run(env, "heal", "--secret", w.secret_name, "--present-again")
    assert code == 0, report
    assert all(t["action"] in ("updated", "already-current") for t in report["targets"])
    assert w.worst_repeat() <= 1
