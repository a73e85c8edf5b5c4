"""Transaction simulator: the StateBackend a contract runs against during endorsement.

Reads come from one consistent state snapshot and are recorded with the version seen
(first read of a key wins); range reads record every key they returned, for the
validator's phantom check. Writes and deletes are buffered (last write wins) and never
reach the state. :meth:`TxSimulator.rwset` returns the canonical read/write set:
namespaces sorted by name, point reads and writes sorted by key, range queries in
execution order. The same simulation on two peers at the same height therefore yields
byte-identical results.

Semantics worth knowing: a read of a key this transaction already wrote returns the
buffered value and records no read (the result does not depend on committed state);
range reads see committed state only. Writes are allowed only to the invoked contract's
own namespace; namespaces starting with ``_`` are system namespaces. One range read returns
at most ``MAX_RANGE_BYTES`` of values (beyond: SIZE_LIMIT, the same on every peer at the
same height; the contract asks for fewer keys), so a contract cannot make the peer hold
``max_range_items`` x ``max_value_bytes`` (256 MiB on the sample consortium) at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rxchain.v1 import transaction_pb2

from node.errors import RxError
from node.ledger.statedb import RangeTooLarge, StateReader, Version, VersionedValue
from node.sandbox.types import SIZE_LIMIT, HistoryEntry

MAX_RANGE_BYTES = 16 * 1024 * 1024  # the values one range read may return (see above)


class HistorySource(Protocol):
    """Where a simulation's ``history`` reads come from (node.peer.history.LedgerHistory)."""

    def __call__(self, namespace: str, key: str, limit: int, start: int | None = None,
                 values: bool = True, gas_left: int | None = None) -> list[HistoryEntry]: ...


@dataclass(frozen=True)
class SimulationLimits:
    """Bounds on what one simulated transaction may write."""

    max_write_set_keys: int = 1000
    max_value_bytes: int = 262144
    max_key_bytes: int = 1024


def _no_history(namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[HistoryEntry]:
    return []


class _NsSet:
    __slots__ = ("ranges", "reads", "writes")

    def __init__(self) -> None:
        self.reads: dict[str, Version | None] = {}
        self.ranges: list[transaction_pb2.RangeQueryInfo] = []
        self.writes: dict[str, bytes | None] = {}  # None = delete


class TxSimulator:
    """Records the read/write set of one simulated transaction (see module docstring)."""

    def __init__(
        self,
        snapshot: StateReader,
        writable_namespace: str,
        limits: SimulationLimits = SimulationLimits(),
        history_source: HistorySource = _no_history,
    ) -> None:
        self._snap = snapshot
        self._own = writable_namespace
        self._limits = limits
        self._history = history_source
        self._ns: dict[str, _NsSet] = {}
        self._write_count = 0

    def _set(self, namespace: str) -> _NsSet:
        s = self._ns.get(namespace)
        if s is None:
            if not namespace or "\0" in namespace:
                raise RxError("BAD_KEY", f"bad namespace {namespace!r}")
            s = self._ns[namespace] = _NsSet()
        return s

    @staticmethod
    def _check_key(key: str) -> None:
        if not isinstance(key, str) or "\0" in key:
            raise RxError("BAD_KEY", "state keys are strings without NUL")

    # ------------------------------------------------------------------ reads

    def get(self, namespace: str, key: str) -> bytes | None:
        """The value of ``key`` (own buffered write first, else the snapshot)."""
        self._check_key(key)
        s = self._set(namespace)
        if key in s.writes:
            return s.writes[key]
        vv = self._snap.get(namespace, key)
        if key not in s.reads:
            s.reads[key] = None if vv is None else vv.version
        return None if vv is None else vv.value

    def peek(self, namespace: str, key: str) -> bytes | None:
        """What :meth:`get` would return, recording no read (the sandbox prefetches with it;
        a prefetched value the contract uses is read again through ``get``, which records it)."""
        self._check_key(key)
        s = self._ns.get(namespace)
        if s is not None and key in s.writes:
            return s.writes[key]
        vv = self._snap.get(namespace, key)
        return None if vv is None else vv.value

    def get_versioned(self, namespace: str, key: str) -> VersionedValue | None:
        """Like :meth:`get` but with the committed version (native system code only)."""
        self._check_key(key)
        s = self._set(namespace)
        vv = self._snap.get(namespace, key)
        if key not in s.reads and key not in s.writes:
            s.reads[key] = None if vv is None else vv.version
        return vv

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]:
        """Committed keys in [start, end) (``end == ""``: to the end of the namespace)."""
        self._check_key(start)
        self._check_key(end)
        if limit < 0:
            raise RxError("BAD_KEY", "range limit must be >= 0")
        s = self._set(namespace)
        try:
            rows = self._snap.range(namespace, start, end, limit, max_bytes=MAX_RANGE_BYTES)
        except RangeTooLarge as err:
            raise RxError(SIZE_LIMIT, err.message) from None
        info = transaction_pb2.RangeQueryInfo(
            start_key=start, end_key=end, exhausted=(limit == 0 or len(rows) < limit)
        )
        for key, vv in rows:
            info.reads.add(key=key, version=transaction_pb2.Version(
                block=vv.version.block, tx=vv.version.tx))
        s.ranges.append(info)
        return [(k, vv.value) for k, vv in rows]

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[HistoryEntry]:
        """Committed history of ``key`` (not MVCC-protected, like Fabric's history queries)."""
        self._check_key(key)
        return self._history(namespace, key, limit, start=start, values=values, gas_left=gas_left)

    # ------------------------------------------------------------------ writes

    def _check_write(self, namespace: str, key: str) -> _NsSet:
        self._check_key(key)
        if namespace != self._own:
            raise RxError(
                "ACCESS_DENIED", f"contract {self._own!r} may not write namespace {namespace!r}"
            )
        if not key or len(key.encode("utf-8")) > self._limits.max_key_bytes:
            raise RxError("BAD_KEY", f"key must be 1..{self._limits.max_key_bytes} bytes")
        s = self._set(namespace)
        if key not in s.writes:
            if self._write_count >= self._limits.max_write_set_keys:
                raise RxError(
                    "WRITE_SET_LIMIT",
                    f"more than {self._limits.max_write_set_keys} keys written",
                )
            self._write_count += 1
        return s

    def put(self, namespace: str, key: str, value: bytes) -> None:
        """Buffer a write (last write wins)."""
        if len(value) > self._limits.max_value_bytes:
            raise RxError(
                "SIZE_LIMIT", f"value of {len(value)} bytes exceeds {self._limits.max_value_bytes}"
            )
        s = self._check_write(namespace, key)
        s.writes[key] = bytes(value)

    def delete(self, namespace: str, key: str) -> None:
        """Buffer a delete."""
        s = self._check_write(namespace, key)
        s.writes[key] = None

    # ------------------------------------------------------------------ result

    def rwset(self) -> transaction_pb2.TxRwSet:
        """The canonical read/write set."""
        out = transaction_pb2.TxRwSet()
        for name in sorted(self._ns):
            s = self._ns[name]
            if not s.reads and not s.ranges and not s.writes:
                continue
            ns = out.ns_rwsets.add(namespace=name)
            for key in sorted(s.reads):
                ver = s.reads[key]
                r = ns.reads.add(key=key)
                if ver is not None:
                    r.version.SetInParent()
                    r.version.block = ver.block
                    r.version.tx = ver.tx
            ns.range_queries.extend(s.ranges)
            for key in sorted(s.writes):
                value = s.writes[key]
                if value is None:
                    ns.writes.add(key=key, is_delete=True)
                else:
                    ns.writes.add(key=key, value=value)
        return out

    def written_namespaces(self) -> Sequence[str]:
        """Namespaces with buffered writes (sorted)."""
        return sorted(n for n, s in self._ns.items() if s.writes)
