"""Unit tests: block cutter, Raft codec, broadcast validation, transport membership."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from netgen.ports import free_base_port
from rxchain.v1 import block_pb2, config_pb2, services_pb2, transaction_pb2

from node.crypto.signing import Purpose, Signer, Verifier, generate_key
from node.crypto.tls import secure_channel, server_credentials
from node.errors import RxError
from node.genesis import config_from_genesis, read_genesis
from node.identity.msp import MSP
from node.orderer.blockcutter import BatchParams, BlockCutter
from node.orderer.broadcast import BroadcastHandler, EnvelopeValidator
from node.orderer.clockwatch import ClockWatch
from node.orderer.deliver import DeliverService
from node.orderer.metrics import OrdererMetrics
from node.orderer.raft_codec import decode_message, encode_message
from node.orderer.releases import ReleaseWatch
from node.orderer.ticket import Outcome, Ticket
from node.orderer.transport import ClusterService, Membership, PeerSender
from node.raft.errors import InvalidMessage
from node.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from tests.orderer.cluster import Client, config_envelope, make_network
from tests.orderer.inproc import NullSink
from tests.orderer.toyblocks import append_toy_blocks, toy_block_store

# ---------------------------------------------------------------- block cutter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_blockcutter_cuts_by_count_bytes_and_timeout():
    clock = FakeClock()
    bc: BlockCutter[int] = BlockCutter(BatchParams(3, 100, 0.05), clock)
    assert bc.add(b"a" * 10, 1) == []
    assert bc.add(b"b" * 10, 2) == []
    batches = bc.add(b"c" * 10, 3)  # count
    assert [[p.tag for p in b] for b in batches] == [[1, 2, 3]]
    assert bc.add(b"d" * 60, 4) == []
    batches = bc.add(b"e" * 50, 5)  # 60 + 50 > 100: cut the pending one first
    assert [[p.tag for p in b] for b in batches] == [[4]]
    batches = bc.add(b"f" * 150, 6)  # oversized alone: pending cut, then itself
    assert [[p.tag for p in b] for b in batches] == [[5], [6]]
    assert bc.deadline() is None
    bc.add(b"g", 7)
    assert bc.deadline() == pytest.approx(100.05)
    assert bc.cut_if_due() is None
    clock.now += 0.049
    assert bc.cut_if_due() is None
    clock.now += 0.002
    due = bc.cut_if_due()
    assert due is not None and [p.tag for p in due] == [7]
    assert len(bc) == 0


# ---------------------------------------------------------------- codec


def test_raft_codec_roundtrip_and_rejects_garbage():
    snap = Snapshot(SnapshotMeta(9, 2, ConfState((1, 2, 3), (4,))), b"data")
    msgs = [
        Message(MessageType.APP, to=2, frm=1, term=3, log_term=2, index=7,
                entries=(Entry(3, 8, EntryType.NORMAL, b"blk"),
                         Entry(3, 9, EntryType.CONF_CHANGE, b"cc")), commit=6),
        Message(MessageType.SNAP, to=3, frm=1, term=3, snapshot=snap),
        Message(MessageType.VOTE_RESP, to=1, frm=2, term=3, reject=True, reject_hint=5,
                context=b"x"),
    ]
    for m in msgs:
        assert decode_message(encode_message(m)) == m
    with pytest.raises(InvalidMessage):
        decode_message(b"\xff\xff\xff")
    with pytest.raises(InvalidMessage):
        decode_message(b"\x08\x63")  # type 99


# ---------------------------------------------------------------- broadcast validation


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return make_network(tmp_path_factory.mktemp("units") / "net")


@pytest.fixture(scope="module")
def other_net(tmp_path_factory):
    return make_network(tmp_path_factory.mktemp("other") / "net")


def _validator(net, max_bytes: int = 65536) -> EnvelopeValidator:
    consortium = config_from_genesis(read_genesis(net.genesis_path))
    msp = MSP(consortium, Verifier())
    return EnvelopeValidator(lambda: msp, consortium.consortium_id, max_bytes,
                             lambda: int(time.time() * 1000))


def _resign(client: Client, raw: bytes, signer: Signer | None = None,
            org: str | None = None) -> bytes:
    env = transaction_pb2.Envelope.FromString(raw)
    tx = transaction_pb2.Transaction.FromString(env.payload)
    header = transaction_pb2.TxHeader.FromString(tx.header)
    if org is not None:
        header.creator.org = org
    tx.header = header.SerializeToString()
    payload = tx.SerializeToString()
    sig = (signer or client.signer).sign(Purpose.ENVELOPE, payload)
    return transaction_pb2.Envelope(payload=payload, signature=sig).SerializeToString()


def test_validator_accepts_a_member_and_refuses_bad_input(net, other_net):
    v = _validator(net)
    client = Client(net)
    tx_id, good = client.envelope()
    ok = v.check(good)
    assert not isinstance(ok, tuple) and ok.tx_id == tx_id and ok.raw == good

    def reason(raw: bytes) -> str:
        result = v.check(raw)
        assert isinstance(result, tuple), "should have been refused"
        return result[1].reason

    env = transaction_pb2.Envelope.FromString(good)
    unsigned = transaction_pb2.Envelope(payload=env.payload).SerializeToString()
    assert reason(unsigned) == "BAD_SIGNATURE"
    forged = _resign(client, good, Signer(generate_key(), client.signer.identity))
    assert reason(forged) == "BAD_SIGNATURE"
    tampered = transaction_pb2.Envelope(payload=env.payload + b"\x00",
                                        signature=env.signature).SerializeToString()
    assert reason(tampered) in ("BAD_SIGNATURE", "BAD_PAYLOAD")
    assert reason(_resign(client, good, org="zz9")) == "UNKNOWN_CREATOR"  # unknown org
    outsider = Client(other_net)  # same org name, certificate from another CA
    assert reason(outsider.envelope()[1]) == "UNKNOWN_CREATOR"
    assert reason(client.envelope(size=70000)[1]) == "TOO_LARGE"
    assert reason(b"\x0a\xff\xff") == "BAD_PAYLOAD"
    assert reason(client.envelope(consortium_id="other")[1]) == "BAD_PAYLOAD"


def _stamped(client: Client, raw: bytes, timestamp_ms: int) -> bytes:
    env = transaction_pb2.Envelope.FromString(raw)
    tx = transaction_pb2.Transaction.FromString(env.payload)
    header = transaction_pb2.TxHeader.FromString(tx.header)
    header.timestamp_ms = timestamp_ms
    tx.header = header.SerializeToString()
    payload = tx.SerializeToString()
    return transaction_pb2.Envelope(payload=payload, signature=client.signer.sign(Purpose.ENVELOPE, payload)).SerializeToString()


@pytest.mark.parametrize(("offset_ms", "skew_ms", "refused"), [
    (0, 600_000, False), (-600_000, 600_000, False), (600_000, 600_000, False),
    (-600_001, 600_000, True), (600_001, 600_000, True), (-400 * 86_400_000, 600_000, True),
    (-400 * 86_400_000, 0, False),  # 0: the consortium sets no bound
])
def test_validator_bounds_the_timestamp_by_its_own_clock(net, offset_ms: int, skew_ms: int,
                                                         refused: bool) -> None:
    consortium = config_from_genesis(read_genesis(net.genesis_path))
    msp = MSP(consortium, Verifier())
    now = int(time.time() * 1000)
    v = EnvelopeValidator(lambda: msp, consortium.consortium_id, 65536, lambda: now,
                          max_skew_ms=lambda: skew_ms)
    client = Client(net)
    result = v.check(_stamped(client, client.envelope()[1], now + offset_ms))
    if refused:
        assert isinstance(result, tuple) and result[1].reason == "CLOCK_SKEW"
        assert f"more than {skew_ms} ms" in result[1].message
    else:
        assert not isinstance(result, tuple), result


class FakeOrderer:
    def __init__(self, leader: int) -> None:
        self.leader = leader
        self.submitted: list[bytes] = []

    def submit(self, envelope: bytes, tx_id: str = "", is_config: bool = False) -> Ticket:
        self.submitted.append(envelope)
        return Ticket.done(Outcome(block_number=1), tx_id)

    def submit_many(self, items):
        return [self.submit(env, "", cfg) for env, cfg in items]

    def leader_id(self) -> int:
        return self.leader

    def own_id(self) -> int:
        return 1


class NoForward:
    def submit(self, leader_id: int, envelope: bytes, tx_id: str) -> Ticket:
        raise AssertionError("must not forward")


def test_broadcast_stream_orders_only_valid_envelopes_and_answers_in_order(net):
    client = Client(net)
    orderer = FakeOrderer(leader=1)
    metrics = OrdererMetrics("t")
    h = BroadcastHandler(_validator(net), orderer, NoForward(), metrics)
    good = [client.envelope() for _ in range(3)]
    bad = _resign(client, good[0][1], Signer(generate_key(), client.signer.identity))
    stream = [good[0][1], bad, good[1][1], b"junk", good[2][1]]
    answers = list(h.stream(iter(stream)))
    assert [a.accepted for a in answers] == [True, False, True, False, True]
    assert [a.reason for a in answers] == ["", "BAD_SIGNATURE", "", "BAD_PAYLOAD", ""]
    assert orderer.submitted == [good[0][1], good[1][1], good[2][1]]
    assert metrics.rejected.labels(reason="BAD_SIGNATURE")._value.get() == 1


def test_broadcast_without_leader_answers_unavailable_in_bounded_time(net):
    client = Client(net)
    orderer = FakeOrderer(leader=0)
    h = BroadcastHandler(_validator(net), orderer, NoForward(), OrdererMetrics("t"))
    start = time.monotonic()
    answers = list(h.stream(iter([client.envelope()[1]])))
    assert answers[0].reason == "SERVICE_UNAVAILABLE"
    assert time.monotonic() - start < 5
    assert orderer.submitted == []


# ---------------------------------------------------------------- transport membership


class Sink:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def step(self, msg: Message) -> None:
        self.messages.append(msg)

    def report_unreachable(self, node_id: int) -> None:
        pass

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        pass


def test_cluster_step_accepts_members_only(net):
    consortium = config_from_genesis(read_genesis(net.genesis_path))
    membership = Membership([(o.raft_id, o.cert_der, f"{o.host}:{o.port}")
                             for o in consortium.orderers])
    sink = Sink()
    metrics = OrdererMetrics("t")
    watch = ClockWatch(lambda: 1_800_000_000_000)
    releases = ReleaseWatch()
    svc = ClusterService(1, membership, sink, None, metrics, clock_watch=watch,  # type: ignore[arg-type]
                         releases=releases)
    me = net.home / "nodes" / "orderer.ins01"
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([svc.handler()])
    port = free_base_port(1)
    server.add_secure_port(f"127.0.0.1:{port}", server_credentials(
        me / "cert.pem", me / "key.pem", me / "ca-bundle.pem"))
    server.start()
    try:
        def send(node: str | None, reqs: list[services_pb2.ConsensusRequest]) -> None:
            if node is None:
                client = Client(net)
                ch = secure_channel(f"127.0.0.1:{port}", client.cert, client.key, client.ca)
            else:
                d = net.home / "nodes" / node
                ch = secure_channel(f"127.0.0.1:{port}", d / "cert.pem", d / "key.pem",
                                    d / "ca-bundle.pem")
            with ch:
                ch.stream_unary(
                    "/rxchain.v1.Cluster/Step",
                    request_serializer=services_pb2.ConsensusRequest.SerializeToString,
                    response_deserializer=services_pb2.ConsensusResponse.FromString,
                )(iter(reqs), timeout=10)

        hb = Message(MessageType.HEARTBEAT, to=1, frm=2, term=5)
        good = services_pb2.ConsensusRequest(from_id=2, payload=encode_message(hb),
                                             sent_wall_ms=1_800_000_000_000 - 7_000,
                                             max_protocol_version=3)
        send("orderer.ins02", [good])
        assert sink.messages == [hb]
        assert watch.offsets() == {2: -7_000}  # the sender's clock, as it told it
        assert releases.told() == {2: 3}  # and the versions its release implements
        # A member claiming to be another orderer, or garbage: dropped and counted (and
        # what they claim about their clock is not believed).
        spoof = services_pb2.ConsensusRequest(from_id=3, payload=encode_message(
            Message(MessageType.HEARTBEAT, to=1, frm=3, term=5)), sent_wall_ms=1, max_protocol_version=9)
        garbage = services_pb2.ConsensusRequest(from_id=2, payload=b"\xff\xff")
        send("orderer.ins02", [spoof, garbage])
        assert sink.messages == [hb]
        assert metrics.consensus_dropped.labels(reason="bad_sender")._value.get() == 1
        assert metrics.consensus_dropped.labels(reason="invalid")._value.get() == 1
        assert watch.offsets() == {2: -7_000} and releases.told() == {2: 3}
        # A valid consortium member that is not an orderer: refused outright.
        with pytest.raises(grpc.RpcError) as err:
            send(None, [good])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert sink.messages == [hb]
        assert metrics.consensus_dropped.labels(reason="non_member")._value.get() == 1
    finally:
        server.stop(0)


# ---------------------------------------------------------------- config updates


def test_config_update_validation_rules(tmp_path):
    from node.orderer.configtx import ConfigTracker, OrdererConfig, validate_update

    net = make_network(tmp_path / "net", orderer_orgs=4)
    verifier = Verifier()
    full = net.config
    start = type(full)()
    start.CopyFrom(full)
    del start.orderers[3:]
    cur = OrdererConfig(start, MSP(start, verifier), 0)
    now = int(time.time() * 1000)

    def new_config(**changes):
        cfg = type(full)()
        cfg.CopyFrom(full)
        cfg.sequence = 1
        for k, v in changes.items():
            setattr(cfg, k, v)
        return cfg

    admins3 = ["ins01", "ins02", "ins03"]
    ok = validate_update(cur, config_envelope(net, new_config(), admins3), verifier, now)
    assert [o.raft_id for o in ok.orderers] == [1, 2, 3, 4]

    def reason_of(env: bytes) -> str:
        try:
            validate_update(cur, env, verifier, now)
        except RxError as err:
            assert err.reason == "BAD_CONFIG_UPDATE"
            return err.message
        raise AssertionError("accepted")

    assert "satisfy" in reason_of(config_envelope(net, new_config(), ["ins01", "h01"]))
    assert "sequence" in reason_of(config_envelope(net, new_config(sequence=5), admins3))
    assert "consortium" in reason_of(
        config_envelope(net, new_config(consortium_id="x"), admins3))
    two = new_config()
    del two.orderers[1]  # removes 2 and adds 4: two changes at once
    assert "one orderer" in reason_of(config_envelope(net, two, admins3))
    swapped = new_config()
    swapped.orderers[0].cert_der = swapped.orderers[1].cert_der
    assert "certificate" in reason_of(config_envelope(net, swapped, admins3))
    # A forged admin signature.
    env = transaction_pb2.Envelope.FromString(config_envelope(net, new_config(), admins3))
    tx = transaction_pb2.Transaction.FromString(env.payload)
    upd = config_pb2.ConfigUpdate.FromString(tx.config_update)
    upd.signatures[1].signature = upd.signatures[0].signature
    tx.config_update = upd.SerializeToString()
    forged = transaction_pb2.Envelope(payload=tx.SerializeToString()).SerializeToString()
    assert "bad admin signature" in reason_of(forged)
    # The tracker adopts and notifies; the apply path uses the tx timestamp.
    tracker = ConfigTracker(cur, verifier)
    seen: list[OrdererConfig] = []
    tracker.subscribe(seen.append)
    block = block_pb2.Block()
    block.data.envelopes.append(config_envelope(net, new_config(), admins3))
    cfg = tracker.block_config(block)
    assert cfg is not None
    tracker.adopt(cfg, 7)
    assert tracker.current.block_number == 7 and seen[0].orderer_ids() == [1, 2, 3, 4]
    assert tracker.block_config(block) is None  # same update again: out of sequence


# ---------------------------------------------------------------- deliver


def test_deliver_from_any_block_follows_and_resumes(tmp_path, net):
    store = toy_block_store(tmp_path / "blocks", 5)
    prev = store.last_hash()
    consortium = config_from_genesis(read_genesis(net.genesis_path))
    msp = MSP(consortium, Verifier())
    svc = DeliverService(store, lambda: msp, lambda: int(time.time() * 1000), poll_s=0.05)
    # A bounded range, then end-of-stream status.
    got = list(svc.blocks_from(services_pb2.DeliverRequest(start_block=2, stop_block=3),
                               lambda: True))
    assert [r.block.header.number for r in got[:-1]] == [2, 3]
    assert got[-1].status.reason == "OK"
    # Follow: new blocks arrive as they are appended; the client disconnects after 7.
    active = threading.Event()
    active.set()
    seen: list[int] = []

    def follow(start: int) -> None:
        req = services_pb2.DeliverRequest(start_block=start, follow=True)
        for r in svc.blocks_from(req, active.is_set):
            if r.HasField("block"):
                seen.append(r.block.header.number)
                if r.block.header.number == 7:
                    active.clear()

    t = threading.Thread(target=follow, args=(3,))
    t.start()
    for n in range(5, 10):
        time.sleep(0.02)
        prev = append_toy_blocks(store, 1, n, prev)
    t.join(5)
    assert seen == [3, 4, 5, 6, 7]
    # Resume after the "reconnect" from the block after the last one received.
    active.set()
    rest = [r.block.header.number for r in svc.blocks_from(
        services_pb2.DeliverRequest(start_block=seen[-1] + 1), active.is_set) if r.HasField("block")]
    assert rest == [8, 9]
    store.close()


def test_peer_sender_bounds_queued_bytes():
    unreachable: list[int] = []

    class CountingSink(Sink):
        def report_unreachable(self, node_id: int) -> None:
            unreachable.append(node_id)

    sink = CountingSink()
    started = threading.Event()

    def factory(target: str) -> grpc.Channel:
        started.wait(5)  # keep the sender thread from draining during the test
        return grpc.insecure_channel(target)  # nothing listens there: the call fails

    sender = PeerSender(1, 2, "127.0.0.1:1", factory, sink, max_queue=100,
                        max_queued_bytes=1000)
    big = Message(MessageType.APP, to=2, frm=1, term=1, index=0,
                  entries=(Entry(1, 1, EntryType.NORMAL, b"x" * 600),))
    sender.send(big)
    assert unreachable == []
    sender.send(big)  # 1200 > 1000 bytes queued: dropped and reported
    assert unreachable == [2]
    started.set()
    sender.close()


def test_sender_budget_is_returned_when_a_call_dies_mid_item() -> None:
    """A queue item holds several Raft messages; a Step call that dies after taking only
    the first must not keep the rest counted in the byte budget (that would end, for good,
    every later large append to the peer)."""

    calls: list[int] = []
    got: list[int] = []
    healthy = threading.Event()

    def step(request_iterator: Any, context: grpc.ServicerContext) -> bytes:
        if healthy.is_set():
            for r in request_iterator:
                got.append(len(r))
            return b""
        next(request_iterator)  # one message, then the peer goes away
        calls.append(1)
        context.abort(grpc.StatusCode.UNAVAILABLE, "peer went away")
        return b""

    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("rxchain.v1.Cluster", {
        "Step": grpc.stream_unary_rpc_method_handler(step, request_deserializer=None,
                                                     response_serializer=None)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def app(i: int, size: int) -> Message:
        return Message(MessageType.APP, to=2, frm=1, term=1, index=i,
                       entries=(Entry(1, i + 1, EntryType.NORMAL, b"x" * size),))

    sender = PeerSender(1, 2, f"127.0.0.1:{port}", grpc.insecure_channel, NullSink(),
                        max_queued_bytes=50_000)
    try:
        for r in range(6):
            sender.send_many([app(5 * r + k, 10_000) for k in range(5)])
            deadline = time.monotonic() + 5
            while len(calls) <= r and time.monotonic() < deadline:
                time.sleep(0.02)
        deadline = time.monotonic() + 5
        while sender._queued and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (sender._queued, sender._queued_bytes) == (0, 0)
        healthy.set()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:  # reconnects, then a full-size append
            sender.send(app(100, 45_000))
            time.sleep(0.3)
        assert got
    finally:
        sender.close()
        server.stop(0)
