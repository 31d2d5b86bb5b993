"""What ``bindings check`` tells a person about a valid binding: problems and warnings (pure)."""

from __future__ import annotations

import pytest

from remediation.config.bindings_advice import (
    binding_problems,
    binding_warnings,
    is_windows_account_name,
)
from remediation.config.bindings_file import parse_bindings

GW, DS = "1f69e798-5852-4fdd-ab01-33bb14b6e934", "2f69e798-5852-4fdd-ab01-33bb14b6e934"


def _binding(**fields: object):  # type: ignore[no-untyped-def]
    raw = {"name": "b", "secret": "s", "targets": [{"gatewayId": GW, "datasourceId": DS}], **fields}
    return parse_bindings({"bindings": [raw]}).bindings[0]


@pytest.mark.parametrize("name", ["CONTOSO\\svc_pbi", "svc_pbi@contoso.com", "contoso.local\\svc"])
def test_windows_account_names_with_a_domain_are_accepted(name: str) -> None:
    assert is_windows_account_name(name)
    assert binding_problems(_binding(credentialType="Windows", username=name)) == []


@pytest.mark.parametrize("name", ["svc_pbi", "CONTOSO\\", "\\svc", "a\\b\\c", "svc@contoso", "CONTOSO/svc"])
def test_windows_usernames_without_a_domain_are_flagged(name: str) -> None:
    (problem,) = binding_problems(_binding(credentialType="Windows", username=name))
    assert "neither DOMAIN\\user nor a UPN" in problem


def test_a_basic_username_has_no_format_rule() -> None:
    assert binding_problems(_binding(credentialType="Basic", username="svc_pbi")) == []


def test_a_draft_placeholder_is_a_problem() -> None:
    (problem,) = binding_problems(_binding(credentialType="Basic", username="<username>"))
    assert "placeholder" in problem


SET = {"privacyLevel": "Private", "encryptedConnection": "NotEncrypted"}


def test_take_over_warns_that_other_cloud_sources_lose_their_credentials() -> None:
    (warning,) = binding_warnings(_binding(credentialType="Key", takeOver=True, **SET))
    assert "resets the credentials" in warning
    assert binding_warnings(_binding(credentialType="Key", **SET)) == []


def test_unset_privacy_and_encryption_say_which_defaults_replace_the_admins_choice() -> None:
    (warning,) = binding_warnings(_binding(credentialType="Key"))
    assert warning.startswith("privacyLevel (Organizational) and encryptedConnection (Encrypted) not set")
    assert "does not report" in warning
    assert "reads them in the Fabric connection" in warning and "keeps them" in warning
    (warning,) = binding_warnings(_binding(credentialType="Key", privacyLevel="Private"))
    assert warning.startswith("encryptedConnection (Encrypted) not set")


def test_a_binding_of_fabric_connections_only_is_not_warned_about_privacy_and_encryption() -> None:
    """Their PATCH is partial: without the binding's values the connection keeps its own."""
    connection = {"connectionId": DS}
    assert binding_warnings(_binding(credentialType="Windows", targets=[connection])) == []
    (warning,) = binding_warnings(
        _binding(credentialType="Windows", targets=[connection, {"gatewayId": GW, "datasourceId": GW}])
    )
    assert warning.startswith("privacyLevel (Organizational) and encryptedConnection (Encrypted) not set")
