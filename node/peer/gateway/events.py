"""Gateway.Events: per-block tx statuses and contract events, from a checkpoint, then follow."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, services_pb2, transaction_pb2

from node.errors import RxError
from node.peer.gateway.deps import GatewayDeps

POLL_S = 0.5


def block_events(block: block_pb2.Block, contract: str = "") -> services_pb2.EventsResponse:
    """The events of one committed block (contract events only of VALID txs)."""
    out = services_pb2.EventsResponse(block_number=block.header.number)
    codes = block.metadata.validation_codes
    for i, env_bytes in enumerate(block.data.envelopes):
        code = codes[i] if i < len(codes) else transaction_pb2.TX_VALIDATION_CODE_UNSPECIFIED
        status = services_pb2.TxStatus(code=code)
        prp = None
        try:
            env = transaction_pb2.Envelope.FromString(env_bytes)
            tx = transaction_pb2.Transaction.FromString(env.payload)
            status.tx_id = transaction_pb2.TxHeader.FromString(tx.header).tx_id
            if tx.invocation:
                inv = transaction_pb2.ContractInvocation.FromString(tx.invocation)
                status.contract, status.function = inv.contract, inv.function
            if code == transaction_pb2.VALID and tx.response_payload:
                prp = transaction_pb2.ProposalResponsePayload.FromString(tx.response_payload)
        except DecodeError:
            pass
        if contract and status.contract != contract:
            continue
        out.txs.append(status)
        if prp is not None:
            out.events.extend(prp.events)
    return out


def events(
    deps: GatewayDeps, request: services_pb2.EventsRequest, is_active: Callable[[], bool]
) -> Iterator[services_pb2.EventsResponse]:
    """Stream events from ``start_block``; without ``follow``, stop at the current height."""
    if len(request.contract) > 64:
        raise RxError("BAD_REQUEST", "contract name too long")
    number = request.start_block
    end = None if request.follow else deps.ledger.height()
    while is_active() and not deps.notifier.closed:
        if end is not None and number >= end:
            return
        if number < deps.ledger.height():
            yield block_events(deps.ledger.block(number), request.contract)
            number += 1
            continue
        deps.notifier.wait_height(number + 1, POLL_S)
