"""Fixtures: one warm worker pool per test module, an in-process runner."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(workers=2)
    try:
        yield sb
    finally:
        sb.close()


@pytest.fixture()
def inproc() -> InProcessRunner:
    return InProcessRunner()
