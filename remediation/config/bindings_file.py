"""The bindings file: read, parsed and validated into a :class:`~remediation.config.bindings.BindingSet`.

The format is DESIGN.md's public contract::

    {"bindings": [{"name", "secret", "credentialType", ["username"], ["privacyLevel"],
                   ["encryptedConnection"], ["oauth2"], ["takeOver"], "targets": [...]}],
     "watch": {"workspaces": ["<uuid>", ...]}}

A target is ``{"gatewayId": "<uuid>", "datasourceId": "<uuid>"}`` (a gateway data source),
``{"connectionId": "<uuid>", ["keyVaultReference"]}`` (a Fabric connection),
``{"match": {["datasourceType"], ["server"], ["database"], ["url"], ["path"]}}`` (gateway data
sources; every given key must match the data source, case-insensitively), or
``{"match": {"kind": "connection", ["connectionType"], ["connectivityType"], ["server"],
["database"], ["url"], ["path"]}}`` (Fabric connections, by ``connectionDetails.type``, the
``connectivityType`` and ``connectionDetails.path``: ``server`` and ``database`` are the parts of
a ``server;database`` path, ``url`` and ``path`` the whole of it).

Validation is strict because a binding decides what password is presented to which system: an
unknown key (a typo such as ``"usename"``) is an error, not a silently ignored line, and one data
source may be fed by one secret only. The first problem found is raised as a
:class:`~remediation.errors.BindingsError` naming the binding, the field and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, TypeVar

from remediation.config.bindings import (
    BINDABLE_TYPES,
    FABRIC_ONLY_TYPES,
    MATCH_DETAIL_KEYS,
    Binding,
    BindingSet,
    CredentialType,
    EncryptedConnection,
    OAuth2Mode,
    PrivacyLevel,
    Target,
    TargetMatch,
)
from remediation.errors import BindingsError

__all__ = ["load_bindings", "parse_bindings", "with_reference_mark"]

# Fabric's spelling of SAS.
_TYPE_ALIASES = {"SharedAccessSignature": CredentialType.SAS}
_USERNAME_TYPES = (CredentialType.BASIC, CredentialType.WINDOWS, CredentialType.OAUTH2)

_E = TypeVar("_E", bound=StrEnum)

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SECRET_NAME = re.compile(r"[0-9a-zA-Z-]{1,127}")

_TOP_KEYS = ("bindings", "watch")
_WATCH_KEYS = ("workspaces",)
_BINDING_KEYS = (
    "name",
    "secret",
    "credentialType",
    "username",
    "privacyLevel",
    "encryptedConnection",
    "oauth2",
    "takeOver",
    "tenantId",
    "clientId",
    "targets",
)
_TARGET_KEYS = ("gatewayId", "datasourceId")
_CONNECTION_KEYS = ("connectionId", "keyVaultReference")
_MATCH_KEYS = ("kind", "datasourceType", "server", "database", "url", "path")
_CONNECTION_MATCH_KEYS = ("kind", "connectionType", "connectivityType", "server", "database", "url", "path")
_MATCH_KINDS = ("datasource", "connection")


# -- editing ------------------------------------------------------------------------------------
def with_reference_mark(doc: object, binding: str, connection_id: str, *, marked: bool) -> dict[str, Any]:
    """A copy of the bindings document ``doc`` whose binding ``binding`` marks its target
    ``{"connectionId": connection_id}`` ``"keyVaultReference": true`` (``marked``) or no longer
    does; a connection the binding reaches only by a ``match`` gets a target of its own when
    marked. The result is validated as :func:`parse_bindings` does (what ``adopt
    --write-bindings`` writes).

    Raises:
        BindingsError: the document is invalid, or has no binding ``binding``.
    """
    parse_bindings(doc)
    assert isinstance(doc, dict)
    edited: dict[str, Any] = json.loads(json.dumps(doc))
    wanted = connection_id.strip().lower()
    entry = next(
        (b for b in edited["bindings"] if str(b.get("name", "")).casefold() == binding.casefold()), None
    )
    if entry is None:
        raise BindingsError(f"the bindings file has no binding {binding!r}", binding=binding)
    targets = entry["targets"]
    target = next((t for t in targets if str(t.get("connectionId", "")).strip().lower() == wanted), None)
    if target is None and marked:
        targets.append({"connectionId": wanted, "keyVaultReference": True})
    elif target is not None and marked:
        target["keyVaultReference"] = True
    elif target is not None:
        target.pop("keyVaultReference", None)
    parse_bindings(edited)
    return edited


# -- loading ------------------------------------------------------------------------------------
def load_bindings(source: str) -> BindingSet:
    """Parse ``REMEDIATION_BINDINGS``: inline JSON when it starts with ``{``, else a file path.

    Raises:
        BindingsError: the file is missing or unreadable, the text is not JSON, or a rule is broken.
    """
    if not source.strip():
        raise BindingsError("REMEDIATION_BINDINGS is empty; set it to the bindings file's path or its JSON")
    if source.lstrip().startswith("{"):
        return parse_bindings(_loads(source, "inline REMEDIATION_BINDINGS"))
    path = source.strip()
    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise BindingsError(
            f"file {path!r} does not exist; set REMEDIATION_BINDINGS to the bindings file's path or its JSON"
        ) from None
    except IsADirectoryError:
        raise BindingsError(f"{path!r} is a directory, not a bindings file") from None
    except UnicodeDecodeError:
        raise BindingsError(f"file {path!r} is not UTF-8 text") from None
    except OSError as exc:
        raise BindingsError(f"file {path!r} cannot be read ({exc.strerror or type(exc).__name__})") from None
    return parse_bindings(_loads(text, f"file {path!r}"))


def _loads(text: str, what: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise BindingsError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # json.loads would keep the last one silently; a repeated key is a typo waiting to bite.
            raise BindingsError(f"key {key!r} appears twice in one object; keep one", field=key)
        result[key] = value
    return result


# -- validation ---------------------------------------------------------------------------------
def parse_bindings(doc: object) -> BindingSet:
    """Validate a parsed bindings document and build the :class:`BindingSet`.

    Raises:
        BindingsError: the first rule the document breaks.
    """
    if not isinstance(doc, dict):
        raise BindingsError('the document must be a JSON object {"bindings": [...], "watch": {...}}')
    _check_keys(doc, _TOP_KEYS, binding=None, where="")
    if "bindings" not in doc:
        raise BindingsError('"bindings" is missing; it lists the bindings', field="bindings")
    raw_bindings = doc["bindings"]
    if not isinstance(raw_bindings, list):
        raise BindingsError("must be a list of binding objects", field="bindings")

    bindings: list[Binding] = []
    names: dict[str, str] = {}
    owner_of: dict[tuple[str, str], str] = {}
    for index, raw in enumerate(raw_bindings):
        binding, positions = _parse_binding(raw, index)
        folded = binding.name.casefold()
        if folded in names:
            raise BindingsError(
                f"the name is used twice (also by {names[folded]!r}); binding names must be unique",
                binding=binding.name,
                field="name",
            )
        names[folded] = binding.name
        for t_index, target in enumerate(binding.targets):
            other = owner_of.get(target.key)
            if other is not None:
                raise BindingsError(
                    f"data source {target.gateway_id}/{target.datasource_id} is also bound by "
                    f"{other!r}; one data source takes one secret, so bind it once",
                    binding=binding.name,
                    field=f"targets[{positions[t_index]}]",
                )
            owner_of[target.key] = binding.name
        bindings.append(binding)

    return BindingSet(tuple(bindings), _parse_watch(doc.get("watch")))


def _parse_watch(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise BindingsError('must be an object like {"workspaces": ["<uuid>"]}', field="watch")
    _check_keys(raw, _WATCH_KEYS, binding=None, where="watch.")
    workspaces = raw.get("workspaces", [])
    if not isinstance(workspaces, list):
        raise BindingsError("must be a list of workspace ids (GUIDs)", field="watch.workspaces")
    result: list[str] = []
    for i, item in enumerate(workspaces):
        guid = _guid(item, binding=None, field=f"watch.workspaces[{i}]", what="a workspace id")
        if guid in result:
            raise BindingsError(f"workspace {guid} is listed twice", field=f"watch.workspaces[{i}]")
        result.append(guid)
    return tuple(result)


def _parse_binding(raw: object, index: int) -> tuple[Binding, tuple[int, ...]]:
    """The binding, and the position in its ``targets`` list of each of its id targets."""
    label = f"bindings[{index}]"
    if not isinstance(raw, dict):
        raise BindingsError("must be an object with name, secret, credentialType and targets", binding=label)
    name = raw.get("name")
    if isinstance(name, str) and name.strip():
        label = name
    else:
        raise BindingsError(
            "a non-empty name is required (a unique label for this binding)", binding=label, field="name"
        )
    _check_keys(raw, _BINDING_KEYS, binding=label, where="")

    secret = raw.get("secret")
    if not isinstance(secret, str) or not _SECRET_NAME.fullmatch(secret):
        # The value is not echoed: a password pasted here by mistake must not reach the logs.
        raise BindingsError(
            "must be the name of the Key Vault secret (1-127 characters: letters, digits and '-'), "
            "not its value",
            binding=label,
            field="secret",
        )

    credential_type = _credential_type(raw.get("credentialType"), label)
    username = _username(raw, credential_type, label)
    oauth2_mode = _oauth2_mode(raw, credential_type, label)
    privacy = _choice(raw, "privacyLevel", PrivacyLevel, PrivacyLevel.ORGANIZATIONAL, label)
    encrypted = _choice(raw, "encryptedConnection", EncryptedConnection, EncryptedConnection.ENCRYPTED, label)

    take_over = raw.get("takeOver", False)
    if not isinstance(take_over, bool):
        raise BindingsError(
            "must be true or false (true lets the healer Take Over cloud datasets to own them)",
            binding=label,
            field="takeOver",
        )

    tenant_id, client_id = _principal(raw, credential_type, label)
    targets, positions, matches = _parse_targets(raw.get("targets"), label)
    _check_target_kinds(credential_type, targets, matches, label)
    binding = Binding(
        name=name,
        secret=secret,
        credential_type=credential_type,
        username=username,
        privacy_level=privacy,
        encrypted_connection=encrypted,
        oauth2_mode=oauth2_mode,
        take_over=take_over,
        tenant_id=tenant_id,
        client_id=client_id,
        targets=targets,
        matches=matches,
        privacy_level_given="privacyLevel" in raw,
        encrypted_connection_given="encryptedConnection" in raw,
    )
    return binding, positions


def _principal(
    raw: dict[str, Any], credential_type: CredentialType, label: str
) -> tuple[str | None, str | None]:
    """``tenantId`` and ``clientId``: required by ServicePrincipal bindings, refused by others."""
    if credential_type is not CredentialType.SERVICE_PRINCIPAL:
        for key in ("tenantId", "clientId"):
            if key in raw:
                raise BindingsError(
                    f"only ServicePrincipal bindings take {key}; "
                    f"remove it from this {credential_type} binding",
                    binding=label,
                    field=key,
                )
        return None, None
    tenant = _guid(raw.get("tenantId"), binding=label, field="tenantId", what="the tenant id of the app")
    client = _guid(raw.get("clientId"), binding=label, field="clientId", what="the client id of the app")
    return tenant, client


def _check_target_kinds(
    credential_type: CredentialType, targets: Sequence[Target], matches: Sequence[TargetMatch], label: str
) -> None:
    """ServicePrincipal exists only for Fabric connections; OAuth2 only for gateway data sources
    (Fabric's API has no OAuth2 credential: it needs an interactive sign-in)."""
    gateway_targets = any(not m.selects_connections for m in matches) or any(
        t.connection_id is None for t in targets
    )
    if credential_type is CredentialType.SERVICE_PRINCIPAL and gateway_targets:
        raise BindingsError(
            "ServicePrincipal credentials exist only for Fabric connections: "
            'use {"connectionId": ...} targets',
            binding=label,
            field="targets",
        )
    if credential_type is CredentialType.OAUTH2 and (
        any(t.connection_id is not None for t in targets) or any(m.selects_connections for m in matches)
    ):
        raise BindingsError(
            "Fabric connections take no OAuth2 credential through the API (it needs an interactive "
            "sign-in); bind the gateway data source instead",
            binding=label,
            field="targets",
        )


def _credential_type(value: object, label: str) -> CredentialType:
    allowed = ", ".join(BINDABLE_TYPES + FABRIC_ONLY_TYPES)
    if value == CredentialType.ANONYMOUS:
        raise BindingsError(
            f"Anonymous data sources have no secret to rotate; remove this binding (allowed: {allowed})",
            binding=label,
            field="credentialType",
        )
    if isinstance(value, str):
        for member in BINDABLE_TYPES + FABRIC_ONLY_TYPES:
            if value == member.value:
                return member
        if value in _TYPE_ALIASES:
            return _TYPE_ALIASES[value]
    raise BindingsError(
        _not_allowed(value, [m.value for m in BINDABLE_TYPES + FABRIC_ONLY_TYPES]),
        binding=label,
        field="credentialType",
    )


def _username(raw: dict[str, Any], credential_type: CredentialType, label: str) -> str | None:
    if "username" not in raw:
        if credential_type is CredentialType.OAUTH2:
            raise BindingsError(
                "OAuth2 needs the UPN of the user whose identity sets the credentials, e.g. svc@contoso.com",
                binding=label,
                field="username",
            )
        return None
    username = raw["username"]
    if credential_type not in _USERNAME_TYPES:
        raise BindingsError(
            f"credentialType {credential_type} takes no username; remove it "
            "(only Basic, Windows and OAuth2 use one)",
            binding=label,
            field="username",
        )
    if not isinstance(username, str) or not username.strip():
        raise BindingsError("must be a non-empty string", binding=label, field="username")
    if credential_type is CredentialType.OAUTH2:
        user, _, domain = username.partition("@")
        if not user or not domain:
            raise BindingsError(
                f"{username!r} is not a UPN; OAuth2 needs a user principal name like svc@contoso.com",
                binding=label,
                field="username",
            )
    return username


def _oauth2_mode(raw: dict[str, Any], credential_type: CredentialType, label: str) -> OAuth2Mode | None:
    value = raw.get("oauth2")
    if credential_type is not CredentialType.OAUTH2:
        if "oauth2" in raw:
            raise BindingsError(
                f"only OAuth2 bindings take oauth2; remove it from this {credential_type} binding",
                binding=label,
                field="oauth2",
            )
        return None
    if value != OAuth2Mode.CALLER_IDENTITY.value:
        raise BindingsError(
            f"{_not_allowed(value, [OAuth2Mode.CALLER_IDENTITY.value])}; OAuth2 bindings need "
            '"oauth2": "caller-identity" (tokens put in the payload expire within an hour)',
            binding=label,
            field="oauth2",
        )
    return OAuth2Mode.CALLER_IDENTITY


def _choice(raw: dict[str, Any], key: str, enum: type[_E], default: _E, label: str) -> _E:
    if key not in raw:
        return default
    value = raw[key]
    for member in enum:
        if value == member.value:
            return member
    raise BindingsError(_not_allowed(value, [m.value for m in enum]), binding=label, field=key)


def _parse_targets(
    raw: object, label: str
) -> tuple[tuple[Target, ...], tuple[int, ...], tuple[TargetMatch, ...]]:
    if not isinstance(raw, list) or not raw:
        raise BindingsError(
            'must be a non-empty list of {"gatewayId", "datasourceId"} or {"match": {...}} objects',
            binding=label,
            field="targets",
        )
    targets: list[Target] = []
    positions: list[int] = []
    matches: list[TargetMatch] = []
    for i, item in enumerate(raw):
        where = f"targets[{i}]"
        if not isinstance(item, dict):
            raise BindingsError(
                'must be {"gatewayId": "<uuid>", "datasourceId": "<uuid>"} or {"match": {...}}',
                binding=label,
                field=where,
            )
        if "connectionId" in item:
            _check_keys(item, _CONNECTION_KEYS, binding=label, where=where + ".")
            connection = _guid(
                item.get("connectionId"), binding=label, field=where + ".connectionId", what="a connection id"
            )
            reference = item.get("keyVaultReference", False)
            if not isinstance(reference, bool):
                raise BindingsError(
                    "must be true or false (true: the connection reads this secret from Key Vault itself, "
                    "so the healer never sends it a copy)",
                    binding=label,
                    field=where + ".keyVaultReference",
                )
            target = Target.connection(connection, key_vault_reference=reference)
            if target in targets:
                raise BindingsError(
                    f"connection {connection} is listed twice in this binding", binding=label, field=where
                )
            targets.append(target)
            positions.append(i)
            continue
        if "match" in item:
            _check_keys(item, ("match",), binding=label, where=where + ".")
            matches.append(_parse_match(item["match"], label, where + ".match"))
            continue
        _check_keys(item, _TARGET_KEYS, binding=label, where=where + ".")
        gateway = _guid(item.get("gatewayId"), binding=label, field=where + ".gatewayId", what="a gateway id")
        datasource = _guid(
            item.get("datasourceId"), binding=label, field=where + ".datasourceId", what="a data source id"
        )
        target = Target(gateway, datasource)
        if target in targets:
            raise BindingsError(
                f"data source {gateway}/{datasource} is listed twice in this binding",
                binding=label,
                field=where,
            )
        targets.append(target)
        positions.append(i)
    return tuple(targets), tuple(positions), tuple(matches)


def _parse_match(raw: object, label: str, where: str) -> TargetMatch:
    keys = ", ".join(_MATCH_KEYS)
    if not isinstance(raw, dict):
        raise BindingsError(f"must be an object with some of {keys}", binding=label, field=where)
    kind = raw.get("kind", "datasource")
    if kind not in _MATCH_KINDS:
        raise BindingsError(
            _not_allowed(kind, list(_MATCH_KINDS))
            + ' ("datasource": gateway data sources, the default; "connection": Fabric connections)',
            binding=label,
            field=where + ".kind",
        )
    allowed = _CONNECTION_MATCH_KEYS if kind == "connection" else _MATCH_KEYS
    for key in raw:
        if kind == "datasource" and key not in allowed and key in _CONNECTION_MATCH_KEYS:
            raise BindingsError(
                f'{key} selects Fabric connections: add "kind": "connection" to this match '
                f"(allowed for data sources: {keys})",
                binding=label,
                field=f"{where}.{key}",
            )
    _check_keys(raw, allowed, binding=label, where=where + ".")
    values: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str) or not value.strip():
            raise BindingsError("must be a non-empty string", binding=label, field=f"{where}.{key}")
        values[key] = value.strip()
    if not any(k in values for k in MATCH_DETAIL_KEYS):
        raise BindingsError(
            "needs at least one of server, database, url, path (a type alone would select too much)",
            binding=label,
            field=where,
        )
    return TargetMatch(
        datasource_type=values.get("datasourceType"),
        server=values.get("server"),
        database=values.get("database"),
        url=values.get("url"),
        path=values.get("path"),
        kind=kind,
        connection_type=values.get("connectionType"),
        connectivity_type=values.get("connectivityType"),
    )


# -- helpers ------------------------------------------------------------------------------------
def _check_keys(obj: Mapping[str, Any], allowed: Sequence[str], *, binding: str | None, where: str) -> None:
    for key in obj:
        if key in allowed:
            continue
        hint = _suggest(key, allowed)
        raise BindingsError(
            f"unknown key{hint}; allowed here: {', '.join(allowed)}",
            binding=binding,
            field=where + key,
        )


def _suggest(value: str, allowed: Sequence[str]) -> str:
    for candidate in allowed:
        if candidate.casefold() == value.casefold():
            return f" (did you mean {candidate!r}?)"
    close = difflib.get_close_matches(value, list(allowed), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _not_allowed(value: object, allowed: Sequence[str]) -> str:
    listed = ", ".join(allowed)
    if value is None:
        return f"is required; allowed: {listed}"
    if not isinstance(value, str):
        return f"must be a string; allowed: {listed}"
    return f"{value!r} is not allowed{_suggest(value, allowed)}; allowed: {listed}"


def _guid(value: object, *, binding: str | None, field: str, what: str) -> str:
    if isinstance(value, str) and _GUID.fullmatch(value.strip()):
        return value.strip().lower()
    shown = f"{value!r} is not" if isinstance(value, str) else "is required and must be"
    raise BindingsError(
        f"{shown} {what}: a GUID like 1f69e798-5852-4fdd-ab01-33bb14b6e934",
        binding=binding,
        field=field,
    )
