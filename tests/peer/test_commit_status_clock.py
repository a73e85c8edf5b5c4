"""Gateway.CommitStatus waits on the gateway's injected clock, not the wall clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
from rxchain.v1 import services_pb2

from node.errors import RxError
from node.peer.gateway.commit_status import commit_status
from node.peer.gateway.deps import GatewayDeps

TX_ID = "ab" * 32


class NothingCommitted:
    def tx_location(self, tx_id: str) -> None:
        return None


class Watches:
    def __init__(self) -> None:
        self.open = 0

    def watch(self, tx_id: str, callback: Callable[[Any], None]) -> Callable[[], None]:
        self.open += 1

        def cancel() -> None:
            self.open -= 1

        return cancel


class SteppingClock:
    """Each reading is ``step`` seconds after the previous one."""

    def __init__(self, step: float) -> None:
        self.now = 1000.0
        self.step = step
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        self.now += self.step
        return self.now


def deps(clock: Callable[[], float], watches: Watches) -> GatewayDeps:
    unused = cast(Any, None)
    return GatewayDeps(org="h01", endorser=unused, ledger=cast(Any, NothingCommitted()), configs=unused,
                       policies=unused, notifier=cast(Any, watches), remotes=unused, broadcast=unused,
                       clock=clock)


def test_the_wait_ends_when_the_injected_clock_passes_the_deadline() -> None:
    clock, watches = SteppingClock(step=20.0), Watches()
    with pytest.raises(RxError) as err:
        # 60 s on the injected clock; a real wait this long would hit the test timeout.
        commit_status(deps(clock, watches), services_pb2.CommitStatusRequest(tx_id=TX_ID, timeout_ms=60_000))
    assert err.value.reason == "TIMEOUT" and "within 60000 ms" in err.value.message
    assert 3 <= clock.readings <= 8  # a few polls of at most 0.5 s real time each
    assert watches.open == 0  # the watch is cancelled


def test_a_frozen_clock_keeps_waiting_while_the_caller_is_there() -> None:
    clock, watches = SteppingClock(step=0.0), Watches()
    polls: list[int] = []

    def active() -> bool:
        polls.append(1)
        return len(polls) < 3

    with pytest.raises(RxError) as err:
        commit_status(deps(clock, watches), services_pb2.CommitStatusRequest(tx_id=TX_ID, timeout_ms=1),
                      is_active=active)
    assert err.value.reason == "TIMEOUT" and "went away" in err.value.message
    assert len(polls) == 3 and watches.open == 0
