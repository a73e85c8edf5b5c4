"""review18: red-team of review16/settle8 (what an insurer she left reads)."""

from __future__ import annotations

import random
from typing import Any

from node.sandbox import canonical
from node.sandbox.types import HistoryEntry
from tests.contracts.chain import DAY_MS
from tests.contracts.flows import AUDITOR, CLERK, CLERK2, COURIER, HE, JIANG
from tests.contracts.rxclient import World
from tests.contracts.test_account_transfer import call, with_ins02, zhang
from tests.contracts.test_settle_residuals7 import _hospital_copy_for, _issued_with_copy, _moved_before_fill_two, _story
from tests.contracts.test_trace_history import _seed_versions


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


def _former_reads(world: World, rx_id: str) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """ins01's show, its whole trace (pages of 3) and the most gas one of those calls took."""
    shown = world.chain.query("prescription", "show", CLERK, rx_id=rx_id)
    gas, steps, start = shown.gas, [], ""
    for _ in range(50):
        page = world.chain.query("prescription", "trace", CLERK, rx_id=rx_id, start=start, limit=3)
        gas = max(gas, page.gas)
        steps.extend(page.unwrap()["steps"])
        start = page.value["next"]
        if start == "":
            break
    return shown.unwrap(), steps, gas


def test_versions_hidden_from_an_insurer_she_left_do_not_drive_its_gas(world: World) -> None:
    """Its show (the SDK's settle reads it first) and every trace page read the value of every
    version of the record: 600 versions of a 20 KB record written after the move (a pharmacy
    locking and releasing the new insurer's fill) took ~500,000 gas per call -- at the
    sample's 5,000,000 limit ~600 versions of a record near max_value_bytes made ins01's show
    OUT_OF_GAS, its settle of its own fill within 30 days with it. Past the move only the
    versions' stamps are read, and the values of the steps it may see: the same answers, the
    gas of the hidden versions' stamps. Its own fill's hand-over after them is still shown."""
    rx_id = _story(world)
    shown, steps, gas = _former_reads(world, rx_id)
    _seed_versions(world.chain, rx_id, 600, "lock", {"fill": 2}, pad=20_000)
    after = _former_reads(world, rx_id)
    assert {k: v for k, v in after[0].items() if k != "pad"} == shown and after[1] == steps
    assert after[2] < gas + 60_000, (gas, after[2])
    world.chain.submit("prescription", "deliver", COURIER, rx_id=rx_id, fill=1).unwrap()
    _seed_versions(world.chain, rx_id, 5, "lock", {"fill": 2}, pad=20_000)
    shown, steps, gas = _former_reads(world, rx_id)
    assert (shown["delivered_fills"], shown["step"]["step"]) == (1, "deliver"), shown
    assert [s["step"] for s in steps][-1] == "deliver" and gas < after[2] + 60_000
    h01 = world.chain.query("prescription", "show", HE, rx_id=rx_id).unwrap()
    assert h01["step"]["step"] == "lock" and h01["delivered_fills"] == 1


def _seed_claims(world: World, rx_id: str, insurers: list[str]) -> None:
    """Claim rows ``rxclaim/{rx_id}/{fill3}/{n3}`` after the story's two, one settle version
    each, the k-th row's claim settled by ``insurers[k]``."""
    chain = world.chain
    for k, org in enumerate(insurers):
        fill, n = 3 + k // 7, 1 + k % 7
        claim_id = f"CLM-{rx_id}-{fill}-{n}"
        rec = {"claim_id": claim_id, "rx_id": rx_id, "fill": fill, "insurer": org, "status": "SETTLED",
               "events": [{"step": "settle", "actor": "clerk", "org": org, "role": "clerk",
                           "time_ms": chain.now, "tx_id": f"{k:064x}"}]}
        data = canonical.dumps(rec)
        chain.state.values[("settlement", "claim/" + claim_id)] = data
        chain.state.versions[("settlement", "claim/" + claim_id)] = [
            HistoryEntry(f"{k:064x}", 5000 + k, chain.now, False, data, len(data))]
        chain.state.values[("settlement", f"rxclaim/{rx_id}/{fill:03d}/{n:03d}")] = canonical.dumps(
            {"claim_id": claim_id})


def _trail_ids(world: World, caller: Any, rx_id: str, limit: int) -> list[str]:
    ids: list[str] = []
    start = ""
    for _ in range(200):
        page = world.chain.query("settlement", "trail", caller, rx_id=rx_id, start=start, limit=limit).unwrap()
        assert page["steps"] or page["next"] == "", page  # no empty page before the end
        ids.extend(s["detail"]["claim_id"] for s in page["steps"])
        start = page["next"]
        if start == "":
            return ids
    raise AssertionError("the trail did not end")


def test_an_insurer_she_left_pages_its_own_claims_whatever_the_page_size(world: World) -> None:
    """Property (5 seeds, 40 claims of ins01 and ins02 mixed, every page size 1-9 and 64):
    ins01's pages hold each of its own claims once, in index order, none of ins02's; ins02
    (her insurer) and the auditor page through every claim as before (review16's paging).
    Passes before this branch too: a check, no fix."""
    rx_id = _story(world)
    rng = random.Random(0)
    base = world.chain.state.values.copy()
    for seed in range(5):
        rng.seed(seed)
        world.chain.state.values = base.copy()
        insurers = [rng.choice(["ins01", "ins02"]) for _ in range(40)]
        _seed_claims(world, rx_id, insurers)
        every = _trail_ids(world, AUDITOR, rx_id, 64)
        assert len(every) == 42 and every[0].endswith("-1-1")  # fill 1's claim: ins01's
        own = [every[0]] + [every[2 + k] for k, org in enumerate(insurers) if org == "ins01"]
        for limit in [*range(1, 10), 64]:
            assert _trail_ids(world, CLERK, rx_id, limit) == own, (seed, limit)
            assert _trail_ids(world, CLERK2, rx_id, limit) == every, (seed, limit)
