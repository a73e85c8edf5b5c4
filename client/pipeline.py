"""Pipelined transactions on one Gateway.TransactBatch stream (for busy clients and loaders).

:func:`submit_many` endorses every call, signs each prepared transaction as soon as its
endorsement arrives, submits it on the same stream and collects commit statuses -- many
transactions in flight over one connection instead of three round trips each. Results come
back in the order of the calls: a :class:`~client.gateway.SubmitResult` or the
:class:`~client.errors.RxClientError` that refused that call (one refusal does not stop
the others). A submitted call whose outcome is unknown -- the stream broke, the gateway's
commit wait ran out, the ordering service did not answer -- is a
:class:`~client.errors.CommitUnknown` carrying its tx id and signed envelope (look it up
with ``Gateway.outcome`` or submit that envelope again; never propose the call again).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from rxchain.v1 import services_pb2, transaction_pb2

from client.batching import (
    BATCH_ERROR_CORRELATION_ID,
    RequestQueue,
    batch_requests,
    is_unimplemented,
    single_requests,
)
from client.errors import CommitError, CommitUnknown, EndorsementError, RxClientError
from client.events import validation_code_name
from client.gateway import (
    OUTCOME_UNKNOWN_REASONS,
    Gateway,
    SubmitResult,
    check_endorsers,
    check_response,
    decode_payload,
    rpc_error,
)
from client.tx import BuiltProposal


@dataclass(frozen=True)
class Call:
    """One contract invocation to submit. ``endorsing_orgs``: the organisations whose peers
    endorse it (as ``Gateway.submit``'s): a call carrying plaintext transient inputs (content,
    claim lines) must name them -- the record's parties -- or it is refused ENDORSERS_REQUIRED
    with nothing sent (a gateway left to choose could send the plaintext to any peer the
    policy takes); the session's default transient inputs go only with a call naming them."""

    contract: str
    function: str
    args: Mapping[str, Any] = field(default_factory=dict)
    transient: Mapping[str, Any] | None = None
    endorsing_orgs: Sequence[str] | None = None


Outcome = SubmitResult | RxClientError


def submit_many(gateway: Gateway, calls: Sequence[Call],
                timeout_s: float = 120.0) -> list[Outcome]:
    """Endorse, sign, submit and await every call on one TransactBatch stream.

    Requests go out coalesced (:mod:`client.batching`); a gateway without TransactBatch
    (UNIMPLEMENTED before any answer) is asked again over Transact. A call carrying transient
    inputs and no ``endorsing_orgs`` is refused ENDORSERS_REQUIRED and never sent
    (``client.gateway.check_endorsers``); the others go on.
    """
    results: list[Outcome | None] = [None] * len(calls)
    sent: list[int] = []  # the calls that go to the gateway, by index
    built: list[BuiltProposal] = []
    for i, c in enumerate(calls):
        b = gateway.propose(c.contract, c.function, c.args, c.transient, defaults=bool(c.endorsing_orgs))
        try:
            check_endorsers(b, c.endorsing_orgs)
        except RxClientError as exc:
            results[i] = exc
            continue
        sent.append(i)
        built.append(b)
    if built:
        orgs = [calls[i].endorsing_orgs for i in sent]
        try:
            answered = _exchange(gateway, built, orgs, timeout_s, batched=True)
        except _Unimplemented:
            answered = _exchange(gateway, built, orgs, timeout_s, batched=False)
        for i, outcome in zip(sent, answered, strict=True):
            results[i] = outcome
    return [r for r in results if r is not None]


class _Unimplemented(Exception):
    """The gateway does not offer TransactBatch."""


def _exchange(gateway: Gateway, built: Sequence[BuiltProposal], orgs: Sequence[Sequence[str] | None],
              timeout_s: float, batched: bool) -> list[Outcome]:
    # Correlation ids: 2*i + 2 endorses call i, 2*i + 3 submits it; id 0 is the gateway's
    # answer to a whole message it refused (then every call not yet answered fails with it).
    results: list[Outcome | None] = [None] * len(built)
    payloads: dict[int, Any] = {}
    submitted: dict[int, transaction_pb2.Envelope] = {}  # calls whose envelope went to the gateway
    requests: RequestQueue = queue.SimpleQueue()
    for i, b in enumerate(built):
        requests.put(services_pb2.TransactRequest(correlation_id=2 * i + 2, endorse=services_pb2.EndorseRequest(
            proposal=b.signed, endorsing_orgs=list(orgs[i] or ()))))
    pending = len(built)
    answered = False
    lost = RxClientError("TIMEOUT", "no answer")  # why unanswered calls are (the default: none came)

    def finish(i: int, outcome: Outcome) -> None:
        nonlocal pending
        if results[i] is None:
            results[i] = outcome
            pending -= 1
            if pending == 0:
                requests.put(None)

    def answers() -> Iterator[services_pb2.TransactResponse]:
        if batched:
            for msg in gateway.stub.TransactBatch(batch_requests(requests), timeout=timeout_s):
                yield from msg.responses
        else:
            yield from gateway.stub.Transact(single_requests(requests), timeout=timeout_s)

    try:
        for resp in answers():
            answered = True
            kind = resp.WhichOneof("kind")
            if resp.correlation_id == BATCH_ERROR_CORRELATION_ID and kind == "error":
                lost = RxClientError(resp.error.reason, resp.error.message)
                break
            i, stage = divmod(resp.correlation_id - 2, 2)
            if not 0 <= i < len(built):
                continue
            if kind == "error":
                if stage == 0 and i in submitted:
                    continue  # its endorsement was answered: the envelope went out, this says nothing of it
                finish(i, _refused(built, submitted, i, stage, resp.error.reason, resp.error.message))
            elif kind == "endorsed":
                if stage != 0 or results[i] is not None or i in submitted:
                    continue  # not an answer to an endorsement awaited: never signed nor submitted
                try:
                    payloads[i] = check_response(resp.endorsed.result)
                    env = gateway.builder.envelope(built[i], resp.endorsed.prepared_transaction,
                                                   resp.endorsed.result)
                except RxClientError as exc:
                    finish(i, exc)
                    continue
                submitted[i] = env
                requests.put(services_pb2.TransactRequest(correlation_id=2 * i + 3, submit=env))
            elif kind == "committed":
                st = resp.committed
                if stage != 1 or i not in submitted:
                    continue  # no envelope of this call was sent: not its commit
                if st.tx_id and st.tx_id != built[i].tx_id:
                    finish(i, _commit_unknown(built, submitted, i, "BAD_PAYLOAD",
                                              f"the gateway answered the commit of transaction {st.tx_id}"))
                    continue
                name = validation_code_name(st.code)  # UNKNOWN_<n>: a later release's, never VALID
                gateway.note_commit(int(st.block_number))
                if st.code != transaction_pb2.VALID:
                    finish(i, CommitError(name, f"transaction {built[i].tx_id} committed as "
                                          "invalid", built[i].tx_id, int(st.block_number)))
                else:
                    finish(i, SubmitResult(built[i].tx_id, name, int(st.block_number),
                                           payloads.get(i)))
            if pending == 0:
                break
    except grpc.RpcError as exc:
        if batched and not answered and is_unimplemented(exc):
            raise _Unimplemented() from exc
        lost = rpc_error(exc)
    finally:
        requests.put(None)
    # every call without an answer: lost with the stream's reason
    return [r if r is not None else _unanswered(built, submitted, i, lost)
            for i, r in enumerate(results)]


def _refused(built: Sequence[BuiltProposal], submitted: Mapping[int, transaction_pb2.Envelope], i: int,
             stage: int, reason: str, message: str) -> RxClientError:
    """The outcome of call ``i`` answered by an error: at endorsement a definite refusal; for
    its submit a definite refusal only when nothing may have been ordered -- the gateway's
    commit wait ran out (TIMEOUT), the ordering service did not answer (SERVICE_UNAVAILABLE)
    ... leave a transaction that may still commit: COMMIT_UNKNOWN with its tx id, as the
    unary Gateway.submit_envelope reports it, so that nobody proposes it again."""
    if stage == 0:
        return EndorsementError(reason, message)
    if reason in OUTCOME_UNKNOWN_REASONS:
        return _commit_unknown(built, submitted, i, reason, message)
    return RxClientError(reason, message)


def _unanswered(built: Sequence[BuiltProposal], submitted: Mapping[int, transaction_pb2.Envelope], i: int,
                err: RxClientError) -> RxClientError:
    """The outcome of call ``i`` when its answer will not come: a submitted transaction may
    still commit, so it is COMMIT_UNKNOWN with its tx id (ask CommitStatus; never re-propose
    it as a new transaction), anything else fails with ``err``."""
    if i not in submitted:
        return err
    return _commit_unknown(built, submitted, i, err.reason, err.message)


def _commit_unknown(built: Sequence[BuiltProposal], submitted: Mapping[int, transaction_pb2.Envelope], i: int,
                    reason: str, message: str) -> CommitUnknown:
    """COMMIT_UNKNOWN for submitted call ``i`` (why: ``reason``, ``message``), with its tx id and
    signed envelope."""
    tx_id = built[i].tx_id
    return CommitUnknown(tx_id, f"transaction {tx_id} was submitted but its outcome is unknown "
                         f"({reason}: {message}); ask CommitStatus for it", submitted.get(i))


__all__ = ["Call", "Outcome", "decode_payload", "submit_many"]
