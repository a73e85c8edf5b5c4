"""Helpers for peer tests: signers, proposals, envelopes and orderer-signed blocks."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rxchain.v1 import block_pb2, transaction_pb2

from node.crypto.canonical import block_data_hash, block_header_hash, canonical_json, compute_tx_id
from node.crypto.signing import Purpose, Signer, load_signer


def user_signer(home: Path, org: str, user: str) -> Signer:
    d = home / "orgs" / org / "users" / user
    return load_signer(d / "cert.pem", d / "key.pem", org)


def node_signer(home: Path, name: str, org: str) -> Signer:
    d = home / "nodes" / name
    return load_signer(d / "cert.pem", d / "key.pem", org)


class ProposalKit:
    """Builds signed proposals and envelopes with a seeded nonce source."""

    def __init__(self, consortium_id: str, rng: random.Random) -> None:
        self.consortium_id = consortium_id
        self.rng = rng

    def proposal(
        self,
        creator: Signer,
        contract: str,
        function: str,
        args: Mapping[str, Any] | None = None,
        *,
        timestamp_ms: int,
        transient: Mapping[str, bytes] | None = None,
        nonce: bytes | None = None,
    ) -> transaction_pb2.SignedProposal:
        nonce = nonce if nonce is not None else self.rng.randbytes(24)
        header = transaction_pb2.TxHeader(
            tx_id=compute_tx_id(nonce, creator.identity),
            type=transaction_pb2.INVOKE,
            creator=creator.identity,
            nonce=nonce,
            timestamp_ms=timestamp_ms,
            consortium_id=self.consortium_id,
        )
        inv = transaction_pb2.ContractInvocation(
            contract=contract, function=function, args_json=canonical_json(dict(args or {}))
        )
        prop = transaction_pb2.Proposal(
            header=header.SerializeToString(), invocation=inv.SerializeToString()
        )
        for k, v in (transient or {}).items():
            prop.transient[k] = v
        raw = prop.SerializeToString()
        return transaction_pb2.SignedProposal(proposal_bytes=raw, signature=creator.sign(Purpose.PROPOSAL, raw))


def envelope(
    creator: Signer,
    signed: transaction_pb2.SignedProposal,
    responses: Sequence[transaction_pb2.ProposalResponse],
) -> bytes:
    """The creator-signed envelope of an endorsed proposal."""
    prop = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
    tx = transaction_pb2.Transaction(
        header=prop.header, invocation=prop.invocation, response_payload=responses[0].payload
    )
    for r in responses:
        tx.endorsements.append(r.endorsement)
    payload = tx.SerializeToString()
    return transaction_pb2.Envelope(payload=payload, signature=creator.sign(Purpose.ENVELOPE, payload)).SerializeToString()


def make_block(
    number: int, previous_hash: bytes, envelopes: Sequence[bytes], orderer: Signer, timestamp_ms: int = 0
) -> block_pb2.Block:
    """An orderer-signed block (stamped ``timestamp_ms``; 0: no stamp)."""
    b = block_pb2.Block()
    b.header.number = number
    b.header.previous_hash = previous_hash
    b.header.data_hash = block_data_hash(list(envelopes))
    b.header.timestamp_ms = timestamp_ms
    b.data.envelopes.extend(envelopes)
    sig = b.metadata.orderer_signatures.add()
    sig.signer.CopyFrom(orderer.identity)
    sig.signature = orderer.sign(Purpose.BLOCK, block_header_hash(b.header))
    return b


def payload_json(resp: transaction_pb2.ProposalResponse) -> Any:
    return json.loads(resp.response.payload)
