"""infra/ parses, is documented, follows the naming conventions and wires what the issue asks."""

from __future__ import annotations

import json
import re

from tests.infra._tools import BICEP_FILES, INFRA, bicep_parse_errors


def test_every_bicep_file_parses_with_pycep() -> None:
    assert BICEP_FILES, "no .bicep files under infra/"
    errors = bicep_parse_errors(BICEP_FILES)
    assert not errors, "pycep-parser (checkov's Bicep parser) cannot parse:\n" + "\n".join(
        f"{name}: {err}" for name, err in errors.items()
    )


def test_every_parameter_has_a_description() -> None:
    missing = []
    for path in BICEP_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("param "):
                continue
            decorators = []
            j = i - 1
            while j >= 0 and (lines[j].startswith("@") or lines[j].startswith("  ") or lines[j] == "])"):
                decorators.append(lines[j])
                j -= 1
            if not any(d.startswith("@description(") for d in decorators):
                missing.append(f"{path.relative_to(INFRA)}: {line}")
    assert not missing, "parameters without @description:\n" + "\n".join(missing)


def test_names_follow_the_azure_abbreviations() -> None:
    abbrs = json.loads((INFRA / "abbreviations.json").read_text(encoding="utf-8"))
    expected = {
        "webSitesFunctions": "func-",
        "webServerFarms": "asp-",
        "storageStorageAccounts": "st",
        "insightsComponents": "appi-",
        "operationalInsightsWorkspaces": "log-",
        "managedIdentityUserAssignedIdentities": "id-",
        "keyVaultVaults": "kv-",
        "eventGridDomainsTopics": "evgt-",
        "eventGridSystemTopics": "evgst-",
        "resourcesResourceGroups": "rg-",
    }
    assert {k: abbrs.get(k) for k in expected} == expected
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    used = set(re.findall(r"abbrs\.(\w+)", main))
    named = expected.keys() - {"resourcesResourceGroups"}
    assert named <= used, "a resource is named without its abbreviation"
    assert used <= abbrs.keys(), f"unknown abbreviations: {used - abbrs.keys()}"


def test_outputs_include_the_function_endpoints() -> None:
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    outputs = dict(re.findall(r"^output (\w+) string = (.+)$", main, flags=re.M))
    assert outputs["REMEDIATE_ENDPOINT"].endswith("/api/remediate'")
    assert outputs["REMEDIATIONS_ENDPOINT"].endswith("/api/remediations'")
    assert outputs["KEYVAULT_EVENTS_FUNCTION_ID"].endswith("/functions/keyvault_events'")
    assert outputs["REFRESH_EVENTS_FUNCTION_ID"].endswith("/functions/refresh_events'")


def test_flex_consumption_with_identity_based_storage() -> None:
    app = (INFRA / "modules" / "functionapp.bicep").read_text(encoding="utf-8")
    for fact in (
        "name: 'FC1'",
        "tier: 'FlexConsumption'",
        "kind: 'functionapp,linux'",
        "type: 'blobContainer'",
        "type: 'UserAssignedIdentity'",
        "name: 'python'",
        "version: '3.11'",
        "scaleAndConcurrency",
        "'AzureWebJobsStorage__credential'",
        "value: 'managedidentity'",
        "'AzureWebJobsStorage__clientId'",
        "'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'",
        "'ClientId=${identityClientId};Authorization=AAD'",
    ):
        assert fact in app, fact
    storage = (INFRA / "modules" / "storage.bicep").read_text(encoding="utf-8")
    for fact in (
        "allowSharedKeyAccess: false",
        "minimumTlsVersion: 'TLS1_2'",
        "allowBlobPublicAccess: false",
    ):
        assert fact in storage, fact
    for table in ("healertargets", "healerevents", "healeroutcomes", "healerrefreshes", "healeraccounts"):
        assert f"'{table}'" in storage
    monitoring = (INFRA / "modules" / "monitoring.bicep").read_text(encoding="utf-8")
    assert "DisableLocalAuth: true" in monitoring


def test_role_assignments_use_the_built_in_role_ids() -> None:
    roles = {
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "storage.bicep",  # Storage Blob Data Owner
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "storage.bicep",  # Storage Table Data Contributor
        "3913510d-42f4-4e42-8a64-420c390055eb": "monitoring.bicep",  # Monitoring Metrics Publisher
        "4633458b-17de-408a-b874-0445c86b69e6": "keyvault.bicep",  # Key Vault Secrets User
        "d5a91429-5739-47e2-a06b-3470a27159e7": "eventgrid.bicep",  # EventGrid Data Sender
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "eventgrid.bicep",  # Storage Blob Data Contributor
    }
    for role, module in roles.items():
        assert role in (INFRA / "modules" / module).read_text(encoding="utf-8"), (role, module)


def test_event_subscriptions_filter_retry_and_dead_letter() -> None:
    subs = (INFRA / "subscriptions.bicep").read_text(encoding="utf-8")
    kv = (INFRA / "modules" / "keyvault-subscription.bicep").read_text(encoding="utf-8")
    for event in ("SecretNewVersionCreated", "SecretNearExpiry", "SecretExpired"):
        assert f"'Microsoft.KeyVault.{event}'" in kv
    assert "/functions/keyvault_events'" in subs and "/functions/refresh_events'" in subs
    assert kv.count("endpointType: 'AzureFunction'") == 1 and "endpointType: 'AzureFunction'" in subs
    delivery = ("eventDeliverySchema:", "retryPolicy:", "deadLetterWithResourceIdentity:", "'StorageBlob'")
    for fact in delivery:
        assert fact in subs, fact


def test_every_checkov_skip_says_why() -> None:
    bare = []
    for path in BICEP_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "checkov:skip" in line and not re.search(r"#checkov:skip=CKV2?_AZURE_\d+:\S.{30,}", line):
                bare.append(f"{path.relative_to(INFRA)}: {line.strip()}")
    assert not bare, "checkov skips without a reason:\n" + "\n".join(bare)


def test_the_workbook_shows_what_the_issue_asks() -> None:
    workbook = json.loads((INFRA / "workbook.json").read_text(encoding="utf-8"))
    titles = [item["content"].get("title", "") for item in workbook["items"]]
    for wanted in ("over time", "by outcome", "by dataset", "by gateway", "rotation to heal"):
        assert any(wanted in t for t in titles), wanted
    queries = [item["content"]["query"] for item in workbook["items"] if "query" in item["content"]]
    assert all('"CredentialRemediation"' in q for q in queries)
