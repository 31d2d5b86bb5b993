"""Entra ID's directory: the principals of one tenant and the tokens issued to them.

Tokens are opaque random strings remembered with their kind (``app``, ``user``,
``managed_identity``), principal, audience and expiry, so that a resource server (Key Vault,
Power BI, Fabric) can tell who is calling (:meth:`Directory.verify`) and tests can assert it.
How they are asked for over HTTP is :mod:`sandbox.entra.oauth` and :mod:`sandbox.entra.service`.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509

from sandbox.accounts import DEFAULT_LOCKOUT_THRESHOLD, Account
from sandbox.host import Host
from sandbox.routing import Request
from sandbox.sources import Sources

TokenKind = Literal["app", "user", "managed_identity"]

POWERBI_AUDIENCE = "https://analysis.windows.net/powerbi/api"
KEYVAULT_AUDIENCE = "https://vault.azure.net"
GRAPH_AUDIENCE = "https://graph.microsoft.com"
DEFAULT_TENANT = "72f988bf-0000-4000-8000-00000000d0d0"


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


class TokenRejected(Exception):
    """A bearer token is missing, unknown, expired, or for another audience. ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "missing" | "malformed" | "unknown" | "expired" | "audience"


class Directory:
    """Principals of one tenant and the tokens issued to them (the base of :class:`Entra
    <sandbox.entra.service.Entra>`, which serves them over HTTP)."""

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

    # -- principals -------------------------------------------------------------------------------
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

    # -- tokens -----------------------------------------------------------------------------------
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
