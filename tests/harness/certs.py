"""New certificates from the CA of an organisation of a generated network (``orgs/<org>/ca.pem``
and ``ca.key`` under its home): a node certificate issued by hand, a rotated key, a
certificate lacking a name."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from rxchain.v1 import identity_pb2

from node.crypto import signing
from node.crypto import x509 as rx509


def issue_from_org_ca(home: Path, org: str, name: str, role: str,
                      hosts: tuple[str, ...]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate of ``org``'s CA for a new key: ``name`` in ``role``, valid from now, with
    ``hosts`` as subject alternative names."""
    ca_dir = home / "orgs" / org
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = signing.load_private_key((ca_dir / "ca.key").read_bytes())
    key = signing.generate_key()
    cert = rx509.issue_cert(ca_cert, ca_key, key.public_key(), org=org, role=role, name=name,
                            now=dt.datetime.now(dt.UTC), hosts=hosts)
    return cert, key


def write_cert_files(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, directory: Path) -> tuple[Path, Path]:
    """``directory``/cert.pem and key.pem (mode 0600), as netgen lays out a node or wallet."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(rx509.cert_to_pem(cert))
    (directory / "key.pem").write_bytes(signing.key_to_pem(key))
    (directory / "key.pem").chmod(0o600)
    return directory / "cert.pem", directory / "key.pem"


def signer_of(org: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> signing.Signer:
    """A Signer of ``org`` with ``key`` and ``cert``."""
    return signing.Signer(key, identity_pb2.Identity(org=org, cert_der=rx509.cert_to_der(cert)))


class CountingVerifier(signing.Verifier):
    """A verifier counting the signatures it is asked to check (``calls``)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def verify(self, cert_der: bytes, signature: bytes, purpose: signing.Purpose, data: bytes) -> bool:
        self.calls += 1
        return super().verify(cert_der, signature, purpose, data)
