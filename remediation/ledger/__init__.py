"""The ledger: the healer's durable memory, evidence with times. Its modules:

- :mod:`.protocol`: the :class:`Ledger` protocol and the invariants it keeps; :mod:`.records`: its
  records, errors and limits (this face hands both on, with the evidence of :mod:`remediation.safety`)
- :mod:`.base`: the rules, once for both backends, over single-entity reads and conditional writes
- :mod:`.sqlite`: the embedded backend (one SQLite file); :mod:`.sqlite_schema`: its tables, rows
- :mod:`.tables`: the Azure Table storage backend; :mod:`.tables_layout`: its keys and entities;
  :mod:`.tables_access`: its service calls and what their failures mean
- :mod:`.pause`: a throttling pause shared across instances through a marker
- :mod:`.references`: what ``adopt`` did to a Fabric connection's Key Vault reference, in a marker
"""

from remediation.errors import LedgerError as LedgerError
from remediation.ledger.protocol import Ledger as Ledger
from remediation.ledger.records import DEFAULT_OUTCOME_RETENTION_SECONDS as DEFAULT_OUTCOME_RETENTION_SECONDS
from remediation.ledger.records import MAX_ACCOUNT_LENGTH as MAX_ACCOUNT_LENGTH
from remediation.ledger.records import MAX_ATTEMPTS_KEPT as MAX_ATTEMPTS_KEPT
from remediation.ledger.records import MAX_REASON_LENGTH as MAX_REASON_LENGTH
from remediation.ledger.records import SCHEMA_VERSION as SCHEMA_VERSION
from remediation.ledger.records import DatasetRecord as DatasetRecord
from remediation.ledger.records import InventorySource as InventorySource
from remediation.ledger.records import Lease as Lease
from remediation.ledger.records import LeaseLost as LeaseLost
from remediation.ledger.records import LedgerConflict as LedgerConflict
from remediation.ledger.records import Outcome as Outcome
from remediation.ledger.records import PruneResult as PruneResult
from remediation.ledger.records import TargetRecord as TargetRecord
from remediation.ledger.records import utc_day as utc_day
from remediation.safety.evidence import AccountVersion as AccountVersion
from remediation.safety.evidence import Claim as Claim
from remediation.safety.evidence import Intent as Intent
from remediation.safety.evidence import Rejection as Rejection
from remediation.safety.evidence import TargetState as TargetState
