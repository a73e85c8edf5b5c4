"""Review of the signed peer releases (node.identity.release, node.orderer.releases): each
test is an attack on, or a liveness hole in, the reviewed code."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from rxchain.v1 import config_pb2, services_pb2

from node.crypto.hashing import sha256
from node.errors import RxError
from node.identity.release import sign_statement
from node.orderer import releases
from node.orderer.releases import ReleaseWatch, peer_release_intake
from tests.harness.certs import CountingVerifier
from tests.orderer.inproc import Leader
from tests.orderer.test_peer_releases import (
    NEWER,
    T0,
    _peer_network,
    network_of,
    peer_signer,
    signed_release,
    tell_signed,
)
from tests.orderer.test_peer_releases_redteam import _new_signer, _peer, _told, _verdict, _wired_leader

PeerRelease = services_pb2.PeerRelease


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """3 orderers, peer.h01 and peer.h02."""
    return _peer_network(tmp_path_factory.mktemp("release-review") / "net")



def _raise_with(lead: Leader, cert_of: dict[str, bytes]) -> str:
    """What the leader answers an update raising the version to NEWER that also gives the
    peers named in ``cert_of`` those certificates ("": admitted)."""
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(lead.tracker.current.config)
    new.sequence += 1
    new.protocol_version = NEWER
    for name, cert in cert_of.items():
        _peer(new, name).cert_der = cert
    try:
        lead.chain._check_voters_implement(new)
    except RxError as err:
        return f"{err.reason} {err.message}"
    return ""


def test_a_raise_rotating_a_peers_certificate_waits_for_the_new_certificates_word(
        net: Any, tmp_path: Path, newer: int) -> None:
    """Both peers told NEWER, signed. One update raises the version AND rotates peer.h01 to a
    new certificate (a new machine, still on the older release, not connected yet). The
    reviewed leader looked the peers of the new config up by name only, so the old
    certificate's word admitted the raise and the new machine would stop at that block. A
    word counts for the certificate the new config gives the peer: what the new certificate
    told (set aside while no peer held it) admits the raise, what the old one told does not."""
    watch = ReleaseWatch(lambda: T0)
    lead = _wired_leader(net, tmp_path, watch)
    intake = peer_release_intake(lambda: lead.tracker.current.config, watch)
    try:
        tell_signed(watch, net, "peer.h01", newer)
        tell_signed(watch, net, "peer.h02", newer)
        assert _raise_with(lead, {}) == ""
        rotated = _new_signer(net, "h01", "peer.h01")
        said = _raise_with(lead, {"peer.h01": rotated.cert_der})
        assert "peers [peer.h01 (told under another certificate only)]" in said, said
        _told(intake, rotated, "peer.h01", newer - 1, T0 + 1)  # the new machine: the older release
        said = _raise_with(lead, {"peer.h01": rotated.cert_der})
        assert f"peers [peer.h01 (told {newer - 1})]" in said, said
        _told(intake, rotated, "peer.h01", newer, T0 + 2)  # upgraded, still under no peer's name
        assert _raise_with(lead, {"peer.h01": rotated.cert_der}) == ""
        # a swap of the two peers' certificates: each name's word was given under the other one
        h01, h02 = peer_signer(net, "peer.h01").cert_der, peer_signer(net, "peer.h02").cert_der
        said = _raise_with(lead, {"peer.h01": h02, "peer.h02": h01})
        assert "peers [peer.h01 (" in said and "peer.h02 (" in said, said
        assert set(watch.peers()) == {"peer.h01", "peer.h02"}  # nothing changed by asking
    finally:
        lead.close()


def test_a_statement_given_in_another_network_is_refused(net: Any, tmp_path: Path, newer: int) -> None:
    """peer.h01's name and certificate serve in another network too (a staging network issued
    from the same CAs, or another consortium), where it runs the new release and said so,
    signed; here it runs the older one. The reviewed statement named no network: an orderer
    (or anybody who read another network's Admin.Status) relayed the other network's
    statement here and the raise was admitted, stopping peer.h01 at that block. A statement
    names its network's genesis block header hash and counts there only, told or relayed."""
    here, elsewhere = network_of(net), sha256(b"another network's genesis header")
    refused: list[str] = []
    watch = ReleaseWatch(lambda: T0 + 1000, on_refused=refused.append, network=here)
    lead = _wired_leader(net, tmp_path, watch)
    h01, h02 = peer_signer(net, "peer.h01"), peer_signer(net, "peer.h02")
    try:
        watch.certificate_told(h02.cert_der, newer, *sign_statement(h02, "peer.h02", newer, T0, here))
        for network in (elsewhere, b""):
            statement, signature = sign_statement(h01, "peer.h01", newer, T0, network)
            watch.merge_peers([PeerRelease(node="peer.h01", statement=statement, signature=signature)])
            watch.certificate_told(h01.cert_der, newer, statement, signature)
        assert refused == ["other_network"] * 4, refused
        assert "peers [peer.h01 (never heard from)]" in _verdict(lead)
        watch.certificate_told(h01.cert_der, newer, *sign_statement(h01, "peer.h01", newer, T0, here))
        assert _verdict(lead) == "" and refused == ["other_network"] * 4
    finally:
        lead.close()


def test_a_relay_forging_signatures_cannot_make_an_orderer_verify_without_end(
        net: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile orderer puts, in every Raft message it sends, a fresh made-up statement for
    every peer (a later clock each time, the peer's real certificate digest, a signature of
    garbage): the reviewed code verified one signature per peer and message (~0.1 ms each, up
    to 1,024 a message, under the GIL of the leader) for ever. An honest orderer never relays
    a signature that does not verify (it verified every statement it holds), so a sender that
    relayed one is not believed, nor its statements verified, for a while; the other orderers'
    relays still are."""
    verifier = CountingVerifier()
    watch = ReleaseWatch(lambda: T0 + 60_000, verifier=verifier)
    lead = _wired_leader(net, tmp_path, watch)
    h01, h02 = peer_signer(net, "peer.h01"), peer_signer(net, "peer.h02")
    try:
        for i in range(20):
            made_up = [PeerRelease(node=p, statement=services_pb2.ReleaseStatement(
                node=p, max_protocol_version=NEWER, signed_wall_ms=T0 + i, cert_sha256=sha256(s.cert_der),
            ).SerializeToString(), signature=b"0" * 70) for p, s in (("peer.h01", h01), ("peer.h02", h02))]
            watch.merge_peers(made_up, sender=2)
        assert verifier.calls == 1 and watch.refused["bad_signature"] == 1, (verifier.calls, watch.refused)
        assert watch.peers() == {}
        watch.merge_peers([signed_release(h01, "peer.h01", NEWER, T0 + 100)], sender=2)  # not believed now
        assert watch.peers() == {} and verifier.calls == 1
        watch.merge_peers([signed_release(h01, "peer.h01", NEWER, T0 + 100)], sender=3)  # another orderer
        assert set(watch.peers()) == {"peer.h01"} and verifier.calls == 2
        # a malformed entry costs nothing to refuse: no reason to distrust its sender
        watch.merge_peers([PeerRelease(statement=b"\x08", signature=b"0")], sender=4)
        watch.merge_peers([signed_release(h02, "peer.h02", NEWER, T0 + 100)], sender=4)
        assert watch.peers()["peer.h02"].told_ms == T0 + 100
        monkeypatch.setattr(releases, "DISTRUST_S", 0.05)  # believed again once the while is over
        forged = PeerRelease()
        forged.CopyFrom(made_up[0])  # peer.h01's, signed (made up) later than its word held
        forged.statement = services_pb2.ReleaseStatement(
            node="peer.h01", max_protocol_version=NEWER, signed_wall_ms=T0 + 300, cert_sha256=sha256(h01.cert_der),
        ).SerializeToString()
        watch.merge_peers([forged], sender=5)
        assert watch.refused["bad_signature"] == 2
        watch.merge_peers([signed_release(h02, "peer.h02", NEWER, T0 + 200)], sender=5)
        assert watch.peers()["peer.h02"].told_ms == T0 + 100
        time.sleep(0.1)
        watch.merge_peers([signed_release(h02, "peer.h02", NEWER, T0 + 200)], sender=5)
        assert watch.peers()["peer.h02"].told_ms == T0 + 200
    finally:
        lead.close()
