"""Power BI REST stand-in: workspaces, datasets, gateways, data source credentials and refreshes.

It serves ``/v1.0/myorg/...`` in the shapes of Microsoft's swagger (``specs/powerbi``) and
behaves the way the platform does where the healer depends on it (DESIGN.md, "Facts of the
platform"): on-premises gateways hold a real RSA key and decrypt what they receive, every
credential update is tested against the source system (whose account counts failed sign-ins
from every cause -- update tests, refreshes, status checks -- and locks out; see
:mod:`sandbox.accounts`), refreshes sign in with the *stored* credential and fail when it is
stale, and a credential failure switches the refresh schedule off.

How a refused sign-in is answered is chosen per data source (:meth:`PowerBI.set_refusal`, one of
:data:`sandbox.refusals.POWERBI_REFUSALS`; the catalogue and the source of each real body are in
:mod:`sandbox.refusals`). The default, ``invalid-credentials``, is
``DM_GWPipeline_Gateway_InvalidConnectionCredentials``; others play SQL Server's failed login
18456 as ``DM_GWPipeline_Gateway_DataSourceAccessError``, Windows' "The user name or password is
incorrect.", codes nobody documents, a body that is not JSON, and a message echoing the
submitted value. The shape is used by the credential update's test, the status check and the
refresh's ``serviceExceptionJson`` alike; the sign-in and its counting never change with it.

Routes (service ``"powerbi"``; the names are stable, tests and fault injection use them)::

    powerbi.get_groups               GET    /groups                       ($filter subset, $top, $skip)
    powerbi.get_datasets             GET    /groups/{g}/datasets
    powerbi.get_dataset              GET    /groups/{g}/datasets/{d}
    powerbi.get_datasources          GET    /groups/{g}/datasets/{d}/datasources
    powerbi.take_over                POST   /groups/{g}/datasets/{d}/Default.TakeOver
    powerbi.refresh_dataset          POST   /groups/{g}/datasets/{d}/refreshes
    powerbi.refresh_history          GET    /groups/{g}/datasets/{d}/refreshes   ($top)
    powerbi.refresh_details          GET    /groups/{g}/datasets/{d}/refreshes/{requestId}
    powerbi.get_refresh_schedule     GET    /groups/{g}/datasets/{d}/refreshSchedule
    powerbi.update_refresh_schedule  PATCH  /groups/{g}/datasets/{d}/refreshSchedule
    powerbi.get_gateways             GET    /gateways
    powerbi.get_gateway              GET    /gateways/{gw}
    powerbi.get_gateway_datasources  GET    /gateways/{gw}/datasources
    powerbi.get_gateway_datasource   GET    /gateways/{gw}/datasources/{ds}
    powerbi.get_datasource_status    GET    /gateways/{gw}/datasources/{ds}/status
    powerbi.update_datasource        PATCH  /gateways/{gw}/datasources/{ds}
    powerbi.scan_get_info            POST   /admin/workspaces/getInfo      (lineage, datasourceDetails)
    powerbi.scan_status              GET    /admin/workspaces/scanStatus/{scanId}
    powerbi.scan_result              GET    /admin/workspaces/scanResult/{scanId}
    powerbi.unknown                  any    anything else under /v1.0/myorg (404, or 405)

Error shapes:

* plain API errors use the service envelope
  ``{"error": {"code": C, "pbi.error": {"code": C, "parameters": {}, "details": [...],
  "exceptionCulprit": 1}}}`` (``PowerBIEntityNotFound``, ``PowerBINotAuthorizedException``,
  ``DM_GWPipeline_*``) -- see :func:`pbi_error`;
* request validation errors (bad JSON, body not matching the swagger, non-GUID path ids,
  refresh conflicts and quota) are ``{"error": {"code": "InvalidRequest", "message": ...}}``;
  messages name the offending field but never echo a submitted value;
* token problems are 401 with ``WWW-Authenticate: Bearer ...``.

Behaviours that had to be decided (the real service documents none of them precisely):

* **Not a member / unknown id** -> 404 ``PowerBIEntityNotFound`` for workspaces and datasets
  alike, so a caller cannot probe for workspaces it may not see.
* **Not permitted on a gateway or data source** (on-prem: not a gateway admin; cloud: owns no
  dataset using the data source; OAuth2 caller identity with an app or managed identity) ->
  ``PowerBINotAuthorizedException`` with status :attr:`PowerBI.not_authorized_status`, 403 by
  default. The real service is also seen answering 401 with that code; set the attribute to
  401 to prove a client classifies on the code and does not loop re-acquiring tokens.
* **Expired token** -> 401 ``TokenExpired`` (status configurable through
  :attr:`PowerBI.token_expired_status`: Power BI has been observed answering 403 here too).
* **Cloud gateway**: a cloud data source still reports a ``gatewayId`` from
  ``GET /groups/{g}/datasets/{d}/datasources``. What ``GET /gateways/{thatId}`` answers is not
  documented; here it is 200 ``{"id", "name", "type": "Cloud"}`` *without* ``publicKey`` for a
  gateway admin or the owner of a dataset using one of its data sources (403 otherwise), so
  a client tells cloud from on-premises by the absence of the key. That is the default
  (``owners``) of a switch per cloud gateway (:data:`CloudGatewayAnswer`,
  :meth:`PowerBI.set_cloud_gateway_answer`): the field has also seen ``{"id"}`` alone, 404
  ``PowerBIEntityNotFound`` and 401/403 ``PowerBINotAuthorizedException``. ``GET /gateways``
  lists only on-premises gateways; a dataset's ``isOnPremGatewayRequired`` is true iff one of
  its data sources is on an on-premises gateway.
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
* **Locked accounts** are answered like a wrong value unless :attr:`PowerBI.report_lockouts`;
  then the shapes that can say so do (SQL Server's 18486, Windows' error 1909).
* **Admin scanner APIs** (``admin/workspaces/getInfo``, ``scanStatus``, ``scanResult``) are
  refused to every principal unless it is in :attr:`PowerBI.admin_principals` (the tenant setting
  "Service principals can access read-only admin APIs" with the principal in its allowed
  security group, and no Power BI admin-consent permission on the app): 401
  ``PowerBINotAuthorizedException`` (what callers report; :attr:`PowerBI.admin_refusal_status`
  makes it 403). ``getInfo`` takes 1 to 100 workspace GUIDs (else 400), scans every workspace of
  the tenant whatever the caller's membership (unknown ids are left out of the result), and
  answers 202 ``NotStarted``; ``scanStatus`` answers ``Running`` :attr:`PowerBI.scan_polls` times,
  then :attr:`PowerBI.scan_outcome` (``Succeeded``, or ``Failed`` with an ``error``);
  ``scanResult`` is 400 until a poll has reported ``Succeeded``. ``datasourceUsages`` appear only
  with ``lineage=True``, ``datasourceInstances`` only with ``datasourceDetails=True`` (the
  swagger's shapes: ``WorkspaceInfoResponse``). Another principal's scan id is 404.
* **Refresh**: a sign-in per data source, in order, stopping at the first failure (a mashup
  evaluation aborts on the first error); a refused one fails the refresh with the data source's
  refusal shape as ``serviceExceptionJson`` (``unreadable``: a string that is not JSON); through
  a Fabric connection, with the connection's shape in Power BI's terms. The refresh finishes
  ``duration`` seconds after it started, evaluated lazily when history is read or a refresh is
  requested. Credential
  failure (wrong, locked out, or no credentials at all) disables the schedule; gateway or
  source unreachability does not.
* **Daily quota**: shared capacity allows 8 refreshes (API and scheduled) per dataset; the
  9th within 24 hours is refused with 400 ``InvalidRequest`` "Invalid dataset refresh
  request. Number of refresh requests in last 24 hours exceeded limit" -- the text users
  report (one report shows the code ``Request Throttled``), and a 400 rather than a 429: it is
  not a throttle a client should retry with ``Retry-After``. The window is a rolling 24 hours
  of ``sb.clock``, as that message says. Dedicated (Premium) capacity has no limit here.
* **Service principals** may not ask for mail: ``notifyOption`` other than ``NoNotification``
  from an app or managed identity -> 400 ``Invalid NotifyOption value ... for app only owner
  requests`` (for refreshes and for schedules).
* **Update Refresh Schedule** requires the dataset owner (the API's documented permission).
* **Take Over** makes the caller the owner and resets the stored credentials of the dataset's
  cloud data sources (refreshes then fail with ``CredentialsNotSpecified`` until someone sets
  them again); data sources on an on-premises gateway keep theirs.

Credentials are kept per data source (:attr:`Datasource.credential`, with the history of
applied ones and of every update attempt) for tests; no route ever returns them and their
reprs hide the values.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import jsonschema

from sandbox import specs
from sandbox.accounts import Cause
from sandbox.entra import POWERBI_AUDIENCE, TokenInfo, TokenRejected
from sandbox.gateway_keys import GatewayDecryptError, GatewayKeyPair
from sandbox.refusals import (
    INVALID_CONNECTION_CREDENTIALS,
    POWERBI_REFUSALS,
    POWERBI_SHAPE_OF_FABRIC,
    PowerBIRefusal,
    Refused,
    credentials_error,
    pbi_error,
    powerbi_refusal,
)
from sandbox.routing import HTTPError, Request, Response
from sandbox.sources import CheckResult, SourceSystem, presented_secret

if TYPE_CHECKING:
    from sandbox.world import Sandbox

__all__ = [
    "CLOUD_GATEWAY_ANSWERS",
    "CREDENTIALS_NOT_SPECIFIED",
    "GATEWAY_UNREACHABLE",
    "INVALID_CONNECTION_CREDENTIALS",
    "POWERBI_REFUSALS",
    "SHARED_DAILY_REFRESH_LIMIT",
    "UNKNOWN_GATEWAY_ERROR",
    "CloudGatewayAnswer",
    "PowerBIRefusal",
    "Dataset",
    "Datasource",
    "Gateway",
    "PowerBI",
    "Refresh",
    "RefreshRefused",
    "RefreshSchedule",
    "StoredCredential",
    "UpdateAttempt",
    "Workspace",
    "credentials_error",
    "pbi_error",
]

logger = logging.getLogger(__name__)

GATEWAY_UNREACHABLE = "DM_GWPipeline_Client_GatewayUnreachable"
UNKNOWN_GATEWAY_ERROR = "DM_GWPipeline_UnknownError"
INVALID_ENCRYPTION_ALGORITHM = "DMTS_InvalidEncryptionAlgorithmError"
CREDENTIALS_NOT_SPECIFIED = "ModelRefreshFailed_CredentialsNotSpecified"
NOT_FOUND = "PowerBIEntityNotFound"
NOT_AUTHORIZED = "PowerBINotAuthorizedException"

SHARED_DAILY_REFRESH_LIMIT = 8
SHARED_MAX_SCHEDULE_TIMES = 8
PREMIUM_MAX_SCHEDULE_TIMES = 48
QUOTA_WINDOW_SECONDS = 24 * 3600.0
ALL_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")

_BASE = r"/v1\.0/myorg"
_SEGMENT = r"(?P<{}>[^/]+)"
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TIME_OF_DAY = re.compile(r"(?:[01]\d|2[0-3]):(?:00|30)")

# credentialData names each credential type takes (strict: exactly these, once each).
_CREDENTIAL_NAMES: dict[str, tuple[str, ...]] = {
    "Basic": ("username", "password"),
    "Windows": ("username", "password"),
    "Key": ("key",),
    "SAS": ("token",),
    "OAuth2": ("accessToken",),
    "Anonymous": (),
}

RefreshStatus = Literal["Unknown", "Completed", "Failed", "Disabled", "Cancelled"]
RefreshType = Literal["Scheduled", "OnDemand", "ViaApi", "ViaXmlaEndpoint", "ViaEnhancedApi"]
SignInResult = CheckResult | Literal["missing"]


# -- error bodies ----------------------------------------------------------------------------------
def _invalid_request(message: str) -> dict[str, Any]:
    return {"error": {"code": "InvalidRequest", "message": message}}


def _fault_body(status: int, code: str, message: str) -> dict[str, Any]:
    """Body of injected faults and of unexpected handler failures (the service envelope)."""
    return pbi_error(code)


def _bad_request(message: str) -> HTTPError:
    return HTTPError(400, _invalid_request(message))


def _not_found() -> HTTPError:
    return HTTPError(404, pbi_error(NOT_FOUND))


# -- model -----------------------------------------------------------------------------------------
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
    # Fabric connections (sandbox.fabric.FabricConnection) the model is bound to: a refresh signs
    # in through each with its stored credential; the datasources list shows them as Power BI does.
    connections: list[Any] = field(default_factory=list, repr=False)


@dataclass(eq=False)
class Scan:
    """One ``getInfo`` request: what it scanned (a snapshot taken when it was asked)."""

    id: str
    principal: str
    created: float
    result: dict[str, Any] = field(repr=False)
    polls_left: int
    outcome: str
    reported: str = "NotStarted"


@dataclass(eq=False)
class Workspace:
    id: str
    name: str
    members: set[str] = field(default_factory=set)
    dedicated_capacity: bool = False
    capacity_id: str | None = None
    datasets: dict[str, Dataset] = field(default_factory=dict, repr=False)


class RefreshRefused(Exception):
    """A refresh request the service turns down; ``message`` is what the API says."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _CredentialFormatError(Exception):
    """The ``credentials`` string is not what the credential type needs (message safe to show)."""


# -- helpers ---------------------------------------------------------------------------------------
def _iso(ts: float) -> str:
    """``2017-06-13T09:25:43.153Z``: the millisecond UTC form Power BI uses."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def _contains(principals: Iterable[str], principal: str) -> bool:
    return any(_same(p, principal) for p in principals)


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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def parse_credentials(credential_type: str, text: str, *, caller_identity: bool = False) -> dict[str, str]:
    """Decode a ``credentials`` string strictly into ``{name: value}``.

    ``{"credentialData": [{"name": ..., "value": ...}, ...]}`` with exactly the names the type
    needs; Anonymous (and OAuth2 with ``useCallerAADIdentity``) take ``""`` or ``[]``. Raises
    :class:`_CredentialFormatError` with a message that never contains a submitted value.
    """
    try:
        doc = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_pairs)
    except (ValueError, TypeError):
        raise _CredentialFormatError("credentials is not a strict JSON document") from None
    if not isinstance(doc, dict) or set(doc) != {"credentialData"}:
        raise _CredentialFormatError("credentials must be an object with exactly 'credentialData'")
    data = doc["credentialData"]
    names = () if caller_identity else _CREDENTIAL_NAMES.get(credential_type, ())
    if not names:
        if data not in ("", []):
            raise _CredentialFormatError(
                f"credentialData must be empty for {credential_type}"
                + (" with useCallerAADIdentity" if caller_identity else "")
            )
        return {}
    if not isinstance(data, list):
        raise _CredentialFormatError("credentialData must be an array of {name, value}")
    found: dict[str, str] = {}
    for entry in data:
        if (
            not isinstance(entry, dict)
            or set(entry) != {"name", "value"}
            or not isinstance(entry["name"], str)
            or not isinstance(entry["value"], str)
        ):
            raise _CredentialFormatError('each credentialData entry must be {"name": str, "value": str}')
        if entry["name"] in found:
            raise _CredentialFormatError(f"credentialData names '{entry['name']}' twice")
        found[entry["name"]] = entry["value"]
    if sorted(found) != sorted(names):
        raise _CredentialFormatError(f"{credential_type} credentialData needs exactly: {', '.join(names)}")
    return found


@functools.cache
def _body_validator(operation_id: str) -> tuple[str, jsonschema.Draft4Validator]:
    """The swagger definition name of the operation's body and a validator for it."""
    _, _, op = specs.powerbi_operation(operation_id)
    for param in op.get("parameters", []):
        if param.get("in") == "body":
            definition = param["schema"]["$ref"].rsplit("/", 1)[-1]
            schema = {
                "$ref": f"#/definitions/{definition}",
                "definitions": specs.load(specs.POWERBI)["definitions"],
            }
            return definition, jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    raise KeyError(f"{operation_id} takes no body")


def request_problems(operation_id: str, body: Any) -> list[str]:
    """How ``body`` fails the operation's swagger body schema, as lines naming the field.

    The same check as :func:`sandbox.specs.validate_powerbi_request`, but the messages never
    quote the submitted value (it may be a password).
    """
    definition, validator = _body_validator(operation_id)
    if not isinstance(body, dict):
        return [f"(root): the body must be a JSON object ({definition})"]
    found = []
    for err in validator.iter_errors(body):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        if err.validator == "required":
            found.append(f"{where}: {err.message}")
        elif err.validator == "type":
            found.append(f"{where}: must be of type {err.validator_value}")
        elif err.validator == "enum":
            found.append(f"{where}: must be one of {', '.join(map(str, err.validator_value))}")
        elif err.validator == "format":
            found.append(f"{where}: must be a valid {err.validator_value}")
        else:
            found.append(f"{where}: fails '{err.validator}'")
    return sorted(found)


# -- the service -----------------------------------------------------------------------------------
class PowerBI:
    """The Power BI service of one tenant (see the module docstring for what it decides)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox
        self._lock = threading.RLock()
        self.workspaces: dict[str, Workspace] = {}
        self.gateways: dict[str, Gateway] = {}
        self.refresh_duration = 0.0  # seconds a refresh takes unless the dataset says otherwise
        self.shared_refresh_limit: int = SHARED_DAILY_REFRESH_LIMIT
        self.not_authorized_status = 403
        self.token_expired_status = 401
        # Off: a locked account is answered like a wrong password (what these tests were built on).
        # On: like SQL Server, whose message then says the account is locked (error 18486).
        self.report_lockouts = False
        # The admin scanner APIs: who may call them, and how a scan goes.
        self.admin_principals: set[str] = set()
        self.admin_refusal_status = 401
        self.scan_polls = 1  # scanStatus answers "Running" this many times, then the outcome
        self.scan_outcome = "Succeeded"  # or "Failed"
        # Datasets a scan result lists without ``datasourceUsages`` (the real service omits them
        # for some datasets): the product must not read that as "no data sources".
        self.scan_omits_usages: set[str] = set()
        self.scans: dict[str, Scan] = {}
        self._next_refresh_id = 100_000
        self._route_patterns: list[re.Pattern[str]] = []
        self._register_routes()

    @property
    def api_url(self) -> str:
        """``https://127.0.0.1:PORT/v1.0/myorg`` -- the product's ``POWERBI_API_URL``."""
        return self._sb.url + "/v1.0/myorg"

    @property
    def lock(self) -> threading.RLock:
        """The one lock guarding every piece of state here (handlers run on server threads)."""
        return self._lock

    # -- world building (tests) ------------------------------------------------------------------
    def add_workspace(
        self, name: str, *, members: Iterable[str] = (), dedicated_capacity: bool = False
    ) -> Workspace:
        """A workspace; only ``members`` (token principals) see it and act in it."""
        workspace = Workspace(
            str(uuid.uuid4()),
            name,
            set(members),
            dedicated_capacity,
            str(uuid.uuid4()) if dedicated_capacity else None,
        )
        with self._lock:
            self.workspaces[workspace.id] = workspace
        return workspace

    def add_member(self, workspace: Workspace, principal: str) -> None:
        with self._lock:
            workspace.members.add(principal)

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
            applied_at=self._sb.clock.now(),
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
            credential = StoredCredential(kind, dict(data), applied_at=self._sb.clock.now())
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

    def add_dataset(
        self,
        workspace: Workspace,
        name: str,
        datasources: Iterable[Datasource] = (),
        *,
        owner: str = "owner@contoso.com",
        schedule_enabled: bool = True,
        refresh_seconds: float | None = None,
        connections: Iterable[Any] = (),
    ) -> Dataset:
        """A dataset using ``datasources`` (and bound to Fabric ``connections``), configured by
        ``owner`` (a token principal)."""
        with self._lock:
            dataset = Dataset(
                id=str(uuid.uuid4()),
                name=name,
                workspace=workspace,
                datasources=list(datasources),
                connections=list(connections),
                owner=owner,
                schedule=RefreshSchedule(enabled=schedule_enabled),
                refresh_seconds=refresh_seconds,
                refresh_limit=None if workspace.dedicated_capacity else self.shared_refresh_limit,
                created=self._sb.clock.now(),
            )
            workspace.datasets[dataset.id] = dataset
            return dataset

    def set_refresh_duration(self, seconds: float) -> None:
        """How long refreshes take by ``sb.clock`` (0: done at the first poll after the start)."""
        with self._lock:
            self.refresh_duration = float(seconds)

    def add_refresh(
        self,
        dataset: Dataset,
        *,
        status: str = "Failed",
        service_exception: str | Mapping[str, Any] | None = None,
        start: float | None = None,
        end: float | None = None,
        refresh_type: str = "Scheduled",
    ) -> Refresh:
        """Seed an entry in the refresh history (e.g. an old scheduled failure).

        ``service_exception`` is the ``serviceExceptionJson`` (a mapping is JSON-encoded); a
        Failed entry defaults to ``{"errorCode":"ModelRefreshFailed_CredentialsNotSpecified"}``.
        """
        with self._lock:
            now = self._sb.clock.now()
            begin = start if start is not None else now - 3600.0
            finish = end if end is not None else begin + 60.0
            text: str | None
            if isinstance(service_exception, Mapping):
                text = json.dumps(service_exception, separators=(",", ":"))
            else:
                text = service_exception
            if status == "Failed" and text is None:
                text = json.dumps({"errorCode": CREDENTIALS_NOT_SPECIFIED}, separators=(",", ":"))
            # A seeded "Unknown" entry is a refresh still running until ``end``; it settles like any other.
            refresh = Refresh(
                str(uuid.uuid4()),
                self._refresh_id(),
                refresh_type,
                begin,
                finish,
                status,
                None if status == "Unknown" else finish,
                text if status == "Failed" else None,
            )
            dataset.refreshes.append(refresh)
            dataset.refreshes.sort(key=lambda r: (r.start, r.id))
            return refresh

    def start_refresh(
        self, dataset: Dataset, *, refresh_type: str = "Scheduled", requested_by: str | None = None
    ) -> Refresh:
        """Start a refresh as the service would (scheduler or API); raises :class:`RefreshRefused`."""
        with self._lock:
            self._settle(dataset)
            if any(r.running for r in dataset.refreshes):
                raise RefreshRefused(
                    "Invalid dataset refresh request. Another refresh request is already executing"
                )
            now = self._sb.clock.now()
            if dataset.refresh_limit is not None:
                recent = [r for r in dataset.refreshes if r.start > now - QUOTA_WINDOW_SECONDS]
                if len(recent) >= dataset.refresh_limit:
                    raise RefreshRefused(
                        "Invalid dataset refresh request. "
                        "Number of refresh requests in last 24 hours exceeded limit"
                    )
            duration = self.refresh_duration if dataset.refresh_seconds is None else dataset.refresh_seconds
            refresh = Refresh(
                str(uuid.uuid4()),
                self._refresh_id(),
                refresh_type,
                now,
                now + duration,
                requested_by=requested_by,
            )
            dataset.refreshes.append(refresh)
            return refresh

    def settle(self) -> None:
        """Finish every refresh whose time has come (reads do this lazily per dataset)."""
        with self._lock:
            for workspace in self.workspaces.values():
                for dataset in workspace.datasets.values():
                    self._settle(dataset)

    def history(self, dataset: Dataset) -> list[Refresh]:
        """The dataset's refresh history, newest first, settled against the clock."""
        with self._lock:
            self._settle(dataset)
            return sorted(dataset.refreshes, key=lambda r: (r.start, r.id), reverse=True)

    def datasource(self, datasource_id: str) -> Datasource:
        with self._lock:
            for gateway in self.gateways.values():
                if datasource_id.lower() in gateway.datasources:
                    return gateway.datasources[datasource_id.lower()]
        raise KeyError(datasource_id)

    # -- refresh engine --------------------------------------------------------------------------
    def _refresh_id(self) -> int:
        self._next_refresh_id += 1
        return self._next_refresh_id

    def _settle(self, dataset: Dataset) -> None:
        now = self._sb.clock.now()
        for refresh in dataset.refreshes:
            if refresh.running and refresh.ends_at <= now:
                self._finish(dataset, refresh)

    def _finish(self, dataset: Dataset, refresh: Refresh) -> None:
        """Sign in to each data source with the stored credential; the first failure decides."""
        refresh.end = refresh.ends_at
        for datasource in dataset.datasources:
            result = self._sign_in(datasource, datasource.credential, cause="refresh")
            if result == "ok":
                continue
            refresh.status = "Failed"
            if result == "missing":
                error = _compact({"errorCode": CREDENTIALS_NOT_SPECIFIED})
            elif result == "unreachable":
                error = _compact(pbi_error(GATEWAY_UNREACHABLE))
            else:
                error = self._refusal(datasource, locked=result == "locked").text
            self._fail_refresh(dataset, refresh, result, error)
            return
        for connection in dataset.connections:
            result = self._sb.fabric.sign_in(connection, cause="refresh")
            if result == "ok":
                continue
            refresh.status = "Failed"
            if result == "unreachable":
                error = _compact(pbi_error(GATEWAY_UNREACHABLE))
            else:
                # The connection's Fabric shape, in Power BI's terms (a refresh is Power BI's).
                error = powerbi_refusal(
                    POWERBI_SHAPE_OF_FABRIC[connection.refusal],
                    kind=connection.connection_type,
                    path=connection.path,
                    user=_user_of(connection.source),
                    locked=result == "locked" and self.report_lockouts,
                ).text
            self._fail_refresh(dataset, refresh, result, error)
            return
        refresh.status = "Completed"

    def _fail_refresh(self, dataset: Dataset, refresh: Refresh, result: str, error: str) -> None:
        """``error`` is the ``serviceExceptionJson`` string (normally JSON; see sandbox.refusals)."""
        refresh.service_exception = error
        if result != "unreachable":
            # Power BI turns the schedule off after a credential failure.
            dataset.schedule.enabled = False
        logger.info("sandbox powerbi: refresh %s of %s failed (%s)", refresh.request_id, dataset.id, result)

    def _refusal(self, datasource: Datasource, *, locked: bool, presented: str | None = None) -> Refused:
        """The answer to a sign-in ``datasource``'s source refused, in the data source's shape.
        ``locked`` is said only when :attr:`report_lockouts` (otherwise it looks like a wrong value)."""
        kind, path = _source_kind_path(datasource)
        return powerbi_refusal(
            datasource.refusal,
            kind=kind,
            path=path,
            user=_user_of(datasource.source),
            locked=locked and self.report_lockouts,
            presented=presented,
        )

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
            info = self._sb.entra.tokens.get(data["accessToken"])
            if info is None or info.kind != "user" or info.expires_at <= self._sb.clock.now():
                return "invalid"
            data = {"username": info.principal}
        return self._sb.sources.check(datasource.source.id, credential.credential_type, data, cause=cause)

    # -- routing ---------------------------------------------------------------------------------
    def _register_routes(self) -> None:
        names = ("group", "dataset", "gateway", "datasource", "refresh")
        g, d, gw, ds, r = (_SEGMENT.format(n) for n in names)
        dataset = f"/groups/{g}/datasets/{d}"
        datasource = f"/gateways/{gw}/datasources/{ds}"
        routes: list[tuple[str, str, str, Callable[[Request], Response]]] = [
            ("get_groups", "GET", "/groups", self._get_groups),
            ("get_datasets", "GET", f"/groups/{g}/datasets", self._get_datasets),
            ("get_dataset", "GET", dataset, self._get_dataset),
            ("get_datasources", "GET", f"{dataset}/datasources", self._get_datasources),
            ("take_over", "POST", f"{dataset}/Default\\.TakeOver", self._take_over),
            ("refresh_dataset", "POST", f"{dataset}/refreshes", self._refresh_dataset),
            ("refresh_history", "GET", f"{dataset}/refreshes", self._refresh_history),
            ("refresh_details", "GET", f"{dataset}/refreshes/{r}", self._refresh_details),
            ("get_refresh_schedule", "GET", f"{dataset}/refreshSchedule", self._get_refresh_schedule),
            ("update_refresh_schedule", "PATCH", f"{dataset}/refreshSchedule", self._update_refresh_schedule),
            ("get_gateways", "GET", "/gateways", self._get_gateways),
            ("get_gateway", "GET", f"/gateways/{gw}", self._get_gateway),
            ("get_gateway_datasources", "GET", f"/gateways/{gw}/datasources", self._get_gateway_datasources),
            ("get_gateway_datasource", "GET", datasource, self._get_gateway_datasource),
            ("get_datasource_status", "GET", f"{datasource}/status", self._get_datasource_status),
            ("update_datasource", "PATCH", datasource, self._update_datasource),
            ("scan_get_info", "POST", "/admin/workspaces/getInfo", self._scan_get_info),
            (
                "scan_status",
                "GET",
                f"/admin/workspaces/scanStatus/{_SEGMENT.format('scan')}",
                self._scan_status,
            ),
            (
                "scan_result",
                "GET",
                f"/admin/workspaces/scanResult/{_SEGMENT.format('scan')}",
                self._scan_result,
            ),
        ]
        for name, method, pattern, handler in routes:
            self._route_patterns.append(re.compile(_BASE + pattern, re.IGNORECASE))
            self._sb.router.add(
                "powerbi", f"powerbi.{name}", method, _BASE + pattern, self._wrap(handler), _fault_body
            )
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            self._sb.router.add(
                "powerbi",
                "powerbi.unknown",
                method,
                _BASE + r"(?:/.*)?",
                self._wrap(self._unknown),
                _fault_body,
            )

    @staticmethod
    def _wrap(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        """Every answer carries a ``RequestId`` header, as Power BI's do."""

        def serve(request: Request) -> Response:
            request_id = str(uuid.uuid4())
            try:
                response = handler(request)
            except HTTPError as exc:
                exc.headers.setdefault("RequestId", request_id)
                raise
            response.headers.setdefault("RequestId", request_id)
            return response

        return serve

    def _unknown(self, request: Request) -> Response:
        if any(p.fullmatch(request.path) for p in self._route_patterns):
            raise HTTPError(
                405,
                {
                    "error": {
                        "code": "MethodNotAllowed",
                        "message": f"The requested resource does not support http method '{request.method}'.",
                    }
                },
            )
        raise HTTPError(
            404,
            {
                "error": {
                    "code": "NotFound",
                    "message": "No HTTP resource was found that matches the request URI.",
                }
            },
        )

    # -- request plumbing ------------------------------------------------------------------------
    def _authenticate(self, request: Request) -> TokenInfo:
        """The caller's token, or a 401 with a ``WWW-Authenticate: Bearer`` challenge."""
        try:
            return self._sb.entra.verify(request, POWERBI_AUDIENCE)
        except TokenRejected as exc:
            authority = f"{self._sb.url}/{self._sb.entra.tenant_id}"
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

    @staticmethod
    def _path_id(request: Request, name: str) -> str:
        value = request.params[name]
        if not _GUID.fullmatch(value):
            raise _bad_request(f"The {name}Id '{value[:64]}' in the URL is not a valid GUID.")
        return value.lower()

    @staticmethod
    def _json(request: Request, *, required: bool) -> Any:
        if not request.body.strip():
            if required:
                raise _bad_request("The request body is empty.")
            return None
        return request.json(_bad_request)

    @staticmethod
    def _validate_body(operation_id: str, body: Any, *, allow_missing: Iterable[str] = ()) -> None:
        """400 unless ``body`` matches the swagger; ``allow_missing`` names problems to overlook."""
        problems = [p for p in request_problems(operation_id, body) if p not in set(allow_missing)]
        if problems:
            definition, _ = _body_validator(operation_id)
            raise _bad_request(f"The request body does not match {definition}: " + "; ".join(problems[:10]))

    def _workspace(self, caller: TokenInfo, request: Request) -> Workspace:
        group_id = self._path_id(request, "group")
        workspace = self.workspaces.get(group_id)
        if workspace is None or not _contains(workspace.members, caller.principal):
            raise _not_found()
        return workspace

    def _dataset(self, caller: TokenInfo, request: Request) -> Dataset:
        workspace = self._workspace(caller, request)
        dataset = workspace.datasets.get(self._path_id(request, "dataset"))
        if dataset is None:
            raise _not_found()
        return dataset

    def _owns_dataset_using(self, principal: str, datasources: Iterable[Datasource]) -> bool:
        wanted = {d.id for d in datasources}
        return any(
            _same(dataset.owner, principal) and any(d.id in wanted for d in dataset.datasources)
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
        if _contains(gateway.admins, principal):
            return True
        if not gateway.cloud:
            return False
        scope = list(gateway.datasources.values()) if datasources is None else list(datasources)
        return self._owns_dataset_using(principal, scope)

    def _gateway(self, caller: TokenInfo, request: Request) -> Gateway:
        gateway = self.gateways.get(self._path_id(request, "gateway"))
        if gateway is None:
            raise _not_found()
        if not self._may_manage(caller, gateway):
            raise self._forbidden()
        return gateway

    def _gateway_datasource(self, caller: TokenInfo, request: Request) -> Datasource:
        gateway = self.gateways.get(self._path_id(request, "gateway"))
        datasource_id = self._path_id(request, "datasource")
        if gateway is None or datasource_id not in gateway.datasources:
            raise _not_found()
        datasource = gateway.datasources[datasource_id]
        if not self._may_manage(caller, gateway, [datasource]):
            raise self._forbidden()
        return datasource

    def _odata(self, fragment: str, value: list[Any]) -> dict[str, Any]:
        return {"@odata.context": f"{self.api_url}/$metadata#{fragment}", "value": value}

    # -- JSON shapes -----------------------------------------------------------------------------
    @staticmethod
    def _group_json(workspace: Workspace) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": workspace.id,
            "isReadOnly": False,
            "isOnDedicatedCapacity": workspace.dedicated_capacity,
            "type": "Workspace",
            "name": workspace.name,
        }
        if workspace.capacity_id:
            body["capacityId"] = workspace.capacity_id
        return body

    @staticmethod
    def _dataset_json(dataset: Dataset) -> dict[str, Any]:
        base = f"https://app.powerbi.com/groups/{dataset.workspace.id}"
        return {
            "id": dataset.id,
            "name": dataset.name,
            "webUrl": f"{base}/datasets/{dataset.id}",
            "addRowsAPIEnabled": False,
            "configuredBy": dataset.owner,
            "isRefreshable": True,
            "isEffectiveIdentityRequired": False,
            "isEffectiveIdentityRolesRequired": False,
            "isOnPremGatewayRequired": any(not d.gateway.cloud for d in dataset.datasources),
            "targetStorageMode": "Abf",
            "createdDate": _iso(dataset.created),
            "createReportEmbedURL": f"https://app.powerbi.com/reportEmbed?config={dataset.id}",
            "qnaEmbedURL": f"https://app.powerbi.com/qnaEmbed?config={dataset.id}",
            "upstreamDatasets": [],
            "users": [],
        }

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

    @staticmethod
    def _refresh_json(refresh: Refresh) -> dict[str, Any]:
        body: dict[str, Any] = {
            "requestId": refresh.request_id,
            "id": refresh.id,
            "refreshType": refresh.refresh_type,
            "startTime": _iso(refresh.start),
            "status": refresh.status,
        }
        if refresh.end is not None:
            body["endTime"] = _iso(refresh.end)
            attempt: dict[str, Any] = {
                "attemptId": 1,
                "startTime": _iso(refresh.start),
                "endTime": _iso(refresh.end),
                "type": "Data",
            }
            if refresh.service_exception is not None:
                body["serviceExceptionJson"] = refresh.service_exception
                attempt["serviceExceptionJson"] = refresh.service_exception
            body["refreshAttempts"] = [attempt]
        return body

    @staticmethod
    def _schedule_json(schedule: RefreshSchedule) -> dict[str, Any]:
        return {
            "days": list(schedule.days),
            "times": list(schedule.times),
            "enabled": schedule.enabled,
            "localTimeZoneId": schedule.local_time_zone_id,
            "notifyOption": schedule.notify_option,
        }

    # -- groups and datasets ---------------------------------------------------------------------
    def _get_groups(self, request: Request) -> Response:
        caller = self._authenticate(request)
        top = _int_param(request, "$top", minimum=0)
        skip = _int_param(request, "$skip", minimum=0) or 0
        matches = _odata_filter(request.query_ci("$filter"))
        with self._lock:
            groups = [
                self._group_json(w)
                for w in self.workspaces.values()
                if _contains(w.members, caller.principal)
            ]
        groups = [g for g in groups if matches(g)][skip:]
        if top is not None:
            groups = groups[:top]
        return Response(200, self._odata("groups", groups))

    def _get_datasets(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            workspace = self._workspace(caller, request)
            value = [self._dataset_json(d) for d in workspace.datasets.values()]
        return Response(200, self._odata(f"groups('{workspace.id}')/datasets", value))

    def _get_dataset(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            dataset = self._dataset(caller, request)
            body = self._dataset_json(dataset)
        context = f"{self.api_url}/$metadata#groups('{dataset.workspace.id}')/datasets/$entity"
        return Response(200, {"@odata.context": context, **body})

    def _get_datasources(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            dataset = self._dataset(caller, request)
            value = [
                {
                    "datasourceType": d.datasource_type,
                    "connectionDetails": dict(d.connection_details),
                    "datasourceId": d.id,
                    "gatewayId": d.gateway.id,
                }
                for d in dataset.datasources
            ]
            value += [self._sb.fabric.powerbi_datasource_json(c) for c in dataset.connections]
        return Response(200, self._odata("datasources", value))

    def _take_over(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            dataset = self._dataset(caller, request)
            previous, dataset.owner = dataset.owner, caller.principal
            # The new owner must give the cloud sources its own credentials: Power BI resets them.
            # (On-premises gateway data sources keep theirs; the gateway holds them.)
            reset = [d for d in dataset.datasources if d.gateway.cloud]
            for datasource in reset:
                datasource.credential = None
        logger.info(
            "sandbox powerbi: %s took over dataset %s from %s; reset the credentials of %d cloud "
            "data sources",
            caller.principal,
            dataset.id,
            previous,
            len(reset),
        )
        return Response(200)

    # -- refreshes -------------------------------------------------------------------------------
    def _refresh_dataset(self, request: Request) -> Response:
        caller = self._authenticate(request)
        body = self._json(request, required=False)
        if body is not None:
            self._validate_body("Datasets_RefreshDatasetInGroup", body)
        with self._lock:
            dataset = self._dataset(caller, request)
            if body is not None:
                if not dataset.workspace.dedicated_capacity and set(body) - {"notifyOption"}:
                    raise _bad_request(
                        "Invalid dataset refresh request. Only notifyOption can be specified "
                        "for datasets on shared capacity."
                    )
                notify = body.get("notifyOption")
                if caller.kind != "user" and notify not in (None, "NoNotification"):
                    raise _bad_request(f"Invalid NotifyOption value '{notify}' for app only owner requests")
            try:
                refresh = self.start_refresh(dataset, refresh_type="ViaApi", requested_by=caller.principal)
            except RefreshRefused as exc:
                raise _bad_request(exc.message) from None
        location = (
            f"{self.api_url}/groups/{dataset.workspace.id}/datasets/{dataset.id}"
            f"/refreshes/{refresh.request_id}"
        )
        return Response(
            202,
            None,
            {"x-ms-request-id": refresh.request_id, "Location": location, "RequestId": refresh.request_id},
        )

    def _refresh_history(self, request: Request) -> Response:
        caller = self._authenticate(request)
        top = _int_param(request, "$top", minimum=1)
        with self._lock:
            dataset = self._dataset(caller, request)
            history = self.history(dataset)
            value = [self._refresh_json(r) for r in (history if top is None else history[:top])]
        return Response(200, self._odata("refreshes", value))

    def _refresh_details(self, request: Request) -> Response:
        """Get Refresh Execution Details: what the ``Location`` of a refresh points at."""
        caller = self._authenticate(request)
        refresh_id = self._path_id(request, "refresh")
        with self._lock:
            dataset = self._dataset(caller, request)
            self._settle(dataset)
            refresh = next((r for r in dataset.refreshes if r.request_id == refresh_id), None)
            if refresh is None:
                raise _not_found()
            entry = self._refresh_json(refresh)
        body: dict[str, Any] = {
            "startTime": entry["startTime"],
            "type": "Full",
            "commitMode": "Transactional",
            "status": refresh.status,
            "extendedStatus": "InProgress" if refresh.running else refresh.status,
            "currentRefreshType": "Full",
            "numberOfAttempts": 1,
            "objects": [],
            "messages": [],
        }
        if "endTime" in entry:
            body["endTime"] = entry["endTime"]
            body["refreshAttempts"] = entry["refreshAttempts"]
        if refresh.status == "Failed":
            body["messages"] = [
                {"code": "ModelRefreshFailed", "message": "The refresh failed.", "type": "Error"}
            ]
        return Response(202 if refresh.running else 200, body)

    def _get_refresh_schedule(self, request: Request) -> Response:
        caller = self._authenticate(request)
        with self._lock:
            dataset = self._dataset(caller, request)
            body = self._schedule_json(dataset.schedule)
        return Response(200, {"@odata.context": f"{self.api_url}/$metadata#refreshSchedule", **body})

    def _update_refresh_schedule(self, request: Request) -> Response:
        caller = self._authenticate(request)
        body = self._json(request, required=True)
        self._validate_body("Datasets_UpdateRefreshScheduleInGroup", body)
        value = body["value"]
        if not isinstance(value, dict):
            raise _bad_request(
                "The request body does not match RefreshScheduleRequest: value: must be an object"
            )
        with self._lock:
            dataset = self._dataset(caller, request)
            if not _same(dataset.owner, caller.principal):
                raise self._forbidden()
            self._apply_schedule(dataset, value, caller)
        return Response(200)

    def _apply_schedule(self, dataset: Dataset, value: dict[str, Any], caller: TokenInfo) -> None:
        schedule = dataset.schedule
        if value.get("enabled") is False and set(value) - {"enabled"}:
            raise _bad_request(
                "A request that disables the refresh schedule should contain no other changes."
            )
        days = value.get("days", schedule.days)
        if not days:
            raise _bad_request("At least one day must be specified in the refresh schedule.")
        times = value.get("times", schedule.times)
        bad = [t for t in times if not _TIME_OF_DAY.fullmatch(t)]
        if bad:
            raise _bad_request("times: each time must be hh:mm with mm 00 or 30.")
        premium = dataset.workspace.dedicated_capacity
        limit = PREMIUM_MAX_SCHEDULE_TIMES if premium else SHARED_MAX_SCHEDULE_TIMES
        if len(times) > limit:
            raise _bad_request(f"times: at most {limit} refresh times per day on this capacity.")
        notify = value.get("notifyOption", value.get("NotifyOption", schedule.notify_option))
        if notify not in ("NoNotification", "MailOnFailure"):
            raise _bad_request("notifyOption: must be one of NoNotification, MailOnFailure")
        asked = "notifyOption" in value or "NotifyOption" in value
        if caller.kind != "user" and notify != "NoNotification" and asked:
            raise _bad_request(f"Invalid NotifyOption value '{notify}' for app only owner requests")
        schedule.days, schedule.times, schedule.notify_option = list(days), list(times), notify
        schedule.local_time_zone_id = value.get("localTimeZoneId", schedule.local_time_zone_id)
        if "enabled" in value:
            schedule.enabled = bool(value["enabled"])

    # -- gateways --------------------------------------------------------------------------------
    def _get_gateways(self, request: Request) -> Response:
        """On-premises gateways the caller administers (cloud gateways are never listed)."""
        caller = self._authenticate(request)
        with self._lock:
            value = [
                self._gateway_json(g)
                for g in self.gateways.values()
                if not g.cloud and _contains(g.admins, caller.principal)
            ]
        return Response(200, self._odata("gateways", value))

    def _get_gateway(self, request: Request) -> Response:
        caller = self._authenticate(request)
        context = f"{self.api_url}/$metadata#gateways/$entity"
        with self._lock:
            found = self.gateways.get(self._path_id(request, "gateway"))
            answer = found.get_answer if found is not None and found.cloud else "owners"
            if answer == "not-found":
                raise _not_found()
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
            kind, path = _source_kind_path(datasource)
            raise HTTPError(400, credentials_error(kind, path, _user_of(datasource.source)))
        refused = self._refusal(datasource, locked=result == "locked")
        raise HTTPError(refused.status, refused.payload, refused.headers)

    def _update_datasource(self, request: Request) -> Response:
        caller = self._authenticate(request)
        body = self._json(request, required=True)
        details_in = body.get("credentialDetails") if isinstance(body, dict) else None
        if not isinstance(details_in, dict):
            details_in = {}
        caller_identity = details_in.get("useCallerAADIdentity") is True
        if caller_identity and "credentials" in details_in:
            # The only payload known to work has no ``credentials`` key at all (DESIGN.md); an
            # empty OAuth2 credential may be read as "no token", so the sandbox refuses it.
            raise _bad_request(
                "credentialDetails/credentials: must be absent with "
                "useCallerAADIdentity (the caller's own token is the credential)"
            )
        # The swagger lists ``credentials`` as required; a caller-identity update omits it.
        self._validate_body(
            "Gateways_UpdateDatasource",
            body,
            allow_missing=("credentialDetails: 'credentials' is a required property",)
            if caller_identity
            else (),
        )
        details: dict[str, Any] = body["credentialDetails"]
        if not isinstance(details, dict):
            raise _bad_request(
                "The request body does not match UpdateDatasourceRequest: "
                "credentialDetails: must be an object"
            )
        credential_type: str = details["credentialType"]
        algorithm: str = details["encryptionAlgorithm"]
        if caller_identity and credential_type != "OAuth2":
            raise _bad_request(
                "credentialDetails/useCallerAADIdentity: only valid with credentialType OAuth2"
            )
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
            except _CredentialFormatError as exc:
                raise refuse(400, _invalid_request(f"credentialDetails/credentials: {exc}")) from None
        else:
            if not online:
                raise refuse(400, pbi_error(GATEWAY_UNREACHABLE))
            if algorithm != "RSA-OAEP":
                raise refuse(400, pbi_error(UNKNOWN_GATEWAY_ERROR))
            try:
                plaintext = keys.decrypt(details["credentials"])
                data = parse_credentials(credential_type, plaintext)
            except (GatewayDecryptError, _CredentialFormatError) as exc:
                logger.info("sandbox powerbi: gateway %s refused credentials: %s", gateway.id, exc)
                raise refuse(400, pbi_error(UNKNOWN_GATEWAY_ERROR)) from None

        signed_in_as: str | None = None
        if caller_identity:
            signed_in_as = caller.principal
            data = {"username": caller.principal}
        elif credential_type == "OAuth2" and datasource.caller_identity_only:
            # A token in the payload: the service's connection test with it fails (no account
            # attempt, so no source's refusal either: always the invalid-credentials answer).
            kind, path = _source_kind_path(datasource)
            raise refuse(400, credentials_error(kind, path, _user_of(datasource.source)), data)

        credential = StoredCredential(
            credential_type,
            data,
            details["encryptedConnection"],
            details["privacyLevel"],
            applied_at=self._sb.clock.now(),
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

    # -- the admin scanner APIs -------------------------------------------------------------------
    def _admin(self, request: Request) -> TokenInfo:
        caller = self._authenticate(request)
        if not _contains(self.admin_principals, caller.principal):
            raise HTTPError(self.admin_refusal_status, pbi_error(NOT_AUTHORIZED))
        return caller

    def _scan_get_info(self, request: Request) -> Response:
        caller = self._admin(request)
        body = self._json(request, required=True)
        self._validate_body("WorkspaceInfo_PostWorkspaceInfo", body)
        ids = body.get("workspaces")
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            raise _bad_request("'workspaces' must list 1 to 100 workspace ids.")
        if not all(isinstance(i, str) and _GUID.fullmatch(i) for i in ids):
            raise _bad_request("Every workspace id must be a GUID.")
        lineage, details = _query_true(request, "lineage"), _query_true(request, "datasourceDetails")
        with self._lock:
            result = self._scan_snapshot([i.lower() for i in ids], lineage=lineage, details=details)
            scan = Scan(
                str(uuid.uuid4()),
                caller.principal,
                self._sb.clock.now(),
                result,
                max(self.scan_polls, 0),
                self.scan_outcome,
            )
            self.scans[scan.id] = scan
        return Response(
            202, self._scan_json(scan), {"Location": f"{self.api_url}/admin/workspaces/scanStatus/{scan.id}"}
        )

    def _scan_snapshot(self, ids: list[str], *, lineage: bool, details: bool) -> dict[str, Any]:
        workspaces, instances = [], {}
        for workspace_id in dict.fromkeys(ids):
            workspace = self.workspaces.get(workspace_id)
            if workspace is None:
                continue
            datasets = []
            for dataset in workspace.datasets.values():
                entry: dict[str, Any] = {
                    "id": dataset.id,
                    "name": dataset.name,
                    "configuredBy": dataset.owner,
                    "targetStorageMode": "Abf",
                    "CreatedDate": _iso(dataset.created),
                }
                if lineage:
                    entry["upstreamDataflows"] = []
                    if dataset.id not in self.scan_omits_usages:
                        entry["datasourceUsages"] = [
                            {"datasourceInstanceId": d.id} for d in dataset.datasources
                        ]
                for d in dataset.datasources:
                    instances[d.id] = {
                        "datasourceType": d.datasource_type,
                        "connectionDetails": dict(d.connection_details),
                        "datasourceId": d.id,
                        "gatewayId": d.gateway.id,
                    }
                datasets.append(entry)
            workspaces.append(
                {
                    "id": workspace.id,
                    "name": workspace.name,
                    "type": "Workspace",
                    "state": "Active",
                    "isOnDedicatedCapacity": workspace.dedicated_capacity,
                    "datasets": datasets,
                }
            )
        result: dict[str, Any] = {"workspaces": workspaces}
        if details:
            result["datasourceInstances"] = list(instances.values())
            result["misconfiguredDatasourceInstances"] = []
        return result

    @staticmethod
    def _scan_json(scan: Scan) -> dict[str, Any]:
        body: dict[str, Any] = {"id": scan.id, "createdDateTime": _iso(scan.created), "status": scan.reported}
        if scan.reported == "Failed":
            body["error"] = {"code": "ScanFailed", "message": "The scan failed; try again later."}
        return body

    def _scan(self, request: Request) -> Scan:
        caller = self._admin(request)
        scan_id = self._path_id(request, "scan")
        scan = self.scans.get(scan_id)
        if scan is None or not _same(scan.principal, caller.principal):
            raise _not_found()
        return scan

    def _scan_status(self, request: Request) -> Response:
        with self._lock:
            scan = self._scan(request)
            if scan.polls_left > 0:
                scan.polls_left -= 1
                scan.reported = "Running"
            else:
                scan.reported = scan.outcome
            body = self._scan_json(scan)
        return Response(200, body)

    def _scan_result(self, request: Request) -> Response:
        with self._lock:
            scan = self._scan(request)
            if scan.reported != "Succeeded":
                raise _bad_request("The scan has not succeeded; ask its status first.")
            body = json.loads(json.dumps(scan.result))
        return Response(200, body)

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
                    self._sb.clock.now(),
                    caller.principal,
                    outcome,
                    credential_type,
                    dict(data) if data is not None else None,
                )
            )


def _compact(document: dict[str, Any]) -> str:
    """A JSON document as ``serviceExceptionJson`` carries it (no spaces)."""
    return json.dumps(document, separators=(",", ":"))


def _query_true(request: Request, name: str) -> bool:
    value = request.query_ci(name)
    if value is None:
        return False
    if value.lower() not in ("true", "false"):
        raise _bad_request(f"The query parameter '{name}' must be true or false.")
    return value.lower() == "true"


def _source_kind_path(datasource: Datasource) -> tuple[str, str]:
    """How a refusal names the data source: its kind (``SQL``, ``Web``...) and its path."""
    kind = "SQL" if datasource.datasource_type.lower() == "sql" else datasource.datasource_type
    cd = datasource.connection_details
    path = ";".join(v for v in (cd.get("server"), cd.get("database")) if v) or next(
        iter(cd.values()), datasource.name
    )
    return kind, path


def _user_of(source: SourceSystem) -> str:
    """The user name a source's refusal names: its account's (the account's name without one)."""
    return source.account.username or source.account.name


def _int_param(request: Request, name: str, *, minimum: int) -> int | None:
    raw = request.query_ci(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"The query parameter {name} must be an integer.") from None
    if value < minimum:
        raise _bad_request(f"The query parameter {name} must be at least {minimum}.")
    return value


_FILTER_EQ = re.compile(r"(name|id|type)\s+eq\s+'((?:[^']|'')*)'", re.IGNORECASE)
_FILTER_CONTAINS = re.compile(r"contains\(\s*name\s*,\s*'((?:[^']|'')*)'\s*\)", re.IGNORECASE)
_FILTER_BOOL = re.compile(r"(isReadOnly|isOnDedicatedCapacity)\s+eq\s+(true|false)", re.IGNORECASE)


def _odata_filter(expression: str | None) -> Callable[[dict[str, Any]], bool]:
    """A predicate for the subset of OData ``$filter`` that Get Groups examples use.

    ``name eq '..'``, ``id eq '..'``, ``type eq '..'``, ``contains(name,'..')``,
    ``isOnDedicatedCapacity eq true|false`` joined by ``and`` / ``or`` (no parentheses).
    Anything else is a 400, as OData parsing errors are.
    """
    if expression is None or not expression.strip():
        return lambda _group: True
    alternatives: list[list[Callable[[dict[str, Any]], bool]]] = []
    for alternative in re.split(r"\s+or\s+", expression.strip()):
        terms: list[Callable[[dict[str, Any]], bool]] = []
        for term in re.split(r"\s+and\s+", alternative.strip()):
            terms.append(_filter_term(term.strip()))
        alternatives.append(terms)
    return lambda group: any(all(t(group) for t in terms) for terms in alternatives)


def _filter_term(term: str) -> Callable[[dict[str, Any]], bool]:
    if m := _FILTER_EQ.fullmatch(term):
        prop, literal = m.group(1).lower(), m.group(2).replace("''", "'")
        if prop == "id":
            return lambda g: str(g["id"]).lower() == literal.lower()
        return lambda g: str(g.get(prop, "")) == literal
    if m := _FILTER_CONTAINS.fullmatch(term):
        needle = m.group(1).replace("''", "'")
        return lambda g: needle.lower() in str(g.get("name", "")).lower()
    if m := _FILTER_BOOL.fullmatch(term):
        prop = "isReadOnly" if m.group(1).lower() == "isreadonly" else "isOnDedicatedCapacity"
        expected = m.group(2).lower() == "true"
        return lambda g: bool(g.get(prop)) == expected
    raise _bad_request("The $filter expression is not supported.")
