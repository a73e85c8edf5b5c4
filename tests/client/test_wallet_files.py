"""Wallet files an attacker or an accident can leave: each is BAD_WALLET, never a crash, a
hang or a key used that should not be."""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.errors import WalletError
from client.session import Session
from client.wallet import MAX_FILE_BYTES, load_identity_dir, wallet_cert_name
from node.crypto.signing import load_private_key
from node.crypto.x509 import ATTRS_OID, cert_info_der, cert_to_pem, issue_cert


def _wallet(net_home, tmp_path: Path) -> Path:
    d = tmp_path / "w"
    shutil.copytree(net_home.user_dir("h01", "dr-jiang"), d)
    return d


def _bad(d: Path, ca_bundle: Path) -> WalletError:
    with pytest.raises(WalletError) as e:
        load_identity_dir(d, ca_bundle)
    assert e.value.reason == "BAD_WALLET"
    return e.value


@pytest.mark.parametrize("name", ["key.pem", "org-records-key.pem"])
def test_password_protected_key_is_bad_wallet(net_home, tmp_path, name):
    d = _wallet(net_home, tmp_path)
    key = load_private_key((d / name).read_bytes())
    (d / name).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.BestAvailableEncryption(b"pw")))
    os.chmod(d / name, 0o600)
    assert "unencrypted P-256" in _bad(d, net_home.ca_bundle_path).message


@pytest.mark.parametrize("name", ["key.pem", "org-records-key.pem"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_is_bad_wallet(net_home, tmp_path, name, mode):
    d = _wallet(net_home, tmp_path)
    os.chmod(d / name, mode)
    err = _bad(d, net_home.ca_bundle_path)
    assert "chmod 600" in err.message
    os.chmod(d / name, 0o600)
    assert load_identity_dir(d, net_home.ca_bundle_path).records_key is not None


@pytest.mark.parametrize("name", ["key.pem", "org-records-key.pem"])
def test_other_curve_key_is_bad_wallet(net_home, tmp_path, name):
    """Refused for its curve (the records key has no certificate match to catch it)."""
    d = _wallet(net_home, tmp_path)
    (d / name).write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(d / name, 0o600)
    assert "unencrypted P-256" in _bad(d, net_home.ca_bundle_path).message


@pytest.mark.parametrize("name", ["cert.pem", "key.pem", "org-records-key.pem"])
def test_oversized_fifo_or_device_files_are_bad_wallet(net_home, tmp_path, name):
    d = _wallet(net_home, tmp_path)
    (d / name).unlink()
    with open(d / name, "wb") as f:  # sparse: costs no disk, would cost memory if read whole
        f.truncate(MAX_FILE_BYTES + 1)
    os.chmod(d / name, 0o600)
    assert "larger than" in _bad(d, net_home.ca_bundle_path).message
    (d / name).unlink()
    os.mkfifo(d / name, 0o600)  # no writer: a blocking open would hang
    assert "not a regular file" in _bad(d, net_home.ca_bundle_path).message
    (d / name).unlink()
    os.symlink("/dev/zero", d / name)  # endless
    assert "not a regular file" in _bad(d, net_home.ca_bundle_path).message


def test_records_key_of_another_org_is_bad_wallet(net_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(net_home.home, home)
    wallet = home / "orgs" / "h01" / "users" / "dr-jiang"
    shutil.copy(home / "orgs" / "p01" / "users" / "pharm-wang" / "org-records-key.pem",
                wallet / "org-records-key.pem")
    with pytest.raises(WalletError) as e:
        Session(home, "h01:dr-jiang")
    assert e.value.reason == "BAD_WALLET" and "records certificate" in e.value.message


@pytest.mark.parametrize("name", ["cert.pem", "key.pem", "org-records-key.pem"])
def test_a_directory_in_place_of_a_wallet_file_is_bad_wallet(net_home, tmp_path, name):
    """open() of a directory succeeds; reading it raised IsADirectoryError, a traceback."""
    d = _wallet(net_home, tmp_path)
    (d / name).unlink()
    (d / name).mkdir(mode=0o700)
    assert "not a regular file" in _bad(d, net_home.ca_bundle_path).message


def _pem(der: bytes) -> bytes:
    """PEM of ``der`` as it is (cryptography would re-encode only what it can parse)."""
    return b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"


def _own_cert(d: Path, *extensions: x509.UnrecognizedExtension) -> bytes:
    """DER of a certificate of the wallet's own key and subject, with ``extensions``."""
    key = load_private_key((d / "key.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .public_key(key.public_key()).serial_number(7)
               .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc))
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _version_7(d: Path) -> bytes:
    der = bytearray(_own_cert(d))
    at = der.index(bytes([0xA0, 0x03, 0x02, 0x01, 0x02]))  # [0] EXPLICIT INTEGER 2 (v3)
    der[at + 4] = 7
    return bytes(der)


def _mangled_key(d: Path) -> bytes:
    der = bytearray(_own_cert(d))
    point = load_private_key((d / "key.pem").read_bytes()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    der[der.index(point) + 40] ^= 1  # no longer a point of the curve
    return bytes(der)


def _duplicate_extension(d: Path) -> bytes:
    der = _own_cert(d, x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"),
                    x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.5"), b"\x05\x00"))
    return der.replace(b"\x06\x03\x2a\x03\x05", b"\x06\x03\x2a\x03\x04")  # 1.2.3.5 -> 1.2.3.4


def _deep_attrs(d: Path) -> bytes:
    return _own_cert(d, x509.UnrecognizedExtension(ATTRS_OID, b"[" * 30_000))  # within MAX_FILE_BYTES


@pytest.mark.parametrize("mangle", [_version_7, _mangled_key, _duplicate_extension, _deep_attrs])
def test_a_certificate_that_parses_only_lazily_is_bad_wallet(net_home, tmp_path, mangle):
    """cryptography parses a certificate's version at load and its key, extensions and
    subject on first use, raising InvalidVersion, ValueError, DuplicateExtension or
    RecursionError: each escaped load_identity_dir (and wallet_cert_name) as a traceback."""
    d = _wallet(net_home, tmp_path)
    der = mangle(d)
    (d / "cert.pem").write_bytes(_pem(der))
    _bad(d, net_home.ca_bundle_path)
    if mangle is _mangled_key:
        return  # the name and attributes read well: only the key is unreadable
    home = tmp_path / "home"
    (home / "orgs" / "h01" / "users").mkdir(parents=True)
    shutil.copytree(d, home / "orgs" / "h01" / "users" / "x")
    with pytest.raises(WalletError) as e:
        wallet_cert_name(home, "h01", "x")
    assert e.value.reason == "BAD_WALLET"
    with pytest.raises(ValueError):  # what every caller of cert_info_der catches
        cert_info_der(der)


def test_a_recipient_certificate_of_a_bad_version_is_bad_wallet(net_home, tmp_path):
    """Session.user_public_key (a patient's key a record is wrapped for) read the other
    wallet's cert.pem and let cryptography's InvalidVersion escape as a traceback."""
    home = tmp_path / "home"
    shutil.copytree(net_home.home, home)
    patient = home / "orgs" / "h01" / "users" / "patient-zhang"
    (patient / "cert.pem").write_bytes(_pem(_version_7(patient)))
    with Session(home, "h01:dr-jiang") as session, pytest.raises(WalletError) as e:
        session.user_public_key("h01", patient.name)
    assert e.value.reason == "BAD_WALLET" and "not a PEM certificate" in e.value.message


@pytest.mark.parametrize("days_from_now", [-900, 30])
def test_a_wallet_certificate_expired_or_not_yet_valid_is_expired_cert(net_home, tmp_path, days_from_now):
    """The peer's TLS refuses such a client certificate at the handshake, which the client saw
    only as SERVICE_UNAVAILABLE ("failed to connect to all addresses"), retried, and for a
    submit an outcome unknown: the session now refuses it first, naming its validity."""
    home = tmp_path / "home"
    shutil.copytree(net_home.home, home)
    wallet = home / "orgs" / "h01" / "users" / "dr-jiang"
    ca = x509.load_pem_x509_certificate((home / "orgs" / "h01" / "ca.pem").read_bytes())
    ca_key = load_private_key((home / "orgs" / "h01" / "ca.key").read_bytes())
    key = load_private_key((wallet / "key.pem").read_bytes())
    when = dt.datetime.now(dt.UTC) + dt.timedelta(days=days_from_now)
    cert = issue_cert(ca, ca_key, key.public_key(), org="h01", role="doctor", name="dr-jiang", now=when,
                      not_before=when, days=825 if days_from_now > 0 else 1)
    (wallet / "cert.pem").write_bytes(cert_to_pem(cert))
    with pytest.raises(WalletError) as e:
        Session(home, "h01:dr-jiang")
    assert e.value.reason == "EXPIRED_CERT" and str(wallet / "cert.pem") in e.value.message
