"""Building and signing proposals and envelopes.

A client transaction goes: TxHeader (fresh nonce, tx id derived from nonce and creator,
timestamp from the injected clock) + ContractInvocation (canonical JSON args) -> Proposal
(+ transient private inputs) -> SignedProposal. After endorsement the gateway returns the
prepared Transaction bytes; :meth:`TxBuilder.envelope` checks they carry our own header and
invocation, and a response payload endorsed for that proposal whose response is the result the
gateway reported, and signs them into an Envelope.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from rxchain.v1 import transaction_pb2

from client.errors import RxClientError
from node.crypto.canonical import canonical_json, compute_tx_id, proposal_hash
from node.crypto.signing import Purpose, Signer

NONCE_BYTES = 24

Clock = Callable[[], int]
NonceSource = Callable[[int], bytes]


def wall_clock_ms() -> int:
    """Milliseconds since the epoch (the default client clock)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class BuiltProposal:
    """A signed proposal and the parts the client needs afterwards."""

    tx_id: str
    header_bytes: bytes
    invocation_bytes: bytes
    signed: transaction_pb2.SignedProposal
    timestamp_ms: int


def encode_transient(transient: Mapping[str, Any] | None) -> dict[str, bytes]:
    """Transient values as bytes: bytes pass through, anything else is canonical JSON."""
    out: dict[str, bytes] = {}
    for key, value in (transient or {}).items():
        out[key] = value if isinstance(value, bytes) else canonical_json(value)
    return out


class TxBuilder:
    """Builds and signs proposals and envelopes for one signer."""

    def __init__(self, signer: Signer, consortium_id: str, clock: Clock = wall_clock_ms,
                 nonce_source: NonceSource = os.urandom):
        self._signer = signer
        self._consortium_id = consortium_id
        self._clock = clock
        self._nonce = nonce_source

    @property
    def signer(self) -> Signer:
        """The signing identity."""
        return self._signer

    def proposal(self, contract: str, function: str, args: Mapping[str, Any],
                 transient: Mapping[str, Any] | None = None) -> BuiltProposal:
        """A freshly signed proposal invoking ``contract.function(**args)``."""
        if not contract or not function:
            raise RxClientError("BAD_ARGUMENTS", "contract and function are required")
        try:
            args_json = canonical_json(dict(args))
        except (TypeError, ValueError) as exc:
            raise RxClientError("BAD_ARGUMENTS", f"arguments are not canonical JSON: {exc}") from exc
        nonce = self._nonce(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES:
            raise RxClientError("INTERNAL", "nonce source returned the wrong length")
        creator = self._signer.identity
        tx_id = compute_tx_id(nonce, creator)
        now = self._clock()
        header = transaction_pb2.TxHeader(
            tx_id=tx_id, type=transaction_pb2.INVOKE, creator=creator, nonce=nonce,
            timestamp_ms=now, consortium_id=self._consortium_id,
        ).SerializeToString()
        invocation = transaction_pb2.ContractInvocation(
            contract=contract, function=function, args_json=args_json
        ).SerializeToString()
        proposal = transaction_pb2.Proposal(header=header, invocation=invocation)
        for key, value in encode_transient(transient).items():
            proposal.transient[key] = value
        proposal_bytes = proposal.SerializeToString()
        signed = transaction_pb2.SignedProposal(
            proposal_bytes=proposal_bytes, signature=self._signer.sign(Purpose.PROPOSAL, proposal_bytes)
        )
        return BuiltProposal(tx_id, header, invocation, signed, now)

    def envelope(self, built: BuiltProposal, prepared_transaction: bytes,
                 result: transaction_pb2.Response | None = None) -> transaction_pb2.Envelope:
        """Sign the prepared transaction after checking it is the one we proposed: our header
        and invocation, an endorsement, and a response payload made for this proposal (its
        proposal hash) with a successful response -- and, given ``result`` (the gateway's
        answer, which the caller is told), that very response (status and payload). The
        endorsers sign the response payload and validation commits its writes; the result
        beside it is the gateway's word only, so a gateway that answered one result and
        prepared another (a bug, a mix-up of two calls, a hostile peer) would have the caller
        act on a result that is not the one committed: BAD_PAYLOAD, and nothing is signed."""
        try:
            tx = transaction_pb2.Transaction.FromString(prepared_transaction)
        except DecodeError as exc:
            raise RxClientError("BAD_PAYLOAD", "gateway returned an unparsable transaction") from exc
        if tx.header != built.header_bytes or tx.invocation != built.invocation_bytes:
            raise RxClientError(
                "BAD_PAYLOAD", "prepared transaction does not carry our header and invocation"
            )
        if not tx.endorsements:
            raise RxClientError("BAD_PAYLOAD", "prepared transaction carries no endorsement")
        try:
            prp = transaction_pb2.ProposalResponsePayload.FromString(tx.response_payload)
        except DecodeError as exc:
            raise RxClientError("BAD_PAYLOAD", "prepared transaction's response payload does not parse") from exc
        if prp.proposal_hash != proposal_hash(built.header_bytes, built.invocation_bytes):
            raise RxClientError("BAD_PAYLOAD", "prepared transaction's response payload was made for "
                                "another proposal")
        if prp.response.status != 200:
            raise RxClientError("BAD_PAYLOAD", f"prepared transaction's response has status "
                                f"{prp.response.status}, not 200")
        if result is not None and (result.status != prp.response.status
                                   or result.payload != prp.response.payload):
            raise RxClientError("BAD_PAYLOAD", "the gateway's result is not the response the endorsers "
                                "signed in the prepared transaction")
        return transaction_pb2.Envelope(
            payload=prepared_transaction, signature=self._signer.sign(Purpose.ENVELOPE, prepared_transaction)
        )
