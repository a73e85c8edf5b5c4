"""Review of client.follow's majority rule for an orderer's extension (fakes of
tests/client/test_follow_trust.py: no gRPC, an injected clock, no sleeps)."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Generator

import pytest
from rxchain.v1 import block_pb2, config_pb2

from client import configtool, follow
from client.errors import RxClientError
from client.network import load_network
from client.session import verified_network
from client.wallet import load_identity
from node.crypto.signing import Verifier
from node.genesis import read_genesis
from tests.client.test_follow_trust import (
    STALL,
    _Clock,
    _fake,
    _follow,
    _net,
    _orderers_block,
    _unsaved_chain_of_three,
    _unverified_rotation,
    _World,
)
from tests.client.test_session_ca import Rotated, _plain_block, _rotation_block, rotated  # noqa: F401


def test_an_orderer_listed_at_two_addresses_counts_once(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """network.yaml lists orderer a at two addresses (say its internal and its public one) and
    orderer b. Compromised a serves a fork holding a config update never committed: the majority
    counted endpoints, so a at its second address "confirmed" its own fork (2 of the 2 needed) and
    the session saved it and pinned its CA. The orderers are a and b: a alone is no majority."""
    state, genesis, fork = _unverified_rotation(rotated)
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


def test_the_last_source_leaves_time_to_confirm_what_it_served(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A long gap: the only orderer asked as a source (the last source, whose share is all the
    time left) streams block 1, then its stream runs to the deadline of its share. Its share was
    the follow's deadline itself, so no time was left to ask the other orderer for block 1: the
    prefix the stream delivered was dropped (ORDERERS_DISAGREE, "not asked"), and every follow
    alike -- a gap longer than one follow's time was never crossed. The last orderer's share
    leaves the agreement calls their time: the prefix the other orderer holds is saved."""
    state, genesis, rotation, two = _unsaved_chain_of_three(rotated)
    world = _World(_Clock(), {"orderer.a": [genesis, rotation, two], "orderer.b": [genesis, rotation]})
    source = _fake(world)

    class _Slow(source):  # type: ignore[misc,valid-type]
        """Orderer a's stream to block 2 sends blocks up to 1, then stalls until its deadline."""

        def blocks(self, start: int, stop: int, bound: float | None = None) -> Generator[block_pb2.Block, None, None]:
            if self.name != "orderer.a" or stop != 2:
                yield from super().blocks(start, stop, bound)
                return
            world.asked.append(f"{self.name}:blocks {start}-{stop}")
            yield from [genesis, rotation][start:]
            self._stall(follow.DELIVER_S if bound is None else bound)

    monkeypatch.setattr(follow, "FOLLOW_ORDERERS", 1)  # (a alone is asked as a source)
    monkeypatch.setattr(follow, "_Peer", _Slow)
    start = world.clock.now
    with pytest.raises(RxClientError) as e:
        follow.follow_chain(rotated.home, _net(rotated.home, (), ("orderer.a", "orderer.b")),
                            load_identity(rotated.home, "h01", "dr-jiang"), budget_s=20.0, clock=world.clock)
    assert e.value.reason == "SERVICE_UNAVAILABLE" and "orderer.a" in e.value.message
    assert "orderer.b:blocks 1-1" in world.asked
    assert json.loads(state.read_text())["height"] == 2
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 1
    assert world.clock.now - start <= 20.0


def test_an_orderer_the_config_removed_does_not_count(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The verified configuration's orderers are a, b and c (a config update removed orderer old
    -- say for a leaked key -- and added c); network.yaml, written at `network up`, still lists old
    and not c. Compromised a serves a fork and old (its leaked TLS key, still issued by its
    organisation's CA) answers it holds it: the count was of the endpoints listed, so 2 of the 2
    needed, and the fork was saved and its CA pinned. Only the verified configuration's orderers
    count: a alone of a, b, c holds it."""
    state, genesis, fork = _unverified_rotation(rotated)
    world = _World(_Clock(), {"orderer.a": [genesis, fork], "orderer.old": [genesis, fork],
                              "orderer.b": [genesis]})
    net = _net(rotated.home, (), ("orderer.a", "orderer.b", "orderer.c"))
    old = dataclasses.replace(net.orderers[0], name="orderer.old")
    net = dataclasses.replace(net, orderers=(net.orderers[0], old, net.orderers[1]))
    monkeypatch.setattr(follow, "FOLLOW_ORDERERS", 1)  # (a alone is asked as a source)
    with pytest.raises(RxClientError) as e:
        _follow(rotated.home, net, world, monkeypatch)
    assert "ORDERERS_DISAGREE" in e.value.message and "1 of the 2 orderers needed" in e.value.message
    assert "orderer.old: not an orderer of the verified configuration" in e.value.message
    assert not state.exists()
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 0


def test_records_keys_read_back_are_bounded_and_well_formed(rotated: Rotated) -> None:  # noqa: F811
    """config-chain.json's records_keys (the keys of the records certificates the chain put in
    force, for the BAD_WALLET hint) are kept at MAX_RECORDS_KEYS_KEPT per organisation when the
    chain notes them -- but a file holding more (an edited or damaged cache) was taken whole, any
    64 characters as a key, and saved back so. Read back, they are bounded, hex, each once, and
    the key of the records certificate in force is among them."""
    state = rotated.home / configtool.CHAIN_STATE
    raw = json.loads(state.read_text())
    many = [f"{i:064x}" for i in range(configtool.MAX_RECORDS_KEYS_KEPT + 8)]
    raw["records_keys"] = {"h01": [*many, many[-1], "z" * 64]}
    state.write_text(json.dumps(raw))
    chain = configtool.ChainConfig(read_genesis(rotated.home / "genesis.block"), Verifier(), state)
    assert chain.resumed
    keys = chain.records_keys["h01"]
    assert len(keys) <= configtool.MAX_RECORDS_KEYS_KEPT and len(set(keys)) == len(keys)
    assert "z" * 64 not in keys
    in_force = configtool.records_key_fingerprint(
        next(o for o in chain.verified()[1].organizations if o.id == "h01").records_cert_der)
    assert in_force in keys


def _forked(rotated: Rotated,  # noqa: F811
            orderers: tuple[str, ...] = ("orderer.a", "orderer.b", "orderer.c"),
            ) -> tuple[list[block_pb2.Block], list[block_pb2.Block]]:
    """The chain the home verified (blocks 0-1: h01's CA rotated) as orderers serve it, and a fork
    of it: another block 1, signed by an orderer's key alone -- it verifies from genesis.block.
    The configuration the home verified (config-chain.json's, whose orderers count: a majority of
    them) lists ``orderers`` as its orderer nodes, as :func:`_net`'s does."""
    state = rotated.home / configtool.CHAIN_STATE
    raw = json.loads(state.read_text())
    config = config_pb2.ConsortiumConfig.FromString(base64.b64decode(raw["config"]))
    node = config_pb2.OrdererNode()
    node.CopyFrom(config.orderers[0])
    del config.orderers[:]
    for raft_id, name in enumerate(orderers, 1):
        config.orderers.add().CopyFrom(node)
        config.orderers[-1].name, config.orderers[-1].raft_id = name, raft_id
        if raft_id > 1:  # each orderer its own certificate (as _net's; only the first one signs)
            config.orderers[-1].cert_der = b"certificate of " + name.encode()
    raw["config"] = base64.b64encode(config.SerializeToString()).decode()
    state.write_text(json.dumps(raw))
    genesis = read_genesis(rotated.home / "genesis.block")
    rotation = _orderers_block(_rotation_block(rotated.home, genesis, rotated.ca_der))
    return [genesis, rotation], [genesis, _orderers_block(_plain_block(rotated.home, 1, genesis))]


def test_one_orderers_fork_is_no_restart_while_the_others_are_unreachable(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """No peer to ask; compromised orderer a serves a fork diverging at the checkpoint (block 1),
    verifying from genesis.block with its signature alone, while orderers b and c are unreachable
    (they stall). No other source extended the chain, so a's CHAIN_RESTARTED was said: the
    operator was told to remove config-chain.json -- the genesis CAs pinned again. From orderers
    a restart now needs a majority (2 of 3) showing that block: SERVICE_UNAVAILABLE naming a,
    nothing changed."""
    state = rotated.home / configtool.CHAIN_STATE
    _, fork = _forked(rotated)
    saved = state.read_bytes()
    world = _World(_Clock(), {"orderer.a": fork, "orderer.b": STALL, "orderer.c": STALL})
    net = _net(rotated.home, (), ("orderer.a", "orderer.b", "orderer.c"))
    start = world.clock.now
    with pytest.raises(RxClientError) as e:
        _follow(rotated.home, net, world, monkeypatch)
    assert e.value.reason == "SERVICE_UNAVAILABLE"
    assert "the orderer orderer.a's chain" in e.value.message and "1 of the 2 orderers needed" in e.value.message
    assert "orderer.b:blocks 1-1" in world.asked  # (the others were asked for a's block 1)
    assert state.read_bytes() == saved
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 1
    assert world.clock.now - start <= 20.0


def test_an_orderers_fork_counts_orderers_as_the_majority_rule_does(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Compromised a, listed at two addresses, and orderer old -- removed by a config update but
    still in network.yaml -- show the same fork; b and c (the verified configuration's other
    orderers) are unreachable. Counted by endpoint that was three sources saying the network
    restarted; counted as the majority rule counts (by name, the verified configuration's
    orderers) it is a alone: SERVICE_UNAVAILABLE, nothing changed."""
    state = rotated.home / configtool.CHAIN_STATE
    _, fork = _forked(rotated)
    saved = state.read_bytes()
    world = _World(_Clock(), {"orderer.a": fork, "orderer.old": fork, "orderer.b": STALL, "orderer.c": STALL})
    net = _net(rotated.home, (), ("orderer.a", "orderer.b", "orderer.c"))
    a, b, c = net.orderers
    net = dataclasses.replace(net, orderers=(a, dataclasses.replace(a, port=17051),
                                             dataclasses.replace(a, name="orderer.old"), b, c))
    with pytest.raises(RxClientError) as e:
        _follow(rotated.home, net, world, monkeypatch, budget_s=30.0)
    assert e.value.reason == "SERVICE_UNAVAILABLE" and "CHAIN_RESTARTED" not in e.value.message
    assert "orderer.old: not an orderer of the verified configuration" in e.value.message
    assert state.read_bytes() == saved


def test_a_fork_a_majority_of_the_orderers_hold_is_a_restart(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Orderers a and b (2 of 3) hold the same other block 1, c is unreachable: the network was
    started again -- CHAIN_RESTARTED naming the remedy, nothing changed."""
    state = rotated.home / configtool.CHAIN_STATE
    _, fork = _forked(rotated)
    saved = state.read_bytes()
    world = _World(_Clock(), {"orderer.a": fork, "orderer.b": fork, "orderer.c": STALL})
    with pytest.raises(RxClientError) as e:
        _follow(rotated.home, _net(rotated.home, (), ("orderer.a", "orderer.b", "orderer.c")), world, monkeypatch)
    assert e.value.reason == "CHAIN_RESTARTED" and f"remove {state}" in e.value.message, e.value.message
    assert state.read_bytes() == saved


def test_a_peers_fork_is_still_a_restart_on_its_own(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """(Unchanged) a peer's chain that verifies from genesis.block and diverges at the checkpoint
    is CHAIN_RESTARTED once no other source extends the chain: no majority is asked of peers."""
    state = rotated.home / configtool.CHAIN_STATE
    _, fork = _forked(rotated)
    saved = state.read_bytes()
    world = _World(_Clock(), {"peer.h02": fork})
    with pytest.raises(RxClientError) as e:
        _follow(rotated.home, _net(rotated.home, ("h02",), ()), world, monkeypatch)
    assert e.value.reason == "CHAIN_RESTARTED" and "the peer peer.h02's chain" in e.value.message
    assert state.read_bytes() == saved
