"""Red-team regression: a backdated (or postdated) proposal from a certificate that is not
valid at the endorser's clock gets no endorsement (failed before the fix in endorser.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rxchain.v1 import identity_pb2, transaction_pb2

from node.crypto import x509 as rx509
from node.crypto.signing import Signer, generate_key, load_private_key
from node.errors import RxError
from tests.peer.conftest import Cluster


def _doctor_valid_between(cluster: Cluster, not_before_ms: int, not_after_ms: int) -> Signer:
    d = cluster.net.home / "orgs" / "h01"
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    ca_key = load_private_key((d / "ca.key").read_bytes())
    key = generate_key()
    cert = rx509.issue_cert(
        ca, ca_key, key.public_key(), org="h01", role="doctor", name="dr-short",
        now=dt.datetime.fromtimestamp(not_after_ms / 1000, tz=dt.UTC), days=0,
        not_before=dt.datetime.fromtimestamp(not_before_ms / 1000, tz=dt.UTC),
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return Signer(key, identity_pb2.Identity(org="h01", cert_der=der))


def _endorse(cluster: Cluster, signer: Signer, timestamp_ms: int) -> transaction_pb2.ProposalResponse:
    signed = cluster.kit.proposal(signer, "counter", "put", {"key": "a", "value": 1},
                                  timestamp_ms=timestamp_ms)
    return cluster.peers[0].endorser.endorse(signed)


def test_certificate_expired_at_the_endorsers_clock_is_refused_even_if_backdated(
    deployed: Cluster,
) -> None:
    now = deployed.now()
    expired = _doctor_valid_between(deployed, now - 3_600_000, now - 30_000)
    with pytest.raises(RxError) as e:  # the tx claims a time 50 s ago, inside the 60 s skew
        _endorse(deployed, expired, now - 50_000)
    assert e.value.reason == "EXPIRED_CERT"
    young = _doctor_valid_between(deployed, now + 30_000, now + 3_600_000)
    with pytest.raises(RxError) as e:
        _endorse(deployed, young, now + 50_000)
    assert e.value.reason == "EXPIRED_CERT"
    # a certificate valid at both instants is endorsed as before
    sound = _doctor_valid_between(deployed, now - 3_600_000, now + 3_600_000)
    assert _endorse(deployed, sound, now - 50_000).response.status == 200
