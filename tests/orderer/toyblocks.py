"""Hash-chained toy blocks for block-store and Deliver tests."""

from __future__ import annotations

from pathlib import Path

from rxchain.v1 import block_pb2

from node.crypto.canonical import GENESIS_PREVIOUS_HASH, block_data_hash, block_header_hash
from node.ledger.blockstore import BlockStore


def toy_block(number: int, previous_hash: bytes) -> block_pb2.Block:
    """Block ``number`` holding one envelope ``env-<number>``, chained to ``previous_hash``."""
    b = block_pb2.Block()
    b.header.number = number
    b.header.previous_hash = previous_hash
    b.data.envelopes.append(b"env-%d" % number)
    b.header.data_hash = block_data_hash(list(b.data.envelopes))
    return b


def append_toy_blocks(store: BlockStore, count: int, start: int = 0,
                      previous_hash: bytes = GENESIS_PREVIOUS_HASH) -> bytes:
    """Append toy blocks ``start .. start + count - 1``; returns the last header hash."""
    prev = previous_hash
    for n in range(start, start + count):
        b = toy_block(n, prev)
        store.append(b)
        prev = block_header_hash(b.header)
    return prev


def toy_block_store(directory: Path, count: int) -> BlockStore:
    """An unsynced block store holding toy blocks 0 .. count - 1."""
    store = BlockStore(directory, fsync=False)
    append_toy_blocks(store, count)
    return store
