"""Reason codes and encrypted notes (client.notes): free text never becomes an on-chain reason."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from client.cli import build_parser
from client.errors import RxClientError
from client.notes import (
    OTHER,
    REASON_CODES,
    REVERSE,
    REVIEW,
    REVOKE,
    is_insurer_note,
    open_insurer_note,
    open_note,
    seal_insurer_note,
    seal_note,
    split_reason,
)
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


def test_an_insurers_reversal_note_opens_with_its_records_key_alone() -> None:
    """Version 2: a fresh key wrapped for the insurer's records certificate, bound to the
    prescription and the insurer; a claim key (the issuing doctor's copy) opens none of it, and a
    version-1 note under the claim key is told apart and still opens with that key."""
    ins01, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    claim_key = aead.new_record_key()
    ct = seal_insurer_note(ins01.public_key(), "RX-1", "ins01", "returned: Amlodipine")
    assert "mlodipine" not in ct and is_insurer_note(ct)
    assert open_insurer_note([ins01], "RX-1", "ins01", ct) == "returned: Amlodipine"
    assert open_insurer_note([other, ins01], "RX-1", "ins01", ct) == "returned: Amlodipine"  # a rotated-away key first
    assert open_insurer_note([other], "RX-1", "ins01", ct) is None
    assert open_insurer_note([ins01], "RX-2", "ins01", ct) is None
    assert open_insurer_note([ins01], "RX-1", "ins02", ct) is None
    assert open_note(claim_key, "RX-1", REVERSE, ct) is None
    old = seal_note(claim_key, "RX-1", REVERSE, "returned")
    assert not is_insurer_note(old) and open_insurer_note([ins01], "RX-1", "ins01", old) is None
    assert open_note(claim_key, "RX-1", REVERSE, old) == "returned"
    assert not is_insurer_note("") and not is_insurer_note("not base64!")
    long_ct = seal_insurer_note(ins01.public_key(), "RX-1", "ins01", "x" * 10000)
    assert 40 <= len(long_ct) <= 4096 and len(long_ct) % 4 == 0  # within the contracts' note_ct bounds
    assert open_insurer_note([ins01], "RX-1", "ins01", long_ct) == "x" * 2048


def test_cli_accepts_notes() -> None:
    p = build_parser()
    a = p.parse_args(["rx", "revoke", "R", "--reason", "OTHER", "--note", "t"])
    assert (a.reason, a.note) == ("OTHER", "t")
    a = p.parse_args(["rx", "review", "R", "--reject", "DOSE", "--note", "t"])
    assert (a.reject, a.note) == ("DOSE", "t")
    a = p.parse_args(["claim", "reverse", "C"])
    assert (a.reason, a.note) == ("OTHER", "")


@pytest.mark.parametrize("text", ["returned \udcff goods", "\ud800"])
def test_a_note_of_no_utf8_form_is_bad_arguments(text: str) -> None:
    """A lone surrogate -- a command-line argument of bytes that are not UTF-8 (Python keeps them
    so), a JSON "\\udXXX" escape -- has no UTF-8 form: sealing it raised UnicodeEncodeError (the
    CLI's INTERNAL, "a bug"; the FHIR gateway's 500). It is BAD_ARGUMENTS, nothing sealed."""
    key, ins01 = aead.new_record_key(), ec.generate_private_key(ec.SECP256R1())
    for seal in (lambda: seal_note(key, "RX-1", REVOKE, text),
                 lambda: seal_insurer_note(ins01.public_key(), "RX-1", "ins01", text)):
        with pytest.raises(RxClientError) as e:
            seal()
        assert e.value.reason == "BAD_ARGUMENTS" and "surrogate" in e.value.message
