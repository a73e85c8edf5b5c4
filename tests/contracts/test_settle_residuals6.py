"""Two residuals of moving an account (settle6):

* 16 moves among other insurers within 30 days pushed the move away from an insurer out of
  ``acct.transfers`` (the latest 16), cutting short its 30-day window to settle -- and reverse
  -- the fills that move left: the latest move away from each insurer is now kept per insurer
  and patient (``left/{insurer}/{pseudonym}``), one record, replaced by a later move away;
* a prescription that could still be dispensed (a repeat with fills left, or one not yet
  dispensed) held the move up until it expired (OPEN_CLAIMS): a fill not yet dispensed has no
  claim, so it holds no move; its insurer of record is her insurer at its dispense (DOMAIN.md
  section 3: the date of service) -- after the move the new insurer, recorded by the move in
  ``cover/{rx_id}`` -- which settles it under its own policy; the insurer she left is refused
  NOT_INSURER_OF_FILL for it, nothing written."""

from __future__ import annotations

import base64
import json
from typing import Any

from node.crypto import aead
from tests.contracts.chain import DAY_MS, who
from tests.contracts.flows import CLERK, CLERK2, WANG, dispense, lock_and_dispense, settle
from tests.contracts.rxclient import Prepared, World
from tests.contracts.test_account_transfer import call, dispensed, issued, status, with_ins02, zhang
from tests.contracts.test_late_settle import _left_and_moved
from tests.contracts.test_unsettled_moves import CLERK3, INS03_POLICY, WINDOW_MS

REPEAT: dict[str, Any] = {"max_fills": 2, "fill_interval_days": 28, "long_rx": True, "days": 28,
                          "chronic_reason": "stable hypertension",
                          "stability_assessment": "stable 6 months", "patient_confirmed": True}


def _snapshot(world: World) -> dict[Any, Any]:
    return dict(world.chain.state.values)


def _reverse(world: World, claim_id: str, clerk: Any = CLERK) -> Any:
    return world.chain.submit("settlement", "reverse", clerk, claim_id=claim_id,
                              reason="BILLING_ERROR")


def _move(world: World, to: str, clerks: dict[str, Any]) -> dict[str, Any]:
    """Her account moved to ``to`` (her own request, accepted by ``to``): the account."""
    req = call(world, "request_transfer", zhang(world), to_insurer=to)
    assert isinstance(req, dict), req
    acct: dict[str, Any] = call(world, "accept_transfer", clerks[to])
    assert isinstance(acct, dict) and acct["insurer"] == to, acct
    return acct


def _cover(world: World, prep: Prepared) -> Any:
    raw = world.chain.state.values.get(("settlement", "cover/" + prep.args["rx_id"]))
    return None if raw is None else json.loads(raw)


# ---------------------------------------------------------------- 1. the window per insurer

def test_sixteen_moves_among_other_insurers_leave_the_old_insurers_window_whole(world: World) -> None:
    """ins01 left two fills unsettled when she moved to ins02; within 30 days ins02 and ins03
    pass her back and forth 16 times, pushing that move out of ``acct.transfers``. ins01 was
    refused ACCOUNT_TRANSFERRED at once for both the fill it had still to settle and the late
    claim it had to correct; it keeps its whole window, and no more."""
    preps, move = _left_and_moved(world, 2)
    world.set_policy(INS03_POLICY, 0).unwrap()
    world.chain.advance(1)
    late = settle(world, preps[0], clerk=CLERK).unwrap()
    clerks = {"ins02": CLERK2, "ins03": CLERK3}
    here = "ins02"
    for _ in range(16):
        there = "ins03" if here == "ins02" else "ins02"
        call(world, "request_transfer", clerks[here], to_insurer=there)
        acct = call(world, "accept_transfer", clerks[there])
        assert acct["insurer"] == there, acct
        here = there
    assert all(m["from"] != "ins01" for m in acct["transfers"])  # pushed out of the record
    world.chain.now = move["ms"] + WINDOW_MS  # the last millisecond of its window
    claim = settle(world, preps[1], clerk=CLERK)
    assert claim.ok, claim
    assert claim.value["late_move_tx_id"] == move["tx_id"]
    assert _reverse(world, late["claim_id"]).ok
    world.chain.advance(1)  # past it: closed as before
    before = _snapshot(world)
    assert settle(world, preps[0], clerk=CLERK).reason == "SETTLE_WINDOW_CLOSED"
    assert _reverse(world, claim.value["claim_id"]).reason == "SETTLE_WINDOW_CLOSED"
    assert _snapshot(world) == before
    # one record of the move away from ins01, whatever came after
    assert [k for k in world.chain.state.keys("settlement") if k.startswith("left/ins01/")] == [
        "left/ins01/" + world.pid("patient-zhang")]


def test_a_later_move_away_from_the_same_insurer_replaces_its_record(world: World) -> None:
    """Back with ins01 and away again: the later move is the one its window runs from (the
    record replaced, never a second one); a claim settled late under the first stays
    ACCOUNT_TRANSFERRED."""
    preps, move = _left_and_moved(world, 2)
    late = settle(world, preps[0], clerk=CLERK).unwrap()
    _move(world, "ins01", {"ins01": CLERK})
    world.chain.advance(1)
    again = _move(world, "ins02", {"ins02": CLERK2})["transfers"][-1]
    keys = [k for k in world.chain.state.keys("settlement") if k.startswith("left/ins01/")]
    assert len(keys) == 1
    assert json.loads(world.chain.state.values[("settlement", keys[0])])["tx_id"] == again["tx_id"]
    assert again["tx_id"] != move["tx_id"]
    assert _reverse(world, late["claim_id"]).reason == "ACCOUNT_TRANSFERRED"
    world.chain.now = again["ms"] + WINDOW_MS
    assert settle(world, preps[1], clerk=CLERK).unwrap()["late_move_tx_id"] == again["tx_id"]


# ---------------------------------------------------------------- 2. fills still to dispense

def test_a_repeat_with_fills_left_no_longer_holds_the_move_and_its_later_fill_is_the_new_insurers(
        world: World) -> None:
    """Fill 1 dispensed and settled by ins01; fill 2 still to dispense held the move up until
    the prescription expired (OPEN_CLAIMS). The move goes through; fill 2, dispensed after it,
    is settled by ins02 under its own policy (ratio 90 % at a community hospital) from her
    account as it is; ins01 is refused NOT_INSURER_OF_FILL for it, nothing written, and ins02
    for fill 1 (ins01's claim)."""
    with_ins02(world)
    repeat = dispensed(world, **REPEAT)
    first = settle(world, repeat).unwrap()
    assert first["ratio_bp"] == 8500
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    acct = call(world, "accept_transfer", CLERK2)
    assert isinstance(acct, dict) and acct["insurer"] == "ins02", acct
    cover = _cover(world, repeat)
    assert [(s["fill"], s["insurer"]) for s in cover["from"]] == [(2, "ins02")]
    world.chain.advance(28 * DAY_MS)
    lock_and_dispense(world, repeat).unwrap()
    before = _snapshot(world)
    for fill in (0, 2):
        out = settle(world, repeat, clerk=CLERK, fill=fill)
        assert out.reason == "NOT_INSURER_OF_FILL", out
        assert "ins02" not in out.message  # never naming her insurer to another one
    assert settle(world, repeat, clerk=CLERK2, fill=1).reason == "NOT_INSURER_OF_FILL"
    assert settle(world, repeat, clerk=CLERK3, fill=2).reason == "ACCESS_DENIED"
    assert _snapshot(world) == before
    st0 = status(world, CLERK2)
    claim = settle(world, repeat, clerk=CLERK2, fill=2).unwrap()
    assert (claim["insurer"], claim["fill"], claim["ratio_bp"]) == ("ins02", 2, 9000)
    assert claim["medfee_fen"] == claim["fund_fen"] + claim["patient_fen"]
    assert claim["patient_fen"] == claim["account_fen"] + claim["cash_fen"]
    st1 = status(world, CLERK2)
    assert st1["account_balance_fen"] == st0["account_balance_fen"] - claim["account_fen"]
    assert st1["deductible_used_fen"] == st0["deductible_used_fen"] + claim["deductible_fen"]
    # its own claim: ins02 reverses it, to the fen; ins01 never sees it
    assert _reverse(world, claim["claim_id"], CLERK).reason == "CLAIM_NOT_FOUND"
    assert _reverse(world, claim["claim_id"], CLERK2).ok
    assert status(world, CLERK2) == st0
    assert settle(world, repeat, clerk=CLERK2, fill=2).ok


def test_an_undispensed_prescription_no_longer_holds_the_move(world: World) -> None:
    """Approved, never dispensed: it held the move (OPEN_CLAIMS) until it expired. Its fill,
    dispensed after the move, is ins02's; moves before the fill replace the entry (bounded:
    one entry a fill number), the latest move deciding."""
    with_ins02(world)
    world.set_policy(INS03_POLICY, 0).unwrap()
    world.chain.advance(1)
    prep = issued(world)
    clerks = {"ins01": CLERK, "ins02": CLERK2, "ins03": CLERK3}
    for to in ("ins02", "ins03", "ins02"):
        _move(world, to, clerks)
        world.chain.advance(1)
    cover = _cover(world, prep)
    assert [(s["fill"], s["insurer"]) for s in cover["from"]] == [(1, "ins02")]
    lock_and_dispense(world, prep).unwrap()
    assert settle(world, prep, clerk=CLERK).reason == "NOT_INSURER_OF_FILL"
    assert settle(world, prep, clerk=CLERK3).reason == "ACCESS_DENIED"  # its entry replaced
    assert settle(world, prep, clerk=CLERK2).unwrap()["insurer"] == "ins02"


def test_a_dispense_stamped_before_the_move_and_committed_after_it_is_the_new_insurers(
        world: World) -> None:
    """The ledger orders a dispense and a move (the move read the prescription's record, which
    the dispense writes): one committed after the move, stamped before it by the clock skew, is
    the new insurer's fill -- never one nobody settles (the old insurer may not: no move left
    it), never one both may."""
    with_ins02(world)
    prep = issued(world)
    t = world.chain.now + 60_000
    world.chain.now = t
    _move(world, "ins02", {"ins02": CLERK2})
    world.chain.submit("prescription", "lock", WANG, at_ms=t - 60_000,
                       rx_id=prep.args["rx_id"]).unwrap()
    dispense(world, prep, at_ms=t - 60_000).unwrap()
    assert settle(world, prep, clerk=CLERK).reason == "NOT_INSURER_OF_FILL"
    claim = settle(world, prep, clerk=CLERK2).unwrap()
    assert (claim["insurer"], claim["dispensed_ms"]) == ("ins02", t - 60_000)


def test_a_dispense_committed_between_the_moves_endorsement_and_commit_conflicts(
        world: World) -> None:
    """A dispense committed before the move (endorsed before it) makes the move an MVCC
    conflict: it read the prescription's record, so a fill is never the new insurer's while
    the move judged it dispensed under the old one, nor the other way round."""
    with_ins02(world)
    prep = issued(world)
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    endorsed, sim, ts = world.chain.simulate("settlement", "accept_transfer", CLERK2,
                                             pseudonym=world.pid("patient-zhang"))
    assert endorsed.ok
    lock_and_dispense(world, prep).unwrap()
    assert world.chain.commit_validated(endorsed, sim, ts) == "MVCC_READ_CONFLICT"
    assert call(world, "accept_transfer", CLERK2) == "OPEN_CLAIMS"  # dispensed, to settle
    assert settle(world, prep, clerk=CLERK).unwrap()["insurer"] == "ins01"
    assert call(world, "accept_transfer", CLERK2)["insurer"] == "ins02"


def test_a_later_fill_the_new_insurer_leaves_unsettled_is_its_own_to_settle_late(
        world: World) -> None:
    """Fill 2 of an ins01 repeat, dispensed under ins02 and left unsettled over 30 days: her
    next move lists it as ins02's, ins02 settles it within 30 days of that move, ins01 never."""
    with_ins02(world)
    world.set_policy(INS03_POLICY, 0).unwrap()
    world.chain.advance(1)
    repeat = dispensed(world, **REPEAT)
    settle(world, repeat).unwrap()
    _move(world, "ins02", {"ins02": CLERK2})
    world.chain.advance(28 * DAY_MS)
    lock_and_dispense(world, repeat).unwrap()
    world.chain.advance(WINDOW_MS + 1)
    move = _move(world, "ins03", {"ins03": CLERK3})["transfers"][-1]
    assert [(u["fill"], u["insurer"]) for u in move["unsettled"]] == [(2, "ins02")]
    assert settle(world, repeat, clerk=CLERK, fill=2).reason == "NOT_INSURER_OF_FILL"
    assert settle(world, repeat, clerk=CLERK3, fill=2).reason == "ACCESS_DENIED"
    claim = settle(world, repeat, clerk=CLERK2, fill=2).unwrap()
    assert (claim["insurer"], claim["late_move_tx_id"]) == ("ins02", move["tx_id"])


def test_a_settle_for_a_patient_who_never_moved_reads_no_cover(world: World) -> None:
    """The cover record is read only for an account that moved: a settle of a patient who never
    moved reads nothing more than before."""
    prep = dispensed(world)
    endorsed, sim, _ = world.chain.simulate("settlement", "settle", CLERK,
                                            transient={"claim": prep.claim,
                                                       "claim_salt": prep.claim_salt},
                                            rx_id=prep.args["rx_id"], fill=0)
    assert endorsed.ok
    assert not any(k.startswith(("cover/", "left/")) for ns, k in sim.reads if ns == "settlement")


def test_a_third_insurer_is_refused_as_before(world: World) -> None:
    """An insurer that never covered any fill of the prescription: ACCESS_DENIED, naming no
    insurer, before anything about the fill is told."""
    with_ins02(world)
    prep = issued(world)
    _move(world, "ins02", {"ins02": CLERK2})
    lock_and_dispense(world, prep).unwrap()
    out = settle(world, prep, clerk=who("ins03:clerk-xu:clerk"), fill=5)
    assert out.reason == "ACCESS_DENIED" and "ins02" not in out.message, out


# ---------------------------------------------------------------- the claim key handed over

def _ins02_settles_fill_two(world: World, prep: Prepared) -> dict[str, Any]:
    """Fill 2 of ``prep`` dispensed 28 days on, and settled by ins02 with the claim subset its
    grant opens (the claim key handed over to it): the claim."""
    world.chain.advance(28 * DAY_MS)
    lock_and_dispense(world, prep).unwrap()
    rx_id = prep.args["rx_id"]
    opened = _fetch_claim(world, CLERK2, rx_id)
    assert opened["claim"] == prep.claim
    claim: dict[str, Any] = world.chain.submit("settlement", "settle", CLERK2,
                                               transient={"claim": opened["claim"], "claim_salt": opened["salt"]},
                                               rx_id=rx_id, fill=2).unwrap()
    return claim


def _fetch_claim(world: World, clerk: Any, rx_id: str) -> dict[str, Any]:
    """The claim subset and salt ``clerk``'s insurer opens with its grant (get_key)."""
    got = world.chain.submit("prescription", "get_key", clerk, rx_id=rx_id).unwrap()
    assert "error" not in got, got
    key = world.keyring.unwrap(clerk.org, got["wrapped_key"], f"rxchain/rx/{rx_id}/{clerk.org}")
    body: dict[str, Any] = json.loads(aead.decrypt(key, base64.b64decode(got["ciphertext"]),
                                                   rx_id.encode()))
    return body


def test_the_claim_key_reaches_the_insurer_of_a_later_fill_from_its_holder(world: World) -> None:
    """ins02, insurer of record of fill 2, held no claim key: the claim subset it must check
    against the commitment was wrapped for ins01 alone. ins01's clerk (a holder) wraps it for
    ins02 -- only for an insurer the move named (NOT_INSURER_OF_FILL otherwise), once
    (ALREADY_GRANTED); anyone not holding it gets the missing id's answer -- and ins02 opens the
    claim subset and settles fill 2 with it."""
    with_ins02(world)
    world.set_policy(INS03_POLICY, 0).unwrap()
    world.chain.advance(1)
    repeat = dispensed(world, **REPEAT)
    rx_id = repeat.args["rx_id"]
    settle(world, repeat).unwrap()
    assert world.chain.submit("prescription", "get_key", CLERK2, rx_id=rx_id).unwrap()["error"] == \
        "NO_KEY_GRANT"
    claim_key = world.keyring.unwrap("ins01", repeat.args["claim_keys"]["ins01"],
                                     f"rxchain/rx/{rx_id}/ins01")
    for_ins02 = world.keyring.wrap("ins02", claim_key, f"rxchain/rx/{rx_id}/ins02")
    before = _snapshot(world)
    out = world.chain.submit("prescription", "grant_claim_key", CLERK, rx_id=rx_id, org="ins02",
                             wrapped_key=for_ins02)
    assert out.reason == "NOT_INSURER_OF_FILL", out  # no move yet: ins02 insures no fill
    assert _snapshot(world) == before
    _move(world, "ins02", {"ins02": CLERK2})
    before = _snapshot(world)
    for caller, reason in ((CLERK2, "NOT_FOUND"), (CLERK3, "NOT_FOUND"), (WANG, "WRONG_ROLE")):
        out = world.chain.submit("prescription", "grant_claim_key", caller, rx_id=rx_id,
                                 org="ins02", wrapped_key=for_ins02)
        assert out.reason == reason, (caller, out)
    assert world.chain.submit("prescription", "grant_claim_key", CLERK, rx_id=rx_id, org="ins03",
                              wrapped_key=for_ins02).reason == "NOT_INSURER_OF_FILL"
    assert _snapshot(world) == before  # refusals write nothing
    world.chain.submit("prescription", "grant_claim_key", CLERK, rx_id=rx_id, org="ins02",
                       wrapped_key=for_ins02).unwrap()
    assert world.chain.submit("prescription", "grant_claim_key", CLERK, rx_id=rx_id, org="ins02",
                              wrapped_key=for_ins02).reason == "ALREADY_GRANTED"
    claim = _ins02_settles_fill_two(world, repeat)
    assert claim["insurer"] == "ins02"
    # the holder may read the trail now (a party by its grant)
    assert world.chain.query("settlement", "trail", CLERK2, rx_id=rx_id).ok
