"""review18: red-team of review16/settle8 (what an insurer she left reads)."""

from __future__ import annotations

from tests.contracts.chain import DAY_MS
from tests.contracts.flows import AUDITOR, CLERK, CLERK2, HE, JIANG
from tests.contracts.rxclient import World
from tests.contracts.test_account_transfer import call, with_ins02, zhang
from tests.contracts.test_settle_residuals7 import _hospital_copy_for, _issued_with_copy, _moved_before_fill_two


def _moved_there_and_back(world: World) -> str:
    """Fill 1 ins01's (settled); she moves to ins02, which h01 hands the claim key for fill 2;
    she moves back to ins01 before fill 2 (the move back names ins01 for fill 2 in place of
    ins02): ins02 insures no fill, holds the claim key. The id."""
    with_ins02(world)
    prep = _issued_with_copy(world)
    rx_id: str = prep.args["rx_id"]
    _moved_before_fill_two(world, prep)
    world.chain.advance(1)
    world.chain.submit("prescription", "grant_claim_key", JIANG, rx_id=rx_id, org="ins02",
                       wrapped_key=_hospital_copy_for(world, rx_id, "ins02")).unwrap()
    world.chain.advance(DAY_MS)
    call(world, "request_transfer", zhang(world), to_insurer="ins01")
    assert call(world, "accept_transfer", CLERK)["insurer"] == "ins01"
    world.chain.advance(DAY_MS)
    return rx_id


def test_an_insurer_she_left_whose_cover_the_move_back_replaced_sees_no_later_step(world: World) -> None:
    """She left ins02 before any fill of its own: the move back replaced ins02's cover entry,
    so no entry ended its cover -- ins02 was shown every step after she left it (a re-route
    to p02, in its trace and in show's ``pharmacy``), as if still her insurer. Now its view
    ends at the move away from it (settlement's ``left/``); ins01, h01, the auditor see it."""
    rx_id = _moved_there_and_back(world)
    world.chain.submit("prescription", "route", JIANG, rx_id=rx_id, pharmacy="p02",
                       wrapped_key=world.wrap_for(rx_id, "p02")).unwrap()
    shown = world.chain.query("prescription", "show", CLERK2, rx_id=rx_id).unwrap()
    assert shown["pharmacy"] == "p01", shown
    steps = world.chain.query("prescription", "trace", CLERK2, rx_id=rx_id).unwrap()["steps"]
    assert "route" not in [s["step"] for s in steps], steps
    assert "claim_key" in [s["step"] for s in steps]  # before it left: still shown
    for caller in (CLERK, HE, AUDITOR):
        assert world.chain.query("prescription", "show", caller, rx_id=rx_id).unwrap()["pharmacy"] == "p02"
        steps = world.chain.query("prescription", "trace", caller, rx_id=rx_id).unwrap()["steps"]
        assert steps[-1]["step"] == "route", caller
