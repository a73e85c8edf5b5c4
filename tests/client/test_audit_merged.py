"""One view of several peers' access-audit logs (client.audit.merged, ``rxchain audit list --peer
A --peer B``): each log read whole, its chain checked in the client -- oldest to the head's
base, page to page, newest to the head --, then the records merged by time, each marked with
the peer it came from."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from rxchain.v1 import audit_pb2

from client.audit import (
    CLOCK_MARGIN_MS,
    AuditClient,
    Page,
    check_chain,
    head_dict,
    merged,
    read_verified,
    record_dict,
)
from client.cli import main
from client.errors import RxClientError
from node.config import load_node_config
from node.peer.audit import DAY_MS, AccessLog, Caller
from node.peer.server import PeerNode, serve
from tests.peer.test_access_audit_served import _evaluate_get_key, home  # noqa: F401 - fixture

Doctor = Callable[[int, list[bytes]], list[bytes]]


class _LogClient:
    """An AuditClient's ``pages`` over a local log, ``page`` records a page, each page as the peer's
    answer would be (optionally doctored by ``doctor(page_number, records)``), its bytes handed to
    ``take_bytes`` and checked to chain within itself as AuditClient.query does, before parsing."""

    def __init__(self, log: AccessLog, page: int = 2, doctor: Doctor | None = None) -> None:
        self.log, self.page, self.doctor = log, page, doctor
        self.closed = False

    def close(self) -> None:  # (a merged view failing closes the clients of the peers still read)
        self.closed = True

    def query(self, *, by_time: bool = False, start_ms: int = 0, limit: int = 0, **_: Any) -> Page:
        assert by_time  # (the merge's one query by time: where to read from)
        res = self.log.query(audit_pb2.AuditQueryRequest(order=audit_pb2.AUDIT_BY_TIME, start_ms=start_ms,
                                                         limit=limit))
        return Page([record_dict(r) for r in res.records], res.more, res.next_id, res.next_ms, head_dict(res.head))

    def pages(self, *, start_id: int = 0, take_bytes: Callable[[int], None] | None = None,
              **_: Any) -> Iterator[Page]:
        start, n = start_id, 0
        while True:
            res = self.log.query(audit_pb2.AuditQueryRequest(start_id=start, limit=self.page))
            raws = list(res.records)
            if self.doctor is not None:
                raws = self.doctor(n, raws)
            if take_bytes is not None:
                take_bytes(sum(len(r) for r in raws))
            check_chain(raws)
            yield Page([record_dict(r) for r in raws], res.more, res.next_id, res.next_ms, head_dict(res.head))
            if not res.more:
                return
            start, n = res.next_id, n + 1


def _log(path: Path, times: list[int], rx: str = "RX") -> AccessLog:
    clock = [0]
    log = AccessLog(path, lambda: clock[0], sync=False)
    who = Caller("h01", "doctor", "dr-a", b"cert", True)
    for i, t in enumerate(times):
        clock[0] = t
        log.append(who, "prescription", "get_key", f"{rx}-{i}", "GRANTED", 1, "tx", audit_pb2.ACCESS_EVALUATE)
    return log


def _pruned_while_read(path: Path) -> tuple[AccessLog, Doctor]:
    """A log of six grants (times 0-5, retention a day) and a doctor that, after the first page is
    answered, has a grant a day on prune records 1..3 while the view reads on (6 read, 4 kept)."""
    clock = [0]
    log = AccessLog(path, lambda: clock[0], retention_days=1, sync=False)
    who = Caller("h01", "doctor", "dr-a", b"cert", True)

    def grant(t: int) -> None:
        clock[0] = t
        log.append(who, "prescription", "get_key", f"RX-{t}", "GRANTED", 1, "tx", audit_pb2.ACCESS_EVALUATE)

    for t in range(6):
        grant(t)

    def prune_after_first_page(n: int, raws: list[bytes]) -> list[bytes]:
        if n == 0:
            grant(DAY_MS + 3)
        return raws

    return log, prune_after_first_page


def _as_client(fake: _LogClient) -> AuditClient:
    return cast(AuditClient, fake)


def test_logs_are_merged_by_time_each_record_marked_with_its_peer(tmp_path: Path) -> None:
    a, b = _log(tmp_path / "a", [10, 30, 30, 50], "A"), _log(tmp_path / "b", [20, 30, 40], "B")
    try:
        view = merged([("peer.a", _as_client(_LogClient(a))), ("peer.b", _as_client(_LogClient(b)))])
        assert [(r["peer"], r["record_id"], r["time_ms"]) for r in view["records"]] == [
            ("peer.a", "A-0", 10), ("peer.b", "B-0", 20), ("peer.a", "A-1", 30), ("peer.a", "A-2", 30),
            ("peer.b", "B-1", 30), ("peer.b", "B-2", 40), ("peer.a", "A-3", 50)]
        assert [(p["peer"], p["checked"], p["head"]["last_id"]) for p in view["peers"]] == [
            ("peer.a", 4, 4), ("peer.b", 3, 3)]
        assert not view["more"]
        window = merged([("peer.a", _as_client(_LogClient(a))), ("peer.b", _as_client(_LogClient(b)))],
                        since_ms=30, until_ms=50, record_id="")
        assert [r["record_id"] for r in window["records"]] == ["A-1", "A-2", "B-1", "B-2"]
        # a limit cuts at a millisecond's edge: the view goes on from next_ms, nothing twice
        first = merged([("peer.a", _as_client(_LogClient(a))), ("peer.b", _as_client(_LogClient(b)))], limit=3)
        assert [r["record_id"] for r in first["records"]] == ["A-0", "B-0"]
        assert (first["more"], first["next_ms"]) == (True, 30)
        rest = merged([("peer.a", _as_client(_LogClient(a))), ("peer.b", _as_client(_LogClient(b)))],
                      since_ms=30, limit=2)  # one millisecond holds three: answered whole
        assert [r["record_id"] for r in rest["records"]] == ["A-1", "A-2", "B-1"]
        assert (rest["more"], rest["next_ms"]) == (True, 40)
        with pytest.raises(RxClientError) as twice:
            merged([("peer.a", _as_client(_LogClient(a))), ("peer.a", _as_client(_LogClient(a)))])
        assert twice.value.reason == "BAD_ARGUMENTS"
    finally:
        a.close()
        b.close()


def _drop_first(n: int, raws: list[bytes]) -> list[bytes]:
    return raws[1:] if n == 0 else raws


def _drop_page_front(n: int, raws: list[bytes]) -> list[bytes]:
    return raws[1:] if n == 1 else raws  # the page still chains within itself


def _change_newest(n: int, raws: list[bytes]) -> list[bytes]:
    if n < 2 or not raws:
        return raws
    rec = audit_pb2.AccessRecord.FromString(raws[-1])
    rec.outcome = "NO_KEY_GRANT"  # its prev_hash still right: only the head shows it
    return [*raws[:-1], rec.SerializeToString()]


@pytest.mark.parametrize("doctor", [_drop_first, _drop_page_front, _change_newest])
def test_a_log_whose_chain_does_not_verify_is_refused(tmp_path: Path, doctor: Doctor) -> None:
    log = _log(tmp_path / "a", [10, 20, 30, 40, 50])  # pages of two: [1, 2] [3, 4] [5]
    try:
        assert len(read_verified(_as_client(_LogClient(log)))[0]) == 5
        with pytest.raises(RxClientError) as err:
            merged([("peer.b", _as_client(_LogClient(log))), ("peer.a", _as_client(_LogClient(log, doctor=doctor)))])
        assert err.value.reason == "AUDIT_CHAIN_BROKEN" and err.value.message.startswith("peer.a: ")
        with pytest.raises(RxClientError) as big:
            read_verified(_as_client(_LogClient(log)), max_records=4)
        assert big.value.reason == "AUDIT_TOO_LARGE"
    finally:
        log.close()


@pytest.fixture
def two_peers(home: Path) -> Iterator[dict[str, PeerNode]]:  # noqa: F811
    nodes: dict[str, PeerNode] = {}
    try:
        for org in ("h01", "ins01"):
            nodes[org] = serve(load_node_config(home / "nodes" / f"peer.{org}" / "node.yaml"))
        yield nodes
    finally:
        for node in nodes.values():
            node.stop(0.5)


def _next_ms(after: int) -> None:
    """Wait (bounded) until the wall clock is past ``after`` ms, so records order by time alone."""
    for _ in range(1000):
        if time.time_ns() // 1_000_000 > after:
            return
        time.sleep(0.001)
    raise AssertionError("the clock did not move")


def test_audit_list_with_several_peers_is_one_verified_view(home: Path,  # noqa: F811
                                                             two_peers: dict[str, PeerNode]) -> None:
    for org, rx in (("h01", "RX-1"), ("ins01", "RX-2"), ("h01", "RX-3")):
        assert _evaluate_get_key(home, two_peers[org], rx) == "UNKNOWN_CONTRACT"
        _next_ms(time.time_ns() // 1_000_000)

    def cli(*argv: str) -> tuple[int, dict[str, Any]]:
        buf = io.StringIO()
        code = main([*argv, "--home", str(home), "--json"], out=buf)
        return code, json.loads(buf.getvalue())

    code, view = cli("audit", "list", "--as", "reg01:aud-a", "--peer", "ins01", "--peer", "h01")
    assert code == 0, view
    assert [(r["peer"], r["record_id"], r["id"]) for r in view["records"]] == [
        ("peer.h01", "RX-1", 1), ("peer.ins01", "RX-2", 1), ("peer.h01", "RX-3", 2)]
    assert [r["time_ms"] for r in view["records"]] == sorted(r["time_ms"] for r in view["records"])
    assert [(p["peer"], p["checked"]) for p in view["peers"]] == [("peer.ins01", 1), ("peer.h01", 2)]
    since = str(view["records"][1]["time_ms"])
    code, later = cli("audit", "list", "--as", "reg01:aud-a", "--peer", "ins01", "--peer", "h01", "--since", since)
    assert code == 0 and [r["record_id"] for r in later["records"]] == ["RX-2", "RX-3"]
    human = io.StringIO()
    assert main(["audit", "list", "--as", "reg01:aud-a", "--peer", "ins01", "--peer", "h01", "--home", str(home)],
                out=human) == 0
    assert "peer.ins01" in human.getvalue() and "RX-3" in human.getvalue()
    code, one = cli("audit", "list", "--as", "reg01:aud-a", "--peer", "ins01", "--peer", "h01", "--rx", "RX-3")
    assert code == 0 and [(r["peer"], r["record_id"]) for r in one["records"]] == [("peer.h01", "RX-3")]
    code, single = cli("audit", "list", "--as", "reg01:aud-a", "--peer", "ins01")  # one peer: one page, as before
    assert code == 0 and single["peer"] == "peer.ins01" and [r["record_id"] for r in single["records"]] == ["RX-2"]
    code, start = cli("audit", "list", "--as", "reg01:aud-a", "--peer", "ins01", "--peer", "h01", "--start", "2")
    assert (code, start["error"]) == (1, "BAD_ARGUMENTS")
    code, denied = cli("audit", "list", "--as", "h01:admin", "--peer", "h01", "--peer", "ins01")
    assert (code, denied["error"]) == (1, "AUDIT_ACCESS_DENIED")  # h01's admin may not read ins01's log


def test_a_view_from_since_reads_each_log_from_the_window_to_its_head(tmp_path: Path) -> None:
    m = CLOCK_MARGIN_MS
    log = _log(tmp_path / "a", [10, 20, 5 * m, 6 * m - 1, 6 * m, 7 * m])
    try:
        view = merged([("peer.a", _as_client(_LogClient(log)))], since_ms=6 * m)
        assert [r["record_id"] for r in view["records"]] == ["RX-4", "RX-5"]
        assert view["peers"][0]["checked"] == 4  # from the margin before the window (5m), not the whole log
        after = merged([("peer.a", _as_client(_LogClient(log)))], since_ms=9 * m)
        assert (after["records"], after["peers"][0]["checked"]) == ([], 0)

        def change(n: int, raws: list[bytes]) -> list[bytes]:  # a record of the window changed
            rec = audit_pb2.AccessRecord.FromString(raws[0])
            if rec.id != 5:
                return raws
            rec.outcome = "NO_KEY_GRANT"
            return [rec.SerializeToString(), *raws[1:]]

        with pytest.raises(RxClientError) as err:
            merged([("peer.a", _as_client(_LogClient(log, page=1, doctor=change)))], since_ms=6 * m)
        assert err.value.reason == "AUDIT_CHAIN_BROKEN"

        def hide(n: int, raws: list[bytes]) -> list[bytes]:  # the window's records withheld
            return []

        with pytest.raises(RxClientError) as hidden:
            read_verified(_as_client(_LogClient(log, doctor=hide)), start_id=4)
        assert hidden.value.reason == "AUDIT_CHAIN_BROKEN"
    finally:
        log.close()


def test_an_empty_log_and_one_with_its_front_pruned_verify(tmp_path: Path) -> None:
    empty = AccessLog(tmp_path / "e", lambda: 0, sync=False)
    clock = [1_000]
    pruned = AccessLog(tmp_path / "p", lambda: clock[0], retention_days=1, sync=False)
    who = Caller("h01", "doctor", "dr-a", b"cert", True)
    try:
        for rx in ("RX-1", "RX-2", "RX-3"):
            if rx == "RX-3":
                clock[0] += 2 * 86_400_000  # the first two past retention: pruned by this append
            pruned.append(who, "prescription", "get_key", rx, "GRANTED", 1, "tx", audit_pb2.ACCESS_EVALUATE)
        assert read_verified(_as_client(_LogClient(empty))) == ([], read_verified(_as_client(_LogClient(empty)))[1])
        assert read_verified(_as_client(_LogClient(empty)))[1]["last_id"] == 0
        records, head = read_verified(_as_client(_LogClient(pruned)))
        assert [r["id"] for r in records] == [3] and (head["first_id"], head["pruned"]) == (3, 2)
        assert records[0]["prev_hash"] == head["first_prev_hash"] != "00" * 32
    finally:
        empty.close()
        pruned.close()
