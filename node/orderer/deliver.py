"""Deliver: stream blocks from any number, then follow new ones; and the catch-up client.

Server (``AtomicBroadcast.Deliver``): callers must present a TLS certificate of a valid
consortium member (not a patient's), checked again with the MSP in force before every block.
The ``max_protocol_version`` a request tells, and the release statement the caller signed
(``release_statement``/``release_signature``), go with the caller's certificate to
``release_told`` (a peer's release: node.orderer.releases). ``start_block`` is inclusive; with
``follow`` the stream waits for new blocks (checking cancellation every ``poll_s``), otherwise
it stops at ``stop_block`` (0 = the current height - 1) and ends with an ErrorDetail status
``OK``. A client resumes after a reconnect by asking from the block after the last one it
received.

Every stream sends the same bytes for a block: the stored serialized Block framed as a
DeliverResponse (field 1, length-delimited) once per block and shared by all streams (a
small cache of the latest blocks). :meth:`DeliverService.deliver_bytes` yields those bytes
for a handler registered without a response serializer; :meth:`DeliverService.deliver`
yields messages parsed from them (one C-level parse, no Block copy).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import grpc
from rxchain.v1 import block_pb2, identity_pb2, services_pb2, services_pb2_grpc

from node.errors import RxError, guarded_stream
from node.identity.caller import NO_BLOCK_ROLES, CallerCheck
from node.identity.msp import MSP
from node.ledger.blockstore import BlockStore
from node.stream_caps import StreamCaps

_log = logging.getLogger(__name__)

_DELIVER_BLOCK_TAG = b"\x0a"  # DeliverResponse.block: field 1, wire type 2 (length-delimited)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def frame_block(raw_block: bytes) -> bytes:
    """The serialized DeliverResponse carrying the serialized Block ``raw_block``."""
    return _DELIVER_BLOCK_TAG + _varint(len(raw_block)) + raw_block


class DeliverService:
    """Serves the block store as a stream."""

    def __init__(
        self,
        blocks: BlockStore,
        msp_source: Callable[[], MSP],
        clock_ms: Callable[[], int],
        poll_s: float = 0.5,
        cache_blocks: int = 8,
        streams: StreamCaps | None = None,
        release_told: Callable[[bytes, int, bytes, bytes], None] | None = None,
    ) -> None:
        """``release_told(cert_der, version, statement, signature)``: told, for every admitted
        request, the caller's certificate, the protocol version its release implements (0: not
        told) and the release statement it signed with the signature (empty: none)."""
        self._blocks = blocks
        self._release_told = release_told
        self._check = CallerCheck(msp_source, clock_ms, NO_BLOCK_ROLES)
        # Deliver streams hold a gRPC worker each: capped per caller and in total
        # (TOO_MANY_STREAMS), uncapped when none are given (unit tests).
        self._streams = streams or StreamCaps(1 << 30, 1 << 30)
        self._poll_s = poll_s
        self._closed = False
        self._cache_blocks = cache_blocks
        self._cache: dict[int, bytes] = {}
        self._cache_lock = threading.Lock()

    def close(self) -> None:
        """End follow streams."""
        self._closed = True

    @guarded_stream
    def deliver_bytes(
        self, request: services_pb2.DeliverRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Deliver: stream blocks as the request asks, as serialized DeliverResponses (for a
        handler registered with ``response_serializer=None``): a block's bytes are framed once
        for all streams."""
        caller = self._check(context)  # an RxError aborts PERMISSION_DENIED with its reason
        if self._release_told is not None and caller.role == "peer":
            # the certificate the caller proved on the TLS connection, never a name it claims;
            # only peer certificates speak of a release (a member's client cannot fill the
            # words set aside for certificates a later config may name a peer's)
            self._release_told(caller.cert_der, request.max_protocol_version,
                               request.release_statement, request.release_signature)
        ident = identity_pb2.Identity(org=caller.org, cert_der=caller.cert_der)
        with self._streams.admit(context, caller.cert_der, "AtomicBroadcast.Deliver", ends_itself=True) as slot:
            # re-checked before every block: a follow stream lasts for ever, and one opened
            # before a config update revoked its certificate (or before it expired) was served
            # every later block (PERMISSION_DENIED with the reason now); while it waits for a
            # block, the caps' sweeper refuses it (the refusal raised within ``poll_s``)
            yield from self.frames_from(request, slot.live(context.is_active), lambda: self._check.check(ident))

    def blocks_from(
        self, request: services_pb2.DeliverRequest, active: Callable[[], bool]
    ) -> Iterator[services_pb2.DeliverResponse]:
        """The responses for ``request`` while ``active()`` holds."""
        for frame in self.frames_from(request, active):
            yield services_pb2.DeliverResponse.FromString(frame)

    def _frame(self, number: int) -> bytes:
        """The framed block; the latest ``cache_blocks`` blocks (what following streams
        read) are framed once and shared, older ones (a catch-up) are read each time."""
        with self._cache_lock:
            frame = self._cache.get(number)
        if frame is not None:
            return frame
        frame = frame_block(self._blocks.get_bytes(number))
        low = self._blocks.height() - self._cache_blocks
        if number >= low:
            with self._cache_lock:
                frame = self._cache.setdefault(number, frame)
                for old in [k for k in self._cache if k < low]:
                    del self._cache[old]
        return frame

    def frames_from(
        self, request: services_pb2.DeliverRequest, active: Callable[[], bool],
        admitted: Callable[[], object] | None = None,
    ) -> Iterator[bytes]:
        """Serialized DeliverResponses for ``request`` while ``active()`` holds; ``admitted``
        is called before each block (its RxError ends the stream)."""
        n = request.start_block
        stop = request.stop_block
        if not request.follow and stop == 0:
            stop = self._blocks.height() - 1
        while active() and not self._closed:
            if not request.follow and n > stop:
                break
            if n < self._blocks.height():
                if admitted is not None:
                    admitted()
                yield self._frame(n)
                n += 1
                continue
            if not request.follow:
                break
            self._blocks.wait_for_height(n + 1, self._poll_s)
        yield services_pb2.DeliverResponse(
            status=identity_pb2.ErrorDetail(reason="OK", message=f"delivered up to {n - 1}")
        ).SerializeToString()


class DeliverFetcher:
    """Fetches blocks from other orderers' Deliver (the Chain's BlockFetcher)."""

    def __init__(
        self,
        targets: Callable[[], Sequence[str]],
        channel_factory: Callable[[str], grpc.Channel],
        timeout_s: float = 30.0,
    ) -> None:
        self._targets = targets
        self._factory = channel_factory
        self._timeout_s = timeout_s
        self._turn = 0

    def fetch(self, start: int, stop: int) -> Iterator[block_pb2.Block]:
        """Blocks ``start..stop`` from the next orderer in turn; raises on failure."""
        targets = list(self._targets())
        if not targets:
            raise RxError("SERVICE_UNAVAILABLE", "no other orderer to fetch blocks from")
        target = targets[self._turn % len(targets)]
        self._turn += 1
        channel = self._factory(target)
        try:
            stub = services_pb2_grpc.AtomicBroadcastStub(channel)
            req = services_pb2.DeliverRequest(start_block=start, stop_block=stop, follow=False)
            expected = start
            deadline = time.monotonic() + self._timeout_s
            for resp in stub.Deliver(req, timeout=self._timeout_s):
                if resp.HasField("status"):
                    break
                if resp.block.header.number != expected:
                    raise RxError(
                        "BAD_BLOCK_NUMBER",
                        f"{target} sent block {resp.block.header.number}, wanted {expected}",
                    )
                yield resp.block
                expected += 1
                if expected > stop or time.monotonic() > deadline:
                    break
            if expected <= stop:
                raise RxError(
                    "SERVICE_UNAVAILABLE", f"{target} has blocks only up to {expected - 1}"
                )
        finally:
            channel.close()
