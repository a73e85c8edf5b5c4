"""A session pins its peer to the CA the newest configuration its home verified names for the
peer's organisation (a CA rotation committed by a config update), never to one a peer answered."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rxchain.v1 import block_pb2, config_pb2, identity_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from bench.txbuild import TxKit, make_block, node_signer, user_signer
from client import configtool
from client.errors import RxClientError
from client.network import NetworkInfo, NodeEndpoint, load_network
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
    ca_der: bytes = b""  # h01's new CA


def _rotation_block(home: Path, genesis: block_pb2.Block, new_ca_der: bytes,
                    admins_of: tuple[str, ...] = ("h02", "p01", "p02", "ins01"),
                    signer: tuple[str, str] = ("orderer.ins01", "ins01"),
                    previous: block_pb2.Block | None = None) -> block_pb2.Block:
    """Block 1: h01's CA replaced, signed by 4 of the 6 admins (MAJORITY) and the orderer (or by
    the admins of ``admins_of`` and the node ``signer``); after ``previous`` when given (a block
    of the genesis config)."""
    previous = previous or genesis
    number = previous.header.number + 1
    base = config_from_genesis(genesis)
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(base)
    new.sequence = base.sequence + 1
    next(o for o in new.organizations if o.id == "h01").ca_cert_der = new_ca_der
    now_ms = time.time_ns() // 1_000_000
    kit = TxKit(base.consortium_id, random.Random(5), clock_ms=now_ms)
    admins = [user_signer(home, org, "admin") for org in admins_of]
    env = kit.config_tx(admins[0], new, admins)
    block = make_block(number, block_header_hash(previous.header), [env], [node_signer(home, *signer)],
                       timestamp_ms=now_ms)
    block.metadata.last_config_block = number  # as the peer serves it (the config in force is its own)
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
        # (no denylist yet: a test removing config-chain.json plays a home that never verified the
        # rotation; one resuming the file writes it -- ChainConfig._resume)
        (home / configtool.CA_DENYLIST).unlink()
        yield Rotated(home, port, rx509.cert_to_der(ca))
    finally:
        srv.stop(None)


def _local(net: NetworkInfo, ports: dict[str, int]) -> NetworkInfo:
    """``net`` with the peers of the organisations in ``ports`` on those local ports."""
    peers = tuple(NodeEndpoint(p.name, p.org, p.kind, "127.0.0.1", ports[p.org]) if p.org in ports else p
                  for p in net.peers)
    return dataclasses.replace(net, peers=peers)


def _session(home: Path, port: int, h02_port: int | None = None, p01_port: int | None = None,
             orderer_port: int | None = None) -> Session:
    ports = {"h01": port}
    if h02_port is not None:
        ports["h02"] = h02_port
    if p01_port is not None:
        ports["p01"] = p01_port
    net = _local(load_network(home), ports)
    if orderer_port is not None:  # (orderer.ins01 there: it confirms the config blocks a peer serves)
        net = dataclasses.replace(net, orderers=tuple(
            dataclasses.replace(o, host="127.0.0.1", port=orderer_port) for o in net.orderers))
    # (the reactive follows only: a proactive one, on its own thread, would ask the same nodes at
    # the same time -- tests/client/test_session_proactive.py covers it)
    return Session(home, "h01:dr-jiang", network=net, follow_every_s=0)


def _health_once(rotated: Rotated, h02_port: int | None = None, p01_port: int | None = None,
                 orderer_port: int | None = None) -> str:
    """The health call (:func:`_health`) of a new session of h01's doctor whose peer is h01
    (presenting the new CA's certificate), the other peers (and orderer.ins01) on the ports
    given; closed after."""
    s = _session(rotated.home, rotated.port, h02_port, p01_port, orderer_port)
    try:
        return _health(s)
    finally:
        s.close()


def test_a_session_follows_a_ca_rotation_its_home_verified(rotated: Rotated) -> None:
    """h01's CA was rotated by a config update this home verified (a config command saved the
    chain state): a session pinned its peer to the genesis CA whatever the configuration in
    force, so a peer presenting a certificate of the new CA could not be reached (the handshake
    failed: SERVICE_UNAVAILABLE) until a new genesis. It now pins the CA in force."""
    assert _health_once(rotated) == "OK"


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
    assert _health_once(rotated) == "OK"


def _delivered(blocks: list[block_pb2.Block],
               request: services_pb2.DeliverRequest) -> Iterator[services_pb2.DeliverResponse]:
    """The blocks of ``blocks`` (a whole chain) ``request`` asks for, from its start block to its
    stop block (none: the last), one response each."""
    stop = request.stop_block or len(blocks) - 1
    for block in blocks[request.start_block:stop + 1]:
        yield services_pb2.DeliverResponse(block=block)


class _ChainNode(services_pb2_grpc.AdminServicer):
    """A node ``NODE`` (its role ``ROLE``) holding ``blocks`` (its whole chain): its health, and
    its height (its role in the Status answer: ``STATUS_ROLE``)."""

    NODE = ""
    ROLE = ""
    STATUS_ROLE = ""

    def __init__(self, blocks: list[block_pb2.Block]) -> None:
        self.blocks = blocks
        self.asked = 0  # Status calls (a follow asks each node once)

    def Health(self, request: services_pb2.HealthRequest,
               context: grpc.ServicerContext) -> services_pb2.HealthResponse:
        return services_pb2.HealthResponse(serving=True, node=self.NODE, role=self.ROLE)

    def Status(self, request: services_pb2.StatusRequest,
               context: grpc.ServicerContext) -> services_pb2.StatusResponse:
        self.asked += 1
        return services_pb2.StatusResponse(node=self.NODE, role=self.STATUS_ROLE, height=len(self.blocks))


class _Peer(_ChainNode, services_pb2_grpc.PeerDeliverServicer):
    """A peer serving ``blocks`` (its whole chain) over Deliver, and its height."""

    NODE = ROLE = "peer"

    def Deliver(self, request: services_pb2.DeliverRequest,
                context: grpc.ServicerContext) -> Iterator[services_pb2.DeliverResponse]:
        yield from _delivered(self.blocks, request)


@contextlib.contextmanager
def _tls_serving(home: Path, node: str, servicer: Any,
                 *adders: Callable[[Any, grpc.Server], None]) -> Iterator[int]:
    """``servicer``, added to the server by each of ``adders``, with the generated TLS material of
    ``node`` (its genesis CA), on a local port."""
    d = home / "nodes" / node
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    for add in adders:
        add(servicer, srv)
    port = srv.add_secure_port("127.0.0.1:0", tls.server_credentials(d / "cert.pem", d / "key.pem",
                                                                     d / "ca-bundle.pem"))
    srv.start()
    try:
        yield port
    finally:
        srv.stop(None)


def _serving(home: Path, node: str, blocks: list[block_pb2.Block],
             peer: _Peer | None = None) -> contextlib.AbstractContextManager[int]:
    """A :class:`_Peer` (``peer``, else one serving ``blocks``) with the generated TLS material of
    ``node`` (its genesis CA), on a local port."""
    return _tls_serving(home, node, peer or _Peer(blocks), services_pb2_grpc.add_AdminServicer_to_server,
                        services_pb2_grpc.add_PeerDeliverServicer_to_server)


def _plain_block(home: Path, number: int, previous: block_pb2.Block,
                 signer: tuple[str, str] = ("orderer.ins01", "ins01")) -> block_pb2.Block:
    """A block without transactions after ``previous``, signed by the node ``signer``."""
    block = make_block(number, block_header_hash(previous.header), [], [node_signer(home, *signer)],
                       timestamp_ms=time.time_ns() // 1_000_000)
    block.metadata.last_config_block = 0
    return block


def _health(s: Session) -> str:
    """OK, or the reason code of the failed health call."""
    try:
        s.gateway.health(timeout=5)
    except RxClientError as exc:
        return exc.reason
    return "OK"


def _health_served(rotated: Rotated, chain: list[block_pb2.Block]) -> str:
    """The health call (:func:`_health`) of a session whose peer is h01 (presenting the new CA's
    certificate) while h02 serves ``chain`` and orderer.ins01 holds it (it confirms the config
    blocks h02 serves)."""
    with _serving(rotated.home, "peer.h02", chain) as h02, \
            _ordering(rotated.home, _Orderer(_as_ordered(chain))) as orderer:
        return _health_once(rotated, h02, orderer_port=orderer)


def _as_ordered(chain: list[block_pb2.Block]) -> list[block_pb2.Block]:
    """``chain`` as an orderer holds it: no validation codes (peers write them)."""
    out = []
    for block in chain:
        copy = block_pb2.Block()
        copy.CopyFrom(block)
        del copy.metadata.validation_codes[:]
        out.append(copy)
    return out


@pytest.mark.parametrize("home_writable", [True, False])
def test_a_session_follows_a_ca_rotation_no_config_command_verified(
        rotated: Rotated, home_writable: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """h01's CA was rotated (block 1) but no config command ran in this home since: the session
    pinned the genesis CA, and its peer -- now presenting a certificate of the new CA -- could not
    be reached (SERVICE_UNAVAILABLE) until someone ran ``rxchain config``. The session now
    fetches the blocks past its verified chain from another peer (h02's), verifies them, saves
    the longer chain and re-pins: the call goes through (also where the home cannot be written:
    the chain verified is pinned all the same)."""
    state = rotated.home / configtool.CHAIN_STATE
    state.unlink()
    if not home_writable:
        def refuse(path: Any, data: bytes) -> None:
            raise OSError(30, "Read-only file system")

        monkeypatch.setattr(configtool, "replace_file", refuse)
    genesis = read_genesis(rotated.home / "genesis.block")
    chain = [genesis, _rotation_block(rotated.home, genesis, rotated.ca_der)]
    assert _health_served(rotated, chain) == "OK"
    if not home_writable:
        assert not state.exists()
        return
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 1
    assert json.loads(state.read_text())["height"] == 2


@pytest.mark.parametrize("forgery", ["not-an-orderer", "too-few-admins", "withheld"])
def test_a_peer_serving_a_forged_or_refused_config_block_moves_no_pin(rotated: Rotated, forgery: str) -> None:
    """The peer asked for the blocks past the verified chain serves the rotation block signed by
    a node that is no orderer, or one whose update too few admins signed (the orderers' rule
    refuses it; the peer still calls it VALID and in force), or nothing new: no pin moves, the
    saved chain stays as it was, the call fails as before (SERVICE_UNAVAILABLE)."""
    state = rotated.home / configtool.CHAIN_STATE
    state.unlink()
    genesis = read_genesis(rotated.home / "genesis.block")
    if forgery == "not-an-orderer":
        chain = [genesis, _rotation_block(rotated.home, genesis, rotated.ca_der, signer=("peer.h02", "h02"))]
    elif forgery == "too-few-admins":
        chain = [genesis, _rotation_block(rotated.home, genesis, rotated.ca_der, admins_of=("h02", "p01"))]
    else:
        chain = [genesis]
    assert _health_served(rotated, chain) == "SERVICE_UNAVAILABLE"
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 0
    if state.exists():  # (a chain verified that adopts nothing may be saved: the genesis config)
        assert json.loads(state.read_text())["block"] == 0


def test_a_long_lived_session_picks_up_a_verified_extension(rotated: Rotated) -> None:
    """The FHIR gateway keeps one session per wallet for as long as it serves: it pinned the CA of
    config-chain.json as it was when the session was made, so a rotation a config command verified
    later was not followed until a restart. A session now reads the file again when it changed
    and pins its new calls to the CA it names; once the file is removed (the remedy for
    CHAIN_RESTARTED) it pins the genesis CA again, as a new session would."""
    from client.fhir.server import Identities

    state = rotated.home / configtool.CHAIN_STATE
    saved = state.read_bytes()
    state.unlink()
    ids = Identities(rotated.home)
    ids.net = _local(ids.net, {"h01": rotated.port})
    cert = x509.load_pem_x509_certificate(
        (rotated.home / "orgs" / "h01" / "users" / "dr-jiang" / "cert.pem").read_bytes())
    try:
        ops = ids.ops_for(cert.public_bytes(serialization.Encoding.DER))
        assert _health(ops.s) == "SERVICE_UNAVAILABLE"  # (genesis CA pinned; no peer to follow from)
        state.write_bytes(saved)  # a config command verified the rotation
        assert _health(ops.s) == "OK"
        assert ids.ops_for(cert.public_bytes(serialization.Encoding.DER)) is ops  # the same session
        state.unlink()
        # (the genesis CA again -- one the verified chain rotated away from: refused, nothing sent)
        assert _health(ops.s) == configtool.CA_ROTATED_AWAY
        (rotated.home / configtool.CA_DENYLIST).unlink()  # (the consortium trusts it again)
        assert _health(ops.s) == "SERVICE_UNAVAILABLE"  # (the peer presents the new one)
    finally:
        ids.close()


@pytest.mark.parametrize("remedy", ["removed", "shorter", "other-genesis", "new-chain"])
def test_a_long_lived_session_takes_the_remedy_for_a_restart(rotated: Rotated, remedy: str) -> None:
    """The network was started again from the same genesis block: the FHIR gateway's session,
    pinned to h01's rotated CA by the old network's config-chain.json, says CHAIN_RESTARTED (503).
    The documented remedy -- remove the file (a config command may then verify the new chain into
    it, a shorter or as long a chain; or a file of another genesis block is put there) -- was not
    noticed: the session kept the old pin (and the restart it found) until the gateway was
    restarted. It now holds what a new session would: the genesis CA, or the CA the new file's
    chain names -- h01's peer, presenting its genesis certificate, is reached again."""
    from client.fhir.server import Identities

    state = rotated.home / configtool.CHAIN_STATE
    genesis = read_genesis(rotated.home / "genesis.block")
    one = _plain_block(rotated.home, 1, genesis)
    new_chain = [genesis, one, _plain_block(rotated.home, 2, one)]
    with _serving(rotated.home, "peer.h01", new_chain) as h01, _serving(rotated.home, "peer.h02", new_chain) as h02:
        ids = Identities(rotated.home)
        ids.net = _local(ids.net, {"h01": h01, "h02": h02})
        cert = x509.load_pem_x509_certificate(
            (rotated.home / "orgs" / "h01" / "users" / "dr-jiang" / "cert.pem").read_bytes())
        try:
            ops = ids.ops_for(cert.public_bytes(serialization.Encoding.DER))
            assert _health(ops.s) == "CHAIN_RESTARTED"
            before = state.read_text()
            state.unlink()
            if remedy != "removed":
                verified = configtool.ChainConfig(genesis, Verifier(), state)
                for block in [genesis] if remedy != "new-chain" else [genesis, one]:
                    verified.feed(block)
                verified.save()
                assert json.loads(state.read_text())["height"] == (2 if remedy == "new-chain" else 1)
            if remedy == "other-genesis":
                state.write_text(before.replace('"genesis": "', '"genesis": "00'))
            # the genesis CA of h01, which the old chain rotated away from, is in force again: refused
            # (configtool.CA_DENYLIST outlasts config-chain.json) -- h02's peer, asked to follow past
            # it, holds no rotation on the new chain
            assert _health(ops.s) == configtool.CA_ROTATED_AWAY
            (rotated.home / configtool.CA_DENYLIST).unlink()  # (the consortium confirms it is trusted)
            assert _health(ops.s) == "OK"
            assert ids.ops_for(cert.public_bytes(serialization.Encoding.DER)) is ops  # the same session
        finally:
            ids.close()


def test_a_restart_found_while_the_remedy_was_taken_is_not_said(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:
    """A follow found the network restarted (from the old config-chain.json) while the operator
    removed that file: the session would still say CHAIN_RESTARTED -- and go on saying it for
    FOLLOW_INTERVAL_S -- about a file no longer there. The finding is void once the file went
    back: the session pins the genesis CA, as a new one would, and the call goes through."""
    from client import session as session_mod

    state = rotated.home / configtool.CHAIN_STATE
    genesis = read_genesis(rotated.home / "genesis.block")

    def follow(*args: Any, **kwargs: Any) -> Any:
        state.unlink()  # (the remedy, taken while the follow ran)
        (rotated.home / configtool.CA_DENYLIST).unlink()  # (h01's genesis CA confirmed trusted again)
        raise RxClientError(configtool.CHAIN_RESTARTED, "the network was started again")

    monkeypatch.setattr(session_mod, "follow_chain", follow)
    with _serving(rotated.home, "peer.h01", [genesis]) as h01:  # (its genesis certificate: the new network's)
        s = _session(rotated.home, h01)
        try:
            assert _health(s) == "OK"
        finally:
            s.close()
    assert not state.exists()


def test_two_calls_reading_the_pin_at_once_leave_the_newer(rotated: Rotated) -> None:
    """Two calls of one session read its pin at once: the first the genesis CA, the second -- a
    config command verified h01's rotation in between -- the rotated one, and re-pinned. The
    first then switched the channel back to the genesis CA it had read, and its call failed
    (the next call corrected it). A pin now only moves forward: the first call goes over the
    newer pin and succeeds. The order is forced: the first call waits, after reading the pin,
    until the second is done."""
    state = rotated.home / configtool.CHAIN_STATE
    saved = state.read_bytes()
    state.unlink()
    s = _session(rotated.home, rotated.port)
    real = s.gateway._server_ca
    assert real is not None
    first_read, second_done = threading.Event(), threading.Event()

    def server_ca() -> Any:
        answer = real()
        if threading.current_thread().name == "first" and not second_done.is_set():
            first_read.set()
            assert second_done.wait(10)
        return answer

    s.gateway._server_ca = server_ca
    results: dict[str, str] = {}

    def call() -> None:
        results[threading.current_thread().name] = _health(s)

    first = threading.Thread(target=call, name="first")
    second = threading.Thread(target=call, name="second")
    try:
        first.start()
        assert first_read.wait(10)  # the first call read the genesis pin
        state.write_bytes(saved)  # a config command verified the rotation meanwhile
        second.start()
        second.join(10)
        assert not second.is_alive()
        second_done.set()
        first.join(10)
        assert not first.is_alive()
        assert results == {"first": "OK", "second": "OK"}
        assert s.gateway._pin == x509.load_der_x509_certificate(rotated.ca_der).public_bytes(
            serialization.Encoding.PEM)
    finally:
        second_done.set()
        s.close()


@pytest.mark.parametrize("peer_chain", ["restarted", "lagging", "forged"])
def test_a_network_restarted_from_the_genesis_block_is_named(rotated: Rotated, peer_chain: str) -> None:
    """The network was started again from the same genesis block: the new chain's block 1 is not
    the rotation this home verified, and h01's peer presents its genesis certificate again. The
    session pinned the rotated CA from the old config-chain.json and only failed
    SERVICE_UNAVAILABLE. It now finds another peer's verified chain holding another block 1 and
    says CHAIN_RESTARTED with the remedy, changing nothing. A peer merely behind (only the genesis
    block) or one whose different block 1 does not verify (signed by no orderer) is no restart,
    the state unchanged: h01's peer presents a certificate of its genesis CA, which the verified
    chain rotated away from -- CA_ROTATED_AWAY (trust7; SERVICE_UNAVAILABLE before), nothing sent."""
    state = rotated.home / configtool.CHAIN_STATE
    saved = state.read_bytes()
    genesis = read_genesis(rotated.home / "genesis.block")
    one = _plain_block(rotated.home, 1, genesis)
    new_chain = [genesis, one, _plain_block(rotated.home, 2, one)]
    if peer_chain == "lagging":
        served = [genesis]
    elif peer_chain == "forged":
        served = [genesis, _plain_block(rotated.home, 1, genesis, signer=("peer.h02", "h02"))]
    else:
        served = new_chain
    with _serving(rotated.home, "peer.h01", new_chain) as h01, _serving(rotated.home, "peer.h02", served) as h02:
        s = _session(rotated.home, h01, h02)
        try:
            with pytest.raises(RxClientError) as e:
                s.gateway.health(timeout=5)
        finally:
            s.close()
    if peer_chain == "restarted":
        from client.fhir.server import error_reply

        assert e.value.reason == "CHAIN_RESTARTED"
        assert "remove" in e.value.message and str(state) in e.value.message
        assert error_reply(e.value, rotated.home).status == 503  # (not 422: no business rule refused it)
    else:
        assert e.value.reason == configtool.CA_ROTATED_AWAY
    assert state.read_bytes() == saved


def test_a_shorter_chain_saved_later_rolls_back_no_ca(rotated: Rotated) -> None:
    """Two processes verify the chain at once (a session following it, a config command): the
    one that verified less saved last and replaced the longer chain the other had saved -- the
    rotation gone, sessions pinned the CA rotated away from. A state is now saved only over a
    shorter one (read again under its lock)."""
    state = rotated.home / configtool.CHAIN_STATE
    state.unlink()
    genesis = read_genesis(rotated.home / "genesis.block")
    further = configtool.ChainConfig(genesis, Verifier(), state)
    behind = configtool.ChainConfig(genesis, Verifier(), state)
    further.feed(genesis)
    further.feed(_rotation_block(rotated.home, genesis, rotated.ca_der))
    behind.feed(genesis)
    further.save()
    behind.save()
    assert json.loads(state.read_text())["height"] == 2
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 1


def _resumed_and_block_two(rotated: Rotated,
                           last_config_block: int) -> tuple[Path, configtool.ChainConfig, block_pb2.Block]:
    """The chain the home saved (blocks 0-1, the rotation) resumed, and a block 2 after it signed
    by orderer.ins01 naming ``last_config_block`` its config block: (the state file, the chain,
    block 2)."""
    state = rotated.home / configtool.CHAIN_STATE
    genesis = read_genesis(rotated.home / "genesis.block")
    chain = configtool.ChainConfig(genesis, Verifier(), state)
    assert chain.resumed and chain.height == 2
    # (block 2 links to the rotation block saved: the state holds its header hash only)
    two = make_block(2, bytes.fromhex(json.loads(state.read_text())["last_hash"]), [],
                     [node_signer(rotated.home, "orderer.ins01", "ins01")], timestamp_ms=time.time_ns() // 1_000_000)
    two.metadata.last_config_block = last_config_block
    return state, chain, two


def test_a_peer_naming_another_config_block_does_not_spoil_the_saved_chain(rotated: Rotated) -> None:
    """A peer serves block 2 naming block 0 as holding the config in force (its pointer: metadata
    no orderer signs). The chain verified went on to block 2 with the rotation of block 1 in force
    and was saved with the peer's pointer -- a state that no longer resumes (its pointer is not its
    config block), so every session fell back to the genesis CAs. Such a state is not saved."""
    state, chain, two = _resumed_and_block_two(rotated, 0)
    chain.feed(two)
    chain.save()
    assert json.loads(state.read_text())["height"] == 2
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 1


def test_a_session_follows_at_most_once_per_interval(rotated: Rotated) -> None:
    """Every failed call of a session whose peer presents a CA the pin lacks would ask the other
    peers again (a peer serving a refused rotation, for ever): a session follows at most once per
    FOLLOW_INTERVAL_S, whatever the calls and their retries."""
    state = rotated.home / configtool.CHAIN_STATE
    state.unlink()
    genesis = read_genesis(rotated.home / "genesis.block")
    peer = _Peer([genesis, _rotation_block(rotated.home, genesis, rotated.ca_der, admins_of=("h02",))])
    with _serving(rotated.home, "peer.h02", [], peer) as h02:
        s = _session(rotated.home, rotated.port, h02)
        try:
            assert [_health(s) for _ in range(3)] == ["SERVICE_UNAVAILABLE"] * 3
        finally:
            s.close()
    assert peer.asked == 1


class _MissingCheckpoint(_Peer):
    """A peer whose chain is the one verified, but which answers a request for its block
    ``number`` alone with nothing (``forged``: with a block signed by no orderer) -- a hostile
    peer, or a stream cut short."""

    def __init__(self, blocks: list[block_pb2.Block], home: Path, number: int, forged: bool) -> None:
        super().__init__(blocks)
        self.home, self.number, self.forged = home, number, forged

    def Deliver(self, request: services_pb2.DeliverRequest,
                context: grpc.ServicerContext) -> Iterator[services_pb2.DeliverResponse]:
        if request.start_block == request.stop_block == self.number:
            if self.forged:
                yield services_pb2.DeliverResponse(block=_plain_block(
                    self.home, self.number, self.blocks[self.number - 1], signer=("peer.h02", "h02")))
            return
        yield from super().Deliver(request, context)


@pytest.mark.parametrize("forged", [False, True])
def test_a_peer_withholding_a_checkpoint_block_is_no_restart(rotated: Rotated, forged: bool) -> None:
    """Checking a peer's chain against the verified one, the follow asks for the block at each
    checkpoint; a peer answering that with nothing (or another block), then serving the chain
    from genesis, had its chain verified up to there and was taken for a network restarted --
    though its block there is the very one verified: CHAIN_RESTARTED (the follow ended, telling
    the user to remove the verified chain) on one hostile or flaky peer's word. Its chain must
    differ there: that peer is skipped, and the next one's blocks are followed."""
    state = rotated.home / configtool.CHAIN_STATE
    genesis = read_genesis(rotated.home / "genesis.block")
    one = _plain_block(rotated.home, 1, genesis)
    rotation = _rotation_block(rotated.home, genesis, rotated.ca_der, previous=one)
    blocks = [genesis, one, rotation]
    state.unlink()
    verified = configtool.ChainConfig(genesis, Verifier(), state)
    verified.feed(genesis)
    verified.feed(one)
    verified.save()  # the home verified blocks 0-1 (no rotation yet): its checkpoint is block 1
    assert json.loads(state.read_text())["height"] == 2
    hostile = _MissingCheckpoint(blocks, rotated.home, 1, forged)
    with _serving(rotated.home, "peer.h02", [], hostile) as h02, _serving(rotated.home, "peer.p01", blocks) as p01, \
            _ordering(rotated.home, _Orderer(_as_ordered(blocks))) as orderer:
        assert _health_once(rotated, h02, p01, orderer) == "OK"
    assert json.loads(state.read_text())["height"] == 3


class _Stalling(_Peer):
    """A peer whose block stream sends nothing until ``release`` is set (at most 10 s)."""

    def __init__(self, blocks: list[block_pb2.Block]) -> None:
        super().__init__(blocks)
        self.release = threading.Event()

    def Deliver(self, request: services_pb2.DeliverRequest,
                context: grpc.ServicerContext) -> Iterator[services_pb2.DeliverResponse]:
        self.release.wait(10)
        yield from super().Deliver(request, context)


def test_a_stalling_peer_does_not_starve_the_follow(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call of a follow had its own bound (a status of 3 s, a stream of DELIVER_S) and none
    bounded the whole: FOLLOW_BUDGET_S does. But the sources were asked in a fixed order with the
    whole budget each: the first peer stalling its stream used all of it, every follow, and the
    next one -- which would have served the rotation -- was never asked. Each source now has a
    share of the time left (the budget over the sources not asked yet): the stalling peer's stream
    ends at its share, the next peer is asked and the call goes through."""
    from client import follow

    monkeypatch.setattr(follow, "DELIVER_S", 6.0)
    monkeypatch.setattr(follow, "FOLLOW_BUDGET_S", 3.0)
    (rotated.home / configtool.CHAIN_STATE).unlink()
    genesis = read_genesis(rotated.home / "genesis.block")
    blocks = [genesis, _rotation_block(rotated.home, genesis, rotated.ca_der)]
    stalling, honest = _Stalling(blocks), _Peer(blocks)
    with _serving(rotated.home, "peer.h02", [], stalling) as h02, _serving(rotated.home, "peer.p01", [], honest) as p01, \
            _ordering(rotated.home, _Orderer(_as_ordered(blocks))) as orderer:
        s = _session(rotated.home, rotated.port, h02, p01, orderer)
        try:
            assert _health(s) == "OK"
        finally:
            stalling.release.set()
            s.close()
    assert (stalling.asked, honest.asked) == (1, 1)


@pytest.mark.parametrize("lie", ["code", "pointer"])
def test_a_peer_lying_in_its_metadata_does_not_spoil_the_next_peers_follow(rotated: Rotated, lie: str) -> None:
    """The first peer asked serves the rotation block as it is (signed) but records it INVALID, or
    names block 0 as holding the config in force (metadata nobody signs): the follow refuses it
    (LEDGER_INVALID) -- but kept that peer's codes and pointer with the blocks it verified, so the
    next peer, honest and at the same height (nothing more to feed), was judged by them and
    refused too: one such peer asked first stopped every session from following. A peer's
    metadata is its own: the next one's is read from its own blocks."""
    (rotated.home / configtool.CHAIN_STATE).unlink()
    genesis = read_genesis(rotated.home / "genesis.block")
    rotation = _rotation_block(rotated.home, genesis, rotated.ca_der)
    lying = block_pb2.Block()
    lying.CopyFrom(rotation)
    if lie == "code":
        lying.metadata.validation_codes[0] = transaction_pb2.BAD_CONFIG_UPDATE
    else:
        lying.metadata.last_config_block = 0
    with _serving(rotated.home, "peer.h02", [genesis, lying]) as h02, \
            _serving(rotated.home, "peer.p01", [genesis, rotation]) as p01, \
            _ordering(rotated.home, _Orderer(_as_ordered([genesis, rotation]))) as orderer:
        assert _health_once(rotated, h02, p01, orderer) == "OK"
    assert json.loads((rotated.home / configtool.CHAIN_STATE).read_text())["height"] == 2


def test_a_closed_session_opens_no_channel_for_a_new_pin(rotated: Rotated) -> None:
    """A call after ``close()`` whose pin changed (a verified extension of config-chain.json
    saved meanwhile) opened a new channel that nothing closed any more (review5); it now fails
    on the closed channel like any call after close, and no channel is opened."""
    state = rotated.home / configtool.CHAIN_STATE
    saved = state.read_bytes()
    state.unlink()
    s = _session(rotated.home, rotated.port)
    before = s.gateway._channel
    s.close()
    state.write_bytes(saved)  # a config command verified the rotation after the close
    with pytest.raises(ValueError, match="closed channel"):  # (grpc's answer to any call after close)
        s.gateway.health(timeout=5)
    assert s.gateway._channel is before and not s.gateway._old_channels


class _Orderer(_ChainNode, services_pb2_grpc.AtomicBroadcastServicer):
    """An orderer serving ``blocks`` (its whole chain: no validation codes, as orderers store
    them) over ``AtomicBroadcast.Deliver``, and its height."""

    NODE = "orderer.ins01"
    ROLE = STATUS_ROLE = "orderer"

    def Broadcast(self, request_iterator: Iterator[transaction_pb2.Envelope],
                  context: grpc.ServicerContext) -> Iterator[services_pb2.BroadcastResponse]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "a follow broadcasts nothing")

    def BroadcastBatch(self, request_iterator: Iterator[services_pb2.EnvelopeBatch],
                       context: grpc.ServicerContext) -> Iterator[services_pb2.BroadcastBatchResponse]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "a follow broadcasts nothing")

    def Deliver(self, request: services_pb2.DeliverRequest,
                context: grpc.ServicerContext) -> Iterator[services_pb2.DeliverResponse]:
        yield from _delivered(self.blocks, request)
        yield services_pb2.DeliverResponse(status=identity_pb2.ErrorDetail(reason="OK"))


def _ordering(home: Path, orderer: _Orderer) -> contextlib.AbstractContextManager[int]:
    """``orderer`` with the generated TLS material of orderer.ins01, on a local port."""
    return _tls_serving(home, "orderer.ins01", orderer, services_pb2_grpc.add_AdminServicer_to_server,
                        services_pb2_grpc.add_AtomicBroadcastServicer_to_server)


@pytest.mark.parametrize("served", ["rotation", "forged"])
def test_a_network_of_one_peer_follows_a_rotation_from_the_orderers(rotated: Rotated, served: str) -> None:
    """A network whose only peer is h01's, its CA rotated (block 1) since the home verified: the
    session could not follow -- its own peer, the only one, is the one the old pin cannot check,
    and no other peer was there to ask (SERVICE_UNAVAILABLE until a config command ran, which
    needs that peer too). When no peer extends the chain the session now asks the orderers
    (AtomicBroadcast.Deliver, pinned to their organisation's CA), whose blocks carry no
    validation codes: their blocks are verified as a peer's (a rotation block signed by no
    orderer moves nothing)."""
    state = rotated.home / configtool.CHAIN_STATE
    state.unlink()
    genesis = read_genesis(rotated.home / "genesis.block")
    signer = ("orderer.ins01", "ins01") if served == "rotation" else ("peer.h02", "h02")
    rotation = _rotation_block(rotated.home, genesis, rotated.ca_der, signer=signer)
    del rotation.metadata.validation_codes[:]  # (an orderer's block: peers write the codes)
    orderer = _Orderer([genesis, rotation])
    net = load_network(rotated.home)
    h01 = next(p for p in net.peers if p.org == "h01")
    with _ordering(rotated.home, orderer) as port:
        ins01 = next(o for o in net.orderers if o.name == "orderer.ins01")
        one_peer = dataclasses.replace(
            net, peers=(dataclasses.replace(h01, host="127.0.0.1", port=rotated.port),),
            orderers=(dataclasses.replace(ins01, host="127.0.0.1", port=port),))
        s = Session(rotated.home, "h01:dr-jiang", network=one_peer, follow_every_s=0)  # (as _session)
        try:
            result = _health(s)
        finally:
            s.close()
    assert orderer.asked == 1
    if served == "rotation":
        assert result == "OK"
        assert json.loads(state.read_text())["height"] == 2
        assert verified_network(rotated.home, net).config.sequence == 1
    else:
        assert result == "SERVICE_UNAVAILABLE"
        assert verified_network(rotated.home, net).config.sequence == 0


def _unreadable(monkeypatch: pytest.MonkeyPatch, path: Path) -> threading.Event:
    """Opening ``path`` fails EMFILE (too many open files: a transient error, e.g. a process out
    of descriptors under load) while the returned event is set."""
    import builtins
    import errno

    failing = threading.Event()
    real_open = builtins.open

    def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if failing.is_set() and Path(file) == path:
            raise OSError(errno.EMFILE, "Too many open files", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(configtool, "open", fake_open, raising=False)
    return failing


def test_a_transient_read_error_does_not_pin_the_genesis_ca(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:
    """config-chain.json changed (another session or a config command saved it) and this session's
    read of it failed (EMFILE: a process out of descriptors, which a flood of connections to the
    FHIR gateway brings about): it was taken for a file removed -- the session pinned h01's
    genesis CA, the one the consortium rotated away from (perhaps because its key leaked), and
    kept it for good (the file's stamp was recorded: never read again until it changed). A file
    there that cannot be read now moves nothing; it is read again on the next call."""
    state = rotated.home / configtool.CHAIN_STATE
    s = _session(rotated.home, rotated.port)
    try:
        assert _health(s) == "OK"
        version, pinned = s._server_ca()
        failing = _unreadable(monkeypatch, state)
        copy = state.with_name("copy.json")
        copy.write_bytes(state.read_bytes())
        copy.replace(state)  # (the same chain saved again: a new inode)
        failing.set()
        assert _health(s) == "OK"  # (the pin in force stands)
        assert s._server_ca() == (version, pinned)
        failing.clear()
        assert _health(s) == "OK"
        assert s._server_ca() == (version, pinned)
    finally:
        s.close()


def test_a_session_refuses_to_start_on_a_chain_it_cannot_read(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new session whose home's config-chain.json is there but cannot be read (EMFILE) pinned
    the genesis CA for its whole life, as though the file were absent; it now refuses to start
    (IO_ERROR, nothing opened) -- the CA to pin is not known -- and starts once the file reads."""
    state = rotated.home / configtool.CHAIN_STATE
    failing = _unreadable(monkeypatch, state)
    failing.set()
    with pytest.raises(RxClientError) as e:
        _session(rotated.home, rotated.port)
    assert e.value.reason == "IO_ERROR" and str(state) in e.value.message
    from client.fhir.server import error_reply

    assert error_reply(e.value, rotated.home).status == 503  # (retry: not 422, no business rule refused it)
    with pytest.raises(RxClientError) as e:
        verified_network(rotated.home, load_network(rotated.home))
    assert e.value.reason == "IO_ERROR"
    from client.follow import follow_chain
    from client.wallet import load_identity

    with pytest.raises(RxClientError) as e:  # (a follow pins no peer to a genesis CA for it)
        follow_chain(rotated.home, load_network(rotated.home), load_identity(rotated.home, "h01", "dr-jiang"))
    assert e.value.reason == "IO_ERROR"
    failing.clear()
    assert _health_once(rotated) == "OK"


def test_a_config_command_saves_nothing_over_a_chain_it_cannot_read(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config command (or a follow) that could not read config-chain.json (EMFILE) verified from
    genesis.block again -- and, reading the saved height as 0, saved whatever chain the peer showed
    over the longer one there: a peer withholding its newest blocks rolled the file back to the
    genesis CAs (every session then pinned them). Nothing is saved over a file that cannot be
    read."""
    state = rotated.home / configtool.CHAIN_STATE
    saved = state.read_bytes()
    genesis = read_genesis(rotated.home / "genesis.block")
    failing = _unreadable(monkeypatch, state)
    failing.set()
    chain = configtool.ChainConfig(genesis, Verifier(), state)
    assert not chain.resumed
    chain.feed(genesis)  # (all a peer withholding block 1 shows)
    chain.save()
    failing.clear()
    assert state.read_bytes() == saved
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 1


def test_one_orderer_forking_the_chain_does_not_stop_the_follow(rotated: Rotated) -> None:
    """A network of one peer, h01's CA rotated (block 2) after the home verified blocks 0-1: the
    session follows from the orderers. The first one asked -- compromised: it signs blocks with its
    own key -- serves another block 1, signed by itself, so its chain verifies from genesis.block
    and differs at the checkpoint: CHAIN_RESTARTED ended the follow there, the other orderers
    never asked, every follow alike (one orderer's key alone stopped the session for good, and
    told the operator to remove config-chain.json: the genesis CAs pinned again). A restart found
    at one source is now said only when no other extends the chain verified. (The honest
    extension is taken once a majority -- 2 of the 3 orderers -- holds its last block.)"""
    state = rotated.home / configtool.CHAIN_STATE
    genesis = read_genesis(rotated.home / "genesis.block")
    one = _plain_block(rotated.home, 1, genesis)
    rotation = _rotation_block(rotated.home, genesis, rotated.ca_der, previous=one)
    del rotation.metadata.validation_codes[:]
    fork = make_block(1, block_header_hash(genesis.header), [], [node_signer(rotated.home, "orderer.ins01", "ins01")],
                      timestamp_ms=one.header.timestamp_ms + 1)
    fork.metadata.last_config_block = 0
    state.unlink()
    verified = configtool.ChainConfig(genesis, Verifier(), state)
    verified.feed(genesis)
    verified.feed(one)
    verified.save()  # the home verified blocks 0-1 (no rotation yet)
    hostile, honest, third = _Orderer([genesis, fork]), _Orderer([genesis, one, rotation]), _Orderer(
        [genesis, one, rotation])
    net = load_network(rotated.home)
    h01 = next(p for p in net.peers if p.org == "h01")
    ins01 = next(o for o in net.orderers if o.name == "orderer.ins01")
    with _ordering(rotated.home, hostile) as first, _ordering(rotated.home, honest) as second, \
            _ordering(rotated.home, third) as last:
        one_peer = dataclasses.replace(
            net, peers=(dataclasses.replace(h01, host="127.0.0.1", port=rotated.port),),
            orderers=tuple(dataclasses.replace(ins01, host="127.0.0.1", port=port) for port in (first, second, last)))
        s = Session(rotated.home, "h01:dr-jiang", network=one_peer, follow_every_s=0)  # (as _session)
        try:
            result = _health(s)
        finally:
            s.close()
    assert (hostile.asked, honest.asked) == (1, 1)
    assert result == "OK"
    assert json.loads(state.read_text())["height"] == 3


def test_a_follow_that_cannot_open_a_channel_fails_as_a_follow(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:
    """A follow whose channels to the other peers cannot be opened (EMFILE reading the wallet's
    files) let the bare OSError out of the session's call (the FHIR gateway answered 500); it is a
    follow that extended nothing: SERVICE_UNAVAILABLE naming each source's IO_ERROR."""
    import errno

    from client import follow
    from client.wallet import load_identity

    def fail(*args: object, **kwargs: object) -> grpc.Channel:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(follow, "secure_channel", fail)
    with pytest.raises(RxClientError) as e:
        follow.follow_chain(rotated.home, load_network(rotated.home), load_identity(rotated.home, "h01", "dr-jiang"))
    assert e.value.reason == "SERVICE_UNAVAILABLE" and "IO_ERROR: Too many open files" in e.value.message


def test_a_chain_file_removed_meanwhile_is_not_saved_back(rotated: Rotated) -> None:
    """The operator removed config-chain.json (the remedy for CHAIN_RESTARTED) while a config
    command or a session's follow, which had resumed it, verified a block further: its save wrote
    the old chain back (the file missing read as height 0) -- the remedy undone without a word,
    the sessions pinned by the old chain again. A chain resumed from the file saves nothing once
    that file is gone (or no longer its genesis block's): the next command or follow starts from
    what the operator left."""
    state, chain, two = _resumed_and_block_two(rotated, 1)
    chain.feed(two)
    state.unlink()  # (the operator's remedy, meanwhile)
    chain.save()
    assert not state.exists()
