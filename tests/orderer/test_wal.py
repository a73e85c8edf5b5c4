"""WAL, snapshot files and DurableStorage: persistence, recovery, torn tails, corruption."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
from pathlib import Path

import pytest

from node.crypto.canonical import GENESIS_PREVIOUS_HASH
from node.errors import RxError
from node.orderer.server import open_block_store, open_raft_storage
from node.raft.durable import DurableStorage
from node.raft.errors import RaftError, RaftStateLost
from node.raft.snapshotter import Snapshotter, decode_snapshot, encode_snapshot
from node.raft.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from node.raft.wal import (
    MAX_RECORD_BYTES,
    SECTOR_BYTES,
    WAL,
    SnapshotMark,
    WALCorrupt,
    _find_valid_record,
    _Replay,
    encode_entry,
    encode_hard_state,
    encode_snapshot_mark,
)
from tests.orderer.toyblocks import toy_block, toy_block_store

CONF = ConfState((1, 2, 3), ())


def ents(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, bytes([i % 256]) * size) for i in range(lo, hi + 1)]


def test_wal_roundtrip_and_conflict_truncation(tmp_path):
    wal = WAL(tmp_path)
    wal.save(HardState(1, 1, 0), ents(1, 5))
    wal.save(HardState(2, 2, 3), ents(4, 6, term=2))  # replaces 4, 5; adds 6
    wal.close()
    rec = WAL(tmp_path).recovered
    assert rec.hard_state == HardState(2, 2, 3)
    assert [(e.index, e.term) for e in rec.entries] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2),
                                                       (6, 2)]
    assert rec.entries[0].data == b"\x01" * 10
    assert rec.truncated_tail_bytes == 0


def test_wal_segments_roll_and_replay_across_them(tmp_path):
    wal = WAL(tmp_path, segment_bytes=200)
    for i in range(1, 30):
        wal.save(HardState(1, 1, i - 1), ents(i, i))
    assert len(wal.segment_paths()) > 3
    wal.close()
    rec = WAL(tmp_path, segment_bytes=200).recovered
    assert [e.index for e in rec.entries] == list(range(1, 30))
    assert rec.hard_state == HardState(1, 1, 28)


def _two_saves(tmp_path) -> str:
    """A WAL of two saves (entries 1..3 + hard state, entry 4 + hard state); returns the
    segment path. The last record is the second save's HARD_STATE (33 bytes)."""
    wal = WAL(tmp_path)
    wal.save(HardState(1, 1, 0), ents(1, 3))
    wal.save(HardState(1, 1, 2), ents(4, 4))
    path = wal.segment_paths()[-1]
    wal.close()
    return path


HS_RECORD = 8 + 1 + 24  # header, type byte, term | vote | commit


@pytest.mark.parametrize(
    "damage",
    ["truncate_mid_record", "truncate_mid_header", "partial_record_appended", "zero_fill",
     "last_record_zeroed"],
)
def test_torn_tail_is_truncated_with_warning(tmp_path, caplog, damage):
    """Only what a crash in the middle of a write can leave is a torn tail: the file ends
    inside a record or a record header (a partial write), or everything from the damaged
    record to end of file is zero (allocated space the write never reached)."""
    path = _two_saves(tmp_path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if damage == "truncate_mid_record":
            f.truncate(size - 7)
        elif damage == "truncate_mid_header":
            f.truncate(size - HS_RECORD + 5)
        elif damage == "partial_record_appended":
            # the first 20 bytes of a 1 KiB entry record that never reached the disk whole
            f.seek(size)
            f.write(encode_entry(Entry(1, 5, EntryType.NORMAL, b"q" * 1024))[:20])
        elif damage == "zero_fill":
            f.seek(size)
            f.write(b"\0" * 4096)
        else:
            f.seek(size - HS_RECORD)
            f.write(b"\0" * HS_RECORD)
    with caplog.at_level(logging.WARNING, logger="node.raft.wal"):
        wal2 = WAL(tmp_path)
    assert any("torn tail" in r.getMessage() for r in caplog.records)
    rec = wal2.recovered
    assert rec.truncated_tail_bytes > 0
    assert [e.index for e in rec.entries] == [1, 2, 3, 4]
    if damage in ("partial_record_appended", "zero_fill"):
        assert rec.hard_state == HardState(1, 1, 2)
    else:
        # The last record (hard state of the second save) is gone, its entry survives.
        assert rec.hard_state == HardState(1, 1, 0)
    # The file was repaired: writing continues and a further restart is clean.
    wal2.save(HardState(1, 1, 4), ents(5, 5))
    wal2.close()
    rec3 = WAL(tmp_path).recovered
    assert [e.index for e in rec3.entries] == [1, 2, 3, 4, 5]
    assert rec3.truncated_tail_bytes == 0


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        # One flipped bit in the complete, fsynced last record (the old rule repaired this
        # away as a torn tail, silently dropping e.g. a vote).
        ("flip_last_byte", "checksum mismatch in a complete record"),
        ("flip_vote_bit", "checksum mismatch in a complete record"),
        # Non-zero data that no writer of ours produces after the last record.
        ("append_garbage", "bad record length 3735928559 followed by non-zero data"),
        # The header of entry 4 damaged, every later (fsynced) record intact.
        ("length_zeroed_mid_file", "bad record length 0 followed by non-zero data"),
        ("length_huge_mid_file", "bad record length 4294967295 followed by non-zero data"),
        ("zero_run_mid_file", "bad record length 0 followed by non-zero data"),
    ],
)
def test_damage_a_crash_cannot_leave_is_fatal_not_truncated(tmp_path, caplog, damage, reason):
    path = _two_saves(tmp_path)
    size = os.path.getsize(path)
    entry4 = size - HS_RECORD - len(encode_entry(ents(4, 4)[0]))
    with open(path, "r+b") as f:
        if damage in ("flip_last_byte", "flip_vote_bit"):
            at = size - 1 if damage == "flip_last_byte" else size - 9  # low byte of the vote
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ (0xFF if damage == "flip_last_byte" else 0x01)]))
        elif damage == "append_garbage":
            f.seek(size)
            f.write(b"\xde\xad\xbe\xef\x01\x02\x03garbage-garbage")
        elif damage == "length_zeroed_mid_file":
            f.seek(entry4)
            f.write(struct.pack(">I", 0))
        elif damage == "length_huge_mid_file":
            f.seek(entry4)
            f.write(struct.pack(">I", 0xFFFFFFFF))
        else:
            f.seek(entry4)
            f.write(b"\0" * 16)
    damaged = Path(path).read_bytes()
    with caplog.at_level(logging.WARNING, logger="node.raft.wal"), pytest.raises(WALCorrupt) as err:
        WAL(tmp_path)
    assert reason in str(err.value)
    assert os.path.basename(path) in str(err.value)
    expected_at = entry4 if damage.endswith("mid_file") else (
        size if damage == "append_garbage" else size - HS_RECORD)
    assert err.value.offset == expected_at
    assert not any("torn tail" in r.getMessage() for r in caplog.records)
    assert Path(path).read_bytes() == damaged  # nothing was "repaired"
    with pytest.raises(WALCorrupt):  # and it stays refused
        WAL(tmp_path)


def _torn_big_save(tmp_path, entries: int) -> tuple[str, int, list[int]]:
    """Save entries 1..5 (acknowledged), then one save of ``entries`` 10 KB entries and a
    hard state; returns the segment path, where that save starts, and where its records
    start."""
    wal = WAL(tmp_path)
    wal.save(HardState(1, 1, 0), ents(1, 5))
    path = wal.segment_paths()[-1]
    acked = os.path.getsize(path)
    big = ents(6, 5 + entries, term=2, size=10_000)
    wal.save(HardState(2, 2, 5), big)
    wal.close()
    starts = [acked]
    for e in big:
        starts.append(starts[-1] + len(encode_entry(e)))
    return path, acked, starts


def _zero_from(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(offset)
        f.write(bytes(size - offset))


@pytest.mark.parametrize(
    ("entries", "where", "kept"),
    [
        # only the sector holding the record header reached the disk
        (1, "sector_after_header", 5),
        (1, "page_after_header", 5),
        # the first entry of the save complete, the second torn inside its body
        (3, "inside_second_entry", 6),
    ],
)
def test_a_save_torn_after_its_first_sectors_is_truncated(tmp_path, caplog, entries, where, kept):
    """A crash part-way through a save can leave its first sectors on disk and the rest of
    the file (its size already covering the save) zero: a checksum mismatch in the record
    straddling the boundary is a torn write when its body is zero from a sector boundary
    to end of file."""
    path, acked, starts = _torn_big_save(tmp_path, entries)
    if where == "sector_after_header":
        boundary = (acked + 8) // SECTOR_BYTES * SECTOR_BYTES + SECTOR_BYTES
    elif where == "page_after_header":
        boundary = (acked // 4096 + 1) * 4096
    else:
        boundary = (starts[1] + 5_000) // SECTOR_BYTES * SECTOR_BYTES
        assert starts[1] + 8 < boundary < starts[2]
    _zero_from(path, boundary)
    size = os.path.getsize(path)
    with caplog.at_level(logging.WARNING, logger="node.raft.wal"):
        wal = WAL(tmp_path)
    assert any("torn tail" in r.getMessage() and "checksum mismatch in a record zero from offset "
               f"{boundary}" in r.getMessage() for r in caplog.records)
    rec = wal.recovered
    assert [e.index for e in rec.entries] == list(range(1, kept + 1))
    assert rec.hard_state == HardState(1, 1, 0)  # the torn save's hard state is gone
    assert rec.truncated_tail_bytes == size - starts[kept - 5]
    assert os.path.getsize(path) == starts[kept - 5]
    wal.save(HardState(2, 2, 5), ents(kept + 1, kept + 1, term=2))
    wal.close()
    rec2 = WAL(tmp_path).recovered
    assert [e.index for e in rec2.entries] == list(range(1, kept + 2))
    assert rec2.truncated_tail_bytes == 0


def test_a_save_torn_at_a_sector_boundary_inside_a_record_checksum_is_truncated(tmp_path, caplog):
    """Found by tests/raft/test_durable_crash_fuzz.py: the sector boundary from which a power
    cut left the torn save zero fell inside the checksum field of its first record, so its
    body held no sector boundary and the tail read as a complete record damaged (WALCorrupt:
    the node could not start again)."""
    wal = WAL(tmp_path)
    path = wal.segment_paths()[-1]
    header = os.path.getsize(path)
    entry_overhead = len(encode_entry(Entry(1, 1)))
    # the next save's first record starts 6 bytes before a sector boundary: the boundary
    # falls in its checksum field (bytes 4 to 7 of the record)
    pad = SECTOR_BYTES - 6 - header - entry_overhead - HS_RECORD
    wal.save(HardState(1, 1, 0), [Entry(1, 1, data=b"p" * pad)])
    acked = os.path.getsize(path)
    assert acked == SECTOR_BYTES - 6
    wal.save(HardState(1, 1, 1), [Entry(1, 2, data=b"x" * 100)])
    wal.close()
    _zero_from(path, SECTOR_BYTES)
    with caplog.at_level(logging.WARNING, logger="node.raft.wal"):
        wal = WAL(tmp_path)
    assert any("torn tail" in r.getMessage() and "checksum mismatch in a record zero from offset "
               f"{SECTOR_BYTES}" in r.getMessage() for r in caplog.records)
    assert [e.index for e in wal.recovered.entries] == [1]
    assert wal.recovered.hard_state == HardState(1, 1, 0)
    assert os.path.getsize(path) == acked
    wal.close()


@pytest.mark.parametrize("damage", ["zero_sector_inside", "zero_to_record_end", "zero_tail_in_a_sector"])
def test_zero_damage_a_torn_write_cannot_explain_is_fatal(tmp_path, damage):
    """Zero bytes are a torn write only if they run from a sector boundary inside the
    damaged record to end of file: a zeroed sector with data after it, or a complete last
    record zeroed from inside a sector, is damage to fsynced data."""
    if damage == "zero_tail_in_a_sector":
        path = _two_saves(tmp_path)
        size = os.path.getsize(path)
        # the commit of the last hard state, a record lying inside one sector
        assert (size - HS_RECORD) // SECTOR_BYTES == (size - 1) // SECTOR_BYTES
        start, stop, expected_at = size - 8, size, size - HS_RECORD
    else:
        path, _acked, starts = _torn_big_save(tmp_path, 2)
        # a sector inside entry 6; entry 7 and the hard state after it intact
        start = (starts[0] + 2_000) // SECTOR_BYTES * SECTOR_BYTES
        stop = start + SECTOR_BYTES if damage == "zero_sector_inside" else starts[1]
        expected_at = starts[0]
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(stop - start))
    damaged = Path(path).read_bytes()
    with pytest.raises(WALCorrupt, match="checksum mismatch in a complete record") as err:
        WAL(tmp_path)
    assert err.value.offset == expected_at
    assert Path(path).read_bytes() == damaged


def _flip_length(path: str, at: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        (length,) = struct.unpack(">I", f.read(4))
        f.seek(at)
        f.write(struct.pack(">I", length ^ (1 << bit)))


@pytest.mark.parametrize(("record", "bit"), [("entry", 24), ("entry", 12), ("hard_state", 20)])
def test_a_flipped_length_bit_before_valid_records_is_fatal_not_truncated(tmp_path, caplog,
                                                                         record, bit):
    """One flipped bit makes the length of a fsynced record in the last segment run past
    end of file, which alone looks like a partial write; but valid records follow it, so
    it is damage (truncating would silently drop them, a vote among them)."""
    wal = WAL(tmp_path)
    wal.save(HardState(1, 1, 0), ents(1, 5))
    path = wal.segment_paths()[-1]
    entry6 = os.path.getsize(path)
    wal.save(HardState(1, 1, 3), ents(6, 10))
    hs = os.path.getsize(path) - HS_RECORD
    wal.save(HardState(3, 2, 10), [])  # a fsynced vote for node 2 in term 3
    wal.close()
    at = entry6 if record == "entry" else hs
    _flip_length(path, at, bit)
    damaged = Path(path).read_bytes()
    with caplog.at_level(logging.WARNING, logger="node.raft.wal"), pytest.raises(WALCorrupt) as err:
        WAL(tmp_path)
    assert "runs past end of file, but a valid record follows at offset" in str(err.value)
    assert err.value.offset == at
    assert not any("torn tail" in r.getMessage() for r in caplog.records)
    assert Path(path).read_bytes() == damaged


def test_a_flipped_length_bit_in_the_last_record_is_a_torn_tail(tmp_path):
    """Nothing follows the last record: a length running past end of file is what a
    partial write leaves, and is truncated (the limit of what recovery can tell)."""
    path = _two_saves(tmp_path)
    _flip_length(path, os.path.getsize(path) - HS_RECORD, 16)
    rec = WAL(tmp_path).recovered
    assert rec.truncated_tail_bytes == HS_RECORD
    assert rec.hard_state == HardState(1, 1, 0)


def test_the_search_for_a_valid_record_after_damage_is_bounded(tmp_path, caplog, monkeypatch):
    import node.raft.wal as wal_mod

    path = _two_saves(tmp_path)
    entry4 = os.path.getsize(path) - HS_RECORD - len(encode_entry(ents(4, 4)[0]))
    _flip_length(path, entry4, 20)
    monkeypatch.setattr(wal_mod, "_RESYNC_CRC_BUDGET", 10)  # less than any record
    with caplog.at_level(logging.WARNING, logger="node.raft.wal"):
        rec = WAL(tmp_path).recovered
    assert [e.index for e in rec.entries] == [1, 2, 3]
    assert any("was cut short" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "record",
    [encode_hard_state(HardState(2**64 - 1, 2**64 - 1, 2**64 - 1)), encode_snapshot_mark(SnapshotMark(7, 3)),
     encode_entry(Entry(1, 1, EntryType.NORMAL, b"")), encode_entry(Entry(9, 9, EntryType.CONF_CHANGE, b"c" * 300)),
     encode_entry(Entry(2**64 - 1, 5, EntryType.NORMAL, b"\xff" * 70_000))],
    ids=["hard_state", "snapshot", "empty_entry", "conf_change", "big_entry"],
)
def test_every_kind_of_record_is_found_after_damage(record):
    assert MAX_RECORD_BYTES >> 24 == 0x10  # the first length byte the prefilter allows
    assert {int(t) for t in EntryType} == {0, 1}  # the entry types it allows
    junk = b"\x00\x00\x10\x00" + b"\x02" * 40
    assert _find_valid_record(junk + record + b"\x00" * 9, 1) == (len(junk), True)
    assert _find_valid_record(junk + record[:-1], 1) == (None, True)


def test_the_search_checks_short_candidates_first(monkeypatch):
    """Junk claiming a long record does not use up the checksum budget before a shorter
    real record further on."""
    import node.raft.wal as wal_mod

    real = encode_entry(Entry(3, 7, EntryType.NORMAL, b"r" * 70_000))  # beyond _RESYNC_SHORT
    junk = struct.pack(">II", 200_000, 0) + bytes((1,)) + bytes(17)
    data = b"\x00" + junk + bytes(30) + real + bytes(200_000)
    monkeypatch.setattr(wal_mod, "_RESYNC_CRC_BUDGET", 100_000)
    assert _find_valid_record(data, 1) == (1 + len(junk) + 30, True)
    monkeypatch.setattr(wal_mod, "_RESYNC_CRC_BUDGET", 60_000)
    assert _find_valid_record(data, 1) == (None, False)


def test_corruption_in_the_middle_is_fatal_and_named(tmp_path):
    wal = WAL(tmp_path)
    wal.save(HardState(1, 1, 0), ents(1, 3, size=100))
    wal.save(HardState(1, 1, 2), ents(4, 6, size=100))
    wal.close()
    path = WAL(tmp_path).segment_paths()[-1]
    with open(path, "r+b") as f:
        f.seek(150)
        b = f.read(1)
        f.seek(150)
        f.write(bytes([b[0] ^ 0x55]))
    with pytest.raises(WALCorrupt) as err:
        WAL(tmp_path)
    assert os.path.basename(path) in str(err.value)
    assert "offset" in str(err.value)


def test_corruption_in_older_segment_is_fatal(tmp_path):
    wal = WAL(tmp_path, segment_bytes=100)
    for i in range(1, 10):
        wal.save(HardState(1, 1, 0), ents(i, i, size=50))
    paths = wal.segment_paths()
    wal.close()
    with open(paths[0], "r+b") as f:
        f.truncate(os.path.getsize(paths[0]) - 3)
    with pytest.raises(WALCorrupt, match="not the last"):
        WAL(tmp_path, segment_bytes=100)


def test_snapshot_mark_discards_conflicting_log_and_keeps_matching(tmp_path):
    wal = WAL(tmp_path)
    wal.save(HardState(1, 1, 5), ents(1, 8))
    wal.save_snapshot_mark(SnapshotMark(5, 1))  # matches entry 5: keep 6..8
    wal.close()
    rec = WAL(tmp_path).recovered
    assert rec.snapshot == SnapshotMark(5, 1)
    assert [e.index for e in rec.entries] == [6, 7, 8]
    wal = WAL(tmp_path)
    wal.save_snapshot_mark(SnapshotMark(20, 3))  # received from a leader: no match, discard
    wal.close()
    rec = WAL(tmp_path).recovered
    assert rec.snapshot == SnapshotMark(20, 3)
    assert rec.entries == []


def test_release_drops_only_segments_below_snapshot(tmp_path):
    wal = WAL(tmp_path, segment_bytes=300)
    for i in range(1, 40):
        wal.save(HardState(1, 1, i), ents(i, i, size=50))
    before = len(wal.segment_paths())
    wal.save_snapshot_mark(SnapshotMark(30, 1))
    removed = wal.release(ents(31, 39, size=50))
    assert len(removed) == before
    assert len(wal.segment_paths()) == 1
    wal.save(HardState(1, 1, 40), ents(40, 41, size=50))
    wal.close()
    rec = WAL(tmp_path, segment_bytes=300).recovered
    assert rec.snapshot == SnapshotMark(30, 1)
    assert [e.index for e in rec.entries] == list(range(31, 42))
    assert rec.hard_state == HardState(1, 1, 40)


def test_snapshot_file_roundtrip_and_damage(tmp_path):
    snap = Snapshot(SnapshotMeta(7, 2, ConfState((1, 2, 3), (4,))), b"app-state")
    assert decode_snapshot(encode_snapshot(snap)) == snap
    sn = Snapshotter(tmp_path, keep=2)
    sn.save(snap)
    assert sn.load(7, 2) == snap
    for i in range(8, 12):
        sn.save(Snapshot(SnapshotMeta(i, 2, CONF), b"x"))
    assert [p[0] for p in sn.positions()] == [11, 10, 9, 8, 7]  # saving deletes nothing
    # released relative to the recorded one: newer files (never recorded) go, and older
    # ones beyond keep
    sn.save(Snapshot(SnapshotMeta(12, 2, CONF), b"x"))
    assert len(sn.release(11, 2)) == 4
    assert [p[0] for p in sn.positions()] == [11, 10]
    path = tmp_path / Snapshotter.file_name(11, 2)
    raw = bytearray(path.read_bytes())
    raw[10] ^= 1
    path.write_bytes(bytes(raw))
    assert sn.load(11, 2) is None
    with pytest.raises(RaftError, match="snapshot_corrupt"):
        decode_snapshot(bytes(raw))


def test_durable_storage_recovers_exact_state(tmp_path):
    st = DurableStorage(tmp_path, bootstrap_conf_state=CONF, keep_entries=2)
    assert st.initial_state() == (HardState(), CONF)
    assert (st.first_index(), st.last_index()) == (1, 0)
    st.save_ready(HardState(1, 1, 0), ents(1, 10), None)
    st.save_ready(HardState(1, 1, 8), [], None, sync=False)
    st.create_snapshot(8, CONF, b"blocks-to-8")
    st.save_ready(HardState(2, 2, 10), ents(11, 12, term=2), None)
    st.close()
    st2 = DurableStorage(tmp_path, bootstrap_conf_state=ConfState((9,), ()))
    hs, cs = st2.initial_state()
    assert hs == HardState(2, 2, 10)
    assert cs == CONF  # from the snapshot, not the bootstrap argument
    assert st2.snapshot().data == b"blocks-to-8"
    assert st2.first_index() == 9
    assert st2.last_index() == 12
    assert st2.term(12) == 2
    assert [e.index for e in st2.entries(9, 13)] == [9, 10, 11, 12]
    st2.close()


def test_durable_storage_applies_received_snapshot(tmp_path):
    st = DurableStorage(tmp_path, bootstrap_conf_state=CONF)
    st.save_ready(HardState(1, 1, 1), ents(1, 3), None)
    snap = Snapshot(SnapshotMeta(50, 4, CONF), b"remote")
    st.save_ready(HardState(4, 0, 50), [], snap)
    st.save_ready(None, ents(51, 52, term=4), None)
    st.close()
    st2 = DurableStorage(tmp_path, bootstrap_conf_state=CONF)
    assert st2.snapshot() == snap
    assert (st2.first_index(), st2.last_index()) == (51, 52)
    assert st2.initial_state()[0] == HardState(4, 0, 50)
    st2.close()


def test_durable_storage_missing_snapshot_file_is_fatal(tmp_path):
    st = DurableStorage(tmp_path, bootstrap_conf_state=CONF)
    st.save_ready(HardState(1, 1, 3), ents(1, 3), None)
    st.create_snapshot(3, CONF, b"s")
    st.close()
    for name in os.listdir(tmp_path / "snap"):
        os.unlink(tmp_path / "snap" / name)
    with pytest.raises(RaftError, match="snapshot_missing"):
        DurableStorage(tmp_path, bootstrap_conf_state=CONF)


def test_snapshot_file_without_wal_marker_is_ignored(tmp_path):
    """A crash between writing a snapshot file and its WAL marker: recovery uses the last
    snapshot the WAL knows about, and the stray file changes nothing."""
    st = DurableStorage(tmp_path, bootstrap_conf_state=CONF)
    st.save_ready(HardState(1, 1, 6), ents(1, 6), None)
    st.create_snapshot(3, CONF, b"at-3")
    st.close()
    Snapshotter(tmp_path / "snap").save(Snapshot(SnapshotMeta(6, 1, CONF), b"stray-at-6"))
    st2 = DurableStorage(tmp_path, bootstrap_conf_state=CONF)
    assert st2.snapshot().data == b"at-3"
    assert (st2.first_index(), st2.last_index()) == (4, 6)
    st2.close()


def test_snapshot_files_a_crash_left_unmarked_never_prune_the_marked_one(tmp_path, monkeypatch):
    """Crashes between saving a snapshot file and writing its WAL marker, one per run: the
    stray newer files must not push the snapshot the WAL refers to out of the files kept
    (the node could never start again: snapshot_missing)."""
    st = DurableStorage(tmp_path, bootstrap_conf_state=CONF)
    st.save_ready(HardState(1, 1, 12), ents(1, 12), None)
    st.create_snapshot(3, CONF, b"at-3")
    st.close()
    for index in (5, 7, 9, 11):
        monkeypatch.setattr("node.raft.wal.WAL.save_snapshot_mark", _crash_before_mark)
        st = DurableStorage(tmp_path, bootstrap_conf_state=CONF)
        with pytest.raises(Crash):
            st.create_snapshot(index, CONF, b"at-%d" % index)
        st.close()
        monkeypatch.undo()
    st = DurableStorage(tmp_path, bootstrap_conf_state=CONF)
    assert st.snapshot().data == b"at-3"
    assert (st.first_index(), st.last_index()) == (4, 12)
    # the recovered node snapshots (and prunes) on as before
    st.create_snapshot(12, CONF, b"at-12")
    st.close()
    st = DurableStorage(tmp_path, bootstrap_conf_state=CONF)
    assert st.snapshot().data == b"at-12"
    st.close()


def test_a_received_snapshot_unmarked_by_a_crash_never_prunes_the_marked_one(tmp_path, monkeypatch):
    """The same crash window when saving a snapshot received from the leader."""
    st = DurableStorage(tmp_path, bootstrap_conf_state=CONF)
    st.save_ready(HardState(1, 1, 6), ents(1, 6), None)
    st.create_snapshot(3, CONF, b"at-3")
    st.close()
    for index in (20, 30, 40):
        monkeypatch.setattr("node.raft.wal.WAL.save_snapshot_mark", _crash_before_mark)
        st = DurableStorage(tmp_path, bootstrap_conf_state=CONF)
        with pytest.raises(Crash):
            st.save_ready(
                HardState(2, 2, index), [], Snapshot(SnapshotMeta(index, 2, CONF), b"leader")
            )
        st.close()
        monkeypatch.undo()
    st = DurableStorage(tmp_path, bootstrap_conf_state=CONF)
    assert st.snapshot().data == b"at-3"
    assert st.hard_state == HardState(1, 1, 6)
    st.close()


def _crash_before_mark(self, mark):
    raise Crash("power cut before the snapshot marker")


# ---------------------------------------------------------------- crash safety of release


class Crash(Exception):
    """The simulated power cut."""


class NamingOs:
    """``os`` that remembers the file name of each descriptor it opened (``name_of``);
    everything else is the real ``os``."""

    def __init__(self) -> None:
        self._paths: dict[int, str] = {}

    def __getattr__(self, name: str):
        return getattr(os, name)

    def name_of(self, fd: int) -> str:
        return self._paths.get(fd, "?")

    def open(self, path, flags, mode=0o777):
        fd = os.open(path, flags, mode)
        self._paths[fd] = os.path.basename(path)
        return fd

    def close(self, fd: int) -> None:
        self._paths.pop(fd, None)
        os.close(fd)


class CrashingOs(NamingOs):
    """Stands in for ``os`` inside node.raft.wal: every file operation that changes the
    directory or a file's bytes (write, replace, unlink) uses up one step of ``budget``;
    the operation that finds the budget at zero crashes -- a write first lets half of its
    bytes reach the file (a torn write). Everything done before the crash stays, in order
    (what the WAL's fsyncs guarantee). It records (operation, file name) in ``log`` and
    closes the descriptors the WAL left open on close_leftovers()."""

    def __init__(self, budget: int | None) -> None:
        super().__init__()
        self.budget = budget
        self.log: list[tuple[str, str]] = []

    def _step(self) -> None:
        if self.budget is not None:
            if self.budget == 0:
                raise Crash
            self.budget -= 1

    def fsync(self, fd: int) -> None:
        self.log.append(("fsync", self.name_of(fd)))
        os.fsync(fd)

    def write(self, fd: int, data) -> int:
        if self.budget == 0:
            os.write(fd, bytes(data[: len(data) // 2]))
            raise Crash
        self._step()
        self.log.append(("write", self.name_of(fd)))
        return os.write(fd, data)

    def replace(self, src, dst) -> None:
        self._step()
        self.log.append(("replace", os.path.basename(dst)))
        os.replace(src, dst)

    def unlink(self, path) -> None:
        self._step()
        self.log.append(("unlink", os.path.basename(path)))
        os.unlink(path)

    def close_leftovers(self) -> None:
        for fd in list(self._paths):
            self.close(fd)


def _wal_before_release(directory) -> list[Entry]:
    """Entries 1..30 over several segments, a snapshot marker at 20; returns the carry."""
    wal = WAL(directory, segment_bytes=400)
    for i in range(1, 31):
        wal.save(HardState(2, 1, i - 1), ents(i, i, term=2, size=60))
    wal.save_snapshot_mark(SnapshotMark(20, 2))
    assert len(wal.segment_paths()) >= 4
    wal.close()
    return ents(21, 30, term=2, size=60)


def test_release_survives_a_crash_at_every_step(tmp_path, monkeypatch):
    """A crash anywhere in release() -- in the middle of writing the compacted segment,
    before its rename, between the deletions of the older segments -- leaves a WAL that
    recovers every entry and the hard state (no entry lost, no WALCorrupt)."""
    import node.raft.wal as wal_mod

    base = tmp_path / "base"
    carry = _wal_before_release(base)
    crashed_at: list[str] = []
    for budget in range(64):  # bounded: release() takes a handful of steps
        d = tmp_path / f"crash{budget}"
        shutil.copytree(base, d)
        wal = WAL(d, segment_bytes=400)
        fake = CrashingOs(budget)
        monkeypatch.setattr(wal_mod, "os", fake)
        try:
            wal.release(carry)
            wal.close()
            done = True
        except Crash:
            done = False
            crashed_at.append(f"after {fake.log[-1]}" if fake.log else "in the first write")
        finally:
            monkeypatch.setattr(wal_mod, "os", os)
            fake.close_leftovers()  # what the crash left open
        rec = WAL(d, segment_bytes=400).recovered
        assert rec.snapshot == SnapshotMark(20, 2), (budget, crashed_at)
        assert [e.index for e in rec.entries] == list(range(21, 31)), (budget, crashed_at)
        assert rec.entries == carry
        assert rec.hard_state == HardState(2, 1, 29)
        assert not [n for n in os.listdir(d) if n.endswith(".tmp")]
        if done:
            break
    else:
        pytest.fail(f"release() never completed: {crashed_at}")
    # torn write, crash before rename, then one crash per deletion of an older segment
    old = len(os.listdir(base))
    assert budget == 2 + old
    assert len(crashed_at) == budget


def test_release_writes_the_new_segment_whole_then_deletes_newest_first(tmp_path, monkeypatch):
    import node.raft.wal as wal_mod

    carry = _wal_before_release(tmp_path)
    fake = CrashingOs(None)
    monkeypatch.setattr(wal_mod, "os", fake)
    monkeypatch.setattr(wal_mod, "fsync_dir", lambda d: fake.log.append(("fsync_dir", "")))
    try:
        wal = WAL(tmp_path, segment_bytes=400)
        old = [os.path.basename(p) for p in wal.segment_paths()]
        # the reopened last segment may end in what the previous process never synced
        assert fake.log == [("fsync", old[-1])]
        del fake.log[:]
        wal.release(carry)
        new = os.path.basename(wal.segment_paths()[-1])
        wal.close()
    finally:
        monkeypatch.setattr(wal_mod, "os", os)
    unlinks = [op for name in reversed(old) for op in (("unlink", name), ("fsync_dir", ""))]
    assert fake.log == [
        ("write", new + ".tmp"), ("fsync", new + ".tmp"), ("replace", new), ("fsync_dir", ""),
        *unlinks,
    ]


def test_replay_of_a_torn_compacted_segment_over_older_segments_keeps_every_entry(tmp_path):
    """The on-disk state a crash in the middle of the old release() could leave (older
    segments complete, the compacted segment torn inside its carried entries): its surviving
    carried entries are the same (index, term) as the older segments' and must not truncate
    the entries after them."""
    carry = _wal_before_release(tmp_path)
    wal = WAL(tmp_path, segment_bytes=400)
    seq = len(wal.segment_paths())
    wal.close()
    compacted = (encode_hard_state(HardState(2, 1, 29)) + encode_snapshot_mark(SnapshotMark(20, 2))
                 + b"".join(encode_entry(e) for e in carry))
    cut = len(compacted) - 7 * len(encode_entry(carry[0])) - 30  # inside carried entry 24
    (tmp_path / f"wal-{seq:016x}.log").write_bytes(compacted[:cut])
    rec = WAL(tmp_path, segment_bytes=400).recovered
    assert rec.truncated_tail_bytes > 0
    assert [e.index for e in rec.entries] == list(range(21, 31))
    assert rec.hard_state == HardState(2, 1, 29)


def test_replay_skips_a_matching_entry_and_truncates_only_on_a_term_conflict(tmp_path):
    wal = WAL(tmp_path)
    wal.save(HardState(1, 1, 0), ents(1, 5))
    wal.save(None, ents(3, 3))  # same (index, term) as the log's entry 3: nothing changes
    wal.close()
    rec = WAL(tmp_path).recovered
    assert [(e.index, e.term) for e in rec.entries] == [(i, 1) for i in range(1, 6)]
    wal = WAL(tmp_path)
    wal.save(HardState(2, 2, 0), ents(3, 4, term=2))  # conflict at 3: 3.. replaced
    wal.close()
    rec = WAL(tmp_path).recovered
    assert [(e.index, e.term) for e in rec.entries] == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_roll_fsyncs_the_segment_it_leaves_before_creating_the_next(tmp_path, monkeypatch):
    """A commit-only hard state is written without fsync; the segment holding it must be
    synced before a newer segment exists (a torn tail is only accepted in the last one)."""
    import node.raft.wal as wal_mod

    fake = CrashingOs(None)
    monkeypatch.setattr(wal_mod, "os", fake)
    try:
        # 33 bytes of header, then 3 entries of 86 bytes and a hard state: 324 < 340
        wal = WAL(tmp_path, segment_bytes=340)
        wal.save(HardState(1, 1, 0), ents(1, 3, size=60))
        first = os.path.basename(wal.segment_paths()[-1])
        del fake.log[:]
        wal.save(HardState(1, 1, 2), [], sync=False)
        assert fake.log == [("write", first)]
        wal.save(HardState(1, 1, 3), ents(4, 4))  # 357 >= 340: rolls first
        second = os.path.basename(wal.segment_paths()[-1])
        assert second != first
        assert fake.log[1:5] == [("fsync", first), ("write", second + ".tmp"),
                                 ("fsync", second + ".tmp"), ("replace", second)]
        wal.close()
    finally:
        monkeypatch.setattr(wal_mod, "os", os)
    rec = WAL(tmp_path, segment_bytes=340).recovered
    assert [e.index for e in rec.entries] == [1, 2, 3, 4]
    assert rec.hard_state == HardState(1, 1, 3)


def test_a_reopened_wal_syncs_its_last_segment_before_rolling(tmp_path, monkeypatch):
    """The process dies (the machine does not) right after a commit-only hard state filled
    the segment: replay reads it from the page cache, but it was never fsynced. The restarted
    WAL's first save rolls; the segment it leaves must be synced first, or a power loss then
    tears a segment that is no longer the last (WALCorrupt: the node cannot start). It is
    synced as the WAL opens (see the next test)."""
    import node.raft.wal as wal_mod

    fake = CrashingOs(None)
    monkeypatch.setattr(wal_mod, "os", fake)
    try:
        wal = WAL(tmp_path, segment_bytes=340)
        wal.save(HardState(1, 1, 0), ents(1, 3, size=60))  # 324 bytes
        wal.save(HardState(1, 1, 2), [], sync=False)  # 357 >= 340, in the page cache only
        wal.close()  # the process dies: nothing syncs the file
        del fake.log[:]
        wal = WAL(tmp_path, segment_bytes=340)
        first = os.path.basename(wal.segment_paths()[-1])
        assert ("fsync", first) in fake.log
        del fake.log[:]
        wal.save(HardState(1, 1, 3), ents(4, 4))  # rolls first
        second = os.path.basename(wal.segment_paths()[-1])
        assert second != first
        assert fake.log[:1] == [("write", second + ".tmp")]
        wal.close()
    finally:
        monkeypatch.setattr(wal_mod, "os", os)
    rec = WAL(tmp_path, segment_bytes=340).recovered
    assert [e.index for e in rec.entries] == [1, 2, 3, 4]
    assert rec.hard_state == HardState(1, 1, 3)


def test_a_reopened_wal_syncs_what_replay_read_before_the_node_acts_on_it(tmp_path, monkeypatch):
    """Found by tests/raft/test_durable_crash_fuzz.py: the process died in the fsync of a save
    holding a new term and vote (written, never synced); replay read them from the page cache
    and the restarted node acted on them at once -- sent messages of that term, granted that
    candidate its vote again, acknowledged recovered entries -- with no save to sync them: a
    power loss then took back the term and vote it had sent. The WAL syncs as it opens."""
    import node.raft.wal as wal_mod

    fake = CrashingOs(None)
    monkeypatch.setattr(wal_mod, "os", fake)
    try:
        wal = WAL(tmp_path)
        wal.save(HardState(1, 0, 0), ents(1, 2))
        wal.save(HardState(2, 3, 0), [], sync=False)  # as a save whose fsync never happened
        wal.close()  # the process dies
        del fake.log[:]
        wal = WAL(tmp_path)
        assert wal.recovered.hard_state == HardState(2, 3, 0)
        assert fake.log == [("fsync", os.path.basename(wal.segment_paths()[-1]))]
        wal.close()
    finally:
        monkeypatch.setattr(wal_mod, "os", os)


def test_durable_storage_creates_its_directories_durably(tmp_path, monkeypatch):
    """A new orderer's first vote is fsynced into raft/wal/, but a power loss can still drop
    the entries of raft/ and wal/ (and snap/) unless their parents are fsynced: the node
    would come back with no WAL, a blank voter that may vote twice in one term."""
    import node.fsutil as fsutil_mod
    import node.raft.snapshotter as snap_mod
    import node.raft.wal as wal_mod

    synced: list[str] = []

    def record(path) -> None:
        synced.append(os.path.abspath(path))

    for mod in (fsutil_mod, wal_mod, snap_mod):
        monkeypatch.setattr(mod, "fsync_dir", record)
    (tmp_path / "data").mkdir()
    storage = DurableStorage(tmp_path / "data" / "raft", bootstrap_conf_state=CONF)
    storage.save_ready(HardState(2, 1, 0), [], None)  # a vote
    storage.close()
    data, raft = str(tmp_path / "data"), str(tmp_path / "data" / "raft")
    assert data in synced  # holds raft/
    assert synced.count(raft) >= 1  # holds wal/ and snap/
    assert synced.index(raft) < synced.index(str(tmp_path / "data" / "raft" / "wal"))

    # fsync=False (tests, benchmarks) syncs nothing
    del synced[:]
    DurableStorage(tmp_path / "other" / "raft", fsync=False).close()
    assert synced == []


class FailingOs(NamingOs):
    """``os`` for node.raft.wal whose ``write`` to a file it opened with a name ending in
    ``suffix``, or to descriptor ``fd``, fails with ENOSPC while ``failing`` is set."""

    def __init__(self, suffix: str, fd: int = -1) -> None:
        super().__init__()
        self.suffix = suffix
        self.fd = fd
        self.failing = True

    def write(self, fd: int, data) -> int:
        if self.failing and (fd == self.fd or self.name_of(fd).endswith(self.suffix)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


def test_a_roll_failing_to_create_the_new_segment_keeps_the_old_one_open(tmp_path, monkeypatch):
    """ENOSPC while writing the new segment: the WAL still holds its own, open descriptor
    of the old segment (close() must not close a number the process has reused), and the
    next save rolls once there is space again."""
    import node.raft.wal as wal_mod

    wal = WAL(tmp_path, segment_bytes=200)
    wal.save(HardState(1, 1, 0), ents(1, 5))  # 33 + 5 * 36 + 33 >= 200: the next save rolls
    (old,) = wal.segment_paths()
    fake = FailingOs(".log.tmp")
    monkeypatch.setattr(wal_mod, "os", fake)
    with pytest.raises(OSError, match="No space left"):
        wal.save(HardState(1, 1, 5), ents(6, 6))
    assert wal.segment_paths() == [old]
    assert os.fstat(wal._fd).st_ino == os.stat(old).st_ino  # still ours, still open
    other = os.open(old, os.O_RDONLY)  # takes the lowest free descriptor number
    try:
        fake.failing = False
        wal.save(HardState(1, 1, 5), ents(6, 6))
        assert len(wal.segment_paths()) == 2
        wal.close()
        os.fstat(other)  # not closed behind our back
    finally:
        os.close(other)
        monkeypatch.setattr(wal_mod, "os", os)
    rec = WAL(tmp_path, segment_bytes=200).recovered
    assert [e.index for e in rec.entries] == [1, 2, 3, 4, 5, 6]
    assert rec.hard_state == HardState(1, 1, 5)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_a_failed_write_closes_the_wal_to_further_writes(tmp_path, monkeypatch):
    """A write that failed part-way may have left part of a record: appending more would
    put records after a damaged one. The WAL refuses writes until reopened."""
    import node.raft.wal as wal_mod

    wal = WAL(tmp_path)
    wal.save(HardState(1, 1, 0), ents(1, 2))
    fake = FailingOs(".log.tmp", fd=wal._fd)
    monkeypatch.setattr(wal_mod, "os", fake)
    with pytest.raises(OSError, match="No space left"):
        wal.save(HardState(1, 1, 1), ents(3, 3))
    fake.failing = False
    for write in (lambda: wal.save(HardState(1, 1, 1), ents(3, 3)),
                  lambda: wal.save_snapshot_mark(SnapshotMark(1, 1)),
                  lambda: wal.release(ents(2, 2))):
        with pytest.raises(RaftError, match="wal_failed"):
            write()
    wal.close()
    monkeypatch.setattr(wal_mod, "os", os)
    rec = WAL(tmp_path).recovered
    assert [e.index for e in rec.entries] == [1, 2]


def test_a_roll_failing_after_the_rename_closes_the_wal_to_further_writes(tmp_path, monkeypatch):
    """The new segment is in place but the directory fsync failed: writing on into the
    old segment (no longer the last) would put records before the new segment's header,
    which replay applies after them; the WAL refuses writes until reopened."""
    import node.raft.wal as wal_mod

    wal = WAL(tmp_path, segment_bytes=200)
    wal.save(HardState(1, 1, 0), ents(1, 5))
    old = Path(wal.segment_paths()[0])
    saved = old.read_bytes()

    def broken_fsync_dir(directory) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(wal_mod, "fsync_dir", broken_fsync_dir)
    with pytest.raises(OSError, match="Input/output error"):
        wal.save(HardState(2, 2, 5), ents(6, 6, term=2))
    monkeypatch.setattr(wal_mod, "fsync_dir", lambda directory: None)
    with pytest.raises(RaftError, match="wal_failed"):
        wal.save(HardState(2, 2, 5), ents(6, 6, term=2))
    wal.close()
    assert old.read_bytes() == saved
    rec = WAL(tmp_path, segment_bytes=200).recovered
    assert [e.index for e in rec.entries] == [1, 2, 3, 4, 5]
    assert rec.hard_state == HardState(1, 1, 0)


def _segment_bytes(directory) -> dict[str, bytes]:
    wal = WAL(directory, segment_bytes=400)
    saved = {p: Path(p).read_bytes() for p in wal.segment_paths()}
    wal.close()
    return saved


@pytest.mark.parametrize("deleted", [1, 2, 3])
def test_older_segments_left_by_an_oldest_first_deletion_are_superseded(tmp_path, caplog, deleted):
    """What a crash between the deletions of an earlier version's release() (oldest first)
    left: the oldest segments gone, later older ones still there, starting in the middle of
    the log, then the complete compacted segment. Its snapshot marker re-bases the log."""
    carry = _wal_before_release(tmp_path)
    saved = _segment_bytes(tmp_path)
    assert len(saved) > 3
    wal = WAL(tmp_path, segment_bytes=400)
    wal.release(carry)
    wal.close()
    for p, data in list(saved.items())[deleted:]:
        Path(p).write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="node.raft.wal"):
        rec = WAL(tmp_path, segment_bytes=400).recovered
    assert rec.snapshot == SnapshotMark(20, 2)
    assert rec.entries == carry
    assert rec.hard_state == HardState(2, 1, 29)
    assert any("superseded by the snapshot marker" in r.getMessage() for r in caplog.records)


def test_a_log_starting_in_the_middle_without_a_superseding_segment_is_fatal(tmp_path):
    wal = WAL(tmp_path, segment_bytes=300)
    for i in range(1, 20):
        wal.save(HardState(1, 1, i - 1), ents(i, i, size=60))
    paths = wal.segment_paths()
    wal.close()
    os.unlink(paths[0])
    with pytest.raises(WALCorrupt, match="leaves a gap"):
        WAL(tmp_path, segment_bytes=300)


def test_a_re_basing_segment_must_carry_what_it_supersedes(tmp_path):
    """Older segments starting mid-log are only superseded if every entry above the new
    snapshot that they hold is replayed again; a compacted segment missing one is fatal."""
    carry = _wal_before_release(tmp_path)
    saved = _segment_bytes(tmp_path)
    last_old, data = list(saved.items())[-1]  # entries above 21 only, then the marker at 20
    wal = WAL(tmp_path, segment_bytes=400)
    wal.release(carry[:-3])  # as if the compaction had not carried entries 28..30
    wal.close()
    Path(last_old).write_bytes(data)
    with pytest.raises(WALCorrupt, match="that no later segment carries") as err:
        WAL(tmp_path, segment_bytes=400)
    assert os.path.basename(last_old) in str(err.value)


def _write_segments(directory, first_seq: int, *segments: list[bytes]) -> list[Path]:
    paths = []
    for seq, records in enumerate(segments, first_seq):
        path = Path(directory) / f"wal-{seq:016x}.log"
        path.write_bytes(b"".join(records))
        paths.append(path)
    return paths


def _entries(entries: list[Entry]) -> list[bytes]:
    return [encode_entry(e) for e in entries]


@pytest.mark.parametrize("conflict_at", [6, 9, 10])
def test_a_term_conflict_below_a_mid_log_start_restarts_the_log_there(tmp_path, caplog, conflict_at):
    """The oldest segment left by an oldest-first deletion starts mid-log (entry 10) and
    holds a leader's rewrite starting below it: replay restarts the log at the rewrite
    (no IndexError, no negative list index wrapping onto a wrong entry), and the compacted
    segment's snapshot marker re-bases it."""
    _write_segments(
        tmp_path, 5,
        [encode_hard_state(HardState(1, 1, 3)), *_entries(ents(10, 12)),
         *_entries(ents(conflict_at, 14, term=2)), encode_hard_state(HardState(2, 2, 12))],
        [encode_hard_state(HardState(2, 2, 12)), encode_snapshot_mark(SnapshotMark(12, 2)),
         *_entries(ents(13, 14, term=2))],
    )
    with caplog.at_level(logging.WARNING, logger="node.raft.wal"):
        rec = WAL(tmp_path).recovered
    assert rec.snapshot == SnapshotMark(12, 2)
    assert rec.entries == ents(13, 14, term=2)
    assert rec.hard_state == HardState(2, 2, 12)
    assert any("superseded by the snapshot marker" in r.getMessage() for r in caplog.records)


def test_a_term_conflict_below_a_mid_log_start_still_needs_a_superseding_marker(tmp_path):
    (path,) = _write_segments(
        tmp_path, 5,
        [encode_hard_state(HardState(1, 1, 3)), *_entries(ents(10, 12)),
         *_entries(ents(7, 14, term=2)), encode_hard_state(HardState(2, 2, 12))],
    )
    with pytest.raises(WALCorrupt, match=r"entry 7 leaves a gap \(expected at most 1\)") as err:
        WAL(tmp_path)
    assert err.value.offset == len(encode_hard_state(HardState(1, 1, 3))) + 3 * len(encode_entry(ents(10, 10)[0]))
    assert err.value.path == str(path)


def test_a_term_conflict_rewriting_right_after_the_snapshot_closes_the_start_gap(tmp_path):
    """The rewrite starts right after the snapshot: the log no longer starts mid-log."""
    _write_segments(
        tmp_path, 5,
        [encode_hard_state(HardState(1, 1, 3)), encode_snapshot_mark(SnapshotMark(8, 1)),
         *_entries(ents(10, 12)), *_entries(ents(9, 14, term=2)), encode_hard_state(HardState(2, 2, 12))],
    )
    rec = WAL(tmp_path).recovered
    assert rec.snapshot == SnapshotMark(8, 1)
    assert rec.entries == ents(9, 14, term=2)
    assert rec.hard_state == HardState(2, 2, 12)


def test_an_entry_below_the_log_without_a_start_gap_is_corrupt_not_an_index_error():
    replay = _Replay()
    replay.apply("seg", 0, encode_entry(ents(1, 3)[0])[8:])  # seen an entry: no start gap
    replay.state.entries = ents(5, 6)  # a state no valid log leads to
    with pytest.raises(WALCorrupt, match="entry 2 is below the first entry 5"):
        replay.apply("seg", 99, encode_entry(ents(2, 2, term=2)[0])[8:])


def _legacy_scenario(directory) -> tuple[WAL, list[Entry]]:
    """Entries over ten segments, a leader change rewriting 25.. with term 2 (the
    conflict crossing segments), a snapshot marker at 30; returns the WAL and the carry."""
    wal = WAL(directory, segment_bytes=300, fsync=False)
    wal.save(HardState(1, 1, 0), ents(1, 12, size=30))
    for i in range(13, 30):
        wal.save(HardState(1, 1, i - 3), ents(i, i, size=30))
    wal.save(HardState(2, 3, 24), ents(25, 32, term=2, size=30))
    for i in range(33, 40):
        wal.save(HardState(2, 3, i - 2), ents(i, i, term=2, size=30))
    wal.save(HardState(2, 3, 37), [], sync=False)
    wal.save_snapshot_mark(SnapshotMark(30, 2))
    return wal, ents(31, 39, term=2, size=30)


def test_every_crash_of_an_oldest_first_deletion_replays_after_a_term_conflict(tmp_path):
    """Every state an earlier version's release() (oldest segments deleted first) could
    leave, over a log whose term conflict crosses segments."""
    wal, _ = _legacy_scenario(tmp_path / "probe")
    count = len(wal.segment_paths())
    wal.close()
    assert count >= 8
    for deleted in range(count + 1):
        d = tmp_path / f"deleted{deleted}"
        wal, carry = _legacy_scenario(d)
        old = wal.segment_paths()
        wal._roll(carry)  # the compacted segment, then the oldest ``deleted`` removed
        for p in old[:deleted]:
            os.unlink(p)
        wal.close()
        rec = WAL(d, segment_bytes=300, fsync=False).recovered
        assert rec.snapshot == SnapshotMark(30, 2), deleted
        assert rec.entries == carry, deleted
        assert rec.hard_state == HardState(2, 3, 37), deleted


# ---------------------------------------------------------------- a lost WAL


def _storage_with_history(base) -> None:
    st = DurableStorage(base, bootstrap_conf_state=CONF, keep_entries=0)
    st.save_ready(HardState(7, 1, 5), ents(1, 5, term=7), None)
    st.create_snapshot(5, CONF, b"state@5")
    st.close()


def test_a_wal_lost_beside_snapshot_files_is_refused_every_time(tmp_path):
    """wal/ gone, snap/ still there: starting as a blank voter (term 0, no vote) could
    lose a committed entry; refused, naming the recovery, and nothing is written (so the
    next start is refused again rather than finding a fresh WAL)."""
    _storage_with_history(tmp_path)
    shutil.rmtree(tmp_path / "wal")
    for _ in range(2):
        with pytest.raises(RaftStateLost) as err:
            DurableStorage(tmp_path, bootstrap_conf_state=CONF)
        assert err.value.reason == "raft_state_lost"
        assert "snapshot file(s) (the newest at Raft index 5, term 7)" in err.value.detail
        assert "remove this node from the Raft membership" in err.value.detail
        assert "re-add it as a new member" in err.value.detail
        assert not os.path.exists(tmp_path / "wal") or os.listdir(tmp_path / "wal") == []


def test_a_wal_lost_beside_other_history_is_refused_and_a_new_node_starts(tmp_path):
    with pytest.raises(RaftStateLost, match="the block store holds blocks up to 4"):
        DurableStorage(tmp_path / "a", bootstrap_conf_state=CONF,
                       prior_history="the block store holds blocks up to 4")
    # A brand-new node: nothing anywhere.
    st = DurableStorage(tmp_path / "b", bootstrap_conf_state=CONF)
    assert st.initial_state() == (HardState(), CONF)
    st.save_ready(HardState(1, 1, 0), ents(1, 2), None)
    st.close()
    # With its WAL in place, other history is no reason to refuse.
    st = DurableStorage(tmp_path / "b", bootstrap_conf_state=CONF,
                        prior_history="the block store holds blocks up to 4")
    assert st.last_index() == 2
    st.close()
    # A crash while creating the very first segment leaves only a .tmp: still a new node.
    (tmp_path / "c" / "wal").mkdir(parents=True)
    (tmp_path / "c" / "wal" / "wal-0000000000000000.log.tmp").write_bytes(b"\x00\x00")
    st = DurableStorage(tmp_path / "c", bootstrap_conf_state=CONF)
    assert os.listdir(tmp_path / "c" / "wal") == ["wal-0000000000000000.log"]
    st.close()


def test_orderer_refuses_to_start_with_blocks_past_genesis_and_no_wal(tmp_path):
    blocks = toy_block_store(tmp_path / "blocks", 3)
    try:
        with pytest.raises(RxError) as err:
            open_raft_storage(tmp_path / "raft", blocks, [1, 2, 3], 2, fsync=False)
        assert err.value.reason == "RAFT_STATE_LOST"
        assert "holds blocks up to 2" in err.value.message
        assert "remove it from the consortium's orderer set" in err.value.message
        assert not os.path.exists(tmp_path / "raft" / "wal") or not os.listdir(tmp_path / "raft" / "wal")
    finally:
        blocks.close()
    genesis_only = toy_block_store(tmp_path / "new" / "blocks", 1)
    try:
        st = open_raft_storage(tmp_path / "new" / "raft", genesis_only, [1, 2, 3], 2, fsync=False)
        assert st.initial_state() == (HardState(), ConfState((1, 2, 3), ()))
        st.close()
    finally:
        genesis_only.close()


def test_the_orderer_creates_its_data_directory_durably(tmp_path, monkeypatch):
    """The orderer's block store is written without fsync and created data/ the same way
    (serve() called BlockStore(fsync=False) directly): a power loss could drop data/ from its
    parent, raft/ and the WAL with it, and the orderer came back as a blank voter."""
    import node.fsutil as fsutil_mod

    synced: list[str] = []
    monkeypatch.setattr(fsutil_mod, "fsync_dir", lambda p: synced.append(os.path.abspath(p)))
    home = tmp_path / "orderer.ins01"
    home.mkdir()
    genesis = toy_block(0, GENESIS_PREVIOUS_HASH)
    blocks = open_block_store(home / "data", genesis)
    blocks.close()
    assert synced[:2] == [str(home), str(home / "data")]  # the entries of data/ and blocks/
    assert synced[2:] == _ancestors(home)  # then home's own entry and up (make_dirs_durable)
    synced.clear()
    blocks = open_block_store(home / "data", genesis)  # a restart: nothing to create
    try:
        assert blocks.height() == 1  # the genesis block, once
    finally:
        blocks.close()
    # synced again all the same: a run that crashed before its fsync left them undurable
    assert synced == [str(home / "data"), str(home), *_ancestors(home)]


def _ancestors(path: Path) -> list[str]:
    """The directories holding ``path``'s entry and each ancestor's, up to the root."""
    out, p = [], os.path.abspath(path)
    while os.path.dirname(p) != p:
        p = os.path.dirname(p)
        out.append(p)
    return out


def test_the_orderer_refuses_to_start_when_its_data_directory_cannot_be_synced(tmp_path, monkeypatch):
    """A failed fsync of the directory holding data/ (EIO) is an IO_ERROR naming the path, the
    orderer does not start: it was suppressed with the creation's own errors, the directories
    existed all the same and the orderer went on writing its WAL into a data/ a power loss
    could drop (the blank voter open_block_store exists to prevent)."""
    import node.fsutil as fsutil_mod

    def eio(path: str) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), path)

    monkeypatch.setattr(fsutil_mod, "fsync_dir", eio)
    home = tmp_path / "orderer.ins01"
    home.mkdir()
    with pytest.raises(RxError) as err:
        open_block_store(home / "data", toy_block(0, GENESIS_PREVIOUS_HASH))
    assert err.value.reason == "IO_ERROR" and str(home / "data" / "blocks") in err.value.message
    assert "EIO" in err.value.message


def test_a_wal_whose_fsync_fails_as_it_opens_refuses_to_open_and_leaves_no_descriptor(tmp_path, monkeypatch):
    """The sync at open (see test_a_reopened_wal_syncs_what_replay_read_before_the_node_acts_on_it)
    failing (EIO) is a failed start, not a WAL running on unsynced state."""
    import node.raft.wal as wal_mod

    WAL(tmp_path).close()
    fake = CrashingOs(None)

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "fsync failed")

    fake.fsync = failing_fsync  # type: ignore[method-assign]
    monkeypatch.setattr(wal_mod, "os", fake)
    before = set(os.listdir("/proc/self/fd"))
    try:
        with pytest.raises(OSError, match="fsync failed"):
            WAL(tmp_path)
    finally:
        monkeypatch.setattr(wal_mod, "os", os)
    assert set(os.listdir("/proc/self/fd")) <= before
