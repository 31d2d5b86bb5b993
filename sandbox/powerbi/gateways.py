"""Gateways, their data sources and credentials: status checks and credential updates.

* **Cloud gateway**: a cloud data source still reports a ``gatewayId`` from
  ``GET /groups/{g}/datasets/{d}/datasources``. What ``GET /gateways/{thatId}`` answers is not
  documented; here it is 200 ``{"id", "name", "type": "Cloud"}`` *without* ``publicKey`` for a
  gateway admin or the owner of a dataset using one of its data sources (403 otherwise), so
  a client tells cloud from on-premises by the absence of the key. That is the default
  (``owners``) of a switch per cloud gateway (:data:`~sandbox.powerbi.models.CloudGatewayAnswer`,
  :meth:`Gateways.set_cloud_gateway_answer`): the field has also seen ``{"id"}`` alone, 404
  ``PowerBIEntityNotFound`` and 401/403 ``PowerBINotAuthorizedException``. ``GET /gateways``
  lists only on-premises gateways.
* **Update Datasource** validates the body against ``UpdateDatasourceRequest``, then: on-prem
  needs ``RSA-OAEP`` and a ciphertext the gateway can decrypt *and* parse -- anything else
  (plain text, tampering, malformed JSON inside) is ``DM_GWPipeline_UnknownError``, because it
  is the gateway that fails and it reports no more; cloud needs ``None`` (``RSA-OAEP`` ->
  ``DMTS_InvalidEncryptionAlgorithmError``) and strict JSON (otherwise ``InvalidRequest``).
  The service then tests the connection like the real one does: wrong or locked-out
  credentials -> 400 in the data source's refusal shape (``invalid-credentials`` by default:
  ``DM_GWPipeline_Gateway_InvalidConnectionCredentials``; counted by the source's account),
  unreachable -> 400 ``DM_GWPipeline_Client_GatewayUnreachable``; nothing is stored
  unless the source accepted it.
* **OAuth2 "caller identity only" sources** (dataflows, SharePoint): app / managed identity
  callers -> ``PowerBINotAuthorizedException``; a payload carrying an ``accessToken`` -> 400
  ``DM_GWPipeline_Gateway_InvalidConnectionCredentials`` (the service's connection test with
  a token minted for another audience fails exactly so), which is *not* a sign-in attempt
  against the account; ``useCallerAADIdentity: true`` from the owner's user token succeeds and
  stores "signed in as" that user.
* **Datasource status** is a real connection attempt by the gateway, so it counts toward
  lockout like any sign-in; a refused one answers 400 in the data source's refusal shape (no
  stored credential at all: ``InvalidConnectionCredentials``, the source is not asked).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from sandbox.credential_data import CredentialFormatError, parse_credentials
from sandbox.entra import TokenInfo
from sandbox.gateway_keys import GatewayDecryptError, GatewayKeyPair
from sandbox.powerbi.models import (
    CLOUD_GATEWAY_ANSWERS,
    CloudGatewayAnswer,
    Datasource,
    Gateway,
    StoredCredential,
    UpdateAttempt,
)
from sandbox.powerbi.tenant import Tenant, contains, same, source_kind_path, user_of
from sandbox.powerbi.wire import (
    GATEWAY_UNREACHABLE,
    INVALID_ENCRYPTION_ALGORITHM,
    NOT_AUTHORIZED,
    UNKNOWN_GATEWAY_ERROR,
    bad_request,
    invalid_request,
    json_body,
    not_found,
    path_id,
    validate_body,
)
from sandbox.refusals import POWERBI_REFUSALS, PowerBIRefusal, Refused, credentials_error, pbi_error
from sandbox.routing import HTTPError, Request, Response
from sandbox.sources import SourceSystem, presented_secret

logger = logging.getLogger(__name__)


def _source_credential(source: SourceSystem) -> dict[str, str]:
    """What a source's current credential looks like as credentialData."""
    kind = source.credential_type
    if kind in ("Basic", "Windows"):
        return {"username": source.username or "", "password": source.secret or ""}
    if kind == "Key":
        return {"key": source.secret or ""}
    if kind == "SAS":
        return {"token": source.secret or ""}
    if kind == "OAuth2":
        return {"username": source.username or ""}
    return {}


class Gateways(Tenant):
    """Gateways and data sources: world building, who may manage them, and routes."""

    # -- world building (tests) ------------------------------------------------------------------
    def add_gateway(self, name: str, *, bits: int = 2048, admins: Iterable[str] = ()) -> Gateway:
        """An on-premises gateway with a real RSA key pair (shared per size within the process)."""
        gateway = Gateway(
            str(uuid.uuid4()),
            name,
            cloud=False,
            keys=GatewayKeyPair.generate(bits, reuse=True),
            admins=set(admins),
        )
        with self._lock:
            self.gateways[gateway.id] = gateway
        return gateway

    def add_cloud_gateway(
        self, name: str = "Cloud", *, admins: Iterable[str] = (), get_answer: CloudGatewayAnswer = "owners"
    ) -> Gateway:
        """The virtual gateway cloud data sources report as their ``gatewayId`` (no public key).

        ``get_answer``: what ``GET /gateways/{id}`` answers for it (:data:`CloudGatewayAnswer`).
        """
        gateway = Gateway(str(uuid.uuid4()), name, cloud=True, admins=set(admins))
        self.set_cloud_gateway_answer(gateway, get_answer)
        with self._lock:
            self.gateways[gateway.id] = gateway
        return gateway

    def set_cloud_gateway_answer(self, gateway: Gateway, answer: CloudGatewayAnswer) -> None:
        """Switch what ``GET /gateways/{id}`` answers for the cloud gateway ``gateway``."""
        if not gateway.cloud:
            raise ValueError("only a cloud gateway's answer can be switched")
        if answer not in CLOUD_GATEWAY_ANSWERS:
            raise ValueError(f"answer must be one of {', '.join(CLOUD_GATEWAY_ANSWERS)}")
        with self._lock:
            gateway.get_answer = answer

    def grant_gateway_admin(self, gateway: Gateway, principal: str) -> None:
        with self._lock:
            gateway.admins.add(principal)

    def set_gateway_online(self, gateway: Gateway, online: bool) -> None:
        with self._lock:
            gateway.online = online

    def add_datasource(
        self,
        gateway: Gateway,
        source: SourceSystem,
        *,
        datasource_type: str = "Sql",
        connection_details: Mapping[str, str] | None = None,
        credential_type: str | None = None,
        stored: Mapping[str, str] | None = None,
        caller_identity_only: bool = False,
        name: str | None = None,
    ) -> Datasource:
        """A data source on ``gateway`` backed by ``source``.

        ``stored`` is the credentialData Power BI holds now (default: the source's current
        credential, i.e. healthy); :meth:`clear_credentials` makes it hold none.
        """
        kind = credential_type or source.credential_type
        details = dict(connection_details or {"server": f"{source.id}.contoso.local", "database": source.id})
        datasource = Datasource(
            id=str(uuid.uuid4()),
            gateway=gateway,
            source=source,
            datasource_type=datasource_type,
            connection_details=details,
            credential_type=kind,
            name=name or source.id,
            caller_identity_only=caller_identity_only,
        )
        data = dict(stored) if stored is not None else _source_credential(source)
        credential = StoredCredential(
            kind,
            data,
            applied_at=self._host.clock.now(),
            signed_in_as=data.get("username") if kind == "OAuth2" else None,
        )
        datasource.credential = credential
        datasource.credential_history.append(credential)
        with self._lock:
            gateway.datasources[datasource.id] = datasource
        return datasource

    def store_credential(
        self, datasource: Datasource, data: Mapping[str, str], *, credential_type: str | None = None
    ) -> StoredCredential:
        """Make Power BI hold ``data`` for ``datasource`` without any check (e.g. a stale password)."""
        with self._lock:
            kind = credential_type or datasource.credential_type
            credential = StoredCredential(kind, dict(data), applied_at=self._host.clock.now())
            datasource.credential = credential
            datasource.credential_type = kind
            datasource.credential_history.append(credential)
            return credential

    def set_datasource_settings(
        self,
        datasource: Datasource,
        *,
        privacy_level: str | None = None,
        connection_encryption: str | None = None,
    ) -> None:
        """What an admin set on ``datasource`` in the service's UI (not through a PATCH)."""
        with self._lock:
            if privacy_level is not None:
                datasource.privacy_level = privacy_level
            if connection_encryption is not None:
                datasource.connection_encryption = connection_encryption

    def set_refusal(self, datasource: Datasource, shape: PowerBIRefusal = "invalid-credentials") -> None:
        """How the service answers when ``datasource``'s source refuses a sign-in (the credential
        update's test, a status check, a refresh): one of :data:`sandbox.refusals.POWERBI_REFUSALS`.
        The sign-in and its counting by the account are the same whatever the shape."""
        if shape not in POWERBI_REFUSALS:
            raise ValueError(f"shape must be one of {', '.join(POWERBI_REFUSALS)}, not {shape!r}")
        with self._lock:
            datasource.refusal = shape

    def clear_credentials(self, datasource: Datasource) -> None:
        """Power BI holds no credential for ``datasource`` (refreshes fail: CredentialsNotSpecified)."""
        with self._lock:
            datasource.credential = None

    def datasource(self, datasource_id: str) -> Datasource:
        with self._lock:
            for gateway in self.gateways.values():
                if datasource_id.lower() in gateway.datasources:
                    return gateway.datasources[datasource_id.lower()]
        raise KeyError(datasource_id)

    # -- who may manage what ---------------------------------------------------------------------
    def _owns_dataset_using(self, principal: str, datasources: Iterable[Datasource]) -> bool:
        wanted = {d.id for d in datasources}
        return any(
            same(dataset.owner, principal) and any(d.id in wanted for d in dataset.datasources)
            for workspace in self.workspaces.values()
            for dataset in workspace.datasets.values()
        )

    def _may_manage(
        self, caller: TokenInfo, gateway: Gateway, datasources: Iterable[Datasource] | None = None
    ) -> bool:
        return self.may_manage(caller.principal, gateway, datasources)

    def may_manage(
        self, principal: str, gateway: Gateway, datasources: Iterable[Datasource] | None = None
    ) -> bool:
        """Gateway admins manage everything on it; for cloud sources, so do dataset owners."""
        if contains(gateway.admins, principal):
            return True
        if not gateway.cloud:
            return False
        scope = list(gateway.datasources.values()) if datasources is None else list(datasources)
        return self._owns_dataset_using(principal, scope)

    def _gateway(self, caller: TokenInfo, request: Request) -> Gateway:
        gateway = self.gateways.get(path_id(request, "gateway"))
        if gateway is None:
            raise not_found()
        if not self._may_manage(caller, gateway):
            raise self._forbidden()
        return gateway

    def _gateway_datasource(self, caller: TokenInfo, request: Request) -> Datasource:
        gateway = self.gateways.get(path_id(request, "gateway"))
        datasource_id = path_id(request, "datasource")
        if gateway is None or datasource_id not in gateway.datasources:
            raise not_found()
        datasource = gateway.datasources[datasource_id]
        if not self._may_manage(caller, gateway, [datasource]):
            raise self._forbidden()
        return datasource

    # -- routes ----------------------------------------------------------------------------------
    def _get_gateways(self, request: Request) -> Response:
        """On-premises gateways the caller administers (cloud gateways are never listed)."""
        caller = self._authenticate(request)
        with self._lock:
            value = [
                self._gateway_json(g)
                for g in self.gateways.values()
                if not g.cloud and contains(g.admins, caller.principal)
            ]
        return Response(200, self._odata("gateways", value))

    def _get_gateway(self, request: Request) -> Response:
        caller = self._authenticate(request)
        context = f"{self.api_url}/$metadata#gateways/$entity"
        with self._lock:
            found = self.gateways.get(path_id(request, "gateway"))
            answer = found.get_answer if found is not None and found.cloud else "owners"
            if answer == "not-found":
                raise not_found()
            if answer in ("unauthorized", "forbidden"):
                raise HTTPError(401 if answer == "unauthorized" else 403, pbi_error(NOT_AUTHORIZED))
            if answer == "id-only" and found is not None:
                return Response(200, {"@odata.context": context, "id": found.id})
            gateway = self._gateway(caller, request)
            body = self._gateway_json(gateway)
        return Response(200, {"@odata.context": context, **body})

    def _get_gateway_datasources(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            gateway = self._gateway(caller, request)
            value = [
                self._gateway_datasource_json(d)
                for d in gateway.datasources.values()
                if self._may_manage(caller, gateway, [d])
            ]
        return Response(200, self._odata(f"gateways('{gateway.id}')/datasources", value))

    def _get_gateway_datasource(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            body = self._gateway_datasource_json(self._gateway_datasource(caller, request))
        context = f"{self.api_url}/$metadata#gatewayDatasources/$entity"
        return Response(200, {"@odata.context": context, **body})

    def _get_datasource_status(self, request: Request) -> Response:
        """A real connection attempt by the gateway with the stored credential (it counts)."""
        caller = self._authenticate(request)
        with self._lock:
            datasource = self._gateway_datasource(caller, request)
            result = self._sign_in(datasource, datasource.credential, cause="status-check")
        if result == "ok":
            return Response(200)
        if result == "unreachable":
            raise HTTPError(400, pbi_error(GATEWAY_UNREACHABLE))
        if result == "missing":  # nothing to sign in with: the source was not asked
            kind, path = source_kind_path(datasource)
            raise HTTPError(400, credentials_error(kind, path, user_of(datasource.source)))
        refused = self._refusal(datasource, locked=result == "locked")
        raise HTTPError(refused.status, refused.payload, refused.headers)

    def _update_datasource(self, request: Request) -> Response:
        caller = self._authenticate(request)
        body = json_body(request, required=True)
        details_in = body.get("credentialDetails") if isinstance(body, dict) else None
        if not isinstance(details_in, dict):
            details_in = {}
        caller_identity = details_in.get("useCallerAADIdentity") is True
        if caller_identity and "credentials" in details_in:
            # The only payload known to work has no ``credentials`` key at all (DESIGN.md); an
            # empty OAuth2 credential may be read as "no token", so the sandbox refuses it.
            raise bad_request(
                "credentialDetails/credentials: must be absent with "
                "useCallerAADIdentity (the caller's own token is the credential)"
            )
        # The swagger lists ``credentials`` as required; a caller-identity update omits it.
        validate_body(
            "Gateways_UpdateDatasource",
            body,
            allow_missing=("credentialDetails: 'credentials' is a required property",)
            if caller_identity
            else (),
        )
        details: dict[str, Any] = body["credentialDetails"]
        if not isinstance(details, dict):
            raise bad_request(
                "The request body does not match UpdateDatasourceRequest: "
                "credentialDetails: must be an object"
            )
        credential_type: str = details["credentialType"]
        algorithm: str = details["encryptionAlgorithm"]
        if caller_identity and credential_type != "OAuth2":
            raise bad_request("credentialDetails/useCallerAADIdentity: only valid with credentialType OAuth2")
        with self._lock:
            datasource = self._gateway_datasource(caller, request)
            gateway = datasource.gateway
            keys, online = gateway.keys, gateway.online
            if (caller_identity or datasource.caller_identity_only) and caller.kind != "user":
                raise self._forbidden()

        def refuse(
            status: int, error: dict[str, Any] | Refused, data: dict[str, str] | None = None
        ) -> HTTPError:
            if isinstance(error, Refused):
                self._record_attempt(datasource, caller, error.code or "unreadable", credential_type, data)
                return HTTPError(error.status, error.payload, error.headers)
            code = error["error"]["code"]
            self._record_attempt(datasource, caller, code, credential_type, data)
            return HTTPError(status, error)

        # The gateway (on-prem) or the service (cloud) turns ``credentials`` into name/value pairs.
        data: dict[str, str]
        if caller_identity:
            # Nothing to decrypt: the credential is the caller's token; the gateway must be up.
            if algorithm != "None":
                raise refuse(400, pbi_error(INVALID_ENCRYPTION_ALGORITHM))
            if not online:
                raise refuse(400, pbi_error(GATEWAY_UNREACHABLE))
            data = {}
        elif gateway.cloud or keys is None:
            if algorithm != "None":
                raise refuse(400, pbi_error(INVALID_ENCRYPTION_ALGORITHM))
            try:
                data = parse_credentials(credential_type, details["credentials"])
            except CredentialFormatError as exc:
                raise refuse(400, invalid_request(f"credentialDetails/credentials: {exc}")) from None
        else:
            if not online:
                raise refuse(400, pbi_error(GATEWAY_UNREACHABLE))
            if algorithm != "RSA-OAEP":
                raise refuse(400, pbi_error(UNKNOWN_GATEWAY_ERROR))
            try:
                plaintext = keys.decrypt(details["credentials"])
                data = parse_credentials(credential_type, plaintext)
            except (GatewayDecryptError, CredentialFormatError) as exc:
                logger.info("sandbox powerbi: gateway %s refused credentials: %s", gateway.id, exc)
                raise refuse(400, pbi_error(UNKNOWN_GATEWAY_ERROR)) from None

        signed_in_as: str | None = None
        if caller_identity:
            signed_in_as = caller.principal
            data = {"username": caller.principal}
        elif credential_type == "OAuth2" and datasource.caller_identity_only:
            # A token in the payload: the service's connection test with it fails (no account
            # attempt, so no source's refusal either: always the invalid-credentials answer).
            kind, path = source_kind_path(datasource)
            raise refuse(400, credentials_error(kind, path, user_of(datasource.source)), data)

        credential = StoredCredential(
            credential_type,
            data,
            details["encryptedConnection"],
            details["privacyLevel"],
            applied_at=self._host.clock.now(),
            applied_by=caller.principal,
            signed_in_as=signed_in_as,
        )
        with self._lock:
            result = self._sign_in(datasource, credential, cause="update-test")
            if result == "unreachable":
                raise refuse(400, pbi_error(GATEWAY_UNREACHABLE), data)
            if result != "ok":
                presented = None if caller_identity else presented_secret(data)
                locked = result == "locked"
                raise refuse(400, self._refusal(datasource, locked=locked, presented=presented), data)
            datasource.credential = credential
            datasource.credential_type = credential_type
            datasource.privacy_level = credential.privacy_level
            datasource.connection_encryption = credential.encrypted_connection
            datasource.credential_history.append(credential)
            self._record_attempt(datasource, caller, "ok", credential_type, data)
        logger.info(
            "sandbox powerbi: %s updated credentials of data source %s", caller.principal, datasource.id
        )
        return Response(200)

    def _record_attempt(
        self,
        datasource: Datasource,
        caller: TokenInfo,
        outcome: str,
        credential_type: str | None,
        data: dict[str, str] | None,
    ) -> None:
        with self._lock:
            datasource.update_attempts.append(
                UpdateAttempt(
                    self._host.clock.now(),
                    caller.principal,
                    outcome,
                    credential_type,
                    dict(data) if data is not None else None,
                )
            )

    # -- JSON shapes -----------------------------------------------------------------------------
    @staticmethod
    def _gateway_json(gateway: Gateway) -> dict[str, Any]:
        if gateway.cloud or gateway.keys is None:
            return {"id": gateway.id, "name": gateway.name, "type": "Cloud"}
        annotation = {
            "gatewayContactInformation": sorted(gateway.admins),
            "gatewayVersion": "3000.250.5",
            "gatewayMachine": gateway.name,
            "gatewayVirtualNetworkSubnetId": None,
        }
        return {
            "id": gateway.id,
            "name": gateway.name,
            "type": "Resource",
            "gatewayAnnotation": json.dumps(annotation),
            "publicKey": gateway.keys.public_key_json(),
            "gatewayStatus": "Live" if gateway.online else "Offline",
        }

    @staticmethod
    def _gateway_datasource_json(datasource: Datasource) -> dict[str, Any]:
        return {
            "id": datasource.id,
            "gatewayId": datasource.gateway.id,
            "datasourceType": datasource.datasource_type,
            "connectionDetails": json.dumps(datasource.connection_details, separators=(",", ":")),
            "credentialType": datasource.credential_type,
            "credentialDetails": {"useEndUserOAuth2Credentials": False},
            "datasourceName": datasource.name,
        }
