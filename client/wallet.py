"""Wallets: a member's certificate and keys on disk.

Layout (written by ``rxchain netgen``)::

    HOME/orgs/<org>/users/<user>/cert.pem             member certificate (signing and TLS)
    HOME/orgs/<org>/users/<user>/key.pem              its P-256 private key
    HOME/orgs/<org>/users/<user>/org-records-key.pem  the organisation's records key (optional)
    HOME/orgs/<org>/users/<user>/previous-records-keys/NAME.pem
                                                      the keys of its earlier records certificates
                                                      (optional; after a rotation, see below)
    HOME/ca-bundle.pem                                all organisations' CA certificates

:func:`load_identity` checks that the key matches the certificate and that the certificate
names the organisation asked for, so a mix-up fails loudly instead of at the peer. Every file
must be a regular file of at most :data:`MAX_FILE_BYTES`; the keys (``key.pem``,
``org-records-key.pem`` and each ``previous-records-keys/*.pem``) must be private to their
owner (mode 0600) and unencrypted P-256: anything else is BAD_WALLET.

After an organisation rotates its records certificate (a config update), record keys and note
keys wrapped before it stay wrapped for the old certificate: its wallets keep the old key in
``previous-records-keys/`` (any name ending ``.pem``, at most :data:`MAX_PREVIOUS_RECORDS_KEYS`,
nothing else in the directory) and hold the new one as ``org-records-key.pem``, which the
session checks against the records certificate in force; a grant or note key opens with
whichever of them it was wrapped for (client.records.open_grant).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rxchain.v1 import identity_pb2

from client.errors import WalletError
from node.crypto.signing import Signer, key_matches, load_private_key
from node.crypto.x509 import cert_info, cert_info_der

MAX_FILE_BYTES = 64 * 1024  # a PEM certificate or key is a few hundred bytes
RECORDS_KEY_FILE = "org-records-key.pem"
PREVIOUS_RECORDS_KEYS_DIR = "previous-records-keys"
MAX_PREVIOUS_RECORDS_KEYS = 32  # each is one more ECDH per wrapped key that opens with none before it


@dataclass(frozen=True)
class WalletIdentity:
    """A loaded member identity."""

    org: str
    user: str
    role: str
    attrs: dict[str, str]
    cert_path: Path
    key_path: Path
    ca_bundle_path: Path
    signer: Signer = field(repr=False)
    records_key: ec.EllipticCurvePrivateKey | None = field(default=None, repr=False)
    # the keys of the organisation's earlier records certificates (previous-records-keys/)
    previous_records_keys: tuple[ec.EllipticCurvePrivateKey, ...] = field(default=(), repr=False)

    @property
    def identity(self) -> identity_pb2.Identity:
        """The protobuf identity (org + certificate DER)."""
        return self.signer.identity

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The member's own private key (also unwraps keys granted to the member)."""
        return self.signer.key

    @property
    def label(self) -> str:
        """``org:user``."""
        return f"{self.org}:{self.user}"

    @property
    def cert_name(self) -> str:
        """The certificate's common name (a pseudonym for patients, the handle otherwise)."""
        return cert_info_der(self.signer.identity.cert_der).name


def wallet_dir(home: Path, org: str, user: str) -> Path:
    """The wallet directory of ``org:user`` under ``home``."""
    return Path(home) / "orgs" / org / "users" / user


def wallet_cert_name(home: Path, org: str, user: str) -> str:
    """The common name in the certificate of wallet ``org:user``."""
    path = wallet_dir(home, org, user) / "cert.pem"
    try:
        return cert_info(x509.load_pem_x509_certificate(path.read_bytes())).name
    except (OSError, ValueError, x509.InvalidVersion) as exc:
        raise WalletError("BAD_WALLET", f"cannot read certificate {path}: {exc}") from exc


def parse_as(value: str) -> tuple[str, str]:
    """Parse ``ORG:USER``."""
    org, sep, user = value.partition(":")
    if not sep or not org or not user or "/" in value or ".." in value:
        raise WalletError("BAD_ARGUMENTS", f"--as must be ORG:USER, got {value!r}")
    return org, user


def read_wallet_file(path: Path, what: str, private: bool = False) -> bytes:
    """A wallet file: a regular file of at most MAX_FILE_BYTES; a ``private`` one (a key)
    accessible by its owner only, as ssh insists (mode 0600 or stricter)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block us
    except FileNotFoundError as exc:
        raise WalletError("NO_WALLET", f"{what} {path} does not exist") from exc
    except OSError as exc:
        raise WalletError("BAD_WALLET", f"cannot read {what} {path}: {exc}") from exc
    st = os.fstat(fd)  # before fdopen, which refuses a directory with IsADirectoryError
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise WalletError("BAD_WALLET", f"{what} {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if private and st.st_mode & 0o077:
            raise WalletError("BAD_WALLET", f"{what} {path} is accessible by other users "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}")
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise WalletError("BAD_WALLET", f"cannot read {what} {path}: {exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise WalletError("BAD_WALLET", f"{what} {path} is larger than {MAX_FILE_BYTES} bytes")
    return data


def load_identity_dir(directory: Path, ca_bundle_path: Path, org: str | None = None,
                      user: str | None = None) -> WalletIdentity:
    """Load an identity from a wallet directory and check its consistency."""
    directory = Path(directory)
    if not directory.is_dir():
        raise WalletError("NO_WALLET", f"no wallet at {directory}")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    try:
        cert = x509.load_pem_x509_certificate(read_wallet_file(cert_path, "certificate"))
    except (ValueError, x509.InvalidVersion) as exc:
        raise WalletError("BAD_WALLET", f"{cert_path}: not a PEM certificate") from exc
    try:
        public = cert.public_key()  # parsing is lazy: a mangled key raises only here
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise WalletError("BAD_WALLET", f"{cert_path}: its public key cannot be read: {exc}") from exc
    try:
        key = load_private_key(read_wallet_file(key_path, "private key", private=True))
    except ValueError as exc:
        raise WalletError("BAD_WALLET", f"{key_path}: not an unencrypted P-256 PEM private key") from exc
    if not key_matches(key, public):
        raise WalletError("BAD_WALLET", f"{key_path} does not match {cert_path}")
    try:
        info = cert_info(cert)
    except ValueError as exc:
        raise WalletError("BAD_WALLET", f"{cert_path}: not a member certificate: {exc}") from exc
    if org is not None and info.org != org:
        raise WalletError("BAD_WALLET", f"{cert_path} belongs to {info.org}, not {org}")
    if not Path(ca_bundle_path).exists():
        raise WalletError("NO_WALLET", f"CA bundle {ca_bundle_path} does not exist")
    records_path = directory / RECORDS_KEY_FILE
    records_key = None
    if records_path.exists() or records_path.is_symlink():
        records_key = _records_key(records_path, "records key")
    previous = _previous_records_keys(directory / PREVIOUS_RECORDS_KEYS_DIR)
    der = cert.public_bytes(serialization.Encoding.DER)
    signer = Signer(key, identity_pb2.Identity(org=info.org, cert_der=der))
    return WalletIdentity(
        org=info.org, user=user or info.name, role=info.role, attrs=dict(info.attrs),
        cert_path=cert_path, key_path=key_path, ca_bundle_path=Path(ca_bundle_path),
        signer=signer, records_key=records_key, previous_records_keys=previous,
    )


def _records_key(path: Path, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        return load_private_key(read_wallet_file(path, what, private=True))
    except ValueError as exc:
        raise WalletError("BAD_WALLET", f"{path}: not an unencrypted P-256 key") from exc


def _previous_records_keys(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, ...]:
    """The keys in ``previous-records-keys/`` (none when there is no such directory), in name
    order, each read as ``org-records-key.pem`` is (private, P-256). BAD_WALLET for a path that
    is no directory, an entry not named ``*.pem`` (a key saved under another name would be
    silently left out), or more than MAX_PREVIOUS_RECORDS_KEYS of them."""
    if not (directory.exists() or directory.is_symlink()):
        return ()
    if not directory.is_dir():
        raise WalletError("BAD_WALLET", f"{directory} is not a directory")
    try:
        names = sorted(p.name for p in directory.iterdir())
    except OSError as exc:
        raise WalletError("BAD_WALLET", f"cannot list {directory}: {exc}") from exc
    odd = [n for n in names if not n.endswith(".pem")]
    if odd:
        raise WalletError("BAD_WALLET", f"{directory} holds {odd[0]!r}: only the earlier records keys, "
                          "each a NAME.pem file")
    if len(names) > MAX_PREVIOUS_RECORDS_KEYS:
        raise WalletError("BAD_WALLET", f"{directory} holds {len(names)} keys, more than "
                          f"{MAX_PREVIOUS_RECORDS_KEYS}")
    return tuple(_records_key(directory / n, "previous records key") for n in names)


def load_identity(home: Path, org: str, user: str) -> WalletIdentity:
    """Load ``org:user`` from the wallets under ``home``."""
    home = Path(home)
    return load_identity_dir(wallet_dir(home, org, user), home / "ca-bundle.pem", org, user)
