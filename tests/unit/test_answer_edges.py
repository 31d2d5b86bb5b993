"""Decision 1 of the safety core at its edges: what an answer means, and the sentence an operator
reads for it (:mod:`remediation.safety.answers`). A password grant's failure in each of its shapes,
the wording of every verdict, and what keeps a gateway's "unknown error" from being read as
"could not decrypt"."""

from __future__ import annotations

import pytest

from remediation.rules.signins import refused_sign_in
from remediation.safety.answers import (
    NOT_PRESENTED_ANSWERS,
    Answer,
    Verdict,
    VerdictOf,
    grant_answer,
    not_presented_because,
    undecryptable,
    verdict_of,
)

WRONG_PASSWORD = "AADSTS50126: Error validating credentials due to invalid username or password."
LOST = "the answer from Entra ID was lost (no answer); the source may have checked the value"


# -- a password grant ---------------------------------------------------------------------------------
def test_a_grant_that_never_left_keeps_its_code_and_message_and_presented_nothing() -> None:
    answer = grant_answer("AADSTS50126", "not_sent", "connect timeout")
    assert answer == Answer("entra", None, "AADSTS50126", "connect timeout", sent=False)
    assert verdict_of(answer) == VerdictOf(Verdict.NOT_PRESENTED, "not sent to Entra ID: connect timeout")


def test_a_grant_whose_answer_was_lost_is_in_doubt() -> None:
    answer = grant_answer(None, "connection_error", "connection reset")
    assert answer == Answer("entra", None, None, "connection reset")
    assert verdict_of(answer) == VerdictOf(Verdict.IN_DOUBT, LOST)


def test_a_grant_answered_with_a_code_is_read_by_its_code_whatever_the_kind_of_failure() -> None:
    answer = grant_answer("AADSTS50126", "connection_error", WRONG_PASSWORD)
    assert answer == Answer("entra", 400, "AADSTS50126", WRONG_PASSWORD)
    assert verdict_of(answer).verdict is Verdict.REJECTED


def test_a_refused_password_is_recognised_in_the_message_when_the_code_is_missing() -> None:
    answer = grant_answer(None, "invalid_grant", WRONG_PASSWORD)
    assert answer == Answer("entra", 400, "invalid_grant", WRONG_PASSWORD)
    assert verdict_of(answer).verdict is Verdict.REJECTED


@pytest.mark.parametrize(
    ("error", "status"), [("invalid_client", 401), ("throttled", 429), ("invalid_request", 400)]
)
def test_a_grant_failure_without_a_code_answers_the_status_of_its_kind(error: str, status: int) -> None:
    assert grant_answer(None, error, None) == Answer("entra", status, error, None)


def test_the_products_own_client_refused_is_not_a_presentation() -> None:
    """invalid_client: Entra ID refused the product's app registration before it checked the
    user's password, so the version was not presented."""
    verdict = verdict_of(grant_answer(None, "invalid_client", None))
    assert verdict.verdict is Verdict.NOT_PRESENTED and verdict.reason.endswith("(invalid_client)")


# -- the sentences of the verdicts ----------------------------------------------------------------
def test_each_verdict_says_what_happened_in_words_an_operator_can_act_on() -> None:
    assert verdict_of(Answer("powerbi", None, sent=False)) == VerdictOf(
        Verdict.NOT_PRESENTED, "not sent to Power BI: no connection"
    )
    assert verdict_of(Answer("fabric", None, "Timeout")) == VerdictOf(
        Verdict.IN_DOUBT,
        "the answer from Fabric was lost (Timeout); the source may have checked the value",
    )
    assert verdict_of(Answer("powerbi", 500)) == VerdictOf(
        Verdict.IN_DOUBT,
        "Power BI answered HTTP 500 (no readable code), which does not prove the source was left alone: "
        "it may have checked the value",
    )
    throttled = next(row for row in NOT_PRESENTED_ANSWERS if row.status == 429)
    assert verdict_of(Answer("fabric", 429)) == VerdictOf(Verdict.NOT_PRESENTED, throttled.why)
    assert verdict_of(Answer("fabric", 429, "TooManyRequests")) == VerdictOf(
        Verdict.NOT_PRESENTED, f"{throttled.why} (TooManyRequests)"
    )


def test_a_rejection_says_whether_the_source_refused_the_sign_in_or_the_account() -> None:
    code = "DM_GWPipeline_Gateway_InvalidConnectionCredentials"
    assert verdict_of(Answer("powerbi", 400, code)) == VerdictOf(
        Verdict.REJECTED,
        f"the source refused the sign-in (Power BI HTTP 400 {code}; recognised by code {code})",
    )
    locked = verdict_of(Answer("entra", 400, None, "AADSTS50053: the account is locked"))
    assert locked.verdict is Verdict.REJECTED
    assert locked.reason.startswith(
        "the source refused the account (Entra ID HTTP 400 no readable code; recognised by the source's "
        "words (the account cannot sign in))."
    )


def test_a_disabled_account_reported_under_a_gateways_code_still_says_to_enable_it() -> None:
    """The gateway's own "unknown error" code carries SQL Server's words: the account is disabled.
    No password cures that, so the operator reads what to do at the source, not just a refusal."""
    code = "DM_GWPipeline_UnknownError"
    answer = Answer("powerbi", 400, code, "Login failed for user 'svc'. Reason: The account is disabled.")
    assert verdict_of(answer) == VerdictOf(
        Verdict.REJECTED,
        f"the source refused the account (Power BI HTTP 400 {code}; recognised by the source's words (the "
        "account cannot sign in)). Enable the account at the source (SQL Server: ALTER LOGIN <name> ENABLE; "
        "Active Directory: Enable account) or bind another one; nothing is presented meanwhile; then "
        "present the version again with `python -m remediation heal --secret NAME --present-again` "
        '(HTTP: "presentAgain": true), or put a new version in Key Vault.',
    )


@pytest.mark.parametrize(
    ("message", "details"),
    [
        # words the classification reads first (a quota's, a running refresh's) beside the account's
        (
            "Login failed for 'svc': the account is locked out (exceeded the amount of requests allowed)",
            (),
        ),
        ("The account is disabled; another refresh request is already executing", ()),
        # a Key Vault reference's detail code beside the account's words
        ("Login failed for user 'svc'. The account is locked.", (("DMS_KeyVaultSecretNotFound", ""),)),
    ],
)
def test_the_account_advice_under_the_invalid_credentials_code_is_kept_whatever_else_the_answer_says(
    message: str, details: tuple[tuple[str, str], ...]
) -> None:
    """Reading the answer without its code (so that a gateway's code cannot hide the account's
    state) must not lose the advice that code gave before: DM_GWPipeline_Gateway_InvalidConnectionCredentials
    is read by its own rule, which looks for the account's state whatever else the message says;
    without the code, other words (a quota's, a running refresh's, a Key Vault detail) are read
    first and the account advice was gone."""
    code = "DM_GWPipeline_Gateway_InvalidConnectionCredentials"
    verdict = verdict_of(Answer("powerbi", 400, code, message, details))
    assert verdict.verdict is Verdict.REJECTED
    assert verdict.reason.startswith(f"the source refused the account (Power BI HTTP 400 {code}; ")
    assert "nothing is presented" in verdict.reason.casefold()


@pytest.mark.parametrize(
    ("code", "message"),
    [
        # a gateway's code, whose own rule never reads the account's state
        ("DM_GWPipeline_UnknownError", "Login failed for user 'svc'."),
        # the invalid-credentials code beside a quota's words (read first without the code)
        (
            "DM_GWPipeline_Gateway_InvalidConnectionCredentials",
            "Login failed for user 'svc' (exceeded the amount of requests allowed)",
        ),
    ],
)
def test_the_account_advice_is_given_when_only_the_details_say_the_account_is_locked(
    code: str, message: str
) -> None:
    """The account's state may be told in the error's details only (Power BI's
    ``pbi.error.details`` values), not in its message: the operator still reads what to do."""
    details = (("Microsoft.Data.Mashup.ValueError.Reason", "The user account is locked out."),)
    verdict = verdict_of(Answer("powerbi", 400, code, message, details))
    assert verdict.verdict is Verdict.REJECTED
    assert verdict.reason.startswith(f"the source refused the account (Power BI HTTP 400 {code}; ")
    assert "unlock" in verdict.reason.casefold()


def test_a_code_is_matched_against_the_table_whatever_its_case_and_spaces() -> None:
    assert not_presented_because(Answer("powerbi", 401, " tokenexpired ")) is not None
    assert not_presented_because(Answer("fabric", 404, "ENTITYNOTFOUND")) is not None
    assert not_presented_because(Answer("fabric", 404, "PowerBIEntityNotFound")) is None  # Power BI's


def test_a_request_that_never_left_matches_no_row_of_the_table() -> None:
    assert not_presented_because(Answer("powerbi", 429, sent=False)) is None
    assert not_presented_because(Answer("powerbi", None, "Timeout")) is None


def test_a_refusal_named_only_in_the_details_is_a_rejection_even_with_a_status_the_table_lists() -> None:
    """401 PowerBINotAuthorizedException is in the table, but an answer whose details carry SQL
    Server's failed login reached the source: presenting again would be a second failed sign-in."""
    native = (("DM_ErrorDetailNameCode_UnderlyingNativeErrorCode", "18456"),)
    answer = Answer("powerbi", 401, "PowerBINotAuthorizedException", details=native)
    assert not_presented_because(answer) is None
    assert verdict_of(answer).verdict is Verdict.REJECTED


# -- undecryptable ------------------------------------------------------------------------------------
def test_a_gateway_unknown_error_whose_details_name_a_refused_sign_in_is_not_undecryptable() -> None:
    native = (("DM_ErrorDetailNameCode_UnderlyingNativeErrorCode", "18456"),)
    assert not undecryptable(
        Answer("powerbi", 400, "DM_GWPipeline_UnknownError", details=native), key_changed=True
    )
    assert undecryptable(Answer("powerbi", 400, "dm_gwpipeline_unknownerror"), key_changed=True)


def test_a_gateway_answer_without_a_code_is_not_undecryptable() -> None:
    """Only the gateway's "unknown error" code says it could not use what it was sent."""
    assert not undecryptable(Answer("powerbi", 400, None), key_changed=True)
    assert not undecryptable(Answer("powerbi", 400, ""), key_changed=True)


# -- what recognised a refused sign-in (quoted in a rejection's reason) ------------------------------
@pytest.mark.parametrize(
    ("code", "message", "details", "recognised"),
    [
        ("IncorrectCredentials", None, (), "code IncorrectCredentials"),
        ("X", None, (("IncorrectCredentials", ""),), "detail incorrectcredentials"),
        ("X", None, (("DM_ErrorDetailNameCode_UnderlyingNativeErrorCode", " 18486 "),), "native error 18486"),
        (
            "X",
            None,
            (("Microsoft.Data.Mashup.CredentialError.Reason", "accessUNAUTHORIZED"),),
            "the mashup engine's credential error (AccessUnauthorized)",
        ),
        (None, "Login failed for user 'svc'.", (), "the source's words (a refused sign-in)"),
        (
            None,
            None,
            (("Message", "The account is currently locked out."),),
            "the source's words (the account cannot sign in)",
        ),
    ],
)
def test_a_refusal_says_what_recognised_it(
    code: str | None, message: str | None, details: tuple[tuple[str, str], ...], recognised: str
) -> None:
    assert refused_sign_in(code, message, details) == recognised


def test_a_code_at_the_end_of_the_message_is_read_whatever_details_follow() -> None:
    """The message and the details are read as separate lines: a code that ends the message is
    still a whole word."""
    assert refused_sign_in(None, "AADSTS50126", [("Trace", "0f8fad5b")]) is not None
    assert refused_sign_in(None, "error 1326", [("Trace", "x")]) is not None
