"""Second review of the red-team fixes (contracts): formulary versions that settlement prices
claims by (entries from before versions were kept, skewed client clocks), invisible free text,
review by a deactivated pharmacy, views under a sandbox range cap, and paging of grants at
erasure / a stale lock dropped on a repeat fill."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from node.sandbox import canonical
from node.sandbox.types import SandboxLimits
from tests.contracts.chain import DAY_MS, Chain, admin
from tests.contracts.flows import (
    AUDITOR,
    CHEN,
    CLERK,
    COURIER,
    HE,
    JIANG,
    WANG,
    ZHOU,
    approved,
    issue,
    lock_and_dispense,
    settle,
)
from tests.contracts.rxclient import World
from tests.contracts.sandbox_adapter import Runner
from tests.contracts.test_open_findings import call, set_pharmacy_active
from tests.contracts.test_settlement import amounts, dispensed


def _drug_args(world: World, short: str, **changes: Any) -> dict[str, Any]:
    d = next(x for x in world.sample["formulary"] if x["short_name"] == short)
    return {**{k: d[k] for k in ("code", "spec", "cls", "standard_fen", "price_fen", "controlled")},
            **changes}


def _forget_drug_versions(world: World) -> None:
    """A ledger from before the registry kept ``drugver/`` versions."""
    st = world.chain.state
    for nk in [nk for nk in st.values if nk[0] == "registry" and nk[1].startswith("drugver/")]:
        del st.values[nk]


def test_entry_from_before_versions_updated_after_the_dispense_does_not_reprice_it(world: World) -> None:
    """A formulary entry without versions (written before they were kept) and updated after a
    dispense: the claim used to be priced by the update (no version at or before the dispense,
    so settlement fell back to the current entry). The first update now keeps the old entry
    as the version in force before it."""
    _forget_drug_versions(world)
    prep = dispensed(world, doctor=ZHOU)
    world.chain.advance(DAY_MS)
    cheap = _drug_args(world, "amlodipine", price_fen=100, standard_fen=100)
    world.chain.submit("registry", "set_drug", admin("ins01"), **cheap).unwrap()
    world.chain.advance(DAY_MS)
    claim = settle(world, prep).unwrap()
    assert amounts(claim) == (10000, 7225, 2775, 1775, 1000)  # DOMAIN.md worked example
    # a dispense after the update is priced by it
    later = dispensed(world, doctor=ZHOU)
    assert settle(world, later).unwrap()["medfee_fen"] == 2 * 100 + 2 * 2500 + 1000


def test_entry_from_before_versions_never_updated_is_read_as_is(world: World) -> None:
    _forget_drug_versions(world)
    prep = dispensed(world, doctor=ZHOU)
    world.chain.advance(DAY_MS)
    assert amounts(settle(world, prep).unwrap()) == (10000, 7225, 2775, 1775, 1000)


def test_a_drug_update_timestamped_before_the_latest_version_is_refused(world: World) -> None:
    """Versions are keyed by their transaction's time. An update whose client clock is behind
    the entry's latest version used to become the current entry while its version sorted
    below the older one: every later dispense was then checked against one entry and priced
    by another."""
    t = world.chain.now
    dearer = _drug_args(world, "amlodipine", price_fen=3000, standard_fen=3000)
    world.chain.submit("registry", "set_drug", admin("ins01"), at_ms=t + 1000, **dearer).unwrap()
    skewed = _drug_args(world, "amlodipine", price_fen=4000, standard_fen=4000)
    out = world.chain.submit("registry", "set_drug", admin("ins01"), at_ms=t + 500, **skewed)
    assert out.reason == "POLICY_RETROACTIVE"
    # the same millisecond replaces it (one instant, the later write wins in both places)
    world.chain.submit("registry", "set_drug", admin("ins01"), at_ms=t + 1000, **skewed).unwrap()
    world.chain.advance(60_000)
    current = world.chain.query("registry", "get_drug", CLERK, code=skewed["code"]).unwrap()
    assert current["price_fen"] == 4000
    prep = dispensed(world, doctor=ZHOU, drugs=[("amlodipine", 1)])
    assert settle(world, prep).unwrap()["medfee_fen"] == current["price_fen"]


def test_visible_text_with_invisible_characters_passes(world: World) -> None:
    _prep, out = issue(world, long_rx=True, days=28, chronic_reason="\u200bstable\u200b")
    assert out.ok


def test_stale_lock_dropped_on_a_repeat_fill(world: World) -> None:
    """The deactivated pharmacy held the lock of fill 2: re-routing drops it, the status goes
    back to DISPENSED (one fill done) and the new pharmacy dispenses fill 2."""
    prep = approved(world, max_fills=2, fill_interval_days=14, long_rx=True, chronic_reason="stable",
                    days=14)
    rx = prep.args["rx_id"]
    lock_and_dispense(world, prep).unwrap()
    assert call(world, "deliver", COURIER, rx) == "OK"
    world.chain.advance(14 * DAY_MS)
    assert call(world, "lock", WANG, rx) == "OK"
    set_pharmacy_active(world, "p01", False)
    assert call(world, "route", JIANG, rx, pharmacy="p02", wrapped_key=world.wrap_for(rx, "p02")) == "OK"
    rec = world.chain.query("prescription", "show", JIANG, rx_id=rx).unwrap()
    assert (rec["status"], rec["lock"], rec["fills"], rec["pharmacy"]) == ("DISPENSED", None, 1, "p02")
    assert lock_and_dispense(world, prep, pharmacist=CHEN).unwrap()["fill"] == 2


def test_a_missing_hand_over_holds_no_fill_hostage(world: World) -> None:
    """p01 dispensed fill 1 and its courier has not handed it over; the patient re-routed to
    p02. The next fill waited NOT_DELIVERED for that hand-over while p01 was active (and for
    good for the hospital pharmacy's own fill at the counter): ``deliver`` confirmed the
    latest fill only. It names any fill now, so no fill waits for another's hand-over --
    p01's courier still confirms fill 1 after fill 2 went out, p01 active or not."""
    prep = approved(world, max_fills=3, fill_interval_days=7, long_rx=True, chronic_reason="stable", days=7)
    rx = prep.args["rx_id"]
    lock_and_dispense(world, prep).unwrap()
    world.chain.advance(7 * DAY_MS)
    assert call(world, "route", JIANG, rx, pharmacy="p02", wrapped_key=world.wrap_for(rx, "p02")) == "OK"
    assert lock_and_dispense(world, prep, pharmacist=CHEN).unwrap()["fill"] == 2  # p01 active: was NOT_DELIVERED
    world.chain.advance(7 * DAY_MS)
    assert lock_and_dispense(world, prep, pharmacist=CHEN).unwrap()["fill"] == 3  # p02's own fill 2 owed too
    set_pharmacy_active(world, "p01", False)
    out = world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()
    assert (out["fill"], out["status"]) == (1, "DISPENSED")
    # an unrouted prescription dispensed by the hospital's own pharmacy (no registration)
    own = approved(world, pharmacy="", max_fills=2, fill_interval_days=7, long_rx=True,
                   chronic_reason="stable", days=7)
    lock_and_dispense(world, own, pharmacist=HE).unwrap()
    world.chain.advance(7 * DAY_MS)
    assert lock_and_dispense(world, own, pharmacist=HE).unwrap()["fill"] == 2  # was NOT_DELIVERED
    assert call(world, "deliver", HE, own.args["rx_id"], fill=1) == "OK"
    assert call(world, "deliver", HE, own.args["rx_id"]) == "OK"  # fill 2: now DELIVERED
    rec = world.chain.query("prescription", "show", HE, rx_id=own.args["rx_id"]).unwrap()
    assert (rec["status"], rec["delivered_fills"]) == ("DELIVERED", 2)


def test_a_deactivated_pharmacy_does_not_approve(world: World) -> None:
    """Like lock and dispense, review refuses a pharmacy whose registration went inactive (its
    pharmacist's approval used to stand, and after a re-route another pharmacy dispensed on it)."""
    prep, out = issue(world)  # routed to p01
    out.unwrap()
    rx = prep.args["rx_id"]
    set_pharmacy_active(world, "p01", False)
    assert call(world, "review", WANG, rx, approve=True, reason="") == "UNKNOWN_PHARMACY"
    assert call(world, "review", WANG, rx, approve=False, reason="DOSE") == "UNKNOWN_PHARMACY"
    set_pharmacy_active(world, "p01", True)
    assert call(world, "review", WANG, rx, approve=True, reason="") == "OK"


def test_views_page_on_when_the_sandbox_caps_a_range_below_the_page(runner: Runner) -> None:
    """A node's sandbox caps ctx.range at ``max_range_items`` (1000 by default, never an
    error). audit_trail took a short page for the end of the trail and the trace stopped
    reading claims after a short page: under a lower cap both cut the view silently."""
    capped = SandboxLimits(max_range_items=40)
    chain = Chain(runner=lambda inv, backend: runner(replace(inv, limits=capped), backend))
    world = World(chain)
    world.load()
    prep = approved(world)
    rx = prep.args["rx_id"]
    for i in range(60):  # seeded: 60 key fetches and 60 settled claims of fill 1
        key = f"audit/{rx}/{chain.now + 1 + i:013d}/{i:064x}/0"
        rec = {"rx_id": rx, "event": "KEY_FETCH", "party": "p01", "outcome": "GRANTED",
               "actor": "pharm-wang", "org": "p01", "role": "pharmacist", "time_ms": chain.now + 1 + i,
               "tx_id": f"{i:064x}"}
        chain.state.values[("prescription", key)] = canonical.dumps(rec)
        claim_id = f"CLM-{rx}-1-{i + 1}"
        chain.state.values[("settlement", f"rxclaim/{rx}/001/{i + 1:03d}")] = canonical.dumps(
            {"claim_id": claim_id})
        event = {"step": "settle", "actor": "clerk-qian", "org": "ins01", "role": "clerk",
                 "time_ms": chain.now + 100 + i, "tx_id": f"{i + 100:064x}"}
        chain.state.values[("settlement", "claim/" + claim_id)] = canonical.dumps(
            {"claim_id": claim_id, "fill": 1, "events": [event]})
    events: list[Any] = []
    start = ""
    for _ in range(10):
        page = chain.query("prescription", "audit_trail", AUDITOR, rx_id=rx, start=start).unwrap()
        events += page["events"]
        start = page["next"]
        if not start:
            break
    assert len(events) == 64  # 4 grants at issue + 60 key fetches
    trace = chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()
    assert len([s for s in trace["steps"] if s["step"] == "settle"]) == 60


def test_repeat_fills_either_side_of_new_year_count_in_their_own_years(world: World) -> None:
    """Fill 1 on 31 December, fill 2 on 1 January, both settled in January (fill 2 first), fill
    1 reversed: each claim counts in its dispense's year and the reversal restores only that
    year's counters."""
    hour = 3_600_000
    world.chain.advance(36 * DAY_MS + 12 * hour)  # 2026-12-31 22:00 China time
    prep = approved(world, doctor=ZHOU, drugs=[("amlodipine", 2), ("benidipine", 2), ("calcium-supplement", 1)],
                    days=3, max_fills=2, fill_interval_days=1)
    lock_and_dispense(world, prep).unwrap()
    world.chain.submit("prescription", "deliver", COURIER, rx_id=prep.args["rx_id"]).unwrap()
    world.chain.advance(DAY_MS)  # 2027-01-01 22:00
    lock_and_dispense(world, prep).unwrap()
    world.chain.advance(hour)
    second = settle(world, prep, fill=2).unwrap()
    first = settle(world, prep, fill=1).unwrap()
    assert (first["year"], second["year"]) == (2026, 2027)
    assert first["deductible_fen"] == 0 and amounts(first) == (10000, 7225, 2775, 1775, 1000)
    assert second["deductible_fen"] == second["inscp_fen"] == 8500 and second["fund_fen"] == 0

    def used(year: int) -> tuple[int, int]:
        st = world.chain.query("settlement", "patient_status", CLERK, pseudonym=world.pid("patient-zhang"),
                               year=year).unwrap()
        return st["deductible_used_fen"], st["cap_used_fen"]

    ded_2026 = used(2026)[0]
    assert used(2027) == (8500, 0) and used(2026)[1] == 7225
    world.chain.submit("settlement", "reverse", CLERK, claim_id=first["claim_id"], reason="OTHER").unwrap()
    assert used(2026) == (ded_2026, 0) and used(2027) == (8500, 0)
