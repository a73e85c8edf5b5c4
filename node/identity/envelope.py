"""The envelope checks every node applies to a transaction before anything type-specific:
parse, header fields, creator certificate (at the header's timestamp), creator signature over
the payload, tx id. Peers run them in validation; orderers run them again on the apply path
before adopting a config update, so both adopt exactly the same configs (a leader that
wrapped an admin-signed update in a forged envelope would otherwise split them).

Each check raises :class:`EnvelopeReject` with the validation code peers record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from google.protobuf.message import DecodeError
from rxchain.v1 import identity_pb2, transaction_pb2

from node.crypto.canonical import compute_tx_id
from node.crypto.signing import Purpose
from node.errors import RxError

Code: TypeAlias = transaction_pb2.TxValidationCode.ValueType

MIN_NONCE_BYTES = 16

_CERT_CODES: dict[str, Code] = {
    "EXPIRED_CERT": transaction_pb2.EXPIRED_CREATOR_CERT,
    "REVOKED_CERT": transaction_pb2.REVOKED_CREATOR_CERT,
}


class EnvelopeReject(Exception):
    """A transaction refused with validation ``code``."""

    def __init__(self, code: Code) -> None:
        super().__init__(code)
        self.code = code


def parse_envelope(
    env_bytes: bytes,
) -> tuple[transaction_pb2.Envelope, transaction_pb2.Transaction, transaction_pb2.TxHeader]:
    """Envelope, Transaction and TxHeader of ``env_bytes`` (BAD_PAYLOAD / BAD_HEADER)."""
    try:
        env = transaction_pb2.Envelope.FromString(env_bytes)
        tx = transaction_pb2.Transaction.FromString(env.payload)
    except DecodeError:
        raise EnvelopeReject(transaction_pb2.BAD_PAYLOAD) from None
    if not env.payload or not env.signature or not tx.header:
        raise EnvelopeReject(transaction_pb2.BAD_PAYLOAD)
    try:
        header = transaction_pb2.TxHeader.FromString(tx.header)
    except DecodeError:
        raise EnvelopeReject(transaction_pb2.BAD_HEADER) from None
    return env, tx, header


def check_header(header: transaction_pb2.TxHeader, consortium_id: str) -> None:
    """Type, creator, nonce, tx id, timestamp and consortium present and plausible (BAD_HEADER)."""
    if (
        header.type not in (transaction_pb2.INVOKE, transaction_pb2.CONFIG)
        or not header.HasField("creator")
        or not header.creator.cert_der
        or len(header.nonce) < MIN_NONCE_BYTES
        or not header.tx_id
        or header.timestamp_ms <= 0
        or header.consortium_id != consortium_id
    ):
        raise EnvelopeReject(transaction_pb2.BAD_HEADER)


def check_timestamp(header: transaction_pb2.TxHeader, block_timestamp_ms: int, max_skew_ms: int) -> None:
    """The tx's timestamp (the contracts' "now", the time its creator's certificate is
    checked at) lies within ``max_skew_ms`` of the orderer-signed time of its block
    (TX_TIMESTAMP_SKEW); no check for a block without a timestamp or a consortium without a
    bound. Decided from the block alone (the bound of the configuration in force before the
    block, on peers and on the orderers' apply path alike), so every node decides identically.

    The orderers' broadcast check (CLOCK_SKEW) uses the same bound but another clock: the
    receiving orderer's, when the envelope arrives (a follower forwards what it accepted and
    the leader does not check again), while the stamp is the leader's when it cuts the block.
    An envelope accepted at broadcast can therefore still be TX_TIMESTAMP_SKEW here: one whose
    timestamp was near the bound's edge (it ages while it waits for its block), or one a
    follower accepted whose clock differs from the leader's. Both are refusals of a tx with
    an implausible time, never a split: every node judges the same signed block time."""
    if block_timestamp_ms and max_skew_ms and abs(header.timestamp_ms - block_timestamp_ms) > max_skew_ms:
        raise EnvelopeReject(transaction_pb2.TX_TIMESTAMP_SKEW)


def check_creator(
    header: transaction_pb2.TxHeader,
    env: transaction_pb2.Envelope,
    validate: Callable[[identity_pb2.Identity, int], object],
    verify: Callable[[bytes, bytes, Purpose, bytes], bool],
) -> None:
    """The creator is a valid member at the header's timestamp (``validate`` raises the MSP's
    RxError), signed the payload, and the tx id is derived from nonce and creator."""
    try:
        validate(header.creator, header.timestamp_ms)
    except RxError as err:
        raise EnvelopeReject(_CERT_CODES.get(err.reason, transaction_pb2.UNKNOWN_CREATOR)) from None
    if not verify(header.creator.cert_der, env.signature, Purpose.ENVELOPE, env.payload):
        raise EnvelopeReject(transaction_pb2.BAD_CREATOR_SIGNATURE)
    if header.tx_id != compute_tx_id(header.nonce, header.creator):
        raise EnvelopeReject(transaction_pb2.BAD_TXID)
