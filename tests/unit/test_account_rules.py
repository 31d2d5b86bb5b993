"""The account rules' inputs, at their edges: which account a credential signs in as (one failed
sign-in per *account* and version), where an acceptance licenses followers, and which data source a
failed refresh is blamed on (a rejection is recorded only against the source a failure proves wrong;
an ambiguous failure blames none). Each case is one a healer would get wrong by a small slip."""

from __future__ import annotations

import json

import pytest

from remediation.config.bindings import Binding, CredentialType
from remediation.rules.accounts import (
    FailedSource,
    account_key,
    failed_source,
    presentation_locator,
    source_locator,
    source_matches,
    text_map,
)


def binding(
    ctype: CredentialType,
    username: str | None = None,
    *,
    secret: str = "Sql-Pw",
    client_id: str | None = None,
) -> Binding:
    return Binding(name="b", secret=secret, credential_type=ctype, username=username, client_id=client_id)


# -- account_key ----------------------------------------------------------------------------------


def test_a_service_principal_is_the_account_of_its_application() -> None:
    """Entra ID counts a service principal's failed sign-ins per application: every binding of
    one client id is one account, whatever its secret is called."""
    one = binding(CredentialType.SERVICE_PRINCIPAL, secret="Sp-A", client_id="0F1E-AbCd")
    other = binding(CredentialType.SERVICE_PRINCIPAL, secret="Sp-B", client_id="0f1e-abcd")
    assert account_key(one, None) == account_key(other, None) == "app:0f1e-abcd"


def test_a_service_principal_without_a_client_id_is_the_account_of_its_secret() -> None:
    assert account_key(binding(CredentialType.SERVICE_PRINCIPAL, secret="Sp-A"), None) == "secret:sp-a"


def test_a_client_id_makes_no_application_account_of_a_password() -> None:
    basic = binding(CredentialType.BASIC, "svc_pbi", client_id="0f1e")
    assert account_key(basic, None) == "user:svc_pbi"


@pytest.mark.parametrize("ctype", [CredentialType.BASIC, CredentialType.WINDOWS, CredentialType.OAUTH2])
def test_the_bindings_user_is_the_account_when_the_secret_names_none(ctype: CredentialType) -> None:
    assert account_key(binding(ctype, "CONTOSO\\Svc_Pbi"), None) == "user:svc_pbi"
    assert account_key(binding(ctype, "svc_pbi"), "") == "user:svc_pbi"


@pytest.mark.parametrize("ctype", [CredentialType.BASIC, CredentialType.WINDOWS])
def test_a_password_without_any_user_is_the_account_of_its_secret(ctype: CredentialType) -> None:
    assert account_key(binding(ctype, None, secret=" Sql-Pw "), None) == "secret:sql-pw"
    assert account_key(binding(ctype, "  ", secret="Sql-Pw"), None) == "secret:sql-pw"


def test_a_key_is_the_account_of_its_secret_even_with_a_user_named() -> None:
    assert account_key(binding(CredentialType.KEY, "svc", secret="Api-Key"), "svc") == "secret:api-key"


@pytest.mark.parametrize(
    "user",
    ["DOM\\SUB\\svc_pbi", "svc_pbi@contoso@example.com", "CONTOSO\\svc_pbi@contoso.com"],
)
def test_the_user_is_the_part_after_the_last_backslash_and_before_the_first_at(user: str) -> None:
    assert account_key(binding(CredentialType.BASIC, "x"), user) == "user:svc_pbi"


# -- source_locator and presentation_locator --------------------------------------------------------


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ({"Server": " SQL01.contoso.com "}, "sql01.contoso.com"),
        ({"host": "PG01"}, "pg01"),
        ({"account": "StorageAcct"}, "storageacct"),
        ({"domain": "Contoso.Sharepoint.com"}, "contoso.sharepoint.com"),
        ({"sharePointSiteUrl": "https://Contoso.sharepoint.com/sites/x"}, "contoso.sharepoint.com"),
        ({"path": "\\\\FS01\\share\\a.csv"}, "fs01"),
        ({"path": "SQL02;Sales"}, "sql02"),
        ({"path": "SQL03;Sales;ReadOnly"}, "sql03"),
        ({"server": "", "url": "https://API.example.com/v1"}, "api.example.com"),
        ({"server": 7, "host": "pg02"}, "pg02"),
        ({"url": ""}, ""),
        ({"database": "Sales"}, ""),
    ],
)
def test_the_locator_is_the_first_server_like_detail(details: dict[str, object], expected: str) -> None:
    assert source_locator("Sql", details) == expected


def test_the_server_wins_over_a_url() -> None:
    assert source_locator("Web", {"url": "https://a.example.com", "server": "b"}) == "b"


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        ("CONTOSO\\svc", "domain:contoso"),
        ("CONTOSO\\ops\\svc", "domain:contoso"),  # the domain is before the first backslash
        ("svc@Contoso.com", "domain:contoso.com"),
        ("svc@contoso.com@corp", "domain:contoso.com@corp"),  # and after the first @
        ("svc", "sql01"),
    ],
)
def test_a_windows_account_with_its_domain_is_accepted_domain_wide(username: str, expected: str) -> None:
    windows = binding(CredentialType.WINDOWS, username)
    assert presentation_locator(windows, "SQL01 ", ("GW", "DS")) == expected


def test_a_sql_login_is_accepted_per_server_and_an_unknown_server_is_its_own_locator() -> None:
    basic = binding(CredentialType.BASIC, "CONTOSO\\svc")
    assert presentation_locator(basic, " SQL01", ("GW", "DS")) == "sql01"
    assert presentation_locator(basic, "", ("GW", "DS")) == "unknown:gw/ds"
    assert presentation_locator(binding(CredentialType.WINDOWS, None), "", ("GW", "DS")) == "unknown:gw/ds"


# -- failed_source ----------------------------------------------------------------------------------

KIND = "Microsoft.Data.Mashup.CredentialError.DataSourceKind"
PATH = "Microsoft.Data.Mashup.CredentialError.DataSourcePath"


def detail(code: str, value: object) -> dict[str, object]:
    return {"code": code, "detail": {"type": 1, "value": value}}


def test_a_flat_failure_names_its_source_and_the_first_of_each_detail_counts() -> None:
    text = json.dumps(
        {
            "errorCode": "x",
            "details": [
                detail(KIND, " <ccon>SQL</ccon> "),
                detail(PATH, "<CCON>sql01;Sales</CCON>"),
                detail(PATH, "sql99;Other"),
            ],
        }
    )
    assert failed_source(text) == FailedSource(kind="SQL", path="sql01;Sales")


def test_a_failure_naming_only_a_kind_or_only_a_path_still_names_a_source() -> None:
    assert failed_source(json.dumps([detail(KIND, "Web")])) == FailedSource(kind="Web", path="")
    assert failed_source(json.dumps([detail(PATH, "sql01")])) == FailedSource(kind="", path="sql01")


def test_details_that_are_not_text_or_are_empty_name_nothing() -> None:
    assert failed_source(json.dumps([detail(KIND, 3), {"code": PATH, "detail": "sql01"}])) is None
    assert failed_source(json.dumps([detail(KIND, "<ccon></ccon>"), detail(PATH, " ")])) is None


def _nested(depth: int, node: object) -> object:
    for _ in range(depth):
        node = {"inner": node}
    return node


def test_details_are_searched_eight_levels_deep_and_no_deeper() -> None:
    """The walk is bounded (an answer is untrusted input): a detail at depth 8 is read, one at
    depth 9 is not."""
    assert failed_source(json.dumps(_nested(8, detail(PATH, "sql01")))) == FailedSource("", "sql01")
    assert failed_source(json.dumps(_nested(9, detail(PATH, "sql01")))) is None


def test_details_in_nested_lists_are_searched_eight_levels_deep_too() -> None:
    in_lists: object = detail(PATH, "sql01")
    for _ in range(8):
        in_lists = [in_lists]
    assert failed_source(json.dumps(in_lists)) == FailedSource("", "sql01")
    assert failed_source(json.dumps([in_lists])) is None


def test_a_failure_nested_too_deep_for_the_parser_names_nothing() -> None:
    assert failed_source("[" * 100_000 + "]" * 100_000) is None


# -- source_matches ---------------------------------------------------------------------------------

SALES = {"server": "sql01.contoso.com", "database": "Sales"}


def test_a_source_of_another_kind_is_not_the_one_named_even_at_the_same_path() -> None:
    named = FailedSource(kind="SQL", path="sql01.contoso.com;Sales")
    assert source_matches(named, "Sql", SALES)
    assert not source_matches(named, "Oracle", SALES)


def test_a_kind_only_one_side_knows_does_not_rule_a_source_out() -> None:
    assert source_matches(FailedSource(kind="", path="sql01.contoso.com;Sales"), "Oracle", SALES)
    assert source_matches(FailedSource(kind="SQL", path="sql01.contoso.com;Sales"), None, SALES)


def test_a_failure_naming_only_a_kind_matches_every_source_of_that_kind() -> None:
    assert source_matches(FailedSource(kind="SQL", path=""), "sql", SALES)
    assert not source_matches(FailedSource(kind="SQL", path=""), "Web", SALES)


def test_a_source_without_details_is_not_the_one_a_path_names() -> None:
    named = FailedSource(kind="SQL", path="sql01")
    assert not source_matches(named, "Sql", {})
    assert not source_matches(named, "Sql", None)
    assert not source_matches(named, "Sql", {"server": "", "port": 1433})


def test_a_server_and_database_path_needs_both_among_the_details() -> None:
    assert source_matches(FailedSource("", "SQL01.contoso.com ; sales"), "Sql", SALES)
    assert not source_matches(FailedSource("", "sql01.contoso.com;Other"), "Sql", SALES)


def test_a_single_path_matches_a_detail_it_contains_or_is_part_of() -> None:
    assert source_matches(FailedSource("", "sql01.contoso.com"), "Sql", SALES)
    assert source_matches(FailedSource("", "sql01"), "Sql", SALES)  # the path is part of a detail
    web = {"url": "https://api.contoso.com"}
    assert source_matches(FailedSource("", "https://api.contoso.com/v1/items"), "Web", web)  # and the reverse
    assert not source_matches(FailedSource("", "sql02"), "Sql", SALES)


def test_a_detail_shorter_than_four_characters_does_not_match_by_being_part_of_a_path() -> None:
    """A database called "abc" is part of many paths; it proves nothing."""
    named = FailedSource("", "abcdef.contoso.com")
    assert not source_matches(named, "Sql", {"server": "sql02", "database": "abc"})
    assert source_matches(named, "Sql", {"server": "sql02", "database": "abcd"})


def test_only_text_details_are_compared_with_the_path() -> None:
    """A port number is no detail to match: "sql01,1433" does not name every source on port 1433."""
    assert not source_matches(FailedSource("", "sql01,1433"), "Sql", {"server": "other", "port": 1433})


def test_a_path_with_nothing_in_it_is_no_path_and_the_kind_decides() -> None:
    assert source_matches(FailedSource("SQL", " ; "), "Sql", SALES)


def test_text_map_keeps_only_text_values() -> None:
    assert text_map({"server": "s", "port": 1433, 5: "x"}) == {"server": "s", "5": "x"}
    assert text_map(["server"]) == {}
    assert text_map(None) == {}
