"""Power BI's HTTP dialect: error codes and bodies, reading a request, and the time format.

Error shapes:

* plain API errors use the service envelope
  ``{"error": {"code": C, "pbi.error": {"code": C, "parameters": {}, "details": [...],
  "exceptionCulprit": 1}}}`` (``PowerBIEntityNotFound``, ``PowerBINotAuthorizedException``,
  ``DM_GWPipeline_*``) -- see :func:`sandbox.refusals.pbi_error`;
* request validation errors (bad JSON, body not matching the swagger, non-GUID path ids,
  refresh conflicts and quota) are ``{"error": {"code": "InvalidRequest", "message": ...}}``;
  messages name the offending field but never echo a submitted value;
* token problems are 401 with ``WWW-Authenticate: Bearer ...`` (:meth:`Tenant._authenticate
  <sandbox.powerbi.tenant.Tenant._authenticate>`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import jsonschema

from sandbox import specs
from sandbox.refusals import pbi_error
from sandbox.routing import HTTPError, Request

GATEWAY_UNREACHABLE = "DM_GWPipeline_Client_GatewayUnreachable"
UNKNOWN_GATEWAY_ERROR = "DM_GWPipeline_UnknownError"
INVALID_ENCRYPTION_ALGORITHM = "DMTS_InvalidEncryptionAlgorithmError"
CREDENTIALS_NOT_SPECIFIED = "ModelRefreshFailed_CredentialsNotSpecified"
NOT_FOUND = "PowerBIEntityNotFound"
NOT_AUTHORIZED = "PowerBINotAuthorizedException"

GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def invalid_request(message: str) -> dict[str, Any]:
    return {"error": {"code": "InvalidRequest", "message": message}}


def fault_body(status: int, code: str, message: str) -> dict[str, Any]:
    """Body of injected faults and of unexpected handler failures (the service envelope)."""
    return pbi_error(code)


def bad_request(message: str) -> HTTPError:
    return HTTPError(400, invalid_request(message))


def not_found() -> HTTPError:
    return HTTPError(404, pbi_error(NOT_FOUND))


def compact(document: dict[str, Any]) -> str:
    """A JSON document as ``serviceExceptionJson`` carries it (no spaces)."""
    return json.dumps(document, separators=(",", ":"))


def iso(ts: float) -> str:
    """``2017-06-13T09:25:43.153Z``: the millisecond UTC form Power BI uses."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def path_id(request: Request, name: str) -> str:
    """The GUID of path parameter ``name`` (lower case), or a 400 naming it."""
    value = request.params[name]
    if not GUID.fullmatch(value):
        raise bad_request(f"The {name}Id '{value[:64]}' in the URL is not a valid GUID.")
    return value.lower()


def json_body(request: Request, *, required: bool) -> Any:
    if not request.body.strip():
        if required:
            raise bad_request("The request body is empty.")
        return None
    return request.json(bad_request)


def validate_body(operation_id: str, body: Any, *, allow_missing: Iterable[str] = ()) -> None:
    """400 unless ``body`` matches the swagger; ``allow_missing`` names problems to overlook."""
    problems = [p for p in request_problems(operation_id, body) if p not in set(allow_missing)]
    if problems:
        definition, _ = body_validator(operation_id)
        raise bad_request(f"The request body does not match {definition}: " + "; ".join(problems[:10]))


@functools.cache
def body_validator(operation_id: str) -> tuple[str, jsonschema.Draft4Validator]:
    """The swagger definition name of the operation's body and a validator for it."""
    _, _, op = specs.powerbi_operation(operation_id)
    for param in op.get("parameters", []):
        if param.get("in") == "body":
            definition = param["schema"]["$ref"].rsplit("/", 1)[-1]
            schema = {
                "$ref": f"#/definitions/{definition}",
                "definitions": specs.load(specs.POWERBI)["definitions"],
            }
            return definition, jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    raise KeyError(f"{operation_id} takes no body")


def request_problems(operation_id: str, body: Any) -> list[str]:
    """How ``body`` fails the operation's swagger body schema, as lines naming the field.

    The same check as :func:`sandbox.specs.validate_powerbi_request`, but the messages never
    quote the submitted value (it may be a password).
    """
    definition, validator = body_validator(operation_id)
    if not isinstance(body, dict):
        return [f"(root): the body must be a JSON object ({definition})"]
    found = []
    for err in validator.iter_errors(body):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        if err.validator == "required":
            found.append(f"{where}: {err.message}")
        elif err.validator == "type":
            found.append(f"{where}: must be of type {err.validator_value}")
        elif err.validator == "enum":
            found.append(f"{where}: must be one of {', '.join(map(str, err.validator_value))}")
        elif err.validator == "format":
            found.append(f"{where}: must be a valid {err.validator_value}")
        else:
            found.append(f"{where}: fails '{err.validator}'")
    return sorted(found)


def int_param(request: Request, name: str, *, minimum: int) -> int | None:
    raw = request.query_ci(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"The query parameter {name} must be an integer.") from None
    if value < minimum:
        raise bad_request(f"The query parameter {name} must be at least {minimum}.")
    return value


def query_true(request: Request, name: str) -> bool:
    value = request.query_ci(name)
    if value is None:
        return False
    if value.lower() not in ("true", "false"):
        raise bad_request(f"The query parameter '{name}' must be true or false.")
    return value.lower() == "true"
