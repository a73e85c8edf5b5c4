"""Reason codes and encrypted notes for revoke, review rejection and claim reversal.

The ledger stores only a code from a fixed list per action (contracts/README.md, "Reasons
and notes"). Free text a user types goes, if anywhere, into an optional note encrypted
client-side with AES-256-GCM under the prescription's record key (revoke, review) or, for a
claim reversal, a fresh key wrapped for the reversing insurer's records certificate alone
(:func:`seal_insurer_note`), with associated data ``rxchain/note/{rx_id}/{action}``; the
contract stores the base64 ciphertext as ``note_ct``. Only parties holding a grant to that key
(a reversal note: the insurer's records key) can read it. A reversal note of an earlier client
is under the prescription's claim key (:func:`open_note` with it still reads it): the issuing
hospital's doctor holds that key too (her copy of it, to hand it to a later insurer), so the
insurer's notes are no longer under it (contracts/README.md "Reasons and notes").
Once the patient withdrew a consent or the prescription was re-routed away from a pharmacy,
revoke and review notes are under the note key in force instead (``note_epoch``;
client.records, contracts/README.md "Note keys"), which the withdrawn organisation or the
pharmacy routed away never holds.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from client.errors import RxClientError
from node.crypto import aead

REVOKE = "revoke"
REVIEW = "review"
REVERSE = "reverse"

REASON_CODES: dict[str, tuple[str, ...]] = {
    REVOKE: ("PRESCRIBING_ERROR", "PATIENT_REQUEST", "ADVERSE_REACTION", "DUPLICATE",
             "CLINICAL_CHANGE", "OTHER"),
    REVIEW: ("INTERACTION", "DOSE", "CONTRAINDICATION", "NOT_INDICATED", "INCOMPLETE", "OTHER"),
    REVERSE: ("BILLING_ERROR", "RETURNED_GOODS", "DUPLICATE", "OTHER"),
}
OTHER = "OTHER"
MAX_NOTE_BYTES = 2048
# The first bytes of an insurer's reversal note (version 2): the magic, the note key wrapped
# for the insurer's records certificate (aead.wrap_key: a fixed length), then the note under
# that key. A note of version 1 (the claim key's) is the AES-GCM nonce and ciphertext alone.
INSURER_NOTE_MAGIC = b"rxn2"
_WRAPPED_BYTES = 1 + 65 + aead.NONCE_BYTES + aead.KEY_BYTES + 16


@dataclass(frozen=True)
class Reason:
    """What a free-text ``--reason`` becomes: the on-ledger code and the text to encrypt."""

    code: str
    note: str


def split_reason(action: str, text: str, note: str = "") -> Reason:
    """Map user input to a code: a listed code (any case, ``-`` or space for ``_``) is used
    as is; other text becomes OTHER and moves into the (encrypted) note; no text stays ""."""
    codes = REASON_CODES[action]
    cleaned = text.strip()
    if not cleaned:
        return Reason("", note.strip())  # the contract answers REASON_REQUIRED
    candidate = cleaned.upper().replace("-", "_").replace(" ", "_")
    if candidate in codes:
        return Reason(candidate, note.strip())
    extra = "\n".join(t for t in (cleaned, note.strip()) if t)
    return Reason(OTHER, extra)


def _aad(rx_id: str, action: str) -> bytes:
    return f"rxchain/note/{rx_id}/{action}".encode()


def _bounded(text: str) -> bytes:
    """``text`` in UTF-8, cut to MAX_NOTE_BYTES; BAD_ARGUMENTS (nothing sealed) for text that has
    no UTF-8 form -- a lone surrogate: a command-line argument of bytes that are not UTF-8, which
    Python keeps as such, or a JSON "\\udXXX" escape (review19: an uncaught UnicodeEncodeError,
    the CLI's INTERNAL, the FHIR gateway's 500)."""
    try:
        data = text.encode()
    except UnicodeEncodeError as exc:
        raise RxClientError("BAD_ARGUMENTS", f"the note (or reason text) is not valid text: character "
                            f"{exc.start} is a lone surrogate (bytes that are not UTF-8?): nothing was "
                            "sent") from exc
    if len(data) > MAX_NOTE_BYTES:
        data = data[:MAX_NOTE_BYTES].decode(errors="ignore").encode()
    return data


def seal_note(key: bytes, rx_id: str, action: str, text: str) -> str:
    """Base64 AES-GCM ciphertext of ``text`` under ``key`` (what the contract stores)."""
    return base64.b64encode(aead.encrypt(key, _bounded(text), _aad(rx_id, action))).decode()


def insurer_note_context(rx_id: str, insurer: str) -> bytes:
    """Key-wrapping context of the key of insurer ``insurer``'s reversal note on ``rx_id``."""
    return f"rxchain/rx/{rx_id}/{insurer}/note/{REVERSE}".encode()


def seal_insurer_note(public_key: ec.EllipticCurvePublicKey, rx_id: str, insurer: str, text: str) -> str:
    """A reversal note of ``insurer`` (version 2), base64: a fresh AES-256 key wrapped for
    ``public_key`` (the insurer's records certificate) under :func:`insurer_note_context`, and
    ``text`` under that key. Nobody else holds it -- not the issuing hospital's doctor, whose copy
    of the claim key opened the notes sealed with it (version 1), nor an insurer handed the claim
    key later."""
    key = aead.new_record_key()
    blob = (INSURER_NOTE_MAGIC + aead.wrap_key(public_key, key, insurer_note_context(rx_id, insurer))
            + aead.encrypt(key, _bounded(text), _aad(rx_id, REVERSE)))
    return base64.b64encode(blob).decode()


def is_insurer_note(note_ct: str) -> bool:
    """Whether ``note_ct`` has the layout of a version-2 reversal note (a version-1 note under
    the claim key starts with a random nonce: one in 2**32 looks alike, so a reader that cannot
    open it as version 2 tries version 1 too)."""
    try:
        blob = base64.b64decode(note_ct, validate=True)
    except ValueError:
        return False
    return blob.startswith(INSURER_NOTE_MAGIC) and len(blob) >= len(INSURER_NOTE_MAGIC) + _WRAPPED_BYTES


def open_insurer_note(keys: Sequence[ec.EllipticCurvePrivateKey], rx_id: str, insurer: str,
                      note_ct: str) -> str | None:
    """The text of ``insurer``'s version-2 reversal note, or None when there is none, it is not
    of that layout, or none of ``keys`` (the insurer's records key, and the keys of its earlier
    records certificates: each is tried, a wrapping names no key) opens it."""
    if not is_insurer_note(note_ct):
        return None
    blob = base64.b64decode(note_ct)
    start = len(INSURER_NOTE_MAGIC)
    wrapped, body = blob[start:start + _WRAPPED_BYTES], blob[start + _WRAPPED_BYTES:]
    for k in keys:
        try:
            key = aead.unwrap_key(k, wrapped, insurer_note_context(rx_id, insurer))
            return aead.decrypt(key, body, _aad(rx_id, REVERSE)).decode()
        except (aead.DecryptionError, UnicodeDecodeError):
            continue
    return None


def open_note(key: bytes, rx_id: str, action: str, note_ct: str) -> str | None:
    """The note's text, or None when there is none or it does not open with ``key``."""
    if not note_ct:
        return None
    try:
        return aead.decrypt(key, base64.b64decode(note_ct), _aad(rx_id, action)).decode()
    except (aead.DecryptionError, ValueError):
        return None
