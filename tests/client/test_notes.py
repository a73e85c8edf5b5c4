"""Reason codes and encrypted notes (client.notes): free text never becomes an on-chain reason."""

from __future__ import annotations

import pytest

from client.cli import build_parser
from client.notes import OTHER, REASON_CODES, REVERSE, REVIEW, REVOKE, open_note, seal_note, split_reason
from node.crypto import aead


@pytest.mark.parametrize(("action", "text", "code", "note"), [
    (REVOKE, "PATIENT_REQUEST", "PATIENT_REQUEST", ""),
    (REVOKE, "adverse-reaction", "ADVERSE_REACTION", ""),
    (REVOKE, "clinical change", "CLINICAL_CHANGE", ""),
    (REVOKE, "switch to Amlodipine 10 mg", OTHER, "switch to Amlodipine 10 mg"),
    (REVIEW, "dose", "DOSE", ""),
    (REVIEW, "dose above label", OTHER, "dose above label"),
    (REVERSE, "DUPLICATE", "DUPLICATE", ""),
    (REVERSE, "entered twice", OTHER, "entered twice"),
    (REVIEW, "DUPLICATE", OTHER, "DUPLICATE"),
    (REVOKE, "  ", "", ""),  # no reason at all: the contract answers REASON_REQUIRED  # a code of another action is free text here
])
def test_split_reason_maps_codes_and_moves_text_into_the_note(action: str, text: str, code: str,
                                                              note: str) -> None:
    r = split_reason(action, text)
    assert (r.code, r.note) == (code, note)
    assert r.code in (*REASON_CODES[action], "")


def test_split_reason_keeps_an_explicit_note() -> None:
    assert split_reason(REVOKE, "DUPLICATE", " same as RX-1 ") == split_reason(REVOKE, "duplicate", "same as RX-1")
    r = split_reason(REVOKE, "wrong drug", "use benidipine")
    assert r.code == OTHER and r.note == "wrong drug\nuse benidipine"


def test_note_seals_under_the_record_key_and_binds_rx_and_action() -> None:
    key = aead.new_record_key()
    ct = seal_note(key, "RX-1", REVOKE, "switch to Amlodipine 10 mg")
    assert "mlodipine" not in ct
    assert open_note(key, "RX-1", REVOKE, ct) == "switch to Amlodipine 10 mg"
    assert open_note(key, "RX-2", REVOKE, ct) is None
    assert open_note(key, "RX-1", REVIEW, ct) is None
    assert open_note(aead.new_record_key(), "RX-1", REVOKE, ct) is None
    assert open_note(key, "RX-1", REVOKE, "") is None
    assert open_note(key, "RX-1", REVOKE, "not base64!") is None
    long_ct = seal_note(key, "RX-1", REVOKE, "x" * 10000)
    assert 40 <= len(long_ct) <= 4096  # within the contracts' note_ct bounds


def test_cli_accepts_notes() -> None:
    p = build_parser()
    a = p.parse_args(["rx", "revoke", "R", "--reason", "OTHER", "--note", "t"])
    assert (a.reason, a.note) == ("OTHER", "t")
    a = p.parse_args(["rx", "review", "R", "--reject", "DOSE", "--note", "t"])
    assert (a.reject, a.note) == ("DOSE", "t")
    a = p.parse_args(["claim", "reverse", "C"])
    assert (a.reason, a.note) == ("OTHER", "")
