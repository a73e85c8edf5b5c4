"""DurableStorage: the core's Storage protocol backed by the WAL and snapshot files.

Reads are served from memory (a MemoryStorage holding the entries above the last
compaction point); writes go to the WAL (fsync) before memory is updated, so memory never
runs ahead of the disk. Layout under ``directory``: ``wal/`` (see ``node.raft.wal``) and
``snap/`` (see ``node.raft.snapshotter``).

Recovery: the WAL replay yields the hard state (with the lost-state ban,
``HardState.lost_until``, if one holds), the position of the last recorded
snapshot and the entries after it; the snapshot file at that position is loaded (it was
written before its WAL marker, so it exists unless the disk lost it, which is fatal).
Snapshot files newer than the last marker (a crash between the two writes) are ignored,
and deleted when the WAL records the next snapshot; older files are pruned only then too,
never the one the WAL records.

A WAL without any segment is a brand-new node only if nothing else shows history: when
``snap/`` holds snapshot files (or the caller names other evidence, ``prior_history``, such
as an orderer's block store past its genesis block) the WAL was lost, and the start is
refused with :class:`~node.raft.errors.RaftStateLost` before anything is written (so the
refusal repeats on every start). Such a node must not vote again under its old id: remove
it from the Raft membership and re-add it as a new member with an empty data directory.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

from node.raft.errors import RaftError, RaftStateLost
from node.raft.snapshotter import Snapshotter
from node.raft.storage import MemoryStorage
from node.raft.types import ConfState, Entry, HardState, Snapshot
from node.raft.wal import WAL, SnapshotMark, has_segments

_log = logging.getLogger(__name__)


class DurableStorage:
    """Storage for one Raft node on local disk (implements ``node.raft.storage.Storage``).

    ``bootstrap_conf_state`` is the membership used when there is no snapshot yet (the
    orderer set of the genesis configuration). ``keep_entries`` entries below a new
    snapshot stay in memory and in the WAL so slightly lagging followers get entries
    rather than a snapshot. ``prior_history`` (if given) describes other evidence that this
    node has already taken part in the log; with it, a missing WAL is refused (see the
    module docstring) just as when snapshot files are found without one.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        bootstrap_conf_state: ConfState | None = None,
        fsync: bool = True,
        segment_bytes: int = 64 * 1024 * 1024,
        keep_entries: int = 16,
        fsync_observer: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        prior_history: str | None = None,
    ) -> None:
        base = os.fspath(directory)
        self._keep_entries = keep_entries
        self._snapper = Snapshotter(os.path.join(base, "snap"), fsync=fsync)
        wal_dir = os.path.join(base, "wal")
        if not has_segments(wal_dir):
            evidence = []
            snaps = self._snapper.positions()
            if snaps:
                evidence.append(
                    f"{base}/snap holds {len(snaps)} snapshot file(s) (the newest at Raft "
                    f"index {snaps[0][0]}, term {snaps[0][1]})"
                )
            if prior_history:
                evidence.append(prior_history)
            if evidence:
                raise RaftStateLost(
                    f"{wal_dir} has no WAL segment but {' and '.join(evidence)}: this node "
                    "lost its Raft hard state (term, vote) and log, and starting it as a "
                    "blank voter could lose committed entries. Refusing to start. Recovery: "
                    "remove this node from the Raft membership, then re-add it as a new "
                    "member with an empty data directory"
                )
        self._wal = WAL(
            wal_dir,
            segment_bytes=segment_bytes,
            fsync=fsync,
            fsync_observer=fsync_observer,
            clock=clock,
        )
        rec = self._wal.recovered
        self._mem = MemoryStorage(bootstrap_conf_state)
        if rec.snapshot.index:
            snap = self._snapper.load(rec.snapshot.index, rec.snapshot.term)
            if snap is None:
                raise RaftError(
                    "snapshot_missing",
                    f"WAL refers to snapshot index {rec.snapshot.index} term "
                    f"{rec.snapshot.term} but {base}/snap has no valid file for it",
                )
            self._mem.apply_snapshot(snap)
        self._mem.append(rec.entries)
        self._mem.set_hard_state(rec.hard_state)
        self.truncated_tail_bytes = rec.truncated_tail_bytes
        hs = rec.hard_state
        _log.info(
            "event=raft_storage_recovered dir=%r term=%d vote=%d commit=%d lost_until=%d "
            "snapshot=%d first_index=%d last_index=%d",
            str(base), hs.term, hs.vote, hs.commit, hs.lost_until, rec.snapshot.index,
            self.first_index(), self.last_index(),
        )

    # ------------------------------------------------------------------ Storage protocol

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._mem.initial_state()

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        return self._mem.entries(lo, hi, max_bytes)

    def term(self, index: int) -> int:
        return self._mem.term(index)

    def first_index(self) -> int:
        return self._mem.first_index()

    def last_index(self) -> int:
        return self._mem.last_index()

    def snapshot(self) -> Snapshot:
        return self._mem.snapshot()

    # ------------------------------------------------------------------ writes

    @property
    def hard_state(self) -> HardState:
        """The persisted hard state."""
        return self._mem.hard_state

    def save_ready(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        *,
        sync: bool = True,
    ) -> None:
        """Persist one Ready's snapshot, entries and hard state, then update memory.

        With ``sync=False`` (a commit-only hard-state change) the write is not fsynced;
        the next synced save covers it.
        """
        if snapshot is not None and not snapshot.is_empty:
            self._snapper.save(snapshot)
            self._wal.save_snapshot_mark(SnapshotMark(snapshot.meta.index, snapshot.meta.term))
            self._release_snapshot_files()
            self._mem.apply_snapshot(snapshot)
        if hard_state is not None or entries:
            self._wal.save(hard_state, entries, sync=sync)
        self._mem.append(entries)
        if hard_state is not None:
            self._mem.set_hard_state(hard_state)

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Snapshot the application state at applied ``index`` and compact the log
        (keeping ``keep_entries`` entries below it)."""
        snap = self._mem.create_snapshot(index, conf_state, data)
        self._snapper.save(snap)
        self._wal.save_snapshot_mark(SnapshotMark(snap.meta.index, snap.meta.term))
        self._release_snapshot_files()
        compact_to = index - self._keep_entries
        if compact_to > self._mem.first_index() - 1:
            self._mem.compact(compact_to)
        last = self._mem.last_index()
        carry = self._mem.entries(index + 1, last + 1) if last > index else []
        self._wal.release(carry)
        return snap

    def _release_snapshot_files(self) -> None:
        # Only once the WAL records the new snapshot, and relative to what it records (a
        # marker at or below the recorded one is not written): never the file recovery loads.
        mark = self._wal.snapshot_mark
        self._snapper.release(mark.index, mark.term)

    def wal_segments(self) -> list[str]:
        """Paths of the WAL segment files (for tests and operators)."""
        return self._wal.segment_paths()

    def close(self) -> None:
        """Close files (idempotent)."""
        self._wal.close()
