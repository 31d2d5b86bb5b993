"""The Key Vault stand-in, proven with the real azure-keyvault-secrets and azure-identity, unmodified.

Settings the SDK needs against a vault that is not ``*.vault.azure.net``:
``SecretClient(vault_url, credential, verify_challenge_resource=False)`` (the challenge names the
resource ``https://vault.azure.net``, which does not match ``127.0.0.1``), with a credential built for
the sandbox authority (see ``test_entra``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline import PipelineResponse
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets._shared import http_challenge_cache

from sandbox import Sandbox, specs
from sandbox.entra import KEYVAULT_AUDIENCE, POWERBI_AUDIENCE, App

pytestmark = pytest.mark.sandbox

SAMPLES = specs.SPEC_DIR / "eventgrid" / "samples"


@dataclass
class Seen:
    """One response as the SDK's pipeline saw it."""

    method: str
    url: str
    status: int
    body: Any


@pytest.fixture
def app(sb: Sandbox) -> App:
    return sb.entra.add_app(name="healer")


@pytest.fixture
def seen() -> list[Seen]:
    return []


@pytest.fixture
def client(sb: Sandbox, sandbox_env: dict[str, str], app: App, seen: list[Seen]) -> Iterator[SecretClient]:
    # The SDK caches challenges per host:port for the whole process; a port reused by an earlier
    # sandbox must not hide this vault's challenge.
    http_challenge_cache.clear()

    def hook(response: PipelineResponse[Any, Any]) -> None:
        http = response.http_response
        text = http.text()
        seen.append(
            Seen(http.request.method, http.request.url, http.status_code, json.loads(text) if text else None)
        )

    credential = ClientSecretCredential(
        sb.entra.tenant_id, app.client_id, app.secret or "", authority=sb.url, disable_instance_discovery=True
    )
    with SecretClient(
        sb.vault.url, credential, verify_challenge_resource=False, raw_response_hook=hook
    ) as secret_client:
        yield secret_client


def _token(sb: Sandbox, app: App, audience: str = KEYVAULT_AUDIENCE, lifetime: float | None = None) -> str:
    return sb.entra.issue_token("app", app.client_id, audience, lifetime=lifetime).token


def test_sdk_answers_the_challenge_then_sets_and_reads_secrets(
    sb: Sandbox, client: SecretClient, app: App, seen: list[Seen]
) -> None:
    first = client.set_secret("sql-sales-password", "Old#1", content_type="password", tags={"owner": "bi"})
    second = client.set_secret("sql-sales-password", "New#2")

    assert client.get_secret("sql-sales-password").value == "New#2"
    by_version = client.get_secret("sql-sales-password", first.properties.version)
    assert (by_version.value, by_version.properties.content_type, by_version.properties.tags) == (
        "Old#1",
        "password",
        {"owner": "bi"},
    )
    assert second.id == f"{sb.vault.url}secrets/sql-sales-password/{second.properties.version}"
    assert len(second.properties.version or "") == 32
    assert sb.vault.get_secret("sql-sales-password").version == second.properties.version

    challenge, *rest = sb.requests.find(service="keyvault")
    assert (challenge.route, challenge.status, challenge.token_kind) == ("keyvault.set_secret", 401, None)
    assert "Authorization" not in challenge.headers and challenge.raw_body == b""
    assert {(r.status, r.token_kind, r.principal) for r in rest} == {(200, "app", app.client_id)}
    [token] = sb.entra.tokens_issued("app")
    assert token.audience == KEYVAULT_AUDIENCE
    [challenge_seen] = [s for s in seen if s.status == 401]
    assert challenge_seen.body["error"]["code"] == "Unauthorized"


def test_challenge_header_is_the_one_key_vault_sends(sb: Sandbox, sandbox_env: dict[str, str]) -> None:
    response = requests.get(f"{sb.vault.url}secrets/x", params={"api-version": "2025-07-01"}, timeout=10)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer authorization="{sb.url}/{sb.entra.tenant_id}", resource="https://vault.azure.net"'
    )
    specs.validate(specs.KEYVAULT, "KeyVaultError", response.json())


def test_version_listing_is_paged_with_next_links(sb: Sandbox, client: SecretClient) -> None:
    for i in range(30):
        sb.vault.set_secret("rotated", f"value-{i}", notify=False)

    default_pages = [p.version for p in client.list_properties_of_secret_versions("rotated")]
    small_pages = [p.version for p in client.list_properties_of_secret_versions("rotated", max_page_size=7)]

    expected = [v.version for v in sb.vault.versions("rotated")]
    assert default_pages == expected and small_pages == expected
    listings = sb.requests.find("keyvault.list_versions", status=200)
    # 30 versions: 25 + 5 by default, then 5 pages of at most 7, each next page by its nextLink.
    assert [r.query.get("maxresults") for r in listings] == [None, "25", "7", "7", "7", "7", "7"]
    assert ["$skiptoken" in r.query for r in listings] == [False, True, False, True, True, True, True]
    names = [p.name for p in client.list_properties_of_secrets()]
    assert names == ["rotated"]


def test_missing_secret_or_version_raises_resource_not_found(client: SecretClient) -> None:
    client.set_secret("exists", "v")

    with pytest.raises(ResourceNotFoundError) as missing:
        client.get_secret("does-not-exist")
    with pytest.raises(ResourceNotFoundError) as missing_version:
        client.get_secret("exists", "0" * 32)

    assert missing.value.error is not None and missing.value.error.code == "SecretNotFound"
    assert "does-not-exist was not found" in missing.value.message
    assert missing_version.value.error is not None and missing_version.value.error.code == "SecretNotFound"


def test_restricted_vault_forbids_principals_without_access(
    sb: Sandbox, client: SecretClient, app: App
) -> None:
    sb.vault.set_secret("guarded", "v", notify=False)
    sb.vault.restrict()

    with pytest.raises(HttpResponseError) as denied:
        client.get_secret("guarded")
    sb.vault.grant(app.client_id, "get")
    allowed = client.get_secret("guarded")
    with pytest.raises(HttpResponseError) as list_denied:
        list(client.list_properties_of_secret_versions("guarded"))

    assert denied.value.status_code == 403
    assert denied.value.error is not None and denied.value.error.code == "Forbidden"
    assert "does not have secrets get permission" in denied.value.message
    assert allowed.value == "v"
    assert list_denied.value.status_code == 403


def test_disabled_version_cannot_be_read(sb: Sandbox, client: SecretClient) -> None:
    old = sb.vault.set_secret("pw", "old", notify=False)
    sb.vault.set_secret("pw", "new", notify=False)
    sb.vault.disable("pw", old)

    with pytest.raises(HttpResponseError) as disabled:
        client.get_secret("pw", old)

    assert disabled.value.status_code == 403
    assert sb.requests.find("keyvault.get_secret", status=403)[0].body is None
    assert client.get_secret("pw").value == "new"
    assert [v.enabled for v in sb.vault.versions("pw")] == [False, True]


def test_every_response_the_sdk_saw_matches_the_spec(
    sb: Sandbox, client: SecretClient, seen: list[Seen], app: App
) -> None:
    client.set_secret(
        "a",
        "1",
        tags={"k": "v"},
        content_type="text/plain",
        expires_on=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    )
    for i in range(3):
        client.set_secret("b", str(i))
    client.get_secret("a")
    list(client.list_properties_of_secret_versions("b", max_page_size=2))
    list(client.list_properties_of_secrets())
    with pytest.raises(ResourceNotFoundError):
        client.get_secret("missing")
    sb.vault.restrict()
    with pytest.raises(HttpResponseError):
        client.get_secret("a")

    assert {s.status for s in seen} == {200, 401, 403, 404}
    for response in seen:
        if response.status >= 400:
            definition = "KeyVaultError"
        elif "/versions" in response.url or response.url.split("?")[0].endswith("/secrets"):
            definition = "SecretListResult"
        else:
            definition = "SecretBundle"
        specs.validate(specs.KEYVAULT, definition, response.body)
    # ...and what the SDK sent is what the spec asks for.
    for put in sb.requests.find("keyvault.set_secret", status=200):
        specs.validate(specs.KEYVAULT, "SecretSetParameters", put.body)


def _sample_keys(name: str) -> tuple[set[str], set[str]]:
    sample = json.loads(Path(SAMPLES, name).read_text(encoding="utf-8"))
    return set(sample), set(sample["data"])


def _validate_event_data(event_type: str, data: dict[str, Any]) -> None:
    # Swagger 2.0 cannot say "nullable": the service sends null NBF/EXP for secrets without dates,
    # so the nulls are checked by key and the rest against the spec.
    definition = "KeyVault" + event_type.removeprefix("Microsoft.KeyVault.") + "EventData"
    specs.validate(specs.EVENTGRID_KEYVAULT, definition, {k: v for k, v in data.items() if v is not None})


def test_new_versions_are_announced_in_both_event_schemas(sb: Sandbox, client: SecretClient) -> None:
    grid: list[dict[str, Any]] = []
    cloud: list[dict[str, Any]] = []
    sb.vault.subscribe(grid.append)
    unsubscribe = sb.vault.subscribe(cloud.append, schema="CloudEventSchema")
    expires = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    plain = client.set_secret("sql-pw", "one")
    dated = client.set_secret("sql-pw", "two", expires_on=expires, not_before=expires - dt.timedelta(days=1))
    unsubscribe()
    sb.vault.set_secret("sql-pw", "three")
    sb.vault.set_secret("quiet", "x", notify=False)

    assert len(grid) == 3 and len(cloud) == 2
    grid_keys, data_keys = _sample_keys("spec_event-grid-schema_secret_new_version_created.json")
    cloud_keys, _ = _sample_keys("spec_cloud-events-schema_secret_new_version_created.json")
    for event in grid:
        assert set(event) == grid_keys and set(event["data"]) == data_keys
        specs.validate(specs.EVENTGRID, "EventGridEvent", event)
        _validate_event_data(event["eventType"], event["data"])
    for event in cloud:
        assert set(event) == cloud_keys and set(event["data"]) == data_keys
        specs.validate(specs.EVENTGRID, "CloudEventEvent", event)
        _validate_event_data(event["type"], event["data"])
    first = grid[0]
    assert first["eventType"] == "Microsoft.KeyVault.SecretNewVersionCreated"
    assert first["topic"] == sb.vault.resource_id and first["subject"] == "sql-pw"
    assert first["data"]["Id"] == plain.id and first["data"]["Version"] == plain.properties.version
    assert (first["data"]["NBF"], first["data"]["EXP"]) == (None, None)
    assert grid[1]["data"]["EXP"] == int(expires.timestamp()) and grid[1]["data"]["Id"] == dated.id
    assert cloud[1]["id"] == grid[1]["id"] and cloud[1]["source"] == sb.vault.resource_id
    assert sb.vault.events == grid


def test_near_expiry_and_expired_events_can_be_emitted(sb: Sandbox) -> None:
    received: list[dict[str, Any]] = []
    sb.vault.subscribe(received.append)
    version = sb.vault.set_secret("pw", "v", expires=1_900_000_000, notify=False)

    sb.vault.emit("SecretNearExpiry", "pw")
    sb.vault.emit("Microsoft.KeyVault.SecretExpired", "pw", version)

    assert [e["eventType"] for e in received] == [
        "Microsoft.KeyVault.SecretNearExpiry",
        "Microsoft.KeyVault.SecretExpired",
    ]
    for event in received:
        specs.validate(specs.EVENTGRID, "EventGridEvent", event)
        _validate_event_data(event["eventType"], event["data"])
        assert event["data"]["Version"] == version and event["data"]["EXP"] == 1_900_000_000


def test_a_failing_subscriber_does_not_fail_the_write(sb: Sandbox, client: SecretClient) -> None:
    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("subscriber down")

    received: list[dict[str, Any]] = []
    sb.vault.subscribe(broken)
    sb.vault.subscribe(received.append)

    assert client.set_secret("pw", "v").value == "v"
    assert len(received) == 1


def test_sdk_retries_a_throttled_read(sb: Sandbox, client: SecretClient) -> None:
    client.set_secret("pw", "v")  # the challenge is behind us
    sb.faults.throttle("keyvault.get_secret", 1)

    assert client.get_secret("pw").value == "v"

    reads = sb.requests.find("keyvault.get_secret")
    assert [(r.status, r.fault) for r in reads] == [(429, "429"), (200, None)]


def test_python_api_holds_versions_and_their_metadata(sb: Sandbox) -> None:
    first = sb.vault.set_secret("Pw", "one", tags={"t": "1"}, content_type="password", notify=False)
    second = sb.vault.set_secret("pw", "two", enabled=False, notify=False)

    latest = sb.vault.get_secret("pw")
    assert (latest.name, latest.version, latest.value, latest.enabled) == ("Pw", second, "two", False)
    old = sb.vault.get_secret("PW", first)
    assert (old.tags, old.content_type, old.enabled) == ({"t": "1"}, "password", True)
    assert [v.version for v in sb.vault.versions("pw")] == [first, second]
    assert sb.vault.events == []
    with pytest.raises(KeyError):
        sb.vault.get_secret("nope")


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "status", "code"),
    [
        ("PUT", "secrets/pw", {"api-version": "2025-07-01"}, b"{not json", 400, "BadParameter"),
        ("PUT", "secrets/pw", {"api-version": "2025-07-01"}, b'{"value": 5}', 400, "BadParameter"),
        ("PUT", "secrets/bad_name", {"api-version": "2025-07-01"}, b'{"value": "x"}', 400, "BadParameter"),
        ("GET", "secrets/pw", {}, b"", 400, "BadParameter"),
        ("GET", "secrets/pw", {"api-version": "latest"}, b"", 400, "BadParameter"),
        ("GET", "secrets", {"api-version": "2025-07-01", "maxresults": "26"}, b"", 400, "BadParameter"),
        ("GET", "secrets", {"api-version": "2025-07-01", "$skiptoken": "!!"}, b"", 400, "BadParameter"),
        ("GET", "secrets/missing", {"api-version": "2025-07-01"}, b"", 404, "SecretNotFound"),
    ],
    ids=[
        "malformed-json",
        "value-not-string",
        "invalid-name",
        "no-api-version",
        "unknown-api-version",
        "maxresults-too-big",
        "bad-skiptoken",
        "missing-secret",
    ],
)
def test_bad_requests_get_key_vault_errors(
    sb: Sandbox,
    sandbox_env: dict[str, str],
    app: App,
    method: str,
    path: str,
    query: dict[str, str],
    body: bytes,
    status: int,
    code: str,
) -> None:
    response = requests.request(
        method,
        sb.vault.url + path,
        params=query,
        data=body,
        timeout=10,
        headers={"Authorization": f"Bearer {_token(sb, app)}", "Content-Type": "application/json"},
    )

    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    specs.validate(specs.KEYVAULT, "KeyVaultError", response.json())
    assert sb.vault.names() == []


@pytest.mark.parametrize("problem", ["expired", "wrong-audience", "unknown"])
def test_unusable_tokens_get_a_new_challenge(
    sb: Sandbox, sandbox_env: dict[str, str], app: App, problem: str
) -> None:
    if problem == "expired":
        token = _token(sb, app, lifetime=-1)
    elif problem == "wrong-audience":
        token = _token(sb, app, audience=POWERBI_AUDIENCE)
    else:
        token = "sbx.forged"

    response = requests.get(
        f"{sb.vault.url}secrets/pw",
        params={"api-version": "2025-07-01"},
        timeout=10,
        headers={"Authorization": f"Bearer {token}"},
    )

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer authorization="')
    assert response.json()["error"]["code"] == "Unauthorized"


def test_unknown_route_answers_json_not_a_traceback(sb: Sandbox, sandbox_env: dict[str, str]) -> None:
    response = requests.get(f"{sb.url}/no/such/route", timeout=10)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NotFound"
