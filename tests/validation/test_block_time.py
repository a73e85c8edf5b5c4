"""The orderer-signed block time bounds every tx's timestamp (TX_TIMESTAMP_SKEW), on peers
and, for config updates, on the orderers' apply path alike."""

from __future__ import annotations

import pytest
from rxchain.v1 import block_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from tests.validation.conftest import Net, Peer, next_config
from tests.validation.test_redteam_config import _commit, _config_tx, _orderers_adopt

SKEW = 600_000  # bench.txbuild.SMALL_CONSORTIUM limits.max_clock_skew_ms


def _invoke(peer: Peer, net: Net, key: str) -> bytes:
    return peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[(key, b"1")])])


def _block(peer: Peer, net: Net, envs: list[bytes], ts: int) -> block_pb2.Block:
    return make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), envs, [net.orderer1], timestamp_ms=ts)


@pytest.mark.parametrize(("offset", "code"), [
    (0, tx_pb.VALID), (SKEW - 10, tx_pb.VALID), (-SKEW + 10, tx_pb.VALID),
    (SKEW + 10_000, tx_pb.TX_TIMESTAMP_SKEW), (-SKEW - 10_000, tx_pb.TX_TIMESTAMP_SKEW),
])
def test_a_tx_far_from_its_blocks_time_is_invalid(peer: Peer, net: Net, offset: int, code: int) -> None:
    env = _invoke(peer, net, "k")
    assert _commit(peer, _block(peer, net, [env], peer.kit.clock_ms + offset)) == [code]


def test_a_block_without_a_time_checks_nothing(peer: Peer, net: Net) -> None:
    peer.kit.clock_ms -= 10 * SKEW  # far in the past: only a stamped block would refuse it
    assert _commit(peer, _block(peer, net, [_invoke(peer, net, "k")], 0)) == [tx_pb.VALID]


def test_a_config_update_far_from_its_blocks_time_is_adopted_by_nobody(peer: Peer, net: Net) -> None:
    block = _block(peer, net, [_config_tx(peer, net, next_config(peer))], peer.kit.clock_ms + 2 * SKEW)
    assert not _orderers_adopt(peer, block)
    assert _commit(peer, block) == [tx_pb.TX_TIMESTAMP_SKEW]
    cur = peer.ledger.current_config()
    assert cur is not None and cur.sequence == 0
    on_time = _block(peer, net, [_config_tx(peer, net, next_config(peer))], peer.kit.clock_ms)
    assert _orderers_adopt(peer, on_time)
    assert _commit(peer, on_time) == [tx_pb.VALID]


def test_the_bound_is_the_one_in_force_before_the_block_on_peers_and_orderers_alike(peer: Peer, net: Net) -> None:
    """A config update lowering max_clock_skew_ms is itself judged under the old bound, the
    blocks after it under the new one -- by the peer and by one orderer tracker walking the same
    blocks (a node using the update's own bound for its block would split from the others)."""
    from node.crypto.signing import Verifier
    from node.identity.msp import MSP
    from node.orderer.configtx import ConfigTracker, OrdererConfig

    cur = peer.ledger.current_config()
    assert cur is not None
    tracker = ConfigTracker(OrdererConfig(cur, MSP(cur, Verifier()), 0), Verifier())

    def both(block: block_pb2.Block) -> tuple[bool, list[int]]:
        new = tracker.block_config(block)
        if new is not None:
            tracker.adopt(new, block.header.number)
        return new is not None, _commit(peer, block)

    tight = next_config(peer)
    tight.limits.max_clock_skew_ms = 1_000
    offset = 5_000  # within the old bound, outside the new one
    assert both(_block(peer, net, [_config_tx(peer, net, tight)], peer.kit.clock_ms + offset)) == (True, [tx_pb.VALID])
    assert tracker.current.config.limits.max_clock_skew_ms == 1_000
    again = next_config(peer)
    assert both(_block(peer, net, [_config_tx(peer, net, again)], peer.kit.clock_ms + offset)) == (
        False, [tx_pb.TX_TIMESTAMP_SKEW])
    assert _commit(peer, _block(peer, net, [_invoke(peer, net, "k")], peer.kit.clock_ms + offset)) == [
        tx_pb.TX_TIMESTAMP_SKEW]
    assert _commit(peer, _block(peer, net, [_invoke(peer, net, "k2")], peer.kit.clock_ms)) == [tx_pb.VALID]
