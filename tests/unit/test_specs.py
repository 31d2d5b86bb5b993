"""The spec validator and the vendored copy of Microsoft's specs.

``specs/`` is a copy of ``shared/specs`` so that the project stands alone; these tests prove the
validator accepts Microsoft's own examples and rejects what they forbid, and that the copy has
not drifted from the shared one when that is present.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest

from sandbox import specs

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "specs"

# Microsoft's examples that contradict their own schema (kept visible, not silently skipped).
KNOWN_BAD_EXAMPLES = {
    # GatewayDatasource.credentialType is required, the examples omit it.
    ("Datasets_GetGatewayDatasources", "200"),
    ("Datasets_GetGatewayDatasourcesInGroup", "200"),
    # The 400 body of the "Gateway unreachable example" has no declared 400 response.
    ("Gateways_GetDatasourceStatus", "400"),
}


def _examples() -> list[tuple[str, str, object]]:
    found = []
    for path in sorted((specs.SPEC_DIR / "powerbi" / "examples").glob("*.json")):
        doc = json.loads(path.read_text())
        for example in doc["x-ms-examples"].values():
            for status, response in example.get("responses", {}).items():
                if "body" in response:
                    found.append((doc["operationId"], status, response["body"]))
    return found


@pytest.mark.parametrize(
    ("operation", "status", "body"), _examples(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_microsoft_power_bi_examples_validate_against_their_swagger(
    operation: str, status: str, body: object
) -> None:
    if (operation, status) in KNOWN_BAD_EXAMPLES:
        with pytest.raises(specs.SpecError):
            specs.validate_powerbi_response(operation, int(status), body)
    else:
        specs.validate_powerbi_response(operation, int(status), body)


def test_an_update_datasource_body_without_credential_type_is_refused() -> None:
    body = {
        "credentialDetails": {
            "credentials": "x",
            "encryptedConnection": "Encrypted",
            "encryptionAlgorithm": "None",
            "privacyLevel": "None",
        }
    }
    with pytest.raises(specs.SpecError, match="credentialType"):
        specs.validate_powerbi_request("Gateways_UpdateDatasource", body)


def test_a_refresh_with_an_unknown_status_type_is_refused() -> None:
    with pytest.raises(specs.SpecError, match="refreshType"):
        specs.validate(specs.POWERBI, "Refresh", {"refreshType": "ByMagic"})


@pytest.mark.parametrize(
    "sample", sorted((specs.SPEC_DIR / "eventgrid" / "samples").glob("spec_*.json")), ids=lambda p: p.name
)
def test_key_vault_event_samples_validate(sample: Path) -> None:
    event = json.loads(sample.read_text())
    envelope = "CloudEventEvent" if "specversion" in event else "EventGridEvent"
    specs.validate(specs.EVENTGRID, envelope, event)
    # Microsoft's own samples send NBF/EXP as strings where the spec says number: parsers of
    # these events must take both. Everything else in the samples matches the spec.
    data_definition = "KeyVaultSecretNewVersionCreatedEventData"
    problems = specs.errors(specs.EVENTGRID_KEYVAULT, data_definition, event["data"])
    assert problems == [
        "EXP: '1559082102' is not of type 'number'",
        "NBF: '1559081980' is not of type 'number'",
    ]


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/specs is not beside this checkout")
def test_the_vendored_specs_match_shared_specs() -> None:
    def diff(cmp: filecmp.dircmp[str]) -> list[str]:
        out = [*cmp.left_only, *cmp.right_only, *cmp.diff_files]
        for sub in cmp.subdirs.values():
            out.extend(diff(sub))
        return out

    # SOURCES.md is shared's list of sources plus this project's own (the diagnosis payloads),
    # appended below it: shared's part must be there unchanged.
    drift = [name for name in diff(filecmp.dircmp(specs.SPEC_DIR, SHARED)) if name != "SOURCES.md"]
    assert drift == []
    ours, theirs = (specs.SPEC_DIR / "SOURCES.md").read_text(), (SHARED / "SOURCES.md").read_text()
    assert ours.startswith(theirs.rstrip("\n"))
