"""Ordering benchmark: 3 orderer processes on loopback vs a 3-member etcd cluster.

``python -m bench.ordering_bench`` writes ``bench/results/ordering.json``:

* ``envelopes_per_s``: accepted (= committed) 1 KiB signed envelopes per second, fsync on,
  ``streams`` concurrent Broadcast streams spread over the three orderers;
* ``p50_ms`` / ``p99_ms``: from sending an envelope to its "accepted" answer, which the
  leader gives when the block holding it is committed and applied -- at saturation, so
  they include queueing; ``light_load`` has the same figures with 8 envelopes in flight
  (the 50 ms batch timeout dominates there);
* ``failover_ms``: leader killed (SIGKILL) -> first block of a new term at a survivor, while
  a client keeps broadcasting;
* ``etcd_puts_per_s``: the same shape (1 KiB values, Python client over HTTP keep-alive to
  etcd's v3 JSON gateway, spread over the 3 members), best of the thread counts tried.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import shutil
import signal
import statistics
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
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from bench.common import write_result
from node.crypto.canonical import compute_tx_id
from node.crypto.signing import Purpose, Signer, load_signer
from node.crypto.tls import secure_channel

ROOT = Path(__file__).resolve().parents[1]
STREAMS = int(os.environ.get("RXCHAIN_BENCH_STREAMS", "12"))
WINDOW = int(os.environ.get("RXCHAIN_BENCH_WINDOW", "256"))
ETCD_THREADS = [int(x) for x in os.environ.get("RXCHAIN_BENCH_ETCD_THREADS", "64,192").split(",")]
LIGHT_ENVELOPES = 600
LIGHT_WINDOW = 8
ENVELOPES = int(os.environ.get("RXCHAIN_BENCH_ENVELOPES", "30000"))
ETCD_SECONDS = float(os.environ.get("RXCHAIN_BENCH_ETCD_S", "10"))
ENVELOPE_BYTES = 1024


def _consortium(base: int) -> dict[str, Any]:
    orgs: list[dict[str, Any]] = [
        {"id": f"ins0{i}", "name": f"Insurer {i}", "kind": "insurer", "orderer": True}
        for i in (1, 2, 3)
    ]
    orgs.append({"id": "h01", "name": "Hospital", "kind": "hospital", "level": "tertiary",
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


class Orderers:
    """The three orderer processes."""

    def __init__(self, home: Path) -> None:
        self.net = generate(_consortium(free_base_port(4)), home)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for n in self.net.orderers():
            path = self.net.node_config_path(n.name)
            doc = yaml.safe_load(path.read_text())
            doc["log_level"] = "WARNING"
            doc["fsync"] = True
            path.write_text(yaml.safe_dump(doc))

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen"),
                                             str(ROOT / "network-config")])
        for n in self.net.orderers():
            log = open(self.net.home / f"{n.name}.log", "ab")  # noqa: SIM115 -- child owns it
            self.procs[n.name] = subprocess.Popen(
                [sys.executable, "-m", "node.orderer", "--config",
                 str(self.net.node_config_path(n.name))],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
            log.close()

    def targets(self) -> dict[str, str]:
        return {n.name: f"127.0.0.1:{n.port}" for n in self.net.orderers()
                if n.name in self.procs}

    def kill(self, name: str) -> None:
        p = self.procs.pop(name)
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)


class BenchClient:
    """A hospital doctor's identity and mTLS material."""

    def __init__(self, net: Any) -> None:
        d = net.user_dir("h01", "dr")
        self.cert, self.key, self.ca = d / "cert.pem", d / "key.pem", net.ca_bundle_path
        self.signer: Signer = load_signer(self.cert, self.key, "h01")

    def channel(self, target: str) -> grpc.Channel:
        return secure_channel(target, self.cert, self.key, self.ca)

    def envelope(self) -> bytes:
        nonce = secrets.token_bytes(24)
        header = transaction_pb2.TxHeader(
            tx_id=compute_tx_id(nonce, self.signer.identity), type=transaction_pb2.INVOKE,
            creator=self.signer.identity, nonce=nonce, timestamp_ms=int(time.time() * 1000),
            consortium_id="bench-rx")
        head = header.SerializeToString()
        pad = max(0, ENVELOPE_BYTES - len(head) - 90 - 20)
        payload = transaction_pb2.Transaction(header=head, invocation=b"x" * pad)
        raw = payload.SerializeToString()
        return transaction_pb2.Envelope(payload=raw, signature=self.signer.sign(Purpose.ENVELOPE, raw)
                                        ).SerializeToString()

    def status(self, target: str) -> services_pb2.StatusResponse:
        with self.channel(target) as ch:
            return services_pb2_grpc.AdminStub(ch).Status(services_pb2.StatusRequest(), timeout=2)


def _stream(client: BenchClient, target: str, envelopes: list[bytes],
            latencies: list[float], counts: dict[str, int], in_flight: int = WINDOW) -> None:
    sent: list[float] = []
    window = threading.Semaphore(in_flight)

    def gen() -> Iterator[bytes]:
        for e in envelopes:
            # Bounded in flight per stream: saturate without measuring queueing alone.
            if not window.acquire(timeout=60):
                return
            sent.append(time.perf_counter())
            yield e

    with client.channel(target) as ch:
        call = ch.stream_stream("/rxchain.v1.AtomicBroadcast/Broadcast",
                                request_serializer=None,
                                response_deserializer=services_pb2.BroadcastResponse.FromString)
        for i, r in enumerate(call(gen(), timeout=600)):
            now = time.perf_counter()
            window.release()
            if r.accepted:
                latencies.append(now - sent[i])
                counts["accepted"] += 1
            else:
                counts[r.reason] = counts.get(r.reason, 0) + 1


def _leader(client: BenchClient, orderers: Orderers, timeout: float = 30) -> str:
    ids = {n.raft_id: n.name for n in orderers.net.orderers()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for target in orderers.targets().values():
            try:
                st = client.status(target)
            except grpc.RpcError:
                continue
            if st.raft_leader and ids.get(st.raft_leader) in orderers.procs:
                return ids[st.raft_leader]
        time.sleep(0.1)
    raise RuntimeError("no leader")


def bench_orderers(work: Path) -> dict[str, Any]:
    orderers = Orderers(work / "net")
    client = BenchClient(orderers.net)
    try:
        orderers.start()
        _leader(client, orderers)
        envelopes = [client.envelope() for _ in range(ENVELOPES)]
        targets = list(orderers.targets().values())
        # Warm-up (connections, caches).
        warm: dict[str, int] = {"accepted": 0}
        _stream(client, targets[0], [client.envelope() for _ in range(200)], [], warm)
        latencies: list[float] = []
        counts: dict[str, int] = {"accepted": 0}
        per = len(envelopes) // STREAMS
        threads = [
            threading.Thread(target=_stream, args=(client, targets[i % len(targets)],
                                                   envelopes[i * per:(i + 1) * per],
                                                   latencies, counts))
            for i in range(STREAMS)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        latencies.sort()
        result: dict[str, Any] = {
            "envelopes_per_s": round(counts["accepted"] / elapsed, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1)
            if latencies else None,
            "envelopes": per * STREAMS,
            "answers": counts,
            "streams": STREAMS,
            "in_flight_per_stream": WINDOW,
            "envelope_bytes": len(envelopes[0]),
        }
        # Latency without queueing: one stream, a few envelopes in flight.
        light: list[float] = []
        _stream(client, targets[0], [client.envelope() for _ in range(LIGHT_ENVELOPES)],
                light, {"accepted": 0}, LIGHT_WINDOW)
        light.sort()
        result["light_load"] = {
            "in_flight": LIGHT_WINDOW,
            "p50_ms": round(statistics.median(light) * 1000, 1) if light else None,
            "p99_ms": round(light[int(len(light) * 0.99) - 1] * 1000, 1) if light else None,
        }
        result["failover_ms"] = _failover(client, orderers)
        return result
    finally:
        orderers.close()


def _failover(client: BenchClient, orderers: Orderers) -> float | None:
    leader = _leader(client, orderers)
    survivors = {n: t for n, t in orderers.targets().items() if n != leader}
    watch = next(iter(survivors.values()))
    old_term = client.status(watch).raft_term
    height = client.status(watch).height
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            for target in survivors.values():
                try:
                    _stream(client, target, [client.envelope() for _ in range(20)], [],
                            {"accepted": 0})
                except grpc.RpcError:
                    time.sleep(0.01)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    time.sleep(0.5)
    first_new: list[float] = []
    with client.channel(watch) as ch:
        stub = services_pb2_grpc.AtomicBroadcastStub(ch)
        stream = stub.Deliver(services_pb2.DeliverRequest(start_block=height, follow=True),
                              timeout=30)
        t_kill = time.perf_counter()
        orderers.kill(leader)
        try:
            for r in stream:
                if r.HasField("block") and r.block.metadata.raft_term > old_term:
                    first_new.append(time.perf_counter())
                    break
        except grpc.RpcError:
            pass
        stream.cancel()  # type: ignore[no-untyped-call]
    stop.set()
    pumper.join(20)
    return round((first_new[0] - t_kill) * 1000, 1) if first_new else None


# ---------------------------------------------------------------------------- etcd


def bench_etcd(work: Path) -> dict[str, Any]:
    etcd = shutil.which("etcd")
    if etcd is None:
        subprocess.run(["apt-get", "install", "-y", "etcd-server"], capture_output=True,
                       check=False, timeout=300)
        etcd = shutil.which("etcd")
    if etcd is None:
        return {"etcd_puts_per_s": None, "etcd_note": "etcd-server could not be installed"}
    base = free_base_port(6)
    names = ["e1", "e2", "e3"]
    peer = {n: base + i for i, n in enumerate(names)}
    cli = {n: base + 3 + i for i, n in enumerate(names)}
    cluster = ",".join(f"{n}=http://127.0.0.1:{peer[n]}" for n in names)
    procs = []
    try:
        for n in names:
            procs.append(subprocess.Popen(
                [etcd, "--name", n, "--data-dir", str(work / f"etcd-{n}"),
                 "--listen-peer-urls", f"http://127.0.0.1:{peer[n]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[n]}",
                 "--listen-client-urls", f"http://127.0.0.1:{cli[n]}",
                 "--advertise-client-urls", f"http://127.0.0.1:{cli[n]}",
                 "--initial-cluster", cluster, "--initial-cluster-state", "new",
                 "--initial-cluster-token", "rxbench", "--log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        value = base64.b64encode(b"v" * ENVELOPE_BYTES).decode()
        deadline = time.monotonic() + 30
        while True:
            try:
                _put(http.client.HTTPConnection("127.0.0.1", cli["e1"], timeout=5), "warm",
                     value)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        runs = {str(n): _etcd_load(cli, names, value, n) for n in ETCD_THREADS}
        best = max(runs.values(), key=lambda r: r["puts_per_s"])
        return {
            "etcd_puts_per_s": best["puts_per_s"],
            "etcd_p50_ms": best["p50_ms"],
            "etcd_runs_by_threads": runs,
            "etcd_version": subprocess.run([etcd, "--version"], capture_output=True,
                                           text=True, check=False).stdout.split("\n")[0],
            "etcd_client": "Python http.client keep-alive to the v3 JSON gateway, spread over "
                           "the 3 members, N threads with one put in flight each; the best N "
                           "is reported",
        }
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def _etcd_load(cli: dict[str, int], names: list[str], value: str,
               n_threads: int) -> dict[str, Any]:
    counts = [0] * n_threads
    lat: list[float] = []
    stop_at = time.perf_counter() + ETCD_SECONDS

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", cli[names[i % 3]], timeout=10)
        k = 0
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            _put(conn, f"t{n_threads}-{i}-{k}", value)
            lat.append(time.perf_counter() - t)
            counts[i] += 1
            k += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {
        "puts_per_s": round(sum(counts) / elapsed, 1),
        "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
    }


def _put(conn: http.client.HTTPConnection, key: str, value_b64: str) -> None:
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(), "value": value_b64})
    conn.request("POST", "/v3/kv/put", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise OSError(f"etcd put failed: {resp.status} {data[:200]!r}")


def main() -> int:
    """Run both benchmarks and write the JSON."""
    with tempfile.TemporaryDirectory(prefix="rx-ordering-bench-") as tmp:
        work = Path(tmp)
        result = bench_orderers(work)
        result.update(bench_etcd(work))
    etcd_rate = result.get("etcd_puts_per_s")
    if etcd_rate:
        result["ratio_envelopes_to_etcd_puts"] = round(result["envelopes_per_s"] / etcd_rate, 2)
    path = write_result("ordering", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
