"""What an answer to a presented credential means for lockout: accepted, rejected, not presented
(nothing was counted) or in doubt (it may have been counted). Fail closed: only the answers in the
safety core's table are "not presented"; every other answer after sending is rejected (when it
names a refused sign-in, in any of the shapes the services use) or in doubt."""

from __future__ import annotations

import json

import pytest
from requests.structures import CaseInsensitiveDict

from remediation.clients.fabric import _fabric_error
from remediation.clients.http import ApiConnectionError, ApiError, ApiResponse, error_from_response
from remediation.clients.identity import AuthenticationError
from remediation.reconciler.targets.fabric import fabric_verdict
from remediation.reconciler.targets.gateway import grant_verdict, patch_verdict
from remediation.rules.signins import refused_sign_in
from remediation.safety.answers import (
    NOT_PRESENTED_ANSWERS,
    Answer,
    Verdict,
    not_presented_because,
    undecryptable,
    verdict_of,
)
from sandbox.refusals import FABRIC_REFUSALS, POWERBI_REFUSALS, fabric_refusal, powerbi_refusal


def _api(
    status: int | None, code: str | None = None, details: list[tuple[str, str]] | None = None
) -> ApiError:
    return ApiError("x", status=status, code=code, details=details or [])


def _response(status: int, body: bytes, service: str) -> ApiResponse:
    return ApiResponse(
        method="PATCH",
        path="/x",
        status=status,
        headers=CaseInsensitiveDict(),
        content=body,
        attempts=1,
        service=service,
        reason="Bad Request",
    )


# The real bodies (microsoft/PowerBI-Cli issue 27; microsoft/semantic-link-labs issue 1025).
SQL_LOGIN_FAILED = {
    "error": {
        "code": "DM_GWPipeline_Gateway_DataSourceAccessError",
        "pbi.error": {
            "code": "DM_GWPipeline_Gateway_DataSourceAccessError",
            "parameters": {},
            "details": [
                {
                    "code": "DM_ErrorDetailNameCode_UnderlyingErrorCode",
                    "detail": {"type": 1, "value": "-2146232060"},
                },
                {
                    "code": "DM_ErrorDetailNameCode_UnderlyingErrorMessage",
                    "detail": {"type": 1, "value": "Login failed for user 'admin'."},
                },
                {
                    "code": "DM_ErrorDetailNameCode_UnderlyingHResult",
                    "detail": {"type": 1, "value": "-2146232060"},
                },
                {
                    "code": "DM_ErrorDetailNameCode_UnderlyingNativeErrorCode",
                    "detail": {"type": 1, "value": "18456"},
                },
            ],
        },
    }
}
FABRIC_LOGIN_FAILED = {
    "requestId": "013ee7de-9af8-43e2-b0f4-51e30989fb7d",
    "errorCode": "DM_GWPipeline_Gateway_DataSourceAccessError",
    "moreDetails": [
        {"errorCode": "DM_ErrorDetailNameCode_UnderlyingErrorCode", "message": "-2146232060"},
        {
            "errorCode": "DM_ErrorDetailNameCode_UnderlyingErrorMessage",
            "message": "Could not login because the authentication failed.",
        },
        {"errorCode": "DM_ErrorDetailNameCode_UnderlyingHResult", "message": "-2146232060"},
        {"errorCode": "DM_ErrorDetailNameCode_UnderlyingNativeErrorCode", "message": "18456"},
    ],
    "message": "PowerBI service client received error HTTP response. HttpStatus: 400. "
    "PowerBIErrorCode: DM_GWPipeline_Gateway_DataSourceAccessError",
}


def test_a_refused_sql_login_behind_a_gateway_is_a_rejection_not_a_refusal_before_the_test() -> None:
    exc = error_from_response(_response(400, json.dumps(SQL_LOGIN_FAILED).encode(), "powerbi"))
    verdict = patch_verdict(exc)
    assert verdict.verdict is Verdict.REJECTED, verdict
    assert "native error 18456" in verdict.reason


def test_fabrics_refused_sql_login_is_a_rejection() -> None:
    exc = _fabric_error(_response(400, json.dumps(FABRIC_LOGIN_FAILED).encode(), "fabric"))
    assert fabric_verdict(exc).verdict is Verdict.REJECTED


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (_api(400, "DM_GWPipeline_Gateway_InvalidConnectionCredentials"), Verdict.REJECTED),
        # Fail closed: a gateway that failed or could not be reached may have tried the source.
        (_api(400, "DM_GWPipeline_UnknownError"), Verdict.IN_DOUBT),
        (_api(400, "DM_GWPipeline_Client_GatewayUnreachable"), Verdict.IN_DOUBT),
        (_api(400, "DM_GWPipeline_Gateway_DataSourceAccessError"), Verdict.IN_DOUBT),
        (_api(400, "DM_GWPipeline_Gateway_SomethingNew"), Verdict.IN_DOUBT),
        (_api(400, "DMTS_SomethingNew"), Verdict.IN_DOUBT),
        (_api(400, "InvalidRequest"), Verdict.IN_DOUBT),
        (_api(400), Verdict.IN_DOUBT),  # a body that could not be read
        (_api(400, "BadRequest"), Verdict.NOT_PRESENTED),  # model binding refused the body
        (_api(401, "PowerBINotAuthorizedException"), Verdict.NOT_PRESENTED),
        (_api(401, "TokenExpired"), Verdict.NOT_PRESENTED),
        (_api(401), Verdict.NOT_PRESENTED),
        (_api(403, "PowerBINotAuthorizedException"), Verdict.NOT_PRESENTED),
        (_api(403, "DM_GWPipeline_Gateway_SomethingNew"), Verdict.IN_DOUBT),
        (_api(401, "DM_GWPipeline_Gateway_InvalidConnectionCredentials"), Verdict.REJECTED),
        (_api(404, "PowerBIEntityNotFound"), Verdict.NOT_PRESENTED),
        (_api(404), Verdict.NOT_PRESENTED),
        (_api(404, "DM_GWPipeline_Gateway_SomethingNew"), Verdict.IN_DOUBT),
        (_api(409, "Conflict"), Verdict.IN_DOUBT),
        (_api(429), Verdict.NOT_PRESENTED),
        (_api(429, "DM_GWPipeline_Gateway_InvalidConnectionCredentials"), Verdict.REJECTED),
        (_api(500), Verdict.IN_DOUBT),
        (_api(503), Verdict.IN_DOUBT),
        (_api(504), Verdict.IN_DOUBT),
        (_api(200), Verdict.IN_DOUBT),  # an error raised on a success status: nothing is proven
        (ApiConnectionError("t", code="Timeout", sent=True), Verdict.IN_DOUBT),
        (ApiConnectionError("c", code="ConnectionError", sent=False), Verdict.NOT_PRESENTED),
    ],
)
def test_patch_answers(error: ApiError, verdict: Verdict) -> None:
    assert patch_verdict(error).verdict is verdict


@pytest.mark.parametrize(
    ("details", "verdict"),
    [
        ([("DM_ErrorDetailNameCode_UnderlyingNativeErrorCode", "18456")], Verdict.REJECTED),
        ([("DM_ErrorDetailNameCode_UnderlyingNativeErrorCode", "18486")], Verdict.REJECTED),  # locked
        ([("DM_ErrorDetailNameCode_UnderlyingNativeErrorCode", "18470")], Verdict.REJECTED),  # disabled
        ([("DM_ErrorDetailNameCode_UnderlyingNativeErrorCode", "4060")], Verdict.IN_DOUBT),
        (
            [("DM_ErrorDetailNameCode_UnderlyingErrorMessage", "Login failed for user 'svc'.")],
            Verdict.REJECTED,
        ),
        (
            [("DM_ErrorDetailNameCode_UnderlyingErrorMessage", "The user name or password is incorrect.")],
            Verdict.REJECTED,
        ),
        (
            [
                (
                    "DM_ErrorDetailNameCode_UnderlyingErrorMessage",
                    "Could not login because the authentication failed.",
                )
            ],
            Verdict.REJECTED,
        ),
        (
            [("DM_ErrorDetailNameCode_UnderlyingErrorMessage", "The account is currently locked out.")],
            Verdict.REJECTED,
        ),
        ([("Microsoft.Data.Mashup.CredentialError.Reason", "AccessUnauthorized")], Verdict.REJECTED),
        ([("Microsoft.Data.Mashup.CredentialError.Reason", "AccessForbidden")], Verdict.IN_DOUBT),
        (
            [("DM_ErrorDetailNameCode_UnderlyingErrorMessage", "A network-related error occurred.")],
            Verdict.IN_DOUBT,
        ),
        ([("IncorrectCredentials", "")], Verdict.REJECTED),
    ],
)
def test_a_refusal_is_recognised_in_the_details_whatever_the_code(
    details: list[tuple[str, str]], verdict: Verdict
) -> None:
    assert patch_verdict(_api(400, "DM_GWPipeline_Gateway_DataSourceAccessError", details)).verdict is verdict
    assert fabric_verdict(_api(400, "SomethingNew", details)).verdict is verdict


@pytest.mark.parametrize(
    ("status", "code", "verdict"),
    [
        (400, "IncorrectCredentials", Verdict.REJECTED),
        (400, "InvalidCredentialDetails", Verdict.NOT_PRESENTED),
        (400, "InvalidConnectionDetails", Verdict.NOT_PRESENTED),
        (400, "UpdateGatewayConnectionFailed", Verdict.IN_DOUBT),
        (400, "InvalidInput", Verdict.IN_DOUBT),
        (400, None, Verdict.IN_DOUBT),
        (401, "TokenExpired", Verdict.NOT_PRESENTED),
        (403, "InsufficientPermissionsToManageConnection", Verdict.NOT_PRESENTED),
        (403, "SomethingNew", Verdict.IN_DOUBT),
        (404, "EntityNotFound", Verdict.NOT_PRESENTED),
        (429, None, Verdict.NOT_PRESENTED),
        (500, None, Verdict.IN_DOUBT),
        (400, "BadRequest", Verdict.IN_DOUBT),  # Power BI's model-binding row is not Fabric's
    ],
)
def test_fabric_answers(status: int, code: str | None, verdict: Verdict) -> None:
    assert fabric_verdict(_api(status, code)).verdict is verdict


def _auth(code: str | None, error: str = "invalid_grant") -> AuthenticationError:
    return AuthenticationError("refused", principal="svc@contoso.com", code=code, error=error)


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (_auth("AADSTS50126"), Verdict.REJECTED),  # wrong password
        (_auth("AADSTS50034"), Verdict.REJECTED),  # no such user
        (_auth("AADSTS50053"), Verdict.REJECTED),  # locked: presenting again cannot help
        (_auth("AADSTS50055"), Verdict.REJECTED),  # password expired
        (_auth("AADSTS50057"), Verdict.REJECTED),  # disabled
        (_auth("AADSTS50076"), Verdict.REJECTED),  # MFA needed
        (_auth("AADSTS50079"), Verdict.REJECTED),  # MFA registration needed
        (_auth("AADSTS7000218"), Verdict.NOT_PRESENTED),  # the product's app registration
        (_auth("AADSTS700016"), Verdict.NOT_PRESENTED),
        (_auth("AADSTS90002"), Verdict.NOT_PRESENTED),
        (_auth("AADSTS7000215", "invalid_client"), Verdict.NOT_PRESENTED),
        (_auth("AADSTS7000222", "invalid_client"), Verdict.NOT_PRESENTED),
        (_auth(None, "throttled"), Verdict.NOT_PRESENTED),
        (_auth(None, "not_sent"), Verdict.NOT_PRESENTED),
        (_auth("AADSTS50126", "not_sent"), Verdict.NOT_PRESENTED),
        (_auth(None, "connection_error"), Verdict.IN_DOUBT),
        (_auth(None, "client_error"), Verdict.IN_DOUBT),  # e.g. a federated (WS-Trust) fault
        (_auth("AADSTS9999999"), Verdict.IN_DOUBT),  # an unknown code
    ],
)
def test_password_grant_answers(error: AuthenticationError, verdict: Verdict) -> None:
    assert grant_verdict(error).verdict is verdict


@pytest.mark.parametrize("shape", POWERBI_REFUSALS)
def test_every_power_bi_refusal_shape_of_the_sandbox_is_never_not_presented(shape: str) -> None:
    rendered = powerbi_refusal(shape, kind="SQL", path="sql1;db", user="svc", presented="pw")  # type: ignore[arg-type]
    content = rendered.payload if isinstance(rendered.payload, bytes) else json.dumps(rendered.body).encode()
    verdict = patch_verdict(error_from_response(_response(rendered.status, content, "powerbi")))
    expected = {
        "unknown-gateway-code": Verdict.IN_DOUBT,
        "unknown-code": Verdict.IN_DOUBT,
        "unreadable": Verdict.IN_DOUBT,
    }
    assert verdict.verdict is expected.get(shape, Verdict.REJECTED), (shape, verdict)


@pytest.mark.parametrize("shape", FABRIC_REFUSALS)
def test_every_fabric_refusal_shape_of_the_sandbox_is_never_not_presented(shape: str) -> None:
    rendered = fabric_refusal(shape, user="svc", presented="pw")  # type: ignore[arg-type]
    content = rendered.payload if isinstance(rendered.payload, bytes) else json.dumps(rendered.body).encode()
    verdict = fabric_verdict(_fabric_error(_response(rendered.status, content, "fabric")))
    expected = {
        "unknown-gateway-code": Verdict.IN_DOUBT,
        "unknown-code": Verdict.IN_DOUBT,
        "unreadable": Verdict.IN_DOUBT,
    }
    assert verdict.verdict is expected.get(shape, Verdict.REJECTED), (shape, verdict)


def test_every_row_of_the_table_says_why_and_on_what_evidence() -> None:
    for row in NOT_PRESENTED_ANSWERS:
        assert row.why and len(row.evidence) > 40, row
        assert row.status is not None and 400 <= row.status < 500, row
    # 5xx and timeouts are never in the table: the service may have served the request.
    assert all(row.status not in (500, 502, 503, 504) for row in NOT_PRESENTED_ANSWERS)


def test_an_answer_naming_a_refused_sign_in_never_matches_a_row() -> None:
    refused = Answer("powerbi", 401, "PowerBINotAuthorizedException", "Login failed for user 'svc'.")
    assert not_presented_because(refused) is None
    assert verdict_of(refused).verdict is Verdict.REJECTED
    assert not_presented_because(Answer("powerbi", 401, "PowerBINotAuthorizedException")) is not None


def test_a_rejection_says_what_to_do_and_names_no_value() -> None:
    verdict = patch_verdict(_api(400, "DM_GWPipeline_Gateway_InvalidConnectionCredentials"))
    assert "refused the sign-in" in verdict.reason and "InvalidConnectionCredentials" in verdict.reason
    locked = patch_verdict(
        _api(
            400,
            "DM_GWPipeline_Gateway_DataSourceAccessError",
            [("DM_ErrorDetailNameCode_UnderlyingNativeErrorCode", "18486")],
        )
    )
    assert locked.verdict is Verdict.REJECTED and "refused the account" in locked.reason
    assert "unlock" in locked.reason.lower()


def test_only_a_changed_key_makes_a_gateway_unknown_error_undecryptable() -> None:
    unknown = Answer("powerbi", 400, "DM_GWPipeline_UnknownError")
    assert undecryptable(unknown, key_changed=True)
    assert not undecryptable(unknown, key_changed=False)
    assert not undecryptable(
        Answer("powerbi", 400, "DM_GWPipeline_Gateway_InvalidConnectionCredentials"), key_changed=True
    )
    assert not undecryptable(Answer("fabric", 400, "DM_GWPipeline_UnknownError"), key_changed=True)
    assert not undecryptable(Answer("powerbi", 500, "DM_GWPipeline_UnknownError"), key_changed=True)
    assert not undecryptable(
        Answer("powerbi", 400, "DM_GWPipeline_UnknownError", "Login failed for user 'svc'."), key_changed=True
    )


def test_the_recogniser_reads_codes_details_and_words_case_insensitively() -> None:
    assert refused_sign_in("dm_gwpipeline_gateway_invalidconnectioncredentials") is not None
    assert refused_sign_in(None, "LOGIN FAILED FOR USER 'x'") is not None
    assert (
        refused_sign_in("X", None, [("dm_errordetailnamecode_underlyingnativeerrorcode", " 18456 ")])
        is not None
    )
    assert refused_sign_in("X", None, [("Other", "18456")]) is None  # a number alone is no refusal
    assert refused_sign_in("X", "Cannot open database 'db'.") is None
    assert refused_sign_in(None, None) is None
