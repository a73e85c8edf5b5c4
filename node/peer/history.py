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
"""

from __future__ import annotations

from typing import Protocol

from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, transaction_pb2

from node.errors import RxError
from node.ledger.statedb import HistoryEntry as LedgerHistoryEntry
from node.sandbox.types import SIZE_LIMIT, HistoryEntry

MAX_HISTORY = 1000
MAX_HISTORY_BYTES = 16 * 1024 * 1024


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


class LedgerHistory:
    """History reader bound to one simulation snapshot height."""

    def __init__(self, ledger: HistoryLedger, max_block: int) -> None:
        self._ledger = ledger
        self._max_block = max_block

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
                if block is None or e.block != block_no:
                    block_no, block = e.block, self._ledger.block(e.block)
                value = _written_value(block, e.tx, namespace, key)
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
