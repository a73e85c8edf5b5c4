"""Stand-ins for the ordering chain and the leader forwarder behind a BroadcastHandler, for
tests of the broadcast intake alone."""

from __future__ import annotations

from typing import Any

from node.identity.msp import MSP
from node.orderer.ticket import Outcome, Ticket


class OrdersAtOnce:
    """A leading orderer that orders every envelope at once, in block ``block_number``, and
    keeps what it was given."""

    def __init__(self, block_number: int = 1) -> None:
        self.block_number = block_number
        self.submitted: list[bytes] = []

    def submit(self, envelope: bytes, tx_id: str = "", is_config: bool = False) -> Ticket:
        self.submitted.append(envelope)
        return Ticket.done(Outcome(block_number=self.block_number), tx_id)

    def submit_many(self, items: Any) -> list[Ticket]:
        return [self.submit(env, "", cfg) for env, cfg in items]

    def leader_id(self) -> int:
        return 1

    def own_id(self) -> int:
        return 1


class NothingOrdered(OrdersAtOnce):
    """A leading orderer no envelope of the test may reach."""

    def submit(self, envelope: bytes, tx_id: str = "", is_config: bool = False) -> Ticket:
        raise AssertionError("nothing is ordered")

    def submit_many(self, items: Any) -> list[Ticket]:
        raise AssertionError("nothing is ordered")


class NoForward:
    """The forwarder of an orderer that leads: never used."""

    def submit(self, leader_id: int, envelope: bytes, tx_id: str) -> Ticket:
        raise AssertionError("this orderer leads: nothing is forwarded")


def no_msp() -> MSP:
    """The MSP of a validator whose envelopes are all refused before their creator is checked."""
    raise AssertionError("no envelope of these tests gets as far as its creator")
