"""Encrypted prescription records, client side (exactly as contracts/README.md specifies).

What goes on the ledger: the ciphertext of the content, a salted commitment
``sha256_hex(salt + canonical_json(content))``, the patient's pseudonym, and the
per-prescription AES-256-GCM key wrapped for each authorised party. The insurer gets the
*claim subset* ``{"diagnosis", "lines": [{"code", "qty"}], "rx_id"}`` under its own key and
commitment.

Layouts (base64 strings on the ledger):

* content ciphertext = ``aead.encrypt(K, canonical_json({"content": C, "salt": S}),
  aad=rx_id)``; the salt travels inside the ciphertext because the dispensing pharmacy must
  present (content, salt) again as transient input;
* claim ciphertext = ``aead.encrypt(K', canonical_json({"claim": c, "salt": S'}), aad=rx_id)``;
* wrapped key = ``aead.wrap_key(recipient, K, context="rxchain/rx/{rx_id}/{party}")`` where
  party is ``patient`` (the patient's own certificate key) or an organisation id (its
  records certificate: issuing hospital, routed pharmacy, consent holders; the insurer
  receives K' only);
* note keys: notes (review, revoke) are encrypted under the record key until the patient
  withdraws a consent or the prescription is re-routed away from a pharmacy; each of these
  makes a fresh note key N_e (e = 1, 2, ..., at most MAX_NOTE_KEYS) wrapped for every
  remaining reader only, ``aead.wrap_key(recipient, N_e,
  context="rxchain/rx/{rx_id}/{party}/note/{e}")``, and every later note is under it, so a
  withdrawn party or a pharmacy routed away (which keep the keys they fetched) read none of
  them. A note records its key's number ``note_epoch`` (absent or 0: the record key, as
  every note of the previous release).

Patient pseudonym = ``hex(HMAC-SHA256(consortium secret, ID number))`` (ID number stripped and
upper-cased first); diagnosis tags use
``dx_key = hex(HMAC-SHA256(consortium secret, b"rxchain/dx-tag/v1"))`` as transient input;
a patient proves her certificate with ``patient_binding = hex(HMAC-SHA256(secret,
"patient-cert|" + org + "|" + name))`` and box trace codes are hashed on the ledger under
``trace_key = hex(HMAC-SHA256(secret, b"rxchain/trace-code/v1"))`` (both transient only).
The consortium secret is the 32 bytes whose hex is in ``HOME/consortium-secret``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from client.errors import KeyNotHeld, NoKeyGrant, RxClientError
from node.crypto import aead
from node.crypto.canonical import canonical_json
from node.crypto.hashing import patient_binding_hex

SALT_BYTES = 32
TRACE_KEY_LABEL = b"rxchain/trace-code/v1"
CONTENT = "content"
CLAIM = "claim"
MAX_NOTE_KEYS = 64  # note keys of one prescription (the prescription contract's bound)

Random = Callable[[int], bytes]


SECRET_BYTES = 32


def _secret(secret: bytes) -> bytes:
    """The consortium secret, refused unless it is the 32-byte key (an empty or short key
    would make every value below computable -- and ID numbers brute-forceable -- by anyone)."""
    if len(secret) != SECRET_BYTES:
        raise RxClientError("NO_SECRET", "this needs the consortium secret (HOME/consortium-secret, "
                            "32 bytes), which this client does not hold")
    return secret


def normalise_id_number(id_number: str) -> str:
    """The canonical form of an ID number: Unicode compatibility forms folded (NFKC: the
    full-width digits and ``Ｘ`` a Chinese input method types become ASCII), no surrounding
    whitespace, upper case (the check character of a resident ID is ``X``, never ``x``).
    One person, one pseudonym: without this, ``...001x``, ``...001X`` and ``５００...`` would be
    several patients with several deductibles and caps."""
    return unicodedata.normalize("NFKC", id_number).strip().upper()


def pseudonym(secret: bytes, id_number: str) -> str:
    """The on-ledger patient identifier: HMAC-SHA256(consortium secret, normalised ID number),
    hex (:func:`normalise_id_number`; canonical inputs give the same value as before)."""
    return hmac.new(_secret(secret), normalise_id_number(id_number).encode(), hashlib.sha256).hexdigest()


def dx_key(secret: bytes) -> str:
    """The key (hex) under which diagnosis tags are computed (transient input only)."""
    return hmac.new(_secret(secret), b"rxchain/dx-tag/v1", hashlib.sha256).hexdigest()


def patient_binding(secret: bytes, org: str, name: str) -> str:
    """Proof that a patient certificate (org, name) is the enrolled one (transient input):
    ``hex(HMAC-SHA256(secret, "patient-cert|" + org + "|" + name))``."""
    return patient_binding_hex(_secret(secret), org, name)


def trace_key(secret: bytes) -> str:
    """The consortium's key for box trace-code hashes (transient input of dispense)."""
    return hmac.new(_secret(secret), TRACE_KEY_LABEL, hashlib.sha256).hexdigest()


def trace_code_hash(trace_key_hex: str, code: str) -> str:
    """What the ledger records for a box trace code (``prescription._trace_hashes``):
    ``hex(HMAC-SHA256(trace_key, "trace|" + code))``."""
    return hmac.new(bytes.fromhex(trace_key_hex), ("trace|" + code).encode(), hashlib.sha256).hexdigest()


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


def _aad(rx_id: str) -> bytes:
    return rx_id.encode()


def wrap_context(rx_id: str, party: str) -> bytes:
    """Key-wrapping context of one party's grant."""
    return f"rxchain/rx/{rx_id}/{party}".encode()


def claim_wrap_context(rx_id: str, hospital: str) -> bytes:
    """Key-wrapping context of the issuing hospital's copy of the claim key (its grant's
    ``claim_wrapped_key``; its record key is wrapped under :func:`wrap_context`)."""
    return f"rxchain/rx/{rx_id}/{hospital}/claim".encode()


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
             party: str) -> str:
    """A record key wrapped for one party (``patient`` or an org id), base64."""
    return b64(aead.wrap_key(public_key, record_key, wrap_context(rx_id, party)))


def note_wrap_context(rx_id: str, party: str, epoch: int) -> bytes:
    """Key-wrapping context of one party's copy of note key ``epoch`` (1, 2, ...)."""
    return f"rxchain/rx/{rx_id}/{party}/note/{epoch}".encode()


def wrap_note_key(public_key: ec.EllipticCurvePublicKey, note_key: bytes, rx_id: str, party: str,
                  epoch: int) -> str:
    """Note key ``epoch`` wrapped for one party (``patient`` or an org id), base64."""
    return b64(aead.wrap_key(public_key, note_key, note_wrap_context(rx_id, party, epoch)))


def wrap_note_keys(public_key: ec.EllipticCurvePublicKey, opened: OpenedRecord, party: str) -> dict[str, str]:
    """Every note key ``opened`` holds (1..note_epoch) wrapped for ``party``: what a new
    reader (a consent, a routed pharmacy) needs to read the notes written so far. NoKeyGrant
    when one of them does not open for the caller."""
    out = {}
    for epoch in range(1, opened.note_epoch + 1):
        key = opened.note_keys.get(epoch)
        if key is None:
            raise NoKeyGrant(f"note key {epoch} of {opened.rx_id} does not open with the caller's keys")
        out[str(epoch)] = wrap_note_key(public_key, key, opened.rx_id, party, epoch)
    return out


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
    hospital: tuple[str, ec.EllipticCurvePublicKey] | None = None,
) -> SealedPrescription:
    """Encrypt a prescription and wrap its keys (recipients: party -> public key).
    ``hospital``: the issuing hospital and the key its copy of the claim key is wrapped for
    (under :func:`claim_wrap_context`), to hand the key to a later insurer of the patient -- the
    SDK's issue passes the issuing doctor's certificate key, never the hospital's records key,
    which its pharmacists hold too (contracts/README.md "Moving an account")."""
    content = dict(content)
    salt = rand(SALT_BYTES).hex()
    claim_salt = rand(SALT_BYTES).hex()
    claim = claim_subset(rx_id, content)
    key, ckey = aead.new_record_key(), aead.new_record_key()
    body = canonical_json({"content": content, "salt": salt})
    claim_body = canonical_json({"claim": claim, "salt": claim_salt})
    args = {
        "rx_id": rx_id,
        "patient": content["patient"],
        "ciphertext": b64(aead.encrypt(key, body, _aad(rx_id))),
        "commitment": commitment(salt, content),
        "keys": {party: wrap_for(pub, key, rx_id, party) for party, pub in recipients.items()},
        "claim_ciphertext": b64(aead.encrypt(ckey, claim_body, _aad(rx_id))),
        "claim_commitment": commitment(claim_salt, claim),
        "claim_keys": {insurer: wrap_for(insurer_key, ckey, rx_id, insurer)},
        "pharmacy": pharmacy,
    }
    if hospital is not None:
        args["claim_keys"][hospital[0]] = b64(aead.wrap_key(hospital[1], ckey, claim_wrap_context(rx_id, hospital[0])))
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
    note_epoch: int = 0  # the note key in force (0: the record key)
    note_keys: Mapping[int, bytes] = field(default_factory=dict)  # the caller's note keys that open
    readers: tuple[str, ...] | None = None  # the record key's holders (told to the patient and hospital)
    routed: str | None = None  # the routed pharmacy ("": none), told with the readers
    claim_key: bytes | None = None  # the issuing hospital's copy of the claim key, when it opens

    def note_key(self, epoch: int) -> bytes | None:
        """The key of a note written under note key ``epoch`` (0: the record key; a claim
        grant's key for the insurer's reversal notes sealed before they had a key of their own,
        client.notes.seal_insurer_note), None when the caller holds none."""
        if epoch == 0:
            return self.record_key
        return None if self.kind == CLAIM else self.note_keys.get(epoch)


def open_grant(grant: Mapping[str, Any], keys: list[ec.EllipticCurvePrivateKey]) -> OpenedRecord:
    """Decrypt the answer of ``prescription.get_key`` with one of the caller's keys.

    Raises :class:`NoKeyGrant` when the ledger refused the key, :class:`KeyNotHeld` (a
    NoKeyGrant, reason KEY_NOT_HELD) when none of ``keys`` unwraps it (each is tried: the
    wrapping does not name its key), and HASH_MISMATCH when the plaintext does not match the on-ledger commitment.
    """
    if "error" in grant:
        raise NoKeyGrant(str(grant.get("message", "no key grant")))
    missing = [f for f in ("rx_id", "wrapped_key", "ciphertext") if not isinstance(grant.get(f), str)]
    if missing:
        raise RxClientError("BAD_PAYLOAD", f"key grant without {', '.join(missing)}")
    rx_id = str(grant["rx_id"])
    kind = CLAIM if grant.get("kind") == "insurer" else CONTENT
    party = str(grant.get("party", ""))
    opened = _unwrap_any(keys, unb64(str(grant["wrapped_key"])), wrap_context(rx_id, party))
    if opened is None:
        hint = "" if party == "patient" else (
            f": a key wrapped for an earlier records certificate of {party} opens only with that "
            "certificate's key, which a wallet keeps in previous-records-keys/ after a rotation")
        raise KeyNotHeld(f"the key grant of {party or 'the caller'} to {rx_id} is wrapped for none of the "
                         f"caller's {len(keys)} keys{hint}")
    record_key, opener = opened
    note_keys = _note_keys(grant, [opener, *(k for k in keys if k is not opener)], rx_id, party)
    try:
        plain = aead.decrypt(record_key, unb64(str(grant["ciphertext"])), _aad(rx_id))
    except aead.DecryptionError as exc:
        raise RxClientError("HASH_MISMATCH", "ciphertext does not authenticate") from exc
    try:
        doc = json.loads(plain)
    except (ValueError, RecursionError) as exc:  # the author encrypted something else than the
        # documented layout (nested deeper than the decoder goes: RecursionError, a crash of the
        # reader -- INTERNAL, a FHIR 500 -- for a record any issuer can write)
        raise RxClientError("HASH_MISMATCH", "decrypted record is not JSON") from exc
    body = doc.get(kind) if isinstance(doc, dict) else None
    salt = doc.get("salt") if isinstance(doc, dict) else None
    if not isinstance(body, dict) or not isinstance(salt, str):
        raise RxClientError("HASH_MISMATCH", f"decrypted record is not {{{kind!r}: object, 'salt': text}}")
    try:
        ok = commitment(salt, body) == grant.get("commitment")
    except (TypeError, ValueError, RecursionError):  # no canonical form (a float, nested too deep)
        ok = False
    if not ok:
        raise RxClientError("HASH_MISMATCH", "decrypted record does not match its commitment")
    epoch = grant.get("note_epoch", 0)
    if type(epoch) is not int or epoch < 0:
        raise RxClientError("BAD_PAYLOAD", "key grant with a note_epoch that is no count")
    readers = grant.get("readers")
    names = tuple(str(r) for r in readers) if isinstance(readers, list) else None
    routed = grant.get("pharmacy")  # absent from a contract that makes no key on a re-route
    claim_key = None
    held = grant.get("claim_wrapped_key")
    if kind == CONTENT and isinstance(held, str):  # the issuing hospital's copy (grant_claim_key)
        try:
            got = _unwrap_any([opener, *(k for k in keys if k is not opener)], unb64(held),
                              claim_wrap_context(rx_id, party))
        except RxClientError:  # not base64: no copy that opens
            got = None
        claim_key = None if got is None else got[0]
    return OpenedRecord(rx_id, kind, party, body, salt, record_key, epoch, note_keys, names,
                        routed if isinstance(routed, str) else None, claim_key)


def _unwrap_any(keys: list[ec.EllipticCurvePrivateKey], wrapped: bytes,
                context: bytes) -> tuple[bytes, ec.EllipticCurvePrivateKey] | None:
    """(the unwrapped key, the one of ``keys`` that opened it), or None. A wrapping names no
    recipient (aead.wrap_key: an ephemeral point, a nonce, the ciphertext), so each key is
    tried in turn: one ECDH each, the current records key before the earlier ones."""
    for k in keys:
        try:
            return aead.unwrap_key(k, wrapped, context), k
        except aead.DecryptionError:
            continue
    return None


def _note_keys(grant: Mapping[str, Any], keys: list[ec.EllipticCurvePrivateKey], rx_id: str,
               party: str) -> dict[int, bytes]:
    """The note keys of a grant that open with one of ``keys`` (the one that opened its record
    key first: after a rotation of the party's records certificate a grant holds keys wrapped
    for the old certificate and note keys made later wrapped for the new one); one that opens
    with none (a writer's bad wrap, an earlier key the wallet does not keep) is left out: its
    notes stay sealed, nothing fails."""
    wrapped = grant.get("note_keys")
    out: dict[int, bytes] = {}
    if not isinstance(wrapped, dict):
        return out
    for name, text in wrapped.items():
        digits = isinstance(name, str) and name.isascii() and name.isdigit() and len(name) <= 4
        if not digits or not isinstance(text, str):
            continue
        try:
            opened = _unwrap_any(keys, unb64(text), note_wrap_context(rx_id, party, int(name)))
        except RxClientError:  # not base64
            continue
        if opened is not None:
            out[int(name)] = opened[0]
    return out
