"""What a gateway data source PATCH carries for privacy level and encryption (issue 13): the
data source's current settings as its Fabric connection reports them, unless the binding says
otherwise; the defaults, with a warning, when they could not be read. And the one rule for which
connection a data source is (:mod:`remediation.rules.connections`)."""

from __future__ import annotations

from typing import Any

from remediation.clients.fabric import Connection
from remediation.config.bindings import EncryptedConnection, PrivacyLevel
from remediation.config.bindings_file import parse_bindings
from remediation.reconciler.targets.gateway_settings import source_settings
from remediation.rules.connections import corresponding_connection
from remediation.rules.credentials import ResolvedCredential, credential_details

GW = "11111111-1111-1111-1111-111111111111"
DS = "22222222-2222-2222-2222-222222222222"
OTHER = "33333333-3333-3333-3333-333333333333"


def _binding(**fields: object) -> Any:
    raw = {
        "name": "b",
        "secret": "s",
        "credentialType": "Basic",
        "username": "svc",
        "targets": [{"gatewayId": GW, "datasourceId": DS}],
        **fields,
    }
    return parse_bindings({"bindings": [raw]}).bindings[0]


def _connection(
    privacy: str | None = "Private", encryption: str | None = "NotEncrypted", **kw: Any
) -> Connection:
    fields: dict[str, Any] = {
        "id": DS,
        "connectivity_type": "OnPremisesGateway",
        "gateway_id": GW,
        "connection_type": "SQL",
        "path": "sql01;sales",
        "privacy_level": privacy,
        "connection_encryption": encryption,
        **kw,
    }
    return Connection(**fields)


def test_the_connection_s_settings_are_sent_for_what_the_binding_leaves_out() -> None:
    settings = source_settings(_binding(), _connection(), "")
    assert (settings.privacy_level, settings.encrypted_connection) == (
        PrivacyLevel.PRIVATE,
        EncryptedConnection.NOT_ENCRYPTED,
    )
    assert settings.warnings == ()


def test_the_binding_s_own_values_win() -> None:
    settings = source_settings(_binding(privacyLevel="Public"), _connection(), "")
    assert settings.privacy_level is None  # None: the binding's value is sent
    assert settings.encrypted_connection is EncryptedConnection.NOT_ENCRYPTED


def test_unread_settings_are_the_defaults_with_a_warning_that_says_why_and_how_to_keep_them() -> None:
    settings = source_settings(_binding(), None, "HTTP 403 InsufficientPermissionsToManageConnection")
    assert (settings.privacy_level, settings.encrypted_connection) == (None, None)
    (warning,) = settings.warnings
    assert warning.startswith("privacyLevel (Organizational) and encryptedConnection (Encrypted) set to")
    assert "HTTP 403" in warning and "in the binding" in warning
    (warning,) = source_settings(_binding(privacyLevel="Private"), None, "no Fabric").warnings
    assert warning.startswith("encryptedConnection (Encrypted) set to the default because")


def test_any_is_sent_as_encrypted_and_a_value_power_bi_does_not_take_is_not_sent() -> None:
    settings = source_settings(_binding(), _connection(privacy="Secret", encryption="Any"), "")
    assert settings.privacy_level is None and settings.encrypted_connection is EncryptedConnection.ENCRYPTED
    first, second = settings.warnings
    assert first.startswith("privacyLevel (Organizational) set to the default") and "does not take" in first
    assert "Any" in second


def test_credential_details_carry_the_settings_given_over_the_binding_s() -> None:
    binding = _binding()
    resolved = ResolvedCredential(binding.credential_type, "svc", "pw")
    details = credential_details(
        binding,
        resolved,
        encrypt=None,
        privacy_level=PrivacyLevel.PRIVATE,
        encrypted_connection=EncryptedConnection.NOT_ENCRYPTED,
    )
    assert (details["privacyLevel"], details["encryptedConnection"]) == ("Private", "NotEncrypted")
    plain = credential_details(binding, resolved, encrypt=None)
    assert (plain["privacyLevel"], plain["encryptedConnection"]) == ("Organizational", "Encrypted")


def test_a_data_source_is_the_connection_with_its_id_else_the_only_one_that_corresponds() -> None:
    details = {"server": "sql01", "database": "sales"}
    same = _connection()
    other = _connection(id=OTHER)
    assert corresponding_connection(DS, "Sql", GW, details, [other, same]) == DS
    assert corresponding_connection(DS, "Sql", GW, details, [other]) == OTHER
    twin = _connection(id="44444444-4444-4444-4444-444444444444")
    assert corresponding_connection(DS, "Sql", GW, details, [other, twin]) is None  # two: no guess
    elsewhere = _connection(id=OTHER, gateway_id="55555555-5555-5555-5555-555555555555")
    assert corresponding_connection(DS, "Sql", GW, details, [elsewhere]) is None  # another gateway
    assert corresponding_connection(DS, "Sql", GW, details, [], ids={DS}) == DS
