"""Fixtures: a fresh chain with the sample registry data loaded through real transactions."""

from __future__ import annotations

import pytest

from tests.contracts.chain import Chain
from tests.contracts.rxclient import World


@pytest.fixture
def chain() -> Chain:
    return Chain()


@pytest.fixture
def world(chain: Chain) -> World:
    w = World(chain)
    w.load()
    return w
