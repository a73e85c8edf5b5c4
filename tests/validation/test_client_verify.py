"""``rxchain ledger verify`` (client.verify.verify_blocks) follows the configuration through the
chain: a block signed by a rotated orderer certificate verifies (it was reported as "no valid
orderer signature": the genesis orderers were the only ones known), past a config block
raising the protocol version beyond this release it stops with PROTOCOL_UNSUPPORTED instead of
judging blocks by rules it lacks, and whether a config block is adopted is decided by the
consortium's rules, never by the serving peer's (unsigned) validation codes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from rxchain.v1 import block_pb2, config_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import make_block
from client.cli import LedgerInvalid, _verify_reason
from client.verify import verify_blocks
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Purpose, Signer, Verifier
from node.errors import RxError
from node.genesis import config_from_genesis, read_genesis
from node.protocol import PROTOCOL_UNSUPPORTED, SUPPORTED_VERSIONS
from tests.harness.certs import issue_from_org_ca, signer_of
from tests.validation.conftest import Net, Peer, config_block, invoke_block, next_config


def _chain(peer: Peer) -> list[block_pb2.Block]:
    return [peer.ledger.blocks.get(i) for i in range(peer.ledger.height())]


def _rotated_orderer1(net: Net) -> Signer:
    cert, key = issue_from_org_ca(net.home, "ins01", "orderer.ins01", "orderer",
                                  ("127.0.0.1", "localhost", "orderer.ins01"))
    return signer_of("ins01", cert, key)


def _orderer1_rotated(peer: Peer, net: Net) -> tuple[Signer, config_pb2.ConsortiumConfig]:
    """A new certificate of orderer 1, and the next config naming it in place of the old one."""
    signer = _rotated_orderer1(net)
    update = next_config(peer, 1)
    for o in update.orderers:
        if o.raft_id == 1:
            o.cert_der = signer.identity.cert_der
    return signer, update


def _genesis(net: Net) -> tuple[block_pb2.Block, config_pb2.ConsortiumConfig]:
    genesis = read_genesis(net.home / "genesis.block")
    return genesis, config_from_genesis(genesis)


def test_blocks_signed_by_a_rotated_orderer_certificate_verify(peer: Peer, net: Net) -> None:
    new_signer, rotation = _orderer1_rotated(peer, net)
    _, block = config_block(peer, net, rotation)
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.VALID]
    after = invoke_block(peer, net, "a", new_signer)  # signed by the rotated certificate only
    assert list(peer.committer.commit_block(after).validated.codes) == [tx_pb.VALID]
    genesis, config = _genesis(net)
    res = verify_blocks("peer.h01", _chain(peer), genesis, config, Verifier())
    assert res.ok and res.height == peer.ledger.height(), res.errors


def test_verification_stops_where_the_protocol_version_is_beyond_this_release(peer: Peer, net: Net) -> None:
    beyond = max(SUPPORTED_VERSIONS) + 1
    _, raising = config_block(peer, net, next_config(peer, beyond))
    with pytest.raises(RxError):
        peer.committer.commit_block(raising)  # committed, then the peer stops
    after = invoke_block(peer, net, "b", net.orderer1)
    validated = peer.committer.validator.validate(after, peer.ledger.height(), peer.ledger.blocks.last_hash())
    peer.ledger.commit(validated.block, validated.outcomes)
    genesis, config = _genesis(net)
    res = verify_blocks("peer.h01", _chain(peer), genesis, config, Verifier())
    assert not res.ok
    assert res.errors == [f"block {raising.header.number}: {PROTOCOL_UNSUPPORTED}: the consortium runs "
                          f"protocol version {beyond}; this release implements {sorted(SUPPORTED_VERSIONS)}: "
                          "install a release implementing it and start the node again (keep its data "
                          "directory); the blocks after it are not verified"]
    assert res.height == raising.header.number + 1
    # the CLI's answer: not "the ledger is invalid" but "this client cannot judge it"
    assert _verify_reason(res.errors) == PROTOCOL_UNSUPPORTED
    assert LedgerInvalid("m", {}, [_verify_reason(res.errors)] * 2).reason == PROTOCOL_UNSUPPORTED
    broken = [*res.errors, "block 1: no valid orderer signature"]
    assert _verify_reason(broken) == "LEDGER_INVALID"
    assert LedgerInvalid("m", {}, [PROTOCOL_UNSUPPORTED, "LEDGER_INVALID"]).reason == "LEDGER_INVALID"
    assert LedgerInvalid("m", {}, []).reason == "LEDGER_INVALID"


def _served(peer: Peer, codes: dict[int, list[tx_pb.TxValidationCode.ValueType]],
            extra: Sequence[block_pb2.Block] = ()) -> list[block_pb2.Block]:
    """The peer's chain as a hostile peer serves it: the validation codes of the blocks in
    ``codes`` replaced (metadata nobody signs), ``extra`` blocks after it."""
    chain = _chain(peer)
    for n, forged in codes.items():
        del chain[n].metadata.validation_codes[:]
        chain[n].metadata.validation_codes.extend(forged)
    return [*chain, *extra]


def test_a_refused_config_update_served_as_valid_is_not_adopted(peer: Peer, net: Net) -> None:
    """A hostile peer marks VALID a config update the consortium refused (here one admin's
    signature where the config_update policy takes a majority) that hands orderer 1's place to
    a certificate of its choosing, then serves a block of its own signed with it. The verifier
    adopted config blocks on the peer's validation code: it took the rogue orderer as one of the
    consortium's and the made-up block verified (ok). It now judges the update by the orderers'
    and peers' own rule: the disagreement is reported, the update not adopted, and the made-up
    block has no valid orderer signature."""
    rogue, update = _orderer1_rotated(peer, net)
    a = net.admins
    env = peer.kit.config_tx(a["h01"], update, [a["h01"]])  # 1 of 4 admins: refused
    block = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [env], [net.orderer1],
                       timestamp_ms=peer.kit.clock_ms)
    n = block.header.number
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.BAD_CONFIG_UPDATE]
    made_up = invoke_block(peer, net, "forged", rogue)  # the honest peer refuses it: never committed
    with pytest.raises(RxError):
        peer.committer.commit_block(made_up)
    made_up = invoke_block(peer, net, "forged", rogue)
    made_up.metadata.validation_codes.append(tx_pb.VALID)
    genesis, config = _genesis(net)
    res = verify_blocks("peer.h01", _served(peer, {n: [tx_pb.VALID]}, [made_up]), genesis, config, Verifier())
    assert not res.ok and res.height == n + 2
    assert len(res.errors) == 2, res.errors
    assert res.errors[0].startswith(f"block {n}: the peer recorded config transaction 0 VALID; the consortium's "
                                    "rules refuse it (BAD_CONFIG_UPDATE: admin signatures do not satisfy "
                                    "config_update)"), res.errors
    assert res.errors[1] == f"block {n + 1}: no valid orderer signature"
    # the honest peer's chain (the update recorded refused) verifies
    assert verify_blocks("peer.h01", _chain(peer), genesis, config, Verifier()).ok


def test_a_valid_config_update_served_as_refused_is_adopted_and_reported(peer: Peer, net: Net) -> None:
    """A hostile peer marks an orderer certificate rotation the consortium adopted as refused:
    the verifier kept the old certificate and called every later block (signed by the rotated
    one) unsigned. It now adopts the update by the rules, reports the peer's code, and the
    blocks after it verify."""
    new_signer, rotation = _orderer1_rotated(peer, net)
    _, block = config_block(peer, net, rotation)
    n = block.header.number
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.VALID]
    after = invoke_block(peer, net, "a", new_signer)
    assert list(peer.committer.commit_block(after).validated.codes) == [tx_pb.VALID]
    genesis, config = _genesis(net)
    res = verify_blocks("peer.h01", _served(peer, {n: [tx_pb.BAD_CONFIG_UPDATE]}), genesis, config, Verifier())
    assert res.errors == [f"block {n}: the peer recorded its config update BAD_CONFIG_UPDATE; the consortium's "
                          "rules accept it (adopted here)"]
    assert res.height == peer.ledger.height()


def test_a_config_block_failing_a_check_is_not_adopted(peer: Peer, net: Net) -> None:
    """A valid-looking config update in a block no orderer of the config in force signed (a
    block the serving peer made up, its envelope admin-signed): reported unsigned, and its
    config is not adopted -- blocks signed by the orderer it names stay unsigned too."""
    rogue, update = _orderer1_rotated(peer, net)
    _, block = config_block(peer, net, update)
    forged = block_pb2.Block()
    forged.CopyFrom(block)
    del forged.metadata.orderer_signatures[:]
    h = block_header_hash(forged.header)
    forged.metadata.orderer_signatures.add(signer=rogue.identity, signature=rogue.sign(Purpose.BLOCK, h))
    forged.metadata.validation_codes.append(tx_pb.VALID)
    n = forged.header.number
    after = make_block(n + 1, h, [], [rogue], timestamp_ms=peer.kit.clock_ms)
    genesis, config = _genesis(net)
    res = verify_blocks("peer.h01", [*_chain(peer), forged, after], genesis, config, Verifier())
    assert res.errors == [f"block {n}: no valid orderer signature", f"block {n + 1}: no valid orderer signature"]
