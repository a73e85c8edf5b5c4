"""Recently ordered tx ids around a Raft leader change (idempotent resubmission).

When a leader is paused or dies, the envelopes it held have no known outcome: the block
holding them may still be committed by the new leader. Clients (the peers' broadcast
client) then send them again; ordering them a second time would put the same tx in two
blocks (peers mark the copy DUPLICATE_TXID, but it costs a block slot and breaks "every
accepted envelope in exactly one block").

:class:`RecentTxIndex` answers "is this tx id already in a committed block?" during a
window of ``window_s`` seconds after this node observes a new Raft leader (or its first
one), from the blocks in its own block store: the ``lookback_blocks`` blocks before the
change and every block stored since. Outside such windows it costs one ``leader_id()``
read per lookup and holds nothing; inside, each stored block's envelopes are parsed once.
It never answers wrongly (a hit is a committed block); a miss is not a proof, e.g. a
resubmission racing the new leader's apply of the old term's blocks is still ordered and
then marked DUPLICATE_TXID by the peers, as before.

Blocks are parsed outside the lock by one lookup at a time, at most ``max_blocks_per_call``
per lookup (a follower that stored a long catch-up during the window spreads the work over
the lookups that follow); the other lookups wait for that pass and then answer from what is
indexed. A pass that outlasts ``wait_s`` is waited for once: later lookups (e.g. the rest of
a batch) do not wait for it again, and a new window (leader change) starts its own pass.
Only blocks parsed to the end count as indexed: a read error is logged, the lookup answers
from what is indexed and the next lookup reads on from the failed block. No broadcast
handler is held up for long by another's indexing.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, transaction_pb2

_log = logging.getLogger(__name__)


class Blocks(Protocol):
    """Read access to the orderer's block store."""

    def height(self) -> int:
        """Number of stored blocks."""
        ...

    def get(self, number: int) -> block_pb2.Block:
        """Block ``number``."""
        ...


def tx_id_of(raw: bytes) -> str:
    """The tx id of a serialized envelope ('' if it does not parse)."""
    try:
        env = transaction_pb2.Envelope.FromString(raw)
        tx = transaction_pb2.Transaction.FromString(env.payload)
        return str(transaction_pb2.TxHeader.FromString(tx.header).tx_id)
    except DecodeError:
        return ""


class RecentTxIndex:
    """tx id -> (block number, envelope digest) of blocks stored around the last leader
    change. A lookup names the envelope too: only a byte-identical resubmission is answered
    "already ordered" (another envelope claiming a stored tx id is ordered, and the peers
    mark it BAD_TXID or DUPLICATE_TXID)."""

    def __init__(
        self,
        blocks: Blocks,
        leader_id: Callable[[], int],
        *,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = 30.0,
        lookback_blocks: int = 32,
        max_blocks_per_call: int = 64,
        wait_s: float = 0.5,
    ) -> None:
        self._blocks = blocks
        self._leader_id = leader_id
        self._clock = clock
        self._window_s = window_s
        self._lookback = lookback_blocks
        self._max_blocks = max(1, max_blocks_per_call)
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._indexed = threading.Condition(self._lock)  # an indexing pass ended
        # The pass running now (outside the lock), as (epoch, serial), or None; a pass whose
        # wait timed out once is not waited for again.
        self._pass: tuple[int, int] | None = None
        self._serial = 0
        self._gave_up_on: tuple[int, int] | None = None
        self._epoch = 0  # bumped whenever the index is dropped: late results are discarded
        self._leader = 0
        self._until = -1.0
        self._next = 0  # next block number to index
        self._index: dict[str, tuple[int, bytes]] = {}

    def __len__(self) -> int:
        """Tx ids held now."""
        with self._lock:
            return len(self._index)

    def active(self) -> bool:
        """Whether a window is open (after noticing a leader change)."""
        leader = self._leader_id()
        now = self._clock()
        with self._lock:
            if leader and leader != self._leader:
                self._leader = leader
                self._until = now + self._window_s
                # Rebuilt from the lookback on every change: the index never holds more than
                # the blocks since the last change plus ``lookback_blocks``.
                self._index = {}
                self._epoch += 1
                self._next = max(1, self._blocks.height() - self._lookback)
            elif self._until >= 0 and now > self._until:
                self._until = -1.0
                self._index = {}
                self._epoch += 1
            return self._until >= 0

    def lookup(self, tx_id: str, envelope: bytes) -> int | None:
        """Block number holding ``envelope`` (whose tx id is ``tx_id``) if it is in a recently
        stored block (window open); None for any other envelope."""
        if not tx_id or not self.active():
            return None
        self._index_new_blocks()
        with self._lock:
            hit = self._index.get(tx_id)
        if hit is None or hit[1] != hashlib.sha256(envelope).digest():
            return None
        return hit[0]

    def _index_new_blocks(self) -> None:
        """Index up to ``max_blocks_per_call`` blocks stored since the last pass, parsing them
        outside the lock; if another lookup's pass of this window is running, wait for it
        (at most ``wait_s``, and only once per pass)."""
        deadline = time.monotonic() + self._wait_s
        with self._lock:
            while self._pass is not None and self._pass[0] == self._epoch:
                running = self._pass
                left = deadline - time.monotonic()
                if running == self._gave_up_on or left <= 0:
                    # It outlasted one wait: answer from what is indexed (a miss is not a
                    # proof), and let the lookups that follow not wait for it again.
                    self._gave_up_on = running
                    return
                self._indexed.wait(left)
            start = self._next
            end = min(self._blocks.height(), start + self._max_blocks)
            if start >= end:
                return
            self._serial += 1
            mine = self._pass = (self._epoch, self._serial)
        found: dict[str, tuple[int, bytes]] = {}
        done = start  # blocks before this one are parsed to the end (only get() can fail)
        try:
            for number in range(start, end):
                for raw in self._blocks.get(number).data.envelopes:
                    tx = tx_id_of(raw)
                    if tx and tx not in found:
                        found[tx] = (number, hashlib.sha256(raw).digest())
                done = number + 1
        except Exception as exc:  # noqa: BLE001 - the index only saves a slot: never fail a broadcast
            _log.warning("event=recent_index_read_failed block=%d error=%r", done, exc)
        finally:
            with self._lock:
                if self._pass == mine:
                    self._pass = None
                if mine[0] == self._epoch:  # not dropped meanwhile (one pass per epoch at a time)
                    for tx, where in found.items():
                        self._index.setdefault(tx, where)
                    self._next = done
                self._indexed.notify_all()
