"""Mutual TLS: a server built from node material accepts members and refuses others."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from netgen import GeneratedNetwork
from rxchain.v1 import config_pb2, services_pb2, services_pb2_grpc

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


def test_node_channels_pin_a_target_listed_under_another_address_by_its_node_yaml_name(
    server: tuple[int, Path], network: GeneratedNetwork
) -> None:
    """The configuration lists peer.h01 as localhost:PORT, node.yaml as 127.0.0.1:PORT: the
    address alone finds no node and would leave the channel unpinned (any consortium node key
    could answer forwarded proposals). The node.yaml name pins it: the h01 server connects
    under its own name, and a node.yaml naming another organisation's peer there is refused."""
    from node.genesis import config_from_genesis, read_genesis

    port, ndir = server
    target = f"127.0.0.1:{port}"
    cfg = config_from_genesis(read_genesis(network.genesis_path))
    for p in cfg.peers:
        if p.name in ("peer.h01", "peer.p01"):
            p.host = "localhost"
    next(p for p in cfg.peers if p.name == "peer.h01").port = port

    def channels(names: dict[str, str]) -> tls.NodeChannels:
        user = network.user_dir("h02", "admin")
        return tls.NodeChannels(user / "cert.pem", user / "key.pem", ndir / "ca-bundle.pem",
                                tls.channel_options(1 << 20), lambda: cfg, names=names)

    assert channels({}).pin(target) is None
    h01 = channels({target: "peer.h01"})
    assert h01.pin(target) == ("peer.h01", (network.home / "orgs/h01/ca.pem").read_bytes())
    with h01(target) as ch:
        assert services_pb2_grpc.AdminStub(ch).Health(services_pb2.HealthRequest(), timeout=5).serving
    with channels({target: "peer.p01"})(target) as ch, pytest.raises(grpc.RpcError) as e:
        services_pb2_grpc.AdminStub(ch).Health(services_pb2.HealthRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def _handshake(ca_pem: bytes, cert_pem: bytes, key_pem: bytes, tmp: Path, server_name: str) -> None:
    """A TLS handshake in memory (no socket): the client trusts ``ca_pem`` only; raises
    ssl.SSLCertVerificationError if the server's chain does not build."""
    import ssl

    (tmp / "cert.pem").write_bytes(cert_pem)
    (tmp / "key.pem").write_bytes(key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=ca_pem.decode())
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):  # a TLS 1.3 handshake needs two round trips
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError(f"handshake did not finish: {done}")


def test_issued_certificates_chain_to_a_ca_whose_key_identifier_is_not_sha1_of_its_key(tmp_path: Path) -> None:
    """issue_cert names the CA's key in an AKID; an organisation bringing its existing CA (the
    generator keeps an orgs/<org>/ca.pem + ca.key it finds) may have an SKI derived otherwise
    (RFC 7093: truncated SHA-256). The AKID must repeat that SKI, or TLS finds no issuer."""
    import datetime as dt
    import hashlib
    import ssl

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes, serialization

    from node.crypto import signing
    from node.crypto import x509 as rx509

    now = dt.datetime.now(dt.UTC)
    ca_key = signing.generate_key()
    spki = ca_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ski = hashlib.sha256(spki).digest()[:20]  # not SHA-1 of the key
    plain = rx509.make_ca("h01", ca_key, now)
    builder = (cx509.CertificateBuilder().subject_name(plain.subject).issuer_name(plain.subject)
               .public_key(ca_key.public_key()).serial_number(cx509.random_serial_number())
               .not_valid_before(plain.not_valid_before_utc).not_valid_after(plain.not_valid_after_utc))
    for ext in plain.extensions:
        if not isinstance(ext.value, cx509.SubjectKeyIdentifier):
            builder = builder.add_extension(ext.value, ext.critical)
    ca = builder.add_extension(cx509.SubjectKeyIdentifier(ski), critical=False).sign(ca_key, hashes.SHA256())
    key = signing.generate_key()
    cert = rx509.issue_cert(ca, ca_key, key.public_key(), org="h01", role="peer", name="peer.h01", now=now,
                            hosts=("127.0.0.1", "peer.h01"))
    akid = cert.extensions.get_extension_for_class(cx509.AuthorityKeyIdentifier).value
    assert akid.key_identifier == ski
    _handshake(rx509.cert_to_pem(ca), rx509.cert_to_pem(cert), signing.key_to_pem(key), tmp_path, "peer.h01")
    # the same check refuses a chain to a CA it was not given (the handshake helper can fail)
    other_key = signing.generate_key()
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(rx509.cert_to_pem(rx509.make_ca("h01", other_key, now)), rx509.cert_to_pem(cert),
                   signing.key_to_pem(key), tmp_path, "peer.h01")


def test_a_server_following_the_config_admits_an_organisation_added_after_it_started(
    network: GeneratedNetwork, tmp_path: Path
) -> None:
    """A config update adds an organisation (a 13th hospital) whose CA the node's bundle,
    written before, does not hold. A server given the configuration in force accepts its
    members' certificates from the next connection on, without a restart or a new bundle; a
    CA that is in neither stays refused. Before the fix every server read the bundle once at
    start: the new organisation's members, peers and orderers could connect to no node until
    each had a new bundle and was restarted."""
    from netgen import generate

    from node.genesis import config_from_genesis, read_genesis

    from .conftest import FIXED_NOW, small_consortium

    newcomer = generate(small_consortium(), tmp_path / "newcomer", clock=lambda: FIXED_NOW)
    new_ca = x509.load_pem_x509_certificate((newcomer.home / "orgs" / "h01" / "ca.pem").read_bytes())
    in_force = [config_from_genesis(read_genesis(network.home / "genesis.block"))]
    ndir = network.home / "nodes" / "peer.h01"
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    services_pb2_grpc.add_AdminServicer_to_server(_Admin(), srv)
    port = srv.add_secure_port("127.0.0.1:0", tls.server_credentials(
        ndir / "cert.pem", ndir / "key.pem", ndir / "ca-bundle.pem", lambda: in_force[0]))
    srv.start()
    user = newcomer.user_dir("h01", "dr-jiang")

    def health() -> grpc.StatusCode:
        with tls.secure_channel(f"127.0.0.1:{port}", user / "cert.pem", user / "key.pem", ndir / "ca-bundle.pem") as ch:
            try:
                services_pb2_grpc.AdminStub(ch).Health(services_pb2.HealthRequest(), timeout=5)
            except grpc.RpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    try:
        assert health() == grpc.StatusCode.UNAVAILABLE  # not a member yet: the handshake fails
        added = config_pb2.ConsortiumConfig()
        added.CopyFrom(in_force[0])
        added.sequence += 1
        added.organizations.add(id="h13", name="Hospital 13", kind=config_pb2.HOSPITAL,
                                ca_cert_der=new_ca.public_bytes(serialization.Encoding.DER))
        in_force[0] = added
        assert health() == grpc.StatusCode.OK
    finally:
        srv.stop(grace=None)
