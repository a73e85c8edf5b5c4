"""The contract executor of the tests: the sandbox's own engine (node.sandbox).

``RXCHAIN_CONTRACT_RUNNER=shim`` selects the stand-in executor (tests/contracts/shim.py)
for debugging contract logic without the sandbox's static checks and metering.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from node.sandbox.inprocess import InProcessRunner
from node.sandbox.types import Invocation, InvocationResult, StateBackend
from tests.contracts import shim

Runner = Callable[[Invocation, StateBackend], InvocationResult]


def make_runner() -> Runner:
    if os.environ.get("RXCHAIN_CONTRACT_RUNNER") == "shim":
        cache: dict[str, Mapping[str, Any]] = {}

        def run(inv: Invocation, backend: StateBackend) -> InvocationResult:
            return shim.run(inv, backend, cache)

        return run
    return InProcessRunner().invoke
