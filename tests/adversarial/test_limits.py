"""Resource attacks: a slow client holding streams open, and a flood of connections. The
nodes keep answering normal requests and nothing is written."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from tests.adversarial.support import AdvNet, Case, CaseTable
from tests.harness.rpc import channel

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
