"""Red-team findings on the peer's block store, state database and crash recovery.

Each finding's test failed on the code before the fix:

* a failed append (disk full / EFBIG / EIO mid-write or on fsync) left the partial record in
  the segment and the in-memory write position stale: the next append recorded a wrong offset,
  so the block read back as LEDGER_CORRUPT and the store refused to start for good;
* a flipped bit in a length field, with the (never fsynced) index short, was taken for a torn
  tail and every later block of the segment was truncated away -- also blocks the state had
  applied already;
* a state database of another network at the block store's height was used as is;
* a flipped bit in a state SSTable was read back as a silently different value;
* new directories and the first segment file were never fsynced into their parents;
* a data directory that cannot be created or opened, a full disk in the state batch: bare
  OSError / plyvel.IOError (no reason code);
* a forged record length made a read allocate up to 1 GiB; a sparse index file was read whole;
* a whole record forged inside a submitted envelope made the interrupted append of its block
  look like corruption with data after it: LEDGER_CORRUPT instead of a torn tail;
* a first segment created by a run killed before it synced the directory was never synced;
* an index offset flipped past what os.pread can address was a bare OverflowError on open;
* a state directory that lost its CURRENT file was opened as a new database holding only the
  newest log (LevelDB deleted the older tables), taken as sound.

Two regression guards (pass before and after): an interrupted append is still truncated,
and a kill at every byte of an append converges to the never-crashed ledger.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from rxchain.v1 import transaction_pb2 as tx_pb

from node.crypto.canonical import block_data_hash, block_header_hash
from node.fsutil import fsync_dir
from node.ledger.blockstore import IDX_SIZE, REC_HEAD_SIZE, BlockStore, encode_record
from node.ledger.errors import LedgerError
from node.ledger.ledger import Ledger
from node.ledger.statedb import KeyWrite, StateDB, TxOutcome
from node.ledger.txwrites import outcomes_from_block
from tests.ledger.chain import dump_state, make_chain, store_blocks
from tests.ledger.crash_driver import build_block, commit_blocks

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 5


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    d = tmp_path_factory.mktemp("ref")
    with Ledger(d, fsync=False) as ledger:
        commit_blocks(ledger, TOTAL)
        state_hash = ledger.state_hash()
    return state_hash, dump_state(d), (d / "blocks" / "seg-000000.blk").read_bytes()


# ---------------------------------------------------------------- failed appends


# Runs in a child process: RLIMIT_FSIZE makes the kernel cut the block's write short (EFBIG),
# exactly what a full disk does to a write. The child then lifts the limit and goes on.
_FSIZE_CHILD = r"""
import os, resource, signal, sys
from node.ledger.ledger import Ledger
from tests.ledger.crash_driver import commit_blocks, try_commit

directory, total = sys.argv[1], int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
with Ledger(directory) as ledger:
    commit_blocks(ledger, 3)
    seg = os.path.join(directory, "blocks", "seg-000000.blk")
    before = os.path.getsize(seg)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(seg) + 30, hard))
    try:
        print(try_commit(ledger, 3))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    print("grew_by", os.path.getsize(seg) - before)
    commit_blocks(ledger, total)  # the disk has room again: the same peer goes on
    print("height", ledger.height(), "get3", ledger.block(3).header.number)
"""


def test_disk_full_mid_append_is_rolled_back_and_the_ledger_goes_on(tmp_path, reference):
    proc = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(tmp_path), str(TOTAL)],
                          cwd=ROOT, capture_output=True, timeout=60, check=False)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, out + err
    lines = out.splitlines()
    assert lines[0] == "refused IO_ERROR", out
    assert lines[1] == "grew_by 0", out  # the partial record was cut off at once
    assert lines[2] == f"height {TOTAL} get3 3", out
    # The partial record was cut off: the segment is byte for byte a never-failed run's.
    assert (tmp_path / "blocks" / "seg-000000.blk").read_bytes() == reference[2]
    with Ledger(tmp_path) as ledger:
        assert ledger.height() == TOTAL
        assert ledger.state_hash() == reference[0]
    assert dump_state(tmp_path) == reference[1]


_STATE_FULL_CHILD = r"""
import glob, os, resource, signal, sys
from node.ledger.ledger import Ledger
from tests.ledger.crash_driver import commit_blocks, try_commit

directory, total = sys.argv[1], int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)


def hook(point, number):
    if point == "mid_batch" and number == 3:  # the block is stored; its batch will not fit
        log = max(glob.glob(os.path.join(directory, "state", "*.log")), key=os.path.getmtime)
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(log) + 10, hard))


with Ledger(directory, crash_hook=hook) as ledger:
    commit_blocks(ledger, 3)
    try:
        print(try_commit(ledger, 3))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    print(try_commit(ledger, 4))
with Ledger(directory) as ledger:  # the restart replays block 3
    commit_blocks(ledger, total)
    print("height", ledger.height())
"""


def test_disk_full_during_the_state_batch_is_io_error_and_the_restart_replays(
    tmp_path, reference
):
    proc = subprocess.run([sys.executable, "-c", _STATE_FULL_CHILD, str(tmp_path), str(TOTAL)],
                          cwd=ROOT, capture_output=True, timeout=60, check=False)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, out + err
    assert out.splitlines() == ["refused IO_ERROR", "refused STATE_MISMATCH", f"height {TOTAL}"], out
    with Ledger(tmp_path) as ledger:
        assert ledger.state_hash() == reference[0]
    assert dump_state(tmp_path) == reference[1]


def _write_then_fail(real_write: Any, keep: int, fail_errno: int) -> Any:
    calls = {"n": 0}

    def write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return int(real_write(fd, bytes(data)[:keep]))  # a short write ...
        raise OSError(fail_errno, os.strerror(fail_errno))  # ... then no room at all

    return write


def test_enospc_after_a_short_write_leaves_the_store_as_before(tmp_path, monkeypatch):
    blocks = make_chain(4)
    seg = tmp_path / "seg-000000.blk"
    with BlockStore(tmp_path) as bs:
        bs.append(blocks[0])
        bs.append(blocks[1])
        size = seg.stat().st_size
        monkeypatch.setattr(os, "write",
                            _write_then_fail(os.write, 25, errno.ENOSPC))
        with pytest.raises(LedgerError) as e:
            bs.append(blocks[2])
        monkeypatch.undo()
        assert seg.stat().st_size == size  # the partial record is gone at once
        assert bs.height() == 2
        assert e.value.reason == "IO_ERROR"
        assert "ENOSPC" in e.value.message
        bs.append(blocks[2])
        bs.append(blocks[3])
        assert [bs.get(i) for i in range(4)] == blocks
    with BlockStore(tmp_path) as bs:
        assert bs.height() == 4
        assert bs.verify() is None


def test_failed_fsync_is_rolled_back(tmp_path, monkeypatch):
    blocks = make_chain(3)
    seg = tmp_path / "seg-000000.blk"
    with BlockStore(tmp_path) as bs:
        bs.append(blocks[0])
        size = seg.stat().st_size

        real_fsync, failed = os.fsync, list[int]()

        def eio_once(fd: int) -> None:
            if not failed:
                failed.append(fd)
                raise OSError(errno.EIO, "I/O error")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", eio_once)
        with pytest.raises(LedgerError) as e:
            bs.append(blocks[1])
        monkeypatch.undo()
        assert e.value.reason == "IO_ERROR"
        assert seg.stat().st_size == size and bs.height() == 1
        bs.append(blocks[1])
        bs.append(blocks[2])
    with BlockStore(tmp_path) as bs:
        assert [b.header.number for b in bs.iter_blocks()] == [0, 1, 2]


def test_append_fails_closed_when_the_rollback_fails_and_reopen_heals(tmp_path, monkeypatch):
    blocks = make_chain(3)
    with BlockStore(tmp_path) as bs:
        bs.append(blocks[0])
        monkeypatch.setattr(os, "write",
                            _write_then_fail(os.write, 25, errno.ENOSPC))

        def no_truncate(fd: int, length: int) -> None:
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(os, "ftruncate", no_truncate)
        with pytest.raises(LedgerError):
            bs.append(blocks[1])
        monkeypatch.undo()
        with pytest.raises(LedgerError) as e:  # never appended after the partial record
            bs.append(blocks[1])
        assert e.value.reason == "IO_ERROR" and "reopen" in e.value.message
        assert bs.height() == 1
    with BlockStore(tmp_path) as bs:  # the partial record is a torn tail: truncated
        assert bs.height() == 1
        bs.append(blocks[1])
        bs.append(blocks[2])
        assert bs.verify() is None


def test_failed_index_write_does_not_fail_a_stored_block(tmp_path, monkeypatch):
    blocks = make_chain(3)
    with BlockStore(tmp_path) as bs:
        bs.append(blocks[0])

        def enospc(fd: int, data: bytes, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "pwrite", enospc)
        bs.append(blocks[1])  # the record is synced: the index is only a cache
        bs.append(blocks[2])
        monkeypatch.undo()
        assert bs.get(2) == blocks[2]
    with BlockStore(tmp_path) as bs:
        assert bs.height() == 3 and bs.verify() is None


# ---------------------------------------------------------------- damage vs torn tail


def _flip_length(seg: Path, offset: int, bit: int) -> None:
    data = bytearray(seg.read_bytes())
    data[offset + 12 + (3 - bit // 8)] ^= 1 << (bit % 8)  # u32 big-endian length at +12
    seg.write_bytes(bytes(data))


def test_flipped_length_in_a_middle_record_is_corruption_not_a_torn_tail(tmp_path):
    blocks = make_chain(10)
    loc5 = store_blocks(tmp_path, blocks)[5]
    seg = tmp_path / "seg-000000.blk"
    _flip_length(seg, loc5.offset, 22)  # block 5 now claims ~4 MiB: past the end of the file
    size = seg.stat().st_size
    os.truncate(tmp_path / "index.bin", 3 * IDX_SIZE)  # the unsynced index lost its tail
    with pytest.raises(LedgerError) as e:
        BlockStore(tmp_path)
    assert e.value.reason == "LEDGER_CORRUPT" and e.value.block == 5
    assert seg.stat().st_size == size  # blocks 5..9 were not thrown away
    with pytest.raises(LedgerError) as e:  # `ledger verify` (read-only) names it too
        BlockStore(tmp_path, readonly=True)
    assert e.value.reason == "LEDGER_CORRUPT" and e.value.block == 5


def test_damaged_applied_block_is_never_truncated_by_the_ledger(tmp_path):
    with Ledger(tmp_path, fsync=False) as ledger:
        commit_blocks(ledger, TOTAL)
        last = ledger.blocks._locs[TOTAL - 1]
    seg = tmp_path / "blocks" / "seg-000000.blk"
    _flip_length(seg, last.offset, 21)  # the last record now looks like an interrupted append
    (tmp_path / "blocks" / "index.bin").unlink()
    size = seg.stat().st_size
    with pytest.raises(LedgerError) as e:
        Ledger(tmp_path)
    assert seg.stat().st_size == size  # the applied block is still there to be restored
    assert e.value.reason == "STATE_MISMATCH" and e.value.block == TOTAL - 1


def test_interrupted_append_is_still_truncated(tmp_path, reference):
    """The torn-tail rule did not get stricter for real crashes."""
    with Ledger(tmp_path, fsync=False) as ledger:
        commit_blocks(ledger, TOTAL - 1)
        block = build_block(TOTAL - 1, ledger.blocks.last_hash())
        block.metadata.state_hash = b"\x01" * 32
    seg = tmp_path / "blocks" / "seg-000000.blk"
    record = encode_record(TOTAL - 1, block.SerializeToString())
    with open(seg, "ab") as f:
        f.write(record[: len(record) // 2])
    with Ledger(tmp_path, fsync=False) as ledger:
        assert ledger.height() == TOTAL - 1
        commit_blocks(ledger, TOTAL)
        assert ledger.state_hash() == reference[0]


def test_interrupted_append_of_a_block_carrying_a_forged_record_is_truncated(tmp_path, reference):
    """An envelope is anybody's bytes: one holding a whole record of the next block (valid
    checksum, any previous hash) inside the block whose append was interrupted made the torn
    tail look like corruption with data after it -- LEDGER_CORRUPT, a peer that could only be
    re-synced from nothing."""
    with Ledger(tmp_path, fsync=False) as ledger:
        commit_blocks(ledger, TOTAL - 1)
        block = build_block(TOTAL - 1, ledger.blocks.last_hash())
    forged = make_chain(1, first=TOTAL)[0]  # block TOTAL, chained to nothing on this ledger
    block.data.envelopes.insert(0, encode_record(TOTAL, forged.SerializeToString()))
    block.data.envelopes.insert(1, encode_record(TOTAL + 3, b"x" * 64))
    block.metadata.validation_codes.insert(0, tx_pb.BAD_PAYLOAD)
    block.metadata.validation_codes.insert(1, tx_pb.BAD_PAYLOAD)
    block.metadata.state_hash = b"\x01" * 32
    record = encode_record(TOTAL - 1, block.SerializeToString())
    seg = tmp_path / "blocks" / "seg-000000.blk"
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(record[:-10])  # the crash came after both forged records were written
    with Ledger(tmp_path, fsync=False) as ledger:
        assert ledger.height() == TOTAL - 1
        assert ledger.blocks.torn_tail == ("seg-000000.blk", size)
        commit_blocks(ledger, TOTAL)
        assert ledger.state_hash() == reference[0]


def test_flipped_length_before_a_chained_record_is_still_corruption(tmp_path):
    """The chain check keeps the length-flip rule: the real next block chains to the bad one."""
    blocks = make_chain(3)
    blocks[1].data.envelopes.insert(0, encode_record(2, b"y" * 40))  # forged, chains to nothing
    blocks[1].header.data_hash = block_data_hash(blocks[1].data.envelopes)
    blocks[2].header.previous_hash = block_header_hash(blocks[1].header)
    loc1 = store_blocks(tmp_path, blocks)[1]
    _flip_length(tmp_path / "seg-000000.blk", loc1.offset, 24)
    (tmp_path / "index.bin").unlink()
    with pytest.raises(LedgerError) as e:
        BlockStore(tmp_path)
    assert e.value.reason == "LEDGER_CORRUPT" and e.value.block == 1


# ---------------------------------------------------------------- foreign state


def test_state_of_another_network_at_the_same_height_is_refused(tmp_path):
    mine, other = tmp_path / "mine", tmp_path / "other"
    with Ledger(mine, fsync=False) as ledger:
        commit_blocks(ledger, 3)
    with Ledger(other, fsync=False) as ledger:
        for b in make_chain(3):  # another chain: no valid writes, another state hash
            b.metadata.validation_codes.extend([tx_pb.MVCC_READ_CONFLICT] * len(b.data.envelopes))
            ledger.commit(b, outcomes_from_block(b))
    shutil.rmtree(mine / "state")
    shutil.copytree(other / "state", mine / "state")
    with pytest.raises(LedgerError) as e:
        Ledger(mine)
    assert e.value.reason == "STATE_MISMATCH" and e.value.block == 2
    shutil.rmtree(mine / "state")  # a missing state is rebuilt by replay
    with Ledger(mine) as ledger:
        assert ledger.height() == 3
        assert ledger.state_hash() == ledger.block(2).metadata.state_hash


# ---------------------------------------------------------------- directories


def test_new_directories_and_the_first_segment_are_fsynced(tmp_path, monkeypatch):
    synced: list[str] = []
    real = fsync_dir
    seen_segment: list[bool] = []

    def spy(path: str | os.PathLike[str]) -> None:
        p = os.path.abspath(path)
        synced.append(p)
        if p == str(tmp_path / "node" / "ledger" / "blocks"):
            seen_segment.append(os.path.exists(os.path.join(p, "seg-000000.blk")))
        real(path)

    monkeypatch.setattr("node.ledger.blockstore.fsync_dir", spy)
    monkeypatch.setattr("node.fsutil.fsync_dir", spy)  # (make_dirs_durable's)
    with Ledger(tmp_path / "node" / "ledger") as ledger:
        assert synced, "no directory was fsynced"
        commit_blocks(ledger, 1)
    assert str(tmp_path) in synced  # holds the new node/
    assert str(tmp_path / "node") in synced  # holds ledger/
    assert str(tmp_path / "node" / "ledger") in synced  # holds blocks/ and state/
    assert True in seen_segment  # synced once seg-000000.blk existed


def test_first_segment_left_unsynced_by_a_killed_run_is_synced_on_the_next_open(tmp_path, monkeypatch):
    """A run killed after creating seg-000000.blk and index.bin but before syncing the
    directory left their entries in the page cache only; the next open took the files for
    durable (it synced only when it created them), so its fsynced blocks, and the state
    applied after them, could lose their file to a power loss (STATE_MISMATCH on restart)."""
    blocks = tmp_path / "blocks"
    blocks.mkdir()
    (blocks / "seg-000000.blk").write_bytes(b"")  # what the killed run created
    (blocks / "index.bin").write_bytes(b"")
    synced: list[str] = []
    real = fsync_dir

    def spy(path: str | os.PathLike[str]) -> None:
        synced.append(os.path.abspath(path))
        real(path)

    monkeypatch.setattr("node.ledger.blockstore.fsync_dir", spy)
    with BlockStore(blocks) as bs:
        assert str(blocks) in synced
        bs.append(make_chain(1)[0])


def test_state_database_without_current_file_is_refused_not_emptied(tmp_path, reference):
    """A state directory whose CURRENT file is lost (power loss, partial restore) was opened
    by LevelDB as a new database: only the newest log replayed into it (savepoint and state
    hash right), the older tables deleted -- the keys, history and tx ids of older blocks gone
    from a peer that started as if sound."""
    with Ledger(tmp_path, fsync=False) as ledger:
        commit_blocks(ledger, TOTAL - 2)
    with Ledger(tmp_path, fsync=False) as ledger:  # the reopen turns that log into a table
        commit_blocks(ledger, TOTAL)
    state = tmp_path / "state"
    (state / "CURRENT").unlink()
    before = sorted(os.listdir(state))
    with pytest.raises(LedgerError) as e:
        Ledger(tmp_path, fsync=False)
    assert e.value.reason == "LEDGER_CORRUPT" and "no CURRENT" in e.value.message
    assert sorted(os.listdir(state)) == before  # nothing deleted, nothing created
    shutil.rmtree(state)  # what the message says to do: rebuilt by replay
    with Ledger(tmp_path, fsync=False) as ledger:
        assert ledger.state_hash() == reference[0]
    assert dump_state(tmp_path) == reference[1]


def test_state_database_missing_a_table_is_ledger_corrupt(tmp_path):
    """LevelDB's Corruption on open (a lost table file) was IO_ERROR "cannot open state db",
    which reads as a disk to retry, not a database to delete and rebuild."""
    with Ledger(tmp_path, fsync=False) as ledger:
        commit_blocks(ledger, 2)
    with Ledger(tmp_path, fsync=False) as ledger:  # the reopen turns that log into a table
        commit_blocks(ledger, 3)
    (tables,) = (tmp_path / "state").glob("*.ldb")
    tables.unlink()
    with pytest.raises(LedgerError) as e:
        Ledger(tmp_path, fsync=False)
    assert e.value.reason == "LEDGER_CORRUPT" and "rebuilt from the block store" in e.value.message


def test_first_start_killed_before_leveldb_wrote_current_starts(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "MANIFEST-000001").write_bytes(b"")  # NewDB wrote its manifest, then died
    with Ledger(tmp_path, fsync=False) as ledger:
        commit_blocks(ledger, 2)


def test_data_dir_that_cannot_be_created_is_a_clear_error(tmp_path):
    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / "blocks").write_bytes(b"not a directory")
    with pytest.raises(LedgerError) as e:
        Ledger(tmp_path / "ledger")
    assert e.value.reason == "IO_ERROR"
    assert "blocks" in e.value.message
    (tmp_path / "other").write_bytes(b"a file where the data dir should be")
    with pytest.raises(LedgerError) as e:
        Ledger(tmp_path / "other" / "ledger")
    assert e.value.reason == "IO_ERROR"


# ---------------------------------------------------------------- bounded memory


FORGED_LENGTH = 256 * 1024 * 1024


def _set_length(seg: Path, offset: int, length: int) -> None:
    data = bytearray(seg.read_bytes())
    data[offset + 12 : offset + 16] = length.to_bytes(4, "big")
    seg.write_bytes(bytes(data))


def _peak_during(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_forged_length_in_an_indexed_record_allocates_nothing(tmp_path):
    blocks = make_chain(4)
    loc1 = store_blocks(tmp_path, blocks)[1]
    _set_length(tmp_path / "seg-000000.blk", loc1.offset, FORGED_LENGTH)
    with BlockStore(tmp_path) as bs:  # only the last indexed record is checked on open
        assert bs.height() == 4

        def read() -> None:
            with pytest.raises(LedgerError) as e:
                bs.get(1)
            assert e.value.reason == "LEDGER_CORRUPT"

        assert _peak_during(read) < 4 * 1024 * 1024
        assert bs.verify() is not None


def test_forged_length_at_the_tail_allocates_nothing_on_open(tmp_path):
    blocks = make_chain(4)
    loc3 = store_blocks(tmp_path, blocks)[3]
    _set_length(tmp_path / "seg-000000.blk", loc3.offset, FORGED_LENGTH)
    (tmp_path / "index.bin").unlink()
    opened: list[int] = []

    def open_ro() -> None:
        with BlockStore(tmp_path, readonly=True) as ro:
            opened.append(ro.height())

    assert _peak_during(open_ro) < 4 * 1024 * 1024
    assert opened == [3]



def test_index_offset_past_any_address_is_completed_from_the_segments(tmp_path):
    """A flipped top bit in an index entry's offset (>= 2**63) escaped the open as a bare
    OverflowError from os.pread -- no reason code, a peer that would not start -- where a
    damaged index is a cache the segments complete."""
    blocks = make_chain(5)
    store_blocks(tmp_path, blocks)
    index = bytearray((tmp_path / "index.bin").read_bytes())
    index[2 * IDX_SIZE + 4] ^= 0x80  # entry 2: u32 segment | u64 offset (big-endian)
    (tmp_path / "index.bin").write_bytes(bytes(index))
    with BlockStore(tmp_path) as bs:
        assert bs.height() == 5
        assert [bs.get(n) for n in range(5)] == blocks
    assert (tmp_path / "index.bin").read_bytes()[2 * IDX_SIZE + 4] == index[2 * IDX_SIZE + 4] ^ 0x80


def test_huge_sparse_index_file_is_not_read_whole(tmp_path):
    blocks = make_chain(4)
    store_blocks(tmp_path, blocks)
    os.truncate(tmp_path / "index.bin", 8 * 1024 * 1024)  # e.g. a file extended, never written
    opened: list[int] = []

    def open_rw() -> None:
        with BlockStore(tmp_path) as bs:
            opened.append(bs.height())
            assert bs.get(3) == blocks[3]

    assert _peak_during(open_rw) < 2 * 1024 * 1024
    assert opened == [4]
    assert (tmp_path / "index.bin").stat().st_size == 4 * IDX_SIZE  # and it was repaired


def test_read_only_data_dir_is_a_clear_error(tmp_path, monkeypatch):
    """(Tests run as root, so the read-only file system is simulated at os.open.)"""
    with Ledger(tmp_path, fsync=False) as ledger:
        commit_blocks(ledger, 2)
    real_open = os.open

    def ro_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return int(real_open(path, flags, *args, **kwargs))

    monkeypatch.setattr(os, "open", ro_open)
    with pytest.raises(LedgerError) as e:
        Ledger(tmp_path)
    assert e.value.reason == "IO_ERROR"
    assert "EROFS" in e.value.message and "blocks" in e.value.message
    monkeypatch.undo()
    with Ledger(tmp_path) as ledger:  # nothing was changed by the refused start
        assert ledger.height() == 2


def test_crash_at_every_byte_of_an_append_converges(tmp_path, reference):
    """What a kill at any moment of block 4's append leaves behind: every prefix of its record
    (the header byte by byte, the payload sampled, the whole record), with or without its
    index entry, the state at block 3. Each reopens at the right height and ends up as the
    never-crashed ledger, byte for byte."""
    base = tmp_path / "base"
    with Ledger(base, fsync=False) as ledger:
        commit_blocks(ledger, TOTAL - 1)
    seg_name = Path("blocks") / "seg-000000.blk"
    start = (base / seg_name).stat().st_size
    record = reference[2][start:]
    assert reference[2][:start] == (base / seg_name).read_bytes()
    cuts = sorted({*range(REC_HEAD_SIZE + 2), *range(0, len(record), 37), len(record) - 1,
                   len(record)})
    cases = [(cut, False) for cut in cuts] + [(len(record), True)]
    for cut, with_index in cases:
        victim = tmp_path / f"v{cut}-{int(with_index)}"
        shutil.copytree(base, victim)
        with open(victim / seg_name, "ab") as f:
            f.write(record[:cut])
        if with_index:
            with open(victim / "blocks" / "index.bin", "ab") as f:
                f.write(start.to_bytes(IDX_SIZE, "big"))  # entry 4: segment 0, offset start
        with Ledger(victim, fsync=False) as ledger:
            assert ledger.height() == (TOTAL if cut == len(record) else TOTAL - 1), cut
            commit_blocks(ledger, TOTAL)
            assert ledger.state_hash() == reference[0], cut
        assert (victim / seg_name).read_bytes() == reference[2], cut
        assert dump_state(victim) == reference[1], cut
        shutil.rmtree(victim)


def test_flipped_bit_in_the_state_database_is_an_error_not_a_value(tmp_path):
    writes = [KeyWrite("rx", f"k{i:05d}", b"VALUE-%05d-" % i + b"x" * 100, False)
              for i in range(2000)]
    with StateDB(tmp_path, sync=False) as db:
        db.apply_block(0, [TxOutcome(0, "tx-0", tx_pb.VALID, 1, writes)], b"\0" * 32)
        db._db.compact_range()  # into an SSTable, as a long-running peer's state is
    [table] = [p for p in tmp_path.iterdir() if p.suffix == ".ldb"]
    data = bytearray(table.read_bytes())
    at = data.find(b"VALUE-00500-")
    assert at > 0
    data[at + 6] ^= 0x01  # "VALUE-10500-": what an unverified read returns
    table.write_bytes(bytes(data))
    with StateDB(tmp_path, sync=False) as db:
        with pytest.raises(LedgerError) as e:
            db.get("rx", "k00500")
        assert e.value.reason == "LEDGER_CORRUPT"
        with pytest.raises(LedgerError) as e:
            db.get_version("rx", "k00500")
        assert e.value.reason == "LEDGER_CORRUPT"
        with pytest.raises(LedgerError) as e:
            db.range("rx", "k00400", "k00600")
        assert e.value.reason == "LEDGER_CORRUPT"
        with db.snapshot() as snap, pytest.raises(LedgerError) as e:
            snap.get("rx", "k00500")
        assert e.value.reason == "LEDGER_CORRUPT"
