"""A node's stop ends its stream caps' sweeper (node.stream_caps): it ran on after the stop,
checking the slots of calls the stop had cancelled, as neither the peer's nor the orderer's stop
closed the caps. An orderer's stop ends its gRPC worker threads too."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast
from unittest.mock import MagicMock

from rxchain.v1 import services_pb2

from node.config import load_node_config
from node.crypto.x509 import pem_to_der
from node.orderer.server import serve
from node.peer.server import PeerNode
from node.stream_caps import StreamCaps
from tests.orderer.cluster import Client, make_network, wait_until

WAIT_S = 10.0


def test_an_orderers_stop_ends_its_stream_sweeper(tmp_path: Path) -> None:
    """A client follows the orderer's blocks (its caller checked again by the sweeper, which
    runs while the call is open); once the orderer stopped, the sweeper thread is gone."""
    net = make_network(tmp_path / "net", orderer_orgs=1)
    server = serve(load_node_config(net.node_config_path("orderer.ins01")))
    stopped = False
    channel = Client(net).channel(f"127.0.0.1:{net.orderers()[0].port}")
    call: Any = None
    try:
        call = channel.unary_stream(
            "/rxchain.v1.AtomicBroadcast/Deliver", request_serializer=services_pb2.DeliverRequest.SerializeToString,
            response_deserializer=services_pb2.DeliverResponse.FromString,
        )(services_pb2.DeliverRequest(start_block=1000, follow=True), timeout=30)
        caps = server.streams
        assert caps is not None
        sweeper = wait_until(lambda: caps.sweeper, WAIT_S, what="the sweeper to start")
        assert sweeper.is_alive()
        server.stop(0)
        stopped = True
        sweeper.join(WAIT_S)  # (stop joins it: bounded, not a wait the test relies on)
        assert not sweeper.is_alive() and caps.sweeper is None
    finally:
        if call is not None:
            call.cancel()
        channel.close()
        if not stopped:
            server.stop(0)


def test_a_peers_stop_ends_its_stream_sweeper(tmp_path: Path) -> None:
    """The peer's stop path (its parts stand-ins, the caps real): a slot open, the sweeper runs
    (a minute between sweeps); the stop closes the caps and the sweeper thread ends."""
    net = make_network(tmp_path / "net", orderer_orgs=1)
    pem = (net.user_dir("h01", "dr") / "cert.pem").read_bytes()
    caps = StreamCaps(total=4, per_caller=4, recheck=lambda _ident: None, sweep_s=60)
    context = MagicMock()
    context.auth_context.return_value = {"x509_pem_cert": [pem]}
    context.add_callback.return_value = True
    caps.admit(cast(Any, context), pem_to_der(pem), "PeerDeliver.Deliver")
    sweeper = caps.sweeper
    assert sweeper is not None and sweeper.is_alive()
    parts = [MagicMock() for _ in range(11)]
    node: PeerNode = cast(Any, PeerNode)(*parts, streams=caps)
    try:
        node.stop(0)
        sweeper.join(WAIT_S)  # bounded: a minute to its next sweep, it ran on before
        assert not sweeper.is_alive() and caps.sweeper is None
    finally:
        caps.close()


def test_an_orderers_stop_ends_its_grpc_workers(tmp_path: Path) -> None:
    """Calls served (workers started), the orderer stopped: its pool's threads end. Before,
    grpc.server never shut the pool it was given down: its idle workers stayed for the life of
    the process, two or three per stopped orderer."""
    net = make_network(tmp_path / "net", orderer_orgs=1)
    config = load_node_config(net.node_config_path("orderer.ins01"))
    server = serve(config)
    stopped = False
    prefix = f"grpc-{config.name}"
    channel = Client(net).channel(f"127.0.0.1:{net.orderers()[0].port}")
    try:
        health = channel.unary_unary("/rxchain.v1.Admin/Health",
                                     request_serializer=services_pb2.HealthRequest.SerializeToString,
                                     response_deserializer=services_pb2.HealthResponse.FromString)
        for _ in range(4):
            health(services_pb2.HealthRequest(), timeout=WAIT_S)
        assert [t for t in threading.enumerate() if t.name.startswith(prefix)]
        server.stop(0)
        stopped = True
        wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith(prefix)], WAIT_S,
                   what="the stopped orderer's gRPC workers to end")
    finally:
        channel.close()
        if not stopped:
            server.stop(0)
