"""Wallet loading and its errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from client.errors import WalletError
from client.wallet import load_identity, load_identity_dir, parse_as
from node.crypto.signing import Purpose, Verifier


def test_load_identity_reads_role_and_keys(net_home):
    ident = load_identity(net_home.home, "h01", "dr-jiang")
    assert (ident.org, ident.user, ident.role) == ("h01", "dr-jiang", "doctor")
    assert ident.attrs["dr_code"] == "D500103000001"
    assert ident.records_key is not None
    sig = ident.signer.sign(Purpose.ENVELOPE, b"data")
    assert Verifier().verify(ident.identity.cert_der, sig, Purpose.ENVELOPE, b"data")


def test_missing_wallet_is_no_wallet(net_home):
    with pytest.raises(WalletError) as e:
        load_identity(net_home.home, "h01", "nobody")
    assert e.value.reason == "NO_WALLET"


def test_key_not_matching_cert_is_bad_wallet(net_home, tmp_path: Path):
    d = tmp_path / "w"
    shutil.copytree(net_home.user_dir("h01", "dr-jiang"), d)
    shutil.copy(net_home.user_dir("h01", "nurse-liu") / "key.pem", d / "key.pem")
    with pytest.raises(WalletError) as e:
        load_identity_dir(d, net_home.ca_bundle_path)
    assert e.value.reason == "BAD_WALLET"
    assert "does not match" in e.value.message


def test_certificate_of_another_org_is_bad_wallet(net_home):
    with pytest.raises(WalletError) as e:
        load_identity_dir(net_home.user_dir("p01", "pharm-wang"), net_home.ca_bundle_path, org="h01")
    assert e.value.reason == "BAD_WALLET"


def test_garbage_certificate_is_bad_wallet(net_home, tmp_path: Path):
    d = tmp_path / "w"
    shutil.copytree(net_home.user_dir("h01", "dr-jiang"), d)
    (d / "cert.pem").write_bytes(b"not a certificate")
    with pytest.raises(WalletError) as e:
        load_identity_dir(d, net_home.ca_bundle_path)
    assert e.value.reason == "BAD_WALLET"


@pytest.mark.parametrize("bad", ["h01", ":x", "h01:", "../h01:x", "h01:a/b"])
def test_parse_as_rejects_malformed(bad):
    with pytest.raises(WalletError) as e:
        parse_as(bad)
    assert e.value.reason == "BAD_ARGUMENTS"


def test_parse_as_accepts_org_user():
    assert parse_as("p01:pharm-wang") == ("p01", "pharm-wang")
