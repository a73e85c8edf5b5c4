"""A merged view's bound on the bytes of the records it reads (client.audit.MAX_MERGED_BYTES,
RecordBound.take_bytes): the record bound alone let a peer answer pages of 1,000 records of ~16 KB
(16 MiB a page, the channel's bound), ~3 GB held in the client before 200,000 records were read.
Each page's records are counted as answered, before any is parsed, every peer together."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

import pytest
from rxchain.v1 import audit_pb2

import client.audit as audit_module
from client.audit import MAX_MERGED_BYTES, MAX_MERGED_RECORDS, AuditClient, RecordBound, merged, read_verified
from client.errors import RxClientError
from node.peer.audit import AccessLog, Caller
from tests.client.test_audit_merged import _as_client, _log, _LogClient, _pruned_while_read
from tests.client.test_audit_merged_parallel import _WAIT_S, _client, _no_reader_left, _Peer

_BOUND = 1_000  # pages the fake answers before the test calls the read unbounded
_HUGE = 16_000  # bytes of a hostile record's name (~16 KB: 1,000 of them fill a 16 MiB page)


class _HugeStub:
    """A peer answering every page by id ``per_page`` records of ~16 KB each, chaining, more always
    following; ``garbage``: records that do not parse at all (their first byte names no field)."""

    def __init__(self, per_page: int = 3, garbage: bool = False) -> None:
        self.per_page, self.garbage = per_page, garbage
        self.asked = 0
        self._hashes = {0: bytes(32)}

    def Query(self, req: audit_pb2.AuditQueryRequest, timeout: float) -> audit_pb2.AuditQueryResponse:
        self.asked += 1
        if self.asked > _BOUND:
            raise AssertionError(f"read on past {_BOUND} pages")
        start = req.start_id or 1
        raws = []
        for rid in range(start, start + self.per_page):
            if self.garbage:
                raw = b"\xff" * _HUGE
            else:
                raw = audit_pb2.AccessRecord(id=rid, time_ms=rid, org="h01", name="x" * _HUGE,
                                             prev_hash=self._hashes[rid - 1]).SerializeToString()
            self._hashes[rid] = hashlib.sha256(raw).digest()
            raws.append(raw)
        head = audit_pb2.AuditHead(first_id=1, first_prev_hash=bytes(32), last_id=10**9, last_hash=b"\xab" * 32)
        return audit_pb2.AuditQueryResponse(records=raws, head=head, more=True, next_id=start + self.per_page)


def _stub_client(stub: _HugeStub) -> AuditClient:
    client = object.__new__(AuditClient)
    client._stub = stub  # type: ignore[assignment]
    client._timeout = 30.0
    return client


def test_a_peer_answering_few_huge_records_is_refused_by_the_bytes_bound(tmp_path: Path) -> None:
    stub = _HugeStub(per_page=3)  # ~48 KB a page: two pages fit 100,000 bytes with peer.a's, not a third
    log = _log(tmp_path / "a", [10, 20, 30])
    try:
        with pytest.raises(RxClientError) as err:
            merged([("peer.a", _as_client(_LogClient(log))), ("peer.big", _stub_client(stub))], max_bytes=100_000,
                   workers=1)  # (read in turn: peer.a's three records, then the hostile peer's pages)
        assert err.value.reason == "AUDIT_TOO_LARGE"
        own = sum(len(r) for r in log.query(audit_pb2.AuditQueryRequest(limit=10)).records)
        assert err.value.message.startswith("peer.big: more than 100000 bytes of records to read from the 2 "
                                            f"peers' logs together (the view's bytes bound; {own} bytes read "
                                            "from the others' when it passed)"), err.value.message
        assert stub.asked == 3  # (9 records answered: far from the 200,000 the view may read)
    finally:
        log.close()


def test_the_bytes_are_counted_before_any_record_of_the_page_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = [0]
    real_parse = audit_module._parse

    def counted(raw: bytes) -> audit_pb2.AccessRecord:
        parsed[0] += 1
        return real_parse(raw)

    monkeypatch.setattr(audit_module, "_parse", counted)
    with pytest.raises(RxClientError) as broken:  # within the bound: the page is parsed, and does not
        merged([("peer.big", _stub_client(_HugeStub(garbage=True)))])
    assert broken.value.reason == "AUDIT_CHAIN_BROKEN" and "does not parse" in broken.value.message
    assert parsed[0] == 1
    parsed[0] = 0
    with pytest.raises(RxClientError) as big:  # past it: refused for its bytes, none of its records parsed
        merged([("peer.big", _stub_client(_HugeStub(garbage=True)))], max_bytes=3 * _HUGE - 1)
    assert big.value.reason == "AUDIT_TOO_LARGE"
    assert big.value.message == (f"peer.big: more than {3 * _HUGE - 1} bytes of records to read (the view's bytes "
                                 "bound): narrow the view (--since), or read the peer page by page (--peer ORG "
                                 "--start ID)")
    assert parsed[0] == 0


def _bytes_of(log: AccessLog, start_id: int = 0, limit: int = 100) -> int:
    return sum(len(r) for r in log.query(audit_pb2.AuditQueryRequest(start_id=start_id, limit=limit)).records)


def test_the_bytes_bound_holds_for_pages_answered_at_once(tmp_path: Path) -> None:
    logs = [_log(tmp_path / f"p{i}", [10 * (j + 1) for j in range(5)], f"P{i}") for i in range(4)]
    together = threading.Barrier(4, timeout=_WAIT_S)  # every peer's one page answered at once

    def gate(_: _Peer, n: int) -> None:
        together.wait()

    try:
        sizes = [_bytes_of(log) for log in logs]
        assert len(set(sizes)) == 1  # (each peer's page the same size: whichever passes it, the same message)
        total = sum(sizes)
        view = merged([(f"peer.{i}", _client(_Peer(log, gate, page=5))) for i, log in enumerate(logs)],
                      max_bytes=total)
        assert [p["checked"] for p in view["peers"]] == [5, 5, 5, 5]  # every byte within the bound
        together.reset()
        with pytest.raises(RxClientError) as err:  # one byte fewer: whichever peer's page passes it fails
            merged([(f"peer.{i}", _client(_Peer(log, gate, page=5))) for i, log in enumerate(logs)],
                   max_bytes=total - 1)
        assert err.value.reason == "AUDIT_TOO_LARGE"
        assert re.match(rf"peer\.[0-3]: more than {total - 1} bytes of records to read from the 4 peers' logs "
                        rf"together \(the view's bytes bound; {3 * sizes[0]} bytes read from the others' when it "
                        r"passed\)", err.value.message), err.value.message
        assert _no_reader_left()
    finally:
        for log in logs:
            log.close()


def test_bytes_a_read_dropped_count_no_more_once_it_is_read(tmp_path: Path) -> None:
    """As the records: a log pruned while read counts the bytes of every record read while it is
    read, kept or dropped, then only those of the records it kept, against the bound the peers share."""
    logs = [_pruned_while_read(tmp_path / name) for name in ("a", "b")]  # 6 read (pages of 2), 4 kept
    dropped = _bytes_of(logs[0][0], 1, 2)  # its first page (records 1, 2): read, then pruned
    others = [_log(tmp_path / f"o{i}", [10, 20, 30, 40], f"O{i}") for i in range(2)]
    try:
        (log, prune), (again, prune_again) = logs
        assert [r["id"] for r in read_verified(_as_client(_LogClient(log, page=2, doctor=prune)))[0]] == [4, 5, 6, 7]
        kept, other = _bytes_of(log), _bytes_of(others[0])  # records 4..7; another peer's 4
        assert _bytes_of(again, 1, 2) == dropped and _bytes_of(others[1]) == other
        with pytest.raises(RxClientError) as err:  # while it is read, the bytes of those it drops count too
            read_verified(_as_client(_LogClient(again, page=2, doctor=prune_again)),
                          bound=RecordBound(1_000, peers=3, max_bytes=kept + dropped - 1))
        assert err.value.reason == "AUDIT_TOO_LARGE" and "bytes bound" in err.value.message
        # once it is read, only those it kept count: the next peer's fit exactly, a third's do not
        log, prune = _pruned_while_read(tmp_path / "c")
        logs.append((log, prune))
        bound = RecordBound(1_000, peers=3, max_bytes=kept + other)
        assert len(read_verified(_as_client(_LogClient(log, page=2, doctor=prune)), bound=bound)[0]) == 4
        assert len(read_verified(_as_client(_LogClient(others[0], page=4)), bound=bound)[0]) == 4
        with pytest.raises(RxClientError) as full:
            read_verified(_as_client(_LogClient(others[1], page=4)), bound=bound)
        assert full.value.reason == "AUDIT_TOO_LARGE"
        assert f"(the view's bytes bound; {kept + other} bytes read from the others'" in full.value.message
    finally:
        for each, _ in logs:
            each.close()
        for o in others:
            o.close()


def _record_bytes(path: Path, caller: Caller, record_id: str, outcome: str) -> int:
    log = AccessLog(path, lambda: 1_795_000_000_000, sync=False)
    try:
        log.append(caller, "prescription", "get_key", record_id, outcome, 12_345_678, "ab" * 32,
                   audit_pb2.ACCESS_ENDORSE)
        return _bytes_of(log)
    finally:
        log.close()


def test_the_bytes_bound_fits_every_honest_view_of_the_records_bound(tmp_path: Path) -> None:
    """200,000 honest records fit with room to spare: typical ones (a grant to h01's doctor) 4 times
    over, and the largest an authenticated member's call records (organisation id 56 characters,
    role pharmacist, common name of 64 three-byte characters, rx id 64, an outcome of 64)."""
    typical = _record_bytes(tmp_path / "t", Caller("h01", "doctor", "dr-jiang", b"cert", True),
                            "RX20261129-h01-0a1b2c3d4e", "GRANTED")
    largest = _record_bytes(tmp_path / "l", Caller("o" * 56, "pharmacist", "\u674e" * 64, b"cert", True),
                            "R" * 64, "A" * 64)
    assert typical < largest
    assert 4 * MAX_MERGED_RECORDS * typical <= MAX_MERGED_BYTES
    assert 2 * MAX_MERGED_RECORDS * largest <= MAX_MERGED_BYTES


def test_the_client_s_page_bound_is_the_peer_s() -> None:
    """client.audit keeps its own copy of the most records a peer answers a page (the client does
    not import the peer, which needs LevelDB): a page holding more is refused before it is parsed,
    so the two must agree, or honest pages are refused (a peer's larger) or a hostile one's let
    through (the client's)."""
    from client import audit as client_audit
    from node.peer import audit as peer_audit

    assert client_audit.MAX_PAGE == peer_audit.MAX_PAGE
    assert client_audit.MERGE_PAGE == peer_audit.MAX_PAGE  # a merged view reads whole pages
