"""Red team: what a caller is told about a transaction's outcome, peer side.

The invariant: a caller is never told a definite failure for a tx that commits VALID (it
would propose it again: a second prescription), never told a code its tx did not commit
with, and one call never commits twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, cast

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from client.errors import CommitUnknown
from client.gateway import Gateway
from client.pipeline import Call, submit_many
from client.wallet import load_identity
from node.config import Endpoint
from node.errors import RxError
from node.peer.broadcast_client import BroadcastClient
from node.peer.gateway.commit_status import commit_status
from node.peer.notifier import CommitNotifier, TxCommitted
from tests.harness.ports import free_ports
from tests.peer import test_transact_batch as tb
from tests.peer.conftest import NOW_MS, Cluster
from tests.peer.kit import envelope
from tests.peer.test_transact_batch import BlockOrdering, Served, _deps, _envelope

served = tb.served  # the real Gateway servicer over in-process peers (a fixture)

SKEW_MS = 60_000  # tests.peer.conftest.consortium limits.max_clock_skew_ms


# --------------------------------------------------------------------------- validation


def test_a_late_copy_of_a_valid_tx_never_replaces_its_commit_status(deployed: Cluster) -> None:
    """A second copy of a committed tx ordered in a block stamped beyond the skew bound (a
    resubmission or replay; an honest leader refuses it at cut time, a faulty one does not,
    nor a leader still on the old bound while a tighter one commits) was TX_TIMESTAMP_SKEW,
    which is indexed: it replaced the first copy's tx-id entry, so CommitStatus and every
    replayed Submit reported the VALID tx as refused -- an invitation to issue it again."""
    cluster = deployed
    signed = cluster.kit.proposal(cluster.net.doctor, "counter", "put", {"key": "late", "value": 7},
                                  timestamp_ms=NOW_MS)
    raw = envelope(cluster.net.doctor, signed, cluster.endorse_all(signed, cluster.peers[:2]))
    tx_id = transaction_pb2.TxHeader.FromString(
        transaction_pb2.Proposal.FromString(signed.proposal_bytes).header).tx_id
    first = cluster.commit([raw], NOW_MS)
    assert [b.metadata.validation_codes[0] for b in first] == [transaction_pb2.VALID] * 3
    number = first[0].header.number
    # A waiter registered now (e.g. a CommitStatus racing the late copy) must not be told
    # the late copy's code either.
    local = cluster.peers[0]
    notifier = CommitNotifier(local.ledger.height())
    local.committer.add_listener(notifier.on_commit)
    told: list[TxCommitted] = []
    cancel = notifier.watch(tx_id, told.append)
    late = cluster.commit([raw], NOW_MS + 2 * SKEW_MS)
    cancel()
    assert [b.metadata.validation_codes[0] for b in late] == [transaction_pb2.DUPLICATE_TXID] * 3
    assert told == []
    for p in cluster.peers:
        loc = p.ledger.tx_location(tx_id)
        assert loc is not None and (loc.block, loc.code) == (number, transaction_pb2.VALID)
    deps = _deps(cluster, object())
    try:
        answer = commit_status(deps, services_pb2.CommitStatusRequest(tx_id=tx_id, timeout_ms=100))
    finally:
        deps.notifier.close()
    assert (answer.code, answer.block_number) == (transaction_pb2.VALID, number)
    # A tx that is late on its own (no earlier copy) is still TX_TIMESTAMP_SKEW, and indexed.
    signed2 = cluster.kit.proposal(cluster.net.doctor, "counter", "put", {"key": "late2", "value": 1},
                                   timestamp_ms=NOW_MS)
    raw2 = envelope(cluster.net.doctor, signed2, cluster.endorse_all(signed2, cluster.peers[:2]))
    alone = cluster.commit([raw2], NOW_MS + 2 * SKEW_MS)
    assert alone[0].metadata.validation_codes[0] == transaction_pb2.TX_TIMESTAMP_SKEW


# --------------------------------------------------------------------------- the gateway


class LostAnswer:
    """An ordering service that orders the envelope but whose answer is lost: the broadcast
    client gives up with ``reason`` (SERVICE_UNAVAILABLE after its retries, COMMIT_UNKNOWN
    after a lost attempt and a refused retry) while the block holding it commits."""

    def __init__(self, cluster: Cluster, reason: str) -> None:
        self.cluster = cluster
        self.reason = reason

    def submit_async(self, env: transaction_pb2.Envelope,
                     callback: Callable[[services_pb2.BroadcastResponse | RxError], None]) -> None:
        if self.reason == "SERVICE_UNAVAILABLE":
            callback(RxError("SERVICE_UNAVAILABLE", "ordering service unavailable: o1 did not answer"))
        else:
            callback(services_pb2.BroadcastResponse(accepted=False, reason=self.reason, message="lost"))
        self.cluster.commit([env.SerializeToString()])  # it had been ordered all the same


@pytest.mark.parametrize("reason", ["SERVICE_UNAVAILABLE", "COMMIT_UNKNOWN"])
def test_sdk_pipeline_reports_a_lost_broadcast_answer_as_commit_unknown(served: Served, reason: str) -> None:
    """Gateway.TransactBatch answers the submit with the broadcast failure; the SDK reported
    it as a plain RxClientError (a definite no) although the tx commits VALID."""
    cluster = served.cluster
    served.order_with(cast(Any, LostAnswer(cluster, reason)))
    ident = load_identity(cluster.net.home, "h01", "dr-a")
    gw = Gateway(ident, served.target, cluster.net.consortium_id, clock=lambda: NOW_MS,
                 channel=grpc.insecure_channel(served.target))
    try:
        out = submit_many(gw, [Call("counter", "put", {"key": f"lost-{reason}", "value": 1})], timeout_s=30)
        assert isinstance(out[0], CommitUnknown), out[0]
        assert reason in out[0].message
    finally:
        gw.close()
    # What CommitStatus answers the caller who asks, as CommitUnknown tells it to.
    status = commit_status(served.deps, services_pb2.CommitStatusRequest(tx_id=out[0].tx_id, timeout_ms=2000))
    assert status.code == transaction_pb2.VALID
    loc = cluster.peers[0].ledger.tx_location(out[0].tx_id)
    assert loc is not None and loc.code == transaction_pb2.VALID and status.block_number == loc.block


def test_the_same_envelope_on_two_streams_commits_once_and_both_are_told_valid(served: Served) -> None:
    cluster = served.cluster
    ordering = BlockOrdering(cluster, hold=2)  # both copies land in one block
    served.order_with(ordering)
    env = _envelope(cluster, "twice")
    answers: list[services_pb2.TransactResponse] = []
    lock = threading.Lock()

    def one_stream() -> None:
        req = services_pb2.TransactBatchRequest(
            requests=[services_pb2.TransactRequest(correlation_id=3, submit=env)])
        for msg in served.stub.TransactBatch(iter([req]), timeout=20):
            with lock:
                answers.extend(msg.responses)

    with futures.ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(one_stream), pool.submit(one_stream)]:
            f.result(timeout=30)
    assert [a.WhichOneof("kind") for a in answers] == ["committed", "committed"]
    assert {a.committed.code for a in answers} == {transaction_pb2.VALID}
    block = cluster.peers[0].ledger.block(ordering.blocks[0])
    assert list(block.metadata.validation_codes) == [transaction_pb2.VALID, transaction_pb2.DUPLICATE_TXID]
    # A resubmission after the fact is answered with the first copy's status, not ordered again.
    served.order_with(BlockOrdering(cluster, hold=0))
    req = services_pb2.TransactBatchRequest(requests=[services_pb2.TransactRequest(correlation_id=5, submit=env)])
    again = [r for m in served.stub.TransactBatch(iter([req]), timeout=20) for r in m.responses]
    assert [(a.committed.code, a.committed.block_number) for a in again] == [
        (transaction_pb2.VALID, ordering.blocks[0])]


# --------------------------------------------------------------------------- broadcast client


class Orderer(services_pb2_grpc.AtomicBroadcastServicer, services_pb2_grpc.AdminServicer):
    """Takes every envelope; then ``lose`` = "broken" ends the stream (the answer is lost in a
    broken connection), "silent" never answers (lost to a timeout); else answers ``reason``
    (refused) or accepted."""

    def __init__(self, lose: str = "", reason: str = "") -> None:
        self.lose = lose
        self.reason = reason
        self.received: list[bytes] = []
        self.release = threading.Event()

    def BroadcastBatch(self, request_iterator: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served by this fake")

    def Broadcast(self, request_iterator: Any, context: Any) -> Iterator[services_pb2.BroadcastResponse]:
        for env in request_iterator:
            self.received.append(env.payload)
            if self.lose == "broken":
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
            if self.lose == "silent":
                self.release.wait(10)
                return
            yield services_pb2.BroadcastResponse(accepted=not self.reason, reason=self.reason, message="as scripted")

    def Deliver(self, request: Any, context: Any) -> Any:  # pragma: no cover - not used
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "no deliver")

    def Status(self, request: Any, context: Any) -> services_pb2.StatusResponse:
        return services_pb2.StatusResponse(node="o", role="orderer")

    def Health(self, request: Any, context: Any) -> services_pb2.HealthResponse:  # pragma: no cover
        return services_pb2.HealthResponse(serving=True)


@pytest.fixture
def orderers() -> Iterator[Callable[[Orderer], Endpoint]]:
    started: list[tuple[grpc.Server, Orderer]] = []

    def serve(o: Orderer) -> Endpoint:
        (port,) = free_ports(1)
        server = grpc.server(futures.ThreadPoolExecutor(4))
        services_pb2_grpc.add_AtomicBroadcastServicer_to_server(o, server)
        services_pb2_grpc.add_AdminServicer_to_server(o, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        started.append((server, o))
        return Endpoint(f"o{port}", "ins01", "127.0.0.1", port)

    try:
        yield serve
    finally:
        for server, o in started:
            o.release.set()
            server.stop(0)


def _client(eps: list[Endpoint], answer_timeout_s: float = 10.0) -> BroadcastClient:
    return BroadcastClient(eps, grpc.insecure_channel, answer_timeout_s=answer_timeout_s, backoff_s=0.01,
                           attempts=3)


def _send(client: BroadcastClient, env: transaction_pb2.Envelope,
          mode: str) -> services_pb2.BroadcastResponse | RxError:
    """``client.submit`` (mode "sync") or ``submit_async`` and its callback's answer."""
    if mode == "sync":
        return client.submit(env)
    got: list[services_pb2.BroadcastResponse | RxError] = []
    done = threading.Event()

    def cb(resp: services_pb2.BroadcastResponse | RxError) -> None:
        got.append(resp)
        done.set()

    client.submit_async(env, cb)
    assert done.wait(15)
    return got[0]


@pytest.mark.parametrize("refusal", ["CLOCK_SKEW", "BAD_CONFIG_UPDATE", "UNKNOWN_CREATOR"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_refused_retry_after_a_lost_answer_is_commit_unknown(orderers: Any, refusal: str, mode: str) -> None:
    """The first orderer took the envelope and its stream broke (it may be in a block now);
    the retry on the next orderer is refused for a reason that could have gone the other way
    for the first copy (the tx aged past the skew bound, the config update is in force now,
    the certificate just expired). The gateway passed that refusal on as a definite no."""
    broken, refusing = Orderer(lose="broken"), Orderer(reason=refusal)
    client = _client([orderers(broken), orderers(refusing)])
    env = transaction_pb2.Envelope(payload=b"tx-1", signature=b"s")
    try:
        resp = _send(client, env, mode)
    finally:
        client.close()
    assert broken.received == [b"tx-1"] and refusing.received == [b"tx-1"]
    assert isinstance(resp, services_pb2.BroadcastResponse)
    assert not resp.accepted and resp.reason == "COMMIT_UNKNOWN"
    assert refusal in resp.message


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_refused_retry_after_an_attempt_that_timed_out_is_commit_unknown(orderers: Any, mode: str) -> None:
    """The same after a silent orderer (a paused leader): its answer timed out."""
    silent, refusing = Orderer(lose="silent"), Orderer(reason="CLOCK_SKEW")
    client = _client([orderers(silent), orderers(refusing)], answer_timeout_s=0.5)
    try:
        resp = _send(client, transaction_pb2.Envelope(payload=b"tx-3", signature=b"s"), mode)
    finally:
        client.close()
    assert silent.received == [b"tx-3"]
    assert isinstance(resp, services_pb2.BroadcastResponse) and resp.reason == "COMMIT_UNKNOWN"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_refusal_decided_by_the_envelope_alone_stays_definite(orderers: Any, mode: str) -> None:
    """BAD_SIGNATURE is what every orderer answers that envelope at any time: the lost first
    attempt was refused too. And without a lost attempt a refusal is always definite."""
    broken, refusing = Orderer(lose="broken"), Orderer(reason="BAD_SIGNATURE")
    client = _client([orderers(broken), orderers(refusing)])
    env = transaction_pb2.Envelope(payload=b"tx-2", signature=b"s")
    try:
        resp = _send(client, env, mode)
    finally:
        client.close()
    assert broken.received == [b"tx-2"]
    assert isinstance(resp, services_pb2.BroadcastResponse) and resp.reason == "BAD_SIGNATURE"
    skew = Orderer(reason="CLOCK_SKEW")
    direct = _client([orderers(skew)])
    try:
        resp = _send(direct, env, mode)
    finally:
        direct.close()
    assert isinstance(resp, services_pb2.BroadcastResponse) and resp.reason == "CLOCK_SKEW"
