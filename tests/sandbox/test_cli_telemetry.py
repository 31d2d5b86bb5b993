"""The CLI reports to Application Insights like the Functions app, and never leaks a URL's key.

``configure_azure_monitor`` installs process-global providers, so the CLI runs in a child process
(``remediation.edges.cli.main``, as ``python -m remediation`` calls it) behind the network guard of
``test_appinsights.py``, against the sandbox: its Power BI, Key Vault and ingestion endpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sandbox import Sandbox, specs
from sandbox.powerbi import Dataset, Datasource
from tests.support.network_guard import GUARD
from tests.support.world import World, build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

API_KEY = "Zk3y-" + "7f2c9a41d0e84b6c"  # what a Web data source carries in its URL
WEB_SECRET = "web-api-key"

CHILD = GUARD + textwrap.dedent(
    """
    import io
    from remediation.edges.cli import main

    runs = []
    for argv in json.loads(os.environ["TEST_RUNS"]):
        out, err = io.StringIO(), io.StringIO()
        code = main(argv, stdout=out, stderr=err)
        runs.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()})
    loaded = sorted(m for m in sys.modules if m.startswith(("azure.monitor", "opentelemetry")))
    import threading
    # threads that could hold the exit (a daemon one, e.g. the idle answer watchdog, cannot)
    alive = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    threads = sorted(t.name for t in alive)
    print(json.dumps({"attempts": attempts, "loaded": loaded, "runs": runs, "threads": threads}))
    """
)


def _url(path: str) -> str:
    return f"https://api.contoso.com/v1/{path}?apikey={API_KEY}&region=eu"


def _web_datasource(world: World, name: str) -> tuple[Datasource, Dataset]:
    """A Web data source on the world's gateway (a key in its URL) and a dataset using it."""
    sb = world.sb
    source = sb.sources.add(name, credential_type="Key", secret=API_KEY)
    datasource = sb.powerbi.add_datasource(
        world.gateway,
        source,
        datasource_type="Web",
        connection_details={"url": _url(name)},
        credential_type="Key",
    )
    dataset = sb.powerbi.add_dataset(
        world.workspace, f"{name} model", [datasource], owner=world.app.client_id
    )
    return datasource, dataset


def _run(sb: Sandbox, tmp_path: Path, env: dict[str, str], *runs: list[str]) -> dict[str, Any]:
    child_env = {
        **os.environ,
        **env,
        "TMPDIR": str(tmp_path),  # the exporter's offline storage, if it ever needs it
        "TEST_RUNS": json.dumps(list(runs)),
    }
    child_env.pop("OTEL_TRACES_SAMPLER", None)
    child = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["attempts"] == []  # nothing but 127.0.0.1 was called
    return result


def _outcomes(run: dict[str, Any]) -> list[dict[str, Any]]:
    report = json.loads(run["out"])
    return [*report["targets"], *report["datasets"]]


def test_heal_sweep_and_replay_send_their_outcomes_with_trigger_cli_and_no_key_anywhere(
    sb: Sandbox, tmp_path: Path
) -> None:
    world = build_world(sb, sources=2)
    unbound, broken_model = _web_datasource(world, "web-unbound")
    sb.powerbi.add_refresh(broken_model)  # failed for credentials: the dataset heal looks at it
    bound, bound_model = _web_datasource(world, "web-bound")
    sb.powerbi.add_refresh(bound_model)
    sb.vault.set_secret(WEB_SECRET, API_KEY)
    web_binding = {
        "name": "web-api",
        "secret": WEB_SECRET,
        "credentialType": "Key",
        "targets": [{"gatewayId": world.gateway_id, "datasourceId": bound.id}],
    }
    # Power Query's errors repeat the URL they could not read, key and all (the first heal's).
    sb.faults.add(
        "powerbi.get_datasources",
        status=400,
        body={
            "error": {
                "code": "DM_GWPipeline_Gateway_DataSourceAccessError",
                "message": f"Web.Contents failed to get contents from '{_url('web-bound')}' (500)",
            }
        },
    )
    events: list[dict[str, Any]] = []
    sb.vault.subscribe(events.append, "EventGridSchema")
    world.rotate()
    world.fail_scheduled_refreshes()
    event_file = tmp_path / "events.json"
    event_file.write_text(json.dumps(events), encoding="utf-8")
    state = tmp_path / "ledger.db"
    env = world.env(state, REMEDIATION_BINDINGS=world.bindings_json(web_binding))

    result = _run(
        sb,
        tmp_path,
        env,
        ["--json", "heal", "--workspace", world.workspace_id, "--dataset", bound_model.id],
        ["--json", "heal", "--workspace", world.workspace_id, "--dataset", broken_model.id],
        ["--json", "heal", "--secret", WEB_SECRET],
        ["--json", "replay", str(event_file)],
        ["--json", "sweep"],
        ["heal", "--workspace", world.workspace_id, "--dataset", broken_model.id],  # the table
    )

    runs = result["runs"]
    assert runs[3]["code"] == 0, runs[3]  # the replayed rotation healed the SQL sources
    outcomes = [o for run in runs[:5] for o in _outcomes(run)]
    [failed] = _outcomes(runs[0])
    assert failed["action"] == "failed" and failed["reason"].startswith("could not list")
    assert "https://api.contoso.com/v1/web-bound?apikey=[REDACTED]&region=[REDACTED]" in failed["reason"]
    unbound_reason = next(o["reason"] for o in _outcomes(runs[1]) if o["datasource_id"] == unbound.id)
    assert unbound_reason.startswith("data source Web on api.contoso.com has no binding")
    assert "updated" in {o["action"] for o in _outcomes(runs[2])}
    assert {o["action"] for o in _outcomes(runs[3])} == {"updated", "refreshed"}
    assert "Web on api.contoso.com" in runs[5]["out"]

    ai = sb.appinsights
    # A sweep records the targets it found already current as one summary outcome (one event).
    quiet = [o for o in _outcomes(runs[4]) if o["action"] == "already-current" and o["dataset_id"] is None]
    expected = len(outcomes) - len(quiet) + (1 if quiet else 0) + len(_outcomes_of_table(runs[5]))

    def arrived() -> list[dict[str, Any]]:
        found = ai.custom_events("CredentialRemediation")
        return found if len(found) >= expected else []

    cli_events = ai.wait_for(arrived)
    assert quiet  # the sweep found the SQL sources current
    assert len(cli_events) == expected  # every outcome, once; flushed before each run returned
    assert (
        sum(
            e["properties"]["action"] == "already-current" and not e["properties"]["datasourceId"]
            for e in cli_events
        )
        == 1
    )
    assert {e["properties"]["trigger"] for e in cli_events} == {"cli"}
    # Each target's event names the account its sign-ins count against (the per-account figures).
    healed = {
        e["properties"]["datasourceId"]: e["properties"]["account"]
        for e in cli_events
        if e["properties"]["action"] == "updated"
    }
    assert healed[bound.id] == f"secret:{WEB_SECRET}"
    assert {healed[d] for d in world.datasource_ids} == {"user:svc_pbi"}
    refreshed = [e for e in cli_events if e["properties"]["action"] == "refreshed"]
    assert refreshed and {e["properties"]["account"] for e in refreshed} == {""}
    reported = {e["properties"]["correlationId"] for e in cli_events}
    assert {json.loads(r["out"])["correlationId"] for r in runs[:3]} <= reported
    assert events[0]["id"] in reported  # a replayed event's outcomes carry its event id
    assert any(d for d in ai.dependencies() if "/v1.0/myorg/" in d.get("data", ""))  # calls too
    for envelope in ai.envelopes:
        specs.validate(specs.APPINSIGHTS, "TelemetryEnvelope", envelope)

    # The key is nowhere: telemetry, the ledger file (WAL included), the CLI's output.
    everything = [json.dumps(ai.envelopes), *(r["out"] + r["err"] for r in runs)]
    assert not [text for text in everything if API_KEY in text]
    ledger_bytes = b"".join(p.read_bytes() for p in state.parent.glob(state.name + "*"))
    assert b"apikey=[REDACTED]" in ledger_bytes and API_KEY.encode() not in ledger_bytes


def _outcomes_of_table(run: dict[str, Any]) -> list[str]:
    """The outcome rows of a table report: after the header, before the blank line and summary."""
    return str(run["out"]).split("\n\n")[0].splitlines()[1:]


def test_without_a_connection_string_the_cli_loads_no_exporter_and_sends_nothing(
    sb: Sandbox, tmp_path: Path
) -> None:
    world = build_world(sb, sources=1)
    world.rotate()
    env = world.env(tmp_path / "ledger.db")
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING")

    result = _run(sb, tmp_path, env, ["heal", "--secret", world.secret_name], ["sweep"])

    assert [r["code"] for r in result["runs"]] == [0, 0], result["runs"]
    assert " updated " in result["runs"][0]["out"]
    assert result["loaded"] == []  # azure.monitor / OpenTelemetry never imported
    assert result["runs"][0]["err"] == ""  # the outcome event records are not printed without -v
    assert sb.appinsights.envelopes == []
    assert not sb.requests.find("appinsights.track")
    assert result["threads"] == []  # nothing left running that could hold the process's exit


def test_verbose_cli_logs_no_azure_sdk_request_dumps(sb: Sandbox, tmp_path: Path) -> None:
    """host.json's logLevel does not reach Python loggers: the app sets the SDK's HTTP logging
    policy to WARNING itself, so ``-v`` shows the healer's steps, not every request's headers."""
    world = build_world(sb, sources=1)
    world.rotate()
    env = world.env(tmp_path / "ledger.db")
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING")

    [run] = _run(sb, tmp_path, env, ["-v", "heal", "--secret", world.secret_name])["runs"]

    assert run["code"] == 0, run["err"]
    assert "remediation" in run["err"]  # verbose: the healer's own lines
    assert "azure.core.pipeline.policies.http_logging_policy" not in run["err"]
    assert "Request URL" not in run["err"]
