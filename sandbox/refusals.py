"""The catalogue of answers to a refused sign-in: every shape the real services are seen to use.

A credential written to Power BI or Fabric is tested at the source; so are a refresh and a data
source status check (DESIGN.md, "What an answer to a credential write means"). When the source
refuses the sign-in, the *account* counts one failed sign-in whatever the service then says --
but what it says varies with the source and the path the error took. The sandbox plays each
shape, chosen per data source (``sb.powerbi.set_refusal``) and per connection
(``sb.fabric.set_refusal``), so the product's rules are tested against all of them. Only the
answer's body changes with the shape: the sign-in itself, and its counting by the source's
account (:mod:`sandbox.accounts`), are the same for every shape.

Power BI (:data:`PowerBIRefusal`, rendered by :func:`powerbi_refusal`; HTTP 400 on the credential
``PATCH`` and on ``GET .../status``, the same document as a string in a refresh's
``serviceExceptionJson``):

``invalid-credentials`` (the default)
    ``DM_GWPipeline_Gateway_InvalidConnectionCredentials`` with the Mashup ``CredentialError``
    details (``DataSourceKind``, ``DataSourcePath``, ``Reason: AccessUnauthorized``) and
    ``exceptionCulprit``. Source: a refresh failure of a custom connector quoted in
    migueesc123/PowerBIRESTAPI issue 178 (``specs/powerbi/service_exception_examples.md`` §5);
    the envelope is the swagger's own 400 example of ``Gateways_GetDatasourceStatus``. Locked:
    the message is SQL Server's error 18486.
``sql-login-failed``
    SQL Server's failed login 18456 behind a gateway: ``DM_GWPipeline_Gateway_DataSourceAccessError``
    with ``UnderlyingErrorMessage`` "Login failed for user 'x'." and ``UnderlyingNativeErrorCode``
    18456, *no* Mashup details and *no* ``exceptionCulprit``. Source: the body quoted verbatim in
    microsoft/PowerBI-Cli issue 27 (user ``admin`` there). Locked: error 18486, "Login failed for
    user 'x' because the account is currently locked out. The system administrator can unlock it."
``password-incorrect``
    ``DM_GWPipeline_Gateway_DataSourceAccessError`` whose ``UnderlyingErrorMessage`` is Windows'
    logon failure "The user name or password is incorrect." (``ERROR_LOGON_FAILURE``, HResult
    0x8007052E = -2147023570; no native SQL code). Source: DESIGN.md (other sources say so under
    the same code); the message and HResult are Windows' own text for error 1326. Locked:
    "The referenced account is currently locked out and may not be logged on to." (error 1909,
    HResult -2147022987).
``unknown-gateway-code``
    A ``DM_GWPipeline_*`` code the product has never seen (``DM_GWPipeline_Gateway_ProviderError``)
    whose message says nothing of what happened ("An error happened while reading data from the
    provider."). Invented on purpose: the code family is real, this member is not documented.
``unknown-code``
    A code outside the gateway family that nobody documents (``DMTS_UnexpectedError``) in the
    plain envelope, no details. Invented on purpose.
``unreadable``
    HTTP 400 whose body is not JSON at all: an HTML error page served as ``text/html`` (what a
    proxy or front door answers); in ``serviceExceptionJson`` a string that is not JSON.
``echo``
    Like ``invalid-credentials``, but ``UnderlyingErrorMessage`` echoes the submitted value the
    way ASP.NET validation messages do ("The value '...' is not valid for password."): services
    echo submitted values (DESIGN.md), and the product must redact them. Where nothing was
    submitted (a refresh, a status check) it is ``invalid-credentials``.

Fabric (:data:`FabricRefusal`, rendered by :func:`fabric_refusal`; HTTP 400 on ``PATCH
/v1/connections/{id}`` and ``POST /v1/connections/{id}/testConnection``, in Fabric's
``ErrorResponse``: ``errorCode``, ``message``, ``requestId``, ``moreDetails[{errorCode, message}]``,
``specs/fabric/common/definitions.json``):

``incorrect-credentials`` (the default)
    ``IncorrectCredentials`` "Failed to establish connection using the Credentials input" (the
    spec's declared error of Update and TestConnection).
``sql-login-failed``
    The body quoted in microsoft/semantic-link-labs issue 1025 (``POST /v1/connections``):
    ``DM_GWPipeline_Gateway_DataSourceAccessError``, ``message`` "PowerBI service client received
    error HTTP response. HttpStatus: 400. PowerBIErrorCode: ...", ``moreDetails`` with "Could not
    login because the authentication failed." and native error 18456. Locked: 18486 and SQL
    Server's locked-out message.
``password-incorrect``, ``unknown-gateway-code``, ``unknown-code``, ``unreadable``, ``echo``
    As for Power BI, in Fabric's shape (a Power BI error passed through: the same ``message``
    pattern and ``moreDetails``). ``echo``'s ``message`` echoes the submitted value.

A refresh of a semantic model bound to a Fabric connection fails in Power BI's terms: the
connection's shape is played by the Power BI shape of the same name
(:data:`POWERBI_SHAPE_OF_FABRIC`; ``incorrect-credentials`` is ``invalid-credentials``).

Everything here is pure: no I/O, no clock, no state.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = [
    "FABRIC_REFUSALS",
    "GATEWAY_DATA_SOURCE_ACCESS_ERROR",
    "INVALID_CONNECTION_CREDENTIALS",
    "POWERBI_REFUSALS",
    "POWERBI_SHAPE_OF_FABRIC",
    "UNREADABLE_BODY",
    "FabricRefusal",
    "PowerBIRefusal",
    "Refused",
    "credentials_error",
    "fabric_error",
    "fabric_refusal",
    "pbi_error",
    "powerbi_refusal",
]

INVALID_CONNECTION_CREDENTIALS = "DM_GWPipeline_Gateway_InvalidConnectionCredentials"
GATEWAY_DATA_SOURCE_ACCESS_ERROR = "DM_GWPipeline_Gateway_DataSourceAccessError"
UNKNOWN_GATEWAY_CODE = "DM_GWPipeline_Gateway_ProviderError"
UNKNOWN_CODE = "DMTS_UnexpectedError"
INCORRECT_CREDENTIALS = "IncorrectCredentials"
INCORRECT_CREDENTIALS_MESSAGE = "Failed to establish connection using the Credentials input"

UNREADABLE_BODY = "<html><body>Bad Request</body></html>"
UNREADABLE_CONTENT_TYPE = "text/html; charset=utf-8"

PowerBIRefusal = Literal[
    "invalid-credentials",
    "sql-login-failed",
    "password-incorrect",
    "unknown-gateway-code",
    "unknown-code",
    "unreadable",
    "echo",
]
"""How Power BI answers a refused sign-in at a data source's source (see the module docstring)."""

FabricRefusal = Literal[
    "incorrect-credentials",
    "sql-login-failed",
    "password-incorrect",
    "unknown-gateway-code",
    "unknown-code",
    "unreadable",
    "echo",
]
"""How Fabric answers a refused sign-in at a connection's source (see the module docstring)."""

POWERBI_REFUSALS: tuple[PowerBIRefusal, ...] = get_args(PowerBIRefusal)
FABRIC_REFUSALS: tuple[FabricRefusal, ...] = get_args(FabricRefusal)

POWERBI_SHAPE_OF_FABRIC: dict[FabricRefusal, PowerBIRefusal] = {
    "incorrect-credentials": "invalid-credentials",
    "sql-login-failed": "sql-login-failed",
    "password-incorrect": "password-incorrect",
    "unknown-gateway-code": "unknown-gateway-code",
    "unknown-code": "unknown-code",
    "unreadable": "unreadable",
    "echo": "echo",
}
"""The Power BI shape a refresh through a Fabric connection fails with, by the connection's shape."""

# The underlying errors of the gateway family: (error code, HResult, native code or None, message).
_SQL_LOGIN_FAILED = "-2146232060"  # SqlException's HResult (0x80131904)
_LOGON_FAILURE = "-2147023570"  # HRESULT_FROM_WIN32(ERROR_LOGON_FAILURE), 0x8007052E
_ACCOUNT_LOCKED_OUT = "-2147022987"  # HRESULT_FROM_WIN32(ERROR_ACCOUNT_LOCKED_OUT), 0x80070775
_E_FAIL = "-2147467259"  # 0x80004005, what the mashup engine reports for most source errors

_DETAIL = "DM_ErrorDetailNameCode_"


@dataclass(frozen=True)
class Refused:
    """A rendered refusal: what goes on the wire.

    ``body`` is the JSON document (``None`` when the answer is not JSON); ``text`` is the body as
    text, compact JSON or the unreadable page (for Power BI also what a refresh's
    ``serviceExceptionJson`` holds; the server may space JSON differently); ``content_type`` its
    media type. ``code`` is the error code the body carries, ``None`` when there is none to read.
    """

    status: int
    body: dict[str, Any] | None
    text: str
    content_type: str
    code: str | None

    @property
    def readable(self) -> bool:
        return self.body is not None

    @property
    def payload(self) -> dict[str, Any] | bytes:
        """What the sandbox's server sends (a dict is JSON-encoded; bytes go as they are)."""
        return self.body if self.body is not None else self.text.encode("utf-8")

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.body is not None else {"Content-Type": self.content_type}


def _json(body: dict[str, Any]) -> Refused:
    """A JSON refusal; its code is Power BI's ``error.code`` or Fabric's ``errorCode``."""
    code = body["error"]["code"] if "error" in body else body["errorCode"]
    text = json.dumps(body, separators=(",", ":"))
    return Refused(400, body, text, "application/json; charset=utf-8", code)


def _unreadable() -> Refused:
    return Refused(400, None, UNREADABLE_BODY, UNREADABLE_CONTENT_TYPE, None)


# -- Power BI ----------------------------------------------------------------------------------
def pbi_error(
    code: str, details: Iterable[Mapping[str, Any]] = (), *, exception_culprit: bool = True
) -> dict[str, Any]:
    """The Power BI service error envelope (also what ``serviceExceptionJson`` holds, as a string).

    ``exception_culprit=False`` leaves ``exceptionCulprit`` out, as the real 18456 body does."""
    inner: dict[str, Any] = {"code": code, "parameters": {}, "details": [dict(d) for d in details]}
    if exception_culprit:
        inner["exceptionCulprit"] = 1
    return {"error": {"code": code, "pbi.error": inner}}


def _detail(code: str, value: str) -> dict[str, Any]:
    return {"code": code, "detail": {"type": 1, "value": value}}


def _locked_out_message(user: str) -> str:
    return (
        f"Login failed for user '{user}' because the account is currently locked out. "
        "The system administrator can unlock it."
    )


def _echo_message(presented: str) -> str:
    return f"The value '{presented}' is not valid for password."


def credentials_error(
    kind: str, path: str, account: str, *, locked: bool = False, message: str | None = None
) -> dict[str, Any]:
    """``DM_GWPipeline_Gateway_InvalidConnectionCredentials`` as a refresh or an update reports
    it for the source of ``kind`` at ``path``; ``locked``: the source's message is SQL Server's
    error 18486; ``message`` replaces the underlying message (the ``echo`` shape)."""
    if message is None:
        message = (
            f"<ccon>{_locked_out_message(account)} </ccon>"
            if locked
            else f"<ccon>The credentials provided for the {kind} source are invalid. "
            f"(Source at {path}.)</ccon>"
        )
    return pbi_error(
        INVALID_CONNECTION_CREDENTIALS,
        [
            _detail(_DETAIL + "UnderlyingErrorCode", _E_FAIL),
            _detail(_DETAIL + "UnderlyingErrorMessage", message),
            _detail(_DETAIL + "UnderlyingHResult", _E_FAIL),
            _detail("Microsoft.Data.Mashup.CredentialError.DataSourceKind", kind),
            _detail("Microsoft.Data.Mashup.CredentialError.DataSourcePath", f"<ccon>{path}</ccon>"),
            _detail("Microsoft.Data.Mashup.CredentialError.Reason", "AccessUnauthorized"),
        ],
    )


def _underlying(user: str, shape: str, *, locked: bool) -> list[tuple[str, str]]:
    """The ``DM_ErrorDetailNameCode_*`` pairs of the gateway-family shapes, in the services' order."""
    if shape == "sql-login-failed":
        message = _locked_out_message(user) if locked else f"Login failed for user '{user}'."
        return [
            ("UnderlyingErrorCode", _SQL_LOGIN_FAILED),
            ("UnderlyingErrorMessage", message),
            ("UnderlyingHResult", _SQL_LOGIN_FAILED),
            ("UnderlyingNativeErrorCode", "18486" if locked else "18456"),
        ]
    if shape == "password-incorrect":
        hresult = _ACCOUNT_LOCKED_OUT if locked else _LOGON_FAILURE
        message = (
            "The referenced account is currently locked out and may not be logged on to."
            if locked
            else "The user name or password is incorrect."
        )
        return [
            ("UnderlyingErrorCode", hresult),
            ("UnderlyingErrorMessage", message),
            ("UnderlyingHResult", hresult),
        ]
    # unknown-gateway-code: says nothing of what happened, locked or not
    return [
        ("UnderlyingErrorCode", _E_FAIL),
        ("UnderlyingErrorMessage", "An error happened while reading data from the provider."),
        ("UnderlyingHResult", _E_FAIL),
    ]


def powerbi_refusal(
    shape: PowerBIRefusal,
    *,
    kind: str,
    path: str,
    user: str,
    locked: bool = False,
    presented: str | None = None,
) -> Refused:
    """Power BI's answer to a refused sign-in at the source of ``kind`` (e.g. ``SQL``) at ``path``
    (``server;database``) as ``user`` (the account's user name), in ``shape``.

    ``locked``: the source refused because the account is locked (the shapes that can say so
    do). ``presented``: the secret the request submitted (``None`` for a refresh or a status
    check, which submit nothing); only ``echo`` uses it.
    """
    if shape == "invalid-credentials" or (shape == "echo" and presented is None):
        return _json(credentials_error(kind, path, user, locked=locked))
    if shape == "echo":
        assert presented is not None
        body = credentials_error(kind, path, user, locked=locked, message=_echo_message(presented))
        return _json(body)
    if shape in ("sql-login-failed", "password-incorrect"):
        # No Mashup CredentialError details, no exceptionCulprit: the real 18456 body has neither.
        details = [_detail(_DETAIL + c, v) for c, v in _underlying(user, shape, locked=locked)]
        return _json(pbi_error(GATEWAY_DATA_SOURCE_ACCESS_ERROR, details, exception_culprit=False))
    if shape == "unknown-gateway-code":
        details = [_detail(_DETAIL + c, v) for c, v in _underlying(user, shape, locked=locked)]
        return _json(pbi_error(UNKNOWN_GATEWAY_CODE, details))
    if shape == "unknown-code":
        return _json(pbi_error(UNKNOWN_CODE))
    if shape == "unreadable":
        return _unreadable()
    raise ValueError(f"unknown Power BI refusal shape {shape!r}; one of {', '.join(POWERBI_REFUSALS)}")


# -- Fabric ------------------------------------------------------------------------------------
def fabric_error(code: str, message: str, *, more: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """Fabric's ``ErrorResponse`` (``moreDetails`` only when there are some)."""
    body: dict[str, Any] = {"errorCode": code, "message": message, "requestId": str(uuid.uuid4())}
    details = [{"errorCode": c, "message": m} for c, m in more]
    if details:
        body["moreDetails"] = details
    return body


def _passed_through(code: str, more: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """A Power BI error as Fabric passes it on (semantic-link-labs issue 1025's key order)."""
    body: dict[str, Any] = {"requestId": str(uuid.uuid4()), "errorCode": code}
    details = [{"errorCode": c, "message": m} for c, m in more]
    if details:
        body["moreDetails"] = details
    body["message"] = (
        f"PowerBI service client received error HTTP response. HttpStatus: 400. PowerBIErrorCode: {code}"
    )
    return body


def fabric_refusal(
    shape: FabricRefusal, *, user: str, locked: bool = False, presented: str | None = None
) -> Refused:
    """Fabric's answer to a refused sign-in at a connection's source as ``user`` (the account's user
    name), in ``shape``; ``locked`` and ``presented`` as for :func:`powerbi_refusal`."""
    if shape == "incorrect-credentials" or (shape == "echo" and presented is None):
        return _json(fabric_error(INCORRECT_CREDENTIALS, INCORRECT_CREDENTIALS_MESSAGE))
    if shape == "echo":
        assert presented is not None
        return _json(fabric_error(INCORRECT_CREDENTIALS, _echo_message(presented)))
    if shape == "sql-login-failed":
        pairs = _underlying(user, shape, locked=locked)
        if not locked:  # what Fabric's path reports instead of SQL Server's 18456 text
            pairs[1] = ("UnderlyingErrorMessage", "Could not login because the authentication failed.")
        more = [(_DETAIL + c, v) for c, v in pairs]
        return _json(_passed_through(GATEWAY_DATA_SOURCE_ACCESS_ERROR, more))
    if shape == "password-incorrect":
        more = [(_DETAIL + c, v) for c, v in _underlying(user, shape, locked=locked)]
        return _json(_passed_through(GATEWAY_DATA_SOURCE_ACCESS_ERROR, more))
    if shape == "unknown-gateway-code":
        more = [(_DETAIL + c, v) for c, v in _underlying(user, shape, locked=locked)]
        return _json(_passed_through(UNKNOWN_GATEWAY_CODE, more))
    if shape == "unknown-code":
        return _json(_passed_through(UNKNOWN_CODE, ()))
    if shape == "unreadable":
        return _unreadable()
    raise ValueError(f"unknown Fabric refusal shape {shape!r}; one of {', '.join(FABRIC_REFUSALS)}")
