"""Resource attacks: a slow client holding streams open, and a flood of connections. The
nodes keep answering normal requests and nothing is written."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from node.config import DEFAULT_GRPC_WORKERS
from node.errors import reason_from_rpc_error
from node.stream_caps import StreamCaps
from tests.adversarial.support import AdvNet, Case, CaseTable
from tests.harness.rpc import Creds, channel

pytestmark = pytest.mark.integration

FLOOD_SOCKETS = 300
FLOOD_CHANNELS = 40
SLOW_STREAMS = 20


def _timed_health(adv: AdvNet, name: str) -> float:
    t0 = time.monotonic()
    assert adv.cons.healthy(name)
    return time.monotonic() - t0


def test_slow_clients_hold_streams(adv: AdvNet, case_table: CaseTable) -> None:
    """Clients open Broadcast / Transact / Events streams and then trickle or send nothing."""
    before = adv.snapshot()
    stop = threading.Event()
    calls: list[Any] = []
    channels = []

    def trickle() -> Iterator[transaction_pb2.Envelope]:
        # one byte-sized garbage envelope, then silence until the test ends
        yield transaction_pb2.Envelope(payload=b"x")
        stop.wait(30)

    def silent() -> Iterator[transaction_pb2.Envelope]:
        stop.wait(30)
        if False:  # pragma: no cover - makes this a generator
            yield transaction_pb2.Envelope()

    for i in range(SLOW_STREAMS):
        node = adv.orderer() if i % 2 == 0 else "peer.h01"
        ch = channel(adv.cons.target(node), adv.user_creds("h01", "dr-test"))
        channels.append(ch)
        if node == adv.orderer():
            calls.append(services_pb2_grpc.AtomicBroadcastStub(ch).Broadcast(trickle() if i % 4 == 0 else silent(),
                                                                             timeout=60))
        else:
            calls.append(services_pb2_grpc.GatewayStub(ch).Events(
                services_pb2.EventsRequest(start_block=10**9, follow=True), timeout=60))
    try:
        time.sleep(1.0)
        worst = max(_timed_health(adv, n) for n in adv.cons.orderer_names() + adv.cons.peer_names())
        serving = adv.serving()
        with adv.gateway("h01", "dr-test") as gw:
            res = gw.submit("rxload", "issue", {"rx_id": "RX-during-slow", "max_fills": 1, "medfee_fen": 1})
    finally:
        stop.set()
        for c in calls:
            c.cancel()
        for ch in channels:
            ch.close()
    after = adv.snapshot()
    case = case_table.add(Case(f"{SLOW_STREAMS} slow/silent streams (Broadcast, Events)", "orderer+peer.h01",
                               "others keep being served", outcome=f"worst health {worst * 1000:.0f} ms; "
                               f"a normal tx committed in block {res.block}", reason="SERVED"))
    # the only write is the normal tx issued during the attack (one block on every node)
    case.nothing_written = all(after[n][0] == before[n][0] + 1 for n in after)
    case.still_serving = serving and adv.serving()
    assert res.code == "VALID"
    assert case.passed, case


def test_connection_flood(adv: AdvNet, case_table: CaseTable) -> None:
    """Hundreds of raw TCP connections (no TLS handshake) plus dozens of mTLS channels."""
    before = adv.snapshot()
    socks: list[socket.socket] = []
    targets = [adv.cons.port(adv.orderer()), adv.cons.port("peer.h01")]
    refused = 0
    try:
        for i in range(FLOOD_SOCKETS):
            try:
                s = socket.create_connection(("127.0.0.1", targets[i % 2]), timeout=2)
                s.sendall(b"\x16\x03\x01\x00\x05hello")  # a truncated TLS ClientHello, then nothing
                socks.append(s)
            except OSError:
                refused += 1
        chans = [channel(adv.cons.target("peer.h01"), adv.user_creds("h01", "dr-test")) for _ in range(FLOOD_CHANNELS)]
        ok = 0
        for ch in chans:
            try:
                services_pb2_grpc.AdminStub(ch).Health(services_pb2.HealthRequest(), timeout=10)
                ok += 1
            except grpc.RpcError:
                pass
        for ch in chans:
            ch.close()
        worst = max(_timed_health(adv, n) for n in adv.cons.orderer_names() + adv.cons.peer_names())
        serving = adv.serving()
    finally:
        for s in socks:
            s.close()
    case = case_table.add(Case(f"flood: {FLOOD_SOCKETS} half-open TCP + {FLOOD_CHANNELS} mTLS channels",
                               "orderer+peer.h01", "normal requests still served",
                               outcome=f"{len(socks)} sockets held ({refused} refused); {ok}/{FLOOD_CHANNELS} "
                                       f"channels answered; worst health {worst * 1000:.0f} ms", reason="SERVED"))
    case.nothing_written = adv.snapshot() == before
    case.still_serving = serving and adv.serving()
    assert ok == FLOOD_CHANNELS
    assert case.passed, case


class _Flood:
    """Long-lived calls opened by one client; counts those refused TOO_MANY_STREAMS."""

    def __init__(self, target: str, creds: Creds, open_call: Callable[[grpc.Channel], Any], n: int) -> None:
        self._cv = threading.Condition()
        self.refused: list[str] = []
        self.other: list[str] = []
        self.channels = [channel(target, creds) for _ in range((n + 19) // 20)]
        self.calls = []
        for i in range(n):
            call = open_call(self.channels[i % len(self.channels)])
            call.add_done_callback(self._done)
            self.calls.append(call)

    def _done(self, call: Any) -> None:
        code = call.code()
        with self._cv:
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and reason_from_rpc_error(call) == "TOO_MANY_STREAMS":
                self.refused.append(call.details() or "")
            elif code != grpc.StatusCode.CANCELLED:
                self.other.append(f"{code}: {call.details()}")
            self._cv.notify_all()

    @property
    def reason(self) -> str:
        """The reason the refused calls carried ("" if none was refused)."""
        return "TOO_MANY_STREAMS" if self.refused else ""

    def wait_refused(self, count: int, timeout_s: float = 20.0) -> int:
        with self._cv:
            self._cv.wait_for(lambda: len(self.refused) >= count, timeout=timeout_s)
            return len(self.refused)

    def close(self) -> None:
        for c in self.calls:
            c.cancel()
        for ch in self.channels:
            ch.close()


def _events(ch: grpc.Channel) -> Any:
    return services_pb2_grpc.GatewayStub(ch).Events(services_pb2.EventsRequest(start_block=10**12, follow=True),
                                                    timeout=60)


def _deliver_follow(ch: grpc.Channel) -> Any:
    return services_pb2_grpc.AtomicBroadcastStub(ch).Deliver(
        services_pb2.DeliverRequest(start_block=10**12, follow=True), timeout=60)


def _admitted_again(target: str, creds: Creds, read: Callable[[grpc.Channel], Any], deadline_s: float = 15.0) -> bool:
    """True once a bounded (non-follow) long-lived call of this client is admitted again
    (the slots of cancelled calls are given back when the server sees them end)."""
    end = time.monotonic() + deadline_s
    with channel(target, creds) as ch:
        while time.monotonic() < end:
            try:
                read(ch)
                return True
            except grpc.RpcError as exc:
                if reason_from_rpc_error(exc) != "TOO_MANY_STREAMS":
                    raise
            time.sleep(0.2)
    return False


def test_stream_caps_refuse_a_flood_of_idle_streams(adv: AdvNet, case_table: CaseTable) -> None:
    """One client opening more idle Events streams than its share is refused TOO_MANY_STREAMS
    at once (per client), several clients together are capped in total, and Health, Evaluate
    and a submit keep being served (the pool's other half is free)."""
    peer = adv.peer("h01")
    target = adv.cons.target(peer)
    caps = StreamCaps.from_extra({}, DEFAULT_GRPC_WORKERS["peer"])
    extra = 6
    before = adv.snapshot()
    floods = []
    try:
        nurse = _Flood(target, adv.user_creds("h01", "nurse-test"), _events, caps.per_caller + extra)
        floods.append(nurse)
        assert nurse.wait_refused(extra) == extra, nurse.other
        time.sleep(1.0)  # an admitted stream would only end at its 60 s deadline or on cancel
        assert (len(nurse.refused), nurse.other) == (extra, [])
        assert all("per client" in d for d in nurse.refused), nurse.refused
        health = _timed_health(adv, peer)
        serving = adv.serving()
        with adv.gateway("h01", "dr-test") as gw:  # its CommitStatus wait is admitted
            res = gw.submit("rxload", "issue", {"rx_id": "RX-during-flood", "max_fills": 1, "medfee_fen": 1})
        # the rest of the total goes to two more clients: 2 of their streams are over the total
        rest = caps.total - caps.per_caller
        others = [_Flood(target, adv.user_creds("h01", "patient-test"), _events, rest),
                  _Flood(target, adv.user_creds("h02", "dr-test"), _events, 2)]
        floods.extend(others)
        end = time.monotonic() + 20
        while sum(len(f.refused) for f in others) < 2 and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(1.0)
        over_total = [d for f in others for d in f.refused]
        assert len(over_total) == 2 and not any(f.other for f in others), (over_total, [f.other for f in others])
        assert all(f"limit {caps.total})" in d for d in over_total), over_total
        health = max(health, _timed_health(adv, peer))
        serving = serving and adv.serving()  # unary Evaluate on every peer, h01 included
    finally:
        for f in floods:
            f.close()
    again = _admitted_again(target, adv.user_creds("h01", "nurse-test"), lambda ch: list(
        services_pb2_grpc.GatewayStub(ch).Events(services_pb2.EventsRequest(start_block=0, follow=False), timeout=10)))
    after = adv.snapshot()
    case = case_table.add(Case(f"{caps.per_caller + extra} idle Events streams from one client + total flood",
                               peer, "TOO_MANY_STREAMS over the caps; others served",
                               outcome=f"{len(nurse.refused)} refused per client, {len(over_total)} over the "
                                       f"total; health {health * 1000:.0f} ms; tx in block {res.block}",
                               reason=nurse.reason))
    case.nothing_written = all(after[n][0] == before[n][0] + 1 for n in after)  # only the normal tx
    case.still_serving = serving and adv.serving()
    assert health < 2.0 and res.code == "VALID" and again
    assert case.passed, case


def test_orderer_deliver_streams_are_capped_per_client(adv: AdvNet, case_table: CaseTable) -> None:
    orderer = adv.orderer()
    target = adv.cons.target(orderer)
    caps = StreamCaps.from_extra({}, DEFAULT_GRPC_WORKERS["orderer"])
    extra = 5
    before = adv.snapshot()
    flood = _Flood(target, adv.user_creds("ins01", "clerk-test"), _deliver_follow, caps.per_caller + extra)
    try:
        refused = flood.wait_refused(extra)
        time.sleep(1.0)
        health = _timed_health(adv, orderer)
        serving = adv.serving()
        assert (refused, len(flood.refused), flood.other) == (extra, extra, [])
    finally:
        flood.close()
    again = _admitted_again(target, adv.user_creds("ins01", "clerk-test"), lambda ch: list(
        services_pb2_grpc.AtomicBroadcastStub(ch).Deliver(services_pb2.DeliverRequest(start_block=0, stop_block=1),
                                                          timeout=10)))
    case = case_table.add(Case(f"{caps.per_caller + extra} idle Deliver streams from one client", orderer,
                               "TOO_MANY_STREAMS over the per-client cap; others served",
                               outcome=f"{len(flood.refused)} refused; health {health * 1000:.0f} ms",
                               reason=flood.reason))
    case.nothing_written = adv.snapshot() == before
    case.still_serving = serving and adv.serving()
    assert health < 2.0 and again
    assert case.passed, case
