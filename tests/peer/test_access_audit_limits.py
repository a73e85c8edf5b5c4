"""Refusals cannot fill the access-audit log (node.peer.audit).

Every refused ``prescription.get_key`` was one synced record: a member -- or anyone reaching the
endorser, since refusals before the signature check are recorded too -- could flood refusals
until the log held ``audit_max_records`` and every grant was refused AUDIT_FULL. Now:

* refusals are recorded one by one up to a token bucket per certificate; over it they are
  counted, answered RESOURCE_EXHAUSTED AUDIT_RATE_LIMITED, and written as one RATE_LIMITED
  summary record per certificate and window (``suppressed``, ``since_ms``);
* unauthenticated refusals also share one bucket, so forged certificates do not multiply it;
* grants are never limited, and keep their records;
* the last 1% of ``audit_max_records`` is kept for grants: refusals are not recorded there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from rxchain.v1 import audit_pb2, identity_pb2, transaction_pb2

from client.audit import record_dict
from node.crypto.signing import Signer, Verifier
from node.errors import RxError
from node.peer.audit import (
    AUDIT_FULL,
    AUDIT_RATE_LIMITED,
    DEFAULT_REFUSAL_BURST,
    GRANTED,
    RATE_LIMITED,
    AccessLog,
    Auditor,
    Caller,
    RefusalLimiter,
)
from node.peer.config_view import ConfigView
from node.peer.endorser import Endorser
from node.peer.lifecycle import Lifecycle
from tests.peer.conftest import Cluster
from tests.peer.test_access_audit import _records, keyed  # noqa: F401 - fixtures

EVAL = audit_pb2.ACCESS_EVALUATE


class _Limited:
    def __init__(self, endorser: Endorser, log: AccessLog, counts: dict[str, int], clock: list[int]) -> None:
        self.endorser, self.log, self.counts, self.clock = endorser, log, counts, clock


def _limited(kc: Cluster, tmp_path: Path, sandbox: Any = None, **limits: int) -> _Limited:
    peer = kc.peers[1]
    log = AccessLog(tmp_path / "audit", lambda: peer.clock[0])
    clock = [1_000_000]  # the limiter's own clock (the proposals' timestamps stay on the peer's)
    counts: dict[str, int] = {}

    def count(result: str) -> None:
        counts[result] = counts.get(result, 0) + 1

    auditor = Auditor(log, count, RefusalLimiter(lambda: clock[0], **limits))
    endorser = Endorser(peer.ledger, ConfigView(peer.ledger.state, Verifier()), kc.net.peers["p01"],
                        sandbox or peer.sandbox, Lifecycle(), lambda: peer.clock[0], audit=auditor)
    return _Limited(endorser, log, counts, clock)


@pytest.fixture
def limited(keyed: Cluster, tmp_path: Path) -> Iterator[_Limited]:  # noqa: F811
    """p01's endorser, 3 refusals per certificate at once then 6 a minute; 5 unauthenticated at once."""
    a = _limited(keyed, tmp_path, per_minute=6, burst=3, unauth_per_minute=6, unauth_burst=5)
    try:
        yield a
    finally:
        a.log.close()


def _call(kc: Cluster, a: _Limited, who: Any, rx_id: str) -> Any:
    signed = kc.kit.proposal(who, "prescription", "get_key", {"rx_id": rx_id}, timestamp_ms=kc.now())
    return a.endorser.simulate(signed, endorse=False)


def _refused(kc: Cluster, a: _Limited, who: Any, rx_id: str = "RX-1") -> RxError:
    with pytest.raises(RxError) as err:
        _call(kc, a, who, rx_id)
    return err.value


def test_refusals_over_a_certificates_limit_are_counted_and_summarised(keyed: Cluster,  # noqa: F811
                                                                       limited: _Limited,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    a, clerk = limited, keyed.net.clerk  # the definition's access rules refuse a clerk
    assert [_refused(keyed, a, clerk).reason for _ in range(3)] == ["ACCESS_DENIED"] * 3
    over = [_refused(keyed, a, clerk) for _ in range(4)]
    assert {(e.reason, e.grpc_code) for e in over} == {(AUDIT_RATE_LIMITED, grpc.StatusCode.RESOURCE_EXHAUSTED)}
    assert "ACCESS_DENIED" in over[0].message  # the refusal it stands for is named
    assert [r.outcome for r in _records(a.log)] == ["ACCESS_DENIED"] * 3  # nothing more written
    assert a.counts == {"refused": 3, "suppressed": 4}

    a.clock[0] += 60_000  # the window passed: the next refusal writes the summary first
    with caplog.at_level(logging.WARNING, logger="node.peer.audit"):
        assert _refused(keyed, a, clerk).reason == "ACCESS_DENIED"  # and the bucket refilled
    recs = _records(a.log)
    summary = recs[3]
    assert (summary.outcome, summary.suppressed, summary.since_ms) == (RATE_LIMITED, 4, 1_000_000)
    assert (summary.org, summary.role, summary.authenticated) == ("ins01", "clerk", True)
    assert summary.cert_sha256 == recs[0].cert_sha256  # who flooded
    assert (summary.contract, summary.function) == ("prescription", "get_key")
    assert recs[4].outcome == "ACCESS_DENIED"
    assert "event=audit_refusals_suppressed" in caplog.text and "suppressed=4" in caplog.text
    assert a.log.verify(audit_pb2.AuditVerifyRequest()).ok


def test_a_grant_is_never_limited_and_keeps_its_record(keyed: Cluster, limited: _Limited) -> None:  # noqa: F811
    a, pharmacist = limited, keyed.net.pharmacist
    for _ in range(3):  # the contract's own refusals (a 400 answer) use up the certificate's bucket
        assert _call(keyed, a, pharmacist, "RX-missing").response.reason == "NOT_FOUND"
    assert _refused(keyed, a, pharmacist, "RX-missing").reason == AUDIT_RATE_LIMITED
    for _ in range(5):  # the same certificate's grants: answered and recorded, every one
        assert b"wrapped-for-p01" in _call(keyed, a, pharmacist, "RX-1").response.payload
    assert [r.outcome for r in _records(a.log)] == ["NOT_FOUND"] * 3 + [GRANTED] * 5
    # a 200 answer that is get_key's denial is a refusal: limited as any
    doctor = keyed.net.doctor
    assert [_call(keyed, a, doctor, "RX-1").response.status for _ in range(3)] == [200] * 3
    assert _refused(keyed, a, doctor).reason == AUDIT_RATE_LIMITED


def _unauthenticated(kc: Cluster, cert: bytes) -> transaction_pb2.SignedProposal:
    """A get_key proposal claiming ``cert`` (no certificate: refused before any signature check)."""
    signed = kc.kit.proposal(kc.net.pharmacist, "prescription", "get_key", {"rx_id": "RX-1"},
                                timestamp_ms=kc.now())
    prop = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
    header = transaction_pb2.TxHeader.FromString(prop.header)
    header.creator.cert_der = cert
    prop.header = header.SerializeToString()
    return transaction_pb2.SignedProposal(proposal_bytes=prop.SerializeToString(), signature=b"x")


def _refused_signed(a: _Limited, signed: transaction_pb2.SignedProposal) -> str:
    with pytest.raises(RxError) as err:
        a.endorser.simulate(signed, endorse=False)
    return err.value.reason


def test_forged_certificates_share_one_bound_for_unauthenticated_refusals(keyed: Cluster,  # noqa: F811
                                                                          limited: _Limited) -> None:
    a = limited
    got = [_refused_signed(a, _unauthenticated(keyed, b"forged-%d" % i)) for i in range(20)]
    assert got.count(AUDIT_RATE_LIMITED) == 15  # 5 recorded at once for all of them, not 20
    recs = _records(a.log)
    assert len(recs) == 5 and not any(r.authenticated for r in recs)
    a.clock[0] += 60_000
    _refused_signed(a, _unauthenticated(keyed, b"forged-x"))
    summary = _records(a.log)[5]
    assert (summary.outcome, summary.suppressed, summary.cert_sha256, summary.authenticated, summary.shared) == (
        RATE_LIMITED, 15, b"", False, True)  # one summary for them all, not one per forged certificate


def test_an_empty_claimed_certificates_summary_is_not_the_shared_one(keyed: Cluster,  # noqa: F811
                                                                     limited: _Limited) -> None:
    """ops1: a caller claiming an EMPTY certificate (and no organisation) got, over its own bucket,
    a summary with cert_sha256 empty -- the mark of the shared summary of all unauthenticated
    refusals, with the same (empty) identity: the two could not be told apart. Now the shared one
    says so (``shared``, field 18) and the empty certificate's names SHA-256 of no bytes, as its
    refusals' own records do."""
    a = limited

    def claiming(cert: bytes) -> transaction_pb2.SignedProposal:
        signed = _unauthenticated(keyed, cert)
        prop = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
        header = transaction_pb2.TxHeader.FromString(prop.header)
        header.creator.org = ""
        prop.header = header.SerializeToString()
        return transaction_pb2.SignedProposal(proposal_bytes=prop.SerializeToString(), signature=b"x")

    # the empty certificate: 3 recorded (its burst; 2 shared tokens left), 2 counted in its own bucket
    got = [_refused_signed(a, claiming(b"")) for _ in range(5)]
    assert got.count(AUDIT_RATE_LIMITED) == 2
    # others: 2 recorded (the shared bucket's last), 4 counted in the shared count
    got = [_refused_signed(a, claiming(b"forged-%d" % i)) for i in range(6)]
    assert got.count(AUDIT_RATE_LIMITED) == 4
    a.clock[0] += 60_000
    _refused_signed(a, claiming(b"forged-x"))  # writes both summaries, then is recorded
    recs = _records(a.log)
    empty_sha = hashlib.sha256(b"").digest()
    assert [r.cert_sha256 for r in recs[:3]] == [empty_sha] * 3 and all(r.org == "" for r in recs[:3])
    summaries = {(r.shared, r.cert_sha256, r.suppressed) for r in recs if r.outcome == RATE_LIMITED}
    assert summaries == {(False, empty_sha, 2), (True, b"", 4)}
    for r in recs:
        if r.outcome == RATE_LIMITED:  # the same identity otherwise: only these fields tell them apart
            assert (r.org, r.role, r.name, r.authenticated) == ("", "", "", False)
    shown = {d["shared"]: d for d in (record_dict(raw) for raw in a.log.query(
        audit_pb2.AuditQueryRequest(limit=1000)).records) if d["outcome"] == RATE_LIMITED}
    assert shown[True]["cert_sha256"] == "" and shown[False]["cert_sha256"] == empty_sha.hex()
    assert (shown[True]["suppressed"], shown[False]["suppressed"]) == (4, 2)


def test_one_claimed_certificate_has_its_own_bucket_too(keyed: Cluster, limited: _Limited) -> None:  # noqa: F811
    a = limited
    signed = keyed.kit.proposal(keyed.net.pharmacist, "prescription", "get_key", {"rx_id": "RX-1"},
                                timestamp_ms=keyed.now())
    signed.signature = b"\x30\x06\x02\x01\x01\x02\x01\x01"  # a well-formed, wrong signature
    got = [_refused_signed(a, signed) for _ in range(5)]
    assert got[3:] == [AUDIT_RATE_LIMITED] * 2 and AUDIT_RATE_LIMITED not in got[:3]
    a.clock[0] += 60_000
    a.endorser.simulate(keyed.kit.proposal(keyed.net.pharmacist, "prescription", "get_key",
                                           {"rx_id": "RX-missing"}, timestamp_ms=keyed.now()), endorse=False)
    recs = _records(a.log)
    summary = recs[3]
    assert (summary.outcome, summary.suppressed, summary.authenticated) == (RATE_LIMITED, 2, False)
    assert (summary.org, summary.role) == ("p01", "pharmacist") and summary.cert_sha256 == recs[0].cert_sha256


def test_counts_still_open_are_written_when_the_log_closes(keyed: Cluster, tmp_path: Path) -> None:  # noqa: F811
    a = _limited(keyed, tmp_path, per_minute=1, burst=1)
    try:
        _refused(keyed, a, keyed.net.clerk)
        assert _refused(keyed, a, keyed.net.clerk).reason == AUDIT_RATE_LIMITED
    finally:
        a.log.close()
    log = AccessLog(tmp_path / "audit", lambda: 0)
    try:
        assert [(r.outcome, r.suppressed) for r in _records(log)] == [("ACCESS_DENIED", 0), (RATE_LIMITED, 1)]
        shown = [record_dict(raw) for raw in log.query(audit_pb2.AuditQueryRequest()).records]
        assert "suppressed" not in shown[0] and (shown[1]["suppressed"], shown[1]["since_ms"]) == (1, 1_000_000)
        assert shown[1]["shared"] is False  # a certificate's own summary
    finally:
        log.close()


# ---------------------------------------------------------------- the limiter itself

def _who(i: int, authenticated: bool = True) -> Caller:
    return Caller("h01", "doctor", f"dr-{i}", b"cert-%d" % i, authenticated)


def test_the_buckets_are_bounded_and_forged_certificates_evict_no_members_bucket() -> None:
    clock = [0]
    lim = RefusalLimiter(lambda: clock[0], per_minute=1, burst=1, unauth_per_minute=10**5, unauth_burst=10**5,
                         max_keys=4)
    member = _who(0)
    assert lim.admit(member, "prescription", "get_key", EVAL)
    assert not lim.admit(member, "prescription", "get_key", EVAL)
    for i in range(1, 1000):  # many forged certificates: the member's bucket stays (another table)
        lim.admit(_who(i, authenticated=False), "prescription", "get_key", EVAL)
    assert lim.tracked() <= 2 * 4 + 1
    assert not lim.admit(member, "prescription", "get_key", EVAL)
    for i in range(1, 5):  # four other members: the member's bucket is dropped, its count due at once
        lim.admit(_who(i), "prescription", "get_key", EVAL)
    assert lim.tracked() <= 2 * 4 + 1
    due = lim.due()
    assert [(s.caller.name, s.count) for s in due if s.caller.authenticated] == [("dr-0", 2)]


def test_the_default_limits_record_a_legitimate_clients_refusals() -> None:
    clock = [0]
    lim = RefusalLimiter(lambda: clock[0])
    who = _who(1)
    assert all(lim.admit(who, "prescription", "get_key", EVAL) for _ in range(DEFAULT_REFUSAL_BURST))
    assert not lim.admit(who, "prescription", "get_key", EVAL)  # (a flood is not)
    clock[0] += 10 * 60_000
    for _ in range(10_000):  # one refusal every 6 s, for ever
        assert lim.admit(who, "prescription", "get_key", EVAL)
        clock[0] += 6_000
    assert [s.count for s in lim.due(everything=True)] == [1]


# ---------------------------------------------------------------- the grants' reserve

def test_refusals_are_not_recorded_in_the_last_percent_kept_for_grants(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "a", lambda: 1_000, max_records=1_000, sync=False)
    who = _who(1)
    counts: dict[str, int] = {}
    auditor = Auditor(log, lambda r: counts.__setitem__(r, counts.get(r, 0) + 1))
    try:
        for _ in range(990):
            log.append(who, "prescription", "get_key", "RX-1", "NO_KEY_GRANT", 1, "tx", EVAL)
        with pytest.raises(RxError) as full:
            log.append(who, "prescription", "get_key", "RX-1", "NO_KEY_GRANT", 1, "tx", EVAL)
        assert full.value.reason == AUDIT_FULL and log.head().last_id == 990
        auditor.refused(who, "prescription", "get_key", {"rx_id": "RX-1"}, "ACCESS_DENIED", 1, "tx", EVAL)
        assert counts == {"write_failed": 1}  # refused all the same; not recorded
        for _ in range(10):  # the reserve: grants go on
            log.append(who, "prescription", "get_key", "RX-1", GRANTED, 1, "tx", EVAL)
        assert log.head().last_id == 1_000
        with pytest.raises(RxError) as full:
            log.append(who, "prescription", "get_key", "RX-1", GRANTED, 1, "tx", EVAL)
        assert full.value.reason == AUDIT_FULL
    finally:
        log.close()
    assert hashlib.sha256(b"cert-1").digest() == _records_of(tmp_path / "a")[-1].cert_sha256


def _records_of(path: Path) -> list[audit_pb2.AccessRecord]:
    log = AccessLog(path, lambda: 0)
    try:
        return [audit_pb2.AccessRecord.FromString(r)
                for r in log.query(audit_pb2.AuditQueryRequest(start_id=991, limit=100)).records]
    finally:
        log.close()


def test_a_dropped_buckets_count_keeps_its_start_and_is_not_lost_to_the_same_certificate() -> None:
    """review17: a member's counting bucket dropped (LRU) was put back among those counting with
    since_ms rewritten to "a window ago", under the certificate's key: the summary named the
    wrong start, and the same certificate counting again before the next due() replaced it --
    its count lost."""
    clock = [5_000]
    lim = RefusalLimiter(lambda: clock[0], per_minute=1, burst=1, max_keys=1)
    member, other = _who(0), _who(1)
    assert lim.admit(member, "prescription", "get_key", EVAL)
    assert not lim.admit(member, "prescription", "get_key", EVAL)  # counted since 5_000
    clock[0] = 20_000
    assert lim.admit(other, "prescription", "get_key", EVAL)  # the member's bucket dropped
    assert lim.admit(member, "prescription", "get_key", EVAL)  # a new bucket, full
    assert not lim.admit(member, "prescription", "get_key", EVAL)  # counted since 20_000
    got = [(s.caller.name, s.count, s.since_ms) for s in lim.due(everything=True)]
    assert sorted(got) == [("dr-0", 1, 5_000), ("dr-0", 1, 20_000)]


def _der_items(der: bytes) -> tuple[int, list[bytes]]:
    """The header length of the DER SEQUENCE ``der`` and its items (each a whole TLV)."""
    def tlv_end(at: int) -> tuple[int, int]:
        n = der[at + 1]
        if n < 0x80:
            return at + 2, at + 2 + n
        size = n & 0x7F
        body = at + 2 + size
        return body, body + int.from_bytes(der[at + 2:body], "big")
    start, end = tlv_end(0)
    items, at = [], start
    while at < end:
        _, nxt = tlv_end(at)
        items.append(der[at:nxt])
        at = nxt
    return start, items


def _seq(body: bytes) -> bytes:
    n = len(body)
    head = bytes([n]) if n < 0x80 else b"\x82" + n.to_bytes(2, "big")
    return b"\x30" + head + body


def _high_s(cert_der: bytes) -> bytes:
    """The same certificate, its CA's ECDSA signature (r, s) given as (r, n - s): it verifies."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256
    r, s = decode_dss_signature(x509.load_der_x509_certificate(cert_der).signature)
    sig = b"\x00" + encode_dss_signature(r, order - s)
    _, (tbs, alg, _old) = _der_items(cert_der)
    return _seq(tbs + alg + b"\x03" + bytes([len(sig)]) + sig)


def test_a_members_certificate_re_signed_high_s_shares_its_bucket(keyed: Cluster,  # noqa: F811
                                                                 limited: _Limited) -> None:
    """review17: the bucket was the SHA-256 of the certificate's DER; the same certificate with
    its CA's signature's s replaced by n - s verifies as well (OpenSSL takes either), so each
    member had a second bucket of refusals recorded one by one, its own."""
    a, clerk = limited, keyed.net.clerk
    twin_der = _high_s(clerk.cert_der)
    assert twin_der != clerk.cert_der
    twin = Signer(clerk.key, identity_pb2.Identity(org=clerk.identity.org, cert_der=twin_der))
    assert [_refused(keyed, a, clerk).reason for _ in range(3)] == ["ACCESS_DENIED"] * 3
    assert _refused(keyed, a, twin).reason == AUDIT_RATE_LIMITED
    recs = _records(a.log)
    assert len(recs) == 3 and all(r.authenticated for r in recs)


def test_a_claimed_certificates_count_joining_the_shared_one_keeps_its_start() -> None:
    """review17: a claimed certificate's count with no shared token left for its own summary
    (or its bucket dropped) joined the shared count as if its refusals began then: the shared
    summary's since_ms -- "the first of them" -- was later than the first it counts."""
    clock = [0]
    lim = RefusalLimiter(lambda: clock[0], per_minute=1, burst=1, unauth_per_minute=1, unauth_burst=2,
                         window_ms=1_000)
    forged, other = _who(7, authenticated=False), _who(8, authenticated=False)
    assert lim.admit(forged, "prescription", "get_key", EVAL)
    assert not lim.admit(forged, "prescription", "get_key", EVAL)  # its own bucket: counted at 0
    clock[0] = 500
    assert lim.admit(other, "prescription", "get_key", EVAL)  # the shared bucket's last token
    clock[0] = 1_000
    got = lim.due() + lim.due(everything=True)  # due, no shared token for it: the shared count's
    assert [(s.caller.cert_der, s.count, s.since_ms) for s in got] == [(b"", 1, 0)]


def test_concurrent_refusals_are_each_recorded_or_counted_once(tmp_path: Path) -> None:
    """review17: threads refusing at once (group commit, summaries written as windows pass,
    members' buckets dropped and taken again): every refusal is in the log once -- its own
    record or a summary's count --, none lost or counted twice, and the chain verifies."""
    lock, tick = threading.Lock(), [0]

    def clock() -> int:
        with lock:
            tick[0] += 250  # a window passes every 240 calls
            return tick[0]

    log = AccessLog(tmp_path / "audit", clock, sync=False)
    auditor = Auditor(log, None, RefusalLimiter(clock, per_minute=2, burst=2, unauth_per_minute=3, unauth_burst=3,
                                                max_keys=3))
    callers = [_who(i, authenticated=i % 3 != 0) for i in range(7)]
    sent = {c.name: 0 for c in callers}

    def refuse(n: int) -> None:
        for k in range(120):
            who = callers[(n * 5 + k) % len(callers)]
            with contextlib.suppress(RxError):  # AUDIT_RATE_LIMITED: counted
                auditor.refused(who, "prescription", "get_key", {"rx_id": "RX-1"}, "ACCESS_DENIED", 1, "tx", EVAL)
            with lock:
                sent[who.name] += 1

    threads = [threading.Thread(target=refuse, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    log.close()  # writes the counts still open
    log = AccessLog(tmp_path / "audit", lambda: 0)
    try:
        recs = _records(log)
        assert log.verify(audit_pb2.AuditVerifyRequest()).ok
    finally:
        log.close()
    seen = {c.name: 0 for c in callers}
    shared = 0
    for r in recs:
        if r.outcome == RATE_LIMITED and not r.cert_sha256:
            shared += r.suppressed
        else:
            seen[r.name] += r.suppressed if r.outcome == RATE_LIMITED else 1
    assert sum(seen.values()) + shared == sum(sent.values()) == 6 * 120
    for c in callers:
        if c.authenticated:  # (an unauthenticated one's count may be in the shared summary)
            assert seen[c.name] == sent[c.name]


class _CountingSandbox:
    """The peer's sandbox, counting the contract runs."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.runs = inner, 0

    def invoke(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        return self.inner.invoke(*args, **kwargs)


def test_only_a_refusal_the_contract_decides_runs_the_contract_over_the_limit(keyed: Cluster,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    """A caller over its refusal limit: one refused before the contract (not a member, a role the
    access rules refuse) never runs it; one only the contract can refuse (NOT_FOUND) runs it --
    the peer cannot tell it from a grant before, and grants are never limited -- and a grant of
    the same certificate is answered."""
    sandbox = _CountingSandbox(keyed.peers[1].sandbox)
    a = _limited(keyed, tmp_path, sandbox, per_minute=1, burst=1, unauth_per_minute=1, unauth_burst=1)
    try:
        for _ in range(2):  # the second over the limit
            _refused_signed(a, _unauthenticated(keyed, b"forged"))
            _refused(keyed, a, keyed.net.clerk)
        assert sandbox.runs == 0
        pharmacist = keyed.net.pharmacist
        assert _call(keyed, a, pharmacist, "RX-missing").response.reason == "NOT_FOUND"
        assert _refused(keyed, a, pharmacist, "RX-missing").reason == AUDIT_RATE_LIMITED
        assert sandbox.runs == 2
        assert b"wrapped-for-p01" in _call(keyed, a, pharmacist, "RX-1").response.payload
    finally:
        a.log.close()
