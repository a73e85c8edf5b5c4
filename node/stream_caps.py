"""Caps on long-lived RPCs, so that idle streams cannot take every gRPC worker thread.

gRPC's synchronous server runs each call on a thread of a fixed pool (``extra.grpc_workers``)
for as long as the call lasts. A follow stream (Gateway.Events, PeerDeliver.Deliver,
AtomicBroadcast.Deliver), a Gateway.Transact, TransactBatch, Endorser.ProcessProposals or
orderer AtomicBroadcast.Broadcast / BroadcastBatch stream (also a reader thread of its own)
or a CommitStatus wait holds its thread while it
waits, so one client opening enough of them would leave none for Health, Endorse, Broadcast
or Cluster calls. :class:`StreamCaps` bounds them per caller certificate and in total; a call over a
cap is refused at once with ``TOO_MANY_STREAMS`` (gRPC RESOURCE_EXHAUSTED).

node.yaml ``extra`` keys (integers, peers and orderers):

``max_streams``
    long-lived calls held at once, all callers together; default half of ``grpc_workers``
    (the other half stays free for unary, endorsement, broadcast and cluster calls); must
    be less than ``grpc_workers``.
``max_streams_per_caller``
    long-lived calls one client certificate may hold; default half of ``max_streams``; at
    most ``max_streams``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from typing import Any

import grpc

from node.errors import RxError

TOO_MANY_STREAMS = "TOO_MANY_STREAMS"


class StreamSlot:
    """One admitted call; :meth:`release` (idempotent) gives the slot back."""

    def __init__(self, caps: StreamCaps, key: bytes) -> None:
        self._caps = caps
        self._key = key
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        """Give the slot back (only the first call counts)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._caps._release(self._key)

    def __enter__(self) -> StreamSlot:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class StreamCaps:
    """Counts long-lived calls per caller and in total (thread-safe)."""

    def __init__(self, total: int, per_caller: int) -> None:
        if total < 1 or not 1 <= per_caller <= total:
            raise RxError("BAD_CONFIG", f"stream caps need 1 <= max_streams_per_caller ({per_caller}) "
                                        f"<= max_streams ({total})")
        self.total = total
        self.per_caller = per_caller
        self._lock = threading.Lock()
        self._held = 0
        self._by_caller: dict[bytes, int] = {}

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any], workers: int) -> StreamCaps:
        """The caps of a node whose gRPC pool has ``workers`` threads, from node.yaml
        ``extra`` (``max_streams``, ``max_streams_per_caller``; see the module doc)."""
        if workers < 2:
            raise RxError("BAD_CONFIG", f"extra.grpc_workers must be at least 2, not {workers}")
        total = int(extra.get("max_streams", workers // 2))
        if not 1 <= total < workers:
            raise RxError("BAD_CONFIG", f"extra.max_streams must be between 1 and grpc_workers - 1 "
                                        f"({workers - 1}), not {total}")
        per_caller = int(extra.get("max_streams_per_caller", max(1, total // 2)))
        if not 1 <= per_caller <= total:
            raise RxError("BAD_CONFIG", f"extra.max_streams_per_caller must be between 1 and "
                                        f"max_streams ({total}), not {per_caller}")
        return cls(total, per_caller)

    @staticmethod
    def key_of(cert_der: bytes) -> bytes:
        """The per-caller key of a client certificate."""
        return hashlib.sha256(cert_der).digest()

    def held(self, key: bytes | None = None) -> int:
        """Calls held now (by ``key``'s caller, or in total)."""
        with self._lock:
            return self._held if key is None else self._by_caller.get(key, 0)

    def acquire(self, key: bytes, what: str) -> StreamSlot:
        """A slot for ``key``'s caller, or RxError TOO_MANY_STREAMS naming the cap hit."""
        with self._lock:
            mine = self._by_caller.get(key, 0)
            if mine >= self.per_caller:
                raise RxError(TOO_MANY_STREAMS, f"{what}: this client already holds {mine} long-lived "
                                                f"calls (limit {self.per_caller} per client)")
            if self._held >= self.total:
                raise RxError(TOO_MANY_STREAMS, f"{what}: the node already serves {self._held} "
                                                f"long-lived calls (limit {self.total})")
            self._by_caller[key] = mine + 1
            self._held += 1
        return StreamSlot(self, key)

    def admit(self, context: grpc.ServicerContext, cert_der: bytes, what: str) -> StreamSlot:
        """:meth:`acquire` for the caller of ``context``; the slot is also released when the
        RPC terminates (a response generator may be dropped without being closed)."""
        slot = self.acquire(self.key_of(cert_der), what)
        if not context.add_callback(slot.release):  # the RPC already ended
            slot.release()
        return slot

    def _release(self, key: bytes) -> None:
        with self._lock:
            left = self._by_caller.get(key, 0) - 1
            if left > 0:
                self._by_caller[key] = left
            else:
                self._by_caller.pop(key, None)
            self._held = max(0, self._held - 1)
