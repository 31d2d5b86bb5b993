"""The operator CLI (``python -m remediation``) through the sandbox: exit codes and output."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from remediation.edges.cli import main
from remediation.ledger import Outcome
from remediation.ledger.sqlite import SqliteLedger
from sandbox import Sandbox
from sandbox.keyvault import EventSchema
from sandbox.recorder import RecordedRequest
from tests.support.world import World, build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Cli:
    world: World
    env: dict[str, str]
    state_path: Path

    @property
    def sb(self) -> Sandbox:
        return self.world.sb

    def __call__(self, *argv: str, env: dict[str, str] | None = None) -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), environ=self.env if env is None else env, stdout=out, stderr=err)
        return Result(code, out.getvalue(), err.getvalue())


Make = Callable[..., Cli]


@pytest.fixture
def make(sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Make:
    """Build a world and the CLI's environment (applied to ``os.environ`` too, for CA trust)."""

    def make(**kwargs: Any) -> Cli:
        world = build_world(sb, **kwargs)
        state_path = tmp_path / "ledger.db"
        env = world.env(state_path)
        # In this process the CLI must not configure the exporter (process-global providers):
        # CLI telemetry is proven in a child process in test_cli_telemetry.py.
        env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING")
        monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return Cli(world, env, state_path)

    return make


def patches(sb: Sandbox) -> list[RecordedRequest]:
    return sb.requests.find("powerbi.update_datasource")


def powerbi_requests(sb: Sandbox) -> list[RecordedRequest]:
    return sb.requests.find(service="powerbi")


def powerbi_writes(sb: Sandbox) -> list[RecordedRequest]:
    return [r for r in powerbi_requests(sb) if r.method != "GET"]


# -- heal ---------------------------------------------------------------------------------------
def test_heal_secret_prints_a_table_and_exits_0(make: Make) -> None:
    cli = make(sources=2)
    cli.world.rotate()
    cli.world.fail_scheduled_refreshes()

    result = cli("heal", "--secret", cli.world.secret_name)

    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["WHAT", "BINDING", "VERSION", "ACTION", "REASON"]
    assert sum(1 for line in lines if " updated " in line) == 2
    assert sum(1 for line in lines if " refreshed " in line) == 2
    assert cli.world.version[:8] in result.out
    assert len(patches(cli.sb)) == 2


def test_heal_secret_json_report(make: Make) -> None:
    cli = make(sources=2)
    cli.world.rotate()

    result = cli("--json", "heal", "--secret", cli.world.secret_name)

    assert result.code == 0, result.err
    report = result.json()
    assert report["exitCode"] == 0 and report["dryRun"] is False
    assert sorted(t["datasource_id"] for t in report["targets"]) == sorted(cli.world.datasource_ids)
    assert {t["action"] for t in report["targets"]} == {"updated"}
    assert {t["secret_version"] for t in report["targets"]} == {cli.world.version}


def test_heal_with_an_unbound_secret_exits_2_with_one_line(make: Make) -> None:
    cli = make()

    result = cli("heal", "--secret", "no-such-secret")

    assert result.code == 2
    assert result.out == ""
    assert len(result.err.strip().splitlines()) == 1
    assert "no-such-secret" in result.err
    assert powerbi_writes(cli.sb) == []


def test_bad_bindings_exit_2_naming_binding_and_field_before_any_power_bi_call(make: Make) -> None:
    cli = make()
    bindings = cli.world.bindings()
    bindings["bindings"][0]["credentialType"] = "Kerberos"
    env = {**cli.env, "REMEDIATION_BINDINGS": json.dumps(bindings)}
    cli.sb.requests.clear()

    for argv in (["heal", "--secret", cli.world.secret_name], ["sweep"], ["bindings", "check"]):
        result = cli(*argv, env=env)
        assert result.code == 2, argv
        assert len(result.err.strip().splitlines()) == 1, result.err
        assert cli.world.binding_name in result.err and "credentialType" in result.err
    assert powerbi_requests(cli.sb) == []


def test_a_usage_error_exits_2_on_the_given_stderr(make: Make) -> None:
    cli = make()

    result = cli("heal", "--secret", cli.world.secret_name, "--bogus")

    assert result.code == 2
    assert "--bogus" in result.err and result.out == ""
    assert len(result.err.strip().splitlines()) == 1
    assert powerbi_requests(cli.sb) == []


def test_missing_key_vault_url_exits_2(make: Make) -> None:
    cli = make()
    env = {k: v for k, v in cli.env.items() if k != "KEY_VAULT_URL"}

    result = cli("heal", "--secret", cli.world.secret_name, env=env)

    assert result.code == 2
    assert "KEY_VAULT_URL" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert powerbi_writes(cli.sb) == []


def test_a_rejected_target_exits_1(make: Make) -> None:
    cli = make()
    cli.world.rotate_sources_only()
    cli.world.put_in_vault("Wrong#Password-0000")

    result = cli("heal", "--secret", cli.world.secret_name)

    assert result.code == 1
    assert " rejected " in result.out
    assert len(patches(cli.sb)) == 1
    again = cli("heal", "--secret", cli.world.secret_name)
    assert again.code == 1 and " blocked " in again.out
    assert len(patches(cli.sb)) == 1


def test_a_take_over_is_a_warning_line_naming_the_dataset_and_the_sources_it_reset(make: Make) -> None:
    cli = make(cloud=True)
    w = cli.world
    erp_source = cli.sb.sources.add("erp-cloud", credential_type="Basic", username="svc_erp", secret="Erp#1")
    erp = cli.sb.powerbi.add_datasource(w.gateway, erp_source, connection_details={"server": "erp.example"})
    w.datasets[0].datasources.append(erp)
    cli.sb.vault.set_secret("erp-password", "Erp#1")
    w.datasets[0].owner = "someone.else@contoso.com"
    w.gateway.admins.discard(w.app.client_id)
    erp_binding = {
        "name": "erp",
        "secret": "erp-password",
        "credentialType": "Basic",
        "username": "svc_erp",
        "targets": [{"gatewayId": w.gateway_id, "datasourceId": erp.id}],
    }
    bindings = {
        "bindings": [{**w.binding(), "takeOver": True}, erp_binding],
        "watch": {"workspaces": [w.workspace_id]},
    }
    env = {**cli.env, "REMEDIATION_BINDINGS": json.dumps(bindings)}
    w.rotate()

    result = cli("heal", "--secret", w.secret_name, env=env)
    again = cli("--json", "heal", "--secret", w.secret_name, env=env)

    assert result.code == 0, result.out + result.err
    (line,) = [x for x in result.out.splitlines() if x.startswith("warning:") and "took over" in x]
    assert w.datasource_ids[0] in line and f"took over dataset {w.datasets[0].id}" in line
    assert f"Sql on erp.example ({w.gateway_id}/{erp.id})" in line
    assert again.code == 0 and all("warnings" not in t for t in again.json()["targets"])
    assert [r.status for r in cli.sb.requests.find("powerbi.take_over")] == [200]


# -- sweep --------------------------------------------------------------------------------------
def test_sweep_dry_run_exits_0_and_changes_nothing(make: Make) -> None:
    cli = make(sources=2)
    cli.world.rotate()
    cli.world.fail_scheduled_refreshes()

    result = cli("--json", "sweep", "--dry-run")

    assert result.code == 0, result.err
    report = result.json()
    assert report["dryRun"] is True
    assert {t["action"] for t in report["targets"]} == {"would-update"}
    assert "would-refresh" in {d["action"] for d in report["datasets"]}
    assert powerbi_writes(cli.sb) == []
    with SqliteLedger(cli.state_path) as ledger:
        assert ledger.outcomes() == []
        assert all(
            ledger.target_state(cli.world.gateway_id, d).applied_version is None
            for d in cli.world.datasource_ids
        )
    assert not any(d.schedule.enabled for d in cli.world.datasets)


# -- replay -------------------------------------------------------------------------------------
@pytest.mark.parametrize("schema", ["EventGridSchema", "CloudEventSchema"])
def test_replay_heals_once_even_when_the_event_comes_twice(
    make: Make, tmp_path: Path, schema: EventSchema
) -> None:
    cli = make(sources=2)
    events: list[dict[str, Any]] = []
    cli.sb.vault.subscribe(events.append, schema)
    cli.world.rotate()
    cli.world.fail_scheduled_refreshes()
    assert len(events) == 1
    path = tmp_path / "events.json"
    path.write_text(json.dumps([events[0], events[0]]), encoding="utf-8")

    result = cli("--json", "replay", str(path))

    assert result.code == 0, result.err
    report = result.json()
    assert sorted(t["datasource_id"] for t in report["targets"]) == sorted(cli.world.datasource_ids)
    assert {t["action"] for t in report["targets"]} == {"updated"}
    assert len(patches(cli.sb)) == 2
    assert all(d.schedule.enabled for d in cli.world.datasets)
    assert [cli.sb.powerbi.history(d)[0].status for d in cli.world.datasets] == ["Completed"] * 2

    again = cli("--json", "replay", str(path))  # a redelivery of the same batch
    assert again.code == 0, again.err
    assert again.json()["targets"] == []
    assert len(patches(cli.sb)) == 2


# -- history and bindings check -----------------------------------------------------------------
def test_history_json_lists_outcomes(make: Make) -> None:
    cli = make(sources=2)
    cli.world.rotate()
    assert cli("heal", "--secret", cli.world.secret_name).code == 0

    result = cli("history", "--json")

    assert result.code == 0, result.err
    rows = result.json()
    updated = [r for r in rows if r["action"] == "updated"]
    assert sorted(r["datasource_id"] for r in updated) == sorted(cli.world.datasource_ids)
    assert all(r["secret_version"] == cli.world.version for r in updated)
    assert all(r["trigger"] == "cli" for r in rows)


def test_history_figures_count_each_outcome_kind_per_account_across_its_bindings(make: Make) -> None:
    """Two bindings, one service account: the figures per account add up what happened to every
    data source that signs in as it (healed, then a wrong version: one rejected, the rest blocked)."""
    cli = make(sources=3)
    w = cli.world
    sales, dw = w.binding(), w.binding()
    sales["targets"], dw["targets"] = sales["targets"][:2], dw["targets"][2:]
    dw["name"] = "dw-sql"
    env = {**cli.env, "REMEDIATION_BINDINGS": json.dumps({"bindings": [sales, dw]})}
    w.rotate()
    w.fail_scheduled_refreshes()
    assert cli("heal", "--secret", w.secret_name, env=env).code == 0
    w.rotate_sources_only()
    w.put_in_vault("Wrong#Password-0000")
    assert cli("heal", "--secret", w.secret_name, env=env).code == 1

    doc = cli("history", "--figures", "--json", env=env).json()
    rows = cli("history", "--json", env=env).json()

    totals: dict[str, dict[str, int]] = {}
    for row in doc["byAccount"]:  # summed over days (a run may straddle midnight UTC)
        bucket = totals.setdefault(row["account"], {})
        for kind in ("healed", "rejected", "inDoubt", "blocked", "deferred"):
            bucket[kind] = bucket.get(kind, 0) + row[kind]
    assert totals == {"user:svc_pbi": {"healed": 3, "rejected": 1, "inDoubt": 0, "blocked": 2, "deferred": 0}}
    healed_per_binding = {
        b: sum(r["healed"] for r in doc["byBinding"] if r["binding"] == b) for b in ("sales-sql", "dw-sql")
    }
    assert healed_per_binding == {"sales-sql": 2, "dw-sql": 1}
    (rotation,) = doc["rotationToHealed"]
    assert rotation["accounts"] == ["user:svc_pbi"] and rotation["seconds"] >= 0
    assert {r["account"] for r in rows if r["datasource_id"] and not r["dataset_id"]} == {"user:svc_pbi"}
    assert {r["account"] for r in rows if r["dataset_id"]} == {None}
    assert "Wrong#Password-0000" not in json.dumps(doc) + json.dumps(rows)


def test_history_masks_a_urls_key_in_rows_recorded_before_outcomes_were_masked(make: Make) -> None:
    cli = make()
    old = "data source Web {'url': 'https://api.contoso.com/v1?apikey=Zk3y-old-row'} has no binding"
    with SqliteLedger(cli.state_path) as ledger:
        ledger.add_outcome(Outcome(time=time.time(), trigger="timer", action="unbound", reason=old))

    table, as_json = cli("history"), cli("history", "--json")

    assert table.code == as_json.code == 0
    assert "Zk3y-old-row" not in table.out + as_json.out
    assert [r["reason"] for r in as_json.json()] == [old.replace("Zk3y-old-row", "[REDACTED]")]


def test_bindings_check_exit_0_for_a_good_world(make: Make) -> None:
    cli = make(sources=2)

    result = cli("--json", "bindings", "check")

    assert result.code == 0, result.err
    rows = result.json()
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert powerbi_writes(cli.sb) == []


def test_bindings_check_says_a_warning_several_bindings_share_once_naming_them(make: Make) -> None:
    cli = make(sources=2)
    first, second = cli.world.binding(), cli.world.binding()
    first["targets"], second["targets"] = first["targets"][:1], first["targets"][1:]
    second["name"] = "sales-sql-2"
    env = {**cli.env, "REMEDIATION_BINDINGS": json.dumps({"bindings": [first, second]})}

    result = cli("bindings", "check", env=env)
    as_json = cli("--json", "bindings", "check", env=env)

    assert result.code == 0, result.out + result.err
    (line,) = [x for x in result.out.splitlines() if x.startswith("warning:")]
    assert line.startswith(
        f"warning: 2 bindings ({first['name']}, sales-sql-2): privacyLevel (Organizational) and "
        "encryptedConnection (Encrypted) not set"
    )
    assert all(len(r["warnings"]) == 1 for r in as_json.json())  # JSON: on each row


def test_bindings_check_exit_1_when_a_target_does_not_exist(make: Make) -> None:
    cli = make()
    bindings = cli.world.bindings()
    missing = str(uuid.uuid4())
    bindings["bindings"][0]["targets"].append({"gatewayId": cli.world.gateway_id, "datasourceId": missing})
    env = {**cli.env, "REMEDIATION_BINDINGS": json.dumps(bindings)}

    result = cli("bindings", "check", env=env)

    assert result.code == 1
    line = next(line for line in result.out.splitlines() if missing in line)
    assert "not found" in line
    assert powerbi_writes(cli.sb) == []


# -- explicit versions, the operator's way out, settling versions (issues 9.4 and 10) -------------
def test_a_version_key_vault_does_not_have_exits_2_in_one_line_and_sends_nothing(make: Make) -> None:
    cli = make()
    cli.world.rotate()

    result = cli("heal", "--secret", cli.world.secret_name, "--version", "0" * 32)

    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1 and "nothing was sent" in result.err
    assert powerbi_writes(cli.sb) == []


def test_present_again_presents_an_in_doubt_version_once_more_and_says_so(make: Make) -> None:
    cli = make(sources=2)
    cli.world.rotate()
    cli.sb.faults.add("powerbi.update_datasource", after=True, drop=True)
    doubt = cli("--json", "heal", "--secret", cli.world.secret_name)
    assert doubt.code == 1 and {t["action"] for t in doubt.json()["targets"]} == {"in-doubt"}
    assert cli("heal", "--secret", cli.world.secret_name).code == 1  # not presented again on its own
    assert len(patches(cli.sb)) == 1

    again = cli("--json", "heal", "--secret", cli.world.secret_name, "--present-again")

    assert again.code == 0, again.err
    targets = again.json()["targets"]
    assert {t["action"] for t in targets} == {"updated"}
    assert all("operator's request" in t["reason"] for t in targets)
    assert len(patches(cli.sb)) == 3


def test_the_cli_waits_for_a_settling_version_then_heals(make: Make) -> None:
    cli = make()
    cli.world.rotate()

    # 3 s: the CLI process must start (and import its SDKs) before the version settles, also on a
    # loaded machine; it then waits out the rest.
    result = cli(
        "heal", "--secret", cli.world.secret_name, env={**cli.env, "REMEDIATION_SETTLE_SECONDS": "3"}
    )

    assert result.code == 0, result.out + result.err
    assert "waiting" in result.err and "REMEDIATION_SETTLE_SECONDS" in result.err
    assert " updated " in result.out and len(patches(cli.sb)) == 1
