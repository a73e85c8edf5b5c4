"""A merged view (client.audit.read_verified) against a hostile peer: its reading is bounded
whatever the peer answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from rxchain.v1 import audit_pb2

from client.audit import AuditClient, Page, merged, read_verified, record_dict
from client.errors import RxClientError
from node.peer.audit import DAY_MS, AccessLog, Caller
from tests.client.test_audit_merged import _as_client, _LogClient

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
    clock = [0]
    log = AccessLog(tmp_path / "audit", lambda: clock[0], retention_days=1, sync=False)
    who = Caller("h01", "doctor", "dr-a", b"cert", True)

    def grant(t: int) -> None:
        clock[0] = t
        log.append(who, "prescription", "get_key", f"RX-{t}", "GRANTED", 1, "tx", audit_pb2.ACCESS_EVALUATE)

    for t in range(6):
        grant(t)

    def prune_after_first_page(n: int, raws: list[bytes]) -> list[bytes]:
        if n == 0:  # a day on, a grant prunes records 1..3 (time < 3) while the view reads on
            grant(DAY_MS + 3)
        return raws

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
