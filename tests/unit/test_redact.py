"""Connection details as type and host only, and URLs with their keys masked (pure functions)."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remediation.rules.redact import MASK, datasource_host, describe_datasource, mask_urls

KEY = "k3y-Zx81qQ"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"https://api.contoso.com/v1/sales?apikey={KEY}&region=eu",
            f"https://api.contoso.com/v1/sales?apikey={MASK}&region={MASK}",
        ),
        (
            f"x=https://f.azurewebsites.net/api/run?code={KEY}.",
            f"x=https://f.azurewebsites.net/api/run?code={MASK}",
        ),
        (
            f"https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig={KEY}%2F%3D&se=2026",
            f"https://acct.blob.core.windows.net/c/b?sv={MASK}&sig={MASK}&se={MASK}",
        ),
        (f"https://svc:{KEY}@odata.contoso.com/odata/", f"https://{MASK}@odata.contoso.com/odata/"),
        (f"https://{KEY}@git.contoso.com/x", f"https://{MASK}@git.contoso.com/x"),
        (
            f"https://login.contoso.com/cb#access_token={KEY}&x=1",
            f"https://login.contoso.com/cb#access_token={MASK}&x={MASK}",
        ),
        (f"https://h/x?{KEY}", f"https://h/x?{MASK}"),
        (
            "https://kv.vault.azure.net/secrets/s?api-version=7.5&$top=5",
            "https://kv.vault.azure.net/secrets/s?api-version=7.5&$top=5",
        ),
        (  # inside a Python repr, and inside JSON inside a string (an extension data source path)
            f"{{'url': 'https://a.io/p?token={KEY}'}} and {json.dumps(json.dumps({'url': f'https://b.io/?key={KEY}'}))}",
            f"{{'url': 'https://a.io/p?token={MASK}'}} and "
            + json.dumps(json.dumps({"url": f"https://b.io/?key={MASK}"})),
        ),
        ("no url here: key=value ?a=b", "no url here: key=value ?a=b"),
        ("https://api.contoso.com/plain/path", "https://api.contoso.com/plain/path"),
    ],
)
def test_mask_urls_masks_user_info_and_every_parameter_value(text: str, expected: str) -> None:
    assert mask_urls(text) == expected
    assert mask_urls(expected) == expected  # idempotent


_VALUE = st.text(alphabet=string.ascii_letters + string.digits + "%-._~+/=", min_size=6, max_size=30)


@given(
    names=st.lists(
        st.sampled_from(["apikey", "api-key", "code", "key", "token", "sig", "sv", "x"]),
        min_size=1,
        max_size=4,
    ),
    value=_VALUE,
    prefix=st.sampled_from(["", "see ", "{'url': '", '"url": "']),
)
def test_no_query_value_survives(names: list[str], value: str, prefix: str) -> None:
    query = "&".join(f"{n}={value}{i}" for i, n in enumerate(names))
    masked = mask_urls(f"{prefix}https://host.example/p?{query}#frag={value} tail")
    assert value not in masked
    assert masked.startswith(f"{prefix}https://host.example/p?") and masked.endswith(" tail")


@pytest.mark.parametrize(
    ("kind", "details", "expected"),
    [
        ("Web", {"url": f"https://api.contoso.com/v1?apikey={KEY}"}, "Web on api.contoso.com"),
        (
            "OData",
            {"url": f"https://svc:{KEY}@odata.contoso.com:8443/odata?$top=1"},
            "OData on odata.contoso.com",
        ),
        (
            "Extension",
            {
                "extensionDataSourceKind": "Snowflake",
                "extensionDataSourcePath": json.dumps(
                    {"server": "acme.snowflakecomputing.com", "warehouse": "W"}
                ),
            },
            "Extension on acme.snowflakecomputing.com",
        ),
        (
            "Sql",
            {"server": "tcp:sql01.contoso.local,1433", "database": "Sales"},
            "Sql on sql01.contoso.local",
        ),
        ("Sql", {"server": "SQL01\\INSTANCE", "database": "Sales"}, "Sql on sql01"),
        ("File", {"path": "\\\\files01\\share\\book.xlsx"}, "File on files01"),
        ("File", {"path": "C:\\data\\book.xlsx"}, "File"),
        (
            "SharePointList",
            json.dumps({"url": "https://contoso.sharepoint.com/sites/x?token=t"}),
            "SharePointList on contoso.sharepoint.com",
        ),
        (None, {"url": "https://h.io/?k=v"}, "of unknown type on h.io"),
        ("Web", {}, "Web"),
        ("Web", "not json", "Web"),
        ("Web {'url': 'x'}", {"url": "https://h.io/"}, "of unknown type on h.io"),
    ],
)
def test_describe_datasource_says_type_and_host_only(
    kind: str | None, details: object, expected: str
) -> None:
    described = describe_datasource(kind, details)  # type: ignore[arg-type]
    assert described == expected
    assert KEY not in described and "?" not in described and "/" not in described


def test_datasource_host_gives_none_rather_than_anything_that_is_not_a_host_name() -> None:
    assert datasource_host({"url": "https://[::1]:80/"}) is None  # not a plain name: not told
    assert datasource_host({"server": "bad host; drop"}) is None
    assert datasource_host(None) is None and datasource_host("[1]") is None
