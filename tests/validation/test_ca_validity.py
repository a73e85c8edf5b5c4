"""Certificate validity from protocol version 2 (node.protocol.MEMBERSHIP_VERSION): a member
certificate counts only while the CA that issued it is within its own validity period at the
tx's timestamp (node.identity.msp), and a block's orderer signatures only while the orderer's
certificate is within its validity period at the block header's time (MSP.block_signers).
Version 1 ignored both; blocks before the update raising the version keep its answers on
replay."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from rxchain.v1 import block_pb2, config_pb2, identity_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.crypto import signing
from node.crypto import x509 as rx509
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Signer, Verifier
from node.crypto.x509 import cert_info_der
from node.errors import RxError
from node.genesis import read_genesis
from node.identity.msp import MSP
from node.ledger.ledger import Ledger
from node.orderer.chain import signed_in_force
from node.orderer.configrules import check_new_config
from node.peer.committer import Committer
from node.peer.validator import ConfigState
from node.protocol import MEMBERSHIP_VERSION
from tests.validation.conftest import Net, Peer, config_tracker, next_config

DAY_MS = 86_400_000


def _at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def _ca(org: str, from_ms: int, days: int) -> tuple[bytes, ec.EllipticCurvePrivateKey, dt.datetime]:
    """(DER, key, issuing time) of a CA for ``org`` valid from about ``from_ms`` for ``days``."""
    key = signing.generate_key()
    return rx509.cert_to_der(rx509.make_ca(org, key, _at(from_ms), days=days)), key, _at(from_ms)


def _member(ca_der: bytes, ca_key: ec.EllipticCurvePrivateKey, org: str, role: str, name: str,
            now_ms: int) -> Signer:
    """A member of ``org`` issued by that CA, valid from just before ``now_ms`` for 825 days."""
    key = signing.generate_key()
    cert = rx509.issue_cert(x509.load_der_x509_certificate(ca_der), ca_key, key.public_key(), org=org,
                            role=role, name=name, now=_at(now_ms))
    return Signer(key, identity_pb2.Identity(org=org, cert_der=rx509.cert_to_der(cert)))


def _with_ca(peer: Peer, org: str, ca_der: bytes, version: int | None = None) -> config_pb2.ConsortiumConfig:
    new = next_config(peer, version)
    next(o for o in new.organizations if o.id == org).ca_cert_der = ca_der
    return new


def _update_block(peer: Peer, net: Net, new: config_pb2.ConsortiumConfig,
                  orgs: tuple[str, ...] = ("p01", "ins01", "ins02")) -> block_pb2.Block:
    """The update to ``new`` signed by the admins of ``orgs`` (a majority; by default not
    h01's, who no longer counts once h01's CA is replaced), stamped with the kit's clock."""
    a = net.admins
    env = peer.kit.config_tx(a[orgs[0]], new, [a[o] for o in orgs])
    return make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), [env], [net.orderer1],
                      timestamp_ms=peer.kit.clock_ms)


def _block(peer: Peer, net: Net, envs: list[bytes], ts: int | None = None,
           orderers: list[Signer] | None = None) -> block_pb2.Block:
    return make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), envs, orderers or [net.orderer1],
                      timestamp_ms=peer.kit.clock_ms if ts is None else ts)


def test_members_of_an_expired_ca_count_under_version_1_only_and_replay_alike(
        peer: Peer, net: Net, tmp_path: Path) -> None:
    """h01's CA is replaced (under version 1) by one valid for 10 days from T, which issues a
    doctor and a peer certificate valid for 825 days. Txs stamped T + 20 days -- the CA has
    expired, the certificates have not -- are VALID under version 1: the doctor's and the one
    h01's peer endorsed. The version is raised at T + 1 day (the CA still valid: the raise
    checks it); from the next block, txs at T + 2 days are still VALID and txs at T + 20 days
    are EXPIRED_CREATOR_CERT and BAD_ENDORSEMENT. A peer replaying the chain from genesis
    reaches the same codes and state. (Blocks are stamped with their txs' time; the validator
    does not order block times.)"""
    t = peer.kit.clock_ms
    ca_der, ca_key, _ = _ca("h01", t, 10)
    doctor = _member(ca_der, ca_key, "h01", "doctor", "dr-short-ca", t)
    h01_peer = _member(ca_der, ca_key, "h01", "peer", "peer.h01", t)
    blocks: list[bytes] = []

    def commit(block: block_pb2.Block) -> list[int]:
        blocks.append(block.SerializeToString())
        return list(peer.committer.commit_block(block).validated.codes)

    def txs_at(ms: int, tag: str) -> block_pb2.Block:
        peer.kit.clock_ms = ms
        by_doctor = peer.kit.invoke(doctor, [net.peer_p01, net.peer_ins01], [RwSpec("rx", writes=[(f"d{tag}", b"1")])])
        endorsed = peer.kit.invoke(net.pharmacist, [h01_peer, net.peer_p01],
                                   [RwSpec("rx", writes=[(f"e{tag}", b"1")])])
        return _block(peer, net, [by_doctor, endorsed])

    assert commit(_update_block(peer, net, _with_ca(peer, "h01", ca_der))) == [tx_pb.VALID]
    assert commit(txs_at(t + 20 * DAY_MS, "1")) == [tx_pb.VALID, tx_pb.VALID]
    peer.kit.clock_ms = t + DAY_MS
    assert commit(_update_block(peer, net, next_config(peer, MEMBERSHIP_VERSION))) == [tx_pb.VALID]
    assert commit(txs_at(t + 2 * DAY_MS, "2")) == [tx_pb.VALID, tx_pb.VALID]
    assert commit(txs_at(t + 20 * DAY_MS, "3")) == [tx_pb.EXPIRED_CREATOR_CERT, tx_pb.BAD_ENDORSEMENT]

    replica = Ledger(tmp_path / "replica", fsync=False)
    try:
        replica.commit_genesis(read_genesis(net.home / "genesis.block"))
        again = Committer(replica, Verifier(), peer.policies)
        codes = [list(again.commit_block(block_pb2.Block.FromString(raw)).validated.codes) for raw in blocks]
        assert codes == [[tx_pb.VALID], [tx_pb.VALID, tx_pb.VALID], [tx_pb.VALID], [tx_pb.VALID, tx_pb.VALID],
                         [tx_pb.EXPIRED_CREATOR_CERT, tx_pb.BAD_ENDORSEMENT]]
        assert replica.state_hash() == peer.ledger.state_hash()
    finally:
        replica.close()


def test_a_member_counts_from_version_2_only_while_its_ca_is_valid_too(peer: Peer, net: Net) -> None:
    """A CA valid for 10 days from T issues a doctor certificate valid for 825 days. Under
    version 2 the doctor is valid at T + 1 day and EXPIRED_CERT at T + 11 days (inside its own
    validity): the validator's per-config cache, filled by the first answer, must not carry it
    past the CA's expiry. A CA not yet valid at the tx's time vouches for nobody either. Under
    version 1 (and for the update raising the version, judged by it: ``version=1``) the doctor
    is valid at both times."""
    t = peer.kit.clock_ms
    ca_der, ca_key, _ = _ca("h01", t, 10)
    doctor = _member(ca_der, ca_key, "h01", "doctor", "dr-short-ca", t)
    base = next_config(peer)
    next(o for o in base.organizations if o.id == "h01").ca_cert_der = ca_der
    v2 = config_pb2.ConsortiumConfig()
    v2.CopyFrom(base)
    v2.protocol_version = MEMBERSHIP_VERSION
    under_v2 = ConfigState(v2, Verifier())
    assert under_v2.principal(doctor.identity, t + DAY_MS) == ("h01", "doctor")
    with pytest.raises(RxError) as exc:
        under_v2.principal(doctor.identity, t + 11 * DAY_MS)
    assert exc.value.reason == "EXPIRED_CERT" and "CA certificate of h01" in exc.value.message
    with pytest.raises(RxError) as early:
        under_v2.principal(doctor.identity, t - DAY_MS)  # before the CA (and the doctor) began
    assert early.value.reason == "EXPIRED_CERT"
    under_v1 = ConfigState(base, Verifier())
    assert under_v1.principal(doctor.identity, t + DAY_MS) == ("h01", "doctor")
    assert under_v1.principal(doctor.identity, t + 11 * DAY_MS) == ("h01", "doctor")
    assert MSP(v2, Verifier(), version=1).validate(doctor.identity, t + 11 * DAY_MS).role == "doctor"


def test_a_block_signed_only_by_an_expired_orderer_certificate_is_refused_from_version_2(
        peer: Peer, net: Net) -> None:
    """Orderer 1's certificate ends at N. Under version 1 a block stamped after N (or not
    stamped) signed by it alone is taken. From the block after the update raising the
    version the peer refuses both as it refuses an unsigned block (BAD_ORDERER_SIGNATURE,
    nothing written), and so does an orderer judging another's copy (signed_in_force), while
    a block stamped inside the certificate's validity is still taken."""
    end = cert_info_der(net.orderer1.identity.cert_der).not_after_ms
    under_v1 = config_tracker(peer).current.msp
    late_v1 = _block(peer, net, [], end + 1)
    assert signed_in_force(Verifier(), late_v1, block_header_hash(late_v1.header), under_v1)
    peer.committer.commit_block(late_v1)
    peer.committer.commit_block(_block(peer, net, [], 0))  # unstamped: version 1 checks no time
    assert list(peer.committer.commit_block(
        _update_block(peer, net, next_config(peer, MEMBERSHIP_VERSION))).validated.codes) == [tx_pb.VALID]
    under_v2 = config_tracker(peer).current.msp
    height = peer.ledger.height()
    for ts in (end + 1, 0):
        block = _block(peer, net, [], ts)
        assert not signed_in_force(Verifier(), block, block_header_hash(block.header), under_v2)
        with pytest.raises(RxError) as exc:
            peer.committer.commit_block(block)
        assert exc.value.reason == "BAD_ORDERER_SIGNATURE", exc.value.message
        assert peer.ledger.height() == height
    on_time = _block(peer, net, [], end)
    assert signed_in_force(Verifier(), on_time, block_header_hash(on_time.header), under_v2)
    peer.committer.commit_block(on_time)
    assert peer.ledger.height() == height + 1


def test_from_version_2_an_orderer_counts_only_while_its_ca_is_valid(peer: Peer, net: Net) -> None:
    """The orderer's certificate's CA bounds its signatures' time too (the MSP's rule):
    block_signers under version 2 leaves out an orderer whose organisation's CA has expired at
    the block's time; version 1 keeps every orderer of the config."""
    t = peer.kit.clock_ms
    ca_der, _, _ = _ca("ins02", t - 40 * DAY_MS, 10)
    cfg = next_config(peer)
    next(o for o in cfg.organizations if o.id == "ins02").ca_cert_der = ca_der
    orderer2 = net.orderer2.identity.cert_der
    assert orderer2 in MSP(cfg, Verifier()).block_signers(t)
    cfg.protocol_version = MEMBERSHIP_VERSION
    signers = MSP(cfg, Verifier()).block_signers(t)
    assert orderer2 not in signers and net.orderer1.identity.cert_der in signers


def _raise_and_rotate_orderer2_under(peer: Peer, ca_der: bytes, orderer_cert: bytes,
                                     version: int | None) -> config_pb2.ConsortiumConfig:
    new = _with_ca(peer, "ins02", ca_der, version)
    next(o for o in new.orderers if o.raft_id == 2).cert_der = orderer_cert
    return new


def _refused_everywhere(peer: Peer, block: block_pb2.Block, fragment: str) -> None:
    with pytest.raises(RxError) as exc:
        config_tracker(peer).validate_now(block.data.envelopes[0])
    assert exc.value.reason == "BAD_CONFIG_UPDATE" and fragment in exc.value.message, exc.value.message
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.BAD_CONFIG_UPDATE]


def test_version_2_is_not_raised_over_a_ca_that_could_vouch_for_nobody(peer: Peer, net: Net) -> None:
    """Under version 1 an update may still give ins02 a CA that has expired (with orderer 2
    rotated to a certificate it issued): VALID, as before. The update raising the version over
    it is refused by the orderers and the peer alike (from version 2 none of ins02's members,
    its orderer included, would count); once ins02 has a CA valid at the update's time it
    goes in, and under version 2 an update giving ins02 the expired CA again is refused."""
    now = peer.kit.clock_ms
    ca_der, ca_key, _ = _ca("ins02", now - 40 * DAY_MS, 10)
    rotated = _member(ca_der, ca_key, "ins02", "orderer", "orderer.ins02", now).identity.cert_der
    expired = _raise_and_rotate_orderer2_under(peer, ca_der, rotated, None)
    assert list(peer.committer.commit_block(_update_block(peer, net, expired)).validated.codes) == [tx_pb.VALID]
    others = ("h01", "p01", "ins01")  # ins02's admin was issued by its first CA
    _refused_everywhere(peer, _update_block(peer, net, next_config(peer, MEMBERSHIP_VERSION), others),
                        "organisation ins02: CA certificate is not valid at")
    fresh_der, fresh_key, _ = _ca("ins02", now - DAY_MS, 3650)
    fresh = _member(fresh_der, fresh_key, "ins02", "orderer", "orderer.ins02", now).identity.cert_der
    restore = _raise_and_rotate_orderer2_under(peer, fresh_der, fresh, None)
    assert list(peer.committer.commit_block(_update_block(peer, net, restore, others)).validated.codes) == [
        tx_pb.VALID]
    raising = _update_block(peer, net, next_config(peer, MEMBERSHIP_VERSION), others)
    assert list(peer.committer.commit_block(raising).validated.codes) == [tx_pb.VALID]
    again = _raise_and_rotate_orderer2_under(peer, ca_der, rotated, None)
    _refused_everywhere(peer, _update_block(peer, net, again, others), "organisation ins02: CA certificate")


def test_version_2_is_not_raised_over_an_expired_orderer_certificate(peer: Peer, net: Net) -> None:
    """From version 2 a block counts only the signatures of orderer certificates valid at its
    time: the update raising the version at a time orderer 1's certificate has expired is
    refused (a consortium of such orderers would have no block accepted after it); the same
    content without the raise is not judged so (version 1)."""
    old = peer.ledger.current_config()
    assert old is not None
    end = cert_info_der(net.orderer1.identity.cert_der).not_after_ms
    raising = next_config(peer, MEMBERSHIP_VERSION)
    with pytest.raises(RxError) as exc:
        check_new_config(old, raising, 1000, MSP(raising, Verifier(), version=1), end + 1)
    assert exc.value.reason == "BAD_CONFIG_UPDATE" and "orderer 1: its certificate is not valid" in exc.value.message
    staying = next_config(peer)
    check_new_config(old, staying, 1000, MSP(staying, Verifier()), end + 1)
    check_new_config(old, raising, 1000, MSP(raising, Verifier(), version=1), end - 1)
