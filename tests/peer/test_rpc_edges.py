"""Edges of the peer's gRPC servicers, in process (insecure server on 127.0.0.1): an
unexpected exception becomes INTERNAL with an ``rxchain-reason``; callers without a usable
certificate are refused by the MSP check; the stream caps count per caller and in total."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from node.errors import (
    MAX_WIRE_MESSAGE_BYTES,
    RxError,
    abort_with,
    guarded_stream,
    guarded_unary,
    reason_from_rpc_error,
    wire_error,
)
from node.identity.caller import CallerCheck
from node.peer.admin_service import PeerAdminService
from node.peer.deliver_service import PeerDeliverService
from node.peer.endorser import EndorserService
from node.peer.gateway.deps import GatewayDeps
from node.peer.gateway.service import GatewayService
from node.stream_caps import StreamCaps

TIMEOUT_S = 5


class _Boom:
    """An endorser / ledger whose every call raises an unexpected exception."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __getattr__(self, name: str) -> Any:
        def fail(*_: object, **__: object) -> Any:
            raise self.exc

        return fail


class _Remotes:
    def close(self) -> None:
        pass


def _no_msp() -> Any:
    raise AssertionError("the MSP is not reached without a client certificate")


@pytest.fixture
def served() -> Iterator[tuple[grpc.Channel, GatewayService]]:
    """Endorser, Gateway, PeerDeliver and Admin servicers whose collaborators raise."""
    boom = _Boom(ZeroDivisionError("division by zero"))
    deps = GatewayDeps(org="h01", endorser=cast(Any, boom), ledger=cast(Any, boom),
                       configs=cast(Any, boom), policies=cast(Any, None), notifier=cast(Any, boom),
                       remotes=cast(Any, _Remotes()), broadcast=cast(Any, boom))
    gateway = GatewayService(deps, workers=2)
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    services_pb2_grpc.add_EndorserServicer_to_server(EndorserService(cast(Any, boom), workers=1), server)
    services_pb2_grpc.add_GatewayServicer_to_server(gateway, server)
    check = CallerCheck(_no_msp)
    services_pb2_grpc.add_PeerDeliverServicer_to_server(
        PeerDeliverService(cast(Any, boom), cast(Any, boom), check, StreamCaps(4, 2)), server)
    services_pb2_grpc.add_AdminServicer_to_server(
        PeerAdminService("peer.x", cast(Any, boom), lambda: False, check), server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port
    server.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield ch, gateway
    finally:
        ch.close()
        server.stop(0).wait(TIMEOUT_S)
        gateway.close(wait_s=1)


def _refusal(call: Any) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    exc = info.value
    return exc.code(), reason_from_rpc_error(exc), exc.details() or ""


def test_unexpected_exceptions_are_internal_with_a_reason(served: tuple[grpc.Channel, GatewayService]) -> None:
    ch, _ = served
    proposal = transaction_pb2.SignedProposal(proposal_bytes=b"x", signature=b"y")
    endorser = services_pb2_grpc.EndorserStub(ch)
    gw = services_pb2_grpc.GatewayStub(ch)
    admin = services_pb2_grpc.AdminStub(ch)
    calls = {
        "ProcessProposal": lambda: endorser.ProcessProposal(proposal, timeout=TIMEOUT_S),
        "Evaluate": lambda: gw.Evaluate(services_pb2.EvaluateRequest(proposal=proposal), timeout=TIMEOUT_S),
        "Endorse": lambda: gw.Endorse(services_pb2.EndorseRequest(proposal=proposal), timeout=TIMEOUT_S),
        "Submit": lambda: gw.Submit(services_pb2.SubmitRequest(
            envelope=transaction_pb2.Envelope(payload=b"p", signature=b"s")), timeout=TIMEOUT_S),
        "Health": lambda: admin.Health(services_pb2.HealthRequest(), timeout=TIMEOUT_S),
    }
    for name, call in calls.items():
        code, reason, details = _refusal(call)
        assert (code, reason) == (grpc.StatusCode.INTERNAL, "INTERNAL"), (name, code, reason, details)
        assert "ZeroDivisionError" in details, (name, details)


def test_rx_errors_keep_their_reason(served: tuple[grpc.Channel, GatewayService]) -> None:
    ch, _ = served
    gw = services_pb2_grpc.GatewayStub(ch)
    code, reason, _ = _refusal(lambda: gw.Evaluate(services_pb2.EvaluateRequest(), timeout=TIMEOUT_S))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST")


def test_callers_without_a_certificate_are_refused(served: tuple[grpc.Channel, GatewayService]) -> None:
    """No client certificate (this server has no TLS): the reads that carry no signed
    request are refused before they touch the ledger (which would raise here)."""
    ch, _ = served
    gw = services_pb2_grpc.GatewayStub(ch)
    calls = {
        "CommitStatus": lambda: gw.CommitStatus(services_pb2.CommitStatusRequest(tx_id="a" * 64, timeout_ms=10),
                                                timeout=TIMEOUT_S),
        "Events": lambda: gw.Events(services_pb2.EventsRequest(start_block=0), timeout=TIMEOUT_S),
        "Deliver": lambda: services_pb2_grpc.PeerDeliverStub(ch).Deliver(
            services_pb2.DeliverRequest(start_block=0), timeout=TIMEOUT_S),
        "Status": lambda: services_pb2_grpc.AdminStub(ch).Status(services_pb2.StatusRequest(), timeout=TIMEOUT_S),
    }
    for name, call in calls.items():
        code, reason, _ = _refusal(call)
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "UNKNOWN_CREATOR"), (name, code, reason)


class _Echo:
    """Methods decorated like the servicers', for the decorators' own behaviour."""

    @guarded_unary
    def aborts(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        abort_with(context, RxError("NOT_FOUND", "nothing here"))

    @guarded_unary
    def direct_abort(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.OUT_OF_RANGE, "raw")
        raise AssertionError("unreachable")

    @guarded_stream
    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"one"
        if request == b"rx":
            raise RxError("TIMEOUT", "slow")
        raise RecursionError("maximum recursion depth exceeded")


def test_guards_leave_aborts_alone_and_cover_streams() -> None:
    echo = _Echo()
    handler = grpc.method_handlers_generic_handler("t.Echo", {
        "Aborts": grpc.unary_unary_rpc_method_handler(echo.aborts),
        "Direct": grpc.unary_unary_rpc_method_handler(echo.direct_abort),
        "Stream": grpc.unary_stream_rpc_method_handler(echo.stream),
    })
    server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        code, reason, _ = _refusal(lambda: ch.unary_unary("/t.Echo/Aborts", None, None)(b"", timeout=TIMEOUT_S))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
        code, _, details = _refusal(lambda: ch.unary_unary("/t.Echo/Direct", None, None)(b"", timeout=TIMEOUT_S))
        assert (code, details) == (grpc.StatusCode.OUT_OF_RANGE, "raw")
        got: list[bytes] = []

        def read(request: bytes) -> None:
            got.extend(ch.unary_stream("/t.Echo/Stream", None, None)(request, timeout=TIMEOUT_S))

        code, reason, details = _refusal(lambda: read(b"bug"))
        assert (code, reason) == (grpc.StatusCode.INTERNAL, "INTERNAL") and "RecursionError" in details
        code, reason, _ = _refusal(lambda: read(b"rx"))
        assert (code, reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "TIMEOUT")
        assert got == [b"one", b"one"]
    finally:
        ch.close()
        server.stop(0).wait(TIMEOUT_S)


# ---------------------------------------------------------------------- stream caps


def test_stream_caps_per_caller_and_total() -> None:
    caps = StreamCaps(total=3, per_caller=2)
    a, b = caps.key_of(b"cert-a"), caps.key_of(b"cert-b")
    held = [caps.acquire(a, "x"), caps.acquire(a, "x")]
    with pytest.raises(RxError) as info:
        caps.acquire(a, "Gateway.Events")
    assert info.value.reason == "TOO_MANY_STREAMS"
    assert info.value.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "per client" in info.value.message and "Gateway.Events" in info.value.message
    held.append(caps.acquire(b, "x"))
    with pytest.raises(RxError) as info:
        caps.acquire(caps.key_of(b"cert-c"), "x")
    assert "limit 3" in info.value.message
    assert (caps.held(), caps.held(a), caps.held(b)) == (3, 2, 1)
    held[0].release()
    held[0].release()  # idempotent: counted once
    assert (caps.held(), caps.held(a)) == (2, 1)
    with caps.acquire(a, "x"):
        assert caps.held(a) == 2
    for slot in held:
        slot.release()
    assert caps.held() == 0 and caps.held(a) == 0


def test_stream_caps_are_thread_safe() -> None:
    caps = StreamCaps(total=50, per_caller=50)
    key = caps.key_of(b"c")
    barrier = threading.Barrier(8)

    def churn() -> None:
        barrier.wait(TIMEOUT_S)
        for _ in range(500):
            caps.acquire(key, "x").release()

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S * 4)
    assert caps.held() == 0 and caps.held(key) == 0


class _OpenNotifier:
    """A commit notifier that is not closing (all a stream that gets no request reads)."""

    closed = False


def test_transact_streams_are_capped_so_idle_ones_leave_workers_free() -> None:
    """Every Transact/TransactBatch call holds a gRPC worker (and a reader thread) for as
    long as it is open. They share the stream caps: one client opening as many idle streams
    as the server has workers gets those past the caps refused TOO_MANY_STREAMS, and
    Evaluate (any unary call) is still served; a closed stream gives its slot back. (They
    were uncapped: four idle streams took the four workers and Evaluate was never run.)"""
    boom = _Boom(ZeroDivisionError("division by zero"))
    deps = GatewayDeps(org="h01", endorser=cast(Any, boom), ledger=cast(Any, boom),
                       configs=cast(Any, boom), policies=cast(Any, None), notifier=cast(Any, _OpenNotifier()),
                       remotes=cast(Any, _Remotes()), broadcast=cast(Any, boom))
    gateway = GatewayService(deps, workers=2, streams=StreamCaps(total=2, per_caller=2))
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    services_pb2_grpc.add_GatewayServicer_to_server(gateway, server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port
    server.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    gw = services_pb2_grpc.GatewayStub(ch)
    stop = threading.Event()

    def idle() -> Iterator[Any]:  # sends nothing until the test ends, then half-closes
        stop.wait(TIMEOUT_S * 4)
        yield from ()

    calls: list[Any] = []
    try:
        calls = [gw.Transact(idle(), timeout=TIMEOUT_S * 4), gw.TransactBatch(idle(), timeout=TIMEOUT_S * 4),
                 gw.Transact(idle(), timeout=TIMEOUT_S * 4), gw.TransactBatch(idle(), timeout=TIMEOUT_S * 4)]
        deadline = time.monotonic() + 2
        while sum(c.done() for c in calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # the calls past the caps are refused at once
        code, reason, _ = _refusal(lambda: gw.Evaluate(services_pb2.EvaluateRequest(), timeout=3))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST")
        refused = [c for c in calls if c.done()]
        assert len(refused) == 2
        for c in refused:
            assert c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert reason_from_rpc_error(c) == "TOO_MANY_STREAMS"
        stop.set()  # the open ones half-close, end with nothing unanswered and free their slots
        for c in calls:
            if c not in refused:
                assert list(c) == []
        answers = list(gw.Transact(iter([services_pb2.TransactRequest(correlation_id=7)]), timeout=TIMEOUT_S))
        assert [(a.correlation_id, a.error.reason) for a in answers] == [(7, "BAD_REQUEST")]
    finally:
        stop.set()
        for c in calls:
            c.cancel()
        ch.close()
        server.stop(0).wait(TIMEOUT_S)
        gateway.close(wait_s=1)


@pytest.mark.parametrize(("extra", "workers", "expected"), [
    ({}, 64, (32, 16)),
    ({}, 128, (64, 32)),
    ({"max_streams": 10, "max_streams_per_caller": 3}, 64, (10, 3)),
    ({}, 2, (1, 1)),
])
def test_stream_caps_from_extra(extra: dict[str, int], workers: int, expected: tuple[int, int]) -> None:
    caps = StreamCaps.from_extra(extra, workers)
    assert (caps.total, caps.per_caller) == expected


@pytest.mark.parametrize(("extra", "workers", "fragment"), [
    ({"max_streams": 64}, 64, "extra.max_streams"),
    ({"max_streams": 8, "max_streams_per_caller": 9}, 64, "extra.max_streams_per_caller"),
    ({}, 1, "extra.grpc_workers"),
])
def test_stream_caps_bad_extra(extra: dict[str, int], workers: int, fragment: str) -> None:
    with pytest.raises(RxError) as info:
        StreamCaps.from_extra(extra, workers)
    assert info.value.reason == "BAD_CONFIG" and fragment in info.value.message


def test_wire_error_cuts_long_messages_by_utf8_bytes() -> None:
    short = RxError("BAD_REQUEST", "药" * 10)
    assert wire_error(short) is short
    long = RxError("CONTRACT_REJECTED", "药" * 1024, grpc.StatusCode.ABORTED)  # 3072 bytes of UTF-8
    cut = wire_error(long)
    assert (cut.reason, cut.grpc_code) == ("CONTRACT_REJECTED", grpc.StatusCode.ABORTED)
    assert cut.message == "药" * (MAX_WIRE_MESSAGE_BYTES // 3) + "... (3072 bytes, cut)"
