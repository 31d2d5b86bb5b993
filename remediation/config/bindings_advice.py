"""Advice for ``bindings check`` (pure): what would make a valid binding fail at its source, and
what a person should know before it is used. The file's own rules are checked when it is read
(:mod:`remediation.config.bindings_file`); a binding that passes them may still be refused by the
system it feeds.
"""

from __future__ import annotations

import re

from remediation.config.bindings import Binding, CredentialType

__all__ = ["binding_problems", "binding_warnings", "is_windows_account_name"]

_DOWN_LEVEL = re.compile(r"[^\\/@\s]+\\[^\\/@\s]+")  # CONTOSO\svc
_UPN = re.compile(r"[^\\/@\s]+@[^\\/@\s]+\.[^\\/@\s]+")  # svc@contoso.com
_PLACEHOLDER = re.compile(r"<[^<>]*>")


def is_windows_account_name(username: str) -> bool:
    """True for the two forms Windows authentication takes: ``DOMAIN\\user`` or a UPN."""
    name = username.strip()
    return bool(_DOWN_LEVEL.fullmatch(name) or _UPN.fullmatch(name))


def binding_problems(binding: Binding) -> list[str]:
    """What would make this binding fail at its source although the file is valid (each one a
    sentence saying what to change). A Windows username that is neither ``DOMAIN\\user`` nor a
    UPN: the gateway signs in as a local user of its own machine, and the source refuses it."""
    problems: list[str] = []
    username = binding.username
    if username is not None and _PLACEHOLDER.search(username):
        problems.append(f"username {username!r} is a placeholder of a draft: put the account here")
    elif (
        username is not None
        and binding.credential_type is CredentialType.WINDOWS
        and not is_windows_account_name(username)
    ):
        problems.append(
            f"username {username!r} is neither DOMAIN\\user nor a UPN (user@domain.com): Windows "
            "sources refuse it; write the account with its domain"
        )
    return problems


def binding_warnings(binding: Binding) -> list[str]:
    """What a person should know before this binding is used (it still works)."""
    warnings: list[str] = []
    # Only a gateway data source's PATCH must carry both; a Fabric connection's sends neither
    # unless the binding gives it (a partial update: the connection keeps its own).
    gateway_targets = any(t.connection_id is None for t in binding.targets) or any(
        not m.selects_connections for m in binding.matches
    )
    unset = [
        f"{key} ({value})"
        for key, value, given in (
            ("privacyLevel", binding.privacy_level.value, binding.privacy_level_given),
            ("encryptedConnection", binding.encrypted_connection.value, binding.encrypted_connection_given),
        )
        if not given and gateway_targets
    ]
    if unset:
        warnings.append(
            f"{' and '.join(unset)} not set: a credential change must carry both and Power BI does not "
            "report a data source's current ones; the healer reads them in the Fabric connection the "
            "data source is and keeps them, but if Fabric cannot tell, these defaults take the place of "
            "what an admin chose (the report warns); write the data source's own values in the binding "
            "to be sure"
        )
    if binding.take_over:
        warnings.append(
            "takeOver: true makes the identity the owner of each dataset using a cloud target; "
            "Power BI then resets the credentials of that dataset's other cloud data sources, "
            "which must be bound too (or be re-entered by hand)"
        )
    return warnings
