"""Event Grid / CloudEvents payloads -> events the healer acts on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from remediation.inbound.events import EventError, Kind, parse_event, parse_events

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "specs" / "eventgrid" / "samples"
OURS = ("https", "sample-kv.vault.azure.net", 443)
VERSION = "ee059b2bb5bc48398a53b168c6cdcb10"


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("spec_*.json")), ids=lambda p: p.name)
def test_microsoft_samples_name_the_secret_and_version_from_the_id(sample: Path) -> None:
    (event,) = parse_events(sample.read_text(), vault_origin=OURS)
    assert (event.kind, event.secret_name, event.secret_version, event.foreign_vault) == (
        Kind.SECRET_NEW_VERSION,
        "newsecret",
        VERSION,
        False,
    )


def test_keys_in_any_case_and_stray_spaces_are_read() -> None:
    raw = {
        "id": " e1 ",
        "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
        "data": {
            " id ": f" https://SAMPLE-KV.vault.azure.net/secrets/newsecret/{VERSION.upper()} ",
            "vaultName": "somebody-else",
        },
    }
    event = parse_event(raw, vault_origin=OURS)
    assert (event.id, event.secret_name, event.secret_version, event.foreign_vault) == (
        "e1",
        "newsecret",
        VERSION,
        False,
    )


@pytest.mark.parametrize(
    "url",
    [
        f"https://other-kv.vault.azure.net/secrets/newsecret/{VERSION}",
        f"https://sample-kv.vault.azure.net:8443/secrets/newsecret/{VERSION}",
    ],
)
def test_an_event_of_another_vault_is_foreign_whatever_its_vault_name_says(url: str) -> None:
    raw = {
        "id": "e",
        "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
        "data": {"Id": url, "VaultName": "sample-kv"},
    }
    assert parse_event(raw, vault_origin=OURS).foreign_vault


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"Id": "not a url"},
        {"Id": "https://kv.vault.azure.net/keys/k/1"},
        {"Id": "http://sample-kv.vault.azure.net/secrets/s"},
    ],
)
def test_a_key_vault_event_without_a_secret_url_is_refused(data: dict[str, str]) -> None:
    with pytest.raises(EventError):
        parse_event(
            {"id": "e", "eventType": "Microsoft.KeyVault.SecretNewVersionCreated", "data": data},
            vault_origin=OURS,
        )


def test_the_refresh_failed_example_in_the_operations_guide_parses() -> None:
    block = re.search(
        r"### The refresh-failure event.*?```json\n(.*?)```",
        (ROOT / "docs" / "operations.md").read_text(),
        re.S,
    )
    assert block is not None
    event = parse_event(json.loads(block.group(1)), vault_origin=OURS)
    assert (event.kind, event.workspace_id, event.dataset_id) == (
        Kind.REFRESH_FAILED,
        "f089354e-8366-4e18-aea3-4cb4a3a50b48",
        "cfafbeb1-8037-4d0c-896e-a46fb27ff229",
    )


def test_a_refresh_failed_event_needs_guids() -> None:
    with pytest.raises(EventError, match="GUIDs"):
        parse_event(
            {"id": "e", "eventType": "PowerBI.RefreshFailed", "data": {"workspaceId": "w", "datasetId": "d"}},
            vault_origin=OURS,
        )


def test_fabric_job_failures_count_only_for_semantic_models() -> None:
    def fabric(kind: str) -> dict[str, object]:
        return {
            "id": "f",
            "type": "Microsoft.Fabric.ItemJobFailed",
            "specversion": "1.0",
            "data": {
                "itemId": "cfafbeb1-8037-4d0c-896e-a46fb27ff229",
                "itemKind": kind,
                "workspaceId": "f089354e-8366-4e18-aea3-4cb4a3a50b48",
            },
        }

    assert parse_event(fabric("SemanticModel"), vault_origin=OURS).kind is Kind.REFRESH_FAILED
    assert parse_event(fabric("Notebook"), vault_origin=OURS).kind is Kind.OTHER


def test_garbage_is_an_event_error_not_a_crash() -> None:
    for payload in ("{not json", "[1, 2]", '{"id": "x"}'):
        with pytest.raises(EventError):
            parse_events(payload, vault_origin=OURS)
