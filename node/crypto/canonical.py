"""Canonical encodings: what rxchain hashes, byte for byte.

Rule 1 -- signed things travel as bytes. Every signed or hashed message (TxHeader,
ContractInvocation, Proposal, Transaction, ProposalResponsePayload, ConsortiumConfig) is
carried in a ``bytes`` field holding the serialization its author produced, and nobody
re-serializes it. Signatures and hashes are taken over those bytes, so differences
between protobuf implementations or field orders can never change a hash.

Rule 2 -- composite hashes use fixed layouts. Where a hash covers several parts, the
input is the concatenation of a domain tag and the parts, each prefixed by its length as
an unsigned 32-bit big-endian integer (:func:`lp`); integers are unsigned 64-bit
big-endian. The layouts:

* block header hash = SHA-256( lp(b"rxchain.v1.BlockHeader") || u64(number)
  || lp(previous_hash) || lp(data_hash) )
* block data hash = SHA-256( lp(b"rxchain.v1.BlockData") || u64(count)
  || lp(envelope_0) || ... || lp(envelope_n-1) )
* proposal hash = SHA-256( lp(b"rxchain.v1.Proposal") || lp(header_bytes)
  || lp(invocation_bytes) )            -- transient data is excluded
* tx id = hex SHA-256( lp(b"rxchain.v1.TxId") || lp(nonce) || lp(org)
  || lp(creator_cert_der) )

Canonical JSON (contract arguments, results and state values): UTF-8, keys sorted,
separators ``,`` and ``:``, no insignificant whitespace, no floats, no NaN.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from typing import Any

from rxchain.v1 import block_pb2, identity_pb2

GENESIS_PREVIOUS_HASH = b"\0" * 32

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

_TAG_HEADER = b"rxchain.v1.BlockHeader"
_TAG_DATA = b"rxchain.v1.BlockData"
_TAG_PROPOSAL = b"rxchain.v1.Proposal"
_TAG_TXID = b"rxchain.v1.TxId"


def lp(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: u32 big-endian length, then the bytes, per part."""
    out = bytearray()
    for part in parts:
        out += _U32.pack(len(part))
        out += part
    return bytes(out)


def u64(value: int) -> bytes:
    """Unsigned 64-bit big-endian encoding."""
    return _U64.pack(value)


def block_header_bytes(number: int, previous_hash: bytes, data_hash: bytes, timestamp_ms: int = 0) -> bytes:
    """The canonical encoding of a block header (what is hashed and what orderers sign): tag,
    u64 number, length-prefixed previous and data hashes, then u64 timestamp_ms when it is
    not 0 (a header without a timestamp -- the genesis -- encodes as before it existed)."""
    head = lp(_TAG_HEADER) + u64(number) + lp(previous_hash, data_hash)
    return head + u64(timestamp_ms) if timestamp_ms else head


def block_header_hash(header: block_pb2.BlockHeader) -> bytes:
    """SHA-256 over the canonical header encoding."""
    return hashlib.sha256(
        block_header_bytes(header.number, header.previous_hash, header.data_hash, header.timestamp_ms)
    ).digest()


def block_data_hash(envelopes: Sequence[bytes]) -> bytes:
    """SHA-256 over the ordered envelopes, each length-prefixed."""
    h = hashlib.sha256()
    h.update(lp(_TAG_DATA))
    h.update(u64(len(envelopes)))
    for env in envelopes:
        h.update(_U32.pack(len(env)))
        h.update(env)
    return h.digest()


def proposal_hash(header_bytes: bytes, invocation_bytes: bytes) -> bytes:
    """Hash binding an endorsement to a proposal's header and invocation (not transient)."""
    return hashlib.sha256(lp(_TAG_PROPOSAL, header_bytes, invocation_bytes)).digest()


def compute_tx_id(nonce: bytes, creator: identity_pb2.Identity) -> str:
    """Transaction id: derived from the client's nonce and identity, so it cannot be chosen."""
    return hashlib.sha256(
        lp(_TAG_TXID, nonce, creator.org.encode("utf-8"), creator.cert_der)
    ).hexdigest()


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise ValueError("floats are not allowed in canonical JSON (money is integer fen)")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError("canonical JSON object keys must be strings")
            _reject_floats(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _reject_floats(v)


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes of ``value`` (sorted keys, compact, UTF-8, no floats)."""
    _reject_floats(value)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def identity_bytes(identity: identity_pb2.Identity) -> bytes:
    """Canonical encoding of an identity, for use inside other hashes."""
    return lp(identity.org.encode("utf-8"), identity.cert_der)
