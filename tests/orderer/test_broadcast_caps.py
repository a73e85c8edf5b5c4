"""Broadcast and BroadcastBatch streams are held under the orderer's stream caps
(node.stream_caps), as its Deliver streams are: each holds a gRPC worker (and a reader thread)
for as long as it lasts, and any certificate the mTLS layer admits (a patient's too) may open
them. Old code: uncapped -- as many idle Broadcast streams as the orderer has workers left none
for Admin, Deliver or the Cluster streams of the other orderers (a unary call timed out)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from rxchain.v1 import services_pb2, transaction_pb2

from node.config import Endpoint
from node.errors import reason_from_rpc_error
from node.orderer.broadcast import (
    BroadcastHandler,
    EnvelopeValidator,
    broadcast_batch_method_handler,
    broadcast_method_handler,
)
from node.orderer.envelope_batch import encode_batch
from node.orderer.metrics import OrdererMetrics
from node.orderer.ticket import TOO_LARGE
from node.peer import broadcast_client
from node.stream_caps import TOO_MANY_STREAMS, StreamCaps, StreamSlot
from tests.orderer.fakes import NoForward, NothingOrdered, no_msp

WORKERS = 4





def _health(request: services_pb2.HealthRequest, context: grpc.ServicerContext) -> services_pb2.HealthResponse:
    return services_pb2.HealthResponse(serving=True, node="o1", role="orderer")


@pytest.fixture
def served() -> Iterator[tuple[grpc.Channel, StreamCaps]]:
    """An orderer's AtomicBroadcast and Admin.Health on a pool of WORKERS threads, the stream
    caps its node.yaml defaults give (half the pool in total, half of that per caller)."""
    caps = StreamCaps.from_extra({}, WORKERS)
    validator = EnvelopeValidator(no_msp, "c", 0, lambda: 0)  # every envelope: TOO_LARGE
    handler = BroadcastHandler(validator, NothingOrdered(), NoForward(), OrdererMetrics("t"))
    server = grpc.server(ThreadPoolExecutor(max_workers=WORKERS))
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler("rxchain.v1.AtomicBroadcast", {
            "Broadcast": broadcast_method_handler(handler, caps),
            "BroadcastBatch": broadcast_batch_method_handler(handler, caps),
        }),
        grpc.method_handlers_generic_handler("rxchain.v1.Admin", {
            "Health": grpc.unary_unary_rpc_method_handler(
                _health, request_deserializer=services_pb2.HealthRequest.FromString,
                response_serializer=services_pb2.HealthResponse.SerializeToString),
        }),
    ])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield ch, caps
    finally:
        ch.close()
        server.stop(0).wait(5)


class _Stream:
    """One Broadcast (or BroadcastBatch) stream whose requests the test feeds."""

    def __init__(self, ch: grpc.Channel, method: str, deserializer: Any) -> None:
        self.requests: queue.Queue[bytes | None] = queue.Queue()
        open_call: Any = ch.stream_stream(f"/rxchain.v1.AtomicBroadcast/{method}", request_serializer=None,
                                          response_deserializer=deserializer)
        self.call: Any = open_call(self._iter(), timeout=30)
        self.ended = threading.Event()
        self.call.add_done_callback(lambda _call: self.ended.set())

    def _iter(self) -> Iterator[bytes]:
        while (item := self.requests.get()) is not None:
            yield item

    def refused_reason(self) -> str:
        """The reason it ended with ("" while it runs)."""
        if not self.ended.wait(0.5):
            return ""
        return reason_from_rpc_error(self.call)

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()


def _health_within(ch: grpc.Channel, timeout_s: float) -> bool:
    call = ch.unary_unary("/rxchain.v1.Admin/Health", request_serializer=services_pb2.HealthRequest.SerializeToString,
                          response_deserializer=services_pb2.HealthResponse.FromString)
    try:
        return bool(call(services_pb2.HealthRequest(), timeout=timeout_s).serving)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
        return False


def _admitted_again(ch: grpc.Channel, method: str, deserializer: Any, streams: list[_Stream]) -> bool:
    """True once a new stream is admitted (the server sees a cancelled call end a little later)."""
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        stream = _Stream(ch, method, deserializer)
        streams.append(stream)
        if stream.refused_reason() == "":
            return True
    return False


@pytest.mark.parametrize("method", ["Broadcast", "BroadcastBatch"])
def test_idle_broadcast_streams_past_the_caps_are_refused_and_unary_calls_served(
    served: tuple[grpc.Channel, StreamCaps], method: str,
) -> None:
    ch, caps = served
    batched = method == "BroadcastBatch"
    deserializer = (services_pb2.BroadcastBatchResponse if batched else services_pb2.BroadcastResponse).FromString
    streams = [_Stream(ch, method, deserializer) for _ in range(WORKERS)]  # as many as the pool has threads
    try:
        reasons = [s.refused_reason() for s in streams]
        # one caller (no client certificate here: one key): its share is admitted, the rest refused
        assert sorted(reasons) == [""] * caps.per_caller + [TOO_MANY_STREAMS] * (WORKERS - caps.per_caller)
        assert _health_within(ch, 3.0)  # old code: every worker held by an idle stream, DEADLINE_EXCEEDED
        admitted = streams[reasons.index("")]
        admitted.requests.put(encode_batch([b"x"]) if batched else b"x")  # still answered
        answer = next(admitted.call)
        first = answer.responses[0] if batched else answer
        assert (first.accepted, first.reason) == (False, TOO_LARGE)
        admitted.close()
        assert admitted.ended.wait(5)
        assert _admitted_again(ch, method, deserializer, streams)  # its slot was given back
    finally:
        for s in streams:
            s.close()


def test_a_peer_refused_too_many_streams_knows_its_envelopes_were_never_read(
    served: tuple[grpc.Channel, StreamCaps], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The peer's broadcast stream refused TOO_MANY_STREAMS fails its envelopes as never sent
    (retried elsewhere as a first attempt; a later definite refusal stays definite). Old code:
    SERVICE_UNAVAILABLE as for a stream that broke after reading them (maybe ordered: a later
    refusal became COMMIT_UNKNOWN)."""
    ch, caps = served
    held = [_Stream(ch, "BroadcastBatch", services_pb2.BroadcastBatchResponse.FromString)
            for _ in range(caps.per_caller)]
    try:
        assert [s.refused_reason() for s in held] == [""] * caps.per_caller
        sent = threading.Event()
        acquire = caps.acquire

        def acquire_once_sent(key: bytes, what: str, node: bool = False) -> StreamSlot:  # refused after the send
            sent.wait(5)
            return acquire(key, what, node)

        monkeypatch.setattr(caps, "acquire", acquire_once_sent)
        stream = broadcast_client._Stream(Endpoint("o1", "ins01", "127.0.0.1", 1), ch, time.monotonic)
        fut = stream.send(transaction_pb2.Envelope(payload=b"p"), time.monotonic())
        sent.set()
        exc = fut.exception(timeout=10)
        assert isinstance(exc, broadcast_client._NotSent), exc
        assert exc.reason == "SERVICE_UNAVAILABLE" and TOO_MANY_STREAMS in exc.message
    finally:
        for s in held:
            s.close()
