"""Fixtures: a generated 3-organisation consortium and in-process peers with real ledgers."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from netgen import generate
from rxchain.v1 import block_pb2, transaction_pb2

from node.crypto.canonical import block_header_hash
from node.crypto.signing import Signer, Verifier
from node.genesis import read_genesis
from node.ledger.ledger import Ledger
from node.peer.committer import Committer
from node.peer.config_view import ConfigView
from node.peer.endorser import Endorser
from node.peer.lifecycle import Lifecycle, package_hash
from node.peer.policy_provider import LifecyclePolicies
from node.sandbox.inprocess import InProcessRunner
from tests.peer.kit import ProposalKit, envelope, make_block, node_signer, user_signer

FIXED_NOW = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC)
NOW_MS = int(FIXED_NOW.timestamp() * 1000) + 3_600_000
PEER_ORGS = ("h01", "p01", "ins01")


def consortium(base_port: int = 23050) -> dict[str, Any]:
    return {
        "consortium_id": "peer-test",
        "base_port": base_port,
        "batch": {"max_tx_count": 50, "max_bytes": 1 << 20, "timeout_ms": 20},
        "limits": {
            "max_message_bytes": 4 << 20, "max_envelope_bytes": 256 << 10, "gas_limit": 100000,
            "max_write_set_keys": 50, "max_value_bytes": 4096, "max_clock_skew_ms": 60000,
        },
        "policies": {"config_update": "MAJORITY(admin)", "lifecycle": "MAJORITY(admin)"},
        "organizations": [
            {"id": "h01", "name": "Hospital", "kind": "hospital", "level": "tertiary", "peer": True,
             "users": [{"name": "dr-a", "role": "doctor"}, {"name": "nurse-a", "role": "nurse"}]},
            {"id": "p01", "name": "Pharmacy", "kind": "pharmacy", "peer": True,
             "users": [{"name": "ph-a", "role": "pharmacist"}]},
            {"id": "ins01", "name": "Fund", "kind": "insurer", "peer": True, "orderer": True,
             "users": [{"name": "clerk-a", "role": "clerk"}]},
        ],
    }


COUNTER_SOURCE = '''from rxchain_contract import Context


def put(ctx: Context, key: str, value: int) -> dict:
    ctx.put("k/" + key, value)
    ctx.emit("stored", {"key": key})
    return {"ok": True}


def add(ctx: Context, key: str, amount: int) -> dict:
    cur = ctx.get("k/" + key) or 0
    if amount <= 0:
        ctx.fail("NOT_POSITIVE", "amount must be positive")
    ctx.put("k/" + key, cur + amount)
    return {"value": cur + amount}


def get(ctx: Context, key: str) -> dict:
    return {"value": ctx.get("k/" + key)}


def scan(ctx: Context) -> dict:
    return {"keys": [k for k, _ in ctx.range("k/", "k0", 100)]}


def secret(ctx: Context) -> dict:
    s = ctx.transient("secret")
    ctx.put("digest", len(s))
    return {"len": len(s)}
'''

COUNTER_ACCESS = {"put": ["doctor", "p01.pharmacist"], "add": ["*"], "get": ["*"],
                  "scan": ["*"], "secret": ["hospital.doctor"]}


@dataclass
class Net:
    home: Path
    consortium_id: str
    doctor: Signer
    nurse: Signer
    pharmacist: Signer
    clerk: Signer
    admins: dict[str, Signer]
    peers: dict[str, Signer]
    orderer: Signer


@pytest.fixture(scope="session")
def net(tmp_path_factory: pytest.TempPathFactory) -> Net:
    home = tmp_path_factory.mktemp("peernet")
    generate(consortium(), home, clock=lambda: FIXED_NOW)
    return Net(
        home=home,
        consortium_id="peer-test",
        doctor=user_signer(home, "h01", "dr-a"),
        nurse=user_signer(home, "h01", "nurse-a"),
        pharmacist=user_signer(home, "p01", "ph-a"),
        clerk=user_signer(home, "ins01", "clerk-a"),
        admins={o: user_signer(home, o, "admin") for o in PEER_ORGS},
        peers={o: node_signer(home, f"peer.{o}", o) for o in PEER_ORGS},
        orderer=node_signer(home, "orderer.ins01", "ins01"),
    )


@dataclass
class Peer:
    org: str
    ledger: Ledger
    committer: Committer
    endorser: Endorser
    sandbox: InProcessRunner
    clock: list[int] = field(default_factory=lambda: [NOW_MS])


@dataclass
class Cluster:
    net: Net
    peers: list[Peer]
    kit: ProposalKit

    def now(self) -> int:
        return self.peers[0].clock[0]

    def commit(self, envelopes: Sequence[bytes], timestamp_ms: int = 0) -> list[block_pb2.Block]:
        """Order ``envelopes`` into one block (stamped ``timestamp_ms``; 0: no stamp) and
        commit it on every peer."""
        ref = self.peers[0].ledger
        block = make_block(ref.height(), block_header_hash(ref.block(ref.height() - 1).header),
                           envelopes, self.net.orderer, timestamp_ms)
        out = []
        for p in self.peers:
            copy = block_pb2.Block()
            copy.CopyFrom(block)
            out.append(p.committer.commit_block(copy).validated.block)
        return out

    def endorse_all(self, signed: transaction_pb2.SignedProposal,
                    peers: Sequence[Peer] | None = None) -> list[transaction_pb2.ProposalResponse]:
        return [p.endorser.endorse(signed) for p in (peers or self.peers)]

    def transact(self, creator: Signer, contract: str, function: str, args: dict[str, Any],
                 peers: Sequence[Peer] | None = None) -> tuple[transaction_pb2.ProposalResponse, int]:
        """Endorse on ``peers`` (default: the first two), commit; returns (response, code)."""
        signed = self.kit.proposal(creator, contract, function, args, timestamp_ms=self.now())
        responses = self.endorse_all(signed, peers or self.peers[:2])
        assert responses[0].response.status == 200, responses[0].response
        block = self.commit([envelope(creator, signed, responses)])[0]
        return responses[0], block.metadata.validation_codes[0]

    def deploy(self, name: str, source: str, policy: str, access: dict[str, list[str]],
               version: str = "1.0", sequence: int = 1,
               approvers: Sequence[str] = ("h01", "p01")) -> dict[str, Any]:
        admin = self.net.admins
        _, code = self.transact(admin["h01"], "_lifecycle", "install",
                                {"name": name, "version": version, "source": source})
        assert code == transaction_pb2.VALID
        definition = {"name": name, "version": version, "sequence": sequence,
                      "endorsement_policy": policy, "access": access,
                      "code_hash": package_hash(name, version, source)}
        for org in approvers:
            _, code = self.transact(admin[org], "_lifecycle", "approve", definition)
            assert code == transaction_pb2.VALID
        return definition


def make_peer(net: Net, org: str, directory: Path) -> Peer:
    ledger = Ledger(directory, fsync=False)
    if ledger.height() == 0:
        ledger.commit_genesis(read_genesis(net.home / "genesis.block"))
    verifier = Verifier()
    policies = LifecyclePolicies()
    committer = Committer(ledger, verifier, policies)
    sandbox = InProcessRunner()
    clock = [NOW_MS]
    endorser = Endorser(ledger, ConfigView(ledger.state, verifier), net.peers[org], sandbox,
                        Lifecycle(), lambda: clock[0])
    return Peer(org, ledger, committer, endorser, sandbox, clock)


@pytest.fixture
def cluster(net: Net, tmp_path: Path) -> Iterator[Cluster]:
    peers = [make_peer(net, org, tmp_path / org) for org in PEER_ORGS]
    try:
        yield Cluster(net, peers, ProposalKit(net.consortium_id, random.Random(11)))
    finally:
        for p in peers:
            p.ledger.close()


@pytest.fixture
def deployed(cluster: Cluster) -> Cluster:
    """The counter contract committed (sequence 1) with policy OutOf(2, ...)."""
    d = cluster.deploy("counter", COUNTER_SOURCE, "OutOf(2, h01.peer, p01.peer, ins01.peer)",
                       COUNTER_ACCESS)
    _, code = cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d)
    assert code == transaction_pb2.VALID
    return cluster


@pytest.fixture
def servers() -> Iterator[list[grpc.Server]]:
    """gRPC servers a test appends as it starts them; all stopped after the test."""
    started: list[grpc.Server] = []
    try:
        yield started
    finally:
        for s in started:
            s.stop(0)
