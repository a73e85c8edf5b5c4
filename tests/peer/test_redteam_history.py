"""ctx.history over a long key history: bounded in bytes, and one block read per block."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from rxchain.v1 import block_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from node.crypto.canonical import block_data_hash
from node.errors import RxError
from node.ledger.ledger import Ledger
from node.ledger.statedb import HistoryEntry
from node.ledger.txwrites import outcomes_from_block
from node.peer import history as history_module
from node.peer.history import MAX_HISTORY_BYTES, HistoryReadError, LedgerHistory, ValueCache
from node.peer.simulator import TxSimulator
from node.sandbox.api import GAS_HISTORY_BLOCK, GAS_HISTORY_BLOCK_BYTES_PER_UNIT, GAS_HISTORY_ENTRY, history_gas
from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox
from node.sandbox.types import CallerInfo, Invocation, InvocationResult
from node.sandbox.types import HistoryEntry as Version
from tests.peer.conftest import Cluster

MIB = 1024 * 1024


def _envelope(tx_id: str, writes: list[tuple[str, bytes]]) -> bytes:
    header = tx_pb.TxHeader(tx_id=tx_id, type=tx_pb.INVOKE, timestamp_ms=1)
    rw = tx_pb.TxRwSet()
    ns = rw.ns_rwsets.add(namespace="rx")
    for key, value in writes:
        ns.writes.add(key=key, value=value)
    prp = tx_pb.ProposalResponsePayload(results=rw.SerializeToString())
    tx = tx_pb.Transaction(header=header.SerializeToString(), response_payload=prp.SerializeToString())
    return tx_pb.Envelope(payload=tx.SerializeToString(), signature=b"s").SerializeToString()


def _commit(ledger: Ledger, txs: list[list[tuple[str, bytes]]]) -> None:
    n = ledger.height()
    envs = [_envelope(f"tx-{n}-{i}", w) for i, w in enumerate(txs)]
    b = block_pb2.Block()
    b.header.number = n
    b.header.previous_hash = ledger.blocks.last_hash()
    b.header.data_hash = block_data_hash(envs)
    b.data.envelopes.extend(envs)
    b.metadata.validation_codes.extend([tx_pb.VALID] * len(envs))
    ledger.commit(b, outcomes_from_block(b))


class CountingLedger:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.reads: list[int] = []

    def history(self, ns: str, key: str, limit: int = 0, start: int = 0) -> list[HistoryEntry]:
        return self.ledger.history(ns, key, limit, start)

    def block(self, number: int) -> block_pb2.Block:
        self.reads.append(number)
        return self.ledger.block(number)


def test_history_of_large_values_is_bounded_in_bytes(tmp_path: Path) -> None:
    big = MAX_HISTORY_BYTES // MIB + 2  # versions of 1 MiB each: past the bound
    with Ledger(tmp_path, fsync=False) as ledger:
        for i in range(big):
            _commit(ledger, [[("k", bytes([i]) * MIB)]])
        history = LedgerHistory(ledger, ledger.height() - 1)
        with pytest.raises(RxError) as e:
            history("rx", "k", 1000)
        assert e.value.reason == "SIZE_LIMIT"
        # it read the 16 versions that fit and the one that passed the bound: the call pays
        # for all 17 (it was charged its base alone), as the pages reading them would
        fit = history("rx", "k", 1000, start=0)
        past = history("rx", "k", 1, start=len(fit))
        assert len(fit) == MAX_HISTORY_BYTES // MIB and len(past) == 1
        assert isinstance(e.value, HistoryReadError)
        assert e.value.history_gas == history_gas(fit, True) + history_gas(past, True) > 17 * MIB // 512
        # fewer entries are answered, values intact and oldest first
        few = history("rx", "k", 3)
        assert [h.value for h in few] == [bytes([i]) * MIB for i in range(3)]


def test_entries_of_one_block_read_it_once(tmp_path: Path) -> None:
    with Ledger(tmp_path, fsync=False) as ledger:
        _commit(ledger, [[("k", b"a")], [("k", b"b")], [("k", b"c")]])  # three blind writes
        _commit(ledger, [[("k", b"d")]])
        counting = CountingLedger(ledger)
        out = LedgerHistory(counting, ledger.height() - 1)("rx", "k", 10)
        assert [h.value for h in out] == [b"a", b"b", b"c", b"d"]
        assert counting.reads == [0, 1]


def test_a_shared_cache_answers_a_repeated_read_without_its_blocks(tmp_path: Path) -> None:
    """Every read of a key's history read one block per version, again for every query (a
    prescription's trace of 1000 versions: ~1 s of the peer per query on full 4 MiB blocks).
    Readers sharing a ValueCache read each block once; the answers are the same, deletes
    included, and a reader bound to a lower height still answers only its own entries."""
    with Ledger(tmp_path, fsync=False) as ledger:
        _commit(ledger, [[("k", b"a")], [("other", b"x")]])
        _commit(ledger, [[("k", b"b")]])
        _commit(ledger, [[("k", b"c")]])
        top = ledger.height() - 1
        plain = [(h.block, h.value) for h in LedgerHistory(ledger, top)("rx", "k", 10)]
        counting, cache = CountingLedger(ledger), ValueCache()
        first = LedgerHistory(counting, top, cache)("rx", "k", 10)
        assert [(h.block, h.value) for h in first] == plain == [(0, b"a"), (1, b"b"), (2, b"c")]
        assert counting.reads == [0, 1, 2]
        counting.reads.clear()
        again = LedgerHistory(counting, top, cache)("rx", "k", 10)
        assert [(h.tx_id, h.block, h.value) for h in again] == [(h.tx_id, h.block, h.value) for h in first]
        assert counting.reads == []
        lower = LedgerHistory(counting, 1, cache)("rx", "k", 10)
        assert [(h.block, h.value) for h in lower] == [(0, b"a"), (1, b"b")]
        assert counting.reads == []


def test_the_cache_is_bounded_and_a_value_it_dropped_is_read_again(tmp_path: Path) -> None:
    value = b"v" * 1000
    with Ledger(tmp_path, fsync=False) as ledger:
        for _ in range(10):
            _commit(ledger, [[("k", value)]])
        counting, cache = CountingLedger(ledger), ValueCache(max_bytes=4000)
        for _ in range(2):
            out = LedgerHistory(counting, ledger.height() - 1, cache)("rx", "k", 10)
            assert [h.value for h in out] == [value] * 10
            assert cache.size_bytes <= 4000
        assert len(counting.reads) == 20  # the oldest dropped first: every block read again
        cache.put(("rx", "huge", 0, 0), b"x" * 5000)  # larger than the whole cache: not kept
        assert cache.get(("rx", "huge", 0, 0)) == (False, None)


HIST_SOURCE = '''from rxchain_contract import Context


def put(ctx: Context, key: str, value: int) -> dict:
    ctx.put("k/" + key, value)
    return {"ok": True}


def versions(ctx: Context, key: str) -> dict:
    return {"values": [h["value"] for h in ctx.history("k/" + key, 1000)]}
'''


def test_an_endorser_reads_a_hot_keys_blocks_once(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The endorser's simulations share one cache: a query repeated (a new proposal each time,
    as Gateway.Evaluate gets them) reads none of the key's blocks again."""
    d = cluster.deploy("hist", HIST_SOURCE, "OutOf(1, h01.peer, p01.peer, ins01.peer)",
                       {"put": ["*"], "versions": ["*"]})
    _, code = cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d)
    assert code == tx_pb.VALID
    for i in range(4):
        _, code = cluster.transact(cluster.net.doctor, "hist", "put", {"key": "a", "value": i})
        assert code == tx_pb.VALID
    peer = cluster.peers[0]
    reads: list[int] = []
    read_block = peer.ledger.block

    def counting_block(number: int) -> block_pb2.Block:
        reads.append(number)
        return read_block(number)

    monkeypatch.setattr(peer.ledger, "block", counting_block)
    answers = []
    for _ in range(2):
        signed = cluster.kit.proposal(cluster.net.nurse, "hist", "versions", {"key": "a"},
                                      timestamp_ms=cluster.now())
        sim = peer.endorser.simulate(signed, endorse=False)
        assert sim.response.status == 200, sim.response
        answers.append(json.loads(sim.response.payload)["values"])
    assert answers == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert len(reads) == 4  # the first query's four blocks, none for the second


KIB = 1024


def _filler(i: int, size: int) -> list[tuple[str, bytes]]:
    """A transaction writing another key: makes its block ``size`` bytes bigger."""
    return [(f"filler-{i}", b"f" * size)]


def _pages(history: LedgerHistory, limit: int = 1000, gas_left: int | None = None) -> list[list[Version]]:
    pages: list[list[Version]] = []
    start = 0
    for _ in range(1000):
        page = history("rx", "k", limit, start=start, gas_left=gas_left)
        if not page:
            return pages
        pages.append(page)
        start += len(page)
    raise AssertionError("the pages did not end")


def test_a_record_rewritten_with_big_values_is_read_page_by_page(tmp_path: Path) -> None:
    """A 256 KiB record rewritten 70 times: 17.5 MiB of values. Its history (and every
    prescription trace of it) failed SIZE_LIMIT for good; page by page every version is read,
    oldest first, each page within the byte bound."""
    versions = [bytes([65 + i % 26]) * (256 * KIB) + str(i).encode() for i in range(70)]
    with Ledger(tmp_path, fsync=False) as ledger:
        for v in versions:
            _commit(ledger, [[("k", v)]])
        top = ledger.height() - 1
        with pytest.raises(RxError) as e:  # the call without start: as before
            LedgerHistory(ledger, top)("rx", "k", 1000)
        assert e.value.reason == "SIZE_LIMIT"
        for cache in (None, ValueCache()):
            pages = _pages(LedgerHistory(ledger, top, cache))
            assert [h.value for p in pages for h in p] == versions
            assert len(pages) == 2 and all(sum(len(h.value or b"") for h in p) <= MAX_HISTORY_BYTES for p in pages)
            assert [h.block for p in pages for h in p] == list(range(70))
        # a page may start anywhere, and one past the end is empty
        assert [h.value for h in LedgerHistory(ledger, top)("rx", "k", 3, start=68)] == versions[68:]
        assert LedgerHistory(ledger, top)("rx", "k", 3, start=70) == []
        # a reader bound to a lower height pages only its own versions
        assert [h.block for p in _pages(LedgerHistory(ledger, 9)) for h in p] == list(range(10))


def test_a_metadata_read_reads_no_block(tmp_path: Path) -> None:
    with Ledger(tmp_path, fsync=False) as ledger:
        for i in range(5):
            _commit(ledger, [[("k", b"v" * (i + 1))], _filler(i, 100)])
        counting = CountingLedger(ledger)
        meta = LedgerHistory(counting, ledger.height() - 1)("rx", "k", 10, values=False)
        assert [(h.block, h.value, h.block_bytes) for h in meta] == [(i, None, 0) for i in range(5)]
        assert [h.tx_id for h in meta] == [f"tx-{i}-0" for i in range(5)]
        assert counting.reads == []


def test_a_block_read_is_charged_by_the_bytes_of_its_transactions(tmp_path: Path) -> None:
    """The answer carries each block's transaction bytes, the same on every peer and whether
    the value was cached or not (the gas of a read must not depend on a peer's cache)."""
    with Ledger(tmp_path, fsync=False) as ledger:
        _commit(ledger, [[("k", b"1")]])
        _commit(ledger, [[("k", b"2")], _filler(1, 512 * KIB)])
        top = ledger.height() - 1
        cold = LedgerHistory(ledger, top, ValueCache())("rx", "k", 10)
        envs = [len(e) for n in range(2) for e in [*ledger.block(n).data.envelopes]]
        assert [h.block_bytes for h in cold] == [envs[0], envs[1] + envs[2]]
        assert cold[1].block_bytes > 512 * KIB
        cache = ValueCache()
        LedgerHistory(ledger, top, cache)("rx", "k", 10)
        warm = LedgerHistory(CountingLedger(ledger), top, cache)("rx", "k", 10)
        assert warm == cold
        assert history_gas(cold, True) - history_gas(cold, False) == sum(
            GAS_HISTORY_BLOCK + h.block_bytes // GAS_HISTORY_BLOCK_BYTES_PER_UNIT for h in cold)


def test_a_read_stops_at_the_block_its_gas_cannot_pay(tmp_path: Path) -> None:
    """A history read of 1000 versions, each in its own full block, made the peer read every
    block (~1.2 ms each) for 21,000 gas; it now reads at most one block more than the gas
    left pays for, and charging that answer ends the call OUT_OF_GAS."""
    with Ledger(tmp_path, fsync=False) as ledger:
        for i in range(20):
            _commit(ledger, [[("k", b"v")], _filler(i, 256 * KIB)])
        top = ledger.height() - 1
        per_block = GAS_HISTORY_ENTRY + GAS_HISTORY_BLOCK + (256 * KIB) // GAS_HISTORY_BLOCK_BYTES_PER_UNIT
        counting = CountingLedger(ledger)
        out = LedgerHistory(counting, top)("rx", "k", 1000, gas_left=5 * per_block)
        assert len(counting.reads) == len(out) == 6 and history_gas(out, True) > 5 * per_block
        # a page stops before it instead, at half the gas left (the rest is the caller's, to
        # use the page; read on from the next version)
        counting.reads.clear()
        page = LedgerHistory(counting, top)("rx", "k", 1000, start=0, gas_left=10 * per_block + 200)
        assert len(page) == 5 and history_gas(page, True) <= 5 * per_block + 100
        assert len(counting.reads) == 6
        # a page's first version is answered even beyond the gas left (it ends the call)
        assert len(LedgerHistory(ledger, top)("rx", "k", 1000, start=3, gas_left=0)) == 1
        # and a page is at most HISTORY_PAGE_GAS whatever the gas left
        counting.reads.clear()
        assert len(LedgerHistory(counting, top)("rx", "k", 1000, gas_left=None)) == 20
        assert len(counting.reads) == 20


def test_a_page_is_bounded_by_its_gas_whatever_the_gas_left(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with Ledger(tmp_path, fsync=False) as ledger:
        for i in range(8):
            _commit(ledger, [[("k", b"v")], _filler(i, 64 * KIB)])
        top = ledger.height() - 1
        per_block = history_gas(LedgerHistory(ledger, top)("rx", "k", 1), True)
        assert per_block > 128
        # (HISTORY_PAGE_GAS is 1,000,000: ~120 full 4 MiB blocks; three of these here)
        monkeypatch.setattr(history_module, "HISTORY_PAGE_GAS", 3 * per_block + 1)
        pages = _pages(LedgerHistory(ledger, top), gas_left=10**9)
        assert [len(p) for p in pages] == [3, 3, 2]
        assert [h.block for p in pages for h in p] == list(range(8))
        # the call without start is not paged: only the gas left bounds it
        assert len(LedgerHistory(ledger, top)("rx", "k", 1000, gas_left=10**9)) == 8


READER = '''from rxchain_contract import Context


def versions(ctx: Context, limit: int) -> list:
    return [h["value"] for h in ctx.history("k", limit)]


def every(ctx: Context, limit: int) -> list:
    pages = []
    n = 0
    got = ctx.history("k", limit, 0)
    while len(got) > 0:
        pages.append([len(h["value"]) for h in got])
        n = n + len(got)
        got = ctx.history("k", limit, n)
    return pages
'''


def _read_versions(ledger: Ledger | CountingLedger, limit: int, gas: int,
                   cache: ValueCache | None = None, fn: str = "versions",
                   runner: InProcessRunner | Sandbox | None = None) -> InvocationResult:
    """``fn`` run as an endorser runs it: a simulation on a snapshot, the ledger's history."""
    base = ledger.ledger if isinstance(ledger, CountingLedger) else ledger
    with base.snapshot() as snap:
        top = snap.savepoint.block if snap.savepoint else -1
        sim = TxSimulator(snap, "rx", history_source=LedgerHistory(ledger, top, cache))
        inv = Invocation("rx", hashlib.sha256(READER.encode()).hexdigest(), READER, fn,
                         json.dumps({"limit": limit}).encode(), "tx", 1, CallerInfo("h01", "doctor"),
                         gas_limit=gas)
        return (runner or InProcessRunner()).invoke(inv, sim)


def test_a_contract_pays_for_the_blocks_its_history_reads(tmp_path: Path) -> None:
    """The same answer costs more gas when its versions lie in bigger blocks -- the peer reads
    them whole -- by the blocks' bytes / 512; a warm cache does not change it."""
    small, full = tmp_path / "small", tmp_path / "full"
    for where, filler in ((small, 0), (full, 1024 * KIB)):
        with Ledger(where, fsync=False) as ledger:
            for i in range(10):
                _commit(ledger, [[("k", json.dumps(i).encode())]] + ([_filler(i, filler)] if filler else []))
    with Ledger(small, fsync=False) as a, Ledger(full, fsync=False) as b:
        cheap = _read_versions(a, 100, 10**7)
        dear = _read_versions(b, 100, 10**7)
        assert json.loads(cheap.result_json) == json.loads(dear.result_json) == list(range(10))
        grown = sum(len(e) for n in range(10) for e in b.block(n).data.envelopes) - sum(
            len(e) for n in range(10) for e in a.block(n).data.envelopes)
        assert dear.gas_used - cheap.gas_used >= grown // GAS_HISTORY_BLOCK_BYTES_PER_UNIT - 10
        assert dear.gas_used - cheap.gas_used > 10 * 2000
        cache = ValueCache()
        assert [_read_versions(b, 100, 10**7, cache).gas_used for _ in range(2)] == [dear.gas_used] * 2
        # a gas limit that pays for the call and three of these versions: OUT_OF_GAS after
        # reading one block more (the old read took all ten for 1,200 gas)
        per_version = history_gas(LedgerHistory(b, 9)("rx", "k", 1), True)
        counting = CountingLedger(b)
        out = _read_versions(counting, 100, 1_500 + 3 * per_version)
        assert (out.ok, out.reason) == (False, "OUT_OF_GAS")
        assert counting.reads == [0, 1, 2, 3]


def test_a_worker_reads_and_pays_a_ledger_history_as_the_in_process_runner(tmp_path: Path) -> None:
    """What the gas of a history read depends on crosses the worker pipe (the gas left, each
    block's transaction bytes, a value or none): the same answers and gas in a worker."""
    with Ledger(tmp_path, fsync=False) as ledger:
        for i in range(6):
            _commit(ledger, [[("k", json.dumps("v" * 300_000 + str(i)).encode())], _filler(i, 64 * KIB)])
        sandbox = Sandbox(workers=1)
        outcomes = set()
        try:
            for fn, gas in (("every", 10**7), ("every", 100_000), ("every", 50_000), ("versions", 40_000),
                            ("versions", 10**7)):
                here = _read_versions(ledger, 100, gas, fn=fn)
                there = _read_versions(ledger, 100, gas, ValueCache(), fn=fn, runner=sandbox)
                assert (here.ok, here.reason, here.result_json, here.gas_used) == (
                    there.ok, there.reason, there.result_json, there.gas_used), (fn, gas)
                outcomes.add((fn, here.reason, len(json.loads(here.result_json)) if here.ok else 0))
        finally:
            sandbox.close()
    # the whole history in one page; pages cut by half the gas left; out of gas; the old call
    # over its 1 MiB result
    assert outcomes == {("every", "", 1), ("every", "", 2), ("every", "OUT_OF_GAS", 0),
                        ("versions", "OUT_OF_GAS", 0), ("versions", "SIZE_LIMIT", 0)}
