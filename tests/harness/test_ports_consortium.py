"""Free ports and the consortium generator / proxy rewiring."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml
from netgen.ports import ephemeral_low

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


def test_base_ports_stay_below_the_kernels_ephemeral_range(tmp_path: Path) -> None:
    """Outgoing connections take ports from the ephemeral range; a node port there could be
    taken between the probe and the node's bind. Every base (and its metrics run) is below."""
    low = ephemeral_low()
    assert all(free_base_port(5) + 200 + 5 <= low for _ in range(50))
    rng = tmp_path / "range"
    rng.write_text("40000\t60999\n")
    assert ephemeral_low(str(rng)) == 40000
    rng.write_text("garbage")
    assert ephemeral_low(str(rng)) == 32768
    assert ephemeral_low(str(tmp_path / "absent")) == 32768


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
