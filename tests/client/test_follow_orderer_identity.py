"""ops1: client.follow's majority of orderers counted orderers by NAME. The config rules keep raft
ids unique, not names nor certificates, so a verified configuration may list one orderer (one
certificate: its block signatures) under two names -- counted twice, it confirmed its own fork --
or two orderers under one name -- counted once, the majority needed was too small. Now an
orderer is its configuration entries sharing a raft id or a certificate (fakes of
tests/client/test_follow_trust.py: no gRPC, an injected clock, no sleeps)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from rxchain.v1 import config_pb2

from client import follow
from client.errors import RxClientError
from client.network import NetworkInfo, load_network
from client.session import verified_network
from tests.client.test_follow_trust import _Clock, _follow, _net, _unverified_rotation, _World
from tests.client.test_session_ca import Rotated, _rotation_block, rotated  # noqa: F401


def _config(net: NetworkInfo, entries: list[tuple[int, str, bytes]]) -> NetworkInfo:
    """``net`` whose configuration lists these (raft id, name, certificate) orderer entries."""
    config = config_pb2.ConsortiumConfig()
    config.CopyFrom(net.config)
    node = config_pb2.OrdererNode()
    node.CopyFrom(config.orderers[0])
    del config.orderers[:]
    for raft_id, name, cert in entries:
        config.orderers.add().CopyFrom(node)
        config.orderers[-1].raft_id, config.orderers[-1].name = raft_id, name
        config.orderers[-1].cert_der = cert or node.cert_der
    return dataclasses.replace(net, config=config)


def test_one_orderer_listed_under_two_names_counts_once(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The verified configuration lists orderer a twice -- as orderer.a and orderer.a2 (two raft
    ids, one certificate: one key signs for both) -- and orderer b. Compromised a serves a fork
    holding a config update never committed and, asked as orderer.a2, "holds" it too: counted by
    name that was 2 of the 3 names' majority of 2, and the session saved the fork and pinned its
    CA. The orderers are a and b: a alone is no majority -- ORDERERS_DISAGREE, nothing saved."""
    state, genesis, fork = _unverified_rotation(rotated)
    world = _World(_Clock(), {"orderer.a": [genesis, fork], "orderer.a2": [genesis, fork], "orderer.b": [genesis]})
    net = _net(rotated.home, (), ("orderer.a", "orderer.a2", "orderer.b"))
    net = _config(net, [(1, "orderer.a", b""), (2, "orderer.a2", b""), (3, "orderer.b", b"certificate of b")])
    assert follow.orderers_needed(net) == 2  # (of 2 orderers; 3 names)
    monkeypatch.setattr(follow, "FOLLOW_ORDERERS", 1)  # (a alone is asked as a source)
    with pytest.raises(RxClientError) as e:
        _follow(rotated.home, net, world, monkeypatch)
    assert "ORDERERS_DISAGREE" in e.value.message and "1 of the 2 orderers needed" in e.value.message, e.value.message
    assert "orderer.a2:blocks 1-1" not in world.asked and "orderer.b:blocks 1-1" in world.asked
    assert not state.exists()
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 0


def test_an_orderer_listed_with_one_raft_id_under_two_names_counts_once(rotated: Rotated) -> None:  # noqa: F811
    """Entries sharing a raft id are one orderer too, whatever their certificates (the config
    rules refuse such a config; a configuration read from elsewhere is counted so all the same):
    three orderers under four names need 2, not the 3 of four names."""
    net = _config(load_network(rotated.home), [(1, "orderer.a", b""), (1, "orderer.a2", b"x"), (2, "orderer.b", b"y"),
                                               (3, "orderer.c", b"z")])
    assert follow.orderers_needed(net) == 2


def test_two_orderers_under_one_name_count_as_two_in_the_majority(rotated: Rotated,  # noqa: F811
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Four orderers (four raft ids, four certificates), two of them named orderer.a: counted by
    name there were three, a majority of 2 -- a fork a and b hold was taken though the Raft
    majority of four is three. Now 3 are needed, and an endpoint named orderer.a counts once (it
    cannot tell which of the two answered): with c holding another block, refused."""
    state, genesis, fork = _unverified_rotation(rotated)
    world = _World(_Clock(), {"orderer.a": [genesis, fork], "orderer.b": [genesis, fork], "orderer.c": [genesis]})
    net = _net(rotated.home, (), ("orderer.a", "orderer.b", "orderer.c"))
    net = _config(net, [(1, "orderer.a", b""), (2, "orderer.a", b"certificate of a'"),
                        (3, "orderer.b", b"certificate of b"), (4, "orderer.c", b"certificate of c")])
    assert follow.orderers_needed(net) == 3
    monkeypatch.setattr(follow, "FOLLOW_ORDERERS", 1)
    with pytest.raises(RxClientError) as e:
        _follow(rotated.home, net, world, monkeypatch)
    assert "ORDERERS_DISAGREE" in e.value.message and "2 of the 3 orderers needed" in e.value.message, e.value.message
    assert not state.exists()


def test_distinct_orderers_still_make_the_majority(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """(Unchanged) three orderers of three certificates, a and b holding the rotation: taken."""
    state, genesis, rotation = _unverified_rotation(rotated)
    world = _World(_Clock(), {"orderer.a": [genesis, rotation], "orderer.b": [genesis, rotation],
                              "orderer.c": [genesis]})
    net = _net(rotated.home, (), ("orderer.a", "orderer.b", "orderer.c"))
    assert follow.orderers_needed(net) == 2
    chain = _follow(rotated.home, net, world, monkeypatch)
    assert chain.height == 2 and json.loads(state.read_text())["height"] == 2
