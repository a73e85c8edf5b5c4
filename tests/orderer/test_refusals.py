"""Refusals of non-members between orderers are logged boundedly (node.orderer.refusals): an
orderer a config update removed that never learnt of it dialled the others ten times a second,
each refusal a warning line in their logs, for as long as it ran. Now each refused caller is
logged once, then in one line per interval telling how many were refused since, and the
refused orderer dials again with a growing wait, saying (as boundedly) why it is refused."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from rxchain.v1 import identity_pb2, services_pb2

from node.errors import RxError, abort_with
from node.orderer.forward import FORWARD_BATCH_METHOD, ForwardBatchService
from node.orderer.metrics import OrdererMetrics
from node.orderer.refusals import EveryInterval, NonMemberRefusals
from node.orderer.transport import ClusterService, Membership, PeerSender
from node.raft.types import Message, MessageType
from tests.orderer.inproc import NullSink


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Context:
    """What abort_with needs of a servicer context."""

    def __init__(self) -> None:
        self.aborted: list[grpc.StatusCode] = []

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted.append(code)
        raise Exception()  # as grpc's own abort does


def _lines(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(f"event={event} ")]


def test_every_interval_logs_a_key_first_then_once_per_interval_with_the_count() -> None:
    clock = Clock()
    every = EveryInterval(60.0, clock, max_keys=2)
    assert every.note("a") == 1  # the first: logged at once
    assert [every.note("a") for _ in range(9)] == [0] * 9  # within the interval: counted only
    assert every.note("b") == 1  # per key
    clock.now += 60
    assert every.note("a") == 10  # the 9 not logged and this one
    clock.now += 120  # quiet for more than an interval: logged at once again
    assert every.note("a") == 1
    assert every.note("a") == 0
    clock.now += 60
    assert every.note("a") == 2
    # at most max_keys remembered: the least recently seen ("b") is forgotten first
    assert every.note("c") == 1
    assert every.note("a") == 0 and every.note("b") == 1


def test_refusals_of_one_caller_make_one_line_then_one_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """Old code: a warning line per refusal."""
    clock = Clock()
    metrics = OrdererMetrics("t")
    refusals = NonMemberRefusals(metrics, 60.0, clock)
    removed = identity_pb2.Identity(org="ins03", cert_der=b"removed orderer's certificate")
    other = identity_pb2.Identity(org="ins03", cert_der=b"another certificate of ins03")
    caplog.set_level(logging.INFO, logger="node.orderer")

    def refuse(ident: identity_pb2.Identity | None, stream: str = "Step") -> None:
        ctx = Context()
        with pytest.raises(Exception):  # noqa: B017 -- the abort
            refusals.refuse(ctx, ident, stream)  # type: ignore[arg-type]
        assert ctx.aborted == [grpc.StatusCode.PERMISSION_DENIED]  # every one refused

    for _ in range(10):
        refuse(removed)
        clock.now += 5  # ten a minute... of an interval of 60 s: 10 refused within it
    assert len(lines := _lines(caplog, "non_member_refused")) == 1
    assert lines[0].levelno == logging.WARNING and "refused=1 " in lines[0].getMessage()
    assert "caller='ins03'" in lines[0].getMessage()
    refuse(other)  # another caller: its own first line
    assert len(_lines(caplog, "non_member_refused")) == 2
    clock.now += 10  # 60 s after the first line: one summary line with the count
    refuse(removed, "ForwardBatch")
    lines = _lines(caplog, "non_member_refused")
    assert len(lines) == 3 and lines[2].levelno == logging.WARNING
    assert "stream=ForwardBatch " in lines[2].getMessage() and "refused=10 " in lines[2].getMessage()
    for _ in range(5):
        refuse(removed)
    assert len(_lines(caplog, "non_member_refused")) == 3
    refuse(None)  # no client certificate: a caller of its own
    assert "caller='(no client certificate)'" in _lines(caplog, "non_member_refused")[-1].getMessage()
    # every refusal still counted
    assert metrics.consensus_dropped.labels(reason="non_member")._value.get() == 18


def test_both_cluster_services_share_one_count_per_caller(caplog: pytest.LogCaptureFixture) -> None:
    """A caller refused on Step and ForwardBatch (served by two services) over gRPC: one line."""
    metrics = OrdererMetrics("t")
    refusals = NonMemberRefusals(metrics)
    cluster = ClusterService(1, Membership([]), NullSink(), None, metrics, refusals=refusals)  # type: ignore[arg-type]
    forward = ForwardBatchService(Membership([]), None, metrics, refusals=refusals)  # type: ignore[arg-type]
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([cluster.handler(), forward.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    caplog.set_level(logging.INFO, logger="node.orderer")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            step = ch.stream_unary("/rxchain.v1.Cluster/Step",
                                   request_serializer=services_pb2.ConsensusRequest.SerializeToString,
                                   response_deserializer=services_pb2.ConsensusResponse.FromString)
            batch = ch.stream_stream(FORWARD_BATCH_METHOD, request_serializer=None, response_deserializer=None)
            for _ in range(5):
                with pytest.raises(grpc.RpcError) as err:
                    step(iter([services_pb2.ConsensusRequest(from_id=3)]), timeout=5)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                with pytest.raises(grpc.RpcError) as err:
                    list(batch(iter([b""]), timeout=5))
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "NOT_AN_ORDERER" in (err.value.details() or "")
    finally:
        server.stop(0)
    assert len(_lines(caplog, "non_member_refused")) == 1
    assert metrics.consensus_dropped.labels(reason="non_member")._value.get() == 10


def test_a_refused_orderer_dials_again_with_a_growing_wait(caplog: pytest.LogCaptureFixture) -> None:
    """The removed orderer's side: refused NOT_AN_ORDERER, it waited 0.1 s and dialled again
    (ten refusals a second) logging nothing above debug. Now the wait doubles up to a bound,
    it says once why it is refused, and a stream ending otherwise brings the usual wait back."""
    refusing = threading.Event()
    refusing.set()

    def step(requests: Any, context: grpc.ServicerContext) -> bytes:
        if refusing.is_set():  # as ClusterService refuses a non-member
            abort_with(context, RxError("NOT_AN_ORDERER", "caller is not an orderer of the current configuration"))
        context.abort(grpc.StatusCode.UNAVAILABLE, "going away")  # another end of the stream
        return b""

    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("rxchain.v1.Cluster", {
        "Step": grpc.stream_unary_rpc_method_handler(step, request_deserializer=None, response_serializer=None)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    dials: list[float] = []

    def factory(target: str) -> grpc.Channel:
        dials.append(time.monotonic())
        return grpc.insecure_channel(target)

    caplog.set_level(logging.INFO, logger="node.orderer")
    sender = PeerSender(3, 1, f"127.0.0.1:{port}", factory, NullSink(), refused_redial_max_s=1.6)
    try:
        sender.send(Message(MessageType.HEARTBEAT, to=1, frm=3, term=2))
        time.sleep(3.5)  # dials at about 0, 0.2, 0.6, 1.4, 3.0 (0.1 s apart before: 30 or so)
        refused_dials = len(dials)
        gaps = [b - a for a, b in itertools.pairwise(dials)]
        assert 3 <= refused_dials <= 6, gaps
        assert all(b > a for a, b in itertools.pairwise(gaps[:3])), gaps  # growing
        assert sender.redial_wait_s == 1.6  # bounded
        lines = _lines(caplog, "refused_as_non_member")
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING
        assert "NOT_AN_ORDERER" in lines[0].getMessage() and "peer=1 " in lines[0].getMessage()
        refusing.clear()  # admitted again (its config caught up), the stream ends otherwise
        deadline = time.monotonic() + 5
        while sender.redial_wait_s != 0.1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sender.redial_wait_s == 0.1
        since = len(dials)
        time.sleep(1.0)
        assert len(dials) - since >= 3  # the usual pace again (refused: one at most in 1.6 s)
    finally:
        sender.close()
        server.stop(0)
