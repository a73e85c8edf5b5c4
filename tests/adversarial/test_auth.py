"""Who may talk to the nodes: no client certificate, a CA outside the consortium, an expired
or revoked certificate, a non-orderer speaking Raft. Each refused with a reason code, nothing
written, every node still serving."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from rxchain.v1 import raft_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from client.errors import RxClientError
from node.crypto.canonical import compute_tx_id
from node.crypto.signing import Purpose, Signer, load_signer
from node.errors import reason_from_rpc_error
from node.raft.types import MessageType
from tests.adversarial.support import (
    AdvNet,
    Case,
    CaseTable,
    foreign_channel,
    no_client_cert_channel,
    rpc_reason,
)
from tests.harness.rpc import channel

pytestmark = pytest.mark.integration

TLS_REFUSED = {"SERVICE_UNAVAILABLE", "grpc:UNAVAILABLE", "UNAUTHENTICATED", "grpc:UNAUTHENTICATED"}


def _health(ch: grpc.Channel) -> str:
    try:
        services_pb2_grpc.AdminStub(ch).Health(services_pb2.HealthRequest(), timeout=5)
    except grpc.RpcError as exc:
        return rpc_reason(exc)
    return ""


def _bare_envelope(signer: Signer, consortium_id: str, nonce: bytes = b"n" * 24,
                   timestamp_ms: int | None = None) -> transaction_pb2.Envelope:
    """A well-formed INVOKE envelope signed by ``signer`` (no endorsements: the creator check comes first),
    stamped now unless ``timestamp_ms`` is given (the orderer bounds the skew from its clock)."""
    header = transaction_pb2.TxHeader(
        tx_id=compute_tx_id(nonce, signer.identity), type=transaction_pb2.INVOKE, creator=signer.identity,
        nonce=nonce, timestamp_ms=int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        consortium_id=consortium_id).SerializeToString()
    inv = transaction_pb2.ContractInvocation(contract="rxload", function="issue", args_json=b"{}").SerializeToString()
    payload = transaction_pb2.Transaction(header=header, invocation=inv).SerializeToString()
    return transaction_pb2.Envelope(payload=payload, signature=signer.sign(Purpose.ENVELOPE, payload))


def _broadcast(adv: AdvNet, env: transaction_pb2.Envelope) -> services_pb2.BroadcastResponse:
    with channel(adv.cons.target(adv.orderer()), adv.user_creds("h01", "admin")) as ch:
        stub = services_pb2_grpc.AtomicBroadcastStub(ch)
        return next(iter(stub.Broadcast(iter([env]), timeout=15)))


@pytest.mark.parametrize("who", ["no client certificate", "certificate from a CA outside the consortium",
                                 "expired certificate (real CA)"])
@pytest.mark.parametrize("node", ["peer", "orderer"])
def test_tls_refuses_strangers(adv: AdvNet, case_table: CaseTable, who: str, node: str) -> None:
    target_name = adv.peer("h01") if node == "peer" else adv.orderer()
    target = adv.cons.target(target_name)
    before = adv.snapshot()
    bundle = adv.cons.net.ca_bundle_path
    if who.startswith("no client"):
        ch = no_client_cert_channel(target, bundle)
    elif who.startswith("certificate from"):
        ch = foreign_channel(target, adv.rogues.foreign, bundle)
    else:
        ch = foreign_channel(target, adv.rogues.expired, bundle)
    with ch:
        reason = _health(ch)
        try:
            services_pb2_grpc.GatewayStub(ch).Evaluate(services_pb2.EvaluateRequest(), timeout=5) if node == "peer" \
                else next(iter(services_pb2_grpc.AtomicBroadcastStub(ch).Broadcast(iter([]), timeout=5)), None)
            second = ""
        except grpc.RpcError as exc:
            second = rpc_reason(exc)
    case = case_table.add(Case(f"TLS connection with {who}", target_name, "handshake refused", reason=reason,
                               outcome=f"health: {reason or 'ANSWERED'}; service: {second or 'ANSWERED'}"))
    case.nothing_written = adv.snapshot() == before
    case.still_serving = adv.serving()
    assert reason in TLS_REFUSED and second in TLS_REFUSED, case
    assert case.passed, case


@pytest.mark.parametrize("who", ["revoked", "expired", "foreign"])
def test_rogue_creator_inside_valid_tls(adv: AdvNet, case_table: CaseTable, who: str) -> None:
    """The connection is a valid member's; the proposal/envelope is signed by the rogue."""
    rogue_dir = getattr(adv.rogues, who)
    expected = {"revoked": {"REVOKED_CERT"}, "expired": {"EXPIRED_CERT"}, "foreign": {"UNKNOWN_CREATOR"}}[who]
    before = adv.snapshot()
    builder = adv.builder_from(rogue_dir, "h01")
    built = builder.proposal("rxload", "issue", {"rx_id": f"RX-{who}", "max_fills": 1, "medfee_fen": 100})
    with channel(adv.cons.target(adv.peer("h01")), adv.user_creds("h01", "admin")) as ch:
        stub = services_pb2_grpc.GatewayStub(ch)
        reasons = []
        for call in (lambda: stub.Evaluate(services_pb2.EvaluateRequest(proposal=built.signed), timeout=10),
                     lambda: stub.Endorse(services_pb2.EndorseRequest(proposal=built.signed), timeout=10),
                     lambda: services_pb2_grpc.EndorserStub(ch).ProcessProposal(built.signed, timeout=10)):
            try:
                resp = call()
                reasons.append(f"ANSWERED:{getattr(resp, 'response', resp)}"[:60])
            except grpc.RpcError as exc:
                reasons.append(rpc_reason(exc))
    env = _bare_envelope(load_signer(rogue_dir / "cert.pem", rogue_dir / "key.pem", "h01"),
                         adv.cons.net.config.consortium_id)
    br = _broadcast(adv, env)
    case = case_table.add(Case(f"{who} certificate signs proposal/envelope", "peer.h01+orderer",
                               f"{'/'.join(expected)} at gateway, endorser and orderer",
                               outcome=f"evaluate/endorse/endorser: {reasons}; broadcast: accepted={br.accepted} "
                                       f"{br.reason}: {br.message[:60]}",
                               reason=reasons[1] if not br.accepted else ""))
    case.nothing_written = adv.snapshot() == before
    case.still_serving = adv.serving()
    assert all(r in expected for r in reasons), case
    assert not br.accepted and br.reason == "UNKNOWN_CREATOR" and any(e in br.message for e in expected), case
    assert case.passed, case


@pytest.mark.parametrize("shift_days", [-390, 390])
def test_backdated_or_future_envelope_is_refused_by_the_orderer(
        adv: AdvNet, case_table: CaseTable, shift_days: int) -> None:
    """Peers check the creator's and endorsers' certificates at the header's timestamp, so a
    backdated envelope could reach back into the validity of certificates that have since
    expired: the orderer refuses a timestamp beyond the consortium's clock skew."""
    before = adv.snapshot()
    member = adv.cons.net.user_dir("h01", "admin")
    signer = load_signer(member / "cert.pem", member / "key.pem", "h01")
    stamp = int(time.time() * 1000) + shift_days * 86_400_000
    br = _broadcast(adv, _bare_envelope(signer, adv.cons.net.config.consortium_id,
                                        nonce=f"skew{shift_days}".encode().ljust(24, b"."), timestamp_ms=stamp))
    case = case_table.add(Case(f"envelope stamped {shift_days} days from now", adv.orderer(), "CLOCK_SKEW",
                               reason=br.reason, outcome=f"accepted={br.accepted} {br.reason}: {br.message[:60]}"))
    case.nothing_written = adv.snapshot() == before
    case.still_serving = adv.serving()
    assert not br.accepted and br.reason == "CLOCK_SKEW", case
    assert case.passed, case


def test_non_orderer_speaking_raft(adv: AdvNet, case_table: CaseTable) -> None:
    orderer = adv.orderer()
    before = adv.snapshot()
    term_before = before[orderer]
    # a peer's (valid member) certificate, a well-formed vote request claiming raft id 2
    payload = raft_pb2.RaftMessage(type=int(MessageType.VOTE), to=1, term=999, log_term=999,
                                   index=10**6).SerializeToString()
    setattr_from = raft_pb2.RaftMessage.FromString(payload)
    assert setattr_from.term == 999
    reasons = []
    for creds in (adv.cons.node_creds("peer.h01"), adv.user_creds("ins01", "admin")):
        with channel(adv.cons.target(orderer), creds) as ch:
            stub = services_pb2_grpc.ClusterStub(ch)
            try:
                stub.Step(iter([services_pb2.ConsensusRequest(from_id=2, payload=payload)] * 3), timeout=10)
                reasons.append("ACCEPTED")
            except grpc.RpcError as exc:
                reasons.append(rpc_reason(exc))
            try:
                list(stub.Forward(iter([transaction_pb2.Envelope(payload=b"x")]), timeout=10))
                reasons.append("ACCEPTED")
            except grpc.RpcError as exc:
                reasons.append(rpc_reason(exc))
    after = adv.snapshot()
    case = case_table.add(Case("non-orderer on Cluster.Step/Forward (peer cert, insurer admin)", orderer,
                               "NOT_AN_ORDERER", outcome=str(reasons), reason=reasons[0]))
    case.nothing_written = after == before and after[orderer] == term_before
    case.still_serving = adv.serving()
    assert all(r == "NOT_AN_ORDERER" for r in reasons), case
    assert case.passed, case


def test_rogue_identity_at_sdk_level(adv: AdvNet) -> None:
    """The SDK surfaces the refusal as a typed error with the reason code."""
    from client.gateway import Gateway
    from client.wallet import load_identity_dir

    ident = load_identity_dir(adv.cons.net.user_dir("h01", "admin"), adv.cons.net.ca_bundle_path, "h01", "admin")
    with Gateway(ident, adv.cons.target("peer.h01"), adv.cons.net.config.consortium_id) as gw:
        gw.builder = adv.builder_from(adv.rogues.revoked, "h01")
        with pytest.raises(RxClientError) as info:
            gw.submit("rxload", "issue", {"rx_id": "RX-sdk", "max_fills": 1, "medfee_fen": 1})
    assert info.value.reason == "REVOKED_CERT"


def _read_calls(ch: grpc.Channel, tx_id: str) -> dict[str, Callable[[], object]]:
    """The peer's reads that carry no signed request: each checks the TLS certificate."""
    gw = services_pb2_grpc.GatewayStub(ch)
    return {
        "PeerDeliver.Deliver": lambda: list(services_pb2_grpc.PeerDeliverStub(ch).Deliver(
            services_pb2.DeliverRequest(start_block=0, follow=False), timeout=10)),
        "Gateway.Events": lambda: list(gw.Events(services_pb2.EventsRequest(start_block=0, follow=False),
                                                 timeout=10)),
        "Gateway.CommitStatus": lambda: gw.CommitStatus(services_pb2.CommitStatusRequest(tx_id=tx_id, timeout_ms=100),
                                                        timeout=10),
        "Admin.Status": lambda: services_pb2_grpc.AdminStub(ch).Status(services_pb2.StatusRequest(), timeout=10),
    }


def _outcome(call: Callable[[], object]) -> str:
    """"SERVED", or the refusal as "STATUS/REASON"."""
    try:
        call()
        return "SERVED"
    except grpc.RpcError as exc:
        return f"{exc.code().name}/{reason_from_rpc_error(exc)}"


def _chain_reads(adv: AdvNet, member: Path) -> dict[str, str]:
    """The outcome of each unsigned read of the chain (peer and orderer) for the certificate in
    ``member`` (a directory with cert.pem and key.pem)."""
    with foreign_channel(adv.cons.target(adv.peer("h01")), member, adv.cons.net.ca_bundle_path) as ch:
        outcomes = {name: _outcome(call) for name, call in _read_calls(ch, adv.lifecycle_tx_ids[0]).items()}
    with foreign_channel(adv.cons.target(adv.orderer()), member, adv.cons.net.ca_bundle_path) as ch:
        outcomes["AtomicBroadcast.Deliver"] = _outcome(lambda: list(services_pb2_grpc.AtomicBroadcastStub(ch).Deliver(
            services_pb2.DeliverRequest(start_block=0, stop_block=1), timeout=10)))
        outcomes["orderer Admin.Status"] = _outcome(
            lambda: services_pb2_grpc.AdminStub(ch).Status(services_pb2.StatusRequest(), timeout=10))
    return outcomes


@pytest.mark.parametrize("who", ["revoked", "revoked_peer"])
def test_revoked_member_cannot_read_the_chain(adv: AdvNet, case_table: CaseTable, who: str) -> None:
    """A certificate its CA issued but the configuration revokes passes the mTLS handshake;
    PeerDeliver, Events, CommitStatus and Status refuse it with REVOKED_CERT (in the
    ``rxchain-reason`` metadata), as the orderer's Deliver and Status do. A valid member still reads."""
    rogue = getattr(adv.rogues, who)
    peer = adv.peer("h01")
    tx_id = adv.lifecycle_tx_ids[0]
    before = adv.snapshot()
    outcomes = _chain_reads(adv, rogue)
    with channel(adv.cons.target(peer), adv.user_creds("h01", "dr-test")) as ch:
        for call in _read_calls(ch, tx_id).values():
            call()  # a valid member: served
    case = case_table.add(Case(f"{who} certificate reads blocks/events/status", f"{peer}+orderer",
                               "REVOKED_CERT", outcome=str(outcomes), reason=next(iter(outcomes.values()))))
    case.nothing_written = adv.snapshot() == before
    case.still_serving = adv.serving()
    assert set(outcomes.values()) == {"PERMISSION_DENIED/REVOKED_CERT"}, outcomes
    assert case.passed, case


def test_cluster_refusals_carry_the_reason_metadata(adv: AdvNet) -> None:
    """NOT_AN_ORDERER travels as ``rxchain-reason`` metadata (not only in the details text)
    on Cluster.Step, Cluster.Forward and Cluster.ForwardBatch."""
    reasons: dict[str, str] = {}
    with channel(adv.cons.target(adv.orderer()), adv.cons.node_creds("peer.h01")) as ch:
        stub = services_pb2_grpc.ClusterStub(ch)
        calls: dict[str, Callable[[], object]] = {
            "Step": lambda: stub.Step(iter([services_pb2.ConsensusRequest(from_id=2, payload=b"")]), timeout=10),
            "Forward": lambda: list(stub.Forward(iter([transaction_pb2.Envelope(payload=b"x")]), timeout=10)),
            "ForwardBatch": lambda: list(ch.stream_stream("/rxchain.v1.Cluster/ForwardBatch", None, None)(
                iter([services_pb2.EnvelopeBatch().SerializeToString()]), timeout=10)),
        }
        for name, call in calls.items():
            try:
                call()
                reasons[name] = "ACCEPTED"
            except grpc.RpcError as exc:
                reasons[name] = f"{exc.code().name}/{reason_from_rpc_error(exc)}"
    assert set(reasons.values()) == {"PERMISSION_DENIED/NOT_AN_ORDERER"}, reasons


def _h01_patient(adv: AdvNet, directory: Path) -> Path:
    """A wallet directory holding a patient certificate (valid, of h01's CA) and its key."""
    import datetime as dt

    from cryptography import x509 as cx509

    from node.crypto import signing
    from node.crypto import x509 as rx509
    from tests.adversarial.support import _write_member

    ca_dir = adv.cons.home / "orgs" / "h01"
    ca_cert = cx509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    key = signing.generate_key()
    cert = rx509.issue_cert(ca_cert, signing.load_private_key((ca_dir / "ca.key").read_bytes()), key.public_key(),
                            org="h01", role="patient", name="pt-reader", now=dt.datetime.now(dt.UTC),
                            hosts=("127.0.0.1", "localhost"))
    return _write_member(directory, cert, key)


def test_a_patient_certificate_cannot_stream_blocks(adv: AdvNet, case_table: CaseTable, tmp_path: Path) -> None:
    """Blocks carry every patient's pseudonym, ciphertexts and wrapped keys: a patient's
    certificate (valid, of her hospital's CA) is refused WRONG_ROLE by the peer's and the
    orderer's Deliver, while CommitStatus, Events and Status -- what her device follows her
    own transactions with -- still serve it."""
    patient = _h01_patient(adv, tmp_path / "patient")
    before = adv.snapshot()
    outcomes = _chain_reads(adv, patient)
    case = case_table.add(Case("patient certificate streams blocks", "peer+orderer Deliver", "WRONG_ROLE",
                               outcome=str(outcomes), reason=outcomes["PeerDeliver.Deliver"]))
    case.nothing_written = adv.snapshot() == before
    case.still_serving = adv.serving()
    assert outcomes == {"PeerDeliver.Deliver": "PERMISSION_DENIED/WRONG_ROLE",
                        "AtomicBroadcast.Deliver": "PERMISSION_DENIED/WRONG_ROLE",
                        "Gateway.Events": "SERVED", "Gateway.CommitStatus": "SERVED", "Admin.Status": "SERVED",
                        "orderer Admin.Status": "SERVED"}, outcomes
    assert case.passed, case


def test_a_patient_certificates_events_name_no_other_members_transactions(adv: AdvNet, tmp_path: Path) -> None:
    """Over mTLS, the peer serves a patient's certificate every block's events message but
    only the transactions it created (none here: not the admins' lifecycle transactions, nor
    their contract events), marked ``caller_txs_only``; a doctor's certificate is served them
    all. Before, the patient was served every member's tx ids and events."""
    req = services_pb2.EventsRequest(start_block=0, follow=False)
    with foreign_channel(adv.cons.target(adv.peer("h01")), _h01_patient(adv, tmp_path / "patient"),
                         adv.cons.net.ca_bundle_path) as ch:
        mine = list(services_pb2_grpc.GatewayStub(ch).Events(req, timeout=10))
    with channel(adv.cons.target(adv.peer("h01")), adv.user_creds("h01", "dr-test")) as ch:
        full = list(services_pb2_grpc.GatewayStub(ch).Events(req, timeout=10))
    assert set(adv.lifecycle_tx_ids) <= {t.tx_id for m in full for t in m.txs}
    assert [(list(m.txs), list(m.events)) for m in mine] == [([], [])] * len(mine)
    assert [m.block_number for m in mine] == [m.block_number for m in full[:len(mine)]]
    assert mine and all(m.caller_txs_only for m in mine)
    assert not any(m.caller_txs_only for m in full)
