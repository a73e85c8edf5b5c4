"""Review of settle3 (settle4): a dispense stamped before its formulary entry's or its
insurer's policy's first version -- a clock-skew artefact, the entry or policy existed when the
dispense committed -- is priced and covered by that first version when it lies within two
clock skews of the dispense (refused beyond, the policy; an entry from before versions were
kept, updated with no copy of it, is read as it is, as before); the old insurer settles a fill
a move left unsettled within 30 days of the move only (its settle shows her account's
figures); an expired transfer request of the patient's no longer holds her insurer's own
request or withdrawal up."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from node.orderer.configrules import LIMIT_BOUNDS
from tests.contracts.chain import DAY_MS, admin
from tests.contracts.flows import CLERK, CLERK2, WANG, dispense, settle
from tests.contracts.rxclient import World
from tests.contracts.test_account_transfer import call, dispensed, issued, status, with_ins02, zhang
from tests.contracts.test_second_review import _drug_args, _forget_drug_versions
from tests.contracts.test_unsettled_moves import CLERK3, INS03_POLICY, NEW_CODE, WINDOW_MS

ROOT = Path(__file__).resolve().parents[2]
SKEW_MS = 86_400_000  # the config rules' largest limits.max_clock_skew_ms
TWO_SKEWS = 2 * SKEW_MS


def _set_new_drug(world: World, price_fen: int, at_ms: int | None = None) -> Any:
    return world.chain.submit("registry", "set_drug", admin("ins01"), at_ms=at_ms, code=NEW_CODE,
                              spec="10 mg x 28 tablets", cls="A", standard_fen=price_fen,
                              price_fen=price_fen, controlled="NONE")


def _dispensed_at(world: World, at_ms: int, **fields: Any) -> Any:
    prep = issued(world, **fields)
    world.chain.submit("prescription", "lock", WANG, rx_id=prep.args["rx_id"]).unwrap()
    dispense(world, prep, at_ms=at_ms).unwrap()
    return prep


def test_the_contract_holds_the_config_rules_clock_skew_bound() -> None:
    """Contracts see no config: settlement's MAX_CLOCK_SKEW_MS is the config rules' bound."""
    tree = ast.parse((ROOT / "contracts" / "settlement.py").read_text(encoding="utf-8"))
    consts = {getattr(n.targets[0], "id", ""): ast.unparse(n.value) for n in tree.body
              if isinstance(n, ast.Assign)}
    assert LIMIT_BOUNDS[("limits", "max_clock_skew_ms")][1] == SKEW_MS == 86_400_000
    assert consts["MAX_CLOCK_SKEW_MS"] == "DAY_MS" and consts["DAY_MS"] == "86400000"
    assert consts["FIRST_VERSION_WINDOW_MS"] == "2 * MAX_CLOCK_SKEW_MS"


def test_a_dispense_stamped_within_two_skews_before_a_drugs_first_version_is_priced_by_it(
        world: World) -> None:
    """Issue and dispense check the formulary, so the entry existed when the dispense committed:
    a dispense stamped before its first version (by two skews at most) is priced by that first
    version -- it was refused UNKNOWN_DRUG, a claim payable never -- and never by a later one."""
    t = world.chain.now
    _set_new_drug(world, 3000).unwrap()
    world.chain.advance(60_000)
    edge = _dispensed_at(world, t - TWO_SKEWS, drugs=[(NEW_CODE, 1)])
    near = _dispensed_at(world, t - 1, drugs=[(NEW_CODE, 2)])
    world.chain.advance(365 * DAY_MS)
    _set_new_drug(world, 9000).unwrap()  # a year on, the entry's price triples
    assert settle(world, edge, clerk=CLERK).unwrap()["medfee_fen"] == 3000
    assert settle(world, near, clerk=CLERK).unwrap()["medfee_fen"] == 6000


def test_the_oldest_of_many_versions_in_the_window_prices_it(world: World) -> None:
    """More versions in the window than a page reads: the oldest is still found (the rest of
    the window halved per read), at a bounded cost."""
    t = world.chain.now
    _set_new_drug(world, 3000, at_ms=t).unwrap()
    for i in range(1, 70):
        _set_new_drug(world, 3000 + i, at_ms=t + i * 1000).unwrap()
    world.chain.now = t + 100_000
    prep = _dispensed_at(world, t - 1, drugs=[(NEW_CODE, 1)])
    out = settle(world, prep, clerk=CLERK)
    assert out.unwrap()["medfee_fen"] == 3000, out
    assert out.gas < 60_000, out.gas  # one page of 64 and ~28 one-row reads


def _legacy_dispensed_then_updated(world: World) -> Any:
    """A dispense priced by an entry from before versions were kept; the entry updated 10 days
    on by a registry that kept no ms-0 copy of it (price 1.00 a box)."""
    _forget_drug_versions(world)
    prep = dispensed(world)
    world.chain.advance(10 * DAY_MS)
    cheap = _drug_args(world, "amlodipine", price_fen=100, standard_fen=100)
    world.chain.submit("registry", "set_drug", admin("ins01"), **cheap).unwrap()
    ms0 = ("registry", "drugver/" + cheap["code"] + "/9999999999999")
    assert ms0 in world.chain.state.values
    del world.chain.state.values[ms0]  # that registry wrote no ms-0 copy
    world.chain.advance(DAY_MS)
    return prep


def test_an_entry_from_before_versions_updated_without_a_copy_is_read_as_it_is(world: World) -> None:
    """An entry written before versions were kept and updated by the registry that introduced
    them, which kept no copy of it as the version of ms 0: a dispense before that update has no
    version at or before it and none within two skews, yet the entry was in the formulary (the
    issue checked it). It was refused UNKNOWN_DRUG; it is read as it is, as before settle3."""
    prep = _legacy_dispensed_then_updated(world)
    claim = settle(world, prep, clerk=CLERK).unwrap()
    assert claim["medfee_fen"] == 2 * 100 + 2 * 2500 + 1000


def test_a_dispense_stamped_within_two_skews_before_the_first_policy_is_covered_by_it(
        world: World) -> None:
    """ins03's first policy in force from t; it takes her over (a move takes a policy in
    force), so a dispense of its prescription stamped before t (two skews at most) is covered
    by that first policy -- it was NO_POLICY, payable never; one stamped further back had no
    policy then: NO_POLICY, nothing written."""
    with_ins02(world)
    t = world.chain.now
    world.set_policy(INS03_POLICY, 0).unwrap()
    world.chain.advance(1)
    call(world, "request_transfer", zhang(world), to_insurer="ins03")
    assert call(world, "accept_transfer", CLERK3)["insurer"] == "ins03"
    near = _dispensed_at(world, t - TWO_SKEWS, insurer="ins03")
    far = _dispensed_at(world, t - TWO_SKEWS - 1, insurer="ins03")
    before = status(world, CLERK3)
    out = settle(world, far, clerk=CLERK3)
    assert out.reason == "NO_POLICY" and "at the dispense" in out.message, out
    assert status(world, CLERK3) == before
    claim = settle(world, near, clerk=CLERK3).unwrap()
    assert (claim["ratio_bp"], claim["policy_effective_ms"]) == (9000, t)


def _left_and_moved(world: World, n: int = 1) -> tuple[list[Any], dict[str, Any]]:
    """n ins01 fills left unsettled, her account moved to ins02 over 30 days on: the move."""
    with_ins02(world)
    preps = [dispensed(world) for _ in range(n)]
    world.chain.advance(WINDOW_MS + 1)
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    move: dict[str, Any] = call(world, "accept_transfer", CLERK2)["transfers"][-1]
    assert move["unsettled_count"] == n
    return preps, move


def test_the_old_insurer_settles_a_left_fill_within_30_days_of_the_move_only(world: World) -> None:
    """After the move the old insurer's settle -- or a preview of one, never committed -- showed
    it her balance, deductible and cap left (patient_status refuses it those) for good. It
    settles a fill the move left within 30 days of the move; SETTLE_WINDOW_CLOSED after,
    figures shown none, nothing written."""
    preps, move = _left_and_moved(world, 2)
    world.chain.now = move["ms"] + WINDOW_MS
    assert settle(world, preps[0], clerk=CLERK).ok  # the last millisecond of the window
    world.chain.advance(1)
    before = status(world, CLERK2)
    out = settle(world, preps[1], clerk=CLERK)
    assert out.reason == "SETTLE_WINDOW_CLOSED", out
    assert "balance" not in out.message and str(before["account_balance_fen"]) not in out.message
    assert status(world, CLERK2) == before
    sub = [{"code": preps[1].claim["lines"][0]["code"], "qty": 1}]  # a line subset probes account_fen
    assert settle(world, preps[1], clerk=CLERK, lines=sub).reason == "SETTLE_WINDOW_CLOSED"
    assert settle(world, preps[1], clerk=CLERK2).reason == "ACCESS_DENIED"  # never the new one


def test_a_left_fill_beyond_the_listed_16_settles_in_the_window(world: World) -> None:
    """A move lists 16 left fills and counts all: the 17th, not listed, was left all the same
    (dispensed over 30 days before the move) and settles within the window."""
    preps, move = _left_and_moved(world, 17)
    listed = {(u["rx_id"], u["fill"]) for u in move["unsettled"]}
    unlisted = [p for p in preps if (p.args["rx_id"], 1) not in listed]
    assert len(unlisted) == 1
    assert settle(world, unlisted[0], clerk=CLERK).ok
    world.chain.now = move["ms"] + WINDOW_MS + 1
    listed_one = next(p for p in preps if (p.args["rx_id"], 1) in listed)
    assert settle(world, listed_one, clerk=CLERK).reason == "SETTLE_WINDOW_CLOSED"


def test_a_move_back_gives_the_insurer_its_patient_and_a_later_move_a_new_window(world: World) -> None:
    """Back with ins01 she is its patient again: it settles as any insurer its own; moved away
    again, the later move (which lists the fill again) opens a new window."""
    preps, move = _left_and_moved(world, 2)
    world.chain.now = move["ms"] + WINDOW_MS + 1
    assert settle(world, preps[0], clerk=CLERK).reason == "SETTLE_WINDOW_CLOSED"
    call(world, "request_transfer", zhang(world), to_insurer="ins01")
    assert call(world, "accept_transfer", CLERK)["insurer"] == "ins01"
    assert settle(world, preps[0], clerk=CLERK).ok
    world.chain.advance(1)
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    again = call(world, "accept_transfer", CLERK2)["transfers"][-1]
    assert [u["rx_id"] for u in again["unsettled"]] == [preps[1].args["rx_id"]]
    world.chain.now = again["ms"] + WINDOW_MS
    assert settle(world, preps[1], clerk=CLERK).ok


def test_an_expired_request_of_hers_holds_her_insurers_own_request_up_no_more(world: World) -> None:
    """Her request past its 30 days is no longer accepted (TRANSFER_EXPIRED); it still made her
    insurer's own request_transfer and cancel_transfer ACCESS_DENIED until she withdrew it or
    the insurer it names declined. Expired, it is no pending request there (as accept_transfer,
    patient_status and the registry's get_patient read it); within its 30 days it is hers."""
    with_ins02(world)
    world.set_policy(INS03_POLICY, 0).unwrap()
    world.chain.advance(1)
    t = world.chain.now
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    world.chain.now = t + WINDOW_MS
    assert call(world, "request_transfer", CLERK, to_insurer="ins03") == "ACCESS_DENIED"
    assert call(world, "cancel_transfer", CLERK) == "ACCESS_DENIED"
    world.chain.advance(1)
    assert call(world, "accept_transfer", CLERK2) == "TRANSFER_EXPIRED"
    assert call(world, "cancel_transfer", CLERK)["requested_by"] == "patient"
    world.chain.advance(1)
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    world.chain.advance(WINDOW_MS + 1)
    req = call(world, "request_transfer", CLERK, to_insurer="ins03")
    assert (req["requested_by"], req["to"]) == ("ins01", "ins03")
    assert call(world, "accept_transfer", CLERK3)["insurer"] == "ins03"
