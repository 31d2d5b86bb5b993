"""Entra ID's token endpoint, ``POST /{tenant}/oauth2/v2.0/token``, and its OAuth error shape.

How a client proves itself (a client secret, or a ``private_key_jwt`` assertion signed with a
registered certificate) and what each grant gives: client credentials (an app token),
resource-owner password (a user token, the sign-in counted by the user's account like any
other) and refresh token. Answers are shaped as Entra's, down to the ``AADSTS`` codes msal and
azure-identity read.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.entra.directory import (
    DEFAULT_TENANT,
    GRAPH_AUDIENCE,
    KEYVAULT_AUDIENCE,
    POWERBI_AUDIENCE,
    App,
    Directory,
    TokenInfo,
    User,
)
from sandbox.host import Host
from sandbox.routing import HTTPError, Request, Response
from sandbox.sources import Sources

logger = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

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


@dataclass(frozen=True)
class _RefreshGrant:
    upn: str
    client_id: str
    resource: str


class TokenEndpoint(Directory):
    """The directory's token endpoint (the base of :class:`Entra <sandbox.entra.service.Entra>`)."""

    def __init__(self, host: Host, sources: Sources, tenant_id: str = DEFAULT_TENANT) -> None:
        super().__init__(host, sources, tenant_id)
        self._refresh_tokens: dict[str, _RefreshGrant] = {}

    # -- error shapes -----------------------------------------------------------------------------
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

    def _check_tenant(self, tenant: str) -> None:
        if tenant != self.tenant_id and tenant.lower() not in _TENANT_ALIASES:
            raise self._fail(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
                "signing into the correct cloud.",
            )

    # -- the endpoint -----------------------------------------------------------------------------
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

    # -- client authentication --------------------------------------------------------------------
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

    # -- grants -----------------------------------------------------------------------------------
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

    # -- answers ----------------------------------------------------------------------------------
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


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
