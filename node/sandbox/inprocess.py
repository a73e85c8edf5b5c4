"""In-process runner: the sandbox's semantics without the worker process.

For tests and the benchmark's comparison only -- it gives NO isolation (no rlimits, no
seccomp, no timeout), and set iteration order follows this process's hash seed.
"""

from __future__ import annotations

import threading

from node.sandbox import types as t
from node.sandbox.api import failed_read_gas, valid_reason
from node.sandbox.engine import Engine, bad_invocation, invalid_invocation, rejected_result
from node.sandbox.errors import ContractRejected, StateError


def state_error(exc: Exception) -> StateError:
    """Backend failure -> uncatchable abort carrying the backend's reason if it has one."""
    reason = getattr(exc, "reason", None)
    code = reason if isinstance(reason, str) and valid_reason(reason) else t.STATE_ERROR
    return StateError(f"{type(exc).__name__}: {exc}", code, failed_read_gas(exc))


class BackendHost:
    """StateHost over a StateBackend for one invocation (writes go to ``namespace``)."""

    def __init__(self, backend: t.StateBackend, namespace: str) -> None:
        self._backend = backend
        self._namespace = namespace

    def get(self, namespace: str, key: str) -> bytes | None:
        try:
            return self._backend.get(namespace, key)
        except Exception as exc:  # noqa: BLE001 - any backend failure aborts the call
            raise state_error(exc) from None

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]:
        try:
            return list(self._backend.range(namespace, start, end, limit))
        except Exception as exc:  # noqa: BLE001 - any backend failure aborts the call
            raise state_error(exc) from None

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[t.HistoryEntry]:
        try:
            return list(self._backend.history(namespace, key, limit, start=start, values=values,
                                              gas_left=gas_left))
        except Exception as exc:  # noqa: BLE001 - any backend failure aborts the call
            raise state_error(exc) from None

    def put(self, key: str, value: bytes) -> None:
        try:
            self._backend.put(self._namespace, key, value)
        except Exception as exc:  # noqa: BLE001 - any backend failure aborts the call
            raise state_error(exc) from None

    def delete(self, key: str) -> None:
        try:
            self._backend.delete(self._namespace, key)
        except Exception as exc:  # noqa: BLE001 - any backend failure aborts the call
            raise state_error(exc) from None


class InProcessRunner:
    """Same results, writes and gas as ``Sandbox`` (see module docstring for the caveats)."""

    def __init__(self, *, module_cache: bool = True) -> None:
        self._engine = Engine(module_cache=module_cache)
        self._lock = threading.Lock()

    def invoke(self, inv: t.Invocation, backend: t.StateBackend) -> t.InvocationResult:
        problem = invalid_invocation(inv)
        if problem is not None:
            return bad_invocation(problem)
        with self._lock:
            compiled = self._engine.cached(inv.code_hash)
            if compiled is None:
                try:
                    compiled = self._engine.load(inv.code_hash, inv.source)
                except ContractRejected as exc:
                    return rejected_result(exc)
            return self._engine.run(
                compiled,
                contract=inv.contract,
                function=inv.function,
                args_json=inv.args_json,
                tx_id=inv.tx_id,
                timestamp_ms=inv.timestamp_ms,
                caller=inv.caller,
                transient=dict(inv.transient),
                gas_limit=inv.gas_limit,
                limits=inv.limits,
                host=BackendHost(backend, inv.contract),
            )
