"""A secret that a service echoes back is nowhere afterwards (DESIGN.md: "Services echo submitted
values in validation messages"; "Never log, trace, return or persist a secret value").

Each test puts a password in Key Vault, makes the service answer the credential write -- after
the source tested it (``after=True``) -- with a 400 whose message (and error details) repeat
the password in one form (as is, JSON-escaped, URL-encoded), and then looks for every form of
every password it used in every way out: the report (``to_dict`` and the CLI's table), the
ledger (outcomes, account verdicts, the file itself), the CLI's stdout and stderr, the HTTP
answers of ``POST /api/remediate`` and ``GET /api/remediations[/{id}]`` (through
``function_app``), the captured logs, and, in a child process, Application Insights.
"""

from __future__ import annotations

import html
import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from remediation.clients.http import ApiError
from remediation.clients.powerbi import PowerBIClient
from remediation.edges import service as service_module
from remediation.edges.cli import main
from remediation.reconciler.healer import Action
from remediation.reconciler.refresher import Refresher
from remediation.rules.redact import MASK
from remediation.telemetry.redaction import RedactingFilter
from sandbox import Sandbox
from sandbox.powerbi import pbi_error
from tests.functions.host import http_datum, invoke
from tests.sandbox.test_fabric import FabricWorld, add_fabric
from tests.sandbox.test_fabric import harness as fabric_harness
from tests.support.harness import Harness, Make
from tests.support.network_guard import GUARD
from tests.support.world import build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

AI = "APPLICATIONINSIGHTS_CONNECTION_STRING"

# The forms a service echoes, each with the characters that make it differ from the others.
FORMS: dict[str, tuple[str, Callable[[str], str]]] = {
    "raw": ("Echoed Pässwort-", lambda pw: f"The value '{pw}' is not valid for password."),
    "json-escaped": (
        'Pa"ss\\word-',  # a quote and a backslash: JSON escapes both
        lambda pw: f'The request field {{"password": "{json.dumps(pw)[1:-1]}"}} is not valid.',
    ),
    "url-encoded": (
        "pass word&x+y=",  # spaces, & and +: every URL encoding changes them
        lambda pw: f"The value 'password={quote_plus(pw)}&user=svc_pbi' is not valid.",
    ),
}


def forms_of(value: str) -> set[str]:
    """How a value could show in a text (independent of the product's own list)."""
    return {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        json.dumps(json.dumps(value)[1:-1])[1:-1],
        quote(value, safe=""),
        quote_plus(value),
        html.escape(value),
    }


def leaks(texts: Mapping[str, str], values: list[str]) -> dict[str, list[str]]:
    """Per way out, the forms of ``values`` it shows (empty when none: the promise)."""
    found = {
        name: sorted({f for v in values for f in forms_of(v) if f in text}) for name, text in texts.items()
    }
    return {name: shown for name, shown in found.items() if shown}


def ledger_text(path: Path) -> str:
    """Every row of every table of the SQLite ledger, and its files' bytes (WAL included)."""
    rows = []
    with sqlite3.connect(path) as db:
        tables = [t for (t,) in db.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            rows += [repr(row) for row in db.execute(f"select * from {table}")]  # noqa: S608
    raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    return "\n".join(rows) + raw.decode("utf-8", "replace")


@dataclass
class WaysOut:
    """The ways out of one harness: the CLI, the HTTP functions, the ledger, the logs."""

    h: Harness
    caplog: pytest.LogCaptureFixture
    texts: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {k: v for k, v in self.h.env.items() if k != AI}

    def report(self, name: str, report: Any) -> dict[str, Any]:
        as_dict: dict[str, Any] = report.to_dict()
        self.texts[name] = json.dumps(as_dict, ensure_ascii=False) + repr(report.outcomes)
        return as_dict

    def cli(self, name: str, *argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), environ=self.env, stdout=out, stderr=err)
        self.texts[f"{name} stdout"], self.texts[f"{name} stderr"] = out.getvalue(), err.getvalue()
        return code, out.getvalue()

    def http(self, name: str, function: str, method: str, route: str, body: bytes = b"", **kw: Any) -> Any:
        answer = invoke(function, http_datum(method, route, body, **kw))
        self.texts[name] = answer.body.decode("utf-8")
        return answer

    def post(self, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        answer = self.http(name, "remediate", "POST", "remediate", json.dumps(body).encode())
        return answer.status, answer.json()

    def everything(self) -> dict[str, str]:
        listed = self.http(
            "GET /api/remediations",
            "remediations",
            "GET",
            "remediations",
            params={"since": (datetime.now(UTC) - timedelta(hours=1)).isoformat()},
        )
        assert listed.status == 200
        for outcome in listed.json()["outcomes"]:
            cid = outcome["correlation_id"]
            self.http(
                f"GET /api/remediations/{cid}",
                "remediation_status",
                "GET",
                f"remediations/{cid}",
                route_params={"correlationId": cid},
            )
        return {
            **self.texts,
            "ledger": ledger_text(self.h.state_path),
            "logs": self.caplog.text + "".join(repr(r.args) + str(r.__dict__) for r in self.caplog.records),
        }


def without_telemetrys_log_filter(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Logs as in a process whose telemetry never installed its filter on these handlers (pytest
    keeps its capture handler for the session, so an earlier CLI test's filter would still be on
    it): what the run masks must not depend on that. (A CLI run in the test installs it again.)"""
    for handler in {caplog.handler, *logging.getLogger().handlers}:
        kept = [f for f in handler.filters if not isinstance(f, RedactingFilter)]
        monkeypatch.setattr(handler, "filters", kept)


@pytest.fixture
def ways_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[Callable[[Harness], WaysOut]]:
    """The Functions app and the CLI over a harness's world, without the exporter in-process
    (``configure_azure_monitor`` installs process-global providers: telemetry is proven in a
    child process below)."""
    caplog.set_level(logging.DEBUG)
    without_telemetrys_log_filter(monkeypatch, caplog)

    def make(h: Harness) -> WaysOut:
        monkeypatch.delenv(AI, raising=False)
        monkeypatch.delenv("AzureWebJobsStorage", raising=False)
        service_module.reset_service()
        return WaysOut(h, caplog)

    yield make
    service_module.reset_service()


def echo_body(message: str, echoed: str) -> dict[str, Any]:
    """Power BI's error envelope whose message and ``pbi.error`` detail repeat a value."""
    body = pbi_error("InvalidRequest", [{"code": "InvalidValue", "detail": {"type": 1, "value": echoed}}])
    body["error"]["message"] = message
    return body


def fabric_echo(code: str, message: str, echoed: str) -> dict[str, Any]:
    """Fabric's ``ErrorResponse`` whose message and ``moreDetails`` repeat a value."""
    return {
        "requestId": "5b8e1f0e-0000-4000-8000-0000000000e1",
        "errorCode": code,
        "message": message,
        "moreDetails": [{"errorCode": "InvalidValue", "message": echoed}],
    }


# -- Power BI: PATCH /gateways/{g}/datasources/{d} -------------------------------------------------
@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_password_power_bi_echoes_is_in_no_report_ledger_answer_or_log(
    make: Make, ways_out: Callable[[Harness], WaysOut], form: str
) -> None:
    base, message = FORMS[form]
    h = make(sources=1, env={"REMEDIATION_MAX_ATTEMPTS": "10"})
    w, out = h.world, ways_out(h)
    used: list[str] = []

    def rotate_and_echo() -> None:
        password = f"{base}{len(used) + 1}"
        used.append(password)
        w.rotate(password)
        echoed = message(password)
        h.sb.faults.add("powerbi.update_datasource", status=400, after=True, body=echo_body(echoed, echoed))

    rotate_and_echo()
    report = out.report("healer report", h.healer.heal_secret(w.secret_name))
    rotate_and_echo()
    out.cli("cli --json", "--json", "heal", "--secret", w.secret_name)
    rotate_and_echo()
    out.cli("cli table", "heal", "--secret", w.secret_name)
    rotate_and_echo()
    status, answer = out.post("POST /api/remediate", {"secretName": w.secret_name})

    assert h.sb.faults.pending() == 0  # every echo was served to a PATCH that carried the password
    assert [r.status for r in h.sb.requests.find("powerbi.update_datasource")] == [400] * 4
    # The source tested the value and the answer proves nothing more: in doubt (fail closed).
    assert [t["action"] for t in report["targets"]] == [Action.IN_DOUBT]
    assert status == 200 and [t["action"] for t in answer["targets"]] == [Action.IN_DOUBT]
    assert leaks(out.everything(), used) == {}


# -- Fabric: PATCH /v1/connections/{id} ----------------------------------------------------------
@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_password_fabric_echoes_is_in_no_report_ledger_answer_or_log(
    make: Make, sb: Sandbox, ways_out: Callable[[Harness], WaysOut], form: str
) -> None:
    base, message = FORMS[form]
    w = build_world(sb)
    f = add_fabric(sb, w.app.client_id)
    h = fabric_harness(make, sb, f, world=w, REMEDIATION_MAX_ATTEMPTS="10")
    out = ways_out(h)
    used: list[str] = []

    def rotate_and_echo(code: str) -> None:
        password = f"{base}{len(used) + 1}"
        used.append(password)
        f.rotate(sb, password)
        echoed = message(password)
        sb.faults.add(
            "fabric.update_connection", status=400, after=True, body=fabric_echo(code, echoed, echoed)
        )

    # A rejection (its reason goes with the account's verdict too), then refusals "before any test".
    rotate_and_echo("IncorrectCredentials")
    report = out.report("healer report", h.healer.heal_secret(f.secret_name))
    rotate_and_echo("InvalidParameter")
    out.cli("cli --json", "--json", "heal", "--secret", f.secret_name)
    rotate_and_echo("InvalidParameter")
    out.cli("cli table", "heal", "--connection", f.connection.id)
    rotate_and_echo("InvalidParameter")
    status, answer = out.post("POST /api/remediate", {"connectionId": f.connection.id})

    assert sb.faults.pending() == 0
    assert [r.status for r in sb.requests.find("fabric.update_connection")] == [400] * 4
    (target,) = [t for t in report["targets"] if t["datasource_id"] == f.connection.id]
    assert target["action"] == Action.REJECTED
    assert status == 200 and answer["targets"][0]["action"] == Action.IN_DOUBT
    account = h.runtime.ledger.account_version(target["account"], f.secret_name, target["secret_version"])
    assert account.verdict == "rejected"
    assert leaks(out.everything(), used) == {}


# -- an exception that carries the password out of the run ------------------------------------------
def test_an_error_carrying_the_password_out_of_a_run_is_masked_in_the_cli_and_http_answers(
    make: Make, ways_out: Callable[[Harness], WaysOut], monkeypatch: pytest.MonkeyPatch
) -> None:
    h = make(sources=1, env={"REMEDIATION_MAX_ATTEMPTS": "10"})
    w, out = h.world, ways_out(h)
    used: list[str] = []

    def echoing_error(*_args: Any, **_kwargs: Any) -> None:
        # A service error raised after the run fetched the secret, repeating it (message and details).
        password = used[-1]
        raise ApiError(
            f"The value '{password}' is not valid for password.",
            status=400,
            code="InvalidRequest",
            details=[("InvalidValue", json.dumps(password)[1:-1])],
            method="POST",
            path="/v1.0/myorg/groups/g/datasets/d/refreshes",
            service="powerbi",
        )

    monkeypatch.setattr(Refresher, "retry_failed_refreshes", echoing_error)
    for run in ("cli", "http"):
        used.append(f'Leaked "{run}" Pässwort&+ 1')
        w.rotate(used[-1])
        if run == "cli":
            code, _ = out.cli("cli", "heal", "--secret", w.secret_name)
            assert code == 1 and out.texts["cli stderr"].startswith("error: POST /v1.0/myorg/")
        else:
            status, answer = out.post("POST /api/remediate", {"secretName": w.secret_name})
            assert (status, answer["error"]["code"]) == (502, "UpstreamError")
            assert answer["error"]["message"] == (
                f"POST /v1.0/myorg/groups/g/datasets/d/refreshes -> 400 InvalidRequest: The value '{MASK}' "
                "is not valid for password."
            )

    assert leaks(out.everything(), used) == {}


def test_an_unexpected_error_of_the_patch_is_logged_without_the_password(
    make: Make, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    without_telemetrys_log_filter(monkeypatch, caplog)
    h = make(sources=1)
    w = h.world
    password = 'Pa"ss\\wörd & more'
    w.rotate(password)
    real = PowerBIClient.update_datasource

    def update_then_fail(self: PowerBIClient, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        raise RuntimeError(f"cannot read the answer to {json.dumps({'password': password})}")

    monkeypatch.setattr(PowerBIClient, "update_datasource", update_then_fail)
    report = h.healer.heal_secret(w.secret_name)

    assert [o.action for o in report.targets()] == [Action.IN_DOUBT]
    logged = [r for r in caplog.records if r.name == "remediation.reconciler.healer" and r.exc_info]
    assert logged and "RuntimeError: cannot read the answer to" in caplog.text and MASK in caplog.text
    assert leaks({"logs": caplog.text, "report": json.dumps(report.to_dict())}, [password]) == {}


# -- Application Insights (a child process: the exporter installs process-global providers) ----------
CHILD = GUARD + textwrap.dedent(
    """
    import io
    from remediation.edges.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(json.loads(os.environ["TEST_ARGV"]), stdout=out, stderr=err)
    print(json.dumps({"attempts": attempts, "code": code, "out": out.getvalue(), "err": err.getvalue()}))
    """
)


def test_a_password_fabric_echoes_is_not_sent_to_application_insights(
    make: Make, sb: Sandbox, tmp_path: Path
) -> None:
    w = build_world(sb)
    f: FabricWorld = add_fabric(sb, w.app.client_id)
    h = fabric_harness(make, sb, f, world=w)
    base, message = FORMS["json-escaped"]
    password = f"{base}<&>'ai"
    f.rotate(sb, password)
    echoed = message(password) + f" (was '{password}')"
    sb.faults.add(
        "fabric.update_connection",
        status=400,
        after=True,
        body=fabric_echo("InvalidParameter", echoed, echoed),
    )
    env = {
        **os.environ,
        **h.env,
        "TMPDIR": str(tmp_path),
        "TEST_ARGV": json.dumps(["--json", "heal", "--secret", f.secret_name]),
    }
    env.pop("OTEL_TRACES_SAMPLER", None)

    child = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=90, check=False
    )

    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["attempts"] == [] and result["code"] == 1, result
    assert sb.faults.pending() == 0
    ai = sb.appinsights

    def arrived() -> list[dict[str, Any]]:
        events = ai.custom_events("CredentialRemediation")
        return [e for e in events if e["properties"]["datasourceId"] == f.connection.id]

    (event,) = ai.wait_for(arrived)
    assert event["properties"]["action"] == Action.IN_DOUBT
    texts = {
        "telemetry": json.dumps(ai.envelopes) + json.dumps(ai.envelopes, ensure_ascii=False),
        "stdout": result["out"],
        "stderr": result["err"] + child.stderr,
    }
    assert leaks(texts, [password]) == {}
