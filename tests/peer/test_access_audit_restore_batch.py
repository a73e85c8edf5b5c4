"""The refusal counts a crash left (``mpending``) written at the next start: one synced batch per
SUMMARY_BATCH summary records, not one per count (a limiter may leave 20,001 counts: 20,001
fsyncs, each rewriting mpending, held the start for minutes), chained in order, each count once."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import plyvel
import pytest
from rxchain.v1 import audit_pb2

from node.peer.audit import RATE_LIMITED, AccessLog, Auditor, RefusalLimiter


class _Batch:
    def __init__(self, db: _SyncCounter, batch: Any, sync: bool) -> None:
        self._db, self._batch, self._sync = db, batch, sync

    def write(self) -> None:
        self._batch.write()
        self._db.synced += self._sync

    def __getattr__(self, name: str) -> object:
        return getattr(self._batch, name)


class _SyncCounter:
    """The log's LevelDB, counting its synced writes (a batch, a put or delete with sync=True)."""

    def __init__(self, db: Any) -> None:
        self._db, self.synced = db, 0

    def write_batch(self, **kwargs: Any) -> _Batch:
        return _Batch(self, self._db.write_batch(**kwargs), bool(kwargs.get("sync")))

    def put(self, key: bytes, value: bytes, **kwargs: Any) -> None:
        self._db.put(key, value, **kwargs)
        self.synced += bool(kwargs.get("sync"))

    def delete(self, key: bytes, **kwargs: Any) -> None:
        self._db.delete(key, **kwargs)
        self.synced += bool(kwargs.get("sync"))

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


def _left_by_a_crash(path: Path, n: int) -> None:
    """A log whose ``mpending`` holds ``n`` counts (certificate i counted i + 1 times)."""
    AccessLog(path, lambda: 0).close()
    counts = [{"org": "h01", "role": "doctor", "name": f"dr-{i}", "cert_sha256": f"{i:064x}",
               "authenticated": True, "contract": "prescription", "function": "get_key", "path": 1,
               "count": i + 1, "since_ms": 1_000 + i, "shared": False} for i in range(n)]
    db = plyvel.DB(str(path))
    try:
        db.put(b"mpending", json.dumps({"v": 1, "counts": counts}).encode())
    finally:
        db.close()


def _records(log: AccessLog) -> list[audit_pb2.AccessRecord]:
    out: list[audit_pb2.AccessRecord] = []
    for page in range(10):
        res = log.query(audit_pb2.AuditQueryRequest(start_id=1 + 1000 * page, limit=1000))
        out.extend(audit_pb2.AccessRecord.FromString(r) for r in res.records)
        if not res.more:
            return out
    raise AssertionError("more than 10 pages")


def test_a_start_writes_the_counts_a_crash_left_in_batches(tmp_path: Path) -> None:
    path, n = tmp_path / "audit", 1_500
    _left_by_a_crash(path, n)
    log = AccessLog(path, lambda: 2_000_000)  # synced, as a peer opens it
    counter = _SyncCounter(log._db)
    log._db = counter
    try:
        Auditor(log, None, RefusalLimiter(lambda: 2_000_000, per_minute=1, burst=1))
        assert counter.synced == 2  # 1,500 summaries: two batches of at most 1,000 (was 1,500 writes)
        records = _records(log)
        assert [(r.id, r.outcome, r.name, r.suppressed, r.since_ms) for r in records] == [
            (i + 1, RATE_LIMITED, f"dr-{i}", i + 1, 1_000 + i) for i in range(n)]  # in order, each once
        assert [r.cert_sha256.hex() for r in records] == [f"{i:064x}" for i in range(n)]
        assert log.verify(audit_pb2.AuditVerifyRequest()).ok  # chained across the batches
        assert log.load_pending() is None  # the last batch took the last counts out
    finally:
        log._db = counter._db
        log.close()
    log = AccessLog(path, lambda: 3_000_000)
    try:
        Auditor(log, None, RefusalLimiter(lambda: 3_000_000, per_minute=1, burst=1))
        assert log.head().last_id == n  # a second start writes none of them again
    finally:
        log.close()


def test_a_summary_the_log_has_no_room_for_fails_alone_not_its_batch(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit"
    _left_by_a_crash(path, 120)
    log = AccessLog(path, lambda: 2_000_000, max_records=100, sync=False)  # refusals: 99 at most
    try:
        with caplog.at_level(logging.ERROR, logger="node.peer.audit"):
            Auditor(log, None, RefusalLimiter(lambda: 2_000_000, per_minute=1, burst=1))
        assert [r.name for r in _records(log)] == [f"dr-{i}" for i in range(99)]
        assert caplog.text.count("event=audit_write_failed reason=AUDIT_FULL") == 21
        assert log.load_pending() is None  # the refused ones dropped (logged), not left to retry at every start
    finally:
        log.close()
