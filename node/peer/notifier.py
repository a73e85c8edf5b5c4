"""Commit notifications: who waits for which block or transaction.

The committer calls :meth:`CommitNotifier.on_commit` after every block is durably
committed. Waiters either block on a height (:meth:`wait_height`, bounded) or register a
callback for a tx id (:meth:`watch`), which is how CommitStatus and the Transact stream
learn a tx's outcome without a thread per transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from node.peer.committer import CommittedBlock


@dataclass(frozen=True)
class TxCommitted:
    """A transaction's outcome."""

    tx_id: str
    block: int
    code: int


TxCallback = Callable[[TxCommitted], None]


class CommitNotifier:
    """Height condition plus per-tx-id callbacks (see module docstring)."""

    def __init__(self, height: int) -> None:
        self._cond = threading.Condition()
        self._height = height
        self._closed = False
        self._watchers: dict[str, list[TxCallback]] = {}

    @property
    def height(self) -> int:
        """Height after the last notified commit."""
        return self._height

    def on_commit(self, committed: CommittedBlock) -> None:
        """Committer listener."""
        number = committed.result.number
        fired: list[tuple[TxCallback, TxCommitted]] = []
        with self._cond:
            self._height = max(self._height, number + 1)
            if self._watchers:
                for o in committed.validated.outcomes:
                    if o.tx_id and o.tx_id in self._watchers:
                        info = TxCommitted(o.tx_id, number, o.code)
                        fired.extend((cb, info) for cb in self._watchers.pop(o.tx_id))
            self._cond.notify_all()
        for cb, info in fired:
            cb(info)

    def wait_height(self, height: int, timeout_s: float) -> bool:
        """Wait until ``height`` blocks are committed, the timeout passes or we close."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._height >= height or self._closed, timeout=max(0.0, timeout_s)
            ) and self._height >= height

    def watch(self, tx_id: str, callback: TxCallback) -> Callable[[], None]:
        """Call ``callback`` when ``tx_id`` commits; returns a function that cancels it."""
        with self._cond:
            self._watchers.setdefault(tx_id, []).append(callback)

        def cancel() -> None:
            with self._cond:
                cbs = self._watchers.get(tx_id)
                if cbs and callback in cbs:
                    cbs.remove(callback)
                    if not cbs:
                        del self._watchers[tx_id]

        return cancel

    def close(self) -> None:
        """Wake every waiter (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed
