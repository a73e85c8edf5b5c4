"""Key history for contracts (``ctx.history``): the ledger's history index plus values.

The history index records which (block, tx) wrote a key; the value is read back from that
block's read/write set. Entries newer than the simulation snapshot are left out, so two
peers at the same height answer identically.

Bounds (the same on every peer at the same height: they depend only on the committed ledger
up to the snapshot and on the gas the call has left, never on a cache):

* at most ``MAX_HISTORY`` entries per answer;
* the call without ``start`` answers the oldest versions and fails with SIZE_LIMIT when
  their values exceed ``MAX_HISTORY_BYTES`` (a key rewritten many times with large values
  would otherwise make one call build, and ship to the sandbox worker, up to MAX_HISTORY x
  1 MiB); the contract can ask for fewer -- but a record of 256 KiB rewritten 64 times
  passes the bound with its oldest 64 versions, so its history (and every trace of it)
  failed for good until it could be read by pages:
* a page (``start`` given, :func:`select_history`) starts at the ``start``-th version and
  ends before the version that would take its values past ``MAX_HISTORY_BYTES`` or its
  gas past ``HISTORY_PAGE_GAS`` or half the gas the call has left (the rest is the
  caller's, to use the page: a page taking all of it ended the call OUT_OF_GAS on a
  consortium of 1 M gas, for good), but always holds its first version;
* a read stops once its gas (``node.sandbox.api.history_entry_gas``: per version, per value
  byte and per block read by the block's transaction bytes) passes the gas the call has
  left: the version that passes it is the last one answered, and charging it ends the call
  OUT_OF_GAS. The peer reads at most that one block more than the gas pays for.
* ``values`` False answers the index entries alone, reading no block.

Every value an answer needs is read from its block, and a block is read whole (checksum and
parse: ~1.2 ms for a full 4 MiB block). A key with a long history made every read of it cost a
block per version: ``prescription.trace`` of a prescription with 1000 versions (a patient
toggling consent, a pharmacy locking and releasing) read 1000 blocks -- about a second of the
peer's CPU on a busy ledger, again for every query, for ~21,000 gas. A :class:`ValueCache`
shared by the endorser's simulations keeps the values read (by namespace, key, block and tx:
a committed write never changes, so the answers are the same with it or without it), with
the bytes of their block's transactions, up to ``CACHE_BYTES``; a repeated read of a hot key
reads no block. The gas is that of reading the blocks either way: a block read costs
GAS_HISTORY_BLOCK + its bytes / 512 (see ``node.sandbox.api``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, transaction_pb2

from node.errors import RxError
from node.ledger.statedb import HistoryEntry as LedgerHistoryEntry
from node.sandbox.api import HISTORY_PAGE_GAS, MAX_HISTORY_PAGE_BYTES, history_entry_gas
from node.sandbox.types import SIZE_LIMIT, HistoryEntry

MAX_HISTORY = 1000
MAX_HISTORY_BYTES = MAX_HISTORY_PAGE_BYTES
CACHE_BYTES = 32 * 1024 * 1024  # values (and their keys) a ValueCache holds at most
_ENTRY_OVERHEAD = 256  # bytes counted per cached value besides its key and value (Python objects)


class HistoryLedger(Protocol):
    """What history needs from the ledger."""

    def history(self, ns: str, key: str, limit: int = 0, start: int = 0) -> list[LedgerHistoryEntry]:
        """History index entries, oldest first, from the ``start``-th."""
        ...

    def block(self, number: int) -> block_pb2.Block:
        """A committed block."""
        ...


def block_bytes(block: block_pb2.Block) -> int:
    """The bytes of a block's transactions (what its data hash covers: the same on every
    peer, whatever metadata its copy carries)."""
    return sum(len(e) for e in block.data.envelopes)


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
_Read = tuple[bytes | None, int]  # a value, and the bytes of its block's transactions


class ValueCache:
    """Values of committed writes by (namespace, key, block, tx), least recently used out past
    ``max_bytes`` (see the module docstring). Thread-safe: simulations run concurrently."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._values: OrderedDict[_CacheKey, _Read] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _cost(k: _CacheKey, value: bytes | None) -> int:
        return len(k[0]) + len(k[1]) + len(value or b"") + _ENTRY_OVERHEAD

    def get(self, k: _CacheKey) -> tuple[bool, bytes | None]:
        """(True, value) when cached, else (False, None)."""
        found, (value, _) = self.read(k)
        return found, value

    def read(self, k: _CacheKey) -> tuple[bool, _Read]:
        """(True, (value, block bytes)) when cached, else (False, (None, 0))."""
        with self._lock:
            if k not in self._values:
                return False, (None, 0)
            self._values.move_to_end(k)
            return True, self._values[k]

    def put(self, k: _CacheKey, value: bytes | None, block_bytes: int = 0) -> None:
        """Keep ``value`` and the bytes of its block's transactions (one larger than the
        whole cache is not kept)."""
        cost = self._cost(k, value)
        if cost > self._max_bytes:
            return
        with self._lock:
            if k in self._values:
                return
            self._values[k] = (value, block_bytes)
            self._bytes += cost
            while self._bytes > self._max_bytes:
                old, (old_value, _) = self._values.popitem(last=False)
                self._bytes -= self._cost(old, old_value)

    @property
    def size_bytes(self) -> int:
        """Bytes counted for the values held now."""
        with self._lock:
            return self._bytes


class HistoryReadError(RxError):
    """A history read refused after it read versions (SIZE_LIMIT): ``history_gas`` is their
    gas (``history_entry_gas`` of each, the failing one included: the same on every peer,
    cached or not), which the Context charges before the call ends -- it charged the base
    alone, so a call could have the peer read up to 16 MiB of values (and their blocks) for
    1,000 gas."""

    def __init__(self, reason: str, message: str, history_gas: int) -> None:
        super().__init__(reason, message)
        self.history_gas = history_gas


def select_history(
    index: Iterable[LedgerHistoryEntry],
    read: Callable[[LedgerHistoryEntry], _Read],
    key: str,
    limit: int,
    *,
    max_block: int,
    paged: bool,
    values: bool,
    gas_left: int | None,
) -> list[HistoryEntry]:
    """The answer to a history read from the key's index entries (oldest first, from the
    first one asked for) and ``read`` (an entry's value and its block's transaction bytes),
    under the bounds of the module docstring. Shared by the peer and the contract tests'
    in-memory ledger, so both cut answers alike."""
    budget = gas_left
    if paged:
        budget = HISTORY_PAGE_GAS if budget is None else min(budget // 2, HISTORY_PAGE_GAS)
    out: list[HistoryEntry] = []
    gas = total = 0
    last = -1  # the block of the previous version with a value
    for e in index:
        if e.block > max_block:
            break
        value, nbytes = None, 0
        if values and not e.is_delete:
            value, nbytes = read(e)
        entry = HistoryEntry(e.tx_id, e.block, e.timestamp_ms, e.is_delete, value, nbytes)
        size = len(value or b"")
        step = history_entry_gas(entry, values, last)
        if total + size > MAX_HISTORY_BYTES and not (paged and out):
            # the versions read so far and this one were read: the call pays for them
            raise HistoryReadError(SIZE_LIMIT, (
                f"history of {key[:200]!r}: the value of version {e.block}/{e.tx} alone exceeds "
                f"{MAX_HISTORY_BYTES} bytes; read its versions without values") if paged else (
                f"history of {key[:200]!r}: the values of its first {len(out) + 1} entries "
                f"exceed {MAX_HISTORY_BYTES} bytes; ask for fewer entries, or by pages (start)"),
                gas + step)
        if paged and out and (total + size > MAX_HISTORY_BYTES or (budget is not None and gas + step > budget)):
            break  # the page ends here; the next one starts at this version
        out.append(entry)
        total += size
        gas += step
        if values and not e.is_delete:
            last = e.block
        if len(out) >= limit or (budget is not None and gas > budget):
            break  # the call cannot pay for this answer: charging it ends the call OUT_OF_GAS
    return out


class LedgerHistory:
    """History reader bound to one simulation snapshot height (``cache``: values read by
    earlier readers, shared; None: every value is read from its block)."""

    def __init__(self, ledger: HistoryLedger, max_block: int, cache: ValueCache | None = None) -> None:
        self._ledger = ledger
        self._max_block = max_block
        self._cache = cache

    def __call__(self, namespace: str, key: str, limit: int, start: int | None = None,
                 values: bool = True, gas_left: int | None = None) -> list[HistoryEntry]:
        limit = MAX_HISTORY if limit <= 0 else min(limit, MAX_HISTORY)
        block_no, block = -1, None

        def read(e: LedgerHistoryEntry) -> _Read:
            nonlocal block_no, block
            k = (namespace, key, e.block, e.tx)
            if self._cache is not None:
                cached, got = self._cache.read(k)
                if cached:
                    return got
            # consecutive entries of one block read it once
            if block is None or e.block != block_no:
                block_no, block = e.block, self._ledger.block(e.block)
            got = _written_value(block, e.tx, namespace, key), block_bytes(block)
            if self._cache is not None:
                self._cache.put(k, *got)
            return got

        # Oldest first: the ``limit`` index entries from ``start`` are all this answer can
        # use, so the ledger is asked for no more (a hot key may have a very long history).
        index = self._ledger.history(namespace, key, limit, start or 0)
        return select_history(index, read, key, limit, max_block=self._max_block,
                              paged=start is not None, values=values, gas_left=gas_left)
