"""Pure builders of the ``credentialDetails`` that ``PATCH /gateways/{g}/datasources/{d}`` takes.

Three steps, none of them doing I/O:

1. :func:`resolve_credential` reads a Key Vault secret value in the light of its binding
   (for Basic/Windows the value is the password, or ``{"username": ..., "password": ...}``).
2. :func:`credentials_json` renders the strict JSON string the API wants in ``credentials``
   (the swagger's examples: ``{"credentialData":[{"name":"username","value":...},...]}``).
3. :func:`credential_details` wraps it, encrypted for an on-premises gateway (``RSA-OAEP``, with
   the ``encrypt`` callable from :mod:`remediation.rules.gateway_crypto`) or plain for a cloud data
   source (``None``); OAuth2 caller-identity bindings send no secret and no ``credentials`` key.

The secret lives only inside :class:`ResolvedCredential` and the strings returned by
:func:`credentials_json` / :func:`credential_details`; no repr, str or exception message here
contains it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from remediation.config.bindings import Binding, CredentialType, EncryptedConnection, PrivacyLevel
from remediation.errors import BindingsError, RemediationError

__all__ = [
    "ENCRYPTION_NONE",
    "ENCRYPTION_RSA_OAEP",
    "EMPTY_CREDENTIALS",
    "ResolvedCredential",
    "SecretValueError",
    "credential_details",
    "credentials_json",
    "resolve_credential",
    "update_datasource_request",
]

ENCRYPTION_NONE = "None"
ENCRYPTION_RSA_OAEP = "RSA-OAEP"

EMPTY_CREDENTIALS = '{"credentialData":""}'
"""``credentials`` with no credential data: the swagger's Anonymous example."""


class SecretValueError(RemediationError):
    """The secret's value cannot be used for its binding (e.g. it is empty).

    The message names the binding and the secret, never the value. This is not a
    configuration error: the fix is a new secret version in Key Vault.
    """

    def __init__(self, problem: str, *, binding: str, secret: str) -> None:
        self.problem = problem
        self.binding = binding
        self.secret = secret
        super().__init__(f"secret {secret!r} of binding {binding!r}: {problem}")


@dataclass(frozen=True, repr=False)
class ResolvedCredential:
    """A credential ready to render: type, user name (when the type has one) and the secret.

    ``secret`` is the password (Basic, Windows, OAuth2 caller identity), the key (Key) or the
    token (SAS); empty for Anonymous. ``repr``/``str`` never show it.
    """

    credential_type: CredentialType
    username: str | None
    secret: str

    def __post_init__(self) -> None:
        needs_user = (CredentialType.BASIC, CredentialType.WINDOWS, CredentialType.OAUTH2)
        if self.credential_type in needs_user and not self.username:
            raise ValueError(f"a {self.credential_type} credential needs a username")

    def __repr__(self) -> str:
        return (
            f"ResolvedCredential(credential_type={self.credential_type.value!r}, "
            f"username={self.username!r}, secret=<redacted>)"
        )

    __str__ = __repr__


def resolve_credential(binding: Binding, secret_value: str) -> ResolvedCredential:
    """Interpret the Key Vault value ``secret_value`` for ``binding``.

    Basic and Windows: the value is the password, unless it is a JSON object with exactly the
    string keys ``username`` and ``password``, which then override the binding's username. A
    password that merely starts with ``{`` stays a password. Key: the key. SAS: the token.
    OAuth2 (caller identity): the password of ``binding.username``, used to get that user's token.
    The value is used byte for byte (no stripping): a trailing space may be part of a password.

    Raises:
        BindingsError: Basic/Windows with no username in the binding nor in the secret.
        SecretValueError: the value (or its JSON password/username) is empty.
    """
    ctype = binding.credential_type
    if ctype is CredentialType.ANONYMOUS:
        return ResolvedCredential(ctype, None, "")
    if not secret_value:
        raise SecretValueError("the value is empty", binding=binding.name, secret=binding.secret)

    if ctype in (CredentialType.BASIC, CredentialType.WINDOWS):
        username = binding.username
        password = secret_value
        pair = _user_password_pair(secret_value)
        if pair is not None:
            username, password = pair
            if not username:
                raise SecretValueError(
                    'the JSON value has an empty "username"', binding=binding.name, secret=binding.secret
                )
            if not password:
                raise SecretValueError(
                    'the JSON value has an empty "password"', binding=binding.name, secret=binding.secret
                )
        if not username:
            raise BindingsError(
                f'credentialType {ctype} needs a username: set "username" in the binding, or store '
                f'the secret {binding.secret!r} as {{"username": ..., "password": ...}}',
                binding=binding.name,
                field="username",
            )
        return ResolvedCredential(ctype, username, password)

    if ctype is CredentialType.OAUTH2:
        if not binding.uses_caller_identity or not binding.username:
            raise BindingsError(
                'OAuth2 bindings need "oauth2": "caller-identity" and the username (UPN) to sign in as',
                binding=binding.name,
                field="oauth2",
            )
        return ResolvedCredential(ctype, binding.username, secret_value)

    # Key, SAS: the value is the key / token itself.
    return ResolvedCredential(ctype, None, secret_value)


def _user_password_pair(value: str) -> tuple[str, str] | None:
    """``(username, password)`` when ``value`` is exactly ``{"username": str, "password": str}``."""
    if not value.lstrip().startswith("{"):
        return None
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError):  # not JSON, or absurdly nested: a password after all
        return None
    if not isinstance(doc, dict) or set(doc) != {"username", "password"}:
        return None
    username, password = doc["username"], doc["password"]
    if not isinstance(username, str) or not isinstance(password, str):
        return None
    return username, password


def credentials_json(resolved: ResolvedCredential) -> str:
    """The ``credentials`` string for ``resolved``: compact, strict JSON.

    ``json.dumps`` escapes quotes, backslashes and control characters; non-ASCII stays as is
    (UTF-8 on the wire, and in what is encrypted for the gateway).
    """
    ctype = resolved.credential_type
    if ctype in (CredentialType.BASIC, CredentialType.WINDOWS):
        data: object = [
            {"name": "username", "value": resolved.username},
            {"name": "password", "value": resolved.secret},
        ]
    elif ctype is CredentialType.KEY:
        data = [{"name": "key", "value": resolved.secret}]
    elif ctype is CredentialType.SAS:
        data = [{"name": "token", "value": resolved.secret}]
    elif ctype in (CredentialType.ANONYMOUS, CredentialType.OAUTH2):
        # OAuth2 here is always the caller's identity: the token is the caller's, not in the body
        # (and credential_details sends no ``credentials`` at all for it).
        return EMPTY_CREDENTIALS
    else:  # pragma: no cover - every CredentialType is handled above
        raise ValueError(f"unsupported credential type {ctype!r}")
    return json.dumps({"credentialData": data}, separators=(",", ":"), ensure_ascii=False)


def credential_details(
    binding: Binding,
    resolved: ResolvedCredential,
    *,
    encrypt: Callable[[str], str] | None,
    privacy_level: PrivacyLevel | None = None,
    encrypted_connection: EncryptedConnection | None = None,
) -> dict[str, object]:
    """The ``credentialDetails`` object of ``UpdateDatasourceRequest``.

    ``privacyLevel`` and ``encryptedConnection`` are ``privacy_level`` / ``encrypted_connection``
    when given (the data source's current settings, which the caller read and the binding does
    not override), else the binding's (its own values or the defaults).

    ``encrypt`` is given for on-premises gateway data sources (it turns the credentials JSON into
    the gateway's ciphertext; ``encryptionAlgorithm`` becomes ``RSA-OAEP``) and ``None`` for cloud
    data sources (plain JSON, ``None``). OAuth2 caller-identity bindings carry no secret, so
    ``encrypt`` is not used for them: the details are exactly the payload the Power BI product
    group reported working, ``credentialType`` OAuth2, ``encryptedConnection``,
    ``encryptionAlgorithm`` ``None``, ``privacyLevel`` and ``useCallerAADIdentity`` true, with
    **no** ``credentials`` key although the swagger lists it as required (an empty OAuth2
    credential is a different request, and may be read as "no token").
    """
    if resolved.credential_type is not binding.credential_type:
        raise ValueError(
            f"credential type mismatch: binding {binding.name!r} is {binding.credential_type}, "
            f"resolved credential is {resolved.credential_type}"
        )
    privacy = (privacy_level or binding.privacy_level).value
    encrypted = (encrypted_connection or binding.encrypted_connection).value
    details: dict[str, object] = {"credentialType": binding.credential_type.value}
    if binding.credential_type is CredentialType.OAUTH2:
        details["encryptedConnection"] = encrypted
        details["encryptionAlgorithm"] = ENCRYPTION_NONE
        details["privacyLevel"] = privacy
        details["useCallerAADIdentity"] = True
        return details
    if encrypt is not None:
        details["credentials"] = encrypt(credentials_json(resolved))
        details["encryptionAlgorithm"] = ENCRYPTION_RSA_OAEP
    else:
        details["credentials"] = credentials_json(resolved)
        details["encryptionAlgorithm"] = ENCRYPTION_NONE
    details["encryptedConnection"] = encrypted
    details["privacyLevel"] = privacy
    return details


def update_datasource_request(details: dict[str, object]) -> dict[str, object]:
    """The PATCH body: ``{"credentialDetails": details}``."""
    return {"credentialDetails": details}
