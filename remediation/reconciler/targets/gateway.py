"""Gateway data sources as a target kind: how to read one, build its credential, and send it.

:class:`GatewayKind` is the :class:`~remediation.reconciler.targets.TargetKind` of Power BI gateway data
sources (``PATCH /gateways/{g}/datasources/{d}``); OAuth2 caller-identity bindings first get the
data source owner's own token (a password grant: a presentation too), cloud data sources may
need Take Over (``takeOver`` bindings).

The healer's decisions, leases and account rules live above this module; here is what is
particular to Power BI gateway data sources (``PATCH /gateways/{g}/datasources/{d}``):

* **On-premises or cloud.** On-premises gateways need the credential encrypted with the
  gateway's public key; the virtual gateway of cloud data sources takes plain JSON. The single
  gateway read cannot decide it: for a cloud gateway ``GET /gateways/{id}`` answers ``{"id"}``
  without a key, or 404, or 401/403 (all seen in the field). ``GET /gateways`` lists exactly the
  on-premises gateways the caller administers, with their keys, so a gateway in that list is
  on-premises and any other is treated as cloud (an on-premises gateway the caller does not
  administer refuses the PATCH with 401 before any test: nothing is presented).
* **The operator's settings are kept.** A PATCH must carry ``privacyLevel`` and
  ``encryptedConnection``, and Power BI does not report a data source's current ones; Fabric
  does, for the connection the data source is (:mod:`remediation.rules.connections`: the same id, else
  the unique connection of the same gateway, type and path). So, for what the binding leaves
  out, :meth:`GatewayKind.discover` finds that connection in Fabric's ``GET /connections``
  (one paged list per instance and :data:`CONNECTIONS_CACHE_SECONDS`, so a value an admin changed
  within that minute may be sent as it was; a 401/403 is remembered as long) and its values are
  sent; when it cannot be found the defaults are sent and the report's target says so
  (:func:`source_settings`). These reads are not sign-ins and never fail a target. A binding's
  explicit values always win (no read when it gives both).
* **Keys are cached** across runs for :data:`GATEWAY_CACHE_SECONDS`; a key that changed since is
  detected from the gateway's answer (``DM_GWPipeline_UnknownError``: it could not decrypt,
  nothing reached the source) and read again once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from remediation.clients.api_errors import ApiError, ThrottledPastDeadline
from remediation.clients.fabric import Connection, FabricClient
from remediation.clients.identity import AuthenticationError
from remediation.clients.keyvault import KeyVaultClient, SecretValue
from remediation.clients.powerbi import EntityNotFound, PowerBIClient, PowerBINotAuthorized
from remediation.clients.powerbi_models import DatasetDatasource, Gateway
from remediation.config.bindings import (
    Binding,
    BindingSet,
    CredentialType,
    EncryptedConnection,
    PrivacyLevel,
    Target,
)
from remediation.errors import RemediationError
from remediation.inventory.inventory import Inventory
from remediation.ledger import Ledger
from remediation.reconciler.runs import Resolved, Run, TakeOver
from remediation.reconciler.targets import Presented, answer_of
from remediation.rules.accounts import source_locator, text_map
from remediation.rules.connections import corresponding_connection
from remediation.rules.credentials import ResolvedCredential, credential_details, update_datasource_request
from remediation.rules.gateway_crypto import encrypt_credentials
from remediation.rules.redact import describe_datasource, mask_urls
from remediation.safety.answers import Verdict, VerdictOf, grant_answer, undecryptable, verdict_of

__all__ = [
    "GATEWAY_CACHE_SECONDS",
    "GatewayFound",
    "GatewayKeys",
    "GatewayKind",
    "SourceFacts",
    "SourceSettings",
    "TakeOverRefused",
    "UserTokenFactory",
    "grant_verdict",
    "patch_verdict",
    "request_body",
    "source_settings",
]

logger = logging.getLogger(__name__)

GATEWAY_CACHE_SECONDS = 3600.0
"""How long gateways and their public keys are reused across runs (a changed key is detected)."""


@dataclass(frozen=True)
class SourceSettings:
    """The privacy level and encryption to send (None: the binding's, its own or the default),
    and what the report's target should say about them."""

    privacy_level: PrivacyLevel | None = None
    encrypted_connection: EncryptedConnection | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayFound:
    """What :meth:`GatewayKind.discover` read: the gateway to encrypt for (None for caller
    identity) and the settings to send."""

    gateway: Gateway | None
    settings: SourceSettings = SourceSettings()


@dataclass(frozen=True)
class SourceFacts:
    """How Power BI describes a gateway data source (to find its Fabric connection by path), and
    the ids of the other data sources known on its gateway (never its connection)."""

    datasource_type: str | None
    connection_details: Mapping[str, str]
    others: frozenset[str] = frozenset()


CONNECTIONS_CACHE_SECONDS = 60.0
"""How long one instance reuses Fabric's connection list (or its refusal) to learn the privacy
level and encryption of the data sources it heals."""

_ENCRYPTION = {
    "Encrypted": EncryptedConnection.ENCRYPTED,
    "NotEncrypted": EncryptedConnection.NOT_ENCRYPTED,
    # "Any" tries an encrypted connection first and falls back to an unencrypted one; Power BI's
    # API has no such value. Encrypted is sent: it is what the connection uses whenever it can,
    # what the healer sent before it read anything (no regression), and NotEncrypted would be a
    # silent downgrade. The report says so (see source_settings).
    "Any": EncryptedConnection.ENCRYPTED,
}


def source_settings(binding: Binding, connection: Connection | None, unread: str) -> SourceSettings:
    """What to send for what ``binding`` leaves out: ``connection``'s privacy level and encryption
    (the data source's current ones), or, when it is None (``unread`` says why) or a value is
    not one Power BI takes, the defaults with a warning saying how to keep them."""
    missing: list[str] = []
    notes: list[str] = []
    privacy: PrivacyLevel | None = None
    encrypted: EncryptedConnection | None = None
    if not binding.privacy_level_given:
        try:
            privacy = None if connection is None else PrivacyLevel(connection.privacy_level or "")
        except ValueError:
            privacy = None
        if privacy is None:
            missing.append(f"privacyLevel ({binding.privacy_level.value})")
    if not binding.encrypted_connection_given:
        reported = None if connection is None else connection.connection_encryption
        encrypted = _ENCRYPTION.get(reported or "")
        if encrypted is None:
            missing.append(f"encryptedConnection ({binding.encrypted_connection.value})")
        elif reported == "Any":
            notes.append(
                "the connection allows an unencrypted fallback (Fabric's connectionEncryption Any), "
                "which Power BI's API cannot express: encryptedConnection Encrypted was sent; write "
                '"encryptedConnection": "NotEncrypted" in the binding if the source cannot encrypt'
            )
    if missing:
        why = unread if connection is None else "Fabric reported a value Power BI does not take"
        notes.insert(
            0,
            f"{' and '.join(missing)} set to the default{'s' if len(missing) > 1 else ''} because the "
            f"data source's current setting could not be read ({why}); write the data source's own "
            "values in the binding to keep them",
        )
    return SourceSettings(privacy, encrypted, tuple(notes))


def request_body(
    binding: Binding,
    resolved: ResolvedCredential,
    gateway: Gateway,
    settings: SourceSettings = SourceSettings(),
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


class GatewayKeys:
    """Which gateways are on-premises, and their public keys; shared by every run (thread-safe)."""

    def __init__(self, powerbi: PowerBIClient, *, clock: Callable[[], float] = time.time) -> None:
        self._powerbi = powerbi
        self._clock = clock
        self._lock = threading.Lock()
        self._listed: tuple[dict[str, Gateway], float] | None = None  # on-premises gateways, read at
        self._single: dict[str, tuple[Gateway, float]] = {}  # gateways read one by one

    def gateway(self, gateway_id: str) -> Gateway:
        """The gateway to encrypt for: with its key when on-premises, without one when cloud.

        Raises :class:`~remediation.clients.http.ApiError` only when Power BI cannot be asked at all.
        """
        gateway_id = gateway_id.lower()
        listed = self._on_premises()
        if gateway_id in listed:
            return listed[gateway_id]
        now = self._clock()
        with self._lock:
            cached = self._single.get(gateway_id)
        if cached is not None and now - cached[1] < GATEWAY_CACHE_SECONDS:
            return cached[0]
        try:
            gateway = self._powerbi.get_gateway(gateway_id)
        except (EntityNotFound, PowerBINotAuthorized) as exc:
            # Not among the caller's on-premises gateways and not readable: a cloud data source's
            # virtual gateway (404, 401 and 403 all occur for those).
            logger.info(
                "gateway %s is not an on-premises gateway of the caller (%s): cloud", gateway_id, exc.code
            )
            gateway = Gateway(id=gateway_id, name=None, type="Cloud")
        with self._lock:
            self._single[gateway_id] = (gateway, self._clock())
        return gateway

    def listed_on_premises(self, gateway_id: str) -> bool:
        """True when ``gateway_id`` is among the on-premises gateways the caller administers
        (``GET /gateways``, cached); any other gateway may be a cloud data source's."""
        return gateway_id.lower() in self._on_premises()

    def fresh_key_after(self, exc: ApiError, used: Gateway) -> Gateway | None:
        """After ``DM_GWPipeline_UnknownError`` with ``used``'s key: the gateway with a new key if
        its key changed since it was read, else None (the error stands)."""
        if exc.code != "DM_GWPipeline_UnknownError" or used.public_key is None:
            return None
        try:
            fresh = self._powerbi.get_gateway(used.id)
        except ApiError:
            return None
        if fresh.public_key is None or fresh.public_key == used.public_key:
            return None
        with self._lock:
            self._single[used.id.lower()] = (fresh, self._clock())
            if self._listed is not None and used.id.lower() in self._listed[0]:
                self._listed[0][used.id.lower()] = fresh
        logger.info("gateway %s has a new public key; sending again under it", used.id)
        return fresh

    def _on_premises(self) -> dict[str, Gateway]:
        now = self._clock()
        with self._lock:
            if self._listed is not None and now - self._listed[1] < GATEWAY_CACHE_SECONDS:
                return self._listed[0]
        try:
            found = {g.id.lower(): g for g in self._powerbi.get_gateways() if g.public_key is not None}
        except ApiError as exc:
            logger.warning("cannot list gateways (%s); reading them one by one", exc)
            return {}
        with self._lock:
            self._listed = (found, self._clock())
        return found


UserTokenFactory = Callable[[str, str, Callable[[], str]], Callable[[], str]]
"""``(username, secret version, password_supplier) -> token provider`` for OAuth2 caller-identity
bindings; its tokens are granted for that version's password only."""


class TakeOverRefused(RemediationError):
    """Take Over was needed and refused (nothing was presented); the message says why."""


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
        self._fabric = fabric
        self._connections = connections
        self._source_facts = source_facts
        self.keyvault = keyvault
        self.bindings = bindings
        self.ledger = ledger
        self.gateways = GatewayKeys(powerbi, clock=clock)
        self._inventory = inventory
        self._user_tokens = user_tokens
        self._user_providers: dict[tuple[str, str, str], Callable[[], str]] = {}
        self._user_lock = threading.Lock()
        self._clock = clock
        self._listed: tuple[float, list[Connection] | None, str] | None = None
        self._listed_lock = threading.Lock()

    def describe(self, item: Resolved) -> str:
        return f"gateway {item.target.gateway_id}"

    def discover(self, item: Resolved, run: Run) -> GatewayFound:
        """The gateway and its key (None for caller-identity bindings: nothing is encrypted), and
        the privacy level and encryption to send (see the module docstring)."""
        gateway = None if item.binding.uses_caller_identity else self.gateways.gateway(item.target.gateway_id)
        binding = item.binding
        if binding.privacy_level_given and binding.encrypted_connection_given:
            return GatewayFound(gateway)
        connection, unread = self._connection_of(item.target, run)
        return GatewayFound(gateway, source_settings(binding, connection, unread))

    def _connection_of(self, target: Target, run: Run) -> tuple[Connection | None, str]:
        """The Fabric connection the data source is, or None and why it is not known. Never
        raises: a read that fails is a warning, not a failed target.

        One ``GET /connections`` (paged) serves every target of the instance for
        :data:`CONNECTIONS_CACHE_SECONDS` (a fan-out of a thousand targets must not cost a
        thousand reads), and a refusal (401/403: no Fabric role or API access) is remembered as
        long, so an identity without Fabric rights pays one refused call, not one per target.
        """
        if self._fabric is None or self._connections is None:
            return None, "no Fabric API is configured, and Power BI does not report them"
        listed, why = self._listed_connections(run)
        if listed is None:
            return None, f"Fabric's GET /connections: {why}"
        by_id = next((c for c in listed if c.id == target.datasource_id), None)
        if by_id is not None:  # Power BI's id is the connection's
            return by_id, ""
        first = f"no Fabric connection has the id {target.datasource_id}"
        try:
            facts = None if self._source_facts is None else self._source_facts(target, run)
        except RemediationError as exc:
            return None, f"{first}; Power BI's description of the data source: {_why(exc)}"
        if facts is None:
            return None, f"{first}; Power BI's description of the data source is unknown"
        # An on-premises data source is an on-premises connection of its gateway; a cloud one is
        # a cloud connection (a cloud connection to the same server is another thing).
        try:
            on_premises = self.gateways.listed_on_premises(target.gateway_id)
        except RemediationError as exc:
            return None, f"{first}; Power BI's gateway list: {_why(exc)}"
        candidates = [
            c
            for c in listed
            if c.id not in facts.others and c.connectivity_type.startswith("OnPremisesGateway") == on_premises
        ]
        found = corresponding_connection(
            target.datasource_id,
            facts.datasource_type,
            target.gateway_id,
            facts.connection_details,
            candidates,
        )
        connection = next((c for c in candidates if c.id == found), None)
        if connection is None:
            return None, f"{first}; no single Fabric connection has its gateway, type and path"
        return connection, ""

    def _listed_connections(self, run: Run) -> tuple[list[Connection] | None, str]:
        """The connections the identity has a role on (cached per instance), or None and why."""
        assert self._connections is not None
        now = self._clock()
        with self._listed_lock:
            if self._listed is not None and 0 <= now - self._listed[0] < CONNECTIONS_CACHE_SECONDS:
                return self._listed[1], self._listed[2]
        try:
            found: list[Connection] | None = self._connections(run)
            why = ""
        except (ApiError, RemediationError) as exc:
            found, why = None, _why(exc)
            refused = isinstance(exc, ApiError) and exc.status in (401, 403)
            if not refused:
                return None, why  # a fault (5xx, timeout): the next target asks again
        with self._listed_lock:
            self._listed = (now, found, why)
        return found, why

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
                self._take_over_for(target, run)
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

    def _take_over_for(self, target: Target, run: Run) -> None:
        """Take over a dataset that uses ``target`` (bindings with ``takeOver`` only).

        Take Over resets the credentials of the dataset's other cloud data sources, so it is
        refused (:class:`TakeOverRefused`, nothing presented) when one of them, as Power BI lists
        them right before, has no binding that could put its credential back. Raises it too when
        no dataset uses ``target``, or when the dataset's data sources cannot be read.
        """
        found = self._dataset_using(target)
        if found is None:
            raise TakeOverRefused(
                f"no dataset in the watched workspaces uses {target.gateway_id}/{target.datasource_id}, "
                "so there is none to take over; make the identity a user of the data source instead"
            )
        workspace_id, dataset_id, sources = found
        others = [s for s in sources if s.bound and _source_key(s) != target.key]
        unbound = [s for s in others if self._binding_of(s) is None]
        if unbound:
            first = describe_datasource(unbound[0].datasource_type, unbound[0].connection_details)
            raise TakeOverRefused(
                f"not taking over dataset {dataset_id}: Take Over resets the credentials of its other "
                f"data sources, and {len(unbound)} of them ({first}{', …' if len(unbound) > 1 else ''}) "
                "have no binding to put them back. Bind them, or give the identity access to the data "
                "source another way"
            )
        # Power BI resets the credentials of the dataset's other cloud data sources (those on an
        # on-premises gateway keep theirs: the gateway holds them). The ledger must stop saying
        # they hold a version, or they would not be healed again until the next version; so that
        # is forgotten first, and without it there is no Take Over (forgetting a version a source
        # still holds costs one PATCH of an accepted value, never a failed sign-in).
        reset = [s for s in others if not self.gateways.listed_on_premises(s.gateway_id or "")]
        for source in reset:
            gateway_id, datasource_id = _source_key(source)
            try:
                self.ledger.forget_applied(gateway_id, datasource_id)
            except RemediationError as exc:
                raise TakeOverRefused(
                    f"not taking over dataset {dataset_id}: the ledger could not forget what "
                    f"{gateway_id}/{datasource_id} holds ({exc}), so that source would not be healed "
                    "again after Power BI resets it; the next run tries again"
                ) from None
        try:
            self.powerbi.take_over_in_group(workspace_id, dataset_id)
        except ThrottledPastDeadline:
            raise
        except ApiError as exc:
            # Not a presentation (no credential is in it): the credential was not sent. Whether
            # Power BI took it over is unknown, so the reset sources stay forgotten (healed again).
            raise TakeOverRefused(
                f"the Take Over of dataset {dataset_id} failed ({_why(exc)}); nothing was presented, "
                "and the next run tries again"
            ) from None
        logger.warning(
            "took over dataset %s to update %s; its other data sources' credentials are reset by Power BI",
            dataset_id,
            target.datasource_id,
        )
        items: list[Resolved] = []
        for source in reset:
            resolved = self._binding_of(source)
            if resolved is not None:
                items.append(resolved)
        run.record_take_over(
            TakeOver(
                target=target.key,
                workspace_id=workspace_id,
                dataset_id=dataset_id,
                reset=tuple(items),
                described=tuple(
                    f"{describe_datasource(s.datasource_type, s.connection_details)} "
                    f"({s.gateway_id}/{s.datasource_id})"
                    for s in reset
                ),
            )
        )

    def _binding_of(self, source: DatasetDatasource) -> Resolved | None:
        """The binding that covers a dataset's data source (its own target, or a ``match``), as
        the healer resolves it; None when none does."""
        gateway_id, datasource_id = _source_key(source)
        explicit = self.bindings.for_target(gateway_id, datasource_id)
        if explicit is not None:
            target = next(
                (t for t in explicit.targets if t.key == (gateway_id, datasource_id)),
                Target(gateway_id, datasource_id),
            )
            return Resolved(explicit, target)
        details = text_map(source.connection_details)
        try:
            matched = self.bindings.for_datasource(
                gateway_id,
                datasource_id,
                datasource_type=source.datasource_type or "",
                connection_details=details,
            )
        except RemediationError:
            return None
        if matched is None:
            return None
        return Resolved(
            matched, Target(gateway_id, datasource_id), source_locator(source.datasource_type, details)
        )

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

    def _dataset_using(self, target: Target) -> tuple[str, str, list[DatasetDatasource]] | None:
        """A dataset (workspace, id, its data sources) that uses ``target``, with the data sources
        as Power BI lists them now: Take Over is decided on them, and a republished model may use
        sources the stored inventory (up to a day old) does not know. The inventory only says which
        dataset to ask about; without one that uses ``target``, the watched workspaces are scanned.

        Raises :class:`TakeOverRefused` when Power BI cannot be asked (nothing is presented then),
        :class:`~remediation.clients.http.ThrottledPastDeadline` when it asks to wait past the run.
        """
        try:
            for record in self._inventory().known():
                if any(source.key == target.key for source in record.sources):
                    sources = self.powerbi.get_datasources_in_group(record.workspace_id, record.dataset_id)
                    if any(_source_key(s) == target.key for s in sources):
                        return record.workspace_id, record.dataset_id, sources
                    # Republished without the target since the inventory learnt it: look further.
            workspaces = list(self.bindings.watch_workspaces) or [g.id for g in self.powerbi.get_groups()]
            for workspace_id in workspaces:
                for dataset in self.powerbi.get_datasets_in_group(workspace_id):
                    sources = self.powerbi.get_datasources_in_group(workspace_id, dataset.id)
                    if any(_source_key(s) == target.key for s in sources):
                        return workspace_id, dataset.id, sources
        except ThrottledPastDeadline:
            raise
        except RemediationError as exc:
            raise TakeOverRefused(
                f"not taking over a dataset to update {target.gateway_id}/{target.datasource_id}: the "
                f"data sources of the dataset that uses it could not be read ({_why(exc)}); Take Over "
                "resets the credentials of those in the cloud, so it is decided on what Power BI lists "
                "right before it, never on the stored inventory. Nothing was presented; the next run "
                "tries again"
            ) from None
        return None


def _why(exc: Exception) -> str:
    """A failed read in a few words (status and code: no body, no header)."""
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status}" + (f" {exc.code}" if exc.code else "")
    return mask_urls(str(exc))


def _source_key(source: DatasetDatasource) -> tuple[str, str]:
    return ((source.gateway_id or "").lower(), (source.datasource_id or "").lower())
