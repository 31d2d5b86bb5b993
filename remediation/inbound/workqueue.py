"""Deferred and long work on a Storage queue of the Functions app's own storage account.

Push triggers may not hold their caller: Event Grid waits seconds for an answer, the HTTP front end
cuts a request at about 230 s, yet a heal can follow refreshes for minutes, and a Key Vault version
may have to settle before it is presented. So the push triggers validate a command, put it on the
queue named by ``REMEDIATION_WORK_QUEUE`` and answer; a queue-triggered function runs it.

A message is one :class:`WorkCommand` as compact JSON, base64-encoded (the Functions host's default
``messageEncoding``; ``host.json`` says so)::

    {"kind": "secret", "secretName": "sql-sales-password", "version": "<32 hex>"?,
     "trigger": "eventgrid", "correlationId": "<id>", "attempt": 0}
    {"kind": "dataset", "workspaceId": "<guid>", "datasetId": "<guid>", ...}
    {"kind": "target", "gatewayId": "<guid>", "datasourceId": "<guid>", "part": true?, ...}

``part`` marks one target of a secret's fan-out (:meth:`WorkCommand.fan_out`): it keeps the
secret command's correlation id (so its status shows every part) and is done on its own
(:attr:`WorkCommand.done_key`), so that a redelivered part is dropped and the others are not.

Messages carry ids and names only, never a secret value. :meth:`WorkCommand.parse` validates every
field as strictly as the HTTP boundary does; a message it refuses is dropped by the caller (logged),
never retried. :meth:`WorkQueue.send` can delay a message (its visibility timeout), up to the 7 days
the service allows.

One :class:`WorkQueue` per worker, over one ``azure.storage.queue.QueueClient``. Errors from the
service raise :class:`WorkQueueError` with a one-line message that never quotes the connection
string, an account key or a SAS signature.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

from remediation.clients.storage_errors import describe_storage_error
from remediation.config.bindings import CONNECTIONS
from remediation.config.settings import Settings
from remediation.errors import ConfigError, RemediationError

if TYPE_CHECKING:  # the queue SDK is imported when a queue is opened, not with the commands
    from azure.core.credentials import TokenCredential
    from azure.storage.queue import QueueClient

__all__ = [
    "MAX_DELAY_SECONDS",
    "ReceivedWork",
    "WorkCommand",
    "WorkKind",
    "WorkMessageError",
    "WorkQueue",
    "WorkQueueError",
]

logger = logging.getLogger(__name__)

MAX_DELAY_SECONDS: Final = 7 * 86400
"""The longest visibility delay Azure Storage queues accept (7 days)."""
MAX_MESSAGE_CHARS: Final = 4096
"""Far above any command (a few hundred characters); longer text is refused unread."""
MAX_ATTEMPT: Final = 1000

_GUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A target part's gatewayId: a gateway, or CONNECTIONS for a Fabric connection (remediation.config.bindings).
_TARGET_GATEWAY: Final = re.compile(_GUID.pattern + "|" + CONNECTIONS)
_SECRET_NAME: Final = re.compile(r"[0-9A-Za-z-]{1,127}")
_VERSION: Final = re.compile(r"[0-9A-Fa-f]{32}")
_TRIGGER: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")
_CORRELATION: Final = re.compile(r"[0-9A-Za-z._:@+=-]{1,128}")
_CLIENT_OPTIONS: Final[Mapping[str, Any]] = {
    "retry_total": 3,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 8,
    "connection_timeout": 10,
    "read_timeout": 30,
}


class WorkQueueError(RemediationError):
    """The queue service could not be reached or refused a call (the message says which)."""


class WorkMessageError(RemediationError):
    """A queue message that is not a command this product wrote (dropped, never retried)."""


class WorkKind(StrEnum):
    SECRET = "secret"
    DATASET = "dataset"
    TARGET = "target"


_FIELDS: Final[Mapping[WorkKind, tuple[str, ...]]] = {
    WorkKind.SECRET: ("secretName",),
    WorkKind.DATASET: ("workspaceId", "datasetId"),
    WorkKind.TARGET: ("gatewayId", "datasourceId"),
}
_COMMON: Final = frozenset({"kind", "trigger", "correlationId", "attempt", "presentAgain", "part"})


@dataclass(frozen=True)
class WorkCommand:
    """One healer command: which entry point, on what, for which trigger and correlation id.

    ``attempt`` counts re-runs of the same command (a version still settling). ``version`` is a
    version an operator named (it must exist); ``event_version`` one an event announced (only
    logged). ``present_again`` is the operator's explicit "present it once more". Build one with
    the class methods, which validate like :meth:`parse`.
    """

    kind: WorkKind
    trigger: str
    correlation_id: str
    secret_name: str | None = None
    version: str | None = None
    workspace_id: str | None = None
    dataset_id: str | None = None
    gateway_id: str | None = None
    datasource_id: str | None = None
    attempt: int = 0
    event_version: str | None = None
    present_again: bool = False
    part: bool = False

    @property
    def done_key(self) -> str:
        """The ledger's "done" id of this command: its correlation id, or for a part of a fan-out
        the correlation id and the target."""
        if self.part:
            return f"{self.correlation_id}|{self.gateway_id}|{self.datasource_id}"
        return self.correlation_id

    def fan_out(self, gateway_id: str, datasource_id: str) -> WorkCommand:
        """One target of this secret command, as a part of its fan-out."""
        command = WorkCommand.target(
            gateway_id, datasource_id, trigger=self.trigger, correlation_id=self.correlation_id
        )
        return replace(command, part=True, present_again=self.present_again)

    @classmethod
    def secret(
        cls,
        name: str,
        version: str | None,
        *,
        trigger: str,
        correlation_id: str,
        attempt: int = 0,
        event_version: str | None = None,
        present_again: bool = False,
    ) -> WorkCommand:
        return cls._checked(
            cls(
                WorkKind.SECRET,
                trigger,
                correlation_id,
                secret_name=name,
                version=version,
                attempt=attempt,
                event_version=event_version,
                present_again=present_again,
            )
        )

    def with_present_again(self, present_again: bool) -> WorkCommand:
        """The same command with the operator's "present it once more" set or not."""
        return replace(self, present_again=present_again)

    @classmethod
    def dataset(
        cls, workspace_id: str, dataset_id: str, *, trigger: str, correlation_id: str, attempt: int = 0
    ) -> WorkCommand:
        return cls._checked(
            cls(
                WorkKind.DATASET,
                trigger,
                correlation_id,
                workspace_id=workspace_id.lower(),
                dataset_id=dataset_id.lower(),
                attempt=attempt,
            )
        )

    @classmethod
    def target(
        cls, gateway_id: str, datasource_id: str, *, trigger: str, correlation_id: str, attempt: int = 0
    ) -> WorkCommand:
        return cls._checked(
            cls(
                WorkKind.TARGET,
                trigger,
                correlation_id,
                gateway_id=gateway_id.lower(),
                datasource_id=datasource_id.lower(),
                attempt=attempt,
            )
        )

    def again(self) -> WorkCommand:
        """The same command, one attempt later."""
        return replace(self, attempt=self.attempt + 1)

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"kind": self.kind.value}
        if self.kind is WorkKind.SECRET:
            body["secretName"] = self.secret_name
            if self.version is not None:
                body["version"] = self.version
            if self.event_version is not None:
                body["eventVersion"] = self.event_version
        elif self.kind is WorkKind.DATASET:
            body.update(workspaceId=self.workspace_id, datasetId=self.dataset_id)
        else:
            body.update(gatewayId=self.gateway_id, datasourceId=self.datasource_id)
        body.update(trigger=self.trigger, correlationId=self.correlation_id, attempt=self.attempt)
        if self.present_again:
            body["presentAgain"] = True
        if self.part:
            body["part"] = True
        return body

    def to_message(self) -> str:
        """The message text (compact JSON; the queue client base64-encodes it)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def parse(cls, text: str | bytes) -> WorkCommand:
        """A message's text -> command. Raises :class:`WorkMessageError` saying what is wrong
        (the message never quotes the text: it is not ours to repeat)."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise WorkMessageError("the message is not UTF-8 text") from None
        if len(text) > MAX_MESSAGE_CHARS:
            raise WorkMessageError(f"the message is over {MAX_MESSAGE_CHARS} characters")
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError):
            raise WorkMessageError("the message is not JSON") from None
        if not isinstance(raw, dict):
            raise WorkMessageError("the message is not a JSON object")
        try:
            kind = WorkKind(str(raw.get("kind")))
        except ValueError:
            raise WorkMessageError("kind must be secret, dataset or target") from None
        allowed = (
            _COMMON | set(_FIELDS[kind]) | ({"version", "eventVersion"} if kind is WorkKind.SECRET else set())
        )
        unknown = sorted(str(k)[:40] for k in set(raw) - allowed)
        if unknown:
            raise WorkMessageError(f"unknown field(s) for a {kind.value} command: {', '.join(unknown)}")
        attempt = raw.get("attempt", 0)
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise WorkMessageError("attempt must be a whole number")
        optional = [name for name in ("version", "eventVersion") if name in raw]
        for name in (*_FIELDS[kind], "trigger", "correlationId", *optional):
            if not isinstance(raw.get(name), str):
                raise WorkMessageError(f"{name} must be a string")
        again = raw.get("presentAgain", False)
        if not isinstance(again, bool):
            raise WorkMessageError("presentAgain must be true or false")
        part = raw.get("part", False)
        if not isinstance(part, bool) or (part and kind is not WorkKind.TARGET):
            raise WorkMessageError("part must be true or false, and only on a target command")
        common = {"trigger": raw["trigger"], "correlation_id": raw["correlationId"], "attempt": attempt}
        try:
            if kind is WorkKind.SECRET:
                return cls.secret(
                    raw["secretName"], raw.get("version"), event_version=raw.get("eventVersion"), **common
                ).with_present_again(again)
            if kind is WorkKind.DATASET:
                return cls.dataset(raw["workspaceId"], raw["datasetId"], **common).with_present_again(again)
            target = cls.target(raw["gatewayId"], raw["datasourceId"], **common)
            return replace(target, part=part).with_present_again(again)
        except ValueError as exc:
            raise WorkMessageError(str(exc)) from None

    @staticmethod
    def _checked(command: WorkCommand) -> WorkCommand:
        """``command`` if every field is well-formed; raises ValueError saying which is not."""
        checks: list[tuple[str, str | None, re.Pattern[str], str]] = [
            ("trigger", command.trigger, _TRIGGER, "a trigger name (lower-case letters, digits, -)"),
            ("correlationId", command.correlation_id, _CORRELATION, "an id of 1 to 128 safe characters"),
        ]
        if command.kind is WorkKind.SECRET:
            checks.append(("secretName", command.secret_name, _SECRET_NAME, "a Key Vault secret name"))
            for name, value in (("version", command.version), ("eventVersion", command.event_version)):
                if value is not None:
                    checks.append((name, value, _VERSION, "a Key Vault version (32 hex)"))
        elif command.kind is WorkKind.DATASET:
            checks += [
                ("workspaceId", command.workspace_id, _GUID, "a GUID"),
                ("datasetId", command.dataset_id, _GUID, "a GUID"),
            ]
        else:
            checks += [
                (
                    "gatewayId",
                    command.gateway_id,
                    _TARGET_GATEWAY,
                    'a GUID (or "connections": a Fabric connection)',
                ),
                ("datasourceId", command.datasource_id, _GUID, "a GUID"),
            ]
        for name, value, pattern, what in checks:
            if value is None or not pattern.fullmatch(value):
                raise ValueError(f"{name} must be {what}")
        if not 0 <= command.attempt <= MAX_ATTEMPT:
            raise ValueError(f"attempt must be between 0 and {MAX_ATTEMPT}")
        return command


@dataclass(frozen=True)
class ReceivedWork:
    """A message as the queue handed it out (what the host turns into a queue trigger)."""

    id: str
    pop_receipt: str
    dequeue_count: int
    content: str
    inserted_on: datetime | None
    expires_on: datetime | None
    next_visible_on: datetime | None


class WorkQueue:
    """The work queue: :meth:`send` commands (optionally delayed); :meth:`receive` and
    :meth:`delete` are for tools and tests (in Azure the Functions host receives).

    The queue is created on first use when missing. Safe to share between threads.
    """

    def __init__(self, client: QueueClient, *, redact: Iterable[str] = ()) -> None:
        self._client = client
        self._redact = tuple(s for s in redact if len(s) >= 4)
        self._created = False

    @classmethod
    def from_connection_string(cls, connection_string: str, queue_name: str, **options: Any) -> WorkQueue:
        """Raises :class:`ConfigError` for a malformed connection string (never quoted)."""
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        try:
            client = QueueClient.from_connection_string(
                connection_string,
                queue_name,
                message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=TextBase64DecodePolicy(),
                **{**_CLIENT_OPTIONS, **options},
            )
        except (ValueError, TypeError, AzureError) as exc:
            raise ConfigError(
                "AzureWebJobsStorage is not a usable storage connection string "
                f"({type(exc).__name__}); give DefaultEndpointsProtocol, AccountName, AccountKey "
                "or SharedAccessSignature, and QueueEndpoint or EndpointSuffix"
            ) from None
        return cls(client, redact=_connection_string_secrets(connection_string))

    @classmethod
    def from_settings(cls, settings: Settings, *, credential: TokenCredential | None = None) -> WorkQueue:
        """The queue ``REMEDIATION_WORK_QUEUE`` of the app's storage account: the connection string
        ``AzureWebJobsStorage``, else ``AzureWebJobsStorage__queueServiceUri`` or
        ``https://{AzureWebJobsStorage__accountName}.queue.core.windows.net`` signed in with
        ``credential`` (default: the product's Azure credential), which needs the *Storage Queue
        Data Contributor* role.

        Raises:
            ConfigError: no storage account, a malformed connection string, or no queue endpoint.
        """
        storage = settings.storage
        if storage is None:
            raise ConfigError(
                "no storage account configured: set AzureWebJobsStorage or AzureWebJobsStorage__accountName"
            )
        options = {
            "connection_timeout": 10,
            "read_timeout": settings.http_timeout_seconds,
            "retry_total": max(settings.max_attempts - 1, 0),
        }
        if storage.connection_string is not None:
            return cls.from_connection_string(storage.connection_string, settings.work_queue, **options)
        endpoint = storage.queue_service_uri or (
            f"https://{storage.account_name}.queue.core.windows.net" if storage.account_name else None
        )
        if endpoint is None:
            raise ConfigError(
                "identity-based storage needs AzureWebJobsStorage__accountName or "
                "AzureWebJobsStorage__queueServiceUri for the work queue"
            )
        if not endpoint.lower().startswith("https://"):
            raise ConfigError(
                "AzureWebJobsStorage__queueServiceUri must be an https:// URL for identity-based "
                "access (a token is never sent in clear text)"
            )
        if credential is None:
            from remediation.clients.identity import build_azure_credential

            credential = build_azure_credential(settings)
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        client = QueueClient(
            endpoint,
            settings.work_queue,
            credential=credential,
            message_encode_policy=TextBase64EncodePolicy(),
            message_decode_policy=TextBase64DecodePolicy(),
            **{**_CLIENT_OPTIONS, **options},
        )
        return cls(client)

    @property
    def name(self) -> str:
        return str(self._client.queue_name)

    def __repr__(self) -> str:
        return f"WorkQueue({self._client.primary_endpoint.split('?', 1)[0]!r}, {self.name!r})"

    def create_queue(self) -> None:
        """Create the queue if it does not exist. Raises :class:`WorkQueueError`."""
        with self._service("create the queue"), suppress(ResourceExistsError):
            self._client.create_queue()
        self._created = True

    def send(self, command: WorkCommand, *, delay: float = 0.0) -> str:
        """Put ``command`` on the queue, invisible for ``delay`` seconds (rounded up, capped at
        :data:`MAX_DELAY_SECONDS`); returns the message id. Raises :class:`WorkQueueError`."""
        visibility = min(max(math.ceil(delay), 0), MAX_DELAY_SECONDS) if math.isfinite(delay) else 0
        text = command.to_message()
        kwargs: dict[str, Any] = {"time_to_live": -1}  # never expires; the healer decides when to stop
        if visibility:
            kwargs["visibility_timeout"] = visibility
        for first in (True, False):
            try:
                with self._service("send a message"):
                    sent = self._client.send_message(text, **kwargs)
                break
            except _QueueMissing:
                if not first:
                    raise WorkQueueError(f"queue {self.name} is missing and could not be created") from None
                self.create_queue()
        logger.info(
            "queued %s command %s (attempt %d) visible in %d s",
            command.kind.value,
            command.correlation_id,
            command.attempt,
            visibility,
        )
        return str(sent.id)

    def receive(self, *, max_messages: int = 32, visibility_timeout: int = 30) -> list[ReceivedWork]:
        """Messages that are visible now (each hidden for ``visibility_timeout`` s)."""
        out: list[ReceivedWork] = []
        try:
            with self._service("receive messages"):
                for message in self._client.receive_messages(
                    max_messages=max_messages, visibility_timeout=visibility_timeout
                ):
                    out.append(
                        ReceivedWork(
                            id=str(message.id),
                            pop_receipt=str(message.pop_receipt),
                            dequeue_count=int(message.dequeue_count or 0),
                            content=str(message.content),
                            inserted_on=message.inserted_on,
                            expires_on=message.expires_on,
                            next_visible_on=message.next_visible_on,
                        )
                    )
                    if len(out) >= max_messages:
                        break
        except _QueueMissing:
            return []
        return out

    def delete(self, work: ReceivedWork) -> None:
        """Delete a received message (done with it)."""
        with self._service("delete a message"):
            self._client.delete_message(work.id, work.pop_receipt)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            logger.debug("closing the queue client failed", exc_info=True)

    @contextmanager
    def _service(self, what: str) -> Iterator[None]:
        try:
            yield
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "QueueNotFound":
                raise _QueueMissing from None
            raise WorkQueueError(f"queue {self.name}: {what} failed: {self._describe(exc)}") from None
        except AzureError as exc:
            raise WorkQueueError(f"queue {self.name}: {what} failed: {self._describe(exc)}") from None

    def _describe(self, exc: AzureError) -> str:
        return describe_storage_error(exc, self._redact)


class _QueueMissing(Exception):
    """Internal: the queue does not exist yet."""


def _connection_string_secrets(connection_string: str) -> list[str]:
    secrets = [connection_string]
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature") and value.strip():
            secrets.append(value.strip())
    return secrets
