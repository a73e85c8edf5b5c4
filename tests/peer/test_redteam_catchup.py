"""Catch-up from a compromised orderer: blocks signed with a real orderer key but off the chain
(wrong previous hash, a gap, another chain's block) are refused and the peer takes the right
chain from an honest orderer; a repeated block is applied once. Restart resumes at the height.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rxchain.v1 import block_pb2

from node.config import Endpoint
from node.crypto.canonical import block_header_hash
from node.peer.deliver_client import Backoff, DeliverClient
from tests.harness.ports import free_ports
from tests.peer.conftest import Net, Peer, make_peer
from tests.peer.kit import make_block
from tests.peer.test_deliver_broadcast import FakeOrderer, chain, insecure, serve, wait_for


def _scenario(net: Net, genesis: block_pb2.Block, good: list[block_pb2.Block],
              kind: str) -> list[block_pb2.Block]:
    """What the compromised orderer serves (every block carries a real orderer signature)."""
    if kind == "wrong_previous_hash":
        return [make_block(1, b"\x42" * 32, [], net.orderer), *good[1:]]
    if kind == "gap":
        return [good[1], good[2]]  # starts at 2 when 1 was asked for
    if kind == "other_chain":
        # A chain of its own from a genesis with another hash: block 1 links to that one.
        other = block_pb2.Block()
        other.CopyFrom(genesis)
        other.header.timestamp_ms += 1
        return chain(net, other, 3)
    raise AssertionError(kind)


def _catch_up(peer: Peer, eps: list[Endpoint], height: int) -> list[tuple[str, str]]:
    """Run a DeliverClient of ``peer`` over ``eps`` until its ledger holds ``height`` blocks
    (bounded); the (orderer, reason) errors it reported meanwhile."""
    errors: list[tuple[str, str]] = []
    client = DeliverClient(eps, insecure, peer.ledger.height, peer.committer.commit_block,
                           Backoff(0.01, 0.05), on_error=lambda o, r: errors.append((o, r)), stall_s=0)
    client.start()
    try:
        wait_for(lambda: peer.ledger.height() == height)
    finally:
        client.stop()
    return errors


@pytest.mark.parametrize("kind", ["wrong_previous_hash", "gap", "other_chain"])
def test_off_chain_blocks_from_a_real_orderer_key_are_refused(
    net: Net, tmp_path: Path, servers, kind: str
) -> None:
    peer = make_peer(net, "h01", tmp_path / "p")
    try:
        genesis = peer.ledger.block(0)
        good = chain(net, genesis, 3)
        bad_port, good_port = free_ports(2)
        bad = FakeOrderer(_scenario(net, genesis, good, kind), hold_s=0.2)
        honest = FakeOrderer(good)
        servers.append(serve(bad, bad_port))
        servers.append(serve(honest, good_port))
        eps = [Endpoint("compromised", "ins01", "127.0.0.1", bad_port),
               Endpoint("honest", "ins01", "127.0.0.1", good_port)]
        errors = _catch_up(peer, eps, 4)
        assert ("compromised", "BAD_BLOCK") in errors
        assert [block_header_hash(peer.ledger.block(i).header) for i in range(1, 4)] == \
            [block_header_hash(b.header) for b in good]
        # state and block store agree: the stored copy's state hash is the live one
        assert peer.ledger.block(3).metadata.state_hash == peer.ledger.state_hash()
    finally:
        peer.ledger.close()


def test_repeated_block_is_applied_once_and_restart_resumes_at_the_height(
    net: Net, tmp_path: Path, servers
) -> None:
    peer = make_peer(net, "h01", tmp_path / "p")
    try:
        genesis = peer.ledger.block(0)
        good = chain(net, genesis, 4)
        (port,) = free_ports(1)
        orderer = FakeOrderer([good[0], good[0], good[1], good[0], good[2]], hold_s=0.5)
        servers.append(serve(orderer, port))
        eps = [Endpoint("o", "ins01", "127.0.0.1", port)]
        errors = _catch_up(peer, eps, 4)
        assert errors == []  # the repeats were skipped, not refused
        hash3 = peer.ledger.state_hash()
    finally:
        peer.ledger.close()
    # Restart: the ledger reopens at height 4 and asks for block 4 only.
    orderer.blocks = good
    peer = make_peer(net, "h01", tmp_path / "p")
    try:
        assert peer.ledger.height() == 4 and peer.ledger.state_hash() == hash3
        _catch_up(peer, eps, 5)
        assert orderer.starts[-1] == 4
        assert block_header_hash(peer.ledger.block(4).header) == block_header_hash(good[3].header)
    finally:
        peer.ledger.close()
