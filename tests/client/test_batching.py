"""The coalescing TransactBatch sender and the load generator's stream (with its Transact fallback)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2
from rxchain.v1.identity_pb2 import ErrorDetail

from client.batching import MAX_REQUESTS_PER_MESSAGE, coalesce

TReq = services_pb2.TransactRequest


def _q(items: Sequence[TReq | None]) -> queue.SimpleQueue[TReq | None]:
    q: queue.SimpleQueue[TReq | None] = queue.SimpleQueue()
    for it in items:
        q.put(it)
    return q


def test_coalesce_sends_what_is_queued_without_waiting_for_more() -> None:
    q = _q([TReq(correlation_id=i) for i in (1, 2, 3)])
    gen = coalesce(q)
    assert [r.correlation_id for r in next(gen)] == [1, 2, 3]
    q.put(TReq(correlation_id=4))  # a lone request goes out alone, at once
    assert [r.correlation_id for r in next(gen)] == [4]
    q.put(TReq(correlation_id=5))
    q.put(None)
    assert [r.correlation_id for r in next(gen)] == [5]
    with pytest.raises(StopIteration):
        next(gen)


def test_coalesce_bounds_items_and_bytes() -> None:
    q = _q([*(TReq(correlation_id=i + 1) for i in range(600)), None])
    assert [len(b) for b in coalesce(q)] == [MAX_REQUESTS_PER_MESSAGE, MAX_REQUESTS_PER_MESSAGE, 88]
    env = transaction_pb2.Envelope(payload=b"x" * 1000, signature=b"s")
    big = transaction_pb2.Envelope(payload=b"y" * 5000, signature=b"s")
    q = _q([*(TReq(correlation_id=i + 1, submit=env) for i in range(5)), TReq(correlation_id=9, submit=big),
            TReq(correlation_id=10, submit=env), None])
    batches = [[r.correlation_id for r in b] for b in coalesce(q, max_bytes=2500)]
    # Two ~1 KB requests per message; the 5 KB one (over the bound by itself) goes alone.
    assert batches == [[1, 2], [3, 4], [5], [9], [10]]


def test_coalesced_messages_fit_the_smallest_bound_a_config_allows() -> None:
    """Requests were coalesced up to 4 MiB: the gateway of a consortium with a smaller
    ``max_message_bytes`` refused the message and every request on the stream failed. The
    client does not know the bound in force, so it fills at most half the smallest one."""
    from node.msgbound import MIN_MESSAGE_BYTES

    env = transaction_pb2.Envelope(payload=b"x" * 6000, signature=b"s")
    q = _q([*(TReq(correlation_id=i + 1, submit=env) for i in range(30)), None])
    messages = [services_pb2.TransactBatchRequest(requests=b) for b in coalesce(q)]
    assert sum(len(m.requests) for m in messages) == 30
    assert max(len(m.requests) for m in messages) > 1
    assert max(m.ByteSize() for m in messages) <= MIN_MESSAGE_BYTES // 2 + 64


def test_client_limit_matches_the_gateway() -> None:
    from node.peer.gateway import transact

    assert MAX_REQUESTS_PER_MESSAGE == transact.MAX_REQUESTS_PER_BATCH
    # a TransactBatch answer message, framing included, fits gRPC's default receive bound
    # (4 MiB), which a third-party client keeps unless told
    assert transact.MAX_MESSAGE_BYTES + transact.MAX_ANSWERS_PER_MESSAGE * 16 <= 4 << 20


class OldGateway(services_pb2_grpc.GatewayServicer):
    """A gateway without TransactBatch: answers every Transact request with reason SEEN."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def Transact(self, request_iterator: Any, context: Any) -> Iterator[services_pb2.TransactResponse]:
        self.calls.append("Transact")
        for req in request_iterator:
            yield services_pb2.TransactResponse(correlation_id=req.correlation_id,
                                                error=ErrorDetail(reason="SEEN"))


class NewGateway(OldGateway):
    """Also TransactBatch: every message's requests answered in one message."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def TransactBatch(self, request_iterator: Any, context: Any) -> Iterator[services_pb2.TransactBatchResponse]:
        self.calls.append("TransactBatch")
        for msg in request_iterator:
            self.sizes.append(len(msg.requests))
            yield services_pb2.TransactBatchResponse(responses=[
                services_pb2.TransactResponse(correlation_id=r.correlation_id, error=ErrorDetail(reason="BATCH"))
                for r in msg.requests])


@pytest.mark.parametrize("servicer,reason", [(OldGateway, "SEEN"), (NewGateway, "BATCH")])
def test_load_stream_uses_batches_or_falls_back(monkeypatch: pytest.MonkeyPatch, servicer: type[OldGateway],
                                                reason: str) -> None:
    import bench.e2e_load as load

    fake = servicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    services_pb2_grpc.add_GatewayServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setattr(load, "secure_channel", lambda target, *a: grpc.insecure_channel(target))
    stream = load.TransactStream(cast(Any, SimpleNamespace(cert_path="", key_path="", ca_bundle_path="")),
                                 f"127.0.0.1:{port}")
    got: list[tuple[int, str]] = []
    lock = threading.Lock()
    all_in = threading.Event()

    def cb(resp: services_pb2.TransactResponse) -> None:
        with lock:
            got.append((resp.correlation_id, resp.error.reason))
            if len(got) == 20:
                all_in.set()

    try:
        for _ in range(20):
            stream.send(TReq(), cb)
        assert all_in.wait(10)
    finally:
        stream.close()
        server.stop(0)
    assert sorted(got) == [(i + 1, reason) for i in range(20)]
    if servicer is OldGateway:
        assert fake.calls == ["Transact"] and not stream.batched
    else:
        assert fake.calls == ["TransactBatch"] and stream.batched
        assert sum(cast(NewGateway, fake).sizes) == 20
