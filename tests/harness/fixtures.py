"""pytest fixtures of the harness; import them into a conftest.py to use them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.procs import ProcessManager
from tests.harness.proxy import FaultProxy


@pytest.fixture
def procs() -> Iterator[ProcessManager]:
    """A process manager whose processes are all killed when the test ends (pass or fail)."""
    pm = ProcessManager()
    try:
        yield pm
    finally:
        pm.close()


@pytest.fixture
def fault_proxy() -> Iterator[FaultProxy]:
    """A fault proxy closed when the test ends."""
    fp = FaultProxy()
    try:
        yield fp
    finally:
        fp.close()
