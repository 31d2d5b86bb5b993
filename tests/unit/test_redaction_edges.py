"""Redaction at its edges: the URL and secret shapes where a small slip would let a piece of a key,
a signature or a password through, or break the text an operator reads."""

from __future__ import annotations

import pytest

from remediation.rules.redact import MASK, SecretMask, datasource_host, describe_datasource, mask_urls


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


def test_connection_details_nested_too_deep_to_parse_describe_the_source_by_its_type() -> None:
    """A JSON text nested deeper than the parser's recursion limit names no host; it does not
    stop the run that describes the source."""
    deep = '{"server": ' * 100_000

    assert datasource_host(deep) is None
    assert datasource_host({"server": deep}) is None
    assert describe_datasource("Web", {"server": deep, "url": "https://h.io/x"}) == "Web on h.io"
    assert describe_datasource("Extension", {"extensionDataSourcePath": deep}) == "Extension"


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


@pytest.mark.parametrize(
    ("value", "shown"),
    [  # with a quote, which only the .NET encoder escapes, so no other form covers the whole value
        ("pa'\x7fss", "pa\\u0027\\u007Fss"),  # DEL: escaped, as every code from 0x7F
        ("pa'\uffffss", "pa\\u0027\\uFFFFss"),  # the last character of the basic plane: one escape
        ("pa'\U00010000ss", "pa\\u0027\\uD800\\uDC00ss"),  # the first beyond it: a surrogate pair
    ],
)
def test_a_value_is_masked_as_dotnets_json_encoder_writes_it(value: str, shown: str) -> None:
    assert SecretMask([value]).mask(f'{{"password":"{shown}"}}') == f'{{"password":"{MASK}"}}'


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("p&#xab;ss", "p&#xAB;ss"),  # an HTML escape inside the value, its hex digits upper-cased
        ("p%c3%a9ss", "p%C3%A9ss"),  # a percent escape inside the value, likewise
    ],
)
def test_escapes_inside_a_value_are_masked_whatever_the_case_of_their_hex_digits(
    value: str, shown: str
) -> None:
    assert SecretMask([value]).mask(f"got {shown}.") == f"got {MASK}."


def test_a_value_is_masked_as_a_form_encoder_that_keeps_some_punctuation_writes_it() -> None:
    """JavaScript's and .NET's form encoders leave ``!`` as it is and write a space as ``+``."""
    assert SecretMask(["a1! b2"]).mask("password=a1!+b2&x=1") == f"password={MASK}&x=1"


def test_the_password_of_a_json_secret_with_leading_blanks_is_masked_alone_too() -> None:
    value = ' {"username": "svc", "password": "Pa55-word"}'
    assert SecretMask([value]).mask("login failed for Pa55-word") == f"login failed for {MASK}"


def test_a_json_secret_whose_password_is_not_text_is_one_value() -> None:
    value = '{"username": "svc", "password": 12345678}'
    mask = SecretMask([value])
    assert repr(mask) == "SecretMask(1 value)"
    assert mask.mask(f"got {value}") == f"got {MASK}"


def test_a_form_a_long_value_shares_with_a_short_one_is_still_masked_inside_words() -> None:
    """A short value's forms are masked only where they stand alone; a long value's everywhere.
    When both have a form in common (here ``&#x27;``, the HTML escape of ``'``), it is masked
    everywhere, whatever the order of the values."""
    for values in (["&#x27;", "'"], ["'", "&#x27;"]):
        assert SecretMask(values).mask("a&#x27;b") == f"a{MASK}b"
