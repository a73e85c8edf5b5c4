"""Review regressions: a block's validation codes depend on the block and the ledger alone.

Each test failed before its fix (see the validator's comments).
"""

from __future__ import annotations

from pathlib import Path

import plyvel
import pytest
from rxchain.v1 import block_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.crypto.signing import Signer, Verifier
from node.crypto.x509 import cert_info_der
from node.genesis import read_genesis
from node.ledger.errors import LedgerError
from node.ledger.ledger import Ledger
from node.ledger.statedb import VersionedValue, corrupt_state
from node.peer.committer import Committer
from node.peer.definitions import LIFECYCLE_NS
from node.peer.policy_provider import LifecyclePolicies
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
