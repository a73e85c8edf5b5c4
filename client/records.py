"""Encrypted prescription records, client side.

What goes on the ledger (see contracts/prescription.py): the ciphertext of the content,
a salted commitment ``sha256_hex(salt + canonical_json(content))``, the patient's
pseudonym, and the per-prescription AES-256-GCM key wrapped for each authorised party.
The insurer gets the *claim subset* ``{"diagnosis", "lines": [{"code", "qty"}], "rx_id"}``
under its own key and commitment.

Layouts (base64 strings on the ledger):

* content ciphertext = ``aead.encrypt(K, canonical_json({"content": C, "salt": S}),
  aad=b"rxchain.v1.rx|" + rx_id + b"|content")``; the salt travels inside the ciphertext
  because the dispensing pharmacy must present (content, salt) again as transient input;
* claim ciphertext = the same with ``{"claim": ..., "claim_salt": ...}`` and ``|claim``;
* wrapped key = ``aead.wrap_key(recipient, K, context=b"rxchain.v1.rx|" + rx_id + b"|"
  + kind)`` where kind is ``content`` or ``claim``; recipients are the patient's own
  certificate key (party ``patient``) and organisations' records certificates.

Patient pseudonym = ``HMAC-SHA256(consortium secret, ID number)`` (hex); diagnosis tags use
``dx_key = HMAC-SHA256(consortium secret, b"rxchain.v1.dx-key")`` (hex) as transient input.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from client.errors import NoKeyGrant, RxClientError
from node.crypto import aead
from node.crypto.canonical import canonical_json

SALT_BYTES = 32
CONTENT = "content"
CLAIM = "claim"

Random = Callable[[int], bytes]


def pseudonym(secret: bytes, id_number: str) -> str:
    """The on-ledger patient identifier: HMAC-SHA256(consortium secret, ID number), hex."""
    return hmac.new(secret, id_number.strip().upper().encode(), hashlib.sha256).hexdigest()


def dx_key(secret: bytes) -> str:
    """The key (hex) under which diagnosis tags are computed (transient input only)."""
    return hmac.new(secret, b"rxchain.v1.dx-key", hashlib.sha256).hexdigest()


def commitment(salt: str, value: Any) -> str:
    """``sha256_hex(salt + canonical_json(value))`` as the contracts compute it."""
    return hashlib.sha256(salt.encode() + canonical_json(value)).hexdigest()


def claim_subset(rx_id: str, content: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a prescription the insurer needs to settle it."""
    return {
        "diagnosis": content["diagnosis"],
        "lines": [{"code": ln["code"], "qty": ln["qty"]} for ln in content["drugs"]],
        "rx_id": rx_id,
    }


def _aad(rx_id: str, kind: str) -> bytes:
    return b"rxchain.v1.rx|" + rx_id.encode() + b"|" + kind.encode()


def b64(data: bytes) -> str:
    """Standard base64 text."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Inverse of :func:`b64`."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise RxClientError("BAD_PAYLOAD", "not base64") from exc


def wrap_for(public_key: ec.EllipticCurvePublicKey, record_key: bytes, rx_id: str,
             kind: str = CONTENT) -> str:
    """A record key wrapped for one recipient (base64)."""
    return b64(aead.wrap_key(public_key, record_key, _aad(rx_id, kind)))


@dataclass(frozen=True)
class SealedPrescription:
    """Everything ``prescription.issue`` needs: on-ledger args and transient inputs."""

    rx_id: str
    content_key: bytes
    claim_key: bytes
    args: dict[str, Any]
    transient: dict[str, Any]


def seal_prescription(
    rx_id: str,
    content: Mapping[str, Any],
    recipients: Mapping[str, ec.EllipticCurvePublicKey],
    insurer: str,
    insurer_key: ec.EllipticCurvePublicKey,
    pharmacy: str,
    dx_key_hex: str,
    rand: Random = os.urandom,
) -> SealedPrescription:
    """Encrypt a prescription and wrap its keys (recipients: party -> public key)."""
    content = dict(content)
    salt = rand(SALT_BYTES).hex()
    claim_salt = rand(SALT_BYTES).hex()
    claim = claim_subset(rx_id, content)
    key, ckey = aead.new_record_key(), aead.new_record_key()
    body = canonical_json({"content": content, "salt": salt})
    claim_body = canonical_json({"claim": claim, "claim_salt": claim_salt})
    args = {
        "rx_id": rx_id,
        "patient": content["patient"],
        "ciphertext": b64(aead.encrypt(key, body, _aad(rx_id, CONTENT))),
        "commitment": commitment(salt, content),
        "keys": {party: wrap_for(pub, key, rx_id, CONTENT) for party, pub in recipients.items()},
        "claim_ciphertext": b64(aead.encrypt(ckey, claim_body, _aad(rx_id, CLAIM))),
        "claim_commitment": commitment(claim_salt, claim),
        "claim_keys": {insurer: wrap_for(insurer_key, ckey, rx_id, CLAIM)},
        "pharmacy": pharmacy,
    }
    transient = {"content": content, "salt": salt, "claim_salt": claim_salt, "dx_key": dx_key_hex}
    return SealedPrescription(rx_id, key, ckey, args, transient)


@dataclass(frozen=True)
class OpenedRecord:
    """A decrypted record: content (or claim subset), its salt and the record key."""

    rx_id: str
    kind: str  # content | claim
    party: str
    body: dict[str, Any]
    salt: str
    record_key: bytes


def open_grant(grant: Mapping[str, Any], keys: list[ec.EllipticCurvePrivateKey]) -> OpenedRecord:
    """Decrypt the answer of ``prescription.get_key`` with one of the caller's keys.

    Raises :class:`NoKeyGrant` when the ledger refused the key or none of ``keys`` unwraps
    it, and HASH_MISMATCH when the plaintext does not match the on-ledger commitment.
    """
    if "error" in grant:
        raise NoKeyGrant(str(grant.get("message", "no key grant")))
    rx_id = str(grant["rx_id"])
    kind = CLAIM if grant.get("kind") == "insurer" else CONTENT
    wrapped = unb64(str(grant["wrapped_key"]))
    record_key = None
    for k in keys:
        try:
            record_key = aead.unwrap_key(k, wrapped, _aad(rx_id, kind))
            break
        except aead.DecryptionError:
            continue
    if record_key is None:
        raise NoKeyGrant("the wrapped key does not open with any of the caller's keys")
    try:
        plain = aead.decrypt(record_key, unb64(str(grant["ciphertext"])), _aad(rx_id, kind))
    except aead.DecryptionError as exc:
        raise RxClientError("HASH_MISMATCH", "ciphertext does not authenticate") from exc
    doc = json.loads(plain)
    body_key, salt_key = (CLAIM, "claim_salt") if kind == CLAIM else (CONTENT, "salt")
    body, salt = doc[body_key], doc[salt_key]
    if commitment(salt, body) != grant.get("commitment"):
        raise RxClientError("HASH_MISMATCH", "decrypted record does not match its commitment")
    return OpenedRecord(rx_id, kind, str(grant.get("party", "")), body, salt, record_key)
