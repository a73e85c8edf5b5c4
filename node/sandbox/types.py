"""Value types shared by the host side of the sandbox (peer) and the worker.

Everything here is a frozen dataclass or a Protocol; nothing does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

# Reason codes of runtime-side failures (contract-raised reasons are free-form upper-case codes).
OUT_OF_GAS = "OUT_OF_GAS"
RECURSION_LIMIT = "RECURSION_LIMIT"
SIZE_LIMIT = "SIZE_LIMIT"
WRITE_SET_LIMIT = "WRITE_SET_LIMIT"
MEMORY_LIMIT = "MEMORY_LIMIT"
TIMEOUT = "TIMEOUT"
WORKER_CRASHED = "WORKER_CRASHED"
BAD_ARGUMENTS = "BAD_ARGUMENTS"
UNKNOWN_FUNCTION = "UNKNOWN_FUNCTION"
CONTRACT_REJECTED = "CONTRACT_REJECTED"
# An exception other than ContractError escaped the contract (KeyError, TypeError, ...).
CONTRACT_EXCEPTION = "CONTRACT_EXCEPTION"
# The returned value / a stored value / an event payload is not canonical JSON (float, set, ...).
BAD_VALUE = "BAD_VALUE"
# The state backend refused a request (e.g. bad key); the backend's own reason is used if it has one.
STATE_ERROR = "STATE_ERROR"

RUNTIME_REASONS = frozenset(
    {
        OUT_OF_GAS,
        RECURSION_LIMIT,
        SIZE_LIMIT,
        WRITE_SET_LIMIT,
        MEMORY_LIMIT,
        TIMEOUT,
        WORKER_CRASHED,
        BAD_ARGUMENTS,
        UNKNOWN_FUNCTION,
        CONTRACT_REJECTED,
        CONTRACT_EXCEPTION,
        BAD_VALUE,
        STATE_ERROR,
    }
)


@dataclass(frozen=True)
class SandboxLimits:
    """Every limit of one invocation; per-invocation values come from the consortium config.

    ``memory_bytes`` and ``cpu_seconds`` are applied to worker processes (RLIMIT_AS per
    worker, RLIMIT_CPU per invocation); ``wall_timeout_s`` is enforced by the host.
    All other limits are deterministic and enforced inside the metered contract code.
    """

    max_recursion_depth: int = 64
    max_str_len: int = 1 << 20  # characters of any one string built by an operation
    max_collection_len: int = 1 << 20  # elements of any one list/tuple/dict/set built by an op
    max_int_bits: int = 4096  # magnitude of any integer produced by arithmetic
    max_value_bytes: int = 1 << 20  # one state value / result / event payload, canonical JSON
    max_key_len: int = 512  # UTF-8 bytes of a state key
    max_write_keys: int = 10_000  # distinct keys put/deleted by one invocation
    max_write_bytes: int = 8 << 20  # total bytes of keys+values written by one invocation
    max_events: int = 64
    max_range_items: int = 1000  # upper bound for ctx.range/range_from limit
    max_history_items: int = 1000
    max_args_bytes: int = 1 << 20
    memory_bytes: int = 1 << 30  # RLIMIT_AS of a worker process
    cpu_seconds: int = 10  # RLIMIT_CPU budget of one invocation (soft, process-wide)
    wall_timeout_s: float = 10.0  # host-side wall-clock timeout of one invocation


@dataclass(frozen=True)
class CallerInfo:
    """Identity of the transaction's creator, as derived by the peer from the certificate."""

    org: str
    role: str
    name: str = ""
    attrs: Mapping[str, str] = field(default_factory=dict)
    org_kind: str = ""
    hospital_level: str = ""


@dataclass(frozen=True)
class HistoryEntry:
    """One committed version of a key (oldest first in history answers).

    ``block_bytes``: the bytes of the transactions of the block the value was read from (the
    sum of its envelopes, the same on every peer: the block's data hash covers them), which
    ``ctx.history`` charges gas for (``api.history_gas``); 0 when no block was read (a
    delete, an answer without values, a backend without blocks)."""

    tx_id: str
    block: int
    timestamp_ms: int
    is_delete: bool
    value: bytes | None
    block_bytes: int = 0


@dataclass(frozen=True)
class ContractEvent:
    """An event emitted by a contract: name plus canonical JSON payload."""

    name: str
    payload_json: bytes


@dataclass(frozen=True)
class Invocation:
    """One contract function call to simulate."""

    contract: str  # namespace of the contract (its state keys live there)
    code_hash: str  # committed hash of the contract package (cache key of compiled code)
    source: str  # contract source; must be the one whose package hashes to code_hash
    function: str
    args_json: bytes  # canonical JSON object of keyword arguments
    tx_id: str
    timestamp_ms: int
    caller: CallerInfo
    transient: Mapping[str, bytes] = field(default_factory=dict)  # name -> JSON bytes
    gas_limit: int = 10_000_000
    limits: SandboxLimits = field(default_factory=SandboxLimits)


@dataclass(frozen=True)
class InvocationResult:
    """Outcome of an invocation; ``ok`` False carries a reason code and message."""

    ok: bool
    reason: str
    message: str
    result_json: bytes
    events: tuple[ContractEvent, ...]
    gas_used: int


class StateBackend(Protocol):
    """State access used while simulating; implemented by the peer (records read/write sets)."""

    def get(self, namespace: str, key: str) -> bytes | None: ...

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]: ...

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[HistoryEntry]:
        """Committed versions of ``key``, oldest first (``ctx.history``; api.py says what
        ``start``, ``values`` and ``gas_left`` mean: None is the call without them)."""
        ...

    def put(self, namespace: str, key: str, value: bytes) -> None: ...

    def delete(self, namespace: str, key: str) -> None: ...


# A non-recording read: what ``get`` would return for a key not written by this invocation.
PeekFn = Callable[[str, str], "bytes | None"]


# The C stack of every contract worker (RLIMIT_STACK, set by the worker whatever the peer
# inherited; see worker.py): the same on every peer, so C-level recursion fails alike.
WORKER_STACK_BYTES = 8 << 20
