"""Deliver client failover/resume and the Broadcast client, against in-process fake orderers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from rxchain.v1 import block_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from node.config import Endpoint
from node.crypto.canonical import block_header_hash
from node.errors import RxError
from node.peer.broadcast_client import BroadcastClient
from node.peer.deliver_client import Backoff, DeliverClient
from tests.harness.ports import free_ports
from tests.peer.conftest import Net, make_peer
from tests.peer.kit import make_block


class FakeOrderer(services_pb2_grpc.AtomicBroadcastServicer):
    """Serves a fixed list of blocks; can end streams early or refuse broadcasts."""

    def __init__(self, blocks: list[block_pb2.Block], end_after: int = 0,
                 refuse: str = "", hold_s: float = 5.0) -> None:
        self.blocks = blocks
        self.hold_s = hold_s  # how long a follow stream stays open after the last block
        self.end_after = end_after  # end the first stream after this many blocks (0: never)
        self.refuse = refuse
        self.starts: list[int] = []
        self.received: list[bytes] = []

    def Deliver(self, request, context) -> Iterator[services_pb2.DeliverResponse]:
        self.starts.append(request.start_block)
        sent = 0
        for b in self.blocks:
            if b.header.number >= request.start_block:
                yield services_pb2.DeliverResponse(block=b)
                sent += 1
                if self.end_after and sent >= self.end_after and len(self.starts) == 1:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
        deadline = time.monotonic() + self.hold_s
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)

    def BroadcastBatch(self, request_iterator, context):
        # Not served: the BroadcastClient falls back to Broadcast, which these tests exercise.
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "BroadcastBatch is not served by this fake")

    def Broadcast(self, request_iterator, context) -> Iterator[services_pb2.BroadcastResponse]:
        for env in request_iterator:
            self.received.append(env.payload)
            if self.refuse:
                yield services_pb2.BroadcastResponse(accepted=False, reason=self.refuse)
            else:
                yield services_pb2.BroadcastResponse(accepted=True)


def serve(servicer: FakeOrderer, port: int) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(8))
    services_pb2_grpc.add_AtomicBroadcastServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def insecure(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target)


def chain(net: Net, genesis: block_pb2.Block, n: int, signer=None) -> list[block_pb2.Block]:
    out = []
    prev = block_header_hash(genesis.header)
    for i in range(1, n + 1):
        b = make_block(i, prev, [], signer or net.orderer)
        prev = block_header_hash(b.header)
        out.append(b)
    return out


def wait_for(cond, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_failover_resume_and_bad_blocks(net: Net, tmp_path: Path, servers) -> None:
    peer = make_peer(net, "h01", tmp_path / "p")
    try:
        good = chain(net, peer.ledger.block(0), 4)
        forged = chain(net, peer.ledger.block(0), 1, signer=net.peers["p01"])  # not an orderer
        dead_port, bad_port, good_port = free_ports(3)
        bad = FakeOrderer(forged, hold_s=0.2)
        ok = FakeOrderer(good, end_after=2)
        servers.append(serve(bad, bad_port))
        servers.append(serve(ok, good_port))
        eps = [Endpoint("dead", "ins01", "127.0.0.1", dead_port),
               Endpoint("forger", "ins01", "127.0.0.1", bad_port),
               Endpoint("good", "ins01", "127.0.0.1", good_port)]
        errors: list[tuple[str, str]] = []
        client = DeliverClient(eps, insecure, peer.ledger.height, peer.committer.commit_block,
                               Backoff(0.01, 0.05), on_error=lambda o, r: errors.append((o, r)))
        client.start()
        try:
            wait_for(lambda: peer.ledger.height() == 5)
        finally:
            client.stop()
        assert [block_header_hash(peer.ledger.block(i).header) for i in range(1, 5)] == \
            [block_header_hash(b.header) for b in good]
        assert ("dead", "SERVICE_UNAVAILABLE") in errors
        assert ("forger", "BAD_ORDERER_SIGNATURE") in errors
        # The good orderer ended the first stream after 2 blocks; the client resumed at 3.
        assert ok.starts[:2] == [1, 3]
        assert bad.starts and all(s in (1, 3) for s in bad.starts)
    finally:
        peer.ledger.close()


def test_stop_is_prompt_with_an_open_stream(net: Net, tmp_path: Path, servers) -> None:
    peer = make_peer(net, "h01", tmp_path / "p")
    try:
        (port,) = free_ports(1)
        servers.append(serve(FakeOrderer(chain(net, peer.ledger.block(0), 1)), port))
        client = DeliverClient([Endpoint("o", "ins01", "127.0.0.1", port)], insecure,
                               peer.ledger.height, peer.committer.commit_block)
        client.start()
        wait_for(lambda: peer.ledger.height() == 2)
        t0 = time.monotonic()
        client.stop()
        assert time.monotonic() - t0 < 3
    finally:
        peer.ledger.close()


def test_broadcast_failover_and_refusals(servers) -> None:
    dead, refusing, ok_port = free_ports(3)
    busy = FakeOrderer([], refuse="SERVICE_UNAVAILABLE")
    ok = FakeOrderer([])
    servers.append(serve(busy, refusing))
    servers.append(serve(ok, ok_port))
    client = BroadcastClient([Endpoint("dead", "ins01", "127.0.0.1", dead),
                              Endpoint("busy", "ins01", "127.0.0.1", refusing),
                              Endpoint("ok", "ins01", "127.0.0.1", ok_port)],
                             insecure, answer_timeout_s=5, backoff_s=0.01)
    try:
        env = transaction_pb2.Envelope(payload=b"p1", signature=b"s")
        assert client.submit(env).accepted
        assert busy.received == [b"p1"] and ok.received == [b"p1"]
        # Concurrent submits share the stream; answers are matched in order.
        envs = [transaction_pb2.Envelope(payload=f"q{i}".encode(), signature=b"s") for i in range(30)]
        with futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(client.submit, envs))
        assert all(a.accepted for a in answers)
        assert sorted(ok.received[1:]) == sorted(e.payload for e in envs)
    finally:
        client.close()
    final = BroadcastClient([Endpoint("x", "ins01", "127.0.0.1", refusing)], insecure,
                            attempts=2, backoff_s=0.01)
    try:
        with pytest.raises(RxError) as err:
            final.submit(transaction_pb2.Envelope(payload=b"z", signature=b"s"))
        assert err.value.reason == "SERVICE_UNAVAILABLE"
    finally:
        final.close()
    refuse = FakeOrderer([], refuse="BAD_SIGNATURE")
    (port,) = free_ports(1)
    servers.append(serve(refuse, port))
    one = BroadcastClient([Endpoint("r", "ins01", "127.0.0.1", port)], insecure)
    try:
        resp = one.submit(transaction_pb2.Envelope(payload=b"z", signature=b"s"))
        assert not resp.accepted and resp.reason == "BAD_SIGNATURE"
        assert refuse.received == [b"z"]  # a definitive refusal is not retried
    finally:
        one.close()


def test_threads_do_not_leak(net: Net, tmp_path: Path) -> None:
    before = threading.active_count()
    peer = make_peer(net, "h01", tmp_path / "p")
    client = DeliverClient([Endpoint("o", "ins01", "127.0.0.1", free_ports(1)[0])], insecure,
                           peer.ledger.height, peer.committer.commit_block, Backoff(0.01, 0.02))
    client.start()
    time.sleep(0.1)
    client.stop()
    peer.ledger.close()
    wait_for(lambda: threading.active_count() <= before + 2, 5)


def test_broadcast_async_fails_over(servers) -> None:
    dead, ok_port = free_ports(2)
    ok = FakeOrderer([])
    servers.append(serve(ok, ok_port))
    client = BroadcastClient([Endpoint("dead", "ins01", "127.0.0.1", dead),
                              Endpoint("ok", "ins01", "127.0.0.1", ok_port)],
                             insecure, backoff_s=0.01)
    answers: list[object] = []
    done = threading.Event()

    def cb(resp) -> None:
        answers.append(resp)
        if len(answers) == 20:
            done.set()

    try:
        for i in range(20):
            client.submit_async(transaction_pb2.Envelope(payload=f"a{i}".encode(), signature=b"s"), cb)
        assert done.wait(10)
        assert all(isinstance(a, services_pb2.BroadcastResponse) and a.accepted for a in answers)
        assert sorted(ok.received) == sorted(f"a{i}".encode() for i in range(20))
    finally:
        client.close()
    failed: list[object] = []
    gone = BroadcastClient([Endpoint("dead", "ins01", "127.0.0.1", dead)], insecure,
                           attempts=2, backoff_s=0.01)
    try:
        ev = threading.Event()

        def on_answer(r) -> None:
            failed.append(r)
            ev.set()

        gone.submit_async(transaction_pb2.Envelope(payload=b"x", signature=b"s"), on_answer)
        assert ev.wait(10)
        assert isinstance(failed[0], RxError) and failed[0].reason == "SERVICE_UNAVAILABLE"
    finally:
        gone.close()


def test_commit_failure_is_fatal_not_silent(net: Net, tmp_path: Path, servers) -> None:
    peer = make_peer(net, "h01", tmp_path / "p")
    try:
        (port,) = free_ports(1)
        servers.append(serve(FakeOrderer(chain(net, peer.ledger.block(0), 2)), port))
        fatal: list[BaseException] = []
        ev = threading.Event()

        def commit(block: block_pb2.Block) -> object:
            if block.header.number == 2:
                raise OSError(28, "No space left on device")
            return peer.committer.commit_block(block)

        def on_fatal(exc: BaseException) -> None:
            fatal.append(exc)
            ev.set()

        client = DeliverClient([Endpoint("o", "ins01", "127.0.0.1", port)], insecure,
                               peer.ledger.height, commit, Backoff(0.01, 0.02), on_fatal=on_fatal)
        client.start()
        assert ev.wait(10)
        client.stop()
        assert isinstance(fatal[0], OSError) and peer.ledger.height() == 2
    finally:
        peer.ledger.close()


class FakeAdmin(services_pb2_grpc.AdminServicer):
    def __init__(self, height: int) -> None:
        self.height = height
        self.calls = 0

    def Health(self, request, context) -> services_pb2.HealthResponse:
        return services_pb2.HealthResponse(serving=True)

    def Status(self, request, context) -> services_pb2.StatusResponse:
        self.calls += 1
        return services_pb2.StatusResponse(node="fake", role="orderer", height=self.height)


def test_silent_orderer_is_left_when_another_is_ahead(net: Net, tmp_path: Path, servers) -> None:
    peer = make_peer(net, "h01", tmp_path / "p")
    try:
        good = chain(net, peer.ledger.block(0), 4)
        silent_port, ahead_port = free_ports(2)
        silent = FakeOrderer(good[:2], hold_s=30)  # stays open, sends nothing more
        ahead = FakeOrderer(good)
        admin_silent, admin_ahead = FakeAdmin(3), FakeAdmin(5)
        for servicer, admin, port in ((silent, admin_silent, silent_port), (ahead, admin_ahead, ahead_port)):
            server = serve(servicer, port)
            services_pb2_grpc.add_AdminServicer_to_server(admin, server)
            servers.append(server)
        errors: list[tuple[str, str]] = []
        client = DeliverClient([Endpoint("silent", "ins01", "127.0.0.1", silent_port),
                                Endpoint("ahead", "ins01", "127.0.0.1", ahead_port)],
                               insecure, peer.ledger.height, peer.committer.commit_block,
                               on_error=lambda o, r: errors.append((o, r)), stall_s=0.3)
        client.start()
        try:
            wait_for(lambda: peer.ledger.height() == 5, 10)
        finally:
            client.stop()
        assert errors[0] == ("silent", "STALLED")
        assert ahead.starts[0] == 3 and admin_ahead.calls >= 1
    finally:
        peer.ledger.close()


class SilentOrderer(FakeOrderer):
    """Accepts the stream but never answers (a paused orderer)."""

    def Broadcast(self, request_iterator, context):
        for env in request_iterator:
            self.received.append(env.payload)
        return iter(())


def test_broadcast_leaves_a_silent_orderer(servers) -> None:
    silent_port, ok_port = free_ports(2)
    silent, ok = SilentOrderer([]), FakeOrderer([])
    servers.append(serve(silent, silent_port))
    servers.append(serve(ok, ok_port))
    client = BroadcastClient([Endpoint("silent", "ins01", "127.0.0.1", silent_port),
                              Endpoint("ok", "ins01", "127.0.0.1", ok_port)],
                             insecure, answer_timeout_s=0.5, backoff_s=0.01)
    answers: list[object] = []
    done = threading.Event()

    def cb(resp) -> None:
        answers.append(resp)
        if len(answers) == 10:
            done.set()

    try:
        for i in range(10):
            client.submit_async(transaction_pb2.Envelope(payload=f"s{i}".encode(), signature=b"s"), cb)
        assert client.submit(transaction_pb2.Envelope(payload=b"sync", signature=b"s")).accepted
        assert done.wait(10)
        assert all(isinstance(a, services_pb2.BroadcastResponse) and a.accepted for a in answers)
        assert len(silent.received) >= 1
        assert sorted(ok.received) == sorted([b"sync"] + [f"s{i}".encode() for i in range(10)])
    finally:
        client.close()
