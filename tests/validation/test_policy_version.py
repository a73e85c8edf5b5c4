"""Protocol version 2 evaluates nested endorsement policies exactly (node.identity.policy,
node.protocol): a peer validating blocks under version 1 keeps version 1's answer -- on replay
too -- and from the block after the config update raising the version the same endorsements
make a transaction VALID. The contract's definition is read from the ``_lifecycle`` state by
the peer's own policy provider, parsed for the version of the config in force at each block."""

from __future__ import annotations

from pathlib import Path

from rxchain.v1 import block_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.crypto.signing import Signer, Verifier
from node.genesis import read_genesis
from node.identity.policy import EXACT_POLICY_VERSION
from node.ledger.ledger import Ledger
from node.peer.committer import Committer
from node.peer.definitions import LIFECYCLE_NS
from node.peer.definitions import ContractDefinition as StoredDefinition
from node.peer.lifecycle import definition_key
from node.peer.policy_provider import LifecyclePolicies
from tests.validation.conftest import Net, Peer, config_block, next_config


def _twelve(net: Net) -> list[tuple[tuple[str, str], Signer]]:
    """Twelve distinct (org, role) signers of the test consortium, in sorted order -- the
    positions o00..o11 of the review's example (version 1's truncation depends on them)."""
    by_principal = {
        ("h01", "admin"): net.admins["h01"], ("h01", "doctor"): net.doctor, ("h01", "peer"): net.peer_h01,
        ("ins01", "admin"): net.admins["ins01"], ("ins01", "clerk"): net.clerk,
        ("ins01", "orderer"): net.orderer1, ("ins01", "peer"): net.peer_ins01,
        ("ins02", "admin"): net.admins["ins02"], ("ins02", "orderer"): net.orderer2,
        ("p01", "admin"): net.admins["p01"], ("p01", "peer"): net.peer_p01,
        ("p01", "pharmacist"): net.pharmacist,
    }
    return sorted(by_principal.items())


def _review_policy(names: list[str]) -> str:
    """AND(OutOf(4, o00..o11), o04, o02, o01, o06, o09, o08, o10) over ``names``."""
    return (f"AND(OutOf(4, {', '.join(names)}), "
            + ", ".join(names[i] for i in (4, 2, 1, 6, 9, 8, 10)) + ")")


def _lifecycle_block(peer: Peer, net: Net, policy: str) -> block_pb2.Block:
    """The ``rx`` definition written to ``_lifecycle`` state, endorsed by two of the three
    peer organisations (the default lifecycle endorsement policy)."""
    definition = StoredDefinition("rx", "1.0", 1, policy, {"*": ("*",)}, "0" * 64)
    kit = peer.kit
    kit.contract_version, kit.contract_sequence = "", 0
    try:
        env = kit.invoke(net.doctor, [net.peer_h01, net.peer_p01],
                         [RwSpec(LIFECYCLE_NS, writes=[(definition_key("rx"), definition.to_json())])],
                         contract=LIFECYCLE_NS)
    finally:
        kit.contract_version, kit.contract_sequence = "1.0", 1
    return make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [env], [net.orderer1],
                      timestamp_ms=peer.kit.clock_ms)


def _rx_block(peer: Peer, net: Net, endorsements: list[list[Signer]]) -> block_pb2.Block:
    envs = [peer.kit.invoke(net.doctor, signers, [RwSpec("rx", writes=[(f"k{peer.ledger.height()}-{i}", b"v")])])
            for i, signers in enumerate(endorsements)]
    return make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), envs, [net.orderer1],
                      timestamp_ms=peer.kit.clock_ms)


def test_nested_policy_refused_under_version_1_is_valid_from_version_2_and_replays_alike(
        peer: Peer, net: Net, tmp_path: Path) -> None:
    twelve = _twelve(net)
    names = [f"{org}.{role}" for (org, role), _ in twelve]
    signers = [s for _, s in twelve]
    committer = Committer(peer.ledger, Verifier(), LifecyclePolicies())
    blocks: list[bytes] = []

    def commit(block: block_pb2.Block) -> list[int]:
        blocks.append(block.SerializeToString())
        return list(committer.commit_block(block).validated.codes)

    assert commit(_lifecycle_block(peer, net, _review_policy(names))) == [tx_pb.VALID]
    all_but_first = signers[1:]  # 11 of the 12: the 7 named ones and 4 more for the OutOf
    too_few = [s for i, s in enumerate(signers) if i not in (0, 3)]  # 3 left for the OutOf
    # version 1: its 64 minimal sets of the OutOf all hold a named signer
    assert commit(_rx_block(peer, net, [all_but_first, signers, too_few])) == [
        tx_pb.ENDORSEMENT_POLICY_FAILURE, tx_pb.VALID, tx_pb.ENDORSEMENT_POLICY_FAILURE]
    _, raise_block = config_block(peer, net, next_config(peer, EXACT_POLICY_VERSION))
    assert commit(raise_block) == [tx_pb.VALID]
    assert commit(_rx_block(peer, net, [all_but_first, signers, too_few])) == [
        tx_pb.VALID, tx_pb.VALID, tx_pb.ENDORSEMENT_POLICY_FAILURE]

    # a peer replaying the chain from genesis judges each block by the version in force there
    replica = Ledger(tmp_path / "replica", fsync=False)
    try:
        replica.commit_genesis(read_genesis(net.home / "genesis.block"))
        again = Committer(replica, Verifier(), LifecyclePolicies())
        codes = [list(again.commit_block(block_pb2.Block.FromString(raw)).validated.codes) for raw in blocks]
        assert codes == [[tx_pb.VALID], [tx_pb.ENDORSEMENT_POLICY_FAILURE, tx_pb.VALID, tx_pb.ENDORSEMENT_POLICY_FAILURE],
                         [tx_pb.VALID], [tx_pb.VALID, tx_pb.VALID, tx_pb.ENDORSEMENT_POLICY_FAILURE]]
        assert replica.state_hash() == peer.ledger.state_hash()
    finally:
        replica.close()
