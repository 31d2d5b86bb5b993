"""credentialDetails builders: strict JSON per type, swagger-valid bodies, no secret in any repr."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from remediation.config.bindings import (
    Binding,
    CredentialType,
    EncryptedConnection,
    OAuth2Mode,
    PrivacyLevel,
    Target,
)
from remediation.errors import BindingsError
from remediation.rules.credentials import (
    EMPTY_CREDENTIALS,
    ResolvedCredential,
    SecretValueError,
    credential_details,
    credentials_json,
    resolve_credential,
    update_datasource_request,
)
from sandbox.specs import SPEC_DIR, validate_powerbi_request

GW = "1f69e798-5852-4fdd-ab01-33bb14b6e934"
DS = "252b9de8-d915-4788-aaeb-ec8c2395f970"
PASSWORD = "Tr0ub4dor&3-rotated"

NASTY_PASSWORDS = [
    'he said "hi"',
    "back\\slash\\",
    "ünïcødé-密码-🔑",
    "{not json",
    '{"username": "evil"}',
    '{"username": "a", "password": "b", "extra": 1}',
    '{"username": 1, "password": "b"}',
    "[1, 2]",
    "tab\tnewline\nnull\x00",
    " leading and trailing ",
    "</script>&<>'",
]


def binding(ctype: CredentialType = CredentialType.BASIC, **kw: Any) -> Binding:
    defaults: dict[str, Any] = {
        "name": "sales-sql",
        "secret": "sql-sales-password",
        "credential_type": ctype,
        "username": "svc_pbi" if ctype in (CredentialType.BASIC, CredentialType.WINDOWS) else None,
        "targets": (Target(GW, DS),),
    }
    if ctype is CredentialType.OAUTH2:
        defaults.update(username="svc@contoso.com", oauth2_mode=OAuth2Mode.CALLER_IDENTITY)
    defaults.update(kw)
    return Binding(**defaults)


def fake_encrypt(plaintext: str) -> str:
    """Stand-in for gateway_crypto: marks and encodes, so tests can see what was encrypted."""
    return "ENC:" + base64.b64encode(plaintext.encode("utf-8")).decode("ascii")


def swagger_example_credentials() -> dict[str, str]:
    path = Path(SPEC_DIR) / "powerbi" / "examples" / "Gateways_UpdateDatasource.json"
    examples = json.loads(path.read_text(encoding="utf-8"))["x-ms-examples"]
    found = {}
    for example in examples.values():
        details = example["parameters"]["updateDatasourceRequest"]["credentialDetails"]
        if details["encryptionAlgorithm"] == "None":
            found[details["credentialType"]] = details["credentials"]
    return found


def shape(credentials: str) -> object:
    """The credentials string's structure with the values blanked out."""
    doc = json.loads(credentials)
    data = doc["credentialData"]
    if isinstance(data, str):
        return {"credentialData": data}
    return {"credentialData": [{"name": item["name"], "value": "?"} for item in data]}


# -- resolve_credential ---------------------------------------------------------------------------
@pytest.mark.parametrize("ctype", [CredentialType.BASIC, CredentialType.WINDOWS])
def test_plain_value_is_the_password_with_the_binding_username(ctype: CredentialType) -> None:
    resolved = resolve_credential(binding(ctype), PASSWORD)
    assert (resolved.credential_type, resolved.username, resolved.secret) == (ctype, "svc_pbi", PASSWORD)


def test_json_pair_overrides_the_username() -> None:
    value = json.dumps({"username": "CONTOSO\\svc_new", "password": PASSWORD})
    resolved = resolve_credential(binding(CredentialType.WINDOWS), value)
    assert resolved.username == "CONTOSO\\svc_new"
    assert resolved.secret == PASSWORD


def test_json_pair_supplies_a_missing_username() -> None:
    value = json.dumps({"password": PASSWORD, "username": "svc2"})
    resolved = resolve_credential(binding(username=None), value)
    assert (resolved.username, resolved.secret) == ("svc2", PASSWORD)


@pytest.mark.parametrize("password", NASTY_PASSWORDS)
def test_values_that_are_not_exactly_the_pair_stay_passwords(password: str) -> None:
    resolved = resolve_credential(binding(), password)
    assert resolved.secret == password
    assert resolved.username == "svc_pbi"


def test_absurdly_nested_json_is_a_password() -> None:
    password = "{" + '"a":[' * 100000
    assert resolve_credential(binding(), password).secret == password


def test_missing_username_names_binding_field_and_fix() -> None:
    with pytest.raises(BindingsError) as info:
        resolve_credential(binding(username=None), PASSWORD)
    err = info.value
    assert (err.binding, err.field) == ("sales-sql", "username")
    assert "sql-sales-password" in str(err) and '"username"' in str(err)
    assert PASSWORD not in str(err)


@pytest.mark.parametrize(
    "value",
    ["", json.dumps({"username": "", "password": PASSWORD}), json.dumps({"username": "svc", "password": ""})],
)
def test_empty_secret_parts_are_refused_without_showing_the_value(value: str) -> None:
    with pytest.raises(SecretValueError) as info:
        resolve_credential(binding(), value)
    assert "sales-sql" in str(info.value) and "sql-sales-password" in str(info.value)
    assert PASSWORD not in str(info.value)


def test_key_sas_and_oauth2_take_the_value_as_is() -> None:
    key = resolve_credential(binding(CredentialType.KEY), "ec12LA=")
    assert (key.username, key.secret) == (None, "ec12LA=")
    sas = resolve_credential(binding(CredentialType.SAS), "sp=rl&sig=a%2Fb")
    assert (sas.username, sas.secret) == (None, "sp=rl&sig=a%2Fb")
    pair = json.dumps({"username": "x", "password": "y"})
    oauth = resolve_credential(binding(CredentialType.OAUTH2), pair)
    assert (oauth.username, oauth.secret) == ("svc@contoso.com", pair)  # no override for OAuth2


def test_oauth2_without_caller_identity_is_refused() -> None:
    with pytest.raises(BindingsError, match="caller-identity"):
        resolve_credential(binding(CredentialType.OAUTH2, oauth2_mode=None), PASSWORD)


def test_resolved_credential_repr_and_str_hide_the_secret() -> None:
    resolved = resolve_credential(binding(), PASSWORD)
    for text in (repr(resolved), str(resolved), f"{resolved}", repr([resolved])):
        assert PASSWORD not in text
    assert "svc_pbi" in repr(resolved) and "<redacted>" in repr(resolved)


def test_resolved_credential_requires_a_username_for_user_types() -> None:
    with pytest.raises(ValueError, match="username"):
        ResolvedCredential(CredentialType.BASIC, None, PASSWORD)


# -- credentials_json -----------------------------------------------------------------------------
@pytest.mark.parametrize("password", NASTY_PASSWORDS + [PASSWORD])
def test_basic_json_round_trips_any_password(password: str) -> None:
    text = credentials_json(ResolvedCredential(CredentialType.BASIC, 'd\\"user"', password))
    assert json.loads(text) == {
        "credentialData": [
            {"name": "username", "value": 'd\\"user"'},
            {"name": "password", "value": password},
        ]
    }


def test_credentials_json_is_compact_and_keeps_unicode() -> None:
    text = credentials_json(ResolvedCredential(CredentialType.KEY, None, "ключ"))
    assert text == '{"credentialData":[{"name":"key","value":"ключ"}]}'


@pytest.mark.parametrize(
    ("resolved", "expected"),
    [
        (
            ResolvedCredential(CredentialType.WINDOWS, "CONTOSO\\svc", "p"),
            {
                "credentialData": [
                    {"name": "username", "value": "CONTOSO\\svc"},
                    {"name": "password", "value": "p"},
                ]
            },
        ),
        (
            ResolvedCredential(CredentialType.KEY, None, "k"),
            {"credentialData": [{"name": "key", "value": "k"}]},
        ),
        (
            ResolvedCredential(CredentialType.SAS, None, "t"),
            {"credentialData": [{"name": "token", "value": "t"}]},
        ),
        (ResolvedCredential(CredentialType.ANONYMOUS, None, ""), {"credentialData": ""}),
        (ResolvedCredential(CredentialType.OAUTH2, "svc@contoso.com", "pw"), {"credentialData": ""}),
    ],
)
def test_credentials_json_per_type(resolved: ResolvedCredential, expected: object) -> None:
    assert json.loads(credentials_json(resolved)) == expected


@pytest.mark.parametrize(
    "resolved",
    [
        ResolvedCredential(CredentialType.BASIC, "john", "*****"),
        ResolvedCredential(CredentialType.KEY, None, "ec....LA="),
        ResolvedCredential(CredentialType.SAS, None, "sp=rl&st=2023"),
        ResolvedCredential(CredentialType.ANONYMOUS, None, ""),
    ],
    ids=lambda r: str(r.credential_type),
)
def test_credential_strings_have_the_form_of_the_swagger_examples(resolved: ResolvedCredential) -> None:
    examples = swagger_example_credentials()
    assert shape(credentials_json(resolved)) == shape(examples[resolved.credential_type.value])


def test_basic_credentials_equal_the_swagger_example_semantically() -> None:
    example = swagger_example_credentials()["Basic"]
    ours = credentials_json(ResolvedCredential(CredentialType.BASIC, "john", "*****"))
    assert json.loads(ours) == json.loads(example)


def test_empty_credentials_equal_the_swagger_anonymous_example() -> None:
    assert swagger_example_credentials()["Anonymous"] == EMPTY_CREDENTIALS


def test_oauth2_swagger_example_uses_access_token_which_we_never_send() -> None:
    # The swagger's OAuth2 example puts an access token in the payload (it expires in an hour);
    # caller-identity bindings send the empty form instead.
    assert shape(swagger_example_credentials()["OAuth2"]) == {
        "credentialData": [{"name": "accessToken", "value": "?"}]
    }


# -- credential_details ---------------------------------------------------------------------------
def test_cloud_details_carry_plain_json_and_algorithm_none() -> None:
    b = binding(privacy_level=PrivacyLevel.PRIVATE, encrypted_connection=EncryptedConnection.NOT_ENCRYPTED)
    resolved = resolve_credential(b, PASSWORD)
    details = credential_details(b, resolved, encrypt=None)
    assert details == {
        "credentialType": "Basic",
        "credentials": credentials_json(resolved),
        "encryptionAlgorithm": "None",
        "encryptedConnection": "NotEncrypted",
        "privacyLevel": "Private",
    }


def test_on_premises_details_carry_the_encrypted_json_and_rsa_oaep() -> None:
    b = binding(CredentialType.WINDOWS)
    resolved = resolve_credential(b, PASSWORD)
    seen: list[str] = []

    def encrypt(plaintext: str) -> str:
        seen.append(plaintext)
        return fake_encrypt(plaintext)

    details = credential_details(b, resolved, encrypt=encrypt)
    assert seen == [credentials_json(resolved)]
    assert details["credentials"] == fake_encrypt(credentials_json(resolved))
    assert details["encryptionAlgorithm"] == "RSA-OAEP"
    assert details["privacyLevel"] == "Organizational"
    assert details["encryptedConnection"] == "Encrypted"
    assert PASSWORD not in json.dumps(details)


def test_oauth2_caller_identity_details_send_no_secret() -> None:
    b = binding(CredentialType.OAUTH2)
    resolved = resolve_credential(b, PASSWORD)
    for encrypt in (None, fake_encrypt):
        details = credential_details(b, resolved, encrypt=encrypt)
        # Exactly the payload reported working: no ``credentials`` key at all.
        assert update_datasource_request(details) == {
            "credentialDetails": {
                "credentialType": "OAuth2",
                "encryptedConnection": "Encrypted",
                "encryptionAlgorithm": "None",
                "privacyLevel": "Organizational",
                "useCallerAADIdentity": True,
            }
        }
        assert "credentials" not in details
        assert PASSWORD not in json.dumps(details)


@pytest.mark.parametrize("level", list(PrivacyLevel))
def test_oauth2_caller_identity_details_take_privacy_and_encryption_from_the_binding(
    level: PrivacyLevel,
) -> None:
    for connection in EncryptedConnection:
        b = binding(CredentialType.OAUTH2, privacy_level=level, encrypted_connection=connection)
        details = credential_details(b, resolve_credential(b, PASSWORD), encrypt=None)
        assert details == {
            "credentialType": "OAuth2",
            "encryptedConnection": connection.value,
            "encryptionAlgorithm": "None",
            "privacyLevel": level.value,
            "useCallerAADIdentity": True,
        }


def test_details_refuse_a_credential_of_another_type() -> None:
    with pytest.raises(ValueError, match="mismatch"):
        credential_details(
            binding(CredentialType.KEY), ResolvedCredential(CredentialType.SAS, None, "t"), encrypt=None
        )


def test_update_datasource_request_wraps_the_details() -> None:
    details = credential_details(
        binding(CredentialType.KEY), ResolvedCredential(CredentialType.KEY, None, "k"), encrypt=None
    )
    assert update_datasource_request(details) == {"credentialDetails": details}


CASES = [
    (CredentialType.BASIC, None),
    (CredentialType.BASIC, fake_encrypt),
    (CredentialType.WINDOWS, fake_encrypt),
    (CredentialType.KEY, None),
    (CredentialType.SAS, None),
]


@pytest.mark.parametrize(
    ("ctype", "encrypt"), CASES, ids=[f"{c}-{'enc' if e else 'plain'}" for c, e in CASES]
)
@pytest.mark.parametrize("level", list(PrivacyLevel))
def test_request_bodies_validate_against_the_swagger(
    ctype: CredentialType, encrypt: Any, level: PrivacyLevel
) -> None:
    b = binding(ctype, privacy_level=level)
    details = credential_details(b, resolve_credential(b, 'p"w\\ü{'), encrypt=encrypt)
    body = update_datasource_request(details)
    validate_powerbi_request("Gateways_UpdateDatasource", body)
    json.dumps(body)  # serialisable as is


def test_anonymous_details_validate_against_the_swagger() -> None:
    b = binding(CredentialType.ANONYMOUS)
    details = credential_details(b, ResolvedCredential(CredentialType.ANONYMOUS, None, ""), encrypt=None)
    assert details["credentials"] == EMPTY_CREDENTIALS
    validate_powerbi_request("Gateways_UpdateDatasource", update_datasource_request(details))


def test_no_failure_path_puts_the_secret_in_a_message() -> None:
    marker = "Zq9-UNIQUE-SECRET-VALUE-7Xk"
    messages: list[str] = []
    attempts: list[Callable[[], object]] = [
        lambda: resolve_credential(binding(username=None), marker),
        lambda: resolve_credential(binding(username=None), "{" + marker),
        lambda: resolve_credential(binding(), json.dumps({"username": "", "password": marker})),
        lambda: resolve_credential(binding(), json.dumps({"username": marker, "password": ""})),
        lambda: resolve_credential(binding(CredentialType.OAUTH2, oauth2_mode=None), marker),
        lambda: ResolvedCredential(CredentialType.WINDOWS, "", marker),
        lambda: credential_details(
            binding(CredentialType.KEY), ResolvedCredential(CredentialType.SAS, None, marker), encrypt=None
        ),
    ]
    for attempt in attempts:
        with pytest.raises(Exception) as info:  # noqa: B017 - any error: we read its text
            attempt()
        messages += [str(info.value), repr(info.value), *map(str, info.value.args)]
    assert len(messages) == 3 * len(attempts)
    for message in messages:
        assert marker not in message
    resolved = resolve_credential(binding(), marker)
    assert marker not in repr(resolved) and marker not in str(resolved) and marker not in repr(binding())
