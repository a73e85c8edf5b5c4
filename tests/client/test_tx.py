"""Proposal and envelope building and signing."""

from __future__ import annotations

import json

import pytest
from rxchain.v1 import transaction_pb2

from client.errors import RxClientError
from client.tx import TxBuilder
from client.wallet import load_identity
from node.crypto.canonical import compute_tx_id, proposal_hash
from node.crypto.signing import Purpose, Verifier


def _builder(net_home, nonce=b"\x07" * 24):
    ident = load_identity(net_home.home, "h01", "dr-jiang")
    return ident, TxBuilder(ident.signer, "client-test", clock=lambda: 1_764_000_000_123,
                            nonce_source=lambda n: nonce[:n])


def test_proposal_header_and_signature(net_home):
    ident, b = _builder(net_home)
    built = b.proposal("prescription", "issue", {"b": 2, "a": [1, "x"]}, {"content": {"k": "v"},
                                                                         "raw": b"\x00\x01"})
    prop = transaction_pb2.Proposal.FromString(built.signed.proposal_bytes)
    header = transaction_pb2.TxHeader.FromString(prop.header)
    assert header.tx_id == built.tx_id == compute_tx_id(b"\x07" * 24, ident.identity)
    assert header.timestamp_ms == 1_764_000_000_123
    assert header.consortium_id == "client-test"
    assert header.type == transaction_pb2.INVOKE
    assert header.creator.cert_der == ident.identity.cert_der
    inv = transaction_pb2.ContractInvocation.FromString(prop.invocation)
    assert (inv.contract, inv.function) == ("prescription", "issue")
    assert inv.args_json == b'{"a":[1,"x"],"b":2}'
    assert json.loads(prop.transient["content"]) == {"k": "v"}
    assert prop.transient["raw"] == b"\x00\x01"
    assert Verifier().verify(ident.identity.cert_der, built.signed.signature, Purpose.PROPOSAL,
                             built.signed.proposal_bytes)


def test_fresh_nonce_gives_fresh_tx_id(net_home):
    ident = load_identity(net_home.home, "h01", "dr-jiang")
    b = TxBuilder(ident.signer, "client-test")
    assert b.proposal("c", "f", {}).tx_id != b.proposal("c", "f", {}).tx_id


def test_floats_are_refused(net_home):
    _, b = _builder(net_home)
    with pytest.raises(RxClientError) as e:
        b.proposal("settlement", "settle", {"amount": 1.5})
    assert e.value.reason == "BAD_ARGUMENTS"


def _prepared(built, endorsements=1, header=None, prp=None):
    if prp is None:
        prp = transaction_pb2.ProposalResponsePayload(
            proposal_hash=proposal_hash(built.header_bytes, built.invocation_bytes),
            response=transaction_pb2.Response(status=200, payload=b'{"ok":true}'))
    tx = transaction_pb2.Transaction(header=header or built.header_bytes, invocation=built.invocation_bytes,
                                     response_payload=prp if isinstance(prp, bytes) else prp.SerializeToString())
    for _ in range(endorsements):
        tx.endorsements.add(signature=b"s")
    return tx.SerializeToString()


def test_envelope_signs_prepared_transaction(net_home):
    ident, b = _builder(net_home)
    built = b.proposal("registry", "get_drug", {"code_or_name": "amlodipine"})
    prepared = _prepared(built)
    env = b.envelope(built, prepared)
    assert env.payload == prepared
    assert Verifier().verify(ident.identity.cert_der, env.signature, Purpose.ENVELOPE, prepared)


def test_envelope_refuses_foreign_or_unendorsed_transaction(net_home):
    _, b = _builder(net_home)
    built = b.proposal("registry", "get_drug", {"code_or_name": "amlodipine"})
    other = _builder(net_home, nonce=b"\x09" * 24)[1].proposal("registry", "get_drug", {})
    for prepared in (_prepared(built, header=other.header_bytes), _prepared(built, 0), b"\xff\xff"):
        with pytest.raises(RxClientError) as e:
            b.envelope(built, prepared)
        assert e.value.reason == "BAD_PAYLOAD"


def test_envelope_refuses_a_response_not_endorsed_for_this_proposal_or_not_the_answered_result(net_home):
    """The response payload is what the endorsers sign and validation commits: it must parse,
    be made for this proposal (its proposal hash) with status 200, and -- given the gateway's
    answered result -- carry that very result (status and payload); otherwise BAD_PAYLOAD,
    nothing signed. The old check looked at the header and invocation only."""
    ident, b = _builder(net_home)
    built = b.proposal("prescription", "lock", {"rx_id": "RX-1"})
    other = _builder(net_home, nonce=b"\x09" * 24)[1].proposal("prescription", "lock", {"rx_id": "RX-1"})
    ok = transaction_pb2.Response(status=200, payload=b'{"lock_id":"a"}')

    def prp(response=ok, of=built):
        return transaction_pb2.ProposalResponsePayload(
            proposal_hash=proposal_hash(of.header_bytes, of.invocation_bytes), response=response)

    env = b.envelope(built, _prepared(built, prp=prp()), ok)  # all agree: signed
    assert Verifier().verify(ident.identity.cert_der, env.signature, Purpose.ENVELOPE, env.payload)
    refused = [
        (_prepared(built, prp=b"\xff\xff"), ok),  # does not parse
        (_prepared(built, prp=prp(of=other)), ok),  # endorsed for another proposal
        (_prepared(built, prp=prp(transaction_pb2.Response(status=400, reason="NOT_FOUND"))), None),
        (_prepared(built, prp=prp()), transaction_pb2.Response(status=200, payload=b'{"lock_id":"b"}')),
        (_prepared(built, prp=prp()), transaction_pb2.Response(status=200)),
    ]
    for prepared, result in refused:
        with pytest.raises(RxClientError) as e:
            b.envelope(built, prepared, result)
        assert e.value.reason == "BAD_PAYLOAD"
