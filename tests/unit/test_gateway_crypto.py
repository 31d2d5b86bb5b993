"""Credential encryption for on-premises gateways (remediation) against the sandbox's gateway.

The product side (``remediation.rules.gateway_crypto``) and the gateway side
(``sandbox.gateway_keys``) are written independently; where it matters these tests also check
the product's output with ``cryptography``'s own OAEP, HMAC and AES directly, and build
ciphertexts by hand to probe the decryptor, so the two modules cannot agree on a mistake.
Sizes below are written out from the scheme description rather than imported.
"""

from __future__ import annotations

import base64
import math
import os
import random
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from remediation.rules.gateway_crypto import (
    CredentialEncryptionError,
    GatewayKeyError,
    GatewayPublicKey,
    encrypt_credentials,
)
from sandbox.gateway_keys import GatewayDecryptError, GatewayKeyPair

SIZES = [1024, 2048, 3072, 4096]
HYBRID_SIZES = [2048, 3072, 4096]

LONG_TEXT = '{"credentialData":[{"name":"username","value":"svc-report"},{"name":"password","value":"x"}]}'
PLAINTEXTS = {
    "ascii": "hunter2",
    "non_ascii": "pässwörd€😀",
    "just_over_one_segment": "s" * 86,
    "long_json": LONG_TEXT,
    "multi_kb": "pässwörd€😀 correct horse battery staple " * 120,
}

SHA1_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
SHA256_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


# --- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module", params=SIZES, ids=lambda bits: f"{bits}bit")
def pair(request: pytest.FixtureRequest) -> GatewayKeyPair:
    return GatewayKeyPair.generate(request.param, reuse=True)


@pytest.fixture(scope="module", params=HYBRID_SIZES, ids=lambda bits: f"{bits}bit")
def hybrid_pair(request: pytest.FixtureRequest) -> GatewayKeyPair:
    return GatewayKeyPair.generate(request.param, reuse=True)


@pytest.fixture(scope="module")
def pair_1024() -> GatewayKeyPair:
    return GatewayKeyPair.generate(1024, reuse=True)


@pytest.fixture(scope="module")
def pair_2048() -> GatewayKeyPair:
    return GatewayKeyPair.generate(2048, reuse=True)


def public(pair: GatewayKeyPair) -> GatewayPublicKey:
    return GatewayPublicKey.from_api(pair.public_key_json())


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def split_hybrid(ciphertext: str, k: int) -> tuple[bytes, bytes]:
    cut = 4 * math.ceil(k / 3)
    return base64.b64decode(ciphertext[:cut], validate=True), base64.b64decode(
        ciphertext[cut:], validate=True
    )


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def assert_no_secret(exc: BaseException, secret: str) -> None:
    """Neither the error nor anything it chains to may carry the secret, as text or bytes."""
    for link in exception_chain(exc):
        texts = [str(link), repr(link), *map(repr, link.args), repr(getattr(link, "object", ""))]
        for text in texts:
            assert secret not in text
            assert repr(secret.encode()) not in text


def hybrid_by_hand(
    pair: GatewayKeyPair,
    plaintext: bytes,
    *,
    key_header: bytes = b"\x00\x01",
    blob_header: bytes = b"\x00\x00",
    key_blob_extra: bytes = b"",
    pad: bool = True,
) -> str:
    """The hybrid scheme written out with ``cryptography``'s OAEP, with knobs to break it."""
    aes_key, mac_key, iv = os.urandom(32), os.urandom(64), os.urandom(16)
    if pad:
        padder = sym_padding.PKCS7(128).padder()
        plaintext = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    ct = encryptor.update(plaintext) + encryptor.finalize()
    mac = hmac.HMAC(mac_key, hashes.SHA256())
    mac.update(blob_header + iv + ct)
    blob = blob_header + mac.finalize() + iv + ct
    wrapped = pair.private_key.public_key().encrypt(
        key_header + aes_key + mac_key + key_blob_extra, SHA256_OAEP
    )
    return b64(wrapped) + b64(blob)


def segmented_by_hand(pair: GatewayKeyPair, segments: list[bytes]) -> str:
    """The 1024-bit scheme written out with ``cryptography``'s OAEP, segments chosen freely."""
    public_key = pair.private_key.public_key()
    return b64(b"".join(public_key.encrypt(segment, SHA1_OAEP) for segment in segments))


# --- round trips and output shape ---------------------------------------------------------------


@pytest.mark.parametrize("text", PLAINTEXTS.values(), ids=PLAINTEXTS.keys())
def test_gateway_decrypts_what_was_encrypted_for_it(pair: GatewayKeyPair, text: str) -> None:
    assert pair.decrypt(encrypt_credentials(text, public(pair))) == text


@pytest.mark.parametrize(
    "text", ["a", "a" * 84, "a" * 85, "a" * 86, "a" * 170, "a" * 171, "€" * 29, "ü" * 2500]
)
def test_segmented_output_is_one_128_byte_block_per_85_bytes_of_utf8(
    pair_1024: GatewayKeyPair, text: str
) -> None:
    out = encrypt_credentials(text, public(pair_1024))
    raw = base64.b64decode(out, validate=True)
    assert len(raw) == 128 * math.ceil(len(text.encode("utf-8")) / 85)
    assert out == b64(raw)  # standard, padded base64 of the whole thing, encoded once


@pytest.mark.parametrize("text", ["a", "a" * 15, "a" * 16, "pässwörd€😀" * 300])
def test_hybrid_output_is_a_modulus_sized_rsa_block_then_the_symmetric_blob(
    hybrid_pair: GatewayKeyPair, text: str
) -> None:
    k = hybrid_pair.private_key.key_size // 8
    out = encrypt_credentials(text, public(hybrid_pair))
    wrapped, blob = split_hybrid(out, k)
    assert len(wrapped) == k
    assert out == b64(wrapped) + b64(blob)
    padded_length = 16 * (len(text.encode("utf-8")) // 16 + 1)  # PKCS7 always adds a byte
    assert len(blob) == 2 + 32 + 16 + padded_length
    assert blob[:2] == b"\x00\x00"


def test_public_key_json_looks_like_the_power_bi_api(pair: GatewayKeyPair) -> None:
    shown = pair.public_key_json()
    assert set(shown) == {"exponent", "modulus"}
    assert shown["exponent"] == "AQAB"
    modulus = base64.b64decode(shown["modulus"], validate=True)
    assert len(modulus) == pair.private_key.key_size // 8
    assert modulus[0] != 0
    assert int.from_bytes(modulus, "big") == pair.private_key.public_key().public_numbers().n
    assert public(pair).modulus_bytes == len(modulus)


def test_generate_reuses_keys_only_when_asked() -> None:
    assert GatewayKeyPair.generate(1024, reuse=True) is GatewayKeyPair.generate(1024, reuse=True)
    fresh = GatewayKeyPair.generate(1024)
    assert fresh.public_key_json() != GatewayKeyPair.generate(1024, reuse=True).public_key_json()


@pytest.mark.parametrize("bits", [512, 1000, 1536, 2047])
def test_generate_refuses_sizes_no_gateway_uses(bits: int) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        GatewayKeyPair.generate(bits)


# --- randomness ----------------------------------------------------------------------------------


def test_two_encryptions_of_the_same_plaintext_differ(pair: GatewayKeyPair) -> None:
    key = public(pair)
    first, second = encrypt_credentials(LONG_TEXT, key), encrypt_credentials(LONG_TEXT, key)
    assert first != second
    assert pair.decrypt(first) == pair.decrypt(second) == LONG_TEXT


def test_same_injected_randomness_gives_the_same_symmetric_blob(hybrid_pair: GatewayKeyPair) -> None:
    # The RSA part uses OpenSSL's OAEP (its seed is OpenSSL's); the symmetric part is pinned.
    key, k = public(hybrid_pair), hybrid_pair.private_key.key_size // 8
    first = encrypt_credentials(LONG_TEXT, key, rand=seeded(7))
    same = encrypt_credentials(LONG_TEXT, key, rand=seeded(7))
    other = encrypt_credentials(LONG_TEXT, key, rand=seeded(8))
    assert split_hybrid(same, k)[1] == split_hybrid(first, k)[1]
    assert split_hybrid(other, k)[1] != split_hybrid(first, k)[1]
    assert hybrid_pair.decrypt(first) == hybrid_pair.decrypt(same) == LONG_TEXT


def test_randomness_that_returns_the_wrong_length_is_refused(hybrid_pair: GatewayKeyPair) -> None:
    with pytest.raises(CredentialEncryptionError, match="random"):
        encrypt_credentials("hunter2", public(hybrid_pair), rand=lambda n: bytes(n - 1))


# --- known answers: checked with cryptography directly, not with the sandbox --------------------


def test_segmented_blocks_are_oaep_sha1_of_85_byte_segments(pair_1024: GatewayKeyPair) -> None:
    data = PLAINTEXTS["multi_kb"].encode("utf-8")
    raw = base64.b64decode(encrypt_credentials(PLAINTEXTS["multi_kb"], public(pair_1024)), validate=True)
    blocks = [raw[i : i + 128] for i in range(0, len(raw), 128)]
    assert pair_1024.private_key.decrypt(blocks[0], SHA1_OAEP) == data[:85]
    assert b"".join(pair_1024.private_key.decrypt(block, SHA1_OAEP) for block in blocks) == data
    with pytest.raises(ValueError):
        pair_1024.private_key.decrypt(blocks[0], SHA256_OAEP)


def test_hybrid_rsa_part_is_oaep_sha256_of_header_and_injected_keys(hybrid_pair: GatewayKeyPair) -> None:
    k = hybrid_pair.private_key.key_size // 8
    drawn: list[bytes] = []

    def recording(n: int) -> bytes:
        drawn.append(os.urandom(n))
        return drawn[-1]

    text = PLAINTEXTS["non_ascii"]
    wrapped, blob = split_hybrid(encrypt_credentials(text, public(hybrid_pair), rand=recording), k)
    keys = hybrid_pair.private_key.decrypt(wrapped, SHA256_OAEP)
    assert len(keys) == 98
    assert keys[:2] == b"\x00\x01"
    aes_key, mac_key = keys[2:34], keys[34:]
    assert [len(d) for d in drawn] == [32, 64, 16]  # AES key, MAC key, IV
    assert (aes_key, mac_key) == (drawn[0], drawn[1])
    with pytest.raises(ValueError):
        hybrid_pair.private_key.decrypt(wrapped, SHA1_OAEP)

    header, tag, iv, ct = blob[:2], blob[2:34], blob[34:50], blob[50:]
    assert header == b"\x00\x00"
    assert iv == drawn[2]
    mac = hmac.HMAC(mac_key, hashes.SHA256())
    mac.update(header + iv + ct)
    mac.verify(tag)
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
    unpadder = sym_padding.PKCS7(128).unpadder()
    padded = decryptor.update(ct) + decryptor.finalize()
    assert (unpadder.update(padded) + unpadder.finalize()).decode("utf-8") == text


def test_gateway_decrypts_a_hybrid_ciphertext_built_by_hand(hybrid_pair: GatewayKeyPair) -> None:
    text = PLAINTEXTS["multi_kb"]
    assert hybrid_pair.decrypt(hybrid_by_hand(hybrid_pair, text.encode("utf-8"))) == text


# --- tampering ------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [0, -1])
@pytest.mark.parametrize("offset", [0, 64, 127])
def test_segmented_single_bit_flip_is_refused(pair_1024: GatewayKeyPair, block: int, offset: int) -> None:
    raw = base64.b64decode(encrypt_credentials(LONG_TEXT, public(pair_1024)), validate=True)
    blocks = len(raw) // 128
    index = (block % blocks) * 128 + offset
    with pytest.raises(GatewayDecryptError):
        pair_1024.decrypt(b64(flip(raw, index)))


HYBRID_REGIONS = {
    # region: (part, byte offset within the decoded part); negative offsets count from the end
    "rsa_first_byte": ("wrapped", 0),
    "rsa_middle": ("wrapped", 100),
    "rsa_last_byte": ("wrapped", -1),
    "blob_header": ("blob", 1),
    "tag": ("blob", 2 + 5),
    "iv": ("blob", 2 + 32 + 3),
    "ciphertext_first_block": ("blob", 2 + 32 + 16),
    "ciphertext_last_byte": ("blob", -1),
}


@pytest.mark.parametrize("region", HYBRID_REGIONS.values(), ids=HYBRID_REGIONS.keys())
def test_hybrid_single_bit_flip_in_any_region_is_refused(
    hybrid_pair: GatewayKeyPair, region: tuple[str, int]
) -> None:
    k = hybrid_pair.private_key.key_size // 8
    wrapped, blob = split_hybrid(encrypt_credentials(LONG_TEXT, public(hybrid_pair)), k)
    part, offset = region
    if part == "wrapped":
        wrapped = flip(wrapped, offset % len(wrapped), bit=3)
    else:
        blob = flip(blob, offset % len(blob), bit=3)
    with pytest.raises(GatewayDecryptError):
        hybrid_pair.decrypt(b64(wrapped) + b64(blob))


@pytest.mark.parametrize("bits", [1024, 2048])
def test_another_gateway_of_the_same_size_cannot_decrypt(bits: int) -> None:
    ours, theirs = GatewayKeyPair.generate(bits, reuse=True), GatewayKeyPair.generate(bits)
    with pytest.raises(GatewayDecryptError):
        theirs.decrypt(encrypt_credentials(LONG_TEXT, public(ours)))


@pytest.mark.parametrize("cut", [1, 2, 4, 8, 24, 100])
def test_truncated_output_is_refused(pair: GatewayKeyPair, cut: int) -> None:
    out = encrypt_credentials(PLAINTEXTS["multi_kb"], public(pair))
    with pytest.raises(GatewayDecryptError):
        pair.decrypt(out[:-cut])


def test_hybrid_rsa_part_alone_is_refused(hybrid_pair: GatewayKeyPair) -> None:
    k = hybrid_pair.private_key.key_size // 8
    out = encrypt_credentials(LONG_TEXT, public(hybrid_pair))
    with pytest.raises(GatewayDecryptError):
        hybrid_pair.decrypt(out[: 4 * math.ceil(k / 3)])


def test_hybrid_blob_missing_its_last_aes_block_is_refused(hybrid_pair: GatewayKeyPair) -> None:
    k = hybrid_pair.private_key.key_size // 8
    wrapped, blob = split_hybrid(encrypt_credentials(PLAINTEXTS["multi_kb"], public(hybrid_pair)), k)
    with pytest.raises(GatewayDecryptError, match="HMAC"):
        hybrid_pair.decrypt(b64(wrapped) + b64(blob[:-16]))


def test_hybrid_halves_swapped_are_refused(hybrid_pair: GatewayKeyPair) -> None:
    k = hybrid_pair.private_key.key_size // 8
    wrapped, blob = split_hybrid(encrypt_credentials(LONG_TEXT, public(hybrid_pair)), k)
    with pytest.raises(GatewayDecryptError):
        hybrid_pair.decrypt(b64(blob) + b64(wrapped))


def test_segmented_full_blocks_reordered_decrypt_to_reordered_text(pair_1024: GatewayKeyPair) -> None:
    # What is actually true: each 1024-bit block is encrypted on its own, with nothing binding
    # it to its position, so swapping two full segments is not detected.
    text = "A" * 85 + "B" * 85
    raw = base64.b64decode(encrypt_credentials(text, public(pair_1024)), validate=True)
    swapped = pair_1024.decrypt(b64(raw[128:] + raw[:128]))
    assert swapped != text
    assert swapped == "B" * 85 + "A" * 85


def test_segmented_short_last_block_moved_forward_is_refused(pair_1024: GatewayKeyPair) -> None:
    # The sandbox insists every segment but the last is exactly 85 bytes, which catches this.
    raw = base64.b64decode(encrypt_credentials("A" * 85 + "B" * 10, public(pair_1024)), validate=True)
    with pytest.raises(GatewayDecryptError, match="segment"):
        pair_1024.decrypt(b64(raw[128:] + raw[:128]))


def test_segmented_dropping_whole_trailing_blocks_yields_a_truncated_plaintext(
    pair_1024: GatewayKeyPair,
) -> None:
    # Also true of the scheme: whole-block truncation is undetectable by the gateway.
    text = "A" * 85 + "B" * 85 + "C" * 10
    raw = base64.b64decode(encrypt_credentials(text, public(pair_1024)), validate=True)
    assert pair_1024.decrypt(b64(raw[:256])) == "A" * 85 + "B" * 85


def test_segmented_segments_longer_than_85_bytes_are_refused(pair_1024: GatewayKeyPair) -> None:
    # 86 bytes is the OAEP-SHA1 maximum for 128-byte keys, but not what the SDK produces.
    with pytest.raises(GatewayDecryptError, match="segment"):
        pair_1024.decrypt(segmented_by_hand(pair_1024, [b"a" * 86, b"b"]))
    with pytest.raises(GatewayDecryptError, match="segment"):
        pair_1024.decrypt(segmented_by_hand(pair_1024, [b"a" * 86]))


def test_segmented_empty_segment_is_refused(pair_1024: GatewayKeyPair) -> None:
    with pytest.raises(GatewayDecryptError, match="segment"):
        pair_1024.decrypt(segmented_by_hand(pair_1024, [b"a" * 85, b""]))


def test_hybrid_key_blob_with_wrong_header_is_refused(pair_2048: GatewayKeyPair) -> None:
    for header in (b"\x00\x00", b"\x01\x01", b"\x00\x02"):
        with pytest.raises(GatewayDecryptError, match="key blob header"):
            pair_2048.decrypt(hybrid_by_hand(pair_2048, b"hunter2", key_header=header))


@pytest.mark.parametrize("extra", [b"", b"\x00"], ids=["97_bytes", "99_bytes"])
def test_hybrid_key_blob_of_the_wrong_length_is_refused(pair_2048: GatewayKeyPair, extra: bytes) -> None:
    header = b"\x00" if not extra else b"\x00\x01"  # 1+32+64 = 97, or 2+32+64+1 = 99
    with pytest.raises(GatewayDecryptError, match="key blob is not 98 bytes"):
        pair_2048.decrypt(hybrid_by_hand(pair_2048, b"hunter2", key_header=header, key_blob_extra=extra))


def test_hybrid_blob_with_wrong_header_is_refused_even_with_a_valid_tag(pair_2048: GatewayKeyPair) -> None:
    with pytest.raises(GatewayDecryptError, match="ciphertext header"):
        pair_2048.decrypt(hybrid_by_hand(pair_2048, b"hunter2", blob_header=b"\x00\x01"))


def test_hybrid_bad_pkcs7_padding_is_refused_even_with_a_valid_tag(pair_2048: GatewayKeyPair) -> None:
    unpadded = b"hunter2-hunter2" + b"\x00"  # one block whose last byte is no PKCS7 padding
    with pytest.raises(GatewayDecryptError, match="padding"):
        pair_2048.decrypt(hybrid_by_hand(pair_2048, unpadded, pad=False))


@pytest.mark.parametrize("bits", [1024, 2048])
def test_plaintext_that_is_not_utf8_is_refused_without_leaking_it(bits: int) -> None:
    pair = GatewayKeyPair.generate(bits, reuse=True)
    secret = b"SECRET-\xff\xfe-SECRET"
    out = segmented_by_hand(pair, [secret]) if bits == 1024 else hybrid_by_hand(pair, secret)
    with pytest.raises(GatewayDecryptError, match="UTF-8") as caught:
        pair.decrypt(out)
    assert_no_secret(caught.value, "SECRET")
    assert caught.value.__context__ is None


@pytest.mark.parametrize(
    "garbage",
    ["", "not base64!", "AAAA AAAA", "AAA", "ä" * 400, "A" * 344, "A" * 348, "A" * 344 + "AAA=", "A" * 1200],
    ids=["empty", "bad_chars", "whitespace", "bad_padding", "non_ascii", "a344", "a348", "a344_pad", "a1200"],
)
def test_malformed_input_is_refused(pair: GatewayKeyPair, garbage: str) -> None:
    with pytest.raises(GatewayDecryptError):
        pair.decrypt(garbage)


# --- public key validation --------------------------------------------------------------------------


def _b64_int(value: int, length: int | None = None) -> str:
    return b64(value.to_bytes(length or (value.bit_length() + 7) // 8, "big"))


ODD_1024 = (1 << 1023) + 1
BAD_KEYS: dict[str, object] = {
    "not_an_object": "AQAB",
    "none": None,
    "list": ["AQAB", _b64_int(ODD_1024)],
    "missing_modulus": {"exponent": "AQAB"},
    "missing_exponent": {"modulus": _b64_int(ODD_1024)},
    "empty_modulus": {"exponent": "AQAB", "modulus": ""},
    "empty_exponent": {"exponent": "", "modulus": _b64_int(ODD_1024)},
    "modulus_not_a_string": {"exponent": "AQAB", "modulus": ODD_1024},
    "modulus_not_base64": {"exponent": "AQAB", "modulus": "o6j2....cLk="},
    "exponent_bad_padding": {"exponent": "AQA", "modulus": _b64_int(ODD_1024)},
    "modulus_too_short": {"exponent": "AQAB", "modulus": _b64_int((1 << 511) + 1)},
    "modulus_just_short": {"exponent": "AQAB", "modulus": _b64_int((1 << 1015) + 1)},
    "modulus_too_long": {"exponent": "AQAB", "modulus": _b64_int((1 << (1025 * 8 - 1)) + 1)},
    "modulus_between_schemes": {"exponent": "AQAB", "modulus": _b64_int((1 << (150 * 8 - 1)) + 1)},
    "modulus_even": {"exponent": "AQAB", "modulus": _b64_int(1 << 1023)},
    "exponent_even": {"exponent": "AQAA", "modulus": _b64_int(ODD_1024)},  # 65536
    "exponent_one": {"exponent": "AQ==", "modulus": _b64_int(ODD_1024)},
    "exponent_zero_bytes": {"exponent": "AAAA", "modulus": _b64_int(ODD_1024)},
    "exponent_not_below_modulus": {"exponent": _b64_int(ODD_1024 + 2), "modulus": _b64_int(ODD_1024)},
}


@pytest.mark.parametrize("obj", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_from_api_rejects_unusable_public_keys(obj: object) -> None:
    with pytest.raises(GatewayKeyError, match="publicKey"):
        GatewayPublicKey.from_api(obj)


def test_gateway_key_error_is_a_value_error() -> None:
    assert issubclass(GatewayKeyError, ValueError)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(GatewayKeyError):
        GatewayPublicKey(exponent="AQAA", modulus=_b64_int(ODD_1024))


def test_from_api_ignores_extra_fields_and_a_leading_zero_byte(pair_1024: GatewayKeyPair) -> None:
    shown = pair_1024.public_key_json()
    n = base64.b64decode(shown["modulus"])
    key = GatewayPublicKey.from_api({**shown, "modulus": b64(b"\x00" + n), "kid": "ignored"})
    assert key.modulus_bytes == 128
    assert pair_1024.decrypt(encrypt_credentials(LONG_TEXT, key)) == LONG_TEXT


# --- no plaintext in errors ---------------------------------------------------------------------


def test_unencodable_plaintext_is_refused_without_leaking_it(pair: GatewayKeyPair) -> None:
    secret = "SECRET-p\u00e4ss-\ud800-SECRET"  # a lone surrogate cannot be UTF-8 encoded
    with pytest.raises(CredentialEncryptionError, match="UTF-8") as caught:
        encrypt_credentials(secret, public(pair))
    assert_no_secret(caught.value, "SECRET")
    assert caught.value.__context__ is None


def test_empty_plaintext_is_refused(pair: GatewayKeyPair) -> None:
    with pytest.raises(CredentialEncryptionError, match="empty"):
        encrypt_credentials("", public(pair))


def test_no_error_message_contains_the_plaintext(pair: GatewayKeyPair) -> None:
    secret = "SECRET-pässwörd€😀-SECRET"
    key = public(pair)
    if pair.private_key.key_size > 1024:
        with pytest.raises(CredentialEncryptionError) as caught:
            encrypt_credentials(secret, key, rand=lambda n: b"")
        assert_no_secret(caught.value, secret)
    with pytest.raises(CredentialEncryptionError) as unencodable:
        encrypt_credentials(secret + "\ud800", key)
    assert_no_secret(unencodable.value, secret)

    out = encrypt_credentials(secret, key)
    k = pair.private_key.key_size // 8
    if k == 128:
        raw = base64.b64decode(out, validate=True)
        tampered = [b64(flip(raw, index)) for index in (0, len(raw) // 2, len(raw) - 1)]
    else:
        wrapped, blob = split_hybrid(out, k)
        tampered = [b64(flip(wrapped, 0)) + b64(blob), b64(wrapped) + b64(flip(blob, len(blob) - 1))]
    tampered += [out[:-4], out + "A", out[1:]]
    for bad in tampered:
        with pytest.raises(GatewayDecryptError) as refused:
            pair.decrypt(bad)
        assert_no_secret(refused.value, "SECRET")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"exponent": "AQAB", "modulus": ""}, "publicKey.modulus must be a non-empty base64 string"),
        (
            {"exponent": "", "modulus": _b64_int(ODD_1024)},
            "publicKey.exponent must be a non-empty base64 string",
        ),
        ({"exponent": "AQAB", "modulus": 1024}, "publicKey.modulus must be a non-empty base64 string"),
        ({"exponent": "AQAB"}, "publicKey.modulus is missing"),
        ({"exponent": "AQAB", "modulus": "not base64!"}, "publicKey.modulus is not valid base64"),
        ({"exponent": "AQ*B", "modulus": _b64_int(ODD_1024)}, "publicKey.exponent is not valid base64"),
    ],
    ids=["empty-modulus", "empty-exponent", "number", "missing", "modulus-not-base64", "exponent-not-base64"],
)
def test_an_unusable_public_key_is_refused_naming_the_field_and_the_fault(obj: object, message: str) -> None:
    """What an operator reads when Power BI hands out a key the product cannot use."""
    with pytest.raises(GatewayKeyError) as refused:
        GatewayPublicKey.from_api(obj)
    assert str(refused.value) == message
