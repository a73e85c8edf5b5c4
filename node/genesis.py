"""The genesis block: block 0 carrying the initial consortium configuration.

Layout: ``Block{header{number=0, previous_hash=32 zero bytes, data_hash}, data{envelopes=[E]}}``
where E is an Envelope whose payload is a Transaction with a CONFIG TxHeader (tx id
``genesis``) and ``config_update = ConfigUpdate{config=<serialized ConsortiumConfig>}``.
The genesis block is trusted by its hash (distributed out of band), so it is unsigned.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, config_pb2, transaction_pb2

from node.crypto.canonical import GENESIS_PREVIOUS_HASH, block_data_hash
from node.errors import RxError

GENESIS_TX_ID = "genesis"


def make_genesis(config: config_pb2.ConsortiumConfig, timestamp_ms: int) -> block_pb2.Block:
    """Build the genesis block for ``config``."""
    header = transaction_pb2.TxHeader(
        tx_id=GENESIS_TX_ID,
        type=transaction_pb2.CONFIG,
        timestamp_ms=timestamp_ms,
        consortium_id=config.consortium_id,
    )
    tx = transaction_pb2.Transaction(
        header=header.SerializeToString(),
        config_update=config_pb2.ConfigUpdate(config=config.SerializeToString()).SerializeToString(),
    )
    env = transaction_pb2.Envelope(payload=tx.SerializeToString()).SerializeToString()
    block = block_pb2.Block()
    block.header.number = 0
    block.header.previous_hash = GENESIS_PREVIOUS_HASH
    block.header.data_hash = block_data_hash([env])
    block.data.envelopes.append(env)
    block.metadata.validation_codes.append(transaction_pb2.VALID)
    return block


def config_from_genesis(block: block_pb2.Block) -> config_pb2.ConsortiumConfig:
    """The consortium configuration carried by a genesis block."""
    try:
        if block.header.number != 0 or len(block.data.envelopes) != 1:
            raise RxError("BAD_CONFIG", "not a genesis block")
        if block.header.data_hash != block_data_hash(list(block.data.envelopes)):
            raise RxError("BAD_CONFIG", "genesis block data hash mismatch")
        env = transaction_pb2.Envelope.FromString(block.data.envelopes[0])
        tx = transaction_pb2.Transaction.FromString(env.payload)
        update = config_pb2.ConfigUpdate.FromString(tx.config_update)
        return config_pb2.ConsortiumConfig.FromString(update.config)
    except DecodeError as exc:
        raise RxError("BAD_CONFIG", f"genesis block does not parse: {exc}") from exc


def read_genesis(path: str | Path) -> block_pb2.Block:
    """Read a genesis block file (a serialized Block)."""
    try:
        block = block_pb2.Block.FromString(Path(path).read_bytes())
    except (OSError, DecodeError) as exc:
        raise RxError("BAD_CONFIG", f"{path}: cannot read genesis block: {exc}") from exc
    config_from_genesis(block)
    return block
