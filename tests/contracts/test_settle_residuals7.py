"""Residuals of moving an account (settle7): the claim key of a prescription reached the
insurer of its later fills (``cover/{rx_id}``) only from an insurer holding it -- the insurer of
the issue that never handed it over left those fills without a claim subset on the ledger. The
issuing hospital now keeps a copy at issue (``claim_keys`` names it besides the patient's
insurer, wrapped under ``rxchain/rx/{rx_id}/{hospital}/claim``), and a doctor of it hands the
key over with ``prescription.grant_claim_key`` under the same refusals."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from tests.contracts.chain import DAY_MS, who
from tests.contracts.flows import AUDITOR, CLERK, CLERK2, HE, JIANG, WANG, ZHOU, dispense, lock_and_dispense, settle
from tests.contracts.rxclient import Prepared, World, trace_key
from tests.contracts.test_account_transfer import PATIENT, call, with_ins02, zhang
from tests.contracts.test_settle_residuals6 import REPEAT, _fetch_claim, _ins02_settles_fill_two, _snapshot
from tests.contracts.test_unsettled_moves import CLERK3

H01_ADMIN = who("h01:admin-h01:admin")


def _issued_with_copy(world: World, copy: bool = True, doctor: Any = JIANG,
                      codes: list[str] | None = None) -> Prepared:
    """A repeat issued by h01 (its doctor), with the hospital's copy of the claim key, its
    first fill dispensed (``codes``: the boxes' trace codes, amlodipine x2)."""
    rx_id = world.new_rx_id()
    fields: dict[str, Any] = dict(REPEAT)
    if codes is not None:
        fields["drugs"] = [("amlodipine", 2)]
    content = world.content(rx_id, patient=PATIENT, **fields)
    prep = world.prepare(content, hospital=doctor.org, pharmacy="p01", insurer="ins01")
    if copy:
        key = world.keyring.unwrap("ins01", prep.args["claim_keys"]["ins01"], f"rxchain/rx/{rx_id}/ins01")
        prep.args["claim_keys"][doctor.org] = world.keyring.wrap(doctor.org, key,
                                                                 f"rxchain/rx/{rx_id}/{doctor.org}/claim")
    world.issue(prep, doctor).unwrap()
    world.chain.submit("prescription", "review", HE, rx_id=rx_id, approve=True, reason="").unwrap()
    lock_and_dispense(world, prep, trace_codes=codes).unwrap()
    return prep


def _moved_before_fill_two(world: World, prep: Prepared) -> None:
    settle(world, prep).unwrap()
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    assert call(world, "accept_transfer", CLERK2)["insurer"] == "ins02"


def _hospital_copy_for(world: World, rx_id: str, org: str) -> str:
    got = world.chain.submit("prescription", "get_key", JIANG, rx_id=rx_id).unwrap()
    key = world.keyring.unwrap("h01", got["claim_wrapped_key"], f"rxchain/rx/{rx_id}/h01/claim")
    return world.keyring.wrap(org, key, f"rxchain/rx/{rx_id}/{org}")


def test_the_issuing_hospital_hands_the_claim_key_to_the_insurer_of_later_fills(world: World) -> None:
    """ins01 never hands the key over; h01's doctor does, from the copy its issue kept, under
    the refusals of an insurer's hand-over: NOT_INSURER_OF_FILL before a move and for an
    insurer the move did not name, ALREADY_GRANTED once held, the missing id's answer for a
    caller holding no copy (another hospital's doctor), WRONG_ROLE for roles that hand none."""
    with_ins02(world)
    prep = _issued_with_copy(world)
    rx_id = prep.args["rx_id"]
    grant = json.loads(world.chain.state.values[("prescription", f"grant/{rx_id}/h01")])
    assert grant["kind"] == "hospital" and "claim_wrapped_key" in grant
    for_ins02 = _hospital_copy_for(world, rx_id, "ins02")
    before = _snapshot(world)
    out = world.chain.submit("prescription", "grant_claim_key", JIANG, rx_id=rx_id, org="ins02",
                             wrapped_key=for_ins02)
    assert out.reason == "NOT_INSURER_OF_FILL", out  # no move yet
    _moved_before_fill_two(world, prep)
    before = _snapshot(world)
    for caller, reason in ((ZHOU, "NOT_FOUND"), (HE, "WRONG_ROLE"), (WANG, "WRONG_ROLE"),
                           (H01_ADMIN, "WRONG_ROLE"), (CLERK2, "NOT_FOUND")):
        out = world.chain.submit("prescription", "grant_claim_key", caller, rx_id=rx_id,
                                 org="ins02", wrapped_key=for_ins02)
        assert out.reason == reason, (caller, out)
    assert world.chain.submit("prescription", "grant_claim_key", JIANG, rx_id=rx_id, org="ins03",
                              wrapped_key=for_ins02).reason == "NOT_INSURER_OF_FILL"
    assert world.chain.submit("prescription", "grant_claim_key", JIANG, rx_id="RX-NONE",
                              org="ins02", wrapped_key=for_ins02).reason == "NOT_FOUND"
    assert _snapshot(world) == before
    world.chain.submit("prescription", "grant_claim_key", JIANG, rx_id=rx_id, org="ins02",
                       wrapped_key=for_ins02).unwrap()
    assert world.chain.submit("prescription", "grant_claim_key", JIANG, rx_id=rx_id, org="ins02",
                              wrapped_key=for_ins02).reason == "ALREADY_GRANTED"
    assert world.chain.submit("prescription", "grant_claim_key", CLERK, rx_id=rx_id, org="ins02",
                              wrapped_key=for_ins02).reason == "ALREADY_GRANTED"
    claim = _ins02_settles_fill_two(world, prep)
    assert (claim["insurer"], claim["fill"]) == ("ins02", 2)
    assert settle(world, prep, clerk=CLERK3, fill=2).reason == "ACCESS_DENIED"


def test_a_prescription_issued_without_the_hospitals_copy_is_answered_as_missing(world: World) -> None:
    """Issued without the copy (an earlier client): the hospital holds no claim key, its doctor
    gets the missing id's answer and nothing is written; the insurer of the issue still can."""
    with_ins02(world)
    prep = _issued_with_copy(world, copy=False)
    rx_id = prep.args["rx_id"]
    got = world.chain.submit("prescription", "get_key", JIANG, rx_id=rx_id).unwrap()
    assert "claim_wrapped_key" not in got
    _moved_before_fill_two(world, prep)
    before = _snapshot(world)
    out = world.chain.submit("prescription", "grant_claim_key", JIANG, rx_id=rx_id, org="ins02",
                             wrapped_key=got["wrapped_key"])
    assert out.reason == "NOT_FOUND" and _snapshot(world) == before


def test_issue_takes_only_the_insurer_and_the_issuing_hospital_in_claim_keys(world: World) -> None:
    """``claim_keys`` holds the patient's insurer and, optionally, the issuing hospital: any other
    party (the pharmacy, another hospital, the patient) is refused BAD_ARGUMENTS, nothing written."""
    for extra in ("p01", "h02", "patient"):
        rx_id = world.new_rx_id()
        prep = world.prepare(world.content(rx_id, patient=PATIENT), hospital="h01", pharmacy="p01")
        prep.args["claim_keys"][extra] = prep.args["claim_keys"]["ins01"]
        before = _snapshot(world)
        out = world.issue(prep, JIANG)
        assert out.reason == "BAD_ARGUMENTS", (extra, out)
        assert _snapshot(world) == before


# ---------------------------------------------------------------- what an insurer she left sees

def _h(code: str) -> str:
    return hmac.new(bytes.fromhex(trace_key()), ("trace|" + code).encode(), hashlib.sha256).hexdigest()


CODES1 = ["81234560000000000071", "81234560000000000072"]
CODES2 = ["81234560000000000073", "81234560000000000074"]


def _steps(world: World, caller: Any, rx_id: str) -> list[tuple[str, Any]]:
    out = world.chain.query("prescription", "trace", caller, rx_id=rx_id).unwrap()
    return [(s["step"], s["detail"].get("fill", s["detail"].get("org"))) for s in out["steps"]]


def _trail(world: World, caller: Any, rx_id: str) -> list[tuple[str, str]]:
    out = world.chain.query("settlement", "trail", caller, rx_id=rx_id).unwrap()
    return [(s["step"], s["org"]) for s in out["steps"]]


def _story(world: World) -> str:
    """Fill 1 ins01's (settled), the move, fill 2 ins02's (dispensed and settled after it, with
    the key h01 handed over after the move): the prescription's id."""
    with_ins02(world)
    prep = _issued_with_copy(world, codes=CODES1)
    rx_id: str = prep.args["rx_id"]
    _moved_before_fill_two(world, prep)
    world.chain.advance(1)
    world.chain.submit("prescription", "grant_claim_key", JIANG, rx_id=rx_id, org="ins02",
                       wrapped_key=_hospital_copy_for(world, rx_id, "ins02")).unwrap()
    world.chain.advance(28 * DAY_MS)
    lock_and_dispense(world, prep, trace_codes=CODES2).unwrap()
    opened = _fetch_claim(world, CLERK2, rx_id)
    world.chain.submit("settlement", "settle", CLERK2,
                       transient={"claim": opened["claim"], "claim_salt": opened["salt"]},
                       rx_id=rx_id, fill=2).unwrap()
    return rx_id


def _back_with_ins01(world: World) -> None:
    call(world, "request_transfer", zhang(world), to_insurer="ins01")
    assert call(world, "accept_transfer", CLERK)["insurer"] == "ins01"


def test_an_insurer_she_left_traces_its_own_fills_and_claims_and_the_steps_before_the_move(
        world: World) -> None:
    """ins01 stays a party (the insurer of the issue): its trace showed fill 2's lock and
    dispense, ins02's claim, and every later step. Now it sees its own fill and claim, the steps
    up to the move and its own steps; ins02, the hospital and the auditor see everything; with
    her account back at ins01 it sees everything again."""
    rx_id = _story(world)
    full = _steps(world, HE, rx_id)
    assert ("dispense", 2) in full and ("claim_key", "ins02") in full
    assert [s for s in full if s[0] == "settle"] == [("settle", 1), ("settle", 2)]
    assert _steps(world, CLERK2, rx_id) == full  # the new insurer: as before
    assert _steps(world, AUDITOR, rx_id) == full
    old = _steps(world, CLERK, rx_id)
    assert old == [s for s in full if s not in (("lock", 2), ("dispense", 2), ("settle", 2),
                                                ("claim_key", "ins02"))], old
    assert ("issue", None) in old and ("dispense", 1) in old and ("settle", 1) in old
    _back_with_ins01(world)
    assert _steps(world, CLERK, rx_id) == full


def test_an_insurer_she_left_reads_its_own_claims_in_the_trail(world: World) -> None:
    """``settlement.trail`` showed ins01 ins02's claim of fill 2: now its own claims alone."""
    rx_id = _story(world)
    assert _trail(world, CLERK, rx_id) == [("settle", "ins01")]
    assert _trail(world, CLERK2, rx_id) == [("settle", "ins01"), ("settle", "ins02")]
    assert _trail(world, AUDITOR, rx_id) == [("settle", "ins01"), ("settle", "ins02")]
    _back_with_ins01(world)
    assert _trail(world, CLERK, rx_id) == [("settle", "ins01"), ("settle", "ins02")]


def test_an_insurer_she_left_traces_only_its_own_fills_boxes(world: World) -> None:
    """``trace_fills`` told ins01 which boxes fill 2 (ins02's) held: now 0, as a box not on the
    prescription; ins02 and the pharmacy are told both fills."""
    rx_id = _story(world)
    hashes = [_h(c) for c in CODES1 + CODES2]
    assert world.chain.query("prescription", "trace_fills", CLERK, rx_id=rx_id,
                             hashes=hashes).unwrap()["fills"] == [1, 1, 0, 0]
    for caller in (CLERK2, WANG):
        assert world.chain.query("prescription", "trace_fills", caller, rx_id=rx_id,
                                 hashes=hashes).unwrap()["fills"] == [1, 1, 2, 2]


def test_a_step_of_its_own_after_the_move_is_shown_to_the_insurer_she_left(world: World) -> None:
    """ins01 hands the key over itself after the move: its own step is shown to it; the
    hospital's hand-over would not be (a step after the move, not its own)."""
    with_ins02(world)
    prep = _issued_with_copy(world)
    rx_id = prep.args["rx_id"]
    _moved_before_fill_two(world, prep)
    claim_key = world.keyring.unwrap("ins01", prep.args["claim_keys"]["ins01"], f"rxchain/rx/{rx_id}/ins01")
    world.chain.submit("prescription", "grant_claim_key", CLERK, rx_id=rx_id, org="ins02",
                       wrapped_key=world.keyring.wrap("ins02", claim_key, f"rxchain/rx/{rx_id}/ins02")).unwrap()
    assert ("claim_key", "ins02") in _steps(world, CLERK, rx_id)


def test_an_insurer_she_left_is_shown_the_record_without_the_later_fills(world: World) -> None:
    """``show`` told ins01 fill 2 (its lock, then the fill count, its time and latest step):
    now the record capped at its own latest fill; ins02 and the hospital see it whole."""
    with_ins02(world)
    prep = _issued_with_copy(world)
    rx_id = prep.args["rx_id"]
    fill1 = world.chain.query("prescription", "show", HE, rx_id=rx_id).unwrap()
    _moved_before_fill_two(world, prep)
    world.chain.submit("prescription", "grant_claim_key", JIANG, rx_id=rx_id, org="ins02",
                       wrapped_key=_hospital_copy_for(world, rx_id, "ins02")).unwrap()
    world.chain.advance(28 * DAY_MS)
    world.chain.submit("prescription", "lock", WANG, rx_id=rx_id).unwrap()
    locked = world.chain.query("prescription", "show", CLERK, rx_id=rx_id).unwrap()
    assert (locked["lock"], locked["status"], locked["fills"]) == (None, "DISPENSED", 1)
    seen = world.chain.query("prescription", "trace", CLERK, rx_id=rx_id).unwrap()["steps"]
    last_seen = [s for s in seen if s["block"] is not None][-1]  # (settle8: step was null, telling a
    assert locked["step"]["tx_id"] == last_seen["tx_id"]  # step followed; now its last step seen)
    assert world.chain.query("prescription", "show", CLERK2, rx_id=rx_id).unwrap()["status"] == "LOCKED"
    dispense(world, prep).unwrap()
    old = world.chain.query("prescription", "show", CLERK, rx_id=rx_id).unwrap()
    assert (old["fills"], old["last_fill_ms"], old["status"], old["step"]) == (
        1, fill1["last_fill_ms"], "DISPENSED", locked["step"])
    assert world.chain.query("prescription", "trace", CLERK, rx_id=rx_id).unwrap()["status"] == "DISPENSED"
    for caller in (CLERK2, HE):
        whole = world.chain.query("prescription", "show", caller, rx_id=rx_id).unwrap()
        assert (whole["fills"], whole["step"]["step"]) == (2, "dispense")
        assert whole["last_fill_ms"] > fill1["last_fill_ms"]
