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


def patient_binding_hex(secret: bytes, org: str, cert_name: str) -> str:
    """A patient certificate's binding, all her device needs to prove it is the enrolled one:
    ``hex(HMAC-SHA256(consortium secret, "patient-cert|" + org + "|" + cert_name))``."""
    return hmac_sha256_hex(secret, f"patient-cert|{org}|{cert_name}".encode())
