"""Ledger errors: an :class:`RxError` subclass so callers can catch either.

Reason codes used by the ledger: LEDGER_CORRUPT (checksum/parse/hash mismatch on disk),
BAD_BLOCK_NUMBER, BAD_PREVIOUS_HASH (append out of order or off the chain),
BLOCK_NOT_FOUND, TX_NOT_FOUND, IO_ERROR, CLOSED, STATE_MISMATCH (state behind/ahead of the
block store in a way replay cannot fix).
"""

from __future__ import annotations

from node.errors import RxError


class LedgerError(RxError):
    """A ledger-level failure with a reason code (and the block concerned, if known)."""

    def __init__(self, reason: str, message: str = "", block: int | None = None) -> None:
        super().__init__(reason, message)
        self.block = block
