"""Red-team regressions: transactions a malicious-but-authenticated member can build.

Each test failed before its fix (see the validator's and history's comments).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rxchain.v1 import block_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.crypto.canonical import proposal_hash
from node.crypto.signing import Purpose, Signer, Verifier
from node.errors import RxError
from node.ledger.statedb import HistoryEntry as LedgerHistoryEntry
from node.ledger.statedb import StateDB, Version, VersionedValue
from node.peer.definitions import LIFECYCLE_NS
from node.peer.history import LedgerHistory
from node.peer.policy_provider import LifecyclePolicies
from node.peer.validator import Validator, WrittenKeys
from tests.harness.certs import CountingVerifier
from tests.validation.conftest import Net, Peer

VALID = tx_pb.VALID


def _commit(peer: Peer, net: Net, envs: Sequence[bytes]) -> list[int]:
    block = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), envs, [net.orderer1])
    return list(peer.committer.commit_block(block).validated.codes)


def _tx(
    peer: Peer,
    net: Net,
    header: bytes,
    *,
    rwsets: Sequence[RwSpec] = (RwSpec("rx", writes=[("a", b"1")]),),
    events: Sequence[tx_pb.ContractEvent] = (),
    endorsers: Sequence[Signer] | None = None,
) -> bytes:
    """A sealed INVOKE of contract ``rx`` with ``header``, endorsed over exactly these parts."""
    inv = tx_pb.ContractInvocation(contract="rx", function="f", args_json=b"{}").SerializeToString()
    prp = tx_pb.ProposalResponsePayload(
        proposal_hash=proposal_hash(header, inv),
        results=tx_pb.TxRwSet(ns_rwsets=[r.to_proto() for r in rwsets]).SerializeToString(),
        response=tx_pb.Response(status=200, payload=b"{}"),
        contract_version="1.0",
        contract_sequence=1,
        events=list(events),
    ).SerializeToString()
    tx = tx_pb.Transaction(header=header, invocation=inv, response_payload=prp)
    for e in endorsers if endorsers is not None else (net.peer_h01, net.peer_p01):
        tx.endorsements.add(endorser=e.identity, signature=e.sign(Purpose.ENDORSEMENT, prp))
    return peer.kit.seal(net.doctor, tx)


def _tx_id(header: bytes) -> str:
    return tx_pb.TxHeader.FromString(header).tx_id


@pytest.mark.parametrize(("signed_as", "code"), [
    (Purpose.PROPOSAL, tx_pb.BAD_CREATOR_SIGNATURE),  # the proposal's own signature
    (Purpose.ENVELOPE, tx_pb.BAD_PAYLOAD),  # were it signed as an envelope: the shape check
])
def test_signed_proposal_turned_into_an_envelope_does_not_make_the_real_tx_a_duplicate(
    peer: Peer, net: Net, signed_as: Purpose, code: int
) -> None:
    # Proposal(header=1, invocation=2, transient=3) parses as Transaction(header=1,
    # invocation=2, response_payload=3). An endorser that saw the proposal submits it first.
    # Signatures are tagged with what they are for, so the client's signature over its
    # proposal does not verify as an envelope signature (it did before the tags); behind
    # that, a proposal-shaped payload is BAD_PAYLOAD, and neither makes the real tx a
    # DUPLICATE_TXID.
    header = peer.kit.header(net.doctor)
    inv = tx_pb.ContractInvocation(contract="rx", function="f", args_json=b"{}").SerializeToString()
    proposal = tx_pb.Proposal(header=header, invocation=inv)
    proposal.transient["diagnosis"] = b"private"
    proposal_bytes = proposal.SerializeToString()
    stolen = tx_pb.Envelope(
        payload=proposal_bytes, signature=net.doctor.sign(signed_as, proposal_bytes)
    ).SerializeToString()
    real = _tx(peer, net, header)
    assert _commit(peer, net, [stolen, real]) == [code, VALID]
    loc = peer.ledger.tx_location(_tx_id(header))
    assert loc is not None and (loc.block, loc.tx, loc.code) == (1, 1, VALID)
    assert peer.ledger.get("rx", "a") is not None


def test_indexed_invalid_tx_still_makes_a_later_copy_in_the_block_a_duplicate(
    peer: Peer, net: Net
) -> None:
    # unchanged behaviour: an id that enters the index (here: policy failure) blocks the rest
    header = peer.kit.header(net.doctor)
    weak = _tx(peer, net, header, endorsers=[net.peer_h01])
    strong = _tx(peer, net, header)
    assert _commit(peer, net, [weak, strong]) == [tx_pb.ENDORSEMENT_POLICY_FAILURE, tx_pb.DUPLICATE_TXID]
    assert _commit(peer, net, [strong]) == [tx_pb.DUPLICATE_TXID]


def test_rwset_writing_a_key_twice_or_a_namespace_twice_is_bad_rwset(peer: Peer, net: Net) -> None:
    kit = peer.kit
    twice_key = _tx(peer, net, kit.header(net.doctor),
                    rwsets=[RwSpec("rx", writes=[("k", b"A"), ("k", b"B")])])
    twice_delete = _tx(peer, net, kit.header(net.doctor),
                       rwsets=[RwSpec("rx", writes=[("k", b"A"), ("k", None)])])
    twice_ns = _tx(peer, net, kit.header(net.doctor),
                   rwsets=[RwSpec("rx", writes=[("k", b"A")]), RwSpec("rx", writes=[("k", b"B")])])
    twice_ns_reads = _tx(peer, net, kit.header(net.doctor),
                         rwsets=[RwSpec("rx", writes=[("k", b"A")]), RwSpec("rx", reads=[("j", None)])])
    honest = _tx(peer, net, kit.header(net.doctor),
                 rwsets=[RwSpec("other", reads=[("x", None)]),
                         RwSpec("rx", reads=[("k", None)], writes=[("k", b"A"), ("m", None)])])
    assert _commit(peer, net, [twice_key, twice_delete, twice_ns, twice_ns_reads, honest]) == [
        tx_pb.BAD_RWSET, tx_pb.BAD_RWSET, tx_pb.BAD_RWSET, tx_pb.BAD_RWSET, VALID,
    ]
    vv = peer.ledger.get("rx", "k")
    assert vv is not None and vv.value == b"A"


def test_event_naming_another_contract_or_tx_is_bad_payload(peer: Peer, net: Net) -> None:
    kit = peer.kit
    h1, h2, h3 = kit.header(net.doctor), kit.header(net.doctor), kit.header(net.doctor)
    other_contract = _tx(peer, net, h1, events=[
        tx_pb.ContractEvent(contract="settlement", name="paid", payload=b"{}", tx_id=_tx_id(h1))])
    other_tx = _tx(peer, net, h2, events=[
        tx_pb.ContractEvent(contract="rx", name="issued", payload=b"{}", tx_id=_tx_id(h1))])
    honest = _tx(peer, net, h3, events=[
        tx_pb.ContractEvent(contract="rx", name="issued", payload=b"{}", tx_id=_tx_id(h3))])
    assert _commit(peer, net, [other_contract, other_tx, honest]) == [
        tx_pb.BAD_PAYLOAD, tx_pb.BAD_PAYLOAD, VALID,
    ]


class _OneBlockLedger:
    """A HistoryLedger holding one block whose tx 0 wrote ``rx/k`` twice (an old ledger)."""

    def __init__(self, block: block_pb2.Block) -> None:
        self._block = block

    def history(self, ns: str, key: str, limit: int = 0, start: int = 0) -> list[LedgerHistoryEntry]:
        return [LedgerHistoryEntry(1, 0, "t", 5, False)][start:] if (ns, key) == ("rx", "k") else []

    def block(self, number: int) -> block_pb2.Block:
        assert number == 1
        return self._block


def test_history_value_is_the_last_write_of_the_key_in_its_tx(peer: Peer, net: Net) -> None:
    env = _tx(peer, net, peer.kit.header(net.doctor),
              rwsets=[RwSpec("rx", writes=[("k", b"A"), ("k", b"B")])])
    block = make_block(1, b"\0" * 32, [env], [net.orderer1])
    entries = LedgerHistory(_OneBlockLedger(block), max_block=1)("rx", "k", 0)
    assert [e.value for e in entries] == [b"B"]  # what the state applied (rwset_writes order)


class _LongHistoryLedger:
    """A key written once in each of blocks 1..n; records how many entries were asked for."""

    def __init__(self, n: int, block: block_pb2.Block) -> None:
        self.n = n
        self.asked: list[int] = []
        self._block = block

    def history(self, ns: str, key: str, limit: int = 0, start: int = 0) -> list[LedgerHistoryEntry]:
        self.asked.append(limit)
        count = self.n - start if limit == 0 else min(limit, self.n - start)
        return [LedgerHistoryEntry(b, 0, f"t{b}", b, False) for b in range(start + 1, start + count + 1)]

    def block(self, number: int) -> block_pb2.Block:
        return self._block


def test_history_reads_no_more_index_entries_than_it_answers(peer: Peer, net: Net) -> None:
    env = _tx(peer, net, peer.kit.header(net.doctor), rwsets=[RwSpec("rx", writes=[("k", b"v")])])
    ledger = _LongHistoryLedger(100_000, make_block(1, b"\0" * 32, [env], [net.orderer1]))
    entries = LedgerHistory(ledger, max_block=50)("rx", "k", 3)
    assert [(e.block, e.value) for e in entries] == [(1, b"v"), (2, b"v"), (3, b"v")]
    assert ledger.asked == [3]
    assert [e.block for e in LedgerHistory(ledger, max_block=2)("rx", "k", 0)] == [1, 2]
    assert ledger.asked[-1] == 1000  # limit 0 means the MAX_HISTORY bound


class _RecordingState:
    """The committed state, recording the ``limit`` of every range read."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self.limits: list[int] = []

    def get(self, ns: str, key: str) -> VersionedValue | None:
        return self.db.get(ns, key)

    def get_version(self, ns: str, key: str) -> Version | None:
        return self.db.get_version(ns, key)

    def has_tx(self, tx_id: str) -> bool:
        return self.db.has_tx(tx_id)

    def range(self, ns: str, start: str, end: str, limit: int = 0,
              max_bytes: int = 0) -> list[tuple[str, VersionedValue]]:
        self.limits.append(limit)
        return self.db.range(ns, start, end, limit, max_bytes)


def test_exhausted_range_check_reads_at_most_one_key_more_than_the_tx_saw(peer: Peer, net: Net) -> None:
    # 50 keys committed in r/..., a tx claiming it saw only the first one of [r/, r/~)
    fill = _tx(peer, net, peer.kit.header(net.doctor),
               rwsets=[RwSpec("rx", writes=[(f"r/{i:03d}", b"v") for i in range(50)])])
    assert _commit(peer, net, [fill]) == [VALID]
    state = _RecordingState(peer.ledger.state)
    config = peer.ledger.current_config()
    assert config is not None
    validator = Validator(state, config, Verifier(), peer.policies)
    phantom = _tx(peer, net, peer.kit.header(net.doctor), rwsets=[
        RwSpec("rx", ranges=[("r/", "r/~", True, [("r/000", (1, 0))])], writes=[("x", b"1")])])
    exact = _tx(peer, net, peer.kit.header(net.doctor), rwsets=[
        RwSpec("rx", ranges=[("r/04", "r/~", True, [(f"r/{i:03d}", (1, 0)) for i in range(40, 50)])])])
    block = make_block(2, peer.ledger.blocks.last_hash(), [phantom, exact], [net.orderer1])
    vb = validator.validate(block, 2, peer.ledger.blocks.last_hash())
    assert vb.codes == [tx_pb.PHANTOM_READ_CONFLICT, VALID]
    assert state.limits == [2, 11]  # not the 50 keys of the namespace


_KEYS = st.text(alphabet="ab\u00e9\U0001f600", max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    writes=st.lists(_KEYS, max_size=200),
    queries=st.lists(st.tuples(_KEYS, st.one_of(st.none(), _KEYS), st.booleans()), max_size=20),
)
def test_written_keys_answers_like_a_scan_of_every_key(
    writes: list[str], queries: list[tuple[str, str | None, bool]]
) -> None:
    w = WrittenKeys()
    seen: list[str] = []
    for i, key in enumerate(writes):
        w.add(key)
        seen.append(key)
        for start, end, inclusive in queries if i % 37 == 0 else ():
            naive = any(k >= start and (end is None or k < end or (inclusive and k == end)) for k in seen)
            assert w.any_in(start, end, inclusive_end=inclusive) == naive
        assert key in w
    for start, end, inclusive in queries:
        naive = any(k >= start and (end is None or k < end or (inclusive and k == end)) for k in seen)
        assert w.any_in(start, end, inclusive_end=inclusive) == naive
    assert ("zz" in w) == ("zz" in seen)


def test_orderer_signature_check_stops_at_the_quorum(peer: Peer, net: Net) -> None:
    config = peer.ledger.current_config()
    assert config is not None
    verifier = CountingVerifier()
    validator = Validator(peer.ledger.state, config, verifier, peer.policies)
    block = make_block(1, peer.ledger.blocks.last_hash(), [], [net.orderer1])
    padding = block.metadata.orderer_signatures[0]
    for _ in range(500):  # a compromised orderer pads the block with bad signatures
        bad = block.metadata.orderer_signatures.add()
        bad.signer.CopyFrom(net.orderer2.identity)
        bad.signature = padding.signature
    validator.check_block(block, 1, peer.ledger.blocks.last_hash())
    assert verifier.calls == 1
    del block.metadata.orderer_signatures[0]  # without the good one: every entry is tried, refused
    with pytest.raises(RxError) as e:
        validator.check_block(block, 1, peer.ledger.blocks.last_hash())
    assert e.value.reason == "BAD_ORDERER_SIGNATURE"


class _NestedDefinitionState(_RecordingState):
    """The committed state, except that ``definition/rx`` holds JSON nested 100k deep."""

    def get(self, ns: str, key: str) -> VersionedValue | None:
        if (ns, key) == (LIFECYCLE_NS, "definition/rx"):
            return VersionedValue(b"[" * 100_000, Version(1, 0))
        return self.db.get(ns, key)


def test_definition_too_deeply_nested_to_decode_is_unknown_contract(peer: Peer, net: Net) -> None:
    config = peer.ledger.current_config()
    assert config is not None
    validator = Validator(_NestedDefinitionState(peer.ledger.state), config, Verifier(),
                          LifecyclePolicies())
    block = make_block(1, peer.ledger.blocks.last_hash(), [_tx(peer, net, peer.kit.header(net.doctor))],
                       [net.orderer1])
    assert validator.validate(block, 1, peer.ledger.blocks.last_hash()).codes == [tx_pb.UNKNOWN_CONTRACT]
