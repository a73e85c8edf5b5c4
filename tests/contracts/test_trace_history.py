"""The trace of a prescription whatever its history holds: big records rewritten many times,
many steps with long notes; and settlement.trail under the block-priced history gas.

The contract tests' in-memory ledger answers ``ctx.history`` as a peer does
(node.peer.history.select_history: SIZE_LIMIT, pages, gas)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from node.sandbox import canonical
from node.sandbox.types import HistoryEntry
from tests.contracts.chain import Chain
from tests.contracts.flows import AUDITOR, CLERK, approved, lock_and_dispense, settle
from tests.contracts.rxclient import World
from tests.contracts.test_open_findings import _settled

SMALLEST_VALUE_LIMIT = 65536  # a page fits a max_value_bytes of 64 KiB (the sample's: 256 KiB)
SAMPLE_GAS_LIMIT = 5_000_000  # network-config/consortium.yaml


def _seed_versions(chain: Chain, rx: str, n: int, step: str, detail: dict[str, Any],
                   pad: int = 0, block_bytes: int = 0, gap: int = 60_000) -> list[str]:
    """``n`` more versions of ``rx/{rx}``, each a ``step`` ``gap`` ms apart (a record padded
    with ``pad`` characters, written in a block of ``block_bytes``); their tx ids."""
    nk = ("prescription", "rx/" + rx)
    versions = chain.state.versions[nk]
    latest = canonical.decode(chain.state.values[nk], "rx")
    tx_ids = []
    for _ in range(n):
        chain.advance(gap)
        tx_id = f"{len(versions):064x}"
        rec = {**latest, "step_count": len(versions) + 1, "pad": "p" * pad,
               "step": {**latest["step"], "step": step, "detail": detail, "tx_id": tx_id}}
        data = canonical.dumps(rec)
        versions.append(HistoryEntry(tx_id, 1000 + len(versions), chain.now, False, data,
                                     block_bytes or len(data)))
        chain.state.values[nk] = data
        tx_ids.append(tx_id)
    return tx_ids


def _trace_pages(chain: Chain, rx: str) -> list[dict[str, Any]]:
    pages, start = [], ""
    for _ in range(200):
        res = chain.query("prescription", "trace", AUDITOR, rx_id=rx, start=start)
        assert res.ok, (res.reason, res.message)
        pages.append(res.value)
        assert res.value["steps"], "a page is never empty"
        assert len(canonical.dumps(res.value)) <= SMALLEST_VALUE_LIMIT
        assert res.gas < SAMPLE_GAS_LIMIT
        if res.value["next"] == "":
            return pages
        start = res.value["next"]
    raise AssertionError("the trace did not end")


def test_a_big_record_rewritten_often_stays_traceable_page_by_page(world: World) -> None:
    """A record of ~256 KiB (max_value_bytes of the sample consortium) rewritten 70 times
    (consent toggles, locks and releases): its history's values pass 16 MiB, so every trace
    failed SIZE_LIMIT for good -- a party with write access could hide the prescription's
    trail from the auditors. The trace now reads the values page by page."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    seeded = _seed_versions(chain, rx, 70, "consent", {"org": "h02"}, pad=250_000)
    pages = _trace_pages(chain, rx)
    steps = [s for p in pages for s in p["steps"]]
    assert [s["step"] for s in steps] == ["issue", "review"] + ["consent"] * 70
    assert [s["tx_id"] for s in steps[2:]] == seeded
    assert len(pages) >= 2 and pages[-1]["truncated"] is False
    assert [p["left"] for p in pages][-1] == 0
    # the position cursors are the same as before: a page may be asked for anywhere
    again = chain.query("prescription", "trace", AUDITOR, rx_id=rx, start="40", limit=5).unwrap()
    assert [s["tx_id"] for s in again["steps"]] == [s["tx_id"] for s in steps[40:45]]


def test_trace_pages_fit_the_smallest_value_limit(world: World) -> None:
    """300 steps carrying 4 KiB notes: one page of them was ~1.3 MB, over every value limit
    (the result is a value: SIZE_LIMIT on every default trace). A page ends before its steps'
    JSON passes 48 KiB."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    note = "A" * 4096
    _seed_versions(chain, rx, 300, "review", {"decision": "APPROVED", "reason": "", "note_ct": note})
    pages = _trace_pages(chain, rx)
    steps = [s for p in pages for s in p["steps"]]
    assert len(steps) == 302 and all(s["detail"]["note_ct"] == note for s in steps[2:])
    assert len(pages) >= 25


def test_a_trace_whose_versions_are_out_of_time_order_reads_every_step(world: World) -> None:
    """Clients' clocks differ: versions committed in one order may carry timestamps in
    another. The versions are shown in commit order (their history index position, which
    never runs backwards) with the times they carry, every one once, also when they are more
    than one read of values holds (here 100 big records in reverse time order)."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    seeded = _seed_versions(chain, rx, 100, "consent", {"org": "h02"}, pad=250_000)
    nk = ("prescription", "rx/" + rx)
    versions = chain.state.versions[nk]
    # the seeded versions' timestamps reversed: the newest version carries the oldest time
    times = [v.timestamp_ms for v in versions[-100:]]
    versions[-100:] = [replace(v, timestamp_ms=t) for v, t in zip(versions[-100:], reversed(times), strict=True)]
    steps = [s for p in _trace_pages(chain, rx) for s in p["steps"]]
    assert [s["tx_id"] for s in steps[2:]] == seeded
    assert [s["time_ms"] for s in steps[2:]] == list(reversed(times))


def test_timestamps_running_backwards_do_not_shrink_the_pages(world: World) -> None:
    """Two clients writing a big record alternately a second apart, one's clock 4 minutes
    behind (within the clock skew): ordered by time, a page's versions lay ~240 versions
    apart in the history, and a page reading its values from its oldest one (~66 of them in
    16 MiB) ended at the first version that read did not reach -- 70 pages for 302 steps, 62
    of them of one step. Versions go in commit order now (reported with the times they
    carry): every page holds what one read of values holds."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    _seed_versions(chain, rx, 300, "consent", {"org": "h02"}, pad=250_000, gap=1000)
    nk = ("prescription", "rx/" + rx)
    versions = chain.state.versions[nk]
    versions[-300:] = [replace(v, timestamp_ms=v.timestamp_ms - (240_000 if i % 2 else 0))
                       for i, v in enumerate(versions[-300:])]
    pages = _trace_pages(chain, rx)
    steps = [s for p in pages for s in p["steps"]]
    assert [s["tx_id"] for s in steps] == [v.tx_id for v in versions]
    assert [s["time_ms"] for s in steps] == [v.timestamp_ms for v in versions]
    assert steps[3]["time_ms"] < steps[2]["time_ms"]  # reported as the versions carry them
    assert min(len(p["steps"]) for p in pages[:-1]) >= 60 and len(pages) <= 6


def test_every_version_of_a_long_history_is_reachable(world: World) -> None:
    """A record with 2,500 versions (consent toggled), locked, dispensed and settled after
    its 1,200th: the trace ordered the oldest 1000 versions only, so every later step -- the
    dispense and the settlement among them -- was `unreadable` for good, and an auditor could
    not walk the trail. Pages now go on from the version the last one ended before (its
    position in the history index: the cursor), each within the gas limit."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    first = _seed_versions(chain, rx, 1200, "consent", {"org": "h02"}, gap=1000)
    chain.advance(60_000)
    lock_and_dispense(world, prep).unwrap()
    chain.advance(60_000)
    settle(world, prep).unwrap()
    later = _seed_versions(chain, rx, 1300, "consent", {"org": "h03"}, gap=1000)
    pages = _trace_pages(chain, rx)
    steps = [s for p in pages for s in p["steps"]]
    assert [s["step"] for s in steps] == (["issue", "review"] + ["consent"] * 1200 + ["lock", "dispense", "settle"]
                                          + ["consent"] * 1300)
    assert [s["tx_id"] for s in steps[2:1202]] == first and [s["tx_id"] for s in steps[1205:]] == later
    assert all(p["unreadable"] == 0 for p in pages) and pages[-1]["truncated"] is False
    assert [p["left"] for p in pages] == [len(steps) - sum(len(q["steps"]) for q in pages[:n + 1])
                                         for n in range(len(pages))]
    # a cursor names the next version and claim event: a page may be asked for there again
    mid = pages[len(pages) // 2]
    again = chain.query("prescription", "trace", AUDITOR, rx_id=rx, start=mid["next"], limit=3).unwrap()
    at = steps.index(mid["steps"][-1]) + 1
    assert again["steps"] == steps[at:at + 3]
    # an earlier release's cursor, a step position, is resolved from the versions' metadata
    old = chain.query("prescription", "trace", AUDITOR, rx_id=rx, start="1500", limit=3).unwrap()
    assert old["steps"] == steps[1500:1503] and old["next"] == "1502/1"  # 1502 versions, fill 1's event
    # and the "{version}.{claim event}" cursors of the release before (events in time order)
    timed = chain.query("prescription", "trace", AUDITOR, rx_id=rx, start="1502.1", limit=3).unwrap()
    assert timed == chain.query("prescription", "trace", AUDITOR, rx_id=rx, start="1502/1", limit=3).unwrap()


def test_a_record_from_before_step_count_pages_to_its_end(world: World) -> None:
    """A record without ``step_count`` (issued before it): the trace cannot count its
    versions, so a page whose read of values ended asks the index whether a version follows
    (metadata of one: no block read); ``left`` is -1 until the last page."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    seeded = _seed_versions(chain, rx, 1100, "consent", {"org": "h02"})
    nk = ("prescription", "rx/" + rx)
    rec = canonical.decode(chain.state.values[nk], "rx")
    del rec["step_count"]
    chain.state.values[nk] = canonical.dumps(rec)
    pages = _trace_pages(chain, rx)
    assert [s["tx_id"] for p in pages for s in p["steps"]][2:] == seeded
    assert [p["left"] for p in pages] == [-1] * (len(pages) - 1) + [0]
    assert all(p["unreadable"] == 0 for p in pages)
    for bad in ("1103.0", "5000.0"):  # past the last version: refused, also without a count
        assert chain.query("prescription", "trace", AUDITOR, rx_id=rx, start=bad).reason == "BAD_ARGUMENTS"
    end = chain.query("prescription", "trace", AUDITOR, rx_id=rx, start="1101.0").unwrap()
    assert [s["tx_id"] for s in end["steps"]] == seeded[-1:] and end["next"] == ""


def test_versions_the_index_does_not_hold_are_counted_unreadable(world: World) -> None:
    """A peer whose history index lacks a record's oldest versions (state from a snapshot)
    answers the versions it holds and says how many ``step_count`` counts beyond them."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    seeded = _seed_versions(chain, rx, 5, "consent", {"org": "h02"})
    del chain.state.versions[("prescription", "rx/" + rx)][:2]
    out = chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()
    assert [s["tx_id"] for s in out["steps"]] == seeded
    assert (out["unreadable"], out["truncated"], out["next"], out["left"]) == (2, True, "", 0)


def test_a_trace_of_versions_in_full_blocks_pages_within_the_test_networks_gas(world: World) -> None:
    """300 versions each in a full 4 MiB block (~8,300 gas a block read) under the test
    networks' gas limit of 1,000,000: a page's values read takes at most half the gas left,
    so the trace has gas to build the page (a read taking all of it ended every trace
    OUT_OF_GAS)."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    chain.gas_limit = 1_000_000
    seeded = _seed_versions(chain, rx, 300, "consent", {"org": "h02"}, block_bytes=4 << 20)
    pages = _trace_pages(chain, rx)
    assert [s["tx_id"] for p in pages for s in p["steps"]][2:] == seeded
    assert len(pages) >= 3


def test_the_settlement_trail_stays_within_the_gas_limit_on_full_blocks(world: World) -> None:
    """settlement.trail reads up to 64 claims' histories a page (a claim has two versions at
    most: settle, reverse). With each version's block a full 4 MiB block, priced as a read of
    it, a page stays well within the sample consortium's gas limit."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    lock_and_dispense(world, prep).unwrap()
    for _ in range(64):
        chain.advance(1000)
        c = settle(world, prep).unwrap()
        chain.advance(1000)
        chain.submit("settlement", "reverse", CLERK, claim_id=c["claim_id"], reason="OTHER").unwrap()
    for (ns, key), versions in chain.state.versions.items():
        if ns == "settlement" and key.startswith("claim/"):
            versions[:] = [replace(v, block_bytes=4 << 20) for v in versions]
    out = chain.query("settlement", "trail", AUDITOR, rx_id=rx)
    assert out.ok, (out.reason, out.message)
    assert len(out.value["steps"]) == 128 and out.value["next"] == ""
    assert 128 * (4 << 20) // 512 < out.gas < SAMPLE_GAS_LIMIT // 4


def _page(chain: Chain, rx: str, start: str, limit: int = 0) -> dict[str, Any]:
    res = chain.query("prescription", "trace", AUDITOR, rx_id=rx, start=start, limit=limit)
    assert res.ok, (res.reason, res.message)
    page: dict[str, Any] = res.value
    return page


def _ids(steps: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(s["tx_id"], s["step"]) for s in steps]


def test_a_reversal_committed_late_with_an_earlier_time_is_shown_once(world: World) -> None:
    """A page showed a settlement; its reversal then committed carrying a time before the
    settlement's (the clerks' clocks differ, within the clock skew). The claim part of the
    cursor counted events in time order, so the next page showed the settlement again and
    the reversal never. Claim events go in their fill's index order (commit order) now."""
    prep, claim = _settled(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    settled_at = chain.now
    later = _seed_versions(chain, rx, 3, "consent", {"org": "h02"})
    first = _page(chain, rx, "", limit=5)
    assert [s["step"] for s in first["steps"]] == ["issue", "review", "lock", "dispense", "settle"]
    rev = chain.submit("settlement", "reverse", CLERK, at_ms=settled_at - 30_000,
                       claim_id=claim["claim_id"], reason="OTHER").unwrap()
    assert rev["status"] == "REVERSED"
    rest = _page(chain, rx, first["next"])
    steps = first["steps"] + rest["steps"]
    assert [s["step"] for s in rest["steps"]] == ["reverse", "consent", "consent", "consent"]
    assert [s["tx_id"] for s in rest["steps"][1:]] == later and rest["next"] == ""
    assert len(set(_ids(steps))) == len(steps) == 9


def test_a_claim_on_another_fill_committed_late_with_an_earlier_time_is_shown_once(world: World) -> None:
    """Fill 2's settlement was shown; fill 1's, settled later by a clerk whose clock is
    behind, carries an earlier time: counted in time order it took the place of the one
    shown (shown again; fill 1's never). Each fill's events are counted apart now."""
    prep = approved(world, max_fills=2, fill_interval_days=28, long_rx=True,
                   chronic_reason="stable hypertension", days=28,
                   stability_assessment="stable 6 months", patient_confirmed=True)
    rx = prep.args["rx_id"]
    chain = world.chain
    lock_and_dispense(world, prep).unwrap()
    chain.advance(28 * 86_400_000)
    lock_and_dispense(world, prep).unwrap()
    chain.advance(60_000)
    settle(world, prep, fill=2).unwrap()
    two_at = chain.now
    later = _seed_versions(chain, rx, 2, "consent", {"org": "h02"})
    first = _page(chain, rx, "", limit=7)
    assert [s["step"] for s in first["steps"]][-1] == "settle"
    assert first["steps"][-1]["detail"]["fill"] == 2 and first["next"] == "6/0.1"
    # the release before's cursor there (6 versions, 1 event in time order): the same page
    assert _page(chain, rx, "6.1") == _page(chain, rx, "6/0.1")
    one = chain.submit("settlement", "settle", CLERK, transient={"claim": prep.claim, "claim_salt": prep.claim_salt},
                       at_ms=two_at - 20_000, rx_id=rx, fill=1).unwrap()
    rest = _page(chain, rx, first["next"])
    assert [(s["step"], s["detail"].get("fill")) for s in rest["steps"][:1]] == [("settle", 1)]
    assert rest["steps"][0]["tx_id"] != first["steps"][-1]["tx_id"] and one["fill"] == 1
    assert [s["tx_id"] for s in rest["steps"][1:]] == later and rest["next"] == ""


def test_claim_events_committed_in_any_order_are_each_shown_once(world: World) -> None:
    """A reader paging on while claims on three fills settle and reverse, each with a time
    drawn anywhere within four minutes of the others and committed in whatever order: once
    it reaches the end it has seen every step exactly once, as one read from the start does."""
    for seed in range(6):
        _any_order(world, random.Random(seed))


def _any_order(world: World, rnd: random.Random) -> None:
    prep = approved(world, max_fills=3, fill_interval_days=28, long_rx=True,
                   chronic_reason="stable hypertension", days=28,
                   stability_assessment="stable 6 months", patient_confirmed=True)
    rx = prep.args["rx_id"]
    chain = world.chain
    for _ in range(3):
        lock_and_dispense(world, prep).unwrap()
        chain.advance(28 * 86_400_000)
    base = chain.now
    _seed_versions(chain, rx, 40, "consent", {"org": "h02"}, gap=6_000)
    active: dict[int, str] = {}
    cursor, seen, ops = "", [], 0
    while True:
        if ops < 24 and rnd.random() < 0.7:
            ops += 1
            fill = rnd.randint(1, 3)
            at = base + rnd.randint(0, 240_000)
            if fill in active:
                chain.submit("settlement", "reverse", CLERK, at_ms=at, claim_id=active.pop(fill),
                             reason="OTHER").unwrap()
            else:
                active[fill] = chain.submit("settlement", "settle", CLERK, at_ms=at, rx_id=rx, fill=fill,
                                            transient={"claim": prep.claim,
                                                       "claim_salt": prep.claim_salt}).unwrap()["claim_id"]
            continue
        page = _page(chain, rx, cursor, limit=rnd.randint(1, 4))
        seen.extend(page["steps"])
        cursor = page["next"]
        if cursor == "":
            break
    whole = _page(chain, rx, "")
    assert whole["next"] == ""
    assert len(set(_ids(seen))) == len(seen), "a step shown twice"
    assert sorted(_ids(seen)) == sorted(_ids(whole["steps"])), "a step never shown"


def test_a_huge_cursor_is_refused_cheaply_on_either_kind_of_record(world: World) -> None:
    """A cursor naming a version far past the end: a record counting its versions
    (``step_count``) refuses it at once; one from before ``step_count`` read the history up
    to it (1 gas per version stepped over: OUT_OF_GAS, not BAD_ARGUMENTS). Asking the index
    at growing positions tells the end of the record at a cost in its own versions."""
    for old in (False, True):
        prep = approved(world)
        rx = prep.args["rx_id"]
        chain = world.chain
        _seed_versions(chain, rx, 1100, "consent", {"org": "h02"})
        if old:
            nk = ("prescription", "rx/" + rx)
            rec = canonical.decode(chain.state.values[nk], "rx")
            del rec["step_count"]
            chain.state.values[nk] = canonical.dumps(rec)
        last = _trace_pages(chain, rx)[-1]
        for start in ("4294967295.0", "4294967295/0", "1103/0", "70000.0", "9999999/0", "250000000.0"):
            res = chain.query("prescription", "trace", AUDITOR, rx_id=rx, start=start)
            assert res.reason == "BAD_ARGUMENTS", (old, start, res.reason)
            assert res.gas < 200_000, (old, start, res.gas)
        assert last["next"] == ""
