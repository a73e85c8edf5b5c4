"""Red-team regressions: peers adopt a config update exactly when the orderers do.

Before the fix the peer validator had its own, different rules: it refused an update with a
policy it could not parse (the orderers adopted it: a permanent split, every later update
refused by peers as out of sequence; both now refuse it), adopted one from a block holding other txs (the
orderers adopt only a config block of its own: a compromised leader could split them) and
ignored the orderer-set rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from rxchain.v1 import block_pb2, config_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.crypto.canonical import compute_tx_id
from node.crypto.signing import Purpose, Signer, Verifier
from node.identity.msp import MSP
from node.orderer.configtx import ConfigTracker, OrdererConfig
from tests.validation.conftest import Net, Peer, next_config

VALID = tx_pb.VALID


def _config_tx(peer: Peer, net: Net, new: config_pb2.ConsortiumConfig) -> bytes:
    a = net.admins
    return peer.kit.config_tx(a["h01"], new, [a["h01"], a["p01"], a["ins01"]])


def _block(peer: Peer, net: Net, envs: Sequence[bytes]) -> block_pb2.Block:
    return make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), envs, [net.orderer1])


def _orderers_adopt(peer: Peer, block: block_pb2.Block) -> bool:
    cur = peer.ledger.current_config()
    assert cur is not None
    tracker = ConfigTracker(OrdererConfig(cur, MSP(cur, Verifier()), 0), Verifier())
    return tracker.block_config(block) is not None


def _commit(peer: Peer, block: block_pb2.Block) -> list[int]:
    return list(peer.committer.commit_block(block).validated.codes)


def test_update_with_a_policy_that_does_not_parse_is_refused_as_the_orderers_do(
    peer: Peer, net: Net
) -> None:
    # Peers used to refuse it while the orderers adopted it (a split). Since the config rules
    # (node.orderer.configrules) check every named policy, both refuse it; a correct
    # update then goes through on both sides.
    new = next_config(peer)
    next(p for p in new.policies if p.name == "lifecycle").rule = "MAJORITY("
    block = _block(peer, net, [_config_tx(peer, net, new)])
    assert not _orderers_adopt(peer, block)
    assert _commit(peer, block) == [tx_pb.BAD_CONFIG_UPDATE]
    assert peer.committer.validator.config.config.sequence == 0
    fixed = next_config(peer)
    next(p for p in fixed.policies if p.name == "lifecycle").rule = "MAJORITY(admin)"
    block = _block(peer, net, [_config_tx(peer, net, fixed)])
    assert _orderers_adopt(peer, block)
    assert _commit(peer, block) == [VALID]
    cur = peer.ledger.current_config()
    assert cur is not None and cur.sequence == 1


def test_update_in_a_block_with_other_txs_is_refused_as_the_orderers_do(peer: Peer, net: Net) -> None:
    invoke = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("a", b"1")])])
    block = _block(peer, net, [invoke, _config_tx(peer, net, next_config(peer))])
    assert not _orderers_adopt(peer, block)
    assert _commit(peer, block) == [VALID, tx_pb.BAD_CONFIG_UPDATE]
    cur = peer.ledger.current_config()
    assert cur is not None and cur.sequence == 0
    assert peer.committer.validator.config.config.sequence == 0


def test_update_breaking_the_orderer_set_rules_is_refused_as_the_orderers_do(
    peer: Peer, net: Net
) -> None:
    moved = next_config(peer)
    moved.orderers[0].port += 1  # a kept orderer may not change its address
    dup = next_config(peer)
    dup.orderers[1].raft_id = dup.orderers[0].raft_id
    for new in (moved, dup):
        block = _block(peer, net, [_config_tx(peer, net, new)])
        assert not _orderers_adopt(peer, block)
        assert _commit(peer, block) == [tx_pb.BAD_CONFIG_UPDATE]
    cur = peer.ledger.current_config()
    assert cur is not None and cur.sequence == 0


def _rewrapped(env_bytes: bytes, edit: str, net: Net) -> bytes:
    """The same admin-signed update in an envelope a leader could forge around it."""
    env = tx_pb.Envelope.FromString(env_bytes)
    tx = tx_pb.Transaction.FromString(env.payload)
    header = tx_pb.TxHeader.FromString(tx.header)
    if edit == "forged creator signature":
        env.signature = net.doctor.sign(Purpose.ENVELOPE, b"something else")
    elif edit == "other consortium":
        header.consortium_id = "another"
        tx.header = header.SerializeToString()
        env.payload = tx.SerializeToString()
    elif edit == "tx id not derived from the creator":
        header.tx_id = "ab" * 32
        tx.header = header.SerializeToString()
        env.payload = tx.SerializeToString()
        env.signature = net.admins["h01"].sign(Purpose.ENVELOPE, env.payload)  # the creator's own signature: only the tx id is wrong
    elif edit == "creator not a member then":
        header.timestamp_ms = 1  # 1970: before the creator's certificate
        tx.header = header.SerializeToString()
        env.payload = tx.SerializeToString()
    else:
        raise AssertionError(edit)
    return env.SerializeToString()


@pytest.mark.parametrize(("edit", "code"), [
    ("forged creator signature", tx_pb.BAD_CREATOR_SIGNATURE),
    ("other consortium", tx_pb.BAD_HEADER),
    ("tx id not derived from the creator", tx_pb.BAD_TXID),
    ("creator not a member then", tx_pb.EXPIRED_CREATOR_CERT),
])
def test_admin_signed_update_in_a_forged_envelope_is_refused_by_orderers_as_by_peers(
    peer: Peer, net: Net, edit: str, code: int
) -> None:
    block = _block(peer, net, [_rewrapped(_config_tx(peer, net, next_config(peer)), edit, net)])
    assert not _orderers_adopt(peer, block)
    assert _commit(peer, block) == [code]
    cur = peer.ledger.current_config()
    assert cur is not None and cur.sequence == 0


def _header(peer: Peer, creator: Signer, tx_type: int, nonce: bytes) -> bytes:
    return tx_pb.TxHeader(
        tx_id=compute_tx_id(nonce, creator.identity),
        type=tx_type,  # type: ignore[arg-type]
        creator=creator.identity,
        nonce=nonce,
        timestamp_ms=peer.kit.clock_ms + 5,
        consortium_id=peer.kit.consortium_id,
    ).SerializeToString()


def test_update_reusing_the_tx_id_of_an_earlier_tx_is_adopted_as_the_orderers_do(
    peer: Peer, net: Net
) -> None:
    # The orderers keep no tx-id index: a member holding an admin-signed update wraps it in
    # an envelope reusing the nonce of one of its own indexed txs. Peers used to refuse it as
    # DUPLICATE_TXID while the orderers adopted it (a permanent split).
    creator, nonce = net.admins["h01"], b"n" * 24
    earlier = peer.kit.invoke(
        creator, [], [RwSpec("rx", writes=[("a", b"1")])],
        header=_header(peer, creator, tx_pb.INVOKE, nonce),
    )
    assert _commit(peer, _block(peer, net, [earlier])) == [tx_pb.ENDORSEMENT_POLICY_FAILURE]
    new = next_config(peer)
    update = config_pb2.ConfigUpdate(config=new.SerializeToString())
    for a in (net.admins["h01"], net.admins["p01"], net.admins["ins01"]):
        update.signatures.add(signer=a.identity_bytes, signature=a.sign(Purpose.CONFIG, update.config))
    tx = tx_pb.Transaction(
        header=_header(peer, creator, tx_pb.CONFIG, nonce), config_update=update.SerializeToString()
    )
    env = peer.kit.seal(creator, tx)
    block = _block(peer, net, [env])
    assert _orderers_adopt(peer, block)
    assert _commit(peer, block) == [VALID]
    cur = peer.ledger.current_config()
    assert cur is not None and cur.sequence == 1
    # a resubmitted copy is out of sequence on both sides and keeps its DUPLICATE_TXID code
    # (unindexed: the adopted copy's index entry stays)
    again = _block(peer, net, [env])
    assert not _orderers_adopt(peer, again)
    assert _commit(peer, again) == [tx_pb.DUPLICATE_TXID]
    loc = peer.ledger.tx_location(compute_tx_id(nonce, creator.identity))
    assert loc is not None and loc.block == block.header.number


def test_update_renaming_orderers_is_refused_by_orderers_and_peers(peer: Peer, net: Net) -> None:
    # Nodes dial orderers pinned to their configured names (tls.NodeChannels), which their
    # TLS certificates carry: renaming every orderer in one update was adopted and left no
    # orderer able to reach another once they reconnected (no quorum to order the fix).
    every = next_config(peer)
    for o in every.orderers:
        o.name += ".renamed"
    one = next_config(peer)
    one.orderers[0].name = "orderer.elsewhere"
    for new in (every, one):
        block = _block(peer, net, [_config_tx(peer, net, new)])
        assert not _orderers_adopt(peer, block)
        assert _commit(peer, block) == [tx_pb.BAD_CONFIG_UPDATE]
    cur = peer.ledger.current_config()
    assert cur is not None and cur.sequence == 0
