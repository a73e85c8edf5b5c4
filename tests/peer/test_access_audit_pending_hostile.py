"""The saved refusal counts (``mpending``) as the next start reads them: whatever the key holds
(a value no peer wrote, damaged or oversized), the start neither fails nor hangs -- the counts
are dropped as unreadable (audit_pending_unreadable), the key deleted, the log opens."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import plyvel
import pytest
from rxchain.v1 import audit_pb2

from node.peer import audit
from node.peer.audit import GRANTED, AccessLog, Auditor, Caller, RefusalLimiter, decode_pending


def _put(path: Path, value: bytes) -> None:
    AccessLog(path, lambda: 0).close()
    db = plyvel.DB(str(path))
    try:
        db.put(b"mpending", value)
    finally:
        db.close()


def _start(path: Path) -> tuple[list[audit_pb2.AccessRecord], bytes | None]:
    """Open the log as a peer starts (an Auditor with a limiter): its records and mpending after."""
    log = AccessLog(path, lambda: 2_000_000)
    try:
        Auditor(log, None, RefusalLimiter(lambda: 2_000_000, per_minute=1, burst=1))
        records = [audit_pb2.AccessRecord.FromString(r)
                   for r in log.query(audit_pb2.AuditQueryRequest(limit=1000)).records]
        return records, log.load_pending()
    finally:
        log.close()


def _count(name: str, **over: object) -> dict[str, object]:
    c: dict[str, object] = {"org": "h01", "role": "doctor", "name": name, "cert_sha256": "ab" * 32,
                            "authenticated": True, "contract": "prescription", "function": "get_key", "path": 1,
                            "count": 3, "since_ms": 1_000, "shared": False}
    c.update(over)
    return c


@pytest.mark.parametrize("value", [
    b"[" * 200_000,  # nested past the parser's recursion limit
    b'{"v":1,"counts":' + b"[" * 200_000 + b"]" * 200_000 + b"}",
], ids=["deep-array", "deep-counts"])
def test_a_deeply_nested_value_is_unreadable_not_a_failed_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, value: bytes) -> None:
    path = tmp_path / "audit"
    _put(path, value)
    with caplog.at_level(logging.ERROR, logger="node.peer.audit"):
        records, pending = _start(path)
    assert records == [] and pending is None
    assert "event=audit_pending_unreadable" in caplog.text


def test_a_value_larger_than_any_limiter_saves_is_not_parsed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = json.dumps({"v": 1, "counts": [_count(f"dr-{i}") for i in range(20)]}).encode()
    assert len(doc) > 1_000 and len(decode_pending(doc)) == 20  # well-formed, only too large
    monkeypatch.setattr(audit, "MAX_PENDING_BYTES", 1_000, raising=False)
    path = tmp_path / "audit"
    _put(path, doc)
    with caplog.at_level(logging.ERROR, logger="node.peer.audit"):
        records, pending = _start(path)
    assert records == [] and pending is None
    assert "event=audit_pending_unreadable" in caplog.text and "bytes" in caplog.text


@pytest.mark.parametrize("doc", [
    {"v": True, "counts": [_count("dr-a")]},  # (True == 1 in Python: not the version)
    {"v": 1, "counts": [_count("dr-a", cert_sha256="ab")]},  # not a SHA-256
    {"v": 1, "counts": [_count("dr-a", cert_sha256="ab" * 33)]},
    {"v": 1, "counts": [_count("dr-a", count=1 << 64)]},  # no record holds it (u64)
    {"v": 1, "counts": [_count("dr-a", since_ms=1 << 64)]},
    {"v": 1, "counts": [_count("dr-a", path=1 << 31)]},  # an enum (int32)
], ids=["version-true", "short-hash", "long-hash", "count-past-u64", "since-past-u64", "path-past-int32"])
def test_counts_no_peer_saves_are_refused(doc: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        decode_pending(json.dumps(doc).encode())


def test_a_saved_count_still_restores(tmp_path: Path) -> None:
    path = tmp_path / "audit"
    _put(path, json.dumps({"v": 1, "counts": [_count("dr-a")]}).encode())
    records, pending = _start(path)
    assert [(r.name, r.suppressed, r.cert_sha256.hex()) for r in records] == [("dr-a", 3, "ab" * 32)]
    assert pending is None


class _SlowPendingDB:
    """The log's LevelDB, its put of ``mpending`` held until ``release`` (a slow fsync)."""

    def __init__(self, db: object) -> None:
        self._db = db
        self.entered, self.release = threading.Event(), threading.Event()

    def put(self, key: bytes, value: bytes, **kwargs: object) -> None:
        if key == b"mpending":
            self.entered.set()
            self.release.wait(60)  # (bounded: the test releases it at its end)
        self._db.put(key, value, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


def test_a_grant_is_not_held_while_the_counts_are_saved(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "audit", lambda: 1_000, sync=False)
    slow = _SlowPendingDB(log._db)
    log._db = slow
    who = Caller("h01", "doctor", "dr-a", b"dr-a", True)
    saver = threading.Thread(target=log.save_pending, args=(b'{"v":1,"counts":[]}',))
    granted: list[int] = []
    grant = threading.Thread(target=lambda: granted.append(
        log.append(who, "prescription", "get_key", "RX-1", GRANTED, 1, "tx", 1)))
    try:
        saver.start()
        assert slow.entered.wait(30)  # the save is writing (its fsync not done)
        grant.start()
        grant.join(10)  # (bounded: a grant held behind the save would wait on)
        assert granted == [1]  # written while the save still waits
    finally:
        slow.release.set()
        saver.join(30)
        grant.join(30)
        log.close()
    assert not saver.is_alive() and not grant.is_alive()


def test_a_count_no_record_can_hold_is_dropped_not_retried_at_every_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit"
    _put(path, json.dumps({"v": 1, "counts": [_count("dr-a", count=1 << 64)]}).encode())
    with caplog.at_level(logging.ERROR, logger="node.peer.audit"):
        records, pending = _start(path)
    assert records == [] and pending is None  # (the key was kept: the same failed write at each start)
    assert "event=audit_pending_unreadable" in caplog.text
