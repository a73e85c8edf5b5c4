"""Gateway.Events: per-block tx statuses and contract events, from a checkpoint, then follow.

Who is served what (decided per caller, by the role of its TLS certificate, checked with the
MSP first): the member organisations' staff and nodes (:data:`FULL_EVENTS_ROLES`, the roles
that may stream whole blocks anyway) get every transaction's status and every VALID
transaction's contract events. Any other certificate -- a patient's -- gets only the
transactions its own certificate created (the creator identity's certificate, byte for byte)
and their events, marked ``caller_txs_only``: the events of the prescription contract name
every prescription's id, status and acting organisation, which a patient must not learn of
other patients. Her own transactions' events are what her Endorse answer already held; what
others did to her prescriptions she reads with the contracts' queries (``patient_prescriptions``,
``show``, ``trace``, ``audit_trail``), which check that she is their patient. The filter
costs one comparison per transaction (the header is decoded anyway), never a contract call,
and is the same on every peer for the same block and certificate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, services_pb2, transaction_pb2

from node.errors import RxError
from node.identity.caller import FULL_EVENTS_ROLES
from node.identity.msp import Principal
from node.peer.gateway.deps import GatewayDeps

POLL_S = 0.5


def own_txs_only(caller: Principal) -> bytes | None:
    """None when ``caller`` is served every transaction (its role is in
    :data:`FULL_EVENTS_ROLES`), else its certificate (DER): the creator whose transactions
    alone it is served."""
    return None if caller.role in FULL_EVENTS_ROLES else caller.cert_der


def block_events(block: block_pb2.Block, contract: str = "",
                 creator_der: bytes | None = None) -> services_pb2.EventsResponse:
    """The events of one committed block (contract events only of VALID txs); with
    ``creator_der``, only those of the transactions whose creator's certificate it is
    (an empty one matches none)."""
    out = services_pb2.EventsResponse(block_number=block.header.number,
                                      caller_txs_only=creator_der is not None)
    codes = block.metadata.validation_codes
    for i, env_bytes in enumerate(block.data.envelopes):
        code = codes[i] if i < len(codes) else transaction_pb2.TX_VALIDATION_CODE_UNSPECIFIED
        status = services_pb2.TxStatus(code=code)
        prp = None
        try:
            env = transaction_pb2.Envelope.FromString(env_bytes)
            tx = transaction_pb2.Transaction.FromString(env.payload)
            header = transaction_pb2.TxHeader.FromString(tx.header)
            if creator_der is not None and (not creator_der or header.creator.cert_der != creator_der):
                continue  # another creator's: not even its tx id is told
            status.tx_id = header.tx_id
            if tx.invocation:
                inv = transaction_pb2.ContractInvocation.FromString(tx.invocation)
                status.contract, status.function = inv.contract, inv.function
            if code == transaction_pb2.VALID and tx.response_payload:
                prp = transaction_pb2.ProposalResponsePayload.FromString(tx.response_payload)
        except DecodeError:
            if creator_der is not None:
                continue  # whose it is cannot be told
        if contract and status.contract != contract:
            continue
        out.txs.append(status)
        if prp is not None:
            out.events.extend(prp.events)
    return out


def events(
    deps: GatewayDeps, request: services_pb2.EventsRequest, is_active: Callable[[], bool],
    creator_der: bytes | None = None,
) -> Iterator[services_pb2.EventsResponse]:
    """Stream events from ``start_block``; without ``follow``, stop at the current height.
    ``creator_der`` (:func:`own_txs_only`): only the transactions that certificate created."""
    if len(request.contract) > 64:
        raise RxError("BAD_REQUEST", "contract name too long")
    number = request.start_block
    end = None if request.follow else deps.ledger.height()
    while is_active() and not deps.notifier.closed:
        if end is not None and number >= end:
            return
        if number < deps.ledger.height():
            yield block_events(deps.ledger.block(number), request.contract, creator_der)
            number += 1
            continue
        deps.notifier.wait_height(number + 1, POLL_S)
