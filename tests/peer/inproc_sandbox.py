"""A tiny in-process contract runner behind the Sandbox interface (tests only).

It trusts the source (test code): the source is executed with ``exec`` into a fresh
namespace per invocation and the function is called as ``fn(ctx, **args)``. Used where a
test is about the peer (endorser, simulator, lifecycle) and not about containment.
"""

from __future__ import annotations

import json
from typing import Any

from node.crypto.canonical import canonical_json
from node.sandbox.types import (
    ContractEvent,
    Invocation,
    InvocationResult,
    StateBackend,
)


class Fail(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Ctx:
    def __init__(self, inv: Invocation, backend: StateBackend) -> None:
        self._inv = inv
        self._b = backend
        self.events: list[ContractEvent] = []
        self.caller = inv.caller
        self.tx_id = inv.tx_id
        self.now_ms = inv.timestamp_ms

    def get(self, key: str) -> Any:
        raw = self._b.get(self._inv.contract, key)
        return None if raw is None else json.loads(raw)

    def put(self, key: str, value: Any) -> None:
        self._b.put(self._inv.contract, key, canonical_json(value))

    def delete(self, key: str) -> None:
        self._b.delete(self._inv.contract, key)

    def range(self, start: str, end: str, limit: int = 100) -> list[tuple[str, Any]]:
        return [(k, json.loads(v)) for k, v in self._b.range(self._inv.contract, start, end, limit)]

    def transient(self, name: str) -> Any:
        raw = self._inv.transient.get(name)
        return None if raw is None else json.loads(raw)

    def emit(self, name: str, payload: dict[str, Any]) -> None:
        self.events.append(ContractEvent(name, canonical_json(payload)))

    def fail(self, reason: str, message: str = "") -> None:
        raise Fail(reason, message)


class InProcSandbox:
    """Sandbox-compatible runner for trusted test contracts; gas = number of state calls."""

    def __init__(self) -> None:
        self.calls = 0

    def invoke(self, invocation: Invocation, backend: StateBackend) -> InvocationResult:
        self.calls += 1
        ns: dict[str, Any] = {}
        exec(compile(invocation.source, "<contract>", "exec"), ns)
        fn = ns.get(invocation.function)
        if fn is None or invocation.function.startswith("_"):
            return InvocationResult(False, "UNKNOWN_FUNCTION", invocation.function, b"", (), 1)
        ctx = Ctx(invocation, backend)
        try:
            result = fn(ctx, **json.loads(invocation.args_json))
        except Fail as f:
            return InvocationResult(False, f.reason, f.message, b"", (), 2)
        except TypeError as exc:
            return InvocationResult(False, "BAD_ARGUMENTS", str(exc), b"", (), 1)
        return InvocationResult(True, "", "", canonical_json(result), tuple(ctx.events), 10)
