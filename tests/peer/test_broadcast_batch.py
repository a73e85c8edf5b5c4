"""BroadcastClient: batched streams (coalescing, fallback to Broadcast) and leaving a stalled
(paused) orderer without waiting out the answer timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from node.config import Endpoint
from node.errors import RxError
from node.msgbound import MIN_MESSAGE_BYTES
from node.peer.broadcast_client import BroadcastClient
from tests.harness.ports import free_ports


class BatchOrderer(services_pb2_grpc.AtomicBroadcastServicer, services_pb2_grpc.AdminServicer):
    """Serves BroadcastBatch (unless ``batch`` is False) and Broadcast; answers are held
    while ``gate`` is clear; ``status_gate`` clear makes Admin.Status hang (a paused process)."""

    def __init__(self, name: str, batch: bool = True) -> None:
        self.name = name
        self.batch = batch
        self.gate = threading.Event()
        self.gate.set()
        self.status_gate = threading.Event()
        self.status_gate.set()
        self.received: list[bytes] = []
        self.messages = 0
        self.sizes: list[int] = []  # envelopes per BroadcastBatch message

    def BroadcastBatch(self, request_iterator, context):
        if not self.batch:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "no batch here")
        for msg in request_iterator:
            self.messages += 1
            self.sizes.append(len(msg.envelopes))
            self.received.extend(e.payload for e in msg.envelopes)
            assert self.gate.wait(20)
            yield services_pb2.BroadcastBatchResponse(responses=[
                services_pb2.BroadcastResponse(tx_id=e.payload.decode(), accepted=True)
                for e in msg.envelopes])

    def Broadcast(self, request_iterator, context):
        for env in request_iterator:
            self.messages += 1
            self.received.append(env.payload)
            assert self.gate.wait(20)
            yield services_pb2.BroadcastResponse(tx_id=env.payload.decode(), accepted=True)

    def Status(self, request, context):
        self.status_gate.wait(20)
        return services_pb2.StatusResponse(node=self.name, role="orderer")

    def Health(self, request, context):
        return services_pb2.HealthResponse(serving=True, node=self.name, role="orderer")

    def Deliver(self, request, context):  # pragma: no cover - not used here
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "no deliver")


def serve(orderer: BatchOrderer, port: int, started: list[grpc.Server],
          options: list[tuple[str, int]] | None = None) -> Endpoint:
    server = grpc.server(futures.ThreadPoolExecutor(16), options=options or [])
    services_pb2_grpc.add_AtomicBroadcastServicer_to_server(orderer, server)
    services_pb2_grpc.add_AdminServicer_to_server(orderer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    started.append(server)
    return Endpoint(orderer.name, "ins01", "127.0.0.1", port)


def env(payload: str) -> transaction_pb2.Envelope:
    return transaction_pb2.Envelope(payload=payload.encode(), signature=b"s")


def collect(n: int) -> tuple[list[object], threading.Event, Callable[[object], None]]:
    answers: list[object] = []
    done = threading.Event()
    lock = threading.Lock()

    def cb(resp: object) -> None:
        with lock:
            answers.append(resp)
            if len(answers) == n:
                done.set()

    return answers, done, cb


def test_queued_envelopes_travel_in_fewer_messages_and_answers_match(servers) -> None:
    (port,) = free_ports(1)
    o = BatchOrderer("o1")
    ep = serve(o, port, servers)
    client = BroadcastClient([ep], grpc.insecure_channel)
    try:
        assert client.submit(env("first")).tx_id == "first"
        o.gate.clear()  # the orderer holds its answers: envelopes queue up behind
        answers, done, cb = collect(60)
        for i in range(60):
            client.submit_async(env(f"t{i}"), cb)
        o.gate.set()
        assert done.wait(10)
        assert sorted(a.tx_id for a in answers) == sorted(f"t{i}" for i in range(60))  # type: ignore[attr-defined]
        assert o.received == [b"first"] + [f"t{i}".encode() for i in range(60)]
        assert o.messages < 61 - 10, o.messages  # coalesced: far fewer messages than envelopes
    finally:
        client.close()


def test_batches_are_bounded_by_count_and_bytes(servers) -> None:
    (port,) = free_ports(1)
    o = BatchOrderer("o1")
    ep = serve(o, port, servers)
    client = BroadcastClient([ep], grpc.insecure_channel, max_batch=4, max_batch_bytes=60)
    try:
        o.gate.clear()
        _, done, cb = collect(20)
        for i in range(20):
            client.submit_async(env(f"x{i:02d}" + "p" * 10), cb)
        o.gate.set()
        assert done.wait(10)
        assert o.received == [(f"x{i:02d}" + "p" * 10).encode() for i in range(20)]
        # each envelope serializes to 18 bytes: at most 3 fit in 60 bytes (the count bound is 4)
        assert max(o.sizes) == 3 and sum(o.sizes) == 20
        small = BroadcastClient([ep], grpc.insecure_channel, max_batch=2)
        try:
            o.sizes.clear()
            o.gate.clear()
            _, done2, cb2 = collect(9)
            for i in range(9):
                small.submit_async(env(f"y{i}"), cb2)
            o.gate.set()
            assert done2.wait(10)
            assert max(o.sizes) == 2 and sum(o.sizes) == 9
        finally:
            small.close()
    finally:
        client.close()


def test_batches_stay_within_the_message_bound_in_force(servers) -> None:
    """Batches were filled up to 1 MiB whatever the bound: under a consortium's smaller
    ``max_message_bytes`` (64 KiB is allowed) the orderer's server refused the whole message
    and every envelope in it failed. They now hold at most half the bound in force, read per
    message (a lowering applies at once)."""
    (port,) = free_ports(1)
    o = BatchOrderer("o1")
    bound = [4 * MIN_MESSAGE_BYTES]
    ep = serve(o, port, servers, options=[("grpc.max_receive_message_length", bound[0])])
    client = BroadcastClient([ep], grpc.insecure_channel, message_bound=lambda: bound[0])
    try:
        def round_of(tag: str, n: int) -> list[int]:
            o.gate.clear()  # answers held: the envelopes queue up behind the first
            o.sizes.clear()
            before = len(o.received)
            answers, done, cb = collect(n)
            for i in range(n):
                client.submit_async(env(f"{tag}{i:03d}" + "p" * 5000), cb)
            o.gate.set()
            assert done.wait(10)
            assert all(getattr(a, "accepted", False) for a in answers), answers[:3]
            assert [p.decode()[:4] for p in o.received[before:]] == [f"{tag}{i:03d}" for i in range(n)]
            return list(o.sizes)

        sizes = round_of("a", 40)  # ~200 KB queued: batches of up to 128 KiB
        assert max(sizes) > 6, sizes
        bound[0] = MIN_MESSAGE_BYTES  # lowered: up to 32 KiB, six envelopes of ~5 KB
        sizes = round_of("b", 40)
        assert 1 < max(sizes) <= 6, sizes
    finally:
        client.close()


def test_falls_back_to_broadcast_when_batch_is_unimplemented(servers) -> None:
    (port,) = free_ports(1)
    o = BatchOrderer("old", batch=False)
    ep = serve(o, port, servers)
    client = BroadcastClient([ep], grpc.insecure_channel)
    try:
        answers, done, cb = collect(5)
        for i in range(5):
            client.submit_async(env(f"f{i}"), cb)
        assert done.wait(10)
        assert sorted(a.tx_id for a in answers) == [f"f{i}" for i in range(5)]  # type: ignore[attr-defined]
        assert o.received == [f"f{i}".encode() for i in range(5)]  # each sent exactly once
        assert client.submit(env("again")).accepted
    finally:
        client.close()


def test_stalled_orderer_is_left_long_before_the_answer_timeout(servers) -> None:
    p1, p2 = free_ports(2)
    paused, live = BatchOrderer("paused"), BatchOrderer("live")
    eps = [serve(paused, p1, servers), serve(live, p2, servers)]
    client = BroadcastClient(eps, grpc.insecure_channel, answer_timeout_s=60, stall_s=0.3,
                             probe_timeout_s=0.2, backoff_s=0.01)
    try:
        assert client.submit(env("warm")).accepted
        paused.gate.clear()
        paused.status_gate.clear()  # SIGSTOP: neither answers nor Status
        start = time.monotonic()
        resp = client.submit(env("moved"))
        elapsed = time.monotonic() - start
        assert resp.accepted and resp.tx_id == "moved"
        assert b"moved" in live.received
        assert elapsed < 30, elapsed  # far below the 60 s answer timeout
        assert client.current_orderer == "live"
        assert client.resubmitted >= 1
    finally:
        paused.gate.set()
        paused.status_gate.set()
        client.close()


def test_slow_but_live_orderer_keeps_its_stream(servers) -> None:
    (port,) = free_ports(1)
    slow = BatchOrderer("slow")
    ep = serve(slow, port, servers)
    client = BroadcastClient([ep], grpc.insecure_channel, answer_timeout_s=60, stall_s=0.2,
                             probe_timeout_s=0.5)
    try:
        slow.gate.clear()
        answers, done, cb = collect(1)
        client.submit_async(env("slow"), cb)
        time.sleep(1.0)  # several stall periods; Status still answers
        slow.gate.set()
        assert done.wait(10)
        assert answers[0].accepted  # type: ignore[attr-defined]
        assert slow.received == [b"slow"]  # never resent
        assert client.resubmitted == 0
    finally:
        client.close()


def test_stalled_stream_without_other_orderer_reports_unavailable(servers) -> None:
    (port,) = free_ports(1)
    paused = BatchOrderer("paused")
    ep = serve(paused, port, servers)
    client = BroadcastClient([ep], grpc.insecure_channel, answer_timeout_s=60, stall_s=0.2,
                             probe_timeout_s=0.1, attempts=2, backoff_s=0.01)
    try:
        paused.gate.clear()
        paused.status_gate.clear()
        with pytest.raises(RxError) as err:
            client.submit(env("nowhere"))
        assert err.value.reason == "SERVICE_UNAVAILABLE"
    finally:
        paused.gate.set()
        paused.status_gate.set()
        client.close()
