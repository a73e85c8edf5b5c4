"""The refusal counts not yet summarised survive a crash (node.peer.audit, ``mpending``).

Refusals over a certificate's limit are counted, and each count is written as one RATE_LIMITED
summary a minute; the counts lived only in memory until then, so a peer that crashed lost them
(the flooder's last minute was in no record). Now they are kept in one overwritten key of the
log's database (saved at most every PENDING_SAVE_MS, and in the same batch as each summary) and
written as their summaries at the next start. Each test runs the log in a child process that
SIGKILLs itself (no clean close: no summary is written at close), then reopens it here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import plyvel
import pytest
from rxchain.v1 import audit_pb2

from node.errors import RxError
from node.peer.audit import RATE_LIMITED, AccessLog, Auditor, Caller, RefusalLimiter, decode_pending

_CHILD = """
import json, os, signal, sys
from node.errors import RxError
from node.peer import audit
from node.peer.audit import AccessLog, Auditor, Caller, RefusalLimiter
path, steps = sys.argv[1], json.loads(sys.argv[2])
clock = [1_000_000]
log = AccessLog(path, lambda: clock[0])
auditor = Auditor(log, None, RefusalLimiter(lambda: clock[0], per_minute=1, burst=1))
append_summaries = log.append_summaries
def append_then_die(summaries):  # the process dies right after a batch of summaries is written
    out = append_summaries(summaries)
    os.kill(os.getpid(), signal.SIGKILL)
    return out
for step in steps:
    if step[0] == "tick":
        clock[0] += step[1]
        continue
    if step[0] == "die_after_summary":
        log.append_summaries = append_then_die
        continue
    if step[0] == "summary_batch":
        audit.SUMMARY_BATCH = step[1]
        continue
    who = Caller("h01", "doctor", step[0], step[0].encode(), step[1])
    try:
        auditor.refused(who, "prescription", "get_key", {"rx_id": "RX-1"}, "ACCESS_DENIED", 1, "tx", 1)
    except RxError as err:
        assert err.reason == "AUDIT_RATE_LIMITED", err.reason
os.kill(os.getpid(), signal.SIGKILL)
"""


def _crash(path: Path, steps: list[list[Any]]) -> None:
    """Run ``steps`` (refusals by [name, authenticated], ["tick", ms]) on a log at ``path`` in a
    child that is then SIGKILLed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), json.dumps(steps)], env=env,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


def _reopen(path: Path) -> list[audit_pb2.AccessRecord]:
    """Open the log as a peer starts (an Auditor with a limiter), read it, close it cleanly."""
    log = AccessLog(path, lambda: 2_000_000)
    Auditor(log, None, RefusalLimiter(lambda: 2_000_000, per_minute=1, burst=1))
    try:
        assert log.verify(audit_pb2.AuditVerifyRequest()).ok
        return [audit_pb2.AccessRecord.FromString(r)
                for r in log.query(audit_pb2.AuditQueryRequest(limit=1000)).records]
    finally:
        log.close()


def _pending(path: Path) -> bytes | None:
    db = plyvel.DB(str(path))
    try:
        value: bytes | None = db.get(b"mpending")
        return value
    finally:
        db.close()


def test_counts_not_yet_summarised_survive_a_crash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit"
    a, u = ["dr-a", True], ["dr-u", False]
    # dr-a: one recorded, three counted (the first saved at once); dr-u (claimed): one recorded,
    # one counted; a second later dr-a's fourth count saves every count
    _crash(path, [a, a, a, a, u, u, ["tick", 1_000], a])
    with caplog.at_level(logging.WARNING, logger="node.peer.audit"):
        recs = _reopen(path)
    assert [(r.name, r.outcome, r.suppressed) for r in recs] == [
        ("dr-a", "ACCESS_DENIED", 0), ("dr-u", "ACCESS_DENIED", 0),
        ("dr-a", RATE_LIMITED, 4), ("dr-u", RATE_LIMITED, 1)]
    sa, su = recs[2], recs[3]
    assert (sa.since_ms, sa.authenticated, sa.shared, sa.org, sa.role) == (1_000_000, True, False, "h01", "doctor")
    assert sa.cert_sha256 == hashlib.sha256(b"dr-a").digest() == recs[0].cert_sha256  # who flooded
    assert (su.since_ms, su.authenticated, su.shared) == (1_000_000, False, False)
    assert su.cert_sha256 == hashlib.sha256(b"dr-u").digest()
    assert (sa.contract, sa.function, sa.path) == ("prescription", "get_key", 1)
    assert "event=audit_pending_restored counts=2 suppressed=5" in caplog.text
    assert _pending(path) is None  # written, so no longer pending
    assert len(_reopen(path)) == 4  # a second start writes them no more


def test_a_crash_loses_at_most_the_counts_of_one_save_interval(tmp_path: Path) -> None:
    path = tmp_path / "audit"
    a = ["dr-a", True]
    _crash(path, [a, a, a, a, ["tick", 999], a])  # the first count saved; the next three within 1 s
    assert [(r.outcome, r.suppressed) for r in _reopen(path)] == [("ACCESS_DENIED", 0), (RATE_LIMITED, 1)]


def test_a_summary_and_the_counts_it_took_are_written_together(tmp_path: Path) -> None:
    path = tmp_path / "audit"
    a = ["dr-a", True]
    # the count saved at once; the minute passed: its summary, then a recorded refusal (no count
    # changed since: nothing saved after the summary -- the saved count went in its batch)
    _crash(path, [a, a, ["tick", 60_000], a])
    assert [(r.outcome, r.suppressed) for r in _reopen(path)] == [
        ("ACCESS_DENIED", 0), (RATE_LIMITED, 1), ("ACCESS_DENIED", 0)]  # never counted twice


def test_a_crash_between_two_summaries_written_together_counts_each_once(tmp_path: Path) -> None:
    path = tmp_path / "audit"
    a, b = ["dr-a", True], ["dr-b", True]
    # both counted (and saved); the minute passed: the next refusal writes both summaries, one
    # batch each (SUMMARY_BATCH 1) -- the process dies right after the first
    _crash(path, [["summary_batch", 1], a, a, b, b, b, ["tick", 60_000], ["die_after_summary"], a])
    assert [(r.name, r.outcome, r.suppressed) for r in _reopen(path)] == [
        ("dr-a", "ACCESS_DENIED", 0), ("dr-b", "ACCESS_DENIED", 0), ("dr-a", RATE_LIMITED, 1),
        ("dr-b", RATE_LIMITED, 2)]  # the second from the counts saved with the first, once


def test_unreadable_pending_counts_are_dropped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit"
    AccessLog(path, lambda: 0).close()
    db = plyvel.DB(str(path))
    db.put(b"mpending", b'{"v":1,"counts":[{"org":"h01"}]}')
    db.close()
    with caplog.at_level(logging.ERROR, logger="node.peer.audit"):
        assert _reopen(path) == []
    assert "event=audit_pending_unreadable" in caplog.text
    assert _pending(path) is None


def test_a_clock_stepped_back_does_not_stop_the_counts_being_saved(tmp_path: Path) -> None:
    clock = [1_800_000_000_000]
    log = AccessLog(tmp_path / "audit", lambda: clock[0], sync=False)
    auditor = Auditor(log, None, RefusalLimiter(lambda: clock[0], per_minute=1, burst=1))
    who = Caller("h01", "doctor", "dr-a", b"dr-a", True)

    def refuse() -> None:
        with contextlib.suppress(RxError):
            auditor.refused(who, "prescription", "get_key", {"rx_id": "RX-1"}, "ACCESS_DENIED", 1, "tx", 1)

    try:
        refuse()
        refuse()  # counted: saved at once
        clock[0] -= 3_600_000  # the wall clock steps back an hour
        refuse()  # counted: saved at once too, not an hour later
        raw = log.load_pending()
        assert raw is not None and [c.count for c in decode_pending(raw)] == [2]
    finally:
        log.close()


def test_counts_that_cannot_be_serialised_never_fail_the_records_written_with_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = AccessLog(tmp_path / "audit", lambda: 5, sync=False)

    def broken() -> bytes:
        raise ValueError("boom")

    log.track_pending(broken)
    who = Caller("h01", "doctor", "dr-a", b"dr-a", True)
    try:
        with caplog.at_level(logging.ERROR, logger="node.peer.audit"):
            assert log.append(who, "prescription", "get_key", "", RATE_LIMITED, 0, "", 1, suppressed=3) == 1
        assert "event=audit_pending_unreadable" in caplog.text and log.load_pending() is None
    finally:
        log.close()


_CONCURRENT_CHILD = """
import contextlib, json, os, signal, sys, threading
from node.errors import RxError
from node.peer.audit import AccessLog, Auditor, Caller, RefusalLimiter
lock, tick = threading.Lock(), [0]
def clock():
    with lock:
        tick[0] += 250  # a window passes every 240 calls: summaries are written meanwhile
        return tick[0]
log = AccessLog(sys.argv[1], clock, sync=False)
auditor = Auditor(log, None, RefusalLimiter(clock, per_minute=2, burst=2, unauth_per_minute=3, unauth_burst=3,
                                            max_keys=3), save_every_ms=0)
callers = [Caller("h01", "doctor", "dr-%d" % i, b"cert-%d" % i, i % 3 != 0) for i in range(7)]
sent = {c.name: 0 for c in callers}
def refuse(who):
    with contextlib.suppress(RxError):  # AUDIT_RATE_LIMITED: counted
        auditor.refused(who, "prescription", "get_key", {"rx_id": "RX-1"}, "ACCESS_DENIED", 1, "tx", 1)
    with lock:
        sent[who.name] = sent.get(who.name, 0) + 1
def run(n):
    for k in range(120):
        refuse(callers[(n * 5 + k) % len(callers)])
threads = [threading.Thread(target=run, args=(n,)) for n in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=60)
assert not any(t.is_alive() for t in threads)
refuse(Caller("h01", "doctor", "last", b"last", True))  # recorded; saves any count not saved yet
print(json.dumps(sent), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_concurrent_refusals_are_each_recorded_or_counted_once_across_a_crash(tmp_path: Path) -> None:
    """Threads refusing at once, summaries written as windows pass, the counts saved after every
    change; then a crash: every refusal is in the log once after the restart -- its own record or
    a summary's count (written before the crash, or from the saved counts) --, none twice."""
    path = tmp_path / "audit"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", _CONCURRENT_CHILD, str(path)], env=env, capture_output=True,
                          timeout=180, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    sent: dict[str, int] = json.loads(done.stdout)
    seen: dict[str, int] = {}
    shared = 0
    for r in _reopen(path):
        if r.outcome == RATE_LIMITED and r.shared:
            shared += r.suppressed
        else:
            seen[r.name] = seen.get(r.name, 0) + (r.suppressed if r.outcome == RATE_LIMITED else 1)
    assert sum(seen.values()) + shared == sum(sent.values()) == 6 * 120 + 1
    for i in range(7):
        if i % 3 != 0:  # (an unauthenticated one's count may be in the shared summary)
            assert seen.get(f"dr-{i}", 0) == sent[f"dr-{i}"]


def test_restored_counts_log_one_line_per_batch(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts a crash left are logged at start one line per synced batch (audit_pending_written),
    not one audit_refusals_suppressed line per certificate (up to 20,001 lines before)."""
    from node.peer import audit

    path = tmp_path / "audit"
    certs = [[f"dr-{i}", True] for i in range(5)]
    _crash(path, [step for c in certs for step in (c, c)] + [["tick", 1_000], certs[0]])
    monkeypatch.setattr(audit, "SUMMARY_BATCH", 2)  # five counts: three batches
    with caplog.at_level(logging.WARNING, logger="node.peer.audit"):
        recs = _reopen(path)
    summaries = [r for r in recs if r.outcome == RATE_LIMITED]
    assert sorted(r.name for r in summaries) == [f"dr-{i}" for i in range(5)]
    msgs = [r.getMessage() for r in caplog.records]
    assert not [m for m in msgs if "event=audit_refusals_suppressed" in m]
    written = [m for m in msgs if "event=audit_pending_written" in m]
    assert len(written) == 3
    assert sum(int(m.split("certs=")[1].split()[0]) for m in written) == 5
    assert sum(int(m.split("suppressed=")[1].split()[0]) for m in written) == sum(r.suppressed for r in summaries)
