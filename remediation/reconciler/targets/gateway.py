"""Gateway data sources as a target kind: how to read one, build its credential, and send it.

:class:`GatewayKind` is the :class:`~remediation.reconciler.targets.TargetKind` of Power BI gateway data
sources (``PATCH /gateways/{g}/datasources/{d}``); OAuth2 caller-identity bindings first get the
data source owner's own token (a password grant: a presentation too), cloud data sources may
need Take Over (``takeOver`` bindings).

The healer's decisions, leases and account rules live above this module; here is what is
particular to Power BI gateway data sources, in three parts of their own:

* **On-premises or cloud.** On-premises gateways need the credential encrypted with the
  gateway's public key; the virtual gateway of cloud data sources takes plain JSON. Which is
  which, and the keys, come from :class:`~remediation.reconciler.targets.gateway_keys.GatewayKeys`
  (cached across runs; a key that changed is detected from the gateway's answer and read again
  once).
* **The operator's settings are kept.** A PATCH must carry ``privacyLevel`` and
  ``encryptedConnection``; what the binding leaves out is read from the Fabric connection the
  data source is (:mod:`remediation.reconciler.targets.gateway_settings`), else sent as the
  defaults with a warning on the report's target.
* **Take Over** (:mod:`remediation.reconciler.targets.gateway_take_over`): after a 401 on a cloud
  data source, when the binding allows it and every other data source it resets is bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from remediation.clients.api_errors import ApiError
from remediation.clients.fabric import Connection, FabricClient
from remediation.clients.identity import AuthenticationError
from remediation.clients.keyvault import KeyVaultClient, SecretValue
from remediation.clients.powerbi import PowerBIClient, PowerBINotAuthorized
from remediation.clients.powerbi_models import Gateway
from remediation.config.bindings import Binding, BindingSet, CredentialType, Target
from remediation.errors import RemediationError
from remediation.inventory.inventory import Inventory
from remediation.ledger import Ledger
from remediation.ledger.references import References
from remediation.reconciler.runs import Resolved, Run
from remediation.reconciler.targets import Presented, TargetRefused, answer_of
from remediation.reconciler.targets.gateway_keys import GATEWAY_LIST, GatewayKeys
from remediation.reconciler.targets.gateway_settings import SourceFacts, SourceSettings, SourceSettingsReader
from remediation.reconciler.targets.gateway_take_over import TakeOverRefused, TakeOvers
from remediation.rules.credentials import ResolvedCredential, credential_details, update_datasource_request
from remediation.rules.gateway_crypto import encrypt_credentials
from remediation.safety.answers import Verdict, VerdictOf, grant_answer, undecryptable, verdict_of
from remediation.safety.presenting import reference_decision

__all__ = [
    "GatewayFound",
    "GatewayKind",
    "UserTokenFactory",
    "grant_verdict",
    "patch_verdict",
    "request_body",
]

_BOUND_OR_DEFAULT = SourceSettings()
"""Settings that send the binding's privacy level and encryption, or the defaults."""


@dataclass(frozen=True)
class GatewayFound:
    """What :meth:`GatewayKind.discover` read: the gateway to encrypt for (None for caller
    identity) and the settings to send."""

    gateway: Gateway | None
    settings: SourceSettings = SourceSettings()


def request_body(
    binding: Binding,
    resolved: ResolvedCredential,
    gateway: Gateway,
    settings: SourceSettings = _BOUND_OR_DEFAULT,
) -> dict[str, object]:
    """The PATCH body: encrypted for an on-premises gateway, plain for a cloud data source."""
    encrypt = None
    if gateway.public_key is not None:
        encrypt = partial(encrypt_credentials, key=gateway.public_key)
    return update_datasource_request(
        credential_details(
            binding,
            resolved,
            encrypt=encrypt,
            privacy_level=settings.privacy_level,
            encrypted_connection=settings.encrypted_connection,
        )
    )


def patch_verdict(exc: ApiError) -> VerdictOf:
    """The verdict of a credentials PATCH that raised ``exc`` (the safety core's reading)."""
    return verdict_of(answer_of("powerbi", exc))


def grant_verdict(exc: AuthenticationError) -> VerdictOf:
    """The verdict of the password grant of a caller-identity binding that raised ``exc``."""
    verdict = verdict_of(grant_answer(exc.code, exc.error, exc.message))
    hint = f" ({exc.hint})" if exc.hint else ""
    return VerdictOf(verdict.verdict, f"password grant: {verdict.reason}{hint}")


UserTokenFactory = Callable[[str, str, Callable[[], str]], Callable[[], str]]
"""``(username, secret version, password_supplier) -> token provider`` for OAuth2 caller-identity
bindings; its tokens are granted for that version's password only."""


class GatewayKind:
    """Power BI gateway data sources (:class:`~remediation.reconciler.targets.TargetKind`)."""

    service = "Power BI"

    def __init__(
        self,
        *,
        powerbi: PowerBIClient,
        keyvault: KeyVaultClient,
        bindings: BindingSet,
        ledger: Ledger,
        inventory: Callable[[], Inventory],
        user_tokens: UserTokenFactory | None,
        clock: Callable[[], float] = time.time,
        fabric: FabricClient | None = None,
        connections: Callable[[Run], list[Connection]] | None = None,
        source_facts: Callable[[Target, Run], SourceFacts | None] | None = None,
    ) -> None:
        self.powerbi = powerbi
        self.keyvault = keyvault
        self.gateways = GatewayKeys(powerbi, clock=clock)
        self.source_settings = SourceSettingsReader(
            gateways=self.gateways,
            clock=clock,
            fabric=fabric,
            connections=connections,
            source_facts=source_facts,
        )
        self.take_overs = TakeOvers(
            powerbi=powerbi, bindings=bindings, ledger=ledger, gateways=self.gateways, inventory=inventory
        )
        self._user_tokens = user_tokens
        self._user_providers: dict[tuple[str, str, str], Callable[[], str]] = {}
        self._user_lock = threading.Lock()
        self._bindings = bindings
        self._references = References(ledger)
        self._fabric = fabric

    def describe(self, item: Resolved) -> str:
        return f"gateway {item.target.gateway_id}"

    def discover(self, item: Resolved, run: Run) -> GatewayFound:
        """The gateway and its key (None for caller-identity bindings: nothing is encrypted), and
        the privacy level and encryption to send (see the module docstring)."""
        self._refuse_if_referenced(item, run)
        if item.binding.uses_caller_identity:
            return GatewayFound(None, self.source_settings.read(item, run))
        gateway_id = item.target.gateway_id
        read_key = partial(self.gateways.gateway, gateway_id, reading=run.key_lock(GATEWAY_LIST))
        if not self.gateways.cached(gateway_id):  # its key is read beside the settings
            run.read_ahead(f"gateway:{gateway_id}", read_key)
        settings = self.source_settings.read(item, run)
        return GatewayFound(run.take_read(f"gateway:{gateway_id}", read_key), settings)

    def _refuse_if_referenced(self, item: Resolved, run: Run) -> None:
        """A gateway data source that is a Fabric connection reading its secret from Key Vault (the
        bindings mark that connection, or ``adopt`` moved it) must not be sent a copy through Power
        BI either: the copy would replace the reference. Raises
        :class:`~remediation.reconciler.targets.TargetRefused` then (nothing is sent); the safety
        core decides (:func:`~remediation.safety.presenting.reference_decision`). A data source
        whose connection Fabric cannot name is sent its copy as before (the report's warnings say
        its settings could not be read)."""
        if self._fabric is None:
            return
        marks = any(t.key_vault_reference for b in self._bindings for t in b.targets)
        if not marks and not self._references.any():
            return  # no connection can be known to reference Key Vault: nothing to look up
        connection, _unread = self.source_settings.connection_of(item.target, run)
        if connection is None:
            return
        marked = any(
            t.connection_id == connection.id and t.key_vault_reference
            for b in self._bindings
            for t in b.targets
        )
        record = self._references.of(connection.id)
        decision = reference_decision(
            marked=marked, recorded=None if record is None else record.state, connection=connection.id
        )
        if decision is not None:
            said = decision.reason[0].lower() + decision.reason[1:]
            raise TargetRefused(
                f"data source {item.target.datasource_id} is Fabric {said}; a copy sent through Power BI "
                "would replace that, so nothing is sent. Bind the connection by its connectionId instead"
            )

    def verdict(self, exc: ApiError) -> VerdictOf:
        return patch_verdict(exc)

    def send(
        self,
        item: Resolved,
        secret: SecretValue,
        resolved: ResolvedCredential,
        found: object,
        run: Run,
        before_attempt: Callable[[], None],
    ) -> None:
        """The password grant (caller identity), then the PATCH; once more under a new gateway
        key (the gateway could not decrypt, so nothing reached the source), or after Take Over
        (401: nothing was tested)."""
        binding, target = item.binding, item.target
        assert isinstance(found, GatewayFound)
        gateway, settings = found.gateway, found.settings
        token: str | None = None
        if binding.credential_type is CredentialType.OAUTH2:
            try:
                token = self._user_token(binding, secret)()
            except AuthenticationError as exc:
                raise Presented(grant_verdict(exc)) from None
            except RemediationError as exc:
                raise Presented(VerdictOf(Verdict.NOT_PRESENTED, str(exc))) from None
            body = update_datasource_request(
                credential_details(
                    binding,
                    resolved,
                    encrypt=None,
                    privacy_level=settings.privacy_level,
                    encrypted_connection=settings.encrypted_connection,
                )
            )
        else:
            assert gateway is not None
            body = request_body(binding, resolved, gateway, settings)

        def send(payload: dict[str, object]) -> None:
            self.powerbi.update_datasource(
                target.gateway_id, target.datasource_id, payload, token=token, before_attempt=before_attempt
            )

        try:
            try:
                send(body)
            except PowerBINotAuthorized:
                # A cloud data source needs the caller to own a dataset that uses it (Take Over).
                if not binding.take_over or token is not None:
                    raise
                self.take_overs.take_over_for(target, run)
                send(body)
            except ApiError as exc:
                fresh = None if gateway is None else self.gateways.fresh_key_after(exc, gateway)
                if fresh is None or not undecryptable(answer_of("powerbi", exc), key_changed=True):
                    raise
                send(request_body(binding, resolved, fresh, settings))
        except TakeOverRefused as exc:
            raise Presented(VerdictOf(Verdict.NOT_PRESENTED, str(exc))) from None
        for warning in settings.warnings:  # the data source holds what was sent now
            run.warn(target.key, warning)

    def _user_token(self, binding: Binding, secret: SecretValue) -> Callable[[], str]:
        if self._user_tokens is None:
            raise RemediationError(f"binding {binding.name!r} needs user tokens, which are not configured")
        username = binding.username or ""
        key = (username.lower(), binding.secret, secret.version)
        with self._user_lock:
            provider = self._user_providers.get(key)
            if provider is None:
                # The provider asks Key Vault again when it needs the password, so no copy is kept.
                provider = self._user_tokens(
                    username,
                    secret.version,
                    lambda: self.keyvault.get_secret(secret.name, secret.version).value,
                )
                self._user_providers[key] = provider
        return provider
