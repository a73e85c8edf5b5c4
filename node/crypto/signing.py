"""ECDSA P-256 / SHA-256 signing and verification with cached public keys.

Verification dominates validation cost (LIMITS.md: ~12.5k verifies/s with a cached key,
~6.7k/s when the key is rebuilt from bytes each time), so :class:`Verifier` keeps parsed
public keys keyed by certificate DER in a bounded LRU cache.

A node also verifies signatures it made itself: a peer validating a block checks its own
endorsement of a transaction like everybody else's. :meth:`Verifier.trust_own` hooks the
node's :class:`Verifier` to its :class:`Signer` (``on_sign``), so it remembers what its own
key just signed, and verifying exactly that certificate, signature and data again then
costs a SHA-256 instead of an ECDSA verification (~80 us). The answer is the one the
verification would give -- ``trust_own`` refuses a key that is not its certificate's -- so
validation stays deterministic across peers.

Every signature says what it is for (domain separation): it is an ECDSA P-256 signature over
``SHA-256(purpose tag || data)``, the tag naming the kind of message (:class:`Purpose`:
``b"rxchain.v1.Envelope\0"`` and so on; NUL-terminated, so no tag is a prefix of another).
A signature made for one kind of message never verifies as another's, whatever bytes the
two happen to share -- a signed proposal cannot be replayed as an envelope payload, an
endorsement as a config approval, a block signature as anything a client signed.
Integrators signing in another language hash the tag and the bytes together and sign the
digest (e.g. ``ECDSA(Prehashed(SHA256))``, or any API taking ``tag + data``).
"""

from __future__ import annotations

import enum
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from rxchain.v1 import identity_pb2

_ECDSA_PREHASHED = ec.ECDSA(utils.Prehashed(hashes.SHA256()))


class Purpose(enum.Enum):
    """What a signature is for; the value is the tag hashed before the signed bytes."""

    PROPOSAL = b"rxchain.v1.SignedProposal\0"  # client, over SignedProposal.proposal_bytes
    ENVELOPE = b"rxchain.v1.Envelope\0"  # client, over Envelope.payload
    ENDORSEMENT = b"rxchain.v1.Endorsement\0"  # endorsing peer, over the response payload
    BLOCK = b"rxchain.v1.BlockHeader\0"  # orderer, over the block header hash
    CONFIG = b"rxchain.v1.ConfigUpdate\0"  # admin, over ConfigUpdate.config
    RELEASE = b"rxchain.v1.ReleaseStatement\0"  # peer, over a ReleaseStatement it tells orderers


def signed_digest(purpose: Purpose, data: bytes) -> bytes:
    """SHA-256(tag || data): what is signed for ``data`` as ``purpose``."""
    h = hashlib.sha256(purpose.value)
    h.update(data)
    return h.digest()


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def sign(key: ec.EllipticCurvePrivateKey, purpose: Purpose, data: bytes) -> bytes:
    """DER-encoded ECDSA P-256 signature of ``data`` as ``purpose`` (over signed_digest)."""
    return key.sign(signed_digest(purpose, data), _ECDSA_PREHASHED)


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (file permissions protect it)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Load a P-256 private key from PEM; ValueError for anything else (garbage, another key
    type or curve, a password-protected or unsupported key)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as exc:  # cryptography's answer to an encrypted key without a password
        raise ValueError(f"private key cannot be loaded: {exc}") from None
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"private key of an unsupported type: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("private key is not ECDSA P-256")
    return key


OnSign = Callable[[bytes, bytes, bytes], None]  # (cert DER, signature, signed digest)


class Signer:
    """A member's signing key together with the identity that names it.

    ``on_sign``, when set, is told of every signature made (see the module docstring)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, identity: identity_pb2.Identity):
        self.key = key
        self.identity = identity
        self.identity_bytes = identity.SerializeToString()
        self.cert_der = identity.cert_der  # one bytes object (protobuf returns a copy per access)
        self.on_sign: OnSign | None = None  # set by Verifier.trust_own

    def sign(self, purpose: Purpose, data: bytes) -> bytes:
        """Sign ``data`` as ``purpose``."""
        digest = signed_digest(purpose, data)
        signature = self.key.sign(digest, _ECDSA_PREHASHED)
        if self.on_sign is not None:
            self.on_sign(self.cert_der, signature, digest)
        return signature


def key_matches(key: ec.EllipticCurvePrivateKey, public: object) -> bool:
    """True when ``public`` (e.g. a certificate's ``public_key()``) is the public half of ``key``."""
    return isinstance(public, ec.EllipticCurvePublicKey) and (
        public.public_numbers() == key.public_key().public_numbers())


def load_signer(cert_path: str | Path, key_path: str | Path, org: str) -> Signer:
    """Load a signer from a PEM certificate and PEM key (ValueError if they do not match)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = load_private_key(Path(key_path).read_bytes())
    if not key_matches(key, cert.public_key()):
        raise ValueError(f"the private key {key_path} does not belong to the certificate {cert_path}")
    der = cert.public_bytes(serialization.Encoding.DER)
    return Signer(key, identity_pb2.Identity(org=org, cert_der=der))


class Verifier:
    """Verifies signatures by certificate DER, caching parsed public keys (bounded LRU).

    Thread-safe: gRPC servicers verify from many threads; the cache is guarded by a lock
    (the verification itself runs outside it).
    """

    def __init__(self, max_entries: int = 4096, max_own: int = 8192):
        self._max = max_entries
        self._keys: OrderedDict[bytes, ec.EllipticCurvePublicKey] = OrderedDict()
        self._lock = threading.Lock()
        # signature -> (cert DER, signed digest) of this node's own recent signatures,
        # oldest first; ~8k endorsements cover far more than a block's way through ordering
        self._own: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()
        self._max_own = max_own

    def trust_own(self, signer: Signer) -> None:
        """Remember every signature ``signer`` makes from now on (see the module docstring).

        Raises ValueError unless the signer's key belongs to its certificate: only then is
        a remembered signature one that verification would accept too."""
        if not key_matches(signer.key, self.public_key(signer.cert_der)):  # P-256, as verify() reads it
            raise ValueError("the signer's key does not belong to its certificate")
        signer.on_sign = self.remember_own

    def remember_own(self, cert_der: bytes, signature: bytes, digest: bytes) -> None:
        """Record a signature this node's own key just made over ``digest``
        (``Signer.on_sign``)."""
        entry = (cert_der, digest)
        with self._lock:
            self._own[signature] = entry
            while len(self._own) > self._max_own:
                self._own.popitem(last=False)

    def public_key(self, cert_der: bytes) -> ec.EllipticCurvePublicKey:
        """The parsed P-256 public key of a DER certificate (cached)."""
        with self._lock:
            key = self._keys.get(cert_der)
            if key is not None:
                self._keys.move_to_end(cert_der)
                return key
        cert = x509.load_der_x509_certificate(cert_der)
        pub = cert.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise ValueError("certificate key is not ECDSA P-256")
        with self._lock:
            self._keys[cert_der] = pub
            if len(self._keys) > self._max:
                self._keys.popitem(last=False)
        return pub

    def verify(self, cert_der: bytes, signature: bytes, purpose: Purpose, data: bytes) -> bool:
        """True when ``signature`` is the cert's key's signature of ``data`` as ``purpose``."""
        try:
            digest = signed_digest(purpose, data)
            own = self._own.get(signature)  # one read: atomic under the GIL, no lock needed
            if own is not None and own[0] == cert_der and own[1] == digest:
                return True  # made by this node's key over exactly this data (module docstring)
            self.public_key(cert_der).verify(signature, digest, _ECDSA_PREHASHED)
        except Exception:  # noqa: BLE001 - bad signature, mangled cert (InvalidVersion, ...): not verified
            return False
        return True


def block_signers(verifier: Verifier, header_hash: bytes, signatures: Iterable[identity_pb2.SignatureEntry],
                  signers: Mapping[bytes, Hashable], enough: int = 1) -> int:
    """How many distinct signers validly signed a block's ``header_hash`` (``Purpose.BLOCK``),
    counted up to ``enough``. ``signers`` maps each accepted certificate (DER) to whom it
    belongs (an orderer's raft id, or the certificate itself): an entry of another
    certificate, or of a signer already counted, costs no verification. The peers' block
    check (``enough`` = the orderer quorum), ``ledger verify``, the config tool's chain and an
    orderer storing another's copy all judge a block's orderer signatures so."""
    counted: set[Hashable] = set()
    for entry in signatures:
        if len(counted) >= enough:
            break  # the answer is known: no more ECDSA verifications for padding entries
        who = signers.get(entry.signer.cert_der)
        if who is None or who in counted:
            continue
        if verifier.verify(entry.signer.cert_der, entry.signature, Purpose.BLOCK, header_hash):
            counted.add(who)
    return len(counted)
