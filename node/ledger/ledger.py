"""A peer's ledger: the block store (the truth) plus the derived LevelDB state.

Layout under ``directory``: ``blocks/`` (:class:`BlockStore`) and ``state/`` (:class:`StateDB`).

Commit protocol (:meth:`Ledger.commit`), for block ``n`` with its validation codes:

1. compute ``state_hash(n)`` from the valid writes and store it, with the codes, in the
   block copy's metadata;
2. append that copy to the block store and fsync it;
3. write ONE synced LevelDB batch: state writes, history, tx-id index, savepoint ``n``.

Recovery on open: the savepoint says which block was last applied to the state. If the
block store is ahead (crash between 2 and 3), the missing blocks are replayed from the
block store: their validation codes are TAKEN FROM THE STORED COPY (they were computed by
this peer's validator before step 2, and validation is deterministic, so recomputing them
would give the same result -- but it would need the contract definitions and configs of
that time, which the stored codes make unnecessary), the writes are re-derived from the
envelopes (:func:`node.ledger.txwrites.outcomes_from_block`), and the recomputed state hash
must equal the stored ``metadata.state_hash`` (else the start is refused as
LEDGER_CORRUPT). A block is never applied twice because StateDB refuses any block but
``savepoint + 1`` and the savepoint moves in the same batch as the writes. If the state is
AHEAD of the block store (the block store lost fsynced data), the start is refused
(STATE_MISMATCH): the operator must restore or re-sync. The block store is opened with
``keep_height = savepoint + 1``, so damage inside an applied block is never truncated away
as a torn tail (STATE_MISMATCH, nothing touched). The savepoint's state hash must equal the
``metadata.state_hash`` stored with that block (one block read), so a state database of
another network or peer, or a stale copy, is refused (STATE_MISMATCH) even when it is at
the block store's height and nothing would be replayed. A missing state database is rebuilt
by replaying the whole block store.

Start-up check (``verify_on_open``, default on): every record's checksum, the data hashes
and the header hash chain are checked before anything else, so tampered block files are
refused with a message naming the first bad block.

Crash injection for tests: ``crash_hook(point, block_number)`` is called at
``after_blockstore``, ``mid_batch`` (batch built, not written) and ``after_batch``;
:func:`env_crash_hook` builds one from ``RXCHAIN_CRASH_AT=point:block`` that ends the
process with ``os._exit(137)`` (what kill -9 leaves behind, minus the signal).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rxchain.v1 import block_pb2, config_pb2, transaction_pb2

from node.crypto.canonical import block_header_hash
from node.ledger.blockstore import BlockStore
from node.ledger.errors import LedgerError
from node.ledger.statedb import (
    ZERO_HASH,
    HistoryEntry,
    Savepoint,
    StateDB,
    StateSnapshot,
    TxLocation,
    TxOutcome,
    VersionedValue,
    next_state_hash,
)
from node.ledger.txwrites import CONFIG_KEY, SYSTEM_NS, outcomes_from_block

_log = logging.getLogger(__name__)

CrashHook = Callable[[str, int], None]
CRASH_POINTS = ("after_blockstore", "mid_batch", "after_batch")


def env_crash_hook(environ: Mapping[str, str]) -> CrashHook | None:
    """A crash hook from ``RXCHAIN_CRASH_AT=point:block`` in ``environ`` (None if unset)."""
    spec = environ.get("RXCHAIN_CRASH_AT", "")
    if not spec:
        return None
    point, _, number = spec.partition(":")
    if point not in CRASH_POINTS or not number.isdigit():
        raise LedgerError("BAD_CONFIG", f"RXCHAIN_CRASH_AT={spec!r}: want <point>:<block>")
    at = int(number)

    def hook(where: str, block: int) -> None:
        if where == point and block == at:
            os._exit(137)

    return hook


@dataclass(frozen=True)
class CommitResult:
    """What one commit produced."""

    number: int
    state_hash: bytes
    block_hash: bytes


class Ledger:
    """Block store + state with an atomic, crash-safe commit (see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: bool = True,
        crash_hook: CrashHook | None = None,
        verify_on_open: bool = True,
    ) -> None:
        self._dir = os.fspath(directory)
        self._crash = crash_hook
        self._broken: str | None = None
        self._lock = threading.Lock()
        self._committed = threading.Condition(self._lock)
        # The state first: its savepoint tells the block store which blocks it may never
        # cut off as a torn tail (they are applied already).
        self.state = StateDB(os.path.join(self._dir, "state"), sync=fsync)
        try:
            sp = self.state.savepoint()
            self.blocks = BlockStore(
                os.path.join(self._dir, "blocks"), fsync=fsync,
                keep_height=0 if sp is None else sp.block + 1,
            )
        except BaseException:
            self.state.close()
            raise
        try:
            if verify_on_open:
                problem = self.blocks.verify()
                if problem is not None:
                    raise LedgerError(
                        problem.reason,
                        f"{self._dir}: block {problem.number} is damaged or tampered with "
                        f"({problem.message}); refusing to start. Run `python -m node.ledger "
                        "verify` for details, then restore the block files or re-sync",
                        block=problem.number,
                    )
            self._recover(sp)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ recovery

    def _recover(self, sp: Savepoint | None) -> None:
        """Check the state ``sp`` (its savepoint) against the block store, then replay the
        blocks it has not applied (module docstring)."""
        applied = -1 if sp is None else sp.block
        height = self.blocks.height()
        if applied >= height:
            raise LedgerError(
                "STATE_MISMATCH",
                f"{self._dir}: state is at block {applied} but the block store holds only "
                f"{height} blocks; restore the block store or delete the state to rebuild it",
            )
        if sp is not None:
            # The state must be the one this block store produced: a state database of another
            # network or peer, or a stale copy, would otherwise be used as is when it happens
            # to be at the block store's height (nothing to replay, nothing compared).
            stored = self.blocks.get(sp.block).metadata.state_hash
            if stored and stored != sp.state_hash:
                raise LedgerError(
                    "STATE_MISMATCH",
                    f"{self._dir}: the state's savepoint hash after block {sp.block} "
                    f"({sp.state_hash.hex()[:16]}) is not the one stored with that block "
                    f"({stored.hex()[:16]}): the state database does not belong to this block "
                    "store; delete it to rebuild it by replay",
                    block=sp.block,
                )
        prev_hash = ZERO_HASH if sp is None else sp.state_hash
        for n in range(applied + 1, height):
            block = self.blocks.get(n)
            try:
                outcomes = outcomes_from_block(block)
            except ValueError as exc:
                raise LedgerError("LEDGER_CORRUPT", f"replay of block {n}: {exc}") from exc
            state_hash = next_state_hash(prev_hash, n, outcomes)
            if block.metadata.state_hash and block.metadata.state_hash != state_hash:
                raise LedgerError(
                    "LEDGER_CORRUPT",
                    f"replay of block {n}: state hash {state_hash.hex()[:16]} differs from the "
                    f"stored {block.metadata.state_hash.hex()[:16]}",
                )
            _log.info("event=block_replayed block=%d savepoint=%d: replaying the block into the state",
                      n, applied)
            self.state.apply_block(n, outcomes, state_hash)
            prev_hash = state_hash
        self._height = height
        self._state_hash = prev_hash

    # ------------------------------------------------------------------ commit

    def commit(self, block: block_pb2.Block, outcomes: Sequence[TxOutcome]) -> CommitResult:
        """Store ``block`` (codes already in its metadata) and apply ``outcomes`` atomically.

        ``outcomes`` must be what :func:`outcomes_from_block` derives from the block (the
        validator builds them while validating, which avoids re-parsing).
        """
        with self._lock:
            number = block.header.number
            codes = block.metadata.validation_codes
            if len(codes) != len(block.data.envelopes) or len(outcomes) != len(codes):
                raise LedgerError(
                    "BAD_BLOCK", f"block {number}: codes/outcomes do not match the tx count"
                )
            state_hash = next_state_hash(self._state_hash, number, outcomes)
            block.metadata.state_hash = state_hash
            if self._broken is not None:
                raise LedgerError(
                    "STATE_MISMATCH",
                    f"{self._dir}: an earlier commit failed half-way ({self._broken}); "
                    "restart the node to replay the block store into the state",
                )
            self.blocks.append(block)
            crash = self._crash
            if crash is not None:
                crash("after_blockstore", number)
            try:
                self.state.apply_block(
                    number,
                    outcomes,
                    state_hash,
                    before_write=None if crash is None else (lambda: crash("mid_batch", number)),
                )
            except BaseException as exc:
                # The block is stored but its state is not: only a restart (replay) heals it.
                self._broken = f"block {number}: {exc}"
                raise
            if crash is not None:
                crash("after_batch", number)
            self._height = number + 1
            self._state_hash = state_hash
            self._committed.notify_all()
            # The store hashed the header on append (it is the chain's last hash now).
            return CommitResult(number, state_hash, self.blocks.last_hash())

    def commit_genesis(self, genesis: block_pb2.Block) -> CommitResult:
        """Commit block 0 (no validation: the genesis block is trusted by its hash)."""
        if genesis.header.number != 0:
            raise LedgerError("BAD_BLOCK", "genesis block must be number 0")
        block = block_pb2.Block()
        block.CopyFrom(genesis)
        del block.metadata.validation_codes[:]
        block.metadata.validation_codes.extend([transaction_pb2.VALID] * len(block.data.envelopes))
        return self.commit(block, outcomes_from_block(block))

    def ensure_genesis(self, genesis: block_pb2.Block) -> None:
        """Commit ``genesis`` on an empty ledger; otherwise check block 0 is that genesis.

        Raises LedgerError(GENESIS_MISMATCH) when the ledger belongs to another consortium.
        """
        if self.height() == 0:
            self.commit_genesis(genesis)
            return
        if block_header_hash(self.blocks.get(0).header) != block_header_hash(genesis.header):
            raise LedgerError(
                "GENESIS_MISMATCH",
                f"{self._dir}: block 0 is not the configured genesis block "
                "(a ledger of another network?)",
                block=0,
            )

    # ------------------------------------------------------------------ reads

    def height(self) -> int:
        """Number of committed blocks (state and block store agree after open)."""
        return self._height

    def state_hash(self) -> bytes:
        """State hash after the last committed block (32 zero bytes before genesis)."""
        return self._state_hash

    def savepoint(self) -> Savepoint | None:
        """The state's savepoint."""
        return self.state.savepoint()

    def wait_for_height(self, height: int, timeout_s: float) -> bool:
        """Block until ``height() >= height`` (state applied) or the timeout passes."""
        with self._committed:
            return self._committed.wait_for(lambda: self._height >= height, timeout=timeout_s)

    def block(self, number: int) -> block_pb2.Block:
        """Committed block ``number`` (with this peer's validation codes and state hash)."""
        return self.blocks.get(number)

    def get(self, ns: str, key: str) -> VersionedValue | None:
        """Committed state value."""
        return self.state.get(ns, key)

    def snapshot(self) -> StateSnapshot:
        """Consistent read snapshot for simulation."""
        return self.state.snapshot()

    def tx_location(self, tx_id: str) -> TxLocation | None:
        """Block, index and validation code of a committed tx id."""
        return self.state.tx_location(tx_id)

    def history(self, ns: str, key: str, limit: int = 0, start: int = 0) -> list[HistoryEntry]:
        """Every committed write of a key, oldest first, from the ``start``-th on."""
        return self.state.history(ns, key, limit, start)

    def current_config(self) -> config_pb2.ConsortiumConfig | None:
        """The consortium configuration in force (from state), None before genesis."""
        raw = self.current_config_bytes()
        return None if raw is None else config_pb2.ConsortiumConfig.FromString(raw)

    def current_config_bytes(self) -> bytes | None:
        """The serialized consortium configuration in force, None before genesis."""
        vv = self.state.get(SYSTEM_NS, CONFIG_KEY)
        return None if vv is None else vv.value

    def close(self) -> None:
        """Close the block store and the state (idempotent)."""
        self.blocks.close()
        self.state.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
