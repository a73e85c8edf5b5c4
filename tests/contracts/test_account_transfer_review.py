"""Red-team review of moving an account (review4): the insurer a patient asks to leave cannot
keep her by withdrawing or replacing her request, and a dispense whose timestamp is before a
prescription's deadline cannot land after a move that judged it expired by its own, later,
timestamp (transaction timestamps are not in commit order: the validators allow each
``max_clock_skew_ms`` either side of its block's, and the move does not conflict with it)."""

from __future__ import annotations

from tests.contracts.chain import DAY_MS, admin, who
from tests.contracts.flows import CLERK, CLERK2, WANG, dispense, settle
from tests.contracts.rxclient import World
from tests.contracts.test_account_transfer import INS02_POLICY, call, issued, with_ins02, zhang

INS03_POLICY = {**INS02_POLICY, "insurer": "ins03"}
CLERK3 = who("ins03:clerk-xu:clerk")


def test_her_insurer_neither_withdraws_nor_replaces_her_own_request(world: World) -> None:
    with_ins02(world)
    world.set_policy(INS03_POLICY, 0).unwrap()
    world.chain.advance(1)
    mine = call(world, "request_transfer", zhang(world), to_insurer="ins02")
    assert mine["requested_by"] == "patient"
    # the insurer she leaves: no withdrawal, no replacement by a request of its own (to an
    # insurer that would decline, or one of its choosing) -- by clerk or admin
    for caller in (CLERK, admin("ins01")):
        assert call(world, "cancel_transfer", caller) == "ACCESS_DENIED"
        assert call(world, "request_transfer", caller, to_insurer="ins03") == "ACCESS_DENIED"
    assert call(world, "accept_transfer", CLERK3) == "NOT_FOUND"
    # her request stands: the insurer asked takes her
    assert call(world, "accept_transfer", CLERK2)["insurer"] == "ins02"
    # she replaces and withdraws her own; the insurer asked declines
    call(world, "request_transfer", zhang(world), to_insurer="ins01")
    assert call(world, "request_transfer", zhang(world), to_insurer="ins03")["to"] == "ins03"
    assert call(world, "cancel_transfer", CLERK3)["requested_by"] == "patient"  # declined
    call(world, "request_transfer", zhang(world), to_insurer="ins03")
    assert call(world, "cancel_transfer", zhang(world))["to"] == "ins03"
    # a request her insurer made: it replaces and withdraws it, and so may she
    assert call(world, "request_transfer", CLERK2, to_insurer="ins01")["requested_by"] == "ins02"
    assert call(world, "request_transfer", CLERK2, to_insurer="ins03")["to"] == "ins03"
    assert call(world, "cancel_transfer", CLERK2)["to"] == "ins03"
    call(world, "request_transfer", CLERK2, to_insurer="ins03")
    assert call(world, "request_transfer", zhang(world), to_insurer="ins01")["requested_by"] == "patient"
    assert call(world, "cancel_transfer", CLERK2) == "ACCESS_DENIED"


def test_a_dispense_stamped_before_the_deadline_landing_after_the_move_is_settled(
        world: World) -> None:
    """An approved prescription, undispensed, a minute past its validity by the move's clock:
    a lock and dispense stamped a minute before it still commit after the move (the move read
    the prescription's record, the dispense writes it: the ledger orders them). The move used
    to wait SKEW_MARGIN_MS past the deadline, the claim key being the old insurer's; a fill not
    yet dispensed now holds no move (settle6), and a fill dispensed after the move -- by the
    ledger's order, whatever its stamp -- is the new insurer's to settle, never nobody's."""
    with_ins02(world)
    prep = issued(world)
    rx_id = prep.args["rx_id"]
    end = world.chain.query("prescription", "show", CLERK, rx_id=rx_id).unwrap()["valid_end_ms"]
    world.chain.now = end + 60_000
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    assert call(world, "accept_transfer", CLERK2)["insurer"] == "ins02"
    # the dispense stamped before the deadline commits after the move
    world.chain.submit("prescription", "lock", WANG, at_ms=end - 60_000, rx_id=rx_id).unwrap()
    dispense(world, prep, at_ms=end - 60_000).unwrap()
    # ... and is settled by the insurer holding her account at its dispense
    assert settle(world, prep, clerk=CLERK).reason == "NOT_INSURER_OF_FILL"
    assert settle(world, prep, clerk=CLERK2).unwrap()["insurer"] == "ins02"


def test_a_prescription_expired_or_past_its_deadline_gets_no_new_insurer(world: World) -> None:
    """The move hands the fills still to dispense to the insurer taking her over: a
    prescription marked EXPIRED (a state every later dispense reads) or over 2 days past its
    deadline has none; one past it by the move's clock within 2 days may still see a dispense
    stamped before it, so its next fill is the new insurer's."""
    with_ins02(world)
    marked = issued(world)
    waited = issued(world)
    late = issued(world)
    end = world.chain.query("prescription", "show", CLERK,
                            rx_id=waited.args["rx_id"]).unwrap()["valid_end_ms"]
    world.chain.now = end + 60_000
    world.chain.submit("prescription", "expire", zhang(world), rx_id=marked.args["rx_id"]).unwrap()
    assert world.chain.submit("prescription", "lock", WANG, at_ms=end - 60_000,
                              rx_id=marked.args["rx_id"]).reason == "EXPIRED"
    world.chain.now = end + 2 * DAY_MS
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    assert call(world, "accept_transfer", CLERK2)["insurer"] == "ins02"  # to the millisecond
    covered = [k for k in world.chain.state.keys("settlement") if k.startswith("cover/")]
    assert covered == sorted("cover/" + p.args["rx_id"] for p in (waited, late))
    world.chain.now = end + 2 * DAY_MS + 1
    call(world, "request_transfer", zhang(world), to_insurer="ins01")
    assert call(world, "accept_transfer", CLERK)["insurer"] == "ins01"
    after = [k for k in world.chain.state.keys("settlement") if k.startswith("cover/")]
    assert after == covered  # nothing more to hand over: no entry written
