"""Bring up a test consortium: generate, optionally front every node with a fault proxy and
give one peer a small disk, start every node, wait for health, deploy ``rxload``."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.consortium import Consortium, front_proxies, generate_consortium
from tests.harness.diskfull import SmallDisk
from tests.harness.load import deploy_rxload
from tests.harness.procs import ProcessManager
from tests.harness.proxy import FaultProxy


@dataclass
class RunningNetwork:
    """A started consortium; ``close`` (or the fixtures' finalisers) stops everything."""

    cons: Consortium
    procs: ProcessManager
    disk: SmallDisk | None = None
    disk_peer: str | None = None
    lifecycle_tx_ids: list[str] = field(default_factory=list)

    def all_nodes(self) -> list[str]:
        """Orderers then peers."""
        return self.cons.orderer_names() + self.cons.peer_names()

    def close(self) -> None:
        """Kill every process and unmount the small disk."""
        self.procs.close()
        if self.disk is not None:
            self.disk.unmount()


def start_network(home: Path, procs: ProcessManager, proxy: FaultProxy | None = None, *,
                  orderers: int = 3, disk_peer: str | None = None, disk_bytes: int = 64 << 20,
                  deploy: bool = True, health_timeout_s: float = 60.0) -> RunningNetwork:
    """Generate and start a consortium under ``home`` (see the module docstring)."""
    cons = generate_consortium(home, orderers=orderers)
    if proxy is not None:
        front_proxies(cons, proxy)
    net = RunningNetwork(cons, procs)
    if disk_peer is not None:
        net.disk = SmallDisk(cons.data_dir(disk_peer), disk_bytes)
        net.disk.mount()
        net.disk_peer = disk_peer
    try:
        for name in net.all_nodes():
            rlimit = net.disk is not None and name == disk_peer and net.disk.mode == "rlimit"
            # with the rlimit fallback the small-disk peer must ignore SIGXFSZ
            cons.start(procs, name, fsize_limit=(1 << 62) if rlimit else None)
        for name in net.all_nodes():
            procs.wait_healthy(name, functools.partial(cons.healthy, name), health_timeout_s)
        if deploy:
            net.lifecycle_tx_ids = deploy_rxload(cons)
    except BaseException:
        net.close()
        raise
    return net
