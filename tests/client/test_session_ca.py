"""A session pins its peer to the CA the newest configuration its home verified names for the
peer's organisation (a CA rotation committed by a config update), never to one a peer answered."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import shutil
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from rxchain.v1 import block_pb2, config_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from bench.txbuild import TxKit, make_block, node_signer, user_signer
from client import configtool
from client.errors import RxClientError
from client.network import NodeEndpoint, load_network
from client.session import Session, verified_network
from node.crypto import signing, tls
from node.crypto import x509 as rx509
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Verifier
from node.genesis import config_from_genesis, read_genesis
from tests.harness.certs import write_cert_files


class _Admin(services_pb2_grpc.AdminServicer):
    def Health(self, request: services_pb2.HealthRequest,
               context: grpc.ServicerContext) -> services_pb2.HealthResponse:
        return services_pb2.HealthResponse(serving=True, node="peer.h01", role="peer")

    def Status(self, request: services_pb2.StatusRequest,
               context: grpc.ServicerContext) -> services_pb2.StatusResponse:
        return services_pb2.StatusResponse(node="peer.h01", height=2)


@dataclasses.dataclass
class Rotated:
    home: Path
    port: int  # a peer.h01 presenting a certificate of h01's new CA


def _rotation_block(home: Path, genesis: block_pb2.Block, new_ca_der: bytes) -> block_pb2.Block:
    """Block 1: h01's CA replaced, signed by 4 of the 6 admins (MAJORITY) and the orderer."""
    base = config_from_genesis(genesis)
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(base)
    new.sequence = base.sequence + 1
    next(o for o in new.organizations if o.id == "h01").ca_cert_der = new_ca_der
    now_ms = time.time_ns() // 1_000_000
    kit = TxKit(base.consortium_id, random.Random(5), clock_ms=now_ms)
    admins = [user_signer(home, org, "admin") for org in ("h02", "p01", "p02", "ins01")]
    env = kit.config_tx(admins[0], new, admins)
    block = make_block(1, block_header_hash(genesis.header), [env], [node_signer(home, "orderer.ins01", "ins01")],
                       timestamp_ms=now_ms)
    block.metadata.last_config_block = 1  # as the peer serves it (the config in force is its own)
    block.metadata.validation_codes.append(transaction_pb2.VALID)
    return block


@pytest.fixture
def rotated(net_home: Any, tmp_path: Path) -> Iterator[Rotated]:
    home = tmp_path / "home"
    shutil.copytree(net_home.home, home)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    ca_key = signing.generate_key()
    ca = rx509.make_ca("h01", ca_key, now)
    key = signing.generate_key()
    cert = rx509.issue_cert(ca, ca_key, key.public_key(), org="h01", role="peer", name="peer.h01", now=now,
                            hosts=("localhost", "127.0.0.1", "peer.h01"))
    ndir = tmp_path / "peer.h01-rotated"
    cert_path, key_path = write_cert_files(cert, key, ndir)
    bundle = ndir / "ca-bundle.pem"  # the clients' certificates still come from the old CAs
    bundle.write_bytes((home / "nodes" / "peer.h01" / "ca-bundle.pem").read_bytes())
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    services_pb2_grpc.add_AdminServicer_to_server(_Admin(), srv)
    port = srv.add_secure_port("127.0.0.1:0", tls.server_credentials(cert_path, key_path, bundle))
    srv.start()
    try:
        genesis = read_genesis(home / "genesis.block")
        chain = configtool.ChainConfig(genesis, Verifier(), home / configtool.CHAIN_STATE)
        chain.feed(genesis)
        chain.feed(_rotation_block(home, genesis, rx509.cert_to_der(ca)))
        assert chain.verified()[1].sequence == 1  # adopted by the orderers' rules
        chain.save()
        yield Rotated(home, port)
    finally:
        srv.stop(None)


def _session(home: Path, port: int) -> Session:
    net = load_network(home)
    peers = tuple(NodeEndpoint(p.name, p.org, p.kind, "127.0.0.1", port) if p.org == "h01" else p
                  for p in net.peers)
    return Session(home, "h01:dr-jiang", network=dataclasses.replace(net, peers=peers))


def test_a_session_follows_a_ca_rotation_its_home_verified(rotated: Rotated) -> None:
    """h01's CA was rotated by a config update this home verified (a config command saved the
    chain state): a session pinned its peer to the genesis CA whatever the configuration in
    force, so a peer presenting a certificate of the new CA could not be reached (the handshake
    failed: SERVICE_UNAVAILABLE) until a new genesis. It now pins the CA in force."""
    s = _session(rotated.home, rotated.port)
    try:
        assert s.gateway.health(timeout=10).serving
    finally:
        s.close()


def test_a_session_pins_no_ca_the_home_did_not_verify(rotated: Rotated) -> None:
    """Without the verified chain state -- or with one of another genesis block, or torn -- the
    genesis CA stays pinned: the rotated peer is refused at the handshake."""
    state = rotated.home / configtool.CHAIN_STATE
    for text in (None, state.read_text().replace('"genesis": "', '"genesis": "00'), "{"):
        if text is None:
            state.unlink()
        else:
            state.write_text(text)
        assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 0
        s = _session(rotated.home, rotated.port)
        try:
            with pytest.raises(RxClientError) as e:
                s.gateway.health(timeout=5)
            assert e.value.reason == "SERVICE_UNAVAILABLE"
        finally:
            s.close()


def test_a_peer_behind_the_verified_chain_rolls_back_no_ca(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config command asked a peer holding only the genesis block (behind the chain this home
    verified: a lagging peer, or a hostile one withholding blocks). The command verifies from
    the genesis block again and works on what that peer shows -- but it also saved that shorter
    chain over the state, so every later session pinned h01's genesis CA again: the CA the
    consortium had rotated away from (perhaps because its key leaked), whose certificates then
    passed for h01's peer. The state is now replaced only by a chain verified further."""
    genesis = read_genesis(rotated.home / "genesis.block")
    monkeypatch.setattr(configtool, "_height", lambda identity, target: 1)

    def stream(identity: Any, target: str, start: int, stop: int, timeout: float = 0.0) -> Iterator[block_pb2.Block]:
        yield genesis

    monkeypatch.setattr(configtool, "_stream", stream)
    chain = configtool.ChainConfig(genesis, Verifier(), rotated.home / configtool.CHAIN_STATE)
    assert chain.resumed
    assert configtool.config_in_force(object(), "peer", chain)[1].sequence == 0  # type: ignore[arg-type]
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 1
    s = _session(rotated.home, rotated.port)
    try:
        assert s.gateway.health(timeout=10).serving
    finally:
        s.close()
