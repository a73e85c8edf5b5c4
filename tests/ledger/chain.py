"""Helpers for ledger tests: chained blocks without signatures (the block store does not
check signatures; the validator tests build signed blocks), and a state database's content."""

from __future__ import annotations

from pathlib import Path

import plyvel
from rxchain.v1 import block_pb2

from node.crypto.canonical import GENESIS_PREVIOUS_HASH, block_data_hash, block_header_hash
from node.ledger.blockstore import BlockStore, Location


def make_chain(n: int, start_prev: bytes = GENESIS_PREVIOUS_HASH, first: int = 0,
               payload_size: int = 50) -> list[block_pb2.Block]:
    blocks = []
    prev = start_prev
    for i in range(first, first + n):
        envs = [bytes([i % 256, j]) * payload_size for j in range(3)]
        b = block_pb2.Block()
        b.header.number = i
        b.header.previous_hash = prev
        b.header.data_hash = block_data_hash(envs)
        b.data.envelopes.extend(envs)
        prev = block_header_hash(b.header)
        blocks.append(b)
    return blocks


def dump_state(ledger_dir: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the state database of the (closed) ledger in ``ledger_dir``."""
    db = plyvel.DB(str(ledger_dir / "state"))
    try:
        return list(db.iterator())
    finally:
        db.close()


def store_blocks(path: Path, blocks: list[block_pb2.Block]) -> list[Location]:
    """Append ``blocks`` to the block store at ``path`` (fsync off) and close it; the
    location of each record (offsets for the tests that corrupt one)."""
    with BlockStore(path, fsync=False) as bs:
        for b in blocks:
            bs.append(b)
        return list(bs._locs)
