"""What a command did: the actions a target or a dataset can end in, and the report of a run."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from remediation.config.bindings import CONNECTIONS
from remediation.ledger import Outcome
from remediation.safety.actions import HOLDS_CURRENT, PROBLEMS, Action

__all__ = ["HOLDS_CURRENT", "PROBLEMS", "Action", "Report", "WarningGroup"]


@dataclass(frozen=True)
class WarningGroup:
    """One warning as a person reads it, and the targets it is about, as ``(gateway id, data
    source id)`` pairs in the report's order (``gateway id`` is :data:`~remediation.config.bindings.
    CONNECTIONS` for a Fabric connection). With several targets, ``text`` names none of them: where
    a target's warning named its own ids they read ``<its id>`` and ``<its gateway>``."""

    text: str
    targets: tuple[tuple[str, str], ...]


OWN_ID = "<its id>"
OWN_GATEWAY = "<its gateway>"


def _without_own_ids(text: str, gateway_id: str, datasource_id: str) -> str:
    """``text`` with the target's own ids (whole, in any case) as placeholders."""
    for own, placeholder in ((datasource_id, OWN_ID), (gateway_id, OWN_GATEWAY)):
        if own and own != CONNECTIONS:
            text = re.sub(rf"(?<![\w-]){re.escape(own)}(?![\w-])", placeholder, text, flags=re.IGNORECASE)
    return text


@dataclass
class Report:
    """The outcomes of one command, in the order they were produced."""

    outcomes: list[Outcome] = field(default_factory=list)
    dry_run: bool = False
    correlation_id: str = ""
    recorded: list[Outcome] | None = None
    """The outcomes as recorded in the ledger and emitted as telemetry, when that differs from
    ``outcomes`` (a sweep records targets found already current as one summary outcome)."""
    retry_at: float | None = None
    """Epoch seconds at which the same command should run again (a version still settling),
    or None. The CLI waits for it; the Functions app re-queues the command with that delay."""
    warnings: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """Per target ``(gatewayId, datasourceId)``: what a person should know although the target
    may be healed, e.g. a Take Over done for it (the dataset taken over, the other data sources
    whose credentials Power BI reset), or a privacy level and encryption sent as the defaults
    because the data source's own could not be read. Shown as the target's ``warnings`` in
    :meth:`to_dict`."""

    @property
    def exit_code(self) -> int:
        """0: every target in scope holds the current secret (or, dry-run, could); 1: not."""
        return 1 if any(o.action in PROBLEMS for o in self.outcomes) else 0

    def recorded_outcomes(self) -> list[Outcome]:
        """What goes to the ledger and to telemetry: changes and problems one by one, repetitions
        as a summary."""
        return self.outcomes if self.recorded is None else self.recorded

    def targets(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.datasource_id is not None and o.dataset_id is None]

    def datasets(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.dataset_id is not None]

    def to_dict(self) -> dict[str, object]:
        return {
            "correlationId": self.correlation_id,
            "dryRun": self.dry_run,
            "exitCode": self.exit_code,
            "retryAt": self.retry_at,
            "targets": [self._target_dict(o) for o in self.targets()],
            "datasets": [o.to_dict() for o in self.datasets()],
        }

    def target_warnings(self, outcome: Outcome) -> list[str]:
        """The warnings of the target ``outcome`` is about (none for a dataset)."""
        if outcome.datasource_id is None or outcome.dataset_id is not None:
            return []
        key = ((outcome.gateway_id or "").lower(), outcome.datasource_id.lower())
        return list(self.warnings.get(key, ()))

    def grouped_warnings(self) -> list[WarningGroup]:
        """The targets' warnings for a person to read: a warning several targets share (the same
        text once each target's own ids are set aside) is one group of all of them, in the order
        of :meth:`targets`; a warning of one target keeps its text. Human-readable output only:
        :meth:`to_dict` keeps every warning on its own target (the JSON contract)."""
        texts: dict[str, list[str]] = {}  # generic text -> each target's own text
        targets: dict[str, list[tuple[str, str]]] = {}
        seen: set[tuple[str, tuple[str, str]]] = set()
        for outcome in self.targets():
            gateway_id, datasource_id = outcome.gateway_id or "", outcome.datasource_id or ""
            for warning in self.target_warnings(outcome):
                generic = _without_own_ids(warning, gateway_id, datasource_id)
                key = (generic, (gateway_id.lower(), datasource_id.lower()))
                if key in seen:  # a target reported twice (a batch of commands)
                    continue
                seen.add(key)
                texts.setdefault(generic, []).append(warning)
                targets.setdefault(generic, []).append((gateway_id, datasource_id))
        return [
            WarningGroup(generic if len(said) > 1 else said[0], tuple(targets[generic]))
            for generic, said in texts.items()
        ]

    def merge(self, other: Report) -> None:
        """Add ``other``'s outcomes and warnings (a batch of commands reported as one)."""
        self.outcomes.extend(other.outcomes)
        for key, said in other.warnings.items():
            self.warnings.setdefault(key, []).extend(said)

    def _target_dict(self, outcome: Outcome) -> dict[str, object]:
        entry = outcome.to_dict()
        warnings = self.target_warnings(outcome)
        if warnings:
            entry["warnings"] = warnings
        return entry
