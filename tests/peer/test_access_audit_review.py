"""Review of the access-audit log (node.peer.audit): reads that race appends and pruning, group
commit of concurrent appends, and the size of a refusal's record.

* Query and Verify took the head from memory, then a snapshot of the database: a record appended
  (or pruned) in between made Verify report a healthy chain broken (HEAD_MISMATCH "a record past
  the head", RECORD_MISSING for a pruned front) -- under load on a live peer -- and Query answer
  records past the head it named. Both now read the head from the snapshot itself.
* Appends were serialized behind one lock, each with its own fsync: concurrent callers now queue,
  and one writer writes every queued record in one synced batch (group commit), chained in order;
  every caller returns after its batch's sync, and a failed batch withholds every key of it.
* A refused proposal was recorded with its header's tx id as given, of any length (the tx id is
  checked after the signature): one refused call wrote a record as large as the envelope bound.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plyvel
import pytest
from rxchain.v1 import audit_pb2, transaction_pb2

from node.errors import RxError
from node.peer.audit import AUDIT_WRITE_FAILED, DAY_MS, GRANTED, MAX_TX_ID_CHARS, AccessLog, Caller, record_hash
from tests.peer.conftest import Cluster
from tests.peer.test_access_audit import _Audited, _records, audited, keyed  # noqa: F401 - fixtures

WHO = Caller("h01", "doctor", "dr-a", b"cert-bytes", True)
WAIT_S = 30.0  # a bound on every wait below (never reached when the code is right)


def _append(log: AccessLog, rx: str = "RX-1") -> int:
    return log.append(WHO, "prescription", "get_key", rx, GRANTED, 7, "tx", audit_pb2.ACCESS_EVALUATE)


class _SnapshotAfter:
    """The log's database, running ``before`` each time a snapshot is taken (an append that
    lands between reading the head and taking the snapshot, as another thread's would)."""

    def __init__(self, db: Any, before: Callable[[], object]) -> None:
        self._db, self._before = db, before

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def snapshot(self) -> Any:
        self._before()
        return self._db.snapshot()


@pytest.mark.parametrize("prune", [False, True], ids=["append", "append-and-prune"])
def test_verify_and_query_racing_an_append_see_one_consistent_log(tmp_path: Path, prune: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [10 * DAY_MS]
    log = AccessLog(tmp_path / "a", lambda: clock[0], retention_days=1)
    try:
        for _ in range(3):
            _append(log)
        if prune:
            clock[0] += 2 * DAY_MS  # the next append prunes records 1-3
        monkeypatch.setattr(log, "_db", _SnapshotAfter(log._db, lambda: _append(log)))
        got = log.verify(audit_pb2.AuditVerifyRequest())
        assert (got.ok, got.reason, got.detail) == (True, "", "")
        assert got.head.last_id == 4 and got.checked == (1 if prune else 4)
        page = log.query(audit_pb2.AuditQueryRequest())
        ids = [audit_pb2.AccessRecord.FromString(r).id for r in page.records]
        assert ids == ([4, 5] if prune else [1, 2, 3, 4, 5])
        assert page.head.last_id == ids[-1] and page.head.first_id == ids[0]
    finally:
        monkeypatch.undo()
        log.close()


class _HeldBatch:
    def __init__(self, batch: Any, db: _HeldDB) -> None:
        self._batch, self._db = batch, db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def put(self, key: bytes, value: bytes) -> None:
        if key.startswith(b"r"):
            self._db.count_record()
        self._batch.put(key, value)

    def write(self) -> None:
        self._db.before_write()
        self._batch.write()
        self._db.after_write()


class _HeldDB:
    """The log's database; its first batch write waits for ``release``; counts the synced batches
    and the records each held, and which records had been written when."""

    def __init__(self, db: Any, fail: bool = False) -> None:
        self._db = db
        self.writing = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []
        self._pending = 0
        self.written = 0  # records written (synced) so far
        self._fail = fail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def write_batch(self, **kw: Any) -> _HeldBatch:
        assert kw.get("sync") is True
        self._pending = 0
        return _HeldBatch(self._db.write_batch(**kw), self)

    def count_record(self) -> None:
        self._pending += 1

    def before_write(self) -> None:
        if not self.batches and not self.writing.is_set():
            self.writing.set()
            assert self.release.wait(WAIT_S)
        if self._fail and len(self.batches) == 1:
            self.batches.append(self._pending)
            raise plyvel.IOError("IO error: No space left on device")

    def after_write(self) -> None:
        self.batches.append(self._pending)
        self.written += self._pending


def _wait_queued(log: AccessLog, n: int) -> None:
    stop = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        with log._lock:
            if len(log._queue) >= n:
                return
        stop.wait(0.01)
    raise AssertionError(f"{n} appends never queued")


def _run(log: AccessLog, db: _HeldDB, n: int) -> dict[int, Any]:
    """One append that holds the first batch write, then ``n`` more queued behind it."""
    got: dict[int, Any] = {}

    def one(i: int) -> None:
        try:
            rid = _append(log, f"RX-{i}")
            got[i] = (rid, db.written >= rid)  # returned only once its record was written
        except RxError as err:
            got[i] = err

    first = threading.Thread(target=one, args=(0,))
    first.start()
    assert db.writing.wait(WAIT_S)
    rest = [threading.Thread(target=one, args=(i,)) for i in range(1, n + 1)]
    for t in rest:
        t.start()
    _wait_queued(log, n)
    db.release.set()
    for t in [first, *rest]:
        t.join(WAIT_S)
        assert not t.is_alive()
    return got


def test_concurrent_appends_are_written_in_one_synced_batch_and_chained(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    log = AccessLog(tmp_path / "a", lambda: 1_000)
    try:
        db = _HeldDB(log._db)
        monkeypatch.setattr(log, "_db", db)
        got = _run(log, db, 6)
        monkeypatch.undo()
        assert db.batches == [1, 6]  # the first alone, the six queued meanwhile in one batch
        assert sorted(rid for rid, _ in got.values()) == list(range(1, 8))
        assert all(synced for _, synced in got.values())
        assert got[0][0] == 1
        assert log.verify(audit_pb2.AuditVerifyRequest()).ok
        recs = _records(log)
        assert {r.record_id: r.id for r in recs} == {f"RX-{i}": got[i][0] for i in range(7)}
        assert _append(log) == 8 and log.verify(audit_pb2.AuditVerifyRequest()).checked == 8
    finally:
        monkeypatch.undo()
        log.close()


def test_a_failed_group_write_withholds_every_key_of_the_group(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    log = AccessLog(tmp_path / "a", lambda: 1_000)
    try:
        db = _HeldDB(log._db, fail=True)
        monkeypatch.setattr(log, "_db", db)
        got = _run(log, db, 4)
        monkeypatch.undo()
        assert got[0] == (1, True)
        errors = [got[i] for i in range(1, 5)]
        assert all(isinstance(e, RxError) and e.reason == AUDIT_WRITE_FAILED for e in errors)
        assert log.head().last_id == 1 and [r.id for r in _records(log)] == [1]
        assert _append(log) == 2 and log.verify(audit_pb2.AuditVerifyRequest()).ok
    finally:
        monkeypatch.undo()
        log.close()


def test_many_threads_appending_leave_unique_ids_and_an_unbroken_chain(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "a", lambda: 1_000, sync=False)
    ids: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(50):
            rid = _append(log, f"RX-{k}-{i}")
            with lock:
                ids.append(rid)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
            assert not t.is_alive()
        assert sorted(ids) == list(range(1, 401))
        got = log.verify(audit_pb2.AuditVerifyRequest())
        assert (got.ok, got.checked, got.head.last_id) == (True, 400, 400)
    finally:
        log.close()


def test_an_append_after_close_is_refused(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "a", lambda: 1_000)
    _append(log)
    log.close()
    with pytest.raises(RxError) as err:
        _append(log)
    assert err.value.reason == AUDIT_WRITE_FAILED


def test_a_refusal_claiming_a_huge_tx_id_is_recorded_cut(keyed: Cluster, audited: _Audited) -> None:  # noqa: F811
    signed = keyed.kit.proposal(keyed.net.pharmacist, "prescription", "get_key", {"rx_id": "RX-1"},
                                timestamp_ms=keyed.now())
    prop = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
    header = transaction_pb2.TxHeader.FromString(prop.header)
    header.tx_id = "f" * 200_000
    prop.header = header.SerializeToString()
    signed = transaction_pb2.SignedProposal(proposal_bytes=prop.SerializeToString(), signature=signed.signature)
    with pytest.raises(RxError):
        audited.endorser.simulate(signed, endorse=True)
    [rec] = _records(audited.log)
    assert rec.tx_id == "f" * MAX_TX_ID_CHARS and not rec.authenticated
    assert len(rec.SerializeToString()) < 1024


def test_an_anchor_declared_pruned_is_not_reported_checked(tmp_path: Path) -> None:
    """A rewrite that declares the front pruned past an anchor passed Verify as if the anchor
    had been compared; the last pruned record's hash (kept in the head) is now compared, and an
    anchor further back is answered anchor_checked false."""
    clock = [10 * DAY_MS]
    log = AccessLog(tmp_path / "a", lambda: clock[0], retention_days=1)
    try:
        for _ in range(3):
            _append(log)
        raws = log.query(audit_pb2.AuditQueryRequest()).records
        kept = log.verify(audit_pb2.AuditVerifyRequest(anchor_id=2, anchor_hash=record_hash(raws[1])))
        assert (kept.ok, kept.anchor_checked) == (True, True)
        clock[0] += 2 * DAY_MS
        _append(log)  # records 1-3 pruned: record 3's hash is the head's first_prev_hash
        last_pruned = log.verify(audit_pb2.AuditVerifyRequest(anchor_id=3, anchor_hash=record_hash(raws[2])))
        assert (last_pruned.ok, last_pruned.anchor_checked) == (True, True)
        wrong = log.verify(audit_pb2.AuditVerifyRequest(anchor_id=3, anchor_hash=b"\1" * 32))
        assert (wrong.ok, wrong.reason, wrong.first_bad_id) == (False, "ANCHOR_MISMATCH", 3)
        older = log.verify(audit_pb2.AuditVerifyRequest(anchor_id=2, anchor_hash=b"\1" * 32))
        assert (older.ok, older.anchor_checked) == (True, False)
    finally:
        log.close()


def test_a_record_id_that_is_no_utf8_is_recorded_and_fails_no_other_record(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON's "\\ud800" parses to a lone surrogate, which protobuf refuses to encode: the refusal
    went unrecorded (AUDIT_WRITE_FAILED), and in a group it would have failed every record of it."""
    log = AccessLog(tmp_path / "a", lambda: 1_000)
    try:
        bad = log.append(WHO, "prescription", "get_key", "RX-\ud800", "NOT_FOUND", 7, "tx\udfff",
                         audit_pb2.ACCESS_EVALUATE)
        [rec] = _records(log)
        assert (rec.id, rec.record_id, rec.tx_id) == (bad, "RX-\\ud800", "tx\\udfff")
        db = _HeldDB(log._db)
        monkeypatch.setattr(log, "_db", db)
        got: dict[int, Any] = {}

        def one(i: int, rx: str) -> None:
            try:
                got[i] = _append(log, rx)
            except RxError as err:
                got[i] = err

        first = threading.Thread(target=one, args=(0, "RX-0"))
        first.start()
        assert db.writing.wait(WAIT_S)
        rest = [threading.Thread(target=one, args=(1, "RX-\ud800")), threading.Thread(target=one, args=(2, "RX-2"))]
        for t in rest:
            t.start()
        _wait_queued(log, 2)
        db.release.set()
        for t in [first, *rest]:
            t.join(WAIT_S)
            assert not t.is_alive()
        monkeypatch.undo()
        assert db.batches == [1, 2] and sorted(got.values()) == [2, 3, 4]
        assert log.verify(audit_pb2.AuditVerifyRequest()).ok
    finally:
        monkeypatch.undo()
        log.close()
