"""Unit tests of the benchmark helpers: level statistics, pass rule, crypto bound, CPU
accounting from /proc, py-spy digests and the SVG plot."""

from __future__ import annotations

import functools
import os
import queue
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rxchain.v1 import services_pb2, transaction_pb2

from bench.e2e_bench import (
    SIGNATURE_OPS,
    CpuMeter,
    Reading,
    crypto_bound,
    level_stats,
    passes,
    percentile,
    refine_rate,
)
from bench.e2e_load import STEPS, Recorder, Story, TxResult, open_loop, run_tx
from bench.procstat import CpuSample, cpu_by_node, group_cpu, node_families, node_processes, process_cpu_s
from bench.profiles import threads
from bench.profiles.pyspy import bucket_of, digest
from bench.profiles.summary import write_summary
from bench.run_all import summary_lines
from bench.svgplot import latency_plot


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) != percentile([], 50)  # NaN


def _rec() -> Recorder:
    rec = Recorder()
    # 10 committed txs in the window (start 2..11 s), 100 ms each; one lost after submit;
    # one refused at endorsement; one MVCC conflict.
    for i in range(10):
        rec.add(TxResult("issue", 2.0 + i, 2.1 + i, "VALID", block=i, submitted=True))
    rec.add(TxResult("lock", 5.0, 35.0, "TIMEOUT", block=-1, submitted=True))
    rec.add(TxResult("review", 6.0, 6.01, "NOT_FOUND", block=-1, submitted=False))
    rec.add(TxResult("dispense", 7.0, 7.3, "MVCC_READ_CONFLICT", block=5, submitted=True))
    rec.stories_started, rec.stories_done = 3, 3
    return rec


def test_level_stats_counts_lost_refused_and_conflicts() -> None:
    st = level_stats(_rec(), 0.0, 12.0, 2.0, drained=True, offered=1.0)
    assert st["lost"] == 1
    assert st["endorse_refusals"] == 1
    assert st["mvcc_conflicts"] == 1
    assert st["valid"] == 10
    assert st["p50_ms"] == pytest.approx(100.0, abs=1.0)
    assert st["p99_ms"] == pytest.approx(300.0, abs=1.0)  # the conflicting tx committed after 300 ms
    assert not passes(st)  # a lost transaction fails the level


def test_committed_rate_counts_valid_transactions_only() -> None:
    """A conflicting tx is in a block but wrote nothing (and its retry commits again): the
    level's committed rate is its VALID commits in the steady window. It counted the
    conflict too (11 in 10 s here), so conflicts and retries helped a level pass."""
    st = level_stats(_rec(), 0.0, 12.0, 2.0, drained=True, offered=1.0)
    assert st["committed_tx_per_s"] == 1.0  # 10 VALID commits between 2 s and 12 s


def test_refine_bisects_above_the_best_level_whatever_failed_below_it() -> None:
    """A first level failing (a slow start) below the best passing one is not the knee: the
    refinement still bisects between the best (55) and the lowest failure above it (77).
    The search kept that first failure as its upper bound and never refined."""
    levels = [{"offered_tx_per_s": r, "pass": ok, "committed_tx_per_s": r}
              for r, ok in ((28.0, False), (39.2, True), (54.9, True), (76.8, False), (107.6, False))]
    best = levels[2]
    assert refine_rate(levels, best) == round((54.9 * 76.8) ** 0.5, 1)
    # a bisecting level that passed, committing a little less than the best, still narrows it
    levels.append({"offered_tx_per_s": 64.9, "pass": True, "committed_tx_per_s": 54.0})
    assert refine_rate(levels, best) == round((64.9 * 76.8) ** 0.5, 1)
    levels.append({"offered_tx_per_s": 69.5, "pass": False, "committed_tx_per_s": 60.0})
    assert refine_rate(levels, best) is None  # 69.5 / 64.9 < 1.08
    assert refine_rate(levels[:3], best) is None  # nothing failed above the best
    assert refine_rate(levels, None) is None


class _FakeStream:
    """Answers an endorsement, then the submit's commit status, at once."""

    def send(self, req: services_pb2.TransactRequest, cb: Callable[[services_pb2.TransactResponse], None]) -> None:
        if req.HasField("endorse"):
            cb(services_pb2.TransactResponse(endorsed=services_pb2.EndorseResponse(
                result=transaction_pb2.Response(status=200))))
        else:
            cb(services_pb2.TransactResponse(committed=services_pb2.CommitStatusResponse(
                code=transaction_pb2.VALID, block_number=3)))


def test_open_loop_times_a_late_story_from_its_scheduled_arrival(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stories are due every 0.1 s; the load thread needs 0.25 s to start each (sealing and
    signing an issue), so it falls further behind with every story. Arrivals stay on the
    schedule and each issue's latency runs from when it was due: the delay the backlogged
    sender adds is measured, not omitted (it was timed from when the thread got to it)."""
    now = [1000.0]
    client = SimpleNamespace(
        builder=SimpleNamespace(proposal=lambda *a: SimpleNamespace(signed=transaction_pb2.SignedProposal()),
                                envelope=lambda built, prepared: transaction_pb2.Envelope()),
        stream=_FakeStream,
    )

    def slow_build(story: Story) -> tuple[Any, str, str, dict[str, Any], None]:
        if story.step:
            raise RuntimeError("only the issues are timed here")  # the story fails, counted
        now[0] += 0.25
        return client, "prescription", "issue", {}, None

    monkeypatch.setattr(Story, "_build", slow_build)
    monkeypatch.setattr("bench.e2e_load.run_tx", functools.partial(run_tx, clock=lambda: now[0]))
    patient = SimpleNamespace(hospital="h01")
    world = SimpleNamespace(tag="T", rec=Recorder(), clients={"doctor-h01": client, "pharmacist": client,
                                                              "clerk": client})
    world.new_story = lambda: Story(0, world, patient)  # type: ignore[arg-type]
    t0, t1 = open_loop(world, 10.0, 0.5, clock=lambda: now[0], sleep=lambda s: None)  # type: ignore[arg-type]
    issues = [r for r in world.rec.txs if r.step == "issue"]
    assert (t0, t1) == (1000.0, 1000.5) and len(issues) == 5
    assert [round(r.start - t0, 6) for r in issues] == [0.0, 0.1, 0.2, 0.3, 0.4]
    # the fifth was due at 0.4 s, started at 1.0 s and committed at 1.25 s
    assert issues[4].end - issues[4].start == pytest.approx(0.85)
    assert world.rec.stories_started == 5 and world.rec.stories_failed == 5


def test_a_story_reports_to_the_level_it_arrived_in() -> None:
    """A story still running when its level's drain gave up finishes during the next level:
    it counts in its own level, not in the next one's (where it made stories_done exceed
    stories_started -- negative 'unfinished', fewer 'lost' -- and its commits inflated the
    committed rate)."""
    patient = SimpleNamespace(hospital="h01")
    world = SimpleNamespace(tag="T", rec=Recorder(), clients={"doctor-h01": None, "pharmacist": None,
                                                              "clerk": None})
    story = Story(0, world, patient)  # type: ignore[arg-type]
    first = world.rec
    first.stories_started = 1
    world.rec = Recorder()  # StoryWorld.reset: the next level begins
    story.step = len(STEPS) - 1
    story._done("VALID", None)  # its settle commits
    assert (first.stories_done, world.rec.stories_done) == (1, 0)
    other = Story(1, world, patient)  # type: ignore[arg-type]
    other._fail("NOT_FOUND")
    assert world.rec.stories_failed == 1 and first.stories_failed == 0


def test_passes_needs_delivery_latency_and_nothing_lost() -> None:
    base = {"p99_ms": 900.0, "lost": 0, "stories_failed": 0, "committed_tx_per_s": 95.0,
            "offered_tx_per_s": 100.0}
    assert passes(base)
    assert not passes({**base, "p99_ms": 1001.0})
    assert not passes({**base, "committed_tx_per_s": 80.0})
    assert not passes({**base, "stories_failed": 1})


def test_block_signature_checks_are_one_per_peer(tmp_path: Path) -> None:
    """Each orderer signs its own copy of a block (one signature: the copy a peer pulls), and a
    peer with the default orderer_quorum (1) checks one: 4 peers make 4 block verifies, not
    the 8 (2 per peer) the crypto bound counted, which understated it."""
    from netgen import generate
    from rxchain.v1 import block_pb2

    from bench.e2e_net import PEER_ORGS
    from bench.txbuild import SMALL_CONSORTIUM, node_signer
    from node.crypto.signing import Purpose, Verifier, block_signers
    from node.orderer.chain import sign_block

    generate(SMALL_CONSORTIUM, tmp_path / "net")
    signer = node_signer(tmp_path / "net", "orderer.ins01", "ins01")
    block = block_pb2.Block()
    sign_block(block, b"h" * 32, signer)  # what every orderer does to its copy
    assert len(block.metadata.orderer_signatures) == 1

    class Counting(Verifier):
        calls = 0

        def verify(self, cert_der: bytes, signature: bytes, purpose: Purpose, data: bytes) -> bool:
            Counting.calls += 1
            return super().verify(cert_der, signature, purpose, data)

    # the peer's block check (node.peer.validator.check_block) with the default quorum
    assert block_signers(Counting(), b"h" * 32, block.metadata.orderer_signatures,
                         {signer.identity.cert_der: 1}, enough=1) == 1
    assert SIGNATURE_OPS["verify_per_block"] == len(PEER_ORGS) * Counting.calls == 4
    assert SIGNATURE_OPS["sign_per_block"] == 3  # one per orderer


def test_crypto_bound_arithmetic() -> None:
    cb = crypto_bound({"sign_per_s": 10_000.0, "verify_per_s": 5_000.0}, txs_per_block=1e9, cores=2)
    # 4 signs (0.4 ms) + 13 verifies (2.6 ms) = 3.0 ms per tx per core
    assert cb["crypto_ms_per_tx"] == pytest.approx(3.0, rel=1e-3)
    assert cb["crypto_bound_tx_per_s"] == pytest.approx(2 / 0.0030, rel=1e-3)
    small = crypto_bound({"sign_per_s": 10_000.0, "verify_per_s": 5_000.0}, txs_per_block=1, cores=2)
    assert small["crypto_bound_tx_per_s"] < cb["crypto_bound_tx_per_s"]  # per-block ops not amortised


def test_procstat_sees_own_cpu() -> None:
    me = os.getpid()
    before = process_cpu_s(me)
    x = 0
    for i in range(3_000_000):
        x += i
    after = process_cpu_s(me)
    assert after > before
    assert process_cpu_s(2**22 + 12345) == 0.0  # no such process
    assert node_families({"g": os.getpgid(me)})["g"][0] == os.getpgid(me)


def test_group_cpu_includes_reaped_children() -> None:
    me = os.getpid()
    own_before, group_before = process_cpu_s(me), group_cpu(me).leader_s
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                    "while time.process_time() - t < 0.3: pass"], check=True, timeout=60)
    grown = group_cpu(me).leader_s - group_before
    assert grown - (process_cpu_s(me) - own_before) >= 0.25  # the child's 0.3 s, once reaped


def test_group_counts_descendants_in_sessions_of_their_own() -> None:
    """A peer's sandbox workers start in new sessions: they still count as the peer's."""
    with subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nt = time.process_time()\n"
         "while time.process_time() - t < 0.3: pass\nprint('busy', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == b"busy"
            assert os.getpgid(child.pid) != os.getpgid(os.getpid())
            assert node_processes({"me": os.getpid()})[child.pid] == "me workers"
            assert group_cpu(os.getpid()).members_s >= process_cpu_s(child.pid) >= 0.25
            both = cpu_by_node({"me": os.getpid(), "it": child.pid})  # one /proc pass, two nodes
            assert both["it"].leader_s == pytest.approx(process_cpu_s(child.pid), abs=0.05)
            owners = {(name, pid) for name, pid, _tid in threads.snapshot({"me": os.getpid()})}
            assert ("me workers", child.pid) in owners and ("me", os.getpid()) in owners
        finally:
            child.kill()
            child.wait(10)


def test_cpu_per_tx_by_kind_with_the_sandbox_share_and_switches() -> None:
    before = Reading({"client": CpuSample(1.0, 0.0), "peer.a": CpuSample(2.0, 1.0),
                      "peer.b": CpuSample(2.0, 0.0), "orderer.x": CpuSample(1.0, 0.0)},
                     {("peer.a", 5, 5): (10, 1, 0, "t")})
    after = Reading({"client": CpuSample(1.1, 0.0), "peer.a": CpuSample(2.2, 1.1),
                     "peer.b": CpuSample(2.1, 0.0), "orderer.x": CpuSample(1.05, 0.0)},
                    {("peer.a", 5, 5): (30, 11, 0, "t")})
    out = CpuMeter.per_tx(before, after, txs=100, wall_s=1.0)
    assert out["by_process_ms"] == {"client": 1.0, "orderer.x": 0.5, "peer.a": 3.0, "peer.b": 1.0}
    assert out["by_kind_ms"]["gateway_peer_max"] == 3.0 and out["by_kind_ms"]["other_peers_mean"] == 1.0
    assert out["total_ms"] == 5.5 and out["cores_busy"] == 0.55
    # peer.a's 3 ms include its workers' 1 ms (0.1 s of members' CPU over 100 txs)
    assert out["sandbox_workers_ms"] == {"by_peer": {"peer.a": 1.0, "peer.b": 0.0}, "total": 1.0}
    assert out["context_switches_per_tx"]["voluntary"] == 0.2
    assert out["context_switches_per_tx"]["involuntary"] == 0.1


def test_thread_switches_count_hand_offs() -> None:
    """A ping-pong of 200 hand-offs between two threads shows as voluntary switches of this
    thread (it sleeps in nearly every get: allow for a few answers that were there already);
    the echo thread, started and ended inside the window, is left out of the totals."""
    me, tid = os.getpid(), threading.get_native_id()
    ping: queue.SimpleQueue[int] = queue.SimpleQueue()
    pong: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        for _ in range(200):
            got = ping.get(timeout=5)
            # answered a little later, so this thread is asleep in its get by then: on a loaded
            # machine an answer sent at once was often there already (4 switches of 200 seen)
            time.sleep(0.002)
            pong.put(got)

    before = threads.snapshot({}, {"me": me})
    t = threading.Thread(target=echo)
    t.start()
    for i in range(200):
        ping.put(i)
        assert pong.get(timeout=5) == i
    t.join(5)
    after = threads.snapshot({}, {"me": me})
    assert after[("me", me, tid)][0] - before[("me", me, tid)][0] >= 100
    per = threads.per_tx(before, after, txs=100)
    assert per["voluntary"] >= 1.0
    # three figures rounded to 0.1 each: their sum may be 0.1 off (plus float error)
    assert per["total"] == pytest.approx(per["voluntary"] + per["involuntary"], abs=0.1 + 1e-9)
    assert threads.task_stats(2**22 + 12345) == {}  # no such process


def test_thread_cpu_is_read_per_thread() -> None:
    """A thread that computes for ~50 ms of CPU shows it; an idle thread beside it does not."""
    me = os.getpid()
    stop = threading.Event()
    idler = threading.Thread(target=stop.wait, args=(10,), name="idler")
    idler.start()
    try:
        assert idler.native_id is not None
        tid = threading.get_native_id()
        before = threads.snapshot({}, {"me": me})
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.05:
            pass
        after = threads.snapshot({}, {"me": me})
        busy_ns = after[("me", me, tid)][2] - before[("me", me, tid)][2]
        idle_ns = after[("me", me, idler.native_id)][2] - before[("me", me, idler.native_id)][2]
        assert busy_ns >= 40_000_000
        assert idle_ns < 10_000_000
    finally:
        stop.set()
        idler.join(5)
    assert threads.cpu_ns_from_schedstat("123456 789 10\n") == 123456
    assert threads.cpu_ns_from_schedstat("") == 0


def test_switch_counts_split_voluntary_and_involuntary_and_skip_partial_threads() -> None:
    status = "Name:\tpython\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t56\n"
    assert threads.switches_from_status(status) == (1234, 56)
    before = {("a", 1, 1): (10, 0, 0, "x"), ("b", 2, 2): (5, 5, 0, "y"), ("b", 2, 3): (900, 900, 0, "ended")}
    after = {("a", 1, 1): (110, 0, 0, "x"), ("b", 2, 2): (35, 30, 0, "y"), ("b", 2, 4): (700, 700, 0, "born")}
    assert threads.per_tx(before, after, txs=50) == {
        "by_process": {"a": 2.0, "b": 1.1}, "voluntary": 2.6, "involuntary": 0.5, "total": 3.1}
    # the per-thread table ranks voluntary switches only
    top = threads.top_threads(before, after, {}, txs=50)
    assert top["per_tx_by_process"] == {"a": 2.0, "b": 0.6}


def test_digest_self_inclusive_and_buckets(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(
        "process 1:\"python\";Thread.run (threading.py:10);commit_block (node/peer/committer.py:65);"
        "verify (node/crypto/signing.py:95) 6\n"
        "process 1:\"python\";Thread.run (threading.py:10);commit_block (node/peer/committer.py:65) 2\n"
        "process 1:\"python\";Thread.run (threading.py:10);wait (threading.py:320) 2\n"
        "garbage line\n"
    )
    d = digest(raw)
    assert d.samples == 10
    assert d.top_self[0] == ("verify (crypto/signing.py)", 0.6)
    assert ("commit_block (peer/committer.py)", 0.8) in d.top_inclusive
    assert all(not name.startswith("Thread.run") for name, _ in d.top_inclusive)
    assert dict(d.buckets)["signatures and AEAD"] == 0.6
    assert bucket_of("wait (threading.py)").startswith("thread hand-off")
    assert digest(tmp_path / "missing.txt").samples == 0


def test_latency_plot_is_svg(tmp_path: Path) -> None:
    levels = [{"offered_tx_per_s": 10.0, "p50_ms": 80.0, "p99_ms": 150.0, "committed_tx_per_s": 10.0},
              {"offered_tx_per_s": 20.0, "p50_ms": 120.0, "p99_ms": 1500.0, "committed_tx_per_s": 18.0}]
    path = latency_plot(levels, tmp_path / "plot.svg", 1000.0)
    root = ET.fromstring(path.read_text())
    assert root.tag.endswith("svg")
    polylines = [e for e in root.iter() if e.tag.endswith("polyline")]
    assert len(polylines) == 2


DUMP = """Process 11576: python -m node.peer --config x/node.yaml
Python v3.11.7 (/usr/bin/python3.11)

Thread 11576 (idle): "MainThread"
    Condition.wait (threading.py:331)
    Event.wait (threading.py:629)
    main (node/peer/__main__.py:66)
Thread 11637 (active): "Thread-1 (_serve)"
    _serve (grpc/_server.py:1314)
    Thread.run (threading.py:982)
Thread 11650 (active+gil): "raft-1"
    Chain._loop (node/orderer/chain.py:300)
Thread 11700 (idle): "deliver-client"
    _wait_once (grpc/_common.py:114)
    _Rendezvous.__next__ (grpc/_channel.py:543)
    DeliverClient._pull (node/peer/deliver_client.py:326)
"""


def test_thread_labels_come_from_the_first_frame_that_is_not_a_wait() -> None:
    assert threads.parse_dump(DUMP) == {
        11576: "MainThread: main",
        11637: "Thread-1 (_serve): _serve",
        11650: "raft-1: Chain._loop",
        11700: "deliver-client: _wait_once",
    }
    assert threads.parse_dump("") == {}


def test_top_threads_ranks_switches_per_tx_and_skips_partial_threads() -> None:
    ms = 1_000_000  # ns
    before = {("peer.p01", 10, 10): (100, 9, 0, "python"), ("peer.p01", 10, 11): (0, 9, 0, "event_engine"),
              ("peer.p01 workers", 12, 12): (5, 9, 0, "python"), ("client", 1, 1): (0, 9, 0, "python"),
              ("client", 1, 2): (7, 9, 0, "gone")}
    after = {("peer.p01", 10, 10): (300, 99, 250 * ms, "python"),
             ("peer.p01", 10, 11): (500, 99, 20 * ms, "event_engine"),
             ("peer.p01 workers", 12, 12): (105, 99, 100 * ms, "python"),
             ("client", 1, 1): (50, 99, 30 * ms, "python"),
             ("client", 1, 3): (999, 99, 999 * ms, "born in the window")}
    out = threads.top_threads(before, after, {10: "MainThread: main"}, txs=100, limit=2)
    assert out["per_tx_total"] == 8.5  # (200 + 500 + 100 + 50) / 100
    assert out["per_tx_by_process"] == {"client": 0.5, "peer.p01": 7.0, "peer.p01 workers": 1.0}
    assert out["top"] == [{"process": "peer.p01", "thread": "event_engine", "per_tx": 5.0},
                          {"process": "peer.p01", "thread": "MainThread: main", "per_tx": 2.0}]
    # CPU ranks differently: the thread that switches most is not the one that computes most
    assert out["cpu_ms_per_tx_total"] == 4.0  # (250 + 20 + 100 + 30) ms / 100
    assert out["cpu_ms_per_tx_by_process"] == {"client": 0.3, "peer.p01": 2.7, "peer.p01 workers": 1.0}
    assert out["cpu_top"] == [{"process": "peer.p01", "thread": "MainThread: main", "cpu_ms_per_tx": 2.5},
                              {"process": "peer.p01 workers", "thread": "python", "cpu_ms_per_tx": 1.0}]


def test_snapshot_and_local_labels_see_this_process_threads() -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, args=(10,), name="idler")
    t.start()
    try:
        snap = threads.snapshot({}, {"me": os.getpid()})
        labels = threads.local_labels()
        assert t.native_id is not None
        assert ("me", os.getpid(), t.native_id) in snap
        assert {name for name, _pid, _tid in snap} == {"me"}
        assert labels[t.native_id].startswith("idler")
        assert labels[threading.main_thread().native_id or 0].startswith("MainThread: ")
        # the labelling thread is named by its caller, not by local_labels itself
        assert labels[threading.get_native_id()] == "MainThread: test_snapshot_and_local_labels_see_this_process_threads"
    finally:
        stop.set()
        t.join(5)


def test_summary_shows_switches_and_cpu_by_thread(tmp_path: Path) -> None:
    sw = {"per_tx_total": 8.5, "per_tx_by_process": {"peer.p01": 8.5},
          "top": [{"process": "peer.p01", "thread": "event_engine", "per_tx": 5.0}],
          "cpu_ms_per_tx_total": 2.7, "cpu_ms_per_tx_by_process": {"peer.p01": 2.7},
          "cpu_top": [{"process": "peer.p01", "thread": "MainThread: main", "cpu_ms_per_tx": 2.5}]}
    text = write_summary({"profile": {"thread_switches": sw}}, tmp_path / "s.md").read_text()
    assert "| peer.p01 | event_engine | 5.0 |" in text
    assert "### CPU per committed tx at peak, thread by thread" in text
    assert "2.7 ms in all" in text and "| peer.p01 | MainThread: main | 2.5 |" in text
    # an older result without the CPU figures still renders, without the CPU table
    del sw["cpu_top"]
    text = write_summary({"profile": {"thread_switches": sw}}, tmp_path / "s.md").read_text()
    assert "| peer.p01 | event_engine | 5.0 |" in text and "thread by thread" not in text


def test_make_bench_summary_shows_scalar_groups_and_skips_deeper_ones() -> None:
    doc = {"benchmark": "commit", "machine": {"cores": 2}, "ratio": 0.7,
           "small_blocks": {"cpu_ms_per_tx": 0.4, "txs_per_block": 13},
           "levels": [{"a": 1}], "profile": {"client": {"samples": 3}}}
    assert summary_lines(doc) == ["* `ratio`: 0.7", "* `small_blocks.cpu_ms_per_tx`: 0.4",
                                  "* `small_blocks.txs_per_block`: 13"]


def test_the_e2e_patients_file_passes_the_strict_sample_data_reader(tmp_path: Path) -> None:
    """bench.e2e_net writes its 240 patients as a sample-data file for the client's loader,
    which reads it strictly (no YAML aliases: node.yamlfile). Entries sharing the template's
    nested values were dumped as aliases and refused, so ``make bench`` stopped before any
    load level."""
    from types import SimpleNamespace

    from netgen.sampledata import read_sample_data

    from bench.e2e_net import enrol_patients

    loaded: list[dict[str, object]] = []
    boot = SimpleNamespace(load_sample_data=lambda path: loaded.append(read_sample_data(path)))
    patients = enrol_patients(boot, SimpleNamespace(secret=b"s" * 32), 4, tmp_path)  # type: ignore[arg-type]
    assert len(patients) == 4 and len(loaded) == 1
    entries = loaded[0]["patients"]
    assert isinstance(entries, list) and [e["name"] for e in entries] == [f"bench-patient-{i:04d}" for i in range(4)]
    assert "&id" not in (tmp_path / "bench-patients-000.yaml").read_text()


def test_the_e2e_patients_are_loaded_in_files_the_strict_reader_accepts(tmp_path: Path) -> None:
    """More patients than one sample-data file may hold (the reader's 4 MiB bound: ~10,900)
    go in several files, each loaded in turn, every patient once and in order."""
    from types import SimpleNamespace

    from netgen.sampledata import read_sample_data

    from bench.e2e_net import PATIENTS_PER_FILE, enrol_patients
    from node.yamlfile import MAX_CONFIG_BYTES

    loaded: list[dict[str, object]] = []
    boot = SimpleNamespace(load_sample_data=lambda path: loaded.append(read_sample_data(path)))
    patients = enrol_patients(boot, SimpleNamespace(secret=b"s" * 32), 7, tmp_path,  # type: ignore[arg-type]
                              per_file=3)
    names = [e["name"] for doc in loaded for e in doc["patients"]]  # type: ignore[attr-defined]
    assert len(patients) == 7 and len(loaded) == 3 and names == [f"bench-patient-{i:04d}" for i in range(7)]
    # a full file stays within the reader's bound, with a fifth to spare for longer names
    one = tmp_path / "one"
    one.mkdir()
    enrol_patients(SimpleNamespace(load_sample_data=lambda path: None),  # type: ignore[arg-type]
                   SimpleNamespace(secret=b"s" * 32), 1, one)  # type: ignore[arg-type]
    assert len((one / "bench-patients-000.yaml").read_bytes()) * 1.2 * PATIENTS_PER_FILE < MAX_CONFIG_BYTES


def test_the_sandbox_pool_counters_are_read_from_each_peers_metrics_endpoint() -> None:
    """The e2e levels record workers replaced per peer (each a process start counted in the
    peer's CPU): read from a real peer metrics endpoint on 127.0.0.1, as a delta; a peer
    whose endpoint does not answer is left out."""
    import socket

    from bench.e2e_bench import pool_delta, replaced_by_cause, sandbox_counters
    from node.peer.metrics import PeerMetrics

    stats = {"workers": 4, "restarts": 1, "invocations": 10, "evictions": 2,
             "replaced_rss": 1, "replaced_evict_spare": 2, "replaced_wall_timeout": 0}
    metrics = PeerMetrics("peer.x")
    metrics.watch_sandbox(lambda: dict(stats))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with socket.socket() as d:
            d.bind(("127.0.0.1", 0))
            dead = d.getsockname()[1]  # closed again below: nothing listens there
    metrics.serve(port)
    try:
        before = sandbox_counters({"peer.x": port, "peer.gone": dead})
        assert before == {"peer.x": {"evictions": 2.0, "restarts": 1.0, "invocations": 10.0,
                                     "replaced_rss": 1.0, "replaced_evict_spare": 2.0,
                                     "replaced_wall_timeout": 0.0}}
        stats.update(evictions=7, invocations=25, replaced_evict_spare=7)
        after = sandbox_counters({"peer.x": port})
        delta = pool_delta(before, after)
        assert delta == {"peer.x": {"evictions": 5, "restarts": 0, "invocations": 15,
                                    "replaced_rss": 0, "replaced_evict_spare": 5,
                                    "replaced_wall_timeout": 0}}
        # the level's figure over every peer: the causes seen, and the total replaced
        assert replaced_by_cause({**delta, "peer.y": {"restarts": 2, "evictions": 0,
                                                      "replaced_rss": 2}}) == {
            "evict_spare": 5, "rss": 2, "total": 7}
    finally:
        metrics.close()


def test_settle_runs_unmeasured_load_at_the_levels_rate_and_reports_its_replacements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool shifting its workers between contracts for a new rate's mix replaced them
    inside the level's CPU meter (5-7 at the first 60 tx/s level, 0 later): ``--settle``
    runs that load before the level, without a meter, and says what it replaced."""
    import bench.e2e_bench as e2e

    runs: list[tuple[Any, ...]] = []
    readings = iter([{"peer.x": {"evictions": 1.0, "restarts": 0.0, "replaced_evict_spare": 1.0}},
                     {"peer.x": {"evictions": 3.0, "restarts": 0.0, "replaced_evict_spare": 3.0}}])

    def run_level(*a: Any, **kw: Any) -> dict[str, Any]:
        runs.append((*a, kw))
        return {"lost": 2}  # (2 not finished within the settle's drain)

    monkeypatch.setattr(e2e, "run_level", run_level)
    monkeypatch.setattr(e2e, "sandbox_counters", lambda ports: next(readings))
    world, meter = object(), SimpleNamespace(ports={"peer.x": 1})
    assert e2e.settle_pool(world, 60.0, 0.0, meter) is None  # type: ignore[arg-type]
    assert runs == []
    got = e2e.settle_pool(world, 60.0, 5.0, meter)  # type: ignore[arg-type]
    assert runs == [(world, 60.0, 5.0, 0.0, {})]  # no CpuMeter: not measured
    assert got == {"s": 5.0, "replaced": {"evict_spare": 2, "total": 2}, "lost": 2}
