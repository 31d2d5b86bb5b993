"""Event Grid / CloudEvents payloads -> events the healer acts on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from remediation.inbound.events import (
    JOB_KEY_PREFIX,
    EventError,
    Kind,
    events_in_message,
    parse_event,
    parse_events,
)

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


WORKSPACE = "f089354e-8366-4e18-aea3-4cb4a3a50b48"
MODEL = "cfafbeb1-8037-4d0c-896e-a46fb27ff229"
JOB = "9b2e1c4d-5f6a-4b7c-8d9e-0f1a2b3c4d5e"


def job_event(
    *, type_: str = "Microsoft.Fabric.ItemJobFailed", kind: str | None = "SemanticModel", **data: object
) -> dict[str, object]:
    """A job event with every field of Microsoft's table (explore-fabric-job-events.md), with its
    misspellings (``executingPricipalId``, ``executingPriciplaType``, ``jobInovkeType``)."""
    body: dict[str, object] = {
        "itemId": MODEL,
        "itemName": "Sales",
        "workspaceId": WORKSPACE,
        "workspaceName": "Finance",
        "executingPricipalId": "a0a0a0a0-bbbb-cccc-dddd-e1e1e1e1e1e1",
        "executingPriciplaType": "User",
        "jobInstanceId": JOB,
        "jobStatus": "Failed",
        "jobType": "Refresh",
        "jobInovkeType": "Scheduled",
        "jobScheduleTime": "2026-11-22T08:00:00.0000000Z",
        "jobStartTime": "2026-11-22T08:00:01.0000000Z",
        "jobEndTime": "2026-11-22T08:02:13.0000000Z",
    }
    if kind is not None:
        body["itemKind"] = kind
    body.update(data)
    return {
        "specversion": "1.0",
        "type": type_,
        "source": "aaaabbbb-0000-cccc-1111-dddd2222eeee",
        "subject": f"/workspaces/{WORKSPACE}/items/{MODEL}/jobs/instances/{JOB}",
        "time": "2026-11-22T08:02:14.0000000Z",
        "id": "bbbbbbbb-1111-2222-3333-cccccccccccc",
        "dataschemaversion": "1.0",
        "capacityId": "bbbbbbbb-1111-2222-3333-cccccccccccc",
        "data": body,
    }


@pytest.mark.parametrize(
    "type_",
    [
        "Microsoft.Fabric.ItemJobFailed",
        "Microsoft.Fabric.JobEvents.ItemJobFailed",
        "microsoft.fabric.itemjobfailed",
    ],
)
def test_a_semantic_model_job_failure_in_either_spelling_is_a_refresh_failure_without_a_reason(
    type_: str,
) -> None:
    event = parse_event(job_event(type_=type_), vault_origin=OURS)

    assert (event.kind, event.workspace_id, event.dataset_id) == (Kind.REFRESH_FAILED, WORKSPACE, MODEL)
    assert (event.job_instance_id, event.error, event.item_kind) == (JOB, None, "SemanticModel")
    assert event.note == "a Scheduled job"  # Microsoft's jobInovkeType


def test_the_corrected_spelling_of_the_invoke_type_is_read_too() -> None:
    raw = job_event()
    data = raw["data"]
    assert isinstance(data, dict)
    del data["jobInovkeType"]
    data["jobInvokeType"] = "Manual"
    assert parse_event(raw, vault_origin=OURS).note == "a Manual job"


@pytest.mark.parametrize(
    "kind", ["SemanticModel", "semanticmodel", "SEMANTICMODEL", "Dataset", "dataset", "Semantic Model"]
)
def test_item_kinds_of_a_semantic_model_are_matched_whatever_their_case(kind: str) -> None:
    assert parse_event(job_event(kind=kind), vault_origin=OURS).kind is Kind.REFRESH_FAILED


@pytest.mark.parametrize("kind", ["Pipeline", "DataPipeline", "Notebook", "Lakehouse", "Dataflow", "", None])
def test_a_job_failure_of_another_item_or_of_no_kind_is_ignored_and_says_why(kind: str | None) -> None:
    event = parse_event(job_event(kind=kind), vault_origin=OURS)

    assert event.kind is Kind.OTHER and event.dataset_id is None
    assert event.note is not None and "not a semantic model" in event.note


@pytest.mark.parametrize(
    "type_",
    [
        "Microsoft.Fabric.ItemJobCreated",
        "Microsoft.Fabric.ItemJobStatusChanged",
        "Microsoft.Fabric.ItemJobSucceeded",
        "Microsoft.Fabric.JobEvents.ItemJobSucceeded",
    ],
)
def test_job_events_that_are_not_failures_are_ignored(type_: str) -> None:
    event = parse_event(job_event(type_=type_), vault_origin=OURS)
    assert event.kind is Kind.OTHER and event.note == "a Fabric job event that is not a failure"


def test_workspace_item_and_job_come_from_the_subject_when_data_lacks_them() -> None:
    raw = job_event()
    data = raw["data"]
    assert isinstance(data, dict)
    for key in ("itemId", "workspaceId", "jobInstanceId"):
        del data[key]
    raw["subject"] = f"/workspaces/{WORKSPACE.upper()}/items/{MODEL}/jobs/instances/{JOB}"

    event = parse_event(raw, vault_origin=OURS)

    assert (event.workspace_id, event.dataset_id, event.job_instance_id) == (WORKSPACE, MODEL, JOB)


def test_data_wins_over_the_subject() -> None:
    raw = job_event()
    raw["subject"] = "/workspaces/11111111-1111-1111-1111-111111111111/items/x/jobs/instances/y"
    event = parse_event(raw, vault_origin=OURS)
    assert (event.workspace_id, event.dataset_id) == (WORKSPACE, MODEL)


def test_a_semantic_model_job_failure_without_usable_ids_is_refused() -> None:
    raw = job_event(itemId="not-a-guid")
    raw["subject"] = "somewhere"
    with pytest.raises(EventError, match="GUIDs"):
        parse_event(raw, vault_origin=OURS)


def test_a_job_event_is_deduplicated_by_its_id_and_by_its_job_instance() -> None:
    event = parse_event(job_event(), vault_origin=OURS)
    assert event.dedupe_keys == ("bbbbbbbb-1111-2222-3333-cccccccccccc", JOB_KEY_PREFIX + JOB)
    custom = {
        "id": "e",
        "eventType": "PowerBI.RefreshFailed",
        "data": {"workspaceId": WORKSPACE, "datasetId": MODEL},
    }
    assert parse_event(custom, vault_origin=OURS).dedupe_keys == ("e",)


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(job_event()).encode(),
        "\ufeff" + json.dumps(job_event()),
        json.dumps([job_event(), job_event()]).encode(),
        (json.dumps(job_event()) + "\n\n" + json.dumps(job_event()) + "\n").encode(),
    ],
    ids=["object", "bom", "array", "json-lines"],
)
def test_an_event_hubs_message_holds_one_event_an_array_or_json_lines(body: bytes | str) -> None:
    items = events_in_message(body)
    assert items and all(parse_event(i, vault_origin=OURS).kind is Kind.REFRESH_FAILED for i in items)


@pytest.mark.parametrize("body", [b"", b"   ", b"\xff\xfe", b"{not json", b"[]", b"{}\n{", b"plain text"])
def test_an_unreadable_event_hubs_message_is_an_event_error(body: bytes) -> None:
    with pytest.raises(EventError, match="message 3"):
        events_in_message(body, index=3)


def test_garbage_is_an_event_error_not_a_crash() -> None:
    for payload in ("{not json", "[1, 2]", '{"id": "x"}'):
        with pytest.raises(EventError):
            parse_events(payload, vault_origin=OURS)
