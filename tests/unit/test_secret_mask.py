"""Secret values masked in any text, in every form a service could echo them (pure functions)."""

from __future__ import annotations

import html
import json
import re
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remediation.rules.redact import MASK, SHORT_SECRET, SecretMask, mask_secrets, secret_forms, secret_parts

# A quote, a backslash, a space, &, +, /, an apostrophe, non-ASCII and a character outside the BMP.
VALUE = 'Pä "q" \\ s&+/\'x 😀'


def _net_json(value: str) -> str:
    """What System.Text.Json's default encoder writes (independent of the product's code)."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ord(ch) > 0xFFFF:
            out.append(json.dumps(ch)[1:-1].upper().replace("\\U", "\\u"))
        elif ch in "\"&'+<>`" or ord(ch) >= 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


FORMS = {
    "raw": VALUE,
    "json": json.dumps(VALUE)[1:-1],
    "json-unicode": json.dumps(VALUE, ensure_ascii=False)[1:-1],
    "json-upper-hex": re.sub(
        r"\\u[0-9a-f]{4}", lambda m: "\\u" + m.group(0)[2:].upper(), json.dumps(VALUE)[1:-1]
    ),
    "json-in-json": json.dumps(json.dumps(VALUE)[1:-1])[1:-1],
    "json-in-json-unicode": json.dumps(json.dumps(VALUE, ensure_ascii=False)[1:-1], ensure_ascii=False)[1:-1],
    "dotnet-json": _net_json(VALUE),
    "repr": repr(VALUE)[1:-1],
    "quote": quote(VALUE, safe=""),
    "quote-path": quote(VALUE),
    "quote-lower-hex": re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(VALUE, safe="")),
    "quote-plus": quote_plus(VALUE),
    "encode-uri-component": quote(VALUE, safe="!'()*"),
    "html": html.escape(VALUE),
    "html-no-quotes": html.escape(VALUE, quote=False),
    "aspnet-html": html.escape(VALUE).replace("&#x27;", "&#39;"),
    "xml": html.escape(VALUE).replace("&#x27;", "&apos;"),
}


@pytest.mark.parametrize("name", sorted(FORMS))
def test_each_form_is_masked_inside_a_message_and_inside_a_longer_string(name: str) -> None:
    form = FORMS[name]
    assert form in secret_forms(VALUE)
    mask = SecretMask([VALUE])

    assert mask.mask(f"The value '{form}' is not valid for password.") == (
        f"The value '{MASK}' is not valid for password."
    )
    assert mask.mask(f"xx{form}yy") == f"xx{MASK}yy"  # glued to other text: still found
    assert mask.mask(f"{form}{form} and {form}") == f"{MASK} and {MASK}"


def test_overlapping_values_leave_no_piece_of_either() -> None:
    masked = mask_secrets("a=abcdefghi;", ["abcdef", "defghi"])

    assert masked == f"a={MASK};"


def test_a_value_inside_another_is_masked_whole_and_alone() -> None:
    mask = SecretMask(["s3cret-value", "s3cret-value-longer"])

    assert mask.mask("[s3cret-value-longer] [s3cret-value]") == f"[{MASK}] [{MASK}]"
    assert "longer" not in mask.mask("s3cret-value-longer")


def test_a_json_secret_masks_the_whole_value_and_its_password_alone() -> None:
    value = json.dumps({"username": "svc_pbi", "password": "P@ss w0rd&1"})
    mask = SecretMask([value])

    assert secret_parts(value) == (value, "P@ss w0rd&1")
    assert mask.mask(f"got {value}") == f"got {MASK}"
    assert mask.mask("The value 'P@ss w0rd&1' is not valid") == f"The value '{MASK}' is not valid"
    assert mask.mask("pw=P%40ss+w0rd%261") == f"pw={MASK}"
    assert mask.mask("user svc_pbi") == "user svc_pbi"  # the user name is not a secret


def test_a_json_value_that_is_not_a_username_password_pair_is_one_value() -> None:
    assert secret_parts('{"key": "abc"}') == ('{"key": "abc"}',)
    assert secret_parts("{not json") == ("{not json",)
    assert secret_parts("") == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The value 'ab' is not valid", f"The value '{MASK}' is not valid"),
        ("x=ab&y=1", f"x={MASK}&y=1"),
        ('{"p": "ab"}', f'{{"p": "{MASK}"}}'),
        ("ab", MASK),
        ("about a cab, labs", "about a cab, labs"),  # inside words: left alone
        ("_ab_", f"_{MASK}_"),
    ],
)
def test_a_short_value_is_masked_where_it_stands_alone_only(text: str, expected: str) -> None:
    assert len("ab") < SHORT_SECRET
    assert mask_secrets(text, ["ab"]) == expected


def test_from_the_short_length_on_a_value_is_masked_inside_words_too() -> None:
    value = "x" * SHORT_SECRET

    assert mask_secrets(f"a{value}b", [value]) == f"a{MASK}b"


@pytest.mark.parametrize("values", [["a%27b", "a'b"], ["a'b", "a%27b"]], ids=["long-first", "short-first"])
def test_a_long_value_is_masked_inside_words_even_when_a_short_value_has_the_same_form(
    values: list[str],
) -> None:
    """``a%27b`` is a value of its own and also how ``a'b`` looks URL-encoded: being a short
    value's form does not make the long value's own occurrences inside a word safe to show."""
    assert len("a'b") < SHORT_SECRET <= len("a%27b")

    assert mask_secrets("xa%27by", values) == f"x{MASK}y"
    assert mask_secrets("xa'by", values) == "xa'by"  # the short value inside a word stays
    assert mask_secrets("x a'b y", values) == f"x {MASK} y"


def test_no_values_change_nothing_and_the_mask_shows_no_value() -> None:
    text = "The value 'x' is not valid"

    assert mask_secrets(text, []) == text and mask_secrets(text, [""]) == text
    assert not SecretMask() and SecretMask([VALUE])
    assert VALUE not in repr(SecretMask([VALUE])) and "'" not in repr(SecretMask([VALUE]))


def test_masking_is_idempotent_and_reaches_into_containers() -> None:
    mask = SecretMask([VALUE])
    once = mask.mask(f"a {VALUE} b {quote(VALUE)}")

    assert mask.mask(once) == once
    assert mask.mask_value({"k": [VALUE, (1, VALUE)], "n": 2}) == {"k": [MASK, (1, MASK)], "n": 2}


_VALUES = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Lu"), blacklist_characters="[]"),
    min_size=SHORT_SECRET,
    max_size=24,
)


@given(value=_VALUES, prefix=st.text(max_size=12), suffix=st.text(max_size=12))
def test_no_form_of_a_value_survives_wherever_it_stands(value: str, prefix: str, suffix: str) -> None:
    mask = SecretMask([value])
    for form in secret_forms(value):
        masked = mask.mask(prefix + form + suffix)
        assert form not in masked
        assert value not in masked
