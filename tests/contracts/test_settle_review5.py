"""Review of settle4 (settle5): an insurer opens an account only with a policy in force (its
first policy written after it saw a dispense covered it through the clock-skew window); an
entry from before formulary versions were kept is priced by its oldest version on record, never
by the entry as its owner last set it; a claim the old insurer settled after her account moved
away is reversed by it within that move's 30 days, to the fen, and refused after."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.contracts.chain import DAY_MS, admin
from tests.contracts.flows import CLERK, CLERK2, settle
from tests.contracts.rxclient import World, pseudonym
from tests.contracts.test_account_transfer import call, zhang
from tests.contracts.test_late_settle import _left_and_moved, _legacy_dispensed_then_updated
from tests.contracts.test_second_review import _drug_args
from tests.contracts.test_unsettled_moves import CLERK3, INS03_POLICY, WINDOW_MS

NEW_PATIENT: dict[str, Any] = {"name": "patient-new", "id_number": "500103198001010011",
                               "user": {"org": "h01", "name": "patient-new"},
                               "account_balance_fen": 10_000, "deductible_used_fen": 0}


def _snapshot(world: World) -> dict[Any, Any]:
    return dict(world.chain.state.values)


def _figures(world: World, year: int) -> tuple[int, int, int, dict[str, int]]:
    """Her balance and ``year``'s counters as her new insurer reads them (a disease's cap usage
    brought back to 0 is the same as none)."""
    st = world.chain.query("settlement", "patient_status", CLERK2, pseudonym=world.pid("patient-zhang"),
                           year=year).unwrap()
    caps = {k: v for k, v in st["cap_used_by_disease"].items() if v != 0}
    return st["account_balance_fen"], st["deductible_used_fen"], st["cap_used_fen"], caps


def _reverse(world: World, claim_id: str, clerk: Any = CLERK) -> Any:
    return world.chain.submit("settlement", "reverse", clerk, claim_id=claim_id,
                              reason="BILLING_ERROR")


# ---------------------------------------------------------------- 1. open_account needs a policy

def test_an_insurer_without_a_policy_in_force_opens_no_account(world: World) -> None:
    """ins03 has no policy: it opened her account, saw a dispense, then wrote its first policy,
    which covered that dispense through the clock-skew window. open_account takes a policy in
    force at its own stamp now (as accept_transfer): NO_POLICY, nothing written -- also with a
    policy written but effective later; from its effective time on it opens the account."""
    pt = {**world.patients["patient-zhang"], **NEW_PATIENT}
    world.enrol(pt).unwrap()
    world.ask_to_open(pt, "ins03").unwrap()  # she asks ins03 (reg6: open_account takes her request)
    world.chain.advance(1)
    before = _snapshot(world)
    out = world.open_account(pt, caller=CLERK3, asked=False)
    assert out.reason == "NO_POLICY" and "ins03" in out.message, out
    assert _snapshot(world) == before
    t = world.chain.now
    world.set_policy(INS03_POLICY, t + DAY_MS).unwrap()
    world.chain.advance(1)
    before = _snapshot(world)
    assert world.open_account(pt, caller=CLERK3, asked=False).reason == "NO_POLICY"
    assert _snapshot(world) == before
    world.chain.now = t + DAY_MS
    assert world.open_account(pt, caller=CLERK3, asked=False).unwrap()["insurer"] == "ins03"
    st = world.chain.query("settlement", "patient_status", CLERK3, pseudonym=pseudonym(pt["id_number"]),
                           year=0).unwrap()
    assert st["account_balance_fen"] == 10_000


# ---------------------------------------------------------------- 2. legacy entries: oldest version

def test_a_legacy_entry_is_priced_by_its_oldest_version_not_as_its_owner_last_set_it(
        world: World) -> None:
    """The entry's owner re-priced old claims by updating the entry before the settle: they
    were priced by the entry as it is at the settle (90.00 a box). The oldest version on
    record prices them (1.00), whatever came after."""
    prep = _legacy_dispensed_then_updated(world)
    dear = _drug_args(world, "amlodipine", price_fen=9000, standard_fen=9000)
    world.chain.submit("registry", "set_drug", admin("ins01"), **dear).unwrap()
    world.chain.advance(DAY_MS)
    claim = settle(world, prep, clerk=CLERK).unwrap()
    assert claim["medfee_fen"] == 2 * 100 + 2 * 2500 + 1000


def test_the_oldest_of_more_versions_than_a_page_prices_a_legacy_entry(world: World) -> None:
    """70 versions after the dispense (more than a page of 64): the oldest is still found, at a
    bounded cost (a page, then one-row reads halving the rest)."""
    prep = _legacy_dispensed_then_updated(world)
    for i in range(1, 70):
        dear = _drug_args(world, "amlodipine", price_fen=100 + i, standard_fen=100 + i)
        world.chain.submit("registry", "set_drug", admin("ins01"), **dear).unwrap()
        world.chain.advance(1000)
    out = settle(world, prep, clerk=CLERK)
    assert out.unwrap()["medfee_fen"] == 2 * 100 + 2 * 2500 + 1000, out
    assert out.gas < 150_000, out.gas


# ---------------------------------------------------------------- 3. reversing a late settle

def _late_settled(world: World, n: int = 1) -> tuple[list[Any], dict[str, Any]]:
    """n ins01 fills left unsettled, her account moved to ins02 (a ms ago): (preps, move)."""
    preps, move = _left_and_moved(world, n)
    world.chain.advance(1)
    return preps, move


def test_the_old_insurer_reverses_its_late_settle_within_the_window_to_the_fen(world: World) -> None:
    """Its late settle could not be corrected (ACCOUNT_TRANSFERRED) though it could still settle
    the fill: within the move's 30 days it reverses it, her balance, deductible and cap usage
    back to the fen, and settles the fill again."""
    preps, move = _late_settled(world)
    year = datetime.fromtimestamp((move["ms"] - WINDOW_MS + 8 * 3600_000) / 1000, UTC).year
    st0 = _figures(world, year)  # the year of the dispense (China time)
    claim = settle(world, preps[0], clerk=CLERK).unwrap()
    assert claim["year"] == year and claim["account_fen"] > 0 and claim["fund_fen"] > 0
    assert claim["late_move_tx_id"] == move["tx_id"]
    assert _figures(world, year) != st0
    world.chain.now = move["ms"] + WINDOW_MS  # the last millisecond of the window
    out = _reverse(world, claim["claim_id"])
    assert out.unwrap()["status"] == "REVERSED", out
    assert _figures(world, year) == st0
    again = settle(world, preps[0], clerk=CLERK).unwrap()
    assert (again["account_fen"], again["fund_fen"]) == (claim["account_fen"], claim["fund_fen"])
    # the new insurer never reverses it
    assert _reverse(world, again["claim_id"], CLERK2).reason == "CLAIM_NOT_FOUND"


def test_a_late_settle_is_not_reversed_after_the_window_nor_after_a_later_move(world: World) -> None:
    """Past the move's 30 days: SETTLE_WINDOW_CLOSED, nothing written. A claim settled before
    the move stays ACCOUNT_TRANSFERRED; so does a late settle once she came back and moved away
    again (a later move: the fill it reopened would be left with nobody to settle it)."""
    preps, move = _late_settled(world, 2)
    late = settle(world, preps[0], clerk=CLERK).unwrap()
    world.chain.now = move["ms"] + WINDOW_MS + 1
    before = _snapshot(world)
    out = _reverse(world, late["claim_id"])
    assert out.reason == "SETTLE_WINDOW_CLOSED", out
    assert _snapshot(world) == before
    # back with ins01 and away again: the latest move away is not the one it settled under
    call(world, "request_transfer", zhang(world), to_insurer="ins01")
    assert call(world, "accept_transfer", CLERK)["insurer"] == "ins01"
    early = settle(world, preps[1], clerk=CLERK).unwrap()  # settled while it holds her account
    world.chain.advance(1)
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    assert call(world, "accept_transfer", CLERK2)["insurer"] == "ins02"
    world.chain.advance(1)
    before = _snapshot(world)
    assert _reverse(world, late["claim_id"]).reason == "ACCOUNT_TRANSFERRED"
    assert _reverse(world, early["claim_id"]).reason == "ACCOUNT_TRANSFERRED"
    assert _snapshot(world) == before
