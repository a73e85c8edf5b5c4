"""Free ports and the consortium generator / proxy rewiring."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml

from node.config import load_node_config
from tests.harness.consortium import generate_consortium, links_of, route_through_proxies
from tests.harness.ports import free_base_port, free_ports, port_is_free
from tests.harness.proxy import FaultProxy


def test_free_ports_are_free_and_distinct() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(port_is_free(p) for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert not port_is_free(s.getsockname()[1])
    base = free_base_port(5)
    assert all(port_is_free(base + off + i) for off in (0, 200) for i in range(5))


def test_consortium_and_proxy_rewiring(tmp_path: Path, fault_proxy: FaultProxy) -> None:
    cons = generate_consortium(tmp_path / "net")
    assert cons.orderer_names() == ["orderer.ins01", "orderer.ins02", "orderer.ins03"]
    assert sorted(cons.peer_names()) == ["peer.h01", "peer.h02", "peer.ins01", "peer.p01"]
    for name in cons.orderer_names() + cons.peer_names():
        assert port_is_free(cons.node(name).port)
        assert cons.argv(name)[-1] == str(cons.config_path(name))
    links = route_through_proxies(cons, fault_proxy)
    assert len(links) == 7 * 6
    cfg = load_node_config(cons.config_path("peer.h01"))
    for ep in cfg.orderers + cfg.peers:
        link = links[("peer.h01", ep.name)]
        assert ep.port == link.port and link.target[1] == cons.node(ep.name).port
    raw = yaml.safe_load(cons.config_path("peer.h01").read_text())
    assert raw["port"] == cons.node("peer.h01").port  # its own listen port is unchanged
    assert len(links_of(cons, "orderer.ins02")) == 12
