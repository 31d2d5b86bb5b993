"""Entra ID stand-in: principals, the token store, and the HTTP endpoints the real SDKs call.

Tokens are opaque random strings remembered with their kind (``app``, ``user``,
``managed_identity``), principal, audience and expiry, so that a resource server (Key Vault,
Power BI) can tell who is calling and tests can assert it.

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

import base64
import datetime as _dt
import json
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.accounts import DEFAULT_LOCKOUT_THRESHOLD, Account
from sandbox.routing import HTTPError, Response
from sandbox.sources import Sources

if TYPE_CHECKING:
    from sandbox.host import Host
    from sandbox.routing import Request

logger = logging.getLogger(__name__)

TokenKind = Literal["app", "user", "managed_identity"]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
POWERBI_AUDIENCE = "https://analysis.windows.net/powerbi/api"
KEYVAULT_AUDIENCE = "https://vault.azure.net"
GRAPH_AUDIENCE = "https://graph.microsoft.com"
DEFAULT_TENANT = "72f988bf-0000-4000-8000-00000000d0d0"

#: Well-known first-party application ids a scope may name instead of the resource URI.
_RESOURCE_APP_IDS = {
    "00000009-0000-0000-c000-000000000000": POWERBI_AUDIENCE,
    "cfa8b339-82a2-471a-a3c9-0fc0be7a4093": KEYVAULT_AUDIENCE,
    "00000003-0000-0000-c000-000000000000": GRAPH_AUDIENCE,
}
#: OpenID Connect scopes: they ask for an id_token / refresh token, not for a resource.
_OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
#: Tenant names accepted in authority URLs besides the tenant id.
_TENANT_ALIASES = frozenset({"organizations", "common"})
_MSI_API_VERSIONS = frozenset({"2019-08-01"})


@dataclass(frozen=True)
class TokenInfo:
    token: str
    kind: TokenKind
    principal: str  # app: client id; user: UPN; managed identity: its client id
    tenant: str
    audience: str  # resource, e.g. https://analysis.windows.net/powerbi/api
    scopes: tuple[str, ...]
    expires_at: float


@dataclass
class App:
    client_id: str
    secret: str | None
    name: str = "app"
    object_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    certificates: list[x509.Certificate] = field(default_factory=list, repr=False)


@dataclass
class User:
    """An Entra user. Its password and lockout state are its :class:`~sandbox.accounts.Account`'s
    (the same model source systems sign in with), so a password grant counts like any sign-in."""

    upn: str
    account: Account = field(repr=False)
    object_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    disabled: bool = False

    @property
    def password(self) -> str:
        return self.account.secret or ""

    @password.setter
    def password(self, value: str) -> None:
        self.account.set_secret(value)


@dataclass
class ManagedIdentity:
    client_id: str
    object_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True)
class _RefreshGrant:
    upn: str
    client_id: str
    resource: str


class TokenRejected(Exception):
    """A bearer token is missing, unknown, expired, or for another audience. ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "missing" | "malformed" | "unknown" | "expired" | "audience"


class Entra:
    """Principals of one tenant, the tokens issued to them, and Entra's HTTP endpoints."""

    def __init__(self, host: Host, sources: Sources, tenant_id: str = DEFAULT_TENANT) -> None:
        self._host = host
        self._sources = sources  # where users' accounts live (add_user)
        self.tenant_id = tenant_id
        self._lock = threading.RLock()
        self.apps: dict[str, App] = {}
        self.users: dict[str, User] = {}  # by lower-case UPN
        self.managed_identities: dict[str, ManagedIdentity] = {}
        self.tokens: dict[str, TokenInfo] = {}
        self.default_app: App | None = None
        self.token_lifetime = 3599.0
        #: The value App Service puts in ``IDENTITY_HEADER``; the MSI endpoint demands it back.
        self.identity_header = secrets.token_hex(16)
        self._refresh_tokens: dict[str, _RefreshGrant] = {}
        self._register_routes()

    # -- principals --------------------------------------------------------------------------
    def add_app(
        self,
        client_id: str | None = None,
        secret: str | None = None,
        *,
        name: str = "app",
        default: bool = True,
        certificate: bytes | None = None,
    ) -> App:
        """Register a service principal (confidential client). The first is the default one.

        With ``certificate`` (PEM) the app signs in with certificate assertions and has no
        secret unless one is given.
        """
        if secret is None and certificate is None:
            secret = "sbx~" + secrets.token_urlsafe(24)
        app = App(client_id or str(uuid.uuid4()), secret, name)
        if certificate is not None:
            app.certificates.append(x509.load_pem_x509_certificate(certificate))
        with self._lock:
            self.apps[app.client_id] = app
            if default and self.default_app is None:
                self.default_app = app
        return app

    def add_user(
        self,
        upn: str,
        password: str | None = None,
        *,
        account: Account | None = None,
        lockout_threshold: int | None = DEFAULT_LOCKOUT_THRESHOLD,
    ) -> User:
        """An Entra user signing in as an account of ``sb.sources``.

        Without ``account`` the account named ``upn`` is used when it exists (``password``, when
        given, then becomes its secret), or made (with ``password`` and ``lockout_threshold``;
        Entra's smart lockout is 10 by default, the sandbox is stricter). Data sources that sign
        in as this user (OAuth2) may share the same account: ``sb.sources.add(..., account=upn)``.
        """
        sources = self._sources
        if account is None:
            account = sources.find_account(upn)
            if account is None:
                account = sources.add_account(
                    upn, username=upn, secret=password, lockout_threshold=lockout_threshold
                )
            elif password is not None:
                account.set_secret(password)
        elif password is not None:
            account.set_secret(password)
        user = User(upn, account)
        with self._lock:
            self.users[upn.lower()] = user
        return user

    def set_user_password(self, upn: str, password: str, *, at: float | None = None) -> None:
        """Change the user's password now, or when the sandbox clock reaches ``at``."""
        with self._lock:
            user = self.users[upn.lower()]
        user.account.set_secret(password, at=at)

    def add_managed_identity(self, client_id: str | None = None) -> ManagedIdentity:
        mi = ManagedIdentity(client_id or str(uuid.uuid4()))
        with self._lock:
            self.managed_identities[mi.client_id] = mi
        return mi

    @property
    def system_identity(self) -> ManagedIdentity | None:
        """The identity a system-assigned request (no ``client_id``) gets: the first registered."""
        with self._lock:
            return next(iter(self.managed_identities.values()), None)

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

    # -- tokens ------------------------------------------------------------------------------
    def issue_token(
        self,
        kind: TokenKind,
        principal: str,
        audience: str,
        *,
        scopes: tuple[str, ...] = (),
        lifetime: float | None = None,
    ) -> TokenInfo:
        """Mint a token (the token endpoints use this; tests may too)."""
        info = TokenInfo(
            token="sbx." + secrets.token_urlsafe(32),
            kind=kind,
            principal=principal,
            tenant=self.tenant_id,
            audience=audience.rstrip("/"),
            scopes=scopes,
            expires_at=self._host.clock.now() + (self.token_lifetime if lifetime is None else lifetime),
        )
        with self._lock:
            self.tokens[info.token] = info
        return info

    def verify(self, request: Request, audience: str) -> TokenInfo:
        """The token of ``request``'s ``Authorization: Bearer`` header, valid for ``audience``.

        Sets ``request.token`` (so the recorder knows who called). Raises :class:`TokenRejected`.
        """
        header = request.headers.get("Authorization")
        if not header:
            raise TokenRejected("missing")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise TokenRejected("malformed")
        with self._lock:
            info = self.tokens.get(value.strip())
        if info is None:
            raise TokenRejected("unknown")
        request.token = info
        if info.expires_at <= self._host.clock.now():
            raise TokenRejected("expired")
        if info.audience != audience.rstrip("/"):
            raise TokenRejected("audience")
        return info

    def tokens_issued(self, kind: TokenKind | None = None) -> list[TokenInfo]:
        with self._lock:
            return [t for t in self.tokens.values() if kind is None or t.kind == kind]

    # -- HTTP --------------------------------------------------------------------------------
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

    # Error shapes ---------------------------------------------------------------------------
    def _oauth_error_body(self, status: int, code: str, message: str) -> dict[str, Any]:
        """Entra's OAuth error shape for a generic failure (faults, unexpected errors)."""
        error = {400: "invalid_request", 401: "invalid_client"}.get(
            status, "temporarily_unavailable" if status in (429, 503, 504) else "server_error"
        )
        # AADSTS90033: "A transient error has occurred"; AADSTS50000: "There was an error issuing a token".
        return self._oauth_error(error, 90033 if status >= 429 else 50000, f"{code}: {message}")

    def _oauth_error(self, error: str, aadsts: int, description: str) -> dict[str, Any]:
        trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = _dt.datetime.fromtimestamp(self._host.clock.now(), _dt.UTC)
        timestamp = stamp.strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": error,
            "error_description": (
                f"AADSTS{aadsts}: {description} Trace ID: {trace_id} Correlation ID: {correlation_id}"
                f" Timestamp: {timestamp}"
            ),
            "error_codes": [aadsts],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self._host.url}/error?code={aadsts}",
        }

    def _fail(self, status: int, error: str, aadsts: int, description: str) -> HTTPError:
        return HTTPError(status, self._oauth_error(error, aadsts, description))

    def _msi_error_body(self, status: int, code: str, message: str) -> dict[str, Any]:
        """App Service's managed-identity endpoint answers ``{statusCode, message, correlationId}``."""
        return {
            "statusCode": status,
            "message": f"{code}: {message}" if code else message,
            "correlationId": str(uuid.uuid4()),
        }

    def _check_tenant(self, tenant: str) -> None:
        if tenant != self.tenant_id and tenant.lower() not in _TENANT_ALIASES:
            raise self._fail(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
                "signing into the correct cloud.",
            )

    # OpenID configuration -------------------------------------------------------------------
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

    # User realm -----------------------------------------------------------------------------
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

    # Token endpoint -------------------------------------------------------------------------
    def _token(self, request: Request) -> Response:
        tenant = request.params["tenant"]
        self._check_tenant(tenant)
        form = request.form()
        grant_type = form.get("grant_type", "")
        if not grant_type:
            raise self._missing_parameter("grant_type")
        if grant_type == "client_credentials":
            return self._client_credentials(form, tenant)
        if grant_type == "password":
            return self._password(form, tenant)
        if grant_type == "refresh_token":
            return self._refresh(form, tenant)
        raise self._fail(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )

    def _missing_parameter(self, name: str) -> HTTPError:
        return self._fail(
            400,
            "invalid_request",
            900144,
            f"The request body must contain the following parameter: '{name}'.",
        )

    def _authenticate_client(self, form: dict[str, str], *, confidential: bool, tenant: str) -> App:
        """The calling app; a confidential client must prove its secret."""
        client_id = form.get("client_id", "")
        if not client_id:
            raise self._missing_parameter("client_id")
        with self._lock:
            app = self.apps.get(client_id)
        if app is None:
            raise self._fail(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.tenant_id}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant. You may have sent "
                "your authentication request to the wrong tenant.",
            )
        if "client_assertion" in form and "client_secret" not in form:
            self._verify_client_assertion(app, form, tenant)
            return app
        secret = form.get("client_secret")
        if secret is None and not confidential:
            return app  # public client flow
        if secret is None:
            raise self._fail(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' "
                "or 'client_secret'.",
            )
        if app.secret is None or not secrets.compare_digest(secret, app.secret):
            raise self._fail(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                f"secret value, not the client secret ID, for a secret added to app '{client_id}'.",
            )
        return app

    def _verify_client_assertion(self, app: App, form: dict[str, str], tenant: str) -> None:
        """A ``private_key_jwt`` client assertion (RFC 7523) signed with a registered certificate.

        As Entra ID does: the certificate is found by ``x5t#S256`` (or the legacy SHA-1 ``x5t``),
        RS256 and PS256 signatures are accepted, ``iss`` and ``sub`` must be the client id, ``aud``
        the token endpoint, and ``exp``/``nbf`` must hold by the wall clock (the client's clock,
        not the sandbox's, signed the assertion).
        """
        if form.get("client_assertion_type") != JWT_BEARER:
            raise self._fail(400, "invalid_request", 50027, f"client_assertion_type must be '{JWT_BEARER}'.")
        try:
            head_b64, claims_b64, signature_b64 = form["client_assertion"].split(".")
            header = json.loads(_b64url_decode(head_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(signature_b64)
        except (ValueError, UnicodeDecodeError):
            header = claims = None
            signature = b""
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise self._fail(401, "invalid_client", 50027, "Invalid JWT token. The token is malformed.")
        certificate = self._assertion_certificate(app, header)
        public_key = certificate.public_key()
        signed = f"{head_b64}.{claims_b64}".encode("ascii")
        alg = header.get("alg")
        if not isinstance(public_key, rsa.RSAPublicKey) or alg not in ("RS256", "PS256"):
            raise self._fail(401, "invalid_client", 5002738, f"Signing algorithm {alg!r} is not supported.")
        pad: asym_padding.AsymmetricPadding = (
            asym_padding.PKCS1v15()
            if alg == "RS256"
            else asym_padding.PSS(mgf=asym_padding.MGF1(hashes.SHA256()), salt_length=asym_padding.PSS.AUTO)
        )
        try:
            public_key.verify(signature, signed, pad, hashes.SHA256())
        except InvalidSignature:
            raise self._fail(
                401, "invalid_client", 700027, "Client assertion contains an invalid signature."
            ) from None
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise self._fail(
                401,
                "invalid_client",
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter.",
            )
        endpoint = f"{self._host.url}/{tenant}/oauth2/v2.0/token"
        if claims.get("aud") != endpoint:
            raise self._fail(
                401,
                "invalid_client",
                700212,
                f"The client assertion's audience must be the token endpoint {endpoint}.",
            )
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf", now)
        if (
            not isinstance(exp, (int, float))
            or not isinstance(nbf, (int, float))
            or exp <= now - 300
            or nbf > now + 300
        ):
            raise self._fail(
                401, "invalid_client", 700024, "Client assertion is not within its valid time range."
            )

    def _assertion_certificate(self, app: App, header: dict[str, Any]) -> x509.Certificate:
        # Thumbprints are base64url; msal keeps the padding, other clients drop it.
        sha256 = str(header.get("x5t#S256", "")).rstrip("=")
        sha1 = str(header.get("x5t", "")).rstrip("=")
        for certificate in app.certificates:
            x5t = _b64url(certificate.fingerprint(hashes.SHA1()))  # noqa: S303 - the x5t header is SHA-1
            if sha256 == _b64url(certificate.fingerprint(hashes.SHA256())) or sha1 == x5t:
                return certificate
        raise self._fail(
            401,
            "invalid_client",
            700027,
            "Client assertion failed signature validation. [Reason - The key was not found.]",
        )

    def _resource_of(self, scope: str) -> tuple[str, str]:
        """(audience, permission) of a scope: ``https://x/api/.default`` -> (``https://x/api``, ...)."""
        resource, _, permission = scope.rpartition("/")
        if not resource:
            # A bare permission such as ``User.Read`` is Microsoft Graph's.
            return GRAPH_AUDIENCE, scope
        return _RESOURCE_APP_IDS.get(resource.lower(), resource), permission

    def _client_credentials(self, form: dict[str, str], tenant: str) -> Response:
        app = self._authenticate_client(form, confidential=True, tenant=tenant)
        scope = form.get("scope", "").strip()
        if not scope:
            raise self._missing_parameter("scope")
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise self._fail(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows must have a "
                "scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        audience, _ = self._resource_of(scopes[0])
        info = self.issue_token("app", app.client_id, audience, scopes=tuple(scopes))
        logger.debug("entra: app token for %s (%s)", app.client_id, audience)
        return self._token_response(info, scope=None)

    def _user_scopes(self, scope: str) -> tuple[str, tuple[str, ...], bool]:
        """(audience, resource scopes, wants refresh token) of a user flow's ``scope`` parameter."""
        requested = scope.split()
        resource_scopes = tuple(s for s in requested if s.lower() not in _OIDC_SCOPES)
        audiences = {self._resource_of(s)[0] for s in resource_scopes}
        if len(audiences) > 1:
            raise self._fail(
                400,
                "invalid_scope",
                28000,
                "Provided value for the input parameter scope is not valid because it contains more than one "
                "resource. Scope " + scope + " is not valid.",
            )
        if not audiences:
            return GRAPH_AUDIENCE, (f"{GRAPH_AUDIENCE}/User.Read",), "offline_access" in requested
        return audiences.pop(), resource_scopes, "offline_access" in requested

    def _password(self, form: dict[str, str], tenant: str) -> Response:
        app = self._authenticate_client(form, confidential=False, tenant=tenant)
        for name in ("username", "password", "scope"):
            if not form.get(name):
                raise self._missing_parameter(name)
        upn = form["username"]
        with self._lock:
            user = self.users.get(upn.lower())
        if user is None:
            raise self._fail(
                400,
                "invalid_grant",
                50034,
                f"The user account {{EUII Hidden}} does not exist in the {self.tenant_id} directory. To sign "
                "into this application, the account must be added to the directory.",
            )
        if user.disabled:
            raise self._fail(400, "invalid_grant", 50057, "The user account is disabled.")
        presented = form["password"]
        result = user.account.sign_in(
            lambda _username, secret: (
                secret is not None and secrets.compare_digest(presented.encode(), secret.encode())
            ),
            presented,
            cause="password-grant",
            via="entra",
        )
        if result == "locked":
            raise self._fail(
                400,
                "invalid_grant",
                50053,
                "Your account is locked because the user tried to sign in too many times "
                "with an incorrect user ID or password.",
            )
        if result != "ok":
            raise self._fail(
                400,
                "invalid_grant",
                50126,
                "Error validating credentials due to invalid username or password.",
            )
        audience, resource_scopes, offline = self._user_scopes(form["scope"])
        return self._user_token_response(app, user, audience, resource_scopes, form["scope"], offline)

    def _refresh(self, form: dict[str, str], tenant: str) -> Response:
        app = self._authenticate_client(form, confidential=False, tenant=tenant)
        token = form.get("refresh_token", "")
        if not token:
            raise self._missing_parameter("refresh_token")
        with self._lock:
            grant = self._refresh_tokens.get(token)
            user = self.users.get(grant.upn.lower()) if grant else None
        if grant is None or grant.client_id != app.client_id or user is None:
            raise self._fail(
                400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
            )
        if user.disabled:
            raise self._fail(400, "invalid_grant", 50057, "The user account is disabled.")
        scope = form.get("scope") or f"{grant.resource}/.default offline_access"
        audience, resource_scopes, _ = self._user_scopes(scope)
        return self._user_token_response(app, user, audience, resource_scopes, scope, True)

    def _user_token_response(
        self,
        app: App,
        user: User,
        audience: str,
        resource_scopes: tuple[str, ...],
        requested: str,
        offline: bool,
    ) -> Response:
        info = self.issue_token("user", user.upn, audience, scopes=resource_scopes)
        logger.debug("entra: user token for %s (%s)", user.upn, audience)
        granted = " ".join([*resource_scopes, *(s for s in requested.split() if s.lower() in _OIDC_SCOPES)])
        response = self._token_response(info, scope=granted)
        assert isinstance(response.body, dict)
        if offline:
            refresh = "sbx.rt." + secrets.token_urlsafe(32)
            with self._lock:
                self._refresh_tokens[refresh] = _RefreshGrant(user.upn, app.client_id, audience)
            response.body["refresh_token"] = refresh
        response.body["id_token"] = self._id_token(app, user)
        response.body["client_info"] = _b64url(
            json.dumps({"uid": user.object_id, "utid": self.tenant_id}, separators=(",", ":")).encode()
        )
        return response

    def _token_response(self, info: TokenInfo, *, scope: str | None) -> Response:
        lifetime = max(0, round(info.expires_at - self._host.clock.now()))
        body: dict[str, Any] = {"token_type": "Bearer"}
        if scope is not None:
            body["scope"] = scope
        body.update(expires_in=lifetime, ext_expires_in=lifetime, access_token=info.token)
        return Response(
            200,
            body,
            {
                "Cache-Control": "no-store, no-cache",
                "Pragma": "no-cache",
                "x-ms-request-id": str(uuid.uuid4()),
            },
        )

    def _id_token(self, app: App, user: User) -> str:
        """A well-formed JWT with Entra's v2.0 claims. Unsigned: msal decodes, never verifies, it."""
        now = int(self._host.clock.now())
        header = {"typ": "JWT", "alg": "RS256", "kid": "sandbox"}
        claims = {
            "aud": app.client_id,
            "iss": f"{self._host.url}/{self.tenant_id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + int(self.token_lifetime),
            "name": user.upn.partition("@")[0],
            "oid": user.object_id,
            "preferred_username": user.upn,
            "sub": user.object_id,
            "tid": self.tenant_id,
            "ver": "2.0",
        }
        parts = [_b64url(json.dumps(p, separators=(",", ":")).encode()) for p in (header, claims)]
        return ".".join([*parts, _b64url(secrets.token_bytes(32))])

    # Managed identity -----------------------------------------------------------------------
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


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
