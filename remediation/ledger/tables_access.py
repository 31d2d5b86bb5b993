"""Single-entity access to Azure Table storage, for :class:`~remediation.ledger.tables.TableLedger`.

One job: the service calls the Table storage ledger makes, and what their answers mean. A read is
one point read; an insert answers ``409 Conflict`` when the entity exists; a replace is
conditioned on the entity's ETag (``412 Precondition Failed`` when someone wrote first); deletes go
in entity-group transactions of up to :data:`BATCH` per partition, each delete conditioned on the
ETag read.

**write_id**: every insert or conditional replace of a target, event or counter carries a
fresh random id. When the SDK retries a write whose first try landed but whose response was
lost, the retry fails with 409/412; reading the entity back and finding our own ``write_id``
tells "my write landed" from "someone else wrote first" (otherwise an event would be lost as
a "duplicate", or a refresh counted twice).

Errors: every service failure (connection, authentication, 5xx after the SDK's own retries)
raises :class:`LedgerError` with a one-line message that never carries the connection string,
its account key or a SAS signature (the original exception is not chained, because transport
errors quote request URLs, which may hold a SAS token).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from time import sleep
from typing import Any, Final

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, UpdateMode

from remediation.clients.storage_errors import describe_storage_error
from remediation.ledger.records import LedgerError

__all__ = ["BATCH", "DEFAULT_CLIENT_OPTIONS", "TableAccess", "connection_string_secrets"]

BATCH: Final = 100
"""Most operations in one entity-group transaction (all in one partition)."""

# Defaults for the clients TableLedger builds (the SDK's own default is 10 retries with 2-minute backoffs,
# which would hold a healer invocation for many minutes when storage is down).
DEFAULT_CLIENT_OPTIONS: Final[Mapping[str, Any]] = {
    "retry_total": 3,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 8,
    "connection_timeout": 10,
    "read_timeout": 30,
}


class TableAccess:
    """Reads, conditional writes and conditional deletes of single entities, for a backend that
    sets ``_redact`` (strings never to show in an error) and ``_closed``.

    Raises :class:`LedgerError` from every method when the service cannot be reached or refuses
    a call, and once the backend is closed.
    """

    _redact: tuple[str, ...]
    _closed: bool

    @contextmanager
    def _storage(self, what: str, *, check_open: bool = True) -> Iterator[None]:
        """Turn the SDK's errors into :class:`LedgerError` with a clean one-line message."""
        if check_open and self._closed:
            raise LedgerError("ledger is closed")
        try:
            yield
        except AzureError as exc:
            raise LedgerError(f"table storage: {what} failed: {self._describe(exc)}") from None

    def _describe(self, exc: AzureError) -> str:
        return describe_storage_error(exc, self._redact)

    def _get(self, table: TableClient, pk: str, rk: str) -> dict[str, Any] | None:
        """The entity (with ``"etag"`` added from its metadata), or None if absent."""
        with self._storage(f"read {table.table_name}"):
            try:
                entity = table.get_entity(pk, rk)
            except ResourceNotFoundError:
                return None
        return {**entity, "etag": entity.metadata.get("etag")}

    def _create(self, table: TableClient, entity: dict[str, Any]) -> str | None:
        """Insert ``entity``; its ETag, or None if an entity with its keys exists (not ours)."""
        with self._storage(f"insert into {table.table_name}"):
            try:
                return str(table.create_entity(entity)["etag"])
            except ResourceExistsError:
                pass
        return self._ours(table, entity)

    def _replace(self, table: TableClient, entity: dict[str, Any], if_match: str) -> str | None:
        """Replace the entity if its ETag is ``if_match``; the new ETag, or None if it changed."""
        with self._storage(f"update {table.table_name}"):
            try:
                metadata = table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=if_match,
                    match_condition=MatchConditions.IfNotModified,
                )
                return str(metadata["etag"])
            except (ResourceModifiedError, ResourceNotFoundError):
                pass
            except HttpResponseError as exc:
                if exc.status_code != 412:
                    raise
        return self._ours(table, entity)

    def _ours(self, table: TableClient, entity: Mapping[str, Any]) -> str | None:
        """After a 409/412: the entity's ETag if the stored entity is our own write (an SDK retry
        of a write that had landed), else None."""
        write_id = entity.get("write_id")
        if write_id is None:
            return None
        stored = self._get(table, entity["PartitionKey"], entity["RowKey"])
        if stored is not None and stored.get("write_id") == write_id:
            return str(stored["etag"])
        return None

    def _delete_all(self, table: TableClient, query: str, parameters: dict[str, Any]) -> int:
        """Delete every entity matching ``query`` (each only if unchanged since read); the count.

        Deletes go in entity-group transactions of up to 100 per partition; a transaction that
        fails (an entity changed or vanished meanwhile) is redone one entity at a time.
        """
        with self._storage(f"query {table.table_name}"):
            found = list(
                table.query_entities(query, parameters=parameters, select=["PartitionKey", "RowKey"])
            )
        by_partition: dict[str, list[Any]] = {}
        for entity in found:
            by_partition.setdefault(str(entity["PartitionKey"]), []).append(entity)
        deleted = 0
        for entities in by_partition.values():
            for start in range(0, len(entities), BATCH):
                deleted += self._delete_batch(table, entities[start : start + BATCH])
        return deleted

    def _delete_batch(self, table: TableClient, entities: list[Any]) -> int:
        conditions = [
            {"etag": e.metadata.get("etag"), "match_condition": MatchConditions.IfNotModified}
            for e in entities
        ]
        with self._storage(f"delete in {table.table_name}"):
            try:
                table.submit_transaction(
                    [("delete", e, c) for e, c in zip(entities, conditions, strict=True)]
                )
                return len(entities)
            except HttpResponseError as exc:
                if exc.status_code not in (400, 404, 412):
                    raise
        deleted = 0
        for entity, condition in zip(entities, conditions, strict=True):
            with self._storage(f"delete in {table.table_name}"):
                try:
                    table.delete_entity(entity, **condition)
                    deleted += 1
                except (ResourceModifiedError, ResourceNotFoundError):
                    pass
                except HttpResponseError as exc:
                    if exc.status_code != 412:
                        raise
        return deleted

    @staticmethod
    def _backoff(attempt: int) -> None:
        sleep(random.random() * min(0.05, 0.0005 * 2 ** min(attempt, 7)))


def connection_string_secrets(connection_string: str) -> list[str]:
    """The values of a connection string that must never be shown (key, SAS), and the whole."""
    secrets = [connection_string]
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature") and value.strip():
            secrets.append(value.strip())
    return secrets
