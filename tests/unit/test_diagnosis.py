"""Diagnosis: refresh failures and Power BI error codes -> category, code, message, fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from remediation.rules.diagnosis import (
    Category,
    Diagnosis,
    diagnose_api_error,
    diagnose_refresh,
    diagnose_status_error,
)
from remediation.rules.service_errors import ServiceError, parse_service_exception
from sandbox.specs import SPEC_DIR

# Exact strings from specs/powerbi/service_exception_examples.md.
# 1a: swagger, Datasets_GetRefreshHistory "Failed refresh example" (decoded string value).
EX_CREDENTIALS_NOT_SPECIFIED = '{"errorCode":"ModelRefreshFailed_CredentialsNotSpecified"}'
# 1b: swagger, Datasets_GetRefreshExecutionDetails "Failed refresh example" (decoded string value).
EX_PROCESSING_ERROR = (
    '{"errorCode":"ModelRefresh_ShortMessage_ProcessingError","errorDescription":"0xC112001C: '
    "Expression.Error: Forced Error. . The exception was raised by the IDbCommand interface.\\n0xC112001C: "
    "The command has been canceled.. The exception was raised by the IDbCommand interface.\\n0xC11C0006: "
    "The current operation was cancelled because another operation in the transaction failed.\\n0xC112001C: "
    "The command has been canceled.. The exception was raised by the IDbCommand interface.\\n0xC112001C: "
    "The command has been canceled.. The exception was raised by the IDbCommand interface.\\n0xC112001C: "
    'The command has been canceled.. The exception was raised by the IDbCommand interface."}'
)
# 3: Azure docs, the envelope shown as "Data source error: ..." (the JSON part).
EX_ENVELOPE_PROCESSING = (
    '{"error":{"code":"ModelRefresh_ShortMessage_ProcessingError","pbi.error":{"code":'
    '"ModelRefresh_ShortMessage_ProcessingError","parameters":{},"details":[{"code":"Message","detail":'
    '{"type":1,"value":"We cannot convert the value \\"Required Field: \'Enr...\\" to type List."}}],'
    '"exceptionCulprit":1}}}'
)
# 5: user report (PowerBIRESTAPI#178), TRUNCATED in the source: not valid JSON.
EX_TRUNCATED_INVALID_CREDENTIALS = (
    '{"error":{"code":"DM_GWPipeline_Gateway_InvalidConnectionCredentials","pbi.error":{"code":'
    '"DM_GWPipeline_Gateway_InvalidConnectionCredentials","parameters":{},"details":[{"code":'
    '"DM_ErrorDetailNameCode_UnderlyingErrorCode","detail":{"type":1,"value":"-2147467259"}},{"code":'
    '"DM_ErrorDetailNameCode_UnderlyingErrorMessage","detail":{"type":1,"value":"<ccon>The credentials '
    'provided for the PowerBIRESTAPI source are invalid. (Source at PowerBIRESTAPI.)</ccon>"}},{"code":'
    '"DM_ErrorDetailNameCode_UnderlyingHResult","detail":{"type":1,"value":"-2147467259"}},{"code":'
    '"Microsoft.Data.Mashup.CredentialError.DataSourceKind","detail":{"type":1,"value":"PowerBIRESTAPI"}},'
    '{"code":"Microsoft.Data.Mashup.CredentialError.DataSourceOriginKind","detail":{"type":1,"value":'
    '"PowerBIRESTAPI"}},{"code":"Microsoft.Data.Mashup.CredentialError.DataSourceOriginPath","detail":'
    '{"type":1,"value":"PowerBIRESTAPI"}},{"code":"Microsoft.Data.Mashup.CredentialError.DataSourcePath",'
    '"detail":{"type":1,"value":"<ccon>PowerBIRESTAPI</ccon>"}},{"code":"Microsoft.Data\u2026'
)
# The same report cut after its last complete detail and closed: what the service would have sent.
EX_INVALID_CREDENTIALS = (
    EX_TRUNCATED_INVALID_CREDENTIALS.rsplit(',{"code":"Microsoft.Data\u2026', 1)[0] + "]}}}"
)
# 5: DevScope#66, the generic REST error envelope.
EX_ENTITY_NOT_FOUND = (
    '{"error":{"code":"PowerBIEntityNotFound","pbi.error":{"code":"PowerBIEntityNotFound",'
    '"parameters":{},"details":[],"exceptionCulprit":1}}}'
)


def failed(exception: object, **extra: Any) -> dict[str, Any]:
    return {"status": "Failed", "serviceExceptionJson": exception, **extra}


def envelope(code: str, details: list[tuple[str, str]] = ()) -> str:  # type: ignore[assignment]
    return json.dumps(
        {
            "error": {
                "code": code,
                "pbi.error": {
                    "code": code,
                    "parameters": {},
                    "details": [{"code": c, "detail": {"type": 1, "value": v}} for c, v in details],
                    "exceptionCulprit": 1,
                },
            }
        }
    )


def example_bodies(name: str) -> dict[str, Any]:
    path = Path(SPEC_DIR) / "powerbi" / "examples" / f"{name}.json"
    examples: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["x-ms-examples"]
    return examples


# -- parsing both shapes --------------------------------------------------------------------------
def test_parses_the_error_code_shape() -> None:
    assert parse_service_exception(EX_CREDENTIALS_NOT_SPECIFIED) == ServiceError(
        "ModelRefreshFailed_CredentialsNotSpecified"
    )


def test_parses_the_error_code_shape_with_description() -> None:
    error = parse_service_exception(EX_PROCESSING_ERROR)
    assert error is not None
    assert error.code == "ModelRefresh_ShortMessage_ProcessingError"
    assert error.description is not None and error.description.startswith("0xC112001C: Expression.Error")


def test_parses_the_envelope_shape_with_details() -> None:
    error = parse_service_exception(EX_INVALID_CREDENTIALS)
    assert error is not None
    assert error.code == "DM_GWPipeline_Gateway_InvalidConnectionCredentials"
    assert error.detail_codes[0] == "DM_ErrorDetailNameCode_UnderlyingErrorCode"
    assert "Microsoft.Data.Mashup.CredentialError.DataSourcePath" in error.detail_codes
    assert ("DM_ErrorDetailNameCode_UnderlyingHResult", "-2147467259") in error.details


def test_parses_decoded_and_doubly_encoded_values() -> None:
    decoded = json.loads(EX_CREDENTIALS_NOT_SPECIFIED)
    assert parse_service_exception(decoded) == ServiceError("ModelRefreshFailed_CredentialsNotSpecified")
    doubly = json.dumps(EX_CREDENTIALS_NOT_SPECIFIED)
    assert parse_service_exception(doubly) == ServiceError("ModelRefreshFailed_CredentialsNotSpecified")


def test_a_bare_code_is_a_code() -> None:
    assert parse_service_exception(" DM_GWPipeline_UnknownError ") == ServiceError(
        "DM_GWPipeline_UnknownError"
    )


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "",
        "   ",
        "{",
        "not json at all, with spaces",
        "[1, 2, 3]",
        "42",
        "null",
        '{"error": 5}',
        '{"error": {"pbi.error": {"details": "nope"}}}',
        '{"something": "else"}',
        42,
        ["DM_GWPipeline_UnknownError"],
        "[" * 100000,
        EX_TRUNCATED_INVALID_CREDENTIALS,
    ],
)
def test_garbage_never_raises(garbage: object) -> None:
    error = parse_service_exception(garbage)
    assert error is None or error.code is None
    diagnosis = diagnose_refresh({"status": "Failed", "serviceExceptionJson": garbage})
    assert diagnosis.category is Category.UNKNOWN
    assert not diagnosis.credential_related


def test_envelope_details_of_odd_types_are_tolerated() -> None:
    doc = {
        "error": {
            "code": "X",
            "pbi.error": {"details": [1, {"code": 5}, {"code": "A", "detail": "v"}, {"code": "B"}]},
        }
    }
    error = parse_service_exception(json.dumps(doc))
    assert error == ServiceError("X", None, (("A", ""), ("B", "")))


# -- refresh history entries ----------------------------------------------------------------------
def test_credentials_not_specified_is_a_credential_failure() -> None:
    d = diagnose_refresh(failed(EX_CREDENTIALS_NOT_SPECIFIED))
    assert d.category is Category.CREDENTIAL
    assert d.credential_related
    assert d.code == "ModelRefreshFailed_CredentialsNotSpecified"
    assert "ModelRefreshFailed_CredentialsNotSpecified" in d.message
    assert "Key Vault" in d.fix


def test_invalid_connection_credentials_envelope_is_a_credential_failure() -> None:
    d = diagnose_refresh(failed(EX_INVALID_CREDENTIALS))
    assert (d.category, d.code) == (Category.CREDENTIAL, "DM_GWPipeline_Gateway_InvalidConnectionCredentials")


def test_truncated_envelope_is_not_treated_as_credentials() -> None:
    # Conservative: what cannot be parsed never leads to a credential change.
    d = diagnose_refresh(failed(EX_TRUNCATED_INVALID_CREDENTIALS))
    assert d.category is Category.UNKNOWN


def test_processing_error_is_a_source_problem_not_credentials() -> None:
    for exception in (EX_PROCESSING_ERROR, EX_ENVELOPE_PROCESSING):
        d = diagnose_refresh(failed(exception))
        assert (d.category, d.code) == (Category.SOURCE, "ModelRefresh_ShortMessage_ProcessingError")
        assert not d.credential_related


def test_service_free_text_is_never_quoted_in_the_message() -> None:
    d = diagnose_refresh(failed(EX_ENVELOPE_PROCESSING))
    assert "Required Field" not in d.message and "Required Field" not in d.fix
    d = diagnose_refresh(failed(EX_INVALID_CREDENTIALS))
    assert "<ccon>" not in d.message


def test_entity_not_found_envelope_is_unknown() -> None:
    d = diagnose_refresh(failed(EX_ENTITY_NOT_FOUND))
    assert (d.category, d.code) == (Category.UNKNOWN, "PowerBIEntityNotFound")


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("DM_GWPipeline_Gateway_InvalidConnectionCredentials", Category.CREDENTIAL),
        ("ModelRefreshFailed_CredentialsNotSpecified", Category.CREDENTIAL),
        ("DM_GWPipeline_Gateway_CredentialsNotSpecified", Category.CREDENTIAL),
        ("DMTS_DatasourceHasNoCredentialError", Category.CREDENTIAL),
        ("DMTS_OAuthTokenRefreshFailedError", Category.CREDENTIAL),
        ("DM_GWPipeline_Client_GatewayUnreachable", Category.GATEWAY),
        ("DM_GWPipeline_UnknownError", Category.GATEWAY),
        ("DM_GWPipeline_Gateway_TimeoutError", Category.GATEWAY),
        ("DM_GWPipeline_Gateway_SpooledOperationMissing", Category.GATEWAY),
        ("DM_GWPipeline_Gateway_CompressedDataSizeForPacketExceededError", Category.GATEWAY),
        ("DM_GWPipeline_Gateway_DataSourceAccessError", Category.SOURCE),
        ("DM_GWPipeline_Gateway_MashupDataAccessError", Category.SOURCE),
        ("ModelRefreshFailed_ExceededDailyRefreshLimit", Category.QUOTA),
        ("SomethingNobodyHasSeen", Category.UNKNOWN),
    ],
)
def test_codes_in_both_shapes_map_to_categories(code: str, category: Category) -> None:
    for exception in (json.dumps({"errorCode": code}), envelope(code)):
        d = diagnose_refresh(failed(exception))
        assert (d.category, d.code) == (category, code)
        assert d.credential_related is (category is Category.CREDENTIAL)
        assert d.fix and d.fix.endswith(".") and "\n" not in d.fix


def test_codes_match_regardless_of_case() -> None:
    d = diagnose_refresh(failed('{"errorCode":"dm_gwpipeline_gateway_invalidconnectioncredentials"}'))
    assert d.category is Category.CREDENTIAL


def test_mashup_credential_details_make_a_data_access_error_a_credential_failure() -> None:
    exception = envelope(
        "DM_GWPipeline_Gateway_MashupDataAccessError",
        [
            ("Microsoft.Data.Mashup.CredentialError.DataSourceKind", "SQL"),
            ("Microsoft.Data.Mashup.CredentialError.Reason", "AccessUnauthorized"),
        ],
    )
    d = diagnose_refresh(failed(exception))
    assert (d.category, d.code) == (Category.CREDENTIAL, "DM_GWPipeline_Gateway_MashupDataAccessError")


def test_mashup_access_forbidden_is_a_permission_on_the_source_not_a_password() -> None:
    exception = envelope(
        "DM_GWPipeline_Gateway_MashupDataAccessError",
        [
            ("Microsoft.Data.Mashup.CredentialError.DataSourceKind", "SharePoint"),
            ("Microsoft.Data.Mashup.CredentialError.Reason", "AccessForbidden"),
        ],
    )
    d = diagnose_refresh(failed(exception))
    assert d.category is Category.SOURCE
    assert "access" in d.fix


def test_gateway_faults_win_over_credential_details() -> None:
    exception = envelope(
        "DM_GWPipeline_Client_GatewayUnreachable",
        [("Microsoft.Data.Mashup.CredentialError.DataSourceKind", "SQL")],
    )
    assert diagnose_refresh(failed(exception)).category is Category.GATEWAY


def test_refresh_limit_wording_is_quota() -> None:
    exception = json.dumps(
        {
            "errorCode": "InvalidRequest",
            "errorDescription": "Number of refresh requests in last 24 hours exceeded limit",
        }
    )
    assert diagnose_refresh(failed(exception)).category is Category.QUOTA


def test_swagger_refresh_history_examples() -> None:
    examples = example_bodies("Datasets_GetRefreshHistoryInGroup")
    expected = {
        "In-progress refresh example": Category.REFRESH_RUNNING,
        "Completed refresh example": Category.NONE,
        "Failed refresh example": Category.CREDENTIAL,
    }
    for name, category in expected.items():
        entry = examples[name]["responses"]["200"]["body"]["value"][0]
        assert diagnose_refresh(entry).category is category, name


def test_completed_is_none_and_running_is_refresh_running() -> None:
    ok = diagnose_refresh({"status": "Completed"})
    assert ok.category is Category.NONE and not ok.credential_related and ok.code is None
    for status in ("Unknown", "NotStarted"):
        d = diagnose_refresh({"status": status})
        assert d.category is Category.REFRESH_RUNNING
        assert "Wait for the running refresh" in d.fix


def test_cancelled_without_error_is_unknown_and_says_so() -> None:
    d = diagnose_refresh({"status": "Cancelled"})
    assert d.category is Category.UNKNOWN and "cancelled" in d.message


def test_failed_without_error_code_is_unknown() -> None:
    for entry in ({"status": "Failed"}, {"status": "Failed", "serviceExceptionJson": ""}, {}):
        assert diagnose_refresh(entry).category is Category.UNKNOWN


def test_attempts_supply_the_error_when_the_entry_has_none() -> None:
    entry = {
        "status": "Failed",
        "refreshAttempts": [
            {"attemptId": 1, "serviceExceptionJson": envelope("DM_GWPipeline_Gateway_TimeoutError")},
            {"attemptId": 2, "serviceExceptionJson": EX_CREDENTIALS_NOT_SPECIFIED},
            {"attemptId": 3},
        ],
    }
    d = diagnose_refresh(entry)
    assert (d.category, d.code) == (Category.CREDENTIAL, "ModelRefreshFailed_CredentialsNotSpecified")


def test_odd_entry_values_do_not_raise() -> None:
    for entry in (
        {"status": 5, "serviceExceptionJson": {"errorCode": 7}},
        {"status": None, "refreshAttempts": "x"},
        {"status": "Failed", "refreshAttempts": [None, 3, {"serviceExceptionJson": None}]},
    ):
        assert isinstance(diagnose_refresh(entry), Diagnosis)


# -- the status endpoint's 400 codes --------------------------------------------------------------
def test_status_error_from_the_swagger_example_is_gateway() -> None:
    body = example_bodies("Gateways_GetDatasourceStatus")["Gateway unreachable example"]["responses"]["400"][
        "body"
    ]
    d = diagnose_status_error(body["error"]["code"])
    assert (d.category, d.code) == (Category.GATEWAY, "DM_GWPipeline_Client_GatewayUnreachable")
    assert "gateway" in d.fix and "online" in d.fix


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("DM_GWPipeline_Gateway_InvalidConnectionCredentials", Category.CREDENTIAL),
        ("DM_GWPipeline_Gateway_DataSourceAccessError", Category.SOURCE),
        ("DM_GWPipeline_UnknownError", Category.GATEWAY),
        ("", Category.UNKNOWN),
        ("Whatever", Category.UNKNOWN),
    ],
)
def test_status_error_codes(code: str, category: Category) -> None:
    assert diagnose_status_error(code).category is category


# -- the credential PATCH's answers ---------------------------------------------------------------
def test_patch_rejected_by_the_source_says_put_a_new_version_in_key_vault() -> None:
    d = diagnose_api_error(400, "DM_GWPipeline_Gateway_InvalidConnectionCredentials")
    assert d.category is Category.CREDENTIAL
    assert d.fix == (
        "The source rejected the secret in Key Vault: put the right password in Key Vault as a new version; "
        "the healer will not present this version again."
    )


def test_patch_unknown_error_is_a_gateway_or_encryption_problem() -> None:
    d = diagnose_api_error(400, "DM_GWPipeline_UnknownError")
    assert d.category is Category.GATEWAY and not d.credential_related
    assert "key" in d.fix


@pytest.mark.parametrize(
    ("status", "code", "category"),
    [
        (401, None, Category.PERMISSION),
        (403, "PowerBINotAuthorizedException", Category.PERMISSION),
        (400, "PowerBINotAuthorizedException", Category.PERMISSION),
        (404, "PowerBIEntityNotFound", Category.UNKNOWN),
        (429, None, Category.QUOTA),
        (500, None, Category.UNKNOWN),
        (503, "ServiceUnavailable", Category.UNKNOWN),
        (400, "DM_GWPipeline_Client_GatewayUnreachable", Category.GATEWAY),
        (400, "DM_GWPipeline_Gateway_DataSourceAccessError", Category.SOURCE),
        (400, "InvalidRequest", Category.UNKNOWN),
        (400, None, Category.UNKNOWN),
    ],
)
def test_api_errors_by_status_and_code(status: int, code: str | None, category: Category) -> None:
    d = diagnose_api_error(status, code)
    assert d.category is category
    assert d.code == code
    assert d.fix.endswith(".")


def test_permission_fix_names_gateway_admin_and_take_over() -> None:
    fix = diagnose_api_error(401, "PowerBINotAuthorizedException").fix
    assert "admin of the gateway" in fix and "takeOver" in fix


def test_another_refresh_running_is_recognised_from_the_message() -> None:
    d = diagnose_api_error(400, "InvalidRequest", message="Another refresh request is already executing")
    assert d.category is Category.REFRESH_RUNNING
    assert "Another refresh" not in d.message  # wording is matched, never quoted


def test_refresh_limit_message_is_quota() -> None:
    msg = "Invalid dataset refresh request. Number of refresh requests in last 24 hours exceeded limit"
    assert diagnose_api_error(400, "InvalidRequest", message=msg).category is Category.QUOTA


def test_api_error_with_mashup_credential_details_is_credential() -> None:
    d = diagnose_api_error(
        400,
        "DM_GWPipeline_Gateway_MashupDataAccessError",
        detail_codes=["Microsoft.Data.Mashup.CredentialError.DataSourceKind"],
    )
    assert d.category is Category.CREDENTIAL


def test_only_credential_is_credential_related() -> None:
    for category in Category:
        assert Diagnosis(category, None, "m", "f").credential_related is (category is Category.CREDENTIAL)


def test_category_values_are_stable_strings() -> None:
    assert {c.value for c in Category} >= {
        "credential",
        "gateway",
        "source",
        "refresh_running",
        "quota",
        "unknown",
        "none",
    }
    assert f"{Category.REFRESH_RUNNING}" == "refresh_running"
