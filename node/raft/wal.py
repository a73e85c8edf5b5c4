"""Write-ahead log of Raft entries, hard state and snapshot markers, in segment files.

Directory layout (under the ``directory`` given to :class:`WAL`)::

    wal-0000000000000000.log, wal-0000000000000001.log, ...   segments, by sequence number

Every segment starts with the current hard state and snapshot marker. Compaction
(:meth:`WAL.release`, after a snapshot) starts a new segment that also carries every entry
above the snapshot, then deletes all older segments, so the log stays one self-contained
suffix of segments.

Record layout (all integers unsigned big-endian)::

    offset  size  field
    0       4     N = length of body (type byte + payload), 1 <= N <= MAX_RECORD_BYTES
    4       4     CRC-32 (zlib.crc32) of the body
    8       N     body: 1 byte record type, then the payload

Record types and payloads::

    1 ENTRY       u64 term | u64 index | u8 entry type | data (rest of the record)
    2 HARD_STATE  u64 term | u64 vote | u64 commit
    3 SNAPSHOT    u64 index | u64 term     (a snapshot file with this position was saved)

Replay semantics: an ENTRY at an index already present truncates the log from that index
(conflicting tail replaced by the leader); entries at or below the snapshot index are
ignored; a SNAPSHOT record keeps the entries after it only when the log holds an entry with
the snapshot's (index, term), otherwise it discards them (Raft's install-snapshot rule); the
last HARD_STATE wins.

Durability: :meth:`WAL.save` writes all records of one Raft ``Ready`` with one ``write`` and
one ``fsync`` before returning; the driver sends messages only afterwards.

Recovery: a damaged record at the very end of the last segment (torn write from a crash in
the middle of a save: a header or body running past end of file, zero fill, or a checksum
failure on the last record) is truncated away with a WARNING; those bytes were never
acknowledged. Any other damage (a bad record followed by more data, or in an older segment)
raises :class:`WALCorrupt` naming the file and offset: that is lost acknowledged data and
needs an operator, not a silent repair.
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

from node.fsutil import fsync_dir
from node.raft.errors import RaftError
from node.raft.types import EMPTY_HARD_STATE, Entry, EntryType, HardState

_log = logging.getLogger(__name__)

REC_ENTRY = 1
REC_HARD_STATE = 2
REC_SNAPSHOT = 3

_HEAD = struct.Struct(">II")
HEAD_SIZE = _HEAD.size
_ENTRY_HEAD = struct.Struct(">QQB")
_HS = struct.Struct(">QQQ")
_SNAP = struct.Struct(">QQ")
MAX_RECORD_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
_SEG_RE = re.compile(r"^wal-([0-9a-f]{16})\.log$")


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
    """HARD_STATE record."""
    return encode_record(REC_HARD_STATE, _HS.pack(hs.term, hs.vote, hs.commit))


def encode_snapshot_mark(mark: SnapshotMark) -> bytes:
    """SNAPSHOT record."""
    return encode_record(REC_SNAPSHOT, _SNAP.pack(mark.index, mark.term))


class _Replay:
    """Applies records to a WALState (the replay semantics of the module docstring)."""

    def __init__(self) -> None:
        self.state = WALState()

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
            if index <= st.snapshot.index:
                return
            first = st.entries[0].index if st.entries else st.snapshot.index + 1
            expected = first + len(st.entries)
            if index > expected:
                raise WALCorrupt(
                    path, offset, f"entry {index} leaves a gap (expected at most {expected})"
                )
            del st.entries[index - first :]
            st.entries.append(entry)
        elif rec_type == REC_HARD_STATE:
            if len(payload) != _HS.size:
                raise WALCorrupt(path, offset, "hard state record has wrong size")
            st.hard_state = HardState(*_HS.unpack(payload))
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
        os.makedirs(self._dir, exist_ok=True)
        self._segments: list[int] = []
        # Highest entry index written into each segment (0: none), for operators' tools.
        self._seg_max_index: dict[int, int] = {}
        self.recovered = self._recover()
        self._hard_state = self.recovered.hard_state
        self._snapshot = self.recovered.snapshot
        if not self._segments:
            self._segments = [0]
            self._seg_max_index[0] = 0
            self._fd = self._open_segment(0)
            self._write_pos = 0
            self._write_header_records()
        else:
            seq = self._segments[-1]
            self._fd = os.open(self._path(seq), os.O_WRONLY | os.O_APPEND)
            self._write_pos = os.fstat(self._fd).st_size
        self._closed = False

    # ------------------------------------------------------------------ recovery

    def _path(self, seq: int) -> str:
        return os.path.join(self._dir, _seg_name(seq))

    def _recover(self) -> WALState:
        seqs = sorted(
            int(m.group(1), 16) for m in map(_SEG_RE.match, os.listdir(self._dir)) if m
        )
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
        return replay.state

    @staticmethod
    def _scan(path: str, data: bytes, replay: _Replay, last: bool) -> tuple[int, int]:
        """Replay the records of one segment; returns (end of good data, max entry index)."""
        pos = 0
        size = len(data)
        max_index = 0
        while pos < size:
            problem = ""
            if size - pos < HEAD_SIZE:
                problem = "record header runs past end of file"
            else:
                length, crc = _HEAD.unpack_from(data, pos)
                end = pos + HEAD_SIZE + length
                if length == 0 or length > MAX_RECORD_BYTES:
                    problem = f"bad record length {length}"
                elif end > size:
                    problem = f"record of {length} bytes runs past end of file"
                elif zlib.crc32(data[pos + HEAD_SIZE : end]) != crc:
                    problem = "checksum mismatch"
                    if end < size and not _all_zero(data, end):
                        raise WALCorrupt(path, pos, "checksum mismatch before more records")
                if not problem:
                    body = data[pos + HEAD_SIZE : end]
                    replay.apply(path, pos, body)
                    if body[0] == REC_ENTRY:
                        max_index = max(max_index, _ENTRY_HEAD.unpack_from(body, 1)[1])
                    pos = end
                    continue
            zero_fill = _all_zero(data, pos)
            if not last:
                raise WALCorrupt(path, pos, f"{problem} in a segment that is not the last")
            if problem.startswith("bad record length") and not zero_fill:
                # A length that fits in the file but is invalid is not a torn write.
                length = _HEAD.unpack_from(data, pos)[0]
                if length != 0 and pos + HEAD_SIZE + length <= size:
                    raise WALCorrupt(path, pos, problem)
            _log.warning(
                "WAL %s: torn tail at offset %d (%s); truncating %d bytes that were never "
                "acknowledged",
                path, pos, "zero fill" if zero_fill else problem, size - pos,
            )
            return pos, max_index
        return pos, max_index

    # ------------------------------------------------------------------ writing

    def _open_segment(self, seq: int) -> int:
        fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        if self._fsync:
            fsync_dir(self._dir)
        return fd

    def _write_header_records(self, carry: Sequence[Entry] = ()) -> None:
        data = encode_hard_state(self._hard_state)
        if self._snapshot.index:
            data += encode_snapshot_mark(self._snapshot)
        data += b"".join(encode_entry(e) for e in carry)
        self._write(data)

    def _write(self, data: bytes, sync: bool = True) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._write_pos += len(data)
        if self._fsync and sync:
            start = self._clock()
            os.fsync(self._fd)
            if self._observer is not None:
                self._observer(self._clock() - start)

    def _roll(self, carry: Sequence[Entry] = ()) -> None:
        os.close(self._fd)
        seq = self._segments[-1] + 1
        self._fd = self._open_segment(seq)
        self._segments.append(seq)
        self._seg_max_index[seq] = carry[-1].index if carry else 0
        self._write_pos = 0
        self._write_header_records(carry)

    def save(
        self, hard_state: HardState | None, entries: Sequence[Entry], *, sync: bool = True
    ) -> None:
        """Append entries and the hard state durably (one write, one fsync). With
        ``sync=False`` the fsync is skipped (commit-only hard-state changes)."""
        if self._closed:
            raise RaftError("wal_closed", self._dir)
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
        if mark.index <= self._snapshot.index:
            return
        self._snapshot = mark
        self._write(encode_snapshot_mark(mark))

    def release(self, carry: Sequence[Entry]) -> list[str]:
        """Compact the log down to the recorded snapshot: start a fresh segment holding the
        hard state, the snapshot marker and ``carry`` (every entry above the snapshot
        index, which the caller keeps in memory), fsync it, then delete all older
        segments. Returns the removed paths."""
        if carry and carry[0].index != self._snapshot.index + 1:
            raise RaftError(
                "wal_bad_carry",
                f"carried entries start at {carry[0].index}, snapshot is {self._snapshot.index}",
            )
        old = list(self._segments)
        self._roll(carry)
        removed: list[str] = []
        for seq in old:
            path = self._path(seq)
            os.unlink(path)
            self._seg_max_index.pop(seq, None)
            removed.append(path)
        self._segments = self._segments[len(old) :]
        if self._fsync:
            fsync_dir(self._dir)
        return removed

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
