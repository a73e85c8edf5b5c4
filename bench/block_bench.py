"""Per-block CPU benchmark: what one block costs each process kind, apart from its txs.

``python -m bench.block_bench`` starts 3 orderers and 4 peers (TLS and fsync on, the
node defaults, log level INFO as in the e2e network) and broadcasts signed 1 KiB invoke
envelopes straight to the Raft leader in two phases:

* ``one``: ``blocks`` blocks holding 1 envelope each (send one, wait for "accepted");
* ``many``: ``blocks`` blocks holding ``txs`` envelopes each (a burst, then wait);

after each phase it waits until every peer has committed the last block. The envelopes
name no deployed contract, so peers refuse them at validation (after the signature and
creator checks): the figures are the block path -- Raft round, block store, signatures,
Deliver, peer validation and commit -- not contract execution. CPU (utime+stime from
/proc) is sampled per process before and after each phase, minus the idle rate (ticks,
heartbeats, watchdogs: reported as ``idle_cpu_s_per_s``) measured in windows of
``idle_s`` seconds around each phase, times the phase's duration; per process kind
(``leader``, ``followers``, ``peers``, summed over the processes of that kind) it reports
``ms_per_block_one`` and ``ms_per_block_many`` and the fit ``ms = block + txs * tx``;
``raw_ms_per_block_*`` is all processes' CPU in the phase per block, idle included.

Writes ``bench/results/block.json``. ``--profile DIR`` also records py-spy (``--gil``,
raw) of every process during a third, 1-envelope phase.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import yaml
from netgen import generate
from netgen.ports import free_base_port
from rxchain.v1 import services_pb2, services_pb2_grpc

from bench.common import write_result
from bench.ordering_bench import BenchClient
from bench.procstat import process_cpu_s

ROOT = Path(__file__).resolve().parents[1]
PEER_ORGS = ("h01", "h02", "ins01", "ins02")


def _consortium(base: int) -> dict[str, Any]:
    orgs: list[dict[str, Any]] = [
        {"id": f"ins0{i}", "name": f"Insurer {i}", "kind": "insurer", "orderer": True,
         "peer": f"ins0{i}" in PEER_ORGS}
        for i in (1, 2, 3)
    ]
    for h in ("h01", "h02"):
        orgs.append({"id": h, "name": h, "kind": "hospital", "level": "tertiary", "peer": True,
                     "users": [{"name": "dr", "role": "doctor",
                                "attrs": {"dr_code": "D1", "practice_years": "5",
                                          "licence_no": "L1"}}]})
    return {
        "consortium_id": "bench-rx", "base_port": base,
        "batch": {"max_tx_count": 500, "max_bytes": 4194304, "timeout_ms": 50},
        "limits": {"max_message_bytes": 16777216, "max_envelope_bytes": 1048576,
                   "gas_limit": 1000000, "max_write_set_keys": 100,
                   "max_value_bytes": 65536, "max_clock_skew_ms": 600000},
        "policies": {"config_update": "MAJORITY(admin)"},
        "organizations": orgs,
    }


class Network:
    """3 orderer and 4 peer processes (stopped by :meth:`close`)."""

    def __init__(self, home: Path) -> None:
        self.net = generate(_consortium(free_base_port(8)), home)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen"), str(ROOT / "network-config")])
        for n in [*self.net.orderers(), *self.net.peers()]:
            module = "node.orderer" if n.kind == "orderer" else "node.peer"
            log = open(self.net.home / f"{n.name}.log", "ab")  # noqa: SIM115 -- child owns it
            self.procs[n.name] = subprocess.Popen(
                [sys.executable, "-m", module, "--config", str(self.net.node_config_path(n.name))],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
            log.close()

    def target(self, name: str) -> str:
        return next(f"127.0.0.1:{n.port}" for n in [*self.net.orderers(), *self.net.peers()]
                    if n.name == name)

    def close(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def _status(client: BenchClient, channels: dict[str, grpc.Channel], target: str) -> services_pb2.StatusResponse:
    ch = channels.get(target)
    if ch is None:
        ch = channels[target] = client.channel(target)
    return services_pb2_grpc.AdminStub(ch).Status(services_pb2.StatusRequest(), timeout=2)


class Run:
    """The client side: leader discovery, broadcast stream, height waits."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.client = BenchClient(network.net)
        self.channels: dict[str, grpc.Channel] = {}
        self.leader = ""

    def find_leader(self, timeout_s: float = 60) -> str:
        ids = {n.raft_id: n.name for n in self.network.net.orderers()}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for n in self.network.net.orderers():
                try:
                    st = _status(self.client, self.channels, self.network.target(n.name))
                except grpc.RpcError:
                    continue
                if st.raft_leader in ids:
                    self.leader = ids[st.raft_leader]
                    return self.leader
            time.sleep(0.2)
        raise RuntimeError("no leader")

    def height(self, name: str) -> int:
        try:
            return int(_status(self.client, self.channels, self.network.target(name)).height)
        except grpc.RpcError:
            return -1

    def wait_peers(self, height: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        for p in self.network.net.peers():
            while self.height(p.name) < height:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{p.name} did not reach height {height}")
                time.sleep(0.05)

    def blocks(self, count: int, per_block: int) -> None:
        """``count`` bursts of ``per_block`` envelopes, each answered before the next."""
        envelopes = [[self.client.envelope() for _ in range(per_block)] for _ in range(count)]
        answers: list[int] = []
        got = threading.Semaphore(0)

        def gen() -> Iterator[bytes]:
            for burst in envelopes:
                yield from burst
                if not got.acquire(timeout=60):
                    return
        ch = self.client.channel(self.network.target(self.leader))
        try:
            call = ch.stream_stream("/rxchain.v1.AtomicBroadcast/Broadcast", request_serializer=None,
                                    response_deserializer=services_pb2.BroadcastResponse.FromString)
            for seen, r in enumerate(call(gen(), timeout=600), start=1):
                answers.append(1 if r.accepted else 0)
                if seen % per_block == 0:
                    got.release()
                    if seen == count * per_block:
                        break
        finally:
            ch.close()
        if sum(answers) != count * per_block:
            raise RuntimeError(f"only {sum(answers)} of {count * per_block} envelopes accepted")


def _cpu(network: Network) -> dict[str, float]:
    return {name: process_cpu_s(p.pid) for name, p in network.procs.items()}


def _phase(run: Run, count: int, per_block: int) -> tuple[dict[str, float], float, int]:
    start_h = run.height(run.leader)
    before, t0 = _cpu(run.network), time.monotonic()
    run.blocks(count, per_block)
    end_h = run.height(run.leader)
    run.wait_peers(end_h)
    after, t1 = _cpu(run.network), time.monotonic()
    return {k: after[k] - before[k] for k in after}, t1 - t0, end_h - start_h


def _kinds(run: Run, cpu: dict[str, float]) -> dict[str, float]:
    out = {"leader": 0.0, "followers": 0.0, "peers": 0.0}
    for name, s in cpu.items():
        kind = "leader" if name == run.leader else "followers" if name.startswith("orderer.") else "peers"
        out[kind] += s
    return out


def _idle(network: Network, seconds: float) -> dict[str, float]:
    """CPU seconds per second of each process while nothing is submitted."""
    before, t0 = _cpu(network), time.monotonic()
    time.sleep(seconds)
    after, t1 = _cpu(network), time.monotonic()
    return {k: (after[k] - before[k]) / (t1 - t0) for k in after}


def measure(work: Path, blocks: int, txs: int, profile: Path | None, idle_s: float = 8.0) -> dict[str, Any]:
    network = Network(work / "net")
    run = Run(network)
    try:
        network.start()
        run.find_leader()
        run.wait_peers(1)
        run.blocks(5, 2)  # warm-up: connections, caches, deliver streams
        run.wait_peers(run.height(run.leader))
        result: dict[str, Any] = {"blocks": blocks, "txs_per_block_many": txs, "leader": run.leader,
                                  "idle_s": idle_s}
        per_kind: dict[str, dict[str, float]] = {}
        per_proc: dict[str, dict[str, float]] = {}
        idle_rates: list[dict[str, float]] = [_idle(network, idle_s)]
        for label, per_block in (("one", 1), ("many", txs)):
            cpu, elapsed, made = _phase(run, blocks, per_block)
            idle_rates.append(_idle(network, idle_s))
            idle_rate = {k: (idle_rates[-2][k] + idle_rates[-1][k]) / 2 for k in cpu}
            net_cpu = {k: max(0.0, v - idle_rate[k] * elapsed) for k, v in cpu.items()}
            result[f"blocks_made_{label}"] = made
            result[f"raw_ms_per_block_{label}"] = round(1000 * sum(cpu.values()) / made, 2)
            result[f"elapsed_s_{label}"] = round(elapsed, 2)
            for kind, s in _kinds(run, net_cpu).items():
                per_kind.setdefault(kind, {})[f"ms_per_block_{label}"] = round(1000 * s / made, 2)
            for name, s in net_cpu.items():
                per_proc.setdefault(name, {})[f"ms_per_block_{label}"] = round(1000 * s / made, 2)
        for stats in [*per_kind.values(), *per_proc.values()]:
            one, many = stats["ms_per_block_one"], stats["ms_per_block_many"]
            tx = (many - one) / (txs - 1)
            stats["fit_ms_per_tx"] = round(tx, 3)
            stats["fit_ms_per_block"] = round(one - tx, 2)
        result["idle_cpu_s_per_s"] = {
            k: round(sum(r[k] for r in idle_rates) / len(idle_rates), 4) for k in idle_rates[0]
        }
        result["idle_cpu_s_per_s_total"] = round(sum(result["idle_cpu_s_per_s"].values()), 4)
        result["kinds"] = per_kind
        result["processes"] = per_proc
        total = {f: round(sum(k[f] for k in per_kind.values()), 2)
                 for f in ("ms_per_block_one", "ms_per_block_many", "fit_ms_per_block", "fit_ms_per_tx")}
        result["total"] = total
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            spies = [subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "--gil", "--format", "raw",
                                       "-r", "200", "-d", "12", "-p", str(p.pid),
                                       "-o", str(profile / f"{name}.txt")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for name, p in network.procs.items()]
            time.sleep(1.0)
            _phase(run, blocks, 1)
            for spy in spies:
                spy.wait(60)
        return result
    finally:
        network.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.block_bench")
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--txs", type=int, default=10)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--name", default="block")
    parser.add_argument("--idle-s", type=float, default=8.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rx-block-bench-"))
    try:
        result = measure(work, args.blocks, args.txs, args.profile, args.idle_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_result(args.name, result)
    print(yaml.safe_dump({"kinds": result["kinds"], "total": result["total"],
                          "raw_ms_per_block_one": result["raw_ms_per_block_one"],
                          "idle_cpu_s_per_s_total": result["idle_cpu_s_per_s_total"]}, sort_keys=False))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
