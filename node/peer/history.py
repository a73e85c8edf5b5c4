"""Key history for contracts (``ctx.history``): the ledger's history index plus values.

The history index records which (block, tx) wrote a key; the value is read back from that
block's read/write set. Entries newer than the simulation snapshot are left out, so two
peers at the same height answer identically.

Bounds: at most ``MAX_HISTORY`` entries, and at most ``MAX_HISTORY_BYTES`` of values in one
answer -- a key rewritten many times with large values would otherwise make one call build
(and ship to the sandbox worker) up to MAX_HISTORY x 1 MiB. Going past the byte bound fails
the call with SIZE_LIMIT (deterministic: it depends only on the committed ledger up to the
snapshot), and the contract can ask for fewer entries. Consecutive entries of one block
read that block once.

Every value an answer needs is read from its block, and a block is read whole (checksum and
parse: ~1 ms for a full 4 MiB block). A key with a long history made every read of it cost a
block per version: ``prescription.trace`` of a prescription with 1000 versions (a patient
toggling consent, a pharmacy locking and releasing) read 1000 blocks -- about a second of the
peer's CPU on a busy ledger, again for every query, for ~21,000 gas. A :class:`ValueCache`
shared by the endorser's simulations keeps the values read (by namespace, key, block and tx:
a committed write never changes, so the answers are the same with it or without it), up to
``CACHE_BYTES``; a repeated read of a hot key reads no block.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol

from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, transaction_pb2

from node.errors import RxError
from node.ledger.statedb import HistoryEntry as LedgerHistoryEntry
from node.sandbox.types import SIZE_LIMIT, HistoryEntry

MAX_HISTORY = 1000
MAX_HISTORY_BYTES = 16 * 1024 * 1024
CACHE_BYTES = 32 * 1024 * 1024  # values (and their keys) a ValueCache holds at most
_ENTRY_OVERHEAD = 256  # bytes counted per cached value besides its key and value (Python objects)


class HistoryLedger(Protocol):
    """What history needs from the ledger."""

    def history(self, ns: str, key: str, limit: int = 0) -> list[LedgerHistoryEntry]:
        """History index entries, oldest first."""
        ...

    def block(self, number: int) -> block_pb2.Block:
        """A committed block."""
        ...


def _written_value(block: block_pb2.Block, tx: int, ns: str, key: str) -> bytes | None:
    try:
        env = transaction_pb2.Envelope.FromString(block.data.envelopes[tx])
        t = transaction_pb2.Transaction.FromString(env.payload)
        prp = transaction_pb2.ProposalResponsePayload.FromString(t.response_payload)
        rwset = transaction_pb2.TxRwSet.FromString(prp.results)
    except (DecodeError, IndexError):
        return None
    # The LAST write of the key, as the state applied it (txwrites.rwset_writes applies writes
    # in order; validation now refuses a set writing a key twice, older blocks may hold one).
    value: bytes | None = None
    for nsrw in rwset.ns_rwsets:
        if nsrw.namespace == ns:
            for w in nsrw.writes:
                if w.key == key:
                    value = None if w.is_delete else w.value
    return value


_CacheKey = tuple[str, str, int, int]  # namespace, key, block, tx


class ValueCache:
    """Values of committed writes by (namespace, key, block, tx), least recently used out past
    ``max_bytes`` (see the module docstring). Thread-safe: simulations run concurrently."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._values: OrderedDict[_CacheKey, bytes | None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _cost(k: _CacheKey, value: bytes | None) -> int:
        return len(k[0]) + len(k[1]) + len(value or b"") + _ENTRY_OVERHEAD

    def get(self, k: _CacheKey) -> tuple[bool, bytes | None]:
        """(True, value) when cached, else (False, None)."""
        with self._lock:
            if k not in self._values:
                return False, None
            self._values.move_to_end(k)
            return True, self._values[k]

    def put(self, k: _CacheKey, value: bytes | None) -> None:
        """Keep ``value`` (one larger than the whole cache is not kept)."""
        cost = self._cost(k, value)
        if cost > self._max_bytes:
            return
        with self._lock:
            if k in self._values:
                return
            self._values[k] = value
            self._bytes += cost
            while self._bytes > self._max_bytes:
                old, old_value = self._values.popitem(last=False)
                self._bytes -= self._cost(old, old_value)

    @property
    def size_bytes(self) -> int:
        """Bytes counted for the values held now."""
        with self._lock:
            return self._bytes


class LedgerHistory:
    """History reader bound to one simulation snapshot height (``cache``: values read by
    earlier readers, shared; None: every value is read from its block)."""

    def __init__(self, ledger: HistoryLedger, max_block: int, cache: ValueCache | None = None) -> None:
        self._ledger = ledger
        self._max_block = max_block
        self._cache = cache

    def __call__(self, namespace: str, key: str, limit: int) -> list[HistoryEntry]:
        limit = MAX_HISTORY if limit <= 0 else min(limit, MAX_HISTORY)
        out: list[HistoryEntry] = []
        # Oldest first: the first ``limit`` index entries are all this answer can use, so the
        # ledger is asked for no more (a hot key may have a very long history).
        total = 0
        block_no, block = -1, None
        for e in self._ledger.history(namespace, key, limit):
            if e.block > self._max_block:
                break
            value = None
            if not e.is_delete:
                cached, value = (False, None) if self._cache is None else self._cache.get(
                    (namespace, key, e.block, e.tx))
                if not cached:
                    if block is None or e.block != block_no:
                        block_no, block = e.block, self._ledger.block(e.block)
                    value = _written_value(block, e.tx, namespace, key)
                    if self._cache is not None:
                        self._cache.put((namespace, key, e.block, e.tx), value)
                total += len(value or b"")
                if total > MAX_HISTORY_BYTES:
                    raise RxError(
                        SIZE_LIMIT,
                        f"history of {key!r}: the values of its first {len(out) + 1} entries "
                        f"exceed {MAX_HISTORY_BYTES} bytes; ask for fewer entries",
                    )
            out.append(HistoryEntry(e.tx_id, e.block, e.timestamp_ms, e.is_delete, value))
            if len(out) >= limit:
                break
        return out
