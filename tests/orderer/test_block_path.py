"""The orderer's per-block path: Raft message hand-off per Ready, heartbeat interval, leader
listeners, status refresh, and a single-orderer Chain driven in-process end to end."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from netgen.ports import free_base_port
from rxchain.v1 import block_pb2

from node.crypto.canonical import block_data_hash, block_header_hash
from node.crypto.signing import Purpose, Verifier, load_signer
from node.crypto.tls import secure_channel, server_credentials
from node.genesis import config_from_genesis, read_genesis
from node.identity.msp import MSP
from node.ledger.blockstore import BlockStore
from node.orderer.chain import Chain, ChainOptions, bootstrap_conf_state, heartbeat_ticks
from node.orderer.configtx import ConfigTracker, OrdererConfig
from node.orderer.metrics import OrdererMetrics
from node.orderer.transport import ClusterService, Membership, PeerSender
from node.raft.durable import DurableStorage
from node.raft.types import Entry, EntryType, Message, MessageType, StateRole
from tests.orderer.cluster import Client, make_network
from tests.orderer.inproc import Collect, NoFetch, genesis_parts, wait_leader
from tests.orderer.toyblocks import toy_block_store


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return make_network(tmp_path_factory.mktemp("blockpath") / "net")


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    return make_network(tmp_path_factory.mktemp("solo") / "net", orderer_orgs=1)


class Sink:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.unreachable: list[int] = []
        self.arrived = threading.Event()
        self.want = 0

    def step(self, msg: Message) -> None:
        self.messages.append(msg)
        if len(self.messages) >= self.want:
            self.arrived.set()

    def report_unreachable(self, node_id: int) -> None:
        self.unreachable.append(node_id)

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        pass


def _app(to: int, frm: int, index: int, size: int = 10) -> Message:
    return Message(MessageType.APP, to=to, frm=frm, term=3, index=index, log_term=3,
                   entries=(Entry(3, index + 1, EntryType.NORMAL, b"b" * size),), commit=index)


def test_heartbeat_interval_is_two_ticks_but_never_above_a_quarter_of_the_election_timeout():
    assert heartbeat_ticks(ChainOptions()) == 2
    assert heartbeat_ticks(ChainOptions(election_tick=10, heartbeat_tick=5)) == 2
    assert heartbeat_ticks(ChainOptions(election_tick=4, heartbeat_tick=2)) == 1
    assert heartbeat_ticks(ChainOptions(election_tick=3, heartbeat_tick=1)) == 1
    assert heartbeat_ticks(ChainOptions(election_tick=40, heartbeat_tick=3)) == 3


def test_one_readys_messages_reach_the_peer_in_order_over_the_step_stream(net):
    """send_many queues a Ready's messages to one peer as one item; the receiving
    orderer's Cluster.Step hands them to its Raft sink in the order they were sent."""
    consortium = config_from_genesis(read_genesis(net.genesis_path))
    membership = Membership([(o.raft_id, o.cert_der, f"{o.host}:{o.port}")
                             for o in consortium.orderers])
    receiver = Sink()
    svc = ClusterService(1, membership, receiver, None, OrdererMetrics("t"))  # type: ignore[arg-type]
    me = net.home / "nodes" / "orderer.ins01"
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([svc.handler()])
    port = free_base_port(1)
    server.add_secure_port(f"127.0.0.1:{port}", server_credentials(
        me / "cert.pem", me / "key.pem", me / "ca-bundle.pem"))
    server.start()
    d = net.home / "nodes" / "orderer.ins02"
    sender_sink = Sink()
    sender = PeerSender(2, 1, f"127.0.0.1:{port}",
                        lambda t: secure_channel(t, d / "cert.pem", d / "key.pem", d / "ca-bundle.pem"),
                        sender_sink)
    try:
        first = [_app(1, 2, 5), Message(MessageType.HEARTBEAT_RESP, to=1, frm=2, term=3), _app(1, 2, 6)]
        second = [_app(1, 2, 7)]
        receiver.want = 4
        sender.send_many(first)
        sender.send_many(second)
        assert receiver.arrived.wait(10)
        assert receiver.messages == first + second
        assert sender_sink.unreachable == []
    finally:
        sender.close()
        server.stop(0)


def test_send_many_drops_and_reports_what_exceeds_the_count_or_byte_bound():
    sink = Sink()
    hold = threading.Event()

    def factory(target: str) -> grpc.Channel:
        hold.wait(5)  # keep the sender thread from draining during the test
        return grpc.insecure_channel(target)  # nothing listens there: the call fails

    sender = PeerSender(1, 2, "127.0.0.1:1", factory, sink, max_queue=3, max_queued_bytes=1000)
    try:
        sender.send_many([_app(2, 1, i) for i in range(5)])  # 3 fit by count, 2 dropped
        assert sink.unreachable == [2, 2]
        sink.unreachable.clear()
        big = [_app(2, 1, 10, size=2000)]
        sender.send_many(big)  # over the byte bound while others are queued
        assert sink.unreachable == [2]
    finally:
        hold.set()
        sender.close()


def _solo_chain(solo, data: Path, wall_ms: Callable[[], int] | None = None) -> tuple[Chain, BlockStore, DurableStorage]:
    genesis = read_genesis(solo.genesis_path)
    consortium = config_from_genesis(genesis)
    verifier = Verifier()
    blocks = BlockStore(data / "blocks", fsync=False)
    if blocks.height() == 0:
        blocks.append(genesis)
    tracker = ConfigTracker(OrdererConfig(consortium, MSP(consortium, verifier), 0), verifier)
    storage = DurableStorage(data / "raft", bootstrap_conf_state=bootstrap_conf_state([1]), fsync=True)
    d = solo.home / "nodes" / "orderer.ins01"
    signer = load_signer(d / "cert.pem", d / "key.pem", "ins01")
    extra: dict[str, Any] = {} if wall_ms is None else {"wall_ms": wall_ms}
    chain = Chain(1, storage, blocks, signer, Collect(), NoFetch(), tracker, OrdererMetrics("solo"),
                  rng=random.Random(7), options=ChainOptions(tick_s=0.01, election_tick=5), **extra)
    return chain, blocks, storage


def test_blocks_carry_the_leaders_clock_never_going_back(solo, tmp_path):
    """Each cut block is stamped with the leader's wall clock, signed with the header; a clock
    stepping back a little (within ChainOptions.max_stamp_hold_ms) does not make a block older
    than the one before it."""
    readings = iter([1_800_000_000_000, 1_799_999_999_000, 1_800_000_005_000])  # a 1 s step back
    now = [1_800_000_000_000]

    def wall_ms() -> int:
        now[0] = next(readings, now[0])
        return now[0]

    # (the orderer's signature over the stamped header: test_single_orderer_chain_...)
    expected = [1_800_000_000_000, 1_800_000_000_000, 1_800_000_005_000]
    assert _stamps_of_three_blocks(solo, tmp_path / "o1", wall_ms, expected) == expected


def _stamps_of_three_blocks(solo, data: Path, wall_ms: Callable[[], int],
                            tx_times: list[int]) -> list[int]:
    """The stamps of three blocks of one tx each, the txs timestamped ``tx_times`` (the
    leader refuses a tx further than the skew bound from its block's stamp)."""
    chain, blocks, storage = _solo_chain(solo, data, wall_ms)
    chain.start()
    try:
        wait_leader(chain)
        client = Client(solo)
        stamps = []
        for tx_time in tx_times:
            outcome = chain.submit(client.envelope(timestamp_ms=tx_time)[1]).wait(10)
            assert outcome is not None and outcome.accepted, outcome
            stamps.append(blocks.get(outcome.block_number).header.timestamp_ms)
        return stamps
    finally:
        chain.stop()
        storage.close()
        blocks.close()


def test_a_clock_that_jumped_forward_does_not_stamp_every_later_block(solo, tmp_path):
    """One reading a day ahead stamps its own block a day ahead; the next blocks follow the
    corrected clock again -- also those of a leader elected later, which starts from the
    stored chain (held at the previous stamp, every tx would be TX_TIMESTAMP_SKEW for a day)."""
    base, day = 1_800_000_000_000, 86_400_000
    readings = iter([base, base + day])

    def wall_ms() -> int:
        return next(readings, base + 1_000)

    expected = [base, base + day, base + 1_000]
    assert _stamps_of_three_blocks(solo, tmp_path / "o1", wall_ms, expected) == expected
    # a restarted leader, after a glitch whose block was the last one stored
    expected = [base + day] * 3
    assert _stamps_of_three_blocks(solo, tmp_path / "o2", lambda: base + day, expected) == expected
    expected = [base + 2_000] * 3
    assert _stamps_of_three_blocks(solo, tmp_path / "o2", lambda: base + 2_000, expected) == expected


def test_single_orderer_chain_tells_leader_listeners_and_orders_blocks(solo, tmp_path):
    chain, blocks, storage = _solo_chain(solo, tmp_path / "o1")
    leaders: list[tuple[int, StateRole]] = []
    changed = threading.Event()

    def on_leader(leader: int) -> None:
        # Called from the driver thread after the status already shows the new leader.
        leaders.append((leader, chain.status().role))
        changed.set()

    chain.add_leader_listener(on_leader)
    chain.start()
    try:
        assert changed.wait(10)
        assert leaders == [(1, StateRole.LEADER)]
        client = Client(solo)
        envelopes = [client.envelope()[1] for _ in range(3)]
        tickets = [chain.submit(env) for env in envelopes]
        outcomes = [t.wait(10) for t in tickets]
        assert all(o is not None and o.accepted for o in outcomes), outcomes
        number = outcomes[0].block_number  # type: ignore[union-attr]
        assert number >= 1
        block = blocks.get(number)
        assert list(block.data.envelopes) == envelopes  # one block (30 ms batch)
        assert block.header.data_hash == block_data_hash(envelopes)
        assert len(block.metadata.orderer_signatures) == 1
        assert Verifier().verify(block.metadata.orderer_signatures[0].signer.cert_der,
                                 block.metadata.orderer_signatures[0].signature, Purpose.BLOCK,
                                 block_header_hash(block.header))
        deadline = time.monotonic() + 5
        while chain.status().height < number + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        st = chain.status()
        assert (st.height, st.last_hash, st.role) == (number + 1, blocks.last_hash(), StateRole.LEADER)
        assert st.applied == st.commit  # the status follows every applied Ready
        assert leaders == [(1, StateRole.LEADER)]  # no further leader change
    finally:
        chain.stop()
        storage.close()
        blocks.close()


def test_follower_leaves_out_repeated_acks_of_commit_only_appends_within_the_window(solo, tmp_path):
    """A follower answers the leader's append with an ack, and does not repeat that ack for
    the commit-only append that follows within the window; after the window it does (so a
    lost ack is always answered again)."""
    data = tmp_path / "f"
    _, blocks, tracker = genesis_parts(solo.genesis_path, data / "blocks")
    storage = DurableStorage(data / "raft", bootstrap_conf_state=bootstrap_conf_state([1, 2, 3]), fsync=True)
    d = solo.home / "nodes" / "orderer.ins01"
    transport = Collect()
    now = [100.0]
    chain = Chain(1, storage, blocks, load_signer(d / "cert.pem", d / "key.pem", "ins01"), transport,
                  NoFetch(), tracker, OrdererMetrics("f"), rng=random.Random(3), clock=lambda: now[0],
                  options=ChainOptions(tick_s=1000.0, election_tick=10, repeated_ack_window_s=0.2))
    chain.start()

    def acks() -> list[tuple[int, int]]:
        return [(m.index, m.commit) for m in list(transport.sent) if m.type == MessageType.APP_RESP]

    def wait_for(pred: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 5
        while not pred() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert pred()

    try:
        entry = Entry(1, 1, EntryType.NORMAL, b"")  # a new leader's empty entry
        chain.step(Message(MessageType.APP, to=1, frm=2, term=1, index=0, log_term=0,
                           entries=(entry,), commit=0))
        wait_for(lambda: len(acks()) == 1)
        assert acks()[0][0] == 1
        # The commit-only append: applied, but its ack (index 1 again) is not repeated.
        chain.step(Message(MessageType.APP, to=1, frm=2, term=1, index=1, log_term=1, commit=1))
        wait_for(lambda: chain.status().applied == 1)
        time.sleep(0.05)
        assert len(acks()) == 1 and chain.repeated_acks_dropped == 1
        # A rejection is never left out; after the window the same ack goes out again.
        now[0] += 0.5
        chain.step(Message(MessageType.APP, to=1, frm=2, term=1, index=1, log_term=1, commit=1))
        wait_for(lambda: len(acks()) == 2)
        assert acks()[1][0] == 1
        chain.step(Message(MessageType.APP, to=1, frm=2, term=1, index=5, log_term=1, commit=1))
        wait_for(lambda: any(m.reject for m in list(transport.sent)))
        # A new index is acknowledged at once.
        entry2 = Entry(1, 2, EntryType.NORMAL, b"")
        chain.step(Message(MessageType.APP, to=1, frm=2, term=1, index=1, log_term=1,
                           entries=(entry2,), commit=1))
        wait_for(lambda: [a[0] for a in acks()][-1:] == [2])
        sent = len(acks())
        # A resend of entries it holds (the leader lost the ack) is answered even within
        # the window; the commit-only append after it is not.
        chain.step(Message(MessageType.APP, to=1, frm=2, term=1, index=1, log_term=1,
                           entries=(entry2,), commit=1))
        wait_for(lambda: len(acks()) == sent + 1)
        chain.step(Message(MessageType.APP, to=1, frm=2, term=1, index=2, log_term=1, commit=2))
        wait_for(lambda: chain.status().applied == 2)
        time.sleep(0.05)
        assert len(acks()) == sent + 1 and chain.repeated_acks_dropped == 2
        assert chain.status().role == StateRole.FOLLOWER and chain.status().leader == 2
    finally:
        chain.stop()
        storage.close()
        blocks.close()


def test_deliver_frames_each_block_once_for_every_stream(tmp_path, net):
    from rxchain.v1 import services_pb2

    from node.orderer.deliver import DeliverService, frame_block

    # The frame is exactly a serialized DeliverResponse, for small and multi-byte lengths.
    for size in (0, 1, 127, 128, 300, 70000):
        b = block_pb2.Block()
        b.data.envelopes.append(b"e" * size)
        raw = b.SerializeToString()
        assert frame_block(raw) == services_pb2.DeliverResponse(block=b).SerializeToString()
    store = toy_block_store(tmp_path / "blocks", 4)
    consortium = config_from_genesis(read_genesis(net.genesis_path))
    msp = MSP(consortium, Verifier())
    svc = DeliverService(store, lambda: msp, lambda: int(time.time() * 1000), poll_s=0.05, cache_blocks=2)
    req = services_pb2.DeliverRequest(start_block=1, stop_block=3)
    first = list(svc.frames_from(req, lambda: True))
    second = list(svc.frames_from(req, lambda: True))
    assert [services_pb2.DeliverResponse.FromString(f).block for f in first[:-1]] == [
        store.get(n) for n in (1, 2, 3)]
    assert services_pb2.DeliverResponse.FromString(first[-1]).status.reason == "OK"
    # The latest two blocks are framed once: the very same bytes objects on both streams;
    # an older block (a catch-up read) is not kept.
    assert first[1] is second[1] and first[2] is second[2]
    assert first[0] == second[0] and first[0] is not second[0]
    assert [r.block.header.number for r in svc.blocks_from(req, lambda: True)][:-1] == [1, 2, 3]
    store.close()


def test_leader_leaves_out_heartbeats_to_peers_it_just_sent_an_append(solo, tmp_path):
    """The leader's outgoing filter (driven with a fake clock, no thread): a heartbeat to a
    peer sent an append within the heartbeat interval is left out; heartbeats to other
    peers, and to the same peer once the interval has passed, go out."""
    _, blocks, tracker = genesis_parts(solo.genesis_path, tmp_path / "blocks")
    storage = DurableStorage(tmp_path / "raft", bootstrap_conf_state=bootstrap_conf_state([1, 2, 3]), fsync=False)
    d = solo.home / "nodes" / "orderer.ins01"
    transport = Collect()
    now = [50.0]
    chain = Chain(1, storage, blocks, load_signer(d / "cert.pem", d / "key.pem", "ins01"), transport,
                  NoFetch(), tracker, OrdererMetrics("l"), rng=random.Random(3), clock=lambda: now[0],
                  options=ChainOptions(tick_s=0.05, election_tick=10))
    try:
        chain._role = StateRole.LEADER  # what _on_soft_state sets when the node wins

        def hb(to: int) -> Message:
            return Message(MessageType.HEARTBEAT, to=to, frm=1, term=2, commit=1)

        chain._send([_app(2, 1, 1), hb(3)])
        assert [(m.type, m.to) for m in transport.sent] == [(MessageType.APP, 2), (MessageType.HEARTBEAT, 3)]
        now[0] += 0.05  # half the 100 ms interval
        chain._send([hb(2), hb(3)])
        assert [(m.type, m.to) for m in transport.sent[2:]] == [(MessageType.HEARTBEAT, 3)]
        assert chain.heartbeats_dropped == 1
        now[0] += 0.06  # past the interval since the append to 2
        chain._send([hb(2), hb(3)])
        assert [(m.type, m.to) for m in transport.sent[3:]] == [(MessageType.HEARTBEAT, 2), (MessageType.HEARTBEAT, 3)]
        # Without thinning every heartbeat goes out.
        plain = Chain(1, storage, blocks, load_signer(d / "cert.pem", d / "key.pem", "ins01"), transport,
                      NoFetch(), tracker, OrdererMetrics("p"), rng=random.Random(3), clock=lambda: now[0],
                      options=ChainOptions(tick_s=0.05, election_tick=10, thin_heartbeats=False))
        plain._role = StateRole.LEADER
        before = len(transport.sent)
        plain._send([_app(2, 1, 2), hb(2)])
        assert len(transport.sent) == before + 2 and plain.heartbeats_dropped == 0
    finally:
        storage.close()
        blocks.close()


def test_deliver_bytes_serves_framed_blocks_over_grpc_without_a_serializer(tmp_path, net):
    """deliver_bytes behind a handler registered with response_serializer=None: a client
    with the DeliverResponse deserializer gets the stored blocks, then the OK status."""
    from rxchain.v1 import services_pb2

    from node.crypto.canonical import GENESIS_PREVIOUS_HASH
    from node.orderer.deliver import DeliverService

    store = BlockStore(tmp_path / "blocks", fsync=False)
    prev = GENESIS_PREVIOUS_HASH
    for n in range(3):
        b = block_pb2.Block()
        b.header.number = n
        b.header.previous_hash = prev
        b.data.envelopes.append(b"env-%d" % n)
        b.header.data_hash = block_data_hash(list(b.data.envelopes))
        store.append(b)
        prev = block_header_hash(b.header)
    consortium = config_from_genesis(read_genesis(net.genesis_path))
    msp = MSP(consortium, Verifier())
    svc = DeliverService(store, lambda: msp, lambda: int(time.time() * 1000), poll_s=0.05)
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "rxchain.v1.AtomicBroadcast",
        {"Deliver": grpc.unary_stream_rpc_method_handler(
            svc.deliver_bytes, request_deserializer=services_pb2.DeliverRequest.FromString,
            response_serializer=None)})])
    me = net.home / "nodes" / "orderer.ins01"
    port = free_base_port(1)
    server.add_secure_port(f"127.0.0.1:{port}", server_credentials(
        me / "cert.pem", me / "key.pem", me / "ca-bundle.pem"))
    server.start()
    try:
        with Client(net).channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_stream("/rxchain.v1.AtomicBroadcast/Deliver",
                                   request_serializer=services_pb2.DeliverRequest.SerializeToString,
                                   response_deserializer=services_pb2.DeliverResponse.FromString)
            got = list(call(services_pb2.DeliverRequest(start_block=0, stop_block=2), timeout=10))
        assert [r.block for r in got[:-1]] == [store.get(n) for n in range(3)]
        assert got[-1].status.reason == "OK"
    finally:
        server.stop(0)
        store.close()


def _lead_in_process(chain: Chain) -> None:
    """Make a one-voter chain (driver thread not started) leader, ready to cut, by driving
    its driver-thread methods from the test thread."""
    chain._node.campaign()
    for _ in range(10):
        chain._process_ready()
        if chain._lead_ready():
            return
    raise AssertionError("the single orderer did not become a ready leader")


def test_block_numbers_reused_by_a_new_leadership_answer_the_old_tickets(solo, tmp_path):
    """Blocks still in flight from an earlier leadership (replaced by the next leader) whose
    numbers this leader reuses: their tickets are answered SERVICE_UNAVAILABLE when the
    leader starts cutting at the store's height, instead of being dropped unanswered."""
    from node.orderer.blockcutter import Pending
    from node.orderer.chain import _Inflight
    from node.orderer.ticket import Ticket

    chain, blocks, storage = _solo_chain(solo, tmp_path / "o1")
    try:
        _lead_in_process(chain)
        height = blocks.height()
        old8, old9 = Ticket("old-8"), Ticket("old-9")
        chain._inflight[height] = _Inflight(b"h-old", [old8], 0.0)
        chain._inflight[height + 1] = _Inflight(b"h-old-2", [old9], 0.0)
        new = Ticket("new")
        chain._held.append([Pending(Client(solo).envelope()[1], new)])
        chain._maybe_cut()
        for t, n in ((old8, height), (old9, height + 1)):
            outcome = t.peek()
            assert outcome is not None and outcome.reason == "SERVICE_UNAVAILABLE"
            assert outcome.message == f"block {n} was replaced after a leader change"
        assert [t.tx_id for t in chain._inflight[height].tickets] == ["new"]
        assert height + 1 not in chain._inflight
        chain._process_ready()  # one voter: commits and applies at once
        outcome = new.peek()
        assert outcome is not None and outcome.accepted and outcome.block_number == height
    finally:
        storage.close()
        blocks.close()


def test_proposing_over_an_in_flight_block_number_answers_its_tickets(solo, tmp_path):
    """_propose_block never overwrites _inflight[n] silently (the tickets stored there would
    be reachable by neither _resolve nor _expire_inflight)."""
    from node.orderer.blockcutter import Pending
    from node.orderer.chain import _Inflight
    from node.orderer.ticket import Ticket

    chain, blocks, storage = _solo_chain(solo, tmp_path / "o1")
    try:
        _lead_in_process(chain)
        height = blocks.height()
        chain._next_number, chain._prev_hash = height, blocks.last_hash()  # already cutting
        old = Ticket("old")
        chain._inflight[height] = _Inflight(b"h-old", [old], 0.0)
        new = Ticket("new")
        chain._propose_block([Pending(Client(solo).envelope()[1], new)])
        outcome = old.peek()
        assert outcome is not None and outcome.reason == "SERVICE_UNAVAILABLE"
        assert [t.tx_id for t in chain._inflight[height].tickets] == ["new"]
        assert new.peek() is None
    finally:
        storage.close()
        blocks.close()
