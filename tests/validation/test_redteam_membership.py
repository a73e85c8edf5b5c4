"""Red-team review of membership changes: what a peer or an organisation removed by a config
update may still do, on a running, a restarted and a caught-up peer.

Each test failed before its fix (see the validator's, the endorser's and the policy
provider's comments).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from rxchain.v1 import block_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.clock import wall_ms
from node.crypto.signing import Verifier
from node.errors import RxError
from node.genesis import read_genesis
from node.ledger.ledger import Ledger
from node.peer.committer import Committer
from node.peer.config_view import ConfigView
from node.peer.endorser import Endorser
from node.peer.lifecycle import Lifecycle
from tests.validation.conftest import Net, Peer, StaticPolicies, config_block, next_config, rx_definition


def _copy(block: block_pb2.Block) -> block_pb2.Block:
    out = block_pb2.Block()
    out.CopyFrom(block)
    return out


def test_a_peer_removed_from_the_config_no_longer_endorses_running_restarted_and_caught_up(
    peer: Peer, net: Net, tmp_path: Path
) -> None:
    """An update takes peer.p01 out of ``config.peers`` (p01 stays a member, nobody revokes the
    peer's certificate). From that block on its endorsements are BAD_ENDORSEMENT -- a tx it
    endorsed before the update (timestamped before it) and ordered after it too -- while h01's
    and ins01's peers still satisfy the policy; a peer restarted after the update and one
    caught up from genesis give the same codes and state hash. Before the fix the removed
    peer's endorsement counted as ``p01.peer`` until its certificate was revoked."""
    policies = StaticPolicies({"rx": rx_definition()})
    a = Committer(peer.ledger, Verifier(), policies)
    early = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("early", b"1")])])
    new = next_config(peer)
    kept = [p for p in new.peers if p.name != "peer.p01"]
    assert len(kept) == len(new.peers) - 1
    del new.peers[:]
    new.peers.extend(kept)
    _, update = config_block(peer, net, new)
    blocks = [update]
    assert list(a.commit_block(update).validated.codes) == [tx_pb.VALID]
    late = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("late", b"2")])])
    alone = peer.kit.invoke(net.doctor, [net.peer_p01], [RwSpec("rx", writes=[("alone", b"3")])])
    other = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_ins01], [RwSpec("rx", writes=[("other", b"4")])])
    last = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [early, late, alone, other],
                      [net.orderer1])
    blocks.append(last)
    expected = [tx_pb.BAD_ENDORSEMENT, tx_pb.BAD_ENDORSEMENT, tx_pb.BAD_ENDORSEMENT, tx_pb.VALID]

    b = Committer(peer.ledger, Verifier(), policies)  # B: restarted after the update
    b_codes = list(b.validator.validate(_copy(last), peer.ledger.height(), peer.ledger.blocks.last_hash()).codes)
    a_result = a.commit_block(_copy(last))
    assert list(a_result.validated.codes) == b_codes == expected

    genesis = read_genesis(net.home / "genesis.block")  # C: from scratch
    with Ledger(tmp_path / "scratch", fsync=False) as scratch:
        scratch.commit_genesis(genesis)
        c = Committer(scratch, Verifier(), policies)
        results = [c.commit_block(_copy(blk)) for blk in blocks]
        assert list(results[-1].validated.codes) == expected
        assert results[-1].result.state_hash == a_result.result.state_hash


def test_a_peer_endorses_before_and_stops_at_the_block_removing_it(peer: Peer, net: Net) -> None:
    """The same endorsement by peer.p01 is VALID in the block before the update and refused in
    the block after it: the removal takes effect at exactly its config block."""
    a = Committer(peer.ledger, Verifier(), StaticPolicies({"rx": rx_definition()}))
    before = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("b", b"1")])])
    blk = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [before], [net.orderer1])
    assert list(a.commit_block(blk).validated.codes) == [tx_pb.VALID]
    new = next_config(peer)
    kept = [p for p in new.peers if p.name != "peer.p01"]
    del new.peers[:]
    new.peers.extend(kept)
    _, update = config_block(peer, net, new)
    assert list(a.commit_block(update).validated.codes) == [tx_pb.VALID]
    after = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("b", b"2")])])
    blk = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [after], [net.orderer1])
    assert list(a.commit_block(blk).validated.codes) == [tx_pb.BAD_ENDORSEMENT]


def test_a_peer_removed_from_the_config_refuses_to_endorse(peer: Peer, net: Net) -> None:
    """A peer the config no longer lists still runs (and the gateways' node.yaml may still
    name it): it answers UNKNOWN_PEER instead of signing an endorsement every validator now
    refuses, so a gateway asks another peer. Before the update the same proposal reaches the
    usual checks (here BAD_PAYLOAD: it is empty)."""
    endorser = Endorser(peer.ledger, ConfigView(peer.ledger.state, Verifier()), net.peer_p01,
                        cast(Any, None), Lifecycle(), wall_ms)
    empty = tx_pb.SignedProposal()
    with pytest.raises(RxError) as before:
        endorser.endorse(empty)
    assert before.value.reason == "BAD_PAYLOAD"
    new = next_config(peer)
    kept = [p for p in new.peers if p.name != "peer.p01"]
    del new.peers[:]
    new.peers.extend(kept)
    _, update = config_block(peer, net, new)
    assert list(peer.committer.commit_block(update).validated.codes) == [tx_pb.VALID]
    with pytest.raises(RxError) as after:
        endorser.endorse(empty)
    assert after.value.reason == "UNKNOWN_PEER" and "peer.p01" in after.value.message
