"""Coalescing sender for ``Gateway.TransactBatch``: several requests per stream message.

Every gRPC stream message costs roughly 0.1 ms of CPU on each side, whatever it carries.
:func:`batch_requests` is a request iterator for ``TransactBatch``: it blocks only for the
first queued request, then takes everything else queued at that moment (at most
:data:`MAX_REQUESTS_PER_MESSAGE` requests and :data:`MAX_MESSAGE_BYTES` bytes, a larger
request alone) and sends it as one message. It never waits to fill a message, so at low load each request goes out
alone and at once; under load, the requests that piled up while gRPC sent the previous
message go out together. ``None`` on the queue half-closes the stream.

The gateway answers a malformed message as a whole (empty, or more than
:data:`MAX_REQUESTS_PER_MESSAGE` requests) with one error under correlation id 0; the
coalescer never sends such a message (a client that wants to tell the two apart numbers
its requests from 1).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
from rxchain.v1 import services_pb2

from node.msgbound import CLIENT_BATCH_BYTES

# The gateway's per-message limit (node.peer.gateway.transact.MAX_REQUESTS_PER_BATCH), and
# request bytes per message within any gRPC message bound a config allows (node.msgbound: it
# was 4 MiB, over the bound of a consortium with a smaller max_message_bytes, whose gateway
# then refused the whole message and failed every request on the stream)
MAX_REQUESTS_PER_MESSAGE = 256
MAX_MESSAGE_BYTES = CLIENT_BATCH_BYTES
BATCH_ERROR_CORRELATION_ID = 0

RequestQueue = queue.SimpleQueue[services_pb2.TransactRequest | None]


def coalesce(q: RequestQueue, max_items: int = MAX_REQUESTS_PER_MESSAGE,
             max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[list[services_pb2.TransactRequest]]:
    """Lists of the requests queued at each moment (see module docstring); ends at ``None``."""
    carry: services_pb2.TransactRequest | None = None
    while True:
        first = carry if carry is not None else q.get()
        carry = None
        if first is None:
            return
        batch = [first]
        size = first.ByteSize()
        ended = False
        while len(batch) < max_items:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            if item is None:
                ended = True
                break
            n = item.ByteSize()
            if size + n > max_bytes:
                carry = item
                break
            batch.append(item)
            size += n
        yield batch
        if ended:
            return


def batch_requests(q: RequestQueue, max_items: int = MAX_REQUESTS_PER_MESSAGE,
                   max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[services_pb2.TransactBatchRequest]:
    """The ``TransactBatch`` request iterator over ``q``."""
    for batch in coalesce(q, max_items, max_bytes):
        yield services_pb2.TransactBatchRequest(requests=batch)


def single_requests(q: RequestQueue) -> Iterator[services_pb2.TransactRequest]:
    """The ``Transact`` request iterator over ``q`` (one request per message)."""
    while True:
        item = q.get()
        if item is None:
            return
        yield item


def is_unimplemented(exc: grpc.RpcError) -> bool:
    """True when the server does not offer the RPC (an older gateway: use Transact)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    return bool(code == grpc.StatusCode.UNIMPLEMENTED)
