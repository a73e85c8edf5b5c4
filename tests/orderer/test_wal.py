"""WAL, snapshot files and DurableStorage: persistence, recovery, torn tails, corruption."""

from __future__ import annotations

import logging
import os

import pytest

from node.raft.durable import DurableStorage
from node.raft.errors import RaftError
from node.raft.snapshotter import Snapshotter, decode_snapshot, encode_snapshot
from node.raft.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from node.raft.wal import WAL, SnapshotMark, WALCorrupt

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


@pytest.mark.parametrize(
    "damage",
    ["truncate_mid_record", "append_garbage", "flip_last_byte", "zero_fill"],
)
def test_torn_tail_is_truncated_with_warning(tmp_path, caplog, damage):
    wal = WAL(tmp_path)
    wal.save(HardState(1, 1, 0), ents(1, 3))
    wal.save(HardState(1, 1, 2), ents(4, 4))
    wal.close()
    path = WAL(tmp_path).segment_paths()[-1]
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if damage == "truncate_mid_record":
            f.truncate(size - 7)
        elif damage == "append_garbage":
            f.seek(size)
            f.write(b"\xde\xad\xbe\xef\x01\x02\x03garbage-garbage")
        elif damage == "flip_last_byte":
            f.seek(size - 1)
            last = f.read(1)
            f.seek(size - 1)
            f.write(bytes([last[0] ^ 0xFF]))
        else:
            f.seek(size)
            f.write(b"\0" * 4096)
    with caplog.at_level(logging.WARNING, logger="node.raft.wal"):
        wal2 = WAL(tmp_path)
    assert any("torn tail" in r.getMessage() for r in caplog.records)
    rec = wal2.recovered
    assert rec.truncated_tail_bytes > 0
    indexes = [e.index for e in rec.entries]
    if damage in ("append_garbage", "zero_fill"):
        assert indexes == [1, 2, 3, 4]
        assert rec.hard_state == HardState(1, 1, 2)
    else:
        # The last record (hard state of the second save) is gone, its entry survives.
        assert indexes == [1, 2, 3, 4]
        assert rec.hard_state == HardState(1, 1, 0)
    # The file was repaired: writing continues and a further restart is clean.
    wal2.save(HardState(1, 1, 4), ents(5, 5))
    wal2.close()
    rec3 = WAL(tmp_path).recovered
    assert [e.index for e in rec3.entries] == [1, 2, 3, 4, 5]
    assert rec3.truncated_tail_bytes == 0


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
