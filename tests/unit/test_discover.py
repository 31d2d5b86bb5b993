"""The pure half of discover: masking connection details, and the draft bindings."""

from __future__ import annotations

import json

from remediation.config.bindings_file import parse_bindings
from remediation.inventory.discover import DiscoveredSource, masked_details
from remediation.inventory.proposal import propose_bindings

GW = "1f69e798-5852-4fdd-ab01-33bb14b6e934"


def test_keys_in_urls_and_connection_strings_are_masked() -> None:
    details = masked_details(
        json.dumps(
            {
                "url": "https://user:pw@api.contoso.com/v1?apikey=K3y&api-version=2#access_token=T0k",
                "connectionString": "driver={ODBC};server=db01;uid=svc;pwd=S3cr3t;",
                "extensionDataSourcePath": '{"url":"https://x.contoso.com/?code=C0de"}',
                "account": "blob.core.windows.net;AccountKey=AbC==;",
            }
        )
    )
    text = json.dumps(details)
    for secret in ("pw@", "K3y", "T0k", "S3cr3t", "C0de", "AbC=="):
        assert secret not in text
    assert details["url"] == (
        "https://[REDACTED]@api.contoso.com/v1?apikey=[REDACTED]&api-version=2#access_token=[REDACTED]"
    )
    assert "server=db01;uid=svc;pwd=[REDACTED];" in details["connectionString"]


def test_a_value_that_is_not_json_is_masked_as_text() -> None:
    assert masked_details("https://h/?sig=abc") == {"value": "https://h/?sig=[REDACTED]"}
    assert masked_details(None) == {} and masked_details("") == {}


def _source(
    ds: str,
    ctype: str | None,
    *,
    server: str = "sql01.contoso.local",
    db: str = "sales",
    binding: str | None = None,
) -> DiscoveredSource:
    return DiscoveredSource(GW, ds, "Sql", {"server": server, "database": db}, ctype, True, binding)


def test_the_draft_groups_by_type_server_database_and_credential_type() -> None:
    ids = [f"0000000{i}-5852-4fdd-ab01-33bb14b6e934" for i in range(6)]
    draft = propose_bindings(
        [
            _source(ids[0], "Basic"),
            _source(ids[1], "Basic", server="SQL01.contoso.local"),  # same server, other spelling
            _source(ids[2], "Windows"),  # same server, other credential type
            _source(ids[3], "Basic", db="hr"),
            _source(ids[4], "Anonymous"),  # nothing to rotate
            _source(ids[5], "Basic", binding="already"),  # bound
        ]
    )
    groups = {
        b["name"]: (b["credentialType"], [t["datasourceId"] for t in b["targets"]]) for b in draft["bindings"]
    }
    assert groups == {
        "sql-sql01-hr": ("Basic", [ids[3]]),
        "sql-sql01-sales": ("Basic", [ids[0], ids[1]]),
        "sql-sql01-sales-2": ("Windows", [ids[2]]),
    }
    assert {b["secret"] for b in draft["bindings"]} == {"<Key Vault secret name>"}


def test_the_filled_in_draft_parses() -> None:
    draft = propose_bindings([_source("00000001-5852-4fdd-ab01-33bb14b6e934", "OAuth2")])
    (binding,) = draft["bindings"]
    assert binding["oauth2"] == "caller-identity" and binding["username"] == "<owner@contoso.com>"
    binding["secret"] = "owner-password"
    binding["username"] = "owner@contoso.com"
    assert parse_bindings(draft).bindings[0].uses_caller_identity
