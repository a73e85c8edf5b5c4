"""Peers take part in rolling upgrades: each tells its release in its Deliver requests, in a
statement it signs, the orderer serving the stream attributes it to the peer by the
certificate the caller proved on the TLS connection, orderers relay what peers told in their
Raft messages, and the leader refuses a config update raising the protocol version while a
peer of the config has not told, signed, it implements it, naming the peer
(node.orderer.releases)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509 as cx509
from cryptography.hazmat.primitives.serialization import Encoding
from netgen import generate
from netgen.ports import free_base_port
from rxchain.v1 import config_pb2, services_pb2

from client.admin import AdminClient
from client.wallet import WalletIdentity
from node.clock import wall_ms
from node.config import Endpoint
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Signer, load_signer
from node.crypto.tls import secure_channel, server_credentials
from node.genesis import read_genesis
from node.identity.release import sign_statement
from node.orderer.deliver import DeliverService
from node.orderer.metrics import OrdererMetrics
from node.orderer.releases import MAX_RELAYED_PEERS, PeerTold, ReleaseWatch, peer_release_intake
from node.orderer.ticket import Ticket
from node.orderer.transport import ClusterService, Membership, PeerSender
from node.peer.deliver_client import Backoff, DeliverClient
from node.protocol import MAX_PROTOCOL_VERSION, SUPPORTED_VERSIONS
from node.raft.types import Message, MessageType
from tests.harness.certs import issue_from_org_ca, write_cert_files
from tests.orderer.cluster import Client, OrdererProcs, config_envelope, consortium, leader_of, wait_until
from tests.orderer.inproc import Leader, NullSink, genesis_parts, step_server

NEWER = max(SUPPORTED_VERSIONS) + 1
T0 = 1_800_000_000_000
PEERS = ["peer.h01", "peer.h02"]
NETWORK = b""  # the network the statements under test name: a ReleaseWatch's by default (tests)


def _peer_network(home: Path) -> Any:
    """The 3-orderer test consortium with two hospitals running a peer each."""
    spec = consortium(free_base_port(5))
    for org in spec["organizations"]:
        if org["id"] == "h01":
            org["peer"] = True
    spec["organizations"].append({"id": "h02", "name": "Hospital 2", "kind": "hospital", "level": "community",
                                  "peer": True, "users": []})
    net = generate(spec, home)
    for n in net.orderers():
        path = net.node_config_path(n.name)
        doc = yaml.safe_load(path.read_text())
        doc["extra"] = {"tick_ms": 50, "election_tick": 10, "commit_timeout_ms": 4000}
        path.write_text(yaml.safe_dump(doc))
    return net


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _peer_network(tmp_path_factory.mktemp("peer-releases") / "net")


def _node_files(net: Any, name: str) -> tuple[Path, Path, Path]:
    d = net.home / "nodes" / name
    return d / "cert.pem", d / "key.pem", d / "ca-bundle.pem"


def peer_signer(net: Any, name: str) -> Signer:
    """The signing key and certificate of peer ``name`` (its node files)."""
    cert, key, _ = _node_files(net, name)
    return load_signer(cert, key, name.rsplit(".", 1)[-1])


def network_of(net: Any) -> bytes:
    """The network a node of ``net`` tells its releases in: its genesis block header hash."""
    return block_header_hash(read_genesis(net.genesis_path).header)


def signed_release(signer: Signer, name: str, version: int, at: int = T0) -> services_pb2.PeerRelease:
    """A relayed entry of the statement ``signer`` signs as peer ``name`` at ``at``."""
    statement, signature = sign_statement(signer, name, version, at, NETWORK)
    return services_pb2.PeerRelease(node=name, max_protocol_version=version, told_wall_ms=at,
                                    statement=statement, signature=signature)


def tell_signed(watch: ReleaseWatch, net: Any, name: str, version: int, at: int = T0) -> None:
    """Peer ``name`` tells ``version`` (signed at ``at``) in a Deliver request to this orderer."""
    signer = peer_signer(net, name)
    watch.certificate_told(signer.cert_der, version, *sign_statement(signer, name, version, at, NETWORK))


def follow(watch: ReleaseWatch, lead: Leader) -> ReleaseWatch:
    """``watch`` follows the leader's config in force (as node.orderer.server wires it)."""
    watch.follow_config(((p.name, p.cert_der) for p in lead.tracker.current.config.peers), 0)
    return watch


def _raise(lead: Leader, net: Any, drop_peer: str = "") -> str:
    """Submit to the leader an update raising the version (and removing ``drop_peer``); ""
    when admitted, else the refusal's reason and message."""
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(lead.tracker.current.config)
    new.sequence += 1
    new.protocol_version = NEWER
    if drop_peer:
        kept = [p for p in new.peers if p.name != drop_peer]
        del new.peers[:]
        new.peers.extend(kept)
    ticket = Ticket("cfg")
    lead.chain._on_submit(config_envelope(net, new, ["ins01", "ins02", "ins03"]), ticket, True)
    out = ticket.peek()
    return "" if out is None else f"{out.reason} {out.message}"


def test_a_raise_waits_for_every_peer_and_names_the_ones_lacking(net: Any, tmp_path: Path, newer: int) -> None:
    releases = ReleaseWatch(lambda: T0)
    lead = Leader(net, tmp_path, releases=releases)  # the only voter: no orderer to wait for
    follow(releases, lead)
    try:
        said = _raise(lead, net)  # no peer ever connected
        assert said.startswith("BAD_CONFIG_UPDATE peers [peer.h01 (never heard from), peer.h02 (never heard "
                               f"from)] have not told they implement protocol version {newer}"), said
        assert "orderers" not in said
        tell_signed(releases, net, "peer.h01", newer - 1)  # still the older release
        said = _raise(lead, net)
        assert f"peers [peer.h01 (told {newer - 1}), peer.h02 (never heard from)]" in said, said
        tell_signed(releases, net, "peer.h01", newer, T0 + 1)
        said = _raise(lead, net)
        assert "peers [peer.h02 (never heard from)]" in said and "peer.h01" not in said, said
        tell_signed(releases, net, "peer.h02", newer)
        assert _raise(lead, net) == ""  # admitted: on its way into a block
        assert lead.chain._config_inflight is not None
    finally:
        lead.close()


def test_a_peer_removed_by_the_raising_update_is_not_waited_for(net: Any, tmp_path: Path, newer: int) -> None:
    releases = ReleaseWatch(lambda: T0)
    lead = Leader(net, tmp_path, releases=releases)
    follow(releases, lead)
    try:
        tell_signed(releases, net, "peer.h01", newer)
        assert "peers [peer.h02 (never heard from)]" in _raise(lead, net)
        assert _raise(lead, net, drop_peer="peer.h02") == ""
    finally:
        lead.close()


def test_lacking_orderers_and_peers_are_named_together(net: Any, tmp_path: Path, newer: int) -> None:
    from node.raft.types import ConfState

    releases = ReleaseWatch(lambda: T0)
    lead = Leader(net, tmp_path, ConfState(voters=(1, 2, 3)), releases=releases)
    follow(releases, lead)
    try:
        releases.observe(2, newer)
        tell_signed(releases, net, "peer.h01", newer)
        said = _raise(lead, net)
        assert said.startswith("BAD_CONFIG_UPDATE orderers [3] have not told"), said
        assert "; peers [peer.h02 (never heard from)]" in said and said.endswith(": upgrade them first"), said
    finally:
        lead.close()


# ------------------------------------------------------------------ Deliver: who told


def _deliver_server(net: Any, tmp_path: Path, releases: ReleaseWatch) -> tuple[grpc.Server, str, Any]:
    """orderer.ins01's Deliver over mutual TLS (its own certificate), telling ``releases``
    what its callers tell."""
    _, blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "blocks")
    deliver = DeliverService(blocks, tracker.msp, wall_ms, poll_s=0.05,
                             release_told=peer_release_intake(lambda: tracker.current.config, releases))
    server = grpc.server(ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("rxchain.v1.AtomicBroadcast", {
        "Deliver": grpc.unary_stream_rpc_method_handler(
            deliver.deliver_bytes, request_deserializer=services_pb2.DeliverRequest.FromString,
            response_serializer=None)})])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(*_node_files(net, "orderer.ins01")))
    server.start()
    return server, f"127.0.0.1:{port}", (deliver, blocks)


def _tell(target: str, files: tuple[Path, Path, Path], version: int, statement: bytes = b"",
          signature: bytes = b"") -> None:
    """One Deliver request (the genesis block only) telling ``version`` (and the release
    statement ``statement`` signed ``signature``), from the caller presenting ``files`` (cert,
    key, CA bundle)."""
    with secure_channel(target, *files) as ch:
        call = ch.unary_stream("/rxchain.v1.AtomicBroadcast/Deliver",
                               request_serializer=services_pb2.DeliverRequest.SerializeToString,
                               response_deserializer=services_pb2.DeliverResponse.FromString)
        answers = list(call(services_pb2.DeliverRequest(
            start_block=0, stop_block=0, max_protocol_version=version, release_statement=statement,
            release_signature=signature), timeout=10))
    assert answers[0].block.header.number == 0 and answers[-1].status.reason == "OK"


def test_only_the_peer_holding_the_certificate_speaks_for_it(net: Any, tmp_path: Path) -> None:
    """A member client, another peer, and a certificate the peer's own organisation issued in
    the peer's name but not the one the config registers: none is taken for peer.h01."""
    releases = ReleaseWatch(lambda: T0)
    server, target, (deliver, blocks) = _deliver_server(net, tmp_path, releases)
    try:
        client = Client(net, "h01", "dr")
        _tell(target, (client.cert, client.key, client.ca), 9)
        assert releases.peers() == {}
        cert, key = issue_from_org_ca(net.home, "h01", "peer.h01", "peer", ("127.0.0.1", "localhost"))
        forged = write_cert_files(cert, key, tmp_path / "forged")
        _tell(target, (*forged, net.ca_bundle_path), 9)
        assert releases.peers() == {}
        _tell(target, _node_files(net, "peer.h02"), 9)  # peer.h02 speaks for itself only
        assert releases.peers() == {"peer.h02": PeerTold(9, T0)}
        _tell(target, _node_files(net, "peer.h01"), 1)
        assert releases.peers() == {"peer.h02": PeerTold(9, T0), "peer.h01": PeerTold(1, T0)}
    finally:
        server.stop(0)
        deliver.close()
        blocks.close()


def test_only_peer_certificates_have_their_word_set_aside(net: Any, tmp_path: Path) -> None:
    """A certificate no peer of the config holds has its word set aside for a config that may
    name it later (a peer started on its new certificate before the rotation commits): only a
    peer certificate's. A member's client telling versions would otherwise fill the set-aside
    slots (pushing out a real peer's word) and, named a peer by a careless config, bring a word
    it never had the role to give."""
    releases = ReleaseWatch(lambda: T0)
    server, target, (deliver, blocks) = _deliver_server(net, tmp_path, releases)
    try:
        client = Client(net, "h01", "dr")
        _tell(target, (client.cert, client.key, client.ca), 9)
        cert, key = issue_from_org_ca(net.home, "h01", "peer.h09", "peer", ("127.0.0.1", "localhost"))
        _tell(target, (*write_cert_files(cert, key, tmp_path / "h09"), net.ca_bundle_path), 9)
        client_der = cx509.load_pem_x509_certificate(Path(client.cert).read_bytes()).public_bytes(Encoding.DER)
        releases.follow_config([("peer.dr", client_der), ("peer.h09", cert.public_bytes(Encoding.DER))], T0)
        assert releases.peers() == {"peer.h09": PeerTold(9, T0)}
    finally:
        server.stop(0)
        deliver.close()
        blocks.close()


def test_a_peers_deliver_client_tells_its_release(net: Any, tmp_path: Path) -> None:
    """The peer's block puller, with the peer's node certificate and key, against an orderer's
    Deliver: it tells its release in a statement it signs."""
    releases = ReleaseWatch(lambda: T0 + 60_000)
    server, target, (deliver, blocks) = _deliver_server(net, tmp_path, releases)
    cert, key, ca = _node_files(net, "peer.h01")
    signer = peer_signer(net, "peer.h01")
    got: list[int] = []
    puller = DeliverClient([Endpoint("orderer.ins01", "ins01", "127.0.0.1", int(target.rsplit(":", 1)[1]))],
                           lambda t: secure_channel(t, cert, key, ca), lambda: len(got),
                           lambda b: got.append(b.header.number), Backoff(0.01, 0.05), stall_s=0,
                           sign_release=lambda v: sign_statement(signer, "peer.h01", v, T0, NETWORK))
    puller.start()
    try:
        wait_until(lambda: "peer.h01" in releases.peers(), 10, what="peer.h01 told its release")
        told = releases.peers()["peer.h01"]
        assert (told.version, told.told_ms, told.signed) == (MAX_PROTOCOL_VERSION, T0, True)  # the peer's clock
        said = services_pb2.ReleaseStatement.FromString(told.statement)
        assert (said.node, said.max_protocol_version) == ("peer.h01", MAX_PROTOCOL_VERSION)
        assert releases.refused == {}
        assert got == [0]
    finally:
        puller.stop()
        server.stop(0)
        deliver.close()
        blocks.close()


# ------------------------------------------------------------------ relay between orderers


def test_releases_keep_the_latest_told_per_peer() -> None:
    now = [T0]
    watch = ReleaseWatch(lambda: now[0], max_peers=3)
    watch.peer_told("peer.a", 2)
    changes = watch.peer_changes
    relayed = services_pb2.PeerRelease
    watch.merge_peers([relayed(node="peer.a", max_protocol_version=1, told_wall_ms=T0 - 5),  # older: ignored
                       relayed(node="peer.b", max_protocol_version=3, told_wall_ms=T0 + 3_600_000),  # ahead
                       relayed(node="", max_protocol_version=3, told_wall_ms=T0),  # no name
                       relayed(node="x" * 257, max_protocol_version=3, told_wall_ms=T0),  # too long
                       relayed(node="peer.c", max_protocol_version=3)])  # never heard
    assert watch.peers() == {"peer.a": PeerTold(2, T0), "peer.b": PeerTold(3, T0)}  # clamped to now
    assert watch.peer_changes == changes + 1
    now[0] += 10
    watch.peer_told("peer.b", 3)  # the same version again: kept fresh, nothing to relay at once
    assert watch.peer_changes == changes + 1 and watch.peers()["peer.b"] == PeerTold(3, T0 + 10)
    watch.merge_peers([relayed(node="peer.a", max_protocol_version=1, told_wall_ms=T0 + 5)])  # later: kept
    assert watch.peers()["peer.a"] == PeerTold(1, T0 + 5) and watch.peer_changes == changes + 2
    assert [(r.node, r.told_wall_ms) for r in watch.relay()] == [("peer.b", T0 + 10), ("peer.a", T0 + 5)]
    watch.peer_told("peer.c", 1)
    watch.peer_told("peer.d", 1)  # over max_peers: the longest silent (peer.a) is forgotten
    assert set(watch.peers()) == {"peer.b", "peer.c", "peer.d"}
    many = [relayed(node=f"peer.{i}", max_protocol_version=1, told_wall_ms=T0) for i in range(MAX_RELAYED_PEERS + 5)]
    big = ReleaseWatch(lambda: T0, max_peers=10 * MAX_RELAYED_PEERS)
    big.merge_peers(many)
    assert len(big.peers()) == MAX_RELAYED_PEERS


def test_a_sender_relays_on_a_change_and_every_few_seconds_only() -> None:
    server, port, got = step_server()
    watch = ReleaseWatch(lambda: T0)
    watch.peer_told("peer.h01", 1)
    mono = [50.0]
    sender = PeerSender(2, 1, f"127.0.0.1:{port}", grpc.insecure_channel, NullSink(), releases=watch,
                        clock=lambda: mono[0], relay_refresh_s=5.0)

    def send_one(expected: int) -> list[str]:
        sender.send(Message(MessageType.HEARTBEAT, to=1, frm=2, term=1))
        wait_until(lambda: len(got) == expected, 10, what=f"{expected} messages")
        return [r.node for r in got[-1].peer_releases]

    try:
        assert send_one(1) == ["peer.h01"]  # the first message of the stream
        assert send_one(2) == []  # nothing new
        watch.peer_told("peer.h02", 2)
        assert send_one(3) == PEERS  # a change: at once
        mono[0] += 4.9
        assert send_one(4) == []
        mono[0] += 0.2
        assert send_one(5) == PEERS  # the refresh
    finally:
        sender.close()
        server.stop(0)


def test_what_a_follower_heard_reaches_the_leader_which_then_admits_the_raise(
        net: Any, tmp_path: Path, newer: int) -> None:
    """orderer.ins02 (a follower) heard both peers; its Raft messages to orderer.ins01 (the
    leader, over mutual TLS) carry that, and the leader admits the raise. A peer calling the
    Cluster service with a relay of its own is refused."""
    ins01, ins02 = (next(o for o in net.orderers() if o.name == n) for n in ("orderer.ins01", "orderer.ins02"))
    leader_releases = ReleaseWatch(lambda: T0)
    lead = Leader(net, tmp_path / "lead", releases=leader_releases)
    consortium_config = lead.tracker.current.config
    members = Membership([(o.raft_id, o.cert_der, "") for o in consortium_config.orderers])
    cluster = ClusterService(1, members, NullSink(), None, OrdererMetrics("relay"),  # type: ignore[arg-type]
                             releases=leader_releases)
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([cluster.handler()])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(*_node_files(net, "orderer.ins01")))
    server.start()
    target = f"127.0.0.1:{port}"
    follow(leader_releases, lead)
    follower_releases = follow(ReleaseWatch(lambda: T0 + 7), lead)
    sender = PeerSender(ins02.raft_id, ins01.raft_id, target,
                        lambda t: secure_channel(t, *_node_files(net, "orderer.ins02")), NullSink(),
                        releases=follower_releases)
    try:
        assert "peers [peer.h01 (never heard from), peer.h02 (never heard from)]" in _raise(lead, net)
        # a peer is no orderer: its Step stream is refused, its relay never merged
        with secure_channel(target, *_node_files(net, "peer.h02")) as ch:
            step = ch.stream_unary("/rxchain.v1.Cluster/Step",
                                   request_serializer=services_pb2.ConsensusRequest.SerializeToString,
                                   response_deserializer=services_pb2.ConsensusResponse.FromString)
            forged = services_pb2.ConsensusRequest(from_id=2, peer_releases=[services_pb2.PeerRelease(
                node="peer.h01", max_protocol_version=newer, told_wall_ms=T0)])
            with pytest.raises(grpc.RpcError) as refused:
                step(iter([forged]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert leader_releases.peers() == {}
        tell_signed(follower_releases, net, "peer.h01", newer)
        tell_signed(follower_releases, net, "peer.h02", newer)
        sender.send(Message(MessageType.HEARTBEAT_RESP, to=1, frm=2, term=1))
        wait_until(lambda: len(leader_releases.peers()) == 2, 10, what="the relay at the leader")
        assert leader_releases.peers() == follower_releases.peers()  # the peers' statements, verbatim
        assert {p: (t.version, t.told_ms, t.signed) for p, t in leader_releases.peers().items()} == dict.fromkeys(PEERS, (newer, T0, True))
        assert _raise(lead, net) == ""
    finally:
        sender.close()
        server.stop(0)
        lead.close()


# ------------------------------------------------------------------ orderer processes


@pytest.mark.integration
def test_every_orderer_shows_what_a_peer_told_one_of_them(net: Any) -> None:
    """Three orderer processes; peer.h01 tells its release, signed, to one follower only. Every
    orderer's Admin.Status shows it (relayed) with the peer's statement, and peer.h02, never
    connected, as never heard from; once peer.h02 (a peer of the previous release) tells its
    release unsigned to the other follower, every orderer shows that as unsigned (no
    statement), and so does the operator's AdminClient."""
    procs = OrdererProcs(net)
    procs.start_all()
    try:
        client = Client(net, "h01", "dr")
        leader = wait_until(lambda: leader_of(procs, client), 30, what="a leader")
        follower, other = [n for n in procs.names() if n != leader]
        statement, signature = sign_statement(peer_signer(net, "peer.h01"), "peer.h01", MAX_PROTOCOL_VERSION,
                                              wall_ms(), network_of(net))
        _tell(procs.target(follower), _node_files(net, "peer.h01"), MAX_PROTOCOL_VERSION, statement, signature)

        def shown(name: str) -> dict[str, tuple[int, bool, bytes]]:
            st = client.status(procs.target(name))
            return {p.node: (p.max_protocol_version, p.told_wall_ms > 0, p.statement) for p in st.peer_releases}

        expected = {"peer.h01": (MAX_PROTOCOL_VERSION, True, statement), "peer.h02": (0, False, b"")}
        for name in procs.names():
            wait_until(lambda n=name: shown(n) == expected, 15, what=f"{name} shows what peer.h01 told")
        _tell(procs.target(other), _node_files(net, "peer.h02"), MAX_PROTOCOL_VERSION)  # unsigned
        expected["peer.h02"] = (MAX_PROTOCOL_VERSION, True, b"")
        for name in procs.names():
            wait_until(lambda n=name: shown(n) == expected, 15, what=f"{name} shows peer.h02 unsigned")
        ident = WalletIdentity("h01", "dr", "doctor", {}, client.cert, client.key, client.ca, client.signer)
        with AdminClient(ident, procs.target(leader)) as admin:
            health = admin.status(leader)
        assert dict(health.peer_protocol_versions) == {"peer.h01": MAX_PROTOCOL_VERSION,
                                                       "peer.h02": MAX_PROTOCOL_VERSION}
        assert health.peers_unsigned == ("peer.h02",)
    finally:
        procs.close()
