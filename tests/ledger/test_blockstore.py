"""Block store: append/get/index, chain checks, torn tail, corruption, segments, reopen."""

from __future__ import annotations

import os
import threading

import pytest

from node.crypto.canonical import block_header_hash
from node.ledger.blockstore import IDX_SIZE, REC_HEAD_SIZE, BlockStore
from node.ledger.errors import LedgerError
from tests.ledger.chain import make_chain, store_blocks


def test_append_get_reopen(tmp_path):
    blocks = make_chain(5)
    with BlockStore(tmp_path, fsync=False) as bs:
        assert bs.height() == 0
        for b in blocks:
            bs.append(b)
        assert bs.height() == 5
        assert bs.get(3) == blocks[3]
        assert bs.last_hash() == block_header_hash(blocks[4].header)
        assert [b.header.number for b in bs.iter_blocks(2)] == [2, 3, 4]
    with BlockStore(tmp_path) as bs:
        assert bs.height() == 5
        assert bs.last_hash() == block_header_hash(blocks[4].header)
        assert bs.get(0) == blocks[0]
        assert bs.verify() is None
        more = make_chain(2, start_prev=bs.last_hash(), first=5)
        for b in more:
            bs.append(b)
        assert bs.get(6) == more[1]


def test_rejects_wrong_number_and_broken_chain(tmp_path):
    blocks = make_chain(3)
    with BlockStore(tmp_path, fsync=False) as bs:
        bs.append(blocks[0])
        with pytest.raises(LedgerError) as e:
            bs.append(blocks[2])
        assert e.value.reason == "BAD_BLOCK_NUMBER"
        forged = make_chain(2)[1]
        forged.header.previous_hash = b"\x01" * 32
        with pytest.raises(LedgerError) as e:
            bs.append(forged)
        assert e.value.reason == "BAD_PREVIOUS_HASH"
        assert bs.height() == 1
        bs.append(blocks[1])
        assert bs.height() == 2
        with pytest.raises(LedgerError) as e:
            bs.get(2)
        assert e.value.reason == "BLOCK_NOT_FOUND"


@pytest.mark.parametrize("cut", [1, REC_HEAD_SIZE - 1, REC_HEAD_SIZE + 5])
def test_torn_tail_truncated_on_open(tmp_path, caplog, cut):
    blocks = make_chain(4)
    store_blocks(tmp_path, blocks[:3])
    seg = tmp_path / "seg-000000.blk"
    good_size = seg.stat().st_size
    # Simulate a crash mid-append of block 3: a partial record at the tail.
    from node.ledger.blockstore import encode_record

    rec = encode_record(3, blocks[3].SerializeToString())
    with open(seg, "ab") as f:
        f.write(rec[:cut])
    with BlockStore(tmp_path) as bs:
        assert bs.height() == 3
        assert seg.stat().st_size == good_size
        bs.append(blocks[3])
        assert bs.get(3) == blocks[3]
    assert any("torn tail" in r.message for r in caplog.records)


def test_missing_index_entries_rebuilt_from_segments(tmp_path):
    blocks = make_chain(6)
    store_blocks(tmp_path, blocks)
    idx = tmp_path / "index.bin"
    # crash after the segment write but before the index write of the last two blocks
    os.truncate(idx, 4 * IDX_SIZE)
    with BlockStore(tmp_path) as bs:
        assert bs.height() == 6
        assert bs.get(5) == blocks[5]
    # garbage index: rebuilt by scanning
    idx.write_bytes(b"\xff" * (3 * IDX_SIZE))
    with BlockStore(tmp_path) as bs:
        assert bs.height() == 6
        assert bs.get(4) == blocks[4]
    idx.unlink()
    with BlockStore(tmp_path) as bs:
        assert bs.height() == 6


def test_corrupted_middle_record_detected(tmp_path):
    blocks = make_chain(5)
    # offset of block 2's payload
    loc2 = store_blocks(tmp_path, blocks)[2]
    seg = tmp_path / "seg-000000.blk"
    data = bytearray(seg.read_bytes())
    data[loc2.offset + REC_HEAD_SIZE + 10] ^= 0x40
    seg.write_bytes(bytes(data))
    with BlockStore(tmp_path) as bs:
        assert bs.height() == 5  # open does not read the middle
        problem = bs.verify()
        assert problem is not None
        assert problem.number == 2
        assert problem.reason == "LEDGER_CORRUPT"
        with pytest.raises(LedgerError) as e:
            bs.get(2)
        assert e.value.reason == "LEDGER_CORRUPT"
        assert bs.get(3) == blocks[3]


def test_segments_roll_and_reopen(tmp_path):
    blocks = make_chain(20, payload_size=200)
    with BlockStore(tmp_path, fsync=True, segment_max_bytes=2000) as bs:
        for b in blocks:
            bs.append(b)
        assert bs.verify() is None
    segs = sorted(p.name for p in tmp_path.glob("seg-*.blk"))
    assert len(segs) > 3
    (tmp_path / "index.bin").unlink()
    with BlockStore(tmp_path, segment_max_bytes=2000) as bs:
        assert bs.height() == 20
        assert list(bs.iter_blocks(0)) == blocks
        assert bs.verify() is None


def test_wait_for_height(tmp_path):
    blocks = make_chain(2)
    with BlockStore(tmp_path, fsync=False) as bs:
        bs.append(blocks[0])
        assert bs.wait_for_height(1, 0.01)
        assert not bs.wait_for_height(2, 0.01)
        t = threading.Timer(0.05, bs.append, args=(blocks[1],))
        t.start()
        try:
            assert bs.wait_for_height(2, 5.0)
        finally:
            t.join()


def test_middle_corruption_with_lost_index_is_refused_not_truncated(tmp_path):
    blocks = make_chain(5)
    loc2 = store_blocks(tmp_path, blocks)[2]
    seg = tmp_path / "seg-000000.blk"
    data = bytearray(seg.read_bytes())
    size = len(data)
    data[loc2.offset + REC_HEAD_SIZE + 3] ^= 0x01
    seg.write_bytes(bytes(data))
    (tmp_path / "index.bin").unlink()
    with pytest.raises(LedgerError) as e:
        BlockStore(tmp_path)
    assert e.value.reason == "LEDGER_CORRUPT"
    assert e.value.block == 2
    assert "refusing to start" in e.value.message
    assert seg.stat().st_size == size  # nothing was thrown away


def test_zero_filled_tail_truncated_and_readonly_does_not_touch(tmp_path):
    blocks = make_chain(2)
    store_blocks(tmp_path, blocks)
    seg = tmp_path / "seg-000000.blk"
    good = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(b"\0" * 100)
    with BlockStore(tmp_path, readonly=True) as ro:
        assert ro.height() == 2
        assert ro.torn_tail == ("seg-000000.blk", good)
        with pytest.raises(LedgerError) as e:
            ro.append(make_chain(3)[2])
        assert e.value.reason == "READ_ONLY"
    assert seg.stat().st_size == good + 100
    with BlockStore(tmp_path) as bs:
        assert bs.height() == 2
    assert seg.stat().st_size == good


def test_index_completed_after_scan_survives_more_appends(tmp_path):
    """Entries found by scanning are written back; a zeroed middle entry is not trusted."""
    blocks = make_chain(8)
    store_blocks(tmp_path, blocks[:5])
    idx = tmp_path / "index.bin"
    os.truncate(idx, 2 * IDX_SIZE)  # crash lost the index entries of blocks 2..4
    with BlockStore(tmp_path) as bs:
        assert bs.height() == 5
        for b in blocks[5:]:
            bs.append(b)
    with BlockStore(tmp_path) as bs:
        assert [b.header.number for b in bs.iter_blocks(0)] == list(range(8))
        assert bs.verify() is None
    raw = bytearray(idx.read_bytes())
    raw[3 * IDX_SIZE : 4 * IDX_SIZE] = b"\0" * IDX_SIZE  # a page of the index never written
    idx.write_bytes(bytes(raw))
    with BlockStore(tmp_path) as bs:
        assert bs.height() == 8
        assert bs.get(3) == blocks[3]
        assert bs.verify() is None
