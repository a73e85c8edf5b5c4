"""Endorser: proposal checks, simulation and signing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from netgen import generate
from rxchain.v1 import transaction_pb2

from node.crypto.canonical import proposal_hash
from node.crypto.signing import Purpose
from node.errors import RxError
from node.peer.endorser import Endorser
from tests.peer.conftest import FIXED_NOW, Cluster, consortium
from tests.peer.kit import envelope, user_signer


def _endorse_err(cluster: Cluster, signed: transaction_pb2.SignedProposal) -> str:
    with pytest.raises(RxError) as err:
        cluster.peers[0].endorser.endorse(signed)
    return err.value.reason


def _prop(cluster: Cluster, signer=None, function: str = "put", args=None, **kw):
    return cluster.kit.proposal(signer or cluster.net.doctor, "counter", function,
                                args if args is not None else {"key": "a", "value": 1},
                                timestamp_ms=kw.pop("timestamp_ms", cluster.now()), **kw)


def test_valid_proposal_is_endorsed_and_verifiable(deployed: Cluster) -> None:
    signed = _prop(deployed)
    resp = deployed.peers[0].endorser.endorse(signed)
    assert resp.response.status == 200
    payload = transaction_pb2.ProposalResponsePayload.FromString(resp.payload)
    prop = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
    assert payload.proposal_hash == proposal_hash(prop.header, prop.invocation)
    rwset = transaction_pb2.TxRwSet.FromString(payload.results)
    assert [ns.namespace for ns in rwset.ns_rwsets] == ["counter"]
    assert [(w.key, w.value) for w in rwset.ns_rwsets[0].writes] == [("k/a", b"1")]
    assert [e.name for e in payload.events] == ["stored"]
    assert (payload.contract_version, payload.contract_sequence) == ("1.0", 1)
    signer = deployed.net.peers["h01"]
    assert resp.endorsement.endorser == signer.identity
    from node.crypto.signing import Verifier
    assert Verifier().verify(signer.identity.cert_der, resp.endorsement.signature, Purpose.ENDORSEMENT,
                             resp.payload)
    # Nothing was written by endorsement.
    assert deployed.peers[0].ledger.get("counter", "k/a") is None


def test_bad_signature(deployed: Cluster) -> None:
    signed = _prop(deployed)
    bad = transaction_pb2.SignedProposal(
        proposal_bytes=signed.proposal_bytes,
        signature=deployed.net.nurse.sign(Purpose.PROPOSAL, signed.proposal_bytes),
    )
    assert _endorse_err(deployed, bad) == "BAD_SIGNATURE"


def test_unknown_creator(deployed: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate(consortium(), other, clock=lambda: FIXED_NOW)  # same org ids, different CAs
    stranger = user_signer(other, "h01", "dr-a")
    assert _endorse_err(deployed, _prop(deployed, stranger)) == "UNKNOWN_CREATOR"


def test_wrong_role(deployed: Cluster) -> None:
    assert _endorse_err(deployed, _prop(deployed, deployed.net.nurse)) == "ACCESS_DENIED"
    assert _endorse_err(deployed, _prop(deployed, deployed.net.clerk)) == "ACCESS_DENIED"
    # "p01.pharmacist" admits the pharmacist of p01; "hospital.doctor" only hospital doctors.
    assert deployed.peers[0].endorser.endorse(_prop(deployed, deployed.net.pharmacist)).response.status == 200
    assert _endorse_err(deployed, _prop(deployed, deployed.net.pharmacist, "secret", {})) == "ACCESS_DENIED"


def test_malformed_payload(deployed: Cluster) -> None:
    garbage = transaction_pb2.SignedProposal(proposal_bytes=b"\xff\xff\x01", signature=b"x")
    assert _endorse_err(deployed, garbage) == "BAD_PAYLOAD"
    empty = transaction_pb2.SignedProposal()
    assert _endorse_err(deployed, empty) == "BAD_PAYLOAD"
    # Float arguments are refused (money is integer fen).
    signed = _prop(deployed)
    prop = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
    inv = transaction_pb2.ContractInvocation.FromString(prop.invocation)
    inv.args_json = b'{"key": "a", "value": 1.5}'
    prop.invocation = inv.SerializeToString()
    raw = prop.SerializeToString()
    resigned = transaction_pb2.SignedProposal(proposal_bytes=raw, signature=deployed.net.doctor.sign(Purpose.PROPOSAL, raw))
    assert _endorse_err(deployed, resigned) == "BAD_ARGUMENTS"


def test_oversized_payload(deployed: Cluster) -> None:
    signed = _prop(deployed, args={"key": "a", "value": "x" * (300 << 10)})
    assert _endorse_err(deployed, signed) == "TOO_LARGE"


def test_clock_skew_and_bad_tx_id(deployed: Cluster) -> None:
    late = _prop(deployed, timestamp_ms=deployed.now() - 120_000)
    assert _endorse_err(deployed, late) == "CLOCK_SKEW"
    signed = _prop(deployed)
    prop = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
    header = transaction_pb2.TxHeader.FromString(prop.header)
    header.tx_id = "0" * 64
    prop.header = header.SerializeToString()
    raw = prop.SerializeToString()
    forged = transaction_pb2.SignedProposal(proposal_bytes=raw, signature=deployed.net.doctor.sign(Purpose.PROPOSAL, raw))
    assert _endorse_err(deployed, forged) == "BAD_TXID"


def test_duplicate_tx_id_refused(deployed: Cluster) -> None:
    signed = _prop(deployed)
    responses = deployed.endorse_all(signed, deployed.peers[:2])
    deployed.commit([envelope(deployed.net.doctor, signed, responses)])
    assert _endorse_err(deployed, signed) == "DUPLICATE_TXID"


def test_unknown_contract(deployed: Cluster) -> None:
    signed = deployed.kit.proposal(deployed.net.doctor, "nope", "f", {}, timestamp_ms=deployed.now())
    assert _endorse_err(deployed, signed) == "UNKNOWN_CONTRACT"
    signed = deployed.kit.proposal(deployed.net.doctor, "_system", "f", {}, timestamp_ms=deployed.now())
    assert _endorse_err(deployed, signed) == "UNKNOWN_CONTRACT"


def test_contract_rejection_is_not_endorsed(deployed: Cluster) -> None:
    signed = _prop(deployed, function="add", args={"key": "a", "amount": -1})
    resp = deployed.peers[0].endorser.endorse(signed)
    assert (resp.response.status, resp.response.reason) == (400, "NOT_POSITIVE")
    assert not resp.HasField("endorsement") and resp.payload == b""
    signed = _prop(deployed, function="nosuch", args={})
    with pytest.raises(RxError):  # not in the access rules: refused before running
        deployed.peers[0].endorser.endorse(signed)


def test_transient_never_in_response(deployed: Cluster) -> None:
    secret = json.dumps("patient-id-5001021990").encode()
    signed = _prop(deployed, function="secret", args={}, transient={"secret": secret})
    resp = deployed.peers[0].endorser.endorse(signed)
    assert resp.response.status == 200
    assert json.loads(resp.response.payload) == {"len": len("patient-id-5001021990")}
    wire = resp.SerializeToString()
    assert b"patient-id" not in wire and b"5001021990" not in wire
    responses = deployed.endorse_all(signed, deployed.peers[:2])
    env = envelope(deployed.net.doctor, signed, responses)
    assert b"5001021990" not in env
    block = deployed.commit([env])[0]
    assert block.metadata.validation_codes[0] == transaction_pb2.VALID
    assert b"5001021990" not in block.SerializeToString()


def test_same_proposal_on_two_peers_gives_identical_payload(deployed: Cluster) -> None:
    for i in range(3):
        deployed.transact(deployed.net.doctor, "counter", "put", {"key": f"r{i}", "value": i})
    signed = _prop(deployed, function="scan", args={})
    a, b, c = deployed.endorse_all(signed)
    assert a.payload == b.payload == c.payload
    assert a.endorsement.signature != b.endorsement.signature
    rwset = transaction_pb2.TxRwSet.FromString(
        transaction_pb2.ProposalResponsePayload.FromString(a.payload).results)
    rq = rwset.ns_rwsets[0].range_queries[0]
    assert [r.key for r in rq.reads] == ["k/r0", "k/r1", "k/r2"] and rq.exhausted


def test_endorser_keeps_serving_after_errors(deployed: Cluster) -> None:
    e: Endorser = deployed.peers[0].endorser
    for bad in (transaction_pb2.SignedProposal(proposal_bytes=b"\x00" * 10, signature=b"x"),
                _prop(deployed, deployed.net.nurse)):
        with pytest.raises(RxError):
            e.endorse(bad)
    assert e.endorse(_prop(deployed)).response.status == 200



def _with_raw_args(cluster: Cluster, args_json: bytes) -> transaction_pb2.SignedProposal:
    """A validly signed proposal whose arguments are ``args_json`` verbatim."""
    prop = transaction_pb2.Proposal.FromString(_prop(cluster).proposal_bytes)
    inv = transaction_pb2.ContractInvocation.FromString(prop.invocation)
    inv.args_json = args_json
    prop.invocation = inv.SerializeToString()
    raw = prop.SerializeToString()
    return transaction_pb2.SignedProposal(proposal_bytes=raw, signature=cluster.net.doctor.sign(Purpose.PROPOSAL, raw))


@pytest.mark.parametrize("args_json", [b"[" * 200_000, b'{"key": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                       b'{"a":' * 30_000 + b"1" + b"}" * 30_000])
def test_deeply_nested_arguments_are_bad_arguments(deployed: Cluster, args_json: bytes) -> None:
    """JSON nested deep enough to exhaust the decoder's recursion is BAD_ARGUMENTS (not a
    RecursionError that gRPC would answer as UNKNOWN), and the endorser keeps serving."""
    err = _endorse_err(deployed, _with_raw_args(deployed, args_json))
    assert err == "BAD_ARGUMENTS"
    assert deployed.peers[0].endorser.endorse(_prop(deployed)).response.status == 200
