"""Client <-> gateway Transact path: CPU per transaction, Transact vs TransactBatch.

``python -m bench.transact_bench`` writes ``bench/results/transact.json``.

A gateway process (this module with ``--serve``) runs the real Gateway servicer
(:class:`node.peer.gateway.service.GatewayService`: the Transact / TransactBatch engine,
envelope checks, commit notifier) behind mTLS, with the parts outside this path replaced
so that only the stream path is measured: endorsement returns a prepared transaction of
realistic size (two endorsements with certificates) without running a contract; the
ordering service accepts every envelope at once and a block cutter "commits" what it got
every ``block_ms`` through the real :class:`~node.peer.notifier.CommitNotifier`.

This process is the client: the load generator's :class:`bench.e2e_load.TransactStream`
(``batched=False``: Transact, one request per message; ``batched=True``: TransactBatch
with the coalescing sender), over 1 or 4 connections, a closed loop of ``window``
transactions in flight, each one proposal (signed) -> endorse -> envelope (signed) ->
submit -> commit status. Rounds of both modes alternate in the same run; CPU is /proc
utime+stime of this process and of the gateway process (its idle CPU over the same wall
time subtracted), reported per transaction, with the ratio batched / unbatched.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from netgen import generate
from netgen.ports import free_base_port
from rxchain.v1 import config_pb2, identity_pb2, services_pb2, transaction_pb2

from bench.common import write_result
from bench.procstat import process_cpu_s
from bench.txbuild import SMALL_CONSORTIUM

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- gateway process
class _Ordering:
    """Accepts every envelope; a cutter thread commits what arrived every ``block_ms``."""

    def __init__(self, notifier: Any, block_ms: int) -> None:
        self.notifier = notifier
        self.block_s = block_ms / 1000
        self.lock = threading.Lock()
        self.pending: list[str] = []
        self.number = 1
        threading.Thread(target=self._cut, daemon=True, name="cutter").start()

    def submit_async(self, env: transaction_pb2.Envelope, callback: Any) -> None:
        tx = transaction_pb2.Transaction.FromString(env.payload)
        tx_id = transaction_pb2.TxHeader.FromString(tx.header).tx_id
        with self.lock:
            self.pending.append(tx_id)
        callback(services_pb2.BroadcastResponse(tx_id=tx_id, accepted=True))

    def _cut(self) -> None:
        pause = threading.Event()
        while True:
            pause.wait(self.block_s)
            with self.lock:
                ids, self.pending = self.pending, []
            if not ids:
                continue
            outcomes = [SimpleNamespace(tx_id=t, code=transaction_pb2.VALID) for t in ids]
            self.notifier.on_commit(SimpleNamespace(result=SimpleNamespace(number=self.number),
                                                    validated=SimpleNamespace(outcomes=outcomes)))
            self.number += 1


def _fake_endorse(cert: bytes) -> Any:
    """Endorsement without a contract: a prepared transaction as big as a real one."""

    def endorse(deps: Any, request: services_pb2.EndorseRequest, pool: Any = None) -> services_pb2.EndorseResponse:
        prop = transaction_pb2.Proposal.FromString(request.proposal.proposal_bytes)
        header = transaction_pb2.TxHeader.FromString(prop.header)
        payload = b"r" * 600
        tx = transaction_pb2.Transaction(header=prop.header, invocation=prop.invocation, response_payload=payload)
        for org in ("h01", "p01"):
            tx.endorsements.add(endorser=identity_pb2.Identity(org=org, cert_der=cert), signature=b"s" * 72)
        return services_pb2.EndorseResponse(
            prepared_transaction=tx.SerializeToString(), tx_id=header.tx_id,
            result=transaction_pb2.Response(status=200, payload=b'{"ok":true}'))

    return endorse


def serve(home: Path, block_ms: int) -> None:
    """The gateway process: serve until stdin closes; prints the port."""
    import grpc
    from rxchain.v1 import services_pb2_grpc

    from node.crypto.tls import server_credentials
    from node.peer.gateway import transact as transact_mod
    from node.peer.gateway.deps import GatewayDeps
    from node.peer.gateway.service import GatewayService
    from node.peer.notifier import CommitNotifier

    node = home / "nodes" / "peer.h01"
    cert = (node / "cert.pem").read_bytes()
    setattr(transact_mod, "endorse", _fake_endorse(cert))  # noqa: B010 - this process only
    notifier = CommitNotifier(1)
    config = config_pb2.ConsortiumConfig()
    config.limits.max_envelope_bytes = 1 << 20
    view = SimpleNamespace(config=config)
    deps = GatewayDeps(
        org="h01", endorser=cast(Any, None),
        ledger=cast(Any, SimpleNamespace(tx_location=lambda tx_id: None)),
        configs=cast(Any, SimpleNamespace(current=lambda: view)), policies=cast(Any, None),
        notifier=notifier, remotes=cast(Any, SimpleNamespace(close=lambda: None)),
        broadcast=cast(Any, _Ordering(notifier, block_ms)),
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=64))
    service = GatewayService(deps)
    services_pb2_grpc.add_GatewayServicer_to_server(service, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(
        node / "cert.pem", node / "key.pem", node / "ca-bundle.pem"))
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    server.stop(0)
    service.close()
    notifier.close()


# ---------------------------------------------------------------- client side
def _round(streams: list[Any], builder: Any, n: int, window: int) -> dict[str, float]:
    """``n`` transactions, ``window`` in flight, spread over ``streams``."""
    lock = threading.Lock()
    state = {"started": 0, "done": 0, "failed": 0}
    finished = threading.Event()

    def start_one() -> None:
        with lock:
            if state["started"] >= n:
                return
            i = state["started"]
            state["started"] += 1
        stream = streams[i % len(streams)]
        built = builder.proposal("bench", "put", {"k": i})

        def on_commit(resp: services_pb2.TransactResponse) -> None:
            with lock:
                state["done"] += 1
                if resp.WhichOneof("kind") != "committed":
                    state["failed"] += 1
                last = state["done"] == n
            if last:
                finished.set()
            else:
                start_one()

        def on_endorsed(resp: services_pb2.TransactResponse) -> None:
            if resp.WhichOneof("kind") != "endorsed":
                on_commit(resp)
                return
            env = builder.envelope(built, resp.endorsed.prepared_transaction)
            stream.send(services_pb2.TransactRequest(submit=env), on_commit)

        stream.send(services_pb2.TransactRequest(endorse=services_pb2.EndorseRequest(proposal=built.signed)),
                    on_endorsed)

    for _ in range(window):
        start_one()
    if not finished.wait(300):
        raise RuntimeError(f"round did not finish: {state}")
    if state["failed"]:
        raise RuntimeError(f"{state['failed']} transactions failed")
    return {"n": float(n)}


def run(n: int, rounds: int, windows: list[int], stream_counts: list[int], block_ms: int) -> dict[str, Any]:
    from bench.e2e_load import TransactStream
    from client.tx import TxBuilder
    from client.wallet import load_identity

    with tempfile.TemporaryDirectory(prefix="transact-bench-") as tmp:
        home = Path(tmp)
        raw = dict(SMALL_CONSORTIUM)
        raw["base_port"] = free_base_port(16)
        generate(raw, home)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.transact_bench", "--serve", str(home), "--block-ms", str(block_ms)],
            cwd=str(ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        conns: dict[tuple[int, str], list[Any]] = {}
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            target = f"127.0.0.1:{port}"
            ident = load_identity(home, "h01", "dr-a")
            builder = TxBuilder(ident.signer, str(raw["consortium_id"]))
            modes = {"unbatched": False, "batched": True}
            for count in stream_counts:
                for m, batched in modes.items():
                    conns[(count, m)] = [TransactStream(ident, target, batched=batched) for _ in range(count)]
            me = os.getpid()
            for streams in conns.values():  # warm up: connections, caches, pools
                _round(streams, builder, 300, 32)
            time.sleep(1.0)
            g0, w0 = process_cpu_s(proc.pid), time.monotonic()
            time.sleep(2.0)
            idle = (process_cpu_s(proc.pid) - g0) / (time.monotonic() - w0)
            out: dict[str, Any] = {"n_per_round": n, "rounds": rounds, "block_ms": block_ms,
                                   "gateway_idle_cpu_per_s": round(idle, 5), "levels": []}
            for count in stream_counts:
                for window in windows:
                    totals = {m: {"client": 0.0, "gateway": 0.0, "wall": 0.0} for m in modes}
                    for _ in range(rounds):
                        for m in modes:
                            c0, g0, w0 = process_cpu_s(me), process_cpu_s(proc.pid), time.monotonic()
                            _round(conns[(count, m)], builder, n, window)
                            c1, g1, w1 = process_cpu_s(me), process_cpu_s(proc.pid), time.monotonic()
                            totals[m]["client"] += c1 - c0
                            totals[m]["gateway"] += max(0.0, g1 - g0 - idle * (w1 - w0))
                            totals[m]["wall"] += w1 - w0
                    level: dict[str, Any] = {"streams": count, "window": window}
                    txs = n * rounds
                    for m, t in totals.items():
                        level[m] = {
                            "client_cpu_ms_per_tx": round(1000 * t["client"] / txs, 4),
                            "gateway_cpu_ms_per_tx": round(1000 * t["gateway"] / txs, 4),
                            "total_cpu_ms_per_tx": round(1000 * (t["client"] + t["gateway"]) / txs, 4),
                            "tx_per_s": round(txs / t["wall"], 1),
                        }
                    for part in ("total", "client", "gateway"):
                        key = f"{part}_cpu_ms_per_tx"
                        level[f"ratio_{part}_cpu_batched_over_unbatched"] = round(
                            level["batched"][key] / level["unbatched"][key], 3) if level["unbatched"][key] else None
                    out["levels"].append(level)
                    # Headline figures (the summary lists top-level scalars).
                    out[f"ratio_total_cpu_batched_over_unbatched_s{count}_w{window}"] = level[
                        "ratio_total_cpu_batched_over_unbatched"]
                    out[f"batched_total_cpu_ms_per_tx_s{count}_w{window}"] = level["batched"]["total_cpu_ms_per_tx"]
                    print(level, flush=True)
            return out
        finally:
            for streams in conns.values():
                for stream in streams:
                    stream.close()
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--serve", type=Path, help="(internal) run the gateway process for this home")
    p.add_argument("--block-ms", type=int, default=20, help="block cut interval of the fake ordering")
    p.add_argument("--n", type=int, default=2000, help="transactions per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--windows", default="8,64,256", help="transactions in flight, comma-separated")
    p.add_argument("--streams", default="1,4", help="connections per mode, comma-separated")
    args = p.parse_args()
    if args.serve is not None:
        serve(args.serve, args.block_ms)
        return
    result = run(args.n, args.rounds, [int(w) for w in args.windows.split(",")],
                 [int(c) for c in args.streams.split(",")], args.block_ms)
    path = write_result("transact", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
