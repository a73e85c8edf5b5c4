"""End-to-end benchmark: the prescription story on a real 3-orderer, 4-peer network.

``python -m bench.e2e_bench`` -> ``bench/results/e2e.json``, ``e2e_latency.svg``,
``summary_e2e.md`` and raw py-spy profiles (and, where ``perf`` is installed, a system-wide
``perf.data`` of the peak: the CPU by layer) under ``bench/results/profiles/``.

Topology (127.0.0.1, TLS and fsync on): orderers ins01..ins03 (Raft), peers h01, h02, p01,
ins01; every contract needs endorsements of two organisations (settlement: one of them the
insurer's). Workload (:mod:`bench.e2e_load`): stories of 7 dependent transactions (issue,
review, lock, key fetch, dispense, key fetch, settle) with client-side encrypted records,
arriving open-loop at rising rates, over pipelined ``Gateway.TransactBatch`` streams (one
connection per client identity by default: whatever a client has queued travels in one
stream message, so fewer connections mean fuller messages).

Per level: offered tx/s, committed tx/s (VALID commits inside the steady window), p50/p99
latency (proposal built -- for a story's first tx: its scheduled arrival -> commit status
received), lost transactions (no commit status), MVCC
conflicts. ``committed_tx_per_s`` is the highest committed rate of a level that kept
p99 <= 1 s, lost nothing and committed >= 90 % of what was offered; ``p50_ms``/``p99_ms``
are then measured at half that rate, together with CPU seconds per committed tx of every
process (from /proc utime+stime, sandbox workers included with their peer).

``crypto_bound_tx_per_s``: signature operations one story transaction needs on all nodes
(counted from the code path, see SIGNATURE_OPS) times the sign/verify CPU costs measured in
this run (thread CPU clock), spread over all cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import RESULTS, write_result
from bench.e2e_load import STEPS, Recorder, StoryWorld, drain, open_loop
from bench.e2e_net import BenchNetwork, start_network
from bench.procstat import CpuSample, cpu_by_node, process_cpu_s
from bench.profiles import layers, threads
from bench.profiles.pyspy import digest, pyspy_path, record
from bench.svgplot import latency_plot

P99_LIMIT_MS = 1000.0
DELIVERY_SHARE = 0.9
TXS_PER_STORY = len(STEPS)

# Signature operations per transaction with a 2-organisation endorsement policy, 4 peers,
# 3 orderers (see node/peer/endorser.py, validator.py, node/orderer/broadcast.py, chain.py):
#   client: signs the proposal and the envelope                          2 sign
#   2 endorsing peers: verify the proposal, sign the endorsement          2 verify, 2 sign
#   receiving orderer: verifies the envelope's creator signature          1 verify
#   4 committing peers: creator signature + 2 endorsements each, less the
#   endorsing peers' own endorsements (remembered when signed, not verified)  10 verify
# plus per block: each orderer signs its own copy's header (3 sign; node/orderer/chain.py
# sign_block: one signature per copy) and each peer checks the one signature of the copy it
# pulled (orderer_quorum 1, the default: 4 x 1 verify); divided by the transactions per block.
SIGNATURE_OPS = {"sign_per_tx": 4, "verify_per_tx": 13, "sign_per_block": 3, "verify_per_block": 4}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def level_stats(rec: Recorder, t0: float, t1: float, warm_s: float, drained: bool,
                offered: float) -> dict[str, Any]:
    """Figures of one load level from what the clients saw."""
    lo = t0 + warm_s
    window = [r for r in rec.txs if lo <= r.start < t1 and r.block >= 0]
    lat = [1000 * (r.end - r.start) for r in window]
    # VALID only: a conflicting tx is in a block but did nothing, and its retry counts again
    committed_in = sum(1 for r in rec.txs if lo <= r.end < t1 and r.code == "VALID")
    valid = sum(1 for r in rec.txs if r.code == "VALID")
    codes: dict[str, int] = {}
    for r in rec.txs:
        codes[r.code] = codes.get(r.code, 0) + 1
    committed_all = sum(1 for r in rec.txs if r.block >= 0)
    mvcc = sum(n for c, n in codes.items() if c.endswith("_CONFLICT"))
    lost = sum(1 for r in rec.txs if r.submitted and r.block < 0)
    refused = sum(1 for r in rec.txs if not r.submitted)
    unfinished = rec.stories_started - rec.stories_done - rec.stories_failed
    blocks = {r.block for r in rec.txs if r.block >= 0}
    return {
        "offered_tx_per_s": round(offered, 1),
        "committed_tx_per_s": round(committed_in / (t1 - lo), 1),
        "p50_ms": round(percentile(lat, 50), 1),
        "p99_ms": round(percentile(lat, 99), 1),
        "max_ms": round(max(lat), 1) if lat else None,
        "txs": len(rec.txs),
        "valid": valid,
        "committed": committed_all,
        "txs_per_block": round(committed_all / max(1, len(blocks)), 2),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "mvcc_conflicts": mvcc,
        "endorse_refusals": refused,
        "catch_up_retries": rec.catch_up_retries,
        "lost": lost + (0 if drained else unfinished),
        "stories": rec.stories_started,
        "stories_done": rec.stories_done,
        "stories_failed": rec.stories_failed,
        "failures": dict(rec.failures),
        "codes": codes,
        "p50_ms_by_step": {s: round(percentile([1000 * (r.end - r.start) for r in window if r.step == s], 50), 1)
                           for s in STEPS},
    }


def passes(st: dict[str, Any]) -> bool:
    """p99 within the limit, nothing lost, and the offered load was carried."""
    return bool(st["p99_ms"] <= P99_LIMIT_MS and st["lost"] == 0 and st["stories_failed"] == 0
            and st["committed_tx_per_s"] >= DELIVERY_SHARE * st["offered_tx_per_s"])


def refine_rate(levels: list[dict[str, Any]], best: dict[str, Any] | None) -> float | None:
    """The next offered rate bisecting (geometrically) between the highest passing and the
    lowest failing rate above the best level's, or None: no such pair, or within 8 %.

    From the levels run so far, whatever their order: a level failing below the best one (a
    slow start) does not stand for the knee, and a bisecting level that passed with a lower
    committed rate than the best still narrows the interval."""
    if best is None:
        return None
    floor = float(best["offered_tx_per_s"])
    above = [float(lv["offered_tx_per_s"]) for lv in levels if not lv["pass"] and lv["offered_tx_per_s"] > floor]
    if not above:
        return None
    hi = min(above)
    lo = max(float(lv["offered_tx_per_s"]) for lv in levels
             if lv["pass"] and floor <= lv["offered_tx_per_s"] < hi)
    if hi / lo < 1.08:
        return None
    return round(math.sqrt(lo * hi), 1)


@dataclass(frozen=True)
class Reading:
    """One look at every process: CPU of each node (its group and descendants; the client
    alone) and the context switches of every thread."""

    cpu: dict[str, CpuSample]
    switches: threads.Snapshot
    pool: dict[str, dict[str, float]] = field(default_factory=dict)  # peer -> sandbox counters


POOL_COUNTERS = ("evictions", "restarts", "invocations")


def metrics_ports(bnet: BenchNetwork) -> dict[str, int]:
    """Each peer's metrics port, from its node.yaml (0 or absent: none)."""
    ports = {}
    for p in bnet.net.peers:
        spec = (bnet.home / "nodes" / p.name / "node.yaml").read_text()
        m = re.search(r"^metrics_port: (\d+)$", spec, re.M)
        if m and int(m.group(1)):
            ports[p.name] = int(m.group(1))
    return ports


def sandbox_counters(ports: dict[str, int]) -> dict[str, dict[str, float]]:
    """Each peer's sandbox pool counters (rxchain_peer_sandbox_*_total), now; a peer whose
    endpoint does not answer within 5 s is left out."""
    out: dict[str, dict[str, float]] = {}
    for name, port in sorted(ports.items()):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read(4 << 20).decode("utf-8", "replace")
        except OSError:
            continue
        vals = {}
        for key in POOL_COUNTERS:
            m = re.search(rf"^rxchain_peer_sandbox_{key}_total (\S+)$", text, re.M)
            if m:
                vals[key] = float(m.group(1))
        # replacements by cause (runtime.FAULT_CAUSES / EVICT_CAUSES), as "replaced_<cause>"
        for m in re.finditer(r'^rxchain_peer_sandbox_replacements_total\{cause="(\w+)"\} (\S+)$',
                             text, re.M):
            vals[f"replaced_{m.group(1)}"] = float(m.group(2))
        out[name] = vals
    return out


def pool_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
               ) -> dict[str, dict[str, int]]:
    """Counter increments per peer between two readings (peers read both times only)."""
    return {name: {k: int(after[name][k] - v) for k, v in vals.items() if k in after[name]}
            for name, vals in sorted(before.items()) if name in after}


def replaced_by_cause(delta: dict[str, dict[str, int]]) -> dict[str, int]:
    """Workers replaced over every peer, by cause (``replaced_<cause>`` counters), with
    ``total`` (restarts plus evictions)."""
    out: dict[str, int] = {}
    for vals in delta.values():
        for k, v in vals.items():
            if k.startswith("replaced_") and v:
                out[k[len("replaced_"):]] = out.get(k[len("replaced_"):], 0) + v
    out = dict(sorted(out.items()))
    out["total"] = sum(vals.get("restarts", 0) + vals.get("evictions", 0)
                       for vals in delta.values())
    return out


class CpuMeter:
    """CPU seconds and context switches of every node (process group with its sandbox
    workers) and of this client process."""

    def __init__(self, bnet: BenchNetwork):
        self.pids = dict(bnet.pids)
        self.ports = metrics_ports(bnet)

    def sample(self) -> Reading:
        """Now."""
        return Reading(self.cpu(), threads.snapshot(self.pids, {"client": os.getpid()}),
                       sandbox_counters(self.ports))

    def cpu(self) -> dict[str, CpuSample]:
        """CPU of every node and of this client, now (without the threads' switches)."""
        return {**cpu_by_node(self.pids), "client": CpuSample(process_cpu_s(os.getpid()), 0.0)}

    @staticmethod
    def per_tx(before: Reading, after: Reading, txs: int, wall_s: float) -> dict[str, Any]:
        """CPU seconds per committed tx by process and by kind, core utilisation, how much of
        each peer's figure its live sandbox workers are (a worker replaced during the level
        counts in its peer's figure -- reaped children -- but not in that share), and context
        switches per tx."""
        delta = {k: after.cpu[k].total_s - v.total_s for k, v in before.cpu.items()}
        n = max(1, txs)
        peers = {k: v for k, v in delta.items() if k.startswith("peer.")}
        orderers = {k: v for k, v in delta.items() if k.startswith("orderer.")}
        sandbox = {k: round(1000 * max(0.0, after.cpu[k].members_s - before.cpu[k].members_s) / n, 3)
                   for k in sorted(peers)}
        return {
            "by_process_ms": {k: round(1000 * v / n, 3) for k, v in sorted(delta.items())},
            "by_kind_ms": {
                "client": round(1000 * delta["client"] / n, 3),
                # every peer is the gateway of its own organisation's clients, endorses for the
                # others and validates/commits every block: the busiest gateway is reported
                "gateway_peer_max": round(1000 * max(peers.values()) / n, 3),
                "other_peers_mean": round(1000 * (sum(peers.values()) - max(peers.values()))
                                          / max(1, len(peers) - 1) / n, 3),
                "peers_total": round(1000 * sum(peers.values()) / n, 3),
                "orderers_total": round(1000 * sum(orderers.values()) / n, 3),
                "orderer_max": round(1000 * max(orderers.values()) / n, 3),
            },
            "total_ms": round(1000 * sum(delta.values()) / n, 3),
            "cores_busy": round(sum(delta.values()) / wall_s, 2),
            "sandbox_workers_ms": {"by_peer": sandbox, "total": round(sum(sandbox.values()), 3)},
            "context_switches_per_tx": threads.per_tx(before.switches, after.switches, txs),
            # workers replaced in the level (each a process start, ~0.1 s of CPU counted in
            # its peer's figure): evictions for another contract's code, restarts after a fault
            "sandbox_pool": pool_delta(before.pool, after.pool),
            # ... and over the four peers by cause (runtime.FAULT_CAUSES / EVICT_CAUSES)
            "sandbox_replaced_by_cause": replaced_by_cause(pool_delta(before.pool, after.pool)),
        }


def run_level(world: StoryWorld, tx_per_s: float, duration_s: float, warm_s: float,
              cpu: CpuMeter | None = None) -> dict[str, Any]:
    """One open-loop level: arrivals for ``duration_s``, then drain."""
    world.reset()
    before = cpu.sample() if cpu else None
    w0 = time.monotonic()
    t0, t1 = open_loop(world, tx_per_s / TXS_PER_STORY, duration_s)
    drained = drain(world, timeout_s=30.0)
    wall = time.monotonic() - w0
    st = level_stats(world.rec, t0, t1, warm_s, drained, tx_per_s)
    if cpu is not None and before is not None:
        st["cpu"] = CpuMeter.per_tx(before, cpu.sample(), st["valid"], wall)
    return st


def settle_pool(world: StoryWorld, tx_per_s: float, seconds: float,
                cpu: CpuMeter | None = None) -> dict[str, Any] | None:
    """Unmeasured load at the coming level's rate for ``seconds`` (0: none), so that each
    peer's sandbox pool has shifted its workers between the contracts for that rate's mix
    before the level's CPU meter starts: with the pool's old eviction policy the first 25 s
    level at 60 tx/s after the 14 tx/s warm-up replaced 5-7 workers over the four peers, the
    next one 2, later ones none (twenty-first session, bench/profiles/analysis.md; none at
    all since ``runtime.SPARE_WAIT_S``, but another rate's mix may still move workers).
    Returns the seconds, the workers replaced meanwhile, by cause, and the settle's ``lost``
    transactions (those not finished within its 30 s drain among them: their stragglers'
    CPU then lands in the measured level's meter -- a settle at an overload rate while the
    search bisects -- which a non-zero ``lost`` here tells)."""
    if seconds <= 0:
        return None
    before = sandbox_counters(cpu.ports) if cpu else {}
    st = run_level(world, tx_per_s, seconds, 0.0)
    after = sandbox_counters(cpu.ports) if cpu else {}
    return {"s": seconds, "replaced": replaced_by_cause(pool_delta(before, after)),
            "lost": int(st.get("lost", 0))}


def measure_crypto(world: StoryWorld, seconds: float = 1.5) -> dict[str, float]:
    """ECDSA P-256 sign and verify rates per CPU-second, with the nodes' own classes.

    Timed with the thread's CPU clock, like the per-process CPU figures, so other tenants
    of a shared machine do not deflate the rates."""
    from node.crypto.signing import Purpose, Verifier

    signer = world.clients["clerk"].ident.signer
    cert = signer.identity.cert_der
    verifier = Verifier()
    data = os.urandom(1200)
    sig = signer.sign(Purpose.ENVELOPE, data)
    verifier.verify(cert, sig, Purpose.ENVELOPE, data)
    n, t0 = 0, time.thread_time()
    while time.thread_time() - t0 < seconds:
        for _ in range(200):
            signer.sign(Purpose.ENVELOPE, data)
        n += 200
    sign_rate = n / (time.thread_time() - t0)
    n, t0 = 0, time.thread_time()
    while time.thread_time() - t0 < seconds:
        for _ in range(200):
            verifier.verify(cert, sig, Purpose.ENVELOPE, data)
        n += 200
    verify_rate = n / (time.thread_time() - t0)
    return {"sign_per_s": round(sign_rate), "verify_per_s": round(verify_rate)}


def crypto_bound(rates: dict[str, float], txs_per_block: float, cores: int) -> dict[str, float]:
    """Txs/s the machine could carry doing only the signature operations."""
    ops = SIGNATURE_OPS
    signs = ops["sign_per_tx"] + ops["sign_per_block"] / max(1.0, txs_per_block)
    verifies = ops["verify_per_tx"] + ops["verify_per_block"] / max(1.0, txs_per_block)
    per_tx_s = signs / rates["sign_per_s"] + verifies / rates["verify_per_s"]
    return {"signs_per_tx": round(signs, 3), "verifies_per_tx": round(verifies, 3),
            "crypto_ms_per_tx": round(1000 * per_tx_s, 4),
            "crypto_bound_tx_per_s_per_core": round(1 / per_tx_s, 1),
            "crypto_bound_tx_per_s": round(cores / per_tx_s, 1)}


def profile_level(world: StoryWorld, bnet: BenchNetwork, tx_per_s: float, seconds: int,
                  out_dir: Path) -> dict[str, Any]:
    """py-spy every process kind while the peak level runs; digests of the top costs."""
    binary = pyspy_path()
    if binary is None:
        return {"error": "py-spy is not installed and could not be installed"}
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.txt"):
        old.unlink()
    leader = leader_orderer(bnet)
    targets = {"client": (os.getpid(), False), "peer.h01": (bnet.pids["peer.h01"], True),
               "peer.p01": (bnet.pids["peer.p01"], True), "peer.ins01": (bnet.pids["peer.ins01"], True),
               f"orderer-leader.{leader}": (bnet.pids[leader], False)}
    follower = next(n for n in bnet.pids if n.startswith("orderer.") and n != leader)
    targets[f"orderer-follower.{follower}"] = (bnet.pids[follower], False)
    procs = {}
    world.reset()
    for name, (pid, sub) in targets.items():
        procs[name] = record(binary, pid, out_dir / f"{name}.txt", seconds + 1, subprocesses=sub)
    time.sleep(0.5)
    client = {"client": os.getpid()}
    before = threads.snapshot(bnet.pids, client)
    t0, t1 = open_loop(world, tx_per_s / TXS_PER_STORY, seconds)
    drained = drain(world, timeout_s=30.0)
    after = threads.snapshot(bnet.pids, client)
    out: dict[str, Any] = {"tx_per_s": tx_per_s,
                           "level": level_stats(world.rec, t0, t1, 1.0, drained, tx_per_s)}
    for name, p in procs.items():
        try:
            _, err = p.communicate(timeout=60)
        except Exception:  # a stuck py-spy: stop it, report the profile missing
            p.kill()
            p.communicate(timeout=10)  # reap it and close its pipe
            err = b"timeout"
        d = digest(out_dir / f"{name}.txt")
        out[name] = {"samples": d.samples, "top_self": d.top_self, "top_inclusive": d.top_inclusive,
                     "buckets": d.buckets}
        if d.samples == 0:
            out[name]["error"] = err.decode(errors="replace")[-300:]
    labels = threads.local_labels()
    for pid in bnet.pids.values():
        labels.update(threads.thread_labels(binary, pid))
    out["thread_switches"] = threads.top_threads(before, after, labels, out["level"]["valid"])
    return out


def commits_between(rec: Recorder, lo: float, hi: float) -> int:
    """Transactions whose commit status arrived in [lo, hi] (monotonic seconds)."""
    return sum(1 for r in rec.txs if r.block >= 0 and lo <= r.end <= hi)


PERF_FREQUENCY = 499  # samples per second of each CPU (a prime: no lock-step with timers)


def layers_level(world: StoryWorld, bnet: BenchNetwork, tx_per_s: float, seconds: int,
                 out_dir: Path, warm_s: float) -> dict[str, Any]:
    """A system-wide ``perf`` sample while the peak level runs again (after py-spy, which
    would be sampled too): the machine's CPU by layer and by kernel activity, in shares of
    the busy samples and in CPU ms per tx committed between the first and the last sample.
    Sampling starts ``warm_s`` into the load (the later story steps arriving too), as the
    levels' warm-up."""
    binary = layers.perf_path()
    if binary is None:
        return {"error": "perf is not installed and could not be (Debian: linux-perf); no layer breakdown"}
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "perf.data"
    for old in (data, out_dir / "perf.data.old"):  # perf keeps the previous file as .old
        old.unlink(missing_ok=True)
    client = {"client": os.getpid()}
    names = layers.process_names(bnet.pids, client)
    world.reset()
    time.sleep(0.5)
    proc = layers.record(binary, data, seconds, PERF_FREQUENCY, delay_s=warm_s)
    # the /proc meter over (about) the same window, for comparison: (time, CPU s of the nodes
    # with their workers and this client)
    meter = CpuMeter(bnet)
    readings: list[tuple[float, float]] = []

    def read_meter() -> None:
        readings.append((time.monotonic(), sum(c.total_s for c in meter.cpu().values())))

    timers = [threading.Timer(warm_s, read_meter), threading.Timer(warm_s + seconds, read_meter)]
    for t in timers:
        t.start()
    load_end = 0.0
    try:
        _, load_end = open_loop(world, tx_per_s / TXS_PER_STORY, warm_s + seconds + 1)  # outlasts perf
        _, err = proc.communicate(timeout=60)
    except Exception as exc:  # a stuck perf or a failed load: report why (perf is reaped below)
        return {"error": f"perf window failed: {type(exc).__name__}: {exc}"}
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate(timeout=10)
        for t in timers:
            t.cancel()
            t.join(10)
        drain(world, timeout_s=30.0)
    if proc.returncode != 0 or not data.exists():
        return {"error": f"perf record failed: {err.decode(errors='replace').strip()[-300:]}"}
    names = layers.process_names(bnet.pids, client, names)  # workers started meanwhile too
    try:
        prof = layers.profile(layers.parse_script(layers.script(binary, data)), names)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    if prof.first_t is None or prof.last_t is None:
        return {"error": "perf script printed no sample times"}
    lo, hi = prof.first_t, prof.last_t
    txs = commits_between(world.rec, lo, hi)
    out: dict[str, Any] = {"tx_per_s": tx_per_s, "window_s": round(hi - lo, 2), "committed_in_window": txs,
                           "load_covered_window": load_end >= hi, "frequency_hz": PERF_FREQUENCY,
                           **layers.per_tx(prof, PERF_FREQUENCY, txs)}
    if len(readings) == 2:
        (ta, ca), (tb, cb) = readings
        n = commits_between(world.rec, ta, tb)
        if n:
            out["proc_cpu_ms_per_tx"] = round(1000 * (cb - ca) / n, 3)
    return out


def leader_orderer(bnet: BenchNetwork) -> str:
    """The Raft leader's node name (Admin.Status), falling back to the first orderer."""
    try:
        for row in bnet.launcher.status():
            if row.get("kind") == "orderer" and row.get("raft_leader"):
                lid = int(row["raft_leader"])
                for n in bnet.net.orderers:
                    spec = (bnet.home / "nodes" / n.name / "node.yaml").read_text()
                    if f"raft_id: {lid}\n" in spec:
                        return n.name
    except Exception:
        pass
    return bnet.net.orderers[0].name


def block_fill(bnet: BenchNetwork, rec: Recorder) -> float:
    """Mean valid txs per block in a run (for amortising per-block signatures)."""
    blocks = {r.block for r in rec.txs if r.block >= 0}
    return len([r for r in rec.txs if r.block >= 0]) / max(1, len(blocks))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark."""
    t_start = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="rxbench-e2e-"))
    print(f"home {home} (kept only with RXCHAIN_BENCH_KEEP=1)", flush=True)
    bnet = start_network(home, patients=args.patients, progress=lambda m: print(m, flush=True),
                         max_tx_count=args.batch, timeout_ms=args.batch_timeout_ms)
    world = None
    try:
        world = StoryWorld(bnet, streams_per_client=args.streams)
        cpu = CpuMeter(bnet)
        # warm-up: contract caches, key caches, TLS sessions
        run_level(world, 14, 4.0, 1.0)
        levels: list[dict[str, Any]] = []
        rate = args.start_rate
        best: dict[str, Any] | None = None
        fails = 0

        def level(rate: float) -> dict[str, Any]:
            nonlocal best
            settled = settle_pool(world, rate, args.settle, cpu)
            st = run_level(world, rate, args.duration, args.warm, cpu)
            st["settle"] = settled
            st["pass"] = passes(st)
            levels.append(st)
            print(f"offered {rate:6.1f} tx/s -> committed {st['committed_tx_per_s']:6.1f}, "
                  f"p50 {st['p50_ms']:7.1f} ms, p99 {st['p99_ms']:7.1f} ms, lost {st['lost']}, "
                  f"mvcc {st['mvcc_conflicts']}, cores {st.get('cpu', {}).get('cores_busy')}, "
                  f"pass {st['pass']}", flush=True)
            if st["pass"] and (best is None or st["committed_tx_per_s"] > best["committed_tx_per_s"]):
                best = st
            return st

        while rate <= args.max_rate and time.monotonic() - t_start < args.budget_s:
            if level(rate)["pass"]:
                fails = 0
            else:
                fails += 1
                if fails >= 2:
                    break
            rate = round(rate * args.step, 1)
        # The x1.4 steps are coarse near the knee: bisect (geometrically) between the best
        # passing offered rate and the lowest failing one above it.
        for _ in range(args.refine):
            mid = refine_rate(levels, best)
            if mid is None:
                break
            level(mid)
        peak = best["committed_tx_per_s"] if best else 0.0
        half_rate = max(7.0, peak / 2)
        settled = settle_pool(world, half_rate, args.settle, cpu)
        half = run_level(world, half_rate, args.duration, args.warm, cpu)
        half["settle"] = settled
        print(f"half rate {half_rate:.1f} tx/s: p50 {half['p50_ms']} ms, p99 {half['p99_ms']} ms", flush=True)
        fill = block_fill(bnet, world.rec)
        rates = measure_crypto(world)
        cb = crypto_bound(rates, fill, os.cpu_count() or 1)
        profile: dict[str, Any] = {}
        if not args.no_profile:
            prof_rate = best["offered_tx_per_s"] if best else args.start_rate
            profile = profile_level(world, bnet, prof_rate, args.profile_s, RESULTS / "profiles")
            profile["layers"] = layers_level(world, bnet, prof_rate, args.profile_s, RESULTS / "profiles",
                                             args.warm)
        all_txs = sum(lv["committed"] for lv in levels) + half["committed"]
        all_mvcc = sum(lv["mvcc_conflicts"] for lv in levels) + half["mvcc_conflicts"]
        result: dict[str, Any] = {
            "committed_tx_per_s": peak,
            "peak_offered_tx_per_s": best["offered_tx_per_s"] if best else 0.0,
            "p50_ms": half["p50_ms"],
            "p99_ms": half["p99_ms"],
            "half_rate_tx_per_s": round(half_rate, 1),
            "half_rate_lost": half["lost"],
            "mvcc_conflict_share": round(all_mvcc / max(1, all_txs), 5),
            "cpu_s_per_tx_half_rate": half.get("cpu"),
            "cpu_s_per_tx_peak": best.get("cpu") if best else None,
            "crypto_bound_tx_per_s": cb["crypto_bound_tx_per_s"],
            "crypto": {**rates, **cb, "cores": os.cpu_count(), "ops": SIGNATURE_OPS,
                       "txs_per_block_half_rate": round(fill, 1)},
            "ratio_to_crypto_bound": round(peak / cb["crypto_bound_tx_per_s"], 4),
            "targets": {"committed_tx_per_s": 500, "p99_ms_at_half": 1000},
            "levels": sorted(levels, key=lambda lv: lv["offered_tx_per_s"]),
            "half_rate_level": half,
            "profile": profile,
            "topology": {"orderers": 3, "peers": ["h01", "h02", "p01", "ins01"], "tls": True,
                         "fsync": True, "endorsement": "2 organisations (settlement: +insurer)",
                         "batch_max_tx": args.batch, "batch_timeout_ms": args.batch_timeout_ms,
                         "streams_per_client_identity": args.streams, "patients": args.patients,
                         "txs_per_story": TXS_PER_STORY, "steps": list(STEPS)},
            "duration_s": round(time.monotonic() - t_start, 1),
        }
        return result
    finally:
        if world is not None:
            world.close()
        bnet.stop()
        if not os.environ.get("RXCHAIN_BENCH_KEEP"):
            shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--start-rate", type=float, default=28.0, help="first offered tx/s")
    p.add_argument("--step", type=float, default=1.4, help="rate multiplier between levels")
    p.add_argument("--max-rate", type=float, default=1400.0)
    p.add_argument("--refine", type=int, default=2,
                   help="levels bisecting between the best passing and the first failing rate")
    p.add_argument("--duration", type=float, default=14.0, help="arrival window per level (s)")
    p.add_argument("--warm", type=float, default=3.0, help="seconds of a level not measured")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds of unmeasured load at each level's rate before it (0: none), "
                        "for the peers' sandbox pools to adapt to the rate's contract mix")
    p.add_argument("--streams", type=int, default=1, help="TransactBatch connections per client identity")
    p.add_argument("--patients", type=int, default=240)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--batch-timeout-ms", type=int, default=50)
    p.add_argument("--profile-s", type=int, default=15)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop raising the rate after this")
    args = p.parse_args(argv)
    result = run(args)
    path = write_result("e2e", result)
    latency_plot(result["levels"], RESULTS / "e2e_latency.svg", P99_LIMIT_MS)
    from bench.profiles.summary import write_summary

    write_summary(json.loads(path.read_text()), RESULTS / "summary_e2e.md")
    print(f"wrote {path}")
    for k in ("committed_tx_per_s", "p50_ms", "p99_ms", "mvcc_conflict_share", "crypto_bound_tx_per_s",
              "ratio_to_crypto_bound"):
        print(f"  {k}: {result[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
