"""In-memory world state for contract tests: a dict per namespace plus a history index.

Implements the sandbox's ``StateBackend`` protocol for one simulation (``Simulation``,
buffering writes like an endorser's read/write set) and commits a successful simulation as
a new fake block, recording every written key's version in the history index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.ledger.statedb import HistoryEntry as IndexEntry
from node.peer.history import MAX_HISTORY, select_history
from node.sandbox.types import HistoryEntry

MAX_BLOCK = 1 << 62  # no snapshot height here: tests may seed versions of any block


@dataclass
class MemoryState:
    """Committed state: ``(namespace, key) -> bytes`` plus per-key history, oldest first."""

    values: dict[tuple[str, str], bytes] = field(default_factory=dict)
    versions: dict[tuple[str, str], list[HistoryEntry]] = field(default_factory=dict)
    height: int = 0

    def commit(self, sim: Simulation, tx_id: str, timestamp_ms: int) -> int:
        """Apply a simulation's writes as block ``height + 1``; returns the block number.
        The block's transaction bytes (what ``ctx.history`` charges a block read by) are
        taken as ``block_bytes``, else those of its writes."""
        self.height += 1
        nbytes = sim.block_bytes or sum(len(k) + len(v or b"") for (_, k), v in sim.writes.items())
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
                block_bytes=nbytes,
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
    block_bytes: int = 0  # the committed block's transaction bytes, if a test sets them

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

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[HistoryEntry]:
        """As the peer answers (node.peer.history.select_history: pages, bytes and gas)."""
        versions = self.base.versions.get((namespace, key), [])
        index = [IndexEntry(h.block, 0, h.tx_id, h.timestamp_ms, h.is_delete)
                 for h in versions[start or 0:]]
        by_block = {h.block: h for h in versions}  # one version of a key per fake block
        limit = MAX_HISTORY if limit <= 0 else min(limit, MAX_HISTORY)
        return select_history(index, lambda e: (by_block[e.block].value, by_block[e.block].block_bytes),
                              key, limit, max_block=MAX_BLOCK, paged=start is not None,
                              values=values, gas_left=gas_left)

    def put(self, namespace: str, key: str, value: bytes) -> None:
        self.writes[(namespace, key)] = value

    def delete(self, namespace: str, key: str) -> None:
        self.writes[(namespace, key)] = None
