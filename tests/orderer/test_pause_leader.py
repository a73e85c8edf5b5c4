"""Multi-process: the Raft leader is paused (SIGSTOP) under load; ordering resumes promptly.

Two loads run at once: the peers' BroadcastClient (following the Raft leader, batched
streams, 8 closed-loop callers) and a raw Broadcast client sending to a follower (which
forwards to the leader). Before the fix the callers stuck on the paused leader waited out
the client's answer timeout (10 s by default) and, being closed-loop, nothing else was
ordered meanwhile; envelopes forwarded by a follower waited out the commit timeout.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rxchain.v1 import transaction_pb2

from node.config import Endpoint
from node.errors import RxError
from node.peer.broadcast_client import BroadcastClient
from tests.orderer.cluster import (
    Client,
    OrdererProcs,
    all_serving,
    leader_of,
    make_network,
    tx_ids_of,
    wait_until,
)

pytestmark = pytest.mark.integration

ANSWER_TIMEOUT_S = 20.0  # the client's last-resort bound; resumption must come well before


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[OrdererProcs, Client]]:
    net = make_network(tmp_path / "net")
    procs = OrdererProcs(net)
    try:
        procs.start_all()
        yield procs, Client(net)
    finally:
        for p in procs.procs.values():  # a paused process must be continued to be killed cleanly
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
        procs.close()
        for name in procs.names():
            print(f"===== {name}\n{procs.log_text(name)[-4000:]}")


class Load:
    """Closed-loop callers on a BroadcastClient plus a raw Broadcast pump to one orderer."""

    def __init__(self, client: Client, bc: BroadcastClient, pump_target: str) -> None:
        self.client, self.bc, self.pump_target = client, bc, pump_target
        self.lock = threading.Lock()
        self.accepted_bc: list[tuple[float, str]] = []
        self.accepted_pump: list[str] = []
        self.submitted: set[str] = set()
        self.refused: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._caller, daemon=True) for _ in range(8)]
        self.threads.append(threading.Thread(target=self._pump, daemon=True))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _caller(self) -> None:
        while not self.stop.is_set():
            tx_id, raw = self.client.envelope()
            with self.lock:
                self.submitted.add(tx_id)
            try:
                resp = self.bc.submit(transaction_pb2.Envelope.FromString(raw))
            except RxError as err:
                with self.lock:
                    self.refused.append(err.reason)
                continue
            with self.lock:
                if resp.accepted:
                    self.accepted_bc.append((time.monotonic(), tx_id))
                else:
                    self.refused.append(resp.reason)

    def _pump(self) -> None:
        while not self.stop.is_set():
            envs = [self.client.envelope() for _ in range(10)]
            with self.lock:
                self.submitted.update(tx for tx, _ in envs)
            try:
                resps = self.client.broadcast(self.pump_target, [e for _, e in envs], timeout=15)
            except grpc.RpcError:
                time.sleep(0.05)
                continue
            with self.lock:
                for (tx_id, _), r in zip(envs, resps, strict=True):
                    assert r.tx_id == tx_id
                    if r.accepted:
                        self.accepted_pump.append(tx_id)
                    else:
                        self.refused.append(r.reason)

    def bc_accepted_after(self, t: float) -> int:
        with self.lock:
            return sum(1 for at, _ in self.accepted_bc if at > t)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_paused_leader_ordering_resumes_promptly_exactly_once(cluster: tuple[OrdererProcs, Client]) -> None:
    procs, client = cluster
    names = procs.names()
    all_serving(procs, client, names)
    leader = wait_until(lambda: leader_of(procs, client), 20, what="first leader")
    follower = next(n for n in names if n != leader)
    specs = {n.name: n for n in procs.net.orderers()}
    eps = [Endpoint(n.name, n.org, "127.0.0.1", n.port) for n in procs.net.orderers()]
    targets = {n.raft_id: f"127.0.0.1:{n.port}" for n in procs.net.orderers()}
    bc = BroadcastClient(eps, client.channel, raft_targets=lambda: targets, leader_poll_s=0.5,
                         answer_timeout_s=ANSWER_TIMEOUT_S)
    load = Load(client, bc, procs.target(follower))
    pid = procs.procs[leader].pid
    try:
        load.start()
        wait_until(lambda: bc.current_orderer == leader and load.bc_accepted_after(0) >= 200, 30,
                   what="the client following the leader under load")
        paused_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        # Ordering resumes through the new leader, well before the client's answer timeout.
        wait_until(lambda: load.bc_accepted_after(paused_at) >= 100, ANSWER_TIMEOUT_S / 2,
                   interval=0.05, what="ordering to resume with the leader paused")
        with load.lock:
            first = min(at for at, _ in load.accepted_bc if at > paused_at) - paused_at
        print(f"first acceptance {first:.2f}s after pausing the leader {leader}")
        new_leader = leader_of(procs, client, [n for n in names if n != leader])
        assert new_leader not in (None, leader)
        with load.lock:
            pump_before = len(load.accepted_pump)
        wait_until(lambda: len(load.accepted_pump) > pump_before + 50, ANSWER_TIMEOUT_S / 2,
                   what="the follower's forwarded envelopes to be ordered by the new leader")
    finally:
        os.kill(pid, signal.SIGCONT)
        load.close()
        bc.close()
    # The old leader rejoins as a follower; all three converge on the same chain.
    final = max(client.status(procs.target(n)).height for n in names)
    for n in names:
        wait_until(lambda n=n: client.status(procs.target(n), 1.0).height >= final, 30,
                   what=f"{n} at height {final}")
    blocks = client.blocks(procs.target(new_leader or follower))
    seen = Counter(tx for b in blocks[1:] for tx in tx_ids_of(b))
    assert set(seen) <= load.submitted, "a block holds an envelope no client sent"
    accepted_bc = {tx for _, tx in load.accepted_bc}
    missing = [tx for tx in accepted_bc | set(load.accepted_pump) if tx not in seen]
    assert not missing, f"{len(missing)} accepted envelopes are in no block"
    # Exactly once: the raw pump never resubmits; the BroadcastClient resends the envelopes
    # its dropped stream to the paused leader held (outcome unknown), and an orderer answers
    # one already in a block stored around the leader change "accepted" without ordering it
    # again (RecentTxIndex).
    twice = [tx for tx, c in seen.items() if c > 1]
    assert not twice, f"{len(twice)} envelopes ordered twice (client resubmitted {bc.resubmitted})"
    assert set(load.refused) <= {"SERVICE_UNAVAILABLE"}, Counter(load.refused)
    print(f"blocks {len(blocks)}, accepted {len(accepted_bc)} + {len(load.accepted_pump)}, "
          f"resubmitted {bc.resubmitted}, ordered twice {len(twice)}, new leader {new_leader}, "
          f"leader raft id {specs[leader].raft_id}")
