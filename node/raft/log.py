"""The Raft log as seen by the core: stable storage plus the unstable (unpersisted) tail.

``Unstable`` holds entries (and possibly an incoming snapshot) that the core accepted but the
application has not yet persisted; ``RaftLog`` stitches it onto ``Storage`` and tracks the
``committed`` and ``applied`` cursors.
"""

from __future__ import annotations

from node.raft.errors import CommittedEntryConflict, Compacted, Unavailable
from node.raft.storage import Storage, limit_size
from node.raft.types import Entry, Snapshot


class Unstable:
    """Entries from index ``offset`` on, plus an optional snapshot, not yet persisted."""

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        """First log index if an unstable snapshot defines it."""
        if self.snapshot is not None:
            return self.snapshot.meta.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        """Last log index if the unstable part defines it."""
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.meta.index
        return None

    def maybe_term(self, i: int) -> int | None:
        """Term of ``i`` if the unstable part knows it."""
        if i < self.offset:
            if self.snapshot is not None and self.snapshot.meta.index == i:
                return self.snapshot.meta.term
            return None
        last = self.maybe_last_index()
        if last is None or i > last:
            return None
        return self.entries[i - self.offset].term

    def stable_to(self, i: int, t: int) -> None:
        """Entries up to ``i`` (with term ``t``) were persisted; drop them."""
        gt = self.maybe_term(i)
        if gt is None:
            return
        if gt == t and i >= self.offset:
            self.entries = self.entries[i + 1 - self.offset :]
            self.offset = i + 1

    def stable_snap_to(self, i: int) -> None:
        """The snapshot at ``i`` was persisted."""
        if self.snapshot is not None and self.snapshot.meta.index == i:
            self.snapshot = None

    def restore(self, s: Snapshot) -> None:
        """Replace everything with snapshot ``s``."""
        self.offset = s.meta.index + 1
        self.entries = []
        self.snapshot = s

    def truncate_and_append(self, ents: list[Entry]) -> None:
        """Append ``ents``, first dropping any unstable entries at or after their start."""
        after = ents[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif after <= self.offset:
            # Replace the whole unstable part; storage's tail from ``after`` is overwritten
            # when the application persists these entries.
            self.offset = after
            self.entries = list(ents)
        else:
            self.entries = self.entries[: after - self.offset] + list(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Unstable entries in ``[lo, hi)`` (must lie inside the unstable range)."""
        assert self.offset <= lo <= hi <= self.offset + len(self.entries), (
            f"unstable slice [{lo},{hi}) out of [{self.offset},{self.offset + len(self.entries)})"
        )
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    """Storage + Unstable with the committed/applied cursors."""

    def __init__(self, storage: Storage, max_next_ents_size: int | None = None) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applied = first - 1
        self.max_next_ents_size = max_next_ents_size

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, unstable={len(self.unstable.entries)})"
        )

    # -- indexes and terms --------------------------------------------------------------
    def first_index(self) -> int:
        """First index still available in the log."""
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        """Last index in the log."""
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def term(self, i: int) -> int:
        """Term of entry ``i``; raises Compacted / Unavailable outside the known range."""
        dummy = self.first_index() - 1
        if i < dummy:
            raise Compacted(f"term of {i}, first index {dummy + 1}")
        if i > self.last_index():
            raise Unavailable(f"term of {i}, last index {self.last_index()}")
        t = self.unstable.maybe_term(i)
        if t is not None:
            return t
        return self.storage.term(i)

    def term_or_zero(self, i: int) -> int:
        """Term of ``i`` or 0 when unknown."""
        try:
            return self.term(i)
        except (Compacted, Unavailable):
            return 0

    def last_term(self) -> int:
        """Term of the last entry."""
        return self.term(self.last_index())

    def match_term(self, i: int, t: int) -> bool:
        """True when entry ``i`` exists with term ``t``."""
        try:
            return self.term(i) == t
        except (Compacted, Unavailable):
            return False

    def is_up_to_date(self, lasti: int, term: int) -> bool:
        """Is a log ending at (lasti, term) at least as up to date as ours? (Raft §5.4.1)."""
        last_term = self.last_term()
        return term > last_term or (term == last_term and lasti >= self.last_index())

    # -- appending -----------------------------------------------------------------------
    def find_conflict(self, ents: tuple[Entry, ...] | list[Entry]) -> int:
        """Index of the first entry whose term differs from ours (or is new); 0 if none."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest (i, term(i)) with i <= index and term(i) <= term; used for reject hints.

        Unknown terms (compacted) are treated as a possible match: returns (i, 0).
        """
        while index > 0:
            try:
                our_term = self.term(index)
            except (Compacted, Unavailable):
                return index, 0
            if our_term <= term:
                return index, our_term
            index -= 1
        return 0, 0

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: tuple[Entry, ...]
    ) -> int | None:
        """Follower side of AppendEntries. Returns the last new index, or None on mismatch."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci != 0:
            if ci <= self.committed:  # a check, not an assert: ``python -O`` must not drop it
                raise CommittedEntryConflict(
                    f"entry {ci} conflicts with a committed entry (committed {self.committed})"
                )
            self.append(list(ents[ci - (index + 1) :]))
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: list[Entry]) -> int:
        """Append (possibly truncating an uncommitted tail); returns the new last index."""
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:  # would truncate committed entries: stop, as etcd-raft panics
            raise CommittedEntryConflict(f"append after {after} < committed {self.committed}")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    # -- reading -------------------------------------------------------------------------
    def unstable_entries(self) -> list[Entry]:
        """Entries not yet handed to storage."""
        return list(self.unstable.entries)

    def _check_bounds(self, lo: int, hi: int) -> None:
        assert lo <= hi, f"invalid slice {lo} > {hi}"
        fi = self.first_index()
        if lo < fi:
            raise Compacted(f"slice from {lo}, first index {fi}")
        assert hi <= self.last_index() + 1, f"slice [{lo},{hi}) beyond {self.last_index()}"

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)`` limited to ``max_size`` bytes (at least one entry)."""
        self._check_bounds(lo, hi)
        if lo == hi:
            return []
        ents: list[Entry] = []
        off = self.unstable.offset
        if lo < off:
            stored = self.storage.entries(lo, min(hi, off), max_size)
            if len(stored) < min(hi, off) - lo:
                return stored  # hit the size limit
            ents = stored
        if hi > off:
            ents = ents + self.unstable.slice(max(lo, off), hi)
        return limit_size(ents, max_size)

    def entries(self, i: int, max_size: int | None = None) -> list[Entry]:
        """Entries from ``i`` to the end, size-limited."""
        if i > self.last_index():
            return []
        return self.slice(i, self.last_index() + 1, max_size)

    def all_entries(self) -> list[Entry]:
        """Every available entry (tests and debugging)."""
        return self.entries(self.first_index())

    def has_next_committed_ents(self) -> bool:
        """True when committed entries wait to be applied."""
        off = max(self.applied + 1, self.first_index())
        return self.committed + 1 > off

    def next_committed_ents(self) -> list[Entry]:
        """Committed but not yet applied entries (size-limited)."""
        off = max(self.applied + 1, self.first_index())
        if self.committed + 1 > off:
            return self.slice(off, self.committed + 1, self.max_next_ents_size)
        return []

    def snapshot(self) -> Snapshot:
        """The pending unstable snapshot, else the storage's."""
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- cursors -------------------------------------------------------------------------
    def commit_to(self, to_commit: int) -> None:
        """Advance the commit index (never backwards)."""
        if self.committed < to_commit:
            assert self.last_index() >= to_commit, (
                f"commit {to_commit} beyond last index {self.last_index()}"
            )
            self.committed = to_commit

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Commit ``max_index`` if it is an entry of ``term`` (only current-term entries)."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, i: int) -> None:
        """The application applied everything up to ``i``."""
        if i == 0:
            return
        assert self.applied <= i <= self.committed, (
            f"applied {i} outside [{self.applied}, {self.committed}]"
        )
        self.applied = i

    def stable_to(self, i: int, t: int) -> None:
        """Entries up to ``i`` are durable."""
        self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: int) -> None:
        """Snapshot ``i`` is durable."""
        self.unstable.stable_snap_to(i)

    def restore(self, s: Snapshot) -> None:
        """Install snapshot ``s`` (follower receiving SNAP)."""
        self.committed = s.meta.index
        self.unstable.restore(s)
