"""What an answer to a presented credential means for lockout: accepted, rejected, not presented
(nothing was counted) or in doubt (it may have been counted)."""

from __future__ import annotations

import pytest

from remediation.http import ApiConnectionError, ApiError
from remediation.identity import AuthenticationError
from remediation.presentation import Verdict, grant_verdict, patch_verdict


def _api(status: int | None, code: str | None = None) -> ApiError:
    return ApiError("x", status=status, code=code)


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (_api(400, "DM_GWPipeline_Gateway_InvalidConnectionCredentials"), Verdict.REJECTED),
        (_api(400, "DM_GWPipeline_UnknownError"), Verdict.NOT_PRESENTED),
        (_api(400, "DM_GWPipeline_Client_GatewayUnreachable"), Verdict.NOT_PRESENTED),
        (_api(401, "PowerBINotAuthorizedException"), Verdict.NOT_PRESENTED),
        (_api(404, "PowerBIEntityNotFound"), Verdict.NOT_PRESENTED),
        (_api(429), Verdict.NOT_PRESENTED),
        (_api(500), Verdict.IN_DOUBT),
        (_api(503), Verdict.IN_DOUBT),
        (_api(504), Verdict.IN_DOUBT),
        (ApiConnectionError("t", code="Timeout", sent=True), Verdict.IN_DOUBT),
        (ApiConnectionError("c", code="ConnectionError", sent=False), Verdict.NOT_PRESENTED),
    ],
)
def test_patch_answers(error: ApiError, verdict: Verdict) -> None:
    assert patch_verdict(error).verdict is verdict


def _auth(code: str | None, error: str = "invalid_grant") -> AuthenticationError:
    return AuthenticationError("refused", principal="svc@contoso.com", code=code, error=error)


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (_auth("AADSTS50126"), Verdict.REJECTED),  # wrong password
        (_auth("AADSTS50053"), Verdict.REJECTED),  # locked: presenting again cannot help
        (_auth("AADSTS50055"), Verdict.REJECTED),  # password expired
        (_auth("AADSTS50076"), Verdict.REJECTED),  # MFA needed
        (_auth("AADSTS7000218"), Verdict.NOT_PRESENTED),  # the product's app registration
        (_auth(None, "not_sent"), Verdict.NOT_PRESENTED),
        (_auth(None, "connection_error"), Verdict.IN_DOUBT),
        (_auth(None, "client_error"), Verdict.IN_DOUBT),  # e.g. a federated (WS-Trust) fault
    ],
)
def test_password_grant_answers(error: AuthenticationError, verdict: Verdict) -> None:
    assert grant_verdict(error).verdict is verdict
