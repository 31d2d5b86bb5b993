"""Validation against Microsoft's own specs, kept in ``specs/`` (copied from ``shared/specs``).

The Power BI swagger (2.0), the Key Vault secrets spec, the Event Grid specs and the Application
Insights ingestion swagger are JSON Schema dialects close enough to draft 4 that ``jsonschema``
validates instances against their definitions once ``$ref`` resolution is pointed at the file.
Swagger's ``x-*`` extensions are ignored; ``readOnly`` does not forbid a property in a response.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema

SPEC_DIR = Path(__file__).resolve().parent.parent / "specs"

POWERBI = "powerbi/swagger.json"
KEYVAULT = "keyvault/2025-07-01/secrets.json"
EVENTGRID = "eventgrid/eventgrid_2018-01-01.json"
EVENTGRID_KEYVAULT = "eventgrid/keyvault.json"
APPINSIGHTS = "appinsights/v2.1/swagger.json"


class SpecError(AssertionError):
    """An instance does not match the spec. The message names the definition and the path."""


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The parsed spec file ``name`` (relative to :data:`SPEC_DIR`)."""
    with open(SPEC_DIR / name, encoding="utf-8") as fh:
        spec: dict[str, Any] = json.load(fh)
    return spec


@functools.cache
def _validator(name: str, definition: str) -> jsonschema.Draft4Validator:
    spec = load(name)
    if definition not in spec.get("definitions", {}):
        raise KeyError(f"{name} has no definition {definition!r}")
    schema = {"$ref": f"#/definitions/{definition}", "definitions": spec["definitions"]}
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())


def errors(name: str, definition: str, instance: Any) -> list[str]:
    """Every way ``instance`` fails ``definition`` of spec ``name``, as readable lines."""
    found = []
    for err in _validator(name, definition).iter_errors(instance):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        found.append(f"{where}: {err.message}")
    return sorted(found)


def validate(name: str, definition: str, instance: Any) -> None:
    """Raise :class:`SpecError` unless ``instance`` matches ``definition`` of spec ``name``."""
    problems = errors(name, definition, instance)
    if problems:
        raise SpecError(f"{name}#{definition}: " + "; ".join(problems[:10]))


def powerbi_operation(operation_id: str) -> tuple[str, str, dict[str, Any]]:
    """(method, path template, operation object) of a Power BI operation by ``operationId``."""
    for path, item in load(POWERBI)["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and op.get("operationId") == operation_id:
                return method.upper(), path, op
    raise KeyError(f"no Power BI operation {operation_id!r}")


def _definition_of(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref", "")
    match = re.fullmatch(r"#/definitions/(.+)", ref)
    return match.group(1) if match else None


def validate_powerbi_response(operation_id: str, status: int, body: Any) -> None:
    """Validate a Power BI response body against the operation's declared response schema."""
    _, path, op = powerbi_operation(operation_id)
    responses = op.get("responses", {})
    declared = responses.get(str(status))
    if declared is None:
        raise SpecError(f"{operation_id} declares no {status} response (has {sorted(responses)})")
    schema = declared.get("schema")
    if schema is None:
        return
    definition = _definition_of(schema)
    if definition is None:
        raise SpecError(f"{operation_id} {status}: inline schema not supported")
    validate(POWERBI, definition, body)


def validate_powerbi_request(operation_id: str, body: Any) -> None:
    """Validate a Power BI request body against the operation's body parameter schema."""
    _, _, op = powerbi_operation(operation_id)
    for param in op.get("parameters", []):
        if param.get("in") == "body":
            definition = _definition_of(param.get("schema", {}))
            if definition is None:
                raise SpecError(f"{operation_id}: inline body schema not supported")
            validate(POWERBI, definition, body)
            return
    raise SpecError(f"{operation_id} takes no body")


# -- Fabric (specs/fabric: platform definitions, with polymorphic bodies) ---------------------------
FABRIC_FILES = ("fabric/platform/definitions/connections.json", "fabric/platform/definitions/gateways.json")
FABRIC_COMMON = "fabric/common/definitions.json"


@functools.cache
def _fabric_definitions() -> dict[str, Any]:
    """Connections, gateways and common definitions in one namespace, with the swagger
    discriminators made checkable: a base ``B`` with a ``discriminator`` becomes "``B``'s own
    properties and one of its subtypes" (each subtype requiring its discriminator value), so
    that a ``credentials`` object or a request body is checked against the subtype it names."""
    merged: dict[str, Any] = {}
    for name in (*FABRIC_FILES, FABRIC_COMMON):
        text = json.dumps(load(name)["definitions"]).replace('"../../common/definitions.json#', '"#')
        merged.update(json.loads(text))
    bases = {k: v["discriminator"] for k, v in merged.items() if "discriminator" in v}
    subtypes: dict[str, list[str]] = {b: [] for b in bases}
    for key, schema in merged.items():
        for part in schema.get("allOf", []):
            base = _definition_of(part)
            if base in bases and "x-ms-discriminator-value" in schema:
                subtypes[base].append(key)
                part["$ref"] = f"#/definitions/{base}__base"
                prop = bases[base]
                schema.setdefault("properties", {})[prop] = {"enum": [schema["x-ms-discriminator-value"]]}
                schema["required"] = sorted({*schema.get("required", []), prop})
    for base in bases:
        own = dict(merged[base])
        own.pop("discriminator")
        merged[f"{base}__base"] = own
        if subtypes[base]:
            merged[base] = {
                "allOf": [{"$ref": f"#/definitions/{base}__base"}],
                "anyOf": [{"$ref": f"#/definitions/{s}"} for s in subtypes[base]],
            }
    return merged


def fabric_subtype(base: str, value: str) -> str | None:
    """The definition of ``base``'s subtype whose discriminator value is ``value``."""
    for key, schema in _fabric_definitions().items():
        if schema.get("x-ms-discriminator-value") == value and any(
            _definition_of(p) == f"{base}__base" for p in schema.get("allOf", [])
        ):
            return key
    return None


@functools.cache
def _fabric_validator(definition: str) -> jsonschema.Draft4Validator:
    definitions = _fabric_definitions()
    if definition not in definitions:
        raise KeyError(f"specs/fabric has no definition {definition!r}")
    schema = {"$ref": f"#/definitions/{definition}", "definitions": definitions}
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())


def fabric_errors(definition: str, instance: Any) -> list[str]:
    """Every way ``instance`` fails Fabric's ``definition``; never quotes a submitted value."""
    found = []
    for err in _fabric_validator(definition).iter_errors(instance):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        if err.validator == "required":
            found.append(f"{where}: {err.message}")
        elif err.validator in ("type", "enum", "format"):
            found.append(f"{where}: must be {err.validator} {err.validator_value}")
        elif err.validator == "anyOf":
            found.append(f"{where}: matches none of the subtypes its discriminator allows")
        else:
            found.append(f"{where}: fails '{err.validator}'")
    return sorted(found)


def validate_fabric(definition: str, instance: Any) -> None:
    """Raise :class:`SpecError` unless ``instance`` matches Fabric's ``definition``."""
    problems = fabric_errors(definition, instance)
    if problems:
        raise SpecError(f"specs/fabric#{definition}: " + "; ".join(problems[:10]))
