"""A merged view reads its peers' logs at once (client.audit.read_peers): ``min(peers, workers)``
threads, one deadline and one record bound for them all, the first peer to fail failing the view
without waiting for the slow ones (their reads cancelled, every thread ended before it returns),
and the same view whichever peer answers first. Concurrency is shown with barriers and events (each
wait bounded), never with timings: read one after another, every test here fails."""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from rxchain.v1 import audit_pb2, audit_pb2_grpc

from client import audit
from client.audit import AuditClient, Page, RecordBound, merged, read_verified
from client.errors import RxClientError
from node.peer.audit import AccessLog
from tests.client.test_audit_merged import _log, _LogClient, _pruned_while_read

_WAIT_S = 10.0  # a wait of a test's peer: past it the test fails (a read that is not concurrent)


class _Peer(_LogClient):
    """A peer whose each page waits for the test's ``gate(page_number)`` before it is answered;
    ``close`` cancels a page being waited for (as closing a gRPC channel cancels its request);
    ``answered`` once its log was read to the end."""

    def __init__(self, log: AccessLog, gate: Callable[[_Peer, int], None], page: int = 2) -> None:
        super().__init__(log, page=page, doctor=self._gated)
        self.gate = gate
        self.cancelled = threading.Event()
        self.asked = threading.Event()  # a page was asked
        self.answered = threading.Event()

    def close(self) -> None:
        super().close()
        self.cancelled.set()

    def pages(self, **kwargs: Any) -> Iterator[Page]:
        yield from super().pages(**kwargs)
        self.answered.set()  # (the read asked past the last page)

    def _gated(self, n: int, raws: list[bytes]) -> list[bytes]:
        self.asked.set()
        self.gate(self, n)
        return raws

    def wait(self, event: threading.Event) -> None:
        """Until ``event`` (bounded); a page cancelled meanwhile fails as a cancelled request."""
        for _ in range(int(_WAIT_S / 0.01)):
            if event.wait(0.01):
                return
            if self.cancelled.is_set():
                raise RxClientError("CANCELLED", "the channel was closed")
        raise AssertionError("a peer waited in vain: the peers were not read at once")


def _client(peer: _LogClient) -> AuditClient:
    return peer  # type: ignore[return-value]


def _no_reader_left() -> bool:
    return not any(t.name.startswith("rxchain-audit") and t.is_alive() for t in threading.enumerate())


def _logs(tmp_path: Path, n: int, records: int) -> list[AccessLog]:
    return [_log(tmp_path / f"p{i}", [10 * (j + 1) for j in range(records)], f"P{i}") for i in range(n)]


def test_the_peers_are_read_at_once_by_at_most_workers_threads(tmp_path: Path) -> None:
    logs = _logs(tmp_path, 6, 3)
    at_once = threading.Barrier(3, timeout=_WAIT_S)  # three peers' first pages answered together
    lock = threading.Lock()
    inside, most = [0], [0]

    def gate(_: _Peer, n: int) -> None:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            if n == 0:
                at_once.wait()
        finally:
            with lock:
                inside[0] -= 1

    try:
        peers = [_Peer(log, gate) for log in logs]
        view = merged([(f"peer.{i}", _client(p)) for i, p in enumerate(peers)], workers=3)
        assert most[0] == 3  # three at once (the barrier), never more (the workers)
        assert [(p["peer"], p["checked"]) for p in view["peers"]] == [(f"peer.{i}", 3) for i in range(6)]
        assert [(r["time_ms"], r["peer"]) for r in view["records"]] == [
            (t, f"peer.{i}") for t in (10, 20, 30) for i in range(6)]  # ties: the peers in the order named
        assert _no_reader_left() and not any(p.closed for p in peers)
    finally:
        for log in logs:
            log.close()


def test_a_failing_peer_is_not_held_by_a_slow_one(tmp_path: Path) -> None:
    slow_log, bad_log = _logs(tmp_path, 2, 3)
    never = threading.Event()

    def slow_gate(peer: _Peer, n: int) -> None:
        peer.wait(never)  # answers nothing until its request is cancelled

    def drop_first(n: int, raws: list[bytes]) -> list[bytes]:
        if not slow.asked.wait(_WAIT_S):
            raise AssertionError("the slow peer was not read meanwhile")
        return raws[1:]

    slow = _Peer(slow_log, slow_gate)
    bad = _LogClient(bad_log, doctor=drop_first)
    try:
        with pytest.raises(RxClientError) as err:
            merged([("peer.slow", _client(slow)), ("peer.bad", _client(bad))])
        assert err.value.reason == "AUDIT_CHAIN_BROKEN" and err.value.message.startswith("peer.bad: ")
        assert slow.closed and not slow.answered.is_set()  # its request cancelled, no more asked
        assert _no_reader_left()  # every thread ended before the view's error
    finally:
        slow_log.close()
        bad_log.close()


def test_the_deadline_names_every_peer_not_read_by_then(tmp_path: Path) -> None:
    logs = _logs(tmp_path, 2, 3)
    clock = [0.0]
    both = threading.Barrier(2, timeout=_WAIT_S)
    never = threading.Event()

    def late(peer: _Peer, n: int) -> None:
        both.wait()  # both in flight
        clock[0] = 121.0  # the view's deadline (120 s) passes while this page is answered

    def stuck(peer: _Peer, n: int) -> None:
        both.wait()
        peer.wait(never)

    stuck_peer, late_peer = _Peer(logs[0], stuck), _Peer(logs[1], late)
    try:
        with pytest.raises(RxClientError) as err:
            merged([("peer.x", _client(stuck_peer)), ("peer.y", _client(late_peer))], deadline_s=120,
                   clock=lambda: clock[0])
        assert err.value.reason == "AUDIT_DEADLINE_EXCEEDED"
        assert err.value.message.startswith("peer.x, peer.y: ")  # both, in the order named
        assert stuck_peer.closed and _no_reader_left()
    finally:
        for log in logs:
            log.close()


@pytest.mark.parametrize("first", ["peer.a", "peer.b"])
def test_the_view_is_the_same_whichever_peer_answers_first(tmp_path: Path, first: str) -> None:
    a_log = _log(tmp_path / "a", [10, 20, 20, 40], "A")
    b_log = _log(tmp_path / "b", [20, 30, 40], "B")
    peers: dict[str, _Peer] = {}

    def gate(peer: _Peer, n: int) -> None:
        other = peers["peer.b" if peer is peers["peer.a"] else "peer.a"]
        if peer is not peers[first] and n == 0:
            peer.wait(other.answered)  # its first page only once the other's log is read

    try:
        peers.update({"peer.a": _Peer(a_log, gate), "peer.b": _Peer(b_log, gate)})
        view = merged([(name, _client(p)) for name, p in peers.items()])
        assert [(r["peer"], r["record_id"]) for r in view["records"]] == [
            ("peer.a", "A-0"), ("peer.a", "A-1"), ("peer.a", "A-2"), ("peer.b", "B-0"), ("peer.b", "B-1"),
            ("peer.a", "A-3"), ("peer.b", "B-2")]
        assert [(p["peer"], p["checked"]) for p in view["peers"]] == [("peer.a", 4), ("peer.b", 3)]
    finally:
        a_log.close()
        b_log.close()


def test_the_record_bound_holds_for_pages_answered_at_once(tmp_path: Path) -> None:
    logs = _logs(tmp_path, 4, 5)
    together = threading.Barrier(4, timeout=_WAIT_S)  # every peer's one page answered at once

    def gate(_: _Peer, n: int) -> None:
        together.wait()

    try:
        view = merged([(f"peer.{i}", _client(_Peer(log, gate, page=5))) for i, log in enumerate(logs)],
                      max_records=20)
        assert [p["checked"] for p in view["peers"]] == [5, 5, 5, 5]  # 20: within the bound
        together.reset()
        with pytest.raises(RxClientError) as err:  # one record fewer: whichever peer's page passes it fails
            merged([(f"peer.{i}", _client(_Peer(log, gate, page=5))) for i, log in enumerate(logs)],
                   max_records=19)
        assert err.value.reason == "AUDIT_TOO_LARGE"
        assert re.match(r"peer\.[0-3]: more than 19 records to read from the 4 peers' logs together "
                        r"\(15 read from the others' when it passed\)", err.value.message), err.value.message
        assert _no_reader_left()
    finally:
        for log in logs:
            log.close()


def test_records_a_read_dropped_count_no_more_once_it_is_read(tmp_path: Path) -> None:
    """As when the peers were read in turn: a log pruned while read counts every record read while it
    is read, then only those it kept, against the bound the peers share."""
    log, prune = _pruned_while_read(tmp_path / "audit")  # 6 read, 4 kept
    others = _logs(tmp_path, 2, 4)
    bound = RecordBound(8, peers=3)
    try:
        assert len(read_verified(_client(_LogClient(log, page=2, doctor=prune)), bound=bound)[0]) == 4
        assert len(read_verified(_client(_LogClient(others[0], page=4)), bound=bound)[0]) == 4  # 4 + 4
        with pytest.raises(RxClientError) as err:
            read_verified(_client(_LogClient(others[1], page=4)), bound=bound)
        assert err.value.reason == "AUDIT_TOO_LARGE" and "(8 read from the others'" in err.value.message
    finally:
        log.close()
        for other in others:
            other.close()


class _HangingAudit(audit_pb2_grpc.AccessAuditServicer):
    """A peer's AccessAudit answering no page: each request waits (bounded) until the call ends."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.ended = threading.Event()  # the call ended
        self.done = threading.Event()  # the request's wait is over
        self.cancelled = False  # the call ended before it was answered

    def Query(self, request: audit_pb2.AuditQueryRequest, context: grpc.ServicerContext) -> audit_pb2.AuditQueryResponse:
        context.add_callback(self.ended.set)
        self.asked.set()
        self.cancelled = self.ended.wait(_WAIT_S)
        self.done.set()
        return audit_pb2.AuditQueryResponse(head=audit_pb2.AuditHead())

    def Verify(self, request: audit_pb2.AuditVerifyRequest, context: grpc.ServicerContext) -> audit_pb2.AuditVerifyResponse:
        raise AssertionError("a merged view does not ask Verify")


def test_a_request_being_answered_is_cancelled_when_the_view_fails(tmp_path: Path) -> None:
    """Over gRPC: the slow peer's channel is closed, its call cancelled (the peer sees it end), and no
    thread is left reading when the view fails."""
    hanging = _HangingAudit()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    audit_pb2_grpc.add_AccessAuditServicer_to_server(hanging, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    slow = object.__new__(AuditClient)
    slow._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    slow._stub = audit_pb2_grpc.AccessAuditStub(slow._channel)
    slow._timeout = 30.0
    bad_log = _log(tmp_path / "bad", [10, 20, 30], "B")

    def drop_first(n: int, raws: list[bytes]) -> list[bytes]:
        if not hanging.asked.wait(_WAIT_S):
            raise AssertionError("the slow peer was not read meanwhile")
        return raws[1:]

    try:
        with pytest.raises(RxClientError) as err:
            merged([("peer.slow", slow), ("peer.bad", _client(_LogClient(bad_log, doctor=drop_first)))])
        assert err.value.reason == "AUDIT_CHAIN_BROKEN" and err.value.message.startswith("peer.bad: ")
        assert _no_reader_left()
        assert hanging.done.wait(_WAIT_S) and hanging.cancelled  # the peer saw its call cancelled, unanswered
    finally:
        slow.close()
        server.stop(0)
        bad_log.close()


def test_ctrl_c_while_the_peers_are_read_stops_them_all(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT: KeyboardInterrupt in the main thread, the CLI's exit 130) while every peer is
    being read reaches the caller at once -- not held until the peers answer or the deadline passes
    --, the requests being answered cancelled (clients closed) and no thread left reading."""
    logs = _logs(tmp_path, 3, 3)
    in_flight = threading.Barrier(3, timeout=_WAIT_S)
    never = threading.Event()

    def gate(peer: _Peer, n: int) -> None:
        if in_flight.wait() == 0:  # every peer's first page asked: one SIGINT, to the main thread
            os.kill(os.getpid(), signal.SIGINT)
        peer.wait(never)

    peers = [_Peer(log, gate) for log in logs]
    try:
        with pytest.raises(KeyboardInterrupt):
            merged([(f"peer.{i}", _client(p)) for i, p in enumerate(peers)])
        assert all(p.closed for p in peers) and not any(p.answered.is_set() for p in peers)
        assert _no_reader_left()
    finally:
        for log in logs:
            log.close()


class _LateJoin(threading.Thread):
    """A reader thread whose join waits in vain for as long as it is allowed -- on the test's
    clock, not really -- and records how long that was."""

    clock: ClassVar[list[float]] = [0.0]
    joins: ClassVar[list[float]] = []

    def join(self, timeout: float | None = None) -> None:
        self.joins.append(-1.0 if timeout is None else timeout)
        self.clock[0] += timeout or 0.0


def test_threads_not_back_are_waited_for_once_all_together(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Peers whose requests ignore the close (answering past their own timeouts) are waited for
    ``MERGE_LATE_S`` in all, not that long each: three stuck peers held the command 15 s, not 5."""
    stuck_logs, bad_log = _logs(tmp_path, 3, 3), _log(tmp_path / "bad", [10, 20, 30], "B")
    clock = _LateJoin.clock = [0.0]
    joins = _LateJoin.joins = []
    never = threading.Event()
    real_thread = threading.Thread

    def stuck_gate(_: _Peer, n: int) -> None:
        never.wait(_WAIT_S)  # deaf to the close

    stuck = [_Peer(log, stuck_gate) for log in stuck_logs]

    def drop_first(n: int, raws: list[bytes]) -> list[bytes]:
        for p in stuck:
            if not p.asked.wait(_WAIT_S):
                raise AssertionError("the stuck peers were not read meanwhile")
        return raws[1:]

    bad = _LogClient(bad_log, doctor=drop_first)
    try:
        monkeypatch.setattr(threading, "Thread", _LateJoin)
        with pytest.raises(RxClientError) as err:
            merged([*((f"peer.{i}", _client(p)) for i, p in enumerate(stuck)), ("peer.bad", _client(bad))],
                   clock=lambda: clock[0], workers=4)
        monkeypatch.setattr(threading, "Thread", real_thread)
        assert err.value.reason == "AUDIT_CHAIN_BROKEN"
        assert len(joins) == 4 and min(joins) >= 0.0
        assert sum(joins) == pytest.approx(audit.MERGE_LATE_S)  # one wait for them all
    finally:
        monkeypatch.setattr(threading, "Thread", real_thread)
        never.set()
        for t in threading.enumerate():
            if t.name.startswith("rxchain-audit"):
                real_thread.join(t, _WAIT_S)  # (their own join is the stand-in)
        for log in [*stuck_logs, bad_log]:
            log.close()
    assert _no_reader_left()
