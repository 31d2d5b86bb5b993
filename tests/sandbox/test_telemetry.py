"""Telemetry: outcomes as Application Insights custom events, and the redaction layer.

The end-to-end tests run the product's :class:`remediation.telemetry.appinsights.Telemetry` with the real
azure-monitor-opentelemetry distro in a child process (it installs process-global providers),
against the sandbox's ingestion endpoint, with the network guard of ``test_appinsights.py``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from remediation.clients.stats import StatsSnapshot
from remediation.ledger import Outcome
from remediation.rules.redact import MASK
from remediation.telemetry.outcomes import OUTCOME_PROPERTIES, outcome_properties
from remediation.telemetry.redaction import RedactingFilter, Redactor
from sandbox import Sandbox, specs
from tests.support.network_guard import GUARD

pytestmark = pytest.mark.sandbox

SECRET = 'Tr0ub4dor&3 "x" süß'
TOKEN = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzdmNAY29udG9zby5jb20ifQ.c2lnbmF0dXJlLWJ5dGVz"


# -- Redactor ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer sbx.abc-DEF_1 next", f"Authorization: Bearer {MASK} next"),
        ("auth=Basic dXNlcjpwYXNzd29yZA==", f"auth=Basic {MASK}"),
        (f"token {TOKEN} end", f"token {MASK} end"),
        ("a" * 20 + "." + "b" * 20 + "." + "c" * 20, MASK),
        ("access_token=abc123&x=1", f"access_token={MASK}&x=1"),
        (
            '{"access_token": "a \\" b", "expires_in": 3599}',
            f'{{"access_token": "{MASK}", "expires_in": 3599}}',
        ),
        ('{"refreshToken":"r1","clientSecret":"c1"}', f'{{"refreshToken":"{MASK}","clientSecret":"{MASK}"}}'),
        ("client_secret: s3cr3t", f"client_secret: {MASK}"),
        ("Password=hunter2;User ID=x", f"Password={MASK};User ID=x"),
        (
            "AccountName=a;AccountKey=K3y+/==;EndpointSuffix=x",
            f"AccountName=a;AccountKey={MASK};EndpointSuffix=x",
        ),
        ("SharedAccessKeyName=n;SharedAccessKey=abc=;", f"SharedAccessKeyName=n;SharedAccessKey={MASK};"),
        ("https://a/c?sv=2020&sig=abc%2Fdef&se=1", f"https://a/c?sv={MASK}&sig={MASK}&se={MASK}"),
        (
            "https://f.azurewebsites.net/api/x?code=c0de&api-version=2",
            f"https://f.azurewebsites.net/api/x?code={MASK}&api-version=2",
        ),
        (
            "data source Web {'url': 'https://api.contoso.com/v1?apikey=k3y'} failed",
            f"data source Web {{'url': 'https://api.contoso.com/v1?apikey={MASK}'}} failed",
        ),
        ("x-api-key: k3y, api_key=k3y", f"x-api-key: {MASK}, api_key={MASK}"),
        ("SharedAccessSignature sr=x&sig=y&se=1", f"SharedAccessSignature {MASK}"),
        ("https://user:pa55@host/x", f"https://{MASK}@host/x"),
        (
            '{"credentialData":[{"name":"username","value":"u"},{"name":"password","value":"p\\"w"}]}',
            f'{{"credentialData":[{{"name":"username","value":"u"}},{{"name":"password","value":"{MASK}"}}]}}',
        ),
    ],
)
def test_redact_masks_each_secret_shape(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "host pbi-credential-healer.azurewebsites.net ok",
        "InstrumentationKey=00000000-0000-0000-0000-0000000000aa;IngestionEndpoint=https://127.0.0.1:1/",
        "the source rejected version 0a1b2c3d; put a new version of 'sql-sales-password' in Key Vault",
        "gateway 6f1a3c2e-0b7d-4c1e-9a8f-2d5e4b3c1a09 datasource 11111111-2222-3333-4444-555555555555",
    ],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert Redactor().redact(text) == text


def test_redact_is_idempotent() -> None:
    redactor = Redactor()
    redactor.register(SECRET)
    text = f"GET https://u:p@h/x?probe={quote_plus(SECRET)}&sig=REDACTED Bearer {TOKEN} password: 'a b'"

    once = redactor.redact(text)

    assert redactor.redact(once) == once
    assert once == f"GET https://{MASK}@h/x?probe={MASK}&sig={MASK} Bearer {MASK} password: '{MASK}'"


def test_credential_data_inside_a_json_string_is_masked_at_every_escape_level() -> None:
    inner = json.dumps({"credentialData": [{"name": "password", "value": 'p"w\\'}]})
    once, twice = json.dumps({"credentials": inner}), json.dumps({"x": json.dumps({"credentials": inner})})
    redactor = Redactor()

    assert json.loads(redactor.redact(inner))["credentialData"][0]["value"] == MASK
    assert json.loads(json.loads(redactor.redact(once))["credentials"])["credentialData"][0]["value"] == MASK
    unwrapped = json.loads(json.loads(json.loads(redactor.redact(twice))["x"])["credentials"])
    assert unwrapped["credentialData"][0]["value"] == MASK


def test_registered_value_is_masked_in_every_form_until_unregistered() -> None:
    redactor = Redactor()
    handle = redactor.register(SECRET)
    forms = [SECRET, json.dumps(SECRET)[1:-1], repr(SECRET)[1:-1], quote(SECRET, safe=""), quote_plus(SECRET)]

    for form in forms:
        assert redactor.redact(f"<{form}>") == f"<{MASK}>"
    redactor.unregister(handle)
    assert redactor.redact(SECRET) == SECRET
    redactor.unregister(handle)  # unknown handle: no-op


def test_a_value_registered_twice_stays_masked_until_both_handles_are_released() -> None:
    redactor = Redactor()
    first, second = redactor.register("s3cret-value"), redactor.register("s3cret-value")
    other = redactor.register("another-secret-longer")

    redactor.unregister(first)
    assert redactor.redact("s3cret-value another-secret-longer") == f"{MASK} {MASK}"
    redactor.unregister(second)
    assert redactor.redact("s3cret-value") == "s3cret-value"
    with redactor.registered("scoped-value"):
        assert redactor.redact("scoped-value") == MASK
    assert redactor.redact("scoped-value") == "scoped-value"
    assert len(redactor) == 1 and redactor.register("") > other  # empty: a handle, nothing masked


def test_filter_redacts_message_args_extra_and_exception_text() -> None:
    redactor = Redactor()
    redactor.register(SECRET)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s|%(detail)s"))
    handler.addFilter(RedactingFilter(redactor))
    log = logging.getLogger("tests.telemetry.filter")
    log.propagate = False
    log.addHandler(handler)
    try:
        try:
            raise RuntimeError(f"login failed with {SECRET}")
        except RuntimeError:
            log.exception("sent %s and Bearer %s", SECRET, TOKEN, extra={"detail": f"pw={SECRET}"})
    finally:
        log.removeHandler(handler)

    output = stream.getvalue()
    assert SECRET not in output and TOKEN not in output
    assert output.startswith(f"sent {MASK} and Bearer {MASK}|pw={MASK}")
    assert f"RuntimeError: login failed with {MASK}" in output


def test_outcome_properties_are_exactly_the_contract_as_strings_and_numbers() -> None:
    outcome = Outcome(
        time=1.0, binding="b", gateway_id="g", datasource_id="d", action="updated", duration=0.25
    )

    props = outcome_properties(outcome, trigger="timer", correlation_id="c", stats=StatsSnapshot(calls=3))

    assert tuple(props) == OUTCOME_PROPERTIES
    assert props["trigger"] == "timer" and props["durationMs"] == 250 and props["apiCalls"] == 3
    assert props["refreshRequestId"] == "" and all(isinstance(v, str | int) for v in props.values())


# -- End to end, in a child process -----------------------------------------------------------
CHILD = GUARD + textwrap.dedent(
    """
    import requests
    from remediation.clients.stats import StatsSnapshot
    from remediation.ledger import Outcome
    from remediation.config.settings import Settings
    from remediation.telemetry.appinsights import Telemetry
    from remediation.telemetry.redaction import REDACTOR

    lazy = "azure.monitor.opentelemetry" not in sys.modules
    secret, token = os.environ["TEST_SECRET"], os.environ["TEST_TOKEN"]
    telemetry = Telemetry(Settings.from_env())
    handle = REDACTOR.register(secret)
    outcomes = [Outcome.from_dict(o) for o in json.loads(os.environ["TEST_OUTCOMES"])]
    emitted = telemetry.emit_outcomes(outcomes, trigger="keyvault", correlation_id="corr-1",
                                      stats=StatsSnapshot(calls=7, attempts=9, retries=2, throttled=1),
                                      duration=1.5)
    probe = requests.get(os.environ["TEST_URL"], params={"probe": secret, "sig": "abc"}, timeout=10)
    status = probe.status_code
    log = logging.getLogger("remediation.reconciler.healer")
    log.warning("applying %s with Authorization: Bearer %s", secret, token)
    try:
        raise RuntimeError(f"login failed with {secret}")
    except RuntimeError:
        log.exception("update failed")
    telemetry.emit_secret_expiry(
        secret_name="sql-sales-password", secret_version="v2", expires_on="2026-02-01", days_left=6.5,
        bindings=["sales-sql", "finance-sql"], correlation_id="corr-1",
    )
    flushed = telemetry.flush()
    REDACTOR.unregister(handle)
    print(json.dumps({"attempts": attempts, "lazy": lazy, "emitted": emitted, "status": status,
                      "flushed": flushed}))
    """
)

NO_CONNECTION_STRING_CHILD = textwrap.dedent(
    """
    import json, logging, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s %(message)s")
    from remediation.ledger import Outcome
    from remediation.config.settings import Settings
    from remediation.telemetry.appinsights import Telemetry

    telemetry = Telemetry(Settings.from_env())
    n = telemetry.emit_outcomes([Outcome(time=1.0, gateway_id="g1", datasource_id="d1", action="updated")],
                                trigger="timer", correlation_id="c1", stats=None, duration=None)
    flushed = telemetry.flush()
    loaded = sorted(m for m in sys.modules if m.startswith(("azure.monitor", "opentelemetry")))
    print(json.dumps({"enabled": telemetry.enabled, "configured": telemetry.configure(), "emitted": n,
                      "flushed": flushed, "loaded": loaded}))
    """
)

OUTCOMES = [
    Outcome(
        time=1700000000.0,
        trigger="keyvault",
        correlation_id="corr-1",
        binding="sales-sql",
        secret_name="sql-sales-password",
        secret_version="v2",
        gateway_id="gw-1",
        datasource_id="ds-1",
        action="updated",
        reason="now holds version v2",
        duration=0.42,
    ),
    Outcome(
        time=1700000000.5,
        trigger="keyvault",
        correlation_id="corr-1",
        binding="sales-sql",
        secret_name="sql-sales-password",
        secret_version="v2",
        gateway_id="gw-1",
        datasource_id="ds-2",
        action="rejected",
        reason="the source rejected version v2 (DM_GWPipeline_Gateway_InvalidConnection"
        "Credentials); it will not be presented again",
    ),
    Outcome(
        time=1700000001.0,
        trigger="keyvault",
        correlation_id="corr-1",
        binding="sales-sql",
        workspace_id="ws-1",
        dataset_id="dset-1",
        action="refreshed",
        reason="credential failure retried",
        refresh_request_id="rq-1",
        refresh_state="Completed",
        duration=3.0,
    ),
]


def _run(code: str, env: dict[str, str]) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    result["stdout"] = child.stdout
    return result


def test_outcomes_go_to_the_sandbox_as_custom_events_with_no_secret_anywhere(
    sb: Sandbox, tmp_path: Any
) -> None:
    env = {
        **os.environ,
        **sb.env(),
        "TMPDIR": str(tmp_path),
        "TEST_SECRET": SECRET,
        "TEST_TOKEN": TOKEN,
        "TEST_URL": f"{sb.url}/v1.0/myorg/gateways",
        "TEST_OUTCOMES": json.dumps([o.to_dict() for o in OUTCOMES]),
    }
    env.pop("OTEL_TRACES_SAMPLER", None)

    result = _run(CHILD, env)

    assert result["attempts"] == [] and result["lazy"] and result["flushed"] and result["emitted"] == 3
    ai = sb.appinsights
    events = ai.wait_for(
        lambda: (
            len(ai.custom_events("CredentialRemediation")) == 3 and ai.custom_events("CredentialRemediation")
        )
    )
    stats = StatsSnapshot(calls=7, attempts=9, retries=2, throttled=1)
    expected = {
        o.datasource_id or o.dataset_id: {
            k: str(v)
            for k, v in outcome_properties(
                o, trigger="keyvault", correlation_id="corr-1", stats=stats, duration=1.5
            ).items()
        }
        for o in OUTCOMES
    }
    for event in events:
        props = dict(event["properties"])
        assert props.pop("logger_name") == "remediation.events"  # added by the exporter
        assert props == expected[props["datasourceId"] or props["datasetId"]]
    [expiry] = ai.custom_events("CredentialSecretExpiry")
    assert expiry["properties"]["bindings"] == "finance-sql,sales-sql"
    assert expiry["properties"]["daysLeft"] == "6.5"
    [dependency] = [d for d in ai.dependencies() if "/v1.0/myorg/gateways" in d.get("data", "")]
    assert dependency["resultCode"] == str(result["status"])
    assert dependency["data"].endswith(f"/v1.0/myorg/gateways?probe={MASK}&sig={MASK}")  # the span scrub
    ai.wait_for(lambda: any("update failed" in str(e) for e in ai.envelopes))

    raw = json.dumps(ai.envelopes, ensure_ascii=False)
    for leaked in {SECRET, TOKEN, quote(SECRET, safe=""), quote_plus(SECRET), json.dumps(SECRET)[1:-1]}:
        assert leaked not in raw and leaked not in json.dumps(ai.envelopes)
    assert MASK in raw  # the log line and the exception were exported, masked
    for envelope in ai.envelopes:
        specs.validate(specs.APPINSIGHTS, "TelemetryEnvelope", envelope)
        if envelope["data"]["baseType"] != "MetricData":  # the exporter's own item counters aside
            assert envelope["tags"]["ai.cloud.role"] == "pbi-credential-healer"
    # Nothing but the sandbox was called, every batch was accepted whole, and the one probe GET.
    routes = {(r.route, r.status) for r in sb.requests.all() if r.route == "appinsights.track"}
    assert routes == {("appinsights.track", 200)}
    others = [r.path for r in sb.requests.all() if r.route != "appinsights.track"]
    assert others == ["/v1.0/myorg/gateways"]


def test_without_a_connection_string_telemetry_only_logs_and_never_loads_the_distro(sb: Sandbox) -> None:
    env = {**os.environ, **sb.env()}
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING")

    result = _run(NO_CONNECTION_STRING_CHILD, env)

    assert result["loaded"] == []
    assert (result["enabled"], result["configured"], result["emitted"], result["flushed"]) == (
        False,
        False,
        1,
        True,
    )
    assert "remediation.events CredentialRemediation action=updated target=g1/d1" in result["stdout"]
    assert sb.appinsights.envelopes == []


def test_a_report_goes_to_the_standard_log_and_an_outcomes_own_ids_win_over_the_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from remediation.config.settings import Settings
    from remediation.reconciler.healer import Report
    from remediation.telemetry.appinsights import EVENTS_LOGGER, Telemetry

    redactor = Redactor()
    Telemetry(Settings(client_secret="sp-secret-value"), redactor=redactor)
    assert redactor.redact("client sp-secret-value") == f"client {MASK}"
    report = Report(
        outcomes=[OUTCOMES[2], replace(OUTCOMES[2], correlation_id=None, trigger=None)],
        correlation_id="corr-9",
    )
    telemetry = Telemetry(Settings())  # no connection string: the standard log only

    with caplog.at_level(logging.INFO, logger=EVENTS_LOGGER):
        emitted = telemetry.emit_outcomes(report, trigger="http", stats=None, duration=2.0)

    own, inherited = [r for r in caplog.records if r.name == EVENTS_LOGGER]
    assert emitted == 2 and not telemetry.enabled and telemetry.flush()
    assert vars(own)["microsoft.custom_event.name"] == "CredentialRemediation"
    assert (vars(own)["correlationId"], vars(own)["trigger"], vars(own)["apiCalls"]) == (
        "corr-1",
        "keyvault",
        "",
    )
    assert (vars(inherited)["correlationId"], vars(inherited)["trigger"]) == ("corr-9", "http")
    assert "action=refreshed dataset=ws-1/dset-1" in own.getMessage()


def test_configure_sets_the_azure_sdk_http_logging_policy_to_warning_unless_set_explicitly() -> None:
    from remediation.config.settings import Settings
    from remediation.telemetry.appinsights import LIBRARY_LOG_LEVELS, Telemetry

    name = "azure.core.pipeline.policies.http_logging_policy"
    sdk = logging.getLogger(name)
    original = sdk.level
    assert LIBRARY_LOG_LEVELS[name] == logging.WARNING
    try:
        sdk.setLevel(logging.NOTSET)
        assert Telemetry(Settings()).configure() is False  # no connection string: still applied
        assert not sdk.isEnabledFor(logging.INFO) and sdk.isEnabledFor(logging.WARNING)

        sdk.setLevel(logging.DEBUG)  # an operator's own choice wins
        Telemetry(Settings()).configure()
        assert sdk.level == logging.DEBUG
    finally:
        sdk.setLevel(original)
