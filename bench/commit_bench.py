"""Commit benchmark: one peer validating and committing pre-built blocks on one core.

``python -m bench.commit_bench`` writes ``bench/results/commit.json``:

* ``validate_commit_tx_per_s`` -- blocks of 500 really signed txs (creator signature + 2
  endorsements, 3 reads and 3 writes each) through the full :class:`Committer` (block
  checks, orderer signature, per-tx parsing, MSP, 3 ECDSA verifies, policy, MVCC, block
  store append with fsync, one synced LevelDB batch);
* ``crypto_bound_tx_per_s`` -- how many such txs the same core can do if it only verified
  the 3 signatures of each (the same Verifier with cached keys), measured in the same run
  and interleaved with the commit rounds;
* ``ratio`` = validate_commit / crypto_bound (target >= 0.6);
* ``small_blocks`` -- the same commit path with blocks of :data:`SMALL_BLOCK_TXS` txs, the
  fill the end-to-end network sees near its peak, in thread CPU per tx (wall time there is
  mostly fsync): all of it, the 3 signature checks of each tx alone, and the rest (parsing,
  policy, MVCC, state and index writes, and the per-block work: orderer signature, hash
  chain, fsyncs). A peer's deliver thread in ``e2e.json`` does this plus receiving the block.

The process pins itself to one CPU so LevelDB's background thread shares the core.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netgen import generate
from rxchain.v1 import block_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.common import write_result
from bench.txbuild import SMALL_CONSORTIUM, RwSpec, TxKit, make_block, node_signer, user_signer
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Purpose, Verifier
from node.genesis import read_genesis
from node.identity.policy import parse_policy
from node.ledger.ledger import Ledger
from node.ledger.statedb import StateReader
from node.peer.committer import Committer
from node.peer.validator import ContractDefinition

TXS_PER_BLOCK = 500
SMALL_BLOCK_TXS = 13
SMALL_BLOCKS = 60


class _Policies:
    def __init__(self, definition: ContractDefinition) -> None:
        self.definition = definition

    def contract(self, name: str, state: StateReader) -> ContractDefinition | None:
        return self.definition if name == self.definition.name else None


def _build_blocks(home: Path, n_blocks: int, genesis: block_pb2.Block,
                  txs_per_block: int = TXS_PER_BLOCK) -> list[block_pb2.Block]:
    kit = TxKit("test-rx", random.Random(1))
    creators = [user_signer(home, "h01", "dr-a"), user_signer(home, "p01", "ph-a")]
    endorsers = [node_signer(home, "peer.h01", "h01"), node_signer(home, "peer.p01", "p01")]
    orderer = node_signer(home, "orderer.ins01", "ins01")
    prev = block_header_hash(genesis.header)
    blocks = []
    for b in range(1, n_blocks + 1):
        envs = []
        for t in range(txs_per_block):
            keys = [f"rx-{b:04d}-{t:04d}-{j}" for j in range(3)]
            rw = RwSpec(
                "rx",
                reads=[(k, None) for k in keys],
                writes=[(k, b'{"status":"issued","amount_fen":12345}') for k in keys],
            )
            envs.append(kit.invoke(creators[t % 2], endorsers, [rw]))
        block = make_block(b, prev, envs, [orderer])
        prev = block_header_hash(block.header)
        blocks.append(block)
    return blocks


def _signature_jobs(blocks: list[block_pb2.Block]) -> list[list[tuple[bytes, bytes, Purpose, bytes]]]:
    """(cert, signature, data) triples per block: what the crypto-bound loop verifies."""
    out = []
    for block in blocks:
        jobs = []
        for env_bytes in block.data.envelopes:
            env = tx_pb.Envelope.FromString(env_bytes)
            tx = tx_pb.Transaction.FromString(env.payload)
            hdr = tx_pb.TxHeader.FromString(tx.header)
            jobs.append((hdr.creator.cert_der, env.signature, Purpose.ENVELOPE, env.payload))
            for e in tx.endorsements:
                jobs.append((e.endorser.cert_der, e.signature, Purpose.ENDORSEMENT, tx.response_payload))
        out.append(jobs)
    return out


def _crypto_round(verifier: Verifier, jobs: list[tuple[bytes, bytes, Purpose, bytes]]) -> None:
    for cert, sig, purpose, data in jobs:
        if not verifier.verify(cert, sig, purpose, data):
            raise AssertionError("benchmark signature does not verify")


def _rounds(committer: Committer, blocks: list[block_pb2.Block],
            jobs: list[list[tuple[bytes, bytes, Purpose, bytes]]], clock: Callable[[], float],
            profiler: Any = None) -> tuple[list[float], list[float]]:
    """Per block, by ``clock``: (signature checks alone, validate + commit); the signature-only
    rounds are interleaved with the commits (same Verifier setup, warm key cache)."""
    verifier = Verifier()
    _crypto_round(verifier, jobs[0][:30])  # warm the key cache
    crypto: list[float] = []
    commit: list[float] = []
    for block, block_jobs in zip(blocks, jobs, strict=True):
        t0 = clock()
        _crypto_round(verifier, block_jobs)
        t1 = clock()
        if profiler is not None:
            profiler.enable()
        done = committer.commit_block(block)
        if profiler is not None:
            profiler.disable()
        t2 = clock()
        if done.validated.codes.count(tx_pb.VALID) != len(block.data.envelopes):
            raise AssertionError(f"block {block.header.number}: not all txs valid")
        crypto.append(t1 - t0)
        commit.append(t2 - t1)
    return crypto, commit


def _committer(root: Path, genesis: block_pb2.Block) -> tuple[Ledger, Committer]:
    ledger = Ledger(root, fsync=True)
    ledger.commit_genesis(genesis)
    definition = ContractDefinition(
        "rx", "1.0", 1, parse_policy("AND(h01.peer, p01.peer)", ["h01", "p01", "ins01"])
    )
    return ledger, Committer(ledger, Verifier(), _Policies(definition))


def small_blocks(home: Path, genesis: block_pb2.Block, root: Path, txs_per_block: int = SMALL_BLOCK_TXS,
                 n_blocks: int = SMALL_BLOCKS, warm: int = 3) -> dict[str, Any]:
    """Thread CPU per tx of validate + commit with small blocks, and of their signature
    checks alone (the first ``warm`` blocks are not counted)."""
    blocks = _build_blocks(home, n_blocks, genesis, txs_per_block)
    ledger, committer = _committer(root, genesis)
    try:
        crypto, commit = _rounds(committer, blocks, _signature_jobs(blocks), time.thread_time)
    finally:
        ledger.close()
    crypto_s, commit_s = sum(crypto[warm:]), sum(commit[warm:])
    n = max(1, (n_blocks - warm) * txs_per_block)
    return {
        "txs_per_block": txs_per_block,
        "blocks_counted": n_blocks - warm,
        "cpu_ms_per_tx": round(1000 * commit_s / n, 3),
        "signature_checks_ms_per_tx": round(1000 * crypto_s / n, 3),
        "rest_ms_per_tx": round(1000 * (commit_s - crypto_s) / n, 3),
    }


def run(n_blocks: int, profile: bool) -> dict[str, Any]:
    """Build, then measure; returns the result document."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    with tempfile.TemporaryDirectory(prefix="rxchain-commit-bench-") as tmp:
        home = Path(tmp) / "net"
        generate(SMALL_CONSORTIUM, home)
        genesis = read_genesis(home / "genesis.block")
        t0 = time.perf_counter()
        blocks = _build_blocks(home, n_blocks, genesis)
        build_s = time.perf_counter() - t0
        ledger, committer = _committer(Path(tmp) / "ledger", genesis)
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
        crypto_times, commit_times = _rounds(committer, blocks, _signature_jobs(blocks), time.perf_counter,
                                             profiler)
        state_hash = ledger.state_hash().hex()
        ledger.close()
        small = small_blocks(home, genesis, Path(tmp) / "ledger-small")
        if profiler is not None:
            import pstats

            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    commit_tps = TXS_PER_BLOCK / statistics.median(commit_times)
    crypto_tps = TXS_PER_BLOCK / statistics.median(crypto_times)
    return {
        "validate_commit_tx_per_s": round(commit_tps, 1),
        "crypto_bound_tx_per_s": round(crypto_tps, 1),
        "ratio": round(commit_tps / crypto_tps, 3),
        "target_ratio": 0.6,
        "txs_per_block": TXS_PER_BLOCK,
        "blocks": n_blocks,
        "signatures_per_tx": 3,
        "writes_per_tx": 3,
        "reads_per_tx": 3,
        "fsync": True,
        "block_commit_ms_median": round(1000 * statistics.median(commit_times), 2),
        "block_commit_ms_max": round(1000 * max(commit_times), 2),
        "build_s": round(build_s, 2),
        "final_state_hash": state_hash,
        "small_blocks": small,
    }


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    result = run(args.blocks, args.profile)
    path = write_result("commit", result)
    for key in ("validate_commit_tx_per_s", "crypto_bound_tx_per_s", "ratio", "small_blocks"):
        print(f"{key}: {result[key]}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
