"""Wallet files an attacker or an accident can leave: each is BAD_WALLET, never a crash, a
hang or a key used that should not be."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.errors import WalletError
from client.session import Session
from client.wallet import MAX_FILE_BYTES, load_identity_dir
from node.crypto.signing import load_private_key


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
