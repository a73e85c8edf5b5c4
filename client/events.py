"""Resumable event listening.

:class:`EventListener` follows a peer's block events from a checkpoint: after each block is
handled the next block number is saved (atomically, to a small text file or any
:class:`Checkpoint`), so a restarted listener resumes exactly after the last handled block.
Lost connections are re-opened from the checkpoint, with bounded exponential backoff.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rxchain.v1 import services_pb2, transaction_pb2

from client.errors import RxClientError


@dataclass(frozen=True)
class ContractEventView:
    """A contract event with its decoded payload."""

    block: int
    tx_id: str
    contract: str
    name: str
    payload: Any


@dataclass(frozen=True)
class BlockEvents:
    """What one committed block produced."""

    block: int
    txs: list[tuple[str, str]]  # (tx id, validation code name)
    events: list[ContractEventView]


class Checkpoint(Protocol):
    """Where the next block to read is remembered."""

    def load(self) -> int:
        """Next block to read (0 when nothing was read)."""

    def save(self, next_block: int) -> None:
        """Remember the next block to read."""


class FileCheckpoint:
    """A checkpoint in a text file holding the next block number."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> int:
        """Next block to read."""
        try:
            return int(self.path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError as exc:
            raise RxClientError("BAD_CHECKPOINT", f"{self.path} is not a block number") from exc

    def save(self, next_block: int) -> None:
        """Atomically write the next block number."""
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(f"{next_block}\n")
        os.replace(tmp, self.path)


class MemoryCheckpoint:
    """A checkpoint held in memory (tests, one-shot reads)."""

    def __init__(self, start: int = 0):
        self.next_block = start

    def load(self) -> int:
        """Next block to read."""
        return self.next_block

    def save(self, next_block: int) -> None:
        """Remember the next block."""
        self.next_block = next_block


def to_block_events(msg: services_pb2.EventsResponse) -> BlockEvents:
    """Decode one EventsResponse."""
    txs = [(t.tx_id, transaction_pb2.TxValidationCode.Name(t.code)) for t in msg.txs]
    events = []
    for e in msg.events:
        try:
            payload: Any = json.loads(e.payload) if e.payload else None
        except ValueError:
            payload = e.payload.hex()
        events.append(ContractEventView(msg.block_number, e.tx_id, e.contract, e.name, payload))
    return BlockEvents(msg.block_number, txs, events)


EventSource = Callable[[int, str, bool], Iterator[services_pb2.EventsResponse]]


class EventListener:
    """Follows block events from a checkpoint, reconnecting on SERVICE_UNAVAILABLE."""

    def __init__(self, source: EventSource, checkpoint: Checkpoint, contract: str = "",
                 max_reconnects: int = 5, base_delay_s: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep):
        self._source = source
        self._checkpoint = checkpoint
        self._contract = contract
        self._max_reconnects = max_reconnects
        self._base_delay = base_delay_s
        self._sleep = sleep

    def blocks(self, follow: bool = True) -> Iterator[BlockEvents]:
        """Yield blocks from the checkpoint on; the checkpoint advances after each yield."""
        failures = 0
        while True:
            start = self._checkpoint.load()
            try:
                for msg in self._source(start, self._contract, follow):
                    if msg.block_number < start:
                        continue  # already handled
                    yield to_block_events(msg)
                    self._checkpoint.save(msg.block_number + 1)
                    start = msg.block_number + 1
                    failures = 0
                return
            except RxClientError as exc:
                if exc.reason != "SERVICE_UNAVAILABLE" or failures >= self._max_reconnects:
                    raise
                self._sleep(min(self._base_delay * (2 ** failures), 5.0))
                failures += 1
