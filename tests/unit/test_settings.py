"""Settings: the environment contract of DESIGN.md, read into one frozen object."""

from __future__ import annotations

import dataclasses

import pytest

from remediation.config.settings import DEFAULT_POWERBI_SCOPE, Settings, StorageSettings
from remediation.errors import ConfigError

SECRET = "s3cr3t-Cl!ent~value"


def test_empty_environment_gives_documented_defaults() -> None:
    s = Settings.from_env({})
    assert s.key_vault_url is None
    assert s.powerbi_api_url == "https://api.powerbi.com/v1.0/myorg"
    assert s.authority_host == "https://login.microsoftonline.com"
    assert s.state_path == ".state/ledger.sqlite"
    assert s.storage is None
    assert (s.tenant_id, s.client_id, s.client_secret, s.bindings) == (None, None, None, None)
    assert s.concurrency == 8
    assert s.refresh_daily_budget == 3
    assert s.max_attempts == 3
    assert s.attempt_window_seconds == 86400
    assert s.refresh_timeout_seconds == 600
    assert s.http_timeout_seconds == 30
    assert s.sweep_budget_seconds == 240
    assert s.lease_seconds == 300
    assert s.powerbi_scope == DEFAULT_POWERBI_SCOPE
    assert s.authority_is_microsoft
    assert s == Settings()


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.concurrency = 2  # type: ignore[misc]


def test_sandbox_style_environment_is_read() -> None:
    env = {
        "KEY_VAULT_URL": "https://127.0.0.1:8443",
        "POWERBI_API_URL": "https://127.0.0.1:8443/v1.0/myorg/",
        "AZURE_AUTHORITY_HOST": "https://127.0.0.1:8443/",
        "AZURE_TENANT_ID": " 72f988bf-86f1-41af-91ab-2d7cd011db47 ",
        "AZURE_CLIENT_ID": "0e0b2a51-7d4c-4c8a-9d7b-8e8a1f0d3c11",
        "AZURE_CLIENT_SECRET": SECRET,
        "REMEDIATION_BINDINGS": '{"bindings": []}',
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=k;IngestionEndpoint=https://127.0.0.1:8443/",
    }
    s = Settings.from_env(env)
    assert s.key_vault_url == "https://127.0.0.1:8443/"
    assert s.powerbi_api_url == "https://127.0.0.1:8443/v1.0/myorg"
    assert s.authority_host == "https://127.0.0.1:8443"
    assert s.tenant_id == "72f988bf-86f1-41af-91ab-2d7cd011db47"
    assert s.client_secret == SECRET
    assert s.has_client_secret
    assert s.bindings == '{"bindings": []}'
    assert s.vault_is_loopback
    assert not s.authority_is_microsoft
    assert s.powerbi_scope == DEFAULT_POWERBI_SCOPE  # sandbox host -> commercial scope
    assert s.vault_origin == ("https", "127.0.0.1", 8443)


def test_vault_url_gets_a_trailing_slash() -> None:
    assert Settings.from_env({"KEY_VAULT_URL": "https://kv.vault.azure.net"}).key_vault_url == (
        "https://kv.vault.azure.net/"
    )
    assert Settings.from_env({"KEY_VAULT_URL": "https://kv.vault.azure.net/"}).key_vault_url == (
        "https://kv.vault.azure.net/"
    )


def test_vault_origin_defaults_to_port_443() -> None:
    s = Settings.from_env({"KEY_VAULT_URL": "https://KV.vault.azure.net/"})
    assert s.vault_origin == ("https", "kv.vault.azure.net", 443)


@pytest.mark.parametrize(
    "value",
    ["http://kv.vault.azure.net/", "kv.vault.azure.net", "https://", "https://kv.vault.azure.net/?x=1"],
)
def test_vault_url_must_be_an_https_url(value: str) -> None:
    with pytest.raises(ConfigError, match="KEY_VAULT_URL") as info:
        Settings.from_env({"KEY_VAULT_URL": value})
    assert "https" in str(info.value)


def test_vault_url_with_credentials_is_rejected_without_echoing_them() -> None:
    with pytest.raises(ConfigError, match="KEY_VAULT_URL") as info:
        Settings.from_env({"KEY_VAULT_URL": f"https://user:{SECRET}@kv.vault.azure.net/"})
    assert SECRET not in str(info.value)


def test_require_key_vault_url_names_the_variable_when_unset() -> None:
    with pytest.raises(ConfigError, match="KEY_VAULT_URL is not set"):
        Settings.from_env({}).require_key_vault_url()
    assert Settings.from_env({"KEY_VAULT_URL": "https://kv.vault.azure.net"}).require_key_vault_url() == (
        "https://kv.vault.azure.net/"
    )


def test_powerbi_api_url_needs_https_and_a_path() -> None:
    with pytest.raises(ConfigError, match="POWERBI_API_URL"):
        Settings.from_env({"POWERBI_API_URL": "http://api.powerbi.com/v1.0/myorg"})
    with pytest.raises(ConfigError, match="POWERBI_API_URL.*path"):
        Settings.from_env({"POWERBI_API_URL": "https://api.powerbi.com/"})


def test_authority_host_accepts_a_bare_host_and_rejects_paths() -> None:
    s = Settings.from_env({"AZURE_AUTHORITY_HOST": "login.microsoftonline.us"})
    assert s.authority_host == "https://login.microsoftonline.us"
    assert s.authority_is_microsoft
    with pytest.raises(ConfigError, match="AZURE_AUTHORITY_HOST"):
        Settings.from_env({"AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/tenant"})
    with pytest.raises(ConfigError, match="AZURE_AUTHORITY_HOST"):
        Settings.from_env({"AZURE_AUTHORITY_HOST": "http://login.microsoftonline.com"})


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("https://login.microsoftonline.com", True),
        ("https://login.microsoftonline.us", True),
        ("https://login.chinacloudapi.cn", True),
        ("https://login.partner.microsoftonline.cn", True),
        ("https://login.microsoftonline.de", True),
        ("https://LOGIN.MICROSOFTONLINE.COM", True),
        ("https://127.0.0.1:8443", False),
        ("https://localhost:8443", False),
        ("https://evil-login.microsoftonline.com.example.org", False),
        ("https://notlogin.microsoftonline.com.attacker.net", False),
        ("https://evil-login.microsoftonline.com", False),
    ],
)
def test_authority_is_microsoft_only_for_microsoft_hosts(host: str, expected: bool) -> None:
    assert Settings.from_env({"AZURE_AUTHORITY_HOST": host}).authority_is_microsoft is expected


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("https://127.0.0.1:8443/", True),
        ("https://127.8.9.10/", True),
        ("https://[::1]:8443/", True),
        ("https://localhost:8443/", True),
        ("https://kv.vault.azure.net/", False),
        ("https://10.0.0.4/", False),
    ],
)
def test_vault_is_loopback(url: str, loopback: bool) -> None:
    assert Settings.from_env({"KEY_VAULT_URL": url}).vault_is_loopback is loopback


def test_vault_is_not_loopback_when_unset() -> None:
    assert not Settings().vault_is_loopback


@pytest.mark.parametrize(
    ("api", "scope"),
    [
        ("https://api.powerbi.com/v1.0/myorg", "https://analysis.windows.net/powerbi/api/.default"),
        ("https://api.powerbigov.us/v1.0/myorg", "https://analysis.usgovcloudapi.net/powerbi/api/.default"),
        (
            "https://api.high.powerbigov.us/v1.0/myorg",
            "https://analysis.high.powerbigov.us/powerbi/api/.default",
        ),
        ("https://api.powerbi.cn/v1.0/myorg", "https://analysis.chinacloudapi.cn/powerbi/api/.default"),
        ("https://127.0.0.1:9999/v1.0/myorg", "https://analysis.windows.net/powerbi/api/.default"),
    ],
)
def test_powerbi_scope_follows_the_api_host(api: str, scope: str) -> None:
    assert Settings.from_env({"POWERBI_API_URL": api}).powerbi_scope == scope


def test_powerbi_scope_env_overrides_the_derived_scope() -> None:
    s = Settings.from_env(
        {"POWERBI_API_URL": "https://api.powerbigov.us/v1.0/myorg", "POWERBI_SCOPE": "api://custom/.default"}
    )
    assert s.powerbi_scope == "api://custom/.default"
    with pytest.raises(ConfigError, match="POWERBI_SCOPE"):
        Settings.from_env({"POWERBI_SCOPE": "a b"})


@pytest.mark.parametrize(
    ("var", "attr", "value", "expected"),
    [
        ("REMEDIATION_CONCURRENCY", "concurrency", "1", 1),
        ("REMEDIATION_CONCURRENCY", "concurrency", " 64 ", 64),
        ("REMEDIATION_REFRESH_BUDGET", "refresh_daily_budget", "0", 0),
        ("REMEDIATION_REFRESH_BUDGET", "refresh_daily_budget", "8", 8),
        ("REMEDIATION_MAX_ATTEMPTS", "max_attempts", "5", 5),
        ("REMEDIATION_ATTEMPT_WINDOW", "attempt_window_seconds", "3600", 3600),
        ("REMEDIATION_REFRESH_TIMEOUT", "refresh_timeout_seconds", "0", 0),
        ("REMEDIATION_HTTP_TIMEOUT", "http_timeout_seconds", "10", 10),
        ("REMEDIATION_SWEEP_BUDGET", "sweep_budget_seconds", "500", 500),
        ("REMEDIATION_LEASE_SECONDS", "lease_seconds", "120", 120),
    ],
)
def test_integer_limits_are_read(var: str, attr: str, value: str, expected: int) -> None:
    assert getattr(Settings.from_env({var: value}), attr) == expected


@pytest.mark.parametrize(
    ("var", "value", "allowed"),
    [
        ("REMEDIATION_CONCURRENCY", "0", "1 to 64"),
        ("REMEDIATION_CONCURRENCY", "65", "1 to 64"),
        ("REMEDIATION_CONCURRENCY", "eight", "1 to 64"),
        ("REMEDIATION_CONCURRENCY", "8.5", "1 to 64"),
        ("REMEDIATION_REFRESH_BUDGET", "9", "0 to 8"),
        ("REMEDIATION_REFRESH_BUDGET", "-1", "0 to 8"),
        ("REMEDIATION_MAX_ATTEMPTS", "0", "1 to 10"),
        ("REMEDIATION_ATTEMPT_WINDOW", "1", "60 to 604800"),
        ("REMEDIATION_REFRESH_TIMEOUT", "99999", "0 to 7200"),
        ("REMEDIATION_HTTP_TIMEOUT", "0", "1 to 300"),
        ("REMEDIATION_SWEEP_BUDGET", "1_000", "10 to 3600"),
        ("REMEDIATION_LEASE_SECONDS", "5", "30 to 86400"),
    ],
)
def test_bad_integers_name_the_variable_and_the_range(var: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})
    message = str(info.value)
    assert var in message
    assert allowed in message
    assert "\n" not in message


def test_empty_variables_mean_unset() -> None:
    s = Settings.from_env(
        {
            "KEY_VAULT_URL": "",
            "REMEDIATION_CONCURRENCY": " ",
            "AZURE_CLIENT_SECRET": "",
            "AzureWebJobsStorage": "",
        }
    )
    assert s.key_vault_url is None
    assert s.concurrency == 8
    assert s.client_secret is None
    assert s.storage is None


def test_state_path_is_read() -> None:
    assert (
        Settings.from_env({"REMEDIATION_STATE_PATH": "/var/lib/healer.db"}).state_path == "/var/lib/healer.db"
    )


def test_storage_from_connection_string() -> None:
    conn = (
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={SECRET};EndpointSuffix=core.windows.net"
    )
    s = Settings.from_env({"AzureWebJobsStorage": conn})
    assert s.storage == StorageSettings(connection_string=conn)
    assert s.storage is not None and not s.storage.uses_identity


def test_storage_from_identity_settings() -> None:
    s = Settings.from_env(
        {
            "AzureWebJobsStorage__accountName": "healerstore",
            "AzureWebJobsStorage__tableServiceUri": "https://healerstore.table.core.windows.net/",
        }
    )
    assert s.storage == StorageSettings(
        account_name="healerstore", table_service_uri="https://healerstore.table.core.windows.net"
    )
    assert s.storage is not None and s.storage.uses_identity


def test_bad_storage_identity_settings_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="AzureWebJobsStorage__accountName"):
        Settings.from_env({"AzureWebJobsStorage__accountName": "Not_A_Name"})
    with pytest.raises(ConfigError, match="AzureWebJobsStorage__tableServiceUri"):
        Settings.from_env({"AzureWebJobsStorage__tableServiceUri": "table-endpoint"})


def test_repr_and_str_never_show_secrets() -> None:
    conn = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={SECRET}"
    s = Settings.from_env(
        {"AZURE_CLIENT_SECRET": SECRET, "AzureWebJobsStorage": conn, "AZURE_CLIENT_ID": "app"}
    )
    for text in (repr(s), str(s), f"{s}", repr(s.storage)):
        assert SECRET not in text
    assert "client_secret=<redacted>" in repr(s)
    assert "client_id='app'" in repr(s)


def test_a_certificate_password_is_never_shown_and_a_certificate_selects_the_service_principal() -> None:
    s = Settings.from_env(
        {
            "AZURE_CLIENT_ID": "app",
            "AZURE_CLIENT_CERTIFICATE_PATH": "/certs/healer.pfx",
            "AZURE_CLIENT_CERTIFICATE_PASSWORD": SECRET,
        }
    )
    assert SECRET not in repr(s) and "client_certificate_password=<redacted>" in repr(s)
    assert s.uses_service_principal and s.has_client_certificate and not s.has_client_secret


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMEDIATION_CONCURRENCY", "3")
    assert Settings.from_env().concurrency == 3


def test_the_inventory_source_is_auto_admin_or_per_dataset() -> None:
    assert Settings.from_env({}).inventory_source == "auto"
    assert (
        Settings.from_env({"REMEDIATION_INVENTORY_SOURCE": " Per-Dataset "}).inventory_source == "per-dataset"
    )
    with pytest.raises(ConfigError, match="REMEDIATION_INVENTORY_SOURCE.*auto, admin, per-dataset"):
        Settings.from_env({"REMEDIATION_INVENTORY_SOURCE": "scanner"})
