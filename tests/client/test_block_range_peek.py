"""client.events.BlockRange: the block past the limit (the peek) is read on the gateway's
Events stream, which had no deadline (found by a review). A peer that sent the range and then
stalls (a half-open connection, a stopped process) is a failure reading that one block too:
the read that had finished answers what it read, within a bounded time, rather than hanging
for ever. A fake Gateway service on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from rxchain.v1 import services_pb2, services_pb2_grpc

from client.gateway import Gateway
from client.reconcile import claim_report
from client.wallet import load_identity

RANGE = 3  # blocks 0 .. 2 are sent; the peer stalls where it would send block 3
BOUND_S = 20.0  # far above any timeout a read should allow itself


class StallingEvents(services_pb2_grpc.GatewayServicer):
    """Sends blocks from the start asked for up to RANGE - 1, then stalls until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def Events(self, request: services_pb2.EventsRequest, context: Any) -> Iterator[services_pb2.EventsResponse]:
        for n in range(request.start_block, RANGE):
            yield services_pb2.EventsResponse(block_number=n)
        self.release.wait(60)  # the peek: the peer neither sends nor ends the stream


def test_a_peer_stalling_on_the_block_past_the_limit_does_not_hang_a_finished_report(net_home) -> None:
    service = StallingEvents()  # type: ignore[abstract]  # Events only
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    services_pb2_grpc.add_GatewayServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ident = load_identity(net_home.home, "h01", "dr-jiang")
    gw = Gateway(ident, f"127.0.0.1:{port}", "client-test", channel=grpc.insecure_channel(f"127.0.0.1:{port}"))
    out: list[Any] = []
    reader = threading.Thread(target=lambda: out.append(claim_report(gw.events, lambda c: None, 0, RANGE)),
                              daemon=True)
    try:
        reader.start()
        reader.join(BOUND_S)
        assert not reader.is_alive(), (f"the claim report of blocks 0..{RANGE - 1}, read whole, still waits "
                                       f"after {BOUND_S} s on the block past its limit (no deadline on the "
                                       "Events stream)")
        assert out and out[0]["next_block"] == RANGE and out[0]["more"] is True
    finally:
        service.release.set()
        server.stop(0)
        reader.join(10)
        gw.close()


def test_a_block_past_the_limit_that_cannot_be_decoded_does_not_fail_a_finished_report() -> None:
    """BlockRange catches RxClientError only: the block past the limit carrying a validation
    code this release does not know (a newer peer) raises a bare ValueError from
    client.events.to_block_events, and the finished report fails after all."""

    def source(start: int, contract: str, follow: bool) -> Iterator[services_pb2.EventsResponse]:
        for n in range(start, RANGE):
            yield services_pb2.EventsResponse(block_number=n)
        newer = services_pb2.EventsResponse(block_number=RANGE)
        newer.txs.add(tx_id="t", code=999)  # unknown to this release
        yield newer

    report = claim_report(source, lambda c: None, 0, RANGE)
    assert report["next_block"] == RANGE and report["more"] is True
