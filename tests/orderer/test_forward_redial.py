"""The leader forwarder's redials (node.orderer.forward): a leader that refuses this orderer's
ForwardBatch stream, or cannot be reached, is dialled again after a wait growing to 3 s (jittered
by an injected random source), not every 0.2 s while envelopes come; the envelopes meanwhile are
answered at once with the leader's reason; an admitted stream and a newly elected leader start
the wait over. Counted against a real gRPC server on an injected clock: no timed assertion."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from rxchain.v1 import services_pb2

from node.errors import RxError, abort_with
from node.orderer.broadcast import BroadcastHandler
from node.orderer.envelope_batch import split_batch
from node.orderer.forward import REFUSED_REDIAL_MAX_S, LeaderForwarder
from node.orderer.metrics import OrdererMetrics
from node.orderer.ticket import NOT_LEADER, SERVICE_UNAVAILABLE, Outcome, Ticket
from tests.harness.ports import free_ports
from tests.orderer.cluster import Client, make_network
from tests.orderer.test_batch import (
    BatchOrderer,
    Clock,
    Members,
    _serve_forward_batch,
    _serve_legacy_forward_batch,
    _validator,
)

STEP_S = 0.1  # the injected clock's step between two envelopes (a follower busy forwarding)


class _Leader:
    """A ForwardBatch server that refuses every stream PERMISSION_DENIED REVOKED_CERT (as a
    leader refuses an orderer whose certificate it holds revoked, at accept) while ``refusing``;
    otherwise answers the handshake and every envelope accepted, and ends the stream after
    ``end_after`` envelopes (0: never). ``calls``: the streams it was dialled for."""

    def __init__(self) -> None:
        self.refusing = True
        self.end_after = 0
        self.calls = 0
        self._lock = threading.Lock()

    def _dialled(self, context: grpc.ServicerContext) -> None:
        """Count the stream; refuse it REVOKED_CERT while ``refusing``."""
        with self._lock:
            self.calls += 1
        if self.refusing:
            abort_with(context, RxError("REVOKED_CERT", "the caller's certificate is revoked",
                                        grpc.StatusCode.PERMISSION_DENIED))

    def handle(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._dialled(context)
        answered = 0
        for raw in requests:
            envs = split_batch(raw)
            yield services_pb2.BroadcastBatchResponse(responses=[
                services_pb2.BroadcastResponse(accepted=True) for _ in envs]).SerializeToString()
            answered += len(envs)
            if self.end_after and answered >= self.end_after:
                return


@contextlib.contextmanager
def _forwarding(rand: Callable[[], float] | None = None, redial_s: float = 0.2,
                ) -> Iterator[tuple[_Leader, LeaderForwarder, Clock, list[int], list[str]]]:
    """A :class:`_Leader` served as orderer 2 (3: nobody listens) and a forwarder to the leader
    ``current[0]`` (2) on an injected clock, redialling a stream that broke after ``redial_s``
    (the exact tests take 0.25 s and a random source of 0.99 or 0.01, so that no wait ends on
    a step of the clock): (the leader, the forwarder, the clock, current, the targets it
    dialled)."""
    leader = _Leader()
    (port,) = free_ports(1)
    server = _serve_forward_batch(leader.handle, port)
    clock, current, dialled = Clock(), [2], []

    def channel(target: str) -> grpc.Channel:
        dialled.append(target)
        return grpc.insecure_channel(target)

    extra = {} if rand is None else {"rand": rand}
    try:
        fwd = LeaderForwarder(Members({2: f"127.0.0.1:{port}", 3: "127.0.0.1:1"}), channel,
                              lambda: current[0], clock=clock, redial_s=redial_s, watch_s=3600, **extra)  # type: ignore[arg-type]
        try:
            yield leader, fwd, clock, current, dialled
        finally:
            fwd.close()
    finally:
        server.stop(0).wait(5)


def _forward(fwd: LeaderForwarder, leader_id: int, n: int) -> tuple[Ticket, Outcome]:
    """Forward envelope ``n`` to ``leader_id``: its ticket (resolved at once, or not) and its
    answer (waited for, bounded)."""
    ticket = fwd.submit(leader_id, f"envelope-{n}".encode(), f"tx-{n}")
    outcome = ticket.wait(10)
    assert outcome is not None, "a forwarded envelope was never answered"
    return ticket, outcome


def _run(fwd: LeaderForwarder, clock: Clock, dialled: list[str], steps: int, leader_id: int = 2,
         first: int = 0) -> tuple[list[float], list[Outcome]]:
    """One envelope every STEP_S of the injected clock, ``steps`` times: (the clock's times at
    which the leader was dialled, the answers of the envelopes that found no stream and were not
    dialled for -- each checked answered at once, held by nothing)."""
    dials: list[float] = []
    waited: list[Outcome] = []
    for i in range(steps):
        before = len(dialled)
        ticket_now = fwd.submit(leader_id, f"envelope-{first + i}".encode(), f"tx-{first + i}")
        if len(dialled) > before:
            dials.append(clock.now)
            assert ticket_now.wait(10) is not None
        else:
            outcome = ticket_now.peek()
            assert outcome is not None, "an envelope was held for a dial"
            waited.append(outcome)
        clock.now = round(clock.now + STEP_S, 6)
    return dials, waited


def test_a_refusing_leader_is_dialled_with_a_growing_wait_and_its_envelopes_get_the_reason() -> None:
    """Ten seconds of envelopes for a leader refusing PERMISSION_DENIED REVOKED_CERT. Before,
    it was dialled every 0.2 s (the break noticed at the next envelope: 30 dials) and every
    envelope between two dials was answered NOT_LEADER "leader 2 unreachable", which the
    broadcast handler re-dispatched until the envelope's deadline. Now the wait doubles from
    0.4 s to at most 3 s (jittered into its upper half), and an envelope in it is answered at
    once SERVICE_UNAVAILABLE with the leader's reason, not sent."""
    with _forwarding() as (leader, fwd, clock, _current, dialled):
        dials, waited = _run(fwd, clock, dialled, steps=100)
        # waits 0.4, 0.8, 1.6, 3, 3 ... at the least halved: 0.2, 0.4, 0.8, 1.5, 1.5 ... -- plus the
        # step until the break is seen -- so at most 9 dials in 10 s (6 at the most jitter)
        assert 5 <= len(dials) <= 9, dials
        assert leader.calls == len(dials)
        gaps = [round(b - a, 6) for a, b in itertools.pairwise(dials)]
        assert all(g <= REFUSED_REDIAL_MAX_S + 2 * STEP_S for g in gaps), gaps
        assert max(gaps) >= 1.5, gaps  # the wait grew
        assert waited and all(o.reason == SERVICE_UNAVAILABLE for o in waited), {o.reason for o in waited}
        assert all("REVOKED_CERT" in o.message and "PERMISSION_DENIED" in o.message
                   and "not sent" in o.message for o in waited), waited[0].message


def test_the_wait_doubles_to_the_cap_jittered_by_the_injected_source() -> None:
    """The waits after refusals in a row are 2, 4, 8 ... times ``redial_s`` (0.25 s), at most
    3 s, times 0.5 + rand/2: with rand 0.99 about 0.5, 1, 2, then 3 s; with rand 0.01 about
    half those. A gap between two dials is the step that sees the stream broken, then the wait
    rounded up to a step."""
    for rand, gaps_expected in ((lambda: 0.99, [0.6, 1.1, 2.1, 3.1, 3.1]), (lambda: 0.01, [0.4, 0.7, 1.2, 1.7, 1.7])):
        with _forwarding(rand, redial_s=0.25) as (leader, fwd, clock, _current, dialled):
            dials, _ = _run(fwd, clock, dialled, steps=round(sum(gaps_expected) / STEP_S) + 1)
            gaps = [round(b - a, 6) for a, b in itertools.pairwise(dials)]
            assert gaps == gaps_expected, (gaps, gaps_expected)
            assert leader.calls == len(dials)


def _broken(fwd: LeaderForwarder, leader_id: int) -> bool:
    stream = fwd._streams.get(leader_id)  # (the forwarder notices a break at its next envelope)
    return stream is None or stream.broken


def test_an_admitted_stream_starts_the_wait_over() -> None:
    """After refusals grew the wait to the cap, the leader admits the stream (its envelope is
    answered) and then ends it: dialled again after ``redial_s`` (0.25 s), and a refusal after
    that waits about 0.5 s again (2 x 0.25 x 0.995), not 3 s."""
    with _forwarding(lambda: 0.99, redial_s=0.25) as (leader, fwd, clock, _current, dialled):
        dials, _ = _run(fwd, clock, dialled, steps=80)
        assert round(dials[-1] - dials[-2], 6) == 3.1  # at the cap
        leader.refusing, leader.end_after = False, 1
        clock.now += REFUSED_REDIAL_MAX_S
        _, outcome = _forward(fwd, 2, 1000)
        assert outcome.accepted, outcome  # admitted; the leader then ends the stream
        deadline = threading.Event()
        for _ in range(500):  # bounded: the client sees the stream's end
            if _broken(fwd, 2):
                break
            deadline.wait(0.01)
        assert _broken(fwd, 2)
        leader.refusing = True
        start = clock.now
        dials, waited = _run(fwd, clock, dialled, steps=10, first=2000)
        # the end seen at `start`, dialled (refused) 0.3 s later, then 0.6 s after that
        assert [round(d - start, 6) for d in dials] == [0.3, 0.9], (start, dials)
        assert waited[0].reason == NOT_LEADER  # the stream that ended after it opened: re-dispatched
        assert len(dialled) == leader.calls


def test_a_newly_elected_leader_is_dialled_at_once() -> None:
    """The watcher seeing the refusing orderer elected again (it may have restarted, its config
    caught up) lets it be dialled at once, whatever wait its refusals had grown."""
    with _forwarding(lambda: 0.99, redial_s=0.25) as (leader, fwd, clock, current, dialled):
        _run(fwd, clock, dialled, steps=40)
        _, outcome = _forward(fwd, 2, 500)
        assert outcome.reason == SERVICE_UNAVAILABLE  # in its wait
        current[0] = 3
        fwd.check_leader()
        current[0] = 2
        fwd.check_leader()
        leader.refusing = False
        _, outcome = _forward(fwd, 2, 501)
        assert outcome.accepted, outcome


def test_an_unreachable_leader_is_backed_off_too_and_its_envelopes_are_redispatched() -> None:
    """Nobody listens at leader 3's address: dialled with the same growing wait, and its
    envelopes in the wait are answered NOT_LEADER (the broadcast handler re-dispatches them: a
    new leader may be elected meanwhile), naming what failed."""
    with _forwarding(lambda: 0.99, redial_s=0.25) as (_leader, fwd, clock, _current, dialled):
        dials, waited = _run(fwd, clock, dialled, steps=60, leader_id=3)
        assert 3 <= len(dials) <= 5, dials
        assert waited and all(o.reason == NOT_LEADER and "unreachable (UNAVAILABLE" in o.message
                              and "not sent" in o.message for o in waited), waited[0]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_network(tmp_path_factory.mktemp("forward-redial") / "net")


def test_a_followers_clients_get_the_leaders_refusal_not_a_deadline(net: Any) -> None:
    """A follower's BroadcastBatch stream of 5 envelopes while the leader refuses its forward
    stream: each envelope is answered SERVICE_UNAVAILABLE naming the leader's reason, from one
    dial. Before, the envelopes went round the broadcast handler's re-dispatch until their
    5 s deadline, the leader dialled again every 0.2 s meanwhile (about 25 dials), and were
    answered "leader changed; envelope not ordered" without the reason. (The forwarder's clock
    is held still: one dial whatever the machine's pace.)"""
    leader = _Leader()
    (port,) = free_ports(1)
    server = _serve_forward_batch(leader.handle, port)
    fwd = LeaderForwarder(Members({7: f"127.0.0.1:{port}"}), grpc.insecure_channel, lambda: 7,
                          clock=Clock(), watch_s=3600)
    try:
        follower = BroadcastHandler(_validator(net), BatchOrderer(leader=7), fwd, OrdererMetrics("t"))
        envelopes = [Client(net).envelope() for _ in range(5)]
        answers = [r for m in follower.batch_stream(iter([[raw for _, raw in envelopes]])) for r in m.responses]
    finally:
        fwd.close()
        server.stop(0).wait(5)
    assert [a.tx_id for a in answers] == [tx for tx, _ in envelopes]
    assert all(a.reason == SERVICE_UNAVAILABLE and "REVOKED_CERT" in a.message and "not sent" in a.message
               for a in answers), answers[0]
    assert leader.calls == 1


@pytest.mark.parametrize("watcher_saw_the_change", [False, True])
def test_a_leader_the_chain_reports_elected_is_dialled_at_once_whatever_the_watcher_saw(
        watcher_saw_the_change: bool) -> None:
    """The chain reports the refusing orderer losing the lead and winning it back (it restarted,
    its config caught up) between two passes of the watcher, or an envelope comes for it before
    the watcher ran: it is dialled at once. Before, only the watcher's own look at the leader
    started the wait over, so a leader it saw lead all along kept its grown wait (up to 3 s),
    its envelopes answered SERVICE_UNAVAILABLE, never sent."""
    with _forwarding(lambda: 0.99, redial_s=0.25) as (leader, fwd, clock, current, dialled):
        fwd.check_leader()  # the watcher saw 2 lead
        _run(fwd, clock, dialled, steps=40)
        _, outcome = _forward(fwd, 2, 500)
        assert outcome.reason == SERVICE_UNAVAILABLE  # in its grown wait
        fwd.leader_changed(3)
        fwd.leader_changed(2)  # (current[0] stays 2: the watcher, if it runs, sees 2 lead)
        if watcher_saw_the_change:
            fwd.check_leader()
        leader.refusing = False
        before = len(dialled)
        _, outcome = _forward(fwd, 2, 501)
        assert outcome.accepted, outcome
        assert len(dialled) == before + 1
        assert current[0] == 2


# ---------------------------------------------------------------- the legacy Forwarder

class _LegacyLeader(_Leader):
    """:class:`_Leader` for the legacy forward RPC (OrdererCluster.ForwardBatch: raft_pb2
    messages, no handshake), ending the stream after its first envelope by default."""

    def __init__(self) -> None:
        super().__init__()
        self.end_after = 1

    def handle(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        from rxchain.v1 import raft_pb2

        self._dialled(context)
        answered = 0
        for req in requests:
            yield raft_pb2.ForwardAnswers(answers=[raft_pb2.ForwardAnswer(accepted=True) for _ in req.envelopes])
            answered += len(req.envelopes)
            if req.envelopes and answered >= self.end_after:
                return


@contextlib.contextmanager
def _legacy(rand: Callable[[], float] | None = None) -> Iterator[tuple[_LegacyLeader, Any, Clock, list[str]]]:
    from node.orderer.transport import Forwarder

    leader = _LegacyLeader()
    (port,) = free_ports(1)
    server = _serve_legacy_forward_batch(leader.handle, port)
    clock, dialled = Clock(), []

    def channel(target: str) -> grpc.Channel:
        dialled.append(target)
        return grpc.insecure_channel(target)

    extra = {} if rand is None else {"rand": rand, "redial_s": 0.25}
    fwd = Forwarder(Members({2: f"127.0.0.1:{port}"}), channel, clock=clock, **extra)  # type: ignore[arg-type]
    try:
        yield leader, fwd, clock, dialled
    finally:
        fwd.close()
        server.stop(0).wait(5)


def test_the_legacy_forwarder_dials_a_refusing_leader_with_a_growing_wait() -> None:
    """ops1: the legacy Forwarder (forward_rpc: legacy, node.orderer.transport) dialled a leader
    refusing its stream again every redial_s (0.2 s) for as long as envelopes came -- 30 dials in
    ten seconds of envelopes, each a refusal and a log line at the leader. Now (its defaults) the
    wait doubles from 0.4 s to 3 s, jittered into its upper half: at most 9 dials."""
    with _legacy() as (leader, fwd, clock, dialled):
        dials, waited = _run(fwd, clock, dialled, steps=100)
        assert 5 <= len(dials) <= 9, dials
        assert leader.calls == len(dials)
        gaps = [round(b - a, 6) for a, b in itertools.pairwise(dials)]
        assert max(gaps) >= 1.5 and all(g <= REFUSED_REDIAL_MAX_S + 2 * STEP_S for g in gaps), gaps
        assert waited and all(o.reason == NOT_LEADER for o in waited)  # re-dispatched, as before


def test_the_legacy_forwarder_backs_off_a_refusing_leader_as_the_leader_forwarder_does() -> None:
    """Its waits are LeaderForwarder's: the same gaps as the test above for the same injected
    random source, each envelope in a wait answered NOT_LEADER at once (nothing held)."""
    for rand, gaps_expected in ((lambda: 0.99, [0.6, 1.1, 2.1, 3.1, 3.1]), (lambda: 0.01, [0.4, 0.7, 1.2, 1.7, 1.7])):
        with _legacy(rand) as (leader, fwd, clock, dialled):
            dials, waited = _run(fwd, clock, dialled, steps=round(sum(gaps_expected) / STEP_S) + 1)
            gaps = [round(b - a, 6) for a, b in itertools.pairwise(dials)]
            assert gaps == gaps_expected, (gaps, gaps_expected)
            assert leader.calls == len(dials)
            assert waited and all(o.reason == NOT_LEADER and "dialled again in" in o.message for o in waited)


def test_the_legacy_forwarder_starts_over_after_an_admitted_stream() -> None:
    """After refusals grew its wait to the cap, a stream the leader admitted (and ended after an
    envelope) is dialled again redial_s (0.25 s) later, and a refusal then waits ~0.5 s, not 3 s."""
    with _legacy(lambda: 0.99) as (leader, fwd, clock, dialled):
        dials, _ = _run(fwd, clock, dialled, steps=80)
        assert round(dials[-1] - dials[-2], 6) == 3.1  # at the cap
        leader.refusing = False
        clock.now += REFUSED_REDIAL_MAX_S
        ticket = fwd.submit(2, b"envelope-x", "tx-x")
        outcome = ticket.wait(10)
        assert outcome is not None and outcome.accepted, outcome
        stream = fwd._streams[2]
        ended = threading.Event()
        for _ in range(500):  # bounded: the client sees the stream's end
            if stream.broken:
                break
            ended.wait(0.01)
        assert stream.broken
        leader.refusing = True
        start = clock.now
        dials, _ = _run(fwd, clock, dialled, steps=10, first=2000)
        assert [round(d - start, 6) for d in dials] == [0.3, 0.9], (start, dials)
