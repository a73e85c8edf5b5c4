"""Review regressions: a block's validation codes depend on the block and the ledger alone.

Each test failed before its fix (see the validator's comments).
"""

from __future__ import annotations

import random
from pathlib import Path

import plyvel
import pytest
from rxchain.v1 import block_pb2, identity_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.crypto.canonical import proposal_hash
from node.crypto.signing import Purpose, Signer, Verifier
from node.crypto.x509 import cert_info_der
from node.genesis import read_genesis
from node.ledger.errors import LedgerError
from node.ledger.ledger import Ledger
from node.ledger.statedb import VersionedValue, corrupt_state
from node.peer.committer import Committer
from node.peer.definitions import LIFECYCLE_NS
from node.peer.policy_provider import LifecyclePolicies
from node.peer.validator import Validator
from tests.validation.conftest import (
    Net,
    Peer,
    StaticPolicies,
    config_block,
    invoke_block,
    next_config,
    rx_definition,
)


def test_damaged_state_under_a_contract_definition_stops_the_commit_instead_of_a_code(
    peer: Peer, net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer whose LevelDB block holding ``definition/rx`` fails its checksum cannot tell
    whether ``rx`` is defined: it must commit nothing (as for an MVCC read), not record
    UNKNOWN_CONTRACT while the other peers record VALID (diverging state hashes)."""
    committer = Committer(peer.ledger, Verifier(), LifecyclePolicies())
    state = peer.ledger.state
    real_get = state.get

    def damaged_get(ns: str, key: str) -> VersionedValue | None:
        if ns == LIFECYCLE_NS:
            raise corrupt_state(plyvel.CorruptionError("block checksum mismatch"))
        return real_get(ns, key)

    monkeypatch.setattr(state, "get", damaged_get)
    env = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("k", b"v")])])
    block = make_block(1, peer.ledger.blocks.last_hash(), [env], [net.orderer1])
    with pytest.raises(LedgerError) as e:
        committer.commit_block(block)
    assert e.value.reason == "LEDGER_CORRUPT"
    assert peer.ledger.height() == 1
    monkeypatch.setattr(state, "get", real_get)  # repaired: the same block gets its real code
    assert list(committer.commit_block(block).validated.codes) == [tx_pb.UNKNOWN_CONTRACT]


def test_revocation_gives_the_same_codes_running_restarted_and_caught_up_from_scratch(
    peer: Peer, net: Net, tmp_path: Path
) -> None:
    """Peer A runs on through a config update revoking p01's peer certificate, with that
    peer's identity validated (principal cache) and its own signatures remembered
    (``Verifier.trust_own``: A is p01's peer) before the update; peer B restarts right after
    the update; peer C catches up from genesis. A tx endorsed with the revoked certificate is
    BAD_ENDORSEMENT on all three, the same codes and state hashes everywhere."""
    verifier = Verifier()
    own = Signer(net.peer_p01.key, net.peer_p01.identity)  # not the session's signer object
    verifier.trust_own(own)
    policies = StaticPolicies({"rx": rx_definition()})
    a = Committer(peer.ledger, verifier, policies)
    blocks = [invoke_block(peer, net, "warm")]  # p01 validated and remembered before the update
    blocks[0].data.envelopes[0] = peer.kit.invoke(
        net.doctor, [net.peer_h01, own], [RwSpec("rx", writes=[("warm", b"v")])])
    _reseal(blocks[0], net)
    assert list(a.commit_block(blocks[0]).validated.codes) == [tx_pb.VALID]
    new = next_config(peer)
    serial = cert_info_der(own.cert_der).serial_hex
    next(o for o in new.organizations if o.id == "p01").revoked_serials.append(serial.upper())
    _, update = config_block(peer, net, new)
    blocks.append(update)
    assert list(a.commit_block(update).validated.codes) == [tx_pb.VALID]
    revoked = peer.kit.invoke(net.doctor, [net.peer_h01, own], [RwSpec("rx", writes=[("x", b"1")])])
    other = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_ins01], [RwSpec("rx", writes=[("y", b"2")])])
    last = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [revoked, other], [net.orderer1])
    blocks.append(last)

    b = Committer(peer.ledger, Verifier(), policies)  # B: restarted after the update
    b_codes = list(b.validator.validate(_copy(last), peer.ledger.height(), peer.ledger.blocks.last_hash()).codes)
    a_result = a.commit_block(_copy(last))
    assert list(a_result.validated.codes) == b_codes == [tx_pb.BAD_ENDORSEMENT, tx_pb.VALID]

    genesis = read_genesis(net.home / "genesis.block")  # C: from scratch
    with Ledger(tmp_path / "scratch", fsync=False) as scratch:
        scratch.commit_genesis(genesis)
        c = Committer(scratch, Verifier(), policies)
        results = [c.commit_block(_copy(blk)) for blk in blocks]
        assert list(results[-1].validated.codes) == b_codes
        assert results[-1].result.state_hash == a_result.result.state_hash


def _copy(block: block_pb2.Block) -> block_pb2.Block:
    out = block_pb2.Block()
    out.CopyFrom(block)
    return out


def _reseal(block: block_pb2.Block, net: Net) -> None:
    """Re-sign ``block`` (its envelopes were replaced) by orderer 1."""
    fresh = make_block(block.header.number, block.header.previous_hash, list(block.data.envelopes),
                       [net.orderer1])
    block.CopyFrom(fresh)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """``data`` with one to three random edits (overwrite, truncate, insert, bit flip)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not b:
            b += rng.randbytes(1)
            continue
        i, op = rng.randrange(len(b)), rng.randrange(4)
        if op == 0:
            b[i] = rng.randrange(256)
        elif op == 1:
            del b[i:]
        elif op == 2:
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        else:
            b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _mangled_tx(rng: random.Random, peer: Peer, net: Net, endorser: Signer) -> bytes:
    """An INVOKE of ``rx`` with one of its parts mangled and everything above it signed again
    over the mangled bytes (so the damage reaches the checks past the signatures)."""
    part = rng.randrange(8)  # 7: left intact
    hdr = peer.kit.header(net.doctor)
    inv = tx_pb.ContractInvocation(contract="rx", function="f", args_json=b"{}").SerializeToString()
    results = tx_pb.TxRwSet(ns_rwsets=[RwSpec(
        "rx", reads=[("a", None)], writes=[("a", b"1"), ("b", None)],
        ranges=[("a", "z", True, [])]).to_proto()]).SerializeToString()
    hdr = _mutate(rng, hdr) if part == 0 else hdr
    inv = _mutate(rng, inv) if part == 1 else inv
    results = _mutate(rng, results) if part == 2 else results
    prp = tx_pb.ProposalResponsePayload(
        proposal_hash=proposal_hash(hdr, inv), results=results,
        response=tx_pb.Response(status=200, payload=b"{}"), contract_version="1.0",
        contract_sequence=1).SerializeToString()
    prp = _mutate(rng, prp) if part == 3 else prp
    tx = tx_pb.Transaction(header=hdr, invocation=inv, response_payload=prp)
    for e in (net.peer_h01, endorser):
        ident = identity_pb2.Identity()
        ident.CopyFrom(e.identity)
        if part == 4 and e is endorser:
            ident.cert_der = _mutate(rng, ident.cert_der)
        tx.endorsements.add(endorser=ident, signature=e.sign(Purpose.ENDORSEMENT, prp))
    payload = _mutate(rng, tx.SerializeToString()) if part == 5 else tx.SerializeToString()
    env = tx_pb.Envelope(payload=payload, signature=net.doctor.sign(Purpose.ENVELOPE, payload))
    return _mutate(rng, env.SerializeToString()) if part == 6 else env.SerializeToString()


def test_mangled_envelopes_get_the_same_codes_on_a_long_running_and_a_fresh_peer(
    peer: Peer, net: Net
) -> None:
    """Blocks of signed-but-mangled txs (and intact ones, some copies of each other): never an
    exception, and a validator whose caches (identities, policies, its own signatures) have
    seen every earlier block gives each tx the code a fresh validator gives it."""
    rng = random.Random(11)
    config = peer.ledger.current_config()
    assert config is not None
    verifier = Verifier()
    own = Signer(net.peer_p01.key, net.peer_p01.identity)
    verifier.trust_own(own)
    policies = StaticPolicies({"rx": rx_definition()})
    warm = Validator(peer.ledger.state, config, verifier, policies)
    prev = peer.ledger.blocks.last_hash()
    seen: set[int] = set()
    for _ in range(60):
        envs = [_mangled_tx(rng, peer, net, own) for _ in range(6)]
        envs.append(rng.choice(envs))  # a copy: DUPLICATE_TXID unless its id is not indexed
        block = make_block(1, prev, envs, [net.orderer1])
        fresh = Validator(peer.ledger.state, config, Verifier(), policies)
        want = list(fresh.validate(_copy(block), 1, prev).codes)
        assert list(warm.validate(block, 1, prev).codes) == want
        seen.update(want)
    assert {tx_pb.VALID, tx_pb.BAD_PAYLOAD, tx_pb.BAD_ENDORSEMENT, tx_pb.DUPLICATE_TXID} <= seen
