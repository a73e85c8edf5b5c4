"""MSP: certificate chains, validity, revocation, roles; signatures over other bytes."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
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


def _ca_without_key_cert_sign(org: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CA certificate (BasicConstraints ca=true) whose KeyUsage lacks keyCertSign."""
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes

    name = cx509.Name([cx509.NameAttribute(cx509.oid.NameOID.ORGANIZATION_NAME, org),
                       cx509.NameAttribute(cx509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME, "ca"),
                       cx509.NameAttribute(cx509.oid.NameOID.COMMON_NAME, f"ca.{org}")])
    usage = cx509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                           data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=True,
                           encipher_only=False, decipher_only=False)
    cert = (cx509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(cx509.random_serial_number())
            .not_valid_before(FIXED_NOW - dt.timedelta(days=1)).not_valid_after(FIXED_NOW + dt.timedelta(days=3650))
            .add_extension(cx509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .sign(key, hashes.SHA256()))
    return cert_to_der(cert)


def _under_ca(network: GeneratedNetwork, ca_der: bytes, version: int | None) -> config_pb2.ConsortiumConfig:
    config = config_pb2.ConsortiumConfig()
    config.CopyFrom(network.config)
    next(o for o in config.organizations if o.id == "h01").ca_cert_der = ca_der
    if version is not None:
        config.protocol_version = version
    return config


@pytest.mark.parametrize("ca_from", [FIXED_NOW - dt.timedelta(days=40), FIXED_NOW + dt.timedelta(days=30)],
                         ids=["expired", "not-yet-valid"])
def test_a_member_of_a_ca_outside_its_validity_passes_under_version_1_only(
        network: GeneratedNetwork, ca_from: dt.datetime) -> None:
    """The CA's own validity period (make_ca: 10 days from ``ca_from``) bounds its members'
    from protocol version 2 (MEMBERSHIP_VERSION): a doctor certificate valid now, issued by a
    CA expired 30 days ago (or valid only in 30 days), is EXPIRED_CERT under version 2 and
    valid under version 1; under version 2 it is valid once both are."""
    from node.protocol import MEMBERSHIP_VERSION

    ca_key = signing.generate_key()
    ca = make_ca("h01", ca_key, ca_from, days=10)
    k = signing.generate_key()
    ident = identity_pb2.Identity(org="h01", cert_der=cert_to_der(
        issue_cert(ca, ca_key, k.public_key(), org="h01", role="doctor", name="dr-x", now=FIXED_NOW)))
    assert MSP(_under_ca(network, cert_to_der(ca), None), Verifier()).validate(ident, NOW_MS).role == "doctor"
    v2 = MSP(_under_ca(network, cert_to_der(ca), MEMBERSHIP_VERSION), Verifier())
    with pytest.raises(RxError) as e:
        v2.validate(ident, NOW_MS)
    assert e.value.reason == "EXPIRED_CERT" and "CA certificate of h01" in e.value.message
    both = int((ca_from + dt.timedelta(days=1)).timestamp() * 1000)
    if both >= NOW_MS:
        assert v2.validate(ident, both).role == "doctor"


def test_a_ca_whose_key_usage_lacks_key_cert_sign_vouches_for_nobody_from_version_2(
        network: GeneratedNetwork) -> None:
    """RFC 5280: a CA certificate with KeyUsage but without keyCertSign may not sign
    certificates. Version 1 ignored it; from version 2 its members are UNKNOWN_CREATOR."""
    from cryptography import x509 as cx509

    from node.protocol import MEMBERSHIP_VERSION

    ca_key = signing.generate_key()
    ca_der = _ca_without_key_cert_sign("h01", ca_key)
    k = signing.generate_key()
    ident = identity_pb2.Identity(org="h01", cert_der=cert_to_der(issue_cert(
        cx509.load_der_x509_certificate(ca_der), ca_key, k.public_key(), org="h01", role="doctor",
        name="dr-y", now=FIXED_NOW)))
    assert MSP(_under_ca(network, ca_der, None), Verifier()).validate(ident, NOW_MS).role == "doctor"
    with pytest.raises(RxError) as e:
        MSP(_under_ca(network, ca_der, MEMBERSHIP_VERSION), Verifier()).validate(ident, NOW_MS)
    assert e.value.reason == "UNKNOWN_CREATOR" and "keyCertSign" in e.value.message


def test_orderer_block_signers_from_version_2_are_those_valid_at_the_blocks_time(
        network: GeneratedNetwork) -> None:
    """MSP.block_signers: every orderer of the config under version 1, whatever the time
    (an unstamped block included); from version 2 only those valid at the block's time."""
    from node.protocol import MEMBERSHIP_VERSION

    every = {o.cert_der: o.raft_id for o in network.config.orderers}
    assert every
    v1 = MSP(network.config, Verifier())
    later = int((FIXED_NOW + dt.timedelta(days=900)).timestamp() * 1000)
    assert v1.block_signers(NOW_MS) == v1.block_signers(0) == v1.block_signers(later) == every
    config = config_pb2.ConsortiumConfig()
    config.CopyFrom(network.config)
    config.protocol_version = MEMBERSHIP_VERSION
    v2 = MSP(config, Verifier())
    assert v2.block_signers(NOW_MS) == every
    assert v2.block_signers(0) == {} and v2.block_signers(later) == {}
