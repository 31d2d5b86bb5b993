"""Decision 1: what an answer to a presentation means (pure).

A *presentation* is anything that may make a source system check a credential: the credentials
PATCH of a gateway data source (Power BI has the gateway test it), the PATCH of a Fabric
connection and Fabric's ``testConnection`` (Fabric tests it; ``skipTestConnection`` is never
sent true), the resource-owner password grant of an OAuth2 caller-identity binding (Entra ID
checks the password), and a data source status check (the gateway signs in). Lockout counts
failed sign-ins, so every answer becomes one of four verdicts:

* ``ACCEPTED``: the source took it.
* ``REJECTED``: the answer names a refused sign-in (:func:`~remediation.rules.signins.refused_sign_in`:
  ``InvalidConnectionCredentials``, ``IncorrectCredentials``, SQL Server's 18456 under
  ``DM_GWPipeline_Gateway_DataSourceAccessError``, "Login failed", "password is incorrect",
  ``AADSTS50126``, a locked or disabled account...). Presenting the version again would be a
  second failed sign-in.
* ``NOT_PRESENTED``: the answer *proves* the source was never contacted. Only the answers in
  :data:`NOT_PRESENTED_ANSWERS` do, each with the evidence for it, and a request that was never
  sent. Nothing was counted; another try is harmless.
* ``IN_DOUBT``: everything else after sending - any other ``DM_GWPipeline_*`` code (a gateway
  that was unreachable or failed may have tried the source first), an unknown code, a body that
  cannot be read, a 5xx, a timeout or a lost answer. The source may have counted a failure.

**Fail closed.** The table lists what proves "not contacted"; nothing else does. An answer the
product does not recognise is in doubt, never "not presented": recognising too little costs an
operator a look, recognising too much costs the account a lockout.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from remediation.rules.diagnosis import diagnose_api_error
from remediation.rules.signins import refused_sign_in

__all__ = [
    "NOT_PRESENTED_ANSWERS",
    "Answer",
    "NotPresentedAnswer",
    "Service",
    "Verdict",
    "VerdictOf",
    "grant_answer",
    "not_presented_because",
    "undecryptable",
    "verdict_of",
]

Service = Literal["powerbi", "fabric", "entra"]
_NAMES: dict[str, str] = {"powerbi": "Power BI", "fabric": "Fabric", "entra": "Entra ID"}


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    NOT_PRESENTED = "not-presented"
    IN_DOUBT = "in-doubt"


@dataclass(frozen=True)
class VerdictOf:
    """A verdict and the sentence that explains it (no secret; safe to report)."""

    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class Answer:
    """An error answer to a presentation, as the service gave it.

    ``status`` is None when no answer came (timeout, dropped connection); ``sent`` is False only
    when the request certainly never left (connection refused, connect timeout, no request slot,
    a check before sending failed). ``code``, ``message`` and ``details`` are what the client
    could read of the body (``details``: Power BI's ``pbi.error.details``, Fabric's
    ``moreDetails``, as ``(code, value)``); all None/empty for a body that could not be read.
    """

    service: Service
    status: int | None
    code: str | None = None
    message: str | None = None
    details: tuple[tuple[str, str], ...] = ()
    sent: bool = True


@dataclass(frozen=True)
class NotPresentedAnswer:
    """One kind of answer that proves the source was not contacted.

    Matches ``service`` (``"*"``: any) and ``status``, and a code in ``codes`` (case-insensitive;
    ``""`` stands for an answer without a code). An answer that also names a refused sign-in
    never matches (the source was contacted after all).
    """

    service: Literal["*", "powerbi", "fabric", "entra"]
    status: int | None
    codes: frozenset[str] | None
    """None: any code."""
    why: str
    evidence: str


NOT_PRESENTED_ANSWERS: tuple[NotPresentedAnswer, ...] = (
    NotPresentedAnswer(
        "*",
        429,
        None,
        "the service throttled the request (HTTP 429); it was not served",
        "Power BI and Fabric document 429 with Retry-After as 'the service rate limit was exceeded' "
        "(Fabric spec: every connection operation; learn.microsoft.com/rest/api/fabric/articles/"
        "throttling); Entra ID's throttling answers 429 before evaluating the grant",
    ),
    NotPresentedAnswer(
        "powerbi",
        401,
        frozenset({"", "TokenExpired", "Unauthorized", "PowerBINotAuthorizedException"}),
        "Power BI refused the product's own token or rights (HTTP 401) before running the update",
        "the caller is authenticated and authorized (gateway admin, dataset owner) before Power BI "
        "contacts any gateway (DESIGN.md 'Who may call'); 401 with these codes is the bearer "
        "challenge of the front end, observed for expired tokens and for missing gateway rights",
    ),
    NotPresentedAnswer(
        "powerbi",
        403,
        frozenset({"", "TokenExpired", "Unauthorized", "Forbidden", "PowerBINotAuthorizedException"}),
        "Power BI refused the product's rights (HTTP 403) before running the update",
        "as for 401: PowerBINotAuthorizedException is the authorization check of the caller "
        "(not a gateway admin, not the dataset owner), made before the gateway is asked",
    ),
    NotPresentedAnswer(
        "powerbi",
        404,
        frozenset({"", "PowerBIEntityNotFound", "EntityNotFound", "NotFound"}),
        "Power BI does not know this gateway or data source (HTTP 404): nothing was updated",
        "swagger: 404 for an unknown gateway or data source; the entity is looked up before it can be tested",
    ),
    NotPresentedAnswer(
        "powerbi",
        400,
        frozenset({"BadRequest"}),
        "Power BI could not read the request body (HTTP 400 BadRequest): the update never ran",
        "BadRequest with OData 'target' details is ASP.NET's model-binding refusal, raised before "
        "the operation (DevScope/powerbi-powershell-modules issue 65: 'Bad JSON escape sequence', "
        "'… is a required parameter')",
    ),
    NotPresentedAnswer(
        "fabric",
        401,
        frozenset({"", "TokenExpired", "InvalidToken", "Unauthorized"}),
        "Fabric refused the product's own token (HTTP 401) before running the update",
        "the bearer token is validated by Fabric's front end before any operation "
        "(WWW-Authenticate challenge)",
    ),
    NotPresentedAnswer(
        "fabric",
        403,
        frozenset(
            {
                "",
                "Unauthorized",
                "Forbidden",
                "InsufficientPermissionsToManageConnection",
                "InsufficientPrivileges",
                "InsufficientScopes",
                "PrincipalTypeNotSupported",
            }
        ),
        "Fabric refused the product's rights on the connection (HTTP 403) before running it",
        "Fabric spec (Connections_UpdateConnection, Connections_TestConnection): "
        "InsufficientPermissionsToManageConnection - 'the caller has insufficient permissions to "
        "manage this connection', a check of the caller's role",
    ),
    NotPresentedAnswer(
        "fabric",
        404,
        frozenset({"", "EntityNotFound", "ItemNotFound", "ConnectionNotFound"}),
        "Fabric does not know this connection (HTTP 404): nothing was updated",
        "Fabric spec: EntityNotFound - 'the requested resource could not be found'",
    ),
    NotPresentedAnswer(
        "fabric",
        400,
        frozenset({"InvalidCredentialDetails", "InvalidConnectionDetails"}),
        "Fabric refused the request's shape before testing it (HTTP 400)",
        "Fabric spec (Connections_CreateConnection): InvalidCredentialDetails - 'the "
        "CredentialDetails input provided is not valid', InvalidConnectionDetails likewise: input "
        "validation, distinct from IncorrectCredentials ('failed to establish connection')",
    ),
    NotPresentedAnswer(
        "entra",
        400,
        frozenset({"AADSTS7000218", "AADSTS700016", "AADSTS90002", "AADSTS7000215", "AADSTS7000222"}),
        "Entra ID refused the product's app registration or tenant before checking the user",
        "AADSTS error reference: 700016 application not found, 90002 tenant not found, "
        "7000215/7000222 invalid or expired client secret, 7000218 client credentials missing - "
        "the client is authenticated before the resource owner's password is evaluated",
    ),
    NotPresentedAnswer(
        "entra",
        401,
        frozenset({"AADSTS7000218", "AADSTS700016", "AADSTS7000215", "AADSTS7000222", "invalid_client"}),
        "Entra ID refused the product's app registration before checking the user",
        "as above: invalid_client (HTTP 401) is the client's own authentication",
    ),
)
"""The answers that prove the source was not contacted. Nothing else does (fail closed)."""


def not_presented_because(answer: Answer) -> NotPresentedAnswer | None:
    """The row of :data:`NOT_PRESENTED_ANSWERS` that ``answer`` matches, if any."""
    if answer.status is None or not answer.sent:
        return None
    if refused_sign_in(answer.code, answer.message, answer.details) is not None:
        return None
    code = (answer.code or "").strip().casefold()
    for row in NOT_PRESENTED_ANSWERS:
        if row.service not in ("*", answer.service) or row.status != answer.status:
            continue
        if row.codes is None or code in {c.casefold() for c in row.codes}:
            return row
    return None


def verdict_of(answer: Answer) -> VerdictOf:
    """The verdict of an error answer to a presentation (see the module docstring)."""
    name = _NAMES[answer.service]
    if not answer.sent:
        return VerdictOf(Verdict.NOT_PRESENTED, f"not sent to {name}: {answer.message or 'no connection'}")
    if answer.status is None:
        return VerdictOf(
            Verdict.IN_DOUBT,
            f"the answer from {name} was lost ({answer.code or 'no answer'}); the source may have "
            "checked the value",
        )
    row = not_presented_because(answer)
    if row is not None:
        return VerdictOf(Verdict.NOT_PRESENTED, row.why + (f" ({answer.code})" if answer.code else ""))
    refusal = refused_sign_in(answer.code, answer.message, answer.details)
    code = answer.code or "no readable code"
    if refusal is not None:
        # What the account's state is, the source's words tell, whatever code carried them: a
        # gateway's code (its own category) must not hide that the account is locked or disabled;
        # nor may other words read first without the code (a quota's, a Key Vault detail) hide
        # what the code's own rule finds (InvalidConnectionCredentials reads the account's state).
        diagnosis = diagnose_api_error(answer.status, None, message=answer.message, details=answer.details)
        if not diagnosis.blocks_account:
            diagnosis = diagnose_api_error(
                answer.status, answer.code, message=answer.message, details=answer.details
            )
        said = f"{name} HTTP {answer.status} {code}; recognised by {refusal}"
        if diagnosis.blocks_account:  # no password cures it: say what a person must do first
            return VerdictOf(Verdict.REJECTED, f"the source refused the account ({said}). {diagnosis.fix}")
        return VerdictOf(Verdict.REJECTED, f"the source refused the sign-in ({said})")
    return VerdictOf(
        Verdict.IN_DOUBT,
        f"{name} answered HTTP {answer.status} ({code}), which does not prove the source was left "
        "alone: it may have checked the value",
    )


def grant_answer(code: str | None, error: str | None, message: str | None) -> Answer:
    """The :class:`Answer` of a resource-owner password grant that failed: ``code`` is the
    ``AADSTS…`` code, ``error`` the OAuth2 error or the failure's kind (``not_sent``: the request
    never left; ``connection_error`` without a code: no answer came)."""
    if error == "not_sent":
        return Answer("entra", None, code, message, sent=False)
    if error == "connection_error" and code is None:
        return Answer("entra", None, None, message)
    status = 429 if error == "throttled" else 401 if error == "invalid_client" else 400
    return Answer("entra", status, code or error, message)


def undecryptable(answer: Answer, *, key_changed: bool) -> bool:
    """Whether a gateway could not have read a credential sent to it: Power BI answered HTTP 400
    ``DM_GWPipeline_UnknownError`` (the gateway's "unknown error", which is what a gateway that
    cannot decrypt reports; nothing more is said) **and** the gateway's public key, read again
    right after, is not the one the credential was encrypted with. Only then may the same version
    be sent again at once under the new key: what the gateway holds the private key for was never
    in the request, so no source can have checked it. Without a changed key the answer is in
    doubt like any other ``DM_GWPipeline_*`` code."""
    return (
        key_changed
        and answer.service == "powerbi"
        and answer.status == 400
        and answer.code is not None
        and answer.code.casefold() == "dm_gwpipeline_unknownerror"
        and refused_sign_in(None, answer.message, answer.details) is None  # its code names no refusal
    )
