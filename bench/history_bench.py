"""What a ``ctx.history`` read costs the peer against the gas it is charged.

A real ledger in a temp dir (block store + LevelDB, fsync off), one version of key ``k`` per
block, blocks of four shapes (one small tx; 50 or 500 txs of ~8 KiB, the last a full 4 MiB
block; 16 txs of 256 KiB values). For each: the peer's CPU per version read cold (a new
``ValueCache``: every block read, checksummed and parsed) and warm (every value cached), the
gas per version under the old schedule (1000 + 20 per version + value bytes/32) and the
current one (``node.sandbox.api.history_gas``: + a block read, 100 + its transaction
bytes/512), and the microseconds of peer CPU per gas of each (contract code burns gas at
~0.16-0.33 us per gas: ``sandbox_bench``). Also the index walk per version stepped over by
``start`` and per version answered without values.

``python -m bench.history_bench [--blocks 40]`` writes ``bench/results/history.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rxchain.v1 import block_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.common import write_result
from node.crypto.canonical import block_data_hash
from node.ledger.ledger import Ledger
from node.ledger.txwrites import outcomes_from_block
from node.peer.history import LedgerHistory, ValueCache
from node.sandbox.api import history_gas
from node.sandbox.types import HistoryEntry

SHAPES = (  # name, transactions per block, envelope padding, bytes of k's value
    ("one_small_tx", 1, 0, 100),
    ("50_txs_8k", 50, 8192, 100),
    ("500_txs_8k_full_4mib", 500, 8192, 100),
    ("16_txs_256k_values", 16, 0, 262144),
)


def _envelope(tx_id: str, key: str, value: bytes, pad: int) -> bytes:
    header = tx_pb.TxHeader(tx_id=tx_id, type=tx_pb.INVOKE, timestamp_ms=1)
    rw = tx_pb.TxRwSet()
    rw.ns_rwsets.add(namespace="rx").writes.add(key=key, value=value)
    prp = tx_pb.ProposalResponsePayload(results=rw.SerializeToString())
    tx = tx_pb.Transaction(header=header.SerializeToString(), response_payload=prp.SerializeToString())
    for _ in range(3):  # endorsements of about a real one's size
        tx.endorsements.add(endorser={"org": "h01", "cert_der": b"c" * 600}, signature=b"s" * 72)
    return tx_pb.Envelope(payload=tx.SerializeToString(), signature=b"s" * max(72, pad)).SerializeToString()


def _commit(ledger: Ledger, envs: list[bytes]) -> None:
    b = block_pb2.Block()
    b.header.number = ledger.height()
    b.header.previous_hash = ledger.blocks.last_hash()
    b.header.data_hash = block_data_hash(envs)
    b.data.envelopes.extend(envs)
    b.metadata.validation_codes.extend([tx_pb.VALID] * len(envs))
    ledger.commit(b, outcomes_from_block(b))


def _old_gas(entries: list[HistoryEntry]) -> int:
    return 1000 + 20 * len(entries) + sum(len(e.value or b"") // 32 for e in entries)


def _shape(work: Path, name: str, txs: int, pad: int, value_bytes: int, blocks: int) -> dict[str, Any]:
    value = json.dumps("x" * value_bytes).encode()
    with Ledger(work / name, fsync=False) as ledger:
        for n in range(blocks):
            _commit(ledger, [_envelope(f"t{n}-{i}", "k" if i == 0 else f"k{i}", value, pad) for i in range(txs)])
        top = ledger.height() - 1
        rounds = 3
        t0 = time.process_time()
        for _ in range(rounds):
            out = LedgerHistory(ledger, top, ValueCache())("rx", "k", 1000)
        cold_ms = (time.process_time() - t0) / (rounds * len(out)) * 1000
        cache = ValueCache(max_bytes=1 << 30)
        LedgerHistory(ledger, top, cache)("rx", "k", 1000)
        t0 = time.process_time()
        for _ in range(rounds * 5):
            LedgerHistory(ledger, top, cache)("rx", "k", 1000)
        warm_ms = (time.process_time() - t0) / (rounds * 5 * len(out)) * 1000
        old = _old_gas(out) / len(out)
        new = (1000 + history_gas(out, True)) / len(out)
        return {
            "block_kib": round(len(ledger.blocks.get_bytes(1)) / 1024),
            "cold_ms_per_version": round(cold_ms, 4),
            "warm_ms_per_version": round(warm_ms, 4),
            "old_gas_per_version": round(old),
            "gas_per_version": round(new),
            "old_cold_us_per_gas": round(cold_ms * 1000 / old, 3),
            "cold_us_per_gas": round(cold_ms * 1000 / new, 3),
        }


def _index(work: Path, versions: int) -> dict[str, float]:
    with Ledger(work / "index", fsync=False) as ledger:
        per_block = 500
        for n in range(versions // per_block):
            _commit(ledger, [_envelope(f"t{n}-{i}", "k", b"1", 0) for i in range(per_block)])
        top = ledger.height() - 1
        t0 = time.process_time()
        for _ in range(5):
            ledger.history("rx", "k", 1, versions - 1)
        skip_us = (time.process_time() - t0) / (5 * versions) * 1e6
        t0 = time.process_time()
        for _ in range(5):
            for start in range(0, versions, 1000):
                LedgerHistory(ledger, top)("rx", "k", 1000, start=start, values=False)
        meta_us = (time.process_time() - t0) / (5 * versions) * 1e6
        return {"skip_us_per_version": round(skip_us, 3), "metadata_us_per_version": round(meta_us, 3)}


def measure(work: Path, blocks: int) -> dict[str, Any]:
    shapes = {name: _shape(work, name, txs, pad, value_bytes, blocks) for name, txs, pad, value_bytes in SHAPES}
    return {"blocks": blocks, "shapes": shapes, "index": _index(work, 20_000)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history_bench")
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--name", default="history")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rx-history-bench-"))
    try:
        result = measure(work, args.blocks)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_result(args.name, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
