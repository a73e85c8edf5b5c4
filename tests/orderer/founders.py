"""A network whose genesis names orderers 1, 2 and X=3, served in this process, for the
--first-start tests: X is a founding orderer that never ran; orderers past 3 (``orderer_orgs``)
are not in the genesis and join by config updates."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rxchain.v1 import config_pb2

from node.config import NodeConfig, load_node_config
from node.genesis import make_genesis
from node.orderer.server import OrdererServer, serve
from tests.orderer.cluster import Client, make_network, wait_until
from tests.orderer.inproc import LoggedMessages
from tests.orderer.test_onboard import _with_orderers

X = 3


@dataclass
class Founders:
    """The network (``full``: its config naming every orderer; ``start``: the genesis one, 1-3),
    every orderer's node config and address by raft id, a client, and the servers started."""

    net: Any
    full: config_pb2.ConsortiumConfig
    start: config_pb2.ConsortiumConfig
    configs: dict[int, NodeConfig]
    targets: dict[int, str]
    client: Client
    servers: dict[int, OrdererServer] = field(default_factory=dict)

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop(0)


def founders(tmp_path: Path, first_start_wait_ms: int, **network: Any) -> Founders:
    """The network under ``tmp_path`` (``network``: make_network's options); X waits
    ``first_start_wait_ms`` for the answers of a --first-start check."""
    net = make_network(tmp_path / "net", **network)
    full = net.config
    start = _with_orderers(full, [1, 2, X], full.sequence)
    net.genesis_path.write_bytes(make_genesis(start, int(time.time() * 1000)).SerializeToString())
    configs = {n.raft_id: load_node_config(net.node_config_path(n.name)) for n in net.orderers()}
    targets = {rid: f"127.0.0.1:{n.port}" for rid, n in zip(configs, net.orderers(), strict=True)}
    configs[X] = replace(configs[X], extra={**configs[X].extra, "first_start_wait_ms": first_start_wait_ms})
    return Founders(net, full, start, configs, targets, Client(net))


@contextlib.contextmanager
def server_log() -> Iterator[LoggedMessages]:
    """What node.orderer.server logs (INFO and above) meanwhile, in this process."""
    events = LoggedMessages()
    log = logging.getLogger("node.orderer.server")
    level = log.level
    log.addHandler(events)
    log.setLevel(logging.INFO)
    try:
        yield events
    finally:
        log.removeHandler(events)
        log.setLevel(level)


def restart_x_first(f: Founders, others: tuple[int, ...]) -> OrdererServer | BaseException:
    """The network restarted, X first with --first-start (the flag left on its command line):
    once X waits for the answers, ``others`` come back (stopped first if running); what X's
    start gave -- its server, or what it raised."""
    for rid in others:
        if rid in f.servers:
            f.servers.pop(rid).stop(0)
    outcome: list[OrdererServer | BaseException] = []

    def start() -> None:
        try:
            outcome.append(serve(f.configs[X], first_start=True))
        except BaseException as exc:  # the caller judges it
            outcome.append(exc)

    with server_log() as events:
        thread = threading.Thread(target=start)
        thread.start()
        wait_until(lambda: any("raft_first_start_waiting" in e for e in events.seen) or outcome, 30,
                   what="X waiting for the answers")
        for rid in others:
            f.servers[rid] = serve(f.configs[rid])
        thread.join(45)
    assert outcome, "X's start did not end"
    if isinstance(outcome[0], OrdererServer):
        f.servers[X] = outcome[0]
    return outcome[0]
