"""What the product did to a Fabric connection's Key Vault reference, kept in the ledger.

Fabric's API never says whether a connection holds a Key Vault reference (its ``credentialDetails``
name the credential type only). Two things say it: the bindings' ``"keyVaultReference": true``
mark, which a person writes, and this record, which ``adopt`` writes when it moves a connection
onto a reference (or back with ``--release``), so that the healer never pushes a copy into a
connection it moved, even before the person has marked it. One ledger marker per connection,
``reference:<connection id>``, holding :class:`ReferenceRecord` as JSON; the safety core reads both
(:func:`remediation.safety.presenting.reference_decision`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Literal, cast

from remediation.config.bindings import Target
from remediation.ledger import Ledger
from remediation.safety.actions import Action
from remediation.safety.presenting import Decision, reference_decision

__all__ = ["RecordState", "ReferenceRecord", "References"]

logger = logging.getLogger(__name__)

RecordState = Literal["referenced", "in-doubt", "released"]
_STATES: tuple[RecordState, ...] = ("referenced", "in-doubt", "released")


@dataclass(frozen=True)
class ReferenceRecord:
    """``adopt``'s last word on a connection: ``state`` (``referenced``; ``in-doubt``: the answer
    was lost; ``released``: moved back to a copy), the secret and Key Vault connection the
    reference names, when, and the request (correlation id) that did it. No secret value."""

    state: RecordState
    secret: str
    vault_connection: str
    at: float
    request: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReferenceRecord | None:
        try:
            raw = json.loads(text)
            state = raw["state"]
            if state not in _STATES:
                return None
            return cls(
                cast(RecordState, state),
                str(raw["secret"]),
                str(raw["vault_connection"]),
                float(raw["at"]),
                str(raw["request"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


_ANY = "reference:any"


def _marker(connection_id: str) -> str:
    return f"reference:{connection_id.strip().lower()}"


class References:
    """Reads and writes :class:`ReferenceRecord` in the ledger (thread-safe as the ledger is)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def of(self, connection_id: str) -> ReferenceRecord | None:
        """The record of ``connection_id``, or None (never moved, or unreadable: logged)."""
        text = self.ledger.marker(_marker(connection_id))
        if not text:
            return None
        record = ReferenceRecord.from_json(text)
        if record is None:
            logger.warning("connection %s: its reference record in the ledger is unreadable", connection_id)
        return record

    def record(self, connection_id: str, record: ReferenceRecord) -> None:
        self.ledger.set_marker(_marker(connection_id), record.to_json(), record.at)
        self.ledger.set_marker(_ANY, "1", record.at)  # some connection was moved, once: see any()

    def any(self) -> bool:
        """Whether ``adopt`` ever recorded a move in this ledger (one marker read): without one,
        and without a ``keyVaultReference`` mark in the bindings, no connection can be known to
        reference Key Vault, and the gateway kind need not look its data sources up in Fabric."""
        return bool(self.ledger.marker(_ANY))

    def restore(self, connection_id: str, record: ReferenceRecord | None, now: float) -> None:
        """Put back the record ``connection_id`` had (None: none) after a move that changed nothing."""
        self.ledger.set_marker(_marker(connection_id), "" if record is None else record.to_json(), now)

    def decision(self, target: Target) -> Decision | None:
        """The safety core's word on sending ``target`` a copy (None: it holds one, go on;
        gateway data sources always None). Raises what the ledger raises (the caller sends
        nothing then)."""
        connection_id = target.connection_id
        if connection_id is None:
            return None
        record = self.of(connection_id)
        return reference_decision(
            marked=target.key_vault_reference,
            recorded=None if record is None else record.state,
            connection=connection_id,
        )

    def referenced(self, target: Target) -> bool:
        """Whether ``target`` is a connection known to read its secret from Key Vault itself."""
        decision = self.decision(target)
        return decision is not None and decision.action is Action.REFERENCED
