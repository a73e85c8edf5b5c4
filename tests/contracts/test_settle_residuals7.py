"""Residuals of moving an account (settle7): the claim key of a prescription reached the
insurer of its later fills (``cover/{rx_id}``) only from an insurer holding it -- the insurer of
the issue that never handed it over left those fills without a claim subset on the ledger. The
issuing hospital now keeps a copy at issue (``claim_keys`` names it besides the patient's
insurer, wrapped under ``rxchain/rx/{rx_id}/{hospital}/claim``), and a doctor of it hands the
key over with ``prescription.grant_claim_key`` under the same refusals."""

from __future__ import annotations

import json
from typing import Any

from tests.contracts.chain import DAY_MS, who
from tests.contracts.flows import CLERK, CLERK2, HE, JIANG, WANG, ZHOU, lock_and_dispense, settle
from tests.contracts.rxclient import Prepared, World
from tests.contracts.test_account_transfer import PATIENT, call, with_ins02, zhang
from tests.contracts.test_settle_residuals6 import REPEAT, _fetch_claim, _snapshot
from tests.contracts.test_unsettled_moves import CLERK3

H01_ADMIN = who("h01:admin-h01:admin")


def _issued_with_copy(world: World, copy: bool = True, doctor: Any = JIANG) -> Prepared:
    """A repeat issued by h01 (its doctor), with the hospital's copy of the claim key."""
    rx_id = world.new_rx_id()
    content = world.content(rx_id, patient=PATIENT, **REPEAT)
    prep = world.prepare(content, hospital=doctor.org, pharmacy="p01", insurer="ins01")
    if copy:
        key = world.keyring.unwrap("ins01", prep.args["claim_keys"]["ins01"], f"rxchain/rx/{rx_id}/ins01")
        prep.args["claim_keys"][doctor.org] = world.keyring.wrap(doctor.org, key,
                                                                 f"rxchain/rx/{rx_id}/{doctor.org}/claim")
    world.issue(prep, doctor).unwrap()
    world.chain.submit("prescription", "review", HE, rx_id=rx_id, approve=True, reason="").unwrap()
    lock_and_dispense(world, prep).unwrap()
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
    world.chain.advance(28 * DAY_MS)
    lock_and_dispense(world, prep).unwrap()
    opened = _fetch_claim(world, CLERK2, rx_id)
    assert opened["claim"] == prep.claim
    claim = world.chain.submit("settlement", "settle", CLERK2,
                               transient={"claim": opened["claim"], "claim_salt": opened["salt"]},
                               rx_id=rx_id, fill=2).unwrap()
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
