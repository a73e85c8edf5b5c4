"""ctx.history over a long key history: bounded in bytes, and one block read per block."""

from __future__ import annotations

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
from node.peer.history import MAX_HISTORY_BYTES, LedgerHistory, ValueCache
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

    def history(self, ns: str, key: str, limit: int = 0) -> list[HistoryEntry]:
        return self.ledger.history(ns, key, limit)

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
