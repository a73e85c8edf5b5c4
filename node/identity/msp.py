"""Membership service: validates identities against the consortium configuration.

An identity is valid at time ``t`` when its certificate parses, was issued by the CA of
the organisation it claims (signature chain checked), is an end-entity certificate for
signing (not a CA: BasicConstraints ``ca`` false; KeyUsage, when present, includes
``digitalSignature``; a positive serial number), is within its validity period at ``t``, is
not in the organisation's revocation list, and carries a role the organisation's kind may
hold. Parsed certificates and chain checks are cached by DER.

From protocol version 2 on (node.protocol.MEMBERSHIP_VERSION, the version of the configuration
the MSP is built for unless the caller names another) the issuing CA is judged too: its own
certificate must be within its validity period at ``t`` (EXPIRED_CERT otherwise: a member
certificate issued by an expired or not yet valid CA no longer passes) and, when it carries
KeyUsage, include ``keyCertSign`` (UNKNOWN_CREATOR: a CA certificate that may not sign
certificates issued none). Version 1 ignores the CA's validity and key usage, so blocks before
the update raising the version keep their verdicts on replay. ``t`` is whatever the caller
passes: validation passes the tx header's timestamp (creator, endorsements, config update
signatures), never a node's clock, and :meth:`MSP.block_signers` the block header's.

Revocation lists hold serial numbers in hex; they are compared in one canonical form (lower
case, no ``0x``, colons, spaces or leading zeros), so a serial copied from ``openssl x509
-serial`` (``3A0F...``) or written with colons revokes the certificate it names.

Every check reads the certificate itself, never the process-wide ``warnings`` filters
(``warnings.catch_warnings`` is not thread-safe: a servicer thread leaving it can restore
filters under another thread's feet, so a refusal that depends on a warning becoming an
error would differ from one validation to the next).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from rxchain.v1 import config_pb2, identity_pb2

from node.crypto.signing import Purpose, Verifier
from node.crypto.x509 import CertInfo, cert_info, cert_info_der
from node.errors import RxError
from node.identity.roles import KIND_NAMES, ROLES_BY_KIND
from node.protocol import MEMBERSHIP_VERSION, protocol_version


@dataclass(frozen=True)
class Principal:
    """A validated member: who signed, in which organisation, with which role."""

    org: str
    role: str
    name: str
    attrs: Mapping[str, str] = field(default_factory=dict)
    org_kind: str = ""
    hospital_level: str = ""
    cert_der: bytes = b""

    @property
    def principal(self) -> tuple[str, str]:
        """(org, role) as used by endorsement policies."""
        return (self.org, self.role)


@dataclass(frozen=True)
class _Checked:
    info: CertInfo
    chain_ok: bool
    unusable: str = ""  # why the certificate cannot be a member's signing identity ("" = it can)


def canonical_serial(text: str) -> str:
    """A hex serial number in the form ``CertInfo.serial_hex`` uses (lower case, no prefix,
    separators or leading zeros); "" for text that is not a hex number."""
    t = text.strip().lower().replace(":", "").replace(" ", "")
    if t.startswith("0x"):
        t = t[2:]
    if not t or any(c not in "0123456789abcdef" for c in t):
        return ""
    return t.lstrip("0") or "0"


def _end_entity_problem(cert: x509.Certificate) -> str:
    """Why ``cert`` is not an end-entity signing certificate, or "" (see the module docstring)."""
    if cert.serial_number <= 0:
        return "its serial number is not positive (RFC 5280)"
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        return "it is a CA certificate"
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not ku.digital_signature:
        return "its key usage does not include digitalSignature"
    return ""


_NEVER = (1, 0)  # a validity window no time lies in


def _ca_terms(ca: x509.Certificate) -> tuple[tuple[int, int], str]:
    """(validity window in ms, why it may not issue certificates or "") of a CA certificate
    (see the module docstring; an unreadable validity or key usage: never valid)."""
    try:
        window = (int(ca.not_valid_before_utc.timestamp() * 1000), int(ca.not_valid_after_utc.timestamp() * 1000))
    except Exception:  # noqa: BLE001 - lazy parsing: whatever a mangled certificate raises
        return _NEVER, "its validity period cannot be read"
    try:
        ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    except Exception:  # noqa: BLE001 - DuplicateExtension, ValueError...
        return window, "its extensions cannot be read"
    if ku is not None and not ku.key_cert_sign:
        return window, "its key usage does not include keyCertSign"
    return window, ""


class MSP:
    """Identity validation for one consortium configuration (immutable; rebuild on update).

    ``version``: the protocol version whose rules apply (default: the one ``config`` puts in
    force); a config update is judged by the version in force before it, so the MSP of the
    config it carries is built with that one (node.orderer.configtx)."""

    def __init__(
        self, config: config_pb2.ConsortiumConfig, verifier: Verifier, cache_size: int = 4096,
        *, version: int | None = None,
    ):
        self.config = config
        self.verifier = verifier
        self.version = protocol_version(config) if version is None else version
        self._ca_rules = self.version >= MEMBERSHIP_VERSION
        self._orgs: dict[str, config_pb2.Organization] = {o.id: o for o in config.organizations}
        self._cas: dict[str, x509.Certificate] = {}
        for org in config.organizations:
            try:
                self._cas[org.id] = x509.load_der_x509_certificate(org.ca_cert_der)
            except ValueError as exc:
                raise RxError("BAD_CONFIG", f"organisation {org.id}: CA certificate: {exc}") from exc
        self._ca_terms = {org_id: _ca_terms(ca) for org_id, ca in self._cas.items()}
        self._revoked = {
            o.id: frozenset(c for c in map(canonical_serial, o.revoked_serials) if c)
            for o in config.organizations
        }
        self._orderer_certs = {o.cert_der: o.raft_id for o in config.orderers}
        # DER -> (raft id, window in which its block signatures count): see block_signers
        self._orderer_windows = (
            {o.cert_der: (o.raft_id, self._orderer_window(o)) for o in config.orderers} if self._ca_rules else {}
        )
        self._cache: OrderedDict[tuple[str, bytes], _Checked] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # the chain cache is shared by servicer threads

    def org(self, org_id: str) -> config_pb2.Organization:
        """The configuration of ``org_id``; RxError(UNKNOWN_ORG) if none."""
        org = self._orgs.get(org_id)
        if org is None:
            raise RxError("UNKNOWN_ORG", f"organisation {org_id!r} is not in the consortium")
        return org

    def org_ids(self) -> list[str]:
        """All organisation ids, in configuration order."""
        return [o.id for o in self.config.organizations]

    def orderer_ids(self) -> list[int]:
        """Raft ids of the ordering service members."""
        return [o.raft_id for o in self.config.orderers]

    def is_orderer(self, identity: identity_pb2.Identity) -> bool:
        """True if the identity's certificate is an orderer's in the configuration."""
        return identity.cert_der in self._orderer_certs

    def orderer_raft_id(self, identity: identity_pb2.Identity) -> int | None:
        """The Raft id of the orderer holding this certificate, if any."""
        return self._orderer_certs.get(identity.cert_der)

    def validity_window(self, org_id: str, info: CertInfo) -> tuple[int, int]:
        """(first, last) ms at which a certificate of ``org_id`` with ``info`` is within its
        validity period -- and, from version 2, its CA within its own (module docstring)."""
        low, high = info.not_before_ms, info.not_after_ms
        if self._ca_rules:
            terms = self._ca_terms.get(org_id)
            ca_low, ca_high = terms[0] if terms is not None else _NEVER
            low, high = max(low, ca_low), min(high, ca_high)
        return low, high

    def ca_problem(self, org_id: str, at_ms: int) -> str:
        """Why the CA certificate of ``org_id`` could not vouch for a member at ``at_ms`` under
        version 2's rules (outside its validity period, or its key usage lacks keyCertSign),
        whatever version this MSP applies; "" when it could."""
        terms = self._ca_terms.get(org_id)
        if terms is None:
            return "is missing"
        (low, high), why = terms
        if why:
            return why
        if not low <= at_ms <= high:
            return f"is not valid at {at_ms} (valid from {low} to {high})"
        return ""

    def _orderer_window(self, node: config_pb2.OrdererNode) -> tuple[int, int]:
        try:
            info = cert_info_der(node.cert_der)
        except ValueError:
            return _NEVER  # its signatures do not verify either
        return self.validity_window(node.org, info)

    def block_signers(self, block_ms: int) -> Mapping[bytes, int]:
        """The orderer certificates (DER -> raft id) whose signatures count for a block whose
        header is stamped ``block_ms`` when this MSP's config is in force before it.

        Version 1: every orderer's of the config, whatever the time. From version 2
        (MEMBERSHIP_VERSION) only those within their validity period at ``block_ms``, their
        CA's included (an unstamped block, 0: none): a block signed only by expired orderer
        certificates is refused as an unsigned one is (BAD_ORDERER_SIGNATURE). The time is the
        ordering leader's clock, which the header hash covers and the signatures sign, so every
        node decides the same; the signer chooses it, so an orderer whose certificate has
        expired could still backdate a block -- whose txs, stamped now, would then be
        TX_TIMESTAMP_SKEW. The peers' block check, the orderers' check of another's copy, the
        config tool and ``verify`` all count signers so."""
        if not self._ca_rules:
            return self._orderer_certs
        return {der: rid for der, (rid, (low, high)) in self._orderer_windows.items() if low <= block_ms <= high}

    def _check_chain(self, org_id: str, cert_der: bytes) -> _Checked:
        key = (org_id, cert_der)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        try:
            # A CryptographyDeprecationWarning (e.g. a non-positive serial) is raised only where
            # the process turns warnings into errors; the serial is checked explicitly below.
            cert = x509.load_der_x509_certificate(cert_der)
        except (ValueError, x509.InvalidVersion, CryptographyDeprecationWarning) as exc:
            raise RxError("BAD_CERT", f"certificate does not parse: {exc}") from exc
        try:
            unusable = _end_entity_problem(cert)
        except Exception as exc:  # lazy parsing: ValueError, DuplicateExtension...
            raise RxError("BAD_CERT", f"certificate does not parse: {exc}") from exc
        ca = self._cas[org_id]
        chain_ok = True
        try:
            cert.verify_directly_issued_by(ca)
            # the signature is the last field, a BIT STRING with no unused bits: a cert whose
            # encoding differs only there would otherwise pass as a second DER of one identity
            if not cert_der.endswith(b"\x00" + cert.signature):
                chain_ok = False
            # parsing is lazy: a mangled key, subject or extension raises on first use
            if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
                chain_ok = False
        except Exception:  # noqa: BLE001 - any failure = not a usable cert issued by the CA
            chain_ok = False
        try:
            info = cert_info(cert)
        except Exception as exc:
            raise RxError("BAD_CERT", f"certificate subject is not an rxchain member name: {exc}") from exc
        checked = _Checked(info, chain_ok, unusable)
        with self._lock:
            self._cache[key] = checked
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return checked

    def validate(self, identity: identity_pb2.Identity, at_ms: int) -> Principal:
        """Check ``identity`` at time ``at_ms`` (ms since epoch) and return its principal."""
        org = self.org(identity.org)
        checked = self._check_chain(identity.org, identity.cert_der)
        info = checked.info
        if not checked.chain_ok:
            raise RxError(
                "UNKNOWN_CREATOR",
                f"certificate {info.name!r} was not issued by the CA of {identity.org}",
            )
        if self._ca_rules and self._ca_terms[identity.org][1]:
            raise RxError(
                "UNKNOWN_CREATOR",
                f"the CA certificate of {identity.org} may not issue certificates: "
                f"{self._ca_terms[identity.org][1]}",
            )
        if checked.unusable:
            raise RxError(
                "BAD_CERT", f"certificate {info.name!r} is not a member certificate: {checked.unusable}"
            )
        if info.org != identity.org:
            raise RxError(
                "UNKNOWN_CREATOR",
                f"certificate names organisation {info.org!r}, identity claims {identity.org!r}",
            )
        if not info.not_before_ms <= at_ms <= info.not_after_ms:
            raise RxError("EXPIRED_CERT", f"certificate {info.name!r} is not valid at {at_ms}")
        if self._ca_rules:
            ca_low, ca_high = self._ca_terms[identity.org][0]
            if not ca_low <= at_ms <= ca_high:
                raise RxError(
                    "EXPIRED_CERT",
                    f"certificate {info.name!r}: the CA certificate of {identity.org} is not valid at {at_ms}",
                )
        if info.serial_hex in self._revoked[identity.org]:
            raise RxError("REVOKED_CERT", f"certificate {info.name!r} ({info.serial_hex}) is revoked")
        if info.role not in ROLES_BY_KIND.get(org.kind, frozenset()):
            raise RxError(
                "WRONG_ROLE",
                f"role {info.role!r} is not allowed in a {KIND_NAMES.get(org.kind, '?')} organisation",
            )
        return Principal(
            org=identity.org,
            role=info.role,
            name=info.name,
            attrs=info.attrs,
            org_kind=KIND_NAMES.get(org.kind, ""),
            hospital_level=org.hospital_level,
            cert_der=identity.cert_der,
        )

    def verify(
        self, identity: identity_pb2.Identity, signature: bytes, purpose: Purpose, data: bytes,
        at_ms: int,
    ) -> Principal:
        """Validate ``identity`` and check its ``signature`` of ``data`` as ``purpose``."""
        principal = self.validate(identity, at_ms)
        if not self.verifier.verify(identity.cert_der, signature, purpose, data):
            raise RxError("BAD_SIGNATURE", f"signature by {principal.name!r} ({identity.org}) does not verify")
        return principal
