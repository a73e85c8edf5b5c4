"""An orderer a config update takes out of the orderer set keeps its Raft messages (only) until
Raft has applied its removal: the REMOVE_NODE is committed by the voters before it, the removed
one among them (with two orderers going to one, its acknowledgement is the only way to a
majority). Forwarding stays with the orderers of the config in force; a restarted orderer finds
the orderers taken out in its block store; a config revoking the removed one's certificate cuts
it off at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from netgen.ports import free_base_port
from rxchain.v1 import block_pb2, config_pb2, identity_pb2, services_pb2

from node.crypto.canonical import block_data_hash, block_header_hash
from node.crypto.signing import Verifier
from node.crypto.tls import NodeChannels, secure_channel, server_credentials
from node.crypto.x509 import cert_info_der
from node.genesis import config_from_genesis, read_genesis
from node.identity.msp import MSP
from node.ledger.blockstore import BlockStore
from node.orderer.configtx import OrdererConfig
from node.orderer.metrics import OrdererMetrics
from node.orderer.raft_codec import encode_message
from node.orderer.server import _admits, _former_orderers
from node.orderer.transport import ClusterService, Membership, RaftTransport
from node.raft.types import Message, MessageType
from tests.orderer.cluster import config_envelope, make_network, without_orderer
from tests.orderer.inproc import NullSink, step_server


def _now_ms() -> int:
    """The wall clock now (a time taken at import was minutes before a module-scoped network's
    certificates were issued in a long run: they were not valid yet at it)."""
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return make_network(tmp_path_factory.mktemp("departing") / "net")


def _entries_of(o: config_pb2.OrdererNode) -> tuple[int, bytes, str]:
    return o.raft_id, o.cert_der, f"{o.host}:{o.port}"


def _entries(config: config_pb2.ConsortiumConfig) -> list[tuple[int, bytes, str]]:
    return [_entries_of(o) for o in config.orderers]


def test_membership_keeps_an_orderer_taken_out_for_raft_messages_only_while_raft_counts_it(net) -> None:
    start = config_from_genesis(read_genesis(net.genesis_path))
    certs = {o.raft_id: o.cert_der for o in start.orderers}
    m = Membership(_entries(start))
    m.set_in_raft([1, 2, 3])
    m.update(_entries(without_orderer(start, 3)))
    three = identity_pb2.Identity(org="ins03", cert_der=certs[3])
    # forwarding and broadcast follow the config in force at once ...
    assert m.raft_id_of(three) is None and 3 not in m.targets()
    # ... Raft messages go on while Raft counts it (its REMOVE_NODE not applied yet)
    assert m.raft_peer_of(three) == 3 and m.raft_targets()[3] == f"{start.orderers[2].host}:{start.orderers[2].port}"
    m.update(_entries(without_orderer(without_orderer(start, 3), 2)))  # a second update meanwhile: both kept
    assert m.raft_peer_of(three) == 3 and sorted(m.raft_targets()) == [1, 2, 3]
    m.set_in_raft([1, 2])  # its removal applied
    assert m.raft_peer_of(three) is None and sorted(m.raft_targets()) == [1, 2]
    # a config that no longer admits the removed one's certificate (revoked): cut off at once
    m = Membership(_entries(start))
    m.set_in_raft([1, 2, 3])
    m.update(_entries(without_orderer(start, 3)), keep=lambda cert: cert != certs[3])
    assert m.raft_peer_of(three) is None and 3 not in m.raft_targets()
    # a rotated certificate is no removal: the old one is refused from the config block on
    rotated = config_pb2.ConsortiumConfig()
    rotated.CopyFrom(start)
    rotated.orderers[1].cert_der = certs[3]  # any other certificate will do here
    m = Membership(_entries(start))
    m.set_in_raft([1, 2, 3])
    m.update(_entries(rotated))
    assert m.raft_peer_of(identity_pb2.Identity(org="ins02", cert_der=certs[2])) is None


def test_cluster_step_takes_a_removed_orderers_raft_messages_until_raft_removes_it(net) -> None:
    """Orderer 1's Cluster service after a config block took orderer 3 out: 3's Raft messages
    are taken until Raft applied its removal (the old code refused them with the config block),
    its forwarded envelopes never."""
    start = config_from_genesis(read_genesis(net.genesis_path))
    membership = Membership(_entries(start))
    membership.set_in_raft([1, 2, 3])
    membership.update(_entries(without_orderer(start, 3)))
    got: list[Message] = []

    class Sink(NullSink):
        def step(self, m: Message) -> None:
            got.append(m)

    metrics = OrdererMetrics("departing")
    svc = ClusterService(1, membership, Sink(), None, metrics)  # type: ignore[arg-type]
    me = net.home / "nodes" / "orderer.ins01"
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([svc.handler(), svc.batch_handler()])
    port = free_base_port(1)
    server.add_secure_port(f"127.0.0.1:{port}", server_credentials(
        me / "cert.pem", me / "key.pem", me / "ca-bundle.pem"))
    server.start()
    d = net.home / "nodes" / "orderer.ins03"
    try:
        def channel() -> grpc.Channel:
            return secure_channel(f"127.0.0.1:{port}", d / "cert.pem", d / "key.pem", d / "ca-bundle.pem")

        def step(msg: Message) -> None:
            req = services_pb2.ConsensusRequest(from_id=3, payload=encode_message(msg))
            with channel() as ch:
                ch.stream_unary(
                    "/rxchain.v1.Cluster/Step",
                    request_serializer=services_pb2.ConsensusRequest.SerializeToString,
                    response_deserializer=services_pb2.ConsensusResponse.FromString,
                )(iter([req]), timeout=10)

        ack = Message(MessageType.APP_RESP, to=1, frm=3, term=2, index=7)
        step(ack)
        assert got == [ack]
        with channel() as ch, pytest.raises(grpc.RpcError) as err:
            list(ch.stream_stream("/rxchain.v1.Cluster/Forward", request_serializer=None,
                                  response_deserializer=None)(iter([b"envelope"]), timeout=10))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        membership.set_in_raft([1, 2])  # the leader's REMOVE_NODE 3 applied
        with pytest.raises(grpc.RpcError) as err:
            step(ack)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert got == [ack]
    finally:
        server.stop(0)


def test_the_transport_dials_a_removed_orderer_until_raft_removes_it(net) -> None:
    """Raft messages to an orderer taken out go on (the old code had no address for it unless a
    stream was open already), and once its removal is applied it is no longer dialled."""
    server, port, got = step_server()
    start = config_from_genesis(read_genesis(net.genesis_path))
    entries = [(rid, cert, f"127.0.0.1:{port}" if rid == 3 else target) for rid, cert, target in _entries(start)]
    membership = Membership([e for e in entries if e[0] != 3], former=[e for e in entries if e[0] == 3])
    membership.set_in_raft([1, 2, 3])  # as a restarted orderer: the removal not applied yet
    dialled: list[str] = []

    def factory(target: str) -> grpc.Channel:
        dialled.append(target)
        return grpc.insecure_channel(target)

    transport = RaftTransport(1, membership, factory, NullSink())
    try:
        transport.send([Message(MessageType.APP, to=3, frm=1, term=2)])
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r.from_id for r in got] == [1]
        # the leader's last messages to it (the commit of its removal) were queued before the
        # removal was applied: sent before the stream ends, or it would never learn it is out
        for commit in range(10, 60):
            transport.send([Message(MessageType.APP, to=3, frm=1, term=2, commit=commit)])
        membership.set_in_raft([1, 2])
        transport.drop_departed()
        deadline = time.monotonic() + 10
        while len(got) < 51 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(got) == 51
        time.sleep(0.5)  # the sender thread ends, its stream with it
        dialled.clear()
        transport.send([Message(MessageType.APP, to=3, frm=1, term=2)])
        time.sleep(0.3)
        assert dialled == [] and len(got) == 51
    finally:
        transport.close()
        server.stop(0)


def test_a_removed_orderer_is_dialled_pinned_to_its_name_and_organisation(net) -> None:
    """The config in force no longer names it (a restarted orderer dials it anew): pinned as the
    orderers it names are (its node name, its organisation's CA), not the unpinned fallback."""
    start = config_from_genesis(read_genesis(net.genesis_path))
    no3 = without_orderer(start, 3)
    three = next(o for o in start.orderers if o.raft_id == 3)
    d = net.home / "nodes" / "orderer.ins01"
    target = f"{three.host}:{three.port}"
    plain = NodeChannels(d / "cert.pem", d / "key.pem", d / "ca-bundle.pem", [], lambda: no3)
    assert plain.pin(target) is None
    pinned = NodeChannels(d / "cert.pem", d / "key.pem", d / "ca-bundle.pem", [], lambda: no3,
                          former=lambda: [three])
    assert pinned.pin(target) == ("orderer.ins03", (net.home / "orgs/ins03/ca.pem").read_bytes())


def _config_block(net, number: int, previous: block_pb2.Block, config: config_pb2.ConsortiumConfig) -> block_pb2.Block:
    b = block_pb2.Block()
    b.header.number = number
    b.header.previous_hash = block_header_hash(previous.header)
    b.data.envelopes.append(config_envelope(net, config, ["ins01", "ins02", "ins03"]))
    b.header.data_hash = block_data_hash(list(b.data.envelopes))
    b.metadata.last_config_block = number
    return b


def _plain_block(number: int, previous: block_pb2.Block, last_config: int) -> block_pb2.Block:
    b = block_pb2.Block()
    b.header.number = number
    b.header.previous_hash = block_header_hash(previous.header)
    b.data.envelopes.append(b"env-%d" % number)
    b.header.data_hash = block_data_hash(list(b.data.envelopes))
    b.metadata.last_config_block = last_config
    return b


def test_a_restarted_orderer_finds_the_orderers_taken_out_in_its_block_store(net, tmp_path: Path) -> None:
    """The orderer that stays, restarted after the config block taking another out but before
    Raft removed it, must still reach it: its address and certificate come from the configs
    before the one in force (the old code started from the config in force alone). A config
    revoking the certificate admits it no more."""
    genesis = read_genesis(net.genesis_path)
    start = config_from_genesis(genesis)
    no3 = without_orderer(start, 3)
    no23 = without_orderer(no3, 2)
    blocks = BlockStore(tmp_path / "blocks", fsync=False)
    try:
        blocks.append(genesis)
        chain: list[block_pb2.Block] = [genesis]
        for b in (lambda p: _plain_block(1, p, 0), lambda p: _config_block(net, 2, p, no3),
                  lambda p: _plain_block(3, p, 2), lambda p: _config_block(net, 4, p, no23),
                  lambda p: _plain_block(5, p, 4)):
            chain.append(b(chain[-1]))
            blocks.append(chain[-1])
        verifier = Verifier()
        by_id = {e[0]: e for e in _entries(start)}

        def former(cfg: config_pb2.ConsortiumConfig, block: int) -> list[tuple[int, bytes, str]]:
            return [_entries_of(o) for o in _former_orderers(blocks, OrdererConfig(cfg, MSP(cfg, verifier), block))]

        assert former(start, 0) == []
        assert former(no3, 2) == [by_id[3]]
        assert former(no23, 4) == [by_id[2], by_id[3]]
        in_force = OrdererConfig(no3, MSP(no3, verifier), 2)
        assert _admits(in_force, _now_ms)(by_id[3][1])
        revoked = config_pb2.ConsortiumConfig()
        revoked.CopyFrom(no3)
        org = next(o for o in revoked.organizations if o.id == "ins03")
        org.revoked_serials.append(cert_info_der(by_id[3][1]).serial_hex)
        assert not _admits(OrdererConfig(revoked, MSP(revoked, verifier), 2), _now_ms)(by_id[3][1])
        assert not _admits(in_force, _now_ms)(b"not a certificate")
    finally:
        blocks.close()


@pytest.mark.integration
def test_an_orderer_restarted_before_raft_removed_the_other_still_finishes_the_removal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two orderers served in this process; the config update takes orderer 2 out while the
    leaders' membership changes are held back, so its REMOVE_NODE is not proposed yet. Orderer
    1 restarts then: the config in force no longer names orderer 2, Raft's voters still do.
    Released, the removal commits (orderer 1 found orderer 2 in the configs before the one in
    force: its address and certificate) and orderer 1 orders alone. Seeded from the config in
    force alone, orderer 1 refused orderer 2 and could not reach it: no leader, never removed."""
    from node.config import load_node_config
    from node.orderer.chain import Chain
    from node.orderer.server import OrdererServer, serve
    from tests.orderer.cluster import Client, wait_until

    net = make_network(tmp_path / "net", orderer_orgs=2)
    release = threading.Event()
    reconfigure = Chain._maybe_reconfigure

    def held(self: Chain, now: float) -> None:
        if release.is_set():
            reconfigure(self, now)

    monkeypatch.setattr(Chain, "_maybe_reconfigure", held)
    configs = {n.raft_id: load_node_config(net.node_config_path(n.name)) for n in net.orderers()}
    targets = {rid: f"127.0.0.1:{n.port}" for rid, n in zip(configs, net.orderers(), strict=True)}
    client = Client(net)
    servers: dict[int, OrdererServer] = {}
    try:
        for rid, cfg in configs.items():
            servers[rid] = serve(cfg)
        wait_until(lambda: all(client.status(t, 1.0).raft_leader for t in targets.values()), 20,
                   what="a leader")
        [r] = client.broadcast(targets[1], [config_envelope(net, without_orderer(net.config, 2), ["ins01", "ins02"])])
        assert r.accepted, r.message
        assert servers[1].chain._conf_state.voters == (1, 2)  # the removal held back
        servers.pop(1).stop()
        servers[1] = serve(configs[1])
        release.set()
        wait_until(lambda: list(servers[1].chain._conf_state.voters) == [1], 20,
                   what="orderer 1 applying the removal of orderer 2 after its restart")
        wait_until(lambda: client.broadcast(targets[1], [client.envelope()[1]], timeout=10)[0].accepted, 20,
                   interval=0.2, what="ordering by orderer 1 alone")
    finally:
        for server in servers.values():
            server.stop(0)
