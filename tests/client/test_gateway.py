"""The SDK gateway against an in-process fake Gateway service: retries, errors, commit codes."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2
from rxchain.v1.identity_pb2 import ErrorDetail

from client.errors import CommitError, EndorsementError, RxClientError
from client.gateway import Gateway, RetryPolicy, SubmitResult
from client.wallet import load_identity
from node.crypto.canonical import proposal_hash
from node.errors import RxError, abort_with


@dataclass
class Script:
    unavailable: int = 0          # fail this many calls with UNAVAILABLE first
    endorse_reason: str = ""      # abort Endorse with this reason
    code: transaction_pb2.TxValidationCode.ValueType = transaction_pb2.VALID
    block: int = 7
    busy: int = 0                 # refuse this many CommitStatus calls with TOO_MANY_STREAMS
    submit_reason: str = ""       # abort Submit with this reason
    status_reason: str = ""       # abort CommitStatus with this reason
    # what Endorse answers as the result when it is not the response the endorsers signed
    # ("" = the signed one), and a proposal hash for another proposal
    answered: bytes = b""
    foreign_hash: bool = False
    other_status: bool = False    # CommitStatus answers another transaction's status
    endorsers: list[list[str]] = field(default_factory=list)  # endorsing_orgs of each Endorse
    transients: list[list[str]] = field(default_factory=list)  # the transient keys of each Endorse
    calls: list[str] = field(default_factory=list)


class FakeGateway(services_pb2_grpc.GatewayServicer):
    def __init__(self, script: Script):
        self.s = script

    def _flaky(self, name, context):
        self.s.calls.append(name)
        if self.s.unavailable > 0:
            self.s.unavailable -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "orderer unreachable")

    def Evaluate(self, request, context):
        self._flaky("Evaluate", context)
        prop = transaction_pb2.Proposal.FromString(request.proposal.proposal_bytes)
        inv = transaction_pb2.ContractInvocation.FromString(prop.invocation)
        if inv.function == "missing":
            return services_pb2.EvaluateResponse(result=transaction_pb2.Response(
                status=400, reason="NOT_FOUND", message="no prescription"))
        return services_pb2.EvaluateResponse(result=transaction_pb2.Response(
            status=200, payload=b'{"echo":' + inv.args_json + b"}"))

    def Endorse(self, request, context):
        self._flaky("Endorse", context)
        self.s.endorsers.append(list(request.endorsing_orgs))
        prop = transaction_pb2.Proposal.FromString(request.proposal.proposal_bytes)
        self.s.transients.append(sorted(prop.transient))
        if self.s.endorse_reason:
            abort_with(context, RxError(self.s.endorse_reason, "contract said no"))
        header = transaction_pb2.TxHeader.FromString(prop.header)
        result = transaction_pb2.Response(status=200, payload=b'{"ok":true}')
        hashed = (prop.header + b"x") if self.s.foreign_hash else prop.header
        prp = transaction_pb2.ProposalResponsePayload(
            proposal_hash=proposal_hash(hashed, prop.invocation), response=result)
        tx = transaction_pb2.Transaction(header=prop.header, invocation=prop.invocation,
                                         response_payload=prp.SerializeToString())
        tx.endorsements.add(signature=b"sig")
        if self.s.answered:
            result = transaction_pb2.Response(status=200, payload=self.s.answered)
        return services_pb2.EndorseResponse(
            prepared_transaction=tx.SerializeToString(), tx_id=header.tx_id, result=result)

    def Submit(self, request, context):
        self._flaky("Submit", context)
        if self.s.submit_reason:
            abort_with(context, RxError(self.s.submit_reason, "as scripted"))
        tx = transaction_pb2.Transaction.FromString(request.envelope.payload)
        return services_pb2.SubmitResponse(tx_id=transaction_pb2.TxHeader.FromString(tx.header).tx_id)

    def Events(self, request, context):
        raise NotImplementedError

    def Transact(self, request_iterator, context):
        for req in request_iterator:
            cid = req.correlation_id
            if req.WhichOneof("kind") == "endorse":
                prop = transaction_pb2.Proposal.FromString(req.endorse.proposal.proposal_bytes)
                inv = transaction_pb2.ContractInvocation.FromString(prop.invocation)
                if inv.function in ("refuse", "twice"):
                    yield services_pb2.TransactResponse(correlation_id=cid, error=ErrorDetail(
                        reason="NOT_FOLLOW_UP", message="first visit"))
                    if inv.function == "refuse":
                        continue
                if inv.function == "early":  # a commit answered before anything was submitted
                    yield services_pb2.TransactResponse(correlation_id=cid, committed=services_pb2.CommitStatusResponse(
                        code=transaction_pb2.VALID, block_number=20 + cid))
                yield services_pb2.TransactResponse(
                    correlation_id=cid, endorsed=self.Endorse(req.endorse, context))
            else:
                tx = transaction_pb2.Transaction.FromString(req.submit.payload)
                self.s.calls.append("Transact.submit")
                inv = transaction_pb2.ContractInvocation.FromString(tx.invocation)
                tx_id = transaction_pb2.TxHeader.FromString(tx.header).tx_id
                if inv.function == "other":  # the commit of another transaction
                    tx_id = "ab" * 32
                if inv.function == "vanish":  # the peer stops with this submit unanswered
                    context.abort(grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE: the peer is stopping")
                code = (transaction_pb2.MVCC_READ_CONFLICT if inv.function == "conflict"
                        else transaction_pb2.TxValidationCode.ValueType(999) if inv.function == "newer"
                        else transaction_pb2.VALID)
                yield services_pb2.TransactResponse(
                    correlation_id=cid, committed=services_pb2.CommitStatusResponse(
                        tx_id=tx_id, code=code, block_number=20 + cid))

    def TransactBatch(self, request_iterator, context):
        # An older gateway without the batched stream: client.pipeline falls back to Transact.
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")

    def CommitStatus(self, request, context):
        self.s.calls.append("CommitStatus")
        if self.s.other_status:
            return services_pb2.CommitStatusResponse(tx_id="ab" * 32, code=transaction_pb2.VALID, block_number=3)
        if self.s.status_reason:
            abort_with(context, RxError(self.s.status_reason, "as scripted"))
        if self.s.busy > 0:
            self.s.busy -= 1
            abort_with(context, RxError("TOO_MANY_STREAMS", "this client already holds 16 long-lived calls"))
        return services_pb2.CommitStatusResponse(tx_id=request.tx_id, code=self.s.code,
                                                 block_number=self.s.block)


@pytest.fixture
def fake(net_home) -> Iterator[tuple[Script, Gateway, list[float]]]:
    script = Script()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    services_pb2_grpc.add_GatewayServicer_to_server(FakeGateway(script), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sleeps: list[float] = []
    ident = load_identity(net_home.home, "h01", "dr-jiang")
    gw = Gateway(ident, f"127.0.0.1:{port}", "client-test",
                 channel=grpc.insecure_channel(f"127.0.0.1:{port}"),
                 retry=RetryPolicy(attempts=4, base_delay_s=0.01), sleep=sleeps.append)
    try:
        yield script, gw, sleeps
    finally:
        gw.close()
        server.stop(0)


def test_submit_runs_endorse_submit_commit(fake):
    script, gw, _ = fake
    res = gw.submit("prescription", "review", {"rx_id": "RX-1", "approve": True})
    assert res.code == "VALID" and res.block == 7 and res.result == {"ok": True}
    assert script.calls == ["Endorse", "Submit", "CommitStatus"]
    assert len(res.tx_id) == 64 and gw.last_block == 7


def test_a_busy_commit_status_is_asked_again_and_never_re_proposed(fake):
    script, gw, sleeps = fake
    script.busy = 2
    res = gw.submit("prescription", "review", {"rx_id": "RX-1", "approve": True})
    assert res.code == "VALID"
    assert script.calls == ["Endorse", "Submit", "CommitStatus", "CommitStatus", "CommitStatus"]
    assert sleeps == [0.01, 0.02]


def test_a_commit_status_refused_to_the_end_is_commit_unknown(fake):
    from client.errors import CommitUnknown

    script, gw, sleeps = fake
    script.busy = 100
    with pytest.raises(CommitUnknown) as e:
        gw.submit("prescription", "review", {"rx_id": "RX-1", "approve": True})
    assert e.value.reason == "COMMIT_UNKNOWN" and len(e.value.tx_id) == 64
    assert script.calls.count("Endorse") == 1 and script.calls.count("Submit") == 1
    assert len(sleeps) == 3


@pytest.mark.parametrize(("submit_reason", "status_reason", "unavailable"), [
    ("SERVICE_UNAVAILABLE", "", 0),  # the gateway could not get the orderer's answer
    ("TIMEOUT", "", 0),
    ("", "TIMEOUT", 0),  # submitted, then not committed within the wait
    ("", "SERVICE_UNAVAILABLE", 0),  # submitted, then the peer cannot answer
    ("", "", 4),  # every Submit attempt broke in transport (UNAVAILABLE, retried, given up)
])
def test_a_submitted_tx_without_an_answer_is_commit_unknown_never_a_plain_failure(
        fake, submit_reason: str, status_reason: str, unavailable: int):
    """The caller must learn that the tx may still commit (it must not propose it again as a
    new prescription): COMMIT_UNKNOWN with its tx id."""
    from client.errors import CommitUnknown

    script, gw, _ = fake
    built = gw.propose("prescription", "review", {"rx_id": "RX-1", "approve": True})
    endorsed = gw.endorse(built)
    envelope = gw.builder.envelope(built, endorsed.prepared_transaction)
    script.submit_reason, script.status_reason = submit_reason, status_reason
    script.unavailable = unavailable
    with pytest.raises(CommitUnknown) as e:
        gw.submit_envelope(built.tx_id, envelope)
    assert e.value.reason == "COMMIT_UNKNOWN" and e.value.tx_id == built.tx_id


@pytest.mark.parametrize("reason", ["BAD_SIGNATURE", "CLOCK_SKEW", "TOO_LARGE", "BAD_TXID"])
def test_a_refusal_before_ordering_is_a_definite_failure(fake, reason: str):
    script, gw, _ = fake
    script.submit_reason = reason
    with pytest.raises(RxClientError) as e:
        gw.submit("prescription", "review", {"rx_id": "RX-1", "approve": True})
    assert e.value.reason == reason
    assert "CommitStatus" not in script.calls


def test_unavailable_is_retried_with_exponential_backoff(fake):
    script, gw, sleeps = fake
    script.unavailable = 3
    assert gw.evaluate("registry", "get_drug", {"x": 1}) == {"echo": {"x": 1}}
    assert sleeps == [0.01, 0.02, 0.04]


def test_retries_are_bounded(fake):
    script, gw, sleeps = fake
    script.unavailable = 10
    with pytest.raises(RxClientError) as e:
        gw.evaluate("registry", "get_drug", {})
    assert e.value.reason == "SERVICE_UNAVAILABLE"
    assert len(sleeps) == 3


def test_contract_refusal_carries_reason(fake):
    script, gw, _ = fake
    with pytest.raises(EndorsementError) as e:
        gw.evaluate("prescription", "missing", {})
    assert (e.value.reason, e.value.message) == ("NOT_FOUND", "no prescription")
    script.endorse_reason = "NOT_FOLLOW_UP"
    with pytest.raises(EndorsementError) as e:
        gw.submit("prescription", "issue", {})
    assert e.value.reason == "NOT_FOLLOW_UP" and "contract said no" in e.value.message
    assert "Submit" not in script.calls


def test_invalid_commit_raises_with_validation_code(fake):
    script, gw, _ = fake
    script.code = transaction_pb2.MVCC_READ_CONFLICT
    script.block = 12
    with pytest.raises(CommitError) as e:
        gw.submit("prescription", "lock", {"rx_id": "RX-1"})
    assert e.value.reason == "MVCC_READ_CONFLICT" and e.value.block == 12
    assert len(e.value.tx_id) == 64


def test_a_commit_code_this_release_does_not_know_is_a_commit_error_naming_it(fake):
    """A peer of a later release answers a validation code added since: the transaction
    committed, not VALID (the one code of an applied transaction) -- CommitError UNKNOWN_<n>
    with its block; it raised a bare ValueError, a committed transaction that read as a crash."""
    from client.pipeline import Call, submit_many

    script, gw, _ = fake
    script.code = transaction_pb2.TxValidationCode.ValueType(999)
    script.block = 12
    with pytest.raises(CommitError) as e:
        gw.submit("prescription", "lock", {"rx_id": "RX-1"})
    assert e.value.reason == "UNKNOWN_999" and e.value.block == 12
    out = submit_many(gw, [Call("c", "newer")])
    assert isinstance(out[0], CommitError) and out[0].reason == "UNKNOWN_999"


def test_submit_many_pipelines_and_keeps_call_order(fake):
    from client.gateway import SubmitResult
    from client.pipeline import Call, submit_many

    _, gw, _ = fake
    out = submit_many(gw, [Call("c", "ok", {"i": 0}), Call("c", "refuse"), Call("c", "conflict"),
                           Call("c", "ok", {"i": 3})])
    assert isinstance(out[0], SubmitResult) and out[0].code == "VALID" and out[0].block == 23
    assert out[0].result == {"ok": True}
    assert isinstance(out[1], EndorsementError) and out[1].reason == "NOT_FOLLOW_UP"
    assert isinstance(out[2], CommitError) and out[2].reason == "MVCC_READ_CONFLICT"
    assert isinstance(out[3], SubmitResult) and out[3].block == 29
    assert gw.last_block == 29
    assert submit_many(gw, []) == []


def test_submit_many_reports_a_lost_answer_to_a_submit_as_commit_unknown(fake):
    """A stream that breaks after a submit went out: that call may still commit, so it is
    COMMIT_UNKNOWN with its tx id (never silently 'failed'); calls not yet submitted fail."""
    from client.errors import CommitUnknown
    from client.pipeline import Call, submit_many

    _, gw, _ = fake
    out = submit_many(gw, [Call("c", "refuse"), Call("c", "vanish")])
    assert isinstance(out[0], EndorsementError) and out[0].reason == "NOT_FOLLOW_UP"
    assert isinstance(out[1], CommitUnknown) and out[1].reason == "COMMIT_UNKNOWN"
    assert len(out[1].tx_id) == 64 and out[1].tx_id in out[1].message


class _DownAdmin:
    """A peer's Admin service that cannot be reached (UNAVAILABLE in transport)."""

    def __init__(self, heights: list[int | None]):
        self.heights = heights  # None: unreachable; the last entry repeats

    def Status(self, request: services_pb2.StatusRequest, timeout: float) -> services_pb2.StatusResponse:
        h = self.heights.pop(0) if len(self.heights) > 1 else self.heights[0]
        if h is None:
            class Unreachable(grpc.RpcError):
                def code(self) -> grpc.StatusCode:
                    return grpc.StatusCode.UNAVAILABLE

                def details(self) -> str:
                    return "failed to connect to all addresses"
            raise Unreachable()
        return services_pb2.StatusResponse(height=h)


def test_a_submit_to_a_peer_unreachable_before_anything_was_sent_is_a_definite_failure(fake):
    """The read-your-writes wait before Submit found the peer unreachable on every attempt:
    no envelope left the client, so the caller may send it again (not COMMIT_UNKNOWN), and
    the wait gave up at once instead of asking Status until its 15 s bound."""
    script, gw, sleeps = fake
    built = gw.propose("prescription", "review", {"rx_id": "RX-1", "approve": True})
    envelope = gw.builder.envelope(built, gw.endorse(built).prepared_transaction)
    gw._admin = _DownAdmin([None])
    gw.last_block = 5
    with pytest.raises(RxClientError) as e:
        gw.submit_envelope(built.tx_id, envelope, first=True)
    assert e.value.reason == "SERVICE_UNAVAILABLE" and e.value.reason != "COMMIT_UNKNOWN"
    assert "Submit" not in script.calls and sleeps == [0.01, 0.02, 0.04]


def test_an_envelope_submitted_again_to_an_unreachable_peer_stays_commit_unknown(fake):
    """CommitUnknown hands the caller the envelope to submit again (client.errors); if the peer
    cannot be reached for that second submission, nothing was sent *this time* -- but the first
    submission may have been ordered: COMMIT_UNKNOWN again, never a plain SERVICE_UNAVAILABLE
    (read as "not ordered": the call proposed anew, a second prescription)."""
    from client.errors import CommitUnknown

    script, gw, _ = fake
    built = gw.propose("prescription", "issue", {"rx_id": "RX-1"})
    envelope = gw.builder.envelope(built, gw.endorse(built).prepared_transaction)
    script.submit_reason = "SERVICE_UNAVAILABLE"  # the first submission: outcome unknown
    with pytest.raises(CommitUnknown) as first:
        gw.submit_envelope(built.tx_id, envelope)
    assert first.value.envelope == envelope
    gw._admin = _DownAdmin([None])  # the peer is down when the caller submits that envelope again
    gw.last_block = 5
    sent = script.calls.count("Submit")
    with pytest.raises(RxClientError) as again:
        gw.submit_envelope(built.tx_id, first.value.envelope)
    assert isinstance(again.value, CommitUnknown) and again.value.tx_id == built.tx_id
    assert script.calls.count("Submit") == sent  # (nothing sent the second time)
    # Gateway.submit built the envelope itself: never sent before, a definite failure
    script.submit_reason = ""
    with pytest.raises(RxClientError) as fresh:
        gw.submit("prescription", "issue", {"rx_id": "RX-2"})
    assert fresh.value.reason == "SERVICE_UNAVAILABLE" and not isinstance(fresh.value, CommitUnknown)


@pytest.mark.parametrize("call", ["evaluate", "submit"])
def test_the_read_your_writes_wait_runs_once_per_call_not_once_per_retry(fake, call: str):
    """A peer behind the block the client saw (its orderers down: it gets no blocks) whose calls
    fail UNAVAILABLE (no orderer answers its Submit) is waited for once, up to the catch-up
    bound, then the call is retried: waiting out the whole bound again before each retry made
    a call take attempts x 15 s (90 s with the default policy) instead of ~15 s."""
    script, gw, sleeps = fake
    waits: list[int] = []

    def behind(block: int, timeout_s: float, *, unreachable_raises: bool = False) -> bool:
        waits.append(block)
        return False  # the bound ran out, the peer still behind

    gw.wait_for_block = behind
    gw.last_block = 5
    if call == "evaluate":
        script.unavailable = 3
        assert gw.evaluate("registry", "get_drug", {"x": 1}) == {"echo": {"x": 1}}
        assert waits == [5] and sleeps == [0.01, 0.02, 0.04]
    else:
        built = gw.propose("prescription", "review", {"rx_id": "RX-1", "approve": True})
        envelope = gw.builder.envelope(built, gw.endorse(built).prepared_transaction)
        script.unavailable = 3
        del waits[:]
        gw.submit_envelope(built.tx_id, envelope, first=True)
        assert script.calls.count("Submit") == 4 and sleeps == [0.01, 0.02, 0.04]
        assert waits == [5, 5]  # Submit's wait once, CommitStatus's once




@pytest.mark.parametrize("lie", ["result", "proposal_hash"])
def test_a_result_the_endorsers_did_not_sign_is_never_submitted(fake, lie: str):
    """The gateway answers a result beside the prepared transaction; only the response payload
    inside it is endorsed and committed. A gateway whose answered result is not that response
    (say lock_id A while the ledger gets B), or whose response payload was endorsed for another
    proposal, is refused BAD_PAYLOAD before anything is signed or submitted -- the SDK returned
    the answered result as the committed one (SubmitResult.result) and submitted the envelope,
    on the unary path and in submit_many alike."""
    from client.pipeline import Call, submit_many

    script, gw, _ = fake
    if lie == "result":
        script.answered = b'{"lock_id":"not-the-committed-one"}'
    else:
        script.foreign_hash = True
    with pytest.raises(RxClientError) as e:
        gw.submit("prescription", "lock", {"rx_id": "RX-1"})
    assert e.value.reason == "BAD_PAYLOAD"
    assert script.calls == ["Endorse"]  # nothing submitted
    out = submit_many(gw, [Call("c", "ok")])
    assert isinstance(out[0], RxClientError) and out[0].reason == "BAD_PAYLOAD"
    assert not isinstance(out[0], CommitError) and gw.last_block == -1  # nothing committed


def test_the_commit_status_of_another_transaction_leaves_the_outcome_unknown(fake):
    """A peer answering CommitStatus (or a Transact commit) with another tx id's status says
    nothing of this transaction: COMMIT_UNKNOWN with its tx id and envelope -- the SDK reported
    that status as this transaction's (VALID: the caller took a transaction that may have
    failed, or not be ordered yet, as committed)."""
    from client.errors import CommitUnknown
    from client.pipeline import Call, submit_many

    script, gw, _ = fake
    script.other_status = True
    with pytest.raises(CommitUnknown) as e:
        gw.submit("prescription", "lock", {"rx_id": "RX-1"})
    assert e.value.envelope is not None and "ab" * 32 in e.value.message
    assert gw.last_block == -1
    out = submit_many(gw, [Call("c", "other"), Call("c", "ok")])
    assert isinstance(out[0], CommitUnknown) and out[0].envelope is not None
    assert out[0].tx_id != "ab" * 32 and isinstance(out[1], SubmitResult) and out[1].block == 25


def test_submit_many_sends_only_envelopes_of_endorsements_awaited_and_takes_only_their_commits(fake):
    """Answers out of turn from a gateway (an endorsement after that call's refusal, a commit
    before its envelope was sent) are not the call's: a call refused is never submitted
    afterwards (it was, while reported refused: the caller proposed it again), and a commit
    answered before the submit is not its outcome (it was reported as the result)."""
    from client.pipeline import Call, submit_many

    script, gw, _ = fake
    out = submit_many(gw, [Call("c", "twice"), Call("c", "early")])
    assert isinstance(out[0], EndorsementError) and out[0].reason == "NOT_FOLLOW_UP"
    assert isinstance(out[1], SubmitResult) and out[1].block == 25  # its submit's commit (id 5), not 24
    assert script.calls.count("Transact.submit") == 1


def test_submit_many_names_the_endorsers_a_call_asks_for(fake):
    """A call carrying plaintext transient inputs must reach the record's parties' peers only,
    as Gateway.submit(..., endorsing_orgs=) does: submit_many had no way to name them, so the
    gateway picked any peers the policy takes (another hospital's peer received the content)."""
    from client.pipeline import Call, submit_many

    script, gw, _ = fake
    out = submit_many(gw, [Call("prescription", "issue", {"rx_id": "RX-1"}, {"content": {"x": 1}},
                                endorsing_orgs=["h01", "p01"]),
                           Call("c", "ok")])
    assert all(isinstance(o, SubmitResult) for o in out)
    assert sorted(script.endorsers) == [[], ["h01", "p01"]]


def test_transient_inputs_never_leave_without_endorsers_named(fake):
    """A call carrying transient inputs (plaintext: content, claim lines) and no endorsing_orgs
    let the gateway pick any peers the policy takes, so another organisation's peer could
    receive the plaintext (Gateway.submit, Gateway.endorse and submit_many alike). Now it is
    refused ENDORSERS_REQUIRED with nothing sent; the session's default inputs (a patient's
    binding) go only with calls naming their endorsers; a call naming them is sent as before."""
    from client.pipeline import Call, submit_many

    script, gw, _ = fake
    content = {"content": {"drugs": ["amlodipine"]}, "salt": "ab" * 16}
    with pytest.raises(EndorsementError) as e:
        gw.submit("prescription", "issue", {"rx_id": "RX-1"}, content)
    assert e.value.reason == "ENDORSERS_REQUIRED"
    with pytest.raises(EndorsementError) as e:
        gw.endorse(gw.propose("prescription", "issue", {"rx_id": "RX-1"}, content), [])
    assert e.value.reason == "ENDORSERS_REQUIRED"
    assert script.calls == []  # nothing reached the gateway
    out = submit_many(gw, [Call("prescription", "issue", {"rx_id": "RX-2"}, content), Call("c", "ok")])
    assert isinstance(out[0], EndorsementError) and out[0].reason == "ENDORSERS_REQUIRED"
    assert isinstance(out[1], SubmitResult)
    assert script.transients == [[]]  # only the plain call went out
    gw.default_transient["patient_binding"] = "cd" * 32
    gw.submit("prescription", "get_key", {"rx_id": "RX-1"})
    out = submit_many(gw, [Call("prescription", "get_key", {"rx_id": "RX-1"})])
    assert isinstance(out[0], SubmitResult)
    assert script.transients[1:] == [[], []] and script.endorsers[1:] == [[], []]
    gw.submit("prescription", "get_key", {"rx_id": "RX-1"}, endorsing_orgs=["h01", "p01"])
    gw.submit("prescription", "issue", {"rx_id": "RX-3"}, content, endorsing_orgs=["h01", "p01"])
    assert script.transients[3:] == [["patient_binding"], ["content", "patient_binding", "salt"]]
    assert script.endorsers[3:] == [["h01", "p01"]] * 2


def _no_channel(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Opening a channel fails EMFILE (the wallet's key and certificate are read for it: a process
    out of descriptors); returns the targets asked."""
    import errno

    from client import gateway as gateway_module

    asked: list[str] = []

    def fail(target: str, *args: object, **kwargs: object) -> grpc.Channel:
        asked.append(target)
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(gateway_module, "secure_channel", fail)
    return asked


def test_a_new_pin_whose_channel_cannot_be_opened_is_tried_again(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's pin moved (a CA rotation verified) and the channel pinned to the new CA could
    not be opened (EMFILE reading the wallet's files): the pin's version was taken all the same, so
    no later call re-pinned -- the gateway stayed pinned to the CA rotated away from (perhaps
    because its key leaked) until the next change; the call failed with a bare OSError. The call
    now fails IO_ERROR (nothing sent) and the next one opens the new channel."""
    script, gw, _ = fake
    asked = _no_channel(monkeypatch)
    gw._server_ca = lambda: (1, b"the rotated CA")
    for _ in range(2):
        with pytest.raises(RxClientError) as e:
            gw.evaluate("prescription", "get", {"rx_id": "RX-1"})
        assert e.value.reason == "IO_ERROR"
    assert len(asked) == 2 and gw._pin_version == 0 and script.calls == []


def test_a_new_pin_failing_after_a_lost_submit_is_commit_unknown(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Submit whose answer was lost in transit (it may have been ordered) is retried; the retry
    re-pins first (the pin moved meanwhile) and the channel cannot be opened: the caller must hear
    CommitUnknown -- an IO_ERROR (or the bare OSError it was) reads as a definite failure, and the
    caller proposes the call again."""
    from client.errors import CommitUnknown

    script, gw, _ = fake
    _no_channel(monkeypatch)

    def pin() -> tuple[int, bytes]:
        if "Submit" in script.calls:
            return 1, b"the rotated CA"
        if "Endorse" in script.calls:
            script.unavailable = 1  # the Submit fails in transit
        return 0, b""

    gw._server_ca = pin
    with pytest.raises(CommitUnknown) as e:
        gw.submit("prescription", "review", {"rx_id": "RX-1", "approve": True})
    assert "may have been ordered" in e.value.message
    assert script.calls == ["Endorse", "Submit"]
