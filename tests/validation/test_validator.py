"""Validator: block-level refusals and per-tx codes with real signatures."""

from __future__ import annotations

import pytest
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.crypto.signing import Purpose
from node.errors import RxError
from node.ledger.statedb import Version

VALID = tx_pb.VALID


def commit(peer, net, envs, orderers=None):
    h = peer.ledger.height()
    block = make_block(h, peer.ledger.blocks.last_hash(), envs,
                       orderers if orderers is not None else [net.orderer1])
    return peer.committer.commit_block(block).validated.codes


def endorsed(peer, net, rw, creator=None, endorsers=None, **kw):
    return peer.kit.invoke(creator or net.doctor,
                           endorsers if endorsers is not None else [net.peer_h01, net.peer_p01],
                           rw, **kw)


def test_valid_tx_applies_writes_and_indexes(peer, net):
    env = endorsed(peer, net, [RwSpec("rx", writes=[("a", b"1"), ("b", b"2")])])
    assert commit(peer, net, [env]) == [VALID]
    vv = peer.ledger.get("rx", "a")
    assert vv is not None and vv.value == b"1" and vv.version == Version(1, 0)
    stored = peer.ledger.block(1)
    assert list(stored.metadata.validation_codes) == [VALID]
    assert stored.metadata.state_hash == peer.ledger.state_hash()
    txid = tx_pb.TxHeader.FromString(
        tx_pb.Transaction.FromString(tx_pb.Envelope.FromString(env).payload).header).tx_id
    loc = peer.ledger.tx_location(txid)
    assert loc is not None and (loc.block, loc.tx, loc.code) == (1, 0, VALID)


def test_block_level_refusals_change_nothing(peer, net):
    env = endorsed(peer, net, [RwSpec("rx", writes=[("a", b"1")])])
    h, last = peer.ledger.height(), peer.ledger.blocks.last_hash()
    cases = {
        "no signature": make_block(h, last, [env], []),
        "foreign signer": make_block(h, last, [env], [net.peer_h01]),
        "wrong number": make_block(h + 1, last, [env], [net.orderer1]),
        "broken chain": make_block(h, b"\x01" * 32, [env], [net.orderer1]),
    }
    forged = make_block(h, last, [env], [net.orderer1])
    forged.metadata.orderer_signatures[0].signature = net.orderer1.sign(Purpose.BLOCK, b"other")
    cases["forged signature"] = forged
    tampered = make_block(h, last, [env], [net.orderer1])
    tampered.data.envelopes.append(env)
    cases["data hash"] = tampered
    for name, block in cases.items():
        with pytest.raises(RxError) as e:
            peer.committer.commit_block(block)
        assert e.value.reason in ("BAD_BLOCK", "BAD_ORDERER_SIGNATURE"), name
    assert peer.ledger.height() == h
    assert peer.ledger.get("rx", "a") is None


def test_orderer_quorum(peer, net):
    from node.crypto.signing import Verifier
    from node.peer.committer import Committer

    strict = Committer(peer.ledger, Verifier(), peer.policies, orderer_quorum=2)
    env = endorsed(peer, net, [RwSpec("rx", writes=[("a", b"1")])])
    h, last = peer.ledger.height(), peer.ledger.blocks.last_hash()
    with pytest.raises(RxError) as e:  # the same orderer twice counts once
        strict.commit_block(make_block(h, last, [env], [net.orderer1, net.orderer1]))
    assert e.value.reason == "BAD_ORDERER_SIGNATURE"
    res = strict.commit_block(make_block(h, last, [env], [net.orderer1, net.orderer2]))
    assert res.validated.codes == [VALID]


def test_creator_checks(peer, net):
    kit = peer.kit
    rw = [RwSpec("rx", writes=[("k", b"v")])]
    good = endorsed(peer, net, rw)
    # bad creator signature: re-sign with someone else's key
    env = tx_pb.Envelope.FromString(endorsed(peer, net, rw))
    env.signature = net.pharmacist.sign(Purpose.ENVELOPE, env.payload)
    bad_sig = env.SerializeToString()
    # tx id not derived from nonce+creator
    hdr = tx_pb.TxHeader.FromString(kit.header(net.doctor))
    hdr.tx_id = "00" * 32
    bad_txid = endorsed(peer, net, rw, header=hdr.SerializeToString())
    # creator claims another org
    hdr2 = tx_pb.TxHeader.FromString(kit.header(net.doctor))
    hdr2.creator.org = "p01"
    unknown = endorsed(peer, net, rw, header=hdr2.SerializeToString())
    # wrong consortium
    hdr3 = tx_pb.TxHeader.FromString(kit.header(net.doctor))
    hdr3.consortium_id = "other"
    bad_header = endorsed(peer, net, rw, header=hdr3.SerializeToString())
    # creator cert not yet valid at the tx timestamp
    hdr4 = tx_pb.TxHeader.FromString(kit.header(net.doctor))
    hdr4.timestamp_ms = 1_000
    expired = endorsed(peer, net, rw, header=hdr4.SerializeToString())
    codes = commit(peer, net, [b"\xff\x00garbage", bad_sig, bad_txid, unknown, bad_header,
                               expired, good, good])
    assert codes == [tx_pb.BAD_PAYLOAD, tx_pb.BAD_CREATOR_SIGNATURE, tx_pb.BAD_TXID,
                     tx_pb.UNKNOWN_CREATOR, tx_pb.BAD_HEADER, tx_pb.EXPIRED_CREATOR_CERT,
                     VALID, tx_pb.DUPLICATE_TXID]
    # replay of the same envelope in a later block
    assert commit(peer, net, [good]) == [tx_pb.DUPLICATE_TXID]
    # a copied tx id in a junk envelope does not block the real tx later
    hdr5 = kit.header(net.doctor)
    junk = tx_pb.Envelope(payload=tx_pb.Transaction(header=hdr5).SerializeToString(),
                          signature=b"\x30\x00").SerializeToString()
    real = endorsed(peer, net, rw, header=hdr5)
    assert commit(peer, net, [junk]) == [tx_pb.BAD_CREATOR_SIGNATURE]
    assert commit(peer, net, [real]) == [VALID]


def test_endorsement_policy(peer, net):
    rw = [RwSpec("rx", writes=[("k", b"v")])]
    one = endorsed(peer, net, rw, endorsers=[net.peer_h01])
    dup = endorsed(peer, net, rw, endorsers=[net.peer_h01, net.peer_h01])
    none = endorsed(peer, net, rw, endorsers=[])
    wrong_role = endorsed(peer, net, rw, endorsers=[net.peer_h01, net.pharmacist])
    # forged endorsement: signature over another payload
    t = tx_pb.Transaction.FromString(
        tx_pb.Envelope.FromString(endorsed(peer, net, rw)).payload)
    t.endorsements[1].signature = net.peer_p01.sign(Purpose.ENDORSEMENT, b"something else")
    forged = peer.kit.seal(net.doctor, t)
    # endorsements copied from another tx onto this tx's own response payload
    other = tx_pb.Transaction.FromString(
        tx_pb.Envelope.FromString(endorsed(peer, net, rw)).payload)
    mine = tx_pb.Transaction.FromString(
        tx_pb.Envelope.FromString(endorsed(peer, net, rw, endorsers=[])).payload)
    mine.endorsements.extend(other.endorsements)
    copied = peer.kit.seal(net.doctor, mine)
    # whole response payload + endorsements copied: proposal hash does not bind
    other2 = tx_pb.Transaction.FromString(
        tx_pb.Envelope.FromString(endorsed(peer, net, rw)).payload)
    mine2 = tx_pb.Transaction.FromString(
        tx_pb.Envelope.FromString(endorsed(peer, net, rw, endorsers=[])).payload)
    mine2.response_payload = other2.response_payload
    mine2.endorsements.extend(other2.endorsements)
    copied_all = peer.kit.seal(net.doctor, mine2)
    unknown = endorsed(peer, net, rw, contract="nope")
    peer.kit.contract_sequence = 2
    stale = endorsed(peer, net, rw)
    peer.kit.contract_sequence = 1
    ok = endorsed(peer, net, rw, endorsers=[net.peer_ins01, net.peer_p01])
    codes = commit(peer, net, [one, dup, none, wrong_role, forged, copied, copied_all,
                               unknown, stale, ok])
    assert codes == [tx_pb.ENDORSEMENT_POLICY_FAILURE, tx_pb.ENDORSEMENT_POLICY_FAILURE,
                     tx_pb.ENDORSEMENT_POLICY_FAILURE, tx_pb.ENDORSEMENT_POLICY_FAILURE,
                     tx_pb.BAD_ENDORSEMENT, tx_pb.BAD_ENDORSEMENT, tx_pb.BAD_PAYLOAD,
                     tx_pb.UNKNOWN_CONTRACT, tx_pb.CONTRACT_VERSION_MISMATCH, VALID]
    assert peer.ledger.get("rx", "k").version == Version(1, 9)


def test_rwset_rules(peer, net):
    other_ns = endorsed(peer, net, [RwSpec("other", writes=[("k", b"v")])])
    system = endorsed(peer, net, [RwSpec("_system", writes=[("config", b"x")])])
    big = endorsed(peer, net, [RwSpec("rx", writes=[("k", b"x" * 262145)])])
    read_other = endorsed(peer, net, [RwSpec("other", reads=[("k", None)]),
                                      RwSpec("rx", writes=[("k", b"v")])])
    assert commit(peer, net, [other_ns, system, big, read_other]) == [
        tx_pb.BAD_RWSET, tx_pb.BAD_RWSET, tx_pb.BAD_RWSET, VALID]


def test_mvcc_and_phantoms(peer, net):
    assert commit(peer, net, [endorsed(peer, net, [
        RwSpec("rx", writes=[("a", b"1"), ("c", b"3"), ("e", b"5")])])]) == [VALID]
    v = (1, 0)
    stale = endorsed(peer, net, [RwSpec("rx", reads=[("a", None)], writes=[("x", b"")])])
    fresh = endorsed(peer, net, [RwSpec("rx", reads=[("a", v)], writes=[("a", b"2")])])
    after = endorsed(peer, net, [RwSpec("rx", reads=[("a", v)], writes=[("y", b"")])])
    absent_ok = endorsed(peer, net, [RwSpec("rx", reads=[("zz", None)], writes=[("b", b"")])])
    # range [a, d) exhausted saw a, c, but b was written earlier in this block -> phantom
    rng = endorsed(peer, net, [RwSpec("rx", ranges=[("a", "d", True, [("a", v), ("c", v)])],
                                      writes=[("q", b"")])])
    # range [c, "") limited to 1 result saw c: b/a changes outside are fine
    limited = endorsed(peer, net, [RwSpec("rx", ranges=[("c", "", False, [("c", v)])],
                                          writes=[("r", b"")])])
    codes = commit(peer, net, [stale, fresh, after, absent_ok, rng, limited])
    assert codes == [tx_pb.MVCC_READ_CONFLICT, VALID, tx_pb.MVCC_READ_CONFLICT, VALID,
                     tx_pb.PHANTOM_READ_CONFLICT, VALID]
    # next block: committed range changed since simulation
    v2 = (2, 1)
    ok_range = endorsed(peer, net, [RwSpec("rx", ranges=[("a", "c", True, [("a", v2), ("b", (2, 3))])],
                                           writes=[("s", b"")])])
    phantom = endorsed(peer, net, [RwSpec("rx", ranges=[("a", "c", True, [("a", v2)])],
                                          writes=[("t", b"")])])
    assert commit(peer, net, [ok_range, phantom]) == [VALID, tx_pb.PHANTOM_READ_CONFLICT]


def test_config_update(peer, net):
    cfg = peer.ledger.current_config()
    assert cfg is not None and cfg.sequence == 0
    new = type(cfg)()
    new.CopyFrom(cfg)
    new.sequence = 1
    new.limits.max_value_bytes = 10
    admins = net.admins
    majority = [admins["h01"], admins["p01"], admins["ins01"]]
    too_few = peer.kit.config_tx(admins["h01"], new, majority[:2])
    not_admins = peer.kit.config_tx(admins["h01"], new, [net.doctor, net.pharmacist, net.clerk])
    wrong_seq_cfg = type(cfg)()
    wrong_seq_cfg.CopyFrom(new)
    wrong_seq_cfg.sequence = 5
    wrong_seq = peer.kit.config_tx(admins["h01"], wrong_seq_cfg, majority)
    good = peer.kit.config_tx(admins["h01"], new, majority)
    again = peer.kit.config_tx(admins["h01"], new, majority)  # sequence now stale
    # (each in a block of its own, as the orderers cut config updates)
    codes = [c for env in (too_few, not_admins, wrong_seq, good, again) for c in commit(peer, net, [env])]
    assert codes == [tx_pb.BAD_CONFIG_UPDATE] * 3 + [VALID, tx_pb.BAD_CONFIG_UPDATE]
    # in later blocks the new limit (10 bytes) applies
    big = endorsed(peer, net, [RwSpec("rx", writes=[("k", b"x" * 11)])])
    assert commit(peer, net, [big]) == [tx_pb.BAD_RWSET]
    cur = peer.ledger.current_config()
    assert cur is not None and cur.sequence == 1 and cur.limits.max_value_bytes == 10
    assert peer.committer.validator.config.config.sequence == 1
    small = endorsed(peer, net, [RwSpec("rx", writes=[("k", b"x" * 10)])])
    assert commit(peer, net, [small]) == [VALID]


def test_broken_contract_definition_is_unknown_contract(peer, net):
    class Broken:
        def contract(self, name, state):
            raise RxError("BAD_POLICY", "stored definition does not parse")

    peer.committer.validator._policies = Broken()
    env = endorsed(peer, net, [RwSpec("rx", writes=[("a", b"1")])])
    assert commit(peer, net, [env]) == [tx_pb.UNKNOWN_CONTRACT]
    assert peer.ledger.height() == 2


def test_too_many_endorsements(peer, net):
    rw = [RwSpec("rx", writes=[("k", b"v")])]
    flood = endorsed(peer, net, rw, endorsers=[net.peer_h01, net.peer_p01] * 17)
    fine = endorsed(peer, net, rw, endorsers=[net.peer_h01, net.peer_p01] * 16)
    assert commit(peer, net, [flood, fine]) == [tx_pb.BAD_ENDORSEMENT, VALID]


def test_limited_range_sees_only_up_to_its_last_key(peer, net):
    assert commit(peer, net, [endorsed(peer, net, [
        RwSpec("rx", writes=[("a", b"1"), ("c", b"3"), ("e", b"5")])])]) == [VALID]
    v = (1, 0)
    blind_b = endorsed(peer, net, [RwSpec("rx", writes=[("b", b"2")])])
    upto_c = endorsed(peer, net, [RwSpec("rx", ranges=[("a", "", False, [("a", v), ("c", v)])],
                                         writes=[("x", b"")])])
    upto_a = endorsed(peer, net, [RwSpec("rx", ranges=[("a", "", False, [("a", v)])],
                                         writes=[("y", b"")])])
    assert commit(peer, net, [blind_b, upto_c, upto_a]) == [
        VALID, tx_pb.PHANTOM_READ_CONFLICT, VALID]
    # committed state now has a, b, c, e: a stale limited view [a, c] misses b
    stale = endorsed(peer, net, [RwSpec("rx", ranges=[("a", "", False, [("a", v), ("c", v)])],
                                        writes=[("z", b"")])])
    still_ok = endorsed(peer, net, [RwSpec("rx", ranges=[("c", "", False, [("c", v)])],
                                           writes=[("w", b"")])])
    assert commit(peer, net, [stale, still_ok]) == [tx_pb.PHANTOM_READ_CONFLICT, VALID]
