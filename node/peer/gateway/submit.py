"""Gateway.Submit: check the envelope, forward it to the ordering service."""

from __future__ import annotations

from google.protobuf.message import DecodeError
from rxchain.v1 import services_pb2, transaction_pb2

from node.crypto.canonical import compute_tx_id
from node.errors import RxError
from node.peer.gateway.deps import GatewayDeps


def check_envelope(deps: GatewayDeps, envelope: transaction_pb2.Envelope) -> str:
    """Cheap checks before ordering; returns the tx id."""
    limits = deps.configs.current().config.limits
    size = envelope.ByteSize()
    if limits.max_envelope_bytes and size > limits.max_envelope_bytes:
        raise RxError("TOO_LARGE", f"envelope of {size} bytes exceeds {limits.max_envelope_bytes}")
    if not envelope.payload or not envelope.signature:
        raise RxError("BAD_PAYLOAD", "envelope payload and signature are required")
    try:
        tx = transaction_pb2.Transaction.FromString(envelope.payload)
        header = transaction_pb2.TxHeader.FromString(tx.header)
    except DecodeError as exc:
        raise RxError("BAD_PAYLOAD", f"envelope does not parse: {exc}") from exc
    if not header.HasField("creator") or header.tx_id != compute_tx_id(header.nonce, header.creator):
        raise RxError("BAD_TXID", "tx id is not derived from the nonce and the creator")
    return header.tx_id


def submit(deps: GatewayDeps, request: services_pb2.SubmitRequest) -> services_pb2.SubmitResponse:
    """Accepted by the ordering service, or RxError with the orderer's reason: a definite
    refusal, except SERVICE_UNAVAILABLE (no orderer answered) and COMMIT_UNKNOWN (an attempt
    whose answer was lost, then a refused retry: see node.peer.broadcast_client), after
    which the envelope may still commit."""
    if not request.HasField("envelope"):
        raise RxError("BAD_REQUEST", "envelope is required")
    tx_id = check_envelope(deps, request.envelope)
    if deps.ledger.tx_location(tx_id) is not None:
        # A replay of a committed tx would only be ordered to be marked DUPLICATE_TXID.
        # (Transact instead answers a replay with the original commit status.)
        raise RxError("DUPLICATE_TXID", f"transaction {tx_id} is already on the ledger")
    resp = deps.broadcast.submit(request.envelope)
    if not resp.accepted:
        raise RxError(resp.reason or "REFUSED", resp.message or "the ordering service refused")
    if deps.on_submit is not None:
        deps.on_submit()
    return services_pb2.SubmitResponse(tx_id=tx_id)
