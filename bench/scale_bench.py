"""Scale benchmark: a peer ledger grown to many prescription-story transactions.

``python -m bench.scale_bench`` -> ``bench/results/scale.json``. Size: ``RXCHAIN_SCALE_TX``
(default 100,000; ``RXCHAIN_SCALE_TX=1000000`` for the full 1M-tx run).

The ledger is grown by committing pre-built, really signed blocks (creator signature + two
endorsements each, orderer-signed blocks; :mod:`bench.txbuild`) through the peer's own
:class:`~node.peer.committer.Committer` -- full validation, fsync on -- not through the
network. Transactions follow the prescription story: each prescription gets 7
transactions (issue, review, lock, key fetch, dispense, key fetch, settle), interleaved
with other prescriptions' so its steps land in different blocks; each reads the
prescription record at its current version and rewrites it (with an encrypted-size
payload), plus the grants, trace codes, dispense and claim records of the real contracts.

Measured:

* ``restart_s``: closing and reopening the ledger as the peer does (block store + state DB
  + indexes, crash-recovery checks and the start-up tamper check ``verify_on_open``, which
  re-reads and hashes every block: linear in the ledger size) until a state read and a
  history read answer -- at 10 % of the size and at full size; ``restart_s_without_chain_verify``
  is the same without the tamper check (the state is never replayed: near-constant);
* ``trace_query_ms``: a prescription's trace (the history index of ``rx/<id>`` plus the
  written values read back from their blocks, what ``ctx.history`` does for
  ``prescription.trace``) for prescriptions from the start, middle and end of the ledger;
* ``disk_bytes_per_tx``: the ledger directory's size / transactions;
* ``catch_up_tx_per_s``: a new peer's ledger validating and committing the stored blocks
  (read back from the first ledger's block store) from genesis, for up to
  ``RXCHAIN_SCALE_CATCHUP_TX`` transactions (default: all, at most 50,000).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netgen import generate
from rxchain.v1 import block_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.common import write_result
from bench.txbuild import SMALL_CONSORTIUM, RwSpec, TxKit, make_block, node_signer, user_signer
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Signer, Verifier
from node.genesis import read_genesis
from node.identity.policy import parse_policy
from node.ledger.ledger import Ledger
from node.ledger.statedb import StateReader
from node.peer.committer import Committer
from node.peer.history import LedgerHistory
from node.peer.validator import ContractDefinition

TXS_PER_BLOCK = 500
ACTIVE_STORIES = 4 * TXS_PER_BLOCK  # a prescription's consecutive steps never share a block
STEPS = ("issue", "review", "lock", "get_key", "dispense", "get_key", "settle")
RX_NS, SETTLE_NS = "prescription", "settlement"


class _Policies:
    def __init__(self, definitions: dict[str, ContractDefinition]) -> None:
        self.definitions = definitions

    def contract(self, name: str, state: StateReader) -> ContractDefinition | None:
        return self.definitions.get(name)


@dataclass
class _Story:
    n: int
    step: int = 0


@dataclass
class StoryLedgerBuilder:
    """Produces signed blocks of interleaved prescription stories."""

    home: Path
    rng: random.Random
    kit: TxKit = field(init=False)
    versions: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kit = TxKit(str(SMALL_CONSORTIUM["consortium_id"]), self.rng)
        self.doctor = user_signer(self.home, "h01", "dr-a")
        self.pharm = user_signer(self.home, "p01", "ph-a")
        self.clerk = user_signer(self.home, "ins01", "clerk-a")
        self.endorsers = [node_signer(self.home, "peer.h01", "h01"), node_signer(self.home, "peer.p01", "p01")]
        self.orderer = node_signer(self.home, "orderer.ins01", "ins01")
        self.active = [_Story(i) for i in range(ACTIVE_STORIES)]
        self.next_story = ACTIVE_STORIES
        self.cursor = 0
        self.blob = self.rng.randbytes(900).hex()  # ciphertext-sized payload (base64 ~ 1.2 KB)

    def rx_id(self, n: int) -> str:
        """The prescription id of story ``n``."""
        return f"RX20261125-h01-{n:08d}"

    def _value(self, story: _Story, step: str, extra: int = 0) -> bytes:
        doc = {"rx_id": self.rx_id(story.n), "status": step.upper(), "patient": f"{story.n % 5000:064x}",
               "ciphertext": self.blob[: 600 + extra], "step": {"step": step, "actor": "bench",
                                                                 "org": "h01", "role": "doctor", "detail": {}}}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    def _tx(self, story: _Story, block: int, pos: int) -> bytes:
        step = STEPS[story.step]
        rid = self.rx_id(story.n)
        rx_key = "rx/" + rid
        reads = [(rx_key, self.versions.get(rx_key))] if story.step else [(rx_key, None)]
        writes: list[tuple[str, bytes | None]] = [(rx_key, self._value(story, step, 300 if step == "issue" else 0))]
        rw2: list[RwSpec] = []
        creator: Signer = self.pharm
        if step == "issue":
            creator = self.doctor
            for party in ("patient", "h01", "p01", "ins01"):
                grant = b'{"kind":"k","wrapped_key":"' + self.blob[:180].encode() + b'"}'
                writes.append((f"grant/{rid}/{party}", grant))
            writes.append((f"pidx/{story.n % 5000:064x}/{rid}", b'{"rx_id":"' + rid.encode() + b'"}'))
        elif step == "get_key":
            writes = [(f"audit/{rid}/{story.step}", b'{"event":"KEY_FETCH","outcome":"GRANTED"}')]
            if story.step == 5:
                creator = self.clerk
        elif step == "dispense":
            for i in range(2):
                writes.append((f"trace/{story.n:08d}{i}", b'{"fill":1}'))
            writes.append((f"disp/{rid}/001", b'{"fill":1,"boxes":2,"delivered":false}'))
        elif step == "settle":
            creator = self.clerk
            reads = []
            writes = []
            ctr = f"ctr/{story.n % 5000:064x}/2026"
            rw2.append(RwSpec(SETTLE_NS, reads=[(ctr, self.versions.get(ctr))],
                              writes=[(ctr, b'{"deductible_used_fen":20000,"cap_used_fen":2800}'),
                                      (f"claim/CL-{rid}", b'{"medfee_fen":4500,"fund_fen":3150,"events":[]}'),
                                      (f"claimed/{rid}/001", b'{"active":"x","count":1}')]))
            for key, _ in rw2[-1].writes:
                self.versions[key] = (block, pos)
        sets = ([RwSpec(RX_NS, reads=reads, writes=writes)] if writes else []) + rw2
        for key, _ in writes:
            self.versions[key] = (block, pos)
        return self.kit.invoke(creator, self.endorsers, sets, contract=RX_NS if writes else SETTLE_NS)

    def blocks(self, first: int, previous_hash: bytes, count: int) -> Iterator[block_pb2.Block]:
        """``count`` blocks numbered from ``first``."""
        prev = previous_hash
        for b in range(first, first + count):
            envs = []
            for pos in range(TXS_PER_BLOCK):
                story = self.active[self.cursor]
                envs.append(self._tx(story, b, pos))
                story.step += 1
                if story.step == len(STEPS):
                    self.active[self.cursor] = _Story(self.next_story)
                    self.next_story += 1
                self.cursor = (self.cursor + 1) % len(self.active)
            block = make_block(b, prev, envs, [self.orderer])
            prev = block_header_hash(block.header)
            yield block


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _definitions() -> dict[str, ContractDefinition]:
    raw_orgs: Any = SMALL_CONSORTIUM["organizations"]
    orgs = [str(o["id"]) for o in raw_orgs]
    policy = parse_policy("AND(h01.peer, p01.peer)", orgs)
    return {RX_NS: ContractDefinition(RX_NS, "1.0", 1, policy),
            SETTLE_NS: ContractDefinition(SETTLE_NS, "1.0", 1, policy)}


def _restart(path: Path, probe_rx: str, verify: bool = True) -> float:
    t0 = time.perf_counter()
    ledger = Ledger(path, fsync=True, verify_on_open=verify)
    try:
        if ledger.get(RX_NS, "rx/" + probe_rx) is None:
            raise AssertionError("restarted ledger lost state")
        if not ledger.history(RX_NS, "rx/" + probe_rx):
            raise AssertionError("restarted ledger lost the history index")
        return time.perf_counter() - t0
    finally:
        ledger.close()


def _trace_ms(ledger: Ledger, rx_id: str, rounds: int = 5) -> tuple[float, int]:
    times = []
    entries = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        hist = LedgerHistory(ledger, ledger.height() - 1)(RX_NS, "rx/" + rx_id, 1000)
        steps = [json.loads(h.value)["step"]["step"] for h in hist if h.value is not None]
        times.append(time.perf_counter() - t0)
        entries = len(steps)
    return 1000 * statistics.median(times), entries


def run(total_tx: int, catch_up_tx: int) -> dict[str, Any]:
    """Grow, restart, query, catch up."""
    n_blocks = max(2, total_tx // TXS_PER_BLOCK)
    with tempfile.TemporaryDirectory(prefix="rxchain-scale-bench-") as tmp:
        home = Path(tmp) / "net"
        generate(SMALL_CONSORTIUM, home)
        genesis = read_genesis(home / "genesis.block")
        builder = StoryLedgerBuilder(home, random.Random(7))
        src_dir = Path(tmp) / "ledger"
        ledger = Ledger(src_dir, fsync=True)
        ledger.commit_genesis(genesis)
        committer = Committer(ledger, Verifier(), _Policies(_definitions()))
        build_s = commit_s = 0.0
        restart_small: float | None = None
        restart_small_nv: float | None = None
        prev = block_header_hash(genesis.header)
        blocks = builder.blocks(1, prev, n_blocks)
        for i in range(n_blocks):
            t0 = time.perf_counter()
            block = next(blocks)
            build_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            done = committer.commit_block(block)
            commit_s += time.perf_counter() - t0
            if done.validated.codes.count(tx_pb.VALID) != TXS_PER_BLOCK:
                bad = [tx_pb.TxValidationCode.Name(c) for c in done.validated.codes if c != tx_pb.VALID]
                raise AssertionError(f"block {i + 1}: {len(bad)} invalid txs, e.g. {bad[:3]}")
            if i + 1 == max(1, n_blocks // 10):
                ledger.close()
                restart_small = statistics.median(_restart(src_dir, builder.rx_id(0)) for _ in range(3))
                restart_small_nv = statistics.median(_restart(src_dir, builder.rx_id(0), False) for _ in range(3))
                ledger = Ledger(src_dir, fsync=True)
                committer = Committer(ledger, Verifier(), _Policies(_definitions()))
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{n_blocks} blocks ({(i + 1) * TXS_PER_BLOCK} tx), build {build_s:.0f}s, "
                      f"commit {commit_s:.0f}s", flush=True)
        txs = n_blocks * TXS_PER_BLOCK
        completed = builder.next_story - ACTIVE_STORIES
        probes = {"first": builder.rx_id(0), "middle": builder.rx_id(completed // 2),
                  "last_completed": builder.rx_id(max(0, completed - 1))}
        trace = {name: _trace_ms(ledger, rid) for name, rid in probes.items()}
        height = ledger.height()
        ledger.close()
        disk = _dir_bytes(src_dir)
        restart_full = statistics.median(_restart(src_dir, probes["first"]) for _ in range(3))
        restart_no_verify = statistics.median(_restart(src_dir, probes["first"], False) for _ in range(3))
        # catch-up: a fresh peer ledger validates and commits the stored blocks
        src = Ledger(src_dir, fsync=True)
        new_dir = Path(tmp) / "new-peer"
        fresh = Ledger(new_dir, fsync=True)
        fresh.commit_genesis(genesis)
        new_committer = Committer(fresh, Verifier(), _Policies(_definitions()))
        cu_blocks = min(n_blocks, max(1, catch_up_tx // TXS_PER_BLOCK))
        t0 = time.perf_counter()
        for n in range(1, cu_blocks + 1):
            new_committer.commit_block(src.block(n))
        cu_s = time.perf_counter() - t0
        if fresh.height() != cu_blocks + 1:
            raise AssertionError("catch-up did not reach the expected height")
        same = cu_blocks != n_blocks or fresh.state_hash() == src.state_hash()
        fresh.close()
        src.close()
        return {
            "txs": txs,
            "blocks": height,
            "txs_per_block": TXS_PER_BLOCK,
            "prescriptions_completed": completed,
            "build_sign_s": round(build_s, 1),
            "grow_commit_tx_per_s": round(txs / commit_s, 1),
            "restart_s": round(restart_full, 3),
            "restart_s_at_10pct": round(restart_small or 0.0, 3),
            "restart_ratio_full_to_10pct": round(restart_full / restart_small, 2) if restart_small else None,
            "restart_s_without_chain_verify": round(restart_no_verify, 3),
            "restart_s_without_chain_verify_at_10pct": round(restart_small_nv or 0.0, 3),
            "trace_query_ms": round(max(v[0] for v in trace.values()), 3),
            "trace_query_ms_by_position": {k: round(v[0], 3) for k, v in trace.items()},
            "trace_steps": {k: v[1] for k, v in trace.items()},
            "disk_bytes": disk,
            "disk_bytes_per_tx": round(disk / txs, 1),
            "catch_up_tx_per_s": round(cu_blocks * TXS_PER_BLOCK / cu_s, 1),
            "catch_up_txs": cu_blocks * TXS_PER_BLOCK,
            "catch_up_state_matches": same,
            "fsync": True,
            "note": "catch-up measured in-process (stored blocks -> Committer of a fresh ledger): "
                    "validation + commit, without the Deliver stream",
        }


def main() -> int:
    """Entry point."""
    total = int(os.environ.get("RXCHAIN_SCALE_TX", "100000"))
    catch_up = int(os.environ.get("RXCHAIN_SCALE_CATCHUP_TX", str(min(total, 50_000))))
    t0 = time.monotonic()
    result = run(total, catch_up)
    result["duration_s"] = round(time.monotonic() - t0, 1)
    path = write_result("scale", result)
    print(f"wrote {path}")
    for k in ("txs", "restart_s", "restart_s_at_10pct", "trace_query_ms", "disk_bytes_per_tx",
              "catch_up_tx_per_s", "grow_commit_tx_per_s", "duration_s"):
        print(f"  {k}: {result[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
