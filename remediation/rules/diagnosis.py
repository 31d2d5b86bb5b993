"""Why did it fail? Refresh failures and Power BI error codes -> a :class:`Category` and a fix.

The category decides what the healer may do. Only :attr:`Category.CREDENTIAL` may lead to a
credential change: a gateway that is offline, a database that is down or a query that breaks
would not be helped by presenting the password again, and every needless attempt counts toward
an account lockout. When in doubt the answer is therefore *not* credential.

Inputs are what Power BI returns, untrusted: refresh-history entries (their
``serviceExceptionJson`` read by :mod:`remediation.rules.service_errors` into a
:class:`~remediation.rules.service_errors.ServiceError`), status check codes and API error
answers. Nothing here raises on bad input, and no message quotes the service's free text (it can
carry customer content); messages are our words plus the error code.

One job: classifying a failure. The code tables, the wordings of the usual causes and the order
in which they are consulted are that job's data, kept beside the rules that read them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from remediation.rules.service_errors import ServiceError, parse_service_exception
from remediation.rules.signins import refused_sign_in

__all__ = [
    "Category",
    "Diagnosis",
    "diagnose_api_error",
    "diagnose_refresh",
    "diagnose_status_error",
]


class Category(StrEnum):
    """What kind of failure; only ``credential`` may lead to a credential change."""

    CREDENTIAL = "credential"
    GATEWAY = "gateway"
    SOURCE = "source"
    REFRESH_RUNNING = "refresh_running"
    QUOTA = "quota"
    PERMISSION = "permission"  # the caller may not do this (gateway admin / dataset owner missing)
    # The account cannot sign in whatever password it is given: locked, disabled, expired, its
    # password expired, or named in a form the source refuses. Not ``credential``: the healer
    # presents nothing on a refresh failure like this, and a PATCH answered like this blocks the
    # version for the account (every presentation would be one more failed sign-in).
    ACCOUNT = "account"
    # A Fabric connection's Key Vault reference could not be read (the secret, a pinned version,
    # the vault's network, the Key Vault connection's own sign-in): no value reached the source,
    # and no value the healer could push cures it (a copy would replace the reference). Nothing is
    # changed; the fix is a person's.
    REFERENCE = "reference"
    UNKNOWN = "unknown"
    NONE = "none"  # no failure


@dataclass(frozen=True)
class Diagnosis:
    """A classified failure: ``message`` says what happened, ``fix`` what a person should do."""

    category: Category
    code: str | None
    message: str
    fix: str
    cause: str | None = None
    """Which of the usual causes, where the source's words tell: ``password`` (the password
    changed), ``windows-share``, ``oauth-expired``, ``no-credentials``, ``account-locked``,
    ``account-disabled``, ``account-expired``, ``password-expired``, ``username-format``,
    ``database-access``; for a Key Vault reference, ``reference-not-found``,
    ``reference-version``, ``reference-network``, ``reference-credential-expired``,
    ``reference-denied``."""

    @property
    def blocks_account(self) -> bool:
        """True when nothing may be presented to the account until it is fixed at the source."""
        return self.category is Category.ACCOUNT

    @property
    def credential_related(self) -> bool:
        """True only for credential failures: the one category a new credential can cure."""
        return self.category is Category.CREDENTIAL

    @property
    def refused_sign_in(self) -> bool:
        """True when the failure is a source refusing a sign-in (a wrong password, a locked or
        disabled account): evidence against the credential the source was given. False for
        credential failures that involve no sign-in: no credentials stored at all
        (``no-credentials``, e.g. after a Take Over in the portal) or an OAuth2 token that lapsed
        (``oauth-expired``): those say nothing about the password."""
        if self.category is Category.ACCOUNT:
            return True
        return self.category is Category.CREDENTIAL and self.cause not in ("no-credentials", "oauth-expired")


# -- the code tables ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Rule:
    category: Category
    what: str
    fix: str


_FIX_CREDENTIAL = (
    "Make sure the bound Key Vault secret holds the source's current password; "
    "the healer applies its latest version to the data source."
)
_FIX_REJECTED = (
    "The source rejected the secret in Key Vault: put the right password in Key Vault as a new "
    "version; the healer will not present this version again."
)
_FIX_GATEWAY = (
    "Check that the on-premises data gateway is online, up to date and can reach Azure Service Bus; "
    "credentials were not changed."
)
_FIX_SOURCE = (
    "Check that the data source is running and reachable from the gateway and that the account "
    "may read the database; credentials were not changed."
)
_FIX_UNKNOWN = "Look at the refresh history in Power BI for the details; credentials were not changed."

_CREDENTIAL_CODES: dict[str, _Rule] = {
    # "Unable to Connect: Invalid connection credentials": the source refused the user name and
    # password the gateway presented. The symptom of a rotated password.
    "DM_GWPipeline_Gateway_InvalidConnectionCredentials": _Rule(
        Category.CREDENTIAL, "the data source rejected the stored credentials", _FIX_CREDENTIAL
    ),
    # The dataset's data source has no credentials at all (new dataset, new owner after a Take
    # Over). Swagger example "Failed refresh example".
    "ModelRefreshFailed_CredentialsNotSpecified": _Rule(
        Category.CREDENTIAL, "the data source has no credentials", _FIX_CREDENTIAL
    ),
    # The same, reported by the gateway pipeline for a gateway data source.
    "DM_GWPipeline_Gateway_CredentialsNotSpecified": _Rule(
        Category.CREDENTIAL, "the gateway data source has no credentials", _FIX_CREDENTIAL
    ),
    # A cloud data source without a credential (seen when deploying models over XMLA).
    "DMTS_DatasourceHasNoCredentialError": _Rule(
        Category.CREDENTIAL, "the data source has no credentials", _FIX_CREDENTIAL
    ),
    # OAuth2 credentials set through the API carry no refresh token and lapse after about an
    # hour; reapplying them with the owner's identity (caller identity) is the cure.
    "DMTS_OAuthTokenRefreshFailedError": _Rule(
        Category.CREDENTIAL,
        "the OAuth2 token of the data source expired and could not be refreshed",
        "Let the healer reapply the OAuth2 credentials with the owner's identity "
        '("oauth2": "caller-identity"); check that the owner\'s password in Key Vault is current.',
    ),
}

_GATEWAY_CODES: dict[str, _Rule] = {
    # Power BI could not reach the gateway through its Service Bus relay (service stopped,
    # machine off, outbound 443/5671 blocked). Swagger example "Gateway unreachable example".
    "DM_GWPipeline_Client_GatewayUnreachable": _Rule(
        Category.GATEWAY, "Power BI cannot reach the gateway", _FIX_GATEWAY
    ),
    # "Unknown error in enterprise gateway" (Microsoft's gateway troubleshooting page); on a
    # credential update it usually means the gateway could not decrypt what it was sent.
    "DM_GWPipeline_UnknownError": _Rule(
        Category.GATEWAY,
        "the gateway reported an unknown error",
        "Check the gateway's logs and that the gateway machine can reach the data source; "
        "credentials were not changed.",
    ),
    # The gateway did not answer in time (overloaded machine, slow source, long query).
    "DM_GWPipeline_Gateway_TimeoutError": _Rule(
        Category.GATEWAY,
        "the gateway timed out",
        "Check the gateway machine's load and its link to the data source, then refresh again.",
    ),
    # The gateway lost the spooled result of the query (service restart, disk full, cluster
    # member switch during the refresh).
    "DM_GWPipeline_Gateway_SpooledOperationMissing": _Rule(
        Category.GATEWAY,
        "the gateway lost the query result it was spooling",
        "Check that the gateway service stayed up and has disk space, then refresh again.",
    ),
}

_SOURCE_CODES: dict[str, _Rule] = {
    # "We reached the gateway, but the gateway can't access the on-premises data source."
    "DM_GWPipeline_Gateway_DataSourceAccessError": _Rule(
        Category.SOURCE, "the gateway cannot access the data source", _FIX_SOURCE
    ),
    # The mashup engine failed while reading data. With a Microsoft.Data.Mashup.CredentialError
    # detail it is a credential failure (checked first); without one it is the source or query.
    "DM_GWPipeline_Gateway_MashupDataAccessError": _Rule(
        Category.SOURCE, "the query could not read the data source", _FIX_SOURCE
    ),
    # The model failed to process (query error, type conversion, engine error); swagger example.
    "ModelRefresh_ShortMessage_ProcessingError": _Rule(
        Category.SOURCE,
        "the dataset failed to process its data",
        "Fix the query or the data named in the refresh history; credentials are not the cause.",
    ),
}

_QUOTA_RULE = _Rule(
    Category.QUOTA,
    "the refresh limit was reached",
    "Wait for the daily refresh limit to reset (8 a day on shared capacity) or move the dataset "
    "to a Premium or Fabric capacity.",
)
_QUOTA_CODES: dict[str, _Rule] = {
    # Daily refresh limit of a shared-capacity dataset.
    "ModelRefreshFailed_ExceededDailyRefreshLimit": _QUOTA_RULE,
    # The request-rate limit (HTTP 429 bodies, Power Automate's connector).
    "TooManyRequests": _QUOTA_RULE,
    "Request Throttled": _QUOTA_RULE,
}
# Wording of the limit messages, for errors that come with a generic code (InvalidRequest).
_QUOTA_WORDING = (
    "refresh limit",
    "number of refresh requests in last 24 hours exceeded limit",
    "exceeded the amount of requests allowed",
    "capacity limit",
)
_RUNNING_WORDING = ("another refresh request is already executing", "already executing")

_PERMISSION_CODES: dict[str, _Rule] = {
    # The caller is neither a gateway admin nor the dataset owner (service principals also get it
    # for OAuth2 data sources).
    "PowerBINotAuthorizedException": _Rule(
        Category.PERMISSION,
        "the caller is not allowed to change this data source",
        "Make the caller an admin of the gateway (on-premises data sources) or the dataset's owner "
        '(cloud data sources: set "takeOver": true in the binding).',
    ),
}
_PERMISSION_CODES["Unauthorized"] = _PERMISSION_CODES["PowerBINotAuthorizedException"]

_MASHUP_CREDENTIAL_DETAIL = "microsoft.data.mashup.credentialerror."
_MASHUP_REASON = "microsoft.data.mashup.credentialerror.reason"


def _folded(table: Mapping[str, _Rule]) -> dict[str, _Rule]:
    return {code.casefold(): rule for code, rule in table.items()}


_CREDENTIAL = _folded(_CREDENTIAL_CODES)
_GATEWAY = _folded(_GATEWAY_CODES)
_SOURCE = _folded(_SOURCE_CODES)
_QUOTA = _folded(_QUOTA_CODES)
_PERMISSION = _folded(_PERMISSION_CODES)


# -- the usual causes, from the source's own words -----------------------------------------------
# Only ever used to refine a classification (never quoted: the text can carry customer content).
# Account states come first: no password cures them. Wording from Microsoft's documentation of
# SQL Server errors 18452/18470/18486/18487/18488, Windows system errors 1326/1330/1331/1793/1909
# and Entra ID's AADSTS codes (see specs/SOURCES.md, "Diagnosis payloads").
_AFTER_UNLOCK = (
    "then present the version again with `python -m remediation heal --secret NAME "
    '--present-again` (HTTP: "presentAgain": true), or put a new version in Key Vault'
)
_ACCOUNT_RULES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    (
        "password-expired",
        (
            "password of the account has expired",
            "password of the account must be changed",
            "password for this account has expired",
            "password has expired",
            "password must be changed",
            "must change password",
            r"\b18487\b",
            r"\b18488\b",
            "aadsts50055",
        ),
        "the account's password expired at the source",
        "Change the password at the source and store it in Key Vault as a new version; the healer "
        "applies it. Presenting the old one would only add failed sign-ins, so nothing is presented.",
    ),
    (
        "account-locked",
        (
            "account is currently locked out",
            "account is locked",
            "account has been locked",
            "account locked",
            "locked out",
            r"\b18486\b",
            "aadsts50053",
        ),
        "the account is locked at the source",
        "Nothing is presented to a locked account: every attempt is another failed sign-in. Unlock "
        "it (SQL Server: ALTER LOGIN ... UNLOCK; Active Directory: "
        "Unlock account), find what kept sending an old password, " + _AFTER_UNLOCK + ".",
    ),
    (
        "account-disabled",
        (
            "account is disabled",
            "account is currently disabled",
            "account has been disabled",
            "user account is disabled",
            r"\b18470\b",
            "aadsts50057",
        ),
        "the account is disabled at the source",
        "Enable the account at the source (SQL Server: ALTER LOGIN <name> ENABLE; Active Directory: "
        "Enable account) or bind another one; nothing is presented meanwhile; " + _AFTER_UNLOCK + ".",
    ),
    (
        "account-expired",
        ("user's account has expired", "account has expired"),
        "the account expired at the source",
        "Extend the account's expiry date at the source (Active Directory: Account expires) or bind "
        "another one; nothing is presented meanwhile; " + _AFTER_UNLOCK + ".",
    ),
    (
        "username-format",
        ("untrusted domain", r"\b18452\b"),
        "the source refused the form of the user name (a user without its domain, or from an "
        "untrusted domain)",
        "Windows authentication needs DOMAIN\\user or user@domain.com: fix the binding's "
        "username (`bindings check` flags it), then " + _AFTER_UNLOCK.removeprefix("then ") + ".",
    ),
)
_ACCOUNT_PATTERNS = tuple(
    (cause, re.compile("|".join(w if w.startswith("\\") else re.escape(w) for w in words)), what, fix)
    for cause, words, what, fix in _ACCOUNT_RULES
)
_DATABASE_ACCESS = re.compile(r"cannot open database|\b4060\b")
_OAUTH_EXPIRED = re.compile(
    r"aadsts700082|aadsts70008\b|refresh token has expired|token has expired|access token is expired|"
    r"oauth.{0,40}expired|expired.{0,40}oauth"
)
_BAD_LOGON = re.compile(
    r"user name or password is incorrect|username or password is incorrect|"
    r"unknown user name or bad password|logon failure|\b1326\b"
)
_FILE_KINDS = frozenset({"file", "folder", "sharepoint folder"})
# Credential failures where no sign-in happened: the data source has no credentials at all.
_NO_CREDENTIALS = frozenset(
    code.casefold()
    for code in (
        "ModelRefreshFailed_CredentialsNotSpecified",
        "DM_GWPipeline_Gateway_CredentialsNotSpecified",
        "DMTS_DatasourceHasNoCredentialError",
    )
)
_REFUSED_SIGN_IN = _Rule(
    Category.CREDENTIAL,
    "the data source refused the sign-in",
    _FIX_CREDENTIAL
    + " If Key Vault's value is right, check that the account may sign in there (for Analysis "
    "Services, the gateway's account needs to read tokenGroupsGlobalAndUniversal, and a trust).",
)


def _texts(error: ServiceError) -> str:
    """The error's free text and detail values, case-folded, for wording checks only."""
    return "\n".join([error.description or "", *(v for _, v in error.details)]).casefold()


def _detail(error: ServiceError, code: str) -> str | None:
    wanted = code.casefold()
    for name, value in error.details:
        if name.casefold() == wanted:
            return re.sub(r"</?ccon>", "", value).strip()
    return None


def _refined(rule: _Rule, error: ServiceError) -> tuple[_Rule, str | None]:
    """The rule with the cause the source's words tell; an account state overrides credential,
    source and unknown rules (it only ever makes the healer present less)."""
    if rule.category not in (Category.CREDENTIAL, Category.SOURCE, Category.UNKNOWN):
        return rule, None
    texts = _texts(error)
    for cause, pattern, what, fix in _ACCOUNT_PATTERNS:
        if pattern.search(texts):
            return _Rule(Category.ACCOUNT, what, fix), cause
    if rule.category is not Category.CREDENTIAL:
        return rule, None
    if _DATABASE_ACCESS.search(texts):
        # SQL Server 4060: the login signed in; it cannot open the database. No password cures it.
        return (
            _Rule(
                Category.SOURCE,
                "the source accepted the sign-in but cannot open the database",
                "Check the database name of the data source and that the login has a user in that "
                "database; the password is not the problem, so it was not changed.",
            ),
            "database-access",
        )
    code = (error.code or "").casefold()
    if code in _NO_CREDENTIALS:
        return rule, "no-credentials"
    if code == "dmts_oauthtokenrefreshfailederror" or _OAUTH_EXPIRED.search(texts):
        return _CREDENTIAL["dmts_oauthtokenrefreshfailederror"], "oauth-expired"
    kind = (_detail(error, "Microsoft.Data.Mashup.CredentialError.DataSourceKind") or "").casefold()
    if kind in _FILE_KINDS or (_BAD_LOGON.search(texts) and "\\\\" in texts):
        return (
            _Rule(
                Category.CREDENTIAL,
                "the Windows credentials no longer work for the file share",
                "The healer applies the current Key Vault version; if the password did not change, "
                "check that the account may still read the share (share and NTFS permissions).",
            ),
            "windows-share",
        )
    return rule, "password"


# -- Key Vault references: Fabric could not read the secret a connection references ---------------
# The one code reported in the wild is DMS_CredentialsNotFoundInAzureKeyVaultErrorCode
# (terraform-provider-fabric #991: a reference with a pinned version). Any other ``DMS_*`` code that
# names Key Vault is read the same way. Which of the usual causes it was is told by the codes and
# words of Key Vault and Entra ID themselves in the failure's details, where Fabric passes them on:
# Key Vault's ``SecretNotFound`` ("A secret with (name/version) ... was not found"),
# ``ForbiddenByFirewall`` / ``ForbiddenByConnection`` (its network rules: "Client address is not
# authorized and caller is not a trusted service", "Public network access is disabled"), ``Forbidden``
# without a network word (an access policy or role missing), and Entra ID's AADSTS700082 / 50173 /
# ``invalid_grant`` (the Key Vault connection's OAuth 2.0 sign-in lapsed). [Unconfirmed: how Fabric
# nests these in a refresh failure; the sandbox plays one plausible shape (sandbox/fabric).]
_REFERENCE_CODE = re.compile(r"^dms_\w*keyvault\w*$")
_ADOPT_AGAIN = (
    "move the connection again with `python -m remediation adopt --connection <id> --vault-connection "
    "<id> --yes`, which sends a reference without a version"
)
_REFERENCE_RULES: tuple[tuple[str, re.Pattern[str], str, str], ...] = (
    (
        "reference-network",
        re.compile(
            r"forbiddenbyfirewall|forbiddenbyconnection|public network access is disabled|"
            r"not authorized and caller is not a trusted service|private link"
        ),
        "Fabric could not reach the Key Vault of the connection's reference from the public network",
        "Fabric reads Key Vault references over the public network: allow it in the vault's "
        "networking (public access, or the trusted Microsoft services exception), or keep this "
        "connection on pushed copies (`python -m remediation adopt --connection <id> --release`). "
        "Credentials were not changed.",
    ),
    (
        "reference-credential-expired",
        re.compile(r"aadsts700082|aadsts50173|invalid_grant|token has expired|refresh token|expired"),
        "the sign-in of the connection's Key Vault connection has expired",
        "The Key Vault connection signs in to the vault with OAuth 2.0 and that sign-in lapsed: in "
        "Manage connections and gateways, tab Azure Key Vault references, edit its credentials and "
        "sign in again. Credentials were not changed.",
    ),
    (
        "reference-denied",
        re.compile(r"\bforbidden\b|does not have secrets get permission|accessdenied|not authorized"),
        "the Key Vault connection may not read the referenced secret",
        "Grant the identity of the Key Vault connection Get and List on the vault's secrets (Key "
        "Vault Secrets User). Credentials were not changed.",
    ),
    (
        "reference-version",
        re.compile(r"version"),
        "the connection's Key Vault reference pins a version of the secret",
        "Key Vault versioning is not supported in references (terraform-provider-fabric #991): "
        + _ADOPT_AGAIN
        + ". Credentials were not changed.",
    ),
)
_REFERENCE_NOT_FOUND = (
    "reference-not-found",
    "Fabric could not read the secret the connection's Key Vault reference names",
    "Check that the secret exists and is enabled in the vault the reference's Key Vault connection "
    "points at. If it does, the reference may pin a version (Key Vault versioning is not "
    "supported): " + _ADOPT_AGAIN + ". Credentials were not changed.",
)


def _reference_failure(error: ServiceError) -> tuple[str, str, str] | None:
    """``(cause, what, fix)`` when ``error`` says a Key Vault reference could not be read."""
    codes = [error.code or "", *(name for name, _ in error.details)]
    if not any(_REFERENCE_CODE.match(code.strip().casefold()) for code in codes):
        return None
    texts = "\n".join([*codes, error.description or "", *(v for _, v in error.details)]).casefold()
    for cause, pattern, what, fix in _REFERENCE_RULES:
        if pattern.search(texts.replace("dms_credentialsnotfoundinazurekeyvaulterrorcode", "")):
            return cause, what, fix
    return _REFERENCE_NOT_FOUND


# -- classification -------------------------------------------------------------------------------
def _classify(error: ServiceError, context: str) -> Diagnosis:
    code = error.code
    folded = (code or "").casefold()
    wording = (error.description or "").casefold()

    def diagnosis(rule: _Rule) -> Diagnosis:
        rule, cause = _refined(rule, error)
        return Diagnosis(
            rule.category,
            code,
            f"{context}: {rule.what}" + (f" ({code})" if code else ""),
            rule.fix,
            cause,
        )

    # A Key Vault reference that could not be read: no value reached the source, none pushed cures it.
    reference = _reference_failure(error)
    if reference is not None:
        cause, what, fix = reference
        return Diagnosis(
            Category.REFERENCE, code, f"{context}: {what}" + (f" ({code})" if code else ""), fix, cause
        )
    # Gateway faults first: if the gateway itself is the problem, credentials cannot be the cure.
    if folded in _GATEWAY:
        return diagnosis(_GATEWAY[folded])
    if folded in _QUOTA or any(w in wording for w in _QUOTA_WORDING):
        return diagnosis(_QUOTA_RULE)
    if any(w in wording for w in _RUNNING_WORDING):
        return diagnosis(_RUNNING_RULE)
    if folded in _PERMISSION:
        return diagnosis(_PERMISSION[folded])
    if folded in _CREDENTIAL:
        return diagnosis(_CREDENTIAL[folded])
    mashup = _mashup_credential_error(error)
    if mashup is not None:
        return diagnosis(mashup)
    if refused_sign_in(error.code, error.description, error.details) is not None:
        # A refusal in another shape, e.g. SQL Server's login failed (18456) reported by the
        # gateway as DM_GWPipeline_Gateway_DataSourceAccessError (microsoft/PowerBI-Cli issue 27).
        return diagnosis(_REFUSED_SIGN_IN)
    if folded in _SOURCE:
        return diagnosis(_SOURCE[folded])
    if folded.startswith("dm_gwpipeline_"):
        # Any other gateway pipeline code (the gateway has many internal ones): not credentials.
        return diagnosis(
            _Rule(
                Category.GATEWAY,
                "the gateway failed",
                "Check the gateway's logs; credentials were not changed.",
            )
        )
    return diagnosis(_Rule(Category.UNKNOWN, "an unclassified failure", _FIX_UNKNOWN))


def _mashup_credential_error(error: ServiceError) -> _Rule | None:
    """A rule when the details carry the mashup engine's ``CredentialError.*`` entries."""
    details = [(c.casefold(), v) for c, v in error.details]
    if not any(c.startswith(_MASHUP_CREDENTIAL_DETAIL) for c, _ in details):
        return None
    reasons = {v.strip().casefold() for c, v in details if c == _MASHUP_REASON}
    if "accessforbidden" in reasons:
        # Signed in, but not allowed to read: a permission on the source, not a wrong password.
        return _Rule(
            Category.SOURCE,
            "the data source accepted the sign-in but denied access",
            "Grant the bound account access to the data (database role, share, site permission); "
            "the password is not the problem.",
        )
    return _Rule(Category.CREDENTIAL, "the data source rejected the credentials", _FIX_CREDENTIAL)


_RUNNING_RULE = _Rule(
    Category.REFRESH_RUNNING,
    "a refresh is already running",
    "Wait for the running refresh to finish before starting another.",
)
_NONE = Diagnosis(Category.NONE, None, "The refresh completed.", "Nothing to fix.")


def diagnose_refresh(entry: Mapping[str, object]) -> Diagnosis:
    """Classify one refresh-history entry (``GET .../refreshes`` item).

    ``Completed`` -> none; ``Unknown``/``NotStarted`` (in progress) -> refresh_running; otherwise
    the entry's ``serviceExceptionJson`` (or, failing that, its latest attempt's) decides.
    """
    status = entry.get("status")
    status_text = status.strip() if isinstance(status, str) else ""
    folded = status_text.casefold()
    if folded == "completed":
        return _NONE
    if folded in ("unknown", "notstarted", "inprogress"):
        return Diagnosis(
            Category.REFRESH_RUNNING,
            None,
            "The refresh is still running.",
            _RUNNING_RULE.fix,
        )
    error = parse_service_exception(entry.get("serviceExceptionJson"))
    if error is None or error.code is None:
        error = _latest_attempt_error(entry.get("refreshAttempts")) or error
    if error is None or (error.code is None and not error.details and not error.description):
        if folded == "cancelled":
            return Diagnosis(
                Category.UNKNOWN,
                None,
                "The refresh was cancelled.",
                "Start a new refresh if it is still needed.",
            )
        what = f"Refresh {status_text or 'ended'} without an error code."
        return Diagnosis(Category.UNKNOWN, None, what, _FIX_UNKNOWN)
    return _classify(error, "Refresh failed")


def _latest_attempt_error(attempts: object) -> ServiceError | None:
    if not isinstance(attempts, Sequence) or isinstance(attempts, str):
        return None
    for attempt in reversed(attempts):
        if isinstance(attempt, Mapping):
            error = parse_service_exception(attempt.get("serviceExceptionJson"))
            if error is not None and error.code is not None:
                return error
    return None


def diagnose_status_error(code: str) -> Diagnosis:
    """Classify the code of a 400 from ``GET /gateways/{g}/datasources/{d}/status``."""
    error = parse_service_exception(code) or ServiceError(code.strip() or None)
    return _classify(error, "Data source check failed")


def diagnose_api_error(
    status: int,
    code: str | None,
    *,
    message: str | None = None,
    detail_codes: Sequence[str] = (),
    details: Sequence[tuple[str, str]] = (),
) -> Diagnosis:
    """Classify a Power BI API error answer, chiefly the credential PATCH's.

    On the PATCH, Power BI has the gateway test the new credentials: a 400 with
    ``DM_GWPipeline_Gateway_InvalidConnectionCredentials`` means the source rejected the secret
    (that version must not be presented again), and ``DM_GWPipeline_UnknownError`` means the
    gateway could not use what it was sent (usually encryption: a stale public key).
    ``message`` (the error's text) and the values of ``details`` (``pbi.error.details`` as
    ``(code, value)``) are only searched for known wording, never quoted: a rejection that says
    the account is locked, disabled or expired is :attr:`Category.ACCOUNT`.
    """
    context = "Power BI refused the request"
    error = ServiceError(
        code.strip() if code and code.strip() else None,
        message,
        tuple(details) + tuple((c, "") for c in detail_codes if c not in {d for d, _ in details}),
    )
    folded = (error.code or "").casefold()
    suffix = f" ({error.code})" if error.code else ""
    if status == 429:
        return Diagnosis(
            Category.QUOTA,
            error.code,
            f"{context}: too many requests (HTTP 429){suffix}",
            "Power BI is throttling: wait for the Retry-After interval before calling again.",
        )
    if status in (401, 403) or folded in _PERMISSION:
        rule = _PERMISSION_CODES["PowerBINotAuthorizedException"]
        return Diagnosis(
            rule.category, error.code, f"{context}: {rule.what} (HTTP {status}){suffix}", rule.fix
        )
    if status == 404:
        return Diagnosis(
            Category.UNKNOWN,
            error.code,
            f"{context}: not found (HTTP 404){suffix}",
            "Check the ids in the bindings file: Power BI does not know this gateway or data source, "
            "or the caller cannot see it.",
        )
    if status >= 500:
        return Diagnosis(
            Category.UNKNOWN,
            error.code,
            f"{context}: service error (HTTP {status}){suffix}",
            "Power BI had an internal error: try again later; credentials were not changed.",
        )
    if folded == "dm_gwpipeline_gateway_invalidconnectioncredentials":
        rule, cause = _refined(_CREDENTIAL[folded], error)
        if rule.category is not Category.CREDENTIAL:
            return Diagnosis(rule.category, error.code, f"{context}: {rule.what}{suffix}", rule.fix, cause)
        return Diagnosis(
            Category.CREDENTIAL,
            error.code,
            f"{context}: the data source rejected the new credentials{suffix}",
            _FIX_REJECTED,
            cause,
        )
    if folded == "dm_gwpipeline_unknownerror":
        return Diagnosis(
            Category.GATEWAY,
            error.code,
            f"{context}: the gateway could not use the credentials sent to it{suffix}",
            "Check that the gateway is online and up to date; credentials encrypted with an outdated "
            "gateway key are refused too.",
        )
    return _classify(error, context)
