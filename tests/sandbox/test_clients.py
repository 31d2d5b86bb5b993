"""The service clients (Key Vault, Power BI, tokens) against the sandbox, over real HTTPS.

The real msal, azure-identity and azure-keyvault-secrets talk to the sandbox unmodified; the
product's clients are built from ``Settings.from_env()`` exactly as in production.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from remediation.clients.http import ApiError, CallStats, HttpPipeline
from remediation.clients.identity import (
    AuthenticationError,
    PowerBITokenProvider,
    UserTokenCache,
    UserTokenProvider,
    build_azure_credential,
)
from remediation.clients.keyvault import (
    KeyVaultClient,
    SecretAccessDenied,
    SecretDisabled,
    SecretNotFound,
)
from remediation.clients.powerbi import (
    EntityNotFound,
    InvalidId,
    PowerBIClient,
    PowerBINotAuthorized,
    RefreshAlreadyRunning,
)
from remediation.config.settings import Settings
from remediation.errors import ConfigError
from remediation.rules.gateway_crypto import encrypt_credentials
from sandbox import Sandbox
from sandbox.entra import App
from sandbox.powerbi import Dataset, Datasource, Gateway, Workspace
from tests.support.certs import make_client_certificate
from tests.support.clock import Sleeps
from tests.support.ports import user_realm_port_served

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

OLD = "Old#Passw0rd-4a1f"
NEW = "New#Passw0rd-77c2"
UPN = "svc.dataflow@contoso.com"
USER_PASSWORD = "Correct#Horse-Battery-1"


@dataclass
class World:
    sb: Sandbox
    app: App
    settings: Settings
    workspace: Workspace
    gateway: Gateway
    datasource: Datasource
    dataset: Dataset
    stats: CallStats
    sleeps: Sleeps

    def pipeline(self, **kwargs: Any) -> HttpPipeline:
        return HttpPipeline.from_settings(
            self.settings, service="powerbi", stats=self.stats, sleep=self.sleeps, rand=lambda: 1.0, **kwargs
        )

    def powerbi(self, provider: Any = None) -> PowerBIClient:
        provider = provider or PowerBITokenProvider(self.settings)
        return PowerBIClient(self.settings.powerbi_api_url, provider, self.pipeline())

    def keyvault(self, settings: Settings | None = None) -> KeyVaultClient:
        settings = settings or self.settings
        return KeyVaultClient(
            settings, build_azure_credential(settings), stats=self.stats, sleep=self.sleeps, rand=lambda: 1.0
        )


@pytest.fixture
def app(sb: Sandbox) -> App:
    return sb.entra.add_app(name="healer")


@pytest.fixture
def env(sb: Sandbox, app: App, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    environment = sb.env()
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    return environment


@pytest.fixture
def world(sb: Sandbox, app: App, env: dict[str, str]) -> World:
    pbi = sb.powerbi
    source = sb.sources.add("sql-sales", username="svc_pbi", secret=NEW)
    workspace = pbi.add_workspace("Sales", members=[app.client_id])
    gateway = pbi.add_gateway("GW-01", admins=[app.client_id])
    datasource = pbi.add_datasource(gateway, source, stored={"username": "svc_pbi", "password": OLD})
    dataset = pbi.add_dataset(workspace, "Sales model", [datasource], owner=app.client_id)
    settings = Settings.from_env(env)
    return World(sb, app, settings, workspace, gateway, datasource, dataset, CallStats(), Sleeps())


def _basic(username: str, password: str) -> str:
    data = [{"name": "username", "value": username}, {"name": "password", "value": password}]
    return json.dumps({"credentialData": data}, separators=(",", ":"))


def _update_body(credentials: str, algorithm: str = "RSA-OAEP") -> dict[str, Any]:
    return {
        "credentialDetails": {
            "credentialType": "Basic",
            "credentials": credentials,
            "encryptedConnection": "Encrypted",
            "encryptionAlgorithm": algorithm,
            "privacyLevel": "Organizational",
        }
    }


# --- Key Vault ----------------------------------------------------------------------------------
def test_key_vault_reads_a_secret_its_current_version_and_its_versions(world: World) -> None:
    first = world.sb.vault.set_secret("sql-sales-password", OLD)
    second = world.sb.vault.set_secret("sql-sales-password", NEW)
    with world.keyvault() as kv:
        secret = kv.get_secret("sql-sales-password")
        assert (secret.name, secret.version, secret.value, secret.enabled) == (
            "sql-sales-password",
            second,
            NEW,
            True,
        )
        assert NEW not in repr(secret) and NEW not in str(secret)
        assert kv.get_secret("sql-sales-password", first).value == OLD
        assert kv.get_current_version("sql-sales-password") == second
        assert {v.version for v in kv.list_versions("sql-sales-password")} == {first, second}
        assert kv.list_versions("no-such-secret") == []


def test_a_403_from_key_vault_is_secret_access_denied_naming_the_secret(world: World) -> None:
    world.sb.vault.set_secret("sql-sales-password", NEW)
    world.sb.vault.restrict()  # nobody granted
    with world.keyvault() as kv, pytest.raises(SecretAccessDenied) as caught:
        kv.get_secret("sql-sales-password")
    error = caught.value
    assert error.status == 403 and error.secret_name == "sql-sales-password"
    assert "sql-sales-password" in str(error) and "secrets/get" in str(error)
    assert NEW not in str(error)


def test_missing_and_disabled_secrets_are_typed(world: World) -> None:
    version = world.sb.vault.set_secret("sql-sales-password", NEW)
    world.sb.vault.disable("sql-sales-password", version)
    with world.keyvault() as kv:
        with pytest.raises(SecretNotFound) as missing:
            kv.get_secret("nope")
        assert missing.value.status == 404 and "nope" in str(missing.value)
        with pytest.raises(SecretDisabled):
            kv.get_secret("sql-sales-password")


def test_key_vault_throttling_is_retried_by_our_policy_with_retry_after(world: World) -> None:
    world.sb.vault.set_secret("sql-sales-password", NEW)
    world.sb.faults.throttle("keyvault.get_secret", retry_after=4, times=2)
    with world.keyvault() as kv:
        assert kv.get_secret("sql-sales-password").value == NEW
    assert world.sleeps.waits == [4.0, 4.0]
    assert world.stats.snapshot().throttled == 2


def test_key_vault_with_a_managed_identity(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    mi = world.sb.entra.add_managed_identity()
    world.sb.vault.set_secret("sql-sales-password", NEW)
    for key, value in world.sb.entra.managed_identity_env(mi).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AZURE_CLIENT_SECRET")
    settings = Settings.from_env()
    assert not settings.has_client_secret
    with world.keyvault(settings) as kv:
        assert kv.get_secret("sql-sales-password").value == NEW
    served = world.sb.requests.find("keyvault.get_secret", status=200)[-1]
    assert (served.token_kind, served.principal) == ("managed_identity", mi.client_id)


# --- tokens -------------------------------------------------------------------------------------
def test_the_service_principal_token_comes_from_msal_and_is_cached(world: World) -> None:
    provider = PowerBITokenProvider(world.settings)
    assert provider.kind == "service_principal"
    first, second = provider(), provider()
    assert first == second
    assert len(world.sb.requests.find("entra.token")) == 1
    info = world.sb.entra.tokens[first]
    assert (info.kind, info.principal, info.audience) == (
        "app",
        world.app.client_id,
        "https://analysis.windows.net/powerbi/api",
    )


def test_a_wrong_client_secret_is_an_authentication_error_without_the_secret(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "wrong-secret-value-123")
    with pytest.raises(AuthenticationError) as caught:
        PowerBITokenProvider(Settings.from_env())()
    assert caught.value.code == "AADSTS7000215" and caught.value.credentials_rejected
    assert "wrong-secret-value-123" not in str(caught.value)


def test_the_managed_identity_gets_power_bi_tokens_when_there_is_no_secret(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    mi = world.sb.entra.add_managed_identity()
    for key, value in world.sb.entra.managed_identity_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AZURE_CLIENT_SECRET")
    monkeypatch.delenv("AZURE_CLIENT_ID")
    provider = PowerBITokenProvider(Settings.from_env())
    assert provider.kind == "managed_identity"
    token = provider()
    assert provider() == token
    info = world.sb.entra.tokens[token]
    assert (info.kind, info.principal) == ("managed_identity", mi.client_id)


def _certificate_app(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, pfx_password: bytes | None = None
) -> App:
    """A service principal that signs in with a certificate file instead of a secret."""
    cert = make_client_certificate()
    app = world.sb.entra.add_app(name="cert-healer", certificate=cert.cert_pem, default=False)
    world.sb.powerbi.add_member(world.workspace, app.client_id)
    path = tmp_path / ("healer.pfx" if pfx_password is not None else "healer.pem")
    path.write_bytes(cert.pfx(pfx_password) if pfx_password is not None else cert.pem)
    monkeypatch.delenv("AZURE_CLIENT_SECRET")
    monkeypatch.setenv("AZURE_CLIENT_ID", app.client_id)
    monkeypatch.setenv("AZURE_CLIENT_CERTIFICATE_PATH", str(path))
    if pfx_password:
        monkeypatch.setenv("AZURE_CLIENT_CERTIFICATE_PASSWORD", pfx_password.decode())
    return app


def test_a_certificate_service_principal_gets_power_bi_tokens_from_a_pem_file(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = _certificate_app(world, monkeypatch, tmp_path)
    settings = Settings.from_env()
    provider = PowerBITokenProvider(settings)

    groups = PowerBIClient(settings.powerbi_api_url, provider, world.pipeline()).get_groups()

    assert provider.kind == "service_principal"
    assert [g.id for g in groups] == [world.workspace.id]
    (issued,) = [t for t in world.sb.entra.tokens_issued("app") if t.principal == app.client_id]
    assert issued.audience == "https://analysis.windows.net/powerbi/api"
    (token_call,) = world.sb.requests.find("entra.token")
    form = token_call.raw_body.decode()
    assert "client_assertion=" in form and "client_secret" not in form


def test_a_certificate_service_principal_reads_key_vault_from_a_password_protected_pfx(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = _certificate_app(world, monkeypatch, tmp_path, pfx_password=b"Pfx#Pass-1")
    world.sb.vault.set_secret("sql-sales-password", NEW, notify=False)

    secret = world.keyvault(Settings.from_env()).get_secret("sql-sales-password")

    assert secret.value == NEW
    assert [t.principal for t in world.sb.entra.tokens_issued("app")] == [app.client_id]


def test_certificate_settings_that_cannot_work_are_config_errors(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AZURE_CLIENT_CERTIFICATE_PATH", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="AZURE_CLIENT_SECRET and AZURE_CLIENT_CERTIFICATE_PATH"):
        Settings.from_env()
    monkeypatch.delenv("AZURE_CLIENT_SECRET")
    with pytest.raises(ConfigError, match="missing.pem: cannot be read"):
        build_azure_credential(Settings.from_env())
    key_only = tmp_path / "key-only.pem"
    key_only.write_bytes(make_client_certificate().key_pem)
    monkeypatch.setenv("AZURE_CLIENT_CERTIFICATE_PATH", str(key_only))
    with pytest.raises(ConfigError, match="needs both the private key and the certificate"):
        PowerBITokenProvider(Settings.from_env())()


@pytest.mark.usefixtures("port_443")
def test_a_user_token_by_password_is_cached_and_asks_for_the_password_once(world: World) -> None:
    world.sb.entra.add_user(UPN, USER_PASSWORD)
    asked: list[int] = []

    def password() -> str:
        asked.append(1)
        return USER_PASSWORD

    cache = UserTokenCache()
    provider = UserTokenProvider(world.settings, UPN, password, cache=cache)
    token = provider()
    assert provider() == token
    assert UserTokenProvider(world.settings, UPN.upper(), password, cache=cache)() == token
    assert asked == [1]
    info = world.sb.entra.tokens[token]
    assert (info.kind, info.principal) == ("user", UPN)


@pytest.mark.usefixtures("port_443")
def test_under_a_managed_identity_users_sign_in_through_the_public_client_registration(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    mi = world.sb.entra.add_managed_identity()
    public = world.sb.entra.add_app(name="healer-public-client", default=False)
    world.sb.entra.add_user(UPN, USER_PASSWORD)
    monkeypatch.delenv("AZURE_CLIENT_SECRET")
    monkeypatch.setenv("AZURE_CLIENT_ID", mi.client_id)
    monkeypatch.setenv("POWERBI_PUBLIC_CLIENT_ID", public.client_id)

    token = UserTokenProvider(Settings.from_env(), UPN, lambda: USER_PASSWORD)()

    (call,) = world.sb.requests.find("entra.token")
    assert f"client_id={public.client_id}" in call.raw_body.decode()
    assert world.sb.entra.tokens[token].principal == UPN


@pytest.mark.usefixtures("port_443")
def test_a_wrong_user_password_is_rejected_with_its_aadsts_code_and_never_echoed(world: World) -> None:
    world.sb.entra.add_user(UPN, USER_PASSWORD)
    with pytest.raises(AuthenticationError) as caught:
        UserTokenProvider(world.settings, UPN, lambda: "Not-The-Password-93")()
    error = caught.value
    assert (error.code, error.error, error.principal) == ("AADSTS50126", "invalid_grant", UPN)
    assert error.credentials_rejected and error.hint
    assert "Not-The-Password-93" not in str(error) and error.__cause__ is None
    assert len(world.sb.requests.find("entra.token")) == 1  # presented once, never retried


# --- Power BI -----------------------------------------------------------------------------------
def test_groups_are_paged_until_the_last_one(world: World) -> None:
    for i in range(4):
        world.sb.powerbi.add_workspace(f"ws-{i}", members=[world.app.client_id])
    world.sb.powerbi.add_workspace("not mine")
    groups = world.powerbi().get_groups(page_size=2)
    assert sorted(g.name for g in groups) == ["Sales", "ws-0", "ws-1", "ws-2", "ws-3"]
    assert len(world.sb.requests.find("powerbi.get_groups")) == 3


def test_datasets_and_their_gateway_data_sources_are_read_and_validated(world: World) -> None:
    pbi = world.powerbi()
    [dataset] = pbi.get_datasets_in_group(world.workspace.id)
    assert (dataset.id, dataset.name, dataset.configured_by) == (
        world.dataset.id,
        "Sales model",
        world.app.client_id,
    )
    [bound] = pbi.get_datasources_in_group(world.workspace.id, world.dataset.id)
    assert (bound.gateway_id, bound.datasource_id, bound.datasource_type) == (
        world.gateway.id,
        world.datasource.id,
        "Sql",
    )
    assert bound.connection_details["database"] == "sql-sales"
    gateway = pbi.get_gateway(world.gateway.id)
    assert gateway.public_key is not None and not gateway.is_cloud
    assert [g.id for g in pbi.get_gateways()] == [world.gateway.id]
    [listed] = pbi.get_datasources(world.gateway.id)
    single = pbi.get_datasource(world.gateway.id, world.datasource.id)
    assert listed == single and single.credential_type == "Basic"
    assert single.connection() == {"server": "sql-sales.contoso.local", "database": "sql-sales"}


def test_a_cloud_gateway_has_no_public_key(world: World) -> None:
    cloud = world.sb.powerbi.add_cloud_gateway(admins=[world.app.client_id])
    gateway = world.powerbi().get_gateway(cloud.id)
    assert gateway.is_cloud and gateway.public_key is None


def test_status_is_an_answer_and_an_encrypted_update_heals_it(world: World) -> None:
    pbi = world.powerbi()
    status = pbi.get_datasource_status(world.gateway.id, world.datasource.id)
    assert not status.ok and status.code == "DM_GWPipeline_Gateway_InvalidConnectionCredentials"
    assert status.detail("Microsoft.Data.Mashup.CredentialError.Reason") == "AccessUnauthorized"

    key = pbi.get_gateway(world.gateway.id).public_key
    assert key is not None
    pbi.update_datasource(
        world.gateway.id, world.datasource.id, _update_body(encrypt_credentials(_basic("svc_pbi", NEW), key))
    )
    assert pbi.get_datasource_status(world.gateway.id, world.datasource.id).ok
    assert world.datasource.credential is not None and world.datasource.credential.data["password"] == NEW


def test_a_rejected_password_is_presented_once_and_raised_typed(world: World) -> None:
    pbi = world.powerbi()
    key = pbi.get_gateway(world.gateway.id).public_key
    assert key is not None
    body = _update_body(encrypt_credentials(_basic("svc_pbi", "Wrong#1"), key))
    with pytest.raises(ApiError) as caught:
        pbi.update_datasource(world.gateway.id, world.datasource.id, body)
    assert (caught.value.status, caught.value.code, caught.value.attempts) == (
        400,
        "DM_GWPipeline_Gateway_InvalidConnectionCredentials",
        1,
    )
    assert "Wrong#1" not in str(caught.value)
    assert len(world.datasource.update_attempts) == 1


def test_the_credentials_patch_is_retried_only_after_a_429(world: World) -> None:
    """Power BI may answer 500 or 503 after the gateway tested the password: a retry would be a
    second sign-in. A 429 says it was not served."""
    pbi = world.powerbi()
    key = pbi.get_gateway(world.gateway.id).public_key
    assert key is not None
    body = _update_body(encrypt_credentials(_basic("svc_pbi", NEW), key))
    for status in (500, 503):
        world.sb.faults.add("powerbi.update_datasource", status=status)
        with pytest.raises(ApiError) as caught:
            pbi.update_datasource(world.gateway.id, world.datasource.id, body)
        assert caught.value.status == status and caught.value.attempts == 1
    world.sb.faults.throttle("powerbi.update_datasource", retry_after=1)
    pbi.update_datasource(world.gateway.id, world.datasource.id, body)
    assert [r.status for r in world.sb.requests.find("powerbi.update_datasource")] == [500, 503, 429, 200]


def test_refresh_history_schedule_and_a_second_refresh_while_one_runs(world: World) -> None:
    world.sb.powerbi.add_refresh(world.dataset, status="Failed")
    world.sb.powerbi.set_refresh_duration(3600)
    pbi = world.powerbi()
    g, d = world.workspace.id, world.dataset.id

    [failed] = pbi.get_refresh_history_in_group(g, d, top=1)
    assert failed.failed and failed.start_time is not None and failed.end_time is not None
    assert json.loads(failed.service_exception_json or "")["errorCode"] == (
        "ModelRefreshFailed_CredentialsNotSpecified"
    )

    request = pbi.refresh_dataset_in_group(g, d)
    assert request.location and request.location.endswith(request.request_id)
    newest = pbi.get_refresh_history_in_group(g, d, top=5)[0]
    assert newest.request_id == request.request_id and newest.running
    with pytest.raises(RefreshAlreadyRunning) as caught:
        pbi.refresh_dataset_in_group(g, d)
    assert caught.value.status == 400 and caught.value.attempts == 1

    world.dataset.schedule.enabled = False
    assert not pbi.get_refresh_schedule_in_group(g, d).enabled
    pbi.update_refresh_schedule_in_group(g, d, enabled=True)
    schedule = pbi.get_refresh_schedule_in_group(g, d)
    assert schedule.enabled and schedule.days and schedule.notify_option == "MailOnFailure"


def test_take_over_makes_the_product_the_owner(world: World) -> None:
    world.dataset.owner = "someone.else@contoso.com"
    world.powerbi().take_over_in_group(world.workspace.id, world.dataset.id)
    assert world.dataset.owner == world.app.client_id


def test_power_bi_throttling_is_waited_out(world: World) -> None:
    world.sb.faults.throttle("powerbi.refresh_history", retry_after=2, times=3)
    assert world.powerbi().get_refresh_history_in_group(world.workspace.id, world.dataset.id) == []
    assert world.sleeps.waits == [2.0, 2.0, 2.0]
    assert world.stats.snapshot().retries == 3


def test_refused_and_unknown_things_are_typed(world: World) -> None:
    stranger = world.sb.powerbi.add_gateway("not-mine")
    pbi = world.powerbi()
    with pytest.raises(PowerBINotAuthorized) as denied:
        pbi.get_gateway(stranger.id)
    assert denied.value.status == 403 and denied.value.request_id
    with pytest.raises(EntityNotFound):
        pbi.get_datasets_in_group("00000000-0000-4000-8000-000000000000")


def test_ids_that_are_not_guids_never_reach_a_url(world: World) -> None:
    pbi = world.powerbi()
    before = len(world.sb.requests.all())
    for bad in ("../gateways", "abc", world.gateway.id + "/datasources"):
        with pytest.raises(InvalidId):
            pbi.get_gateway(bad)
    assert len(world.sb.requests.all()) == before


def test_a_malformed_answer_is_a_validation_error_naming_the_field(world: World) -> None:
    world.sb.faults.add("powerbi.get_gateway", status=200, body={"id": "not-a-guid", "name": "x"})
    with pytest.raises(ApiError) as caught:
        world.powerbi().get_gateway(world.gateway.id)
    assert type(caught.value).__name__ == "ResponseValidationError"
    assert "gateway.id must be a GUID" in str(caught.value)


@pytest.mark.usefixtures("port_443")
def test_an_oauth2_caller_identity_update_uses_the_owners_user_token(world: World) -> None:
    world.sb.entra.add_user(UPN, USER_PASSWORD)
    flow = world.sb.sources.add("dataflow", credential_type="OAuth2", username=UPN)
    cloud = world.sb.powerbi.add_cloud_gateway()
    datasource = world.sb.powerbi.add_datasource(
        cloud, flow, datasource_type="Extension", caller_identity_only=True, stored={"username": "x@y"}
    )
    world.sb.powerbi.add_dataset(world.workspace, "Dataflow model", [datasource], owner=UPN)
    user = UserTokenProvider(world.settings, UPN, lambda: USER_PASSWORD)
    body = {
        "credentialDetails": {
            "credentialType": "OAuth2",
            "encryptedConnection": "Encrypted",
            "encryptionAlgorithm": "None",
            "privacyLevel": "Organizational",
            "useCallerAADIdentity": True,
        }
    }
    pbi = world.powerbi()
    with pytest.raises(PowerBINotAuthorized):  # the app may not
        pbi.update_datasource(cloud.id, datasource.id, body)
    pbi.update_datasource(cloud.id, datasource.id, body, token=user())
    assert datasource.credential is not None and datasource.credential.signed_in_as == UPN


# --- nothing secret in the logs -----------------------------------------------------------------
@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


@pytest.mark.user_realm
def test_a_full_flow_logs_no_token_secret_or_password(world: World, everything_logged: Any) -> None:
    version = world.sb.vault.set_secret("sql-sales-password", NEW)
    world.sb.faults.throttle("powerbi.get_gateway", retry_after=1)
    with world.keyvault() as kv:
        secret = kv.get_secret("sql-sales-password", version)
    pbi = world.powerbi()
    key = pbi.get_gateway(world.gateway.id).public_key
    assert key is not None
    pbi.update_datasource(
        world.gateway.id,
        world.datasource.id,
        _update_body(encrypt_credentials(_basic("svc_pbi", secret.value), key)),
    )
    with pytest.raises(ApiError):
        pbi.update_datasource(
            world.gateway.id, world.datasource.id, _update_body(encrypt_credentials(_basic("u", OLD), key))
        )
    pbi.refresh_dataset_in_group(world.workspace.id, world.dataset.id)
    passwords = [NEW, OLD]
    if user_realm_port_served(world.sb):  # the user flow needs msal's user-realm call on 443
        world.sb.entra.add_user(UPN, USER_PASSWORD)
        UserTokenProvider(world.settings, UPN, lambda: USER_PASSWORD)()
        with pytest.raises(AuthenticationError):
            UserTokenProvider(world.settings, UPN, lambda: "Wrong#User-Pass-5")()
        passwords += [USER_PASSWORD, "Wrong#User-Pass-5"]

    records = everything_logged.records
    assert records, "the flow should have logged something"
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in records)
    secrets = [*passwords, world.app.secret or "", *world.sb.entra.tokens]
    assert all(s for s in secrets)
    leaked = [s for s in secrets if s in text]
    assert leaked == []
