"""Committer: listeners after commit, a failing listener never undoes a commit."""

from __future__ import annotations

import pytest
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.ledger.errors import LedgerError


def test_listeners_and_failing_listener(peer, net):
    seen = []

    def bad(committed):
        raise RuntimeError("listener bug")

    peer.committer.add_listener(bad)
    peer.committer.add_listener(lambda c: seen.append(
        (c.result.number, c.validated.codes, peer.ledger.get("rx", "a") is not None)))
    env = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01],
                          [RwSpec("rx", writes=[("a", b"1")])])
    block = make_block(1, peer.ledger.blocks.last_hash(), [env], [net.orderer1])
    done = peer.committer.commit_block(block)
    assert seen == [(1, [tx_pb.VALID], True)]  # state already applied when listeners run
    assert done.result.state_hash == peer.ledger.state_hash()
    assert peer.ledger.wait_for_height(2, 0.01)
    assert not peer.ledger.wait_for_height(3, 0.01)
    # incoming metadata is never trusted: codes are recomputed
    env2 = peer.kit.invoke(net.doctor, [net.peer_h01], [RwSpec("rx", writes=[("b", b"1")])])
    block2 = make_block(2, peer.ledger.blocks.last_hash(), [env2], [net.orderer1])
    block2.metadata.validation_codes.append(tx_pb.VALID)
    block2.metadata.state_hash = b"\x01" * 32
    assert peer.committer.commit_block(block2).validated.codes == [
        tx_pb.ENDORSEMENT_POLICY_FAILURE]
    assert peer.ledger.block(2).metadata.state_hash == peer.ledger.state_hash()


def test_ledger_commit_rejects_mismatched_codes(peer, net):
    env = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01],
                          [RwSpec("rx", writes=[("a", b"1")])])
    block = make_block(1, peer.ledger.blocks.last_hash(), [env], [net.orderer1])
    with pytest.raises(LedgerError) as e:
        peer.ledger.commit(block, [])
    assert e.value.reason == "BAD_BLOCK"
    assert peer.ledger.height() == 1


def test_ensure_genesis(peer, net, tmp_path):
    from node.genesis import read_genesis
    from node.ledger.ledger import Ledger

    genesis = read_genesis(net.home / "genesis.block")
    peer.ledger.ensure_genesis(genesis)  # already there: a no-op
    assert peer.ledger.height() == 1
    with Ledger(tmp_path / "fresh", fsync=False) as fresh:
        fresh.ensure_genesis(genesis)
        assert fresh.height() == 1
        cfg = fresh.current_config()
        assert cfg is not None and cfg.consortium_id == "test-rx"
        other = read_genesis(net.home / "genesis.block")
        other.header.data_hash = b"\x02" * 32
        with pytest.raises(LedgerError) as e:
            fresh.ensure_genesis(other)
        assert e.value.reason == "GENESIS_MISMATCH"
