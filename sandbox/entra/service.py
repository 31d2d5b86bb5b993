"""Entra ID stand-in (``sb.entra``): the HTTP endpoints the real SDKs call.

:class:`Entra` is the directory (:mod:`sandbox.entra.directory`: principals, tokens) with its
token endpoint (:mod:`sandbox.entra.oauth`); this module adds the routes, the discovery
documents, msal's user realm, and App Service's managed identity endpoint.

HTTP endpoints (all registered on the sandbox router under the service name ``entra``):

============================  ======  =================================================================
route                         method  path
============================  ======  =================================================================
``entra.openid``              GET     ``/{tenant}/v2.0/.well-known/openid-configuration``
``entra.jwks``                GET     ``/{tenant}/discovery/v2.0/keys``
``entra.token``               POST    ``/{tenant}/oauth2/v2.0/token`` (client credentials, password,
                                      refresh token)
``entra.userrealm``           GET     ``/common/userrealm/{user}`` (msal's ROPC pre-flight, port 443)
``entra.msi``                 GET     ``/msi/token`` (App Service managed identity, api 2019-08-01)
============================  ======  =================================================================

What the real clients need from a non-Microsoft authority (verified against msal 1.39 and
azure-identity 1.27): msal fetches ``{authority}/v2.0/.well-known/openid-configuration`` and takes
the tenant from the *token endpoint's* path; with ``instance_discovery=False`` it never calls
``login.microsoftonline.com``. It does not validate the issuer for an Entra-style authority, nor
the id_token's signature (since 1.38 it only decodes the claims), so a well-formed but unsigned
id_token and a ``client_info`` blob are enough for its account cache. The username/password flow
first calls ``https://<authority host>/common/userrealm/<user>`` on port **443** whatever the
authority's port; the sandbox serves that port too when it can bind it.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from typing import Any

from sandbox.entra.directory import DEFAULT_TENANT, ManagedIdentity
from sandbox.entra.oauth import TokenEndpoint
from sandbox.host import Host
from sandbox.routing import HTTPError, Request, Response
from sandbox.sources import Sources

logger = logging.getLogger(__name__)

_MSI_API_VERSIONS = frozenset({"2019-08-01"})


class Entra(TokenEndpoint):
    """Principals of one tenant, the tokens issued to them, and Entra's HTTP endpoints."""

    def __init__(self, host: Host, sources: Sources, tenant_id: str = DEFAULT_TENANT) -> None:
        super().__init__(host, sources, tenant_id)
        #: The value App Service puts in ``IDENTITY_HEADER``; the MSI endpoint demands it back.
        self.identity_header = secrets.token_hex(16)
        self._register_routes()

    def managed_identity_env(self, mi: ManagedIdentity | None = None) -> dict[str, str]:
        """The environment App Service gives a function app with managed identity turned on.

        ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` make azure-identity's
        ``ManagedIdentityCredential`` (and msal's ``ManagedIdentityClient``) call this sandbox.
        When ``mi`` is given, ``AZURE_CLIENT_ID`` names it too: the conventional way
        (``DefaultAzureCredential``, Functions settings) to pick a user-assigned identity.
        """
        env = {"IDENTITY_ENDPOINT": f"{self._host.url}/msi/token", "IDENTITY_HEADER": self.identity_header}
        if mi is not None:
            with self._lock:
                if mi.client_id not in self.managed_identities:
                    raise KeyError(f"managed identity {mi.client_id} is not registered")
            env["AZURE_CLIENT_ID"] = mi.client_id
        return env

    # -- HTTP -------------------------------------------------------------------------------------
    def _register_routes(self) -> None:
        add = self._host.router.add
        tenant = r"/(?P<tenant>[^/]+)"
        add(
            "entra",
            "entra.openid",
            "GET",
            tenant + r"/v2\.0/\.well-known/openid-configuration",
            self._openid_configuration,
            self._oauth_error_body,
        )
        add(
            "entra",
            "entra.jwks",
            "GET",
            tenant + r"/discovery/v2\.0/keys",
            self._jwks,
            self._oauth_error_body,
        )
        add(
            "entra",
            "entra.token",
            "POST",
            tenant + r"/oauth2/v2\.0/token",
            self._token,
            self._oauth_error_body,
        )
        add(
            "entra",
            "entra.userrealm",
            "GET",
            r"/common/userrealm/(?P<user>[^/]+)",
            self._user_realm,
            self._oauth_error_body,
        )
        add("entra", "entra.msi", "GET", r"/msi/token", self._msi_token, self._msi_error_body)

    def _msi_error_body(self, status: int, code: str, message: str) -> dict[str, Any]:
        """App Service's managed-identity endpoint answers ``{statusCode, message, correlationId}``."""
        return {
            "statusCode": status,
            "message": f"{code}: {message}" if code else message,
            "correlationId": str(uuid.uuid4()),
        }

    # -- OpenID configuration ---------------------------------------------------------------------
    def _openid_configuration(self, request: Request) -> Response:
        tenant = request.params["tenant"]
        self._check_tenant(tenant)
        base = f"{self._host.url}/{tenant}"
        # Like the real service, the multi-tenant documents carry a placeholder issuer.
        issuer_tenant = self.tenant_id if tenant == self.tenant_id else "{tenantid}"
        body = {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{self._host.url}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self._host.url}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "cloud_instance_name",
                "cloud_instance_host_name",
                "cloud_graph_host_name",
                "msgraph_host",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "at_hash",
                "c_hash",
                "email",
            ],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }
        return Response(200, body)

    def _jwks(self, request: Request) -> Response:
        self._check_tenant(request.params["tenant"])
        # The sandbox's id_tokens are unsigned (msal does not verify them), so no keys are published.
        return Response(200, {"keys": []})

    # -- user realm -------------------------------------------------------------------------------
    def _user_realm(self, request: Request) -> Response:
        user = request.params["user"]
        domain = user.rpartition("@")[2].lower() if "@" in user else ""
        with self._lock:
            known = bool(domain) and any(u.rpartition("@")[2] == domain for u in self.users)
        if known:
            body: dict[str, Any] = {
                "ver": "1.0",
                "account_type": "Managed",
                "domain_name": domain,
                "cloud_instance_name": "microsoftonline.com",
                "cloud_audience_urn": "urn:federation:MicrosoftOnline",
            }
        else:
            body = {"ver": "1.0", "account_type": "Unknown", "cloud_instance_name": "microsoftonline.com"}
        return Response(200, body)

    # -- managed identity -------------------------------------------------------------------------
    def _msi_token(self, request: Request) -> Response:
        header = request.headers.get("X-IDENTITY-HEADER")
        if header is None:
            raise HTTPError(400, self._msi_error_body(400, "", "The X-IDENTITY-HEADER header is missing."))
        if not secrets.compare_digest(header.encode(), self.identity_header.encode()):
            raise HTTPError(401, self._msi_error_body(401, "", "The X-IDENTITY-HEADER header is not valid."))
        api_version = request.query.get("api-version")
        if api_version not in _MSI_API_VERSIONS:
            raise HTTPError(
                400,
                self._msi_error_body(
                    400, "", f"The api-version '{api_version}' is not supported. Use 2019-08-01."
                ),
            )
        resource = request.query.get("resource", "")
        if not resource:
            raise HTTPError(400, self._msi_error_body(400, "", "The 'resource' query parameter is required."))
        mi = self._find_identity(request.query)
        if mi is None:
            raise HTTPError(400, self._msi_error_body(400, "", "Unable to load the proper Managed Identity."))
        audience, _ = self._resource_of(resource.rstrip("/") + "/.default")
        info = self.issue_token("managed_identity", mi.client_id, audience, scopes=(resource,))
        logger.debug("entra: managed identity token for %s (%s)", mi.client_id, audience)
        return Response(
            200,
            {
                "access_token": info.token,
                "expires_on": str(int(info.expires_at)),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": mi.client_id,
            },
        )

    def _find_identity(self, query: dict[str, str]) -> ManagedIdentity | None:
        with self._lock:
            if query.get("client_id"):
                return self.managed_identities.get(query["client_id"])
            if query.get("object_id"):
                return next(
                    (m for m in self.managed_identities.values() if m.object_id == query["object_id"]), None
                )
            if query.get("mi_res_id"):
                return None  # the sandbox models no ARM resource ids
        return self.system_identity
