"""Review of client.follow's majority rule for an orderer's extension (fakes of
tests/client/test_follow_trust.py: no gRPC, an injected clock, no sleeps)."""

from __future__ import annotations

import dataclasses

import pytest

from client import configtool, follow
from client.errors import RxClientError
from client.network import load_network
from client.session import verified_network
from node.genesis import read_genesis
from tests.client.test_follow_trust import _Clock, _follow, _net, _orderers_block, _World
from tests.client.test_session_ca import Rotated, _rotation_block, rotated  # noqa: F401


def test_an_orderer_listed_at_two_addresses_counts_once(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """network.yaml lists orderer a at two addresses (say its internal and its public one) and
    orderer b. Compromised a serves a fork holding a config update never committed: the majority
    counted endpoints, so a at its second address "confirmed" its own fork (2 of the 2 needed) and
    the session saved it and pinned its CA. The orderers are a and b: a alone is no majority."""
    state = rotated.home / configtool.CHAIN_STATE
    state.unlink()
    genesis = read_genesis(rotated.home / "genesis.block")
    fork = _orderers_block(_rotation_block(rotated.home, genesis, rotated.ca_der))
    world = _World(_Clock(), {"orderer.a": [genesis, fork], "orderer.b": [genesis]})
    net = _net(rotated.home, (), ("orderer.a", "orderer.a", "orderer.b"))
    net = dataclasses.replace(net, orderers=(net.orderers[0], dataclasses.replace(net.orderers[1], port=17051),
                                             net.orderers[2]))
    monkeypatch.setattr(follow, "FOLLOW_ORDERERS", 1)  # (a alone is asked as a source)
    with pytest.raises(RxClientError) as e:
        _follow(rotated.home, net, world, monkeypatch)
    assert "ORDERERS_DISAGREE" in e.value.message and "1 of the 2 orderers needed" in e.value.message
    assert not state.exists()
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 0
    assert "orderer.b:blocks 1-1" in world.asked
    assert follow.orderers_needed(net) == 2
