"""A merged view (client.audit.read_verified) against a hostile peer: its reading is bounded
whatever the peer answers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from rxchain.v1 import audit_pb2

import client.audit as audit_module
from client.audit import AuditClient, Page, merged, read_verified, record_dict
from client.errors import RxClientError
from node.peer.audit import AccessLog, Caller
from tests.client.test_audit_merged import _as_client, _LogClient, _pruned_while_read

_HEAD = {"first_id": 1, "first_prev_hash": "00" * 32, "last_id": 5, "last_hash": "ab" * 32, "pruned": 0}
_BOUND = 1_000  # pages the fake answers before the test calls the read unbounded


class _EndlessEmpty:
    """A peer answering every page empty, saying more follow (a healthy peer's page by id that says
    more always holds ``limit`` records)."""

    def __init__(self) -> None:
        self.served = 0

    def pages(self, **_: Any) -> Iterator[Page]:
        while True:
            self.served += 1
            if self.served > _BOUND:
                raise AssertionError(f"read on past {_BOUND} empty pages")
            yield Page([], True, 1, 0, dict(_HEAD))


def test_a_peer_answering_empty_pages_that_say_more_is_refused_at_once() -> None:
    peer = _EndlessEmpty()
    with pytest.raises(RxClientError) as err:
        read_verified(cast(AuditClient, peer))
    assert err.value.reason == "AUDIT_CHAIN_BROKEN"
    assert "no record" in err.value.message
    assert peer.served == 1


def test_a_log_pruned_while_it_is_read_verifies_from_its_oldest_kept(tmp_path: Path) -> None:
    log, prune_after_first_page = _pruned_while_read(tmp_path / "audit")  # records 1..3 pruned while read
    try:
        records, head = read_verified(_as_client(_LogClient(log, page=2, doctor=prune_after_first_page)))
        assert [r["id"] for r in records] == [4, 5, 6, 7]  # the kept records, from the oldest kept
        assert (head["first_id"], head["last_id"]) == (4, 7)
    finally:
        log.close()


class _PrunesForever:
    """A peer whose every page says the records before it were pruned meanwhile."""

    def __init__(self, log: AccessLog) -> None:
        self.log, self.served = log, 0

    def pages(self, **_: Any) -> Iterator[Page]:
        recs = [record_dict(r) for r in self.log.query(audit_pb2.AuditQueryRequest(limit=10)).records]
        while True:
            self.served += 1
            if self.served > _BOUND:
                raise AssertionError(f"read on past {_BOUND} pages")
            # each page its records further on, its head saying every record before them pruned
            page = [{**r, "id": r["id"] + 10 * self.served} for r in recs]
            yield Page(page, True, page[-1]["id"] + 1, 0,
                       {"first_id": page[0]["id"], "first_prev_hash": page[0]["prev_hash"],
                        "last_id": 10**9, "last_hash": "ab" * 32, "pruned": 0})


def test_a_peer_claiming_pruning_forever_is_bounded_by_the_records_read(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "audit", lambda: 0, sync=False)
    who = Caller("h01", "doctor", "dr-a", b"cert", True)
    for i in range(3):
        log.append(who, "prescription", "get_key", f"RX-{i}", "GRANTED", 1, "tx", audit_pb2.ACCESS_EVALUATE)
    peer = _PrunesForever(log)
    try:
        with pytest.raises(RxClientError) as err:
            read_verified(cast(AuditClient, peer), max_records=30)
        assert err.value.reason == "AUDIT_TOO_LARGE"  # 3 records a page: the 11th passes 30 read
        assert peer.served == 11
    finally:
        log.close()


class _GarbageStub:
    """An AccessAudit stub whose peer answers a record that does not parse."""

    def Query(self, req: audit_pb2.AuditQueryRequest, timeout: float) -> audit_pb2.AuditQueryResponse:
        return audit_pb2.AuditQueryResponse(records=[b"\xff\x01"], head=audit_pb2.AuditHead(first_id=1, last_id=1))


def _garbage_client() -> AuditClient:
    client = object.__new__(AuditClient)
    client._stub = _GarbageStub()  # type: ignore[assignment]
    client._timeout = 1.0
    return client


@pytest.mark.parametrize("since_ms", [0, 1_800_000_000_000], ids=["whole", "since"])
def test_a_record_that_does_not_parse_is_a_broken_chain_naming_the_peer(since_ms: int) -> None:
    with pytest.raises(RxClientError) as err:  # (was protobuf's DecodeError: INTERNAL, no peer named)
        merged([("peer0.h01", _garbage_client())], since_ms=since_ms)
    assert err.value.reason == "AUDIT_CHAIN_BROKEN"
    assert err.value.message.startswith("peer0.h01: ") and "does not parse" in err.value.message


def test_a_slow_peer_is_bounded_by_the_views_deadline_naming_it(tmp_path: Path) -> None:
    clock = [0.0]

    def thirty_seconds_a_page(n: int, raws: list[bytes]) -> list[bytes]:
        clock[0] += 30.0  # each page answered just within its request's 30 s
        return raws

    fast, slow = _log_of(tmp_path / "fast", 3), _log_of(tmp_path / "slow", 10)
    served: list[int] = []

    def counting(n: int, raws: list[bytes]) -> list[bytes]:
        served.append(n)
        return thirty_seconds_a_page(n, raws)

    try:
        with pytest.raises(RxClientError) as err:  # (was: 10 pages x 30 s, ~200 x 30 s for a long log)
            merged([("peer.fast", _as_client(_LogClient(fast, page=3))),
                    ("peer.slow", _as_client(_LogClient(slow, page=1, doctor=counting)))],
                   deadline_s=120, clock=lambda: clock[0], workers=1)  # (one clock for both: read in turn)
        assert err.value.reason == "AUDIT_DEADLINE_EXCEEDED"
        assert err.value.message.startswith("peer.slow: ") and "120 s" in err.value.message
        assert len(served) == 4  # the fourth page reached the deadline: no fifth asked
        view = merged([("peer.fast", _as_client(_LogClient(fast, page=3)))], clock=lambda: clock[0])
        assert [p["checked"] for p in view["peers"]] == [3]  # (a fast peer: within the deadline)
    finally:
        fast.close()
        slow.close()


def _log_of(path: Path, n: int) -> AccessLog:
    log = AccessLog(path, lambda: 0, sync=False)
    who = Caller("h01", "doctor", "dr-a", b"cert", True)
    for i in range(n):
        log.append(who, "prescription", "get_key", f"RX-{i}", "GRANTED", 1, "tx", audit_pb2.ACCESS_EVALUATE)
    return log


class _TimedStub:
    """An AccessAudit stub answering an empty log ``takes`` seconds of the test's clock after each
    request (one with a shorter timeout fails as gRPC's timed-out call), noting their timeouts."""

    def __init__(self, clock: list[float], takes: float) -> None:
        self.clock, self.takes = clock, takes
        self.timeouts: list[float] = []

    def Query(self, req: audit_pb2.AuditQueryRequest, timeout: float) -> audit_pb2.AuditQueryResponse:
        self.timeouts.append(timeout)
        self.clock[0] += min(self.takes, timeout)
        if timeout < self.takes:
            raise _TimedOut()
        return audit_pb2.AuditQueryResponse(head=audit_pb2.AuditHead(first_id=0, last_id=0))


class _TimedOut(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "Deadline Exceeded"


def _timed_client(stub: _TimedStub) -> AuditClient:
    client = object.__new__(AuditClient)
    client._stub = stub  # type: ignore[assignment]
    client._timeout = 30.0
    return client


def test_each_request_waits_until_the_views_deadline_at_most() -> None:
    clock = [0.0]
    first, second = _TimedStub(clock, 28.0), _TimedStub(clock, 28.0)
    with pytest.raises(RxClientError) as err:
        merged([("peer.a", _timed_client(first)), ("peer.b", _timed_client(second))], since_ms=1_000,
               deadline_s=100, clock=lambda: clock[0], workers=1)  # (one clock for both: read in turn)
    # peer.a: two requests (where to read from, the page) answered in 28 s each within their own
    # 30 s; peer.b: one, then one waiting only the 16 s left (was 30 s: the view past its deadline)
    assert first.timeouts == [30.0, 30.0] and second.timeouts == [30.0, 16.0]
    assert clock[0] == 100.0
    assert err.value.reason == "AUDIT_DEADLINE_EXCEEDED"  # (not the RPC's own TIMEOUT)
    assert err.value.message.startswith("peer.b: ")


def test_the_record_bound_is_for_all_the_peers_together(tmp_path: Path) -> None:
    logs = [_log_of(tmp_path / f"p{i}", 4) for i in range(3)]
    try:
        clients = [(f"peer.{i}", _as_client(_LogClient(log, page=4))) for i, log in enumerate(logs)]
        assert [p["checked"] for p in merged(clients[:2], max_records=8)["peers"]] == [4, 4]
        with pytest.raises(RxClientError) as err:  # (was 10 a peer: 3 x 10 held with 3 peers)
            merged(clients, max_records=10, workers=1)  # (read in turn: peer.2 is the one to pass it)
        assert err.value.reason == "AUDIT_TOO_LARGE"
        assert err.value.message.startswith("peer.2: more than 10 records")
        assert "8 read from the others'" in err.value.message
    finally:
        for log in logs:
            log.close()


class _SlowVerifyStub(_TimedStub):
    """Verify answering ``takes`` seconds of the test's clock after each request: one page checked,
    more to come (a long log, or a peer stringing a verify along)."""

    def Verify(self, req: audit_pb2.AuditVerifyRequest, timeout: float) -> audit_pb2.AuditVerifyResponse:
        self.timeouts.append(timeout)
        self.clock[0] += min(self.takes, timeout)
        if timeout < self.takes:
            raise _TimedOut()
        return audit_pb2.AuditVerifyResponse(ok=True, checked=1000, more=True, next_id=req.start_id + 1000)


def test_a_verify_reads_every_page_within_its_deadline() -> None:
    """A verify read pages until the head, each request within 30 s but with no bound in all: a peer
    answering each page in 29 s held it pages x 30 s. Now one deadline for every page."""
    from client.audit import Deadline

    clock = [0.0]
    stub = _SlowVerifyStub(clock, 25.0)
    with pytest.raises(RxClientError) as err:
        _timed_client(stub).verify(deadline=Deadline(100, clock=lambda: clock[0]))
    # four pages answered in 25 s each (the fourth when the deadline is reached: checked after it)
    assert stub.timeouts == [30.0, 30.0, 30.0, 25.0] and clock[0] == 100.0
    assert err.value.reason == "AUDIT_DEADLINE_EXCEEDED"
    clock[0], stub = 0.0, _SlowVerifyStub(clock, 28.0)
    with pytest.raises(RxClientError) as err:  # a request the deadline cut short: that, not TIMEOUT
        _timed_client(stub).verify(deadline=Deadline(70, clock=lambda: clock[0]))
    assert stub.timeouts == [30.0, 30.0, 14.0] and err.value.reason == "AUDIT_DEADLINE_EXCEEDED"


class _OversizedStub:
    """A peer answering every Query one record more than asked (a healthy peer answers ``limit`` at
    most), the records chaining and the head naming them: its page was parsed and kept whole before
    any bound counted it -- one of 16 MiB (the channel's bound) holds ~400,000 records, past the
    200,000 of a whole view, and a view reads up to 8 such peers at once."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def Query(self, req: audit_pb2.AuditQueryRequest, timeout: float) -> audit_pb2.AuditQueryResponse:
        self.asked.append(req.limit)
        raws, prev = [], bytes(32)
        for rid in range(1, (req.limit or 100) + 2):
            raw = audit_pb2.AccessRecord(id=rid, time_ms=rid, prev_hash=prev).SerializeToString()
            raws.append(raw)
            prev = hashlib.sha256(raw).digest()
        head = audit_pb2.AuditHead(first_id=1, first_prev_hash=bytes(32), last_id=len(raws), last_hash=prev)
        return audit_pb2.AuditQueryResponse(records=raws, head=head)


def _oversized_client(stub: _OversizedStub) -> AuditClient:
    client = object.__new__(AuditClient)
    client._stub = stub  # type: ignore[assignment]
    client._timeout = 30.0
    return client


@pytest.mark.parametrize("since_ms", [0, 1_000])
def test_a_page_holding_more_records_than_asked_is_refused_before_it_is_parsed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, since_ms: int) -> None:
    parsed = [0]

    def counted(raw: bytes) -> dict[str, Any]:
        parsed[0] += 1
        return record_dict(raw)

    monkeypatch.setattr(audit_module, "record_dict", counted)
    stub = _OversizedStub()
    with pytest.raises(RxClientError) as one:  # one page (audit list without several --peer)
        _oversized_client(stub).query(limit=5)
    assert one.value.reason == "AUDIT_CHAIN_BROKEN" and "6 records answered to a request for 5" in one.value.message
    assert parsed[0] == 0  # nothing of it parsed
    log = _log_of(tmp_path / "a", 4)
    try:
        with pytest.raises(RxClientError) as err:  # a view: the first page (or where --since starts) refused
            merged([("peer.a", _as_client(_LogClient(log))), ("peer.big", _oversized_client(stub))],
                   since_ms=since_ms)
        assert err.value.reason == "AUDIT_CHAIN_BROKEN" and err.value.message.startswith("peer.big: a page of ")
        assert stub.asked[-1] == (1 if since_ms else 1000)
    finally:
        log.close()
