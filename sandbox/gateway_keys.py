"""The gateway's side of credential encryption: a key pair and a strict decryptor.

An on-premises gateway publishes its RSA public key through ``GET /gateways/{id}`` and decrypts
the ``credentialDetails.credentials`` that clients encrypt with it. This module stands in for
that: :class:`GatewayKeyPair` holds a real private key, shows its public half exactly as the
Power BI API does, and inverts both encryption schemes:

* 1024-bit keys: base64 of concatenated 128-byte RSA-OAEP (SHA-1) blocks, each holding an
  85-byte plaintext segment (the last one 1 to 85 bytes).
* larger keys: ``base64(RSA-OAEP-SHA256([0,1] + aesKey32 + macKey64))`` immediately followed by
  ``base64([0,0] + HMAC-SHA256 tag + IV16 + AES-256-CBC-PKCS7 ciphertext)``; the tag covers
  ``[0,0] + IV + ciphertext`` and the first part is ``4*ceil(k/3)`` characters for a ``k``-byte
  modulus.

It is deliberately strict, so that a client bug shows up as a refusal rather than as a
password that silently differs: anything malformed raises :class:`GatewayDecryptError` with a
short reason that never contains key material or plaintext. It uses ``cryptography``'s own
OAEP, HMAC and AES and imports nothing from ``remediation``: it is the independent other side.
"""

from __future__ import annotations

import base64
import binascii
import threading

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["GatewayDecryptError", "GatewayKeyPair"]

PUBLIC_EXPONENT = 65537
SEGMENTED_MODULUS_BYTES = 128  # 1024-bit keys use the segmented scheme
SEGMENT_BYTES = 85  # plaintext bytes per RSA block in the segmented scheme
AES_KEY_BYTES = 32
HMAC_KEY_BYTES = 64
IV_BYTES = 16
TAG_BYTES = 32
AES_BLOCK_BYTES = 16
KEY_BLOB_HEADER = b"\x00\x01"
CIPHERTEXT_HEADER = b"\x00\x00"
KEY_BLOB_BYTES = len(KEY_BLOB_HEADER) + AES_KEY_BYTES + HMAC_KEY_BYTES  # 98
MIN_BLOB_BYTES = len(CIPHERTEXT_HEADER) + TAG_BYTES + IV_BYTES + AES_BLOCK_BYTES

_cache: dict[int, GatewayKeyPair] = {}
_cache_lock = threading.Lock()


class GatewayDecryptError(Exception):
    """The gateway refuses the credentials; the message says why, never what they were."""


class GatewayKeyPair:
    """A gateway's RSA key pair."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self.private_key = private_key

    @classmethod
    def generate(cls, bits: int, *, reuse: bool = False) -> GatewayKeyPair:
        """A new key pair of ``bits`` bits with public exponent 65537.

        ``bits`` is 1024 (segmented scheme) or a multiple of 8 from 2048 up to 8192 (hybrid
        scheme). With ``reuse=True`` the first pair generated per size in this process is
        returned again; generating 4096-bit keys takes around a second, which test suites
        should pay once. Without it every call returns a fresh pair.
        """
        if not (bits == 1024 or (2048 <= bits <= 8192 and bits % 8 == 0)):
            raise ValueError(f"unsupported gateway key size: {bits} bits")
        if not reuse:
            return cls(rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=bits))
        with _cache_lock:
            pair = _cache.get(bits)
            if pair is None:
                key = rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=bits)
                pair = _cache[bits] = cls(key)
            return pair

    @property
    def modulus_bytes(self) -> int:
        """The modulus length ``k`` in bytes."""
        return (self.private_key.key_size + 7) // 8

    def public_key_json(self) -> dict[str, str]:
        """``{"exponent", "modulus"}`` as ``GET /gateways/{id}`` shows them.

        Each is the standard (padded) base64 of the big-endian unsigned integer with no leading
        zero bytes, so exponent 65537 is ``"AQAB"``.
        """
        numbers = self.private_key.public_key().public_numbers()
        return {"exponent": _b64_unsigned(numbers.e), "modulus": _b64_unsigned(numbers.n)}

    def decrypt(self, ciphertext: str) -> str:
        """Recover the plaintext, or raise :class:`GatewayDecryptError`."""
        if not isinstance(ciphertext, str):
            raise GatewayDecryptError("credentials must be a string")
        if self.modulus_bytes == SEGMENTED_MODULUS_BYTES:
            data = self._decrypt_segmented(ciphertext)
        else:
            data = self._decrypt_hybrid(ciphertext)
        return _utf8(data)

    def _decrypt_segmented(self, ciphertext: str) -> bytes:
        raw = _b64decode(ciphertext, "credentials")
        k = self.modulus_bytes
        if not raw or len(raw) % k:
            raise GatewayDecryptError(f"credentials are not a non-empty multiple of {k} bytes")
        # SHA-1 is what the segmented scheme is defined with.
        oaep = _oaep(hashes.SHA1())  # noqa: S303
        segments = [self._rsa_decrypt(raw[i : i + k], oaep) for i in range(0, len(raw), k)]
        if any(len(segment) != SEGMENT_BYTES for segment in segments[:-1]):
            raise GatewayDecryptError(f"a segment other than the last is not {SEGMENT_BYTES} bytes")
        if not 1 <= len(segments[-1]) <= SEGMENT_BYTES:
            raise GatewayDecryptError(f"the last segment is not 1 to {SEGMENT_BYTES} bytes")
        return b"".join(segments)

    def _decrypt_hybrid(self, ciphertext: str) -> bytes:
        k = self.modulus_bytes
        split = 4 * ((k + 2) // 3)  # base64 length of k bytes
        if len(ciphertext) <= split:
            raise GatewayDecryptError("credentials are too short")
        wrapped = _b64decode(ciphertext[:split], "wrapped key")
        if len(wrapped) != k:
            raise GatewayDecryptError(f"wrapped key is not {k} bytes")
        keys = self._rsa_decrypt(wrapped, _oaep(hashes.SHA256()))
        if len(keys) != KEY_BLOB_BYTES:
            raise GatewayDecryptError(f"key blob is not {KEY_BLOB_BYTES} bytes")
        if keys[: len(KEY_BLOB_HEADER)] != KEY_BLOB_HEADER:
            raise GatewayDecryptError("key blob header is not [0, 1]")
        aes_key = keys[len(KEY_BLOB_HEADER) : len(KEY_BLOB_HEADER) + AES_KEY_BYTES]
        mac_key = keys[len(KEY_BLOB_HEADER) + AES_KEY_BYTES :]

        blob = _b64decode(ciphertext[split:], "ciphertext")
        if len(blob) < MIN_BLOB_BYTES or (len(blob) - MIN_BLOB_BYTES) % AES_BLOCK_BYTES:
            raise GatewayDecryptError("ciphertext blob has an impossible length")
        header, rest = blob[: len(CIPHERTEXT_HEADER)], blob[len(CIPHERTEXT_HEADER) :]
        if header != CIPHERTEXT_HEADER:
            raise GatewayDecryptError("ciphertext header is not [0, 0]")
        tag, iv, body = rest[:TAG_BYTES], rest[TAG_BYTES : TAG_BYTES + IV_BYTES], rest[TAG_BYTES + IV_BYTES :]

        mac = hmac.HMAC(mac_key, hashes.SHA256())
        mac.update(header + iv + body)
        try:
            mac.verify(tag)  # constant-time comparison
        except InvalidSignature:
            raise GatewayDecryptError("HMAC does not match") from None

        decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
        padded = decryptor.update(body) + decryptor.finalize()
        unpadder = sym_padding.PKCS7(algorithms.AES.block_size).unpadder()
        try:
            return unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            raise GatewayDecryptError("bad PKCS7 padding") from None

    def _rsa_decrypt(self, block: bytes, oaep: padding.OAEP) -> bytes:
        try:
            return self.private_key.decrypt(block, oaep)
        except ValueError:
            raise GatewayDecryptError("RSA-OAEP decryption failed") from None


def _oaep(algorithm: hashes.HashAlgorithm) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(algorithm=algorithm), algorithm=algorithm, label=None)


def _b64_unsigned(value: int) -> str:
    return base64.b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).decode("ascii")


def _b64decode(value: str, what: str) -> bytes:
    """Strict standard base64: padding required, no whitespace or other characters."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayDecryptError(f"{what} is not valid base64") from None


def _utf8(data: bytes) -> str:
    """Decode outside the ``except`` block: ``UnicodeDecodeError`` carries the plaintext bytes."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    raise GatewayDecryptError("plaintext is not valid UTF-8")
