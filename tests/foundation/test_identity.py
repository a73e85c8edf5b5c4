"""MSP: certificate chains, validity, revocation, roles; signatures over other bytes."""

from __future__ import annotations

import datetime as dt

import pytest
from netgen import GeneratedNetwork
from rxchain.v1 import config_pb2, identity_pb2

from node.crypto import signing
from node.crypto.signing import Purpose, Verifier, load_signer
from node.crypto.x509 import cert_to_der, issue_cert, make_ca
from node.errors import RxError
from node.identity.msp import MSP

from .conftest import FIXED_NOW

NOW_MS = int(FIXED_NOW.timestamp() * 1000)


def _signer(net: GeneratedNetwork, org: str, user: str) -> signing.Signer:
    d = net.user_dir(org, user)
    return load_signer(d / "cert.pem", d / "key.pem", org)


def test_valid_member_has_role_and_attributes(network: GeneratedNetwork) -> None:
    msp = MSP(network.config, Verifier())
    s = _signer(network, "h01", "dr-jiang")
    p = msp.verify(s.identity, s.sign(Purpose.ENVELOPE, b"data"), Purpose.ENVELOPE, b"data", NOW_MS)
    assert (p.org, p.role, p.name) == ("h01", "doctor", "dr-jiang")
    assert p.attrs["practice_years"] == "10"
    assert p.org_kind == "hospital" and p.hospital_level == "tertiary"


def test_signature_over_other_bytes_is_refused(network: GeneratedNetwork) -> None:
    msp = MSP(network.config, Verifier())
    s = _signer(network, "h01", "dr-jiang")
    with pytest.raises(RxError) as e:
        msp.verify(s.identity, s.sign(Purpose.ENVELOPE, b"data"), Purpose.ENVELOPE, b"other", NOW_MS)
    assert e.value.reason == "BAD_SIGNATURE"


def test_identity_claiming_another_org_is_refused(network: GeneratedNetwork) -> None:
    msp = MSP(network.config, Verifier())
    s = _signer(network, "h01", "dr-jiang")
    forged = identity_pb2.Identity(org="h02", cert_der=s.identity.cert_der)
    with pytest.raises(RxError) as e:
        msp.validate(forged, NOW_MS)
    assert e.value.reason == "UNKNOWN_CREATOR"


def test_foreign_ca_is_refused(network: GeneratedNetwork) -> None:
    msp = MSP(network.config, Verifier())
    rogue_key = signing.generate_key()
    rogue_ca = make_ca("h01", rogue_key, FIXED_NOW)
    member = signing.generate_key()
    cert = issue_cert(rogue_ca, rogue_key, member.public_key(), org="h01", role="doctor",
                      name="dr-fake", now=FIXED_NOW)
    with pytest.raises(RxError) as e:
        msp.validate(identity_pb2.Identity(org="h01", cert_der=cert_to_der(cert)), NOW_MS)
    assert e.value.reason == "UNKNOWN_CREATOR"


def test_unknown_org_and_tampered_cert(network: GeneratedNetwork) -> None:
    msp = MSP(network.config, Verifier())
    s = _signer(network, "h01", "dr-jiang")
    with pytest.raises(RxError) as e:
        msp.validate(identity_pb2.Identity(org="zz99", cert_der=s.identity.cert_der), NOW_MS)
    assert e.value.reason == "UNKNOWN_ORG"
    tampered = bytearray(s.identity.cert_der)
    tampered[len(tampered) // 2] ^= 0x01
    with pytest.raises(RxError) as e:
        msp.validate(identity_pb2.Identity(org="h01", cert_der=bytes(tampered)), NOW_MS)
    assert e.value.reason in ("UNKNOWN_CREATOR", "BAD_CERT")


def test_expired_and_not_yet_valid(network: GeneratedNetwork) -> None:
    msp = MSP(network.config, Verifier())
    s = _signer(network, "h01", "dr-jiang")
    later = int((FIXED_NOW + dt.timedelta(days=900)).timestamp() * 1000)
    with pytest.raises(RxError) as e:
        msp.validate(s.identity, later)
    assert e.value.reason == "EXPIRED_CERT"
    earlier = int((FIXED_NOW - dt.timedelta(days=1)).timestamp() * 1000)
    with pytest.raises(RxError) as e:
        msp.validate(s.identity, earlier)
    assert e.value.reason == "EXPIRED_CERT"


def test_revoked_certificate(network: GeneratedNetwork) -> None:
    s = _signer(network, "h01", "dr-jiang")
    from node.crypto.x509 import cert_info_der

    serial = cert_info_der(s.identity.cert_der).serial_hex
    config = config_pb2.ConsortiumConfig()
    config.CopyFrom(network.config)
    next(o for o in config.organizations if o.id == "h01").revoked_serials.append(serial)
    msp = MSP(config, Verifier())
    with pytest.raises(RxError) as e:
        msp.validate(s.identity, NOW_MS)
    assert e.value.reason == "REVOKED_CERT"
    # other members of the org are unaffected
    nurse = _signer(network, "h01", "nurse-liu")
    assert msp.validate(nurse.identity, NOW_MS).role == "nurse"


def test_role_not_allowed_for_org_kind(network: GeneratedNetwork) -> None:
    # a pharmacy CA issuing a "doctor" certificate must not create a doctor
    pharm_ca_dir = network.home / "orgs" / "p01"
    from cryptography import x509 as cx509

    ca = cx509.load_pem_x509_certificate((pharm_ca_dir / "ca.pem").read_bytes())
    ca_key = signing.load_private_key((pharm_ca_dir / "ca.key").read_bytes())
    k = signing.generate_key()
    cert = issue_cert(ca, ca_key, k.public_key(), org="p01", role="doctor", name="dr-p",
                      now=FIXED_NOW)
    msp = MSP(network.config, Verifier())
    with pytest.raises(RxError) as e:
        msp.validate(identity_pb2.Identity(org="p01", cert_der=cert_to_der(cert)), NOW_MS)
    assert e.value.reason == "WRONG_ROLE"


def test_orderer_membership(network: GeneratedNetwork) -> None:
    msp = MSP(network.config, Verifier())
    orderer = load_signer(network.home / "nodes/orderer.ins01/cert.pem",
                          network.home / "nodes/orderer.ins01/key.pem", "ins01")
    peer = load_signer(network.home / "nodes/peer.ins01/cert.pem",
                       network.home / "nodes/peer.ins01/key.pem", "ins01")
    assert msp.is_orderer(orderer.identity)
    assert msp.orderer_raft_id(orderer.identity) == 1
    assert not msp.is_orderer(peer.identity)


def test_every_single_byte_corruption_of_a_cert_is_a_reason_code(network: GeneratedNetwork) -> None:
    """Flipping any one byte of a member certificate (version field, lengths, OIDs, key,
    signature) is refused with a reason code; no parser exception escapes."""
    msp = MSP(network.config, Verifier())
    der = _signer(network, "h01", "dr-jiang").identity.cert_der
    reasons = set()
    for i in range(len(der)):
        for mask in (0x01, 0xFF):
            flipped = bytearray(der)
            flipped[i] ^= mask
            with pytest.raises(RxError) as e:
                msp.validate(identity_pb2.Identity(org="h01", cert_der=bytes(flipped)), NOW_MS)
            reasons.add(e.value.reason)
    assert reasons <= {"UNKNOWN_CREATOR", "BAD_CERT"} and "BAD_CERT" in reasons, reasons
    # the version field (v3 = 2 in the first bytes of the TBS) set to an unknown version
    at = der.index(b"\xa0\x03\x02\x01\x02")
    bad = der[: at + 4] + b"\x07" + der[at + 5:]
    with pytest.raises(RxError) as e:
        msp.validate(identity_pb2.Identity(org="h01", cert_der=bad), NOW_MS)
    assert e.value.reason == "BAD_CERT"
    # a signature check against that certificate is simply not verified
    signer = _signer(network, "h01", "dr-jiang")
    sig = signer.sign(Purpose.ENVELOPE, b"data")
    assert Verifier().verify(der, sig, Purpose.ENVELOPE, b"data") and not Verifier().verify(
        bad, sig, Purpose.ENVELOPE, b"data")
