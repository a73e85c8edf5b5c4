"""What a session's follow of the config chain (client.follow) trusts: an extension an orderer
serves is taken only once a majority of the orderers hold its last block; no source starves the
others of the follow's budget; a config-chain.json of a newer release is refused, not dropped.

The sources here are fakes (no gRPC): :class:`_Source` replaces ``client.follow._Peer`` and
answers from a list of blocks, or stalls -- it moves an injected clock by the whole time a call
may take (its bound, or what the source's deadline leaves) and fails as a deadline does."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Generator
from pathlib import Path

import pytest
from rxchain.v1 import block_pb2, config_pb2

from client import configtool, follow
from client.errors import RxClientError
from client.network import NetworkInfo, NodeEndpoint, load_network
from client.session import Session, verified_network
from client.wallet import WalletIdentity, load_identity
from node.crypto.signing import Verifier
from node.genesis import read_genesis
from tests.client.test_session_ca import Rotated, _plain_block, _rotation_block, rotated  # noqa: F401

STALL = "stall"


class _Clock:
    """A monotonic clock that moves only when told (no sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class _World:
    clock: _Clock
    served: dict[str, list[block_pb2.Block] | str]  # by endpoint name: its chain, or STALL
    asked: list[str] = dataclasses.field(default_factory=list)  # (name, call) in order
    waits: dict[str, float] = dataclasses.field(default_factory=dict)  # the time each source stalled
    cut: dict[str, int] = dataclasses.field(default_factory=dict)  # by name: a stream ends after that many blocks


def _fake(world: _World) -> type[follow._Peer]:
    class _Source(follow._Peer):
        def __init__(self, identity: WalletIdentity, endpoint: NodeEndpoint, ca_pem: bytes,
                     deadline: float = float("inf"), clock: Callable[[], float] = world.clock,
                     orderer: bool = False) -> None:
            self.name, self.orderer = endpoint.name, orderer
            self._deadline, self._clock = deadline, clock

        def close(self) -> None:
            pass

        def _served(self) -> list[block_pb2.Block] | str:
            if self.name not in world.served:  # (a node nobody runs here: nothing answers)
                raise RxClientError("SERVICE_UNAVAILABLE", f"{self.name}: connection refused")
            return world.served[self.name]

        def _stall(self, bound: float) -> None:
            waited = self._timeout(bound)  # (SERVICE_UNAVAILABLE once the deadline passed)
            world.clock.now += waited
            world.waits[self.name] = world.waits.get(self.name, 0.0) + waited
            raise RxClientError("SERVICE_UNAVAILABLE", f"{self.name}: deadline exceeded")

        def height(self) -> int:
            world.asked.append(f"{self.name}:height")
            chain = self._served()
            if isinstance(chain, str):
                self._timeout(follow.STATUS_TIMEOUT_S)
                return 2  # (it answers its height at once, then stalls its streams)
            return len(chain)

        def blocks(self, start: int, stop: int, bound: float | None = None) -> Generator[block_pb2.Block, None, None]:
            world.asked.append(f"{self.name}:blocks {start}-{stop}")
            chain = self._served()
            if isinstance(chain, str):
                self._stall(follow.DELIVER_S if bound is None else bound)
                return
            self._timeout(follow.DELIVER_S if bound is None else bound)
            for sent, block in enumerate(chain[start:stop + 1]):
                if sent == world.cut.get(self.name, -1):
                    raise RxClientError("SERVICE_UNAVAILABLE", f"{self.name}: stream reset")
                yield block

    return _Source


def _net(home: Path, peers: tuple[str, ...], orderers: tuple[str, ...]) -> NetworkInfo:
    """The home's network with the peers of the organisations ``peers`` and orderers of ins01
    named ``orderers`` (fakes answer for them by name), which its configuration lists as its
    orderer nodes (the majority an orderer's blocks need is of those: follow.orderers_needed)."""
    net = load_network(home)
    ins01 = next(o for o in net.orderers if o.name == "orderer.ins01")
    config = config_pb2.ConsortiumConfig()
    config.CopyFrom(net.config)
    if orderers:
        node = config.orderers[0]
        del config.orderers[:]
        for raft_id, name in enumerate(dict.fromkeys(orderers), 1):
            config.orderers.add().CopyFrom(node)
            config.orderers[-1].name, config.orderers[-1].raft_id = name, raft_id
            if raft_id > 1:  # each orderer its own certificate (the fakes sign nothing: any bytes)
                config.orderers[-1].cert_der = b"certificate of " + name.encode()
    return dataclasses.replace(net, peers=tuple(p for org in peers for p in net.peers if p.org == org),
                               orderers=tuple(dataclasses.replace(ins01, name=n) for n in orderers), config=config)


def _follow(home: Path, net: NetworkInfo, world: _World, monkeypatch: pytest.MonkeyPatch,
            budget_s: float = 20.0) -> configtool.ChainConfig:
    monkeypatch.setattr(follow, "_Peer", _fake(world))
    return follow.follow_chain(home, net, load_identity(home, "h01", "dr-jiang"), budget_s=budget_s,
                               clock=world.clock)


def _orderers_block(block: block_pb2.Block) -> block_pb2.Block:
    """``block`` as an orderer serves it: no validation codes (peers write them)."""
    out = block_pb2.Block()
    out.CopyFrom(block)
    del out.metadata.validation_codes[:]
    return out


def _unsaved_chain_of_three(rot: Rotated) -> tuple[Path, block_pb2.Block, block_pb2.Block, block_pb2.Block]:
    """The home's saved chain (config-chain.json) removed, and a chain of three blocks as an
    orderer serves them: genesis, h01's CA rotation, a plain block 2 after it -- (the removed
    state file, the three blocks)."""
    state, genesis, rotation = _unverified_rotation(rot)
    two = _plain_block(rot.home, 2, rotation)
    two.metadata.last_config_block = 1
    return state, genesis, rotation, two


# ------------------------------------------------------------ 1: an orderer's extension

def _unverified_rotation(rot: Rotated) -> tuple[Path, block_pb2.Block, block_pb2.Block]:
    """h01's home verifying nothing (its config-chain.json removed): the chain state's path, the
    genesis block and a block 1 rotating h01's CA, signed as the orderers sign."""
    state = rot.home / configtool.CHAIN_STATE
    state.unlink()
    genesis = read_genesis(rot.home / "genesis.block")
    return state, genesis, _orderers_block(_rotation_block(rot.home, genesis, rot.ca_der))


def test_one_orderer_extending_the_chain_with_a_proposal_never_committed_moves_nothing(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """No peer extends the chain; the first orderer asked -- compromised: its key signs blocks
    alone -- serves block 1 holding an admin-signed config update the orderers never committed
    (an abandoned proposal: h01's CA rotated). Its one signature was enough: the session saved
    the fork and pinned its CA. An orderer's extension is now taken only once a majority of the
    verified config's orderers (2 of 3) hold its last block: the other two hold no block 1, so
    nothing of it is saved or pinned, and the reason says so."""
    state, genesis, fork = _unverified_rotation(rotated)
    world = _World(_Clock(), {"orderer.a": [genesis, fork], "orderer.b": [genesis], "orderer.c": [genesis]})
    net = _net(rotated.home, (), ("orderer.a", "orderer.b", "orderer.c"))
    chain = _follow(rotated.home, net, world, monkeypatch)
    # (orderer b's chain -- the genesis block, which a and c hold too -- is all that is taken)
    assert chain.height == 1 and chain.verified()[1].sequence == 0
    assert json.loads(state.read_text())["height"] == 1
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 0
    assert "orderer.b:blocks 1-1" in world.asked and "orderer.c:blocks 1-1" in world.asked
    assert follow.orderers_needed(net) == 2


def test_an_orderers_extension_a_majority_holds_is_taken(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The same rotation block served by orderer a and held by orderer b (2 of 3, c down): it is
    the orderers' chain, taken and saved."""
    state, genesis, rotation = _unverified_rotation(rotated)
    world = _World(_Clock(), {"orderer.a": [genesis, rotation], "orderer.b": [genesis, rotation],
                              "orderer.c": STALL})
    net = _net(rotated.home, (), ("orderer.c", "orderer.a", "orderer.b"))
    chain = _follow(rotated.home, net, world, monkeypatch)
    assert chain.height == 2 and chain.verified()[1].sequence == 1
    assert json.loads(state.read_text())["height"] == 2


def test_an_orderers_extension_with_a_minority_is_refused_orderers_disagree(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Orderer a alone holds the rotation block (b and c hold another block 1, signed alike):
    ORDERERS_DISAGREE is named in the follow's failure, nothing of a's saved."""
    state, genesis, rotation = _unverified_rotation(rotated)
    other = _plain_block(rotated.home, 1, genesis)
    world = _World(_Clock(), {"orderer.a": [genesis, rotation], "orderer.b": [genesis, other],
                              "orderer.c": [genesis, other]})
    net = _net(rotated.home, (), ("orderer.a", "orderer.b", "orderer.c"))
    monkeypatch.setattr(follow, "FOLLOW_ORDERERS", 1)  # (a alone is asked as a source)
    with pytest.raises(RxClientError) as e:
        _follow(rotated.home, net, world, monkeypatch)
    assert e.value.reason == "SERVICE_UNAVAILABLE"
    assert "ORDERERS_DISAGREE" in e.value.message and "1 of the 2 orderers needed" in e.value.message
    assert not state.exists()


def test_an_orderers_stream_cut_short_keeps_the_prefix_a_majority_holds(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """An orderer's stream cut after blocks 0-1 of its 3 (a long gap is followed over several
    follows, each within its share of the budget): the prefix it sent that the other orderer
    (2 of 2) holds is saved -- the next follow goes on from there -- and nothing past it."""
    state, genesis, rotation, two = _unsaved_chain_of_three(rotated)
    world = _World(_Clock(), {"orderer.a": [genesis, rotation, two], "orderer.b": [genesis, rotation]},
                   cut={"orderer.a": 2})
    monkeypatch.setattr(follow, "FOLLOW_ORDERERS", 1)  # (a alone is asked as a source)
    with pytest.raises(RxClientError) as e:
        _follow(rotated.home, _net(rotated.home, (), ("orderer.a", "orderer.b")), world, monkeypatch)
    assert e.value.reason == "SERVICE_UNAVAILABLE" and "orderer.a: stream reset" in e.value.message
    assert json.loads(state.read_text())["height"] == 2
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 1


# ------------------------------------------------------------ 2: one stalling source

def test_a_stalling_first_peer_leaves_the_others_their_share(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The first peer (asked first every follow) answers its height, then stalls every stream up
    to its bound: with the whole budget as its deadline it used all of it (20 s here, a stream's
    bound 30 s), and the next peer -- serving the rotation -- was never asked: no follow could
    ever succeed. Each source now gets a share of the time left (the budget over the sources not
    asked yet): the stalling peer is cut at its share, the next one serves the rotation (which
    the orderer -- at the address the configuration names -- holds: a config block a peer serves
    is confirmed by the orderers)."""
    (rotated.home / configtool.CHAIN_STATE).unlink()
    genesis = read_genesis(rotated.home / "genesis.block")
    rotation = _rotation_block(rotated.home, genesis, rotated.ca_der)
    world = _World(_Clock(), {"peer.h02": STALL, "peer.p01": [genesis, rotation],
                              "orderer.ins01": [genesis, _orderers_block(rotation)]})
    start = world.clock.now
    chain = _follow(rotated.home, _net(rotated.home, ("h02", "p01"), ()), world, monkeypatch, budget_s=20.0)
    assert chain.verified()[1].sequence == 1
    assert "peer.p01:height" in world.asked
    assert world.waits["peer.h02"] <= 10.0  # (its share: 20 s over the 2 sources)
    assert world.clock.now - start <= 20.0


def test_no_source_is_asked_past_the_follow_budget(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Every source stalls: the follow still ends within its budget (the shares add up to it),
    naming each failure; nothing saved."""
    state = rotated.home / configtool.CHAIN_STATE
    saved = state.read_bytes()
    world = _World(_Clock(), {"peer.h02": STALL, "peer.p01": STALL, "orderer.a": STALL})
    start = world.clock.now
    with pytest.raises(RxClientError) as e:
        _follow(rotated.home, _net(rotated.home, ("h02", "p01"), ("orderer.a",)), world, monkeypatch, budget_s=9.0)
    assert e.value.reason == "SERVICE_UNAVAILABLE"
    assert world.clock.now - start <= 9.0
    assert set(world.waits) == {"peer.h02", "peer.p01", "orderer.a"}
    assert state.read_bytes() == saved


# ------------------------------------------------------------ 3: a newer release's file

def _newer(state: Path, case: str) -> None:
    raw = json.loads(state.read_text())
    if case == "format":
        raw["format"] = 2
    else:  # a config of a protocol version this release lacks, that its MSP cannot take
        config = config_pb2.ConsortiumConfig.FromString(base64.b64decode(raw["config"]))
        config.protocol_version = 99
        config.organizations[0].ca_cert_der = b"\x30\x03\x02\x01\x63"  # (not a certificate this release reads)
        raw["config"] = base64.b64encode(config.SerializeToString()).decode()
    state.write_text(json.dumps(raw))


@pytest.mark.parametrize("case", ["format", "protocol"])
def test_a_chain_file_of_a_newer_release_is_refused_not_dropped(rotated: Rotated, case: str) -> None:  # noqa: F811
    """config-chain.json saved by a newer release (a later format; a config of a later protocol
    version this release cannot build an MSP from) was taken for a torn file: 'verifies nothing',
    and the session pinned the genesis CAs (perhaps rotated away from). It is refused
    PROTOCOL_UNSUPPORTED -- a new session, a follow, a config command -- and the file is kept.
    The same file may be a damaged or edited one no newer release wrote: the advice was only to
    install a newer release (none exists for it); it also says to remove the file then."""
    state = rotated.home / configtool.CHAIN_STATE
    _newer(state, case)
    before = state.read_bytes()
    genesis = read_genesis(rotated.home / "genesis.block")
    with pytest.raises(RxClientError) as e:
        configtool.ChainConfig(genesis, Verifier(), state)
    assert e.value.reason == "PROTOCOL_UNSUPPORTED"
    assert "install a release" in e.value.message
    assert f"if no newer release wrote it (the file was damaged or edited), remove {state}" in e.value.message
    with pytest.raises(RxClientError) as e:
        Session(rotated.home, "h01:dr-jiang")
    assert e.value.reason == "PROTOCOL_UNSUPPORTED"
    from client.fhir.server import error_reply
    assert error_reply(e.value, rotated.home).status == 503  # (not 422: no business rule refused it)
    with pytest.raises(RxClientError) as e:
        follow.follow_chain(rotated.home, load_network(rotated.home), load_identity(rotated.home, "h01", "dr-jiang"))
    assert e.value.reason == "PROTOCOL_UNSUPPORTED"
    assert state.read_bytes() == before


def test_a_torn_chain_file_still_verifies_nothing(rotated: Rotated) -> None:  # noqa: F811
    """(Unchanged) a torn file, or a config of this release's version no MSP takes, is a cache
    that verifies nothing: from genesis.block again."""
    state = rotated.home / configtool.CHAIN_STATE
    raw = json.loads(state.read_text())
    raw["config"] = "bm90IGEgY29uZmln"  # (not a config)
    state.write_text(json.dumps(raw))
    chain = configtool.ChainConfig(read_genesis(rotated.home / "genesis.block"), Verifier(), state)
    assert not chain.resumed and chain.height == 0
