"""Fixtures: one generated consortium per session; a fresh peer ledger per test; the blocks
and config updates the tests build on that peer."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from netgen import generate
from rxchain.v1 import block_pb2, config_pb2

from bench.txbuild import SMALL_CONSORTIUM, RwSpec, TxKit, make_block, node_signer, user_signer
from node.crypto.signing import Signer, Verifier
from node.genesis import read_genesis
from node.identity.msp import MSP
from node.identity.policy import parse_policy
from node.ledger.ledger import Ledger
from node.ledger.statedb import StateReader
from node.orderer.configtx import ConfigTracker, OrdererConfig
from node.peer.committer import Committer
from node.peer.validator import ContractDefinition

ORGS = ["h01", "p01", "ins01", "ins02"]


class StaticPolicies:
    """Contract definitions fixed by the test (the lifecycle's role)."""

    def __init__(self, defs: dict[str, ContractDefinition]) -> None:
        self.defs = defs

    def contract(self, name: str, state: StateReader) -> ContractDefinition | None:
        return self.defs.get(name)


def rx_definition(rule: str = "OutOf(2, h01.peer, p01.peer, ins01.peer)") -> ContractDefinition:
    return ContractDefinition("rx", "1.0", 1, parse_policy(rule, ORGS))


@dataclass
class Net:
    home: Path
    doctor: Signer
    pharmacist: Signer
    clerk: Signer
    peer_h01: Signer
    peer_p01: Signer
    peer_ins01: Signer
    orderer1: Signer
    orderer2: Signer
    admins: dict[str, Signer]


@pytest.fixture(scope="session")
def net(tmp_path_factory) -> Net:
    home = tmp_path_factory.mktemp("net")
    generate(SMALL_CONSORTIUM, home)
    return Net(
        home=home,
        doctor=user_signer(home, "h01", "dr-a"),
        pharmacist=user_signer(home, "p01", "ph-a"),
        clerk=user_signer(home, "ins01", "clerk-a"),
        peer_h01=node_signer(home, "peer.h01", "h01"),
        peer_p01=node_signer(home, "peer.p01", "p01"),
        peer_ins01=node_signer(home, "peer.ins01", "ins01"),
        orderer1=node_signer(home, "orderer.ins01", "ins01"),
        orderer2=node_signer(home, "orderer.ins02", "ins02"),
        admins={o: user_signer(home, o, "admin") for o in ORGS},
    )


@dataclass
class Peer:
    ledger: Ledger
    committer: Committer
    kit: TxKit
    policies: StaticPolicies


@pytest.fixture
def peer(net, tmp_path):
    genesis = read_genesis(net.home / "genesis.block")
    ledger = Ledger(tmp_path / "ledger", fsync=False)
    ledger.commit_genesis(genesis)
    policies = StaticPolicies({"rx": rx_definition()})
    committer = Committer(ledger, Verifier(), policies)
    kit = TxKit("test-rx", random.Random(7))
    try:
        yield Peer(ledger, committer, kit, policies)
    finally:
        ledger.close()


def next_config(peer: Peer, protocol_version: int | None = None) -> config_pb2.ConsortiumConfig:
    """The config in force on ``peer`` with the next sequence (and ``protocol_version`` if
    given): an update for the test to edit."""
    cur = peer.ledger.current_config()
    assert cur is not None
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(cur)
    new.sequence = cur.sequence + 1
    if protocol_version is not None:
        new.protocol_version = protocol_version
    return new


def config_block(peer: Peer, net: Net, new: config_pb2.ConsortiumConfig) -> tuple[bytes, block_pb2.Block]:
    """(envelope, block): the update to ``new`` signed by the admins of h01, p01 and ins01 (a
    majority), alone in a block at the peer's height signed by orderer 1 and stamped with the
    kit's clock (from protocol version 2 an unstamped block has no orderer signature that counts:
    node.identity.msp.MSP.block_signers)."""
    a = net.admins
    env = peer.kit.config_tx(a["h01"], new, [a["h01"], a["p01"], a["ins01"]])
    return env, make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [env], [net.orderer1],
                           timestamp_ms=peer.kit.clock_ms)


def config_tracker(peer: Peer) -> ConfigTracker:
    """An orderer's view of the config in force on ``peer``."""
    cur = peer.ledger.current_config()
    assert cur is not None
    return ConfigTracker(OrdererConfig(cur, MSP(cur, Verifier()), 0), Verifier())


def invoke_block(peer: Peer, net: Net, key: str, orderer: Signer | None = None) -> block_pb2.Block:
    """A block at the peer's height of one doctor tx writing ``key`` in ``rx`` (endorsed by the
    peers of h01 and p01), signed by ``orderer`` (default: orderer 1), stamped with the kit's clock."""
    env = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[(key, b"v")])])
    return make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [env], [orderer or net.orderer1],
                      timestamp_ms=peer.kit.clock_ms)
