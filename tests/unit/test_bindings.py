"""Bindings file: DESIGN.md's contract parses; every broken rule names binding, field and what is allowed."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from remediation.config.bindings import (
    Binding,
    BindingSet,
    CredentialType,
    EncryptedConnection,
    OAuth2Mode,
    PrivacyLevel,
    Target,
    TargetMatch,
)
from remediation.config.bindings_file import load_bindings, parse_bindings
from remediation.errors import BindingsError, ConfigError

GW = "1f69e798-5852-4fdd-ab01-33bb14b6e934"
DS = "252b9de8-d915-4788-aaeb-ec8c2395f970"
GW2 = "7f3c2a10-1b2c-4d5e-8f90-a1b2c3d4e5f6"
DS2 = "0b9d8c7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e"
WS = "f089354e-8366-4e18-aea3-4cb4a3a50b48"

# DESIGN.md's contract example, with real GUIDs.
CONTRACT: dict[str, Any] = {
    "bindings": [
        {
            "name": "sales-sql",
            "secret": "sql-sales-password",
            "credentialType": "Basic",
            "username": "svc_pbi",
            "privacyLevel": "Organizational",
            "encryptedConnection": "Encrypted",
            "targets": [{"gatewayId": GW, "datasourceId": DS}],
        },
        {
            "name": "dataflow",
            "secret": "pbi-service-account",
            "credentialType": "OAuth2",
            "oauth2": "caller-identity",
            "username": "svc@contoso.com",
            "targets": [{"gatewayId": GW2, "datasourceId": DS2}],
        },
    ],
    "watch": {"workspaces": [WS]},
}


def doc_with(**changes: Any) -> dict[str, Any]:
    """The contract with the first binding changed (``None`` deletes a key)."""
    doc = copy.deepcopy(CONTRACT)
    for key, value in changes.items():
        if value is None:
            doc["bindings"][0].pop(key, None)
        else:
            doc["bindings"][0][key] = value
    return doc


def bindings_error(doc: object) -> BindingsError:
    with pytest.raises(BindingsError) as info:
        parse_bindings(doc)
    return info.value


# -- the contract parses --------------------------------------------------------------------------
def test_design_contract_example_parses() -> None:
    bs = parse_bindings(CONTRACT)
    assert len(bs) == 2
    sales, dataflow = bs.bindings
    assert sales == Binding(
        name="sales-sql",
        secret="sql-sales-password",
        credential_type=CredentialType.BASIC,
        username="svc_pbi",
        privacy_level=PrivacyLevel.ORGANIZATIONAL,
        encrypted_connection=EncryptedConnection.ENCRYPTED,
        targets=(Target(GW, DS),),
    )
    assert dataflow.credential_type is CredentialType.OAUTH2
    assert dataflow.oauth2_mode is OAuth2Mode.CALLER_IDENTITY
    assert dataflow.uses_caller_identity
    assert dataflow.username == "svc@contoso.com"
    assert not dataflow.take_over
    assert bs.watch_workspaces == (WS,)


def test_privacy_and_encryption_default_to_organizational_and_encrypted() -> None:
    b = parse_bindings(doc_with(privacyLevel=None, encryptedConnection=None)).bindings[0]
    assert b.privacy_level is PrivacyLevel.ORGANIZATIONAL
    assert b.encrypted_connection is EncryptedConnection.ENCRYPTED


def test_every_privacy_level_and_connection_encryption_is_accepted() -> None:
    for level in ("None", "Public", "Organizational", "Private"):
        assert parse_bindings(doc_with(privacyLevel=level)).bindings[0].privacy_level == level
    for enc in ("Encrypted", "NotEncrypted"):
        assert parse_bindings(doc_with(encryptedConnection=enc)).bindings[0].encrypted_connection == enc


def test_guids_are_normalised_to_lower_case() -> None:
    doc = doc_with(targets=[{"gatewayId": GW.upper(), "datasourceId": f" {DS.upper()} "}])
    doc["watch"]["workspaces"] = [WS.upper()]
    bs = parse_bindings(doc)
    assert bs.bindings[0].targets == (Target(GW, DS),)
    assert bs.watch_workspaces == (WS,)


def test_watch_is_optional() -> None:
    doc = copy.deepcopy(CONTRACT)
    del doc["watch"]
    assert parse_bindings(doc).watch_workspaces == ()


def test_empty_bindings_list_is_valid() -> None:
    bs = parse_bindings({"bindings": []})
    assert len(bs) == 0
    assert bs.secrets() == []


@pytest.mark.parametrize("ctype", ["Basic", "Windows", "Key", "SAS"])
def test_each_secret_credential_type_parses(ctype: str) -> None:
    doc = doc_with(credentialType=ctype)
    if ctype in ("Key", "SAS"):
        del doc["bindings"][0]["username"]
    assert parse_bindings(doc).bindings[0].credential_type == ctype


def test_username_is_optional_for_basic_and_windows() -> None:
    for ctype in ("Basic", "Windows"):
        assert parse_bindings(doc_with(credentialType=ctype, username=None)).bindings[0].username is None


def test_windows_usernames_of_either_form_are_accepted() -> None:
    for user in ("CONTOSO\\svc_pbi", "svc_pbi@contoso.com"):
        assert parse_bindings(doc_with(credentialType="Windows", username=user)).bindings[0].username == user


def test_take_over_flag() -> None:
    assert parse_bindings(doc_with(takeOver=True)).bindings[0].take_over is True
    assert parse_bindings(doc_with(takeOver=False)).bindings[0].take_over is False


def test_match_targets_parse_and_replace_id_targets() -> None:
    doc = doc_with(
        targets=[{"match": {"datasourceType": "Sql", "server": "sql01.contoso.com", "database": "Sales"}}]
    )
    b = parse_bindings(doc).bindings[0]
    assert b.targets == ()
    assert b.matches == (TargetMatch(datasource_type="Sql", server="sql01.contoso.com", database="Sales"),)


def test_id_and_match_targets_can_be_mixed() -> None:
    doc = doc_with(
        targets=[{"gatewayId": GW, "datasourceId": DS}, {"match": {"url": "https://contoso.sharepoint.com"}}]
    )
    b = parse_bindings(doc).bindings[0]
    assert b.targets == (Target(GW, DS),)
    assert b.matches == (TargetMatch(url="https://contoso.sharepoint.com"),)


# -- TargetMatch ----------------------------------------------------------------------------------
def test_target_match_needs_every_given_key_case_insensitively() -> None:
    m = TargetMatch(datasource_type="Sql", server="SQL01.contoso.com", database="Sales")
    assert m.matches("SQL", {"server": "sql01.CONTOSO.com", "database": "sales"})
    assert m.matches("Sql", {"Server": "sql01.contoso.com", "Database": "Sales", "extra": "x"})
    assert not m.matches("Oracle", {"server": "sql01.contoso.com", "database": "Sales"})
    assert not m.matches("Sql", {"server": "sql02.contoso.com", "database": "Sales"})
    assert not m.matches("Sql", {"server": "sql01.contoso.com"})


def test_target_match_without_type_matches_any_type() -> None:
    m = TargetMatch(path="\\\\files\\share\\sales.xlsx")
    assert m.matches("File", {"path": "\\\\FILES\\share\\Sales.xlsx"})
    assert m.matches("Folder", {"path": "\\\\files\\share\\sales.xlsx"})
    assert not m.matches("File", {"url": "\\\\files\\share\\sales.xlsx"})


# -- BindingSet lookups ---------------------------------------------------------------------------
def test_for_target_finds_by_ids_in_any_case() -> None:
    bs = parse_bindings(CONTRACT)
    found = bs.for_target(GW.upper(), DS.upper())
    assert found is not None and found.name == "sales-sql"
    assert bs.for_target(GW, DS2) is None


def test_for_secret_is_case_insensitive_and_secrets_are_distinct() -> None:
    doc = copy.deepcopy(CONTRACT)
    doc["bindings"].append(
        {
            "name": "sales-sql-2",
            "secret": "SQL-Sales-Password",
            "credentialType": "Basic",
            "targets": [{"gatewayId": GW, "datasourceId": DS2}],
        }
    )
    bs = parse_bindings(doc)
    assert [b.name for b in bs.for_secret("sql-sales-PASSWORD")] == ["sales-sql", "sales-sql-2"]
    assert bs.for_secret("nope") == []
    assert bs.secrets() == ["sql-sales-password", "pbi-service-account"]


def test_by_name() -> None:
    bs = parse_bindings(CONTRACT)
    found = bs.by_name("dataflow")
    assert found is not None and found.secret == "pbi-service-account"
    assert bs.by_name("DATAFLOW") is found
    assert bs.by_name("missing") is None


def test_for_datasource_prefers_ids_then_a_single_match() -> None:
    doc = copy.deepcopy(CONTRACT)
    doc["bindings"].append(
        {
            "name": "by-server",
            "secret": "sql-other",
            "credentialType": "Basic",
            "username": "u",
            "targets": [{"match": {"datasourceType": "Sql", "server": "sql01"}}],
        }
    )
    bs = parse_bindings(doc)
    details = {"server": "SQL01", "database": "x"}
    by_id = bs.for_datasource(GW, DS, datasource_type="Sql", connection_details=details)
    assert by_id is not None and by_id.name == "sales-sql"
    by_match = bs.for_datasource(
        GW, "aaaaaaaa-0000-0000-0000-000000000000", datasource_type="Sql", connection_details=details
    )
    assert by_match is not None and by_match.name == "by-server"
    assert bs.for_datasource(GW, DS2, datasource_type="Sql", connection_details={"server": "other"}) is None


def test_for_datasource_refuses_to_guess_between_two_matches() -> None:
    doc: dict[str, Any] = {"bindings": []}
    for name in ("a", "b"):
        doc["bindings"].append(
            {"name": name, "secret": name, "credentialType": "Key", "targets": [{"match": {"server": "s"}}]}
        )
    bs = parse_bindings(doc)
    with pytest.raises(BindingsError) as info:
        bs.for_datasource(GW, DS, datasource_type="Sql", connection_details={"server": "s"})
    assert "'a'" in str(info.value) and "'b'" in str(info.value)


def test_binding_set_is_iterable_and_immutable() -> None:
    bs = parse_bindings(CONTRACT)
    assert [b.name for b in bs] == ["sales-sql", "dataflow"]
    assert isinstance(bs, BindingSet)
    with pytest.raises(AttributeError):
        bs.bindings = ()  # type: ignore[misc]


# -- loading --------------------------------------------------------------------------------------
def test_inline_json_and_a_file_path_give_the_same_result(tmp_path: Path) -> None:
    path = tmp_path / "bindings.json"
    path.write_text(json.dumps(CONTRACT), encoding="utf-8")
    from_file = load_bindings(str(path))
    inline = load_bindings("  \n" + json.dumps(CONTRACT))
    assert from_file == inline == parse_bindings(CONTRACT)


def test_a_file_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "bindings.json"
    path.write_text(json.dumps(CONTRACT), encoding="utf-8-sig")
    assert len(load_bindings(str(path))) == 2


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(BindingsError, match="does not exist") as info:
        load_bindings(str(missing))
    assert str(missing) in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_directory_is_not_a_bindings_file(tmp_path: Path) -> None:
    with pytest.raises(BindingsError, match="directory"):
        load_bindings(str(tmp_path))


def test_non_utf8_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_bytes(b'{"bindings": [], "x": "\xff\xfe"}')
    with pytest.raises(BindingsError, match="UTF-8"):
        load_bindings(str(path))


def test_invalid_json_says_where(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text('{"bindings": [\n  {"name": "x",}\n]}', encoding="utf-8")
    with pytest.raises(BindingsError, match=r"not valid JSON.*line 2") as info:
        load_bindings(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(BindingsError, match="inline REMEDIATION_BINDINGS is not valid JSON"):
        load_bindings('{"bindings": [')


def test_empty_source_is_reported() -> None:
    with pytest.raises(BindingsError, match="REMEDIATION_BINDINGS is empty"):
        load_bindings("   ")


def test_duplicate_json_keys_are_rejected() -> None:
    with pytest.raises(BindingsError, match="'secret' appears twice"):
        load_bindings('{"bindings": [{"name": "a", "secret": "x", "secret": "y"}]}')


# -- every rule, with binding, field and what is allowed ------------------------------------------
def assert_names(err: BindingsError, binding: str | None, field: str | None, *allowed: str) -> None:
    message = str(err)
    assert err.binding == binding
    assert err.field == field
    if binding is not None:
        assert repr(binding) in message
    if field is not None:
        assert repr(field) in message
    for word in allowed:
        assert word in message, f"{word!r} not in {message!r}"
    assert "\n" not in message


def test_document_must_be_an_object() -> None:
    assert_names(bindings_error([]), None, None, '"bindings"')


def test_bindings_key_is_required() -> None:
    assert_names(bindings_error({"watch": {}}), None, "bindings", "missing")


def test_bindings_must_be_a_list() -> None:
    assert_names(bindings_error({"bindings": {}}), None, "bindings", "list")


def test_binding_must_be_an_object() -> None:
    assert_names(bindings_error({"bindings": ["x"]}), "bindings[0]", None, "object")


@pytest.mark.parametrize("name", [None, "", "   ", 7])
def test_name_is_required_and_non_empty(name: object) -> None:
    assert_names(bindings_error(doc_with(name=name)), "bindings[0]", "name", "non-empty name")


def test_names_are_unique() -> None:
    doc = copy.deepcopy(CONTRACT)
    doc["bindings"][1]["name"] = "Sales-SQL"
    assert_names(bindings_error(doc), "Sales-SQL", "name", "unique", "'sales-sql'")


@pytest.mark.parametrize("secret", [None, "", "has space", "under_score", "x" * 128, 42])
def test_secret_must_be_a_key_vault_secret_name(secret: object) -> None:
    err = bindings_error(doc_with(secret=secret))
    assert_names(err, "sales-sql", "secret", "1-127", "letters, digits and '-'")


def test_a_password_pasted_as_secret_name_is_not_echoed() -> None:
    password = "Pa$$w0rd!#2024"
    err = bindings_error(doc_with(secret=password))
    assert password not in str(err)


def test_secret_name_of_127_characters_is_accepted() -> None:
    assert parse_bindings(doc_with(secret="a-" * 63 + "b")).bindings[0].secret == "a-" * 63 + "b"


@pytest.mark.parametrize(
    ("ctype", "hint"),
    [
        ("basic", "did you mean 'Basic'"),
        ("OAUTH2", "did you mean 'OAuth2'"),
        ("sas", "did you mean 'SAS'"),
        ("Password", "allowed"),
        (None, "required"),
        (3, "string"),
    ],
)
def test_credential_type_must_be_spelled_as_the_api_does(ctype: object, hint: str) -> None:
    err = bindings_error(doc_with(credentialType=ctype))
    assert_names(err, "sales-sql", "credentialType", hint, "Basic, Windows, Key, SAS, OAuth2")


def test_anonymous_bindings_are_rejected_because_nothing_rotates() -> None:
    err = bindings_error(doc_with(credentialType="Anonymous", username=None))
    assert_names(err, "sales-sql", "credentialType", "Anonymous", "no secret to rotate", "Basic, Windows")


@pytest.mark.parametrize("ctype", ["Key", "SAS"])
def test_key_and_sas_take_no_username(ctype: str) -> None:
    err = bindings_error(doc_with(credentialType=ctype))
    assert_names(err, "sales-sql", "username", "takes no username", "Basic, Windows and OAuth2")


@pytest.mark.parametrize("username", ["", "  ", 5])
def test_username_when_given_is_a_non_empty_string(username: object) -> None:
    assert_names(bindings_error(doc_with(username=username)), "sales-sql", "username", "non-empty string")


def oauth2_doc(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(CONTRACT)
    for key, value in changes.items():
        if value is None:
            doc["bindings"][1].pop(key, None)
        else:
            doc["bindings"][1][key] = value
    return doc


def test_oauth2_requires_caller_identity_mode() -> None:
    assert_names(bindings_error(oauth2_doc(oauth2=None)), "dataflow", "oauth2", "caller-identity", "required")
    assert_names(
        bindings_error(oauth2_doc(oauth2="token")),
        "dataflow",
        "oauth2",
        "'token' is not allowed",
        "caller-identity",
    )


def test_oauth2_requires_a_upn_username() -> None:
    assert_names(bindings_error(oauth2_doc(username=None)), "dataflow", "username", "UPN")
    assert_names(bindings_error(oauth2_doc(username="svc")), "dataflow", "username", "UPN", "svc@contoso.com")
    assert_names(bindings_error(oauth2_doc(username="@contoso.com")), "dataflow", "username", "UPN")


def test_oauth2_key_is_only_for_oauth2_bindings() -> None:
    assert_names(bindings_error(doc_with(oauth2="caller-identity")), "sales-sql", "oauth2", "only OAuth2")


@pytest.mark.parametrize("level", ["organizational", "Secret", 1])
def test_privacy_level_is_one_of_the_api_values(level: object) -> None:
    err = bindings_error(doc_with(privacyLevel=level))
    assert_names(err, "sales-sql", "privacyLevel", "None, Public, Organizational, Private")


def test_privacy_level_case_mismatch_suggests_the_spelling() -> None:
    assert "did you mean 'Organizational'" in str(bindings_error(doc_with(privacyLevel="organizational")))


@pytest.mark.parametrize("enc", ["encrypted", "Yes", True])
def test_encrypted_connection_is_encrypted_or_not_encrypted(enc: object) -> None:
    err = bindings_error(doc_with(encryptedConnection=enc))
    assert_names(err, "sales-sql", "encryptedConnection", "Encrypted, NotEncrypted")


@pytest.mark.parametrize("value", ["true", 1, 0])
def test_take_over_must_be_a_boolean(value: object) -> None:
    assert_names(bindings_error(doc_with(takeOver=value)), "sales-sql", "takeOver", "true or false")


def test_unknown_binding_key_is_rejected_with_a_suggestion() -> None:
    err = bindings_error(doc_with(usename="svc"))
    assert_names(err, "sales-sql", "usename", "unknown key", "did you mean 'username'", "credentialType")


def test_unknown_key_in_another_case_suggests_the_spelling() -> None:
    err = bindings_error(doc_with(CredentialType="Basic"))
    assert_names(err, "sales-sql", "CredentialType", "did you mean 'credentialType'")


def test_unknown_top_level_key_is_rejected() -> None:
    doc = copy.deepcopy(CONTRACT)
    doc["whatch"] = {}
    assert_names(
        bindings_error(doc), None, "whatch", "unknown key", "did you mean 'watch'", "bindings, watch"
    )


def test_unknown_watch_key_is_rejected() -> None:
    doc = copy.deepcopy(CONTRACT)
    doc["watch"] = {"workspace": [WS]}
    assert_names(bindings_error(doc), None, "watch.workspace", "did you mean 'workspaces'")


def test_unknown_target_key_is_rejected() -> None:
    err = bindings_error(doc_with(targets=[{"gatewayId": GW, "datasourceId": DS, "gateway": "x"}]))
    assert_names(err, "sales-sql", "targets[0].gateway", "unknown key", "gatewayId, datasourceId")


def test_unknown_match_key_is_rejected() -> None:
    err = bindings_error(doc_with(targets=[{"match": {"server": "s", "databse": "d"}}]))
    assert_names(err, "sales-sql", "targets[0].match.databse", "did you mean 'database'", "datasourceType")


def test_match_target_takes_nothing_but_match() -> None:
    err = bindings_error(doc_with(targets=[{"match": {"server": "s"}, "gatewayId": GW}]))
    assert_names(err, "sales-sql", "targets[0].gatewayId", "unknown key", "allowed here: match")


@pytest.mark.parametrize("targets", [None, [], {}, "x"])
def test_targets_are_a_non_empty_list(targets: object) -> None:
    err = bindings_error(doc_with(targets=targets))
    assert_names(err, "sales-sql", "targets", "non-empty list", "gatewayId", "match")


def test_target_must_be_an_object() -> None:
    assert_names(bindings_error(doc_with(targets=["x"])), "sales-sql", "targets[0]", "gatewayId")


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ({"gatewayId": "not-a-guid", "datasourceId": DS}, "targets[0].gatewayId"),
        ({"gatewayId": GW, "datasourceId": "{" + DS + "}"}, "targets[0].datasourceId"),
        ({"gatewayId": GW}, "targets[0].datasourceId"),
        ({"datasourceId": DS}, "targets[0].gatewayId"),
        ({"gatewayId": GW, "datasourceId": 12}, "targets[0].datasourceId"),
    ],
)
def test_target_ids_are_guids(target: dict[str, Any], field: str) -> None:
    assert_names(bindings_error(doc_with(targets=[target])), "sales-sql", field, "GUID")


def test_match_needs_a_connection_detail() -> None:
    err = bindings_error(doc_with(targets=[{"match": {"datasourceType": "Sql"}}]))
    assert_names(err, "sales-sql", "targets[0].match", "server, database, url, path")


def test_match_values_are_non_empty_strings() -> None:
    err = bindings_error(doc_with(targets=[{"match": {"server": ""}}]))
    assert_names(err, "sales-sql", "targets[0].match.server", "non-empty string")
    err = bindings_error(doc_with(targets=[{"match": "sql01"}]))
    assert_names(err, "sales-sql", "targets[0].match", "object", "server")


def test_one_data_source_bound_by_two_bindings_is_rejected() -> None:
    doc = copy.deepcopy(CONTRACT)
    doc["bindings"][1]["targets"] = [
        {"match": {"server": "s"}},
        {"gatewayId": GW.upper(), "datasourceId": DS},
    ]
    err = bindings_error(doc)
    assert_names(err, "dataflow", "targets[1]", "also bound by 'sales-sql'", "one secret")


def test_one_data_source_listed_twice_in_a_binding_is_rejected() -> None:
    err = bindings_error(doc_with(targets=[{"gatewayId": GW, "datasourceId": DS}] * 2))
    assert_names(err, "sales-sql", "targets[1]", "listed twice")


@pytest.mark.parametrize(
    ("watch", "field", "word"),
    [
        ([WS], "watch", "object"),
        ({"workspaces": WS}, "watch.workspaces", "list"),
        ({"workspaces": ["nope"]}, "watch.workspaces[0]", "GUID"),
        ({"workspaces": [WS, WS.upper()]}, "watch.workspaces[1]", "twice"),
    ],
)
def test_watch_workspaces_are_a_list_of_distinct_guids(watch: object, field: str, word: str) -> None:
    doc = copy.deepcopy(CONTRACT)
    doc["watch"] = watch
    assert_names(bindings_error(doc), None, field, word)


def test_bindings_error_survives_pickling() -> None:
    err = bindings_error(doc_with(credentialType="basic"))
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.binding, clone.field, str(clone)) == (err.binding, err.field, str(err))


# -- match over Fabric connections ------------------------------------------------------------
def test_a_connection_match_parses_and_selects_by_type_connectivity_and_path_parts() -> None:
    match = {
        "kind": "connection",
        "connectionType": "SQL",
        "server": "sql01.contoso.com",
        "database": "Sales",
    }
    b = parse_bindings(doc_with(targets=[{"match": match}])).bindings[0]
    (m,) = b.matches
    assert m.selects_connections and b.matches_connections
    assert m.matches_connection("Sql", "ShareableCloud", "SQL01.contoso.com;sales")
    assert not m.matches_connection("Sql", "ShareableCloud", "sql02.contoso.com;Sales")
    assert not m.matches_connection("Sql", "ShareableCloud", "sql01.contoso.com")  # no database part
    assert not m.matches_connection("Web", "ShareableCloud", "sql01.contoso.com;Sales")
    assert not m.matches("Sql", {"server": "sql01.contoso.com", "database": "Sales"})  # no data source
    by_connectivity = TargetMatch(
        kind="connection", connectivity_type="OnPremisesGateway", url="https://x/api/"
    )
    assert by_connectivity.matches_connection(None, "OnPremisesGateway", "https://X/api")
    assert not by_connectivity.matches_connection(None, "ShareableCloud", "https://x/api")


def test_a_data_source_match_selects_no_connection() -> None:
    m = TargetMatch(server="sql01.contoso.com")
    assert not m.matches_connection("SQL", "ShareableCloud", "sql01.contoso.com;Sales")


@pytest.mark.parametrize(
    ("match", "field", "says"),
    [
        ({"connectionType": "SQL", "server": "s"}, "connectionType", '"kind": "connection"'),
        ({"kind": "Connection", "server": "s"}, "kind", "allowed: datasource, connection"),
        ({"kind": "connection", "datasourceType": "Sql", "server": "s"}, "datasourceType", "allowed here"),
        (
            {"kind": "connection", "conectivityType": "x", "server": "s"},
            "conectivityType",
            "connectivityType",
        ),
        ({"kind": "connection", "connectionType": "SQL"}, "match", "at least one of server"),
        ({"kind": "connection", "server": ""}, "server", "non-empty"),
    ],
)
def test_a_connection_match_is_validated_strictly(match: dict[str, Any], field: str, says: str) -> None:
    error = bindings_error(doc_with(targets=[{"match": match}]))
    assert field in str(error) and says in str(error)


def test_service_principal_bindings_may_match_connections_and_oauth2_may_not() -> None:
    sp = doc_with(
        credentialType="ServicePrincipal",
        tenantId=GW,
        clientId=DS,
        targets=[{"match": {"kind": "connection", "server": "lake"}}],
    )
    sp["bindings"][0].pop("username", None)
    assert parse_bindings(sp).bindings[0].matches_connections
    oauth = doc_with(
        credentialType="OAuth2",
        oauth2="caller-identity",
        username="svc@contoso.com",
        targets=[{"match": {"kind": "connection", "server": "lake"}}],
    )
    assert "OAuth2" in str(bindings_error(oauth))


def test_for_connection_prefers_the_id_then_a_single_match() -> None:
    doc = {
        "bindings": [
            {"name": "by-id", "secret": "a", "credentialType": "Key", "targets": [{"connectionId": GW}]},
            {
                "name": "lake",
                "secret": "b",
                "credentialType": "Key",
                "targets": [{"match": {"kind": "connection", "server": "lake"}}],
            },
            {
                "name": "lake-too",
                "secret": "c",
                "credentialType": "Key",
                "targets": [{"match": {"kind": "connection", "path": "lake;db"}}],
            },
        ]
    }
    bs = parse_bindings(doc)
    assert bs.binds_connections
    found = bs.for_connection(GW, connection_type="SQL", connectivity_type="ShareableCloud", path="lake;db")
    assert found is not None and found.name == "by-id"
    found = bs.for_connection(
        DS, connection_type="SQL", connectivity_type="ShareableCloud", path="lake;other"
    )
    assert found is not None and found.name == "lake"
    with pytest.raises(BindingsError, match="make the matches narrower"):
        bs.for_connection(DS, connection_type="SQL", connectivity_type="ShareableCloud", path="lake;db")
    assert (
        bs.for_connection(DS, connection_type="SQL", connectivity_type="ShareableCloud", path="x;y") is None
    )
