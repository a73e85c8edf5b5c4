"""Independent ledger verification from a client: stream a peer's blocks and check them.

Checks, block by block: numbers are consecutive from 0; block 0 is byte-identical to the
local genesis block; every header's ``previous_hash`` is the header hash of the previous
block; every ``data_hash`` matches the envelopes; every later block carries at least one
valid orderer signature (over the header hash) by an orderer of the configuration; there is
one validation code per envelope. The result also carries the last header hash and state
hash so several peers can be compared.

The configuration follows the chain: each block's orderer signatures are checked against the
orderers of the configuration in force before it (the genesis one, then that of every valid
config block), so orderer certificate rotations and membership changes verify. Whether a config
block is valid is decided here, by the rule the orderers and peers apply
(:meth:`node.orderer.configtx.ConfigTracker.judge_block`: the envelope's header, creator and
timestamp, then ``validate_update`` against the configuration before it -- sequence + 1, the
``config_update`` policy's admin signatures, the content rules), never by the validation codes
in the block's metadata: the serving peer writes those and nobody signs them, so a hostile peer
could otherwise have a refused update adopted (new CAs, new orderers whose signatures then
"verify" blocks it made up) or a valid one skipped. A config transaction whose code disagrees
with that verdict is reported (the codes of other transactions need the state to judge:
``ledger verify --local`` replays them). Past a config block raising the consortium's protocol
version beyond what this release implements (node.protocol) the blocks are not judged: the
result says PROTOCOL_UNSUPPORTED from there on (not OK, not a forgery either).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
from rxchain.v1 import block_pb2, config_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from client.events import validation_code_name
from client.gateway import rpc_error
from client.wallet import WalletIdentity
from node.crypto.canonical import block_data_hash, block_header_hash
from node.crypto.signing import Verifier, block_signers
from node.crypto.tls import secure_channel
from node.errors import RxError
from node.identity.msp import MSP
from node.orderer.configtx import ConfigTracker, OrdererConfig, tx_type
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
        # the configuration in force; its MSP says whose orderer signatures count, and when
        tracker = ConfigTracker(OrdererConfig(config, MSP(config, verifier), 0), verifier)
    except RxError as exc:
        res.ok = False
        res.errors.append(f"the configuration is unusable: {exc}")
        return res
    prev: bytes | None = None
    for i, b in enumerate(blocks):
        found = len(res.errors)
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
                                       tracker.current.msp.block_signers(b.header.timestamp_ms)):
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
        if i == 0 or len(res.errors) > found:
            continue  # a block failing a check (no valid orderer signature...) carries no config in force
        new, refused = tracker.judge_block(b)
        res.errors.extend(_code_disagreements(b, new is not None, refused))
        if new is not None:
            why = unsupported(new)
            if why is not None:
                res.errors.append(f"block {n}: {PROTOCOL_UNSUPPORTED}: {why}; the blocks after "
                                  "it are not verified")
                break
            try:
                tracker.adopt(new, n)
            except RxError as exc:
                res.errors.append(f"block {n}: its configuration is unusable: {exc}")
                break
    res.ok = not res.errors
    return res


def _code_disagreements(block: block_pb2.Block, adopted: bool, refused: str) -> list[str]:
    """What the peer's validation codes of ``block``'s config transactions say against the
    verdict of the consortium's rules (``adopted``; ``refused``: why not, when the block holds
    one CONFIG transaction): one finding per config transaction recorded VALID that the rules
    refuse (a config transaction sharing its block with others is refused, as orderers and peers
    refuse it), or recorded anything else when they accept it. A code missing is reported
    already (the count check)."""
    valid = transaction_pb2.VALID
    codes = block.metadata.validation_codes
    n = block.header.number
    out: list[str] = []
    for k, raw in enumerate(block.data.envelopes):
        if k >= len(codes) or tx_type(raw) != transaction_pb2.CONFIG:
            continue
        if adopted and codes[k] != valid:
            out.append(f"block {n}: the peer recorded its config update {validation_code_name(codes[k])}; "
                       "the consortium's rules accept it (adopted here)")
        elif not adopted and codes[k] == valid:
            why = refused or "a config transaction is valid only alone in its block"
            out.append(f"block {n}: the peer recorded config transaction {k} VALID; the consortium's rules "
                       f"refuse it ({why[:300]}): not adopted")
    return out


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
