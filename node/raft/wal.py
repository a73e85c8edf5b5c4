"""Write-ahead log of Raft entries, hard state and snapshot markers, in segment files.

Directory layout (under the ``directory`` given to :class:`WAL`)::

    wal-0000000000000000.log, wal-0000000000000001.log, ...   segments, by sequence number
    wal-<seq>.log.tmp                                          a segment being created

Every segment starts with the current hard state and snapshot marker. A new segment (the
first one, a roll when the open segment is full, and compaction) is written complete under
its ``.tmp`` name, fsynced, renamed to its ``.log`` name and the directory fsynced, so a
segment file exists whole or not at all; before that, the segment it replaces is fsynced
(it may end in an unsynced commit-only hard state, also one written before the process
last restarted), so only the last segment can ever end in a torn write. Recovery deletes
leftover ``.tmp`` files (never acknowledged). The directories are created durably (their
parents fsynced).

Compaction (:meth:`WAL.release`, after a snapshot) starts a new segment that also carries
every entry above the snapshot, then deletes all older segments, newest first, fsyncing the
directory after each deletion: a crash part-way leaves the oldest older segments (a
contiguous run from the start of the log, which replays cleanly) followed by the complete
new segment, whose snapshot marker and carried entries supersede them. (An earlier version
deleted oldest first; replay also accepts what a crash then left, see below.)

Record layout (all integers unsigned big-endian)::

    offset  size  field
    0       4     N = length of body (type byte + payload), 1 <= N <= MAX_RECORD_BYTES
    4       4     CRC-32 (zlib.crc32) of the body
    8       N     body: 1 byte record type, then the payload

Record types and payloads::

    1 ENTRY            u64 term | u64 index | u8 entry type | data (rest of the record)
    2 HARD_STATE       u64 term | u64 vote | u64 commit
    3 SNAPSHOT         u64 index | u64 term     (a snapshot file with this position was saved)
    4 HARD_STATE_LOST  u64 term | u64 vote | u64 commit | u64 lost_until

HARD_STATE_LOST is the hard state of a node its leader told it lost entries it had
acknowledged (MessageType.STATE_LOST, ``HardState.lost_until``): no vote before its commit
index reaches ``lost_until``. It is written only while that ban holds; every other hard
state is a HARD_STATE record, as earlier releases wrote (and read: a WAL holding a
HARD_STATE_LOST record is refused by a release before it, ``unknown record type 4``, until
compaction dropped the segment). A HARD_STATE record means no ban, so a WAL written by an
earlier release recovers without one, and the hard state lifting a ban clears it.

Replay semantics: an ENTRY whose (index, term) is already in the log is skipped (by Raft's
log matching property it is the same entry, and the entries after it stay: this is what
makes replaying a compacted segment's carried entries over older segments harmless); an
ENTRY at an index already present with another term truncates the log from that index
(conflicting tail replaced by the leader); entries at or below the snapshot index are
ignored; a SNAPSHOT record keeps the entries after it only when the log holds an entry with
the snapshot's (index, term), otherwise it discards them (Raft's install-snapshot rule); the
last HARD_STATE or HARD_STATE_LOST record wins. Any other ENTRY above the next index is a gap (WALCorrupt), with one
exception: the very first entry replayed may start in the middle of the log (the oldest
segments of a compaction interrupted while deleting them oldest first) provided a later
SNAPSHOT record moves the snapshot past it (re-bases the log) and every entry above the
snapshot that this discards is replayed again later (the compacted segment carries them);
otherwise replay raises WALCorrupt. While such a start is pending, a term conflict
rewriting the log from below its first entry restarts the log at the rewrite (it discards
what the mid-log start held; if the rewrite starts right after the snapshot no gap is left);
an entry below the first one held in any other case is WALCorrupt.

Durability: :meth:`WAL.save` writes all records of one Raft ``Ready`` with one ``write`` and
one ``fsync`` before returning; the driver sends messages only afterwards. Opening a WAL
fsyncs its last segment before returning what replay recovered: after a crash of the process
(not of the machine) replay reads records whose fsync never happened from the page cache, and
the restarted node acts on them. A failed write or
fsync of the open segment, or a failure once a new segment may have been renamed into place, makes the WAL refuse
further writes (``wal_failed``) until it is reopened (recovered from disk): appending after
part of a record, or into a segment that is no longer the last, would damage the log. A new
segment's creation failing before its rename (e.g. ENOSPC) leaves the open segment in use.

Recovery: damage at the end of the last segment that a crash in the middle of a save can
leave is truncated away with a WARNING; those bytes were never acknowledged. That is: a
record header or record running past end of file (a partial write); nothing but zero bytes
from the damaged record to end of file (zero fill); or a record failing its checksum that
is zero from a SECTOR_BYTES-aligned file offset in its body or its checksum field to end of
file (the sectors of the write from there on never reached the disk though the file size
covers them; etcd's torn entry check, made stricter: the zero sectors must run to end of
file). Even then, if a
valid record (known type and payload size, sane length, matching checksum) starts anywhere
after the damaged offset, the damage is WALCorrupt: a crash leaves nothing valid after a
torn write, while e.g. one flipped bit in a length field makes a record "run past end of
file" ahead of acknowledged records. (The search runs only on this path and its work is
bounded: _RESYNC_CRC_BUDGET bytes checksummed, short candidates first; if it is cut short
a WARNING says so and the tail counts as torn.)

Any other damage raises :class:`WALCorrupt` naming the file, offset and reason: a complete
record with a checksum mismatch (even the last one: it was fsynced, e.g. a hard state holding
a vote) unless zero from a sector boundary to end of file as above, an invalid length (0 or
above MAX_RECORD_BYTES) followed by non-zero data, any damage followed by more data, or
damage in a segment that is not the last. That is lost acknowledged data and needs an
operator, not a silent repair. Limits: a flipped bit making the very last record's length
run past end of file (nothing valid after it), or damage to a last record whose body really
ends in zero bytes from a sector boundary on, reads as a torn write and is truncated; and a
torn record whose payload happens to hold the bytes of a valid record reads as damage.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from node.fsutil import fsync_dir, make_dirs_durable
from node.raft.errors import RaftError
from node.raft.types import EMPTY_HARD_STATE, Entry, EntryType, HardState

_log = logging.getLogger(__name__)

REC_ENTRY = 1
REC_HARD_STATE = 2
REC_SNAPSHOT = 3
REC_HARD_STATE_LOST = 4

_HEAD = struct.Struct(">II")
HEAD_SIZE = _HEAD.size
_CRC_AT = 4  # offset of the checksum field in a record
_ENTRY_HEAD = struct.Struct(">QQB")
_HS = struct.Struct(">QQQ")
_HS_LOST = struct.Struct(">QQQQ")
_SNAP = struct.Struct(">QQ")
MAX_RECORD_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
SECTOR_BYTES = 512  # the smallest unit a disk writes whole (or not at all)
_SEG_RE = re.compile(r"^wal-([0-9a-f]{16})\.log$")
_TMP_RE = re.compile(r"^wal-([0-9a-f]{16})\.log\.tmp$")


# Where a record may start (a prefilter; _find_valid_record checks the rest): the length
# and type of a HARD_STATE (1 + 24 bytes), SNAPSHOT (1 + 16) or HARD_STATE_LOST (1 + 32)
# record, or an ENTRY record: a length whose first byte allows at most MAX_RECORD_BYTES, the
# CRC, the type, u64 term, u64 index and a known entry type.
_RECORD_START = re.compile(
    rb"(?=\x00\x00\x00\x19.{4}\x02"
    rb"|\x00\x00\x00\x11.{4}\x03"
    rb"|\x00\x00\x00\x21.{4}\x04"
    rb"|[\x00-\x10].{7}\x01.{16}[\x00\x01])",
    re.DOTALL,
)
# Bounds of _find_valid_record (damaged-tail path only).
_RESYNC_CRC_BUDGET = MAX_RECORD_BYTES
_RESYNC_SHORT = 64 * 1024
_RESYNC_MAX_DEFERRED = 1 << 16


class WALCorrupt(RaftError):
    """Damage in the middle of the log: acknowledged data is unreadable."""

    def __init__(self, path: str, offset: int, detail: str) -> None:
        super().__init__("wal_corrupt", f"{path} at offset {offset}: {detail}")
        self.path = path
        self.offset = offset


@dataclass(frozen=True, slots=True)
class SnapshotMark:
    """Position of a saved snapshot as recorded in the WAL."""

    index: int = 0
    term: int = 0


@dataclass
class WALState:
    """What replay recovered."""

    hard_state: HardState = EMPTY_HARD_STATE
    snapshot: SnapshotMark = field(default_factory=SnapshotMark)
    entries: list[Entry] = field(default_factory=list)
    snapshot_marks: list[SnapshotMark] = field(default_factory=list)
    truncated_tail_bytes: int = 0


def _seg_name(seq: int) -> str:
    return f"wal-{seq:016x}.log"


def has_segments(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds at least one WAL segment (``.tmp`` files do not count)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return False
    return any(_SEG_RE.match(n) for n in names)


def encode_record(rec_type: int, payload: bytes) -> bytes:
    """One record in the layout of the module docstring."""
    body = bytes((rec_type,)) + payload
    return _HEAD.pack(len(body), zlib.crc32(body)) + body


def encode_entry(entry: Entry) -> bytes:
    """ENTRY record for ``entry``."""
    return encode_record(
        REC_ENTRY, _ENTRY_HEAD.pack(entry.term, entry.index, int(entry.type)) + entry.data
    )


def encode_hard_state(hs: HardState) -> bytes:
    """HARD_STATE record, or HARD_STATE_LOST while ``hs`` holds a lost-state ban."""
    if hs.lost_until:
        return encode_record(
            REC_HARD_STATE_LOST, _HS_LOST.pack(hs.term, hs.vote, hs.commit, hs.lost_until)
        )
    return encode_record(REC_HARD_STATE, _HS.pack(hs.term, hs.vote, hs.commit))


def encode_snapshot_mark(mark: SnapshotMark) -> bytes:
    """SNAPSHOT record."""
    return encode_record(REC_SNAPSHOT, _SNAP.pack(mark.index, mark.term))


class _Replay:
    """Applies records to a WALState (the replay semantics of the module docstring)."""

    def __init__(self) -> None:
        self.state = WALState()
        self._seen_entry = False
        # (path, offset, index) of a first entry above the snapshot: the oldest segments
        # of a compaction whose deletions a crash interrupted (oldest first, as an earlier
        # version did). Allowed only if a later SNAPSHOT record re-bases the log.
        self._start_gap: tuple[str, int, int] | None = None
        self._rebased_from: tuple[str, int] | None = None
        # index -> term of entries the re-basing discarded; each must be replayed again
        # (by the compacted segment's carried entries) unless the snapshot covers it.
        self._superseded: dict[int, int] = {}

    def finish(self) -> WALState:
        """The replayed state, once every segment is applied; WALCorrupt if the log does
        not start right after the snapshot (older segments missing)."""
        st = self.state
        if self._start_gap is not None:
            path, offset, index = self._start_gap
            raise WALCorrupt(
                path, offset,
                f"entry {index} leaves a gap (expected at most {st.snapshot.index + 1}): the "
                "log starts in the middle and no later snapshot marker supersedes it",
            )
        if self._rebased_from is not None:
            for index, term in sorted(self._superseded.items()):
                if index > st.snapshot.index:
                    path, offset = self._rebased_from
                    raise WALCorrupt(
                        path, offset,
                        f"the oldest segments start in the middle of the log and hold entry "
                        f"{index} (term {term}) that no later segment carries",
                    )
            _log.warning(
                "event=wal_rebased path=%r snapshot_index=%d: the oldest segments start in the "
                "middle of the log (a compaction interrupted while deleting them); superseded by "
                "the snapshot marker", str(self._rebased_from[0]), st.snapshot.index,
            )
        return st

    def apply(self, path: str, offset: int, body: bytes) -> None:
        rec_type = body[0]
        payload = body[1:]
        st = self.state
        if rec_type == REC_ENTRY:
            if len(payload) < _ENTRY_HEAD.size:
                raise WALCorrupt(path, offset, "entry record too short")
            term, index, etype = _ENTRY_HEAD.unpack_from(payload)
            try:
                kind = EntryType(etype)
            except ValueError:
                raise WALCorrupt(path, offset, f"unknown entry type {etype}") from None
            entry = Entry(term, index, kind, bytes(payload[_ENTRY_HEAD.size :]))
            if self._superseded.get(index) == term:
                del self._superseded[index]
            if index <= st.snapshot.index:
                return
            first = st.entries[0].index if st.entries else st.snapshot.index + 1
            expected = first + len(st.entries)
            seen, self._seen_entry = self._seen_entry, True
            if index > expected and not seen:
                self._start_gap = (path, offset, index)
                st.entries.append(entry)
                return
            if index > expected:
                raise WALCorrupt(
                    path, offset, f"entry {index} leaves a gap (expected at most {expected})"
                )
            pos = index - first
            if pos < 0:
                # Below the first entry held, yet above the snapshot: only a log starting in
                # the middle has such a hole below it. A term conflict there rewrote the log
                # from this index: what the mid-log start held is discarded and the log now
                # starts here (no gap left if this is right after the snapshot).
                if self._start_gap is None:
                    raise WALCorrupt(
                        path, offset,
                        f"entry {index} is below the first entry {first} of the log",
                    )
                st.entries = [entry]
                if index == st.snapshot.index + 1:
                    self._start_gap = None
                else:
                    self._start_gap = (path, offset, index)
                return
            if pos < len(st.entries):
                if st.entries[pos].term == term:
                    # Same (index, term): the same entry (log matching); keep what follows.
                    return
                del st.entries[pos:]
            st.entries.append(entry)
        elif rec_type == REC_HARD_STATE:
            if len(payload) != _HS.size:
                raise WALCorrupt(path, offset, "hard state record has wrong size")
            st.hard_state = HardState(*_HS.unpack(payload))
        elif rec_type == REC_HARD_STATE_LOST:
            if len(payload) != _HS_LOST.size:
                raise WALCorrupt(path, offset, "lost-state hard state record has wrong size")
            st.hard_state = HardState(*_HS_LOST.unpack(payload))
        elif rec_type == REC_SNAPSHOT:
            if len(payload) != _SNAP.size:
                raise WALCorrupt(path, offset, "snapshot record has wrong size")
            mark = SnapshotMark(*_SNAP.unpack(payload))
            if mark not in st.snapshot_marks:
                st.snapshot_marks.append(mark)
            if mark.index <= st.snapshot.index:
                return
            keep: list[Entry] = []
            if st.entries:
                first = st.entries[0].index
                pos = mark.index - first
                if 0 <= pos < len(st.entries) and st.entries[pos].term == mark.term:
                    keep = st.entries[pos + 1 :]
            if self._start_gap is not None:
                # Re-based: what the mid-log start held above the snapshot must reappear
                # (checked in finish()); the log now starts right after the snapshot.
                if not keep:
                    self._superseded = {
                        e.index: e.term for e in st.entries if e.index > mark.index
                    }
                self._rebased_from = self._start_gap[:2]
                self._start_gap = None
            st.entries = keep
            st.snapshot = mark
        else:
            raise WALCorrupt(path, offset, f"unknown record type {rec_type}")


class WAL:
    """Segmented write-ahead log (see the module docstring).

    ``fsync_observer`` (if given) is called with the duration of every fsync in seconds,
    for the fsync-latency metric; ``clock`` measures it (monotonic seconds).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
        fsync_observer: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dir = os.fspath(directory)
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._observer = fsync_observer
        self._clock = clock
        # Durable directory entries too: a segment fsynced into a directory whose own entry
        # a power loss drops is lost with it (a blank WAL: term and vote forgotten).
        make_dirs_durable(self._dir, sync=fsync)
        self._segments: list[int] = []
        # Highest entry index written into each segment (0: none), for operators' tools.
        self._seg_max_index: dict[int, int] = {}
        self.recovered = self._recover()
        self._hard_state = self.recovered.hard_state
        self._snapshot = self.recovered.snapshot
        self._dirty = False  # the open segment holds written but not fsynced data
        self._failed: str | None = None  # why writes are refused (a write or roll failed)
        if not self._segments:
            self._fd = self._create_segment(0)
        else:
            seq = self._segments[-1]
            self._fd = os.open(self._path(seq), os.O_WRONLY | os.O_APPEND)
            self._write_pos = os.fstat(self._fd).st_size
            # Replay read the file through the page cache: after a crash of the process (not
            # of the machine) it may end in records never fsynced (a commit-only hard state,
            # or a save whose fsync the crash interrupted: a term, a vote, entries). The node
            # acts on what replay recovered at once -- it votes again for the vote recovered,
            # acknowledges the entries -- with no new save to sync them: a power loss then
            # would take back a vote or acknowledged entries. Synced now, before the caller
            # relies on any of it (which also keeps a torn tail in the last segment only).
            if fsync:
                try:
                    self._timed_fsync(self._fd)
                except BaseException:
                    os.close(self._fd)  # the WAL does not open: nobody would close it
                    raise
        self._closed = False

    # ------------------------------------------------------------------ recovery

    def _path(self, seq: int) -> str:
        return os.path.join(self._dir, _seg_name(seq))

    def _recover(self) -> WALState:
        names = os.listdir(self._dir)
        for name in names:
            if _TMP_RE.match(name):
                # A segment whose creation a crash interrupted: never renamed into place,
                # so nothing in it was acknowledged.
                _log.warning("event=wal_unfinished_segment_removed dir=%r segment=%r", str(self._dir), name)
                os.unlink(os.path.join(self._dir, name))
        seqs = sorted(int(m.group(1), 16) for m in map(_SEG_RE.match, names) if m)
        replay = _Replay()
        for i, seq in enumerate(seqs):
            last = i == len(seqs) - 1
            path = self._path(seq)
            with open(path, "rb") as f:
                data = f.read()
            good_end, max_index = self._scan(path, data, replay, last)
            if good_end < len(data):
                replay.state.truncated_tail_bytes = len(data) - good_end
                fd = os.open(path, os.O_RDWR)
                try:
                    os.ftruncate(fd, good_end)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._seg_max_index[seq] = max_index
        self._segments = seqs
        return replay.finish()

    @staticmethod
    def _scan(path: str, data: bytes, replay: _Replay, last: bool) -> tuple[int, int]:
        """Replay the records of one segment; returns (end of good data, max entry index).

        Damage is a torn tail (truncated with a WARNING) only where a crash in the middle
        of a write can have left it; anything else raises WALCorrupt (module docstring).
        """
        pos = 0
        size = len(data)
        max_index = 0
        while pos < size:
            if size - pos < HEAD_SIZE:
                problem, torn = "record header runs past end of file", True
            else:
                length, crc = _HEAD.unpack_from(data, pos)
                end = pos + HEAD_SIZE + length
                if length == 0 or length > MAX_RECORD_BYTES:
                    # Never written by us: only zero fill (space allocated for a write
                    # that never reached the disk) is explained by a crash.
                    problem = f"bad record length {length}"
                    torn = _all_zero(data, pos)
                    if not torn:
                        problem += " followed by non-zero data"
                elif end > size:
                    problem, torn = f"record of {length} bytes runs past end of file", True
                elif zlib.crc32(data[pos + HEAD_SIZE : end]) != crc:
                    zero_at = _zero_sectors_to_eof(data, pos + _CRC_AT, end)
                    if zero_at is None:
                        # A complete record: it was written whole and fsynced; damage,
                        # not a torn write.
                        problem, torn = "checksum mismatch in a complete record", False
                    else:
                        # It is zero from a sector boundary (in its body, or in its
                        # checksum field) to end of file: the sectors of a write that
                        # never reached the disk (the file size already covered them).
                        problem, torn = (
                            f"checksum mismatch in a record zero from offset {zero_at} to "
                            "end of file", True,
                        )
                else:
                    body = data[pos + HEAD_SIZE : end]
                    replay.apply(path, pos, body)
                    if body[0] == REC_ENTRY:
                        max_index = max(max_index, _ENTRY_HEAD.unpack_from(body, 1)[1])
                    pos = end
                    continue
            if not last:
                raise WALCorrupt(path, pos, f"{problem} in a segment that is not the last")
            if not torn:
                raise WALCorrupt(
                    path, pos,
                    f"{problem} ({size - pos} bytes to end of file): not a torn write (a "
                    "crash leaves a short or zero-filled tail), acknowledged data is damaged",
                )
            # A torn write is the end of the log: a valid record after the damage means
            # damaged acknowledged data (e.g. a flipped bit in a length), not a crash.
            found, complete = _find_valid_record(data, pos + 1)
            if found is not None:
                raise WALCorrupt(
                    path, pos,
                    f"{problem}, but a valid record follows at offset {found}: not a torn "
                    "write, acknowledged data is damaged",
                )
            if not complete:
                _log.warning(
                    "event=wal_search_cut_short path=%r offset=%d: the search for a valid record "
                    "after the damage was cut short (bounded work); treating the damage as a torn "
                    "write", str(path), pos,
                )
            zero_fill = _all_zero(data, pos)
            _log.warning(
                "event=wal_torn_tail path=%r offset=%d problem=%r bytes=%d: truncating a torn tail "
                "that was never acknowledged",
                str(path), pos, "zero fill" if zero_fill else problem, size - pos,
            )
            return pos, max_index
        return pos, max_index

    # ------------------------------------------------------------------ writing

    def _header_records(self, carry: Sequence[Entry] = ()) -> bytes:
        data = encode_hard_state(self._hard_state)
        if self._snapshot.index:
            data += encode_snapshot_mark(self._snapshot)
        return data + b"".join(encode_entry(e) for e in carry)

    def _timed_fsync(self, fd: int) -> None:
        start = self._clock()
        os.fsync(fd)
        if self._observer is not None:
            self._observer(self._clock() - start)

    def _create_segment(self, seq: int, carry: Sequence[Entry] = ()) -> int:
        """Create segment ``seq`` holding the header records and ``carry``, atomically
        (tmp file, fsync, rename, directory fsync); returns it open for appending and makes
        it the current segment."""
        path = self._path(seq)
        tmp = path + ".tmp"
        data = self._header_records(carry)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync:
                self._timed_fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
            if self._fsync:
                fsync_dir(self._dir)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except BaseException as exc:
            # The new segment may be in place: writing on into the segment before it
            # (no longer the last one) would put records before the new segment's header
            # records, which replay applies after them (e.g. an older hard state).
            self._failed = f"creating segment {path} failed: {exc!r}"
            raise
        self._segments.append(seq)
        self._seg_max_index[seq] = carry[-1].index if carry else 0
        self._write_pos = len(data)
        self._dirty = False
        return fd

    def _check_writable(self) -> None:
        if self._closed:
            raise RaftError("wal_closed", self._dir)
        if self._failed is not None:
            raise RaftError("wal_failed", f"{self._dir}: {self._failed}; reopen the WAL")

    def _write(self, data: bytes, sync: bool = True) -> None:
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self._write_pos += len(data)
            if self._fsync and sync:
                self._timed_fsync(self._fd)
                self._dirty = False
            elif self._fsync:
                self._dirty = True
        except BaseException as exc:
            # Part of the data may be in the file (and a failed fsync may have dropped
            # dirty pages): appending more would put records after a damaged one.
            self._failed = f"writing {self._path(self._segments[-1])} failed: {exc!r}"
            raise

    def _roll(self, carry: Sequence[Entry] = ()) -> None:
        # The segment being left must be durable before a newer one exists: recovery
        # accepts a torn tail only in the last segment.
        if self._dirty:
            try:
                self._timed_fsync(self._fd)
            except BaseException as exc:
                self._failed = f"fsync of {self._path(self._segments[-1])} failed: {exc!r}"
                raise
            self._dirty = False
        # The old descriptor is closed only once the new segment is open: if creating it
        # fails (e.g. ENOSPC writing the carried entries), self._fd stays a descriptor of
        # ours for close().
        fd = self._create_segment(self._segments[-1] + 1, carry)
        old, self._fd = self._fd, fd
        os.close(old)

    def save(
        self, hard_state: HardState | None, entries: Sequence[Entry], *, sync: bool = True
    ) -> None:
        """Append entries and the hard state durably (one write, one fsync). With
        ``sync=False`` the fsync is skipped (commit-only hard-state changes)."""
        self._check_writable()
        if hard_state is None and not entries:
            return
        if self._write_pos >= self._segment_bytes:
            self._roll()
        parts = [encode_entry(e) for e in entries]
        if hard_state is not None:
            parts.append(encode_hard_state(hard_state))
            self._hard_state = hard_state
        if entries:
            seq = self._segments[-1]
            self._seg_max_index[seq] = max(self._seg_max_index[seq], entries[-1].index)
        self._write(b"".join(parts), sync=sync or bool(entries))

    def save_snapshot_mark(self, mark: SnapshotMark) -> None:
        """Record (durably) that a snapshot file at ``mark`` has been saved."""
        self._check_writable()
        if mark.index <= self._snapshot.index:
            return
        self._snapshot = mark
        self._write(encode_snapshot_mark(mark))

    def release(self, carry: Sequence[Entry]) -> list[str]:
        """Compact the log down to the recorded snapshot: create a fresh segment holding
        the hard state, the snapshot marker and ``carry`` (every entry above the snapshot
        index, which the caller keeps in memory) atomically, then delete all older
        segments, newest first, each deletion made durable before the next (so a crash
        leaves a contiguous run from the oldest segment, see the module docstring).
        Returns the removed paths."""
        self._check_writable()
        if carry and carry[0].index != self._snapshot.index + 1:
            raise RaftError(
                "wal_bad_carry",
                f"carried entries start at {carry[0].index}, snapshot is {self._snapshot.index}",
            )
        old = list(self._segments)
        self._roll(carry)
        removed: list[str] = []
        for seq in reversed(old):
            path = self._path(seq)
            os.unlink(path)
            if self._fsync:
                fsync_dir(self._dir)
            self._segments.remove(seq)
            self._seg_max_index.pop(seq, None)
            removed.append(path)
        removed.reverse()
        return removed

    @property
    def snapshot_mark(self) -> SnapshotMark:
        """The last snapshot position recorded (recovered or written since)."""
        return self._snapshot

    def segment_paths(self) -> list[str]:
        """Paths of the current segments, oldest first."""
        return [self._path(s) for s in self._segments]

    def close(self) -> None:
        """Close the open segment (idempotent)."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)


def _all_zero(data: bytes, start: int) -> bool:
    return data.count(0, start) == len(data) - start


def _zero_sectors_to_eof(data: bytes, start: int, end: int) -> int | None:
    """The first SECTOR_BYTES-aligned file offset in ``[start, end)`` (a record's checksum
    field and body) from which ``data`` is all zero to end of file, or None."""
    zero_from = max(len(data.rstrip(b"\0")), start)
    aligned = -(-zero_from // SECTOR_BYTES) * SECTOR_BYTES
    return aligned if aligned < end else None


def _find_valid_record(data: bytes, start: int) -> tuple[int | None, bool]:
    """Offset of a valid record (known type and payload size, length at most
    MAX_RECORD_BYTES and within the file, matching checksum) at or after ``start``, if one
    is found; and whether the search was complete.

    Bounded: it checksums at most _RESYNC_CRC_BUDGET bytes. Candidates of up to
    _RESYNC_SHORT bytes are checked as they are found; longer ones (at most
    _RESYNC_MAX_DEFERRED) afterwards, shortest first, so that junk claiming huge lengths
    does not use up the budget before the real records."""
    view = memoryview(data)
    budget = _RESYNC_CRC_BUDGET
    complete = True
    deferred: list[tuple[int, int]] = []
    for m in _RECORD_START.finditer(data, start):
        at = m.start()
        length = _HEAD.unpack_from(data, at)[0]
        if length > MAX_RECORD_BYTES or at + HEAD_SIZE + length > len(data):
            continue
        if data[at + HEAD_SIZE] == REC_ENTRY and length < 1 + _ENTRY_HEAD.size:
            continue
        if length > _RESYNC_SHORT:
            if len(deferred) < _RESYNC_MAX_DEFERRED:
                deferred.append((length, at))
            else:
                complete = False
            continue
        if budget < length:
            return None, False
        budget -= length
        if _crc_matches(view, at, length):
            return at, True
    for length, at in sorted(deferred):
        if budget < length:
            return None, False
        budget -= length
        if _crc_matches(view, at, length):
            return at, True
    return None, complete


def _crc_matches(view: memoryview, at: int, length: int) -> bool:
    body = at + HEAD_SIZE
    crc: int = _HEAD.unpack_from(view, at)[1]
    return zlib.crc32(view[body : body + length]) == crc
