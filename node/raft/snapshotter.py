"""Snapshot files: atomic write (tmp + fsync + rename + directory fsync), checksummed read.

File name: ``snap-<term:016x>-<index:016x>.snap``. File layout (integers unsigned
big-endian)::

    offset  size  field
    0       8     magic b"RXSNAP01"
    8       8     index
    16      8     term
    24      4     number of voters V
    28      8*V   voter ids
    ..      4     number of learners L
    ..      8*L   learner ids
    ..      8     length D of the application data
    ..      D     application data (opaque to Raft)
    end-4   4     CRC-32 (zlib.crc32) of everything before it

A file that fails its checksum or does not parse is ignored with a warning (a crash can
leave a half-written ``.tmp`` but never a half-written ``.snap``, because of the rename).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib

from node.fsutil import fsync_dir, make_dirs_durable
from node.raft.errors import RaftError
from node.raft.types import ConfState, Snapshot, SnapshotMeta

_log = logging.getLogger(__name__)

MAGIC = b"RXSNAP01"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_NAME_RE = re.compile(r"^snap-([0-9a-f]{16})-([0-9a-f]{16})\.snap$")


def encode_snapshot(snap: Snapshot) -> bytes:
    """The file layout of the module docstring."""
    meta = snap.meta
    out = bytearray(MAGIC)
    out += _U64.pack(meta.index) + _U64.pack(meta.term)
    for ids in (meta.conf_state.voters, meta.conf_state.learners):
        out += _U32.pack(len(ids))
        for node_id in ids:
            out += _U64.pack(node_id)
    out += _U64.pack(len(snap.data)) + snap.data
    out += _U32.pack(zlib.crc32(out))
    return bytes(out)


def decode_snapshot(raw: bytes) -> Snapshot:
    """Parse :func:`encode_snapshot` output; RaftError("snapshot_corrupt") if damaged."""
    if len(raw) < len(MAGIC) + 4 or raw[: len(MAGIC)] != MAGIC:
        raise RaftError("snapshot_corrupt", "bad magic or too short")
    body, crc = raw[:-4], _U32.unpack_from(raw, len(raw) - 4)[0]
    if zlib.crc32(body) != crc:
        raise RaftError("snapshot_corrupt", "checksum mismatch")
    try:
        pos = len(MAGIC)
        index, term = _U64.unpack_from(body, pos)[0], _U64.unpack_from(body, pos + 8)[0]
        pos += 16
        groups: list[tuple[int, ...]] = []
        for _ in range(2):
            (count,) = _U32.unpack_from(body, pos)
            pos += 4
            groups.append(tuple(_U64.unpack_from(body, pos + 8 * i)[0] for i in range(count)))
            pos += 8 * count
        (dlen,) = _U64.unpack_from(body, pos)
        pos += 8
        if pos + dlen != len(body):
            raise RaftError("snapshot_corrupt", "data length mismatch")
        data = bytes(body[pos:])
    except struct.error as exc:
        raise RaftError("snapshot_corrupt", str(exc)) from exc
    return Snapshot(SnapshotMeta(index, term, ConfState(groups[0], groups[1])), data)


class Snapshotter:
    """Saves and loads snapshot files in one directory, keeping the newest ``keep``."""

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3, fsync: bool = True):
        self._dir = os.fspath(directory)
        self._keep = keep
        self._fsync = fsync
        make_dirs_durable(self._dir, sync=fsync)  # a saved file must not vanish with its directory
        for name in os.listdir(self._dir):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(self._dir, name))

    @staticmethod
    def file_name(index: int, term: int) -> str:
        """File name of the snapshot at (index, term)."""
        return f"snap-{term:016x}-{index:016x}.snap"

    def save(self, snap: Snapshot) -> str:
        """Write ``snap`` atomically; returns its path. Nothing is deleted here: the caller
        calls :meth:`release` once the WAL records the snapshot it relies on."""
        name = self.file_name(snap.meta.index, snap.meta.term)
        path = os.path.join(self._dir, name)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(encode_snapshot(snap))
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self._fsync:
            fsync_dir(self._dir)
        return path

    def positions(self) -> list[tuple[int, int]]:
        """(index, term) of every snapshot file, newest (highest index) first."""
        found = []
        for name in os.listdir(self._dir):
            m = _NAME_RE.match(name)
            if m:
                found.append((int(m.group(2), 16), int(m.group(1), 16)))
        return sorted(found, reverse=True)

    def load(self, index: int, term: int) -> Snapshot | None:
        """The snapshot at (index, term), or None if absent or damaged (logged)."""
        path = os.path.join(self._dir, self.file_name(index, term))
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            snap = decode_snapshot(raw)
        except RaftError as err:
            _log.warning("event=snapshot_damaged path=%r detail=%r: ignoring it", str(path), err.detail)
            return None
        if (snap.meta.index, snap.meta.term) != (index, term):
            _log.warning("event=snapshot_mismatch path=%r: the file holds another position; ignoring it",
                         str(path))
            return None
        return snap

    def release(self, index: int, term: int) -> list[str]:
        """Delete the files that are not needed once the WAL records the snapshot at
        (``index``, ``term``): any newer file (saved, but a crash came before the WAL
        recorded it, so never relied on) and the older ones beyond the newest ``keep``
        (counting the recorded one). The recorded file itself is never deleted: recovery
        loads it. Returns the removed paths.

        (Pruning on save, as an earlier version did, let the stray files of a few such
        crashes push the recorded snapshot out: the node could not start again.)"""
        removed: list[str] = []
        kept = 0
        for pos in self.positions():
            if pos != (index, term) and (pos[0] >= index or kept >= self._keep):
                path = os.path.join(self._dir, self.file_name(*pos))
                os.unlink(path)
                removed.append(path)
            else:
                kept += 1
        if removed and self._fsync:
            fsync_dir(self._dir)
        return removed
