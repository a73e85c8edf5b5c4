"""An envelope answered NOT_LEADER at once, again and again (a leader the forwarder does not dial
yet: node.orderer.forward's redial wait, up to 3 s), is re-dispatched at most once per
REDISPATCH_PACE_S by the broadcast handler. Before, it went round without a pause for 20 ms out of
every 40 until its deadline: about 45,000 dispatches a second, half a core per waiting stream.
Counted on an injected clock that only the handler's sleeps advance: no timed assertion."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from node.orderer.broadcast import REDISPATCH_PACE_S, BroadcastHandler, Checked
from node.orderer.forward import LeaderForwarder
from node.orderer.metrics import OrdererMetrics
from node.orderer.ticket import SERVICE_UNAVAILABLE, Outcome, Ticket
from tests.orderer.test_batch import BatchOrderer, Clock, Members

DEADLINE_S = 5.0
STOP_AFTER = 5000  # (ends the old code's loop, which the clock never moved out of)


class _Counted:
    """The real forwarder to an unreachable leader 7 (its own clock held still: once its first
    stream failed, every envelope is answered NOT_LEADER at once, in the redial wait), counting
    the envelopes it is given; past STOP_AFTER it answers them accepted."""

    def __init__(self) -> None:
        self.fwd = LeaderForwarder(Members({7: "127.0.0.1:1"}), grpc.insecure_channel, lambda: 7,
                                   clock=Clock(), watch_s=3600)
        self.calls = 0

    def submit(self, leader_id: int, envelope: bytes, tx_id: str) -> Ticket:
        self.calls += 1
        if self.calls > STOP_AFTER:
            return Ticket.done(Outcome(block_number=1), tx_id)
        return self.fwd.submit(leader_id, envelope, tx_id)


def test_an_envelope_for_a_leader_in_its_redial_wait_is_redispatched_at_a_bounded_pace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()

    def sleep(s: float) -> None:  # the handler's pauses move its clock, nothing else does
        assert s >= 0
        clock.now += s

    # (the module's own name for time: the other threads' sleeps are the real ones)
    monkeypatch.setattr("node.orderer.broadcast.time", SimpleNamespace(sleep=sleep, monotonic=time.monotonic,
                                                                       time=time.time))
    counted = _Counted()
    try:
        handler = BroadcastHandler(None, BatchOrderer(leader=7), counted, OrdererMetrics("t"),  # type: ignore[arg-type]
                                   clock=clock)
        checked = Checked(raw=b"envelope", tx_id="tx-1")
        deadline = clock.now + DEADLINE_S
        first = handler.dispatch_checked(checked, deadline)
        assert first.wait(10) is not None  # the one dial fails (nobody listens)
        outcome: Any = handler.answer(checked, first, deadline)
    finally:
        counted.fwd.close()
    # one dispatch per pace at most over the deadline (and the first, and the last at it)
    assert counted.calls <= DEADLINE_S / REDISPATCH_PACE_S + 2, counted.calls
    assert outcome.reason == SERVICE_UNAVAILABLE and "leader changed" in outcome.message, outcome
    assert counted.calls >= 10  # still re-dispatched (a new leader may be elected meanwhile)
