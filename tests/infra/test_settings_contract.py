"""Every setting the code reads is set by the Bicep, in local.settings.json.example and in
docs/configuration.md (its environment variables table).

The code's settings: what remediation/config/settings.py reads, the %...% expressions of function_app.py,
and what the Functions host / telemetry need at run time. The Bicep must also set every setting
of local.settings.json.example. Settings that mean nothing in Azure are listed below with why.
"""

from __future__ import annotations

import json
import re

from tests.infra._tools import ROOT, app_settings_in_bicep

# Read by the runtime rather than remediation/config/settings.py.
RUNTIME_SETTINGS = {
    "APPLICATIONINSIGHTS_CONNECTION_STRING",  # the Functions host and the telemetry exporter
    # Entra ID ingestion (the host, and remediation/telemetry/appinsights.py):
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "AzureWebJobsStorage__accountName",  # the host's identity-based storage
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    # The identity-based Eventstream connection (the host's Event Hubs extension reads them):
    "REMEDIATION_EVENTSTREAM_CONNECTION__fullyQualifiedNamespace",
    "REMEDIATION_EVENTSTREAM_CONNECTION__credential",
    "REMEDIATION_EVENTSTREAM_CONNECTION__clientId",
}

# Not set in Azure, on purpose.
NOT_IN_AZURE = {
    "REQUESTS_CA_BUNDLE": "trust for the local sandbox's test CA; Azure endpoints use public CAs",
    "SSL_CERT_FILE": "as REQUESTS_CA_BUNDLE",
    "REMEDIATION_STATE_PATH": "the embedded SQLite ledger; in Azure the ledger is in Table storage",
    "AzureWebJobsStorage": "a connection string (it may carry an account key); Azure uses the "
    "identity-based AzureWebJobsStorage__accountName/__credential/__clientId instead",
    "AzureWebJobsStorage__tableServiceUri": "derived from AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__queueServiceUri": "derived from AzureWebJobsStorage__accountName",
    "AZURE_CLIENT_SECRET": "service principal secret: Azure uses the managed identity, and a secret "
    "never goes into an app setting",
    "AZURE_CLIENT_CERTIFICATE_PATH": "service principal certificate: as AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD": "as AZURE_CLIENT_CERTIFICATE_PATH",
    "FUNCTIONS_WORKER_RUNTIME": "Flex Consumption takes the runtime from functionAppConfig.runtime "
    "and does not accept this setting",
}

# Meaningful only on a developer's machine, or covered by another name: not required in the
# example file / the configuration table.
NOT_IN_EXAMPLE = {
    "AzureWebJobsStorage__accountName": "the example uses the AzureWebJobsStorage connection string",
    "AzureWebJobsStorage__credential": "as AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__clientId": "as AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__tableServiceUri": "as AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__queueServiceUri": "as AzureWebJobsStorage__accountName",
    "REMEDIATION_EVENTSTREAM_CONNECTION__fullyQualifiedNamespace": "the example connects with the "
    "REMEDIATION_EVENTSTREAM_CONNECTION connection string; the identity-based form is set by the Bicep",
    "REMEDIATION_EVENTSTREAM_CONNECTION__credential": "as __fullyQualifiedNamespace",
    "REMEDIATION_EVENTSTREAM_CONNECTION__clientId": "as __fullyQualifiedNamespace",
}
NOT_IN_TABLE = {
    "AzureWebJobsStorage__credential": "host plumbing of identity-based storage, set by the Bicep",
    "AzureWebJobsStorage__clientId": "as AzureWebJobsStorage__credential",
    "REMEDIATION_EVENTSTREAM_CONNECTION__credential": "host plumbing of the identity-based connection",
    "REMEDIATION_EVENTSTREAM_CONNECTION__clientId": "as REMEDIATION_EVENTSTREAM_CONNECTION__credential",
}


def code_settings() -> set[str]:
    settings_py = (ROOT / "remediation" / "config" / "settings.py").read_text(encoding="utf-8")
    reader = r"\b(?:env|self)\.(?:text|raw|secret|integer|https_url|scope|queue_name)\(\s*\"([A-Za-z_]\w*)\""
    read = set(re.findall(reader, settings_py))
    function_app = (ROOT / "function_app.py").read_text(encoding="utf-8")
    read |= set(re.findall(r"%([A-Za-z_]\w*)%", function_app))
    # Trigger connections name a setting (no %...%): the Eventstream's, by its constant.
    read |= set(re.findall(r'^[A-Z_]+_CONNECTION = "([A-Za-z_]\w*)"', function_app, flags=re.M))
    return read | RUNTIME_SETTINGS


def example_settings() -> set[str]:
    example = json.loads((ROOT / "local.settings.json.example").read_text(encoding="utf-8"))
    return set(example["Values"])


def configuration_table() -> str:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    start = doc.index("## Environment variables")
    end = doc.find("\n## ", start + 1)
    return doc[start : end if end != -1 else None]


def documented(name: str, table: str) -> bool:
    if f"`{name}`" in table:
        return True
    base, sep, suffix = name.partition("__")
    return bool(sep) and f"`{base}`" in table and f"`__{suffix}`" in table


def test_the_settings_the_code_reads_were_found() -> None:
    found = code_settings()
    for name in ("KEY_VAULT_URL", "REMEDIATION_BINDINGS", "REMEDIATION_SWEEP_SCHEDULE", "POWERBI_SCOPE"):
        assert name in found, name


def test_every_setting_is_set_by_the_bicep() -> None:
    bicep = app_settings_in_bicep()
    wanted = (code_settings() | example_settings()) - NOT_IN_AZURE.keys()
    missing = sorted(wanted - bicep)
    assert not missing, (
        "set these in infra/modules/functionapp.bicep (siteConfig.appSettings), or list them in "
        f"NOT_IN_AZURE with the reason: {missing}"
    )
    stale = sorted(NOT_IN_AZURE.keys() & bicep)
    assert not stale, f"listed as not set in Azure, but the Bicep sets them: {stale}"


def test_every_setting_the_code_reads_is_in_the_example_file() -> None:
    missing = sorted(code_settings() - example_settings() - NOT_IN_EXAMPLE.keys())
    assert not missing, f"add these to local.settings.json.example: {missing}"


def test_every_setting_the_code_reads_is_in_the_configuration_table() -> None:
    table = configuration_table()
    missing = sorted(n for n in code_settings() - NOT_IN_TABLE.keys() if not documented(n, table))
    assert not missing, f"document these in docs/configuration.md's Environment variables table: {missing}"


def test_every_bicep_setting_is_known() -> None:
    unknown = sorted(app_settings_in_bicep() - code_settings() - example_settings())
    assert not unknown, f"the Bicep sets settings nothing reads or documents: {unknown}"
