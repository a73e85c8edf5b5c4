"""Red-team review of the records-key check (review4): a wallet whose organisation the genesis
configuration does not hold (added by a config update since) and whose records key is not the
one of the records certificate in force is told BAD_WALLET -- the hint's look-up of the genesis
certificate raised UNKNOWN_ORG instead, which reads as a typo in --as."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from client.errors import WalletError
from client.session import Session
from client.wallet import PREVIOUS_RECORDS_KEYS_DIR
from tests.client.test_records_key_rotation import (  # noqa: F401 - the fixture
    _key_pem,
    _org,
    _put,
    _records_cert,
    _verified_plus_org,
    rotated_home,
)


def test_an_added_organisations_wallet_with_a_stale_key_is_bad_wallet(
        rotated_home: tuple[Path, ec.EllipticCurvePrivateKey]) -> None:  # noqa: F811
    home, new_key = rotated_home
    wallet = home / "orgs" / "h01" / "users" / "dr-jiang"
    _put(wallet / PREVIOUS_RECORDS_KEYS_DIR / "records-1.pem", (wallet / "org-records-key.pem").read_bytes())
    _put(wallet / "org-records-key.pem", _key_pem(new_key))
    added = _verified_plus_org(home, "h01", "h09")
    added.organizations[-1].records_cert_der = _records_cert(home, "h01", ec.generate_private_key(ec.SECP256R1()))
    with Session(home, "h01:dr-jiang") as s:
        # the session of a wallet of h09 (added since the genesis) with a key not its certificate's
        s._verified = added
        s.identity = dataclasses.replace(s.identity, org="h09")
        with pytest.raises(WalletError) as e:
            s._check_records_key()
    assert e.value.reason == "BAD_WALLET" and "h09" in e.value.message
