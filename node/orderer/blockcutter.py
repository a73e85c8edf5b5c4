"""Block cutter: batches envelopes into blocks by count, bytes and timeout (time injected).

Rules, applied per added envelope (as Fabric's blockcutter):

* an envelope larger than ``max_bytes`` on its own is cut as a block by itself (after
  cutting whatever was pending);
* if adding it would push the pending bytes over ``max_bytes``, the pending batch is cut
  first;
* after adding, a batch that reached ``max_tx_count`` is cut;
* :meth:`BlockCutter.cut_if_due` cuts a non-empty batch whose first envelope has waited
  ``timeout_ms`` (measured with the injected monotonic clock, in seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from rxchain.v1 import config_pb2

T = TypeVar("T")


@dataclass(frozen=True)
class BatchParams:
    """Cutting limits (from the consortium config's BatchParameters)."""

    max_tx_count: int
    max_bytes: int
    timeout_s: float

    def narrowest(self, other: BatchParams) -> BatchParams:
        """The smaller count and byte limits of the two (the timeout of ``self``)."""
        return BatchParams(max_tx_count=min(self.max_tx_count, other.max_tx_count),
                           max_bytes=min(self.max_bytes, other.max_bytes), timeout_s=self.timeout_s)

    @staticmethod
    def from_config(batch: config_pb2.BatchParameters) -> BatchParams:
        """Read BatchParameters, substituting safe minimums for unset (zero) fields."""
        return BatchParams(
            max_tx_count=max(1, batch.max_tx_count or 500),
            max_bytes=max(1, batch.max_bytes or 4 * 1024 * 1024),
            timeout_s=(batch.timeout_ms or 50) / 1000.0,
        )


@dataclass(frozen=True)
class Pending(Generic[T]):
    """One envelope waiting in the cutter, with the caller's tag (e.g. its ticket)."""

    envelope: bytes
    tag: T


class BlockCutter(Generic[T]):
    """Accumulates envelopes and returns the batches to turn into blocks."""

    def __init__(self, params: BatchParams, clock: Callable[[], float]) -> None:
        self._params = params
        self._clock = clock
        self._pending: list[Pending[T]] = []
        self._bytes = 0
        self._first_at = 0.0

    @property
    def params(self) -> BatchParams:
        """The limits in force."""
        return self._params

    def set_params(self, params: BatchParams) -> None:
        """Adopt new limits (after a config update); pending envelopes stay pending."""
        self._params = params

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, envelope: bytes, tag: T) -> list[list[Pending[T]]]:
        """Add one envelope; returns the batches cut because of it (possibly none)."""
        out: list[list[Pending[T]]] = []
        size = len(envelope)
        item = Pending(envelope, tag)
        if size > self._params.max_bytes:
            if self._pending:
                out.append(self._take())
            out.append([item])
            return out
        if self._pending and self._bytes + size > self._params.max_bytes:
            out.append(self._take())
        if not self._pending:
            self._first_at = self._clock()
        self._pending.append(item)
        self._bytes += size
        if len(self._pending) >= self._params.max_tx_count:
            out.append(self._take())
        return out

    def deadline(self) -> float | None:
        """Clock value at which the pending batch times out (None when empty)."""
        if not self._pending:
            return None
        return self._first_at + self._params.timeout_s

    def cut_if_due(self) -> list[Pending[T]] | None:
        """The pending batch if its timeout has passed, else None."""
        deadline = self.deadline()
        if deadline is None or self._clock() < deadline:
            return None
        return self._take()

    def cut(self) -> list[Pending[T]]:
        """Take whatever is pending now (may be empty)."""
        return self._take()

    def _take(self) -> list[Pending[T]]:
        batch = self._pending
        self._pending = []
        self._bytes = 0
        return batch
