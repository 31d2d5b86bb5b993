"""Encrypt data source credentials for a Power BI on-premises gateway.

``PATCH /gateways/{gatewayId}/datasources/{datasourceId}`` takes ``credentialDetails.credentials``
as a string which, for an on-premises gateway, must be encrypted with the gateway's RSA public
key (``GET /gateways/{id}`` -> ``publicKey``) and sent with ``encryptionAlgorithm: "RSA-OAEP"``.
The gateway accepts one of two schemes, chosen by the size of its modulus (as Microsoft's .NET
SDK does):

* **Segmented** (1024-bit modulus, exactly 128 bytes): the UTF-8 plaintext is cut into 85-byte
  segments, each encrypted with RSA-OAEP (SHA-1, MGF1-SHA-1, empty label); the 128-byte blocks
  are concatenated and base64-encoded once. RSA alone cannot carry more than
  ``k - 2*hLen - 2`` bytes (86 here); 85 is what the SDK uses, so that is what we use.
* **Hybrid** (any larger modulus): a fresh AES-256 key and HMAC-SHA256 key protect the
  plaintext (AES-256-CBC, PKCS7, random IV, encrypt-then-MAC); only the 98-byte key blob
  ``[0,1] + aesKey + macKey`` is RSA-OAEP (SHA-256) encrypted. The result is
  ``base64(rsa(keys)) + base64([0,0] + tag + iv + ct)``; the gateway splits it again at
  ``4*ceil(k/3)`` characters because the first part's length follows from the modulus size.

RSA-OAEP itself is ``cryptography``'s (OpenSSL's): no padding scheme is hand-rolled here. The
symmetric material (AES key, HMAC key, IV) comes from the ``rand`` argument, ``os.urandom`` by
default, so tests can pin it; the OAEP seeds come from OpenSSL's own generator.

Nothing here ever puts the plaintext (or any derived secret) into an exception message, and no
exception raised here chains to one that carries it.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, hmac, padding
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "CredentialEncryptionError",
    "GatewayKeyError",
    "GatewayPublicKey",
    "encrypt_credentials",
]

# --- Segmented scheme (1024-bit gateway keys) ---------------------------------------------------
SEGMENTED_MODULUS_BYTES = 128
"""A modulus of exactly this many bytes selects the segmented scheme."""
SEGMENT_BYTES = 85
"""Plaintext bytes per RSA block; the SDK's value, one below the OAEP-SHA1 maximum of 86."""

# --- Hybrid scheme (larger gateway keys) --------------------------------------------------------
AES_KEY_BYTES = 32  # AES-256
HMAC_KEY_BYTES = 64  # HMAC-SHA256 key, one SHA-256 block
IV_BYTES = 16  # one AES block
TAG_BYTES = 32  # HMAC-SHA256 output
KEY_BLOB_HEADER = b"\x00\x01"
"""Prefix of the RSA-wrapped key blob ``header + aesKey + macKey``."""
CIPHERTEXT_HEADER = b"\x00\x00"
"""Prefix of the symmetric blob (AES-CBC-PKCS7, HMAC-SHA256); also covered by the tag."""
KEY_BLOB_BYTES = len(KEY_BLOB_HEADER) + AES_KEY_BYTES + HMAC_KEY_BYTES  # 98

# --- Accepted key sizes -------------------------------------------------------------------------
MIN_MODULUS_BYTES = SEGMENTED_MODULUS_BYTES
MAX_MODULUS_BYTES = 1024  # 8192-bit
MIN_HYBRID_MODULUS_BYTES = KEY_BLOB_BYTES + 2 * hashes.SHA256.digest_size + 2  # 164
"""The smallest modulus whose OAEP-SHA256 capacity holds the 98-byte key blob."""

Rand = Callable[[int], bytes]
"""A source of ``n`` cryptographically random bytes (``os.urandom`` outside tests)."""


class GatewayKeyError(ValueError):
    """The gateway's ``publicKey`` is missing, malformed or unusable."""


class CredentialEncryptionError(ValueError):
    """The credentials could not be encrypted (never says what they were)."""


def _decode_base64(value: str, field: str) -> bytes:
    """Strict standard base64 (padding required, no whitespace), as the Power BI API emits."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayKeyError(f"publicKey.{field} is not valid base64") from None


def _unsigned(value: str, field: str) -> int:
    """Decode a non-empty base64 string holding a big-endian unsigned integer."""
    if not isinstance(value, str) or not value:
        raise GatewayKeyError(f"publicKey.{field} must be a non-empty base64 string")
    # Strict base64 of a non-empty string holds at least one byte; big-endian is the default order.
    return int.from_bytes(_decode_base64(value, field))


@dataclass(frozen=True)
class GatewayPublicKey:
    """A gateway's RSA public key exactly as ``GET /gateways/{id}`` returns it (base64 fields).

    Construction validates the key, so any instance can be used by :func:`encrypt_credentials`.
    The modulus size is the length of the integer's minimal big-endian form: a leading zero
    byte (as some serializers add to keep the number positive) does not change the scheme.
    """

    exponent: str
    modulus: str

    def __post_init__(self) -> None:
        modulus, exponent = _numbers(self)
        size = _byte_length(modulus)
        if not MIN_MODULUS_BYTES <= size <= MAX_MODULUS_BYTES:
            raise GatewayKeyError(
                f"publicKey.modulus is {size} bytes; expected {MIN_MODULUS_BYTES} to "
                f"{MAX_MODULUS_BYTES} (1024- to 8192-bit RSA)"
            )
        if SEGMENTED_MODULUS_BYTES < size < MIN_HYBRID_MODULUS_BYTES:
            raise GatewayKeyError(
                f"publicKey.modulus is {size} bytes; neither scheme fits (exactly "
                f"{SEGMENTED_MODULUS_BYTES}, or at least {MIN_HYBRID_MODULUS_BYTES})"
            )
        if modulus % 2 == 0:
            raise GatewayKeyError("publicKey.modulus is even, so it is not an RSA modulus")
        if exponent < 3 or exponent % 2 == 0 or exponent >= modulus:
            raise GatewayKeyError("publicKey.exponent must be an odd integer >= 3 and below the modulus")

    @classmethod
    def from_api(cls, obj: object) -> GatewayPublicKey:
        """Validate the ``publicKey`` object of a ``GET /gateways/{id}`` response.

        Raises :class:`GatewayKeyError` naming what is wrong: not an object, a missing, empty
        or non-string field, invalid base64, an unsupported modulus size, or an exponent that
        is not an odd integer >= 3.
        """
        if not isinstance(obj, Mapping):
            raise GatewayKeyError("publicKey must be an object with 'exponent' and 'modulus'")
        fields: dict[str, str] = {}
        for name in ("exponent", "modulus"):
            value = obj.get(name)
            if value is None:
                raise GatewayKeyError(f"publicKey.{name} is missing")
            if not isinstance(value, str) or not value:
                raise GatewayKeyError(f"publicKey.{name} must be a non-empty base64 string")
            fields[name] = value
        return cls(exponent=fields["exponent"], modulus=fields["modulus"])

    @property
    def modulus_bytes(self) -> int:
        """The modulus length ``k`` in bytes; 128 selects the segmented scheme."""
        return _byte_length(_numbers(self)[0])


def encrypt_credentials(plaintext: str, key: GatewayPublicKey, *, rand: Rand = os.urandom) -> str:
    """Encrypt ``plaintext`` for the gateway owning ``key``; the result is ASCII base64.

    A 128-byte modulus selects the segmented scheme, anything larger the hybrid one (see the
    module docstring). ``rand`` supplies every random byte: in the hybrid scheme it is called
    for the AES key (32), the HMAC key (64), the IV (16) and the OAEP seed (32), in that order;
    in the segmented scheme once per segment for its OAEP seed (20).

    Raises :class:`CredentialEncryptionError` for an empty plaintext (a gateway has nothing to
    do with one, and the segmented scheme would encode it as an empty string), for text that is
    not encodable as UTF-8 (lone surrogates), or when ``rand`` misbehaves.
    """
    if not isinstance(plaintext, str):
        raise TypeError("plaintext must be a str")
    data = _utf8(plaintext)
    if not data:
        raise CredentialEncryptionError("refusing to encrypt empty credentials")
    if key.modulus_bytes == SEGMENTED_MODULUS_BYTES:
        return _encrypt_segmented(data, key)
    return _encrypt_hybrid(data, key, rand)


def _encrypt_segmented(data: bytes, key: GatewayPublicKey) -> str:
    # SHA-1 is what 1024-bit gateways decrypt with; inside OAEP it needs no collision resistance.
    blocks = [
        _rsa_oaep_encrypt(data[offset : offset + SEGMENT_BYTES], key, hashes.SHA1())  # noqa: S303
        for offset in range(0, len(data), SEGMENT_BYTES)
    ]
    return base64.b64encode(b"".join(blocks)).decode()


def _encrypt_hybrid(data: bytes, key: GatewayPublicKey, rand: Rand) -> str:
    aes_key = _random(rand, AES_KEY_BYTES)
    mac_key = _random(rand, HMAC_KEY_BYTES)
    iv = _random(rand, IV_BYTES)

    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()

    mac = hmac.HMAC(mac_key, hashes.SHA256())
    mac.update(CIPHERTEXT_HEADER + iv + ciphertext)
    tag = mac.finalize()

    wrapped = _rsa_oaep_encrypt(KEY_BLOB_HEADER + aes_key + mac_key, key, hashes.SHA256())
    blob = CIPHERTEXT_HEADER + tag + iv + ciphertext
    return (base64.b64encode(wrapped) + base64.b64encode(blob)).decode()


def _rsa_oaep_encrypt(message: bytes, key: GatewayPublicKey, algorithm: hashes.HashAlgorithm) -> bytes:
    """RSA-OAEP with MGF1 over ``algorithm`` and an empty label, by ``cryptography``."""
    modulus, exponent = _numbers(key)
    public_key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
    oaep = asym_padding.OAEP(mgf=asym_padding.MGF1(algorithm), algorithm=algorithm, label=None)
    return public_key.encrypt(message, oaep)


def _random(rand: Rand, count: int) -> bytes:
    """Draw exactly ``count`` bytes, refusing a source that returns anything else."""
    value = rand(count)
    if not isinstance(value, bytes) or len(value) != count:
        raise CredentialEncryptionError(f"random source did not return {count} bytes")
    return value


def _utf8(plaintext: str) -> bytes:
    """UTF-8 encode without letting the plaintext escape in an error.

    ``UnicodeEncodeError`` carries the whole string in ``.object`` and quotes the offending
    character, so the replacement error is raised outside the ``except`` block: it then has
    neither a ``__cause__`` nor a ``__context__`` pointing back at it.
    """
    try:
        return plaintext.encode()
    except UnicodeEncodeError:
        pass
    raise CredentialEncryptionError("credentials are not encodable as UTF-8")


def _numbers(key: GatewayPublicKey) -> tuple[int, int]:
    """``(modulus, exponent)`` of a key, refusing a malformed field (modulus first)."""
    return _unsigned(key.modulus, "modulus"), _unsigned(key.exponent, "exponent")


def _byte_length(value: int) -> int:
    return (value.bit_length() + 7) // 8
