"""The trace of a prescription whatever its history holds: big records rewritten many times,
many steps with long notes; and settlement.trail under the block-priced history gas.

The contract tests' in-memory ledger answers ``ctx.history`` as a peer does
(node.peer.history.select_history: SIZE_LIMIT, pages, gas)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from node.sandbox import canonical
from node.sandbox.types import HistoryEntry
from tests.contracts.chain import Chain
from tests.contracts.flows import AUDITOR, CLERK, approved, lock_and_dispense, settle
from tests.contracts.rxclient import World

SMALLEST_VALUE_LIMIT = 65536  # a page fits a max_value_bytes of 64 KiB (the sample's: 256 KiB)
SAMPLE_GAS_LIMIT = 5_000_000  # network-config/consortium.yaml


def _seed_versions(chain: Chain, rx: str, n: int, step: str, detail: dict[str, Any],
                   pad: int = 0, block_bytes: int = 0) -> list[str]:
    """``n`` more versions of ``rx/{rx}``, each a ``step`` one minute apart (a record padded
    with ``pad`` characters, written in a block of ``block_bytes``); their tx ids."""
    nk = ("prescription", "rx/" + rx)
    versions = chain.state.versions[nk]
    latest = canonical.decode(chain.state.values[nk], "rx")
    tx_ids = []
    for _ in range(n):
        chain.advance(60_000)
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
    another, and the trail is ordered by time. Every step is shown once, in time order, also
    when a page's versions are more than one read of values holds (here 100 big records in
    reverse time order: a page reads from its first step's version)."""
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
    assert [s["tx_id"] for s in steps[2:]] == list(reversed(seeded))
    assert [s["time_ms"] for s in steps] == sorted(s["time_ms"] for s in steps)


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
