"""X.509 certificates: issuing (for the generator and tests) and reading rxchain attributes.

A member certificate names its holder as Subject ``O=<org>, OU=<role>, CN=<name>`` and
carries extra attributes (licence number, practice years, ...) as canonical JSON in a
private, non-critical extension :data:`ATTRS_OID`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

ATTRS_OID = ObjectIdentifier("1.3.6.1.4.1.59999.7.1")


@dataclass(frozen=True)
class CertInfo:
    """What rxchain reads from a member certificate."""

    org: str
    role: str
    name: str
    attrs: Mapping[str, str] = field(default_factory=dict)
    serial_hex: str = ""
    not_before_ms: int = 0
    not_after_ms: int = 0


def _name(org: str, role: str, cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_ca(
    org: str, key: ec.EllipticCurvePrivateKey, now: dt.datetime, days: int = 3650
) -> x509.Certificate:
    """A self-signed CA certificate for organisation ``org``."""
    name = _name(org, "ca", f"ca.{org}")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKID naming ``ca_cert``: its own subject key identifier when it has one (a CA of an
    existing PKI may derive it otherwise than SHA-1 of the key, and TLS refuses a chain whose
    AKID differs from the issuer's SKI), else the SHA-1 method of RFC 5280 4.2.1.2."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def issue_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject_key: ec.EllipticCurvePublicKey,
    *,
    org: str,
    role: str,
    name: str,
    attrs: Mapping[str, str] | None = None,
    now: dt.datetime,
    days: int = 825,
    not_before: dt.datetime | None = None,
    hosts: Sequence[str] = (),
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    """Issue a member certificate (signing and TLS client/server use), valid ``days`` from
    ``now`` or until ``not_after`` when given."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(org, role, name))
        .issuer_name(ca_cert.subject)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or (now - dt.timedelta(minutes=5)))
        .not_valid_after(not_after or (now + dt.timedelta(days=days)))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        # names the issuing CA's key (RFC 5280 4.2.1.1): TLS picks the right one of two CAs with
        # the same subject (an organisation's previous and rotated CA trusted side by side)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if attrs:
        payload = json.dumps(dict(attrs), sort_keys=True, separators=(",", ":")).encode()
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ATTRS_OID, payload), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding."""
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_to_der(cert: x509.Certificate) -> bytes:
    """DER encoding."""
    return cert.public_bytes(serialization.Encoding.DER)


def _attr(name: x509.Name, oid: ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise ValueError(f"certificate subject must have exactly one {oid._name}")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def cert_info(cert: x509.Certificate) -> CertInfo:
    """Organisation, role, name, attributes and validity of a member certificate.

    ValueError for a certificate that cannot be read so: its parsing is lazy, and a hostile
    or mangled one raises only here, and not always a ValueError (a duplicated extension, an
    attribute document nested deeper than the JSON decoder's recursion limit)."""
    try:
        return _cert_info(cert)
    except ValueError:
        raise
    except Exception as exc:  # DuplicateExtension, RecursionError, ...: unreadable all the same
        raise ValueError(f"certificate cannot be read: {type(exc).__name__}: {exc}") from exc


def _cert_info(cert: x509.Certificate) -> CertInfo:
    attrs: dict[str, str] = {}
    try:
        ext = cert.extensions.get_extension_for_oid(ATTRS_OID)
    except x509.ExtensionNotFound:
        ext = None
    if ext is not None:
        raw = ext.value
        assert isinstance(raw, x509.UnrecognizedExtension)
        loaded = json.loads(raw.value)
        if not isinstance(loaded, dict):
            raise ValueError("certificate attribute extension is not a JSON object")
        attrs = {str(k): str(v) for k, v in loaded.items()}
    return CertInfo(
        org=_attr(cert.subject, NameOID.ORGANIZATION_NAME),
        role=_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        name=_attr(cert.subject, NameOID.COMMON_NAME),
        attrs=attrs,
        serial_hex=format(cert.serial_number, "x"),
        not_before_ms=int(cert.not_valid_before_utc.timestamp() * 1000),
        not_after_ms=int(cert.not_valid_after_utc.timestamp() * 1000),
    )


def cert_info_der(cert_der: bytes) -> CertInfo:
    """:func:`cert_info` of a DER certificate (ValueError too for one that does not parse)."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except x509.InvalidVersion as exc:
        raise ValueError(f"certificate does not parse: {exc}") from exc
    return cert_info(cert)


def pem_to_der(pem: bytes) -> bytes:
    """DER bytes of the first certificate in ``pem``."""
    return cert_to_der(x509.load_pem_x509_certificate(pem))
