"""Fixtures: a fresh chain with the sample registry data loaded through real transactions."""

from __future__ import annotations

import pytest

from tests.contracts import sandbox_adapter
from tests.contracts.chain import Chain
from tests.contracts.rxclient import World


@pytest.fixture(scope="session")
def runner() -> sandbox_adapter.Runner:
    """One sandbox runner for the session, so contracts are compiled once."""
    return sandbox_adapter.make_runner()


@pytest.fixture
def chain(runner: sandbox_adapter.Runner) -> Chain:
    return Chain(runner=runner)


@pytest.fixture
def world(chain: Chain) -> World:
    w = World(chain)
    w.load()
    return w
