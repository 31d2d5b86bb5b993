"""The ledger: the healer's durable memory, evidence with times (see :mod:`.protocol` for the
invariants it keeps). The protocol and its records; the backends are :mod:`.sqlite` (embedded)
and :mod:`.tables` (Azure Table storage), both built on :mod:`.base`."""

from remediation.errors import LedgerError
from remediation.ledger.protocol import Ledger
from remediation.ledger.records import (
    DEFAULT_OUTCOME_RETENTION_SECONDS,
    MAX_ACCOUNT_LENGTH,
    MAX_ATTEMPTS_KEPT,
    MAX_REASON_LENGTH,
    SCHEMA_VERSION,
    DatasetRecord,
    InventorySource,
    Lease,
    LeaseLost,
    LedgerConflict,
    Outcome,
    PruneResult,
    TargetRecord,
    utc_day,
)
from remediation.safety.evidence import AccountVersion, Claim, Intent, Rejection, TargetState

__all__ = [
    "DEFAULT_OUTCOME_RETENTION_SECONDS",
    "MAX_ACCOUNT_LENGTH",
    "MAX_ATTEMPTS_KEPT",
    "MAX_REASON_LENGTH",
    "SCHEMA_VERSION",
    "AccountVersion",
    "Claim",
    "DatasetRecord",
    "Intent",
    "InventorySource",
    "Lease",
    "LeaseLost",
    "Ledger",
    "LedgerConflict",
    "LedgerError",
    "Outcome",
    "PruneResult",
    "Rejection",
    "TargetRecord",
    "TargetState",
    "utc_day",
]
