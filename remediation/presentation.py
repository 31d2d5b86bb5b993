"""What the answer to a presentation of a credential says (pure).

A *presentation* is anything that makes a source system check a credential: the credentials
PATCH (Power BI has the gateway test it), or the resource-owner password grant of an OAuth2
caller-identity binding (Entra ID checks the password). Lockout counts failed presentations, so
the healer needs more than "it worked or not" from each answer:

* ``ACCEPTED``: the source took it.
* ``REJECTED``: the source refused the credential itself; presenting it again is a second failed
  sign-in. Also an account that is locked, disabled, expired or needs MFA: presenting again
  cannot help either.
* ``NOT_PRESENTED``: the request certainly never reached the source (429, not sent, refused for
  permission or encryption before any test). Nothing was counted; another try is harmless.
* ``IN_DOUBT``: the request may have been served and the answer was lost (timeout, dropped
  connection, 5xx, an answer that cannot be read). The source may have counted a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from remediation.diagnosis import diagnose_api_error
from remediation.http import ApiConnectionError, ApiError
from remediation.identity import INVALID_CREDENTIAL_CODES, LOCKED_CODES, AuthenticationError

__all__ = ["Verdict", "VerdictOf", "grant_verdict", "patch_verdict"]


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


# Entra ID answers to a password grant that mean "the account cannot sign in like this": the
# password was checked (or the account is unusable), and presenting it again would not help.
_STOP_CODES = frozenset({"AADSTS50055", "AADSTS50057", "AADSTS50076", "AADSTS50079"}) | LOCKED_CODES
# Answers about the product's own app registration or tenant: nothing of the user was checked.
_APP_CODES = frozenset({"AADSTS7000218", "AADSTS700016", "AADSTS90002", "AADSTS7000215", "AADSTS7000222"})


def patch_verdict(exc: ApiError) -> VerdictOf:
    """The verdict of a credentials PATCH that raised ``exc``."""
    if isinstance(exc, ApiConnectionError):
        if not exc.sent:
            return VerdictOf(Verdict.NOT_PRESENTED, f"not sent: {exc}")
        return VerdictOf(Verdict.IN_DOUBT, f"the answer was lost ({exc.code or 'no answer'})")
    status = exc.status or 0
    if status == 429:
        return VerdictOf(
            Verdict.NOT_PRESENTED, "Power BI throttled the request (HTTP 429); it was not served"
        )
    if status >= 500 or status < 400:
        return VerdictOf(
            Verdict.IN_DOUBT,
            f"Power BI answered HTTP {status} ({exc.code or 'no code'}); it may have tested it",
        )
    diagnosis = diagnose_api_error(status, exc.code, message=exc.message, details=exc.details)
    if status == 400 and diagnosis.blocks_account:
        # Locked, disabled, expired, or a user name the source refuses: no retry can help.
        return VerdictOf(Verdict.REJECTED, f"the source refused the account ({exc.code}): {diagnosis.fix}")
    if status == 400 and diagnosis.credential_related:
        return VerdictOf(Verdict.REJECTED, f"the source rejected it ({exc.code}). {diagnosis.fix}")
    return VerdictOf(Verdict.NOT_PRESENTED, f"{diagnosis.message}. {diagnosis.fix}")


def grant_verdict(exc: AuthenticationError) -> VerdictOf:
    """The verdict of a password grant (caller identity) that raised ``exc``."""
    hint = f" ({exc.hint})" if getattr(exc, "hint", None) else ""
    if exc.code in _APP_CODES:
        return VerdictOf(Verdict.NOT_PRESENTED, f"the product's app registration was refused: {exc}")
    if exc.code in INVALID_CREDENTIAL_CODES:
        return VerdictOf(Verdict.REJECTED, f"Entra ID rejected the password ({exc.code}){hint}")
    if exc.code in _STOP_CODES:
        return VerdictOf(Verdict.REJECTED, f"Entra ID refused the sign-in ({exc.code}){hint}")
    if exc.error == "not_sent":
        return VerdictOf(Verdict.NOT_PRESENTED, f"the sign-in was not sent: {exc}")
    if exc.error == "connection_error" and exc.code is None:
        return VerdictOf(Verdict.IN_DOUBT, f"the sign-in got no answer: {exc}")
    return VerdictOf(Verdict.IN_DOUBT, f"the sign-in failed and may have been counted: {exc}")
