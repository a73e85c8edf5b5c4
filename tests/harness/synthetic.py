"""Synthetic ledgers with real signatures, for testing the checker and tamper detection.

:class:`SyntheticChain` signs transactions as real members of a netgen consortium
(creator signature, a peer endorsement, the orderer's block signature), chains the
blocks, stamps validation codes and the state hash exactly as a committing peer does
(:func:`node.ledger.txwrites.outcomes_from_block` + :func:`next_state_hash`), and can
write them into a block store that ``verify_ledger`` accepts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from netgen import GeneratedNetwork
from rxchain.v1 import block_pb2, identity_pb2, transaction_pb2

from node.crypto.canonical import block_data_hash, block_header_hash, compute_tx_id, proposal_hash
from node.crypto.signing import Purpose, Signer, load_signer
from node.genesis import read_genesis
from node.ledger.blockstore import BlockStore
from node.ledger.statedb import ZERO_HASH, next_state_hash
from node.ledger.txwrites import outcomes_from_block

VALID = transaction_pb2.VALID


class SyntheticChain:
    """Builds a signed, chained ledger for one consortium."""

    def __init__(self, net: GeneratedNetwork, orderer: str | None = None, endorser: str | None = None) -> None:
        self.net = net
        self.genesis = read_genesis(net.genesis_path)
        orderer = orderer or net.orderers()[0].name
        endorser = endorser or net.peers()[0].name
        self.orderer = self._node_signer(orderer)
        self.endorser = self._node_signer(endorser)
        self.blocks: list[block_pb2.Block] = []
        self._state_hash = ZERO_HASH
        self._counter = 0
        self._append(self._stamped(self.genesis, [VALID]))

    def _node_signer(self, name: str) -> Signer:
        spec = next(n for n in self.net.nodes if n.name == name)
        d = self.net.home / "nodes" / name
        return load_signer(d / "cert.pem", d / "key.pem", spec.org)

    def user(self, org: str, user: str) -> Signer:
        """A member's signer."""
        d = self.net.user_dir(org, user)
        return load_signer(d / "cert.pem", d / "key.pem", org)

    def envelope(self, creator: Signer, contract: str, function: str, writes: Mapping[str, bytes],
                 *, timestamp_ms: int = 1_764_057_600_000, nonce: bytes | None = None) -> tuple[str, bytes]:
        """A signed, endorsed INVOKE envelope writing ``writes`` in namespace ``contract``."""
        self._counter += 1
        nonce = nonce if nonce is not None else self._counter.to_bytes(24, "big")
        tx_id = compute_tx_id(nonce, creator.identity)
        header = transaction_pb2.TxHeader(
            tx_id=tx_id, type=transaction_pb2.INVOKE, creator=creator.identity, nonce=nonce,
            timestamp_ms=timestamp_ms, consortium_id=self.net.config.consortium_id,
        ).SerializeToString()
        invocation = transaction_pb2.ContractInvocation(
            contract=contract, function=function, args_json=b"{}").SerializeToString()
        rwset = transaction_pb2.TxRwSet(ns_rwsets=[transaction_pb2.NsRwSet(
            namespace=contract,
            writes=[transaction_pb2.KVWrite(key=k, value=v) for k, v in sorted(writes.items())],
        )])
        prp = transaction_pb2.ProposalResponsePayload(
            proposal_hash=proposal_hash(header, invocation), results=rwset.SerializeToString(),
            response=transaction_pb2.Response(status=200),
        ).SerializeToString()
        tx = transaction_pb2.Transaction(
            header=header, invocation=invocation, response_payload=prp,
            endorsements=[transaction_pb2.Endorsement(endorser=self.endorser.identity,
                                                      signature=self.endorser.sign(Purpose.ENDORSEMENT, prp))],
        ).SerializeToString()
        env = transaction_pb2.Envelope(payload=tx, signature=creator.sign(Purpose.ENVELOPE, tx)).SerializeToString()
        return tx_id, env

    def _stamped(self, block: block_pb2.Block, codes: Sequence[int]) -> block_pb2.Block:
        out = block_pb2.Block()
        out.CopyFrom(block)
        del out.metadata.validation_codes[:]
        out.metadata.validation_codes.extend(transaction_pb2.TxValidationCode.ValueType(c) for c in codes)
        out.metadata.state_hash = next_state_hash(self._state_hash, out.header.number, outcomes_from_block(out))
        return out

    def _append(self, block: block_pb2.Block) -> None:
        self._state_hash = block.metadata.state_hash
        self.blocks.append(block)

    def add_block(self, envelopes: Sequence[bytes], codes: Sequence[int] | None = None) -> block_pb2.Block:
        """Order ``envelopes`` into the next block (codes default to VALID) and append it."""
        prev = self.blocks[-1]
        block = block_pb2.Block()
        block.header.number = prev.header.number + 1
        block.header.previous_hash = block_header_hash(prev.header)
        block.header.data_hash = block_data_hash(list(envelopes))
        block.data.envelopes.extend(envelopes)
        block.metadata.orderer_signatures.append(identity_pb2.SignatureEntry(
            signer=self.orderer.identity, signature=self.orderer.sign(Purpose.BLOCK, block_header_hash(block.header))))
        stamped = self._stamped(block, list(codes) if codes is not None else [VALID] * len(envelopes))
        self._append(stamped)
        return stamped

    def copy_blocks(self) -> list[block_pb2.Block]:
        """Deep copies of the blocks (to mutate one peer's view)."""
        out = []
        for b in self.blocks:
            c = block_pb2.Block()
            c.CopyFrom(b)
            out.append(c)
        return out

    def write_store(self, data_dir: Path) -> Path:
        """Write the blocks as a node data dir (``<data_dir>/ledger/blocks``); returns data_dir."""
        os.makedirs(data_dir / "ledger", exist_ok=True)
        store = BlockStore(data_dir / "ledger" / "blocks", fsync=False)
        try:
            for b in self.blocks:
                store.append(b)
        finally:
            store.close()
        return data_dir
