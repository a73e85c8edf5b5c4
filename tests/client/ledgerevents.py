"""The blocks a contract test chain (tests/contracts) committed, as a peer's event stream
(``Gateway.Events``) sends them: every block from the one asked for, each with the statuses
of its transactions and the contract events of the VALID ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rxchain.v1 import services_pb2, transaction_pb2

from client.errors import RxClientError
from client.events import EventSource
from tests.contracts.chain import Chain, Outcome, Who
from tests.contracts.flows import approved, lock_and_dispense, settle
from tests.contracts.rxclient import World


class EventLedger:
    """Records every transaction ``chain`` commits from now on (its ``submit`` is wrapped);
    :meth:`events` is an ``EventSource`` over them. ``extra[block]``: events added to a
    block as they are (e.g. another insurer's, made up)."""

    def __init__(self, chain: Chain) -> None:
        self.committed: list[tuple[str, Outcome]] = []  # (contract, outcome), in commit order
        self.extra: dict[int, list[transaction_pb2.ContractEvent]] = {}
        self.height = 0
        submit = chain.submit

        def recorded(contract: str, fn: str, caller: Who, transient: Any = None, at_ms: int | None = None,
                     **args: Any) -> Outcome:
            out = submit(contract, fn, caller, transient, at_ms, **args)
            if out.ok and out.block is not None:
                self.committed.append((contract, out))
                self.height = max(self.height, out.block + 1)
            return out

        chain.submit = recorded  # type: ignore[method-assign]

    def events(self, start: int, contract: str, follow: bool) -> Iterator[services_pb2.EventsResponse]:
        assert not follow
        for n in range(start, max(self.height, max(self.extra, default=-1) + 1)):
            msg = services_pb2.EventsResponse(block_number=n)
            for name, out in self.committed:
                if out.block != n:
                    continue
                msg.txs.add(tx_id=out.tx_id, code=transaction_pb2.VALID, contract=name)
                if contract in ("", name):
                    for e in out.events:
                        msg.events.add(contract=name, name=e.name, payload=e.payload_json, tx_id=out.tx_id)
            msg.events.extend(e for e in self.extra.get(n, []) if contract in ("", e.contract))
            yield msg


def failing_at(source: EventSource, block: int, reason: str = "TIMEOUT") -> EventSource:
    """``source``, but its stream fails (``reason``, as ``Gateway.events`` raises a failed
    call) where it would send ``block``, or where it would end before it."""

    def events(start: int, contract: str, follow: bool) -> Iterator[services_pb2.EventsResponse]:
        for msg in source(start, contract, follow):
            if msg.block_number >= block:
                break
            yield msg
        raise RxClientError(reason, f"the stream failed before block {block}")
    return events


def settled_claims(w: World, n: int) -> list[dict[str, Any]]:
    """``n`` prescriptions issued, dispensed and settled by ins01's clerk: their claims."""
    out = []
    for i in range(n):
        prep = approved(w)
        lock_and_dispense(w, prep, trace_codes=[f"8123456000000000{300 + i}"]).unwrap()
        out.append(settle(w, prep).unwrap())
    return out
