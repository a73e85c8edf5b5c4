"""The Broadcast client follows the Raft leader reported by the orderers' Admin.Status."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from node.config import Endpoint
from node.errors import RxError
from node.peer.broadcast_client import BroadcastClient
from tests.harness.ports import free_ports


class Orderer(services_pb2_grpc.AtomicBroadcastServicer, services_pb2_grpc.AdminServicer):
    """Accepts every envelope (optionally holding answers until ``gate`` is set) and
    reports ``leader`` as the Raft leader in Admin.Status."""

    def __init__(self, name: str, leader: int) -> None:
        self.name = name
        self.leader = leader
        self.gate = threading.Event()
        self.gate.set()
        self.received: list[bytes] = []
        self.status_calls = 0

    def BroadcastBatch(self, request_iterator, context):
        # Not served: the BroadcastClient falls back to Broadcast, which these tests exercise.
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "BroadcastBatch is not served by this fake")

    def Broadcast(self, request_iterator, context) -> Iterator[services_pb2.BroadcastResponse]:
        for env in request_iterator:
            self.received.append(env.payload)
            assert self.gate.wait(10)
            yield services_pb2.BroadcastResponse(accepted=True)

    def Deliver(self, request, context):  # pragma: no cover - not used here
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "no deliver")

    def Status(self, request, context) -> services_pb2.StatusResponse:
        self.status_calls += 1
        return services_pb2.StatusResponse(node=self.name, role="orderer", raft_leader=self.leader)

    def Health(self, request, context) -> services_pb2.HealthResponse:
        return services_pb2.HealthResponse(serving=True, node=self.name, role="orderer")


def insecure(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target)


def env(payload: str) -> transaction_pb2.Envelope:
    return transaction_pb2.Envelope(payload=payload.encode(), signature=b"s")


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def serve(orderer: Orderer, port: int, started: list[grpc.Server]) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(8))
    services_pb2_grpc.add_AtomicBroadcastServicer_to_server(orderer, server)
    services_pb2_grpc.add_AdminServicer_to_server(orderer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    started.append(server)


def test_moves_to_reported_leader_without_losing_in_flight(servers) -> None:
    p1, p2, p3 = free_ports(3)
    o1, o2, o3 = Orderer("o1", 2), Orderer("o2", 2), Orderer("o3", 2)
    for o, p in ((o1, p1), (o2, p2), (o3, p3)):
        serve(o, p, servers)
    eps = [Endpoint("o1", "ins01", "127.0.0.1", p1), Endpoint("o2", "ins02", "127.0.0.1", p2),
           Endpoint("o3", "ins03", "127.0.0.1", p3)]
    targets = {1: eps[0].target, 2: eps[1].target, 3: eps[2].target}
    # A long poll period: the test drives follow_leader() itself.
    client = BroadcastClient(eps, insecure, raft_targets=lambda: targets, leader_poll_s=60,
                             backoff_s=0.01)
    try:
        assert client.submit(env("before")).accepted
        assert o1.received == [b"before"] and client.current_orderer == "o1"
        # Envelopes in flight on the follower are answered by it after the move.
        o1.gate.clear()
        answers: list[object] = []
        done = threading.Event()

        def cb(resp: object) -> None:
            answers.append(resp)
            if len(answers) == 5:
                done.set()

        for i in range(5):
            client.submit_async(env(f"held{i}"), cb)
        assert wait_for(lambda: len(o1.received) == 2, 5)  # the first one reached o1
        assert client.follow_leader() == "o2"
        assert client.current_orderer == "o2"
        o1.gate.set()
        assert done.wait(10)
        assert all(isinstance(a, services_pb2.BroadcastResponse) and a.accepted for a in answers)
        held = sorted(f"held{i}".encode() for i in range(5))
        # Each envelope was sent exactly once, to o1 or o2, never to both.
        assert sorted(o1.received[1:] + o2.received) == held
        assert client.submit(env("after")).accepted
        assert o2.received[-1] == b"after" and b"after" not in o1.received
        assert o3.received == []
        assert client.follow_leader() == "o2"  # already there: no move
        assert client.current_orderer == "o2"
    finally:
        client.close()


def test_poller_follows_a_new_leader(servers) -> None:
    p1, p2 = free_ports(2)
    o1, o2 = Orderer("o1", 1), Orderer("o2", 1)
    serve(o1, p1, servers)
    serve(o2, p2, servers)
    eps = [Endpoint("o1", "ins01", "127.0.0.1", p1), Endpoint("o2", "ins02", "127.0.0.1", p2)]
    targets = {1: eps[0].target, 2: eps[1].target}
    client = BroadcastClient(eps, insecure, raft_targets=lambda: targets, leader_poll_s=0.05)
    try:
        assert client.submit(env("a")).accepted and o1.received == [b"a"]
        o1.leader = o2.leader = 2  # leadership moves to raft id 2
        assert wait_for(lambda: client.current_orderer == "o2", 5)
        assert client.submit(env("b")).accepted
        assert o2.received == [b"b"] and o1.received == [b"a"]
    finally:
        client.close()


def test_failover_beats_an_unreachable_leader(servers) -> None:
    dead, p2 = free_ports(2)
    o2 = Orderer("o2", 1)  # reports raft id 1 (the dead endpoint) as the leader
    serve(o2, p2, servers)
    eps = [Endpoint("dead", "ins01", "127.0.0.1", dead), Endpoint("o2", "ins02", "127.0.0.1", p2)]
    targets = {1: eps[0].target, 2: eps[1].target}
    client = BroadcastClient(eps, insecure, raft_targets=lambda: targets, leader_poll_s=60,
                             backoff_s=0.01)
    try:
        assert client.submit(env("x")).accepted and o2.received == [b"x"]
        assert client.follow_leader() == "dead"
        assert client.current_orderer == "o2"  # the leader just failed for us: stay
        assert client.submit(env("y")).accepted and o2.received == [b"x", b"y"]
    finally:
        client.close()


def test_no_targets_no_move(servers) -> None:
    p1, p2 = free_ports(2)
    o1, o2 = Orderer("o1", 2), Orderer("o2", 2)
    serve(o1, p1, servers)
    serve(o2, p2, servers)
    eps = [Endpoint("o1", "ins01", "127.0.0.1", p1), Endpoint("o2", "ins02", "127.0.0.1", p2)]

    def not_yet() -> dict[int, str]:
        raise RxError("SERVICE_UNAVAILABLE", "no genesis yet")

    client = BroadcastClient(eps, insecure, raft_targets=not_yet, leader_poll_s=60)
    try:
        assert client.follow_leader() is None
        assert client.submit(env("z")).accepted and o1.received == [b"z"]
        assert o1.status_calls == 0  # no configuration: nobody is asked
    finally:
        client.close()
    plain = BroadcastClient(eps, insecure)
    try:
        assert plain.follow_leader() is None  # leader following is off without raft_targets
        assert plain.submit(env("w")).accepted and o1.received == [b"z", b"w"]
    finally:
        plain.close()
