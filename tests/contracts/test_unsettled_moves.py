"""Two residuals of moving an account and of settling as of the dispense (settle3):

* an insurer that never settled a fill held the patient's move up for good (OPEN_CLAIMS):
  a fill its insurer has left unsettled for more than 30 days after its dispense (by the
  transactions' timestamps) no longer holds the move; the move reports it, and the insurer
  of the prescription's issue -- the one that covered her on the date of service and holds
  its claim key -- still settles it, once, under its own policy and prices as of the
  dispense, from her account as it is then; the new insurer never does;
* a dispense stamped (clock skew) before the formulary entry's first version was priced by
  whatever the entry says at the settle -- a price of months later -- and one stamped before
  the insurer's first policy was refused with a message that did not say why: both are now
  refused by a reason code naming the dispense (settle4: priced and covered by the first
  version within two clock skews of the dispense, tests/contracts/test_late_settle.py)."""

from __future__ import annotations

from typing import Any

from tests.contracts.chain import DAY_MS, admin, who
from tests.contracts.flows import CLERK, CLERK2, WANG, dispense, settle
from tests.contracts.rxclient import Prepared, World
from tests.contracts.test_account_transfer import (
    INS02_POLICY,
    PATIENT,
    call,
    dispensed,
    issued,
    status,
    with_ins02,
    zhang,
)

WINDOW_MS = 30 * DAY_MS
CLERK3 = who("ins03:clerk-xu:clerk")
INS03_POLICY = {**INS02_POLICY, "insurer": "ins03"}
NEW_CODE = "XC08CAA999A001010100001"


def _left_with_ins01(world: World) -> tuple[Prepared, int]:
    """A fill of an ins01 prescription dispensed and never settled; its dispense time."""
    prep = dispensed(world)
    return prep, world.chain.now


def test_a_fill_left_unsettled_30_days_no_longer_holds_the_move(world: World) -> None:
    with_ins02(world)
    prep, disp_ms = _left_with_ins01(world)
    rx_id = prep.args["rx_id"]
    st0 = status(world)
    world.chain.now = disp_ms + WINDOW_MS
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    assert call(world, "accept_transfer", CLERK2) == "OPEN_CLAIMS"  # 30 days to the millisecond
    world.chain.advance(1)
    acct = call(world, "accept_transfer", CLERK2)
    assert acct["insurer"] == "ins02", acct
    move = acct["transfers"][-1]
    assert move["unsettled"] == [{"rx_id": rx_id, "fill": 1, "insurer": "ins01",
                                  "dispensed_ms": disp_ms}]
    assert move["unsettled_count"] == 1
    assert world.chain.events[-1].name == "account.transferred"
    assert status(world, CLERK2) == st0  # the money moved unchanged
    # the new insurer neither covered her on the date of service nor holds the claim key:
    # refused even with the claim subset in hand
    assert settle(world, prep, clerk=CLERK2).reason == "ACCESS_DENIED"
    # the insurer of its issue settles it: its policy (85% community, deductible met) and the
    # entry's prices as of the dispense -- DOMAIN.md's worked example, from her account now
    claim = settle(world, prep, clerk=CLERK).unwrap()
    assert (claim["insurer"], claim["dispensed_ms"], claim["ratio_bp"]) == ("ins01", disp_ms, 8500)
    assert (claim["medfee_fen"], claim["fulamt_fen"], claim["preself_fen"], claim["inscp_fen"],
            claim["deductible_fen"], claim["fund_fen"], claim["patient_fen"],
            claim["account_fen"], claim["cash_fen"]) == (
        10000, 1000, 500, 8500, 0, 7225, 2775, 1775, 1000)
    st1 = status(world, CLERK2)
    assert st1["account_balance_fen"] == st0["account_balance_fen"] - 1775
    assert st1["cap_used_fen"] == st0["cap_used_fen"] + 7225
    assert st1["deductible_used_fen"] == st0["deductible_used_fen"]
    # never paid twice: neither insurer settles it again, the new one never reverses it (the old
    # one may within the move's 30 days: tests/contracts/test_settle_review5.py)
    assert settle(world, prep, clerk=CLERK).reason == "DUPLICATE_CLAIM"
    assert settle(world, prep, clerk=CLERK2).reason == "ACCESS_DENIED"
    assert world.chain.submit("settlement", "reverse", CLERK2, claim_id=claim["claim_id"],
                              reason="BILLING_ERROR").reason == "CLAIM_NOT_FOUND"
    # her new insurer reads the claim behind the debit
    assert world.chain.query("settlement", "get_claim", CLERK2,
                             claim_id=claim["claim_id"]).unwrap()["account_fen"] == 1775
    assert status(world, CLERK2) == st1
    # a later move has nothing left to report
    call(world, "request_transfer", zhang(world), to_insurer="ins01")
    back = call(world, "accept_transfer", CLERK)
    assert back["insurer"] == "ins01" and back["transfers"][-1]["unsettled_count"] == 0


def test_a_fill_settled_while_the_move_is_endorsed_is_never_reported_left(world: World) -> None:
    """The move reads the fill's claim guard: the old insurer's settle committed between the
    move's endorsement and its commit makes the move an MVCC conflict -- never a move that
    reports a settled fill as left, nor one settled twice."""
    with_ins02(world)
    prep, disp_ms = _left_with_ins01(world)
    world.chain.now = disp_ms + WINDOW_MS + 1
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    endorsed, sim, ts = world.chain.simulate("settlement", "accept_transfer", CLERK2,
                                             pseudonym=world.pid(PATIENT))
    assert endorsed.ok and endorsed.value["transfers"][-1]["unsettled_count"] == 1
    settle(world, prep, clerk=CLERK).unwrap()
    assert world.chain.commit_validated(endorsed, sim, ts) == "MVCC_READ_CONFLICT"
    acct = call(world, "accept_transfer", CLERK2)
    assert acct["transfers"][-1]["unsettled"] == [] and acct["transfers"][-1]["unsettled_count"] == 0
    assert settle(world, prep, clerk=CLERK).reason == "DUPLICATE_CLAIM"


def test_a_reversed_fill_counts_from_its_dispense_and_many_are_listed_within_bounds(
        world: World) -> None:
    """The window runs from the dispense, also for a fill settled and reversed since (the
    insurer cannot restart it by reversing); the move lists at most 16 left fills and counts
    all of them."""
    with_ins02(world)
    preps = [dispensed(world) for _ in range(17)]
    claim = settle(world, preps[0], clerk=CLERK).unwrap()
    world.chain.advance(WINDOW_MS + 1)
    world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"],
                       reason="BILLING_ERROR").unwrap()
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    acct = call(world, "accept_transfer", CLERK2)
    move = acct["transfers"][-1]
    assert move["unsettled_count"] == 17 and len(move["unsettled"]) == 16
    listed = {(u["rx_id"], u["fill"]) for u in move["unsettled"]}
    assert len(listed) == 16 and listed <= {(p.args["rx_id"], 1) for p in preps}
    # the reversed one is settled again by the insurer of its issue, once
    settle(world, preps[0], clerk=CLERK).unwrap()
    assert settle(world, preps[0], clerk=CLERK).reason == "DUPLICATE_CLAIM"


def test_a_fill_inside_the_window_still_holds_the_move_a_fill_to_come_no_longer(world: World) -> None:
    with_ins02(world)
    _left_with_ins01(world)
    world.chain.advance(WINDOW_MS + 1)
    recent = dispensed(world)  # dispensed a moment ago: its insurer has 30 days
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    assert call(world, "accept_transfer", CLERK2) == "OPEN_CLAIMS"
    settle(world, recent, clerk=CLERK).unwrap()
    # approved, still to dispense: no claim yet, its fill will be ins02's (settle6: it held
    # the move up until it expired, test_settle_residuals6)
    issued(world)
    assert call(world, "accept_transfer", CLERK2)["insurer"] == "ins02"


# ---------------------------------------------------------------- as of the dispense


def _new_drug(world: World, price_fen: int) -> Any:
    return world.chain.submit("registry", "set_drug", admin("ins01"), code=NEW_CODE,
                              spec="10 mg x 28 tablets", cls="A", standard_fen=price_fen,
                              price_fen=price_fen, controlled="NONE")


def test_a_dispense_stamped_before_a_drugs_first_price_is_priced_by_it_not_later(
        world: World) -> None:
    """A new formulary entry's first version at t; a prescription of it issued and dispensed
    after that in commit order, but its dispense stamped before t (a clock within the skew
    bound). The settle fell back to the entry as it is at the settle (written for entries from
    before versions were kept), a price of a year later; settle3 refused it UNKNOWN_DRUG, a
    claim payable never. The entry existed when the dispense committed: its first version
    prices it (settle4, tests/contracts/test_late_settle.py)."""
    t = world.chain.now
    _new_drug(world, 3000).unwrap()
    world.chain.advance(60_000)
    prep = issued(world, drugs=[(NEW_CODE, 1)])
    world.chain.submit("prescription", "lock", WANG, rx_id=prep.args["rx_id"]).unwrap()
    dispense(world, prep, at_ms=t - 1).unwrap()
    world.chain.advance(365 * DAY_MS)
    _new_drug(world, 9000).unwrap()  # a year on, the entry's price triples
    assert settle(world, prep, clerk=CLERK).unwrap()["medfee_fen"] == 3000
    # one dispensed at its time is priced by the version then in force, never the later one
    later = dispensed(world, drugs=[(NEW_CODE, 1)])
    world.chain.advance(1)
    _new_drug(world, 12000).unwrap()
    assert settle(world, later, clerk=CLERK).unwrap()["medfee_fen"] == 9000


def test_a_dispense_stamped_before_the_new_insurers_first_policy(world: World) -> None:
    """ins03 publishes its first policy and takes her over; a prescription issued under it is
    dispensed by a transaction stamped further before that policy than two clock skews (no
    policy of ins03 was in force then): refused NO_POLICY naming the dispense, nothing written
    -- and, never settleable, the fill holds her next move up only 30 days. (Stamped within two
    skews before it, the first policy covers it: tests/contracts/test_late_settle.py.)"""
    with_ins02(world)
    t = world.chain.now
    world.set_policy(INS03_POLICY, 0).unwrap()  # ins03's first policy, in force from t
    world.chain.advance(1)
    call(world, "request_transfer", zhang(world), to_insurer="ins03")
    assert call(world, "accept_transfer", CLERK3)["insurer"] == "ins03"
    prep = issued(world, insurer="ins03")
    world.chain.submit("prescription", "lock", WANG, rx_id=prep.args["rx_id"]).unwrap()
    served = t - 2 * DAY_MS - 1
    dispense(world, prep, at_ms=served).unwrap()
    before = status(world, CLERK3)
    out = settle(world, prep, clerk=CLERK3)
    assert out.reason == "NO_POLICY", out
    assert "at the dispense" in out.message
    assert status(world, CLERK3) == before
    # settled by nobody: her move to ins02 waits 30 days from the dispense, no longer
    world.chain.now = served + WINDOW_MS
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    assert call(world, "accept_transfer", CLERK2) == "OPEN_CLAIMS"
    world.chain.advance(1)
    move = call(world, "accept_transfer", CLERK2)["transfers"][-1]
    assert move["unsettled"] == [{"rx_id": prep.args["rx_id"], "fill": 1, "insurer": "ins03",
                                  "dispensed_ms": served}]


def test_the_policy_in_force_at_the_dispense_not_at_the_settle(world: World) -> None:
    """ins02's second policy version, published after a dispense, never re-prices it; a
    dispense stamped after it is settled under it."""
    with_ins02(world)
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    call(world, "accept_transfer", CLERK2)
    old = dispensed(world, insurer="ins02", drugs=[("amlodipine", 2)])
    world.chain.advance(1)
    world.set_policy({**INS02_POLICY, "ratio_bp": {"community": 5000, "tertiary": 4000}},
                     0).unwrap()
    world.chain.advance(1)
    new = dispensed(world, insurer="ins02", drugs=[("amlodipine", 2)])
    assert settle(world, old, clerk=CLERK2).unwrap()["ratio_bp"] == 9000
    assert settle(world, new, clerk=CLERK2).unwrap()["ratio_bp"] == 5000
