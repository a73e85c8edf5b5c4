"""Endorser.ProcessProposals (batched bidi stream) and the streaming RemoteEndorsers client.

Real gRPC servers on 127.0.0.1 (insecure channels: TLS is covered by the e2e tests) serve
in-process peers of the ``deployed`` cluster.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, cast

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from node.config import Endpoint
from node.errors import RxError, abort_with, reason_from_rpc_error
from node.msgbound import MIN_MESSAGE_BYTES
from node.peer import peer_clients
from node.peer.config_view import ConfigView
from node.peer.endorser import MAX_BATCH_ITEMS, Endorser, EndorserService, _ProposalStream
from node.peer.gateway.deps import GatewayDeps
from node.peer.gateway.endorse import endorse
from node.peer.notifier import CommitNotifier
from node.peer.peer_clients import MAX_SEND_BYTES, MAX_SEND_ITEMS, RemoteEndorsers, _batches
from node.peer.policy_provider import LifecyclePolicies
from node.stream_caps import StreamCaps
from tests.peer.conftest import Cluster

WAIT_S = 10.0  # bound on every wait in this module


def deps_for(cluster: Cluster, remotes: RemoteEndorsers) -> tuple[GatewayDeps, CommitNotifier]:
    """Gateway collaborators of the cluster's first peer (h01) with real remote clients."""
    local = cluster.peers[0]
    notifier = CommitNotifier(local.ledger.height())
    deps = GatewayDeps(
        org=local.org, endorser=local.endorser, ledger=local.ledger,
        configs=ConfigView(local.ledger.state, local.committer.validator._verifier),
        policies=LifecyclePolicies(), notifier=notifier, remotes=remotes, broadcast=cast(Any, None),
    )
    return deps, notifier


class Blocking:
    """An Endorser wrapper whose endorse() waits on ``gate`` (set when the test says so)."""

    def __init__(self, inner: Endorser) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.done = 0

    def endorse(self, signed: transaction_pb2.SignedProposal) -> transaction_pb2.ProposalResponse:
        self.entered.release()
        self.gate.wait(WAIT_S)
        try:
            return self.inner.endorse(signed)
        finally:
            self.done += 1


class CountingService(EndorserService):
    """EndorserService that records how many items each request message carried."""

    def __init__(self, endorser: Any, **kw: Any) -> None:
        super().__init__(cast(Endorser, endorser), **kw)
        self.request_sizes: list[int] = []
        self.answer_sizes: list[int] = []
        self.request_bytes: list[int] = []  # ByteSize of each message
        self.answer_bytes: list[int] = []

    def ProcessProposals(self, request_iterator, context):
        def counted() -> Iterator[services_pb2.ProposalBatch]:
            for batch in request_iterator:
                self.request_sizes.append(len(batch.items))
                self.request_bytes.append(batch.ByteSize())
                yield batch

        for out in super().ProcessProposals(counted(), context):
            self.answer_sizes.append(len(out.items))
            self.answer_bytes.append(out.ByteSize())
            yield out


class UnaryOnly:
    """An older peer: its Endorser service has ProcessProposal only (gRPC answers UNIMPLEMENTED)."""

    def __init__(self, endorser: Endorser) -> None:
        self.endorser = endorser
        self.calls = 0

    def process(self, request: transaction_pb2.SignedProposal, context: grpc.ServicerContext
                ) -> transaction_pb2.ProposalResponse:
        self.calls += 1
        try:
            return self.endorser.endorse(request)
        except RxError as err:
            abort_with(context, err)

    def register(self, server: grpc.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            self.process, request_deserializer=transaction_pb2.SignedProposal.FromString,
            response_serializer=transaction_pb2.ProposalResponse.SerializeToString)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("rxchain.v1.Endorser", {"ProcessProposal": handler}),))


class Server:
    """A gRPC server on a fixed 127.0.0.1 port that can be stopped and started again."""

    def __init__(self, servicer: services_pb2_grpc.EndorserServicer | UnaryOnly, port: int = 0,
                 options: list[tuple[str, int]] | None = None) -> None:
        self.servicer = servicer
        self.port = port
        self.options = options or []
        self.server: grpc.Server | None = None
        self.start()

    def start(self) -> None:
        server = grpc.server(ThreadPoolExecutor(8), options=self.options)
        if isinstance(self.servicer, UnaryOnly):
            self.servicer.register(server)
        else:
            services_pb2_grpc.add_EndorserServicer_to_server(self.servicer, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert self.port
        server.start()
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait(WAIT_S)
            self.server = None


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    made: list[Server] = []
    try:
        yield made
    finally:
        for s in made:
            s.stop()
            if isinstance(s.servicer, EndorserService):
                s.servicer.close(wait=True)  # no endorsement may outlive the cluster's ledgers


@pytest.fixture
def clients() -> Iterator[Callable[..., RemoteEndorsers]]:
    channels: list[grpc.Channel] = []
    made: list[RemoteEndorsers] = []

    def channel(target: str) -> grpc.Channel:
        ch = grpc.insecure_channel(target, options=[("grpc.initial_reconnect_backoff_ms", 50),
                                                    ("grpc.max_reconnect_backoff_ms", 200)])
        channels.append(ch)
        return ch

    def make(peers: dict[str, Server], **kw: Any) -> RemoteEndorsers:
        eps = [Endpoint(f"peer.{org}", org, "127.0.0.1", s.port) for org, s in peers.items()]
        r = RemoteEndorsers(eps, channel, **kw)
        made.append(r)
        return r

    try:
        yield make
    finally:
        for r in made:
            r.close()
        for ch in channels:
            ch.close()


def _signed(cluster: Cluster, key: str, function: str = "put", **args: Any) -> transaction_pb2.SignedProposal:
    return cluster.kit.proposal(cluster.net.doctor, "counter", function, {"key": key, **(args or {"value": 1})},
                                timestamp_ms=cluster.now())


def _collect(responses: Iterable[services_pb2.ProposalResponseBatch], want: int
             ) -> tuple[dict[int, services_pb2.CorrelatedProposalResponse], int]:
    got: dict[int, services_pb2.CorrelatedProposalResponse] = {}
    messages = 0
    for batch in responses:
        messages += 1
        for item in batch.items:
            assert item.correlation_id not in got, "one answer per correlation id"
            got[item.correlation_id] = item
        if len(got) >= want:
            break
    return got, messages


# --------------------------------------------------------------------------- server side


def test_batch_answers_every_item_by_correlation_id(deployed: Cluster, servers: list[Server]) -> None:
    service = EndorserService(deployed.peers[1].endorser, workers=4)
    servers.append(Server(service))
    ok = _signed(deployed, "a")
    refused = deployed.kit.proposal(deployed.net.doctor, "counter", "add", {"key": "a", "amount": 0},
                                    timestamp_ms=deployed.now())
    malformed = transaction_pb2.SignedProposal(proposal_bytes=b"\xff\xff not a proposal", signature=b"sig")
    forged = transaction_pb2.SignedProposal()
    forged.CopyFrom(_signed(deployed, "b"))
    forged.signature = forged.signature[:-4] + b"\0\0\0\0"
    first = services_pb2.ProposalBatch(items=[
        services_pb2.CorrelatedProposal(correlation_id=7, proposal=ok),
        services_pb2.CorrelatedProposal(correlation_id=8),  # empty item
        services_pb2.CorrelatedProposal(correlation_id=9, proposal=malformed),
        services_pb2.CorrelatedProposal(correlation_id=10, proposal=refused),
        services_pb2.CorrelatedProposal(correlation_id=11, proposal=forged),
    ])
    oversize = services_pb2.ProposalBatch(items=[
        services_pb2.CorrelatedProposal(correlation_id=1000 + i, proposal=ok) for i in range(MAX_BATCH_ITEMS + 1)
    ])
    after = services_pb2.ProposalBatch(items=[
        services_pb2.CorrelatedProposal(correlation_id=12, proposal=_signed(deployed, "c"))])
    requests: queue.SimpleQueue[services_pb2.ProposalBatch | None] = queue.SimpleQueue()

    def feed() -> Iterator[services_pb2.ProposalBatch]:
        while (b := requests.get(timeout=WAIT_S)) is not None:
            yield b

    with grpc.insecure_channel(f"127.0.0.1:{servers[0].port}") as ch:
        call = services_pb2_grpc.EndorserStub(ch).ProcessProposals(feed(), timeout=WAIT_S)
        requests.put(first)
        got, _ = _collect(call, 5)
        assert set(got) == {7, 8, 9, 10, 11}
        resp = got[7].response
        assert resp.response.status == 200 and resp.endorsement.endorser.org == "p01"
        assert resp.payload == deployed.peers[0].endorser.endorse(ok).payload  # same simulation
        assert got[8].error.reason == "BAD_REQUEST"
        assert got[9].error.reason == "BAD_PAYLOAD"
        assert got[10].response.response.status == 400 and got[10].response.response.reason == "NOT_POSITIVE"
        assert not got[10].response.HasField("endorsement")
        assert got[11].error.reason == "BAD_SIGNATURE"
        # An oversize batch is refused item by item; the stream keeps serving.
        requests.put(oversize)
        got, _ = _collect(call, MAX_BATCH_ITEMS + 1)
        assert sorted(got) == [1000 + i for i in range(MAX_BATCH_ITEMS + 1)]
        assert {item.error.reason for item in got.values()} == {"TOO_LARGE"}
        requests.put(after)
        got, _ = _collect(call, 1)
        assert got[12].response.response.status == 200
        requests.put(None)  # half-close: the server ends the stream once all is answered
        assert list(call) == []
        assert call.code() == grpc.StatusCode.OK


class Inline(Executor):
    """Runs submitted work at once (deterministic tests of the stream's queueing)."""

    def submit(self, fn, /, *args, **kwargs):
        fut: Future[Any] = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


def test_ready_answers_are_coalesced_into_one_message(deployed: Cluster) -> None:
    stream = _ProposalStream(deployed.peers[1].endorser.endorse, Inline(), lambda: True)
    batch = services_pb2.ProposalBatch(items=[
        services_pb2.CorrelatedProposal(correlation_id=i, proposal=_signed(deployed, f"k{i}")) for i in range(5)
    ] + [services_pb2.CorrelatedProposal(correlation_id=99)])
    stream.read(iter([batch]))  # every item answered before the handler looks
    out = list(stream.answers())
    assert len(out) == 1
    assert [i.correlation_id for i in out[0].items] == [0, 1, 2, 3, 4, 99]
    assert [i.response.response.status for i in out[0].items[:5]] == [200] * 5
    assert out[0].items[5].error.reason == "BAD_REQUEST"


def test_ready_answers_are_split_at_the_byte_budget_in_order() -> None:
    """The answers ready together went out as one message of up to 1 MiB plus one answer;
    they now fill messages of at most ``answer_bytes()``, in order, a larger answer alone."""
    def endorse(signed: transaction_pb2.SignedProposal) -> transaction_pb2.ProposalResponse:
        return transaction_pb2.ProposalResponse(response=transaction_pb2.Response(
            status=200, payload=signed.proposal_bytes))

    budget = [2500]
    stream = _ProposalStream(endorse, Inline(), lambda: True, lambda: budget[0])
    sizes = [1000, 1000, 1000, 4000, 500, 500]
    stream.read(iter([services_pb2.ProposalBatch(items=[
        services_pb2.CorrelatedProposal(correlation_id=i, proposal=transaction_pb2.SignedProposal(
            proposal_bytes=b"x" * n)) for i, n in enumerate(sizes)])]))
    out = list(stream.answers())
    assert [[i.correlation_id for i in m.items] for m in out] == [[0, 1], [2], [3], [4, 5]]
    assert all(m.ByteSize() <= budget[0] + 64 for m in out if len(m.items) > 1)
    assert stream._outstanding == 0


def test_idle_handler_endorses_a_proposal_itself_and_the_pool_takes_the_rest(deployed: Cluster) -> None:
    submitted: list[int] = []

    class Recording(Inline):
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(args[0].correlation_id)
            return super().submit(fn, *args, **kwargs)

    stream = _ProposalStream(deployed.peers[1].endorser.endorse, Recording(), lambda: True)
    stream._handler_idle = True  # as when the handler waits for answers
    batch = services_pb2.ProposalBatch(items=[
        services_pb2.CorrelatedProposal(correlation_id=i, proposal=_signed(deployed, f"h{i}")) for i in range(3)])
    stream.read(iter([batch]))
    assert submitted == [1, 2]  # item 0 went to the idle handler
    out = list(stream.answers())
    assert [[i.correlation_id for i in b.items] for b in out] == [[0, 1, 2]]
    assert all(i.response.response.status == 200 for i in out[0].items)
    assert stream._outstanding == 0


def test_sender_sends_whatever_is_queued_as_one_message() -> None:
    q: queue.SimpleQueue[services_pb2.CorrelatedProposal | None] = queue.SimpleQueue()
    gen = _batches(q)
    for i in range(MAX_SEND_ITEMS + 3):
        q.put(services_pb2.CorrelatedProposal(correlation_id=i))
    assert [i.correlation_id for i in next(gen).items] == list(range(MAX_SEND_ITEMS))
    assert [i.correlation_id for i in next(gen).items] == [MAX_SEND_ITEMS, MAX_SEND_ITEMS + 1, MAX_SEND_ITEMS + 2]
    q.put(services_pb2.CorrelatedProposal(correlation_id=500))  # alone: sent alone, no waiting
    assert [i.correlation_id for i in next(gen).items] == [500]
    big = transaction_pb2.SignedProposal(proposal_bytes=b"x" * (MAX_SEND_BYTES * 3 // 4))
    q.put(services_pb2.CorrelatedProposal(correlation_id=1, proposal=big))
    q.put(services_pb2.CorrelatedProposal(correlation_id=2, proposal=big))  # over MAX_SEND_BYTES together
    q.put(None)
    assert [i.correlation_id for i in next(gen).items] == [1]
    assert [i.correlation_id for i in next(gen).items] == [2]
    assert list(gen) == []


def test_sender_reads_its_byte_budget_per_message() -> None:
    q: queue.SimpleQueue[services_pb2.CorrelatedProposal | None] = queue.SimpleQueue()
    budget = [1 << 20]
    gen = _batches(q, max_bytes=lambda: budget[0])
    item = transaction_pb2.SignedProposal(proposal_bytes=b"x" * 1000)
    for i in range(10):
        q.put(services_pb2.CorrelatedProposal(correlation_id=i, proposal=item))
    assert len(next(gen).items) == 10
    budget[0] = 3000  # lowered: three items of ~1 KB no longer fit, two do
    for i in range(10):
        q.put(services_pb2.CorrelatedProposal(correlation_id=i, proposal=item))
    q.put(None)
    assert [len(b.items) for b in gen] == [2, 2, 2, 2, 2]


# --------------------------------------------------------------------------- client side


def test_client_pipelines_many_proposals_in_fewer_messages(deployed: Cluster, servers: list[Server],
                                                           clients: Callable[..., RemoteEndorsers]) -> None:
    service = CountingService(deployed.peers[1].endorser, workers=4)
    servers.append(Server(service))
    remotes = clients({"p01": servers[0]})
    n = 120
    signed = [_signed(deployed, f"m{i}") for i in range(n)]
    pending = [remotes.begin("p01", s) for s in signed]
    answers = [p.result() for p in pending]
    assert all(a.response.status == 200 and a.endorsement.endorser.org == "p01" for a in answers)
    # each answer belongs to its own proposal (correlation ids matched)
    for s, a in zip(signed, answers, strict=True):
        assert a.payload == deployed.peers[0].endorser.endorse(s).payload
    assert sum(service.request_sizes) == n
    assert len(service.request_sizes) < n, service.request_sizes
    assert sum(service.answer_sizes) == n
    assert remotes.streams_opened() == 1
    # Per-item refusals arrive as RxError with the server's reason; the stream stays up.
    bad = transaction_pb2.SignedProposal(proposal_bytes=b"junk", signature=b"sig")
    with pytest.raises(RxError) as info:
        remotes.endorse("p01", bad)
    assert info.value.reason == "BAD_PAYLOAD"
    assert remotes.endorse("p01", _signed(deployed, "after")).response.status == 200
    assert remotes.streams_opened() == 1


def test_remote_failure_mid_stream_fails_futures_promptly_and_reconnects(
        deployed: Cluster, servers: list[Server], clients: Callable[..., RemoteEndorsers]) -> None:
    blocking = Blocking(deployed.peers[1].endorser)
    service = EndorserService(cast(Endorser, blocking), workers=4)
    servers.append(Server(service))
    remotes = clients({"p01": servers[0]})
    pending = [remotes.begin("p01", _signed(deployed, f"f{i}")) for i in range(3)]
    for _ in range(3):
        assert blocking.entered.acquire(timeout=WAIT_S)
    started = time.monotonic()
    servers[0].stop()
    for p in pending:
        with pytest.raises(RxError) as info:
            p.result()
        assert info.value.reason == "SERVICE_UNAVAILABLE"
    assert time.monotonic() - started < 5.0  # not the 30 s call timeout
    blocking.gate.set()
    # The peer comes back on the same port: the next proposal opens a new stream.
    servers[0].start()
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            resp = remotes.endorse("p01", _signed(deployed, "back"))
            break
        except RxError as err:
            assert err.reason == "SERVICE_UNAVAILABLE" and time.monotonic() < deadline
            time.sleep(0.05)
    assert resp.response.status == 200
    assert remotes.streams_opened() >= 2


def test_gateway_replaces_an_org_whose_peer_dies_mid_stream(
        deployed: Cluster, servers: list[Server], clients: Callable[..., RemoteEndorsers]) -> None:
    blocking = Blocking(deployed.peers[1].endorser)  # p01 takes the proposal, then dies
    servers.append(Server(EndorserService(cast(Endorser, blocking), workers=2)))
    servers.append(Server(EndorserService(deployed.peers[2].endorser, workers=2)))
    remotes = clients({"p01": servers[0], "ins01": servers[1]})
    deps, notifier = deps_for(deployed, remotes)
    signed = _signed(deployed, "g")
    out: list[services_pb2.EndorseResponse | BaseException] = []

    def run() -> None:
        try:
            out.append(endorse(deps, services_pb2.EndorseRequest(proposal=signed)))
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    assert blocking.entered.acquire(timeout=WAIT_S)  # the rotation asked p01 first
    started = time.monotonic()
    servers[0].stop()
    t.join(WAIT_S)
    blocking.gate.set()
    assert not t.is_alive()
    assert time.monotonic() - started < 5.0
    result = out[0]
    assert isinstance(result, services_pb2.EndorseResponse), result
    tx = transaction_pb2.Transaction.FromString(result.prepared_transaction)
    assert sorted(e.endorser.org for e in tx.endorsements) == ["h01", "ins01"]
    notifier.close()


def test_call_timeout_and_late_answer_ignored(deployed: Cluster, servers: list[Server],
                                              clients: Callable[..., RemoteEndorsers]) -> None:
    blocking = Blocking(deployed.peers[1].endorser)
    servers.append(Server(EndorserService(cast(Endorser, blocking), workers=2)))
    remotes = clients({"p01": servers[0]}, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(RxError) as info:
        remotes.endorse("p01", _signed(deployed, "slow"))
    assert info.value.reason == "TIMEOUT"
    assert time.monotonic() - started < 3.0
    assert remotes.suspects() == {"p01"}  # plans leave p01 out while they can
    blocking.gate.set()  # the late answer arrives and is dropped; the stream keeps working
    assert remotes.endorse("p01", _signed(deployed, "fast")).response.status == 200
    assert remotes.streams_opened() == 1
    assert remotes.suspects() == set()  # it answered again


def test_falls_back_to_unary_when_the_stream_is_unimplemented(
        deployed: Cluster, servers: list[Server], clients: Callable[..., RemoteEndorsers]) -> None:
    old = UnaryOnly(deployed.peers[1].endorser)
    servers.append(Server(old))
    remotes = clients({"p01": servers[0]})
    first = remotes.endorse("p01", _signed(deployed, "u1"))
    assert first.response.status == 200 and old.calls == 1
    second = remotes.endorse("p01", _signed(deployed, "u2"))  # straight to unary now
    assert second.response.status == 200 and old.calls == 2
    assert remotes.streams_opened() == 1
    # A unary refusal keeps its reason code.
    with pytest.raises(RxError) as info:
        remotes.endorse("p01", transaction_pb2.SignedProposal(proposal_bytes=b"junk", signature=b"s"))
    assert info.value.reason == "BAD_PAYLOAD"
    assert remotes.suspects() == set()  # a refusal of one proposal says nothing of the peer


def _idle_streams(port: int, n: int, stop: threading.Event) -> tuple[grpc.Channel, list[Any]]:
    """``n`` ProcessProposals streams to ``port`` that send nothing until ``stop``."""
    def idle() -> Iterator[services_pb2.ProposalBatch]:
        stop.wait(WAIT_S * 2)
        yield from ()

    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = services_pb2_grpc.EndorserStub(ch)
    return ch, [stub.ProcessProposals(idle(), timeout=WAIT_S * 2) for _ in range(n)]


def test_endorse_streams_are_capped_so_idle_ones_leave_workers_free(
        deployed: Cluster, servers: list[Server]) -> None:
    """Any consortium certificate may call the Endorser. Each ProcessProposals stream holds
    one of the server's gRPC workers while open: as many idle streams as workers (8 here)
    left none for ProcessProposal, the Gateway or Health. They are counted under the node's
    stream caps: those past them are refused TOO_MANY_STREAMS, unary calls are served."""
    servers.append(Server(EndorserService(deployed.peers[1].endorser, streams=StreamCaps(4, 4))))
    stop = threading.Event()
    ch, calls = _idle_streams(servers[0].port, 8, stop)
    try:
        deadline = time.monotonic() + 2
        while sum(c.done() for c in calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as info:
            services_pb2_grpc.EndorserStub(ch).ProcessProposal(
                transaction_pb2.SignedProposal(proposal_bytes=b"junk", signature=b"s"), timeout=3)
        assert reason_from_rpc_error(info.value) == "BAD_PAYLOAD"
        refused = [c for c in calls if c.done()]
        assert len(refused) == 4
        assert all(reason_from_rpc_error(c) == "TOO_MANY_STREAMS" for c in refused)
    finally:
        stop.set()
        for c in calls:
            c.cancel()
        ch.close()


def test_a_peer_whose_stream_caps_are_full_is_asked_by_unary_calls(
        deployed: Cluster, servers: list[Server], clients: Callable[..., RemoteEndorsers]) -> None:
    """A peer refusing the stream TOO_MANY_STREAMS (another caller holds its caps) still
    endorses by unary ProcessProposal: the gateway falls back as for an older peer (it failed
    the proposal SERVICE_UNAVAILABLE after a second refused stream)."""
    caps = StreamCaps(1, 1)
    servers.append(Server(EndorserService(deployed.peers[1].endorser, streams=caps)))
    stop = threading.Event()
    ch, calls = _idle_streams(servers[0].port, 1, stop)
    try:
        deadline = time.monotonic() + 2
        while caps.held() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        remotes = clients({"p01": servers[0]})
        first = remotes.endorse("p01", _signed(deployed, "cap1"))
        assert first.response.status == 200
        second = remotes.endorse("p01", _signed(deployed, "cap2"))  # straight to unary now
        assert second.response.status == 200 and remotes.streams_opened() == 1
    finally:
        stop.set()
        for c in calls:
            c.cancel()
        ch.close()


def test_next_peer_of_the_org_is_asked_when_the_first_is_down(
        deployed: Cluster, servers: list[Server], clients: Callable[..., RemoteEndorsers]) -> None:
    down = Server(EndorserService(deployed.peers[1].endorser, workers=2))
    down.stop()
    servers.append(Server(EndorserService(deployed.peers[1].endorser, workers=2)))
    eps = [Endpoint("peer.p01a", "p01", "127.0.0.1", down.port),
           Endpoint("peer.p01b", "p01", "127.0.0.1", servers[0].port)]
    with grpc.insecure_channel(eps[0].target) as a, grpc.insecure_channel(eps[1].target) as b:
        remotes = RemoteEndorsers(eps, {eps[0].target: a, eps[1].target: b}.__getitem__)
        try:
            assert remotes.endorse("p01", _signed(deployed, "n")).endorsement.endorser.org == "p01"
        finally:
            remotes.close()


def test_idle_stream_is_half_closed_and_reopened_on_use(
        deployed: Cluster, servers: list[Server], clients: Callable[..., RemoteEndorsers],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_clients, "IDLE_CLOSE_S", 0.1)
    service = EndorserService(deployed.peers[1].endorser, workers=2)
    servers.append(Server(service))
    remotes = clients({"p01": servers[0]})
    assert remotes.endorse("p01", _signed(deployed, "i1")).response.status == 200
    deadline = time.monotonic() + WAIT_S
    while service._streams and time.monotonic() < deadline:  # the client half-closes, the server ends it
        time.sleep(0.02)
    assert not service._streams
    assert remotes.endorse("p01", _signed(deployed, "i2")).response.status == 200
    assert remotes.streams_opened() == 2


def test_idle_check_never_ends_a_stream_with_work_queued() -> None:
    q: queue.SimpleQueue[services_pb2.CorrelatedProposal | None] = queue.SimpleQueue()
    asked: list[int] = []

    def on_idle() -> bool:
        asked.append(1)
        if len(asked) == 1:
            q.put(services_pb2.CorrelatedProposal(correlation_id=5))  # work arrived meanwhile
            return False
        return True

    gen = _batches(q, 0.01, on_idle)
    assert [i.correlation_id for i in next(gen).items] == [5]
    assert list(gen) == [] and len(asked) == 2


def test_service_close_ends_streams_so_stop_is_not_held(
        deployed: Cluster, servers: list[Server], clients: Callable[..., RemoteEndorsers],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_clients, "IDLE_CLOSE_S", 60.0)  # the client keeps its stream open
    blocking = Blocking(deployed.peers[1].endorser)
    blocking.gate.set()
    service = EndorserService(cast(Endorser, blocking), workers=2)
    servers.append(Server(service))
    remotes = clients({"p01": servers[0]})
    assert remotes.endorse("p01", _signed(deployed, "c0")).response.status == 200
    assert len(service._streams) == 1
    # A proposal in flight when the service closes is answered or fails retryably.
    blocking.gate.clear()
    pending = remotes.begin("p01", _signed(deployed, "c1"))
    assert blocking.entered.acquire(timeout=WAIT_S) and blocking.entered.acquire(timeout=WAIT_S)
    done_when_closed: list[int] = []

    def close_and_look() -> None:
        service.close(wait=True)
        done_when_closed.append(blocking.done)

    closer = threading.Thread(target=close_and_look)
    closer.start()
    time.sleep(0.1)
    blocking.gate.set()
    closer.join(WAIT_S)
    assert done_when_closed == [2]  # close(wait=True) returned only after the running endorsement
    with grpc.insecure_channel(f"127.0.0.1:{servers[0].port}") as ch, pytest.raises(grpc.RpcError) as refused:
        services_pb2_grpc.EndorserStub(ch).ProcessProposal(_signed(deployed, "late"), timeout=WAIT_S)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    try:
        assert pending.result().response.status == 200
    except RxError as err:
        assert err.reason == "SERVICE_UNAVAILABLE"
    deadline = time.monotonic() + WAIT_S
    while service._streams and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not service._streams
    server = servers[0].server
    assert server is not None
    started = time.monotonic()
    server.stop(30).wait(WAIT_S)  # no stream left to wait for
    servers[0].server = None
    assert time.monotonic() - started < WAIT_S / 2


class DropsFirstStream(EndorserService):
    """Ends its first stream after reading one message, without answering (a restart)."""

    def __init__(self, endorser: Endorser) -> None:
        super().__init__(endorser, workers=2)
        self.streams = 0

    def ProcessProposals(self, request_iterator, context):
        self.streams += 1
        if self.streams == 1:
            next(request_iterator)
            return
        yield from super().ProcessProposals(request_iterator, context)


def test_proposal_on_a_broken_stream_is_sent_once_more_to_the_same_peer(
        deployed: Cluster, servers: list[Server], clients: Callable[..., RemoteEndorsers]) -> None:
    service = DropsFirstStream(deployed.peers[1].endorser)
    servers.append(Server(service))
    remotes = clients({"p01": servers[0]})
    resp = remotes.endorse("p01", _signed(deployed, "r"))
    assert resp.response.status == 200 and resp.endorsement.endorser.org == "p01"
    assert service.streams == 2 and remotes.streams_opened() == 2


def test_garbage_items_and_undecodable_messages_leave_the_service_serving(
        deployed: Cluster, servers: list[Server]) -> None:
    import random

    servers.append(Server(EndorserService(deployed.peers[1].endorser, workers=2)))
    rng = random.Random(5)
    items = [services_pb2.CorrelatedProposal(
        correlation_id=i, proposal=transaction_pb2.SignedProposal(
            proposal_bytes=rng.randbytes(rng.randrange(0, 300)), signature=rng.randbytes(rng.randrange(0, 80))))
        for i in range(40)]
    with grpc.insecure_channel(f"127.0.0.1:{servers[0].port}") as ch:
        stub = services_pb2_grpc.EndorserStub(ch)
        got, _ = _collect(stub.ProcessProposals(iter([services_pb2.ProposalBatch(items=items)]), timeout=WAIT_S), 40)
        assert sorted(got) == list(range(40))
        assert all(a.HasField("error") and a.error.reason in {"BAD_PAYLOAD", "BAD_HEADER"} for a in got.values())
        # A message that is not a ProposalBatch at all ends that stream with a status, nothing else.
        raw = ch.stream_stream("/rxchain.v1.Endorser/ProcessProposals",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            list(raw(iter([b"\xff\xff\xff\xff garbage"]), timeout=WAIT_S))
        assert info.value.code() in {grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT,
                                     grpc.StatusCode.UNKNOWN}
        ok = services_pb2.ProposalBatch(items=[
            services_pb2.CorrelatedProposal(correlation_id=1, proposal=_signed(deployed, "still"))])
        got, _ = _collect(stub.ProcessProposals(iter([ok]), timeout=WAIT_S), 1)
        assert got[1].response.response.status == 200


def test_a_caller_that_stops_reading_answers_stops_the_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots are freed when answers are handed to gRPC: answers nobody reads hold them, so
    the reader stops taking proposals (flow control reaches the caller) instead of queueing
    answers without bound."""
    from node.peer import endorser as endorser_mod

    monkeypatch.setattr(endorser_mod, "MAX_STREAM_IN_FLIGHT", 4)
    active = threading.Event()
    active.set()

    def fake(signed: transaction_pb2.SignedProposal) -> transaction_pb2.ProposalResponse:
        return transaction_pb2.ProposalResponse()

    stream = _ProposalStream(fake, Inline(), active.is_set)
    batch = services_pb2.ProposalBatch(items=[
        services_pb2.CorrelatedProposal(correlation_id=i, proposal=transaction_pb2.SignedProposal())
        for i in range(10)])
    reader = threading.Thread(target=stream.read, args=(iter([batch]),), daemon=True)
    reader.start()
    reader.join(1.0)
    assert reader.is_alive()  # blocked: 4 answers queued, none sent
    answers = stream.answers()
    got = [i.correlation_id for i in next(answers).items]
    assert got == [0, 1, 2, 3]
    deadline = time.monotonic() + 10
    while len(got) < 10 and time.monotonic() < deadline:
        got += [i.correlation_id for i in next(answers).items]
    assert sorted(got) == list(range(10))
    reader.join(5)
    assert not reader.is_alive()
    active.clear()



def test_proposals_and_answers_fit_the_smallest_message_bound(deployed: Cluster, servers: list[Server]) -> None:
    """Requests and answers were coalesced up to 1 MiB, over the bound of a consortium with a
    smaller ``max_message_bytes`` (64 KiB is allowed): the endorsing peer's server refused the
    whole request message (RESOURCE_EXHAUSTED), the gateway's channel the answer message, and
    every proposal on the stream failed. Both sides now fill a message with at most half the
    bound in force (node.msgbound)."""
    bound = MIN_MESSAGE_BYTES
    blocking = Blocking(deployed.peers[1].endorser)
    service = CountingService(blocking, workers=64, message_bound=lambda: bound)
    servers.append(Server(service, options=[("grpc.max_receive_message_length", bound)]))
    channels: list[grpc.Channel] = []

    def channel(target: str) -> grpc.Channel:
        channels.append(grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", bound)]))
        return channels[-1]

    remotes = RemoteEndorsers([Endpoint("peer.p01", "p01", "127.0.0.1", servers[0].port)], channel,
                              message_bound=lambda: bound)
    try:
        n = 60  # ~6 KB each: 360 KB of proposals queued together
        signed = [deployed.kit.proposal(deployed.net.doctor, "counter", "secret", {}, timestamp_ms=deployed.now(),
                                        transient={"secret": json.dumps(os.urandom(3000).hex()).encode()}) for _ in range(n)]
        pending = [remotes.begin("p01", s) for s in signed]
        for _ in range(n):  # every proposal reached the endorser (the handler and 59 pool workers)
            assert blocking.entered.acquire(timeout=WAIT_S)
        blocking.gate.set()  # their answers are ready together: coalesced
        answers = [p.result() for p in pending]
        assert all(a.response.status == 200 for a in answers), {a.response.message for a in answers}
        assert max(service.request_sizes) > 1 and max(service.answer_sizes) > 1  # both coalesced
        assert max(service.request_bytes) <= bound // 2 + 1024 and sum(service.request_bytes) > bound
        assert max(service.answer_bytes) <= bound // 2 + 1024
    finally:
        remotes.close()
        for ch in channels:
            ch.close()
