"""What a block's transactions write: one derivation shared by the validator and replay.

The validator and the recovery replay must derive exactly the same writes from a block
and its validation codes, so both use :func:`outcomes_from_block` / :func:`rwset_writes` /
:func:`config_writes` from here.

* INVOKE tx, VALID: the writes of ``ProposalResponsePayload.results`` (a TxRwSet), namespaces
  in rwset order, keys in write order.
* CONFIG tx, VALID: one write ``(SYSTEM_NS, CONFIG_KEY) = ConfigUpdate.config`` (the
  serialized ConsortiumConfig, exactly as the admins signed it).
* Invalid txs: no writes.

Tx-id indexing: a tx id enters the tx-id index only when the transaction proved it owns
that id, i.e. the header parsed, the id matches (nonce, creator) and the creator's
signature verified. Otherwise anybody could copy a pending transaction's id into a junk
envelope and make the real one a DUPLICATE_TXID. Such outcomes carry ``tx_id = ""``.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, config_pb2, transaction_pb2

from node.ledger.statedb import KeyWrite, TxOutcome

SYSTEM_NS = "_system"
CONFIG_KEY = "config"

# Codes whose tx id is not (or not provably) the submitter's: never indexed.
UNINDEXED_CODES = frozenset(
    {
        transaction_pb2.TX_VALIDATION_CODE_UNSPECIFIED,
        transaction_pb2.BAD_PAYLOAD,
        transaction_pb2.BAD_HEADER,
        transaction_pb2.BAD_TXID,
        transaction_pb2.DUPLICATE_TXID,
        transaction_pb2.BAD_CREATOR_SIGNATURE,
        transaction_pb2.UNKNOWN_CREATOR,
        transaction_pb2.EXPIRED_CREATOR_CERT,
        transaction_pb2.REVOKED_CREATOR_CERT,
    }
)


def rwset_writes(rwset: transaction_pb2.TxRwSet) -> list[KeyWrite]:
    """The writes of a read/write set, in order."""
    out: list[KeyWrite] = []
    for ns in rwset.ns_rwsets:
        name = ns.namespace
        for w in ns.writes:
            out.append(KeyWrite(name, w.key, b"" if w.is_delete else w.value, w.is_delete))
    return out


def config_writes(config_bytes: bytes) -> list[KeyWrite]:
    """The single write of a valid config transaction."""
    return [KeyWrite(SYSTEM_NS, CONFIG_KEY, config_bytes, False)]


def indexed_tx_id(code: int, tx_id: str) -> str:
    """The tx id to index for a tx with validation ``code`` ("" = do not index)."""
    return "" if code in UNINDEXED_CODES else tx_id


def outcomes_from_block(block: block_pb2.Block) -> list[TxOutcome]:
    """Re-derive the outcomes of a block carrying validation codes (recovery replay).

    Raises ValueError if the codes are missing or a VALID tx does not parse (the block
    store copy was not written by a validator of this code base).
    """
    codes = block.metadata.validation_codes
    envs = block.data.envelopes
    if len(codes) != len(envs):
        raise ValueError(
            f"block {block.header.number}: {len(codes)} validation codes for {len(envs)} txs"
        )
    out: list[TxOutcome] = []
    for i, (env_bytes, code) in enumerate(zip(envs, codes, strict=True)):
        tx_id, ts = "", 0
        writes: Sequence[KeyWrite] = ()
        try:
            env = transaction_pb2.Envelope.FromString(env_bytes)
            tx = transaction_pb2.Transaction.FromString(env.payload)
            header = transaction_pb2.TxHeader.FromString(tx.header)
            tx_id, ts = header.tx_id, header.timestamp_ms
            if code == transaction_pb2.VALID:
                if header.type == transaction_pb2.CONFIG:
                    update = config_pb2.ConfigUpdate.FromString(tx.config_update)
                    writes = config_writes(update.config)
                else:
                    prp = transaction_pb2.ProposalResponsePayload.FromString(tx.response_payload)
                    writes = rwset_writes(transaction_pb2.TxRwSet.FromString(prp.results))
        except DecodeError as exc:
            if code == transaction_pb2.VALID:
                raise ValueError(
                    f"block {block.header.number} tx {i}: VALID but does not parse: {exc}"
                ) from exc
        out.append(TxOutcome(i, indexed_tx_id(code, tx_id), code, ts, writes))
    return out
