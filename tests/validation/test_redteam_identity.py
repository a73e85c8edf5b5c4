"""Red-team regressions: certificates and policies a malicious member (or a careless CA) brings.

Each test failed before its fix in node/identity (msp.py, policy.py).
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from rxchain.v1 import config_pb2, identity_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.crypto import x509 as rx509
from node.crypto.signing import Signer, Verifier, generate_key, load_private_key
from node.errors import RxError
from node.genesis import config_from_genesis, read_genesis
from node.identity.msp import MSP, canonical_serial
from node.identity.policy import parse_policy
from tests.validation.conftest import Net, Peer

# inside the validity of the netgen CA (generated "now") and of TxKit's timestamps
NOW = dt.datetime.fromtimestamp(1_800_000_000, tz=dt.UTC)
AT_MS = 1_800_000_000_000


def _ca(net: Net, org: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    d = net.home / "orgs" / org
    return (x509.load_pem_x509_certificate((d / "ca.pem").read_bytes()),
            load_private_key((d / "ca.key").read_bytes()))


def _config(net: Net) -> config_pb2.ConsortiumConfig:
    return config_from_genesis(read_genesis(net.home / "genesis.block"))


def _issue(
    net: Net, org: str, role: str, *, ca_flag: bool = False, digital_signature: bool = True,
    serial: int | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate signed by ``org``'s real CA (what a careless or compromised CA issues)."""
    ca, ca_key = _ca(net, org)
    key = generate_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(rx509._name(org, role, f"{role}-x"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=True,
                key_cert_sign=ca_flag, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _identity(org: str, cert_der: bytes) -> identity_pb2.Identity:
    return identity_pb2.Identity(org=org, cert_der=cert_der)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _der_len(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _upper(s: str) -> str:
    return s.upper()


def _zero_padded(s: str) -> str:
    return "00" + s


def _openssl_colons(s: str) -> str:
    s = s.zfill(len(s) + len(s) % 2)
    return ":".join(s[i:i + 2] for i in range(0, len(s), 2)).upper()


def _prefixed(s: str) -> str:
    return " 0x" + s + " "


@pytest.mark.parametrize("fmt", [_upper, _zero_padded, _openssl_colons, _prefixed])
def test_revoked_serial_written_in_another_hex_form_still_revokes(
    net: Net, fmt: Callable[[str], str]
) -> None:
    cert, _ = _issue(net, "h01", "doctor", serial=0x0ABCDEF0123456789)
    cfg = _config(net)
    next(o for o in cfg.organizations if o.id == "h01").revoked_serials.append(
        fmt(rx509.cert_info(cert).serial_hex))
    with pytest.raises(RxError) as e:
        MSP(cfg, Verifier()).validate(_identity("h01", _der(cert)), AT_MS)
    assert e.value.reason == "REVOKED_CERT"


def test_canonical_serial() -> None:
    assert canonical_serial("00:0A:bc") == "abc"
    assert canonical_serial("0x0") == "0"
    assert canonical_serial("") == canonical_serial("xyz") == ""
    assert canonical_serial("12 34") == "1234"


def test_garbage_revocation_entries_revoke_nothing(net: Net) -> None:
    cert, _ = _issue(net, "h01", "doctor")
    cfg = _config(net)
    next(o for o in cfg.organizations if o.id == "h01").revoked_serials.extend(["", "zz", "0x"])
    assert MSP(cfg, Verifier()).validate(_identity("h01", _der(cert)), AT_MS).role == "doctor"


def test_ca_certificate_or_certificate_without_signing_usage_is_not_a_member(net: Net) -> None:
    msp = MSP(_config(net), Verifier())
    sound, _ = _issue(net, "h01", "peer")
    assert msp.validate(_identity("h01", _der(sound)), AT_MS).role == "peer"
    for cert, _ in (_issue(net, "h01", "peer", ca_flag=True),
                    _issue(net, "h01", "peer", digital_signature=False)):
        with pytest.raises(RxError) as e:
            msp.validate(_identity("h01", _der(cert)), AT_MS)
        assert e.value.reason == "BAD_CERT"


def test_ca_flagged_peer_certificate_cannot_endorse(peer: Peer, net: Net) -> None:
    cert, key = _issue(net, "h01", "peer", ca_flag=True)
    rogue = Signer(key, _identity("h01", _der(cert)))
    env = peer.kit.invoke(net.doctor, [rogue, net.peer_p01], [RwSpec("rx", writes=[("a", b"1")])])
    block = make_block(1, peer.ledger.blocks.last_hash(), [env], [net.orderer1])
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.BAD_ENDORSEMENT]


def _negative_serial_cert(net: Net) -> bytes:
    """A CA-signed certificate whose serial is encoded negative (RFC 5280 forbids it)."""
    _, ca_key = _ca(net, "h01")
    cert, _ = _issue(net, "h01", "doctor", serial=0x0102030405)
    tbs = cert.tbs_certificate_bytes
    at = tbs.find(bytes.fromhex("02050102030405"))
    assert at > 0
    tbs = tbs[:at + 2] + b"\x81" + tbs[at + 3:]
    sig = ca_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    sig_alg = bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256
    body = tbs + sig_alg + b"\x03" + _der_len(len(sig) + 1) + b"\x00" + sig
    return b"\x30" + _der_len(len(body)) + body


def test_negative_serial_is_refused_whatever_the_process_warning_filters(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    der = _negative_serial_cert(net)
    # another thread leaving warnings.catch_warnings() restores the process-wide filters,
    # whatever this thread set: emulated by simplefilter doing nothing under an "ignore"
    monkeypatch.setattr(warnings, "simplefilter", lambda *a, **k: None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        with pytest.raises(RxError) as e:
            MSP(_config(net), Verifier()).validate(_identity("h01", der), AT_MS)
    assert e.value.reason == "BAD_CERT"


def test_policy_count_with_thousands_of_digits_is_bad_policy() -> None:
    with pytest.raises(RxError) as e:
        parse_policy("OutOf(" + "9" * 5000 + ", h01.peer)", ["h01"])
    assert e.value.reason == "BAD_POLICY"
    assert parse_policy("OutOf(000001, h01.peer)", ["h01"]).evaluate([("h01", "peer")])
