"""What one Power BI tenant holds: workspaces, datasets, gateways, data sources, the credentials
they hold, refreshes and refresh schedules.

Every API area (:mod:`sandbox.powerbi`) works on these, and tests build worlds with them.
Credentials are kept per data source (:attr:`Datasource.credential`, with the history of applied
ones and of every update attempt) for tests; no route ever returns them and their reprs hide the
values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sandbox.connections import FabricConnection
from sandbox.gateway_keys import GatewayKeyPair
from sandbox.refusals import PowerBIRefusal
from sandbox.sources import SourceSystem

SHARED_DAILY_REFRESH_LIMIT = 8  # refreshes a day per dataset on shared capacity (the daily quota)
ALL_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")

RefreshStatus = Literal["Unknown", "Completed", "Failed", "Disabled", "Cancelled"]
RefreshType = Literal["Scheduled", "OnDemand", "ViaApi", "ViaXmlaEndpoint", "ViaEnhancedApi"]


@dataclass(eq=False)
class StoredCredential:
    """A credential Power BI holds for a data source. ``data`` is the decoded credentialData."""

    credential_type: str
    data: dict[str, str] = field(repr=False)
    encrypted_connection: str = "Encrypted"
    privacy_level: str = "Organizational"
    applied_at: float = 0.0
    applied_by: str | None = None  # principal of the PATCH; None when seeded by a test
    signed_in_as: str | None = None  # OAuth2 caller identity: the user the data source uses


@dataclass(eq=False)
class UpdateAttempt:
    """One ``PATCH`` of a data source that got past authorization, and how it ended."""

    at: float
    principal: str
    outcome: str  # "ok" or the error code answered
    credential_type: str | None
    data: dict[str, str] | None = field(default=None, repr=False)  # None when never decoded


CloudGatewayAnswer = Literal["owners", "id-only", "not-found", "unauthorized", "forbidden"]
"""What ``GET /gateways/{id}`` answers for a cloud data source's virtual gateway (all are seen):
``owners``: 200 ``{id, name, type: Cloud}`` to admins and owners of a dataset using it, 403 to
others; ``id-only``: 200 ``{id}`` to anyone; ``not-found``: 404 ``PowerBIEntityNotFound``;
``unauthorized`` / ``forbidden``: 401 / 403 ``PowerBINotAuthorizedException``."""

CLOUD_GATEWAY_ANSWERS: tuple[CloudGatewayAnswer, ...] = (
    "owners",
    "id-only",
    "not-found",
    "unauthorized",
    "forbidden",
)


@dataclass(eq=False)
class Gateway:
    id: str
    name: str
    cloud: bool
    keys: GatewayKeyPair | None = field(default=None, repr=False)
    admins: set[str] = field(default_factory=set)
    online: bool = True  # an offline gateway can neither decrypt nor connect
    get_answer: CloudGatewayAnswer = "owners"  # cloud gateways only: see CloudGatewayAnswer
    datasources: dict[str, Datasource] = field(default_factory=dict, repr=False)


@dataclass(eq=False)
class Datasource:
    id: str
    gateway: Gateway = field(repr=False)
    source: SourceSystem = field(repr=False)
    datasource_type: str
    connection_details: dict[str, str]
    credential_type: str
    name: str
    caller_identity_only: bool = False
    # What an admin chose (Fabric's Connections API reports both; Power BI's API reports neither):
    # every accepted PATCH sets them to what it carried (Fabric's ``Any`` is set only by a test).
    privacy_level: str = "Organizational"
    connection_encryption: str = "Encrypted"  # Encrypted, NotEncrypted, or Fabric's Any
    credential: StoredCredential | None = None
    credential_history: list[StoredCredential] = field(default_factory=list, repr=False)
    update_attempts: list[UpdateAttempt] = field(default_factory=list, repr=False)
    # How the service answers a sign-in its source refuses (sandbox.refusals; set_refusal).
    refusal: PowerBIRefusal = "invalid-credentials"

    @property
    def gateway_id(self) -> str:
        return self.gateway.id


@dataclass(eq=False)
class RefreshSchedule:
    days: list[str] = field(default_factory=lambda: list(ALL_DAYS))
    times: list[str] = field(default_factory=lambda: ["06:00"])
    enabled: bool = True
    local_time_zone_id: str = "UTC"
    notify_option: str = "MailOnFailure"


@dataclass(eq=False)
class Refresh:
    """One entry of a dataset's refresh history."""

    request_id: str
    id: int
    refresh_type: str
    start: float
    ends_at: float  # when a running refresh finishes (== end once finished)
    status: str = "Unknown"
    end: float | None = None
    service_exception: str | None = None  # the JSON string ``serviceExceptionJson`` carries
    requested_by: str | None = None

    @property
    def running(self) -> bool:
        return self.status == "Unknown"


@dataclass(eq=False)
class Dataset:
    id: str
    name: str
    workspace: Workspace = field(repr=False)
    datasources: list[Datasource] = field(repr=False)
    owner: str
    schedule: RefreshSchedule = field(default_factory=RefreshSchedule)
    refresh_seconds: float | None = None  # None: the PowerBI-wide default
    refresh_limit: int | None = SHARED_DAILY_REFRESH_LIMIT  # None: no daily quota
    created: float = 0.0
    refreshes: list[Refresh] = field(default_factory=list, repr=False)  # oldest first
    # Fabric connections the model is bound to: a refresh signs in through each with its stored
    # credential; the datasources list shows them as Power BI does.
    connections: list[FabricConnection] = field(default_factory=list, repr=False)


@dataclass(eq=False)
class Workspace:
    id: str
    name: str
    members: set[str] = field(default_factory=set)
    dedicated_capacity: bool = False
    capacity_id: str | None = None
    datasets: dict[str, Dataset] = field(default_factory=dict, repr=False)
