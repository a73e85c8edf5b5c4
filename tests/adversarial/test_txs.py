"""Transaction-level attacks: replays, endorsements copied from another tx, too few
endorsements, operations reserved for another role or organisation (on ``rxload`` and on the
real prescription / settlement / registry contracts), oversized envelopes."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from client.errors import RxClientError
from client.gateway import Gateway
from node.crypto.canonical import proposal_hash
from node.crypto.signing import Purpose, load_signer
from tests.adversarial.support import AdvNet, Case, CaseTable, iter_blocks_txs, rpc_reason
from tests.harness.rpc import channel

pytestmark = pytest.mark.integration

_CODE = transaction_pb2.TxValidationCode


def _state(adv: AdvNet, key: str) -> Any:
    with adv.gateway("h01", "admin") as gw:
        return gw.evaluate("rxload", "get", {"key": key})["value"]


def _issue(adv: AdvNet, rx_id: str) -> tuple[str, transaction_pb2.Envelope, int]:
    with adv.gateway("h01", "dr-test") as gw:
        built = gw.builder.proposal("rxload", "issue", {"rx_id": rx_id, "max_fills": 1, "medfee_fen": 100})
        endorsed = gw.endorse(built)
        env = gw.builder.envelope(built, endorsed.prepared_transaction)
        res = gw.submit_envelope(built.tx_id, env)
    return built.tx_id, env, res.block


def _broadcast(adv: AdvNet, env: transaction_pb2.Envelope) -> services_pb2.BroadcastResponse:
    with channel(adv.cons.target(adv.orderer()), adv.user_creds("h01", "dr-test")) as ch:
        return next(iter(services_pb2_grpc.AtomicBroadcastStub(ch).Broadcast(iter([env]), timeout=20)))


def _code_on_peers(adv: AdvNet, tx_id: str, since: int, want_blocks: int = 1, timeout_s: float = 15.0) -> list[int]:
    """Every validation code ``tx_id`` got on peer.h01 in blocks >= since (waits for it)."""
    import time
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [c for _, t, c in iter_blocks_txs(adv.blocks("peer.h01", since)) if t == tx_id]
        if len(codes) >= want_blocks or time.monotonic() > deadline:
            return codes
        time.sleep(0.2)


def _name(code: int) -> str:
    return _CODE.Name(_CODE.ValueType(code))


def _height(adv: AdvNet) -> int:
    return adv.snapshot()["peer.h01"][0]


def test_replayed_transaction(adv: AdvNet, case_table: CaseTable) -> None:
    tx_id, env, block = _issue(adv, "RX-replay")
    rx_before = _state(adv, "rx/RX-replay")
    # 1. straight to the orderer
    h = _height(adv)
    br = _broadcast(adv, env)
    # within the lookback after a leader change the orderer answers a resubmission with the block
    # it is already in (accepted, nothing ordered again); otherwise the copy is ordered and the
    # peers mark it DUPLICATE_TXID
    already = br.accepted and br.message == f"already ordered in block {block}"
    codes = _code_on_peers(adv, tx_id, h) if br.accepted and not already else []
    reason1 = br.reason if not br.accepted else "ALREADY_ORDERED" if already else ",".join(_name(c) for c in codes)
    # 2. through the gateway: Submit refuses a committed tx id at intake (DUPLICATE_TXID) and the
    # SDK reports the original commit (the client is never told of a second one)
    h2 = _height(adv)
    with adv.gateway("h01", "dr-test") as gw:
        try:
            told = gw.submit_envelope(tx_id, env)
            reason2 = f"told {told.code} block {told.block}"
        except RxClientError as exc:
            told = None
            reason2 = exc.reason
    replay_codes = _code_on_peers(adv, tx_id, h2) if told is not None else []
    if replay_codes:
        reason2 += " (replay ordered as " + ",".join(_name(c) for c in replay_codes) + ")"
    all_codes = [c for _, t, c in iter_blocks_txs(adv.blocks("peer.h01", 0)) if t == tx_id]
    case = case_table.add(Case("replayed transaction (orderer Broadcast, gateway Submit)", "orderer+peer.h01",
                               "refused at intake, answered already-ordered, or ordered as DUPLICATE_TXID",
                               outcome=f"broadcast: {reason1}; gateway: {reason2}; on chain: "
                                       f"{[_name(c) for c in all_codes]}", reason=reason1))
    case.nothing_written = _state(adv, "rx/RX-replay") == rx_before and all_codes.count(_CODE.Value("VALID")) == 1
    case.still_serving = adv.serving()
    assert all_codes.count(_CODE.Value("VALID")) == 1
    assert all(c in (_CODE.Value("VALID"), _CODE.Value("DUPLICATE_TXID")) for c in all_codes), all_codes
    assert reason1 in ("DUPLICATE_TXID", "ALREADY_ORDERED") or not br.accepted, (reason1, br.message)
    assert told is None or (told.block == block and replay_codes in ([], [_CODE.Value("DUPLICATE_TXID")])), reason2
    assert case.passed, case


def _forged_envelope(adv: AdvNet, rx_id: str, donor: transaction_pb2.Envelope, own_payload: bool) -> tuple[str, transaction_pb2.Envelope]:
    """A doctor's new tx carrying the donor tx's endorsements (and, unless ``own_payload``,
    the donor's endorsed response payload)."""
    donor_tx = transaction_pb2.Transaction.FromString(donor.payload)
    with adv.gateway("h01", "dr-test") as gw:
        built = gw.builder.proposal("rxload", "issue", {"rx_id": rx_id, "max_fills": 9, "medfee_fen": 1})
        if own_payload:
            rwset = transaction_pb2.TxRwSet(ns_rwsets=[transaction_pb2.NsRwSet(
                namespace="rxload", writes=[transaction_pb2.KVWrite(key=f"rx/{rx_id}", value=b'{"forged":true}')])])
            prp = transaction_pb2.ProposalResponsePayload.FromString(donor_tx.response_payload)
            prp.results = rwset.SerializeToString()
            prp.proposal_hash = proposal_hash(built.header_bytes, built.invocation_bytes)  # bound to the new tx
            response_payload = prp.SerializeToString()
        else:
            response_payload = donor_tx.response_payload
        tx = transaction_pb2.Transaction(header=built.header_bytes, invocation=built.invocation_bytes,
                                         response_payload=response_payload, endorsements=donor_tx.endorsements)
        payload = tx.SerializeToString()
        return built.tx_id, transaction_pb2.Envelope(payload=payload, signature=gw.builder.signer.sign(Purpose.ENVELOPE, payload))


@pytest.mark.parametrize("variant", ["donor payload and endorsements", "own writes, donor endorsements"])
def test_endorsements_copied_from_another_tx(adv: AdvNet, case_table: CaseTable, variant: str) -> None:
    slug = "own" if variant.startswith("own") else "donor"
    _, donor, _ = _issue(adv, f"RX-donor-{slug}")
    donor_state = _state(adv, f"rx/RX-donor-{slug}")
    rx_id = f"RX-copied-{slug}"
    tx_id, env = _forged_envelope(adv, rx_id, donor, own_payload=variant.startswith("own"))
    h = _height(adv)
    br = _broadcast(adv, env)
    codes = _code_on_peers(adv, tx_id, h) if br.accepted else []
    reason = br.reason if not br.accepted else ",".join(_name(c) for c in codes)
    case = case_table.add(Case(f"endorsements copied from another tx ({variant})", "orderer+peers",
                               "BAD_ENDORSEMENT / ENDORSEMENT_POLICY_FAILURE", outcome=f"accepted={br.accepted} "
                               f"codes={reason}", reason=reason))
    case.nothing_written = _state(adv, f"rx/{rx_id}") is None and _state(adv, f"rx/RX-donor-{slug}") == donor_state
    case.still_serving = adv.serving()
    assert codes and _CODE.Value("VALID") not in codes, reason
    assert reason in ("BAD_ENDORSEMENT", "ENDORSEMENT_POLICY_FAILURE", "BAD_PAYLOAD"), reason
    assert case.passed, case


def test_too_few_endorsements(adv: AdvNet, case_table: CaseTable) -> None:
    """A doctor collects one endorsement (the policy needs two) and submits anyway."""
    with adv.gateway("h01", "dr-test") as gw:
        built = gw.builder.proposal("rxload", "issue", {"rx_id": "RX-one-endorser", "max_fills": 1, "medfee_fen": 1})
    with channel(adv.cons.target("peer.h01"), adv.user_creds("h01", "dr-test")) as ch:
        pr = services_pb2_grpc.EndorserStub(ch).ProcessProposal(built.signed, timeout=10)
    assert pr.response.status == 200 and pr.endorsement.signature
    tx = transaction_pb2.Transaction(header=built.header_bytes, invocation=built.invocation_bytes,
                                     response_payload=pr.payload, endorsements=[pr.endorsement])
    with adv.gateway("h01", "dr-test") as gw:
        env = gw.builder.envelope(built, tx.SerializeToString())
        try:
            gw.submit_envelope(built.tx_id, env)
            reason = "VALID"
        except RxClientError as exc:
            reason = exc.reason
    case = case_table.add(Case("one endorsement where the policy needs two", "peers", "ENDORSEMENT_POLICY_FAILURE",
                               outcome=reason, reason=reason if reason != "VALID" else ""))
    case.nothing_written = _state(adv, "rx/RX-one-endorser") is None
    case.still_serving = adv.serving()
    assert reason == "ENDORSEMENT_POLICY_FAILURE"
    assert case.passed, case


@pytest.mark.parametrize("which", ["revoked_peer", "expired_peer"])
def test_endorsement_by_revoked_or_expired_node_certificate(adv: AdvNet, case_table: CaseTable, which: str) -> None:
    """peer.h01 endorses for real; the second endorsement (the policy needs two) is made with a
    revoked / expired h02 peer certificate over the very same payload."""
    rogue = getattr(adv.rogues, which)
    rx_id = f"RX-{which}"
    with adv.gateway("h01", "dr-test") as gw:
        built = gw.builder.proposal("rxload", "issue", {"rx_id": rx_id, "max_fills": 1, "medfee_fen": 1})
    with channel(adv.cons.target("peer.h01"), adv.user_creds("h01", "dr-test")) as ch:
        pr = services_pb2_grpc.EndorserStub(ch).ProcessProposal(built.signed, timeout=10)
    peer_signer = load_signer(rogue / "cert.pem", rogue / "key.pem", "h02")
    forged = transaction_pb2.Endorsement(endorser=peer_signer.identity, signature=peer_signer.sign(Purpose.ENDORSEMENT, pr.payload))
    tx = transaction_pb2.Transaction(header=built.header_bytes, invocation=built.invocation_bytes,
                                     response_payload=pr.payload, endorsements=[pr.endorsement, forged])
    with adv.gateway("h01", "dr-test") as gw:
        env = gw.builder.envelope(built, tx.SerializeToString())
        try:
            gw.submit_envelope(built.tx_id, env)
            reason = "VALID"
        except RxClientError as exc:
            reason = exc.reason
    case = case_table.add(Case(f"endorsement signed with a {which.replace('_', ' ')} certificate", "peers",
                               "BAD_ENDORSEMENT / ENDORSEMENT_POLICY_FAILURE", outcome=reason,
                               reason=reason if reason != "VALID" else ""))
    case.nothing_written = _state(adv, f"rx/{rx_id}") is None
    case.still_serving = adv.serving()
    assert reason in ("BAD_ENDORSEMENT", "ENDORSEMENT_POLICY_FAILURE"), reason
    assert case.passed, case


ROLE_CASES = [
    ("pharmacist issues a prescription", "p01", "pharm-test", "issue",
     {"rx_id": "RX-by-pharmacist", "max_fills": 1, "medfee_fen": 1}, "rx/RX-by-pharmacist"),
    ("patient settles a claim", "h01", "patient-test", "settle",
     {"rx_id": "RX-replay", "ratio_bp": 10000, "balance_fen": 0}, "claim/RX-replay"),
    ("doctor dispenses", "h01", "dr-test", "dispense", {"rx_id": "RX-replay"}, "disp/RX-replay/001"),
    ("insurer clerk issues a prescription", "ins01", "clerk-test", "issue",
     {"rx_id": "RX-by-clerk", "max_fills": 1, "medfee_fen": 1}, "rx/RX-by-clerk"),
]


@pytest.mark.parametrize("case_", ROLE_CASES, ids=[c[0] for c in ROLE_CASES])
def test_wrong_role_on_rxload(adv: AdvNet, case_table: CaseTable, case_: tuple[Any, ...]) -> None:
    title, org, user, fn, args, key = case_
    if fn != "issue":
        _issue_if_missing(adv, "RX-replay")
    before = adv.snapshot()
    with adv.gateway(org, user) as gw:
        try:
            gw.submit("rxload", fn, args)
            reason = ""
        except RxClientError as exc:
            reason = exc.reason
    case = case_table.add(Case(f"rxload: {title}", f"peer.{org}", "WRONG_ROLE", outcome=reason or "ACCEPTED",
                               reason=reason))
    case.nothing_written = adv.snapshot() == before and _state(adv, key) is None
    case.still_serving = adv.serving()
    assert reason == "WRONG_ROLE"
    assert case.passed, case


def _issue_if_missing(adv: AdvNet, rx_id: str) -> None:
    if _state(adv, f"rx/{rx_id}") is None:
        _issue(adv, rx_id)


def test_oversized_envelopes(adv: AdvNet, case_table: CaseTable) -> None:
    limits = adv.cons.net.config.limits
    before = adv.snapshot()
    big = transaction_pb2.Envelope(payload=b"\0" * (limits.max_envelope_bytes + 1), signature=b"s")
    br = _broadcast(adv, big)
    huge = transaction_pb2.Envelope(payload=b"\0" * (limits.max_message_bytes + 1024), signature=b"s")
    try:
        r2 = _broadcast(adv, huge)
        reason2 = r2.reason if not r2.accepted else "ACCEPTED"
    except grpc.RpcError as exc:
        reason2 = rpc_reason(exc)
    with channel(adv.cons.target("peer.h01"), adv.user_creds("h01", "dr-test")) as ch:
        try:
            services_pb2_grpc.GatewayStub(ch).Submit(services_pb2.SubmitRequest(envelope=huge), timeout=10)
            reason3 = "ACCEPTED"
        except grpc.RpcError as exc:
            reason3 = rpc_reason(exc)
    case = case_table.add(Case("oversized envelope (> max_envelope_bytes; > max_message_bytes)", "orderer+peer.h01",
                               "TOO_LARGE / RESOURCE_EXHAUSTED", outcome=f"{br.reason}; {reason2}; {reason3}",
                               reason=br.reason))
    case.nothing_written = adv.snapshot() == before
    case.still_serving = adv.serving()
    assert not br.accepted and br.reason == "TOO_LARGE"
    assert reason2 in ("TOO_LARGE", "grpc:RESOURCE_EXHAUSTED") and reason3 in ("TOO_LARGE", "grpc:RESOURCE_EXHAUSTED")
    assert case.passed, case


def test_sdk_reports_reason_codes(adv: AdvNet) -> None:
    """Sanity: the refusal path used above is the SDK's typed error (not a generic failure)."""
    with adv.gateway("p01", "pharm-test") as gw:
        assert isinstance(gw, Gateway)
        with pytest.raises(RxClientError) as info:
            gw.submit("rxload", "issue", {"rx_id": "RX-sdk2", "max_fills": 1, "medfee_fen": 1})
    assert info.value.reason == "WRONG_ROLE"
