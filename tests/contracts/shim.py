"""Stand-in executor used only until node.sandbox's runtime is importable.

Executes contract source directly (no metering, no isolation) with a Context that mirrors
the documented contract API, so the contract tests can be written before the sandbox is
finished. ``tests/contracts/chain.py`` prefers the real sandbox whenever it exists.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import types
from collections.abc import Mapping
from typing import Any

from node.sandbox import canonical
from node.sandbox.types import (
    CallerInfo,
    ContractEvent,
    Invocation,
    InvocationResult,
    StateBackend,
)


class ContractError(Exception):
    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Caller:
    def __init__(self, info: CallerInfo) -> None:
        self.org = info.org
        self.role = info.role
        self.name = info.name
        self.attrs = dict(info.attrs)
        self.org_kind = info.org_kind
        self.hospital_level = info.hospital_level


class ShimContext:
    def __init__(self, inv: Invocation, backend: StateBackend) -> None:
        self.tx_id = inv.tx_id
        self.timestamp_ms = inv.timestamp_ms
        self.contract = inv.contract
        self.caller = _Caller(inv.caller)
        self._inv = inv
        self._b = backend
        self.events: list[ContractEvent] = []

    def get(self, key: str) -> Any:
        return self.get_from(self.contract, key)

    def get_from(self, namespace: str, key: str) -> Any:
        raw = self._b.get(namespace, key)
        return None if raw is None else canonical.decode(raw, "state")

    def put(self, key: str, value: Any) -> None:
        self._b.put(self.contract, key, canonical.dumps(value))

    def delete(self, key: str) -> None:
        self._b.delete(self.contract, key)

    def range(self, start: str, end: str, limit: int = 100) -> list[tuple[str, Any]]:
        return self.range_from(self.contract, start, end, limit)

    def range_from(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, Any]]:
        return [
            (k, canonical.decode(v, "state"))
            for k, v in self._b.range(namespace, start, end, limit)
        ]

    def history(self, key: str, limit: int = 100, start: int | None = None,
                values: bool = True) -> list[dict[str, Any]]:
        return [
            {
                "tx_id": h.tx_id,
                "block": h.block,
                "timestamp_ms": h.timestamp_ms,
                "is_delete": h.is_delete,
                "value": None if h.value is None or not values else canonical.decode(h.value, "state"),
            }
            for h in self._b.history(self.contract, key, limit, start=start, values=values)
        ]

    def transient(self, name: str) -> Any:
        raw = self._inv.transient.get(name)
        return None if raw is None else canonical.decode(raw, "transient")

    def emit(self, name: str, payload: Any) -> None:
        self.events.append(ContractEvent(name=name, payload_json=canonical.dumps(payload)))

    def fail(self, reason: str, message: str = "") -> None:
        raise ContractError(reason, message)

    def sha256_hex(self, data: str) -> str:
        return hashlib.sha256(data.encode("utf-8")).hexdigest()

    def hmac_sha256_hex(self, key_hex: str, data: str) -> str:
        return hmac.new(bytes.fromhex(key_hex), data.encode("utf-8"), hashlib.sha256).hexdigest()


def _load(source: str) -> dict[str, Any]:
    mod = types.ModuleType("rxchain_contract")
    mod.Context = ShimContext  # type: ignore[attr-defined]
    mod.ContractError = ContractError  # type: ignore[attr-defined]
    saved = sys.modules.get("rxchain_contract")
    sys.modules["rxchain_contract"] = mod
    try:
        namespace: dict[str, Any] = {}
        exec(compile(source, "<contract>", "exec"), namespace)  # test-only stand-in
    finally:
        if saved is None:
            del sys.modules["rxchain_contract"]
        else:
            sys.modules["rxchain_contract"] = saved
    return namespace


def run(inv: Invocation, backend: StateBackend, cache: dict[str, Mapping[str, Any]]) -> InvocationResult:
    module = cache.get(inv.code_hash)
    if module is None:
        module = _load(inv.source)
        cache[inv.code_hash] = module
    fn = module.get(inv.function)
    if inv.function.startswith("_") or not callable(fn):
        return InvocationResult(False, "UNKNOWN_FUNCTION", inv.function, b"", (), 0)
    ctx = ShimContext(inv, backend)
    try:
        value = fn(ctx, **json.loads(inv.args_json))
    except ContractError as exc:
        return InvocationResult(False, exc.reason, exc.message, b"", (), 0)
    return InvocationResult(True, "", "", canonical.dumps(value), tuple(ctx.events), 0)
