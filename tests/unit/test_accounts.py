"""Who a credential signs in as, where, and which data source a refresh failure names."""

from __future__ import annotations

import json

import pytest

from remediation.config.bindings import Binding, CredentialType, OAuth2Mode
from remediation.rules.accounts import account_key, failed_source, source_locator, source_matches


def binding(ctype: CredentialType, username: str | None = "svc_pbi", secret: str = "Sql-Pw") -> Binding:
    mode = OAuth2Mode.CALLER_IDENTITY if ctype is CredentialType.OAUTH2 else None
    return Binding(name="b", secret=secret, credential_type=ctype, username=username, oauth2_mode=mode)


@pytest.mark.parametrize(
    "user", ["svc_pbi", "SVC_PBI", "CONTOSO\\svc_pbi", "svc_pbi@contoso.com", " svc_pbi "]
)
def test_every_spelling_of_one_user_is_one_account(user: str) -> None:
    """Merging spellings only makes the healer more careful; splitting one account would let a
    wrong password fail twice on it."""
    assert account_key(binding(CredentialType.BASIC), user) == "user:svc_pbi"
    assert account_key(binding(CredentialType.WINDOWS), user) == "user:svc_pbi"


def test_a_secret_username_overrides_the_binding_and_keys_are_their_own_account() -> None:
    assert account_key(binding(CredentialType.BASIC, "svc_a"), "svc_b") == "user:svc_b"
    assert account_key(binding(CredentialType.KEY, None, secret="Api-Key"), None) == "secret:api-key"
    assert account_key(binding(CredentialType.OAUTH2, "svc@contoso.com"), None) == "user:svc"


@pytest.mark.parametrize(
    ("kind", "details", "expected"),
    [
        ("Sql", {"server": "SQL01.contoso.com", "database": "Sales"}, "sql01.contoso.com"),
        ("Web", {"url": "https://api.example.com/v1?apikey=k"}, "api.example.com"),
        ("File", {"path": "\\\\FS01\\share\\a.csv"}, "fs01"),
        ("Sql", {}, ""),
        ("Sql", None, ""),
    ],
)
def test_the_locator_is_the_server_or_host_never_a_query_string(
    kind: str, details: dict[str, str] | None, expected: str
) -> None:
    assert source_locator(kind, details) == expected


def _envelope(kind: str, path: str) -> str:
    return json.dumps(
        {
            "error": {
                "code": "DM_GWPipeline_Gateway_InvalidConnectionCredentials",
                "pbi.error": {
                    "code": "DM_GWPipeline_Gateway_InvalidConnectionCredentials",
                    "details": [
                        {
                            "code": "DM_ErrorDetailNameCode_UnderlyingErrorMessage",
                            "detail": {"type": 1, "value": "x"},
                        },
                        {
                            "code": "Microsoft.Data.Mashup.CredentialError.DataSourceKind",
                            "detail": {"type": 1, "value": kind},
                        },
                        {
                            "code": "Microsoft.Data.Mashup.CredentialError.DataSourcePath",
                            "detail": {"type": 1, "value": f"<ccon>{path}</ccon>"},
                        },
                    ],
                },
            }
        }
    )


def test_a_failure_that_names_its_data_source_is_attributed_to_it_only() -> None:
    named = failed_source(_envelope("SQL", "sql01;Sales"))
    assert named is not None and (named.kind, named.path) == ("SQL", "sql01;Sales")
    assert source_matches(named, "Sql", {"server": "sql01", "database": "Sales"})
    assert not source_matches(named, "Sql", {"server": "sql02", "database": "Sales"})
    assert not source_matches(named, "Web", {"url": "https://sql01"})


@pytest.mark.parametrize(
    "text",
    [None, "", "not json", json.dumps({"errorCode": "ModelRefreshFailed_CredentialsNotSpecified"}), "[[[["],
)
def test_a_failure_that_names_no_data_source_is_attributed_to_none(text: str | None) -> None:
    assert failed_source(text) is None
