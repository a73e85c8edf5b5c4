"""Fuzz every gRPC method of the peer and the orderer with malformed and mutated protobufs.

Each method gets a valid template request (a really signed proposal, envelope ...); hypothesis
sends random bytes and mutations of the template (byte overwrites, truncation, insertion).
A mutation never equal to the template is never accepted, every refusal carries an
``rxchain-reason`` (BAD_REQUEST from node.rpc_parse when the bytes do not even parse as the
method's message: never gRPC's bare INTERNAL), nothing is ordered, and the node keeps serving.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rxchain.v1 import services_pb2, transaction_pb2

from tests.adversarial.support import AdvNet, Case, CaseTable, rpc_reason
from tests.harness.rpc import Creds, channel

pytestmark = pytest.mark.integration

EXAMPLES = 50
STREAM_EXAMPLES = 30
# The refusal of bytes that are not a message of the method's type (node.rpc_parse), before
# any servicer code runs. gRPC's own INTERNAL / UNKNOWN (no reason) are never acceptable.
PARSE_REFUSALS = {"BAD_REQUEST"}


@dataclass(frozen=True)
class Method:
    """A method to fuzz."""

    node: str          # "peer" | "orderer"
    path: str          # /rxchain.v1.Service/Method
    kind: str          # unary | unary_stream | stream_stream | stream_unary
    must_refuse: bool  # a mutated template must never succeed
    as_peer: bool = False  # call with a peer's certificate (Cluster: a non-orderer)


METHODS = [
    Method("peer", "/rxchain.v1.Endorser/ProcessProposal", "unary", True),
    Method("peer", "/rxchain.v1.Gateway/Evaluate", "unary", True),
    Method("peer", "/rxchain.v1.Gateway/Endorse", "unary", True),
    Method("peer", "/rxchain.v1.Gateway/Submit", "unary", True),
    Method("peer", "/rxchain.v1.Gateway/CommitStatus", "unary", False),
    Method("peer", "/rxchain.v1.Gateway/Events", "unary_stream", False),
    Method("peer", "/rxchain.v1.Gateway/Transact", "stream_stream", True),
    Method("peer", "/rxchain.v1.Gateway/TransactBatch", "stream_stream", True),
    Method("peer", "/rxchain.v1.Endorser/ProcessProposals", "stream_stream", True),
    Method("peer", "/rxchain.v1.PeerDeliver/Deliver", "unary_stream", False),
    Method("peer", "/rxchain.v1.Admin/Status", "unary", False),
    Method("orderer", "/rxchain.v1.AtomicBroadcast/Broadcast", "stream_stream", True),
    Method("orderer", "/rxchain.v1.AtomicBroadcast/BroadcastBatch", "stream_stream", True),
    Method("orderer", "/rxchain.v1.AtomicBroadcast/Deliver", "unary_stream", False),
    Method("orderer", "/rxchain.v1.Cluster/Step", "stream_unary", True, as_peer=True),
    Method("orderer", "/rxchain.v1.Cluster/Forward", "stream_stream", True, as_peer=True),
    Method("orderer", "/rxchain.v1.Cluster/ForwardBatch", "stream_stream", True, as_peer=True),
    Method("orderer", "/rxchain.v1.Admin/Health", "unary", False),
]


def _templates(adv: AdvNet) -> dict[str, bytes]:
    """A valid request per method (the endorsed envelope is never submitted unmodified)."""
    with adv.gateway("h01", "dr-test") as gw:
        built = gw.builder.proposal("rxload", "issue", {"rx_id": "RX-fuzz-template", "max_fills": 1, "medfee_fen": 5})
        endorsed = gw.endorse(built)
        env = gw.builder.envelope(built, endorsed.prepared_transaction)
    env_b = env.SerializeToString()
    return {
        "ProcessProposal": built.signed.SerializeToString(),
        "Evaluate": services_pb2.EvaluateRequest(proposal=built.signed).SerializeToString(),
        "Endorse": services_pb2.EndorseRequest(proposal=built.signed).SerializeToString(),
        "Submit": services_pb2.SubmitRequest(envelope=env).SerializeToString(),
        "CommitStatus": services_pb2.CommitStatusRequest(tx_id=built.tx_id, timeout_ms=50).SerializeToString(),
        "Events": services_pb2.EventsRequest(start_block=0, follow=False).SerializeToString(),
        "Transact": services_pb2.TransactRequest(correlation_id=7, submit=env).SerializeToString(),
        "TransactBatch": services_pb2.TransactBatchRequest(
            requests=[services_pb2.TransactRequest(correlation_id=7, submit=env)]).SerializeToString(),
        "ProcessProposals": services_pb2.ProposalBatch(
            items=[services_pb2.CorrelatedProposal(correlation_id=7, proposal=built.signed)]).SerializeToString(),
        "BroadcastBatch": services_pb2.EnvelopeBatch(envelopes=[env]).SerializeToString(),
        "ForwardBatch": services_pb2.EnvelopeBatch(envelopes=[env]).SerializeToString(),
        "Deliver": services_pb2.DeliverRequest(start_block=0, stop_block=1).SerializeToString(),
        "Status": services_pb2.StatusRequest().SerializeToString(),
        "Broadcast": env_b,
        "Step": services_pb2.ConsensusRequest(from_id=1, payload=b"\x08\x05\x10\x01").SerializeToString(),
        "Forward": env_b,
        "Health": services_pb2.HealthRequest().SerializeToString(),
    }


def _mutate(template: bytes, edits: list[tuple[int, int]], cut: int | None, insert: bytes) -> bytes:
    out = bytearray(template)
    for pos, val in edits:
        if out:
            out[pos % len(out)] = val
    if insert and out:
        at = edits[0][0] % len(out) if edits else 0
        out[at:at] = insert
    if cut is not None and out:
        del out[cut % len(out):]
    return bytes(out)


_FD = descriptor.FieldDescriptor
_TYPES: dict[str, type[Message]] = {
    "ProcessProposal": transaction_pb2.SignedProposal, "Evaluate": services_pb2.EvaluateRequest,
    "Endorse": services_pb2.EndorseRequest, "Submit": services_pb2.SubmitRequest,
    "CommitStatus": services_pb2.CommitStatusRequest, "Events": services_pb2.EventsRequest,
    "Transact": services_pb2.TransactRequest, "Deliver": services_pb2.DeliverRequest,
    "TransactBatch": services_pb2.TransactBatchRequest, "ProcessProposals": services_pb2.ProposalBatch,
    "BroadcastBatch": services_pb2.EnvelopeBatch, "ForwardBatch": services_pb2.EnvelopeBatch,
    "Status": services_pb2.StatusRequest, "Broadcast": transaction_pb2.Envelope,
    "Step": services_pb2.ConsensusRequest, "Forward": transaction_pb2.Envelope, "Health": services_pb2.HealthRequest,
}


# Fields no signature covers and no check needs to refuse (an echo id): not mutated, since a
# request differing only there is legitimately the same request.
_FREE_FIELDS = {"correlation_id"}


def _leaves(msg: Message, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of the set scalar fields of a message tree (the values a field-aware fuzzer edits);
    inside a repeated message field (a batch) the first element's fields, as ``name[0]``."""
    out = []
    for fd, value in msg.ListFields():
        if fd.name in _FREE_FIELDS:
            continue
        if fd.is_repeated:
            if fd.type == _FD.TYPE_MESSAGE and len(value):
                out.extend(_leaves(value[0], (*path, f"{fd.name}[0]")))
            continue
        if fd.type == _FD.TYPE_MESSAGE:
            out.extend(_leaves(value, (*path, fd.name)))
        else:
            out.append((*path, fd.name))
    return out


def _child(holder: Any, name: str) -> Any:
    if name.endswith("[0]"):
        return getattr(holder, name[:-3])[0]
    return getattr(holder, name)


def _field_mutation(template: bytes, cls: type[Message], pick: int, edits: list[tuple[int, int]],
                    number: int, text: str) -> bytes:
    """Parse the template, change one leaf field (bytes: overwrite some bytes; int: a new
    value; str: new text; bool: flip), serialize: the outer message stays well-formed, so the
    node's own checks (signature, creator, tx id, sizes) are what refuse it."""
    msg = cls.FromString(template)
    leaves = _leaves(msg)
    if not leaves:
        return template + b"\x08\x01"
    path = leaves[pick % len(leaves)]
    holder = msg
    for name in path[:-1]:
        holder = _child(holder, name)
    name = path[-1]
    fd = holder.DESCRIPTOR.fields_by_name[name]
    value = getattr(holder, name)
    if fd.type == _FD.TYPE_BYTES:
        b = bytearray(value or b"\0")
        for pos, val in edits or [(0, (b[0] + 1) % 256)]:
            b[pos % len(b)] = val
        setattr(holder, name, bytes(b))
    elif fd.type == _FD.TYPE_STRING:
        setattr(holder, name, text)
    elif fd.type == _FD.TYPE_BOOL:
        setattr(holder, name, not value)
    elif fd.type == _FD.TYPE_ENUM:
        setattr(holder, name, number % 32)
    elif fd.type in (_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32):
        setattr(holder, name, number % (1 << 31))
    elif fd.type in (_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64):
        setattr(holder, name, number % (1 << 63))
    elif fd.type in (_FD.TYPE_UINT32, _FD.TYPE_FIXED32):
        setattr(holder, name, number % (1 << 32))
    else:
        setattr(holder, name, number % (1 << 64))
    return msg.SerializeToString()


def payloads(template: bytes, cls: type[Message]) -> st.SearchStrategy[bytes]:
    """Random bytes, a byte-level mutation of the template, or a field-level one."""
    edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6)
    mutated = st.builds(_mutate, st.just(template), edits,
                        st.one_of(st.none(), st.integers(0, 1 << 20)), st.binary(max_size=16))
    field_level = st.builds(_field_mutation, st.just(template), st.just(cls), st.integers(0, 64), edits,
                            st.integers(0, 1 << 64), st.text(max_size=40))
    return st.one_of(st.binary(max_size=600), mutated, field_level, field_level)


def _call(ch: grpc.Channel, m: Method, raw: bytes) -> tuple[bool, str, list[bytes]]:
    """(succeeded, reason, response bytes)."""
    try:
        if m.kind == "unary":
            return True, "", [ch.unary_unary(m.path, None, None)(raw, timeout=2)]
        if m.kind == "unary_stream":
            out = []
            for resp in ch.unary_stream(m.path, None, None)(raw, timeout=0.7):
                out.append(resp)
                if len(out) >= 5:
                    break
            return True, "", out
        if m.kind == "stream_unary":
            return True, "", [ch.stream_unary(m.path, None, None)(iter([raw]), timeout=5)]
        out = []
        for resp in ch.stream_stream(m.path, None, None)(iter([raw]), timeout=10):
            out.append(resp)
        return True, "", out
    except grpc.RpcError as exc:
        return False, rpc_reason(exc), []


def _broadcast_reason(br: services_pb2.BroadcastResponse) -> str:
    return "" if br.accepted else br.reason or "NO_REASON"


def _transact_reason(tr: services_pb2.TransactResponse) -> str:
    kind = tr.WhichOneof("kind")
    if kind == "error":
        return tr.error.reason or "NO_REASON"
    if kind == "committed" and tr.committed.code != transaction_pb2.VALID:
        return transaction_pb2.TxValidationCode.Name(tr.committed.code)
    return ""


def _proposal_reason(item: services_pb2.CorrelatedProposalResponse) -> str:
    if item.WhichOneof("kind") == "error":
        return item.error.reason or "NO_REASON"
    r = item.response
    if r.response.status != 200 or not r.HasField("endorsement"):
        return r.response.reason or f"STATUS_{r.response.status}"
    return ""


def _refused_in_band(m: Method, responses: list[bytes]) -> str:
    """For streams that answer per message: the reason of an in-band refusal ('' = accepted).
    A batch counts as refused only when every one of its answers is a refusal."""
    name = m.path.rsplit("/", 1)[1]
    reasons: list[str] = []
    for raw in responses:
        if name in ("Broadcast", "Forward"):
            reasons.append(_broadcast_reason(services_pb2.BroadcastResponse.FromString(raw)))
        elif name in ("BroadcastBatch", "ForwardBatch"):
            reasons.extend(_broadcast_reason(r)
                           for r in services_pb2.BroadcastBatchResponse.FromString(raw).responses)
        elif name == "Transact":
            reasons.append(_transact_reason(services_pb2.TransactResponse.FromString(raw)))
        elif name == "TransactBatch":
            reasons.extend(_transact_reason(r)
                           for r in services_pb2.TransactBatchResponse.FromString(raw).responses)
        elif name == "ProcessProposals":
            reasons.extend(_proposal_reason(i) for i in services_pb2.ProposalResponseBatch.FromString(raw).items)
    if not reasons:
        return "EMPTY_STREAM"
    if any(r == "" for r in reasons):
        return ""
    return reasons[0]


@pytest.mark.parametrize("m", METHODS, ids=lambda m: m.path.split("v1.")[1])
def test_fuzz_method(adv: AdvNet, case_table: CaseTable, m: Method) -> None:
    name = m.path.rsplit("/", 1)[1]
    template = _templates(adv)[name]
    target_node = adv.peer("h01") if m.node == "peer" else adv.orderer()
    creds: Creds = adv.cons.node_creds("peer.h02") if m.as_peer else adv.user_creds("h01", "dr-test")
    before = adv.snapshot()
    reasons: Counter[str] = Counter()
    accepted: list[bytes] = []
    ch = channel(adv.cons.target(target_node), creds)
    n = STREAM_EXAMPLES if m.kind != "unary" else EXAMPLES

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(payloads(template, _TYPES[name]))
    def run(raw: bytes) -> None:
        assume(raw != template)
        ok, reason, responses = _call(ch, m, raw)
        if ok and m.must_refuse:
            reason = _refused_in_band(m, responses) if m.kind in ("stream_stream",) else ""
            if not reason:
                accepted.append(raw)
        reasons[reason or "OK"] += 1

    try:
        run()
    finally:
        ch.close()
    after = adv.snapshot()
    top = ", ".join(f"{r}x{c}" for r, c in reasons.most_common(4))
    case = case_table.add(Case(f"fuzz {m.path.split('v1.')[1]} ({sum(reasons.values())} inputs)", target_node,
                               "refused with a reason" if m.must_refuse else "answered or refused, no crash",
                               outcome=top, reason=reasons.most_common(1)[0][0] if reasons else ""))
    case.nothing_written = after == before
    case.still_serving = adv.serving()
    assert not accepted, f"{len(accepted)} mutated requests were accepted by {m.path}"
    assert "grpc:UNKNOWN" not in reasons, f"{m.path} failed with gRPC UNKNOWN (no reason): {reasons}"
    assert "grpc:INTERNAL" not in reasons, f"{m.path} failed with gRPC INTERNAL (no reason): {reasons}"
    if m.must_refuse:
        assert "OK" not in reasons and "RPC_FAILED" not in reasons, reasons
        ours = sum(c for r, c in reasons.items() if r not in PARSE_REFUSALS)
        assert ours > 0, f"no input reached {m.path}'s own checks: {reasons}"
    assert case.nothing_written, (before, after)
    assert case.still_serving
