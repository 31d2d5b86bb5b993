"""The typed errors of every service client, and what a service's error answer says.

:class:`ApiError` carries what a service answered (status, the service's error code and inner
code, details, request id, the ``Retry-After`` it asked for, the attempts made);
:class:`ApiConnectionError` is no answer at all (refused, dropped, DNS, TLS, a timeout), with
``sent`` saying whether the request may have reached the service; :class:`ThrottledPastDeadline`
is a wait the service asked for that would end after the run's deadline
(:func:`~remediation.clients.retry.deadline_scope`); :class:`ResponseValidationError` is a 2xx
answer that is not what the API documents. Each client adds its own subclasses next to its code
(:mod:`remediation.clients.powerbi`, :mod:`remediation.clients.fabric`,
:mod:`remediation.clients.keyvault`). They pickle with their keyword-only attributes
(:func:`restore_exception`), since errors may cross process boundaries.

:func:`parse_error_body` reads the error bodies of Power BI, Key Vault, OData and Entra ID;
:func:`request_id_of` the request id header. No exception here contains a header or a request
body.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from remediation.errors import RemediationError

__all__ = [
    "ApiConnectionError",
    "ApiError",
    "ResponseValidationError",
    "ThrottledPastDeadline",
    "parse_error_body",
    "request_id_of",
    "restore_exception",
]

_E = TypeVar("_E", bound=BaseException)

REQUEST_ID_HEADERS = ("x-ms-request-id", "RequestId", "request-id", "x-ms-client-request-id")


class ApiError(RemediationError):
    """A service answered with an error (or could not be reached: see :class:`ApiConnectionError`).

    ``status``: HTTP status (``None`` when there was no answer); ``code``: the service's error code
    (Power BI ``error.code``, Key Vault ``error.code``, Entra ``error``); ``inner_code``: Key Vault's
    ``innererror.code`` or Power BI's ``pbi.error.code`` when it differs; ``details``: ``(code,
    value)`` pairs from ``pbi.error.details`` (or OData ``error.details``); ``request_id``: the
    ``x-ms-request-id`` / ``RequestId`` header; ``retry_after``: seconds the service asked to wait
    (uncapped), when it said; ``attempts``: requests sent for this call, retries included.
    ``str()`` names the call and the service's code and message, never a header or request body.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        inner_code: str | None = None,
        details: Iterable[tuple[str, str]] = (),
        request_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
        service: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.inner_code = inner_code
        self.details: list[tuple[str, str]] = list(details)
        self.request_id = request_id
        self.method = method
        self.path = path
        self.service = service
        self.retry_after = retry_after
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only attributes survive pickling (errors may cross process boundaries).
        return (restore_exception, (type(self), self.args, dict(self.__dict__)))

    def detail(self, code: str) -> str | None:
        """The value of the first detail named ``code`` (case-insensitive), if any."""
        for name, value in self.details:
            if name.lower() == code.lower():
                return value
        return None

    def __str__(self) -> str:
        where = f"{self.method} {self.path}" if self.method and self.path else (self.service or "request")
        status = f" -> {self.status}" if self.status is not None else ""
        code = f" {self.code}" if self.code else ""
        rid = f" (request id {self.request_id})" if self.request_id else ""
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{where}{status}{code}: {self.message}{rid}{tries}"


def restore_exception(cls: type[_E], args: tuple[Any, ...], state: dict[str, Any]) -> _E:
    """Rebuild a pickled exception without calling its (keyword-only) constructor."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ApiConnectionError(ApiError):
    """No answer: connection refused or dropped, DNS, TLS, or a timeout (``code`` says which).

    ``sent`` is False when the request certainly never reached the service (refused, connect
    timeout, no request slot), True when it may have been served and the answer was lost.
    """

    def __init__(self, message: str, *, sent: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.sent = sent


class ThrottledPastDeadline(ApiError):
    """The service asked to wait (a 429's ``Retry-After``, or a pause another caller or instance
    drew) until after the run's deadline. The request was not served; the work is left to a later
    run, which the caller reports as deferred. ``retry_after``: the seconds asked."""


class ResponseValidationError(ApiError):
    """A 2xx answer whose body is not what the API documents (names the field that is wrong)."""


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_error_body(content: bytes) -> tuple[str | None, str | None, str | None, list[tuple[str, str]]]:
    """``(code, inner_code, message, details)`` from a service error body; Nones if not recognised.

    Shapes: Power BI ``{"error": {"code", "pbi.error": {"code", "details": [{"code", "detail":
    {"type", "value"}}]}}}`` and ``{"error": {"code", "message"}}``; Key Vault ``{"error": {"code",
    "message", "innererror": {"code"}}}``; OData ``error.details[{code, message}]``; Entra
    ``{"error": "invalid_grant", "error_description"}``.
    """
    try:
        body = json.loads(content.decode("utf-8")) if content else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, None, None, []
    if not isinstance(body, dict):
        return None, None, None, []
    error = body.get("error")
    if isinstance(error, str):  # OAuth2 / Entra
        return _text(error), None, _text(body.get("error_description")), []
    if not isinstance(error, dict):
        return _text(body.get("errorCode")), None, _text(body.get("message")), []
    code = _text(error.get("code"))
    message = _text(error.get("message"))
    inner_code: str | None = None
    details: list[tuple[str, str]] = []
    pbi = error.get("pbi.error")
    if isinstance(pbi, dict):
        pbi_code = _text(pbi.get("code"))
        if pbi_code and pbi_code != code:
            inner_code = pbi_code
        code = code or pbi_code
        for item in pbi.get("details") or []:
            if not isinstance(item, dict):
                continue
            detail = item.get("detail")
            value = detail.get("value") if isinstance(detail, dict) else detail
            name = _text(item.get("code"))
            if name is not None:
                details.append((name, value if isinstance(value, str) else json.dumps(value)))
    inner = error.get("innererror")
    if isinstance(inner, dict) and _text(inner.get("code")):
        inner_code = _text(inner.get("code"))
    odata_details = error.get("details")
    for item in odata_details if isinstance(odata_details, list) else []:
        if isinstance(item, dict) and _text(item.get("code")):
            details.append((str(item["code"]), str(item.get("message", ""))))
    return code, inner_code, message, details


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The service's request id from ``headers`` (case-insensitive mapping)."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None
