"""Append-only block store: segment files of checksummed records plus a block-number index.

The block store is the source of truth of a node (orderer or peer); everything else (world
state, indexes) is derived from it and can be rebuilt by replay.

Directory layout (under the ``directory`` given to :class:`BlockStore`)::

    seg-000000.blk, seg-000001.blk, ...   append-only segment files of records
    index.bin                             block number -> (segment, offset), fixed width

Record layout (all integers unsigned big-endian)::

    offset  size  field
    0       4     magic  b"RXB1"
    4       8     block number
    12      4     payload length N
    16      4     CRC-32 (zlib.crc32) of bytes 4..16 (number, length) followed by payload
    20      N     payload: the serialized ``rxchain.v1.Block``

A record never spans two segments; a new segment is started when the current one would
exceed ``segment_max_bytes`` (a single oversized block still gets a segment of its own).

Index entry layout (entry ``i`` describes block ``i``, 12 bytes each)::

    0   4   segment number
    4   8   offset of the record within the segment

The index is a cache: it is written (not fsynced) after the segment write and is checked
and completed from the segments on open (no more entries are read than the segments could
hold records, so a damaged or sparse index file is never read whole; a failed index write
is logged and the index is left to the next open to complete). Only the segment files are
fsynced (when ``fsync=True``), so after a crash the segments decide what was stored. The
directory is fsynced after it is created, on every open for appending (a killed run may
have created the first segment without syncing it), after a segment file is created and after
recovery deletes files, so a synced record's file cannot vanish with its directory entry.

A failed append (ENOSPC, EFBIG, EIO on write or fsync) is rolled back: the segment is
truncated to where the record started, so the store stays exactly as it was and the same
block can be appended again. If even the rollback fails the store refuses every further
append (IO_ERROR) until it is reopened, which truncates the partial record as a torn tail.

Recovery on open: the last indexed record is checked; records after it are scanned and
indexed. A torn tail (a partial or checksum-failing record at the very end of the last
segment, i.e. a crash in the middle of an append) is truncated with a warning. Bad bytes
count as a torn tail only if they could be the next block's interrupted append: a header
numbered ``height`` (or none at all) and no intact record of block ``height + 1`` chained to
it anywhere after them in the segment (an interrupted append is always the last thing
written; a record forged inside a submitted envelope does not chain); a bit flip in a length
field of an earlier record therefore stops the start (LEDGER_CORRUPT) instead of cutting off
every later block. ``keep_height`` (the ledger passes the state's savepoint + 1) makes the open
refuse (STATE_MISMATCH) rather than truncate blocks the state has already applied. A bad
record in the middle is not detected on open (that would need reading everything): ``get``
checks the checksum of every record it reads and :meth:`BlockStore.verify` checks all of
them. A record's length must fit where the record lies (before the next record), so a forged
length never makes a read allocate more than the record's real size.

File-system errors while opening (a data directory that is not writable or not a
directory, a full disk during recovery) are LedgerError IO_ERROR naming the path.

Chain checks on :meth:`BlockStore.append`: ``number == height()`` and ``previous_hash`` equals
the header hash of the previous block (``GENESIS_PREVIOUS_HASH`` for block 0). Header hashes
are over the canonical header encoding (``node.crypto.canonical.block_header_hash``) and
metadata is outside the hash, so a peer may store a copy of a block with its own validation
codes and state hash.

Concurrency: one writer and any number of readers (threads). Readers use ``os.pread`` on
per-segment descriptors; :meth:`BlockStore.wait_for_height` lets a deliver/event service
block until a new block is appended.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from rxchain.v1 import block_pb2

from node.crypto.canonical import GENESIS_PREVIOUS_HASH, block_data_hash, block_header_hash
from node.fsutil import fsync_dir, make_dirs_durable
from node.ledger.errors import LedgerError

_log = logging.getLogger(__name__)

MAGIC = b"RXB1"
_REC_HEAD = struct.Struct(">4sQII")  # magic, number, length, crc
REC_HEAD_SIZE = _REC_HEAD.size  # 20
_NUM_LEN = struct.Struct(">QI")
_IDX = struct.Struct(">IQ")
IDX_SIZE = _IDX.size  # 12
DEFAULT_SEGMENT_MAX_BYTES = 64 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024 * 1024
_SEG_RE = re.compile(r"^seg-(\d{6})\.blk$")
_SCAN_CHUNK = 1 << 20  # bytes read at a time when looking for intact records after bad bytes
_HEADER_PEEK = 4096  # bytes read to find the BlockHeader a record's payload opens with


def _seg_name(seg: int) -> str:
    return f"seg-{seg:06d}.blk"


def _record_crc(number: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_NUM_LEN.pack(number, len(payload))))


def encode_record(number: int, payload: bytes) -> bytes:
    """One record (header + payload) in the layout of the module docstring."""
    return _REC_HEAD.pack(MAGIC, number, len(payload), _record_crc(number, payload)) + payload


def _io_error(what: str, exc: OSError, block: int | None = None) -> LedgerError:
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    return LedgerError("IO_ERROR", f"{what}: {name}: {exc.strerror or exc}", block=block)


@dataclass(frozen=True)
class Location:
    """Where a block's record lives."""

    segment: int
    offset: int


@dataclass(frozen=True)
class StoreProblem:
    """The first problem found by :meth:`BlockStore.verify`."""

    number: int
    reason: str
    message: str


class BlockStore:
    """Append-only, checksummed, indexed block storage (see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: bool = True,
        segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES,
        readonly: bool = False,
        keep_height: int = 0,
    ) -> None:
        self._dir = os.fspath(directory)
        self._fsync = fsync
        self._segment_max = segment_max_bytes
        self._readonly = readonly
        self._keep_height = keep_height
        self.torn_tail: tuple[str, int] | None = None  # (segment file, offset) if found
        if readonly:
            if not os.path.isdir(self._dir):
                raise LedgerError("NOT_FOUND", f"no block store at {self._dir}")
        else:
            try:
                make_dirs_durable(self._dir, sync=fsync)
            except OSError as exc:
                raise _io_error(f"cannot create block store directory {self._dir}", exc) from exc
        self._failed: str | None = None  # why appends are refused until a reopen
        self._index_ok = True  # False after a failed index write (completed on the next open)
        self._lock = threading.RLock()
        self._grown = threading.Condition(self._lock)
        self._read_fds: dict[int, int] = {}
        self._locs: list[Location] = []
        self._last_hash = GENESIS_PREVIOUS_HASH
        self._closed = False
        self._write_fd = self._idx_fd = -1
        self._write_seg = self._write_pos = 0
        self._indexed = 0
        try:
            self._recover()
            if not readonly:
                self._open_for_append()
        except OSError as exc:
            self.close()
            raise _io_error(f"cannot open block store {self._dir}", exc) from exc
        except BaseException:
            self.close()
            raise
        if self._locs:
            self._last_hash = block_header_hash(self.get(len(self._locs) - 1).header)

    def _open_for_append(self) -> None:
        self._write_seg = self._locs[-1].segment if self._locs else 0
        path = os.path.join(self._dir, _seg_name(self._write_seg))
        idx_path = os.path.join(self._dir, "index.bin")
        self._write_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._write_pos = os.fstat(self._write_fd).st_size
        self._idx_fd = os.open(idx_path, os.O_RDWR | os.O_CREAT, 0o644)
        if self._fsync:
            # the segment's entry must outlive a power loss: synced even when the files exist,
            # as a run killed between creating them and this sync left the entries unsynced
            fsync_dir(self._dir)
        os.ftruncate(self._idx_fd, self._indexed * IDX_SIZE)
        missing = self._locs[self._indexed :]
        if missing:  # entries found by scanning the segments
            os.pwrite(
                self._idx_fd,
                b"".join(_IDX.pack(loc.segment, loc.offset) for loc in missing),
                self._indexed * IDX_SIZE,
            )
        self._indexed = len(self._locs)

    # ------------------------------------------------------------------ recovery

    def _is_torn_tail(self, seg: int, start: int, size: int, expect: int) -> bool:
        """True if the bad bytes at ``start`` look like an interrupted append of block ``expect``.

        That is: an incomplete header, or a sound header numbered ``expect`` whose record runs
        past the end of the file, or nothing but zero bytes (a filesystem that extended the
        file but did not write it) -- and in every case no intact record after ``start`` (an
        interrupted append is the last thing ever written to a segment). A bad record with
        more data after it (e.g. a flipped bit in a length field) is corruption, not a crash.

        Only block ``expect + 1`` chained to the bad record's own header counts as such data:
        the bytes after ``start`` are the bad record's payload if it is a torn append, and a
        payload holds envelopes anybody may submit, so a whole record forged inside one (any
        number, a valid checksum) must not turn a crash into a refused start. A forged one
        cannot name the header hash of the block that carries it (the header hashes it).
        """
        if size - start < REC_HEAD_SIZE:
            return True
        head = self._read_head(seg, start)
        if head is not None:
            if head[0] != expect or start + REC_HEAD_SIZE + head[1] < size:
                return False
            header = self._payload_header(seg, start + REC_HEAD_SIZE, size)
            if header is None:  # not even the block's header was written: nothing to chain to
                return True
            return not self._intact_record_after(
                seg, start + 1, size, expect, block_header_hash(header)
            )
        pos = start
        while pos < size:
            chunk = os.pread(self._fd(seg), min(_SCAN_CHUNK, size - pos), pos)
            if not chunk or chunk.count(0) != len(chunk):
                return False
            pos += len(chunk)
        return True

    def _payload_header(self, seg: int, offset: int, size: int) -> block_pb2.BlockHeader | None:
        """The BlockHeader that a Block payload starting at ``offset`` opens with (field 1,
        serialized first), or None if those bytes are not one."""
        raw = os.pread(self._fd(seg), min(_HEADER_PEEK, size - offset), offset)
        if len(raw) < 2 or raw[0] != 0x0A:  # field 1, length-delimited
            return None
        length, shift, i = 0, 0, 1
        while i < len(raw) and i <= 5:
            length |= (raw[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not raw[i - 1] & 0x80:
                break
        else:
            return None
        if i + length > len(raw):
            return None
        header = block_pb2.BlockHeader()
        try:
            header.ParseFromString(raw[i : i + length])
        except Exception:  # noqa: BLE001 - protobuf DecodeError: not a header
            return None
        return header

    def _intact_record_after(
        self, seg: int, start: int, size: int, expect: int, expect_hash: bytes
    ) -> bool:
        """True if a checksummed record of block ``expect + 1`` whose previous hash is
        ``expect_hash`` starts at or after ``start``."""
        fd = self._fd(seg)
        pos = start
        while pos < size:
            chunk = os.pread(fd, min(_SCAN_CHUNK, size - pos), pos)
            if not chunk:
                return False
            i = chunk.find(MAGIC)
            while i >= 0:
                head = self._read_head(seg, pos + i)
                if head is not None and head[0] == expect + 1 and (
                    self._chains_to(seg, pos + i, head[0], size, expect_hash)
                ):
                    return True
                i = chunk.find(MAGIC, i + 1)
            if pos + len(chunk) >= size:
                return False
            # the next chunk overlaps this one by len(MAGIC) - 1 bytes, so a magic split
            # between two chunks is still found
            pos += len(chunk) - (len(MAGIC) - 1)
        return False

    def _segments(self) -> list[int]:
        segs = []
        for name in os.listdir(self._dir):
            m = _SEG_RE.match(name)
            if m:
                segs.append(int(m.group(1)))
        return sorted(segs)

    def _read_index_file(self, segs: list[int]) -> list[Location]:
        """The index entries, at most as many as the segments can hold records (every record
        takes at least REC_HEAD_SIZE bytes): a damaged or sparse index file of any size is
        never read into memory whole."""
        path = os.path.join(self._dir, "index.bin")
        if not os.path.exists(path):
            return []
        room = sum(os.path.getsize(self._path(s)) for s in segs) // REC_HEAD_SIZE
        with open(path, "rb") as f:
            raw = f.read(room * IDX_SIZE)
        n = len(raw) // IDX_SIZE
        return [Location(*_IDX.unpack_from(raw, i * IDX_SIZE)) for i in range(n)]

    def _read_head(self, seg: int, offset: int) -> tuple[int, int, int] | None:
        """(number, length, crc) of the record at (seg, offset), or None if no valid header."""
        fd = self._fd(seg)
        head = os.pread(fd, REC_HEAD_SIZE, offset)
        if len(head) < REC_HEAD_SIZE:
            return None
        magic, number, length, crc = _REC_HEAD.unpack(head)
        if magic != MAGIC or length > MAX_RECORD_BYTES:
            return None
        return number, length, crc

    def _chains_to(self, seg: int, offset: int, number: int, size: int, prev_hash: bytes) -> bool:
        """True if the record at ``offset`` is intact, numbered ``number`` and its block's
        previous hash is ``prev_hash``."""
        if self._record_ok(seg, offset, number, size) is None:
            return False
        header = self._payload_header(seg, offset + REC_HEAD_SIZE, size)
        return header is not None and header.previous_hash == prev_hash

    def _record_ok(
        self, seg: int, offset: int, expect_number: int, size: int | None = None
    ) -> int | None:
        """Length of the whole record if it is complete, numbered right and checksums.

        ``size`` is the segment's size (looked up when None): a length running past it is
        refused before anything is read, so a forged length allocates nothing.
        """
        head = self._read_head(seg, offset)
        if head is None or head[0] != expect_number:
            return None
        number, length, crc = head
        if size is None:
            size = os.fstat(self._fd(seg)).st_size
        if offset + REC_HEAD_SIZE + length > size:
            return None
        payload = os.pread(self._fd(seg), length, offset + REC_HEAD_SIZE)
        if len(payload) != length or _record_crc(number, payload) != crc:
            return None
        return REC_HEAD_SIZE + length

    def _recover(self) -> None:
        segs = self._segments()
        seg_size = {s: os.path.getsize(self._path(s)) for s in segs}
        locs = self._read_index_file(segs)
        # Keep the longest prefix of index entries that point at record headers of the
        # right number, in increasing positions within their segment (a damaged offset may
        # be past what a read can even address); the last kept one must checksum too.
        good = 0
        prev: Location | None = None
        for i, loc in enumerate(locs):
            if (
                loc.segment not in seg_size
                or loc.offset + REC_HEAD_SIZE > seg_size[loc.segment]
                or (prev is not None and (loc.segment, loc.offset) <= (prev.segment, prev.offset))
            ):
                break
            head = self._read_head(loc.segment, loc.offset)
            if head is None or head[0] != i:
                break
            good, prev = i + 1, loc
        while good and not self._record_ok(locs[good - 1].segment, locs[good - 1].offset, good - 1):
            good -= 1
        if good < len(locs):
            _log.warning(
                "event=blockstore_index_incomplete dir=%r entries=%d usable=%d: completing the "
                "index from the segments", str(self._dir), len(locs), good,
            )
        locs = locs[:good]
        self._indexed = good
        if locs:
            last = locs[-1]
            head = self._read_head(last.segment, last.offset)
            assert head is not None
            seg, pos = last.segment, last.offset + REC_HEAD_SIZE + head[1]
        else:
            seg, pos = (segs[0] if segs else 0), 0
        # Scan forward from (seg, pos) through this and later segments.
        remaining = [s for s in segs if s >= seg]
        for i, s in enumerate(remaining):
            start = pos if s == seg else 0
            size = os.fstat(self._fd(s)).st_size
            while start < size:
                rec_len = self._record_ok(s, start, len(locs), size)
                if rec_len is None:
                    break
                locs.append(Location(s, start))
                start += rec_len
            if start < size:
                later = remaining[i + 1 :]
                if (later and any(os.path.getsize(self._path(x)) for x in later)) or (
                    not self._is_torn_tail(s, start, size, len(locs))
                ):
                    raise LedgerError(
                        "LEDGER_CORRUPT",
                        f"block store {self._dir}: block {len(locs)} is corrupted "
                        f"({_seg_name(s)} offset {start}) and more data follows it; "
                        "refusing to start (run `ledger verify`, restore or re-sync)",
                        block=len(locs),
                    )
                self.torn_tail = (_seg_name(s), start)
                if self._readonly:
                    break
                if len(locs) < self._keep_height:
                    raise LedgerError(
                        "STATE_MISMATCH",
                        f"block store {self._dir}: block {len(locs)} is damaged "
                        f"({_seg_name(s)} offset {start}) but the state has applied blocks up "
                        f"to {self._keep_height - 1}; refusing to cut them off (restore the "
                        "block files, or delete the state and re-sync)",
                        block=len(locs),
                    )
                _log.warning(
                    "event=blockstore_torn_tail dir=%r segment=%s offset=%d bytes=%d block=%d: "
                    "truncating the torn tail of the segment (the block is incomplete)",
                    str(self._dir), _seg_name(s), start, size - start, len(locs),
                )
                self._truncate(s, start)
                for x in later:
                    self._close_fd(x)
                    os.unlink(self._path(x))
                if later and self._fsync:
                    fsync_dir(self._dir)
                break
        self._locs = locs

    def _truncate(self, seg: int, size: int) -> None:
        fd = os.open(self._path(seg), os.O_RDWR)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ file handles

    def _path(self, seg: int) -> str:
        return os.path.join(self._dir, _seg_name(seg))

    def _fd(self, seg: int) -> int:
        fd = self._read_fds.get(seg)
        if fd is None:
            fd = os.open(self._path(seg), os.O_RDONLY)
            self._read_fds[seg] = fd
        return fd

    def _close_fd(self, seg: int) -> None:
        fd = self._read_fds.pop(seg, None)
        if fd is not None:
            os.close(fd)

    # ------------------------------------------------------------------ API

    @property
    def directory(self) -> str:
        """The directory holding the segments."""
        return self._dir

    def height(self) -> int:
        """Number of blocks stored (the number the next block must have)."""
        return len(self._locs)

    def last_hash(self) -> bytes:
        """Header hash of the last block (GENESIS_PREVIOUS_HASH when empty)."""
        return self._last_hash

    def append(self, block: block_pb2.Block) -> None:
        """Append ``block`` (serialized here) after checking its number and hash chain."""
        self.append_serialized(block, block.SerializeToString())

    def append_serialized(self, block: block_pb2.Block, payload: bytes) -> None:
        """Append a block whose serialization the caller already has (no re-serialising)."""
        with self._lock:
            self._check_open()
            if self._readonly:
                raise LedgerError("READ_ONLY", f"block store {self._dir} is open read-only")
            number = block.header.number
            if number != len(self._locs):
                raise LedgerError(
                    "BAD_BLOCK_NUMBER",
                    f"block number {number} does not follow height {len(self._locs)}",
                )
            if block.header.previous_hash != self._last_hash:
                raise LedgerError(
                    "BAD_PREVIOUS_HASH",
                    f"block {number}: previous_hash {block.header.previous_hash.hex()[:16]} "
                    f"!= hash of block {number - 1} {self._last_hash.hex()[:16]}",
                )
            if self._failed is not None:
                raise LedgerError(
                    "IO_ERROR",
                    f"block store {self._dir}: an earlier append failed and could not be rolled "
                    f"back ({self._failed}); reopen the store",
                    block=number,
                )
            record = encode_record(number, payload)
            try:
                if self._write_pos > 0 and self._write_pos + len(record) > self._segment_max:
                    self._roll_segment()
            except OSError as exc:
                self._failed = f"segment roll: {exc}"
                raise _io_error(f"block {number}: cannot start a new segment", exc, number) from exc
            offset = self._write_pos
            try:
                self._write_all(record)
                if self._fsync:
                    os.fsync(self._write_fd)
            except OSError as exc:
                self._roll_back(offset, exc)
                raise _io_error(
                    f"block {number}: cannot store it in {_seg_name(self._write_seg)}", exc, number
                ) from exc
            self._write_pos += len(record)
            loc = Location(self._write_seg, offset)
            if self._index_ok:
                try:
                    os.pwrite(self._idx_fd, _IDX.pack(loc.segment, loc.offset), number * IDX_SIZE)
                except OSError as exc:  # the record is stored: the next open completes the index
                    self._index_ok = False
                    _log.warning(
                        "event=blockstore_index_write_failed dir=%r block=%d error=%r: the index "
                        "is completed from the segments on the next open", str(self._dir), number,
                        str(exc),
                    )
            self._locs.append(loc)
            self._last_hash = block_header_hash(block.header)
            self._grown.notify_all()

    def _write_all(self, record: bytes) -> None:
        """Write ``record`` at the end of the segment (a short write is retried; the call that
        can write nothing more raises, e.g. ENOSPC)."""
        done = os.write(self._write_fd, record)
        while done < len(record):
            n = os.write(self._write_fd, memoryview(record)[done:])
            if n <= 0:
                raise OSError(errno.EIO, f"write returned {n}")
            done += n

    def _roll_back(self, offset: int, cause: OSError) -> None:
        """Cut a failed append off the segment, so the store is as before (else: fail closed)."""
        try:
            os.ftruncate(self._write_fd, offset)
            if self._fsync:
                os.fsync(self._write_fd)
        except OSError as exc:
            self._failed = f"{cause}; rollback: {exc}"
            _log.error("event=blockstore_rollback_failed dir=%r error=%r: rollback of a failed append "
                       "failed", str(self._dir), str(exc))

    def _roll_segment(self) -> None:
        os.close(self._write_fd)
        self._write_fd = -1
        self._write_seg += 1
        self._write_fd = os.open(
            self._path(self._write_seg), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644
        )
        self._write_pos = 0
        if self._fsync:
            fsync_dir(self._dir)

    def get_bytes(self, number: int) -> bytes:
        """The serialized Block ``number`` exactly as stored (checksum verified)."""
        if not 0 <= number < len(self._locs):
            raise LedgerError(
                "BLOCK_NOT_FOUND", f"block {number} not in store (height {len(self._locs)})"
            )
        loc = self._locs[number]
        with self._lock:  # the writer holds it: the room is computed from a consistent view
            self._check_open()
            fd = self._fd(loc.segment)
            room = self._room(number, loc, fd)
        head = os.pread(fd, REC_HEAD_SIZE, loc.offset)
        if len(head) != REC_HEAD_SIZE:
            raise LedgerError(
                "LEDGER_CORRUPT", f"block {number}: record header missing", block=number
            )
        magic, rec_number, length, crc = _REC_HEAD.unpack(head)
        if magic != MAGIC or rec_number != number or length > room:
            raise LedgerError(
                "LEDGER_CORRUPT",
                f"block {number}: bad record header in {_seg_name(loc.segment)}",
                block=number,
            )
        payload = os.pread(fd, length, loc.offset + REC_HEAD_SIZE)
        if len(payload) != length or _record_crc(number, payload) != crc:
            raise LedgerError(
                "LEDGER_CORRUPT",
                f"block {number}: checksum mismatch in {_seg_name(loc.segment)} "
                f"at offset {loc.offset}",
                block=number,
            )
        return payload

    def _room(self, number: int, loc: Location, fd: int) -> int:
        """The most payload bytes record ``number`` can hold where it lies (the next record
        or the end of the data written starts after it), so a damaged length field never
        makes a read allocate more than that."""
        locs = self._locs
        if number + 1 < len(locs) and locs[number + 1].segment == loc.segment:
            return locs[number + 1].offset - loc.offset - REC_HEAD_SIZE
        if self._write_fd >= 0 and loc.segment == self._write_seg:
            return self._write_pos - loc.offset - REC_HEAD_SIZE
        # the last record of a closed segment (or a read-only store): the file ends it
        return os.fstat(fd).st_size - loc.offset - REC_HEAD_SIZE

    def get(self, number: int) -> block_pb2.Block:
        """Block ``number`` (raises LedgerError BLOCK_NOT_FOUND / LEDGER_CORRUPT)."""
        payload = self.get_bytes(number)
        block = block_pb2.Block()
        try:
            block.ParseFromString(payload)
        except Exception as exc:  # protobuf DecodeError; checksum passed, so bytes are ours
            raise LedgerError(
                "LEDGER_CORRUPT", f"block {number} does not parse: {exc}", block=number
            ) from exc
        return block

    def iter_blocks(self, start: int = 0) -> Iterator[block_pb2.Block]:
        """Blocks ``start``, ``start+1``, ... up to the height at each step."""
        n = start
        while n < len(self._locs):
            yield self.get(n)
            n += 1

    def wait_for_height(self, height: int, timeout_s: float) -> bool:
        """Block until ``height() >= height`` or the timeout passes; True if reached."""
        with self._grown:
            return self._grown.wait_for(
                lambda: len(self._locs) >= height or self._closed, timeout=timeout_s
            ) and len(self._locs) >= height

    def verify(self) -> StoreProblem | None:
        """Check every record's checksum, numbering, data hash and the header hash chain.

        Returns the first problem (lowest block number) or None when the store is sound.
        """
        prev = GENESIS_PREVIOUS_HASH
        for n in range(len(self._locs)):
            try:
                block = self.get(n)
            except LedgerError as err:
                return StoreProblem(n, err.reason, err.message)
            if block.header.number != n:
                return StoreProblem(
                    n, "BAD_BLOCK_NUMBER", f"record {n} holds block {block.header.number}"
                )
            if block.header.previous_hash != prev:
                return StoreProblem(
                    n, "BAD_PREVIOUS_HASH", f"block {n}: previous_hash does not match block {n-1}"
                )
            if block.header.data_hash != block_data_hash(block.data.envelopes):
                return StoreProblem(
                    n, "BAD_DATA_HASH", f"block {n}: data hash does not match its envelopes"
                )
            prev = block_header_hash(block.header)
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError("CLOSED", f"block store {self._dir} is closed")

    def close(self) -> None:
        """Close all files (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self._write_fd, self._idx_fd):
                if fd >= 0:
                    os.close(fd)
            for seg in list(self._read_fds):
                self._close_fd(seg)
            self._grown.notify_all()

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
