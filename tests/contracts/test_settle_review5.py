"""Review of settle4 (settle5): an insurer opens an account only with a policy in force (its
first policy written after it saw a dispense covered it through the clock-skew window); an
entry from before formulary versions were kept is priced by its oldest version on record, never
by the entry as its owner last set it."""

from __future__ import annotations

from typing import Any

from tests.contracts.chain import DAY_MS, admin
from tests.contracts.flows import CLERK, settle
from tests.contracts.rxclient import World, pseudonym
from tests.contracts.test_account_transfer import dispensed
from tests.contracts.test_second_review import _drug_args, _forget_drug_versions
from tests.contracts.test_unsettled_moves import CLERK3, INS03_POLICY

NEW_PATIENT: dict[str, Any] = {"name": "patient-new", "id_number": "500103198001010011",
                               "user": {"org": "h01", "name": "patient-new"},
                               "account_balance_fen": 10_000, "deductible_used_fen": 0}


def _snapshot(world: World) -> dict[Any, Any]:
    return dict(world.chain.state.values)


# ---------------------------------------------------------------- 1. open_account needs a policy

def test_an_insurer_without_a_policy_in_force_opens_no_account(world: World) -> None:
    """ins03 has no policy: it opened her account, saw a dispense, then wrote its first policy,
    which covered that dispense through the clock-skew window. open_account takes a policy in
    force at its own stamp now (as accept_transfer): NO_POLICY, nothing written -- also with a
    policy written but effective later; from its effective time on it opens the account."""
    pt = {**world.patients["patient-zhang"], **NEW_PATIENT}
    world.enrol(pt).unwrap()
    world.chain.advance(1)
    before = _snapshot(world)
    out = world.open_account(pt, caller=CLERK3)
    assert out.reason == "NO_POLICY" and "ins03" in out.message, out
    assert _snapshot(world) == before
    t = world.chain.now
    world.set_policy(INS03_POLICY, t + DAY_MS).unwrap()
    world.chain.advance(1)
    before = _snapshot(world)
    assert world.open_account(pt, caller=CLERK3).reason == "NO_POLICY"
    assert _snapshot(world) == before
    world.chain.now = t + DAY_MS
    assert world.open_account(pt, caller=CLERK3).unwrap()["insurer"] == "ins03"
    st = world.chain.query("settlement", "patient_status", CLERK3, pseudonym=pseudonym(pt["id_number"]),
                           year=0).unwrap()
    assert st["account_balance_fen"] == 10_000


# ---------------------------------------------------------------- 2. legacy entries: oldest version

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
