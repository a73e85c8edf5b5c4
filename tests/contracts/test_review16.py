"""Review of settle7 (contracts/README.md "Moving an account"): the issuing hospital's copy of the
claim key reaches its doctors only, and what an insurer she left reads -- ``settlement.trail``'s
pages, ``prescription.show`` and ``prescription.trace`` -- tells nothing of the fills, claims and
steps after the move that ended its cover: not by a page's size or cursor, not by a count."""

from __future__ import annotations

from typing import Any

from tests.contracts.flows import AUDITOR, CLERK, CLERK2, HE, JIANG, NEW, NURSE
from tests.contracts.rxclient import World
from tests.contracts.test_account_transfer import with_ins02
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


def _trail_pages(world: World, caller: Any, rx_id: str, limit: int) -> list[dict[str, Any]]:
    pages = []
    start = ""
    for _ in range(64):
        page = world.chain.query("settlement", "trail", caller, rx_id=rx_id, start=start, limit=limit).unwrap()
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
    whole = _trail_pages(world, CLERK, rx_id, 64)
    assert len(whole) == 1 and [s["org"] for s in whole[0]["steps"]] == ["ins01"]
    pages = _trail_pages(world, CLERK, rx_id, 1)
    assert [(p["next"], p["truncated"]) for p in pages] == [("", False)], pages
    assert pages[0]["steps"] == whole[0]["steps"]
    new = _trail_pages(world, CLERK2, rx_id, 1)  # the insurer she has now: a page per claim
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
