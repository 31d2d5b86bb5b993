"""A typical world in a started sandbox, for tests and demos of the healer.

    world = build_world(sb, sources=3)            # one secret feeding 3 SQL data sources
    env = world.env(state_path=tmp_path / "ledger.db")
    version = world.rotate()                       # the account changes, then Key Vault
    world.rotate(order="vault-first", delay=30)    # Key Vault now, the account 30 s later
    world.account.failures_by_fingerprint()        # {fingerprint: failed sign-ins}

What it makes: a service principal (the sandbox's default app, so ``sb.env()`` carries its
credentials), a workspace with the app as member, one gateway (on-premises with a ``bits`` RSA
key, or the cloud gateway) whose admin is the app, ``sources`` source systems signing in as
**one shared account** (one secret, one service account: the real case; lockout threshold 5;
``shared_account=False`` gives each source its own account), one gateway data source and one
dataset per source (owned by
the app's client id, the principal Power BI compares, so schedule updates are allowed), the Key
Vault secret holding the current credential, and the bindings JSON for all of it.

How Power BI answers a sign-in the sources refuse is ``refusal`` (``build_world(refusal=...)``,
one of :data:`sandbox.refusals.POWERBI_REFUSALS`, on every data source; :meth:`World.set_refusal`
changes it per data source). The sign-ins and their counting are the same whatever the shape.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from sandbox import Sandbox
from sandbox.accounts import Account
from sandbox.entra import App
from sandbox.powerbi import Dataset, Datasource, Gateway, Workspace
from sandbox.refusals import PowerBIRefusal
from sandbox.sources import SourceSystem
from sandbox.world import RotationOrder, generate_password

_USERNAME_TYPES = ("Basic", "Windows", "OAuth2")


@dataclass
class World:
    sb: Sandbox
    app: App
    workspace: Workspace
    gateway: Gateway
    secret_name: str
    binding_name: str
    credential_type: str
    username: str | None
    secret: str  # the current credential (password, key or token)
    version: str  # the current Key Vault version
    sources: list[SourceSystem] = field(default_factory=list)
    accounts: list[Account] = field(default_factory=list)  # one when shared (the default)
    datasources: list[Datasource] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list)
    oauth2: str | None = None  # "caller-identity" for OAuth2 bindings
    refusal: PowerBIRefusal = "invalid-credentials"  # what build_world set on every data source

    # -- ids ---------------------------------------------------------------------------------
    @property
    def workspace_id(self) -> str:
        return self.workspace.id

    @property
    def gateway_id(self) -> str:
        return self.gateway.id

    @property
    def datasource_ids(self) -> list[str]:
        return [d.id for d in self.datasources]

    @property
    def dataset_ids(self) -> list[str]:
        return [d.id for d in self.datasets]

    @property
    def account(self) -> Account:
        """The account the sources sign in as (the first one with ``shared_account=False``)."""
        return self.accounts[0]

    def failed_sign_ins(self) -> int:
        """Refused sign-ins of this world's accounts, from every cause."""
        return sum(a.total_failures for a in self.accounts)

    def worst_repeat(self) -> int:
        """The most refused sign-ins of one account with one presented value (the promise: <= 1)."""
        return max((n for a in self.accounts for n in a.failures_by_fingerprint().values()), default=0)

    # -- bindings ------------------------------------------------------------------------------
    def binding(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.binding_name,
            "secret": self.secret_name,
            "credentialType": self.credential_type,
        }
        if self.username is not None and self.credential_type in _USERNAME_TYPES:
            entry["username"] = self.username
        if self.oauth2 is not None:
            entry["oauth2"] = self.oauth2
        entry["targets"] = [{"gatewayId": d.gateway_id, "datasourceId": d.id} for d in self.datasources]
        return entry

    def bindings(self, *extra: dict[str, Any]) -> dict[str, Any]:
        """The bindings document (this world's binding plus ``extra`` ones)."""
        return {"bindings": [self.binding(), *extra], "watch": {"workspaces": [self.workspace.id]}}

    def bindings_json(self, *extra: dict[str, Any]) -> str:
        return json.dumps(self.bindings(*extra))

    def env(self, state_path: str | os.PathLike[str], **overrides: str) -> dict[str, str]:
        """The product's environment: ``sb.env()`` plus the ledger path and the bindings JSON.

        The settle time is 0 here (these worlds rotate source-first, so nothing needs to settle);
        tests of the settle time pass ``REMEDIATION_SETTLE_SECONDS`` themselves.
        """
        env = self.sb.env(
            REMEDIATION_STATE_PATH=os.fspath(state_path),
            REMEDIATION_BINDINGS=self.bindings_json(),
            REMEDIATION_SETTLE_SECONDS="0",
        )
        env.update(overrides)
        return env

    # -- what happens ----------------------------------------------------------------------------
    def rotate(
        self, new_secret: str | None = None, *, order: RotationOrder = "source-first", delay: float = 0.0
    ) -> str:
        """A rotation: ``source-first`` changes every account, then Key Vault gets the new version
        (notifying subscribers); ``vault-first`` writes Key Vault first and changes the accounts
        when the sandbox clock reaches now + ``delay`` (see :meth:`Sandbox.rotate`). Returns the
        new version."""
        if order not in ("source-first", "vault-first"):
            raise ValueError(f"order must be 'source-first' or 'vault-first', not {order!r}")
        if delay < 0 or (delay and order == "source-first"):
            raise ValueError("delay is for vault-first rotations, in seconds >= 0")
        new_secret = new_secret if new_secret is not None else generate_password()
        self.secret = new_secret
        if order == "source-first":
            self._change_accounts(new_secret)
            self.version = self.sb.vault.set_secret(self.secret_name, new_secret)
            return self.version
        at = self.sb.clock.now() + delay
        self.version = self.sb.vault.set_secret(self.secret_name, new_secret)
        self._change_accounts(new_secret, at=at if delay else None)
        return self.version

    def rotate_sources_only(self, new_secret: str | None = None) -> str:
        """The accounts change but Key Vault is not told (it now holds a wrong secret)."""
        new_secret = new_secret if new_secret is not None else generate_password()
        self._change_accounts(new_secret)
        self.secret = new_secret
        return new_secret

    def _change_accounts(self, secret: str, *, at: float | None = None) -> None:
        for account in self.accounts:
            account.set_secret(secret, at=at)

    def put_in_vault(self, value: str) -> str:
        """A new Key Vault version holding ``value`` (right or wrong); returns the version."""
        self.version = self.sb.vault.set_secret(self.secret_name, value)
        return self.version

    def set_refusal(self, shape: PowerBIRefusal, *datasources: Datasource | int) -> None:
        """How Power BI answers a refused sign-in of ``datasources`` (data sources or their indexes
        in :attr:`datasources`; none: every one of this world's)."""
        chosen = [self.datasources[d] if isinstance(d, int) else d for d in datasources] or self.datasources
        for datasource in chosen:
            self.sb.powerbi.set_refusal(datasource, shape)
        if not datasources:
            self.refusal = shape

    def fail_scheduled_refreshes(self) -> None:
        """Run a scheduled refresh of every dataset now (with the stored credential)."""
        for dataset in self.datasets:
            self.sb.powerbi.start_refresh(dataset)
        self.sb.powerbi.settle()

    def stored_secret(self, datasource: Datasource) -> str | None:
        """What Power BI holds for ``datasource`` (the password, key or token)."""
        credential = datasource.credential
        if credential is None:
            return None
        data = credential.data
        return data.get("password") or data.get("key") or data.get("token")


def build_world(
    sb: Sandbox,
    *,
    sources: int = 1,
    bits: int = 2048,
    cloud: bool = False,
    credential_type: str = "Basic",
    datasource_type: str = "Sql",
    username: str | None = "svc_pbi",
    secret: str | None = None,
    secret_name: str = "sql-sales-password",
    binding_name: str = "sales-sql",
    app: App | None = None,
    lockout_threshold: int | None = 5,
    caller_identity_only: bool = False,
    oauth2: str | None = None,
    prefix: str = "src",
    shared_account: bool = True,
    account_name: str | None = None,
    servers: int | None = None,
    refusal: PowerBIRefusal = "invalid-credentials",
    dedicated_capacity: bool = False,
) -> World:
    """Make the world described in the module docstring in the started sandbox ``sb``.

    ``credential_type``/``datasource_type`` pick the kind of sources (Basic SQL by default;
    ``Key``/``SAS``/``Windows``/``OAuth2`` work too). For OAuth2 caller identity pass
    ``username`` = a user's UPN (register it with ``sb.entra.add_user``), ``secret`` = its
    password, ``caller_identity_only=True`` and ``oauth2="caller-identity"``; the user is made
    gateway admin as well, since the update is made with the user's own token; the sources
    then sign in as the Entra user's own account (a password grant and a refresh count alike).

    ``servers``: the data sources are databases on that many servers (default: each source is a
    server of its own). The healer probes an account once per server (SQL logins have a password
    per server), so a fan-out that should follow one acceptance wants ``servers=1``.

    ``shared_account`` (default): every source signs in as one account, ``account_name``
    (default ``"{binding_name}-{prefix}\\{username or credential type}"``); ``False``: each source
    has its own account, named after the source.

    ``refusal``: how Power BI answers a sign-in the sources refuse, on every data source (see
    :mod:`sandbox.refusals`; :meth:`World.set_refusal` changes it later, per data source).

    ``dedicated_capacity``: the workspace is on a Premium/Fabric capacity (its refreshes then
    raise Fabric job events in ``sb.job_events``; no daily refresh quota).
    """
    pbi = sb.powerbi
    app = app or sb.entra.default_app or sb.entra.add_app(name="healer")
    principal = app.client_id
    secret = secret if secret is not None else generate_password()
    user = username if credential_type in _USERNAME_TYPES else None

    workspace = pbi.add_workspace(
        f"{binding_name} workspace", members=[principal], dedicated_capacity=dedicated_capacity
    )
    admins = [principal] + ([user] if credential_type == "OAuth2" and user else [])
    gateway = (
        pbi.add_cloud_gateway(f"{binding_name} cloud", admins=admins)
        if cloud
        else pbi.add_gateway(f"{binding_name} gateway", bits=bits, admins=admins)
    )
    version = sb.vault.set_secret(secret_name, secret)
    world = World(
        sb=sb,
        app=app,
        workspace=workspace,
        gateway=gateway,
        secret_name=secret_name,
        binding_name=binding_name,
        credential_type=credential_type,
        username=user,
        secret=secret,
        version=version,
        oauth2=oauth2,
        refusal=refusal,
    )
    shared: Account | None = None
    if shared_account:
        name = account_name or f"{binding_name}-{prefix}\\{user or credential_type.lower()}"
        existing = sb.sources.find_account(user) if credential_type == "OAuth2" and user else None
        shared = existing or sb.sources.add_account(
            name, username=user, secret=secret, lockout_threshold=lockout_threshold
        )
        world.accounts.append(shared)
    for i in range(sources):
        source_id = f"{binding_name}-{prefix}-{i}"
        if shared is not None:
            source = sb.sources.add(source_id, credential_type=credential_type, account=shared)
        else:
            source = sb.sources.add(
                source_id,
                credential_type=credential_type,
                username=user,
                secret=secret,
                lockout_threshold=lockout_threshold,
            )
            world.accounts.append(source.account)
        datasource = pbi.add_datasource(
            gateway,
            source,
            connection_details=(
                None if servers is None else {"server": f"sql{i % servers}.local", "database": source.id}
            ),
            datasource_type=datasource_type,
            credential_type=credential_type,
            caller_identity_only=caller_identity_only,
        )
        pbi.set_refusal(datasource, refusal)
        dataset = pbi.add_dataset(workspace, f"{source.id} model", [datasource], owner=principal)
        world.sources.append(source)
        world.datasources.append(datasource)
        world.datasets.append(dataset)
    return world
