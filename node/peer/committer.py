"""Committer: validate a block from the orderers, commit it, tell the listeners.

One block at a time (the caller -- the deliver client -- feeds blocks in order). A block
refused at block level (bad number/hash/data hash/orderer signatures) raises RxError and
changes nothing. Listeners run after the LevelDB batch is written, in registration order;
a listener's exception is logged and never undoes the commit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from rxchain.v1 import block_pb2

from node.crypto.signing import Verifier
from node.errors import RxError
from node.ledger.ledger import CommitResult, Ledger
from node.peer.validator import PolicyProvider, ValidatedBlock, Validator
from node.protocol import require_supported

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommittedBlock:
    """What listeners receive: the stored block copy, its validation result and hashes."""

    validated: ValidatedBlock
    result: CommitResult


Listener = Callable[[CommittedBlock], None]


class Committer:
    """Validates and commits blocks to a :class:`Ledger` (genesis must be committed)."""

    def __init__(
        self,
        ledger: Ledger,
        verifier: Verifier,
        policies: PolicyProvider,
        *,
        orderer_quorum: int = 1,
    ) -> None:
        config = ledger.current_config()
        if config is None:
            raise RxError("BAD_CONFIG", "ledger has no genesis block: commit it first")
        self.ledger = ledger
        self.validator = Validator(
            ledger.state, config, verifier, policies, orderer_quorum=orderer_quorum
        )
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` after every commit."""
        self._listeners.append(listener)

    def commit_block(self, block: block_pb2.Block) -> CommittedBlock:
        """Validate and commit the next block; RxError if refused at block level."""
        with self._lock:
            validated = self.validator.validate(
                block, self.ledger.height(), self.ledger.blocks.last_hash()
            )
            result = self.ledger.commit(validated.block, validated.outcomes)
            if validated.new_config is not None:
                self.validator.adopt(validated.new_config)
            committed = CommittedBlock(validated, result)
        for listener in list(self._listeners):
            try:
                listener(committed)
            except Exception:  # noqa: BLE001 - a listener must never undo a commit
                _log.exception("event=commit_listener_failed block=%d", result.number)
        if validated.new_config is not None:
            # committed; the blocks after it are judged by rules this release may lack: the
            # peer stops (PROTOCOL_UNSUPPORTED, fatal to the commit loop) rather than guess
            require_supported(validated.new_config.config, f"block {result.number}")
        return committed
