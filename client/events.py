"""Resumable event listening.

:class:`EventListener` follows a peer's block events from a checkpoint: after each block is
handled the next block number is saved (atomically and durably -- a fresh temporary file,
fsync, rename, fsync of the directory -- to a small text file or any :class:`Checkpoint`), so
a restarted listener, even after a power loss, resumes exactly after the last handled block.
Lost connections are re-opened from the checkpoint, with bounded exponential backoff. The
peer sends every block in order (a contract filter only thins the events), so a block number
past the expected one is refused (``EVENTS_GAP``) rather than silently skipping blocks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rxchain.v1 import services_pb2, transaction_pb2

from client.errors import RxClientError
from node.fsutil import fsync_dir

_log = logging.getLogger(__name__)

MAX_BLOCK = 2**63 - 1
_CHECKPOINT_MAX_BYTES = 64


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
        """Next block to read (0 without a file); BAD_CHECKPOINT for anything but a small
        regular file holding one block number in 0..2**63-1."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block us
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise RxClientError("BAD_CHECKPOINT", f"{self.path}: {exc.strerror}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RxClientError("BAD_CHECKPOINT", f"{self.path} is not a regular file")
            raw = os.read(fd, _CHECKPOINT_MAX_BYTES + 1)
        except OSError as exc:
            raise RxClientError("BAD_CHECKPOINT", f"{self.path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        text = raw.decode("ascii", errors="replace").strip()
        if len(raw) > _CHECKPOINT_MAX_BYTES or not (text == "" or text.isdigit()) or int(text or 0) > MAX_BLOCK:
            raise RxClientError("BAD_CHECKPOINT", f"{self.path} is not a block number")
        return int(text or 0)

    def save(self, next_block: int) -> None:
        """Atomically and durably write the next block number."""
        if not 0 <= next_block <= MAX_BLOCK:
            raise RxClientError("BAD_CHECKPOINT", f"block number {next_block} out of range")
        directory = self.path.parent
        try:  # keep the mode of the file it replaces (mkstemp's is 0600: another reader, e.g. a
            mode: int | None = stat.S_IMODE(os.stat(self.path).st_mode)  # monitor, keeps access)
        except OSError:
            mode = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        except OSError as exc:  # named as the checkpoint, not as the temporary file beside it
            raise RxClientError("BAD_CHECKPOINT", f"cannot write {self.path}: {exc.strerror}") from None
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            with os.fdopen(fd, "w") as f:
                f.write(f"{next_block}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(directory)


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


def validation_code_name(code: int) -> str:
    """The name of a transaction validation code; ``UNKNOWN_<code>`` for one this release does
    not know (a peer of a later release, with a code added since) -- never VALID, the one code
    of an applied transaction, which every release knows: a reader takes such a transaction as
    not applied, as it takes every code but VALID, and reads on (it raised ValueError, failing
    the whole read, an inbox or claim report, until the client was upgraded)."""
    try:
        return transaction_pb2.TxValidationCode.Name(code)  # type: ignore[arg-type]  # any int
    except ValueError:
        return f"UNKNOWN_{code}"


def to_block_events(msg: services_pb2.EventsResponse) -> BlockEvents:
    """Decode one EventsResponse (a validation code this release does not know:
    :func:`validation_code_name`)."""
    txs = [(t.tx_id, validation_code_name(t.code)) for t in msg.txs]
    events = []
    for e in msg.events:
        try:
            payload: Any = json.loads(e.payload) if e.payload else None
        except (ValueError, RecursionError):  # not JSON, or nested beyond the parser's depth
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
                    if msg.block_number > start:
                        raise RxClientError("EVENTS_GAP", f"the peer sent block {msg.block_number} "
                                            f"while block {start} was expected")
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


def blocks_from(source: EventSource, contract: str, start: int) -> Generator[BlockEvents, None, None]:
    """The blocks ``start`` .. the peer's height, once each, in order (``contract``: only its
    events), for reads that go on from a checkpoint (claim report, inbox). The stream is
    opened at the block before ``start``: the peer sends it iff ``start`` is at most its
    height, so a start beyond it -- a checkpoint of another ledger, or a peer behind the one
    read last -- is refused START_BEYOND_HEIGHT (retry later, or on another peer) rather than
    read as "nothing new" until the ledger grows past it and the blocks below are skipped."""
    reached = start == 0
    listener = EventListener(source, MemoryCheckpoint(max(start - 1, 0)), contract=contract)
    for b in listener.blocks(follow=False):
        if b.block < start:
            reached = True
            continue
        yield b
    if not reached:
        raise RxClientError("START_BEYOND_HEIGHT", f"the peer has not committed block {start - 1}: block "
                            f"{start} is beyond its height (a checkpoint of another ledger, or a peer "
                            "behind); nothing read")


class BlockRange:
    """The blocks of :func:`blocks_from`, at most ``max_blocks`` of them, and whether a block
    follows them (:attr:`more`, known once the iteration ended without the consumer stopping
    it): asked for by reading one block past the limit (the peek) once the range was read. A
    failure reading that one block does not fail a read that had finished -- the blocks of the
    range are what it read, and :attr:`more` is True (whether a block follows is unknown, and
    going on from the block after the range is always safe: the next read finds it or nothing);
    it is logged. A failure reading a block within the limit is raised as ever. A peer that
    stalls is such a failure, TIMEOUT, once it sent no block for the gateway's idle bound
    (:attr:`client.gateway.Gateway.events_idle_s`, on streams that do not follow only); a
    block with a validation code this release does not know is no failure
    (:func:`validation_code_name`)."""

    def __init__(self, source: EventSource, contract: str, start: int, max_blocks: int) -> None:
        self._source = source
        self._contract = contract
        self._start = start
        self._max_blocks = max_blocks
        self.more = False

    def __iter__(self) -> Iterator[BlockEvents]:
        stream = blocks_from(self._source, self._contract, self._start)
        try:
            last = None
            for _ in range(self._max_blocks):
                b = next(stream, None)
                if b is None:
                    return  # nothing follows
                yield b
                last = b.block
            try:
                self.more = next(stream, None) is not None
            except RxClientError as exc:
                self.more = True
                _log.info("event=peek_block_unread contract=%s block=%s reason=%s error=%r: whether a block "
                          "follows the range read is unknown; answered with it as read, and more (go on "
                          "from the next block)", self._contract, None if last is None else last + 1,
                          exc.reason, str(exc))
        finally:
            stream.close()
