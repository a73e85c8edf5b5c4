"""State DB: versions, ranges, history, tx-id index, savepoint, snapshot isolation, hash."""

from __future__ import annotations

import pytest

from node.ledger.errors import LedgerError
from node.ledger.statedb import (
    ZERO_HASH,
    KeyWrite,
    StateDB,
    TxOutcome,
    Version,
    next_state_hash,
)

VALID, MVCC = 1, 9


def nn(x):
    assert x is not None
    return x


def w(key, value=b"", ns="rx", delete=False):
    return KeyWrite(ns, key, value, delete)


def test_versions_ranges_history_txindex(tmp_path):
    with StateDB(tmp_path / "db") as db:
        assert db.savepoint() is None
        txs0 = [
            TxOutcome(0, "t0", VALID, 1000, [w("a", b"1"), w("b", b"2"), w("c", b"3")]),
            TxOutcome(1, "t1", MVCC, 1001, [w("a", b"bad")]),
            TxOutcome(2, "t2", VALID, 1002, [w("a", b"x"), w("k", b"v", ns="other")]),
        ]
        h0 = next_state_hash(ZERO_HASH, 0, txs0)
        db.apply_block(0, txs0, h0)
        a = db.get("rx", "a")
        assert a is not None and a.value == b"x" and a.version == Version(0, 2)
        assert db.get("rx", "zz") is None
        assert db.get("other", "a") is None
        assert [k for k, _ in db.range("rx", "", "")] == ["a", "b", "c"]
        assert [k for k, _ in db.range("rx", "b", "c")] == ["b"]
        assert [k for k, _ in db.range("rx", "a", "", limit=2)] == ["a", "b"]
        assert nn(db.tx_location("t1")).code == MVCC
        assert nn(db.tx_location("t2")).tx == 2
        assert db.tx_location("nope") is None
        assert db.has_tx("t0")
        sp = db.savepoint()
        assert sp is not None and sp.block == 0 and sp.state_hash == h0

        txs1 = [TxOutcome(0, "t3", VALID, 2000, [w("a", delete=True), w("b", b"22")])]
        db.apply_block(1, txs1, next_state_hash(h0, 1, txs1))
        assert db.get("rx", "a") is None
        assert nn(db.get("rx", "b")).version == Version(1, 0)
        hist = db.history("rx", "a")
        assert [(e.block, e.tx, e.tx_id, e.is_delete, e.timestamp_ms) for e in hist] == [
            (0, 0, "t0", False, 1000),
            (0, 2, "t2", False, 1002),
            (1, 0, "t3", True, 2000),
        ]
        # a key that is a prefix of another must not see its history
        assert db.history("rx", "") == []


def test_apply_out_of_order_refused(tmp_path):
    with StateDB(tmp_path / "db") as db:
        with pytest.raises(LedgerError) as e:
            db.apply_block(1, [], ZERO_HASH)
        assert e.value.reason == "STATE_MISMATCH"
        db.apply_block(0, [], ZERO_HASH)
        with pytest.raises(LedgerError):
            db.apply_block(0, [], ZERO_HASH)
        with pytest.raises(LedgerError) as e:
            db.get("bad\0ns", "k")
        assert e.value.reason == "BAD_NAMESPACE"


def test_apply_order_survives_reopen_and_a_failed_write(tmp_path):
    """The order check follows the stored savepoint across a reopen, and a batch whose
    write fails does not move it."""
    with StateDB(tmp_path / "db") as db:
        db.apply_block(0, [], ZERO_HASH)
        db.apply_block(1, [], ZERO_HASH)

        def crash() -> None:
            raise OSError("disk gone")

        with pytest.raises(OSError):
            db.apply_block(2, [], ZERO_HASH, before_write=crash)
        assert nn(db.savepoint()).block == 1
        db.apply_block(2, [], ZERO_HASH)
    with StateDB(tmp_path / "db") as db:
        for wrong in (2, 4):
            with pytest.raises(LedgerError) as e:
                db.apply_block(wrong, [], ZERO_HASH)
            assert e.value.reason == "STATE_MISMATCH"
        db.apply_block(3, [], ZERO_HASH)
        assert nn(db.savepoint()).block == 3


def test_snapshot_isolation(tmp_path):
    with StateDB(tmp_path / "db") as db:
        db.apply_block(0, [TxOutcome(0, "t0", VALID, 1, [w("a", b"1")])], ZERO_HASH)
        with db.snapshot() as snap:
            db.apply_block(1, [TxOutcome(0, "t1", VALID, 2, [w("a", b"2"), w("b", b"2")])],
                           ZERO_HASH)
            assert nn(snap.get("rx", "a")).value == b"1"
            assert snap.get("rx", "b") is None
            assert [k for k, _ in snap.range("rx", "", "")] == ["a"]
            assert nn(snap.savepoint).block == 0
        assert nn(db.get("rx", "a")).value == b"2"
        assert nn(db.savepoint()).block == 1


def test_state_hash_depends_on_valid_writes_only_and_order():
    a = [TxOutcome(0, "t0", VALID, 1, [w("a", b"1")]), TxOutcome(1, "t1", MVCC, 1, [w("b")])]
    b = [TxOutcome(0, "t0", VALID, 1, [w("a", b"1")]), TxOutcome(1, "t1", MVCC, 1, [w("c")])]
    c = [TxOutcome(0, "t0", VALID, 1, [w("a", b"1")]), TxOutcome(1, "t1", VALID, 1, [w("b")])]
    assert next_state_hash(ZERO_HASH, 0, a) == next_state_hash(ZERO_HASH, 0, b)
    assert next_state_hash(ZERO_HASH, 0, a) != next_state_hash(ZERO_HASH, 0, c)
    assert next_state_hash(ZERO_HASH, 0, a) != next_state_hash(ZERO_HASH, 1, a)
    # key/value boundaries are length-prefixed: ("ab","c") != ("a","bc")
    x = [TxOutcome(0, "t", VALID, 1, [w("ab", b"c")])]
    y = [TxOutcome(0, "t", VALID, 1, [w("a", b"bc")])]
    assert next_state_hash(ZERO_HASH, 0, x) != next_state_hash(ZERO_HASH, 0, y)


def test_blocks_are_stored_uncompressed_with_bloom_filters(tmp_path):
    """The state DB writes SSTables without compression (snappy cost ~11 % of the machine's
    CPU at the e2e peak, for ciphertext that does not compress): 2 MiB of a repetitive value,
    which snappy would shrink ~20-fold, takes at least its own size on disk."""
    value = b"rxchain " * 512  # 4 KiB, very compressible
    with StateDB(tmp_path / "db") as db:
        txs = [TxOutcome(i, f"t{i}", VALID, 1000, [w(f"k{i:04d}", value)]) for i in range(512)]
        db.apply_block(0, txs, next_state_hash(ZERO_HASH, 0, txs))
        db._db.compact_range()  # flush the memtable into SSTables
        tables = [p.read_bytes() for p in (tmp_path / "db").glob("*.ldb")]
        assert sum(len(t) for t in tables) >= 512 * len(value)
        # every table carries a bloom filter block (misses skip reading data blocks) ...
        assert tables and all(b"filter.leveldb.BuiltinBloomFilter2" in t for t in tables)
        # ... which does not change answers: present, absent and look-alike ids
        assert nn(db.tx_location("t7")).tx == 7
        assert db.tx_location("t7x") is None and db.tx_location("t") is None
        assert db.get("rx", "k0511") is not None and db.get("rx", "k0512") is None
