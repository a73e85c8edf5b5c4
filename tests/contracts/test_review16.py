"""Review of settle7 (contracts/README.md "Moving an account"): the issuing hospital's copy of the
claim key reaches its doctors only, and what an insurer she left reads -- ``settlement.trail``'s
pages, ``prescription.show`` and ``prescription.trace`` -- tells nothing of the fills, claims and
steps after the move that ended its cover: not by a page's size or cursor, not by a count."""

from __future__ import annotations

from typing import Any

from node.crypto import aead
from tests.contracts.flows import AUDITOR, CLERK, CLERK2, HE, JIANG, NEW, NURSE
from tests.contracts.rxclient import World
from tests.contracts.test_account_transfer import with_ins02, zhang
from tests.contracts.test_settle_residuals7 import H01_ADMIN, _issued_with_copy, _story


def test_get_key_serves_the_hospitals_claim_key_copy_to_its_doctors_only(world: World) -> None:
    """The hospital grant's ``claim_wrapped_key`` went to every reader of the grant -- its
    pharmacists too, who hand no claim key over (grant_claim_key is a doctor's). Now to its
    doctors only; the record key as before."""
    with_ins02(world)
    rx_id = _issued_with_copy(world).args["rx_id"]
    for doctor in (JIANG, NEW):
        got = world.chain.submit("prescription", "get_key", doctor, rx_id=rx_id).unwrap()
        assert "claim_wrapped_key" in got and got["kind"] == "hospital", (doctor, got)
    got = world.chain.submit("prescription", "get_key", HE, rx_id=rx_id).unwrap()
    assert got["kind"] == "hospital" and got["wrapped_key"] and "claim_wrapped_key" not in got, got
    for other in (NURSE, H01_ADMIN):
        assert world.chain.submit("prescription", "get_key", other, rx_id=rx_id).unwrap()["error"] == "NO_KEY_GRANT"


def view_pages(world: World, view: str, caller: Any, rx_id: str, limit: int) -> list[dict[str, Any]]:
    """Every page of ``caller``'s paged ``view`` ("contract.function": settlement.trail,
    prescription.trace) of ``rx_id``, ``limit`` rows a page, following ``next`` (at most 64 pages)."""
    contract, fn = view.split(".")
    pages = []
    start = ""
    for _ in range(64):
        page = world.chain.query(contract, fn, caller, rx_id=rx_id, start=start, limit=limit).unwrap()
        pages.append(page)
        start = page["next"]
        if start == "":
            break
    return pages


def test_the_trail_pages_of_an_insurer_she_left_hold_its_own_claims_alone(world: World) -> None:
    """ins01's trail was paged over every claim row and filtered afterwards: a page of one
    claim ended with ``next`` naming ins02's claim row (``truncated``: a claim follows), and
    the next page came back empty. Its pages now hold its own claims only."""
    rx_id = _story(world)
    whole = view_pages(world, "settlement.trail", CLERK, rx_id, 64)
    assert len(whole) == 1 and [s["org"] for s in whole[0]["steps"]] == ["ins01"]
    pages = view_pages(world, "settlement.trail", CLERK, rx_id, 1)
    assert [(p["next"], p["truncated"]) for p in pages] == [("", False)], pages
    assert pages[0]["steps"] == whole[0]["steps"]
    new = view_pages(world, "settlement.trail", CLERK2, rx_id, 1)  # the insurer she has now: a page per claim
    assert [[s["org"] for s in p["steps"]] for p in new] == [["ins01"], ["ins02"]]
    assert new[0]["truncated"] is True


def test_show_tells_an_insurer_she_left_no_step_count(world: World) -> None:
    """``step_count`` counts every version of the record -- those after the move too: ins01
    read from it how many steps it was no longer shown."""
    rx_id = _story(world)
    old = world.chain.query("prescription", "show", CLERK, rx_id=rx_id).unwrap()
    assert "step_count" not in old, old
    for caller in (CLERK2, HE, AUDITOR):
        assert world.chain.query("prescription", "show", caller, rx_id=rx_id).unwrap()["step_count"] > 0


def consent_withdrawn_after_the_move(world: World) -> str:
    """The story (ins01 insured fill 1, she moved to ins02), then she grants h02 her consent and
    withdraws it (a new note key, epoch 1, wrapped for her, h01 and p01): the prescription."""
    rx_id = _story(world)
    her = zhang(world)
    world.chain.submit("prescription", "grant_consent", her, rx_id=rx_id, org="h02",
                       wrapped_key=world.wrap_for(rx_id, "h02")).unwrap()
    keys = {p: world.keyring.wrap(p if p != "patient" else "patient:" + world.pid("patient-zhang"),
                                  aead.new_record_key(), f"rxchain/rx/{rx_id}/{p}/note/1")
            for p in ("patient", "h01", "p01")}
    world.chain.submit("prescription", "revoke_consent", her, rx_id=rx_id, org="h02", note_keys=keys).unwrap()
    return rx_id


def test_show_tells_an_insurer_she_left_no_note_key_count(world: World) -> None:
    """``note_epoch`` counts the note keys made -- one per re-route and withdrawal of consent,
    those after the move too: ins01 read from it the consent she withdrew after leaving it (a
    step it is not shown). Now left out for it; ins02 and the hospital read it as before."""
    rx_id = consent_withdrawn_after_the_move(world)
    assert "note_epoch" not in world.chain.query("prescription", "show", CLERK, rx_id=rx_id).unwrap()
    for caller in (CLERK2, HE):
        assert world.chain.query("prescription", "show", caller, rx_id=rx_id).unwrap()["note_epoch"] == 1
    assert ("consent_revoked", "h02") not in [(s["step"], s["detail"].get("org")) for s in
                                              world.chain.query("prescription", "trace", CLERK,
                                                                rx_id=rx_id).unwrap()["steps"]]


def test_the_trace_of_an_insurer_she_left_ends_at_the_last_step_it_sees(world: World) -> None:
    """After its last visible step the trace went on: ``next`` and ``truncated`` said steps
    followed (the hidden ones after the move), pages came back empty, and a cursor between its
    end and the record's step count was taken while one past the count was refused -- the
    count of hidden steps. Now its trace ends at its last visible step, on every page size,
    and any cursor past that end is refused as past the end of the trail."""
    rx_id = _story(world)
    whole = world.chain.query("prescription", "trace", CLERK, rx_id=rx_id).unwrap()
    assert (whole["next"], whole["truncated"], whole["left"], whole["unreadable"]) == ("", False, 0, 0), whole
    steps = whole["steps"]
    for limit in (1, 2, 3):
        pages = view_pages(world, "prescription.trace", CLERK, rx_id, limit)
        assert [s for p in pages for s in p["steps"]] == steps, limit
        assert all(len(p["steps"]) > 0 for p in pages), pages
        assert (pages[-1]["next"], pages[-1]["truncated"]) == ("", False)
    full = world.chain.query("prescription", "trace", HE, rx_id=rx_id).unwrap()["steps"]
    versions = [s["tx_id"] for s in full if s["block"] is not None]  # the record's versions, in order
    # (settle8: its cursors number the versions it sees -- the end is their count)
    end = len([s for s in steps if s["block"] is not None])
    assert end < len(versions)  # steps after it that ins01 does not see
    shown = [s for s in steps if s["block"] is None]  # its claim events: fill 1's
    assert {s["detail"]["fill"] for s in shown} == {1}
    fills = str(len(shown))  # the cursor's events shown of fill 1 (all of them)
    past = world.chain.query("prescription", "trace", CLERK, rx_id=rx_id,
                             start=f"{len(versions) + 1}/{fills}").reason
    assert past == "BAD_ARGUMENTS"
    for v in range(end + 1, len(versions) + 1):
        out = world.chain.query("prescription", "trace", CLERK, rx_id=rx_id, start=f"{v}/{fills}")
        assert out.reason == past, (v, out)
    at_end = world.chain.query("prescription", "trace", CLERK, rx_id=rx_id, start=f"{end}/{fills}").unwrap()
    assert (at_end["steps"], at_end["next"], at_end["truncated"]) == ([], "", False)


def test_the_new_insurer_and_the_other_parties_trace_every_step_as_before(world: World) -> None:
    """The change is the former insurer's view only: ins02, the hospital and the auditor page
    through every version and claim event, the last page ending the trail."""
    rx_id = _story(world)
    full = world.chain.query("prescription", "trace", HE, rx_id=rx_id).unwrap()
    assert full["next"] == "" and full["left"] == 0
    for caller in (CLERK2, AUDITOR, JIANG):
        pages = view_pages(world, "prescription.trace", caller, rx_id, 2)
        assert [s for p in pages for s in p["steps"]] == full["steps"]
