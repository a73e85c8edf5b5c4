"""Ticket: the pending answer to one broadcast envelope, resolved by another thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass

ACCEPTED = ""
BAD_PAYLOAD = "BAD_PAYLOAD"
BAD_SIGNATURE = "BAD_SIGNATURE"
BAD_TXID = "BAD_TXID"
UNKNOWN_CREATOR = "UNKNOWN_CREATOR"
CLOCK_SKEW = "CLOCK_SKEW"
TOO_LARGE = "TOO_LARGE"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
NOT_LEADER = "NOT_LEADER"
# the envelope's timestamp is too far from the leader's block stamp, though the orderer that
# took it found it within the bound of its own clock: the orderers' clocks disagree (retryable)
ORDERER_CLOCK_SKEW = "ORDERER_CLOCK_SKEW"


@dataclass(frozen=True)
class Outcome:
    """Final answer for one envelope: accepted (reason empty) or a reason code."""

    reason: str = ACCEPTED
    message: str = ""
    block_number: int = 0

    @property
    def accepted(self) -> bool:
        """True when the envelope was ordered."""
        return self.reason == ACCEPTED


class Ticket:
    """Set once (first outcome wins); waiters block with a timeout."""

    __slots__ = ("_event", "_outcome", "tx_id")

    def __init__(self, tx_id: str = "") -> None:
        self.tx_id = tx_id
        self._event = threading.Event()
        self._outcome: Outcome | None = None

    @staticmethod
    def done(outcome: Outcome, tx_id: str = "") -> Ticket:
        """An already-resolved ticket."""
        t = Ticket(tx_id)
        t.resolve(outcome)
        return t

    def resolve(self, outcome: Outcome) -> None:
        """Set the outcome unless one is already set."""
        if self._outcome is None:
            self._outcome = outcome
            self._event.set()

    def peek(self) -> Outcome | None:
        """The outcome if already set (never blocks)."""
        return self._outcome

    def wait(self, timeout_s: float) -> Outcome | None:
        """The outcome, or None if not resolved within ``timeout_s``."""
        if self._event.wait(timeout_s):
            return self._outcome
        return None
