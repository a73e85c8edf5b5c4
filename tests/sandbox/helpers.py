"""In-memory state backend and invocation helpers for the sandbox tests."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from node.sandbox import types as t

CALLER = t.CallerInfo(
    org="hosp1",
    role="doctor",
    name="dr-wang",
    attrs={"licence_no": "L123", "practice_years": "5"},
    org_kind="hospital",
    hospital_level="tertiary",
)


@dataclass
class MemBackend:
    """A StateBackend over a dict that logs every call (the peer's simulator stand-in)."""

    data: dict[tuple[str, str], bytes] = field(default_factory=dict)
    hist: dict[tuple[str, str], list[t.HistoryEntry]] = field(default_factory=dict)
    log: list[tuple[Any, ...]] = field(default_factory=list)
    fail_on: str = ""
    history_gas_left: list[int | None] = field(default_factory=list)  # as each read was told

    def get(self, namespace: str, key: str) -> bytes | None:
        self.log.append(("get", namespace, key))
        if self.fail_on and key == self.fail_on:
            raise KeyError("backend refused " + key)
        return self.data.get((namespace, key))

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]:
        self.log.append(("range", namespace, start, end, limit))
        rows = sorted((k, v) for (ns, k), v in self.data.items() if ns == namespace and start <= k < end)
        return rows[:limit]

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[t.HistoryEntry]:
        self.history_gas_left.append(gas_left)
        if start is None and values:
            self.log.append(("history", namespace, key, limit))
        else:
            self.log.append(("history", namespace, key, limit, start, values))
        first = start or 0
        rows = self.hist.get((namespace, key), [])[first:first + limit]
        return rows if values else [replace(h, value=None, block_bytes=0) for h in rows]

    def put(self, namespace: str, key: str, value: bytes) -> None:
        self.log.append(("put", namespace, key, value))
        self.data[(namespace, key)] = value

    def delete(self, namespace: str, key: str) -> None:
        self.log.append(("delete", namespace, key))
        self.data.pop((namespace, key), None)

    def writes(self) -> list[tuple[Any, ...]]:
        return [e for e in self.log if e[0] in ("put", "delete")]


class Runner(Protocol):
    def invoke(self, inv: t.Invocation, backend: t.StateBackend) -> t.InvocationResult: ...


def make_inv(
    source: str,
    function: str,
    args: dict[str, Any] | bytes | None = None,
    *,
    gas: int = 1_000_000,
    limits: t.SandboxLimits | None = None,
    transient: dict[str, Any] | None = None,
    contract: str = "demo",
    tx_id: str = "tx-1",
    timestamp_ms: int = 1_700_000_000_000,
) -> t.Invocation:
    args_json = args if isinstance(args, bytes) else json.dumps(args or {}).encode()
    return t.Invocation(
        contract=contract,
        code_hash=hashlib.sha256(source.encode()).hexdigest(),
        source=source,
        function=function,
        args_json=args_json,
        tx_id=tx_id,
        timestamp_ms=timestamp_ms,
        caller=CALLER,
        transient={k: json.dumps(v).encode() for k, v in (transient or {}).items()},
        gas_limit=gas,
        limits=limits or t.SandboxLimits(),
    )


def call(
    runner: Runner,
    source: str,
    function: str,
    args: dict[str, Any] | bytes | None = None,
    backend: MemBackend | None = None,
    **kw: Any,
) -> t.InvocationResult:
    return runner.invoke(make_inv(source, function, args, **kw), backend or MemBackend())


def value(result: t.InvocationResult) -> Any:
    assert result.ok, (result.reason, result.message)
    return json.loads(result.result_json)


PING = """
from rxchain_contract import Context

def ping(ctx: Context, n: int) -> dict:
    return {"pong": n + 1}
"""


def assert_serving(runner: Runner) -> None:
    """A normal call works (used right after every hostile contract)."""
    r = call(runner, PING, "ping", {"n": 41})
    assert r.ok, (r.reason, r.message)
    assert r.result_json == b'{"pong":42}'


__all__ = ["CALLER", "PING", "MemBackend", "assert_serving", "call", "make_inv", "replace", "value"]
