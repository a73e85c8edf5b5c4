"""PeerDeliver.Deliver: committed blocks (with this peer's validation codes) as a stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
from rxchain.v1 import identity_pb2, services_pb2, services_pb2_grpc

from node.errors import RxError, guarded_stream
from node.identity.caller import CallerCheck, while_admitted
from node.ledger.ledger import Ledger
from node.peer.notifier import CommitNotifier
from node.stream_caps import StreamCaps

POLL_S = 0.5


def committed_blocks(
    ledger: Ledger,
    notifier: CommitNotifier,
    request: services_pb2.DeliverRequest,
    is_active: Callable[[], bool],
) -> Iterator[services_pb2.DeliverResponse]:
    """Blocks ``start_block``.. (until ``stop_block`` or, with ``follow``, forever)."""
    number = request.start_block
    if not request.follow:
        height = ledger.height()
        stop = request.stop_block if request.stop_block else height - 1
        if stop >= height or number > stop:
            raise RxError("NOT_FOUND", f"blocks {number}..{stop} are not all committed (height {height})")
    else:
        stop = -1
    while is_active() and not notifier.closed:
        if stop >= 0 and number > stop:
            yield services_pb2.DeliverResponse(status=identity_pb2.ErrorDetail(reason="OK"))
            return
        if number < ledger.height():
            yield services_pb2.DeliverResponse(block=ledger.block(number))
            number += 1
            continue
        notifier.wait_height(number + 1, POLL_S)


class PeerDeliverService(services_pb2_grpc.PeerDeliverServicer):
    """gRPC PeerDeliver. The mTLS layer checked the caller's CA; ``check_caller`` checks its
    certificate with the MSP (revoked, expired, wrong role -> refused with the reason), when
    the stream opens and again before each block it serves, and
    ``streams`` caps the streams held at once (TOO_MANY_STREAMS)."""

    def __init__(
        self,
        ledger: Ledger,
        notifier: CommitNotifier,
        check_caller: CallerCheck,
        streams: StreamCaps,
    ) -> None:
        self._ledger = ledger
        self._notifier = notifier
        self._check_caller = check_caller
        self._streams = streams

    @guarded_stream
    def Deliver(
        self, request: services_pb2.DeliverRequest, context: grpc.ServicerContext
    ) -> Iterator[services_pb2.DeliverResponse]:
        caller = self._check_caller(context)
        # waiting for a block, it ends with the caps' sweeper's refusal (within POLL_S)
        with self._streams.admit(context, caller.cert_der, "PeerDeliver.Deliver", ends_itself=True) as slot:
            yield from while_admitted(self._check_caller, caller, committed_blocks(
                self._ledger, self._notifier, request, slot.live(context.is_active)))
