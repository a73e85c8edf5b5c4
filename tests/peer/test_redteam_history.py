"""ctx.history over a long key history: bounded in bytes, and one block read per block."""

from __future__ import annotations

from pathlib import Path

import pytest
from rxchain.v1 import block_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from node.crypto.canonical import block_data_hash
from node.errors import RxError
from node.ledger.ledger import Ledger
from node.ledger.statedb import HistoryEntry
from node.ledger.txwrites import outcomes_from_block
from node.peer.history import MAX_HISTORY_BYTES, LedgerHistory

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
