"""``ledger verify`` and the protocol version (node.protocol): a release re-checking a ledger
past a config block that raised the version beyond what it implements does not judge the
later blocks by its own (older) rules -- it would call a sound ledger bad, or vouch for one
the new rules refuse. It stops there and says why (PROTOCOL_UNSUPPORTED), the blocks up to
the config block checked."""

from __future__ import annotations

import pytest
from rxchain.v1 import transaction_pb2 as tx_pb

from node.errors import RxError
from node.genesis import read_genesis
from node.ledger.verify import verify_ledger
from node.protocol import PROTOCOL_UNSUPPORTED, SUPPORTED_VERSIONS
from tests.validation.conftest import Net, Peer, StaticPolicies, config_block, invoke_block, next_config, rx_definition

BEYOND = max(SUPPORTED_VERSIONS) + 1


def test_verify_stops_at_a_version_this_release_lacks(peer: Peer, net: Net, tmp_path) -> None:
    assert list(peer.committer.commit_block(invoke_block(peer, net, "a")).validated.codes) == [tx_pb.VALID]
    _, raising = config_block(peer, net, next_config(peer, BEYOND))
    with pytest.raises(RxError):
        peer.committer.commit_block(raising)  # committed, then the peer stops
    raised_at = peer.ledger.height() - 1
    # a block ordered after it (by nodes of a newer release): this one cannot judge it
    after = invoke_block(peer, net, "b")
    validated = peer.committer.validator.validate(after, peer.ledger.height(), peer.ledger.blocks.last_hash())
    peer.ledger.commit(validated.block, validated.outcomes)
    height = peer.ledger.height()
    peer.ledger.close()
    genesis = read_genesis(net.home / "genesis.block")
    for policies in (None, StaticPolicies({"rx": rx_definition()})):
        report = verify_ledger(tmp_path / "ledger", genesis, policies=policies)
        assert not report.ok, report.summary()
        assert report.reason == PROTOCOL_UNSUPPORTED, report.summary()
        assert report.first_bad_block == raised_at + 1 and report.checked == raised_at + 1
        assert report.height == height
        assert f"protocol version {BEYOND}" in report.message
        assert "NOT VERIFIED" in report.summary() and "BAD" not in report.summary()


def test_verify_of_a_ledger_ending_at_the_raising_block_is_sound(peer: Peer, net: Net, tmp_path) -> None:
    """Every block up to and including the config block follows the old rules: sound."""
    _, raising = config_block(peer, net, next_config(peer, BEYOND))
    with pytest.raises(RxError):
        peer.committer.commit_block(raising)
    peer.ledger.close()
    report = verify_ledger(tmp_path / "ledger", read_genesis(net.home / "genesis.block"))
    assert report.ok, report.summary()
