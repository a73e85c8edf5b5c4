"""Canonical hashing: stable, order-independent of protobuf serialisation, tamper-evident."""

from __future__ import annotations

import hashlib

import pytest
from rxchain.v1 import block_pb2, identity_pb2

from node.crypto import canonical


def test_header_hash_golden_vector() -> None:
    header = block_pb2.BlockHeader(number=7, previous_hash=b"\x01" * 32, data_hash=b"\x02" * 32)
    expected_input = (
        len(b"rxchain.v1.BlockHeader").to_bytes(4, "big") + b"rxchain.v1.BlockHeader"
        + (7).to_bytes(8, "big")
        + (32).to_bytes(4, "big") + b"\x01" * 32
        + (32).to_bytes(4, "big") + b"\x02" * 32
    )
    assert canonical.block_header_hash(header) == hashlib.sha256(expected_input).digest()


def test_header_hash_golden_vector_with_a_timestamp() -> None:
    """A stamped header appends u64 timestamp_ms; without one (genesis, older blocks) the
    encoding is the one above, so their hashes did not change."""
    header = block_pb2.BlockHeader(number=7, previous_hash=b"\x01" * 32, data_hash=b"\x02" * 32,
                                   timestamp_ms=1_800_000_000_123)
    expected_input = (
        len(b"rxchain.v1.BlockHeader").to_bytes(4, "big") + b"rxchain.v1.BlockHeader"
        + (7).to_bytes(8, "big")
        + (32).to_bytes(4, "big") + b"\x01" * 32
        + (32).to_bytes(4, "big") + b"\x02" * 32
        + (1_800_000_000_123).to_bytes(8, "big")
    )
    assert canonical.block_header_hash(header) == hashlib.sha256(expected_input).digest()


def test_header_hash_independent_of_serialisation() -> None:
    a = block_pb2.BlockHeader(number=3, previous_hash=b"p" * 32, data_hash=b"d" * 32)
    b = block_pb2.BlockHeader()
    b.data_hash = b"d" * 32  # set in another order, and round-trip through bytes
    b.number = 3
    b.previous_hash = b"p" * 32
    b = block_pb2.BlockHeader.FromString(b.SerializeToString(deterministic=True))
    assert canonical.block_header_hash(a) == canonical.block_header_hash(b)


@pytest.mark.parametrize("field", ["number", "previous_hash", "data_hash", "timestamp_ms"])
def test_header_hash_changes_with_every_field(field: str) -> None:
    base = block_pb2.BlockHeader(number=1, previous_hash=b"a" * 32, data_hash=b"b" * 32, timestamp_ms=5)
    changed = block_pb2.BlockHeader()
    changed.CopyFrom(base)
    if field == "number":
        changed.number = 2
    elif field == "timestamp_ms":
        changed.timestamp_ms = 6
    else:
        setattr(changed, field, b"c" * 32)
    assert canonical.block_header_hash(base) != canonical.block_header_hash(changed)


def test_data_hash_is_order_and_boundary_sensitive() -> None:
    assert canonical.block_data_hash([b"ab", b"c"]) != canonical.block_data_hash([b"a", b"bc"])
    assert canonical.block_data_hash([b"a", b"b"]) != canonical.block_data_hash([b"b", b"a"])
    assert canonical.block_data_hash([]) != canonical.block_data_hash([b""])


def test_tx_id_binds_nonce_and_creator() -> None:
    ident = identity_pb2.Identity(org="h01", cert_der=b"cert")
    other = identity_pb2.Identity(org="h02", cert_der=b"cert")
    tx = canonical.compute_tx_id(b"n" * 24, ident)
    assert len(tx) == 64
    assert tx == canonical.compute_tx_id(b"n" * 24, ident)
    assert tx != canonical.compute_tx_id(b"m" * 24, ident)
    assert tx != canonical.compute_tx_id(b"n" * 24, other)


def test_proposal_hash_excludes_nothing_but_transient() -> None:
    assert canonical.proposal_hash(b"h", b"i") != canonical.proposal_hash(b"h", b"j")
    assert canonical.proposal_hash(b"hi", b"") != canonical.proposal_hash(b"h", b"i")


def test_canonical_json() -> None:
    assert canonical.canonical_json({"b": 1, "a": [True, None, "x"]}) == b'{"a":[true,null,"x"],"b":1}'
    assert canonical.canonical_json({"名": "张"}) == '{"名":"张"}'.encode()
    with pytest.raises(ValueError, match="floats"):
        canonical.canonical_json({"amount": 1.5})
