"""trust6: a follow's extension (client.follow) confirmed in segments split at config blocks, each
by a majority of the orderers of the config in force before it -- a peer's extension too; the
verified config's orderers dialled at the addresses it names; the CAs a verified chain rotated
away from denied (configtool.CA_DENYLIST) after config-chain.json is removed.

The sources are the fakes of tests/client/test_follow_trust.py (no gRPC, an injected clock). Their
configuration renames the orderers (orderer.a ...): the rotation block a test serves installs the
genesis configuration with h01's CA replaced, whose one orderer is orderer.ins01 -- to the client,
a full turnover of the orderers."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from rxchain.v1 import block_pb2, config_pb2

from client import configtool, follow
from client.errors import RxClientError
from client.network import NetworkInfo, NodeEndpoint, load_network
from client.session import verified_network
from client.wallet import WalletIdentity
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Verifier
from node.genesis import config_from_genesis, read_genesis
from tests.client.test_follow_trust import _Clock, _fake, _follow, _net, _orderers_block, _World
from tests.client.test_session_ca import Rotated, _plain_block, _rotation_block, rotated  # noqa: F401


def _chain(rot: Rotated) -> tuple[block_pb2.Block, block_pb2.Block, block_pb2.Block]:
    """(genesis, h01's CA rotation -- block 1, as a peer serves it --, a plain block 2 after it),
    the home's config-chain.json removed."""
    (rot.home / configtool.CHAIN_STATE).unlink()
    genesis = read_genesis(rot.home / "genesis.block")
    rotation = _rotation_block(rot.home, genesis, rot.ca_der)
    two = _plain_block(rot.home, 2, rotation)
    two.metadata.last_config_block = 1
    return genesis, rotation, two


# ------------------------------------------------------------ 1: a peer's config block

def test_a_peers_config_block_no_orderer_holds_is_not_pinned(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """One compromised orderer (its key signs block 1: an admin-signed rotation never committed)
    and one compromised peer serving it: the peer's extension was taken on that one signature, the
    fork saved and its CA pinned. A config block a peer serves is now kept only once a majority of
    the orderers of the config before it (2 of a, b, c) hold it: none does, so nothing of it is
    saved; the orderers' own chain (the genesis block) is what the follow verifies."""
    genesis, fork, _ = _chain(rotated)
    world = _World(_Clock(), {"peer.h02": [genesis, fork], "orderer.a": [genesis], "orderer.b": [genesis],
                              "orderer.c": [genesis]})
    chain = _follow(rotated.home, _net(rotated.home, ("h02",), ("orderer.a", "orderer.b", "orderer.c")), world,
                    monkeypatch)
    assert chain.verified()[1].sequence == 0
    assert json.loads((rotated.home / configtool.CHAIN_STATE).read_text())["block"] == 0
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 0
    assert {"orderer.a:blocks 1-1", "orderer.b:blocks 1-1"} <= set(world.asked)


def test_a_peers_config_block_the_orderers_hold_is_taken(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The same block held by orderers a and b (2 of 3): the peer's extension is taken."""
    genesis, rotation, _ = _chain(rotated)
    held = [genesis, _orderers_block(rotation)]
    world = _World(_Clock(), {"peer.h02": [genesis, rotation], "orderer.a": held, "orderer.b": held})
    chain = _follow(rotated.home, _net(rotated.home, ("h02",), ("orderer.a", "orderer.b", "orderer.c")), world,
                    monkeypatch)
    assert chain.verified()[1].sequence == 1 and chain.height == 2
    assert "orderer.a:height" not in world.asked  # (the peer's extension, confirmed: no orderer was a source)


def test_a_peers_data_blocks_no_majority_holds_are_not_saved(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The peer serves blocks 1 (the rotation, which the orderers hold) and 2 (a data block no
    orderer holds: a fork). Saved, block 2 would be the checkpoint every honest peer's chain then
    differs at (CHAIN_RESTARTED, whose remedy drops the verified chain): the confirmed prefix is
    kept, block 2 is not -- the config in force, and the pin, are the same without it."""
    genesis, rotation, two = _chain(rotated)
    held = [genesis, _orderers_block(rotation)]
    world = _World(_Clock(), {"peer.h02": [genesis, rotation, two], "orderer.a": held, "orderer.b": held,
                              "orderer.ins01": held})
    chain = _follow(rotated.home, _net(rotated.home, ("h02",), ("orderer.a", "orderer.b", "orderer.c")), world,
                    monkeypatch)
    assert chain.height == 2 and chain.verified()[1].sequence == 1
    assert json.loads((rotated.home / configtool.CHAIN_STATE).read_text())["height"] == 2


# ------------------------------------------------------------ 2: segments, a full turnover

def test_blocks_past_a_full_orderer_turnover_are_confirmed_by_the_new_orderers(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Block 1 turns the orderers a, b, c over to orderer.ins01 (the config it installs lists only
    that one); block 2 is ordered by it. The majority always came from the configuration before
    the extension: a, b and c hold no block 2, so the orderers could never extend the chain past
    the turnover (ORDERERS_DISAGREE every follow). Each segment is now confirmed by the orderers
    of the config in force before it: block 1 by a and b, block 2 by orderer.ins01 -- dialled at
    the address the new config names (the network description lists only a, b, c)."""
    genesis, rotation, two = _chain(rotated)
    ordered = [genesis, _orderers_block(rotation), two]
    world = _World(_Clock(), {"orderer.a": ordered, "orderer.b": ordered[:2], "orderer.c": ordered[:2],
                              "orderer.ins01": ordered})
    monkeypatch.setattr(follow, "FOLLOW_ORDERERS", 1)  # (a alone is asked as a source)
    chain = _follow(rotated.home, _net(rotated.home, (), ("orderer.a", "orderer.b", "orderer.c")), world, monkeypatch)
    assert chain.height == 3 and chain.verified()[1].sequence == 1
    assert json.loads((rotated.home / configtool.CHAIN_STATE).read_text())["height"] == 3
    assert "orderer.b:blocks 1-1" in world.asked and "orderer.ins01:blocks 2-2" in world.asked
    assert "orderer.b:blocks 2-2" not in world.asked  # (not of the config block 2 was ordered under)


def test_a_config_block_is_confirmed_by_the_orderers_before_it_not_after(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The config block itself is judged by the orderers it replaces: orderer.ins01 -- the one the
    forged block would install -- holding it counts for nothing; a alone of a, b, c is no majority."""
    genesis, fork, _ = _chain(rotated)
    forked = [genesis, _orderers_block(fork)]
    world = _World(_Clock(), {"orderer.a": forked, "orderer.b": [genesis], "orderer.c": [genesis],
                              "orderer.ins01": forked})
    monkeypatch.setattr(follow, "FOLLOW_ORDERERS", 1)
    with pytest.raises(RxClientError) as e:
        _follow(rotated.home, _net(rotated.home, (), ("orderer.a", "orderer.b", "orderer.c")), world, monkeypatch)
    assert "ORDERERS_DISAGREE" in e.value.message and "1 of the 2 orderers needed" in e.value.message
    assert not (rotated.home / configtool.CHAIN_STATE).exists()


# ------------------------------------------------------------ 3: the config's orderers dialled

def test_an_orderer_a_config_update_added_is_dialled_at_the_config_address(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The verified configuration's orderer is orderer.a (a config update added it); network.yaml,
    written at `network up`, lists only orderer.old. Only network.yaml's orderers were dialled:
    no follow could reach the ordering service. The configuration's orderers are dialled too, at
    the address it names, pinned to their organisation's CA in it."""
    genesis, rotation, _ = _chain(rotated)
    net = _net(rotated.home, (), ("orderer.a",))
    config = config_pb2.ConsortiumConfig()
    config.CopyFrom(net.config)
    config.orderers[0].host, config.orderers[0].port = "orderer-a.example", 7443
    old = dataclasses.replace(net.orderers[0], name="orderer.old")
    net = dataclasses.replace(net, config=config, orderers=(old,))
    world = _World(_Clock(), {"orderer.a": [genesis, _orderers_block(rotation)]})
    dialled: list[tuple[str, str, bytes]] = []
    source = _fake(world)

    class _Recording(source):  # type: ignore[misc,valid-type]
        def __init__(self, identity: WalletIdentity, endpoint: NodeEndpoint, ca_pem: bytes,
                     deadline: float = float("inf"), clock: Callable[[], float] = world.clock,
                     orderer: bool = False) -> None:
            dialled.append((endpoint.name, endpoint.target, ca_pem))
            super().__init__(identity, endpoint, ca_pem, deadline, clock, orderer)

    monkeypatch.setattr(follow, "_Peer", _Recording)
    from client.wallet import load_identity
    chain = follow.follow_chain(rotated.home, net, load_identity(rotated.home, "h01", "dr-jiang"), budget_s=20.0,
                                clock=world.clock)
    assert chain.verified()[1].sequence == 1
    assert ("orderer.a", "orderer-a.example:7443", net.ca_pem("ins01")) in dialled
    assert [e.target for e in follow.orderer_endpoints(net)] == ["orderer-a.example:7443", old.target]


# ------------------------------------------------------------ 4: the denylist

def _genesis_hash(home: Path) -> bytes:
    return block_header_hash(read_genesis(home / "genesis.block").header)


def test_a_chain_saved_denies_the_ca_it_rotated_away_from(rotated: Rotated) -> None:  # noqa: F811
    """The chain verified (h01's CA rotated) is saved with the denylist beside it: h01's genesis
    CA, by the SHA-256 of its DER, in the documented JSON; a state saved before the denylist was
    kept writes it when resumed."""
    home = rotated.home
    path = home / configtool.CA_DENYLIST
    genesis_ca = config_from_genesis(read_genesis(home / "genesis.block"))
    old = next(o for o in genesis_ca.organizations if o.id == "h01").ca_cert_der
    assert not path.exists()  # (the fixture's: a state saved before the denylist was kept)
    configtool.ChainConfig(read_genesis(home / "genesis.block"), Verifier(), home / configtool.CHAIN_STATE)
    doc = json.loads(path.read_text())
    assert doc == {"format": 1, "genesis": _genesis_hash(home).hex(),
                   "rotated_away": [{"org": "h01", "ca_sha256": configtool.ca_fingerprint(old)}]}
    assert configtool.read_denylist(path, _genesis_hash(home)) == {configtool.ca_fingerprint(old): "h01"}
    # never shrunk by another entry; a CA a config block puts back in force is dropped
    configtool.add_to_denylist(path, _genesis_hash(home), {"ab" * 32: "h02"})
    assert set(configtool.read_denylist(path, _genesis_hash(home))) == {configtool.ca_fingerprint(old), "ab" * 32}
    configtool.add_to_denylist(path, _genesis_hash(home), {}, frozenset({"ab" * 32}))
    assert set(configtool.read_denylist(path, _genesis_hash(home))) == {configtool.ca_fingerprint(old)}


def test_a_damaged_denylist_fails_closed(rotated: Rotated) -> None:  # noqa: F811
    """A denylist that does not parse is no empty one: BAD_CONFIG (and a follow asks nobody)."""
    path = rotated.home / configtool.CA_DENYLIST
    path.write_text('{"format": 1, "genesis": "zz"')
    with pytest.raises(RxClientError) as e:
        configtool.read_denylist(path, _genesis_hash(rotated.home))
    assert e.value.reason == "BAD_CONFIG"
    from client.wallet import load_identity
    with pytest.raises(RxClientError) as e:
        follow.follow_chain(rotated.home, load_network(rotated.home), load_identity(rotated.home, "h01", "dr-jiang"))
    assert e.value.reason == "BAD_CONFIG"


def test_after_the_remedy_a_node_of_a_denied_ca_is_not_a_source(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The remedy for CHAIN_RESTARTED (config-chain.json removed) returns to the genesis CAs --
    h01's, rotated away from (its key leaked, say). A follow then pinned h01's nodes to it. They
    are refused CA_ROTATED_AWAY: the leaked CA's certificate serves nothing."""
    home = rotated.home
    configtool.ChainConfig(read_genesis(home / "genesis.block"), Verifier(), home / configtool.CHAIN_STATE)
    (home / configtool.CHAIN_STATE).unlink()  # the remedy
    genesis = read_genesis(home / "genesis.block")
    world = _World(_Clock(), {"peer.h01": [genesis, _plain_block(home, 1, genesis)]})
    net: NetworkInfo = _net(home, ("h01",), ())
    with pytest.raises(RxClientError) as e:
        _follow(home, net, world, monkeypatch)
    assert "peer.h01: CA_ROTATED_AWAY" in e.value.message
    assert "peer.h01:height" not in world.asked


def test_the_fhir_gateway_answers_a_denied_pin_503(rotated: Rotated) -> None:  # noqa: F811
    """CA_ROTATED_AWAY is no business rule refusing the request (nothing was sent): 503."""
    from client.fhir.server import error_reply
    reply = error_reply(RxClientError(configtool.CA_ROTATED_AWAY, "denied"), rotated.home)
    assert reply.status == 503


def test_a_session_pinned_to_a_denied_ca_follows_past_it(rotated: Rotated) -> None:  # noqa: F811
    """After the remedy the session's pin is h01's genesis CA, denied: it sends nothing to it and
    follows the new chain from h02's peer (confirmed by the orderer) -- which rotates h01's CA
    again -- then pins the new CA and the call goes through. With nobody to follow from, the call
    stays CA_ROTATED_AWAY."""
    from tests.client.test_session_ca import _as_ordered, _health_once, _Orderer, _ordering, _serving
    home = rotated.home
    configtool.ChainConfig(read_genesis(home / "genesis.block"), Verifier(), home / configtool.CHAIN_STATE)
    (home / configtool.CHAIN_STATE).unlink()  # the remedy
    assert _health_once(rotated) == configtool.CA_ROTATED_AWAY
    genesis = read_genesis(home / "genesis.block")
    chain = [genesis, _rotation_block(home, genesis, rotated.ca_der)]
    with _serving(home, "peer.h02", chain) as h02, _ordering(home, _Orderer(_as_ordered(chain))) as orderer:
        assert _health_once(rotated, h02, orderer_port=orderer) == "OK"
    assert verified_network(home, load_network(home)).config.sequence == 1
