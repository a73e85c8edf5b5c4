"""Remote endorsement benchmark: unary ProcessProposal vs the batched ProcessProposals stream.

``python -m bench.endorse_bench`` writes ``bench/results/endorse.json``.

One real peer process (``peer.p01``: TLS, sandbox workers, its own ledger; no orderer is
started, so its deliver client only backs off) is the remote endorser; this process plays
the gateway peer's side with :class:`node.peer.peer_clients.RemoteEndorsers` over an mTLS
channel with ``peer.h01``'s certificate. ``callers`` threads (the gateway's request
handlers) each endorse their share of pre-built proposals, one after the other:

* ``unary`` -- as the gateway did before: submit to a remote pool (``ThreadPoolExecutor``),
  which makes one unary ``ProcessProposal`` call; the caller waits on the pool's future;
* ``stream`` -- ``RemoteEndorsers.begin(...).result()``: queued on the peer's stream, sent
  coalesced, answered by correlation id; the caller waits on the future directly;
* ``unary_direct`` -- for reference: the caller itself makes the unary call (no pool).

The proposals are ``_lifecycle.approvals`` queries (every member may call them; answered
200 and signed), so the peer really checks, simulates and signs each one, without the
sandbox. Rounds of the two modes alternate in the same run; CPU is /proc utime+stime of
this process (the "gateway" side) and of the peer's process group (the remote side),
with the peer's idle CPU over the same wall time subtracted. Reported per endorsement,
and the ratio stream / unary. ``endorse_only_cpu_ms`` is the endorsement itself (checks,
simulation, signature) run in this process on a copy of the ledger; ``transport_cpu_ms``
is the rest: gRPC, thread hand-offs and batching on both sides.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from netgen import generate
from netgen.ports import free_base_port
from rxchain.v1 import services_pb2_grpc, transaction_pb2

from bench.common import write_result
from bench.procstat import group_cpu, process_cpu_s
from bench.txbuild import SMALL_CONSORTIUM, node_signer, user_signer
from node.config import Endpoint, load_node_config
from node.crypto.canonical import canonical_json, compute_tx_id
from node.crypto.signing import Purpose, Signer, Verifier
from node.crypto.tls import channel_credentials, channel_options
from node.genesis import read_genesis
from node.ledger.ledger import Ledger
from node.peer.config_view import ConfigView
from node.peer.endorser import Endorser
from node.peer.lifecycle import Lifecycle
from node.peer.peer_clients import RemoteEndorsers

ROOT = Path(__file__).resolve().parents[1]


def _proposal(signer: Signer, consortium_id: str, rng: random.Random, now_ms: int) -> transaction_pb2.SignedProposal:
    nonce = rng.randbytes(24)
    header = transaction_pb2.TxHeader(
        tx_id=compute_tx_id(nonce, signer.identity), type=transaction_pb2.INVOKE, creator=signer.identity,
        nonce=nonce, timestamp_ms=now_ms, consortium_id=consortium_id,
    )
    inv = transaction_pb2.ContractInvocation(
        contract="_lifecycle", function="approvals", args_json=canonical_json({"name": "bench", "sequence": 1}))
    raw = transaction_pb2.Proposal(header=header.SerializeToString(), invocation=inv.SerializeToString())
    data = raw.SerializeToString()
    return transaction_pb2.SignedProposal(proposal_bytes=data, signature=signer.sign(Purpose.PROPOSAL, data))


class RemotePeer:
    """The endorsing peer process (its own process group, so its sandbox workers count)."""

    def __init__(self, home: Path, name: str) -> None:
        self.config_path = home / "nodes" / name / "node.yaml"
        self.config = load_node_config(self.config_path)
        self.log = (home / f"{name}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.peer", "--config", str(self.config_path)],
            cwd=str(ROOT), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def cpu_s(self) -> float:
        return group_cpu(self.proc.pid).total_s

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        self.log.close()


class _NoSandbox:
    def invoke(self, invocation: Any, backend: Any) -> Any:
        raise AssertionError("the benchmark's proposals are _lifecycle queries")


def endorse_only_cpu_ms(home: Path, proposals: list[transaction_pb2.SignedProposal]) -> float:
    """CPU of the endorsement itself (checks, simulation, signature) in this process."""
    ledger = Ledger(home / "inproc-ledger", fsync=False)
    try:
        ledger.commit_genesis(read_genesis(home / "genesis.block"))
        endorser = Endorser(ledger, ConfigView(ledger.state, Verifier()), node_signer(home, "peer.p01", "p01"),
                            _NoSandbox(), Lifecycle(), lambda: int(time.time() * 1000))
        for signed in proposals[:50]:
            endorser.endorse(signed)  # warm caches
        t0 = time.thread_time()
        for signed in proposals:
            endorser.endorse(signed)
        return 1000 * (time.thread_time() - t0) / len(proposals)
    finally:
        ledger.close()


def _wait_ready(channel: grpc.Channel, probe: transaction_pb2.SignedProposal, timeout_s: float = 60.0) -> None:
    stub = services_pb2_grpc.EndorserStub(channel)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            stub.ProcessProposal(probe, timeout=5)
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _round(mode: str, remotes: RemoteEndorsers, pool: ThreadPoolExecutor,
           proposals: list[transaction_pb2.SignedProposal], callers: int, peer: RemotePeer) -> dict[str, float]:
    shares = [proposals[i::callers] for i in range(callers)]
    failures: list[str] = []

    def work(share: list[transaction_pb2.SignedProposal]) -> None:
        for signed in share:
            if mode == "unary":
                resp = pool.submit(remotes.endorse, "p01", signed).result()
            elif mode == "unary_direct":
                resp = remotes.endorse("p01", signed)
            else:
                resp = remotes.begin("p01", signed).result()
            if resp.response.status != 200 or not resp.HasField("endorsement"):
                failures.append(resp.response.reason)

    threads = [threading.Thread(target=work, args=(s,)) for s in shares]
    me = os.getpid()
    c0, p0, w0 = process_cpu_s(me), peer.cpu_s(), time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c1, p1, w1 = process_cpu_s(me), peer.cpu_s(), time.monotonic()
    if failures:
        raise RuntimeError(f"{mode}: {len(failures)} endorsements refused, e.g. {failures[0]}")
    return {"gateway_cpu_s": c1 - c0, "peer_cpu_s": p1 - p0, "wall_s": w1 - w0}


def run(n: int, rounds: int, callers_list: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="endorse-bench-") as tmp:
        home = Path(tmp)
        raw = dict(SMALL_CONSORTIUM)
        raw["base_port"] = free_base_port(16)
        generate(raw, home)
        consortium_id = str(raw["consortium_id"])
        peer = RemotePeer(home, "peer.p01")
        gw_dir = home / "nodes" / "peer.h01"
        creds = channel_credentials(gw_dir / "cert.pem", gw_dir / "key.pem", gw_dir / "ca-bundle.pem")
        options = [*channel_options(8 << 20), ("grpc.use_local_subchannel_pool", 1)]
        channels: list[grpc.Channel] = []

        def channel(target: str) -> grpc.Channel:
            ch = grpc.secure_channel(target, creds, options=options)
            channels.append(ch)
            return ch

        signer = user_signer(home, "h01", "dr-a")
        rng = random.Random(7)
        ep = Endpoint("peer.p01", "p01", peer.config.host, peer.config.port)
        unary = RemoteEndorsers([ep], channel, use_stream=False)
        stream = RemoteEndorsers([ep], channel)
        pool = ThreadPoolExecutor(32, thread_name_prefix="gw-remote")
        out: dict[str, Any] = {"n_per_round": n, "rounds": rounds, "levels": []}
        try:
            now = int(time.time() * 1000)
            _wait_ready(channel(ep.target), _proposal(signer, consortium_id, rng, now))
            # warm both paths (connections, caches, thread pools)
            warm = [_proposal(signer, consortium_id, rng, now) for _ in range(200)]
            _round("unary", unary, pool, warm[:100], 8, peer)
            _round("stream", stream, pool, warm[100:], 8, peer)
            time.sleep(1.0)
            i0, w0 = peer.cpu_s(), time.monotonic()
            time.sleep(2.0)
            idle_per_s = (peer.cpu_s() - i0) / (time.monotonic() - w0)
            out["peer_idle_cpu_per_s"] = round(idle_per_s, 5)
            base = endorse_only_cpu_ms(home, [_proposal(signer, consortium_id, rng, now) for _ in range(1000)])
            out["endorse_only_cpu_ms"] = round(base, 4)
            for callers in callers_list:
                modes = (("unary", unary), ("stream", stream), ("unary_direct", unary))
                totals: dict[str, dict[str, float]] = {
                    m: {"gateway_cpu_s": 0.0, "peer_cpu_s": 0.0, "wall_s": 0.0} for m, _ in modes}
                for _ in range(rounds):
                    for mode, remotes in modes:
                        now = int(time.time() * 1000)
                        props = [_proposal(signer, consortium_id, rng, now) for _ in range(n)]
                        r = _round(mode, remotes, pool, props, callers, peer)
                        for k, v in r.items():
                            totals[mode][k] += v
                level: dict[str, Any] = {"callers": callers}
                for mode, t in totals.items():
                    count = n * rounds
                    peer_cpu = max(0.0, t["peer_cpu_s"] - idle_per_s * t["wall_s"])
                    level[mode] = {
                        "gateway_cpu_ms_per_endorsement": round(1000 * t["gateway_cpu_s"] / count, 4),
                        "peer_cpu_ms_per_endorsement": round(1000 * peer_cpu / count, 4),
                        "total_cpu_ms_per_endorsement": round(1000 * (t["gateway_cpu_s"] + peer_cpu) / count, 4),
                        "endorsements_per_s": round(count / t["wall_s"], 1),
                    }
                for mode in totals:
                    level[mode]["transport_cpu_ms_per_endorsement"] = round(
                        level[mode]["total_cpu_ms_per_endorsement"] - base, 4)
                level["ratio_total_cpu_stream_over_unary"] = round(
                    level["stream"]["total_cpu_ms_per_endorsement"] / level["unary"]["total_cpu_ms_per_endorsement"], 3)
                level["ratio_gateway_cpu_stream_over_unary"] = round(
                    level["stream"]["gateway_cpu_ms_per_endorsement"]
                    / level["unary"]["gateway_cpu_ms_per_endorsement"], 3)
                level["ratio_peer_cpu_stream_over_unary"] = round(
                    level["stream"]["peer_cpu_ms_per_endorsement"] / level["unary"]["peer_cpu_ms_per_endorsement"], 3)
                out["levels"].append(level)
                print(level, flush=True)
            out["streams_opened"] = stream.streams_opened()
        finally:
            unary.close()
            stream.close()
            pool.shutdown(wait=False)
            for ch in channels:
                ch.close()
            peer.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="endorsements per round and mode")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per mode and level")
    ap.add_argument("--callers", default="1,4,16", help="concurrent callers, comma-separated levels")
    args = ap.parse_args(argv)
    result = run(args.n, args.rounds, [int(c) for c in args.callers.split(",")])
    path = write_result("endorse", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
