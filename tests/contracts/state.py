"""In-memory world state for contract tests: a dict per namespace plus a history index.

Implements the sandbox's ``StateBackend`` protocol for one simulation (``Simulation``,
buffering writes like an endorser's read/write set) and commits a successful simulation as
a new fake block, recording every written key's version in the history index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.sandbox.types import HistoryEntry


@dataclass
class MemoryState:
    """Committed state: ``(namespace, key) -> bytes`` plus per-key history, oldest first."""

    values: dict[tuple[str, str], bytes] = field(default_factory=dict)
    versions: dict[tuple[str, str], list[HistoryEntry]] = field(default_factory=dict)
    height: int = 0

    def commit(self, sim: Simulation, tx_id: str, timestamp_ms: int) -> int:
        """Apply a simulation's writes as block ``height + 1``; returns the block number."""
        self.height += 1
        for nk, value in sim.writes.items():
            if value is None:
                self.values.pop(nk, None)
            else:
                self.values[nk] = value
            entry = HistoryEntry(
                tx_id=tx_id,
                block=self.height,
                timestamp_ms=timestamp_ms,
                is_delete=value is None,
                value=value,
            )
            self.versions.setdefault(nk, []).append(entry)
        return self.height

    def version(self, nk: tuple[str, str]) -> int:
        """Block of the key's last write (0 = never written): the MVCC read version."""
        versions = self.versions.get(nk)
        return versions[-1].block if versions else 0

    def stale_reads(self, sim: Simulation) -> list[tuple[str, str]]:
        """Keys whose committed version changed since ``sim`` read them (MVCC check)."""
        return sorted(nk for nk, ver in sim.reads.items() if self.version(nk) != ver)

    def keys(self, namespace: str) -> list[str]:
        return sorted(k for ns, k in self.values if ns == namespace)


@dataclass
class Simulation:
    """A StateBackend over committed state: reads see own writes, writes are buffered."""

    base: MemoryState
    writes: dict[tuple[str, str], bytes | None] = field(default_factory=dict)
    reads: dict[tuple[str, str], int] = field(default_factory=dict)

    def get(self, namespace: str, key: str) -> bytes | None:
        nk = (namespace, key)
        if nk in self.writes:
            return self.writes[nk]
        self.reads.setdefault(nk, self.base.version(nk))
        return self.base.values.get(nk)

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]:
        merged: dict[str, bytes | None] = {
            k: v for (ns, k), v in self.base.values.items() if ns == namespace and start <= k < end
        }
        for (ns, k), v in self.writes.items():
            if ns == namespace and start <= k < end:
                merged[k] = v
        out: list[tuple[str, bytes]] = []
        for k in sorted(merged):
            value = merged[k]
            if value is not None:
                out.append((k, value))
            if len(out) >= limit:
                break
        return out

    def history(self, namespace: str, key: str, limit: int) -> list[HistoryEntry]:
        return list(self.base.versions.get((namespace, key), []))[:limit]

    def put(self, namespace: str, key: str, value: bytes) -> None:
        self.writes[(namespace, key)] = value

    def delete(self, namespace: str, key: str) -> None:
        self.writes[(namespace, key)] = None
