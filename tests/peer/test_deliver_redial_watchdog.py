"""The watchdog drops a stream while the block that changes the message bound is committing.

The watchdog decides on a stream silent for ``stall_s`` (here: a slow commit of the config
block) and another orderer ahead: it sets ``_stalled`` and ``_index`` (for ``_run`` to move on
by one) and cancels the call. The commit then returns, the bound rose, and ``_Redial``
``continue``d: ``_index`` was not moved on (the same orderer dialled, not the one the
watchdog chose) and ``_stalled`` never cleared, so a later, unrelated failure of that
orderer was reported STALLED (and skipped the backoff) (found by the review). The
watchdog's choice stands."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
from rxchain.v1 import block_pb2, services_pb2, services_pb2_grpc

from node.config import Endpoint
from node.peer.deliver_client import Backoff, DeliverClient
from tests.harness.ports import free_ports
from tests.peer.test_deliver_broadcast import FakeAdmin, FakeOrderer, wait_for
from tests.peer.test_deliver_redial import LARGE, SMALL, _blocks


class _AbortsLater(FakeOrderer):
    """The second stream ends UNAVAILABLE after its blocks (the orderer going away)."""

    def Deliver(self, request, context):
        self.starts.append(request.start_block)
        for b in self.blocks:
            if b.header.number >= request.start_block:
                yield services_pb2.DeliverResponse(block=b)
        if len(self.starts) >= 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
        deadline = time.monotonic() + self.hold_s
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)


def test_a_stream_the_watchdog_dropped_as_the_bound_changed_is_not_misreported_later(servers) -> None:
    committed: list[int] = []
    bound = [SMALL]
    released = threading.Event()

    def commit(block: block_pb2.Block) -> None:
        if block.header.number == 1:
            released.wait(5)  # a slow commit of the config block: the stream looks silent
            bound[0] = LARGE
        committed.append(block.header.number)

    def channel(target: str) -> grpc.Channel:
        return grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", bound[0])])

    serving = _AbortsLater(_blocks(), hold_s=5)
    ahead = FakeOrderer([], hold_s=5)  # streams nothing: its Admin says it is ahead
    ports = free_ports(2)
    for fake, admin, port in ((serving, FakeAdmin(1), ports[0]), (ahead, FakeAdmin(100), ports[1])):
        server = grpc.server(futures.ThreadPoolExecutor(8))
        services_pb2_grpc.add_AtomicBroadcastServicer_to_server(fake, server)
        services_pb2_grpc.add_AdminServicer_to_server(admin, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        servers.append(server)
    errors: list[tuple[str, str]] = []
    client = DeliverClient([Endpoint(f"o{i}", "ins01", "127.0.0.1", p) for i, p in enumerate(ports)],
                           channel, lambda: len(committed) + 1, commit, Backoff(0.01, 0.05),
                           on_error=lambda o, r: errors.append((o, r)), stall_s=0.3,
                           probe_timeout_s=0.5, unresponsive_s=60, message_bound=lambda: bound[0])
    client.start()
    try:
        wait_for(lambda: client._stalled != "", 5)  # the watchdog dropped o0 mid-commit
        released.set()
        wait_for(lambda: len(errors) >= 1, 10)
    finally:
        released.set()
        client.stop()
    assert serving.starts == [1]  # the stream moved to o1, the orderer the watchdog chose
    assert errors[0] == ("o0", "STALLED"), errors
    assert client._stalled == ""
