"""Identity-based ingestion: APPLICATIONINSIGHTS_AUTHENTICATION_STRING -> a managed identity credential."""

from __future__ import annotations

from typing import Any

import pytest
from azure.identity import ManagedIdentityCredential

from remediation.telemetry import appinsights as telemetry
from remediation.telemetry.appinsights import AadIngestion, parse_authentication_string

CONNECTION_STRING = (
    "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://127.0.0.1:9/"
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "ClientId=1c8b3c4e-1111-2222-3333-444455556666;Authorization=AAD",
            AadIngestion("1c8b3c4e-1111-2222-3333-444455556666"),
        ),
        (" authorization = aad ; clientid = abc ", AadIngestion("abc")),
        ("Authorization=AAD", AadIngestion(None)),
        ("ClientId=abc", None),
        ("ClientId=abc;Authorization=Key", None),
        ("", None),
        (None, None),
    ],
)
def test_the_authentication_string_is_parsed(value: str | None, expected: AadIngestion | None) -> None:
    assert parse_authentication_string(value) == expected


def _configured_kwargs(monkeypatch: pytest.MonkeyPatch, authentication_string: str | None) -> dict[str, Any]:
    import azure.monitor.opentelemetry as distro

    seen: dict[str, Any] = {}
    monkeypatch.setattr(distro, "configure_azure_monitor", lambda **kwargs: seen.update(kwargs))
    telemetry._configure_azure_monitor(
        CONNECTION_STRING, telemetry.Redactor(), authentication_string=authentication_string
    )
    return seen


def test_aad_ingestion_signs_with_the_user_assigned_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = "ClientId=1c8b3c4e-1111-2222-3333-444455556666;Authorization=AAD"
    kwargs = _configured_kwargs(monkeypatch, auth)
    assert isinstance(kwargs["credential"], ManagedIdentityCredential)
    assert kwargs["connection_string"] == CONNECTION_STRING


def test_without_aad_no_credential_is_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = _configured_kwargs(monkeypatch, None)
    assert "credential" not in kwargs
    assert kwargs["connection_string"] == CONNECTION_STRING


def test_user_assigned_client_id_reaches_the_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, Any]] = []

    class Recording:
        def __init__(self, **kwargs: Any) -> None:
            built.append(kwargs)

    import azure.identity

    monkeypatch.setattr(azure.identity, "ManagedIdentityCredential", Recording)
    telemetry.azure_monitor_credential("ClientId=abc;Authorization=AAD")
    telemetry.azure_monitor_credential("Authorization=AAD")
    assert built == [{"client_id": "abc"}, {}]


def test_telemetry_reads_the_authentication_string(monkeypatch: pytest.MonkeyPatch) -> None:
    from remediation.config.settings import Settings

    env = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION_STRING,
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "ClientId=abc;Authorization=AAD",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # Works whether Settings carries the variable (appinsights_authentication_string) or not yet.
    tel = telemetry.Telemetry(Settings.from_env(env))
    assert tel._authentication_string == "ClientId=abc;Authorization=AAD"
