"""Chaos on real processes: nothing acknowledged is lost, nothing is duplicated or invented,
no peer forks, no prescription is dispensed twice, settlements stay balanced.

The short run (``make test``) injects each of kill -9 of the Raft leader, kill -9 of a peer,
SIGSTOP of an orderer, a partition, a connection cut, a full disk and the loss of the
orderer quorum once, in a seeded order (the full-disk peer must stop committing while the others go on, and commit again by
itself once space is back); ``RXCHAIN_CHAOS_LONG=1`` (``make chaos``) runs 25
faults: every kind of tests/fault/schedule.py once (one-way black holes, delays, follower
kills, paused peers, a peer killed while an orderer is black-holed ...) plus random draws.
The orderers' chains are compared too.
``RXCHAIN_CHAOS_SEED`` picks the seed (printed, so a failing run can be replayed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fault.chaos import ChaosRun
from tests.fault.schedule import make_schedule
from tests.harness.consortium import Consortium
from tests.harness.load import LoadGenerator, Role
from tests.harness.network import start_network
from tests.harness.procs import ProcessManager, log_tail
from tests.harness.proxy import FaultProxy

LONG = os.environ.get("RXCHAIN_CHAOS_LONG") == "1"
SEED = int(os.environ.get("RXCHAIN_CHAOS_SEED", "20261125"))
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
DISK_PEER = "peer.h02"


def prescription_load(cons: Consortium, seed: int) -> LoadGenerator:
    """Two doctors, two pharmacists racing each other on different peers, one clerk."""
    return LoadGenerator(
        cons,
        doctors=[Role("h01", "dr-test", "peer.h01"), Role("h02", "dr-test", "peer.h02")],
        pharmacists=[Role("p01", "pharm-test", "peer.p01"), Role("p01", "pharm-test", "peer.ins01")],
        clerk=Role("ins01", "clerk-test", "peer.ins01"),
        seed=seed,
    )


@pytest.mark.integration
@pytest.mark.timeout(900 if LONG else 240)
def test_chaos(tmp_path: Path, procs: ProcessManager, fault_proxy: FaultProxy) -> None:
    net = start_network(tmp_path / "net", procs, fault_proxy, disk_peer=DISK_PEER)
    cons = net.cons
    try:
        schedule = make_schedule(SEED, cons.orderer_names(), cons.peer_names(), DISK_PEER, long=LONG)
        assert net.disk is not None
        print(f"\nchaos seed {SEED} ({'long' if LONG else 'short'}), small disk: {net.disk.mode} "
              f"{net.disk.fallback_reason}".rstrip())
        for pf in schedule:
            print("  " + pf.describe())
        load = prescription_load(cons, SEED)
        run = ChaosRun(cons, procs, load, net.disk, DISK_PEER, schedule, allowed=net.lifecycle_tx_ids)
        report = run.run()
    finally:
        net.close()
    print(report.table())
    print("client outcomes:", dict(sorted(load.rec.outcomes.items())))
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"seed": SEED, "long": LONG, "small_disk": net.disk.mode, **report.to_dict(),
           "client_outcomes": dict(load.rec.outcomes)}
    (RESULTS / ("chaos_long.json" if LONG else "chaos.json")).write_text(json.dumps(doc, indent=2, default=str))
    if not report.ok:
        for name in {p.split(":")[0].split(" ")[0] for p in report.lagging + report.divergent_peers}:
            if name in cons.peer_names():
                print(f"--- log tail of {name}\n{log_tail(cons.log_path(name), 3000)}")
    assert report.ok, "\n".join(report.problems())
    stuck = [f"{f.kind} on {f.target}: {f.note}" for f in report.faults if "stuck" in f.note]
    assert not stuck, f"nodes that needed a restart to recover: {stuck}"
    # the full disk really stopped the peer (while the rest went on), and it recovered by itself
    assert all(f.full_disk_effective for f in report.faults if f.kind == "disk_full"), report.faults
    assert report.acknowledged > 50, "the load made too little progress to prove anything"
    assert len(report.faults) == len(schedule)
