"""Bounded block event reads (inbox, claim report) against a peer that stalls, and blocks
carrying a validation code this release does not know (review of 4ac99bd): a stream that does
not follow fails TIMEOUT once the peer sends no block for ``Gateway.events_idle_s`` while one
is awaited -- the block past the limit then reads as unknown (``more``), a block within the
range fails the read -- while a following stream has no such bound; an unknown code is
named ``UNKNOWN_<n>``, never raised. A fake Gateway service on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from client.errors import RxClientError
from client.events import EventListener, MemoryCheckpoint, to_block_events, validation_code_name
from client.gateway import Gateway
from client.inbox import pharmacy_inbox
from client.reconcile import claim_report
from client.wallet import load_identity

IDLE_S = 0.5  # the gateways' idle bound here: tests stay fast
BOUND_S = 10.0  # far above any wait a read with that bound should take


class ScriptedEvents(services_pb2_grpc.GatewayServicer):
    """Sends blocks ``start`` .. ``sent`` - 1, then stalls (until released) where it would send
    block ``stall_at`` (None: never), pausing ``pause_s`` before each block; ends at ``height``."""

    def __init__(self, height: int, stall_at: int | None = None, pause_s: float = 0.0) -> None:
        self.height = height
        self.stall_at = stall_at
        self.pause_s = pause_s
        self.release = threading.Event()
        self.requests: list[services_pb2.EventsRequest] = []
        self.ended = threading.Event()  # a stream ended (its end, a cancellation, a release)

    def Events(self, request: services_pb2.EventsRequest, context: Any) -> Iterator[services_pb2.EventsResponse]:
        self.requests.append(request)
        try:
            for n in range(request.start_block, self.height):
                if n == self.stall_at:  # the peer neither sends nor ends the stream, until
                    while context.is_active() and not self.release.wait(0.05):  # the call is cancelled
                        pass
                    return
                if self.pause_s:
                    time.sleep(self.pause_s)
                yield services_pb2.EventsResponse(block_number=n)
        finally:
            self.ended.set()


@pytest.fixture
def serve(net_home) -> Iterator[Callable[[ScriptedEvents], Gateway]]:
    """``serve(service)``: a Gateway (idle bound IDLE_S) to it; every server and gateway started
    is stopped."""
    started: list[tuple[ScriptedEvents, grpc.Server, Gateway]] = []
    ident = load_identity(net_home.home, "h01", "dr-jiang")

    def start(service: ScriptedEvents) -> Gateway:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        services_pb2_grpc.add_GatewayServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=BOUND_S)  # connected: only the peer's pace counts
        gw = Gateway(ident, f"127.0.0.1:{port}", "client-test", channel=channel, events_idle_s=IDLE_S)
        started.append((service, server, gw))
        return gw

    try:
        yield start
    finally:
        for service, server, gw in started:
            service.release.set()
            gw.close()
            server.stop(0)


def _bounded(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a thread, failing the test when it has not ended within BOUND_S."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(("ok", fn()))
        except BaseException as exc:  # handed to the test
            out.append(("raised", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(BOUND_S)
    assert not t.is_alive(), f"the read still waits after {BOUND_S} s"
    kind, value = out[0]
    if kind == "raised":
        raise value
    return value


def _inbox(gw: Gateway, limit: int) -> dict[str, Any]:
    return pharmacy_inbox(gw.events, lambda rx: None, "p01", 0, 0, limit)


def _report(gw: Gateway, limit: int) -> dict[str, Any]:
    return claim_report(gw.events, lambda c: None, 0, limit)


READS = [pytest.param(_inbox, id="inbox"), pytest.param(_report, id="claim_report")]


@pytest.mark.parametrize("read", READS)
def test_a_peer_stalling_inside_the_range_fails_the_read_timeout(serve, read) -> None:
    """Blocks 0, 1 sent, the peer stalls on block 2 of the range 0..4: the read fails TIMEOUT
    (naming the block after which nothing came) within a bounded time -- it waited for ever."""
    gw = serve(ScriptedEvents(height=10, stall_at=2))  # type: ignore[abstract]  # Events only
    t0 = time.monotonic()
    with pytest.raises(RxClientError) as e:
        _bounded(lambda: read(gw, 5))
    assert e.value.reason == "TIMEOUT" and "after block 1" in e.value.message
    assert time.monotonic() - t0 < BOUND_S / 2


@pytest.mark.parametrize("read", READS)
def test_a_peer_stalling_on_the_block_past_the_limit_answers_the_range_read(serve, read) -> None:
    """Blocks 0..2 read whole, the peer stalls on block 3 (the peek): the range read is the
    answer, ``more`` true (whether block 3 exists is unknown), after about the idle bound."""
    gw = serve(ScriptedEvents(height=10, stall_at=3))  # type: ignore[abstract]  # Events only
    t0 = time.monotonic()
    out = _bounded(lambda: read(gw, 3))
    assert out["next_block"] == 3 and out["more"] is True
    assert time.monotonic() - t0 < BOUND_S / 2


def test_a_stalling_stream_is_cancelled_at_the_peer(serve) -> None:
    """The stream the idle bound gave up on is cancelled: the peer's call ends (a stalled one
    left open held one of the caller's streams at the peer)."""
    service = ScriptedEvents(height=10, stall_at=1)  # type: ignore[abstract]  # Events only
    gw = serve(service)
    with pytest.raises(RxClientError) as e:
        _bounded(lambda: list(gw.events(0, "", False)))
    assert e.value.reason == "TIMEOUT"
    assert service.ended.wait(BOUND_S), "the stalled call still runs at the peer"
    assert not [t for t in threading.enumerate() if t.name == "events-idle"]


def test_the_time_a_consumer_takes_over_a_block_is_not_the_peers(serve) -> None:
    """The peer sends every block at once; the consumer takes twice the idle bound over each:
    no TIMEOUT (only the wait for the peer counts), every block read, the watch ended."""
    gw = serve(ScriptedEvents(height=2))  # type: ignore[abstract]  # Events only
    got = []
    for msg in gw.events(0, "", False):
        got.append(msg.block_number)
        time.sleep(2 * IDLE_S)
    assert got == [0, 1]
    assert not [t for t in threading.enumerate() if t.name == "events-idle"]


def test_a_slow_but_live_peer_is_read_to_its_end(serve) -> None:
    """A peer sending each block within the bound is no stalled peer, however long the read."""
    gw = serve(ScriptedEvents(height=4, pause_s=IDLE_S / 5))  # type: ignore[abstract]  # Events only
    assert _report(gw, 10)["next_block"] == 4


def test_a_following_stream_has_no_idle_bound(serve) -> None:
    """Following (EventListener.blocks(follow=True), a long-lived subscription), the peer
    sends nothing until a block commits: a pause of many times the idle bound is no failure."""
    service = ScriptedEvents(height=2, pause_s=3 * IDLE_S)  # type: ignore[abstract]  # Events only
    gw = serve(service)
    listener = EventListener(gw.events, MemoryCheckpoint(0))
    blocks = _bounded(lambda: [b.block for b in listener.blocks(follow=True)])
    assert blocks == [0, 1] and service.requests[0].follow is True


def test_the_idle_bound_can_be_lifted(serve) -> None:
    """``events_idle_s`` None: no bound, as before (an SDK user's own choice)."""
    gw = serve(ScriptedEvents(height=2, pause_s=2 * IDLE_S))  # type: ignore[abstract]  # Events only
    gw.events_idle_s = None
    assert [m.block_number for m in gw.events(0, "", False)] == [0, 1]


# ------------------------------------------------------------ validation codes


def test_a_validation_code_this_release_does_not_know_is_named_not_raised() -> None:
    msg = services_pb2.EventsResponse(block_number=4)
    msg.txs.add(tx_id="a", code=transaction_pb2.VALID)
    msg.txs.add(tx_id="b", code=transaction_pb2.MVCC_READ_CONFLICT)
    msg.txs.add(tx_id="c", code=999)  # a later release's
    assert to_block_events(msg).txs == [("a", "VALID"), ("b", "MVCC_READ_CONFLICT"), ("c", "UNKNOWN_999")]
    assert validation_code_name(999) != "VALID" and validation_code_name(transaction_pb2.VALID) == "VALID"


def _unknown_code_at(block: int, height: int) -> Callable[[int, str, bool], Iterator[services_pb2.EventsResponse]]:
    def source(start: int, contract: str, follow: bool) -> Iterator[services_pb2.EventsResponse]:
        for n in range(start, height):
            msg = services_pb2.EventsResponse(block_number=n)
            if n == block:
                msg.txs.add(tx_id="t", code=999, contract=contract)
            yield msg
    return source


def test_a_block_within_the_range_with_an_unknown_code_is_read() -> None:
    """Inside the range it raised a bare ValueError, failing the read (every read of that
    range, until the client was upgraded); now the range is read through."""
    report = claim_report(_unknown_code_at(1, 3), lambda c: None, 0, 10)
    assert report["next_block"] == 3 and report["more"] is False and report["claims"] == []
    inbox = pharmacy_inbox(_unknown_code_at(1, 3), lambda rx: None, "p01", 0, 0, 10)
    assert inbox["next_block"] == 3 and inbox["more"] is False and inbox["changes"] == []
    seen = [b.txs for b in EventListener(_unknown_code_at(1, 3), MemoryCheckpoint(0)).blocks(follow=False)]
    assert seen == [[], [("t", "UNKNOWN_999")], []]


# ------------------------------------------------------------ where the bound is set


@pytest.mark.parametrize("argv", [["rx", "inbox"], ["claim", "report"], ["events"]])
def test_the_bounded_read_commands_take_the_idle_bound(argv, net_home) -> None:
    """``--idle-timeout SECONDS`` (above 0: a bound of 0 fails every read) reaches the session's
    gateway; without it the gateway's default."""
    from client.cli import UsageError, _session_options, build_parser
    from client.gateway import EVENTS_IDLE_S
    from client.session import Session

    p = build_parser()
    assert _session_options(p.parse_args([*argv, "--idle-timeout", "2.5"])) == {"events_idle_s": 2.5}
    assert _session_options(p.parse_args(argv)) == {}
    for bad in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(UsageError) as e:
            p.parse_args([*argv, "--idle-timeout", bad])
        assert e.value.reason == "BAD_ARGUMENTS" and "--idle-timeout" in str(e.value)
    with Session(net_home.home, "h01:dr-jiang", events_idle_s=2.5) as s:
        assert s.gateway.events_idle_s == 2.5
    with Session(net_home.home, "h01:dr-jiang") as s:
        assert s.gateway.events_idle_s == EVENTS_IDLE_S
        for wrong in (0, -1.0, float("nan"), float("inf"), "5"):
            with pytest.raises(RxClientError) as refused:
                s.gateway.events_idle_s = wrong  # type: ignore[assignment]  # "5" too
            assert refused.value.reason == "BAD_ARGUMENTS"
        assert s.gateway.events_idle_s == EVENTS_IDLE_S  # unchanged by the refusals
