"""What an operator reads when a gateway's public key or a credential cannot be used: each refusal
names the field and the reason, exactly (the healer reports it as the target's failure), and none
repeats the credential."""

from __future__ import annotations

import base64

import pytest

from remediation.rules.gateway_crypto import (
    CredentialEncryptionError,
    GatewayKeyError,
    GatewayPublicKey,
    encrypt_credentials,
)
from tests.unit.test_gateway_crypto import BAD_KEYS

ODD_1024 = (1 << 1023) + 1
MODULUS = base64.b64encode(ODD_1024.to_bytes(128, "big")).decode("ascii")

MESSAGES = {
    "not_an_object": "publicKey must be an object with 'exponent' and 'modulus'",
    "none": "publicKey must be an object with 'exponent' and 'modulus'",
    "list": "publicKey must be an object with 'exponent' and 'modulus'",
    "missing_modulus": "publicKey.modulus is missing",
    "missing_exponent": "publicKey.exponent is missing",
    "empty_modulus": "publicKey.modulus must be a non-empty base64 string",
    "empty_exponent": "publicKey.exponent must be a non-empty base64 string",
    "modulus_not_a_string": "publicKey.modulus must be a non-empty base64 string",
    "modulus_not_base64": "publicKey.modulus is not valid base64",
    "exponent_bad_padding": "publicKey.exponent is not valid base64",
    "modulus_too_short": "publicKey.modulus is 64 bytes; expected 128 to 1024 (1024- to 8192-bit RSA)",
    "modulus_just_short": "publicKey.modulus is 127 bytes; expected 128 to 1024 (1024- to 8192-bit RSA)",
    "modulus_too_long": "publicKey.modulus is 1025 bytes; expected 128 to 1024 (1024- to 8192-bit RSA)",
    "modulus_between_schemes": (
        "publicKey.modulus is 150 bytes; neither scheme fits (exactly 128, or at least 164)"
    ),
    "modulus_even": "publicKey.modulus is even, so it is not an RSA modulus",
    "exponent_even": "publicKey.exponent must be an odd integer >= 3 and below the modulus",
    "exponent_one": "publicKey.exponent must be an odd integer >= 3 and below the modulus",
    "exponent_zero_bytes": "publicKey.exponent must be an odd integer >= 3 and below the modulus",
    "exponent_not_below_modulus": "publicKey.exponent must be an odd integer >= 3 and below the modulus",
}


@pytest.mark.parametrize("name", sorted(BAD_KEYS))
def test_an_unusable_public_key_says_which_field_and_why(name: str) -> None:
    with pytest.raises(GatewayKeyError) as caught:
        GatewayPublicKey.from_api(BAD_KEYS[name])
    assert str(caught.value) == MESSAGES[name]


@pytest.mark.parametrize(
    ("exponent", "modulus", "message"),
    [
        ("AQAB", "", "publicKey.modulus must be a non-empty base64 string"),
        ("", MODULUS, "publicKey.exponent must be a non-empty base64 string"),
        ("AQAB", "o6j2....cLk=", "publicKey.modulus is not valid base64"),
        # Not base64 even though dropping the odd characters would leave a valid key.
        ("AQAB", MODULUS[:40] + " *\n" + MODULUS[40:], "publicKey.modulus is not valid base64"),
    ],
)
def test_a_key_built_directly_is_refused_the_same_way(exponent: str, modulus: str, message: str) -> None:
    with pytest.raises(GatewayKeyError) as caught:
        GatewayPublicKey(exponent=exponent, modulus=modulus)
    assert str(caught.value) == message


def test_credentials_that_cannot_be_encrypted_say_why_and_nothing_else() -> None:
    key = GatewayPublicKey(exponent="AQAB", modulus=MODULUS)
    with pytest.raises(TypeError) as wrong_type:
        encrypt_credentials(b"s3cret", key)  # type: ignore[arg-type]
    assert str(wrong_type.value) == "plaintext must be a str"
    with pytest.raises(CredentialEncryptionError) as empty:
        encrypt_credentials("", key)
    assert str(empty.value) == "refusing to encrypt empty credentials"
    with pytest.raises(CredentialEncryptionError) as unencodable:
        encrypt_credentials("s3cret-\ud800", key)
    assert str(unencodable.value) == "credentials are not encodable as UTF-8"


def _odd(size: int) -> str:
    return base64.b64encode(((1 << (size * 8 - 1)) + 1).to_bytes(size, "big")).decode("ascii")


@pytest.mark.parametrize("size", [128, 164, 1024], ids=["1024-bit", "smallest-hybrid", "8192-bit"])
def test_every_modulus_size_a_scheme_takes_is_accepted_up_to_its_edges(size: int) -> None:
    assert GatewayPublicKey(exponent="AQAB", modulus=_odd(size)).modulus_bytes == size


@pytest.mark.parametrize(("size", "why"), [(163, "neither scheme fits"), (1025, "expected 128 to 1024")])
def test_a_modulus_just_past_an_edge_is_refused(size: int, why: str) -> None:
    with pytest.raises(GatewayKeyError, match=why):
        GatewayPublicKey(exponent="AQAB", modulus=_odd(size))


def test_the_smallest_exponent_is_three_and_it_must_be_below_the_modulus() -> None:
    assert GatewayPublicKey(exponent="Aw==", modulus=MODULUS)  # 3
    with pytest.raises(GatewayKeyError, match="below the modulus"):
        GatewayPublicKey(exponent=MODULUS, modulus=MODULUS)


@pytest.mark.parametrize("exponent", ["", 65537], ids=["empty", "a-number"])
def test_a_key_with_several_faults_is_refused_for_its_exponent_first(exponent: object) -> None:
    """The fields are checked in one order (exponent, then modulus), so the message an operator
    reads names the exponent even when the modulus is missing too."""
    with pytest.raises(GatewayKeyError) as caught:
        GatewayPublicKey.from_api({"exponent": exponent})
    assert str(caught.value) == "publicKey.exponent must be a non-empty base64 string"
