"""What an insurer she left reads (contracts/README.md "Moving an account", settle8): ``show``
as the record stood at the move that ended its cover -- no pharmacy, status, review or
revocation of a later step -- ``get_key`` without the count of later note keys, and trace
cursors that count only the steps it sees."""

from __future__ import annotations

from typing import Any

from tests.contracts.chain import DAY_MS
from tests.contracts.flows import AUDITOR, CLERK, CLERK2, COURIER, HE, JIANG
from tests.contracts.rxclient import World
from tests.contracts.test_account_transfer import with_ins02
from tests.contracts.test_review16 import consent_withdrawn_after_the_move, view_pages
from tests.contracts.test_settle_residuals7 import _hospital_copy_for, _issued_with_copy, _moved_before_fill_two, _story


def _rerouted_and_expired(world: World) -> tuple[str, dict[str, Any]]:
    """Fill 1 ins01's (settled), the move, then h01 hands ins02 the claim key and re-routes
    fill 2 to p02: the id and h01's show of the record before the move."""
    with_ins02(world)
    prep = _issued_with_copy(world)
    rx_id: str = prep.args["rx_id"]
    at_move = world.chain.query("prescription", "show", HE, rx_id=rx_id).unwrap()
    _moved_before_fill_two(world, prep)
    world.chain.advance(1)
    world.chain.submit("prescription", "grant_claim_key", JIANG, rx_id=rx_id, org="ins02",
                       wrapped_key=_hospital_copy_for(world, rx_id, "ins02")).unwrap()
    world.chain.submit("prescription", "route", JIANG, rx_id=rx_id, pharmacy="p02",
                       wrapped_key=world.wrap_for(rx_id, "p02")).unwrap()
    return rx_id, at_move


def test_show_gives_an_insurer_she_left_the_record_as_of_the_move(world: World) -> None:
    """A re-route after the move named the pharmacy of the later fills in ins01's show, and the
    repeat's expiry (EXPIRED) a step it is not shown; ``step`` was null -- telling a step
    followed. Now ins01 reads the pharmacy, status, review and lock as they stood at the move,
    its last step seen as ``step``; ins02 and the hospital read the record as it is."""
    rx_id, at_move = _rerouted_and_expired(world)
    old = world.chain.query("prescription", "show", CLERK, rx_id=rx_id).unwrap()
    assert (old["pharmacy"], old["status"], old["fills"]) == ("p01", "DISPENSED", 1), old
    assert old["review"] == at_move["review"] and old["revocation"] is None and old["lock"] is None
    assert (old["step"]["step"], old["step"]["detail"]["fill"]) == ("dispense", 1), old["step"]
    for caller in (CLERK2, HE):
        assert world.chain.query("prescription", "show", caller, rx_id=rx_id).unwrap()["pharmacy"] == "p02"
    world.chain.advance(60 * DAY_MS)
    world.chain.submit("prescription", "expire", JIANG, rx_id=rx_id).unwrap()
    old = world.chain.query("prescription", "show", CLERK, rx_id=rx_id).unwrap()
    assert (old["pharmacy"], old["status"], old["step"]["step"]) == ("p01", "DISPENSED", "dispense"), old
    assert world.chain.query("prescription", "trace", CLERK, rx_id=rx_id).unwrap()["status"] == "DISPENSED"
    for caller in (CLERK2, HE, AUDITOR):
        now = world.chain.query("prescription", "show", caller, rx_id=rx_id).unwrap()
        assert (now["pharmacy"], now["status"], now["step"]["step"]) == ("p02", "EXPIRED", "expire"), caller


def test_show_counts_for_an_insurer_she_left_the_hand_overs_of_its_fills_alone(world: World) -> None:
    """ins02's fill 2 handed over, ins01's fill 1 not: ins01's show said one fill delivered of
    its one fill (the count capped at its fills, not recounted) -- fill 1's, which never was.
    Now the hand-overs of the fills up to its own latest; the others read the record's count."""
    rx_id = _story(world)
    world.chain.submit("prescription", "deliver", COURIER, rx_id=rx_id, fill=2).unwrap()
    old = world.chain.query("prescription", "show", CLERK, rx_id=rx_id).unwrap()
    assert (old["fills"], old["delivered_fills"], old["status"]) == (1, 0, "DISPENSED"), old
    for caller in (CLERK2, HE):
        assert world.chain.query("prescription", "show", caller, rx_id=rx_id).unwrap()["delivered_fills"] == 1
    world.chain.submit("prescription", "deliver", COURIER, rx_id=rx_id, fill=1).unwrap()
    old = world.chain.query("prescription", "show", CLERK, rx_id=rx_id).unwrap()
    assert (old["fills"], old["delivered_fills"], old["step"]["step"]) == (1, 1, "deliver"), old


def test_get_key_tells_an_insurer_she_left_no_note_key_count(world: World) -> None:
    """get_key's ``note_epoch`` counted the note keys made -- one per re-route and withdrawal
    of consent, after the move too: ins01 read from it the consent she withdrew after leaving
    it, a step its trace and show hide (review16 took it out of show only). Now left out for
    it; ins02 and the hospital read it as before, and ins01 still opens its claim grant."""
    rx_id = consent_withdrawn_after_the_move(world)
    old = world.chain.submit("prescription", "get_key", CLERK, rx_id=rx_id).unwrap()
    assert old["kind"] == "insurer" and old["wrapped_key"] and "note_epoch" not in old, old
    assert world.keyring.unwrap("ins01", old["wrapped_key"], f"rxchain/rx/{rx_id}/ins01")
    for caller in (CLERK2, JIANG):
        assert world.chain.submit("prescription", "get_key", caller, rx_id=rx_id).unwrap()["note_epoch"] == 1


def _version_of(cursor: str) -> int:
    return int(cursor.split("/", maxsplit=1)[0]) if cursor else -1


def test_the_trace_cursors_of_an_insurer_she_left_count_only_the_steps_it_sees(world: World) -> None:
    """ins01's cursors named positions in the history index: after its fill 1, the hidden
    hand-over, lock and dispense of fill 2 lay before its fill 1's delivery, and the cursor
    jumped over them (its 4th version shown, the cursor said 5); ``left`` was -1; an earlier
    release's position cursor counted every step. Now its cursors number the versions it sees
    (each page moves it by the versions it shows), ``left`` counts its later steps, and a
    position cursor is refused it (BAD_ARGUMENTS); the hospital's cursors are as before."""
    rx_id = _story(world)
    world.chain.submit("prescription", "deliver", COURIER, rx_id=rx_id, fill=1).unwrap()
    whole = world.chain.query("prescription", "trace", CLERK, rx_id=rx_id).unwrap()["steps"]
    assert [s["step"] for s in whole if s["block"] is not None][-2:] == ["dispense", "deliver"]
    for limit in (1, 2):
        pages = view_pages(world, "prescription.trace", CLERK, rx_id, limit)
        assert [s for p in pages for s in p["steps"]] == whole
        v = 0
        shown = 0
        for p in pages:
            shown = shown + len(p["steps"])
            v = v + len([s for s in p["steps"] if s["block"] is not None])
            if p["next"]:
                assert _version_of(p["next"]) == v, (limit, p["next"], v)
            assert p["left"] == len(whole) - shown, (limit, p["left"])
    out = world.chain.query("prescription", "trace", CLERK, rx_id=rx_id, start="3")
    assert out.reason == "BAD_ARGUMENTS" and "position" in out.message, out
    full = world.chain.query("prescription", "trace", HE, rx_id=rx_id).unwrap()["steps"]
    assert world.chain.query("prescription", "trace", HE, rx_id=rx_id, start="3").unwrap()["steps"] == full[3:]
    pages = view_pages(world, "prescription.trace", HE, rx_id, 1)
    versions = [_version_of(p["next"]) for p in pages if p["next"]]
    assert max(versions) == len([s for s in full if s["block"] is not None])  # its index positions
