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
whichever of them it was wrapped for (client.records.open_grant). :func:`rotate_records_key`
(``rxchain --as ORG:USER wallet rotate-records-key --key NEW.pem``) makes that move: the current
key into ``previous-records-keys/``, the new one -- the key of the records certificate in force
-- as ``org-records-key.pem``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
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
from node.fsutil import fsync_dir, replace_file

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


def _public_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@contextlib.contextmanager
def _wallet_locked(directory: Path) -> Iterator[None]:
    """Hold the wallet's rotation lock (``flock`` on ``.org-records-key.pem.lock`` in it; released
    by the kernel if the process dies); FILE_BUSY at once when another rotation holds it."""
    lock = directory / f".{RECORDS_KEY_FILE}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise WalletError("IO_ERROR", f"cannot lock the wallet {directory}: {exc.strerror} ({lock})") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WalletError("FILE_BUSY", f"another rotation of the records key of {directory} runs (it "
                              f"holds {lock}): run this one again once it is done") from None
        except OSError as exc:
            raise WalletError("IO_ERROR", f"cannot lock the wallet {directory}: {exc.strerror} ({lock})") from exc
        yield
    finally:
        os.close(fd)


def rotate_records_key(directory: Path, new_key_path: Path, records_cert_der: bytes) -> dict[str, object]:
    """After the organisation rotated its records certificate (a config update; ``records_cert_der``
    is the certificate in force, as the home verified it), keep the wallet's current
    ``org-records-key.pem`` in ``previous-records-keys/records-<16 hex of its public key's
    SHA-256>.pem`` and install the key at ``new_key_path`` as ``org-records-key.pem``; returns
    what it did (``changed``: False when the key was installed already -- a rerun after a rotation
    that went through succeeds and changes nothing; ``kept``: the name the old key is kept under,
    None when it was kept there already or nothing changed; ``previous_keys``: how many the
    directory holds now).

    Refused, nothing changed: a new key that is not an unencrypted P-256 key readable by its owner
    only (BAD_KEY), not the key of ``records_cert_der`` (RECORDS_KEY_MISMATCH; NO_RECORDS_CERT when
    there is none); a wallet that holds no records
    key (NO_RECORDS_KEY: only the roles that open the organisation's grants hold one) or one that
    does not load (BAD_WALLET); a ``previous-records-keys/`` holding MAX_PREVIOUS_RECORDS_KEYS keys
    already (TOO_MANY_RECORDS_KEYS), or another key under the name (FILE_EXISTS); another rotation
    of the wallet running (FILE_BUSY).

    Under the wallet's lock; each file written whole, private (0600) and fsynced before it appears
    (the old key hard-linked into ``previous-records-keys/``, never over a file there; the new one
    renamed over ``org-records-key.pem``), in that order: a crash between the two leaves the old
    key in both places -- a wallet that loads, which the same command run again completes."""
    directory = Path(directory)
    current_path = directory / RECORDS_KEY_FILE
    previous_dir = directory / PREVIOUS_RECORDS_KEYS_DIR
    try:
        new_pem = read_wallet_file(new_key_path, "new records key", private=True)
        new_key = load_private_key(new_pem)
    except WalletError as exc:
        raise WalletError("BAD_KEY", exc.message) from exc
    except ValueError as exc:
        raise WalletError("BAD_KEY", f"{new_key_path}: not an unencrypted P-256 PEM private key") from exc
    if not records_cert_der:
        raise WalletError("NO_RECORDS_CERT", "the organisation has no records certificate in force")
    try:
        cert_key = x509.load_der_x509_certificate(records_cert_der).public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise WalletError("BAD_CONFIG", f"the records certificate in force cannot be read: {exc}") from exc
    fingerprint = hashlib.sha256(records_cert_der).hexdigest()
    if not key_matches(new_key, cert_key):
        raise WalletError("RECORDS_KEY_MISMATCH", f"{new_key_path} is not the key of the records certificate "
                          f"in force (sha256:{fingerprint}): nothing was changed")
    with _wallet_locked(directory):
        if not (current_path.exists() or current_path.is_symlink()):
            raise WalletError("NO_RECORDS_KEY", f"{directory} holds no {RECORDS_KEY_FILE}: only the wallets of "
                              "the roles that open the organisation's grants hold the records key; nothing "
                              "was changed")
        current_pem = read_wallet_file(current_path, "records key", private=True)
        try:
            current = load_private_key(current_pem)
        except ValueError as exc:
            raise WalletError("BAD_WALLET", f"{current_path}: not an unencrypted P-256 key") from exc
        previous = _previous_records_keys(previous_dir)
        if key_matches(current, new_key.public_key()):
            # (a rerun after the rotation went through: done already -- nothing changed, no refusal)
            return {"installed": RECORDS_KEY_FILE, "records_cert_sha256": fingerprint, "changed": False,
                    "kept": None, "previous_keys": len(previous)}
        kept: str | None = f"records-{hashlib.sha256(_public_der(current)).hexdigest()[:16]}.pem"
        if any(key_matches(current, k.public_key()) for k in previous):
            kept = None  # (a run cut short after keeping it)
        elif len(previous) >= MAX_PREVIOUS_RECORDS_KEYS:
            raise WalletError("TOO_MANY_RECORDS_KEYS", f"{previous_dir} holds {len(previous)} keys, the most "
                              f"a wallet keeps ({MAX_PREVIOUS_RECORDS_KEYS}): move the oldest out (an archive "
                              "readers can still be given) before rotating again; nothing was changed")
        elif os.path.lexists(previous_dir / str(kept)):
            raise WalletError("FILE_EXISTS", f"{previous_dir / str(kept)} holds another key: nothing was changed")
        try:
            if kept is not None:
                _keep(current_pem, directory, previous_dir, kept)
            replace_file(current_path, new_pem)
            fsync_dir(directory)
        except FileExistsError as exc:  # (a writer that takes no lock, meanwhile)
            raise WalletError("FILE_EXISTS", f"{previous_dir / str(kept)} appeared meanwhile: nothing was "
                              "changed") from exc
        except OSError as exc:
            raise WalletError("IO_ERROR", f"cannot write the wallet {directory}: {exc.strerror} (run the "
                              "command again: it completes a rotation cut short)") from exc
    return {"installed": RECORDS_KEY_FILE, "records_cert_sha256": fingerprint, "changed": True,
            "kept": None if kept is None else f"{PREVIOUS_RECORDS_KEYS_DIR}/{kept}",
            "previous_keys": len(previous) + (kept is not None)}


def _keep(pem: bytes, directory: Path, previous_dir: Path, name: str) -> None:
    """``pem`` as ``previous_dir/name``: written to a private temporary file in ``directory``
    (never in ``previous_dir``, where a stray file would make the wallet unloadable), fsynced and
    hard-linked in (FileExistsError: never over a file there); ``previous_dir`` made (0700) if it
    is not there."""
    if not previous_dir.is_dir():
        previous_dir.mkdir(mode=0o700)
        fsync_dir(directory)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, previous_dir / name)
        except OSError as exc:
            if isinstance(exc, FileExistsError) or exc.errno not in (
                    errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            # a file system without hard links: checked under the wallet's lock
            if os.path.lexists(previous_dir / name):
                raise FileExistsError(errno.EEXIST, "exists", str(previous_dir / name)) from None
            os.replace(tmp, previous_dir / name)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(previous_dir)
