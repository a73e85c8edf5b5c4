"""SHA-256 and HMAC-SHA256 helpers (pure functions)."""

from __future__ import annotations

import hashlib
import hmac


def sha256(data: bytes) -> bytes:
    """SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def hmac_sha256_hex(key: bytes, data: bytes) -> str:
    """Lower-case hex HMAC-SHA256 (used for patient pseudonyms under the consortium secret)."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()
