"""Does an error answer say that a source refused a sign-in? (pure; no imports of the product)

The services wrap a source's refusal in many shapes, and the code alone does not tell:

* Power BI behind an on-premises gateway reports SQL Server's failed login 18456 as
  ``DM_GWPipeline_Gateway_DataSourceAccessError`` with ``UnderlyingErrorMessage`` "Login failed
  for user 'x'." and ``UnderlyingNativeErrorCode`` 18456 (microsoft/PowerBI-Cli issue 27), and
  other sources' refusals ("The user name or password is incorrect.") under the same code;
* Fabric reports the same failure from ``POST /connections`` with ``moreDetails`` entries
  "Could not login because the authentication failed." and 18456 (microsoft/semantic-link-labs
  issue 1025), or as ``IncorrectCredentials`` (its spec);
* the mashup engine adds ``Microsoft.Data.Mashup.CredentialError.*`` details
  (``Reason`` ``AccessUnauthorized``) to ``DM_GWPipeline_Gateway_InvalidConnectionCredentials``;
* Entra ID answers a password grant with ``AADSTS50126`` (invalid user name or password) and
  account states (locked ``AADSTS50053``, disabled ``AADSTS50057``, expired password
  ``AADSTS50055``).

:func:`refused_sign_in` reads the code, the message and every detail (code and value) and says
which of these it recognises. It is used two ways, both on the safe side: an answer to a
credential write that names a refused sign-in is a *rejection* (anything else unrecognised is
*in doubt*, never "not presented"), and a refresh failure that names one is a credential failure
the healer may cure. The texts are only searched, never quoted (they can carry customer content,
even a submitted secret).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["ACCOUNT_STATE_NATIVE_CODES", "REFUSED_CODES", "SignInRefusal", "refused_sign_in"]

REFUSED_CODES = frozenset(
    code.casefold()
    for code in (
        # Power BI: "Unable to Connect: Invalid connection credentials" (the source refused).
        "DM_GWPipeline_Gateway_InvalidConnectionCredentials",
        # Fabric's connection write and testConnection: "Failed to establish connection using
        # the Credentials input" (spec, Connections_UpdateConnection).
        "IncorrectCredentials",
        # Entra ID, to a resource-owner password grant: the user's password or account was checked
        # and refused (AADSTS error reference): invalid user name or password, no such user,
        # locked, password expired, disabled, MFA required or not registered.
        "AADSTS50126",
        "AADSTS50034",
        "AADSTS50053",
        "AADSTS50055",
        "AADSTS50057",
        "AADSTS50076",
        "AADSTS50079",
    )
)
"""Error codes that mean the source refused the credential, whatever else the answer says."""

# SQL Server's native errors of a refused login: 18456 (login failed), and the account states
# 18452 (untrusted domain), 18470 (disabled), 18486 (locked out), 18487/18488 (password expired
# or must be changed) - Microsoft's "MSSQLSERVER_18456" and neighbouring error pages.
_REFUSED_NATIVE = frozenset({"18456"})
ACCOUNT_STATE_NATIVE_CODES = frozenset({"18452", "18470", "18486", "18487", "18488"})

_NATIVE_DETAIL = "dm_errordetailnamecode_underlyingnativeerrorcode"
_MASHUP_REASON = "microsoft.data.mashup.credentialerror.reason"

# Wording of refused sign-ins (SQL Server, Windows logon errors 1326/1909, Entra ID, the mashup
# engine, ODBC/OLE DB drivers). Matched case-insensitively anywhere in the answer's texts.
_REFUSED_WORDING = re.compile(
    r"login failed for user|"
    r"user name or password is incorrect|username or password is incorrect|"
    r"invalid user ?name or password|unknown user name or bad password|logon failure|"
    r"authentication failed|could not login|failed to authenticate|"
    r"credentials provided for the .{0,80} are invalid|invalid credentials|"
    r"password is incorrect|incorrect password|wrong password|"
    r"aadsts50126\b|\b1326\b"
)
_ACCOUNT_WORDING = re.compile(
    r"account is (?:currently )?locked|locked out|account has been locked|account locked|"
    r"account is (?:currently )?disabled|account has been disabled|"
    r"password (?:of the account |for this account )?has expired|password must be changed|"
    r"account has expired|untrusted domain|"
    r"aadsts5005[357]\b|aadsts50055\b"
)


class SignInRefusal(str):
    """What recognised the refusal (a short phrase for a sentence, never the service's text)."""


def refused_sign_in(
    code: str | None, message: str | None = None, details: Iterable[tuple[str, str]] = ()
) -> SignInRefusal | None:
    """The refused sign-in an error answer names, or None when it names none.

    ``details`` are ``(code, value)`` pairs (Power BI's ``pbi.error.details``, Fabric's
    ``moreDetails``). An account that cannot sign in at all (locked, disabled, expired) counts:
    the source checked the account and refused it.
    """
    if code and code.strip().casefold() in REFUSED_CODES:
        return SignInRefusal(f"code {code}")
    pairs = [(c.strip().casefold(), v.strip()) for c, v in details]
    for name, value in pairs:
        if name in REFUSED_CODES:
            return SignInRefusal(f"detail {name}")
        if name == _NATIVE_DETAIL and value in _REFUSED_NATIVE | ACCOUNT_STATE_NATIVE_CODES:
            return SignInRefusal(f"native error {value}")
        if name == _MASHUP_REASON and value.casefold() == "accessunauthorized":
            return SignInRefusal("the mashup engine's credential error (AccessUnauthorized)")
    texts = [message] if message else []
    texts.extend(v for _, v in pairs)
    words = "\n".join(texts).casefold()
    if _ACCOUNT_WORDING.search(words):
        return SignInRefusal("the source's words (the account cannot sign in)")
    if _REFUSED_WORDING.search(words):
        return SignInRefusal("the source's words (a refused sign-in)")
    return None
