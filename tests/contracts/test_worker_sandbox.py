"""The demo story through the isolated worker pool (node.sandbox.runtime.Sandbox): same
results, events and gas as the in-process engine, transaction by transaction."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from node.sandbox.runtime import Sandbox
from node.sandbox.types import Invocation, InvocationResult, StateBackend
from tests.contracts import sandbox_adapter
from tests.contracts.chain import Chain
from tests.contracts.flows import (
    AUDITOR,
    CHEN,
    COURIER,
    WANG,
    approved,
    issue,
    lock_and_dispense,
    settle,
)
from tests.contracts.rxclient import World
from tests.contracts.state import Simulation


@pytest.fixture(scope="module")
def pool() -> Iterator[Sandbox]:
    sandbox = Sandbox(workers=1)
    try:
        yield sandbox
    finally:
        sandbox.close()


def play(world: World) -> list[str]:
    """The demo story including the refusals; returns each step's reason or OK."""
    seen = []
    prep = approved(world, drugs=[("amlodipine", 2), ("benidipine", 2)], days=28,
                    long_rx=True, chronic_reason="stable hypertension")
    rx = prep.args["rx_id"]
    seen.append(lock_and_dispense(world, prep, trace_codes=["81234560000000000200"]).reason)
    seen.append(settle(world, prep).reason)
    seen.append(world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).reason)
    seen.append(world.chain.submit("prescription", "lock", CHEN, rx_id=rx).reason)
    seen.append(issue(world, drugs=[("morphine", 1)])[1].reason)
    seen.append(str(world.chain.submit("prescription", "get_key", AUDITOR, rx_id=rx).value))
    seen.append(world.chain.submit("prescription", "get_key", WANG, rx_id=rx).reason)
    return seen


def test_worker_pool_matches_in_process_engine(pool: Sandbox,
                                               runner: sandbox_adapter.Runner) -> None:
    compared = 0

    def tee(inv: Invocation, backend: StateBackend) -> InvocationResult:
        nonlocal compared
        assert isinstance(backend, Simulation)
        shadow = Simulation(backend.base)
        ref = runner(inv, shadow)
        res = pool.invoke(inv, backend)
        assert (res.ok, res.reason, res.result_json, res.events, res.gas_used) == (
            ref.ok, ref.reason, ref.result_json, ref.events, ref.gas_used), inv.function
        assert backend.writes == shadow.writes, inv.function
        compared += 1
        return res

    world = World(Chain(runner=tee), seed=11)
    world.load()
    story = play(world)
    assert story[:4] == ["", "", "", "ALREADY_DISPENSED"]
    assert story[4] == "FORBIDDEN_DRUG_CLASS"
    assert "NO_KEY_GRANT" in story[5]
    assert story[6] == ""
    assert compared > 30
