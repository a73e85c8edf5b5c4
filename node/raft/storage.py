"""The Storage protocol the Raft core reads from, and an in-memory implementation.

The core only *reads* storage; the application writes it while handling a ``Ready``
(append entries, set hard state, apply snapshot) and drives compaction itself
(``create_snapshot`` then ``compact``).

Index model (as in etcd-raft): storage holds a contiguous run of entries
``[first_index(), last_index()]`` preceded by the snapshot position
``snapshot().meta.index == first_index() - 1`` whose term ``term(first_index() - 1)`` is
still answerable. An empty, fresh storage has ``first_index() == 1`` and
``last_index() == 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from node.raft.errors import Compacted, RaftError, SnapshotOutOfDate, Unavailable
from node.raft.types import (
    EMPTY_HARD_STATE,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMeta,
)


class Storage(Protocol):
    """Read interface used by the core. Implementations: MemoryStorage, the orderer's WAL."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """Persisted hard state and the membership as of the last applied conf change
        known to storage (the snapshot's ConfState for a fresh or compacted store)."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries with index in ``[lo, hi)``. With ``max_bytes``, stop once the total
        ``Entry.size()`` would exceed it, but always return at least one entry.
        Raise Compacted if ``lo <= snapshot index``, Unavailable if ``hi > last_index()+1``."""
        ...

    def term(self, index: int) -> int:
        """Term of entry ``index`` for ``first_index()-1 <= index <= last_index()``.
        Raise Compacted below that range, Unavailable above it."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still available (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry (snapshot index when there are no entries)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (may raise SnapshotTemporarilyUnavailable)."""
        ...


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """Longest prefix of ``entries`` within ``max_bytes`` (at least one entry)."""
    if max_bytes is None or len(entries) <= 1:
        return entries
    total = entries[0].size()
    for i in range(1, len(entries)):
        total += entries[i].size()
        if total > max_bytes:
            return entries[:i]
    return entries


class MemoryStorage:
    """Storage kept in memory. Used by tests and the simulator (which adds crash loss).

    ``_ents[0]`` is a dummy entry holding the snapshot position (index, term); real entries
    follow it contiguously.
    """

    def __init__(self, conf_state: ConfState | None = None) -> None:
        self._hard_state = EMPTY_HARD_STATE
        self._snapshot = Snapshot(SnapshotMeta(0, 0, conf_state or ConfState()), b"")
        self._ents: list[Entry] = [Entry(0, 0)]

    # -- Storage protocol -------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.meta.conf_state

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise Compacted(f"entries from {lo}, snapshot at {offset}")
        if hi > self.last_index() + 1:
            raise Unavailable(f"entries to {hi - 1}, last is {self.last_index()}")
        if lo > hi:
            raise RaftError("bad_range", f"lo {lo} > hi {hi}")
        return limit_size(self._ents[lo - offset : hi - offset], max_bytes)

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise Compacted(f"term of {index}, snapshot at {offset}")
        if index - offset >= len(self._ents):
            raise Unavailable(f"term of {index}, last is {self.last_index()}")
        return self._ents[index - offset].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- writes (by the application while handling Ready) -------------------------------
    @property
    def hard_state(self) -> HardState:
        """The stored hard state."""
        return self._hard_state

    def set_hard_state(self, hs: HardState) -> None:
        """Replace the stored hard state."""
        self._hard_state = hs

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace all state with a snapshot received from the leader."""
        if snap.meta.index <= self._snapshot.meta.index:
            raise SnapshotOutOfDate(
                f"snapshot {snap.meta.index} not newer than {self._snapshot.meta.index}"
            )
        self._snapshot = snap
        self._ents = [Entry(snap.meta.term, snap.meta.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the application state at applied ``index``."""
        if index <= self._snapshot.meta.index:
            raise SnapshotOutOfDate(f"{index} not newer than {self._snapshot.meta.index}")
        if index > self.last_index():
            raise Unavailable(f"snapshot {index} beyond last index {self.last_index()}")
        offset = self._ents[0].index
        meta = SnapshotMeta(index, self._ents[index - offset].term, conf_state)
        self._snapshot = Snapshot(meta, data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Discard entries up to and including ``index`` (keeps its term as the dummy).
        Compacting to at most the current snapshot index is a no-op."""
        offset = self._ents[0].index
        if index <= offset:
            return
        if index > self.last_index():
            raise Unavailable(f"compact {index} beyond last index {self.last_index()}")
        i = index - offset
        self._ents = [Entry(self._ents[i].term, index), *self._ents[i + 1 :]]

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries; an entry at an existing index truncates the tail from there."""
        if not entries:
            return
        first = self.first_index()
        last = entries[-1].index
        if last < first:
            return  # all already compacted
        ents = list(entries)
        if first > ents[0].index:
            ents = ents[first - ents[0].index :]
        offset = ents[0].index - self._ents[0].index
        if offset > len(self._ents):
            raise Unavailable(
                f"append at {ents[0].index} leaves a gap after {self.last_index()}"
            )
        self._ents = self._ents[:offset] + ents

    def bootstrap(self, voters: Sequence[int]) -> None:
        """Write the founding membership entries (see node.raft.bootstrap); fresh store only."""
        from node.raft.bootstrap import bootstrap_entries

        if self.last_index() != 0 or self._hard_state != EMPTY_HARD_STATE:
            raise RaftError("storage_not_empty", "bootstrap needs a fresh storage")
        ents, hs = bootstrap_entries(voters)
        self.append(ents)
        self.set_hard_state(hs)

    def clone(self) -> MemoryStorage:
        """Independent copy (used by the simulator to model durable vs. volatile state)."""
        other = MemoryStorage()
        other._hard_state = self._hard_state
        other._snapshot = self._snapshot
        other._ents = list(self._ents)
        return other
