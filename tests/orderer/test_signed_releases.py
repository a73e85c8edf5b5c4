"""Peers sign what they tell the orderers of their release (node.identity.release), so an
orderer cannot relay a word a peer did not give: every orderer checks each statement against
the peer's certificate in the config in force, orders a peer's statements by the peer's own
clock, verifies a statement once, and never takes an unsigned word for a raise
(node.orderer.releases). Each test is an attack, or the honest path, the unsigned relay of
the previous release got wrong or could not tell apart."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from rxchain.v1 import services_pb2

from node.clock import wall_ms
from node.config import Endpoint
from node.crypto.hashing import sha256
from node.crypto.signing import Purpose, Signer, generate_key, load_signer
from node.crypto.tls import secure_channel, server_credentials
from node.identity.release import sign_statement
from node.orderer.metrics import OrdererMetrics
from node.orderer.releases import STATEMENT_AHEAD_MS, ReleaseWatch
from node.orderer.transport import ClusterService, Membership, PeerSender
from node.peer.deliver_client import Backoff, DeliverClient
from node.raft.types import Message, MessageType
from tests.harness.certs import CountingVerifier
from tests.orderer.cluster import wait_until
from tests.orderer.inproc import NullSink
from tests.orderer.test_peer_releases import (
    NETWORK,
    NEWER,
    PEERS,
    T0,
    _deliver_server,
    _node_files,
    _peer_network,
    _tell,
    peer_signer,
    signed_release,
    tell_signed,
)
from tests.orderer.test_peer_releases_redteam import _verdict, _wired_leader

PeerRelease = services_pb2.PeerRelease


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """3 orderers, peer.h01 and peer.h02."""
    return _peer_network(tmp_path_factory.mktemp("signed-releases") / "net")



def _statement(node: str, version: int, cert_der: bytes, at: int = T0) -> bytes:
    return services_pb2.ReleaseStatement(node=node, max_protocol_version=version, signed_wall_ms=at,
                                         cert_sha256=sha256(cert_der)).SerializeToString()


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


def _forgeries(net: Any) -> dict[str, tuple[PeerRelease, str]]:
    """Relayed entries claiming peer.h01 told NEWER, none of them its word, and the reason each
    is refused for."""
    h01, h02 = peer_signer(net, "peer.h01"), peer_signer(net, "peer.h02")
    orderer_cert, orderer_key, _ = _node_files(net, "orderer.ins02")
    orderer = load_signer(orderer_cert, orderer_key, "ins02")
    own = _statement("peer.h01", NEWER, h01.cert_der)

    def entry(statement: bytes, signature: bytes, node: str = "peer.h01") -> PeerRelease:
        return PeerRelease(node=node, max_protocol_version=NEWER, told_wall_ms=T0, statement=statement,
                           signature=signature)

    honest = signed_release(h01, "peer.h01", NEWER)
    flipped_version = _flip(honest.statement, honest.statement.index(bytes([0x10, NEWER])) + 1)
    return {
        "wrong key": (entry(own, Signer(generate_key(), h01.identity).sign(Purpose.RELEASE, own)), "bad_signature"),
        "signed by another peer": (entry(own, h02.sign(Purpose.RELEASE, own)), "bad_signature"),
        "signed by an orderer": (entry(own, orderer.sign(Purpose.RELEASE, own)), "bad_signature"),
        "an orderer's own statement": (
            entry(*sign_statement(orderer, "peer.h01", NEWER, T0, NETWORK)), "other_certificate"),
        "another peer's statement relayed as h01's": (
            entry(*sign_statement(h02, "peer.h02", NEWER, T0, NETWORK)), "other_name"),
        "h01's statement naming h01 under h02's certificate digest": (
            entry(_statement("peer.h01", NEWER, h02.cert_der), h01.sign(Purpose.RELEASE, own)), "other_certificate"),
        "signed for another purpose": (entry(own, h01.sign(Purpose.ENVELOPE, own)), "bad_signature"),
        "a bit of the version flipped": (entry(flipped_version, honest.signature), "bad_signature"),
        "a bit of the signature flipped": (entry(honest.statement, _flip(honest.signature, 10)), "bad_signature"),
        "garbage": (entry(b"\xff\xff\xff", honest.signature), "malformed"),
        "no signature": (entry(honest.statement, b""), "malformed"),
    }


def test_forged_relays_are_dropped_and_the_raise_stays_refused(net: Any, tmp_path: Path, newer: int) -> None:
    """A hostile (or buggy) orderer relays "peer.h01 told NEWER" in every way but with
    peer.h01's signature over that very statement: each entry is dropped and counted, the
    raise stays refused naming peer.h01 (the reviewed code took the relayed version and admitted
    it, which would stop peer.h01 at that block). Nothing raises: the relay is just ignored."""
    refused: list[str] = []
    watch = ReleaseWatch(lambda: T0 + 1000, on_refused=refused.append)
    lead = _wired_leader(net, tmp_path, watch)
    try:
        tell_signed(watch, net, "peer.h02", newer)
        forgeries = _forgeries(net)
        for sender, (what, (entry, reason)) in enumerate(forgeries.items(), start=10):
            # each from another orderer: one that relayed a bad signature is not believed for a while
            watch.merge_peers([entry], T0, sender)
            said = _verdict(lead)
            assert "peers [peer.h01 (never heard from)]" in said, (what, said)
            assert refused[-1] == reason, (what, refused)
        assert len(refused) == len(forgeries)
        assert set(watch.peers()) == {"peer.h02"}
        # relayed again (every few seconds): dropped again, the signatures not verified again
        watch.merge_peers([e for e, _ in forgeries.values()], T0, 99)
        assert "peers [peer.h01 (never heard from)]" in _verdict(lead)
    finally:
        lead.close()


def test_a_replayed_older_statement_does_not_override_a_newer_one(net: Any, tmp_path: Path, newer: int) -> None:
    """peer.h01 ran the new release (and said so, signed), then was rolled back to the older
    one and told that, signed, a second later. A hostile orderer replays the first statement
    with a fresh relay stamp: the reviewed code ordered relays by that stamp, so the old word
    came back and the raise was admitted. The peer's signed clock orders its statements: the
    replay changes nothing, whichever order the two arrive in."""
    now = [T0 + 2000]
    watch = ReleaseWatch(lambda: now[0])
    lead = _wired_leader(net, tmp_path, watch)
    h01 = peer_signer(net, "peer.h01")
    upgraded = signed_release(h01, "peer.h01", newer, T0)
    try:
        tell_signed(watch, net, "peer.h02", newer)
        watch.merge_peers([upgraded])
        assert _verdict(lead) == ""
        tell_signed(watch, net, "peer.h01", newer - 1, T0 + 1000)  # the rollback, told to this orderer
        now[0] = T0 + 10_000
        replay = PeerRelease()
        replay.CopyFrom(upgraded)
        replay.told_wall_ms = T0 + 5000  # a fresh stamp on an old statement
        watch.merge_peers([replay], T0 + 10_000)
        said = _verdict(lead)
        assert f"peers [peer.h01 (told {newer - 1})]" in said, said
        assert watch.peers()["peer.h01"].told_ms == T0 + 1000

        fresh = ReleaseWatch(lambda: now[0])  # another orderer: the newer statement first, relayed
        lead2 = _wired_leader(net, tmp_path / "other", fresh)
        try:
            fresh.merge_peers(watch.relay())
            fresh.merge_peers([replay])
            assert fresh.peers()["peer.h01"] == watch.peers()["peer.h01"]
            assert f"peers [peer.h01 (told {newer - 1})]" in _verdict(lead2)
        finally:
            lead2.close()
    finally:
        lead.close()


def test_an_unsigned_tell_does_not_admit_a_raise(net: Any, tmp_path: Path, newer: int) -> None:
    """Both peers tell NEWER without a statement (a peer of the previous release does, and so
    would anybody wanting to pass off an older peer as upgraded): the reviewed code admitted
    the raise. Unsigned words are kept, shown as unsigned and hold a raise back; an unsigned
    relay (an orderer of the previous release) later than a peer's signed word holds it back
    too, never the other way round."""
    now = [T0]
    watch = ReleaseWatch(lambda: now[0])
    lead = _wired_leader(net, tmp_path, watch)
    server, target, (deliver, blocks) = _deliver_server(net, tmp_path / "deliver", watch)
    try:
        for peer in PEERS:
            _tell(target, _node_files(net, peer), newer)
        said = _verdict(lead)
        assert f"peers [peer.h01 (told {newer} unsigned), peer.h02 (told {newer} unsigned)]" in said, said
        assert {p: t.signed for p, t in watch.peers().items()} == dict.fromkeys(PEERS, False)
        tell_signed(watch, net, "peer.h01", newer, T0 + 1)
        tell_signed(watch, net, "peer.h02", newer, T0 + 1)
        assert _verdict(lead) == ""
        now[0] = T0 + 10
        # an orderer of the previous release relays an unsigned, later word: it holds the raise back
        watch.merge_peers([PeerRelease(node="peer.h02", max_protocol_version=newer, told_wall_ms=T0 + 2)])
        assert f"peers [peer.h02 (told {newer} unsigned)]" in _verdict(lead)
        # an earlier one changes nothing
        tell_signed(watch, net, "peer.h02", newer, T0 + 3)
        watch.merge_peers([PeerRelease(node="peer.h02", max_protocol_version=newer, told_wall_ms=T0 + 2)])
        assert _verdict(lead) == ""
    finally:
        server.stop(0)
        deliver.close()
        blocks.close()
        lead.close()


def test_a_deliver_request_speaks_for_its_caller_only(net: Any, tmp_path: Path) -> None:
    """Over mutual TLS: peer.h02 presents peer.h01's signed statement, peer.h01 signs one naming
    peer.h02, peer.h01 sends a statement whose signature is broken. Each is refused, and the
    request's unsigned max_protocol_version is not taken instead (the reviewed code recorded it
    for the caller)."""
    refused: list[str] = []
    watch = ReleaseWatch(lambda: T0, on_refused=refused.append)
    server, target, (deliver, blocks) = _deliver_server(net, tmp_path, watch)
    h01, h02 = peer_signer(net, "peer.h01"), peer_signer(net, "peer.h02")
    try:
        _tell(target, _node_files(net, "peer.h02"), NEWER, *sign_statement(h01, "peer.h01", NEWER, T0, NETWORK))
        _tell(target, _node_files(net, "peer.h01"), NEWER, *sign_statement(h01, "peer.h02", NEWER, T0, NETWORK))
        statement, signature = sign_statement(h01, "peer.h01", NEWER, T0, NETWORK)
        _tell(target, _node_files(net, "peer.h01"), NEWER, statement, _flip(signature, 12))
        _tell(target, _node_files(net, "peer.h02"), NEWER, statement, b"")
        assert refused == ["other_certificate", "other_name", "bad_signature", "malformed"]
        assert watch.peers() == {}
        _tell(target, _node_files(net, "peer.h02"), NEWER, *sign_statement(h02, "peer.h02", NEWER, T0, NETWORK))
        assert {p: (t.version, t.signed) for p, t in watch.peers().items()} == {"peer.h02": (NEWER, True)}
    finally:
        server.stop(0)
        deliver.close()
        blocks.close()


def test_statements_signed_far_ahead_are_refused(net: Any, tmp_path: Path, newer: int) -> None:
    """A peer whose clock runs ten minutes ahead: its statements would outrank its later words
    (after the clock is corrected) for ten minutes; refused, direct or relayed. Within the
    bound they count."""
    refused: list[str] = []
    watch = ReleaseWatch(lambda: T0, on_refused=refused.append)
    lead = _wired_leader(net, tmp_path, watch)
    try:
        tell_signed(watch, net, "peer.h01", newer, T0 + 600_000)
        watch.merge_peers([signed_release(peer_signer(net, "peer.h02"), "peer.h02", newer, T0 + 600_000)])
        assert refused == ["ahead", "ahead"] and watch.peers() == {}
        tell_signed(watch, net, "peer.h01", newer, T0 + STATEMENT_AHEAD_MS)
        watch.merge_peers([signed_release(peer_signer(net, "peer.h02"), "peer.h02", newer, T0 - 3_600_000)])
        assert _verdict(lead) == ""
    finally:
        lead.close()


def test_a_statement_is_verified_once_per_orderer(net: Any, tmp_path: Path) -> None:
    """Relays repeat every few seconds and carry the same bytes: each statement costs one
    signature verification at an orderer, however often it arrives; the relay built from them
    carries the statements byte for byte, and repeats their fields for orderers of the previous
    release."""
    verifier = CountingVerifier()
    watch = ReleaseWatch(lambda: T0, verifier=verifier)
    lead = _wired_leader(net, tmp_path, watch)
    try:
        tell_signed(watch, net, "peer.h01", 1)
        assert verifier.calls == 1
        relay = [*watch.relay(), signed_release(peer_signer(net, "peer.h02"), "peer.h02", 1)]
        for _ in range(50):
            watch.merge_peers(relay)
        assert verifier.calls == 2  # peer.h02's; peer.h01's statement was held already
        out = {r.node: r for r in watch.relay()}
        for r in relay:
            assert out[r.node].statement == r.statement and out[r.node].signature == r.signature
            said = services_pb2.ReleaseStatement.FromString(r.statement)
            assert (out[r.node].max_protocol_version, out[r.node].told_wall_ms) == (
                said.max_protocol_version, said.signed_wall_ms)
        # a hostile relay making up 500 newer statements of peer.h01 in one message: one verified
        h01 = peer_signer(net, "peer.h01")
        made_up = []
        for i in range(500):
            statement = _statement("peer.h01", NEWER, h01.cert_der, T0 + 1 + i)
            made_up.append(PeerRelease(node="peer.h01", statement=statement, signature=b"0" * 70))
        calls = verifier.calls
        watch.merge_peers(made_up)
        assert verifier.calls == calls + 1 and watch.refused["bad_signature"] == 1
        assert watch.peers()["peer.h01"].told_ms == T0
        other = ReleaseWatch(lambda: T0, verifier=verifier)  # another orderer: its own verification
        _wired_leader(net, tmp_path / "other", other).close()
        other.merge_peers(watch.relay())
        other.merge_peers(watch.relay())
        assert verifier.calls == calls + 3 and other.peers() == watch.peers()
    finally:
        lead.close()


def _puller(net: Any, peer: str, target: str, version: int) -> DeliverClient:
    """Peer ``peer``'s block puller against the Deliver at ``target``, telling ``version``
    signed with its node key (as node.peer.server wires it)."""
    cert, key, ca = _node_files(net, peer)
    signer = peer_signer(net, peer)
    got: list[int] = []

    def sign(v: int) -> tuple[bytes, bytes]:
        return sign_statement(signer, peer, v, wall_ms(), NETWORK)

    return DeliverClient([Endpoint("orderer.ins02", "ins02", "127.0.0.1", int(target.rsplit(":", 1)[1]))],
                         lambda t: secure_channel(t, cert, key, ca), lambda: len(got),
                         lambda b: got.append(b.header.number), Backoff(0.01, 0.05), stall_s=0,
                         max_protocol_version=version, sign_release=sign)


def test_real_peers_signing_admit_the_raise(net: Any, tmp_path: Path, newer: int) -> None:
    """The honest path: both peers' block pullers (their node certificates and keys, the real
    clock) tell a follower's Deliver, signed; the follower relays the statements to the leader
    over mutual TLS; the leader checks them against the config and admits the raise."""
    ins01, ins02 = (next(o for o in net.orderers() if o.name == n) for n in ("orderer.ins01", "orderer.ins02"))
    leader_watch = ReleaseWatch()
    lead = _wired_leader(net, tmp_path / "lead", leader_watch)
    config = lead.tracker.current.config
    cluster = ClusterService(1, Membership([(o.raft_id, o.cert_der, "") for o in config.orderers]), NullSink(),
                             None, OrdererMetrics("signed"), releases=leader_watch)  # type: ignore[arg-type]
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([cluster.handler()])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(*_node_files(net, "orderer.ins01")))
    server.start()
    follower_watch = ReleaseWatch()
    deliver_server, target, (deliver, blocks) = _deliver_server(net, tmp_path / "follower", follower_watch)
    pullers = [_puller(net, peer, target, newer) for peer in PEERS]
    sender = PeerSender(ins02.raft_id, ins01.raft_id, f"127.0.0.1:{port}",
                        lambda t: secure_channel(t, *_node_files(net, "orderer.ins02")), NullSink(),
                        releases=follower_watch)
    try:
        assert "peers [peer.h01 (never heard from), peer.h02 (never heard from)]" in _verdict(lead)
        for puller in pullers:
            puller.start()
        wait_until(lambda: len(follower_watch.peers()) == 2, 10, what="both peers told the follower")
        sender.send(Message(MessageType.HEARTBEAT_RESP, to=1, frm=2, term=1))
        wait_until(lambda: len(leader_watch.peers()) == 2, 10, what="the relay at the leader")
        assert all(t.signed and t.version == newer for t in leader_watch.peers().values())
        assert leader_watch.refused == {} and follower_watch.refused == {}
        assert _verdict(lead) == ""
    finally:
        for puller in pullers:
            puller.stop()
        sender.close()
        server.stop(0)
        deliver_server.stop(0)
        deliver.close()
        blocks.close()
        lead.close()


def test_a_peer_rolled_back_is_not_held_to_its_signed_word_by_its_clock_ahead(
        net: Any, tmp_path: Path, newer: int) -> None:
    """peer.h01's clock runs two minutes ahead; it said NEWER, signed, then was rolled back to a
    release that does not sign and told this orderer so a second later. Stamped with this
    orderer's clock the unsigned word looked two minutes older than the signed one and was
    ignored, so the raise was admitted with peer.h01 on the older release. A word told here is
    later than the one before it; the other orderers take it once their clocks pass the
    signed stamp (relayed unsigned stamps are never later than the receiver's clock)."""
    now = [T0]
    watch = ReleaseWatch(lambda: now[0])
    lead = _wired_leader(net, tmp_path, watch)
    other_now = [T0]
    other = ReleaseWatch(lambda: other_now[0])
    lead2 = _wired_leader(net, tmp_path / "other", other)
    try:
        tell_signed(watch, net, "peer.h02", newer)
        tell_signed(watch, net, "peer.h01", newer, T0 + 120_000)
        other.merge_peers(watch.relay())
        assert _verdict(lead) == "" and _verdict(lead2) == ""
        now[0] = T0 + 1000
        watch.certificate_told(peer_signer(net, "peer.h01").cert_der, newer - 1)  # unsigned, the older release
        assert f"peers [peer.h01 (told {newer - 1} unsigned)]" in _verdict(lead)
        other.merge_peers(watch.relay())
        assert _verdict(lead2) == ""  # its clock has not passed the signed stamp yet
        other_now[0] = T0 + 121_000
        other.merge_peers(watch.relay())
        assert f"peers [peer.h01 (told {newer - 1} unsigned)]" in _verdict(lead2)
    finally:
        lead2.close()
        lead.close()
