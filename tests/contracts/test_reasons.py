"""Issue 6 privacy: revoke / review-rejection / reversal reasons are codes from fixed lists;
free text never reaches a block argument, the state or an event. A note travels only as
client-side ciphertext (``note_ct``) that grant holders open with the record (claim) key."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from client.notes import REASON_CODES, REVERSE, REVIEW, REVOKE, open_note, seal_note
from tests.contracts.chain import DAY_MS, admin
from tests.contracts.flows import AUDITOR, CLERK, HE, JIANG, approved, issue, lock_and_dispense, settle
from tests.contracts.rxclient import World

DRUG_TEXT = "switch to Amlodipine 10 mg"


def _ledger_bytes(world: World) -> bytes:
    """Everything a peer keeps in clear: state (every version), block arguments, events."""
    raw = world.chain.raw_state_bytes() + b"\n".join(world.chain.block_args)
    versions = "\n".join(f"{k}={v.value!r}" for (_ns, k), vs in world.chain.state.versions.items()
                         for v in vs)
    return raw + versions.encode() + b"".join(e.payload_json for e in world.chain.events)


def _assert_no_plaintext(world: World) -> None:
    raw = _ledger_bytes(world).lower()
    for needle in ("amlodipine", "10 mg", "switch to"):
        assert needle.encode() not in raw, needle


def test_free_text_revoke_reason_is_refused_and_writes_nothing(world: World) -> None:
    rx = approved(world).args["rx_id"]
    before = world.chain.raw_state_bytes()
    out = world.chain.submit("prescription", "revoke", JIANG, rx_id=rx, reason=DRUG_TEXT)
    assert out.reason == "BAD_ARGUMENTS" and "PRESCRIBING_ERROR" in out.message
    assert world.chain.raw_state_bytes() == before
    out = world.chain.submit("prescription", "revoke", JIANG, rx_id=rx, reason="")
    assert out.reason == "REASON_REQUIRED"
    _assert_no_plaintext(world)


@pytest.mark.parametrize("bad", ["switch to Amlodipine 10 mg!", "c2hvcnQ=", "x" * 4100, "A" * 41])
def test_note_must_be_base64_ciphertext(world: World, bad: str) -> None:
    rx = approved(world).args["rx_id"]
    out = world.chain.submit("prescription", "revoke", JIANG, rx_id=rx, reason="OTHER", note_ct=bad)
    assert out.reason == "BAD_ARGUMENTS"
    assert world.chain.query("prescription", "show", AUDITOR, rx_id=rx).unwrap()["status"] == "APPROVED"


def test_revoke_with_encrypted_note_keeps_drug_name_off_the_ledger(world: World) -> None:
    prep = approved(world)
    rx = prep.args["rx_id"]
    key = world.record_keys[rx]
    note_ct = seal_note(key, rx, REVOKE, DRUG_TEXT)
    out = world.chain.submit("prescription", "revoke", JIANG, rx_id=rx, reason="CLINICAL_CHANGE",
                             note_ct=note_ct)
    assert out.unwrap()["status"] == "REVOKED"
    shown = world.chain.query("prescription", "show", AUDITOR, rx_id=rx).unwrap()
    assert shown["revocation"]["reason"] == "CLINICAL_CHANGE"
    assert shown["revocation"]["note_ct"] == note_ct
    # a grant holder reads the note; the wrong key or the wrong action does not open it
    assert open_note(key, rx, REVOKE, shown["revocation"]["note_ct"]) == DRUG_TEXT
    assert open_note(key, rx, REVIEW, note_ct) is None
    assert open_note(b"\0" * 32, rx, REVOKE, note_ct) is None
    steps = world.chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()["steps"]
    assert steps[-1]["step"] == "revoke" and steps[-1]["detail"]["reason"] == "CLINICAL_CHANGE"
    _assert_no_plaintext(world)
    # crypto-shredding also clears the note from the current state
    world.chain.advance(366 * DAY_MS)
    world.chain.submit("prescription", "erase", admin("h01"), rx_id=rx, retention_days=365).unwrap()
    erased = world.chain.query("prescription", "show", AUDITOR, rx_id=rx).unwrap()
    assert erased["revocation"]["note_ct"] == "" and erased["revocation"]["reason"] == "CLINICAL_CHANGE"
    # ... and from the trace, which reads the history index (it used to serve the note there)
    steps = world.chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()["steps"]
    assert [s["step"] for s in steps] == ["issue", "review", "revoke", "erase"]
    assert steps[2]["detail"] == {"reason": "CLINICAL_CHANGE", "note_ct": ""}


def test_erase_blanks_review_and_reversal_notes_in_the_trace(world: World) -> None:
    """The trace of an erased prescription carries no note: not the review's (record key),
    nor the claim reversal's (claim key), whose ciphertexts erase destroyed with the grants."""
    prep, out = issue(world)
    out.unwrap()
    rx = prep.args["rx_id"]
    review_ct = seal_note(world.record_keys[rx], rx, REVIEW, "ok, but " + DRUG_TEXT)
    world.chain.submit("prescription", "review", HE, rx_id=rx, approve=True, reason="",
                       note_ct=review_ct).unwrap()
    lock_and_dispense(world, prep).unwrap()
    claim = settle(world, prep).unwrap()
    grant = world.chain.submit("prescription", "get_key", CLERK, rx_id=rx).unwrap()
    claim_key = world.keyring.unwrap(grant["party"], grant["wrapped_key"], f"rxchain/rx/{rx}/{grant['party']}")
    reverse_ct = seal_note(claim_key, rx, REVERSE, "returned: " + DRUG_TEXT)
    world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"], reason="RETURNED_GOODS",
                       note_ct=reverse_ct).unwrap()
    before = world.chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()["steps"]
    assert {s["detail"].get("note_ct") for s in before} >= {review_ct, reverse_ct}
    world.chain.advance(366 * DAY_MS)
    world.chain.submit("prescription", "erase", admin("h01"), rx_id=rx, retention_days=365).unwrap()
    for reader in (AUDITOR, admin("h01"), JIANG):
        steps = world.chain.query("prescription", "trace", reader, rx_id=rx).unwrap()["steps"]
        noted = {s["step"]: s["detail"] for s in steps if "note_ct" in s["detail"]}
        assert set(noted) == {"review", "reverse"}, reader
        assert all(d["note_ct"] == "" for d in noted.values()), reader
        assert noted["reverse"]["reason"] == "RETURNED_GOODS"


def test_review_rejection_takes_a_code_and_an_approval_none(world: World) -> None:
    prep, out = issue(world)
    out.unwrap()
    rx = prep.args["rx_id"]
    call = world.chain.submit
    assert call("prescription", "review", HE, rx_id=rx, approve=False, reason=DRUG_TEXT).reason == "BAD_ARGUMENTS"
    assert call("prescription", "review", HE, rx_id=rx, approve=True, reason=DRUG_TEXT).reason == "BAD_ARGUMENTS"
    assert call("prescription", "review", HE, rx_id=rx, approve=False, reason="").reason == "REASON_REQUIRED"
    note_ct = seal_note(world.record_keys[rx], rx, REVIEW, "interacts with " + DRUG_TEXT)
    res = call("prescription", "review", HE, rx_id=rx, approve=False, reason="INTERACTION", note_ct=note_ct)
    assert res.unwrap()["status"] == "REJECTED"
    review = world.chain.query("prescription", "show", AUDITOR, rx_id=rx).unwrap()["review"]
    assert review["reason"] == "INTERACTION"
    assert open_note(world.record_keys[rx], rx, REVIEW, review["note_ct"]) == "interacts with " + DRUG_TEXT
    _assert_no_plaintext(world)


def test_reversal_reason_is_a_code_with_a_note_under_the_claim_key(world: World) -> None:
    prep = approved(world)
    rx = prep.args["rx_id"]
    lock_and_dispense(world, prep).unwrap()
    claim = settle(world, prep).unwrap()
    out = world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"], reason=DRUG_TEXT)
    assert out.reason == "BAD_ARGUMENTS"
    grant = world.chain.submit("prescription", "get_key", CLERK, rx_id=rx).unwrap()
    claim_key = world.keyring.unwrap(grant["party"], grant["wrapped_key"], f"rxchain/rx/{rx}/{grant['party']}")
    note_ct = seal_note(claim_key, rx, REVERSE, "returned: " + DRUG_TEXT)
    rec = world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"],
                             reason="RETURNED_GOODS", note_ct=note_ct).unwrap()
    assert rec["status"] == "REVERSED" and rec["reversal_reason"] == "RETURNED_GOODS"
    assert open_note(claim_key, rx, REVERSE, rec["reversal_note_ct"]) == "returned: " + DRUG_TEXT
    steps = world.chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()["steps"]
    rev = [s for s in steps if s["step"] == "reverse"]
    assert rev and rev[0]["detail"]["reason"] == "RETURNED_GOODS" and rev[0]["detail"]["note_ct"] == note_ct
    _assert_no_plaintext(world)


def _constants(path: Path) -> dict[str, object]:
    tree = ast.parse(path.read_text())
    out: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return out


def test_contract_code_lists_match_the_client() -> None:
    """The contracts cannot import: their lists are copies of client.notes.REASON_CODES."""
    root = Path(__file__).resolve().parents[2] / "contracts"
    rx = _constants(root / "prescription.py")
    st = _constants(root / "settlement.py")
    assert rx["REVOKE_REASONS"] == REASON_CODES[REVOKE]
    assert rx["REJECT_REASONS"] == REASON_CODES[REVIEW]
    assert st["REVERSAL_REASONS"] == REASON_CODES[REVERSE]
