"""Orderer CPU per envelope: one envelope per stream message vs batched streams, same run.

``python -m bench.broadcast_batch_bench`` writes ``bench/results/broadcast_batch.json``.
Three orderer processes (fsync on, as ``ordering_bench``) take signed 1 KiB envelopes from
the peers' real :class:`BroadcastClient`, closed loop with a window of envelopes in flight
per client (``RXCHAIN_BENCH_BATCH_WINDOWS``, default 256 = saturation and 16 = light
load, where batches are small), in two scenarios:

* ``leader``: one client following the Raft leader (what a peer does);
* ``spread``: three clients, one per orderer (two thirds of the envelopes are forwarded
  by a follower to the leader).

Modes (a fresh network each, alternated ``ROUNDS`` times so load from other processes hits
both alike): ``single`` = AtomicBroadcast.Broadcast + follower forwarding on the former
OrdererCluster.ForwardBatch (``forward_rpc: legacy``); ``batch`` = BroadcastBatch +
Cluster.ForwardBatch. Reported: CPU seconds of the three orderer processes per accepted
envelope (ms), envelopes/s, stream messages the clients sent, and the ratio batch/single.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rxchain.v1 import transaction_pb2

from bench.common import write_result
from bench.ordering_bench import BenchClient, Orderers, _leader
from bench.procstat import process_cpu_s
from node.config import Endpoint
from node.errors import RxError
from node.peer.broadcast_client import BroadcastClient

ENVELOPES = int(os.environ.get("RXCHAIN_BENCH_BATCH_ENVELOPES", "6000"))
WINDOWS = [int(x) for x in os.environ.get("RXCHAIN_BENCH_BATCH_WINDOWS", "256,16").split(",")]
ROUNDS = int(os.environ.get("RXCHAIN_BENCH_BATCH_ROUNDS", "2"))


def _configure(orderers: Orderers, forward_rpc: str) -> None:
    for n in orderers.net.orderers():
        path = orderers.net.node_config_path(n.name)
        doc = yaml.safe_load(path.read_text())
        doc["extra"] = {**(doc.get("extra") or {}), "forward_rpc": forward_rpc}
        path.write_text(yaml.safe_dump(doc))


def _drive(clients: list[BroadcastClient], envelopes: list[bytes], window: int) -> dict[str, int]:
    """Send every envelope through the clients (round robin), ``window`` in flight each."""
    counts: dict[str, int] = {"accepted": 0}
    lock = threading.Lock()
    done = threading.Event()
    remaining = [len(envelopes)]
    windows = [threading.Semaphore(window) for _ in clients]

    def answer(i: int, resp: object) -> None:
        windows[i].release()
        key = "accepted" if getattr(resp, "accepted", False) else (
            getattr(resp, "reason", "") or str(resp)[:40])
        with lock:
            counts[key] = counts.get(key, 0) + 1
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    def callback(i: int) -> Callable[[object], None]:
        return lambda resp: answer(i, resp)

    callbacks = [callback(i) for i in range(len(clients))]
    for k, raw in enumerate(envelopes):
        i = k % len(clients)
        if not windows[i].acquire(timeout=120):
            raise RxError("TIMEOUT", "no answer within 120 s")
        clients[i].submit_async(transaction_pb2.Envelope.FromString(raw), callbacks[i])
    if not done.wait(120):
        raise RxError("TIMEOUT", "answers missing after 120 s")
    return counts


def _run(work: Path, mode: str, scenario: str, window: int) -> dict[str, Any]:
    orderers = Orderers(work / f"net-{mode}-{scenario}-{time.monotonic_ns()}")
    _configure(orderers, "batch" if mode == "batch" else "legacy")
    client = BenchClient(orderers.net)
    clients: list[BroadcastClient] = []
    try:
        orderers.start()
        _leader(client, orderers)
        specs = list(orderers.net.orderers())
        eps = [Endpoint(n.name, n.org, "127.0.0.1", n.port) for n in specs]
        targets = {n.raft_id: f"127.0.0.1:{n.port}" for n in specs}
        batched = mode == "batch"
        if scenario == "leader":
            clients = [BroadcastClient(eps, client.channel, raft_targets=lambda: targets,
                                       leader_poll_s=0.2, batched=batched)]
            deadline = time.monotonic() + 10
            while clients[0].follow_leader() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        else:
            clients = [BroadcastClient(eps[i:] + eps[:i], client.channel, batched=batched)
                       for i in range(len(eps))]
        _drive(clients, [client.envelope() for _ in range(300)], window)  # warm-up
        envelopes = [client.envelope() for _ in range(ENVELOPES)]
        pids = [p.pid for p in orderers.procs.values()]
        sent_before = _messages(clients)
        cpu0 = sum(process_cpu_s(pid) for pid in pids)
        t0 = time.perf_counter()
        counts = _drive(clients, envelopes, window)
        elapsed = time.perf_counter() - t0
        cpu = sum(process_cpu_s(pid) for pid in pids) - cpu0
        accepted = counts["accepted"]
        return {
            "mode": mode, "scenario": scenario, "window": window, "answers": counts,
            "envelopes_per_s": round(accepted / elapsed, 1),
            "orderer_cpu_ms_per_envelope": round(cpu * 1000 / max(1, accepted), 4),
            "client_messages": _messages(clients) - sent_before,
        }
    finally:
        for c in clients:
            c.close()
        orderers.close()


def _messages(clients: list[BroadcastClient]) -> int:
    return sum(c.messages_sent for c in clients)


def main() -> int:
    """Run the alternating rounds and write the JSON."""
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rx-batch-bench-") as tmp:
        for _ in range(ROUNDS):
            for window in WINDOWS:
                for scenario in ("leader", "spread"):
                    for mode in ("single", "batch"):
                        run = _run(Path(tmp), mode, scenario, window)
                        print(json.dumps(run), flush=True)
                        runs.append(run)
    result: dict[str, Any] = {"envelopes_per_run": ENVELOPES, "windows_per_client": WINDOWS,
                              "rounds": ROUNDS, "runs": runs}
    for window in WINDOWS:
        for scenario in ("leader", "spread"):
            def med(key: str, mode: str, scenario: str = scenario, window: int = window) -> float:
                return float(statistics.median(r[key] for r in runs if r["mode"] == mode
                                               and r["scenario"] == scenario and r["window"] == window))

            single = med("orderer_cpu_ms_per_envelope", "single")
            batch = med("orderer_cpu_ms_per_envelope", "batch")
            result[f"{scenario}_window_{window}"] = {
                "orderer_cpu_ms_per_envelope_single": round(single, 4),
                "orderer_cpu_ms_per_envelope_batch": round(batch, 4),
                "cpu_ratio_batch_to_single": round(batch / single, 3),
                "envelopes_per_s_single": round(med("envelopes_per_s", "single"), 1),
                "envelopes_per_s_batch": round(med("envelopes_per_s", "batch"), 1),
                "client_messages_per_envelope_batch": round(
                    med("client_messages", "batch") / ENVELOPES, 3),
            }
    path = write_result("broadcast_batch", result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
