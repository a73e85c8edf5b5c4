"""A peer's signed word on its release: the highest consortium protocol version it implements.

A peer tells the orderers its release in every Deliver request (node.peer.deliver_client), and
the orderers relay what peers told among themselves (node.orderer.releases) so that the Raft
leader refuses to raise the protocol version while a peer of the config lacks it. What is
relayed must be the peer's own word, not an orderer's: the peer signs a ``ReleaseStatement``
(its node name, the version, its clock, the SHA-256 of its certificate, the network: the
header hash of the genesis block) with its identity key
as :attr:`Purpose.RELEASE`, and every orderer carries the serialized statement and the
signature byte for byte and checks them against the peer's certificate in the config in force
(:func:`check_statement`). The certificate digest ties the word to the certificate it was
given under: after a rotation, what the old certificate said no longer counts; the network
ties it to the network it was given in: a peer whose name and certificate serve in another
network too (another consortium, or a staging network issued from the same CAs) cannot have
what it told there replayed here, where it may run another release.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from rxchain.v1 import services_pb2

from node.crypto.hashing import sha256
from node.crypto.signing import Purpose, Signer, Verifier

MAX_STATEMENT_BYTES = 512  # a statement is ~95 bytes plus the node name (at most 256 characters)
MAX_SIGNATURE_BYTES = 128  # a DER ECDSA P-256 signature is at most 72 bytes
MAX_NODE_NAME = 256  # characters of a peer name


class StatementRefused(Exception):
    """A release statement that does not check out; ``reason`` names why (metric label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def sign_statement(signer: Signer, node: str, max_protocol_version: int, wall_ms: int,
                   network: bytes) -> tuple[bytes, bytes]:
    """The serialized statement that peer ``node`` (holding ``signer``) implements versions up
    to ``max_protocol_version``, signed at ``wall_ms`` (its clock) in the network whose genesis
    block header hash is ``network``, and its signature."""
    statement = services_pb2.ReleaseStatement(
        node=node, max_protocol_version=max_protocol_version, signed_wall_ms=wall_ms,
        cert_sha256=sha256(signer.cert_der), network=network).SerializeToString()
    return statement, signer.sign(Purpose.RELEASE, statement)


def parse_statement(statement: bytes, signature: bytes) -> services_pb2.ReleaseStatement:
    """The statement's fields, checked for form only (StatementRefused ``malformed``): no
    signature verified, no certificate looked at."""
    if not 0 < len(statement) <= MAX_STATEMENT_BYTES or not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
        raise StatementRefused("malformed", f"statement of {len(statement)} bytes, signature of "
                                            f"{len(signature)} bytes")
    try:
        parsed = services_pb2.ReleaseStatement.FromString(statement)
    except DecodeError:
        raise StatementRefused("malformed", "statement does not parse") from None
    if not 0 < len(parsed.node) <= MAX_NODE_NAME or parsed.signed_wall_ms <= 0 or len(parsed.cert_sha256) != 32:
        raise StatementRefused("malformed", "statement without a node name, a signing time or a certificate digest")
    return parsed


def check_network(parsed: services_pb2.ReleaseStatement, network: bytes) -> None:
    """StatementRefused ``other_network`` unless the statement (parsed as ``parsed``) was given
    in the network whose genesis block header hash is ``network``."""
    if parsed.network != network:
        raise StatementRefused("other_network", f"{parsed.node}: a statement given in another network "
                                                f"({parsed.network.hex()[:16] or 'none named'})")


def check_statement(parsed: services_pb2.ReleaseStatement, name: str, cert_der: bytes) -> None:
    """StatementRefused unless the statement (parsed as ``parsed``) is given by peer ``name``
    under ``cert_der``, its certificate in the config in force: it names that peer
    (``other_name``) and that certificate (``other_certificate``: e.g. one rotated away). The
    network (:func:`check_network`) and the signature (:func:`signed_by`) are checked apart."""
    if parsed.node != name:
        raise StatementRefused("other_name", f"a statement of {parsed.node!r} given as {name!r}'s")
    if parsed.cert_sha256 != sha256(cert_der):
        raise StatementRefused("other_certificate", f"{name}: signed under a certificate that is "
                                                    "not its certificate in the config in force")


def signed_by(verifier: Verifier, cert_der: bytes, statement: bytes, signature: bytes) -> bool:
    """True when the key of ``cert_der`` signed ``statement`` (as :attr:`Purpose.RELEASE`)."""
    return verifier.verify(cert_der, signature, Purpose.RELEASE, statement)


__all__ = ["MAX_SIGNATURE_BYTES", "MAX_STATEMENT_BYTES", "StatementRefused", "check_network", "check_statement",
           "parse_statement", "sign_statement", "signed_by"]
