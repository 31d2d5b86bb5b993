"""Redaction at its edges: the URL and secret shapes where a small slip would let a piece of a key,
a signature or a password through, or break the text an operator reads."""

from __future__ import annotations

import pytest

from remediation.rules.redact import MASK, SecretMask, describe_datasource, mask_urls


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # base64 signatures end with "=": the value is everything after the first "=" of a parameter
        (
            "https://acct.blob.core.windows.net/c/b?sig=q1w2E3r4T5y6==&sv=2022",
            f"https://acct.blob.core.windows.net/c/b?sig={MASK}&sv={MASK}",
        ),
        ("https://h/x?token=abc=def", f"https://h/x?token={MASK}"),
        # empty parameters (a trailing "&", "&&") are kept as they are, the rest still masked
        ("https://h/x?a=1&", f"https://h/x?a={MASK}&"),
        ("https://h/x?a=1&&b=2#", f"https://h/x?a={MASK}&&b={MASK}#"),
        # a user name with "@" in the user info: everything up to the last "@" is masked
        ("https://svc@contoso.com:p4ss@odata.contoso.com/x", f"https://{MASK}@odata.contoso.com/x"),
        # an "@" with nothing before it hides nothing
        ("https://@odata.contoso.com/x", "https://@odata.contoso.com/x"),
    ],
)
def test_no_piece_of_a_url_secret_is_left(text: str, expected: str) -> None:
    assert mask_urls(text) == expected


def test_a_data_source_of_unknown_type_is_described_with_its_host_or_alone() -> None:
    assert describe_datasource(None, None) == "of unknown type"
    assert describe_datasource("", {"server": "sql01"}) == "of unknown type on sql01"
    assert describe_datasource("<script>", {"url": "https://a.example.com/x?k=v"}) == (
        "of unknown type on a.example.com"
    )


def test_a_json_path_that_is_not_an_object_has_no_host() -> None:
    assert describe_datasource("Extension", {"path": '["sql01"]'}) == "Extension"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((), "SecretMask(0 values)"),
        (("s3cret-one",), "SecretMask(1 value)"),
        (("a-1", "b-2"), "SecretMask(2 values)"),
    ],
)
def test_a_masks_repr_counts_its_values_and_shows_none(values: tuple[str, ...], expected: str) -> None:
    assert repr(SecretMask(values)) == expected
