"""Diagnosis of the causes people actually meet, on real payloads (sources: specs/SOURCES.md,
"Diagnosis payloads"). Each case says what the product may do: only ``credential`` cases may
lead to a credential change; ``account`` cases block the account (nothing is presented); every
other case changes nothing.

Payloads marked *verbatim* are copied exactly. The others put a source's real message, copied
exactly from the cited page, into the envelope Power BI uses for refresh failures (the shape of
PowerBIRESTAPI#178, ``specs/powerbi/service_exception_examples.md`` section 5): Power BI carries
the source's text in ``DM_ErrorDetailNameCode_UnderlyingErrorMessage``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from remediation.clients.http import ApiError
from remediation.reconciler.targets.gateway import patch_verdict
from remediation.rules.diagnosis import (
    Category,
    diagnose_api_error,
    diagnose_refresh,
)
from remediation.rules.service_errors import parse_service_exception
from remediation.safety.answers import Verdict

INVALID = "DM_GWPipeline_Gateway_InvalidConnectionCredentials"
ACCESS = "DM_GWPipeline_Gateway_DataSourceAccessError"


def envelope(
    code: str,
    message: str,
    *,
    kind: str | None = None,
    path: str | None = None,
    reason: str | None = None,
) -> str:
    """A ``serviceExceptionJson`` string in Power BI's envelope, with the source's message."""
    details = [
        {"code": "DM_ErrorDetailNameCode_UnderlyingErrorCode", "detail": {"type": 1, "value": "-2147467259"}},
        {"code": "DM_ErrorDetailNameCode_UnderlyingErrorMessage", "detail": {"type": 1, "value": message}},
        {"code": "DM_ErrorDetailNameCode_UnderlyingHResult", "detail": {"type": 1, "value": "-2147467259"}},
    ]
    if kind is not None:
        details.append(
            {
                "code": "Microsoft.Data.Mashup.CredentialError.DataSourceKind",
                "detail": {"type": 1, "value": kind},
            }
        )
    if path is not None:
        details.append(
            {
                "code": "Microsoft.Data.Mashup.CredentialError.DataSourcePath",
                "detail": {"type": 1, "value": f"<ccon>{path}</ccon>"},
            }
        )
    if reason is not None:
        details.append(
            {"code": "Microsoft.Data.Mashup.CredentialError.Reason", "detail": {"type": 1, "value": reason}}
        )
    body = {
        "error": {
            "code": code,
            "pbi.error": {"code": code, "parameters": {}, "details": details, "exceptionCulprit": 1},
        }
    }
    return json.dumps(body, separators=(",", ":"))


@dataclass(frozen=True)
class Case:
    id: str
    source: str
    payload: str
    category: Category
    cause: str | None = None
    fix_says: str = ""


# -- a new credential cures these (the healer applies the current Key Vault version) ------------
CURABLE = [
    Case(
        "sql-login-failed",
        "powerbi-docs service-gateway-onprem-tshoot.md: Invalid connection credentials",
        envelope(INVALID, "Login failed for user 'username'.", kind="SQL", path="sql01;AdventureWorks"),
        Category.CREDENTIAL,
        "password",
        "Key Vault",
    ),
    Case(
        "custom-connector-invalid-verbatim",
        "PowerBIRESTAPI#178 (verbatim up to its last complete detail, closed)",
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
        '"detail":{"type":1,"value":"<ccon>PowerBIRESTAPI</ccon>"}}],"exceptionCulprit":1}}}',
        Category.CREDENTIAL,
        "password",
    ),
    Case(
        "credentials-not-specified-verbatim",
        "swagger Datasets_GetRefreshHistory 'Failed refresh example' (verbatim)",
        '{"errorCode":"ModelRefreshFailed_CredentialsNotSpecified"}',
        Category.CREDENTIAL,
        "no-credentials",  # no sign-in happened: evidence of nothing against the password
    ),
    Case(
        "windows-share-bad-logon",
        "Windows system error 1326 (ERROR_LOGON_FAILURE), Microsoft Learn system error codes 1300-1699",
        envelope(
            INVALID,
            "The user name or password is incorrect.",
            kind="Folder",
            path="\\\\fileserver\\finance",
            reason="AccessUnauthorized",
        ),
        Category.CREDENTIAL,
        "windows-share",
        "share",
    ),
    Case(
        "oauth-token-refresh-failed",
        "DMTS_OAuthTokenRefreshFailedError (Power BI's code for an OAuth2 credential that lapsed)",
        '{"errorCode":"DMTS_OAuthTokenRefreshFailedError"}',
        Category.CREDENTIAL,
        "oauth-expired",
        "caller-identity",
    ),
    Case(
        "oauth-refresh-token-expired",
        "AADSTS700082 as Entra ID words it (quoted in a public code comment, see SOURCES.md)",
        envelope(
            INVALID,
            "AADSTS700082: The refresh token has expired due to inactivity. The token was "
            "issued on 2024-07-31T08:00:26.4486159Z and was inactive for 90.00:00:00.",
            kind="SharePoint",
            path="https://contoso.sharepoint.com/sites/finance",
            reason="AccessUnauthorized",
        ),
        Category.CREDENTIAL,
        "oauth-expired",
        "caller-identity",
    ),
    Case(
        "as-tggau-user-name-or-password",
        "powerbi-docs service-gateway-onprem-tshoot.md: same section (missing TGGAU attribute, or no trust)",
        envelope(ACCESS, "The user name or password is incorrect."),
        # The words of a refused sign-in under DataSourceAccessError: read as credentials (fail
        # closed; issue 17), although for Analysis Services they may mean a missing TGGAU right.
        Category.CREDENTIAL,
        "password",
    ),
    Case(
        "sql-login-failed-behind-a-gateway-verbatim",
        "microsoft/PowerBI-Cli issue 27: SQL Server's 18456 reported as DataSourceAccessError (verbatim)",
        '{"error":{"code":"DM_GWPipeline_Gateway_DataSourceAccessError","pbi.error":{"code":'
        '"DM_GWPipeline_Gateway_DataSourceAccessError","parameters":{},"details":[{"code":'
        '"DM_ErrorDetailNameCode_UnderlyingErrorCode","detail":{"type":1,"value":"-2146232060"}},{"code":'
        '"DM_ErrorDetailNameCode_UnderlyingErrorMessage","detail":{"type":1,"value":"Login failed for user '
        '\'admin\'."}},{"code":"DM_ErrorDetailNameCode_UnderlyingHResult","detail":{"type":1,'
        '"value":"-2146232060"}},{"code":"DM_ErrorDetailNameCode_UnderlyingNativeErrorCode","detail":'
        '{"type":1,"value":"18456"}}]}}}',
        Category.CREDENTIAL,
        "password",
    ),
]

# -- the account cannot sign in: reported with the fix; nothing is presented to it --------------
ACCOUNT = [
    Case(
        "sql-18486-locked",
        "SQL Server error 18486 (sql-docs database-engine-events-and-errors-18000-to-18999.md)",
        envelope(
            INVALID,
            "Login failed for user 'svc_pbi' because the account is currently locked out. "
            "The system administrator can unlock it. ",
            kind="SQL",
            path="sql01;sales",
        ),
        Category.ACCOUNT,
        "account-locked",
        "Unlock",
    ),
    Case(
        "sql-18470-disabled",
        "SQL Server error 18470 (same page)",
        envelope(
            INVALID,
            "Login failed for user 'svc_pbi'. Reason: The account is disabled.",
            kind="SQL",
            path="sql01;sales",
        ),
        Category.ACCOUNT,
        "account-disabled",
        "ENABLE",
    ),
    Case(
        "sql-18487-password-expired",
        "SQL Server error 18487 (same page)",
        envelope(
            INVALID,
            "Login failed for user 'svc_pbi'.  Reason: The password of the account has expired.",
            kind="SQL",
            path="sql01;sales",
        ),
        Category.ACCOUNT,
        "password-expired",
        "new version",
    ),
    Case(
        "sql-18488-must-change",
        "SQL Server error 18488 (same page)",
        envelope(
            INVALID,
            "Login failed for user 'svc_pbi'. Reason: The password of the account must be changed.",
            kind="SQL",
            path="sql01;sales",
        ),
        Category.ACCOUNT,
        "password-expired",
        "new version",
    ),
    Case(
        "ad-1909-locked-out",
        "Windows system error 1909 (ERROR_ACCOUNT_LOCKED_OUT), Microsoft Learn system error codes 1700-3999",
        envelope(
            INVALID,
            "The referenced account is currently locked out and may not be logged on to.",
            kind="Folder",
            path="\\\\fileserver\\finance",
        ),
        Category.ACCOUNT,
        "account-locked",
        "present-again",
    ),
    Case(
        "ad-1331-disabled",
        "Windows system error 1331 (ERROR_ACCOUNT_DISABLED), Microsoft Learn system error codes 1300-1699",
        envelope(
            INVALID,
            "This user can't sign in because this account is currently disabled.",
            kind="File",
            path="\\\\fileserver\\finance\\budget.xlsx",
        ),
        Category.ACCOUNT,
        "account-disabled",
        "Enable",
    ),
    Case(
        "sql-18452-untrusted-domain",
        "SQL Server error 18452 (sql-docs, same range)",
        envelope(
            INVALID,
            "Login failed. The login is from an untrusted domain and cannot be used with "
            "Windows authentication.",
            kind="SQL",
            path="sql01;sales",
        ),
        Category.ACCOUNT,
        "username-format",
        "DOMAIN\\user",
    ),
]

# -- not a credential problem: nothing about credentials changes --------------------------------
OTHER = [
    Case(
        "sql-network-error",
        "SQL Server's network error (error 26/40 wording) under DataSourceAccessError: no sign-in refused",
        envelope(
            ACCESS,
            "A network-related or instance-specific error occurred while establishing a connection to SQL "
            "Server. The server was not found or was not accessible.",
        ),
        Category.SOURCE,
    ),
    Case(
        "gateway-timeout",
        "powerbi-docs service-gateway-onprem-tshoot.md: the gateway timed out",
        '{"error":{"code":"DM_GWPipeline_Gateway_TimeoutError","pbi.error":{"code":'
        '"DM_GWPipeline_Gateway_TimeoutError","parameters":{},"details":[],"exceptionCulprit":1}}}',
        Category.GATEWAY,
    ),
    Case(
        "processing-error-verbatim",
        "swagger Datasets_GetRefreshExecutionDetails 'Failed refresh example' (verbatim, shortened)",
        '{"errorCode":"ModelRefresh_ShortMessage_ProcessingError","errorDescription":"0xC112001C: '
        'Expression.Error: Forced Error. . The exception was raised by the IDbCommand interface."}',
        Category.SOURCE,
    ),
    Case(
        "processing-envelope-verbatim",
        "azure-docs cost management template app, 'Error processing the data in the dataset' (verbatim)",
        '{"error":{"code":"ModelRefresh_ShortMessage_ProcessingError","pbi.error":{"code":'
        '"ModelRefresh_ShortMessage_ProcessingError","parameters":{},"details":[{"code":"Message","detail":'
        '{"type":1,"value":"We cannot convert the value \\"Required Field: \'Enr...\\" to type List."}}],'
        '"exceptionCulprit":1}}}',
        Category.SOURCE,
    ),
    Case(
        "gateway-unreachable-verbatim",
        "swagger Gateways_GetDatasourceStatus 'Gateway unreachable example' (verbatim)",
        '{"error":{"code":"DM_GWPipeline_Client_GatewayUnreachable","pbi.error":{"code":'
        '"DM_GWPipeline_Client_GatewayUnreachable","parameters":{},"details":[],"exceptionCulprit":1}}}',
        Category.GATEWAY,
    ),
    Case(
        "unknown-gateway-error",
        "powerbi-docs service-gateway-onprem-tshoot.md: Unknown error in data gateway",
        '{"error":{"code":"DM_GWPipeline_UnknownError","pbi.error":{"code":"DM_GWPipeline_UnknownError",'
        '"parameters":{},"details":[],"exceptionCulprit":1}}}',
        Category.GATEWAY,
    ),
    Case(
        "as-effective-user-name",
        "powerbi-docs service-gateway-onprem-tshoot.md: the gateway can't access the data source",
        envelope(
            ACCESS,
            "The 'CONTOSO\\account' value of the 'EffectiveUserName' XML for Analysis property is not valid.",
        ),
        Category.SOURCE,
    ),
    Case(
        "cannot-open-database",
        "powerbi-docs service-gateway-onprem-tshoot.md: Cannot connect to the database (SQL Server 4060)",
        envelope(
            INVALID,
            'Cannot open database "AdventureWorks" requested by the login. The login failed. '
            "Login failed for user 'username'.",
            kind="SQL",
            path="sql01;AdventureWorks",
        ),
        Category.SOURCE,
        "database-access",
        "database",
    ),
    Case(
        "sql-certificate-name",
        "powerbi-docs service-gateway-onprem-tshoot.md: server name doesn't match the SSL certificate",
        envelope(
            ACCESS,
            "The server name provided doesn't match the server name on the SQL Server SSL Certificate.",
        ),
        Category.SOURCE,
    ),
    Case(
        "row-too-large",
        "powerbi-docs service-gateway-onprem-tshoot.md: There is not enough space for this row",
        '{"errorCode":"ModelRefresh_ShortMessage_ProcessingError","errorDescription":'
        '"There is not enough space for this row."}',
        Category.SOURCE,
    ),
    Case(
        "uncompressed-data-limit",
        "powerbi-docs service-gateway-onprem-tshoot.md: uncompressed data on the gateway exceeded the limit",
        '{"errorCode":"ModelRefresh_ShortMessage_ProcessingError","errorDescription":'
        '"The received uncompressed data on the gateway client has exceeded limit."}',
        Category.SOURCE,
    ),
    Case(
        "model-evicted",
        "powerbi-docs asynchronous-refresh.md: semantic model eviction (0xC11C0020)",
        '{"errorCode":"ModelRefresh_ShortMessage_ProcessingError","errorDescription":"0xC11C0020: Session '
        "cancelled because it is connected to a database that has been evicted to free up memory for other "
        'operations"}',
        Category.SOURCE,
    ),
    Case(
        "refresh-already-running",
        "Power BI's answer to a second refresh (a public Power Automate write-up, see SOURCES.md)",
        '{"error":{"code":"InvalidRequest","message":"Invalid dataset refresh request. '
        'Another refresh request is already executing"}}',
        Category.REFRESH_RUNNING,
    ),
    Case(
        "entity-not-found-verbatim",
        "DevScope/powerbi-powershell-modules#66 (verbatim)",
        '{"error":{"code":"PowerBIEntityNotFound","pbi.error":{"code":"PowerBIEntityNotFound","parameters":{},'
        '"details":[],"exceptionCulprit":1}}}',
        Category.UNKNOWN,
    ),
    Case(
        "mashup-access-forbidden",
        "PowerBIRESTAPI#178 shape with Reason AccessForbidden (signed in, not allowed to read)",
        envelope(
            "DM_GWPipeline_Gateway_MashupDataAccessError",
            "Access to the resource is forbidden.",
            kind="SharePoint",
            path="https://contoso.sharepoint.com/sites/finance",
            reason="AccessForbidden",
        ),
        Category.SOURCE,
    ),
]

ALL = CURABLE + ACCOUNT + OTHER


def test_at_least_twenty_payloads_half_of_them_not_credential_failures() -> None:
    assert len(ALL) >= 20
    assert len(OTHER) >= len(ALL) / 2  # not credential failures: they must change nothing
    assert len({c.id for c in ALL}) == len(ALL)


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.id)
def test_a_failed_refresh_is_diagnosed_as_people_meet_it(case: Case) -> None:
    assert parse_service_exception(case.payload) is not None, "the payload parses"
    d = diagnose_refresh({"status": "Failed", "serviceExceptionJson": case.payload})
    assert d.category is case.category, d
    if case.cause is not None:
        assert d.cause == case.cause
    assert case.fix_says in d.fix
    # Only a credential failure may lead to a credential change.
    assert d.credential_related is (case in CURABLE)
    assert d.blocks_account is (case in ACCOUNT)


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.id)
def test_no_diagnosis_quotes_the_sources_words(case: Case) -> None:
    d = diagnose_refresh({"status": "Failed", "serviceExceptionJson": case.payload})
    for words in (
        "svc_pbi",
        "fileserver",
        "AdventureWorks",
        "contoso.sharepoint.com",
        "CONTOSO\\account",
        "2024-07-31",
    ):
        assert words not in d.message + d.fix


def _patch_error(payload: str) -> ApiError:
    pbi = json.loads(payload)["error"]["pbi.error"]
    details = [(d["code"], d["detail"]["value"]) for d in pbi["details"]]
    return ApiError("Power BI refused the request", status=400, code=pbi["code"], details=details)


@pytest.mark.parametrize("case", ACCOUNT, ids=lambda c: c.id)
def test_a_patch_answered_with_an_account_state_blocks_the_version(case: Case) -> None:
    exc = _patch_error(case.payload)
    d = diagnose_api_error(400, exc.code, details=exc.details)
    assert d.category is Category.ACCOUNT and d.cause == case.cause
    verdict = patch_verdict(exc)
    assert verdict.verdict is Verdict.REJECTED  # never presented again automatically
    assert "refused the account" in verdict.reason


def test_a_patch_rejected_for_a_wrong_password_is_still_a_rejection_of_the_secret() -> None:
    exc = _patch_error(CURABLE[0].payload)
    assert diagnose_api_error(400, exc.code, details=exc.details).cause == "password"
    verdict = patch_verdict(exc)
    assert verdict.verdict is Verdict.REJECTED and "refused the sign-in" in verdict.reason


def test_locked_wording_under_a_gateway_fault_stays_a_gateway_fault() -> None:
    # A gateway that is down is the problem whatever text comes with it: no credential is changed
    # for this refresh failure (a PATCH answered so is still a rejection: test_presentation.py).
    payload = envelope("DM_GWPipeline_Client_GatewayUnreachable", "account is currently locked out")
    d = diagnose_refresh({"status": "Failed", "serviceExceptionJson": payload})
    assert d.category is Category.GATEWAY and not d.credential_related
