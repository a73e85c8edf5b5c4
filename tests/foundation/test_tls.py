"""Mutual TLS: a server built from node material accepts members and refuses others."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from netgen import GeneratedNetwork
from rxchain.v1 import services_pb2, services_pb2_grpc

from node.crypto import tls


class _Admin(services_pb2_grpc.AdminServicer):
    def Health(self, request: services_pb2.HealthRequest, context: grpc.ServicerContext) -> services_pb2.HealthResponse:
        ident = tls.peer_identity(context)
        return services_pb2.HealthResponse(serving=True, node=ident.org if ident else "", detail="")

    def Status(self, request: services_pb2.StatusRequest, context: grpc.ServicerContext) -> services_pb2.StatusResponse:
        return services_pb2.StatusResponse(node="test")


@pytest.fixture
def server(network: GeneratedNetwork) -> Iterator[tuple[int, Path]]:
    ndir = network.home / "nodes" / "peer.h01"
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    services_pb2_grpc.add_AdminServicer_to_server(_Admin(), srv)
    port = srv.add_secure_port("127.0.0.1:0", tls.server_credentials(ndir / "cert.pem", ndir / "key.pem", ndir / "ca-bundle.pem"))
    srv.start()
    try:
        yield port, ndir
    finally:
        srv.stop(grace=None)


def test_member_client_is_identified(server: tuple[int, Path], network: GeneratedNetwork) -> None:
    port, ndir = server
    user = network.user_dir("p01", "pharm-wang")
    with tls.secure_channel(f"127.0.0.1:{port}", user / "cert.pem", user / "key.pem", ndir / "ca-bundle.pem") as ch:
        resp = services_pb2_grpc.AdminStub(ch).Health(services_pb2.HealthRequest(), timeout=10)
    assert resp.serving and resp.node == "p01"


def test_client_without_certificate_is_refused(server: tuple[int, Path]) -> None:
    port, ndir = server
    creds = grpc.ssl_channel_credentials(root_certificates=(ndir / "ca-bundle.pem").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=tls.channel_options(1 << 20)) as ch:
        with pytest.raises(grpc.RpcError) as e:
            services_pb2_grpc.AdminStub(ch).Health(services_pb2.HealthRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_from_foreign_ca_is_refused(server: tuple[int, Path], tmp_path: Path) -> None:
    from netgen import generate

    from .conftest import FIXED_NOW, small_consortium

    foreign = generate(small_consortium(), tmp_path / "other", clock=lambda: FIXED_NOW)
    port, ndir = server
    user = foreign.user_dir("h01", "dr-jiang")
    with tls.secure_channel(f"127.0.0.1:{port}", user / "cert.pem", user / "key.pem", ndir / "ca-bundle.pem") as ch:
        with pytest.raises(grpc.RpcError) as e:
            services_pb2_grpc.AdminStub(ch).Health(services_pb2.HealthRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_pinned_channel_refuses_another_orgs_node(server: tuple[int, Path], network: GeneratedNetwork) -> None:
    """Pinned to peer.p01 (name) and p01's CA, a client refuses peer.h01's certificate, which
    the unpinned channel accepts; pinned to peer.h01 and h01's CA it connects."""
    port, ndir = server
    user = network.user_dir("p01", "pharm-wang")
    target = f"127.0.0.1:{port}"

    def health(**pin: Any) -> services_pb2.HealthResponse:
        with tls.secure_channel(target, user / "cert.pem", user / "key.pem", ndir / "ca-bundle.pem",
                                **pin) as ch:
            return services_pb2_grpc.AdminStub(ch).Health(services_pb2.HealthRequest(), timeout=5)

    assert health().serving  # unpinned: any consortium node certificate would do
    p01_ca = (network.home / "orgs" / "p01" / "ca.pem").read_bytes()
    h01_ca = (network.home / "orgs" / "h01" / "ca.pem").read_bytes()
    for pin in ({"server_name": "peer.p01", "root_certificates": p01_ca},
                {"server_name": "peer.p01"},                           # right CA bundle, wrong name
                {"server_name": "peer.h01", "root_certificates": p01_ca}):  # right name, wrong CA
        with pytest.raises(grpc.RpcError) as e:
            health(**pin)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert health(server_name="peer.h01", root_certificates=h01_ca).serving


def test_node_channels_pin_each_target_to_its_node(server: tuple[int, Path], network: GeneratedNetwork) -> None:
    """A node dials another through NodeChannels: the target's node in the configuration in
    force decides the name and the CA the server must show. The server here is peer.h01; listed
    at its address it connects, while p01's peer listed at that address (an h01 key answering
    for p01) is refused; an address of no configured node gets the unpinned channel."""
    from node.genesis import config_from_genesis, read_genesis

    port, ndir = server
    target = f"127.0.0.1:{port}"
    base = config_from_genesis(read_genesis(network.genesis_path))

    def config_with(name: str) -> Any:
        cfg = type(base)()
        cfg.CopyFrom(base)
        for p in cfg.peers:
            if p.name == name:
                p.host, p.port = "127.0.0.1", port
        return cfg

    def health(cfg: Any) -> services_pb2.HealthResponse:
        user = network.user_dir("h02", "admin")
        channels = tls.NodeChannels(user / "cert.pem", user / "key.pem", ndir / "ca-bundle.pem",
                                    tls.channel_options(1 << 20), lambda: cfg)
        with channels(target) as ch:
            return services_pb2_grpc.AdminStub(ch).Health(services_pb2.HealthRequest(), timeout=5)

    h01 = config_with("peer.h01")
    assert tls.NodeChannels(ndir / "cert.pem", ndir / "key.pem", ndir / "ca-bundle.pem", [],
                            lambda: h01).pin(target) == ("peer.h01", (network.home / "orgs/h01/ca.pem").read_bytes())
    assert health(h01).serving
    with pytest.raises(grpc.RpcError) as e:
        health(config_with("peer.p01"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert health(base).serving  # no configured node at this address: unpinned


def test_node_channels_trust_a_rotated_ca_from_the_operators_bundle(
    server: tuple[int, Path], network: GeneratedNetwork
) -> None:
    """A node catching up from an older configuration knows an organisation's previous CA;
    the organisation's nodes already show certificates of its new CA, which the operator put
    into the node's bundle: the pin trusts bundle CAs naming the organisation -- unless the
    configuration gives that CA to another organisation."""
    import datetime as dt

    from node.crypto import signing
    from node.crypto import x509 as rx509
    from node.genesis import config_from_genesis, read_genesis

    port, ndir = server
    target = f"127.0.0.1:{port}"
    base = config_from_genesis(read_genesis(network.genesis_path))
    previous_ca = rx509.cert_to_der(rx509.make_ca("h01", signing.generate_key(), dt.datetime.now(dt.UTC)))
    current_ca = next(o.ca_cert_der for o in base.organizations if o.id == "h01")

    def config(h01_ca: bytes, p01_ca: bytes | None = None) -> Any:
        cfg = type(base)()
        cfg.CopyFrom(base)
        next(p for p in cfg.peers if p.name == "peer.h01").port = port
        next(o for o in cfg.organizations if o.id == "h01").ca_cert_der = h01_ca
        if p01_ca is not None:
            next(o for o in cfg.organizations if o.id == "p01").ca_cert_der = p01_ca
        return cfg

    def health(cfg: Any) -> bool:
        user = network.user_dir("h02", "admin")
        channels = tls.NodeChannels(user / "cert.pem", user / "key.pem", ndir / "ca-bundle.pem",
                                    tls.channel_options(1 << 20), lambda: cfg)
        with channels(target) as ch:
            try:
                return services_pb2_grpc.AdminStub(ch).Health(services_pb2.HealthRequest(), timeout=5).serving
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                return False

    assert health(config(previous_ca))  # the bundle's h01 CA signs the server's certificate
    assert not health(config(previous_ca, p01_ca=current_ca))  # ... but the config says it is p01's
