"""One Power BI tenant: its state, the switches tests turn, and what every API area shares.

:class:`~sandbox.powerbi.service.PowerBI` is one object: a :class:`Tenant` with one part per API
area (:mod:`~sandbox.powerbi.workspaces`, :mod:`~sandbox.powerbi.refreshes`,
:mod:`~sandbox.powerbi.gateways`, :mod:`~sandbox.powerbi.scanner`). What they all need is decided
here, once: who is calling (the token), what a caller may see, and a data source's sign-in
through its gateway, with the answer to a refused one.

How a refused sign-in is answered is chosen per data source (``set_refusal``, one of
:data:`sandbox.refusals.POWERBI_REFUSALS`; the catalogue and the source of each real body are in
:mod:`sandbox.refusals`). The default, ``invalid-credentials``, is
``DM_GWPipeline_Gateway_InvalidConnectionCredentials``; others play SQL Server's failed login
18456 as ``DM_GWPipeline_Gateway_DataSourceAccessError``, Windows' "The user name or password is
incorrect.", codes nobody documents, a body that is not JSON, and a message echoing the
submitted value. The shape is used by the credential update's test, the status check and the
refresh's ``serviceExceptionJson`` alike; the sign-in and its counting never change with it.

Behaviours that had to be decided (the real service documents none of them precisely):

* **Not a member / unknown id** -> 404 ``PowerBIEntityNotFound`` for workspaces and datasets
  alike, so a caller cannot probe for workspaces it may not see.
* **Not permitted on a gateway or data source** (on-prem: not a gateway admin; cloud: owns no
  dataset using the data source; OAuth2 caller identity with an app or managed identity) ->
  ``PowerBINotAuthorizedException`` with status :attr:`Tenant.not_authorized_status`, 403 by
  default. The real service is also seen answering 401 with that code; set the attribute to
  401 to prove a client classifies on the code and does not loop re-acquiring tokens.
* **Expired token** -> 401 ``TokenExpired`` (status configurable through
  :attr:`Tenant.token_expired_status`: Power BI has been observed answering 403 here too).
* **Locked accounts** are answered like a wrong value unless :attr:`Tenant.report_lockouts`;
  then the shapes that can say so do (SQL Server's 18486, Windows' error 1909).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Literal

from sandbox.accounts import Cause
from sandbox.connections import FabricLink
from sandbox.entra import POWERBI_AUDIENCE, Entra, TokenInfo, TokenRejected
from sandbox.host import Host
from sandbox.job_events import JobEvents
from sandbox.powerbi.models import (
    SHARED_DAILY_REFRESH_LIMIT,
    Dataset,
    Datasource,
    Gateway,
    StoredCredential,
    Workspace,
)
from sandbox.powerbi.wire import NOT_AUTHORIZED, not_found, path_id
from sandbox.refusals import Refused, pbi_error, powerbi_refusal
from sandbox.routing import HTTPError, Request
from sandbox.sources import CheckResult, Sources, SourceSystem

SignInResult = CheckResult | Literal["missing"]


def same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def contains(principals: Iterable[str], principal: str) -> bool:
    return any(same(p, principal) for p in principals)


def source_kind_path(datasource: Datasource) -> tuple[str, str]:
    """How a refusal names the data source: its kind (``SQL``, ``Web``...) and its path."""
    kind = "SQL" if datasource.datasource_type.lower() == "sql" else datasource.datasource_type
    cd = datasource.connection_details
    path = ";".join(v for v in (cd.get("server"), cd.get("database")) if v) or next(
        iter(cd.values()), datasource.name
    )
    return kind, path


def user_of(source: SourceSystem) -> str:
    """The user name a source's refusal names: its account's (the account's name without one)."""
    return source.account.username or source.account.name


class Tenant:
    """The state of one tenant and what every API area shares (see the module docstring)."""

    def __init__(self, host: Host, entra: Entra, sources: Sources) -> None:
        self._host = host
        self._entra = entra  # whose tokens it accepts
        self._sources = sources  # the systems behind the data sources, where sign-ins are counted
        self.fabric: FabricLink | None = None
        """Fabric, which holds the connections semantic models may be bound to (the sandbox sets it)."""
        self.job_events: JobEvents | None = None
        """Fabric's job events of the refreshes run here (the sandbox sets it: ``sb.job_events``)."""
        self._lock = threading.RLock()
        self.workspaces: dict[str, Workspace] = {}
        self.gateways: dict[str, Gateway] = {}
        self.shared_refresh_limit: int = SHARED_DAILY_REFRESH_LIMIT
        self.not_authorized_status = 403
        self.token_expired_status = 401
        # Off: a locked account is answered like a wrong password (what these tests were built on).
        # On: like SQL Server, whose message then says the account is locked (error 18486).
        self.report_lockouts = False

    @property
    def api_url(self) -> str:
        """``https://127.0.0.1:PORT/v1.0/myorg`` -- the product's ``POWERBI_API_URL``."""
        return self._host.url + "/v1.0/myorg"

    @property
    def lock(self) -> threading.RLock:
        """The one lock guarding every piece of state here (handlers run on server threads)."""
        return self._lock

    def _fabric_link(self) -> FabricLink:
        """Fabric, for the datasets bound to its connections."""
        if self.fabric is None:
            raise RuntimeError("a dataset is bound to Fabric connections, but no Fabric is linked")
        return self.fabric

    # -- callers and what they may see -----------------------------------------------------------
    def _authenticate(self, request: Request) -> TokenInfo:
        """The caller's token, or a 401 with a ``WWW-Authenticate: Bearer`` challenge."""
        try:
            return self._entra.verify(request, POWERBI_AUDIENCE)
        except TokenRejected as exc:
            authority = f"{self._host.url}/{self._entra.tenant_id}"
            challenge = f'Bearer authorization_uri="{authority}/oauth2/authorize"'
            if exc.reason == "missing":
                raise HTTPError(
                    401,
                    {"error": {"code": "Unauthorized", "message": "The request carries no access token."}},
                    {"WWW-Authenticate": challenge},
                ) from None
            challenge += ', error="invalid_token"'
            if exc.reason == "expired":
                raise HTTPError(
                    self.token_expired_status,
                    {
                        "error": {
                            "code": "TokenExpired",
                            "message": "Access token has expired, resubmit with a new access token",
                        }
                    },
                    {"WWW-Authenticate": challenge},
                ) from None
            messages = {
                "malformed": "The Authorization header is not a bearer token.",
                "audience": f"The access token's audience is not {POWERBI_AUDIENCE}.",
            }
            message = messages.get(exc.reason, "The access token is not valid.")
            raise HTTPError(
                401,
                {"error": {"code": "InvalidAuthenticationToken", "message": message}},
                {"WWW-Authenticate": challenge},
            ) from None

    def _forbidden(self) -> HTTPError:
        return HTTPError(self.not_authorized_status, pbi_error(NOT_AUTHORIZED))

    def _workspace(self, caller: TokenInfo, request: Request) -> Workspace:
        group_id = path_id(request, "group")
        workspace = self.workspaces.get(group_id)
        if workspace is None or not contains(workspace.members, caller.principal):
            raise not_found()
        return workspace

    def _dataset(self, caller: TokenInfo, request: Request) -> Dataset:
        workspace = self._workspace(caller, request)
        dataset = workspace.datasets.get(path_id(request, "dataset"))
        if dataset is None:
            raise not_found()
        return dataset

    def _odata(self, fragment: str, value: list[Any]) -> dict[str, Any]:
        return {"@odata.context": f"{self.api_url}/$metadata#{fragment}", "value": value}

    # -- a data source's sign-in through its gateway ---------------------------------------------
    def _sign_in(
        self, datasource: Datasource, credential: StoredCredential | None, *, cause: Cause
    ) -> SignInResult:
        """One connection attempt through the gateway with ``credential`` (counted by the account)."""
        if not datasource.gateway.online:
            return "unreachable"
        if credential is None:
            return "missing"
        data = dict(credential.data)
        if credential.credential_type == "OAuth2" and "accessToken" in data:
            # The token, not the account, is presented: an unusable one fails before the source.
            info = self._entra.tokens.get(data["accessToken"])
            if info is None or info.kind != "user" or info.expires_at <= self._host.clock.now():
                return "invalid"
            data = {"username": info.principal}
        return self._sources.check(datasource.source.id, credential.credential_type, data, cause=cause)

    def _refusal(self, datasource: Datasource, *, locked: bool, presented: str | None = None) -> Refused:
        """The answer to a sign-in ``datasource``'s source refused, in the data source's shape.
        ``locked`` is said only when :attr:`report_lockouts` (otherwise it looks like a wrong value)."""
        kind, path = source_kind_path(datasource)
        return powerbi_refusal(
            datasource.refusal,
            kind=kind,
            path=path,
            user=user_of(datasource.source),
            locked=locked and self.report_lockouts,
            presented=presented,
        )
