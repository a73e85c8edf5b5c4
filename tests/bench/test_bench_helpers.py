"""Unit tests of the benchmark helpers: level statistics, pass rule, crypto bound, CPU
accounting from /proc, py-spy digests and the SVG plot."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench.e2e_bench import crypto_bound, level_stats, passes, percentile
from bench.e2e_load import Recorder, TxResult
from bench.procstat import group_cpu, group_pids, process_cpu_s
from bench.profiles.pyspy import bucket_of, digest
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


def test_passes_needs_delivery_latency_and_nothing_lost() -> None:
    base = {"p99_ms": 900.0, "lost": 0, "stories_failed": 0, "committed_tx_per_s": 95.0,
            "offered_tx_per_s": 100.0}
    assert passes(base)
    assert not passes({**base, "p99_ms": 1001.0})
    assert not passes({**base, "committed_tx_per_s": 80.0})
    assert not passes({**base, "stories_failed": 1})


def test_crypto_bound_arithmetic() -> None:
    cb = crypto_bound({"sign_per_s": 10_000.0, "verify_per_s": 5_000.0}, txs_per_block=1e9, cores=2)
    # 4 signs (0.4 ms) + 15 verifies (3 ms) = 3.4 ms per tx per core
    assert cb["crypto_ms_per_tx"] == pytest.approx(3.4, rel=1e-3)
    assert cb["crypto_bound_tx_per_s"] == pytest.approx(2 / 0.0034, rel=1e-3)
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
    assert group_cpu(me).leader_s >= after  # sampled later, and includes reaped children
    assert process_cpu_s(2**22 + 12345) == 0.0  # no such process
    assert group_pids(os.getpgid(me))[0] == os.getpgid(me)


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
