"""AES-256-GCM record encryption and per-recipient key wrapping.

A record (say, a prescription) is encrypted under its own random 256-bit key. The key is
wrapped separately for each authorised party with ECDH P-256 (an ephemeral key against
the recipient's certificate key) + HKDF-SHA256 + AES-256-GCM.

Layouts (all documented, no pickle):
* ciphertext blob = nonce (12 bytes) || AES-GCM ciphertext-and-tag
* wrapped key = version byte 0x01 || ephemeral public key (65 bytes, uncompressed X9.62)
  || nonce (12 bytes) || AES-GCM(wrapping key, record key, aad=context) (48 bytes)
  where wrapping key = HKDF-SHA256(ECDH secret, salt=ephemeral public key,
  info=b"rxchain.v1.keywrap" || context, 32 bytes)
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
_WRAP_VERSION = b"\x01"
_POINT_BYTES = 65
_INFO = b"rxchain.v1.keywrap"


class DecryptionError(Exception):
    """Ciphertext, tag, key or associated data do not match."""


def new_record_key() -> bytes:
    """A fresh random AES-256 key."""
    return AESGCM.generate_key(bit_length=256)


def encrypt(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """AES-256-GCM encrypt; returns nonce || ciphertext-and-tag.

    The 96-bit nonce is always fresh from the OS CSPRNG: callers cannot supply one (a nonce
    used twice under one key reveals the XOR of the plaintexts and the GHASH key). A record
    key encrypts a handful of messages (content, notes), far below the random-nonce bound."""
    if len(key) != KEY_BYTES:
        raise ValueError("record key must be 32 bytes")
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    """Inverse of :func:`encrypt`; raises :class:`DecryptionError` on any mismatch."""
    if len(key) != KEY_BYTES or len(blob) < NONCE_BYTES + 16:
        raise DecryptionError("malformed key or ciphertext")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except Exception as exc:  # cryptography raises InvalidTag
        raise DecryptionError("authentication failed") from exc


def _wrapping_key(shared: bytes, eph_point: bytes, context: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=eph_point, info=_INFO + context
    ).derive(shared)


def wrap_key(recipient: ec.EllipticCurvePublicKey, record_key: bytes, context: bytes) -> bytes:
    """Wrap ``record_key`` so only the holder of ``recipient``'s private key can unwrap it.

    ValueError unless ``record_key`` is a 32-byte key and ``recipient`` a P-256 key (the
    layout above has room for nothing else: :func:`unwrap_key` would refuse the result)."""
    if len(record_key) != KEY_BYTES:
        raise ValueError("record key must be 32 bytes")
    if not isinstance(recipient, ec.EllipticCurvePublicKey) or recipient.curve.name != "secp256r1":
        raise ValueError("recipient key must be a P-256 public key")
    eph = ec.generate_private_key(ec.SECP256R1())
    eph_point = eph.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    shared = eph.exchange(ec.ECDH(), recipient)
    wkey = _wrapping_key(shared, eph_point, context)
    nonce = os.urandom(NONCE_BYTES)
    return _WRAP_VERSION + eph_point + nonce + AESGCM(wkey).encrypt(nonce, record_key, context)


def unwrap_key(private_key: ec.EllipticCurvePrivateKey, wrapped: bytes, context: bytes) -> bytes:
    """Unwrap a key made by :func:`wrap_key`; raises :class:`DecryptionError` if not ours."""
    if len(wrapped) != 1 + _POINT_BYTES + NONCE_BYTES + KEY_BYTES + 16 or wrapped[:1] != _WRAP_VERSION:
        raise DecryptionError("malformed wrapped key")
    eph_point = wrapped[1 : 1 + _POINT_BYTES]
    nonce = wrapped[1 + _POINT_BYTES : 1 + _POINT_BYTES + NONCE_BYTES]
    body = wrapped[1 + _POINT_BYTES + NONCE_BYTES :]
    try:
        eph_pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), eph_point)
        shared = private_key.exchange(ec.ECDH(), eph_pub)
        return AESGCM(_wrapping_key(shared, eph_point, context)).decrypt(nonce, body, context)
    except Exception as exc:
        raise DecryptionError("key unwrap failed: not wrapped for this key or tampered") from exc
