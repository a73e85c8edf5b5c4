"""A peer whose disk fills up under load: it must not corrupt or lose anything, and once
space is back it must catch up by itself (no operator restart)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.fault.test_chaos import prescription_load
from tests.harness.checker import check, peer_view
from tests.harness.network import RunningNetwork, start_network
from tests.harness.procs import ProcessManager, log_tail
from tests.harness.rpc import admin_status

DISK_PEER = "peer.h02"


def _height(net: RunningNetwork, name: str) -> int:
    try:
        return int(admin_status(net.cons.target(name), net.cons.node_creds(name)).height)
    except grpc.RpcError:
        return -1


def _wait(pred: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_full_disk_peer_loses_nothing_and_catches_up(tmp_path: Path, procs: ProcessManager) -> None:
    net = start_network(tmp_path / "net", procs, orderers=1, disk_peer=DISK_PEER, disk_bytes=32 << 20)
    assert net.disk is not None
    cons = net.cons
    orderer = cons.orderer_names()[0]
    load = prescription_load(cons, seed=7)
    try:
        load.start(flow_workers=2, racers=1)
        assert _wait(lambda: len(load.rec.acks) > 20, 30)
        net.disk.attach(procs[DISK_PEER].pid)
        net.disk.fill()
        stuck_at = _height(net, DISK_PEER)
        # the rest of the consortium keeps committing while the peer's disk is full
        before = len(load.rec.acks)
        assert _wait(lambda: len(load.rec.acks) > before + 20, 30), dict(load.rec.outcomes)
        assert _wait(lambda: _height(net, orderer) > stuck_at + 3, 30)
        full_height = _height(net, DISK_PEER)
        assert full_height <= stuck_at + 1, "the peer kept committing on a full disk?"
        net.disk.drain()
        # Self-recovery: the peer should commit again once there is space (no restart).
        self_recovered = _wait(lambda: _height(net, DISK_PEER) > max(full_height, 0) + 1, 15)
        survived = procs[DISK_PEER].running()
        load.stop()
        if not self_recovered:
            if procs[DISK_PEER].running():
                procs.kill9(DISK_PEER)
            procs.restart(DISK_PEER)
            procs.wait_healthy(DISK_PEER, lambda: cons.healthy(DISK_PEER), 60)
        target = _height(net, orderer)
        assert _wait(lambda: all(_height(net, p) == target for p in cons.peer_names()), 60), \
            {p: _height(net, p) for p in cons.peer_names()}
        for p in cons.peer_names():
            procs.terminate(p)
        views = [peer_view(p, cons.data_dir(p), cons.net.genesis_path) for p in cons.peer_names()]
        report = check(views, load.rec.acks, load.rec.submitted, allowed=net.lifecycle_tx_ids,
                       prescription_ns="rxload", settlement_ns="rxload")
        print(report.table())
        assert report.ok, "\n".join(report.problems())
    finally:
        log = log_tail(cons.log_path(DISK_PEER), 1500)
        net.close()
    assert self_recovered, (
        f"after ENOSPC the peer {'stayed up' if survived else 'exited'} but did not commit again within 15 s "
        "of the space coming back (it was restarted by the test to check the rest); log tail:\n" + log[-800:])
