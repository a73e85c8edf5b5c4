"""Unit tests: EnvelopeBatch codec, BroadcastBatch semantics, Cluster.ForwardBatch and the
leader forwarder's behaviour when the Raft leader moves (clock injected)."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rxchain.v1 import services_pb2, transaction_pb2

from node.crypto.signing import Purpose, Signer, Verifier, generate_key
from node.errors import RxError
from node.genesis import config_from_genesis, read_genesis
from node.identity.msp import MSP
from node.orderer.broadcast import BroadcastHandler, BroadcastOptions, Checked, EnvelopeValidator, decode_batch
from node.orderer.envelope_batch import BatchDecodeError, encode_batch, split_batch
from node.orderer.forward import FORWARD_BATCH_METHOD, ForwardBatchService, LeaderForwarder
from node.orderer.metrics import OrdererMetrics
from node.orderer.ticket import Outcome, Ticket
from node.stream_caps import ClusterCaps
from tests.harness.ports import free_ports
from tests.orderer.cluster import Client, make_network

# ---------------------------------------------------------------- codec


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_batch_codec_matches_protobuf_and_keeps_bytes(payloads: list[bytes]) -> None:
    raws = [transaction_pb2.Envelope(payload=p, signature=p[:7]).SerializeToString() for p in payloads]
    ours = encode_batch(raws)
    assert ours == services_pb2.EnvelopeBatch(
        envelopes=[transaction_pb2.Envelope.FromString(r) for r in raws]).SerializeToString()
    assert split_batch(ours) == raws


def test_batch_codec_refuses_malformed() -> None:
    good = encode_batch([b"\x0a\x01x", b""])
    assert split_batch(good) == [b"\x0a\x01x", b""]
    for bad in (b"\x12\x00", b"\x0a", b"\x0a\x05ab", b"\x0a\xff\xff\xff\xff\xff\xff\x01"):
        with pytest.raises(BatchDecodeError):
            split_batch(bad)
    assert isinstance(decode_batch(b"\x0a\x09"), BatchDecodeError)


# ---------------------------------------------------------------- BroadcastBatch


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_network(tmp_path_factory.mktemp("batch") / "net")


def _validator(net: Any) -> EnvelopeValidator:
    consortium = config_from_genesis(read_genesis(net.genesis_path))
    msp = MSP(consortium, Verifier())
    return EnvelopeValidator(lambda: msp, consortium.consortium_id, 65536,
                             lambda: int(time.time() * 1000))


class BatchOrderer:
    """Leads (raft id 1); records each submit_many call; tickets resolve when released."""

    def __init__(self, leader: int = 1) -> None:
        self.leader = leader
        self.calls: list[list[bytes]] = []
        self.tickets: list[Ticket] = []
        self.hold = False

    def submit(self, envelope: bytes, tx_id: str = "", is_config: bool = False) -> Ticket:
        return self.submit_many([(envelope, is_config)])[0]

    def submit_many(self, items: Any) -> list[Ticket]:
        self.calls.append([env for env, _ in items])
        out = []
        for _ in items:
            t = Ticket()
            if not self.hold:
                t.resolve(Outcome(block_number=len(self.calls)))
            self.tickets.append(t)
            out.append(t)
        return out

    def release(self) -> None:
        for t in self.tickets:
            t.resolve(Outcome(block_number=7))

    def leader_id(self) -> int:
        return self.leader

    def own_id(self) -> int:
        return 1


class NoForward:
    def submit(self, leader_id: int, envelope: bytes, tx_id: str) -> Ticket:
        raise AssertionError("must not forward")


def _bad_signature(client: Client, raw: bytes) -> bytes:
    env = transaction_pb2.Envelope.FromString(raw)
    other = Signer(generate_key(), client.signer.identity)
    return transaction_pb2.Envelope(payload=env.payload, signature=other.sign(Purpose.ENVELOPE, env.payload)).SerializeToString()


def test_batch_answers_in_order_refuses_bad_envelopes_and_orders_the_rest_in_one_hand_off(net: Any) -> None:
    client = Client(net)
    orderer = BatchOrderer()
    metrics = OrdererMetrics("t")
    h = BroadcastHandler(_validator(net), orderer, NoForward(), metrics)
    good = [client.envelope() for _ in range(4)]
    bad_sig = _bad_signature(client, good[0][1])
    too_big = client.envelope(size=70000)[1]
    first = [good[0][1], bad_sig, good[1][1], b"junk"]
    second = [too_big, good[2][1], good[3][1]]
    answers = [r for msg in h.batch_stream(iter([first, second])) for r in msg.responses]
    assert [a.reason for a in answers] == ["", "BAD_SIGNATURE", "", "BAD_PAYLOAD", "TOO_LARGE", "", ""]
    assert [a.tx_id for a in answers if a.accepted] == [good[i][0] for i in range(4)]
    assert answers[1].tx_id == good[0][0]  # the refused copy still names its tx id
    # One hand-off to the chain per message, only the valid envelopes.
    assert orderer.calls == [[good[0][1], good[1][1]], [good[2][1], good[3][1]]]
    assert metrics.rejected.labels(reason="BAD_SIGNATURE")._value.get() == 1


def test_batch_over_the_limits_is_refused_whole(net: Any) -> None:
    client = Client(net)
    orderer = BatchOrderer()
    h = BroadcastHandler(_validator(net), orderer, NoForward(), OrdererMetrics("t"),
                         BroadcastOptions(max_batch_envelopes=3, max_batch_bytes=4000))
    envs = [client.envelope()[1] for _ in range(4)]
    big = [client.envelope(size=1500)[1] for _ in range(3)]
    msgs = list(h.batch_stream(iter([envs, big, envs[:2]])))
    answers = [r for m in msgs for r in m.responses]
    assert [a.reason for a in answers] == ["TOO_LARGE"] * 7 + ["", ""]
    assert "batch of 4 envelopes" in answers[0].message
    assert orderer.calls == [envs[:2]]


def test_answers_of_ready_messages_are_coalesced(net: Any) -> None:
    client = Client(net)
    orderer = BatchOrderer()
    orderer.hold = True
    h = BroadcastHandler(_validator(net), orderer, NoForward(), OrdererMetrics("t"))
    envs = [client.envelope()[1] for _ in range(10)]
    requests = [[e] for e in envs]
    sent = threading.Event()

    def feed() -> Iterator[list[bytes]]:
        yield from requests
        sent.set()

    out: list[services_pb2.BroadcastBatchResponse] = []
    stream = h.batch_stream(feed())
    reader = threading.Thread(target=lambda: out.extend(stream), daemon=True)
    reader.start()
    assert sent.wait(5)
    deadline = time.monotonic() + 5
    while len(orderer.tickets) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    orderer.release()  # all ten answers become ready together
    reader.join(5)
    assert sum(len(m.responses) for m in out) == 10
    assert all(r.accepted for m in out for r in m.responses)
    assert len(out) < 10  # several answers per message


def test_malformed_batch_message_ends_the_stream_after_earlier_answers(net: Any) -> None:
    client = Client(net)
    h = BroadcastHandler(_validator(net), BatchOrderer(), NoForward(), OrdererMetrics("t"))
    stream = h.batch_stream(iter([[client.envelope()[1]], decode_batch(b"\x12\x00")]))
    first = next(stream)
    assert [r.accepted for r in first.responses] == [True]
    with pytest.raises(RxError) as err:
        next(stream)
    assert err.value.reason == "BAD_PAYLOAD"


def test_follower_forwards_a_batch_in_one_hand_off(net: Any) -> None:
    client = Client(net)

    class Fwd:
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def submit(self, leader_id: int, envelope: bytes, tx_id: str) -> Ticket:
            raise AssertionError("one envelope at a time")

        def submit_many(self, leader_id: int, items: list[tuple[bytes, str]]) -> list[Ticket]:
            assert leader_id == 2
            self.calls.append([tx for _, tx in items])
            return [Ticket.done(Outcome(block_number=3), tx) for _, tx in items]

    fwd = Fwd()
    h = BroadcastHandler(_validator(net), BatchOrderer(leader=2), fwd, OrdererMetrics("t"))
    envs = [client.envelope() for _ in range(3)]
    answers = [r for m in h.batch_stream(iter([[e for _, e in envs]])) for r in m.responses]
    assert [a.tx_id for a in answers] == [tx for tx, _ in envs]
    assert all(a.accepted for a in answers)
    assert fwd.calls == [[tx for tx, _ in envs]]


def test_a_leaders_refusal_reasons_add_a_bounded_number_of_metric_labels(net: Any) -> None:
    """A follower counted each refusal under the reason its leader answered: another
    organisation's orderer added a rxchain_orderer_broadcast_rejected label per envelope."""
    client = Client(net)

    class HostileLeader:
        def submit(self, leader_id: int, envelope: bytes, tx_id: str) -> Ticket:
            raise AssertionError("one envelope at a time")

        def submit_many(self, leader_id: int, items: list[tuple[bytes, str]]) -> list[Ticket]:
            return [Ticket.done(Outcome(f"REASON_{tx[:12].upper()}", "refused"), tx) for _, tx in items]

    metrics = OrdererMetrics("t")
    h = BroadcastHandler(_validator(net), BatchOrderer(leader=2), HostileLeader(), metrics)
    bound = 32  # node.orderer.metrics.MAX_REASON_LABELS (literal: the test runs on the old code too)
    envs = [client.envelope()[1] for _ in range(bound + 8)]
    envs.append(client.envelope()[1])
    answers = [r for m in h.batch_stream(iter([envs[:-1], envs[-1:]])) for r in m.responses]
    assert len(answers) == len(envs) and not any(a.accepted for a in answers)
    assert all(a.reason.startswith("REASON_") for a in answers)  # answered as the leader said
    labels = {s.labels["reason"]: s.value for m in metrics.registry.collect()
              if m.name == "rxchain_orderer_broadcast_rejected" for s in m.samples
              if s.name.endswith("_total")}
    assert len(labels) == bound + 1 and labels["OTHER"] == 9, labels


# ---------------------------------------------------------------- leader forwarder


class FakeLeader:
    """A Cluster.ForwardBatch server; ``paused`` holds every answer (the handshake too when
    ``paused_before_open``)."""

    def __init__(self, paused_before_open: bool = False) -> None:
        self.gate = threading.Event()
        self.open_gate = threading.Event()
        if not paused_before_open:
            self.open_gate.set()
        self.received: list[bytes] = []
        self.messages = 0

    def handle(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for raw in requests:
            envs = split_batch(raw)
            self.open_gate.wait(20)
            if not envs:
                yield services_pb2.BroadcastBatchResponse().SerializeToString()
                continue
            self.messages += 1
            self.received.extend(envs)
            self.gate.wait(20)
            yield services_pb2.BroadcastBatchResponse(
                responses=[services_pb2.BroadcastResponse(accepted=True) for _ in envs]
            ).SerializeToString()


def _serve_forward_batch(handle: Callable[[Iterator[bytes], grpc.ServicerContext], Iterator[bytes]],
                         port: int) -> grpc.Server:
    """A started insecure server on ``port`` answering Cluster.ForwardBatch with ``handle``
    (raw bytes both ways)."""
    server = grpc.server(ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "rxchain.v1.Cluster", {"ForwardBatch": grpc.stream_stream_rpc_method_handler(
            handle, request_deserializer=None, response_serializer=None)})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def _serve_legacy_forward_batch(handle: Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]],
                                port: int) -> grpc.Server:
    """A started insecure server on ``port`` answering the legacy forward RPC,
    OrdererCluster.ForwardBatch (raft_pb2 ForwardedEnvelopes in, ForwardAnswers out), with ``handle``."""
    from rxchain.v1 import raft_pb2

    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "rxchain.v1.OrdererCluster", {"ForwardBatch": grpc.stream_stream_rpc_method_handler(
            handle, request_deserializer=raft_pb2.ForwardedEnvelopes.FromString,
            response_serializer=raft_pb2.ForwardAnswers.SerializeToString)})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


@pytest.fixture
def leader_server() -> Iterator[tuple[FakeLeader, FakeLeader, dict[int, str]]]:
    servers = []
    leaders = (FakeLeader(), FakeLeader())
    targets = {}
    try:
        for rid, (fake, port) in enumerate(zip(leaders, free_ports(2), strict=True), start=2):
            servers.append(_serve_forward_batch(fake.handle, port))
            targets[rid] = f"127.0.0.1:{port}"
        yield leaders[0], leaders[1], targets
    finally:
        for fake in leaders:
            fake.gate.set()
            fake.open_gate.set()
        for s in servers:
            s.stop(0)


class Members:
    def __init__(self, targets: dict[int, str]) -> None:
        self._targets = targets

    def targets(self) -> dict[int, str]:
        return dict(self._targets)

    def raft_id_of(self, identity: object) -> int | None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _wait(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def test_forwarder_batches_queued_envelopes_and_matches_answers(leader_server: Any) -> None:
    leader, _, targets = leader_server
    clock, current = Clock(), [2]
    fwd = LeaderForwarder(Members(targets), grpc.insecure_channel, lambda: current[0],
                          clock=clock, watch_s=3600)
    try:
        tickets = fwd.submit_many(2, [(f"e{i}".encode(), f"t{i}") for i in range(40)])
        tickets += [fwd.submit(2, b"last", "t40")]
        leader.gate.set()
        assert all(t.wait(5) == Outcome() for t in tickets)
        assert leader.received == [f"e{i}".encode() for i in range(40)] + [b"last"]
        assert leader.messages < 41
        assert [t.tx_id for t in tickets] == [f"t{i}" for i in range(41)]
    finally:
        fwd.close()


def test_leader_move_hands_back_unsent_envelopes_at_once(leader_server: Any) -> None:
    leader, _, targets = leader_server
    leader.open_gate.clear()  # paused before answering the handshake: nothing is sent
    clock, current = Clock(), [2]
    fwd = LeaderForwarder(Members(targets), grpc.insecure_channel, lambda: current[0],
                          clock=clock, watch_s=3600)
    try:
        tickets = fwd.submit_many(2, [(b"a", "ta"), (b"b", "tb")])
        fwd.check_leader()
        assert all(t.peek() is None for t in tickets)  # leader unchanged: they wait
        current[0] = 3
        fwd.check_leader()
        outcomes = [t.peek() for t in tickets]
        assert [o.reason if o else None for o in outcomes] == ["NOT_LEADER", "NOT_LEADER"]
        assert leader.received == []
    finally:
        fwd.close()


def test_sent_envelopes_to_a_silent_old_leader_are_answered_after_the_grace(leader_server: Any) -> None:
    leader, _, targets = leader_server
    clock, current = Clock(), [2]
    fwd = LeaderForwarder(Members(targets), grpc.insecure_channel, lambda: current[0],
                          clock=clock, watch_s=3600, moved_grace_s=1.0)
    try:
        tickets = fwd.submit_many(2, [(b"a", "ta"), (b"b", "tb")])
        assert _wait(lambda: len(leader.received) == 2)  # sent; the leader now pauses
        current[0] = 3
        fwd.check_leader()
        clock.now += 0.5
        fwd.check_leader()
        assert all(t.peek() is None for t in tickets)  # within the grace: still waiting
        clock.now += 0.6
        fwd.check_leader()
        outcomes = [t.wait(5) for t in tickets]
        assert all(o is not None and o.reason == "SERVICE_UNAVAILABLE" for o in outcomes)
        assert all("outcome unknown" in o.message for o in outcomes if o)
    finally:
        fwd.close()


def test_old_leader_answering_within_the_grace_keeps_its_answers(leader_server: Any) -> None:
    leader, _, targets = leader_server
    clock, current = Clock(), [2]
    fwd = LeaderForwarder(Members(targets), grpc.insecure_channel, lambda: current[0],
                          clock=clock, watch_s=3600, moved_grace_s=1.0)
    try:
        tickets = fwd.submit_many(2, [(b"a", "ta")])
        assert _wait(lambda: len(leader.received) == 1)
        current[0] = 3
        fwd.check_leader()
        leader.gate.set()  # a graceful hand-over: the old leader still answers
        assert tickets[0].wait(5) == Outcome()
        clock.now += 5
        fwd.check_leader()
        assert tickets[0].peek() == Outcome()
    finally:
        fwd.close()


class _HeldAnswers:
    """A leader that reads every forwarded message at once (``received``) and answers them, in
    order, once ``gate`` is set; one orderer's ForwardBatch streams are held under its cluster
    caps as a real leader holds them (two: a third replaces, cancels, the oldest)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.received: list[bytes] = []
        self.calls = 0
        self.caps = ClusterCaps(total=4, per_orderer=2)

    def handle(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self.caps.admit(context, 1, "ForwardBatch")
        self.calls += 1
        read: queue.Queue[list[bytes] | None] = queue.Queue()

        def reader() -> None:
            with contextlib.suppress(grpc.RpcError):  # (cancelled)
                for raw in requests:
                    envs = split_batch(raw)
                    self.received.extend(envs)
                    read.put(envs)
            read.put(None)

        threading.Thread(target=reader, daemon=True).start()
        while (envs := read.get(timeout=20)) is not None:
            if envs:
                self.gate.wait(20)
            yield services_pb2.BroadcastBatchResponse(
                responses=[services_pb2.BroadcastResponse(accepted=True) for _ in envs]).SerializeToString()


@contextlib.contextmanager
def _forwarding_to_held_leader() -> Iterator[tuple[_HeldAnswers, LeaderForwarder, Clock, list[int]]]:
    """A :class:`_HeldAnswers` leader served as orderer 2 and a forwarder (the clock injected, a
    grace of 1 s) to the leader ``current[0]``, 2 at first (3: nowhere): (the leader, the
    forwarder, the clock, current). At the end the forwarder is closed, the leader answers and
    its server stops."""
    leader = _HeldAnswers()
    (port,) = free_ports(1)
    server = _serve_forward_batch(leader.handle, port)
    clock, current = Clock(), [2]
    try:
        fwd = LeaderForwarder(Members({2: f"127.0.0.1:{port}", 3: "127.0.0.1:1"}), grpc.insecure_channel,
                              lambda: current[0], clock=clock, watch_s=3600, moved_grace_s=1.0)
        try:
            yield leader, fwd, clock, current
        finally:
            fwd.close()
    finally:
        leader.gate.set()
        server.stop(0).wait(5)


def test_a_flapping_leader_keeps_its_stream_and_every_answer() -> None:
    """The leader moves away from orderer 2 and back, three times within the grace, with an
    envelope sent to it each time and not yet answered. The follower gets its stream to 2 back
    each time (one stream, one call), and every envelope is answered. Before, each return opened
    a new stream while the old ones drained: the third went past the leader's cap of two
    ForwardBatch streams per orderer and cancelled the oldest, still owed an answer -- its
    envelope's outcome unknown (SERVICE_UNAVAILABLE) though the leader ordered it."""
    with _forwarding_to_held_leader() as (leader, fwd, clock, current):
        tickets: list[Ticket] = []
        for i in range(3):
            current[0] = 2
            fwd.check_leader()
            tickets += fwd.submit_many(2, [(f"e{i}".encode(), f"t{i}")])
            assert _wait(lambda i=i: len(leader.received) == i + 1)  # sent, not answered
            current[0] = 3
            fwd.check_leader()  # moved away: what was sent waits for its answer
            clock.now += 0.1
        assert [t.peek() for t in tickets] == [None] * 3  # (the oldest: outcome unknown)
        leader.gate.set()
        assert [t.wait(5) for t in tickets] == [Outcome()] * 3
        assert leader.calls == 1


def test_a_leader_back_keeps_its_streams_sent_envelopes_past_the_grace_with_nothing_new_sent() -> None:
    """The leader moves away from orderer 2 and back (an election 2 wins again) while an
    envelope sent to 2 waits for its answer, and the follower forwards nothing new meanwhile.
    2 leads again: its stream is its stream to the leader, and the envelope waits for 2's answer
    past the grace, as one sent to the leader does. Before, the stream was given back only by a
    new envelope forwarded to 2: with none, the stream still counted as an old leader's, went
    quiet for the grace, and was closed -- the envelope answered SERVICE_UNAVAILABLE, outcome
    unknown, though the leader, leading, ordered it."""
    with _forwarding_to_held_leader() as (leader, fwd, clock, current):
        [ticket] = fwd.submit_many(2, [(b"e0", "t0")])
        assert _wait(lambda: len(leader.received) == 1)  # sent, not answered
        current[0] = 3
        fwd.check_leader()  # moved away
        clock.now += 0.1
        current[0] = 2
        fwd.check_leader()  # back: nothing forwarded meanwhile
        clock.now += 5.0  # well past the grace, within the leader's commit timeout
        fwd.check_leader()
        assert ticket.peek() is None  # still waiting for 2, which leads
        leader.gate.set()
        assert ticket.wait(5) == Outcome()
        assert leader.calls == 1


def test_forward_batch_refuses_non_members(tmp_path: Path) -> None:
    svc = ForwardBatchService(Members({}), None, OrdererMetrics("t"))  # type: ignore[arg-type]
    (port,) = free_ports(1)
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([svc.handler()])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.stream_stream(FORWARD_BATCH_METHOD, request_serializer=None,
                                    response_deserializer=None)
            with pytest.raises(grpc.RpcError) as err:
                list(call(iter([encode_batch([b"x"])]), timeout=5))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "NOT_AN_ORDERER" in (err.value.details() or "")
    finally:
        server.stop(0)


class Orderers(Members):
    """Every caller is orderer 2 (the forwarding follower)."""

    def raft_id_of(self, identity: object) -> int | None:
        return 2


def _leader_validator(net: Any, limit: list[int], revoked: str = "") -> EnvelopeValidator:
    """The leader's validator: ``max_envelope_bytes`` in force ``limit[0]`` (read per envelope),
    and the certificate with serial ``revoked`` revoked in h01 -- a config the follower (whose
    validator is :func:`_validator`'s, the genesis config's) has not applied yet."""
    consortium = config_from_genesis(read_genesis(net.genesis_path))
    if revoked:
        next(o for o in consortium.organizations if o.id == "h01").revoked_serials.append(revoked)
    msp = MSP(consortium, Verifier())
    return EnvelopeValidator(lambda: msp, consortium.consortium_id, lambda: limit[0],
                             lambda: int(time.time() * 1000))


@contextlib.contextmanager
def _forwarding_to(leader_validator: EnvelopeValidator, net: Any) -> Iterator[tuple[BroadcastHandler, BatchOrderer]]:
    """A follower's broadcast handler (the genesis config: envelopes up to 64 KiB) forwarding
    over a real Cluster.ForwardBatch stream to a leader's ForwardBatchService that checks with
    ``leader_validator``: (the follower, the leader's chain)."""
    leader_chain = BatchOrderer(leader=1)
    leader = BroadcastHandler(leader_validator, leader_chain, NoForward(), OrdererMetrics("t"))
    (port,) = free_ports(1)
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([ForwardBatchService(Orderers({}), leader, OrdererMetrics("t")).handler()])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    fwd = LeaderForwarder(Members({7: f"127.0.0.1:{port}"}), grpc.insecure_channel, lambda: 7, watch_s=3600)
    try:
        yield BroadcastHandler(_validator(net), BatchOrderer(leader=7), fwd, OrdererMetrics("t")), leader_chain
    finally:
        fwd.close()
        server.stop(0)


def test_the_leader_leaves_config_checks_of_forwarded_envelopes_to_the_cut(net: Any) -> None:
    """The leader judges a forwarded envelope's size against the config its block falls under as
    the block is cut (``Chain._within_limits``, tests/orderer/test_clockwatch.py), not at intake
    against its config in force: a leader just elected has not applied the earlier terms'
    config blocks yet (tests/orderer/test_config_held.py), and an envelope resubmitted after a
    config update may already be in a block (tests/orderer/test_recheck_review.py). Intake hands
    it to the chain, in one hand-off per forwarded batch, by Cluster.Forward one at a time too."""
    client = Client(net)
    big, small = client.envelope(size=6000), client.envelope()
    assert 4096 < len(big[1]) <= 65536
    with _forwarding_to(_leader_validator(net, [4096]), net) as (follower, leader_chain):
        answers = [r for m in follower.batch_stream(iter([[big[1], small[1]]])) for r in m.responses]
    assert [(a.tx_id, a.accepted) for a in answers] == [(big[0], True), (small[0], True)]
    assert leader_chain.calls == [[big[1], small[1]]]
    chain = BatchOrderer()
    h = BroadcastHandler(_leader_validator(net, [4096]), chain, NoForward(), OrdererMetrics("t"))
    assert h.submit_local(Checked(big[1], "")).wait(1) == Outcome(block_number=1)
    refused = h.submit_local(Checked(b"\x0a\xff\xff", "")).wait(1)
    assert refused is not None and refused.reason == "BAD_PAYLOAD"
    assert chain.calls == [[big[1]]]


def test_the_leader_refuses_forwarded_envelopes_that_do_not_parse(net: Any) -> None:
    """What the leader checks again needs the header, so a forwarded envelope that is not one
    (an empty one: an EnvelopeBatch may frame it) is refused BAD_PAYLOAD, never ordered (it
    was ordered as it came, an INVOKE by its missing type)."""
    chain = BatchOrderer()
    h = BroadcastHandler(_leader_validator(net, [65536]), chain, NoForward(), OrdererMetrics("t"))
    small = Client(net).envelope()[1]
    tickets = h.submit_local_many(split_batch(encode_batch([b"", b"\x0a\xff\xff", small])))
    assert [o.reason if o else None for o in (t.wait(1) for t in tickets)] == ["BAD_PAYLOAD", "BAD_PAYLOAD", ""]
    assert chain.calls == [[small]]


@given(st.binary(max_size=200))
def test_any_bytes_either_split_or_refused(data: bytes) -> None:
    try:
        parts = split_batch(data)
    except BatchDecodeError:
        return
    assert encode_batch(parts) == data  # a well-formed batch is reproduced byte for byte


def test_fuzzed_batch_messages_get_reason_codes(net: Any) -> None:
    client = Client(net)
    orderer = BatchOrderer()
    h = BroadcastHandler(_validator(net), orderer, NoForward(), OrdererMetrics("t"))
    raw = client.envelope()[1]
    mutated = [raw[:i] + bytes([raw[i] ^ 0x55]) + raw[i + 1:] for i in range(0, len(raw), 97)]
    answers = [r for m in h.batch_stream(iter([mutated, [raw[:40], b"", raw]])) for r in m.responses]
    assert len(answers) == len(mutated) + 3
    assert all(a.reason in ("", "BAD_PAYLOAD", "BAD_SIGNATURE", "UNKNOWN_CREATOR") for a in answers)
    assert answers[-1].accepted and not answers[-2].accepted and not answers[-3].accepted
    ordered = [env for call in orderer.calls for env in call]
    assert raw in ordered and all(a.accepted == (m in ordered) for a, m in zip(answers, mutated, strict=False))


def test_chain_leader_listener_wakes_the_forwarder_at_once(leader_server: Any) -> None:
    leader, _, targets = leader_server
    leader.open_gate.clear()  # nothing gets sent
    current = [2]
    fwd = LeaderForwarder(Members(targets), grpc.insecure_channel, lambda: current[0],
                          watch_s=3600)  # no polling: only the listener can wake it
    try:
        tickets = fwd.submit_many(2, [(b"a", "ta")])
        current[0] = 3
        fwd.leader_changed(3)
        outcome = tickets[0].wait(5)
        assert outcome is not None and outcome.reason == "NOT_LEADER"
    finally:
        fwd.close()


def test_nothing_after_a_malformed_batch_message_is_ordered(net: Any) -> None:
    """The stream ends at a malformed message; envelopes the client sent after it are
    neither answered nor ordered (the client is told BAD_PAYLOAD and resends them)."""
    client = Client(net)
    orderer = BatchOrderer()
    h = BroadcastHandler(_validator(net), orderer, NoForward(), OrdererMetrics("t"))
    later = [client.envelope()[1] for _ in range(3)]
    stream = h.batch_stream(iter([decode_batch(b"\x12\x00"), later]))
    with pytest.raises(RxError) as err:
        next(stream)
    assert err.value.reason == "BAD_PAYLOAD"
    time.sleep(0.3)
    assert orderer.tickets == []


def test_a_batch_handed_back_by_a_moved_leader_is_redispatched_at_once(net: Any) -> None:
    """When the leader moves before a forwarded batch was sent, every envelope comes back
    NOT_LEADER together: they go to the new leader without a pause per envelope (one pause
    each would run a large batch past its deadline)."""
    from node.orderer.ticket import NOT_LEADER

    client = Client(net)
    leader = [2]

    class Chain:
        def leader_id(self) -> int:
            return leader[0]

        def own_id(self) -> int:
            return 1

    class Fwd:
        def submit(self, leader_id: int, envelope: bytes, tx_id: str) -> Ticket:
            return self.submit_many(leader_id, [(envelope, tx_id)])[0]

        def submit_many(self, leader_id: int, items: list[tuple[bytes, str]]) -> list[Ticket]:
            if leader_id == 2:  # moved before the batch was sent: handed back
                leader[0] = 3
                return [Ticket.done(Outcome(NOT_LEADER, "no longer leads; not sent"), t) for _, t in items]
            return [Ticket.done(Outcome(block_number=7), t) for _, t in items]

    h = BroadcastHandler(_validator(net), Chain(), Fwd(), OrdererMetrics("t"),  # type: ignore[arg-type]
                         options=BroadcastOptions(commit_timeout_s=2.0))
    envs = [client.envelope()[1] for _ in range(300)]
    answers = [r for m in h.batch_stream(iter([envs])) for r in m.responses]
    assert len(answers) == 300 and all(a.accepted for a in answers), {a.message for a in answers}


def test_read_ahead_is_bounded_by_bytes_for_a_client_that_does_not_read() -> None:
    """Requests are read ahead of their answers only while those not yet answered weigh
    less than ``max_bytes`` (the first always): a client that sends large batches and never
    reads answers cannot make the orderer hold them all."""
    from node.orderer.streams import coalesced_answers

    read: list[int] = []

    def requests() -> Iterator[list[bytes]]:
        for i in range(20):
            read.append(i)
            yield [b"x" * 1000]

    gate = threading.Event()

    def answer(item: bytes) -> int:
        gate.wait(5)
        return len(item)

    def items(r: list[bytes]) -> list[bytes]:
        return r

    def pack(answers: list[int]) -> list[int]:
        return answers

    out = coalesced_answers(requests(), items, answer, lambda i: False, pack,
                            weigh=lambda r: sum(len(x) for x in r), max_bytes=3000)
    got: list[list[int]] = []
    t = threading.Thread(target=lambda: got.extend(out), daemon=True)
    t.start()
    time.sleep(0.5)
    assert 1 <= len(read) <= 4  # 3 held (3,000 bytes) plus at most the one waiting for room
    gate.set()
    t.join(10)
    assert sum(len(m) for m in got) == 20 and len(read) == 20


def test_answers_ready_together_are_split_at_the_byte_budget_in_order() -> None:
    """The answers of several requests ready together went out in one message of up to 4,096
    answers, whatever they weighed: over the bound of a node dialled at a small
    ``max_message_bytes`` (a peer, a forwarding orderer), which refused the whole message.
    With ``answer_bytes`` they fill messages of at most that many bytes, in order; a request
    with no items still gets one (empty) message."""
    from node.orderer.streams import coalesced_answers

    def answer(tx: str) -> services_pb2.BroadcastResponse:
        return services_pb2.BroadcastResponse(tx_id=tx, accepted=True)

    def pack(answers: list[services_pb2.BroadcastResponse]) -> services_pb2.BroadcastBatchResponse:
        return services_pb2.BroadcastBatchResponse(responses=answers)

    one = answer("t000").ByteSize()
    request = [f"t{i:03d}" for i in range(40)]  # a batch of 40 envelopes answered together
    budget = one * 15
    out = list(coalesced_answers(iter([request, []]), lambda r: r, answer, lambda i: True, pack,
                                 answer_bytes=lambda: budget))
    got = [[a.tx_id for a in m.responses] for m in out]
    assert [t for m in got for t in m] == request
    assert [len(m) for m in got[:3]] == [15, 15, 10] and all(m.ByteSize() <= budget + 2 * 15 for m in out)
    assert got[3:] in ([], [[]])  # the empty request's message, unless merged into the one before
    whole = list(coalesced_answers(iter([request]), lambda r: r, answer, lambda i: True, pack))
    assert [len(m.responses) for m in whole] == [40]  # without a budget: one message


class LegacyLeader:
    """OrdererCluster.ForwardBatch (the legacy forward RPC): records each message's envelope
    sizes and answers every envelope accepted once ``gate`` is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.messages: list[list[int]] = []

    def handle(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        from rxchain.v1 import raft_pb2

        for msg in requests:
            self.messages.append([len(e) for e in msg.envelopes])
            if msg.envelopes:
                self.gate.wait(5)
            yield raft_pb2.ForwardAnswers(answers=[raft_pb2.ForwardAnswer(accepted=True) for _ in msg.envelopes])


def test_legacy_forwarder_batches_within_the_byte_budget() -> None:
    """The legacy ForwardBatch stream coalesced up to 512 envelopes whatever they weighed: over
    the leader's gRPC bound under a small ``max_message_bytes`` the whole message was refused
    and every envelope in it answered "outcome unknown". It now fills at most ``max_bytes()``."""

    from node.orderer.transport import _ForwardStream

    fake = LegacyLeader()
    (port,) = free_ports(1)
    server = _serve_legacy_forward_batch(fake.handle, port)
    stream = _ForwardStream(f"127.0.0.1:{port}", grpc.insecure_channel, max_bytes=lambda: 3000)
    try:
        first = Ticket("t0")
        stream.submit(b"a" * 1000, first)  # goes alone; the rest queue behind it
        tickets = [Ticket(f"t{i}") for i in range(1, 11)]
        for t in tickets:
            stream.submit(b"b" * 1000, t)
        fake.gate.set()
        assert all(t.wait(5) == Outcome() for t in [first, *tickets])
        sent = [m for m in fake.messages if m]
        assert sum(len(m) for m in sent) == 11
        assert max(sum(m) for m in sent) <= 3000 and max(len(m) for m in sent) > 1, sent
    finally:
        stream.close()
        server.stop(0)
