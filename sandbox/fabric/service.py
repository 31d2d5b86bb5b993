"""The Fabric REST API's connections and gateways (``/v1``), as far as credential healing goes.

One job, the ``sb.fabric`` stand-in: its world building, its routes and what they decide. The
connections and gateway clusters themselves are data Power BI shares (:mod:`sandbox.connections`);
what a PATCH's credentials carry is read in :mod:`sandbox.fabric.credentials`.

What it decides, as Fabric does (FABRIC.md; ``specs/fabric/``):

* **Tokens** come from the sandbox's Entra ID for ``https://api.fabric.microsoft.com`` (app,
  user or managed identity alike: Fabric accepts service principals and managed identities).
* **Roles.** A caller sees and updates a connection only with a role on it (``users``); it reads
  a gateway and its members only as one of the gateway's admins. Otherwise 403
  ``InsufficientPermissionsToManageConnection`` / ``...Gateway`` (nothing tested).
* **``PATCH /connections/{id}``** is validated against ``UpdateConnectionRequest`` and the
  subtype its ``connectivityType`` names (which must be the connection's); what its credentials
  carry is read in :mod:`sandbox.fabric.credentials`.
* **The connection test** (``skipTestConnection`` false) signs in at the source through its
  account (``sb.sources``): a wrong value is one failed sign-in of that account and a 400 in the
  connection's refusal shape (``IncorrectCredentials`` by default); only a tested credential is
  stored.
* **Refusal shapes**, per connection (:meth:`Fabric.set_refusal`, one of
  :data:`sandbox.refusals.FABRIC_REFUSALS`; the catalogue and the source of each real body are in
  :mod:`sandbox.refusals`): besides ``IncorrectCredentials``, SQL Server's failed login 18456
  passed through as ``DM_GWPipeline_Gateway_DataSourceAccessError`` (semantic-link-labs issue
  1025), Windows' logon failure, codes nobody documents, a body that is not JSON, a message
  echoing the submitted value. The PATCH's test, ``testConnection`` and refreshes of semantic
  models bound to the connection (in Power BI's terms) use it; the sign-in and its counting
  never change with it. A locked account looks like a wrong value unless
  :attr:`Fabric.report_lockouts` (refreshes follow ``sb.powerbi.report_lockouts``).
* **``POST /connections/{id}/testConnection``** (``Connections_TestConnection``) answers
  synchronously (the spec allows 200 or a 202 LRO; the sandbox never starts an LRO): it is a
  sign-in at the source with what the connection holds, counted like any (cause
  ``test-connection``). Allowed to a user of the connection or an admin of its gateway (the
  spec's "permission to read the connection, or admin permission for the gateway"); 200
  ``{"status": "Online", "errors": []}``; a refused sign-in 400 in the refusal shape (the spec
  declares ``IncorrectCredentials``); a source the gateway cannot reach 200 ``Offline`` with
  ``DM_GWPipeline_Client_GatewayUnreachable`` in ``errors`` (the spec's offline example is a
  gateway fault). ``StreamingVirtualNetworkGateway`` connections are refused (400
  ``InvalidInput``, not supported), and so are Power BI data sources shown as connections (as
  for the PATCH).
* **Key Vault references** (FABRIC.md §2, §6): a cloud or VNet connection can hold a reference
  ``{connectionId, secretName}`` instead of a copy, in the one field its credential type has
  (:func:`sandbox.fabric.credentials.read_reference`; Windows, KeyPair and on-premises gateway
  credentials have none: 400 ``InvalidCredentialDetails``, nothing tested). ``connectionId`` is a
  **Key Vault connection** (:meth:`Fabric.add_key_vault_connection`, listed by ``GET
  /connections`` with ``connectionDetails.type`` ``AzureKeyVault``; edited only in the portal,
  so PATCH and ``testConnection`` refuse it). A reference is resolved against the sandbox's Key
  Vault each time it is used -- the PATCH's test, ``testConnection``, a refresh -- to the
  **latest** version, as Fabric does; a ``version`` in the reference breaks it even when that
  version exists (terraform-provider-fabric #991). When it cannot be read (the Key Vault
  connection is gone, the secret or version is not found, the vault refuses the public network,
  the Key Vault connection's sign-in lapsed) the PATCH answers 400 and a refresh fails with
  ``DMS_CredentialsNotFoundInAzureKeyVaultErrorCode`` (the code terraform-provider-fabric #991
  reports), Key Vault's or Entra ID's own code and words as the underlying error
  (:meth:`Fabric.reference_failure`; how Fabric nests them is not documented: this shape is the
  sandbox's choice). No sign-in happens then. A PATCH with a copy replaces a reference
  (``reference_overwritten`` counts it, so tests can prove the healer never does that).
* **Semantic models bound to connections** (``sb.powerbi.add_dataset(connections=...)``):
  ``GET /workspaces/{ws}/items/{id}/connections`` (``Items_ListItemConnections``, paged) lists
  them to a member of the workspace; a refresh signs in through each connection's stored
  credential; Power BI's ``GET .../datasets/{d}/datasources`` shows each as a data source. Whether
  that data source's ``datasourceId`` *is* the connection id is unconfirmed (FABRIC.md), so the
  sandbox plays both: :attr:`Fabric.datasource_ids_are_connection_ids` (default False: another
  id, the stricter side; the item's connections are then the only way to tell).
* **Power BI gateway data sources are connections too**, as in the service, when
  :attr:`Fabric.lists_gateway_datasources` (default False, see there): ``GET /connections`` and
  ``GET /connections/{id}`` show each data source of ``sb.powerbi`` (``OnPremisesGateway`` with
  its ``gatewayId``, or ``ShareableCloud`` for a cloud one) with the privacy level and
  ``connectionEncryption`` Power BI holds for it, to whoever may manage it there (gateway admins;
  for cloud ones, owners of a dataset using it). Its connection id is the ``datasourceId`` when
  :attr:`Fabric.datasource_ids_are_connection_ids`, another id otherwise. The sandbox does not
  update such a connection through Fabric (400 ``InvalidInput``): the healer heals it through
  Power BI.
* ``GET /connections`` and the item connections are paged (``continuationToken`` and
  ``continuationUri``, :attr:`Fabric.page_size` entries a page).
* Faults and throttling: routes are ``fabric.<operation>`` on the shared ``sb.faults``; their
  bodies are Fabric's ``ErrorResponse``.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from sandbox.accounts import Cause
from sandbox.connections import FabricConnection, FabricGateway, GatewayMember, KeyVaultConnection
from sandbox.entra import Entra, TokenInfo, TokenRejected
from sandbox.fabric.credentials import (
    SECRET_FIELD,
    SOURCE_TYPE,
    read_credentials,
    read_reference,
    source_data,
)
from sandbox.gateway_keys import GatewayKeyPair
from sandbox.host import Host
from sandbox.keyvault import KeyVault
from sandbox.powerbi import Datasource, PowerBI
from sandbox.refusals import (
    FABRIC_REFUSALS,
    FabricRefusal,
    Refused,
    fabric_error,
    fabric_refusal,
    pbi_error,
)
from sandbox.routing import HTTPError, Request, Response
from sandbox.sources import CheckResult, Sources, SourceSystem, presented_secret
from sandbox.specs import fabric_errors, fabric_subtype

logger = logging.getLogger(__name__)

FABRIC_AUDIENCE = "https://api.fabric.microsoft.com"
_BASE = r"/v1"
_SEGMENT = r"(?P<{}>[^/]+)"
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

REFERENCE_NOT_READ = "DMS_CredentialsNotFoundInAzureKeyVaultErrorCode"
"""What Fabric reports for a Key Vault reference it could not read (terraform-provider-fabric #991)."""
KEY_VAULT_CONNECTION_TYPE = "AzureKeyVault"
_UNDERLYING_CODE = "DM_ErrorDetailNameCode_UnderlyingErrorCode"
_UNDERLYING_MESSAGE = "DM_ErrorDetailNameCode_UnderlyingErrorMessage"


def _fault_body(status: int, code: str, message: str) -> dict[str, Any]:
    body = fabric_error(code, message)
    body["isRetriable"] = status == 429 or status >= 500
    return body


class Fabric:
    """The Fabric connections and gateways of one tenant."""

    def __init__(
        self, host: Host, entra: Entra, sources: Sources, powerbi: PowerBI, *, vault: KeyVault | None = None
    ) -> None:
        self._host = host
        self._entra = entra  # whose tokens it accepts
        self._sources = sources  # the systems behind the connections, where sign-ins are counted
        self._powerbi = powerbi  # whose workspaces hold the items, and whose data sources it shows
        self._vault = vault  # what Key Vault references read (the sandbox's one vault)
        self._lock = threading.RLock()
        self.connections: dict[str, FabricConnection] = {}
        self.key_vault_connections: dict[str, KeyVaultConnection] = {}
        self.gateways: dict[str, FabricGateway] = {}
        self.datasource_ids_are_connection_ids = False
        """True: Power BI lists a connection-bound source with ``datasourceId`` = the connection id."""
        self.lists_gateway_datasources = False
        """True: Power BI's gateway data sources are listed and read as connections too, as in
        the service. Off by default: tests that count connections (and ``discover``, which would
        show each such data source twice) predate it; tests of what the healer reads turn it on."""
        self.page_size = 100
        self.report_lockouts = False
        """True: a sign-in refused because the account is locked says so, in the shapes that can
        (SQL Server's 18486); False (the default, like ``sb.powerbi``): it looks like a wrong value."""
        self._register_routes()

    @property
    def api_url(self) -> str:
        """``https://127.0.0.1:PORT/v1`` -- the product's ``FABRIC_API_URL``."""
        return self._host.url + "/v1"

    # -- world building (tests) ------------------------------------------------------------------
    def add_gateway(
        self,
        name: str,
        *,
        member_bits: Iterable[int] = (2048,),
        admins: Iterable[str] = (),
        personal: bool = False,
    ) -> FabricGateway:
        """A gateway cluster with one member per entry of ``member_bits`` (real key pairs; the
        first member's id is the gateway's, as in Microsoft's example)."""
        bits = list(member_bits)
        if not bits or (personal and len(bits) != 1):
            raise ValueError("a cluster has at least one member; a personal gateway exactly one")
        gateway_id = str(uuid.uuid4())
        members = [
            GatewayMember(
                gateway_id if i == 0 else str(uuid.uuid4()),
                f"{name}-{i + 1}",
                GatewayKeyPair.generate(b, reuse=True),
            )
            for i, b in enumerate(bits)
        ]
        gateway = FabricGateway(
            gateway_id, name, "OnPremisesPersonal" if personal else "OnPremises", members, set(admins)
        )
        with self._lock:
            self.gateways[gateway.id] = gateway
        return gateway

    def add_connection(
        self,
        source: SourceSystem,
        *,
        connectivity_type: str = "ShareableCloud",
        credential_type: str | None = None,
        gateway: FabricGateway | None = None,
        users: Iterable[str] = (),
        name: str | None = None,
        key_vault_reference: dict[str, str] | None = None,
    ) -> FabricConnection:
        """A connection to ``source``, holding the source's current credential (healthy)."""
        if connectivity_type in ("OnPremisesGateway", "OnPremisesGatewayPersonal") and gateway is None:
            raise ValueError(f"a {connectivity_type} connection needs its gateway")
        kind = credential_type or {"SAS": "SharedAccessSignature"}.get(
            source.credential_type, source.credential_type
        )
        connection = FabricConnection(
            id=str(uuid.uuid4()),
            display_name=name or source.id,
            connectivity_type=connectivity_type,
            source=source,
            credential_type=kind,
            gateway=gateway,
            path=f"{source.id}.contoso.local;{source.id}",
            users=set(users),
            key_vault_reference=dict(key_vault_reference) if key_vault_reference else None,
        )
        data = source_data(source, kind)
        if key_vault_reference:  # the reference stands for the secret; the other fields stay
            data.pop(SECRET_FIELD.get(kind, ""), None)
        connection.data = data
        with self._lock:
            self.connections[connection.id] = connection
        return connection

    def add_key_vault_connection(
        self, name: str = "Contoso vault", *, users: Iterable[str] = (), vault_url: str | None = None
    ) -> KeyVaultConnection:
        """A Key Vault connection (an "Azure Key Vault reference") reading ``vault_url`` (default:
        the sandbox's vault), listed to ``users``. Its ``public_network`` and ``sign_in_expired``
        play the failures a reference can meet."""
        url = vault_url or (self._vault.url if self._vault is not None else "https://vault.invalid/")
        kv = KeyVaultConnection(str(uuid.uuid4()), name, url, set(users))
        with self._lock:
            self.key_vault_connections[kv.id] = kv
        return kv

    def set_refusal(
        self, connection: FabricConnection, shape: FabricRefusal = "incorrect-credentials"
    ) -> None:
        """How Fabric answers when ``connection``'s source refuses a sign-in (the PATCH's test,
        ``testConnection``, and -- in Power BI's terms -- refreshes of models bound to it): one of
        :data:`sandbox.refusals.FABRIC_REFUSALS`. The sign-in and its counting never change."""
        if shape not in FABRIC_REFUSALS:
            raise ValueError(f"shape must be one of {', '.join(FABRIC_REFUSALS)}, not {shape!r}")
        with self._lock:
            connection.refusal = shape

    def _refused(
        self, connection: FabricConnection, *, locked: bool, presented: str | None = None
    ) -> HTTPError:
        """The answer to a sign-in ``connection``'s source refused, in the connection's shape."""
        account = connection.source.account
        refused: Refused = fabric_refusal(
            connection.refusal,
            user=account.username or account.name,
            locked=locked and self.report_lockouts,
            presented=presented,
        )
        return HTTPError(refused.status, refused.payload, refused.headers)

    # -- routing ---------------------------------------------------------------------------------
    def _register_routes(self) -> None:
        c, g = _SEGMENT.format("connection"), _SEGMENT.format("gateway")
        routes: list[tuple[str, str, str, Callable[[Request], Response]]] = [
            ("list_connections", "GET", "/connections", self._list_connections),
            ("get_connection", "GET", f"/connections/{c}", self._get_connection),
            ("update_connection", "PATCH", f"/connections/{c}", self._update_connection),
            ("test_connection", "POST", f"/connections/{c}/testConnection", self._test_connection),
            ("get_gateway", "GET", f"/gateways/{g}", self._get_gateway),
            ("list_gateway_members", "GET", f"/gateways/{g}/members", self._list_members),
            (
                "list_item_connections",
                "GET",
                f"/workspaces/{_SEGMENT.format('workspace')}/items/{_SEGMENT.format('item')}/connections",
                self._list_item_connections,
            ),
        ]
        for name, method, pattern, handler in routes:
            self._host.router.add(
                "fabric", f"fabric.{name}", method, _BASE + pattern, self._wrap(handler), _fault_body
            )

    @staticmethod
    def _wrap(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def serve(request: Request) -> Response:
            request_id = str(uuid.uuid4())
            try:
                response = handler(request)
            except HTTPError as exc:
                exc.headers.setdefault("x-ms-request-id", request_id)
                raise
            response.headers.setdefault("x-ms-request-id", request_id)
            return response

        return serve

    def _authenticate(self, request: Request) -> TokenInfo:
        try:
            return self._entra.verify(request, FABRIC_AUDIENCE)
        except TokenRejected as exc:
            code = "TokenExpired" if exc.reason == "expired" else "InvalidToken"
            raise HTTPError(
                401,
                fabric_error(code, f"The access token is not valid ({exc.reason})."),
                {"WWW-Authenticate": "Bearer"},
            ) from None

    @staticmethod
    def _path_id(request: Request, name: str) -> str:
        value = request.params[name]
        if not _GUID.fullmatch(value):
            raise HTTPError(
                400, fabric_error("InvalidInput", f"The {name}Id in the URL is not a valid GUID.")
            )
        return value.lower()

    def _connection(self, caller: TokenInfo, request: Request) -> FabricConnection:
        connection = self.connections.get(self._path_id(request, "connection"))
        if connection is None:
            raise HTTPError(404, fabric_error("EntityNotFound", "The requested connection was not found."))
        if not any(u.lower() == caller.principal.lower() for u in connection.users):
            raise HTTPError(
                403,
                fabric_error(
                    "InsufficientPermissionsToManageConnection",
                    "The caller does not have permission to manage the connection.",
                ),
            )
        return connection

    def _key_vault_connection(self, caller: TokenInfo, request: Request) -> KeyVaultConnection | None:
        """The Key Vault connection the URL names (403 without a role on it), or None."""
        kv = self.key_vault_connections.get(self._path_id(request, "connection"))
        if kv is not None and not any(u.lower() == caller.principal.lower() for u in kv.users):
            raise HTTPError(
                403,
                fabric_error(
                    "InsufficientPermissionsToManageConnection",
                    "The caller does not have permission to manage the connection.",
                ),
            )
        return kv

    def _gateway(self, caller: TokenInfo, request: Request) -> FabricGateway:
        gateway = self.gateways.get(self._path_id(request, "gateway"))
        if gateway is None:
            raise HTTPError(404, fabric_error("EntityNotFound", "The requested gateway was not found."))
        if not any(a.lower() == caller.principal.lower() for a in gateway.admins):
            raise HTTPError(
                403,
                fabric_error(
                    "InsufficientPermissionsToManageGateway",
                    "The caller does not have permission for the gateway.",
                ),
            )
        return gateway

    # -- JSON shapes -----------------------------------------------------------------------------
    @staticmethod
    def connection_json(connection: FabricConnection) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": connection.id,
            "displayName": connection.display_name,
            "connectivityType": connection.connectivity_type,
            "connectionDetails": {"type": connection.connection_type, "path": connection.path},
            "privacyLevel": connection.privacy_level,
            "credentialDetails": {
                "credentialType": connection.credential_type,
                "singleSignOnType": "None",
                "connectionEncryption": connection.connection_encryption,
                "skipTestConnection": False,
            },
        }
        if connection.gateway is not None:
            body["gatewayId"] = connection.gateway.id
        if connection.connectivity_type == "ShareableCloud":
            body["allowConnectionUsageInGateway"] = False
        return body

    @staticmethod
    def key_vault_connection_json(kv: KeyVaultConnection) -> dict[str, Any]:
        return {
            "id": kv.id,
            "displayName": kv.display_name,
            "connectivityType": "ShareableCloud",
            "connectionDetails": {"type": KEY_VAULT_CONNECTION_TYPE, "path": kv.vault_url},
            "privacyLevel": "Organizational",
            "credentialDetails": {
                "credentialType": "OAuth2",
                "singleSignOnType": "None",
                "connectionEncryption": "NotEncrypted",
                "skipTestConnection": False,
            },
            "allowConnectionUsageInGateway": False,
        }

    @staticmethod
    def gateway_json(gateway: FabricGateway) -> dict[str, Any]:
        primary = gateway.members[0]
        body: dict[str, Any] = {
            "id": gateway.id,
            "type": gateway.type,
            "publicKey": primary.keys.public_key_json(),
            "version": "3000.250.5",
        }
        if gateway.type == "OnPremises":
            body.update(
                {
                    "displayName": gateway.name,
                    "numberOfMemberGateways": len(gateway.members),
                    "loadBalancingSetting": "Failover",
                    "allowCloudConnectionRefresh": False,
                    "allowCustomConnectors": False,
                }
            )
        return body

    def powerbi_datasource_json(self, connection: FabricConnection) -> dict[str, Any]:
        """How Power BI's dataset data sources list shows a source bound to ``connection``."""
        server, _, database = connection.path.partition(";")
        details = {"server": server, "database": database} if database else {"path": connection.path}
        if self.datasource_ids_are_connection_ids:
            datasource_id = connection.id
        else:
            datasource_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "datasource:" + connection.id))
        gateway_id = (
            connection.gateway.id
            if connection.gateway is not None
            else str(uuid.uuid5(uuid.NAMESPACE_URL, "cloud-gateway:" + connection.id))
        )
        return {
            "datasourceType": connection.connection_type,
            "connectionDetails": details,
            "datasourceId": datasource_id,
            "gatewayId": gateway_id,
        }

    def datasource_connection_id(self, datasource: Datasource) -> str:
        """The connection id Fabric shows a Power BI gateway data source under."""
        if self.datasource_ids_are_connection_ids:
            return datasource.id
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "connection-of-datasource:" + datasource.id))

    def _datasource_connections(self, caller: TokenInfo) -> dict[str, tuple[dict[str, Any], bool]]:
        """Power BI's gateway data sources as connections, by connection id: each JSON body, and
        whether ``caller`` may manage it (see the module docstring)."""
        if not self.lists_gateway_datasources:
            return {}
        powerbi = self._powerbi
        found: dict[str, tuple[dict[str, Any], bool]] = {}
        with powerbi.lock:
            for gateway in powerbi.gateways.values():
                for datasource in gateway.datasources.values():
                    found[self.datasource_connection_id(datasource)] = (
                        self._datasource_json(datasource),
                        powerbi.may_manage(caller.principal, gateway, [datasource]),
                    )
        return found

    def _datasource_json(self, datasource: Datasource) -> dict[str, Any]:
        details = datasource.connection_details
        if details.get("server") and details.get("database"):
            path = f"{details['server']};{details['database']}"
        else:
            path = details.get("url") or details.get("path") or details.get("server") or ""
        cloud = datasource.gateway.cloud
        body: dict[str, Any] = {
            "id": self.datasource_connection_id(datasource),
            "displayName": datasource.name,
            "connectivityType": "ShareableCloud" if cloud else "OnPremisesGateway",
            "connectionDetails": {
                "type": {"Sql": "SQL"}.get(datasource.datasource_type, datasource.datasource_type),
                "path": path,
            },
            "privacyLevel": datasource.privacy_level,
            "credentialDetails": {
                "credentialType": datasource.credential_type,
                "singleSignOnType": "None",
                "connectionEncryption": datasource.connection_encryption,
                "skipTestConnection": False,
            },
        }
        if cloud:
            body["allowConnectionUsageInGateway"] = False
        else:
            body["gatewayId"] = datasource.gateway.id
        return body

    def sign_in(self, connection: FabricConnection, *, cause: Cause = "refresh") -> CheckResult:
        """One sign-in at the connection's source with what it holds (a Key Vault reference: the
        latest version of the secret, read now, as Fabric does at run time). A reference that
        cannot be read signs in nowhere (callers ask :meth:`reference_failure` first)."""
        with self._lock:
            data = dict(connection.data)
            reference = connection.key_vault_reference
            kind = connection.credential_type
        if reference is not None:
            resolved, failure = self._read_reference(data, reference, kind)
            if resolved is None:
                logger.info("sandbox fabric: %s cannot read its reference: %s", connection.id, failure)
                return "unreachable"
            data = resolved
        return self._sources.check(connection.source.id, SOURCE_TYPE.get(kind, kind), data, cause=cause)

    def reference_failure(self, connection: FabricConnection) -> dict[str, Any] | None:
        """Why ``connection``'s Key Vault reference cannot be read now, as the error envelope a
        refresh reports in ``serviceExceptionJson`` (None: no reference, or it reads fine)."""
        with self._lock:
            reference, kind = connection.key_vault_reference, connection.credential_type
            data = dict(connection.data)
        if reference is None:
            return None
        _, failure = self._read_reference(data, reference, kind)
        if not failure:
            return None
        details = [{"code": c, "detail": {"type": 1, "value": v}} for c, v in failure]
        return pbi_error(REFERENCE_NOT_READ, details)

    def _read_reference(
        self, kept: dict[str, str], reference: dict[str, str], credential_type: str
    ) -> tuple[dict[str, str] | None, list[tuple[str, str]]]:
        """The credential a reference resolves to now (``kept`` and the secret's latest value), or
        None and the underlying error (Key Vault's or Entra ID's code and words)."""
        with self._lock:
            kv = self.key_vault_connections.get(reference.get("connectionId", "").lower())
        name, version = reference.get("secretName", ""), reference.get("version")

        def failed(code: str | None, message: str) -> tuple[None, list[tuple[str, str]]]:
            pairs = [(_UNDERLYING_CODE, code)] if code else []
            return None, [*pairs, (_UNDERLYING_MESSAGE, message)]

        if kv is None:
            return failed(None, "The Azure Key Vault reference of the connection was not found.")
        if kv.sign_in_expired:
            return failed(
                "AADSTS700082",
                "AADSTS700082: The refresh token has expired due to inactivity. The token was issued "
                "and was inactive for 90.00:00:00.",
            )
        if not kv.public_network:
            return failed(
                "ForbiddenByConnection",
                "Public network access is disabled and request is not from a trusted service nor via "
                "an approved private link.",
            )
        vault = self._vault
        if vault is None or kv.vault_url.rstrip("/").lower() != vault.url.rstrip("/").lower():
            return failed("VaultNotFound", "No such host is known.")
        if version:  # terraform-provider-fabric #991: a pinned version breaks the reference
            return failed(
                "SecretNotFound", f"A secret with (name/id) {name}/{version} was not found in this key vault."
            )
        try:
            secret = vault.get_secret(name)
        except KeyError:
            missing = f"A secret with (name/id) {name} was not found in this key vault."
            return failed("SecretNotFound", missing)
        if not secret.enabled:
            return failed("SecretDisabled", "Operation get is not allowed on a disabled secret.")
        field = SECRET_FIELD.get(credential_type)
        if field is None:
            return failed(None, f"{credential_type} credentials take no Key Vault reference.")
        return {**kept, field: secret.value}, []

    def _page(self, request: Request, value: list[dict[str, Any]]) -> Response:
        """One page of ``value`` from ``continuationToken`` on, with the link to the next."""
        token = request.query_ci("continuationToken")
        start = 0
        if token is not None:
            if not token.isdigit() or int(token) > len(value):
                raise HTTPError(
                    400, fabric_error("InvalidContinuationToken", "The continuation token is not valid.")
                )
            start = int(token)
        end = start + max(1, self.page_size)
        body: dict[str, Any] = {"value": value[start:end]}
        if end < len(value):
            body["continuationToken"] = str(end)
            body["continuationUri"] = f"{self._host.url}{request.path}?continuationToken={end}"
        return Response(200, body)

    # -- handlers --------------------------------------------------------------------------------
    def _list_connections(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            value = [
                self.connection_json(c)
                for c in self.connections.values()
                if any(u.lower() == caller.principal.lower() for u in c.users)
            ]
            value.extend(
                self.key_vault_connection_json(kv)
                for kv in self.key_vault_connections.values()
                if any(u.lower() == caller.principal.lower() for u in kv.users)
            )
        value.extend(body for body, allowed in self._datasource_connections(caller).values() if allowed)
        return self._page(request, value)

    def _list_item_connections(self, request: Request) -> Response:
        """``Items_ListItemConnections`` of a semantic model, to a member of its workspace."""
        caller = self._authenticate(request)
        workspace_id = self._path_id(request, "workspace")
        item_id = self._path_id(request, "item")
        powerbi = self._powerbi
        with powerbi.lock:
            workspace = powerbi.workspaces.get(workspace_id)
            if workspace is None or not any(m.lower() == caller.principal.lower() for m in workspace.members):
                raise HTTPError(
                    403,
                    fabric_error(
                        "InsufficientPermissionsOverItem", "The caller does not have permission on the item."
                    ),
                )
            dataset = workspace.datasets.get(item_id)
            if dataset is None:
                raise HTTPError(404, fabric_error("ItemNotFound", "The requested item was not found."))
            connections = list(dataset.connections)
        value = []
        for c in connections:
            entry: dict[str, Any] = {
                "id": c.id,
                "displayName": c.display_name,
                "connectivityType": c.connectivity_type,
                "connectionDetails": {"type": c.connection_type, "path": c.path},
            }
            if c.gateway is not None:
                entry["gatewayId"] = c.gateway.id
            value.append(entry)
        return self._page(request, value)

    def _get_connection(self, request: Request) -> Response:
        caller = self._authenticate(request)
        mirrored = self._datasource_connections(caller).get(self._path_id(request, "connection"))
        if mirrored is not None:
            body, allowed = mirrored
            if not allowed:
                raise HTTPError(
                    403,
                    fabric_error(
                        "InsufficientPermissionsToManageConnection",
                        "The caller does not have permission to manage the connection.",
                    ),
                )
            return Response(200, body)
        with self._lock:
            kv = self._key_vault_connection(caller, request)
            if kv is not None:
                return Response(200, self.key_vault_connection_json(kv))
            return Response(200, self.connection_json(self._connection(caller, request)))

    def _get_gateway(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            return Response(200, self.gateway_json(self._gateway(caller, request)))

    def _list_members(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            gateway = self._gateway(caller, request)
            value = [
                {
                    "id": m.id,
                    "displayName": m.name,
                    "publicKey": m.keys.public_key_json(),
                    "version": "3000.250.5",
                    "enabled": m.enabled,
                }
                for m in gateway.members
            ]
        return Response(200, {"value": value})

    def _update_connection(self, request: Request) -> Response:
        caller = self._authenticate(request)
        body = request.json(lambda m: HTTPError(400, fabric_error("InvalidInput", m)))
        if not isinstance(body, dict):
            raise HTTPError(400, fabric_error("InvalidInput", "The request body must be a JSON object."))
        ctype = body.get("connectivityType")
        subtype = fabric_subtype("UpdateConnectionRequest", ctype) if isinstance(ctype, str) else None
        problems = fabric_errors(subtype or "UpdateConnectionRequest", body)
        if problems:
            raise HTTPError(
                400,
                fabric_error("InvalidInput", "The request has an invalid input: " + "; ".join(problems[:10])),
            )
        if self._path_id(request, "connection") in self._datasource_connections(caller):
            raise HTTPError(
                400,
                fabric_error(
                    "InvalidInput", "The sandbox updates Power BI gateway data sources through Power BI only."
                ),
            )
        with self._lock:
            if self._key_vault_connection(caller, request) is not None:
                raise HTTPError(
                    400,
                    fabric_error(
                        "InvalidInput",
                        "Azure Key Vault references are edited in Manage connections and gateways only.",
                    ),
                )
            connection = self._connection(caller, request)
        if ctype != connection.connectivity_type:
            raise HTTPError(
                400,
                fabric_error(
                    "InvalidInput",
                    f"The connection is {connection.connectivity_type}, not {ctype}; "
                    "connectivityType cannot change.",
                ),
            )
        details = body.get("credentialDetails") or {}
        credentials = details.get("credentials")
        if credentials is None:  # a metadata-only update (display name, privacy)
            with self._lock:
                connection.privacy_level = body.get("privacyLevel", connection.privacy_level)
            return Response(200, self.connection_json(connection))
        credential_type = credentials["credentialType"]
        referenced = read_reference(connection, credential_type, credentials)
        reference: dict[str, str] | None = None
        if referenced is None:
            data = read_credentials(connection, credential_type, credentials)
        else:
            kept, reference = referenced
            resolved, failure = self._read_reference(kept, reference, credential_type)
            if resolved is None:  # nothing to sign in with: the test cannot start
                raise HTTPError(
                    400,
                    fabric_error(
                        REFERENCE_NOT_READ,
                        "The credentials could not be found in Azure Key Vault.",
                        more=failure,
                    ),
                )
            data = resolved
        skip_test = details.get("skipTestConnection") is True
        if not skip_test:
            source_type = SOURCE_TYPE.get(credential_type, credential_type)
            result = self._sources.check(connection.source.id, source_type, data, cause="update-test")
            if result == "unreachable":
                raise HTTPError(
                    400,
                    fabric_error(
                        "UpdateGatewayConnectionFailed",
                        "The gateway could not reach the data source.",
                        more=[("DM_GWPipeline_Client_GatewayUnreachable", "")],
                    ),
                )
            if result != "ok":
                raise self._refused(connection, locked=result == "locked", presented=presented_secret(data))
        with self._lock:
            if reference is not None:
                connection.key_vault_reference = reference
                connection.data = dict(referenced[0]) if referenced is not None else {}
                connection.references_set += 1
            else:
                if connection.key_vault_reference is not None:
                    connection.reference_overwritten += 1
                    connection.key_vault_reference = None
                connection.data = data
            connection.credential_type = credential_type
            connection.updates += 1
            if "privacyLevel" in body:
                connection.privacy_level = body["privacyLevel"]
            if "connectionEncryption" in details:
                connection.connection_encryption = details["connectionEncryption"]
        logger.info(
            "sandbox fabric: %s updated credentials of connection %s", caller.principal, connection.id
        )
        return Response(200, self.connection_json(connection))

    def _test_connection(self, request: Request) -> Response:
        """``Connections_TestConnection``: a sign-in with what the connection holds (it counts)."""
        caller = self._authenticate(request)
        connection_id = self._path_id(request, "connection")
        if connection_id in self._datasource_connections(caller):
            raise HTTPError(
                400,
                fabric_error(
                    "InvalidInput", "The sandbox tests Power BI gateway data sources through Power BI only."
                ),
            )
        with self._lock:
            if self._key_vault_connection(caller, request) is not None:
                raise HTTPError(
                    400,
                    fabric_error(
                        "InvalidInput",
                        "Azure Key Vault references are tested in Manage connections and gateways.",
                    ),
                )
            connection = self.connections.get(connection_id)
            if connection is None:
                raise HTTPError(
                    404, fabric_error("EntityNotFound", "The requested connection was not found.")
                )
            gateway = connection.gateway
            admin = gateway is not None and any(a.lower() == caller.principal.lower() for a in gateway.admins)
            if not admin:
                self._connection(caller, request)  # 403 unless a user of the connection
        if connection.connectivity_type == "StreamingVirtualNetworkGateway":
            raise HTTPError(
                400,
                fabric_error(
                    "InvalidInput",
                    "Testing a connection through a streaming virtual network gateway is not supported.",
                ),
            )
        failure = self.reference_failure(connection)
        if failure is not None:
            inner = failure["error"]["pbi.error"]["details"]
            raise HTTPError(
                400,
                fabric_error(
                    REFERENCE_NOT_READ,
                    "The credentials could not be found in Azure Key Vault.",
                    more=[(d["code"], d["detail"]["value"]) for d in inner],
                ),
            )
        result = self.sign_in(connection, cause="test-connection")
        if result == "ok":
            return Response(200, {"status": "Online", "errors": []})
        if result == "unreachable":
            error = {
                "errorCode": "DM_GWPipeline_Client_GatewayUnreachable",
                "message": "The gateway could not reach the data source.",
            }
            return Response(200, {"status": "Offline", "errors": [error]})
        raise self._refused(connection, locked=result == "locked")
