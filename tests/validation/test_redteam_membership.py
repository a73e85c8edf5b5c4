"""Red-team review of membership changes: what a peer or an organisation removed by a config
update may still do, on a running, a restarted and a caught-up peer.

Each test failed before its fix (see the validator's, the endorser's and the policy
provider's comments).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509 as cx509
from rxchain.v1 import block_pb2, config_pb2, identity_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.clock import wall_ms
from node.crypto import signing
from node.crypto import x509 as rx509
from node.crypto.signing import Signer, Verifier
from node.errors import RxError
from node.genesis import read_genesis
from node.ledger.ledger import Ledger
from node.ledger.statedb import StateReader, Version, VersionedValue
from node.peer.committer import Committer
from node.peer.config_view import ConfigView
from node.peer.definitions import LIFECYCLE_NS
from node.peer.definitions import ContractDefinition as StoredDefinition
from node.peer.endorser import Endorser
from node.peer.lifecycle import Lifecycle, definition_key
from node.peer.policy_provider import LifecyclePolicies
from node.peer.validator import ContractDefinition
from node.protocol import MEMBERSHIP_VERSION
from tests.validation.conftest import Net, Peer, StaticPolicies, config_block, next_config, rx_definition


def _copy(block: block_pb2.Block) -> block_pb2.Block:
    out = block_pb2.Block()
    out.CopyFrom(block)
    return out


def test_a_peer_removed_from_the_config_no_longer_endorses_running_restarted_and_caught_up(
    peer: Peer, net: Net, tmp_path: Path
) -> None:
    """An update takes peer.p01 out of ``config.peers`` (p01 stays a member, nobody revokes the
    peer's certificate). From that block on its endorsements are BAD_ENDORSEMENT -- a tx it
    endorsed before the update (timestamped before it) and ordered after it too -- while h01's
    and ins01's peers still satisfy the policy; a peer restarted after the update and one
    caught up from genesis give the same codes and state hash. Before the fix the removed
    peer's endorsement counted as ``p01.peer`` until its certificate was revoked (as it still
    does under protocol version 1: the update raises the version to MEMBERSHIP_VERSION)."""
    policies = StaticPolicies({"rx": rx_definition()})
    a = Committer(peer.ledger, Verifier(), policies)
    early = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("early", b"1")])])
    new = next_config(peer, MEMBERSHIP_VERSION)
    kept = [p for p in new.peers if p.name != "peer.p01"]
    assert len(kept) == len(new.peers) - 1
    del new.peers[:]
    new.peers.extend(kept)
    _, update = config_block(peer, net, new)
    blocks = [update]
    assert list(a.commit_block(update).validated.codes) == [tx_pb.VALID]
    late = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("late", b"2")])])
    alone = peer.kit.invoke(net.doctor, [net.peer_p01], [RwSpec("rx", writes=[("alone", b"3")])])
    other = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_ins01], [RwSpec("rx", writes=[("other", b"4")])])
    last = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [early, late, alone, other],
                      [net.orderer1], timestamp_ms=peer.kit.clock_ms)
    blocks.append(last)
    expected = [tx_pb.BAD_ENDORSEMENT, tx_pb.BAD_ENDORSEMENT, tx_pb.BAD_ENDORSEMENT, tx_pb.VALID]

    b = Committer(peer.ledger, Verifier(), policies)  # B: restarted after the update
    b_codes = list(b.validator.validate(_copy(last), peer.ledger.height(), peer.ledger.blocks.last_hash()).codes)
    a_result = a.commit_block(_copy(last))
    assert list(a_result.validated.codes) == b_codes == expected

    genesis = read_genesis(net.home / "genesis.block")  # C: from scratch
    with Ledger(tmp_path / "scratch", fsync=False) as scratch:
        scratch.commit_genesis(genesis)
        c = Committer(scratch, Verifier(), policies)
        results = [c.commit_block(_copy(blk)) for blk in blocks]
        assert list(results[-1].validated.codes) == expected
        assert results[-1].result.state_hash == a_result.result.state_hash


def test_under_protocol_version_1_a_removed_peer_still_endorses(peer: Peer, net: Net) -> None:
    """Blocks under version 1 keep its answer on replay: the removal without raising the
    version leaves peer.p01's endorsement counting (its certificate is still valid)."""
    a = Committer(peer.ledger, Verifier(), StaticPolicies({"rx": rx_definition()}))
    new = next_config(peer, 1)
    kept = [p for p in new.peers if p.name != "peer.p01"]
    del new.peers[:]
    new.peers.extend(kept)
    _, update = config_block(peer, net, new)
    assert list(a.commit_block(update).validated.codes) == [tx_pb.VALID]
    tx = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("v1", b"1")])])
    blk = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [tx], [net.orderer1],
                     timestamp_ms=peer.kit.clock_ms)
    assert list(a.commit_block(blk).validated.codes) == [tx_pb.VALID]


def test_a_peer_endorses_before_and_stops_at_the_block_removing_it(peer: Peer, net: Net) -> None:
    """The same endorsement by peer.p01 is VALID in the block before the update and refused in
    the block after it: the removal takes effect at exactly its config block."""
    a = Committer(peer.ledger, Verifier(), StaticPolicies({"rx": rx_definition()}))
    before = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("b", b"1")])])
    blk = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [before], [net.orderer1],
                     timestamp_ms=peer.kit.clock_ms)
    assert list(a.commit_block(blk).validated.codes) == [tx_pb.VALID]
    new = next_config(peer, MEMBERSHIP_VERSION)
    kept = [p for p in new.peers if p.name != "peer.p01"]
    del new.peers[:]
    new.peers.extend(kept)
    _, update = config_block(peer, net, new)
    assert list(a.commit_block(update).validated.codes) == [tx_pb.VALID]
    after = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("b", b"2")])])
    blk = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [after], [net.orderer1],
                     timestamp_ms=peer.kit.clock_ms)
    assert list(a.commit_block(blk).validated.codes) == [tx_pb.BAD_ENDORSEMENT]


def test_a_peer_removed_from_the_config_refuses_to_endorse(peer: Peer, net: Net) -> None:
    """A peer the config no longer lists still runs (and the gateways' node.yaml may still
    name it): it answers UNKNOWN_PEER instead of signing an endorsement every validator now
    refuses, so a gateway asks another peer. Before the update the same proposal reaches the
    usual checks (here BAD_PAYLOAD: it is empty)."""
    endorser = Endorser(peer.ledger, ConfigView(peer.ledger.state, Verifier()), net.peer_p01,
                        cast(Any, None), Lifecycle(), wall_ms)
    empty = tx_pb.SignedProposal()
    with pytest.raises(RxError) as before:
        endorser.endorse(empty)
    assert before.value.reason == "BAD_PAYLOAD"
    new = next_config(peer, MEMBERSHIP_VERSION)
    kept = [p for p in new.peers if p.name != "peer.p01"]
    del new.peers[:]
    new.peers.extend(kept)
    _, update = config_block(peer, net, new)
    assert list(peer.committer.commit_block(update).validated.codes) == [tx_pb.VALID]
    with pytest.raises(RxError) as after:
        endorser.endorse(empty)
    assert after.value.reason == "UNKNOWN_PEER" and "peer.p01" in after.value.message


# ------------------------------------------------------------------ contracts naming a removed org


class _StoredDefinitions:
    """The lifecycle's PolicyProvider over the peer's state with ``definition/rx`` committed
    as ``stored`` (what ``_lifecycle`` commit writes)."""

    def __init__(self, policy: str) -> None:
        self.inner = LifecyclePolicies()
        self.stored = StoredDefinition("rx", "1.0", 1, policy, {"*": ("*",)}, "ab" * 32).to_json()

    def contract(self, name: str, state: StateReader) -> ContractDefinition | None:
        return self.inner.contract(name, _WithDefinition(state, self.stored))


class _WithDefinition:
    def __init__(self, state: StateReader, stored: bytes) -> None:
        self.state, self.stored = state, stored

    def get(self, ns: str, key: str) -> VersionedValue | None:
        if (ns, key) == (LIFECYCLE_NS, definition_key("rx")):
            return VersionedValue(self.stored, Version(1, 0))
        return self.state.get(ns, key)

    def range(self, *args: Any, **kwargs: Any) -> Any:
        return self.state.range(*args, **kwargs)


def _without_p01(peer: Peer, protocol_version: int = MEMBERSHIP_VERSION) -> config_pb2.ConsortiumConfig:
    new = next_config(peer, protocol_version)
    orgs = [o for o in new.organizations if o.id != "p01"]
    peers = [p for p in new.peers if p.org != "p01"]
    del new.organizations[:], new.peers[:]
    new.organizations.extend(orgs)
    new.peers.extend(peers)
    new.retired_org_ids.append("p01")  # from version 2 (the update raising it included) an id is retired
    return new


@pytest.mark.parametrize("policy", ["OutOf(2, h01.peer, p01.peer, ins01.peer)",
                                    "AND(OutOf(1, ins01.peer), OutOf(1, h01.peer, p01.peer, ins01.peer))"])
def test_removing_an_organisation_a_contract_policy_names_leaves_the_contract_usable(
    peer: Peer, net: Net, tmp_path: Path, policy: str
) -> None:
    """The consortium's contracts are defined with policies naming every organisation that
    runs a peer (client.bootstrap: ``OutOf(2, h01.peer, ...)``). An update removing one of
    them (p01 and its peer) must not kill every contract: the committed definition is read
    with p01's principal matching nobody (p01 can no longer sign anything), so h01's and
    ins01's peers still satisfy it, on a running peer and on one caught up from genesis, and
    p01's peer no longer counts. Before the fix the stored policy no longer parsed against
    the new organisations ("unknown organisation 'p01'"), so every tx of the contract was
    UNKNOWN_CONTRACT from that block until the admins defined it again -- as it stays under
    protocol version 1 (the update raises the version to MEMBERSHIP_VERSION)."""
    policies = _StoredDefinitions(policy)
    a = Committer(peer.ledger, Verifier(), policies)
    ok = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_ins01], [RwSpec("rx", writes=[("k0", b"0")])])
    blocks = [make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [ok], [net.orderer1],
                         timestamp_ms=peer.kit.clock_ms)]
    assert list(a.commit_block(blocks[0]).validated.codes) == [tx_pb.VALID]
    _, update = config_block(peer, net, _without_p01(peer))
    blocks.append(update)
    assert list(a.commit_block(update).validated.codes) == [tx_pb.VALID]
    txs = [peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_ins01], [RwSpec("rx", writes=[("k1", b"1")])]),
           peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("k2", b"2")])]),
           peer.kit.invoke(net.doctor, [net.peer_h01], [RwSpec("rx", writes=[("k3", b"3")])])]
    last = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), txs, [net.orderer1],
                      timestamp_ms=peer.kit.clock_ms)
    blocks.append(last)
    expected = [tx_pb.VALID, tx_pb.BAD_ENDORSEMENT, tx_pb.ENDORSEMENT_POLICY_FAILURE]
    a_result = a.commit_block(_copy(last))
    assert list(a_result.validated.codes) == expected
    genesis = read_genesis(net.home / "genesis.block")  # caught up from scratch
    with Ledger(tmp_path / "scratch", fsync=False) as scratch:
        scratch.commit_genesis(genesis)
        c = Committer(scratch, Verifier(), _StoredDefinitions(policy))
        results = [c.commit_block(_copy(blk)) for blk in blocks]
        assert list(results[-1].validated.codes) == expected
        assert results[-1].result.state_hash == a_result.result.state_hash


def test_under_protocol_version_1_a_contract_naming_a_removed_organisation_stays_unknown(peer: Peer, net: Net) -> None:
    """Blocks under version 1 keep its answer on replay: the same removal without raising the
    version leaves the contract UNKNOWN_CONTRACT (the policy no longer parses)."""
    a = Committer(peer.ledger, Verifier(), _StoredDefinitions("OutOf(2, h01.peer, p01.peer, ins01.peer)"))
    _, update = config_block(peer, net, _without_p01(peer, 1))
    assert list(a.commit_block(update).validated.codes) == [tx_pb.VALID]
    tx = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_ins01], [RwSpec("rx", writes=[("v1", b"1")])])
    blk = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [tx], [net.orderer1],
                     timestamp_ms=peer.kit.clock_ms)
    assert list(a.commit_block(blk).validated.codes) == [tx_pb.UNKNOWN_CONTRACT]


def _h01_peer_cert(net: Net, name: str) -> Signer:
    """A peer certificate of h01's CA whose common name is ``name`` (its own key)."""
    ca_dir = net.home / "orgs" / "h01"
    ca = cx509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = signing.load_private_key((ca_dir / "ca.key").read_bytes())
    key = signing.generate_key()
    cert = rx509.issue_cert(ca, ca_key, key.public_key(), org="h01", role="peer", name=name,
                            now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1), hosts=("peer.h01",))
    return Signer(key, identity_pb2.Identity(org="h01", cert_der=rx509.cert_to_der(cert)))


def test_a_peer_whose_certificate_the_config_lists_endorses_whatever_its_common_name(
    peer: Peer, net: Net
) -> None:
    """A peer certificate issued by hand names the node in its alternative names only (what
    a node checks at start), not as its common name: once the config lists that certificate
    for peer.h01 its endorsements count; another certificate of h01's CA with an unlisted
    name still does not."""
    a = Committer(peer.ledger, Verifier(), StaticPolicies({"rx": rx_definition()}))
    by_hand = _h01_peer_cert(net, "node-7.h01.example")
    stranger = _h01_peer_cert(net, "node-8.h01.example")
    new = next_config(peer, MEMBERSHIP_VERSION)
    next(p for p in new.peers if p.name == "peer.h01").cert_der = by_hand.cert_der
    _, update = config_block(peer, net, new)
    assert list(a.commit_block(update).validated.codes) == [tx_pb.VALID]
    txs = [peer.kit.invoke(net.doctor, [by_hand, net.peer_p01], [RwSpec("rx", writes=[("h1", b"1")])]),
           peer.kit.invoke(net.doctor, [stranger, net.peer_p01], [RwSpec("rx", writes=[("h2", b"2")])])]
    blk = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), txs, [net.orderer1],
                     timestamp_ms=peer.kit.clock_ms)
    assert list(a.commit_block(blk).validated.codes) == [tx_pb.VALID, tx_pb.BAD_ENDORSEMENT]
    endorser = Endorser(peer.ledger, ConfigView(peer.ledger.state, Verifier()), by_hand,
                        cast(Any, None), Lifecycle(), wall_ms)
    with pytest.raises(RxError) as info:
        endorser.endorse(tx_pb.SignedProposal())
    assert info.value.reason == "BAD_PAYLOAD"  # past the listing check
