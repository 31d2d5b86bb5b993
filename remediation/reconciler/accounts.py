"""Whose account a target signs in as, in a run: Key Vault's current secret and what follows from it.

The account rules of DESIGN.md count per account and per locator (:mod:`remediation.rules.accounts`
says what an account key and a locator are). Both can depend on the secret itself: a JSON secret's
``username`` overrides the binding's, and decides whether a Windows account is a domain account.
So the secret is read first, once per run (:meth:`Accounts.secret`; the run masks its value in
every text it lets out), and a target's account and locator are read through it. The healer
orders its presentations by these, the presenter labels its outcomes with them, and the refresher
gathers the refresh gate's evidence with them.
"""

from __future__ import annotations

from dataclasses import replace

from remediation.clients.keyvault import KeyVaultClient, SecretValue
from remediation.config.bindings import CredentialType
from remediation.errors import RemediationError
from remediation.reconciler.runs import Resolved, Run
from remediation.rules.accounts import account_key
from remediation.rules.credentials import resolve_credential

__all__ = ["Accounts"]


class Accounts:
    """Reads a target's secret, user name, account and locator within a run (thread-safe; one
    per healer)."""

    def __init__(self, keyvault: KeyVaultClient) -> None:
        self.keyvault = keyvault

    def secret(self, name: str, run: Run) -> SecretValue:
        """Key Vault's current version of secret ``name``, read once per run (the run holds its
        value until it ends, and masks it). Raises what :meth:`KeyVaultClient.get_secret` raises."""
        key = name.lower()
        with run.key_lock(f"secret:{key}"):
            secret = run.secrets.get(key)
            if secret is None:
                secret = run.take_read(f"secret:{key}", lambda: self.keyvault.get_secret(name))
                run.secrets[key] = secret
                run.hold_secret(secret.value)  # masked in every text the run lets out (runs.py)
            return secret

    def read_ahead(self, name: str, run: Run) -> None:
        """Start reading secret ``name`` now, beside the run's other reads (the first
        :meth:`secret` of the run takes its answer)."""
        run.read_ahead(f"secret:{name.lower()}", lambda: self.keyvault.get_secret(name))

    def with_username(self, item: Resolved, run: Run) -> Resolved:
        """``item`` with the user name its credential signs in as (a JSON secret may override the
        binding's), so that its locator is the right one; unchanged when it cannot be read."""
        binding = item.binding
        if binding.credential_type not in (CredentialType.BASIC, CredentialType.WINDOWS):
            return item
        try:
            return replace(
                item, username=resolve_credential(binding, self.secret(binding.secret, run).value).username
            )
        except RemediationError:
            return item  # the presenter reports why

    def where_of(self, item: Resolved, run: Run) -> str:
        """Where an acceptance at ``item`` licenses (its locator, with the secret's user name)."""
        return self.with_username(item, run).where

    def account_of(self, item: Resolved, run: Run) -> str:
        """The account key of a target (its secret's username may override the binding's)."""
        binding = item.binding
        username = binding.username
        if binding.credential_type in (CredentialType.BASIC, CredentialType.WINDOWS):
            try:
                username = resolve_credential(binding, self.secret(binding.secret, run).value).username
            except RemediationError:
                return f"unresolved:{binding.name.lower()}"  # the presenter reports why
        return account_key(binding, username)

    def label(self, item: Resolved, run: Run) -> str | None:
        """The account key an outcome carries (figures per account): an identifier from the
        bindings file or the secret's ``username``, never a credential; None if it cannot be told."""
        try:
            return self.account_of(item, run)
        except Exception:  # noqa: BLE001 - a label must not stop the heal; the presenter reports errors
            return None
