"""Red team: what the SDK tells its caller about a submitted transaction.

A definite failure invites the caller to propose the call again (a second prescription, a
second claim payment), so it may only be reported when the tx cannot commit; otherwise the
answer is CommitUnknown with the tx id.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2
from rxchain.v1.identity_pb2 import ErrorDetail

from client.errors import CommitError, CommitUnknown, EndorsementError, RxClientError
from client.gateway import Gateway, RetryPolicy, SubmitResult
from client.pipeline import Call, submit_many
from client.wallet import load_identity
from node.crypto.canonical import proposal_hash
from node.errors import RxError, abort_with
from tests.client.offline import offline_home


@dataclass
class Script:
    submits: list[str] = field(default_factory=list)  # per Submit call: "" ok, "UNAVAILABLE", or a reason
    submit_error: str = ""  # the TransactBatch answer to every submit ("" = committed VALID)
    status_code: int = transaction_pb2.VALID  # what CommitStatus answers
    status_reason: str = ""  # CommitStatus aborts with this reason instead
    calls: list[str] = field(default_factory=list)


def _prepared(request: services_pb2.EndorseRequest) -> services_pb2.EndorseResponse:
    prop = transaction_pb2.Proposal.FromString(request.proposal.proposal_bytes)
    header = transaction_pb2.TxHeader.FromString(prop.header)
    result = transaction_pb2.Response(status=200, payload=b'{"ok":true}')
    prp = transaction_pb2.ProposalResponsePayload(proposal_hash=proposal_hash(prop.header, prop.invocation),
                                                  response=result)
    tx = transaction_pb2.Transaction(header=prop.header, invocation=prop.invocation,
                                     response_payload=prp.SerializeToString())
    tx.endorsements.add(signature=b"sig")
    return services_pb2.EndorseResponse(prepared_transaction=tx.SerializeToString(), tx_id=header.tx_id,
                                        result=result)


class Gw(services_pb2_grpc.GatewayServicer):
    def __init__(self, script: Script) -> None:
        self.s = script

    def Evaluate(self, request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served by this fake")

    def Events(self, request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served by this fake")

    def Transact(self, request_iterator: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served by this fake")

    def Endorse(self, request: Any, context: Any) -> services_pb2.EndorseResponse:
        self.s.calls.append("Endorse")
        return _prepared(request)

    def Submit(self, request: Any, context: Any) -> services_pb2.SubmitResponse:
        self.s.calls.append("Submit")
        what = self.s.submits.pop(0) if self.s.submits else ""
        if what == "UNAVAILABLE":  # the call broke in transit (the envelope may have gone on)
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        if what:
            abort_with(context, RxError(what, "as scripted"))
        return services_pb2.SubmitResponse()

    def CommitStatus(self, request: Any, context: Any) -> services_pb2.CommitStatusResponse:
        self.s.calls.append(f"CommitStatus:{request.timeout_ms}")
        if self.s.status_reason:
            abort_with(context, RxError(self.s.status_reason, "as scripted"))
        return services_pb2.CommitStatusResponse(tx_id=request.tx_id, code=self.s.status_code,  # type: ignore[arg-type]
                                                 block_number=9)

    def TransactBatch(self, request_iterator: Any, context: Any) -> Iterator[services_pb2.TransactBatchResponse]:
        for msg in request_iterator:
            out = []
            for req in msg.requests:
                cid = req.correlation_id
                if req.WhichOneof("kind") == "endorse":
                    out.append(services_pb2.TransactResponse(correlation_id=cid, endorsed=_prepared(req.endorse)))
                elif self.s.submit_error:
                    out.append(services_pb2.TransactResponse(correlation_id=cid, error=ErrorDetail(
                        reason=self.s.submit_error, message="as the gateway said")))
                else:
                    out.append(services_pb2.TransactResponse(correlation_id=cid, committed=services_pb2.CommitStatusResponse(
                        code=transaction_pb2.VALID, block_number=4)))
            yield services_pb2.TransactBatchResponse(responses=out)


@pytest.fixture
def fake(net_home: Any) -> Iterator[tuple[Script, Gateway]]:
    script = Script()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    services_pb2_grpc.add_GatewayServicer_to_server(Gw(script), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ident = load_identity(net_home.home, "h01", "dr-jiang")
    gw = Gateway(ident, f"127.0.0.1:{port}", "client-test", channel=grpc.insecure_channel(f"127.0.0.1:{port}"),
                 retry=RetryPolicy(attempts=4, base_delay_s=0.01), sleep=lambda _: None)
    try:
        yield script, gw
    finally:
        gw.close()
        server.stop(0)


def _tx_id_of(envelope: Any) -> str:
    assert isinstance(envelope, transaction_pb2.Envelope)
    tx = transaction_pb2.Transaction.FromString(envelope.payload)
    return str(transaction_pb2.TxHeader.FromString(tx.header).tx_id)


def test_an_unknown_outcome_carries_the_envelope_to_submit_again(fake: Any) -> None:
    """Resubmitting after CommitUnknown: only the same signed envelope is safe (its tx id makes
    a second copy a DUPLICATE_TXID); Gateway.submit built it internally and dropped it."""
    script, gw = fake
    script.submits = ["TIMEOUT"]
    with pytest.raises(CommitUnknown) as e:
        gw.submit("prescription", "issue", {"rx_id": "RX-6"})
    assert _tx_id_of(e.value.envelope) == e.value.tx_id
    script.calls = []
    res = gw.submit_envelope(e.value.tx_id, e.value.envelope)
    assert (res.tx_id, res.code) == (e.value.tx_id, "VALID")
    assert script.calls == ["Submit", "CommitStatus:30000"]


@pytest.mark.parametrize("refusal", ["CLOCK_SKEW", "BAD_CONFIG_UPDATE", "UNKNOWN_CREATOR", "TOO_LARGE"])
def test_a_refused_submit_retry_after_a_broken_attempt_is_commit_unknown(fake: Any, refusal: str) -> None:
    """The first Submit broke in transit (UNAVAILABLE: the gateway may have forwarded it, the
    block may be cut); the SDK's retry is refused for a reason that could have gone the other
    way for the first copy. The SDK reported that refusal as a definite no."""
    script, gw = fake
    script.submits = ["UNAVAILABLE", refusal]
    with pytest.raises(CommitUnknown) as e:
        gw.submit("prescription", "issue", {"rx_id": "RX-1"})
    assert len(e.value.tx_id) == 64 and refusal in e.value.message
    assert script.calls == ["Endorse", "Submit", "Submit"]


def test_after_a_broken_attempt_a_refusal_of_the_bytes_stays_definite_and_a_duplicate_reports_the_commit(
        fake: Any) -> None:
    script, gw = fake
    script.submits = ["UNAVAILABLE", "BAD_SIGNATURE"]
    with pytest.raises(RxClientError) as e:
        gw.submit("prescription", "issue", {"rx_id": "RX-1"})
    assert e.value.reason == "BAD_SIGNATURE" and not isinstance(e.value, CommitUnknown)
    # The first attempt got through and committed: the retry finds it on the ledger and the
    # caller is told the first copy's code.
    script.submits, script.calls = ["UNAVAILABLE", "DUPLICATE_TXID"], []
    res = gw.submit("prescription", "issue", {"rx_id": "RX-2"})
    assert (res.code, res.block) == ("VALID", 9)
    assert script.calls == ["Endorse", "Submit", "Submit", "CommitStatus:30000"]


def test_an_unknown_outcome_is_looked_up_by_tx_id_with_its_commit_code(fake: Any) -> None:
    """After CommitUnknown the caller asks how the tx ended (never proposes it again):
    VALID, the validation code of an invalid commit, or still unknown -- tx_block alone
    answered a block for an invalid commit too."""
    script, gw = fake
    tx_id = "0a" * 32
    res = gw.outcome(tx_id, timeout_ms=500)
    assert (res.tx_id, res.code, res.block) == (tx_id, "VALID", 9)
    script.status_code = transaction_pb2.MVCC_READ_CONFLICT
    with pytest.raises(CommitError) as invalid:
        gw.outcome(tx_id, timeout_ms=500)
    assert (invalid.value.reason, invalid.value.block) == ("MVCC_READ_CONFLICT", 9)
    script.status_reason = "TIMEOUT"
    with pytest.raises(CommitUnknown) as unknown:
        gw.outcome(tx_id, timeout_ms=500)
    assert unknown.value.tx_id == tx_id and "TIMEOUT" in unknown.value.message
    assert script.calls == ["CommitStatus:500"] * 3


@pytest.mark.parametrize("reason", ["TIMEOUT", "SERVICE_UNAVAILABLE", "COMMIT_UNKNOWN", "INTERNAL"])
def test_submit_many_reports_an_unknown_submit_outcome_as_commit_unknown(fake: Any, reason: str) -> None:
    """The gateway answered the submit with its commit wait running out (TIMEOUT), the
    ordering service unreachable (SERVICE_UNAVAILABLE) ... The pipeline reported a plain
    RxClientError -- a definite no -- for a tx that may still commit VALID."""
    script, gw = fake
    script.submit_error = reason
    out = submit_many(gw, [Call("prescription", "issue", {"rx_id": "RX-3"})], timeout_s=20)
    assert isinstance(out[0], CommitUnknown), out[0]
    assert len(out[0].tx_id) == 64 and reason in out[0].message
    assert _tx_id_of(out[0].envelope) == out[0].tx_id  # the same envelope can be submitted again


def test_submit_many_keeps_definite_refusals_definite(fake: Any) -> None:
    script, gw = fake
    script.submit_error = "BAD_SIGNATURE"
    out = submit_many(gw, [Call("prescription", "issue", {"rx_id": "RX-4"})], timeout_s=20)
    assert isinstance(out[0], RxClientError) and not isinstance(out[0], (CommitUnknown, EndorsementError))
    assert out[0].reason == "BAD_SIGNATURE"
    script.submit_error = ""
    ok = submit_many(gw, [Call("prescription", "issue", {"rx_id": "RX-5"})], timeout_s=20)
    assert isinstance(ok[0], SubmitResult) and (ok[0].code, ok[0].block) == ("VALID", 4)


def _home_with_a_lost_issue(net_home: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[str]]:
    """A home with the sample data loaded, where every ``issue`` ends COMMIT_UNKNOWN (its rx
    ids are noted in the list returned) and nothing talks to a peer."""
    lost: list[str] = []

    def lose(rx_id: str) -> None:
        lost.append(rx_id)
        raise CommitUnknown("ab" * 32, "transaction abab... may have been ordered: submit failed with TIMEOUT")

    return offline_home(net_home, tmp_path, monkeypatch, lose), lost


def test_an_issue_whose_outcome_is_unknown_names_the_prescription_to_look_up(
        net_home: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rx id of a new prescription is made up by the client: a COMMIT_UNKNOWN without it
    leaves the doctor (CLI, FHIR gateway) no way to find out whether it was issued, except
    issuing again under a new id -- a second prescription."""
    from client.rxops import DrugLine, IssueRequest, RxOperations
    from client.session import Session

    home, lost = _home_with_a_lost_issue(net_home, tmp_path, monkeypatch)
    ops = RxOperations(Session(home, "h01:dr-jiang"))
    try:
        with pytest.raises(CommitUnknown) as e:
            ops.issue(IssueRequest(patient="patient-zhang", diagnosis="I10", drugs=[DrugLine("amlodipine", 1)],
                                   days=7, pharmacy="p01"))
    finally:
        ops.s.close()
    assert lost and lost[0]
    assert e.value.detail == {"outcome": "unknown", "tx_id": "ab" * 32, "rx_id": lost[0]}
    assert lost[0] in e.value.message and e.value.tx_id == "ab" * 32


def test_the_cli_prints_the_ids_of_an_unknown_outcome(net_home: Any, tmp_path: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import json

    from client.cli import main

    home, lost = _home_with_a_lost_issue(net_home, tmp_path, monkeypatch)
    out, err = io.StringIO(), io.StringIO()
    rc = main(["--json", "--home", str(home), "rx", "issue", "--as", "h01:dr-jiang", "--patient", "patient-zhang",
               "--diagnosis", "I10", "--drug", "amlodipine:1", "--days", "7", "--pharmacy", "p01"], out=out, err=err)
    body = json.loads(out.getvalue())
    assert rc == 3 and body["error"] == "COMMIT_UNKNOWN"  # its own status, never "refused" (1)
    assert body["detail"] == {"outcome": "unknown", "tx_id": "ab" * 32, "rx_id": lost[0]}


def test_the_demo_never_shows_an_unknown_outcome_as_a_refusal(net_home: Any) -> None:
    """A step the chain must refuse that ends COMMIT_UNKNOWN was printed as "refused" (and
    counted as the expected refusal) although it may have committed."""
    from client.demo import Story

    said: list[str] = []
    story = Story(net_home.home, say=said.append)

    def lost() -> None:
        raise CommitUnknown("ef" * 32, "submit failed with TIMEOUT")

    def refused() -> None:
        raise CommitError("MVCC_READ_CONFLICT", "committed as invalid", "ef" * 32, 4)

    try:
        with pytest.raises(CommitUnknown):
            story.refused("h01:dr-jiang", "issue again", lost)
        assert not any("refused" in line for line in said)
        assert story.refused("h01:dr-jiang", "lock twice", refused) == "MVCC_READ_CONFLICT"
    finally:
        story.close()
