"""The peer's access-audit log of key releases (node.peer.audit).

``prescription.get_key`` answers a holder its wrapped key. Submitted, it leaves a KEY_FETCH record
on the ledger; evaluated (Gateway.Evaluate) or endorsed and never submitted, it left nothing, so
nobody could tell who decrypted a prescription. Every such call a peer answers, granted or
refused, is now a durable, hash-chained record on that peer, written before the answer leaves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plyvel
import pytest
from rxchain.v1 import audit_pb2, transaction_pb2

from node.crypto.signing import Verifier
from node.errors import RxError
from node.peer.audit import (
    AUDIT_FULL,
    AUDIT_WRITE_FAILED,
    DAY_MS,
    GRANTED,
    ZERO_HASH,
    AccessLog,
    Auditor,
    Caller,
    check_query,
    check_verify,
    record_hash,
)
from node.peer.config_view import ConfigView
from node.peer.endorser import Endorser
from node.peer.lifecycle import Lifecycle
from tests.peer.conftest import Cluster, Peer

KEY_SOURCE = '''from rxchain_contract import Context


def get_key(ctx: Context, rx_id: str) -> dict:
    if rx_id == "RX-missing":
        ctx.fail("NOT_FOUND", "no prescription " + rx_id)
    if ctx.caller.org != "p01":
        return {"error": "NO_KEY_GRANT", "message": ctx.caller.org + " holds no key grant"}
    return {"rx_id": rx_id, "wrapped_key": "wrapped-for-p01"}


def show(ctx: Context, rx_id: str) -> dict:
    return {"rx_id": rx_id}
'''
KEY_ACCESS = {"get_key": ["doctor", "pharmacist"], "show": ["*"]}


@pytest.fixture
def keyed(cluster: Cluster) -> Cluster:
    """A stand-in ``prescription`` contract (its get_key grants p01, denies others, fails NOT_FOUND)."""
    d = cluster.deploy("prescription", KEY_SOURCE, "OutOf(2, h01.peer, p01.peer, ins01.peer)", KEY_ACCESS)
    _, code = cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d)
    assert code == transaction_pb2.VALID
    return cluster


class _Audited:
    def __init__(self, peer: Peer, endorser: Endorser, log: AccessLog, counts: dict[str, int]) -> None:
        self.peer, self.endorser, self.log, self.counts = peer, endorser, log, counts


@pytest.fixture
def audited(keyed: Cluster, tmp_path: Path) -> Iterator[_Audited]:
    """p01's endorser with an access-audit log on the peer's clock."""
    peer = keyed.peers[1]
    log = AccessLog(tmp_path / "audit", lambda: peer.clock[0])
    counts: dict[str, int] = {}

    def count(result: str) -> None:
        counts[result] = counts.get(result, 0) + 1

    endorser = Endorser(peer.ledger, ConfigView(peer.ledger.state, Verifier()), keyed.net.peers["p01"],
                        peer.sandbox, Lifecycle(), lambda: peer.clock[0], audit=Auditor(log, count))
    try:
        yield _Audited(peer, endorser, log, counts)
    finally:
        log.close()


def _records(log: AccessLog) -> list[audit_pb2.AccessRecord]:
    page = log.query(audit_pb2.AuditQueryRequest(limit=1000))
    return [audit_pb2.AccessRecord.FromString(r) for r in page.records]


def _evaluate(keyed: Cluster, a: _Audited, who: Any, rx_id: Any, function: str = "get_key") -> Any:
    signed = keyed.kit.proposal(who, "prescription", function, {"rx_id": rx_id}, timestamp_ms=keyed.now())
    return a.endorser.simulate(signed, endorse=False)


def test_granted_and_refused_evaluates_are_recorded(keyed: Cluster, audited: _Audited) -> None:
    net, a = keyed.net, audited
    a.peer.clock[0] += 1234  # the peer's own clock, not the proposal's timestamp
    height = a.peer.ledger.height()
    got = _evaluate(keyed, a, net.pharmacist, "RX-1")
    assert json.loads(got.response.payload)["wrapped_key"] == "wrapped-for-p01"
    _evaluate(keyed, a, net.doctor, "RX-1")  # a 200 answer that is get_key's denial
    missing = _evaluate(keyed, a, net.pharmacist, "RX-missing")  # a contract refusal: a 400 answer
    assert (missing.response.status, missing.response.reason) == (400, "NOT_FOUND")
    with pytest.raises(RxError) as denied:
        _evaluate(keyed, a, net.clerk, "RX-1")  # the definition's access rules
    assert denied.value.reason == "ACCESS_DENIED"
    _evaluate(keyed, a, net.pharmacist, "RX-1", "show")  # releases nothing: not recorded

    recs = _records(a.log)
    assert [(r.id, r.org, r.role, r.record_id, r.outcome) for r in recs] == [
        (1, "p01", "pharmacist", "RX-1", GRANTED),
        (2, "h01", "doctor", "RX-1", "NO_KEY_GRANT"),
        (3, "p01", "pharmacist", "RX-missing", "NOT_FOUND"),
        (4, "ins01", "clerk", "RX-1", "ACCESS_DENIED"),
    ]
    first = recs[0]
    assert first.cert_sha256 == hashlib.sha256(net.pharmacist.cert_der).digest()
    assert first.time_ms == a.peer.clock[0] and first.height == height
    assert (first.contract, first.function, first.path) == ("prescription", "get_key", audit_pb2.ACCESS_EVALUATE)
    assert all(r.authenticated for r in recs)
    assert first.prev_hash == ZERO_HASH
    raws = a.log.query(audit_pb2.AuditQueryRequest()).records
    assert [r.prev_hash for r in recs[1:]] == [record_hash(raw) for raw in raws[:-1]]
    assert a.counts == {"granted": 1, "refused": 3}


def test_a_refusal_at_the_signature_check_is_recorded_unauthenticated(keyed: Cluster, audited: _Audited) -> None:
    signed = keyed.kit.proposal(keyed.net.pharmacist, "prescription", "get_key", {"rx_id": "RX-1"},
                                timestamp_ms=keyed.now())
    signed.signature = b"\x30\x06\x02\x01\x01\x02\x01\x01"  # a well-formed, wrong signature
    with pytest.raises(RxError) as err:
        audited.endorser.simulate(signed, endorse=False)
    [rec] = _records(audited.log)
    assert rec.outcome == err.value.reason and not rec.authenticated
    assert (rec.org, rec.role, rec.record_id) == ("p01", "pharmacist", "RX-1")  # as the certificate claims


def test_a_certificate_that_does_not_parse_is_recorded_by_its_fingerprint(keyed: Cluster,
                                                                          audited: _Audited) -> None:
    signed = keyed.kit.proposal(keyed.net.pharmacist, "prescription", "get_key", {"rx_id": "RX-9"},
                                timestamp_ms=keyed.now())
    prop = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
    header = transaction_pb2.TxHeader.FromString(prop.header)
    header.creator.cert_der = b"not a certificate"
    prop.header = header.SerializeToString()
    signed = transaction_pb2.SignedProposal(proposal_bytes=prop.SerializeToString(), signature=b"x")
    with pytest.raises(RxError) as err:
        audited.endorser.simulate(signed, endorse=True)
    [rec] = _records(audited.log)
    assert (rec.outcome, rec.authenticated, rec.path) == (err.value.reason, False, audit_pb2.ACCESS_ENDORSE)
    assert rec.cert_sha256 == hashlib.sha256(b"not a certificate").digest()
    assert (rec.org, rec.role, rec.record_id) == ("p01", "", "RX-9")


def test_an_endorsement_is_recorded_with_its_tx_id(keyed: Cluster, audited: _Audited) -> None:
    signed = keyed.kit.proposal(keyed.net.pharmacist, "prescription", "get_key", {"rx_id": "RX-2"},
                                timestamp_ms=keyed.now())
    resp = audited.endorser.endorse(signed)
    assert resp.response.status == 200
    [rec] = _records(audited.log)
    header = transaction_pb2.TxHeader.FromString(transaction_pb2.Proposal.FromString(signed.proposal_bytes).header)
    assert (rec.path, rec.tx_id, rec.outcome) == (audit_pb2.ACCESS_ENDORSE, header.tx_id, GRANTED)


class _FailingBatch:
    def __init__(self, batch: Any) -> None:
        self._batch = batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def write(self) -> None:
        raise plyvel.IOError("IO error: No space left on device")


class _FailingDB:
    def __init__(self, db: Any) -> None:
        self._db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def write_batch(self, **kw: Any) -> _FailingBatch:
        return _FailingBatch(self._db.write_batch(**kw))


def test_no_key_is_released_when_its_record_cannot_be_written(keyed: Cluster, audited: _Audited,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audited.log, "_db", _FailingDB(audited.log._db))
    with pytest.raises(RxError) as err:
        _evaluate(keyed, audited, keyed.net.pharmacist, "RX-1")
    assert err.value.reason == AUDIT_WRITE_FAILED
    with pytest.raises(RxError) as endorsed:
        audited.endorser.endorse(keyed.kit.proposal(keyed.net.pharmacist, "prescription", "get_key",
                                                    {"rx_id": "RX-1"}, timestamp_ms=keyed.now()))
    assert endorsed.value.reason == AUDIT_WRITE_FAILED
    monkeypatch.undo()
    assert _records(audited.log) == [] and audited.log.head().last_id == 0
    assert audited.counts == {"write_failed": 2}


# ---------------------------------------------------------------- the log itself

WHO = Caller("h01", "doctor", "dr-a", b"cert-bytes", True)


def _fill(log: AccessLog, n: int, rx: str = "RX-1") -> None:
    for _ in range(n):
        log.append(WHO, "prescription", "get_key", rx, GRANTED, 7, "tx", audit_pb2.ACCESS_EVALUATE)


def _verify(log: AccessLog, **kw: Any) -> audit_pb2.AuditVerifyResponse:
    return log.verify(audit_pb2.AuditVerifyRequest(**kw))


def test_the_log_survives_a_restart_and_its_chain_goes_on(tmp_path: Path) -> None:
    clock = [1_000]
    log = AccessLog(tmp_path / "a", lambda: clock[0])
    _fill(log, 3)
    head = log.head()
    log.close()
    log = AccessLog(tmp_path / "a", lambda: clock[0])
    try:
        assert log.head() == head
        _fill(log, 1)
        recs = _records(log)
        assert [r.id for r in recs] == [1, 2, 3, 4]
        assert recs[3].prev_hash == head.last_hash
        assert _verify(log).ok and _verify(log).checked == 4
    finally:
        log.close()


def _tampered(path: Path, fn: Any) -> AccessLog:
    db = plyvel.DB(str(path))
    try:
        fn(db)
    finally:
        db.close()
    return AccessLog(path, lambda: 1_000)


def _rkey(rid: int) -> bytes:
    return b"r" + rid.to_bytes(8, "big")


def _changed(db: Any, rid: int) -> None:
    rec = audit_pb2.AccessRecord.FromString(db.get(_rkey(rid)))
    rec.org = "someone-else"
    db.put(_rkey(rid), rec.SerializeToString())


@pytest.mark.parametrize(("tamper", "bad_id", "reason"), [
    (lambda db: _changed(db, 3), 4, "CHAIN_BROKEN"),
    (lambda db: db.delete(_rkey(3)), 3, "RECORD_MISSING"),
    (lambda db: _changed(db, 5), 5, "HEAD_MISMATCH"),
    (lambda db: db.delete(_rkey(5)), 5, "RECORD_MISSING"),  # the newest cut off
    (lambda db: db.put(_rkey(2), b"\xff\xff"), 2, "RECORD_MALFORMED"),
])
def test_verify_finds_a_record_changed_or_removed(tmp_path: Path, tamper: Any, bad_id: int, reason: str) -> None:
    log = AccessLog(tmp_path / "a", lambda: 1_000)
    _fill(log, 5)
    assert _verify(log).ok
    log.close()
    log = _tampered(tmp_path / "a", tamper)
    try:
        got = _verify(log)
        assert (got.ok, got.first_bad_id, got.reason) == (False, bad_id, reason)
    finally:
        log.close()


def test_a_rewritten_log_fails_against_an_anchor_noted_earlier(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "a", lambda: 1_000)
    _fill(log, 3)
    noted = log.head()
    assert _verify(log, anchor_id=noted.last_id, anchor_hash=noted.last_hash).ok
    log.close()
    # record 3 changed and the head rewritten to match: the chain itself is consistent again
    def rewrite(db: Any) -> None:
        _changed(db, 3)
        db.put(b"mhead", (3).to_bytes(8, "big") + record_hash(db.get(_rkey(3))))

    log = _tampered(tmp_path / "a", rewrite)
    try:
        assert _verify(log).ok
        got = _verify(log, anchor_id=noted.last_id, anchor_hash=noted.last_hash)
        assert (got.ok, got.reason, got.first_bad_id) == (False, "ANCHOR_MISMATCH", 3)
    finally:
        log.close()


def test_retention_prunes_the_oldest_and_a_full_log_refuses(tmp_path: Path) -> None:
    clock = [10 * DAY_MS]
    log = AccessLog(tmp_path / "a", lambda: clock[0], retention_days=1, max_records=3)
    try:
        _fill(log, 3)
        with pytest.raises(RxError) as full:
            _fill(log, 1)  # all within retention: nothing is dropped, nothing released
        assert full.value.reason == AUDIT_FULL and log.head().last_id == 3
        clock[0] += 2 * DAY_MS  # the three are past retention now
        _fill(log, 1)
        head = log.head()
        assert (head.first_id, head.last_id, head.pruned) == (4, 4, 3)
        assert [r.id for r in _records(log)] == [4]
        assert _verify(log).ok  # record 4 chains to the anchor the pruned record 3 left
        assert log.query(audit_pb2.AuditQueryRequest(record_id="RX-1")).records == [log.query(
            audit_pb2.AuditQueryRequest()).records[0]]  # the index entries went with them
    finally:
        log.close()


def test_pages_by_id_time_and_prescription(tmp_path: Path) -> None:
    clock = [5_000]
    log = AccessLog(tmp_path / "a", lambda: clock[0])
    try:
        for i in range(7):
            clock[0] = 5_000 + 10 * i
            _fill(log, 1, "RX-a" if i % 2 else "RX-b")
        p1 = log.query(audit_pb2.AuditQueryRequest(limit=3))
        p2 = log.query(audit_pb2.AuditQueryRequest(limit=3, start_id=p1.next_id))
        p3 = log.query(audit_pb2.AuditQueryRequest(limit=3, start_id=p2.next_id))
        ids = [audit_pb2.AccessRecord.FromString(r).id for p in (p1, p2, p3) for r in p.records]
        assert ids == [1, 2, 3, 4, 5, 6, 7] and p1.more and p2.more and not p3.more
        t = log.query(audit_pb2.AuditQueryRequest(order=audit_pb2.AUDIT_BY_TIME, start_ms=5_020, end_ms=5_050,
                                                  limit=2))
        assert [audit_pb2.AccessRecord.FromString(r).time_ms for r in t.records] == [5_020, 5_030]
        t2 = log.query(audit_pb2.AuditQueryRequest(order=audit_pb2.AUDIT_BY_TIME, start_ms=t.next_ms,
                                                   start_id=t.next_id, end_ms=5_050, limit=2))
        assert [audit_pb2.AccessRecord.FromString(r).time_ms for r in t2.records] == [5_040] and not t2.more
        rx = log.query(audit_pb2.AuditQueryRequest(record_id="RX-a"))
        assert [audit_pb2.AccessRecord.FromString(r).id for r in rx.records] == [2, 4, 6]
    finally:
        log.close()


@pytest.mark.parametrize("req", [
    audit_pb2.AuditQueryRequest(limit=1001),
    audit_pb2.AuditQueryRequest(start_ms=5),  # a time bound paging by id
    audit_pb2.AuditQueryRequest(record_id="x" * 129),
    audit_pb2.AuditQueryRequest(record_id="a\0b"),
    audit_pb2.AuditQueryRequest(order=7),  # type: ignore[arg-type]
])
def test_a_query_out_of_bounds_is_refused(req: audit_pb2.AuditQueryRequest) -> None:
    with pytest.raises(RxError) as err:
        check_query(req)
    assert err.value.reason == "BAD_REQUEST"


@pytest.mark.parametrize("req", [
    audit_pb2.AuditVerifyRequest(limit=100_001),
    audit_pb2.AuditVerifyRequest(anchor_id=3),
    audit_pb2.AuditVerifyRequest(anchor_id=3, anchor_hash=b"short"),
])
def test_a_verify_out_of_bounds_is_refused(req: audit_pb2.AuditVerifyRequest) -> None:
    with pytest.raises(RxError) as err:
        check_verify(req)
    assert err.value.reason == "BAD_REQUEST"
