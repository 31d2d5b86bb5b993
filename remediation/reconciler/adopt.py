"""``adopt``: what moving a Fabric connection onto a Key Vault reference (or back) would do, and
why it is refused.

Microsoft's own answer to half of this product's problem is a Key Vault reference: a cloud
connection that names ``{connectionId, secretName}`` reads the latest version itself at each
refresh (FABRIC.md §2, §6). ``python -m remediation adopt`` helps a connection onto it. This module
reads what the move needs (GET requests only, and the secret from Key Vault, never shown) and
either refuses, saying why, or returns a :class:`MovePlan`: what is sent, whose account signs in,
and the bindings change to make. Nothing here sends anything: the move itself is a presentation
like any other (Fabric tests the reference with ``skipTestConnection`` false: one sign-in with Key
Vault's current version), made by the healer through the presenter and the safety core
(:meth:`remediation.reconciler.healer.Healer.move_connection`).

Refused (:class:`AdoptRefused`, nothing sent): a connection Fabric does not list, one no binding
covers, one bound to another secret than ``--secret``, one whose connectivity or credential type
has no reference field (:func:`remediation.rules.references.reference_support`), one whose
credential type is not its binding's, a secret stored as ``{"username", "password"}`` (a reference
reads the whole value as the password), and a Key Vault connection Fabric does not list, that is
no Key Vault connection, or that reads another vault than the product's. ``--release`` is refused
for a connection not known to reference Key Vault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from remediation.clients.fabric import Connection, FabricClient, FabricEntityNotFound, FabricNotAuthorized
from remediation.clients.keyvault import KeyVaultClient
from remediation.config.bindings import Binding, BindingSet
from remediation.errors import BindingsError, RemediationError
from remediation.ledger.references import RecordState, References
from remediation.reconciler.targets.fabric import UnsupportedConnection, reference_request
from remediation.rules.accounts import account_key
from remediation.rules.connections import fabric_credential_type
from remediation.rules.credentials import resolve_credential
from remediation.rules.references import is_key_vault_connection, reference_support

__all__ = ["AdoptRefused", "MovePlan", "plan_adoption", "plan_release"]


class AdoptRefused(RemediationError):
    """``adopt`` will not move this connection; nothing was sent. The message says why and what
    to do."""


@dataclass(frozen=True)
class MovePlan:
    """A connection's move onto a Key Vault reference (``release`` False) or back to a copy.

    ``request`` is the ``UpdateConnectionRequest`` an adoption sends (no secret in it; None for a
    release, which sends a copy through the normal heal path); ``account`` whose sign-in Fabric's
    test is; ``known`` what is known of the connection's reference now."""

    connection: Connection
    binding: Binding
    secret: str
    account: str
    release: bool = False
    vault_connection: Connection | None = None
    field: str | None = None
    request: dict[str, object] | None = None
    known: str = ""

    @property
    def connection_id(self) -> str:
        return self.connection.id

    def lines(self) -> list[str]:
        """The plan, as a person reads it (no secret: the request carries a secret's name only)."""
        c = self.connection
        what = f"{c.connection_type or 'connection'} {c.path or c.display_name or c.id}"
        signs_in = c.credential_type or "credential type unknown"
        who = self.account.split(":", 1)[-1]
        head = [
            f"connection {c.id} ({what}, {c.connectivity_type}, {signs_in})",
            f"binding {self.binding.name!r}, secret {self.secret!r}, account {who}",
        ]
        if self.known:
            head.append(f"now: {self.known}")
        if self.release:
            return [
                *head,
                "move back: Key Vault's current version is sent as a copy through the normal heal path "
                "(PATCH with the credential, skipTestConnection false: Fabric tests it, one sign-in of "
                "the account; the healer then pushes every new version again)",
                f"then: {self.bindings_change()}",
            ]
        assert self.vault_connection is not None and self.request is not None
        kv = self.vault_connection
        return [
            *head,
            f"Key Vault connection {kv.id} ({kv.display_name or '-'}, {kv.path or 'vault not shown'})",
            f"send: PATCH /connections/{c.id} {json.dumps(self.request, separators=(',', ':'))}",
            f"Fabric tests it (skipTestConnection false): it reads the latest version of {self.secret!r} "
            "and signs in with it, one sign-in of the account, checked by the safety core like any "
            "presentation; a refused test leaves the connection as it was",
            "after: Fabric reads every new version itself at each refresh; the healer sends this "
            "connection no copy, and retries the refreshes of its models after a rotation",
            f"then: {self.bindings_change()}",
        ]

    def target_json(self) -> dict[str, object]:
        """The binding's target for the connection after the move."""
        target: dict[str, object] = {"connectionId": self.connection_id}
        if not self.release:
            target["keyVaultReference"] = True
        return target

    def bindings_change(self) -> str:
        """The bindings change to make once the move is done."""
        if self.release:
            return (
                f'in binding {self.binding.name!r}, remove "keyVaultReference" from the target '
                f"{json.dumps({'connectionId': self.connection_id})}"
            )
        return (
            f"in binding {self.binding.name!r}, make the connection's target "
            f"{json.dumps(self.target_json())} (or let --write-bindings FILE do it)"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "connectionId": self.connection_id,
            "binding": self.binding.name,
            "secret": self.secret,
            "account": self.account,
            "release": self.release,
            "vaultConnectionId": None if self.vault_connection is None else self.vault_connection.id,
            "field": self.field,
            "request": self.request,
            "now": self.known or None,
            "bindingsChange": self.bindings_change(),
        }


def _connection(fabric: FabricClient, connection_id: str, what: str) -> Connection:
    try:
        return fabric.get_connection(connection_id)
    except (FabricEntityNotFound, FabricNotAuthorized) as exc:
        raise AdoptRefused(
            f"Fabric does not list {what} {connection_id} to this identity ({exc.code or exc.status}): "
            "check the id, and give the identity a role on it (Manage connections and gateways → "
            "Manage users)"
        ) from None


def _binding(bindings: BindingSet, connection: Connection) -> Binding:
    try:
        binding = bindings.for_connection(
            connection.id,
            connection_type=connection.connection_type,
            connectivity_type=connection.connectivity_type,
            path=connection.path,
        )
    except BindingsError as exc:
        raise AdoptRefused(str(exc)) from None
    if binding is None:
        raise AdoptRefused(
            f"connection {connection.id} is not bound: add a binding with its secret and the target "
            f'{{"connectionId": "{connection.id}"}} (the reference will name that secret), then adopt'
        )
    return binding


def _known(
    references: References, binding: Binding, connection_id: str
) -> tuple[bool, RecordState | None, str]:
    """Whether the bindings mark the connection, what the ledger's record says, and both in words."""
    marked = any(t.connection_id == connection_id and t.key_vault_reference for t in binding.targets)
    record = references.of(connection_id)
    said = []
    if marked:
        said.append('the bindings mark it "keyVaultReference": true')
    if record is not None:
        said.append(f"the ledger says {record.state} (by adopt, request {record.request})")
    return marked, None if record is None else record.state, "; ".join(said)


def plan_adoption(
    *,
    fabric: FabricClient,
    keyvault: KeyVaultClient,
    bindings: BindingSet,
    references: References,
    vault_url: str | None,
    connection_id: str,
    vault_connection_id: str,
    secret_name: str | None = None,
) -> MovePlan:
    """What moving ``connection_id`` onto a reference to its binding's secret (or ``secret_name``,
    which must be that secret) through ``vault_connection_id`` would send. Reads only: the two
    connections (GET) and the secret's current value, to check its shape (never kept).

    Raises :class:`AdoptRefused` (see the module docstring)."""
    connection = _connection(fabric, connection_id, "connection")
    binding = _binding(bindings, connection)
    if secret_name is not None and secret_name.strip().casefold() != binding.secret.casefold():
        raise AdoptRefused(
            f"connection {connection.id} is bound by {binding.name!r} to secret {binding.secret!r}, not "
            f"{secret_name!r}: a reference to another secret would sign in with another value; bind it "
            "to that secret first, or leave --secret out"
        )
    support = reference_support(
        connection.connectivity_type, connection.credential_type, connection.connection_type
    )
    if not support.eligible:
        raise AdoptRefused(
            f"connection {connection.id} cannot reference Key Vault: {support.reason} ({support.source}); "
            "the healer keeps pushing its copies"
        )
    wanted = fabric_credential_type(binding.credential_type)
    if connection.credential_type and connection.credential_type != wanted:
        raise AdoptRefused(
            f"connection {connection.id} signs in with {connection.credential_type}, but binding "
            f"{binding.name!r} is {wanted}: fix the binding first"
        )
    vault = _connection(fabric, vault_connection_id, "Key Vault connection")
    if not is_key_vault_connection(vault.connection_type):
        raise AdoptRefused(
            f"connection {vault.id} is a {vault.connection_type or 'connection of unknown type'}, not a Key "
            "Vault connection (Manage connections and gateways → Azure Key Vault references)"
        )
    if vault.path and vault_url and not _same_vault(vault.path, vault_url):
        raise AdoptRefused(
            f"Key Vault connection {vault.id} reads {vault.path}, but the secret {binding.secret!r} the "
            f"healer reads is in {vault_url}: the reference would read another value"
        )
    try:
        secret = keyvault.get_secret(binding.secret)
        resolved = resolve_credential(binding, secret.value)
    except RemediationError as exc:
        raise AdoptRefused(f"Key Vault: {exc}") from None
    if resolved.secret != secret.value:
        raise AdoptRefused(
            f'secret {binding.secret!r} holds {{"username", "password"}}: a reference reads the whole value '
            "as the password; store the password alone (and the username in the binding) first"
        )
    try:
        request = reference_request(
            binding, resolved, connection, vault_connection_id=vault.id, secret_name=binding.secret
        )
    except UnsupportedConnection as exc:
        raise AdoptRefused(str(exc)) from None
    return MovePlan(
        connection,
        binding,
        binding.secret,
        account_key(binding, resolved.username),
        vault_connection=vault,
        field=support.field,
        request=request,
        known=_known(references, binding, connection.id)[2],
    )


def plan_release(
    *, fabric: FabricClient, bindings: BindingSet, references: References, connection_id: str
) -> MovePlan:
    """What moving ``connection_id`` back from its Key Vault reference to a copy would do.

    Raises :class:`AdoptRefused` for a connection Fabric does not list, one no binding covers, and
    one not known to reference Key Vault (no mark, no record of ``adopt``)."""
    connection = _connection(fabric, connection_id, "connection")
    binding = _binding(bindings, connection)
    marked, recorded, known = _known(references, binding, connection.id)
    if not marked and recorded in (None, "released"):
        raise AdoptRefused(
            f"connection {connection.id} is not known to reference Key Vault (no mark in the bindings, "
            "no adopt in the ledger): nothing to release; `heal --connection` pushes its copy"
        )
    return MovePlan(
        connection,
        binding,
        binding.secret,
        account_key(binding, binding.username),
        release=True,
        known=known,
    )


def _same_vault(path: str, vault_url: str) -> bool:
    """Whether a Key Vault connection's path (a vault URL, its host, or the vault's name) names
    ``vault_url``."""
    wanted = urlsplit(vault_url.strip().casefold())
    given = path.strip().casefold()
    if "://" in given:
        there = urlsplit(given)
        return (there.hostname, there.port) == (wanted.hostname, wanted.port)
    name = given.rstrip("/")
    host = wanted.hostname or ""
    return name in (host, host.split(".", 1)[0])
