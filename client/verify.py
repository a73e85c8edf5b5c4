"""Independent ledger verification from a client: stream a peer's blocks and check them.

Checks, block by block: numbers are consecutive from 0; block 0 is byte-identical to the
local genesis block; every header's ``previous_hash`` is the header hash of the previous
block; every ``data_hash`` matches the envelopes; every later block carries at least one
valid orderer signature (over the header hash) by an orderer of the configuration; there is
one validation code per envelope. The result also carries the last header hash and state
hash so several peers can be compared.

The configuration follows the chain: each block's orderer signatures are checked against the
orderers of the configuration in force before it (the genesis one, then that of every config
block the peer committed VALID), so orderer certificate rotations and membership changes
verify. Past a config block raising the consortium's protocol version beyond what this release
implements (node.protocol) the blocks are not judged: the result says PROTOCOL_UNSUPPORTED
from there on (not OK, not a forgery either).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, config_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from client.gateway import rpc_error
from client.wallet import WalletIdentity
from node.crypto.canonical import block_data_hash, block_header_hash
from node.crypto.signing import Verifier, block_signers
from node.crypto.tls import secure_channel
from node.errors import RxError
from node.identity.msp import MSP
from node.orderer.configtx import config_of_block
from node.protocol import PROTOCOL_UNSUPPORTED, unsupported


@dataclass
class VerifyResult:
    """Outcome of verifying one peer's chain."""

    peer: str
    ok: bool
    height: int = 0
    last_hash: str = ""
    state_hash: str = ""
    txs: int = 0
    errors: list[str] = field(default_factory=list)


def verify_blocks(peer: str, blocks: list[block_pb2.Block], genesis: block_pb2.Block,
                  config: config_pb2.ConsortiumConfig, verifier: Verifier) -> VerifyResult:
    """Verify a list of blocks (from block 0) against the genesis block and config."""
    res = VerifyResult(peer, ok=True)
    try:
        msp = MSP(config, verifier)  # whose orderers' signatures count, and when (MSP.block_signers)
    except RxError as exc:
        res.ok = False
        res.errors.append(f"the configuration is unusable: {exc}")
        return res
    prev: bytes | None = None
    valid = transaction_pb2.VALID
    for i, b in enumerate(blocks):
        n = b.header.number
        if n != i:
            res.errors.append(f"block {i}: numbered {n}")
            break
        if i == 0:
            if block_header_hash(b.header) != block_header_hash(genesis.header):
                res.errors.append("block 0 differs from the local genesis block")
        elif b.header.previous_hash != prev:
            res.errors.append(f"block {n}: previous_hash does not link to block {n - 1}")
        if b.header.data_hash != block_data_hash(list(b.data.envelopes)):
            res.errors.append(f"block {n}: data_hash does not match its envelopes")
        h = block_header_hash(b.header)
        if i > 0 and not block_signers(verifier, h, b.metadata.orderer_signatures,
                                       msp.block_signers(b.header.timestamp_ms)):
            res.errors.append(f"block {n}: no valid orderer signature")
        if len(b.metadata.validation_codes) != len(b.data.envelopes):
            res.errors.append(f"block {n}: {len(b.metadata.validation_codes)} validation codes "
                              f"for {len(b.data.envelopes)} transactions")
        res.txs += len(b.data.envelopes)
        prev = h
        res.height = i + 1
        res.last_hash = h.hex()
        res.state_hash = b.metadata.state_hash.hex()
        if len(res.errors) > 20:
            break
        new = _adopted_config(b) if i > 0 and list(b.metadata.validation_codes) == [valid] else None
        if new is not None:
            why = unsupported(new)
            if why is not None:
                res.errors.append(f"block {n}: {PROTOCOL_UNSUPPORTED}: {why}; the blocks after "
                                  "it are not verified")
                break
            try:
                msp = MSP(new, verifier)
            except RxError as exc:
                res.errors.append(f"block {n}: its configuration is unusable: {exc}")
                break
    res.ok = not res.errors
    return res


def _adopted_config(block: block_pb2.Block) -> config_pb2.ConsortiumConfig | None:
    """The configuration a config block carries (None for other blocks, or bytes that do
    not parse: such a tx is not VALID on a sound peer, and its signature check says so)."""
    try:
        return config_of_block(block)
    except DecodeError:
        return None


def fetch_blocks(identity: WalletIdentity, target: str, timeout: float = 60.0,
                 max_blocks: int = 1_000_000) -> list[block_pb2.Block]:
    """Every committed block of a peer, via PeerDeliver (no follow)."""
    channel = secure_channel(target, identity.cert_path, identity.key_path,
                             identity.ca_bundle_path)
    try:
        stub = services_pb2_grpc.PeerDeliverStub(channel)
        blocks: list[block_pb2.Block] = []
        req = services_pb2.DeliverRequest(start_block=0, stop_block=0, follow=False)
        try:
            for msg in stub.Deliver(req, timeout=timeout):
                if msg.WhichOneof("kind") == "block":
                    blocks.append(msg.block)
                    if len(blocks) >= max_blocks:
                        break
                else:
                    break
        except grpc.RpcError as exc:
            raise rpc_error(exc) from exc
        return blocks
    finally:
        channel.close()


def verify_peer(identity: WalletIdentity, peer: str, target: str, genesis_path: Path,
                config: config_pb2.ConsortiumConfig) -> VerifyResult:
    """Fetch and verify one peer's chain."""
    genesis = block_pb2.Block.FromString(Path(genesis_path).read_bytes())
    blocks = fetch_blocks(identity, target)
    return verify_blocks(peer, blocks, genesis, config, Verifier())
