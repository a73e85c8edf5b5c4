"""The consortium protocol version (node.protocol): raised by a config update only once every
node implements it, never lowered; a node that does not implement the version in force stops
with PROTOCOL_UNSUPPORTED instead of judging blocks by rules it lacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from netgen import generate
from rxchain.v1 import config_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from node.crypto.signing import Verifier
from node.errors import RxError
from node.genesis import config_from_genesis, make_genesis, read_genesis
from node.identity.msp import MSP
from node.orderer.configtx import ConfigTracker, OrdererConfig
from node.protocol import PROTOCOL_UNSUPPORTED, SUPPORTED_VERSIONS, protocol_version
from tests.foundation.conftest import small_consortium
from tests.validation.conftest import Net, Peer, config_block, config_tracker, next_config

ROOT = Path(__file__).resolve().parents[2]
BEYOND = max(SUPPORTED_VERSIONS) + 1  # a version no release of this code implements


def test_an_unset_version_is_version_one() -> None:
    assert protocol_version(config_pb2.ConsortiumConfig()) == 1
    assert 1 in SUPPORTED_VERSIONS


def test_orderers_refuse_to_admit_a_version_they_do_not_implement(peer: Peer, net: Net) -> None:
    env, _ = config_block(peer, net, next_config(peer, BEYOND))
    tracker = config_tracker(peer)
    at_ms = tx_pb.TxHeader.FromString(
        tx_pb.Transaction.FromString(tx_pb.Envelope.FromString(env).payload).header).timestamp_ms
    for check in (lambda: tracker.validate_now(env), lambda: tracker.check_broadcast(env, at_ms)):
        with pytest.raises(RxError) as err:
            check()
        assert err.value.reason == "BAD_CONFIG_UPDATE"
        # the admins' update was refused, nothing changed: not "the consortium runs" it, nor
        # the advice for a node that stopped (found submitting one on a sample network)
        assert err.value.message.startswith(f"protocol version {BEYOND}: this orderer's release implements "
                                            f"{sorted(SUPPORTED_VERSIONS)}"), err.value.message
        assert "consortium runs" not in err.value.message and "start the node again" not in err.value.message
    ok, _ = config_block(peer, net, next_config(peer, 1))
    assert tracker.validate_now(ok).protocol_version == 1


def test_the_version_is_never_lowered_on_orderers_and_peers_alike(peer: Peer, net: Net) -> None:
    """Lowering is refused by the deterministic rules every node applies (the orderers' apply
    path and the peers' validator agree); an explicit 1 after an unset one is no change."""
    _, block = config_block(peer, net, next_config(peer, 1))
    assert config_tracker(peer).block_config(block) is not None
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.VALID]
    _, lower = config_block(peer, net, next_config(peer, 0))  # 0 reads as 1: not lower
    assert list(peer.committer.commit_block(lower).validated.codes) == [tx_pb.VALID]
    # a config in force at a version beyond this release cannot be reached here, so the
    # lowering rule is checked against a tracker holding one
    cur = peer.ledger.current_config()
    assert cur is not None
    ahead = config_pb2.ConsortiumConfig()
    ahead.CopyFrom(cur)
    ahead.protocol_version = BEYOND
    tracker = ConfigTracker(OrdererConfig(ahead, MSP(ahead, Verifier()), 0), Verifier())
    _, down = config_block(peer, net, next_config(peer, BEYOND - 1))
    assert tracker.block_config(down) is None


def test_a_peer_commits_the_block_raising_the_version_then_stops(peer: Peer, net: Net) -> None:
    """Valid by the rules in force when it was ordered (orderers running a newer release
    admitted it): committed like on every other peer, then PROTOCOL_UNSUPPORTED -- fatal to
    the commit loop, so the peer stops and its next start refuses (test below)."""
    height = peer.ledger.height()
    _, block = config_block(peer, net, next_config(peer, BEYOND))
    with pytest.raises(RxError) as err:
        peer.committer.commit_block(block)
    assert err.value.reason == PROTOCOL_UNSUPPORTED
    assert f"protocol version {BEYOND}" in err.value.message
    assert peer.ledger.height() == height + 1
    cur = peer.ledger.current_config()
    assert cur is not None and cur.protocol_version == BEYOND
    assert peer.ledger.tx_location(
        tx_pb.TxHeader.FromString(tx_pb.Transaction.FromString(
            tx_pb.Envelope.FromString(block.data.envelopes[0]).payload).header).tx_id
    ) is not None


@pytest.mark.parametrize("module", ["node.peer", "node.orderer"])
def test_a_node_of_a_consortium_beyond_its_release_refuses_to_start(tmp_path: Path, module: str) -> None:
    """Exit code 2 and one PROTOCOL_UNSUPPORTED line naming the version, no traceback. (netgen
    refuses such a genesis: this one is made by other means, netgen's with the version raised.)"""
    net = generate(small_consortium(), tmp_path / "net")
    genesis = read_genesis(net.genesis_path)
    config = config_from_genesis(genesis)
    config.protocol_version = BEYOND
    header = tx_pb.TxHeader.FromString(tx_pb.Transaction.FromString(
        tx_pb.Envelope.FromString(genesis.data.envelopes[0]).payload).header)
    net.genesis_path.write_bytes(make_genesis(config, header.timestamp_ms).SerializeToString())
    node = "peer.h01" if module == "node.peer" else "orderer.ins01"
    proc = subprocess.run([sys.executable, "-m", module, "--config", str(net.node_config_path(node))],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{PROTOCOL_UNSUPPORTED}: {node}: the consortium runs protocol version {BEYOND}" in last, last
