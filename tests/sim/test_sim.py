"""Deterministic simulation sweep of the Raft core (see tests/sim/simulator.py).

``RXCHAIN_SIM_SEEDS`` (default 300) seeds starting at ``RXCHAIN_SIM_SEED_BASE`` (default 0),
run in batches so each batch is one test. A failure prints the seed and the rerun command.
"""

from __future__ import annotations

import os

import pytest

from node.raft.log import RaftLog
from node.raft.types import ConfState, Entry, HardState
from tests.sim.simulator import SimFailure, SimStorage, Stats, run_seed

SEEDS = int(os.environ.get("RXCHAIN_SIM_SEEDS", "300"))
BASE = int(os.environ.get("RXCHAIN_SIM_SEED_BASE", "0"))
BATCH = max(25, SEEDS // 40)
BATCHES = [(BASE + a, BASE + min(a + BATCH, SEEDS)) for a in range(0, SEEDS, BATCH)]


@pytest.mark.parametrize(("lo", "hi"), BATCHES, ids=[f"seeds{a}-{b - 1}" for a, b in BATCHES])
def test_simulation_seeds(lo: int, hi: int) -> None:
    total = Stats()
    for seed in range(lo, hi):
        total.add(run_seed(seed))  # raises SimFailure naming the seed
    assert total.c["runs"] == hi - lo
    # The batch really exercised the protocol under faults.
    assert total.c["values_committed"] > 0
    assert total.c["leaders_elected"] >= hi - lo
    assert total.c["dropped_random"] + total.c["dropped_partition"] > 0


def test_same_seed_same_run() -> None:
    a = run_seed(7).c
    b = run_seed(7).c
    assert a == b
    assert a["events"] > 1000


def test_checkers_catch_a_broken_election_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Voting for any log (ignoring §5.4.1) must be caught, with seed and rerun hint."""
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, lasti, term: True)
    failures: list[str] = []
    for seed in range(40):
        try:
            run_seed(seed)
        except SimFailure as exc:
            failures.append(str(exc))
            break
    assert failures, "checkers did not notice a broken election rule"
    assert "rerun: .venv/bin/python -m tests.sim.simulator --seed" in failures[0]


def test_sim_storage_loses_only_unsynced_writes() -> None:
    st = SimStorage(ConfState(voters=(1,)))
    st.live.append([Entry(1, 1), Entry(1, 2)])
    st.live.set_hard_state(HardState(1, 1, 1))
    st.sync()
    st.live.append([Entry(2, 3)])
    st.live.set_hard_state(HardState(2, 1, 2))
    st.crash()
    assert st.live.last_index() == 2
    assert st.live.hard_state == HardState(1, 1, 1)


def test_heal_phase_is_bounded_and_reported() -> None:
    stats = run_seed(3)
    assert 0 < stats.maxima["heal_ms"] <= 20000
