"""Reason codes and encrypted notes for revoke, review rejection and claim reversal.

The ledger stores only a code from a fixed list per action (contracts/README.md, "Reasons
and notes"). Free text a user types goes, if anywhere, into an optional note encrypted
client-side with AES-256-GCM under the prescription's record key (revoke, review) or claim
key (reversal), with associated data ``rxchain/note/{rx_id}/{action}``; the contract stores
the base64 ciphertext as ``note_ct``. Only parties holding a grant to that key can read it.
Once the patient withdrew a consent or the prescription was re-routed away from a pharmacy,
revoke and review notes are under the note key in force instead (``note_epoch``;
client.records, contracts/README.md "Note keys"), which the withdrawn organisation or the
pharmacy routed away never holds.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

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


def seal_note(key: bytes, rx_id: str, action: str, text: str) -> str:
    """Base64 AES-GCM ciphertext of ``text`` under ``key`` (what the contract stores)."""
    data = text.encode()
    if len(data) > MAX_NOTE_BYTES:
        data = data[:MAX_NOTE_BYTES].decode(errors="ignore").encode()
    return base64.b64encode(aead.encrypt(key, data, _aad(rx_id, action))).decode()


def open_note(key: bytes, rx_id: str, action: str, note_ct: str) -> str | None:
    """The note's text, or None when there is none or it does not open with ``key``."""
    if not note_ct:
        return None
    try:
        return aead.decrypt(key, base64.b64decode(note_ct), _aad(rx_id, action)).decode()
    except (aead.DecryptionError, ValueError):
        return None
