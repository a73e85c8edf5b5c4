"""Gateway.TransactBatch: several requests per message, coalesced answers, limits, half-close.

The gateway runs as a real gRPC service over in-process peers with real ledgers; the
ordering service is a fake that puts the submitted envelopes into blocks on the cluster.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from client.batching import MAX_REQUESTS_PER_MESSAGE, batch_requests
from client.gateway import Gateway
from client.pipeline import Call, submit_many
from client.wallet import load_identity
from node.errors import RxError, reason_from_rpc_error
from node.peer.config_view import ConfigView
from node.peer.gateway import transact as transact_mod
from node.peer.gateway.deps import GatewayDeps
from node.peer.gateway.service import GatewayService
from node.peer.notifier import CommitNotifier
from node.peer.policy_provider import LifecyclePolicies
from tests.peer.conftest import NOW_MS, Cluster, Peer
from tests.peer.kit import envelope

TReq = services_pb2.TransactRequest
BReq = services_pb2.TransactBatchRequest


class Remotes:
    """RemoteEndorsers over the other in-process peers."""

    def __init__(self, peers: dict[str, Peer]) -> None:
        self.peers = peers

    def orgs(self) -> list[str]:
        return list(self.peers)

    def suspects(self) -> set[str]:
        return set()

    def close(self) -> None:
        """Nothing to close: the peers are in-process."""

    def endorse(self, org: str, signed: transaction_pb2.SignedProposal) -> transaction_pb2.ProposalResponse:
        return self.peers[org].endorser.endorse(signed)


class BlockOrdering:
    """Accepts every envelope at once; once ``hold`` are in, orders them all into ONE block.

    ``refuse`` payloads are refused (BAD_SIGNATURE); ``hold=0`` never orders anything.
    """

    def __init__(self, cluster: Cluster, hold: int, refuse: set[bytes] | None = None) -> None:
        self.cluster = cluster
        self.hold = hold
        self.refuse = refuse or set()
        self.lock = threading.Lock()
        self.got: list[bytes] = []
        self.blocks: list[int] = []

    def submit_async(self, env: transaction_pb2.Envelope,
                     callback: Callable[[services_pb2.BroadcastResponse | RxError], None]) -> None:
        if env.payload in self.refuse:
            callback(services_pb2.BroadcastResponse(accepted=False, reason="BAD_SIGNATURE", message="forged"))
            return
        callback(services_pb2.BroadcastResponse(accepted=True))
        with self.lock:
            self.got.append(env.SerializeToString())
            if self.hold and len(self.got) == self.hold:
                # Noted first: the answers go out while the other peers still commit.
                self.blocks.append(self.cluster.peers[0].ledger.height())
                self.cluster.commit(self.got)
                self.got = []


class Switch:
    """The deps' broadcast client: forwards to whichever fake ordering a test installs."""

    def __init__(self, current: Any) -> None:
        self.current = current

    def submit_async(self, env: transaction_pb2.Envelope,
                     callback: Callable[[services_pb2.BroadcastResponse | RxError], None]) -> None:
        self.current.submit_async(env, callback)


class CountingGateway(GatewayService):
    """The real servicer, counting the RPCs used and the answer messages sent."""

    def __init__(self, deps: GatewayDeps) -> None:
        super().__init__(deps, workers=4)
        self.calls: list[str] = []
        self.messages: list[int] = []  # answers per TransactBatch message

    def Transact(self, request_iterator: Any, context: Any) -> Iterator[services_pb2.TransactResponse]:
        self.calls.append("Transact")
        yield from super().Transact(request_iterator, context)

    def TransactBatch(self, request_iterator: Any, context: Any) -> Iterator[services_pb2.TransactBatchResponse]:
        self.calls.append("TransactBatch")
        for msg in super().TransactBatch(request_iterator, context):
            self.messages.append(len(msg.responses))
            yield msg


@dataclass
class Served:
    cluster: Cluster
    deps: GatewayDeps
    service: CountingGateway
    stub: services_pb2_grpc.GatewayStub
    target: str
    channel: grpc.Channel
    switch: Switch

    def order_with(self, ordering: BlockOrdering) -> None:
        """Install a fake ordering service."""
        self.switch.current = ordering


def _deps(cluster: Cluster, broadcast: Any) -> GatewayDeps:
    local = cluster.peers[0]
    notifier = CommitNotifier(local.ledger.height())
    local.committer.add_listener(notifier.on_commit)
    return GatewayDeps(
        org=local.org, endorser=local.endorser, ledger=local.ledger,
        configs=ConfigView(local.ledger.state, local.committer.validator._verifier),
        policies=LifecyclePolicies(), notifier=notifier,
        remotes=cast(Any, Remotes({"p01": cluster.peers[1], "ins01": cluster.peers[2]})),
        broadcast=cast(Any, broadcast),
    )


@pytest.fixture
def served(deployed: Cluster) -> Iterator[Served]:
    switch = Switch(BlockOrdering(deployed, hold=1))
    deps = _deps(deployed, switch)
    service = CountingGateway(deps)
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    services_pb2_grpc.add_GatewayServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target)
    try:
        yield Served(deployed, deps, service, services_pb2_grpc.GatewayStub(channel), target, channel, switch)
    finally:
        channel.close()
        server.stop(0)
        service.close()
        deps.notifier.close()


def _signed(cluster: Cluster, key: str) -> transaction_pb2.SignedProposal:
    return cluster.kit.proposal(cluster.net.doctor, "counter", "put", {"key": key, "value": 1},
                                timestamp_ms=cluster.now())


def _envelope(cluster: Cluster, key: str) -> transaction_pb2.Envelope:
    signed = _signed(cluster, key)
    raw = envelope(cluster.net.doctor, signed, cluster.endorse_all(signed, cluster.peers[:2]))
    return transaction_pb2.Envelope.FromString(raw)


def _flat(msgs: Iterable[services_pb2.TransactBatchResponse]) -> dict[int, services_pb2.TransactResponse]:
    out: dict[int, services_pb2.TransactResponse] = {}
    for m in msgs:
        for r in m.responses:
            assert r.correlation_id not in out, "answered twice"
            out[r.correlation_id] = r
    return out


def test_one_message_of_requests_answered_by_correlation_id(served: Served) -> None:
    cluster = served.cluster
    reqs = [TReq(correlation_id=10 + i, endorse=services_pb2.EndorseRequest(proposal=_signed(cluster, f"b{i}")))
            for i in range(5)]
    reqs.append(TReq(correlation_id=42))  # neither endorse nor submit
    got = _flat(served.stub.TransactBatch(iter([BReq(requests=reqs)]), timeout=30))
    assert sorted(got) == [10, 11, 12, 13, 14, 42]
    assert got[42].error.reason == "BAD_REQUEST"
    for i in range(5):
        tx = transaction_pb2.Transaction.FromString(got[10 + i].endorsed.prepared_transaction)
        assert sorted(e.endorser.org for e in tx.endorsements) in (["h01", "p01"], ["h01", "ins01"])
        assert tx.invocation == transaction_pb2.Proposal.FromString(
            reqs[i].endorse.proposal.proposal_bytes).invocation
    assert served.service.calls == ["TransactBatch"]


def test_answers_ready_together_share_a_message(served: Served) -> None:
    n = 12
    ordering = BlockOrdering(served.cluster, hold=n)
    served.order_with(ordering)
    envs = [_envelope(served.cluster, f"c{i}") for i in range(n)]
    msg = BReq(requests=[TReq(correlation_id=100 + i, submit=e) for i, e in enumerate(envs)])
    got = _flat(served.stub.TransactBatch(iter([msg]), timeout=30))
    assert sorted(got) == [100 + i for i in range(n)]
    assert {r.committed.code for r in got.values()} == {transaction_pb2.VALID}
    assert {r.committed.block_number for r in got.values()} == {ordering.blocks[0]}
    # All n statuses were pushed by one block commit: far fewer messages than answers.
    assert sum(served.service.messages) == n
    assert len(served.service.messages) < n


def test_bad_messages_and_items_are_answered_and_the_stream_keeps_serving(served: Served) -> None:
    cluster = served.cluster
    refused = _envelope(cluster, "forged")
    served.order_with(BlockOrdering(cluster, hold=1, refuse={refused.payload}))
    good = _envelope(cluster, "good")
    q: queue.SimpleQueue[BReq | None] = queue.SimpleQueue()

    def feed() -> Iterator[BReq]:
        while (m := q.get(timeout=30)) is not None:
            yield m

    q.put(BReq())  # empty message
    too_many = [TReq(correlation_id=1000 + i, submit=good) for i in range(MAX_REQUESTS_PER_MESSAGE + 1)]
    q.put(BReq(requests=too_many))
    q.put(BReq(requests=[
        TReq(correlation_id=1, submit=transaction_pb2.Envelope(payload=b"\xff\xff", signature=b"s")),
        TReq(correlation_id=2),
        TReq(correlation_id=3, submit=refused),
        TReq(correlation_id=4, endorse=services_pb2.EndorseRequest()),
        TReq(correlation_id=5, submit=good),
    ]))
    q.put(None)
    msgs = list(served.stub.TransactBatch(feed(), timeout=30))
    answers = [r for m in msgs for r in m.responses]
    whole = [(r.error.reason) for r in answers if r.correlation_id == 0]
    assert sorted(whole) == ["BAD_REQUEST", "TOO_MANY_ITEMS"]
    by_id = {r.correlation_id: r for r in answers if r.correlation_id}
    assert sorted(by_id) == [1, 2, 3, 4, 5]  # nothing of the refused 257-request message
    assert by_id[1].error.reason == "BAD_PAYLOAD"
    assert by_id[2].error.reason == "BAD_REQUEST"
    assert (by_id[3].error.reason, by_id[3].error.message) == ("BAD_SIGNATURE", "forged")
    assert by_id[4].error.reason == "BAD_REQUEST"
    assert by_id[5].committed.code == transaction_pb2.VALID
    # The oversized message was not processed: only "good" was ordered, exactly once.
    tx_id = transaction_pb2.TxHeader.FromString(
        transaction_pb2.Transaction.FromString(good.payload).header).tx_id
    loc = cluster.peers[0].ledger.tx_location(tx_id)
    assert loc is not None and loc.block == by_id[5].committed.block_number


def test_stream_ends_after_half_close_once_everything_is_answered(served: Served) -> None:
    cluster = served.cluster
    # Nothing sent: the stream ends at once.
    assert list(served.stub.TransactBatch(iter([]), timeout=10)) == []
    # Two submits, then half-close; the block comes later: the stream waits for it, then ends.
    ordering = BlockOrdering(cluster, hold=0)
    served.order_with(ordering)
    envs = [_envelope(cluster, "h1"), _envelope(cluster, "h2")]
    call = served.stub.TransactBatch(
        iter([BReq(requests=[TReq(correlation_id=i + 1, submit=e) for i, e in enumerate(envs)])]), timeout=30)
    box: list[services_pb2.TransactBatchResponse] = []
    done = threading.Event()

    def read() -> None:
        box.extend(call)
        done.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert not done.wait(0.5)  # half-closed, but two answers are still owed
        assert len(ordering.got) == 2 and box == []
        block = cluster.commit(ordering.got)[0].header.number
        assert done.wait(10)
    finally:
        reader.join(10)
    got = _flat(box)
    assert {k: (v.committed.code, v.committed.block_number) for k, v in got.items()} == {
        1: (transaction_pb2.VALID, block), 2: (transaction_pb2.VALID, block)}


def test_sdk_pipeline_uses_transact_batch_end_to_end(served: Served) -> None:
    cluster = served.cluster
    n = 8
    ordering = BlockOrdering(cluster, hold=n)
    served.order_with(ordering)
    ident = load_identity(cluster.net.home, "h01", "dr-a")
    gw = Gateway(ident, served.target, cluster.net.consortium_id, clock=lambda: NOW_MS,
                 channel=grpc.insecure_channel(served.target))
    try:
        out = submit_many(gw, [Call("counter", "put", {"key": f"sdk{i}", "value": i}) for i in range(n)]
                          + [Call("counter", "add", {"key": "neg", "amount": 0})], timeout_s=30)
    finally:
        gw.close()
    assert served.service.calls == ["TransactBatch"]
    results = [cast(Any, o) for o in out[:n]]
    assert [r.code for r in results] == ["VALID"] * n
    assert {r.block for r in results} == {ordering.blocks[0]}
    assert [r.result for r in results] == [{"ok": True}] * n
    assert getattr(out[n], "reason", "") == "NOT_POSITIVE"  # refused; the others unaffected
    for r in results:
        loc = cluster.peers[0].ledger.tx_location(r.tx_id)
        assert loc is not None and loc.block == r.block
    # 2n + 1 answers; the n commit statuses came from one block.
    assert sum(served.service.messages) == 2 * n + 1
    assert len(served.service.messages) < 2 * n + 1


def test_client_coalescer_sends_queued_requests_together(served: Served) -> None:
    cluster = served.cluster
    served.order_with(BlockOrdering(cluster, hold=0))
    q: queue.SimpleQueue[TReq | None] = queue.SimpleQueue()
    for i in range(6):
        q.put(TReq(correlation_id=i + 1))  # no kind: answered at once with BAD_REQUEST
    q.put(None)
    sent: list[int] = []

    def counted() -> Iterator[BReq]:
        for m in batch_requests(q):
            sent.append(len(m.requests))
            yield m

    got = _flat(served.stub.TransactBatch(counted(), timeout=10))
    assert sent == [6]
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert {r.error.reason for r in got.values()} == {"BAD_REQUEST"}


class _Silent:
    def __init__(self) -> None:
        self.count = 0

    def submit_async(self, env: transaction_pb2.Envelope,
                     callback: Callable[[services_pb2.BroadcastResponse | RxError], None]) -> None:
        self.count += 1
        callback(services_pb2.BroadcastResponse(accepted=True))  # accepted, never ordered


def test_timeouts_coalesce_within_the_message_bounds(deployed: Cluster) -> None:
    silent = _Silent()
    deps = _deps(deployed, silent)
    envs = [_envelope(deployed, f"t{i}") for i in range(8)]
    now = [0.0]
    sent = threading.Event()

    def feed() -> Iterator[BReq]:
        yield BReq(requests=[TReq(correlation_id=i + 1, submit=e) for i, e in enumerate(envs)])
        sent.wait(10)

    def advance() -> None:
        # Once all eight are in flight, jump past their commit deadline: the response side
        # finds all eight late in one sweep, so their answers are ready together.
        for _ in range(1000):
            if silent.count == 8:
                break
            threading.Event().wait(0.01)
        now[0] = 1000.0
        sent.set()

    helper = threading.Thread(target=advance)
    helper.start()
    with ThreadPoolExecutor(2) as work, ThreadPoolExecutor(2) as remote:
        msgs = list(transact_mod.transact_batch(deps, feed(), lambda: True, work, remote,
                                                commit_timeout_ms=5000, clock=lambda: now[0], max_answers=3))
    helper.join(10)
    assert [len(m.responses) for m in msgs] == [3, 3, 2]
    assert {(r.correlation_id, r.error.reason) for m in msgs for r in m.responses} == {
        (i + 1, "TIMEOUT") for i in range(8)}
    # The byte bound: answers of ~60 bytes each, at most 130 bytes per message -> 2 per message.
    silent2 = _Silent()
    deps2 = _deps(deployed, silent2)
    now[0] = 0.0
    sent.clear()
    silent = silent2
    helper = threading.Thread(target=advance)
    helper.start()
    with ThreadPoolExecutor(2) as work, ThreadPoolExecutor(2) as remote:
        msgs = list(transact_mod.transact_batch(deps2, feed(), lambda: True, work, remote,
                                                commit_timeout_ms=5000, clock=lambda: now[0], max_bytes=130))
    helper.join(10)
    sizes = [len(m.responses) for m in msgs]
    assert sum(sizes) == 8 and max(sizes) <= 2 and len(sizes) == 4
    deps.notifier.close()
    deps2.notifier.close()


def test_failed_or_abandoned_submits_stop_watching_for_their_commit(deployed: Cluster) -> None:
    class Broken:
        def submit_async(self, env: transaction_pb2.Envelope, callback: Any) -> None:
            raise ConnectionError("orderer client broke")

    deps = _deps(deployed, Broken())
    env = _envelope(deployed, "w1")
    with ThreadPoolExecutor(2) as work, ThreadPoolExecutor(2) as remote:
        msgs = list(transact_mod.transact_batch(deps, iter([BReq(requests=[TReq(correlation_id=3, submit=env)])]),
                                                lambda: True, work, remote))
    assert [(r.correlation_id, r.error.reason) for m in msgs for r in m.responses] == [(3, "INTERNAL")]
    assert deps.notifier._watchers == {}
    # The client goes away while a submit waits for its block: nothing stays registered.
    deps2 = _deps(deployed, _Silent())
    active = [True]
    gate = threading.Event()

    def feed() -> Iterator[BReq]:
        yield BReq(requests=[TReq(correlation_id=4, submit=env)])
        gate.wait(10)

    with ThreadPoolExecutor(2) as work, ThreadPoolExecutor(2) as remote:
        gen = transact_mod.transact_batch(deps2, feed(), lambda: active[0], work, remote)
        ender = threading.Timer(0.5, lambda: active.__setitem__(0, False))
        ender.start()
        assert list(gen) == []  # no answer came; the response side ended with the call
        ender.join()
        gate.set()
    assert deps2.notifier._watchers == {}
    deps.notifier.close()
    deps2.notifier.close()


def test_malformed_protobuf_ends_only_that_call(served: Served) -> None:
    raw = served.channel.stream_stream("/rxchain.v1.Gateway/TransactBatch",
                                       request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        list(raw(iter([b"\x0a\xff\xff\xff\xff\x0f garbage"]), timeout=10))
    assert e.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED  # refused at once, no hang
    got = _flat(served.stub.TransactBatch(iter([BReq(requests=[TReq(correlation_id=8)])]), timeout=10))
    assert got[8].error.reason == "BAD_REQUEST"


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "transact-batch-reader" and t.is_alive()]


def test_close_waits_until_no_reader_or_endorsement_touches_the_ledger(deployed: Cluster) -> None:
    """The peer closes its ledger right after GatewayService.close: close must not return
    while a stream's reader (submits read the ledger on it) or a local endorsement runs."""
    deps = _deps(deployed, Switch(BlockOrdering(deployed, hold=1)))
    service = GatewayService(deps)
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    services_pb2_grpc.add_GatewayServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    q: queue.SimpleQueue[BReq | None] = queue.SimpleQueue()

    def feed() -> Iterator[BReq]:
        while (m := q.get(timeout=30)) is not None:
            yield m

    try:
        before = len(_readers())
        stream = services_pb2_grpc.GatewayStub(channel).TransactBatch(feed(), timeout=30)
        q.put(BReq(requests=[TReq(correlation_id=i, endorse=services_pb2.EndorseRequest(
            proposal=_signed(deployed, f"z{i}"))) for i in range(6)]))
        assert next(iter(stream)).responses  # the stream is live: its reader waits for more
        assert len(_readers()) == before + 1
        server.stop(0)  # cancels the stream: the reader ends
        assert service.close(wait_s=10)
        assert len(_readers()) == before
    finally:
        q.put(None)
        channel.close()
        server.stop(0)
        deps.notifier.close()


class _Ctx:
    """A servicer context of a call without TLS (the stream caps' anonymous caller)."""

    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def add_callback(self, _callback: Any) -> bool:
        return True


def test_close_reports_work_still_running_after_its_wait(deployed: Cluster) -> None:
    deps = _deps(deployed, Switch(BlockOrdering(deployed, hold=1)))
    service = GatewayService(deps)
    release = threading.Event()

    def stuck() -> Iterator[BReq]:  # a client that never sends and is never cancelled
        release.wait(30)
        return
        yield

    ctx = _Ctx()
    answers = service.TransactBatch(stuck(), cast(Any, ctx))
    t = threading.Thread(target=lambda: list(answers), daemon=True)
    t.start()
    try:
        deadline = 50
        while not _readers() and deadline:
            deadline -= 1
            threading.Event().wait(0.05)
        assert _readers()
        assert service.close(wait_s=0.2) is False
        release.set()
        assert service.close(wait_s=10) is True
    finally:
        release.set()
        ctx.active = False
        t.join(10)
        deps.notifier.close()
    assert not t.is_alive()


class _GatedEndorser:
    """The local endorser, whose endorse() waits at ``gate`` (``entered`` says one waits)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate, self.entered = threading.Event(), threading.Event()

    def endorse(self, signed: transaction_pb2.SignedProposal) -> transaction_pb2.ProposalResponse:
        self.entered.set()
        assert self.gate.wait(10)
        return cast(transaction_pb2.ProposalResponse, self.inner.endorse(signed))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_close_waits_for_a_local_endorsement_on_the_work_pool(deployed: Cluster) -> None:
    """A local endorsement runs on the gateway's work pool and reads the ledger: close must
    report it until it is done, even once the stream that asked for it has gone."""
    base = _deps(deployed, Switch(BlockOrdering(deployed, hold=1)))
    gated = _GatedEndorser(base.endorser)
    deps = GatewayDeps(**{**base.__dict__, "endorser": cast(Any, gated)})
    service = GatewayService(deps)
    ctx = _Ctx()
    request = BReq(requests=[TReq(correlation_id=1, endorse=services_pb2.EndorseRequest(
        proposal=_signed(deployed, "pooled")))])
    answers = service.TransactBatch(iter([request]), cast(Any, ctx))
    t = threading.Thread(target=lambda: list(answers), daemon=True)
    t.start()
    try:
        assert gated.entered.wait(10)
        ctx.active = False  # the stream goes away; its reader ends, the endorsement runs on
        assert service.close(wait_s=0.3) is False
        gated.gate.set()
        assert service.close(wait_s=10) is True
    finally:
        gated.gate.set()
        ctx.active = False
        t.join(10)
        base.notifier.close()
    assert not t.is_alive()


def test_answers_nobody_reads_hold_their_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slot is freed when its answer is handed to gRPC, not when it is queued: a client
    that stops reading stops the gateway's reader (flow control) instead of filling memory."""
    monkeypatch.setattr(transact_mod, "MAX_IN_FLIGHT", 8)
    st = transact_mod._Stream(cast(Any, None), ThreadPoolExecutor(1), ThreadPoolExecutor(1), 1000,
                              lambda: 0.0)
    reqs = []
    for i in range(8):
        assert st.admit(1, lambda: True)
        reqs.append(transact_mod._Request(i + 1))
    for r in reqs:  # all answered, none sent
        st.error(r, RxError("BAD_REQUEST", "x"))
    polls = iter(range(3))
    assert not st.admit(1, lambda: next(polls, None) is not None)  # full: waits, then gives up
    st.sent(8)
    assert st.admit(1, lambda: True)


def test_a_cancelled_streams_queued_endorsements_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[int] = []
    gate = threading.Event()

    def slow_endorse(deps: Any, request: Any, pool: Any) -> services_pb2.EndorseResponse:
        gate.wait(10)
        ran.append(1)
        return services_pb2.EndorseResponse()

    monkeypatch.setattr(transact_mod, "endorse", slow_endorse)
    pool = ThreadPoolExecutor(1)
    try:
        st = transact_mod._Stream(cast(Any, None), pool, ThreadPoolExecutor(1), 1000, lambda: 0.0)
        n = transact_mod.MAX_POOLED
        for i in range(n):
            assert st.admit(1, lambda: True)
            st.dispatch(TReq(correlation_id=i + 1, endorse=services_pb2.EndorseRequest()))
        # the stream's share of the pool is used up: a further endorsement waits for a slot
        late = threading.Thread(target=st.dispatch, args=(TReq(correlation_id=99, endorse=services_pb2.EndorseRequest()),))
        late.start()
        late.join(0.5)
        assert late.is_alive()
        st.close()  # the client went away
        late.join(5)
        assert not late.is_alive()
        gate.set()
    finally:
        pool.shutdown(wait=True)
    assert len(ran) == 1  # only the one already running when the stream ended


def test_peer_stopping_ends_streams_with_unavailable_not_ok(deployed: Cluster) -> None:
    deps = _deps(deployed, Switch(BlockOrdering(deployed, hold=1)))
    st = transact_mod._Stream(deps, ThreadPoolExecutor(1), ThreadPoolExecutor(1), 60_000, time.monotonic)
    assert st.admit(1, lambda: True)  # one request in flight, not answered
    deps.notifier.close()
    with pytest.raises(RxError) as err:
        list(st.batches(lambda: True, 16, 1 << 20))
    assert err.value.reason == "SERVICE_UNAVAILABLE"


def test_refusals_quoting_a_long_request_keep_their_reason(served: Served) -> None:
    """A refusal's message quotes the request (a consortium id before any signature is
    checked, a contract name, the organisations asked for) and rides in the call's trailers
    twice: past gRPC's 8 KiB trailer bound the client got RESOURCE_EXHAUSTED with the
    reason TOO_LARGE instead of the refusal. The message is cut; the reason is kept."""
    c = served.cluster
    signed = c.kit.proposal(c.net.doctor, "counter", "put", {"key": "a", "value": 1}, timestamp_ms=c.now())
    prop = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
    header = transaction_pb2.TxHeader.FromString(prop.header)
    header.consortium_id = "c" * 12_000  # refused before the (now wrong) signature is checked
    prop.header = header.SerializeToString()
    foreign = transaction_pb2.SignedProposal(proposal_bytes=prop.SerializeToString(), signature=signed.signature)
    unknown = c.kit.proposal(c.net.doctor, "k" * 12_000, "put", {}, timestamp_ms=c.now())
    calls = {
        "BAD_HEADER": lambda: served.stub.Evaluate(services_pb2.EvaluateRequest(proposal=foreign), timeout=10),
        "UNKNOWN_CONTRACT": lambda: served.stub.Evaluate(services_pb2.EvaluateRequest(proposal=unknown),
                                                         timeout=10),
        "BAD_REQUEST": lambda: served.stub.Endorse(services_pb2.EndorseRequest(
            proposal=signed, endorsing_orgs=[f"{'o' * 3000}{i}" for i in range(4)]), timeout=10),
    }
    for expected, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == RxError(expected).grpc_code, (expected, (info.value.details() or "")[:120])
        assert reason_from_rpc_error(info.value) == expected
        details = info.value.details() or ""
        assert details.startswith(f"{expected}: ") and details.endswith(" bytes, cut)"), details[-80:]
        assert len(details.encode()) < 1200
