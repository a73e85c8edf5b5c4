"""Signing, verification (with key cache), AES-GCM and key wrapping: round trips and tampering."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rxchain.v1 import identity_pb2

from node.crypto import aead, signing
from node.crypto.x509 import cert_to_der, issue_cert, make_ca
from node.peer.server import node_verifier

from .conftest import FIXED_NOW

P = signing.Purpose.ENDORSEMENT


def _cert_for(key: ec.EllipticCurvePrivateKey) -> bytes:
    ca_key = signing.generate_key()
    ca = make_ca("h01", ca_key, FIXED_NOW)
    return cert_to_der(issue_cert(ca, ca_key, key.public_key(), org="h01", role="doctor",
                                  name="dr-x", now=FIXED_NOW))


def test_sign_verify_round_trip_and_tamper() -> None:
    key = signing.generate_key()
    der = _cert_for(key)
    v = signing.Verifier()
    sig = signing.sign(key, P, b"prescription")
    assert v.verify(der, sig, P, b"prescription")
    assert not v.verify(der, sig, P, b"prescriptioN")  # signature over other bytes
    bad = bytearray(sig)
    bad[-1] ^= 1
    assert not v.verify(der, bytes(bad), P, b"prescription")
    other = _cert_for(signing.generate_key())
    assert not v.verify(other, sig, P, b"prescription")
    assert not v.verify(der, b"not a signature", P, b"prescription")


def test_a_signature_for_one_purpose_verifies_for_no_other() -> None:
    """Domain separation: the same key signing the same bytes as one kind of message does not
    give a signature valid as another kind (an own, remembered signature included)."""
    key = signing.generate_key()
    der = _cert_for(key)
    signer = signing.Signer(key, identity_pb2.Identity(org="h01", cert_der=der))
    plain, own = signing.Verifier(), signing.Verifier()
    own.trust_own(signer)
    data = b"\x0a\x20" + bytes(32)  # e.g. bytes a header hash and a payload could share
    for made_for in signing.Purpose:
        sig = signer.sign(made_for, data)
        for checked_as in signing.Purpose:
            expected = checked_as is made_for
            assert plain.verify(der, sig, checked_as, data) is expected, (made_for, checked_as)
            assert own.verify(der, sig, checked_as, data) is expected, (made_for, checked_as)


def test_signatures_are_over_the_tag_and_the_bytes_as_documented() -> None:
    """The wire format integrators reproduce: ECDSA P-256 / SHA-256 over ``tag || data``,
    tags NUL-terminated and distinct (none a prefix of another)."""
    from cryptography.hazmat.primitives import hashes

    key = signing.generate_key()
    sig = signing.sign(key, signing.Purpose.ENVELOPE, b"payload")
    key.public_key().verify(sig, b"rxchain.v1.Envelope\0payload", ec.ECDSA(hashes.SHA256()))
    tags = [p.value for p in signing.Purpose]
    assert all(t.endswith(b"\0") and t.count(b"\0") == 1 for t in tags)
    assert not any(a != b and b.startswith(a) for a in tags for b in tags)


def test_verifier_cache_is_bounded() -> None:
    v = signing.Verifier(max_entries=2)
    keys = [signing.generate_key() for _ in range(3)]
    ders = [_cert_for(k) for k in keys]
    for k, d in zip(keys, ders, strict=True):
        assert v.verify(d, signing.sign(k, P, b"m"), P, b"m")
    assert len(v._keys) == 2
    assert ders[0] not in v._keys


def test_verifier_rejects_garbage_certificate() -> None:
    with pytest.raises(ValueError):
        signing.Verifier().public_key(b"\x30\x03garbage")


def test_aead_round_trip_and_tamper() -> None:
    key = aead.new_record_key()
    blob = aead.encrypt(key, b"amlodipine 5mg x2", aad=b"rx-1")
    assert aead.decrypt(key, blob, aad=b"rx-1") == b"amlodipine 5mg x2"
    with pytest.raises(aead.DecryptionError):
        aead.decrypt(key, blob, aad=b"rx-2")
    tampered = bytearray(blob)
    tampered[20] ^= 0x80
    with pytest.raises(aead.DecryptionError):
        aead.decrypt(key, bytes(tampered), aad=b"rx-1")
    with pytest.raises(aead.DecryptionError):
        aead.decrypt(aead.new_record_key(), blob, aad=b"rx-1")
    assert aead.encrypt(key, b"x") != aead.encrypt(key, b"x")  # fresh nonce each time


def test_aead_nonce_cannot_be_chosen_by_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller-supplied nonce invites reuse (two messages under one key and nonce leak
    their XOR and the GHASH key): encrypt takes none, and always asks the OS for 12 bytes."""
    key = aead.new_record_key()
    with pytest.raises(TypeError):
        aead.encrypt(key, b"x", b"", b"\0" * 12)  # type: ignore[call-arg]
    asked: list[int] = []

    def urandom(n: int) -> bytes:
        asked.append(n)
        return bytes(n)

    monkeypatch.setattr("node.crypto.aead.os.urandom", urandom)
    assert aead.encrypt(key, b"x")[:12] == bytes(12) and asked == [12]


def test_key_wrapping_refuses_what_it_cannot_unwrap() -> None:
    """A 16-byte key or a P-384 recipient used to give a blob no one could ever unwrap
    (unwrap_key checks the fixed layout): a silent loss of the record for that party."""
    recipient = signing.generate_key()
    for bad_key in (b"k" * 16, b"k" * 33, b""):
        with pytest.raises(ValueError):
            aead.wrap_key(recipient.public_key(), bad_key, b"ctx")
    with pytest.raises(ValueError):
        aead.wrap_key(ec.generate_private_key(ec.SECP384R1()).public_key(), aead.new_record_key(), b"ctx")
    key = aead.new_record_key()
    assert aead.unwrap_key(recipient, aead.wrap_key(recipient.public_key(), key, b"ctx"), b"ctx") == key


def test_key_wrapping_only_recipient_unwraps() -> None:
    pharmacy = signing.generate_key()
    stranger = signing.generate_key()
    record_key = aead.new_record_key()
    wrapped = aead.wrap_key(pharmacy.public_key(), record_key, b"rx-1|p01")
    assert aead.unwrap_key(pharmacy, wrapped, b"rx-1|p01") == record_key
    with pytest.raises(aead.DecryptionError):
        aead.unwrap_key(stranger, wrapped, b"rx-1|p01")
    with pytest.raises(aead.DecryptionError):
        aead.unwrap_key(pharmacy, wrapped, b"rx-1|p02")  # bound to its context
    with pytest.raises(aead.DecryptionError):
        aead.unwrap_key(pharmacy, wrapped[:-1], b"rx-1|p01")


def test_verifier_is_safe_under_concurrent_eviction() -> None:
    import threading

    keys = [signing.generate_key() for _ in range(6)]
    ders = [_cert_for(k) for k in keys]
    sigs = [signing.sign(k, P, b"m") for k in keys]
    v = signing.Verifier(max_entries=2)  # constant eviction
    failures: list[BaseException] = []
    results: list[bool] = []

    def work(offset: int) -> None:
        try:
            for i in range(60):
                j = (i + offset) % len(keys)
                results.append(v.verify(ders[j], sigs[j], P, b"m"))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures
    assert len(results) == 240 and all(results)
    assert len(v._keys) <= 2


class _CountingVerifier(signing.Verifier):
    """Counts the ECDSA verifications actually run (each needs the public key)."""

    def __init__(self, max_own: int = 8192) -> None:
        super().__init__(max_own=max_own)
        self.ecdsa = 0

    def public_key(self, cert_der: bytes) -> ec.EllipticCurvePublicKey:
        self.ecdsa += 1
        return super().public_key(cert_der)


def test_own_signatures_verify_without_ecdsa_and_nothing_else_does() -> None:
    key = signing.generate_key()
    der = _cert_for(key)
    v = _CountingVerifier()
    signer = signing.Signer(key, identity_pb2.Identity(org="h01", cert_der=der))
    v.trust_own(signer)
    v.ecdsa = 0  # trust_own read the certificate's key
    sig = signer.sign(P, b"endorsed payload")
    assert v.verify(der, sig, P, b"endorsed payload") and v.ecdsa == 0
    # the same signature over other data, or named by another certificate: a real check
    assert not v.verify(der, sig, P, b"endorsed payloaD") and v.ecdsa == 1
    other = _cert_for(signing.generate_key())
    assert not v.verify(other, sig, P, b"endorsed payload") and v.ecdsa == 2
    # a signature made elsewhere by the same key is verified the usual way
    assert v.verify(der, signing.sign(key, P, b"endorsed payload"), P, b"endorsed payload") and v.ecdsa == 3
    # a signature of the wrong type is refused, not raised
    assert not v.verify(der, bytearray(sig), P, b"endorsed payload")  # type: ignore[arg-type]


def test_trust_own_refuses_a_signer_whose_key_is_not_its_certificates() -> None:
    key, stranger = signing.generate_key(), signing.generate_key()
    signer = signing.Signer(stranger, identity_pb2.Identity(org="h01", cert_der=_cert_for(key)))
    v = _CountingVerifier()
    with pytest.raises(ValueError, match="does not belong"):
        v.trust_own(signer)
    assert signer.on_sign is None
    v.ecdsa = 0
    sig = signer.sign(P, b"m")  # nothing remembered: verified, and refused, the usual way
    assert not v.verify(signer.cert_der, sig, P, b"m") and v.ecdsa == 1


def test_trust_own_refuses_a_matching_key_of_another_curve() -> None:
    """A P-384 key and its certificate match, but every other peer refuses P-384 signatures:
    remembering them would make this peer alone accept its own."""
    key = ec.generate_private_key(ec.SECP384R1())
    ca_key = signing.generate_key()
    cert = cert_to_der(issue_cert(make_ca("h01", ca_key, FIXED_NOW), ca_key, key.public_key(),
                                  org="h01", role="peer", name="peer.h01", now=FIXED_NOW))
    signer = signing.Signer(key, identity_pb2.Identity(org="h01", cert_der=cert))
    with pytest.raises(ValueError):
        _CountingVerifier().trust_own(signer)
    assert signer.on_sign is None


def test_the_peer_verifier_trusts_the_peers_own_signer() -> None:
    key = signing.generate_key()
    signer = signing.Signer(key, identity_pb2.Identity(org="h01", cert_der=_cert_for(key)))
    v = node_verifier(signer)
    sig = signer.sign(P, b"endorsement")
    assert v._own[sig][0] is signer.cert_der  # one shared copy of the certificate per entry
    assert v.verify(signer.cert_der, sig, P, b"endorsement")


def test_own_signature_memory_is_bounded_oldest_first() -> None:
    key = signing.generate_key()
    der = _cert_for(key)
    v = _CountingVerifier(max_own=2)
    sigs = [signing.sign(key, P, bytes([i])) for i in range(3)]
    for i, s in enumerate(sigs):
        v.remember_own(der, s, signing.signed_digest(P, bytes([i])))
    assert len(v._own) == 2
    assert v.verify(der, sigs[2], P, b"\x02") and v.verify(der, sigs[1], P, b"\x01") and v.ecdsa == 0
    assert v.verify(der, sigs[0], P, b"\x00") and v.ecdsa == 1  # forgotten: verified again


def test_load_signer_refuses_a_key_that_is_not_the_certificates(tmp_path) -> None:
    key, stranger = signing.generate_key(), signing.generate_key()
    ca_key = signing.generate_key()
    cert = issue_cert(make_ca("h01", ca_key, FIXED_NOW), ca_key, key.public_key(), org="h01", role="peer",
                 name="peer.h01", now=FIXED_NOW)
    cert_path = tmp_path / "cert.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(signing.key_to_pem(key))
    (tmp_path / "stranger.pem").write_bytes(signing.key_to_pem(stranger))
    assert signing.load_signer(cert_path, tmp_path / "key.pem", "h01").identity.org == "h01"
    with pytest.raises(ValueError, match="does not belong to the certificate"):
        signing.load_signer(cert_path, tmp_path / "stranger.pem", "h01")
