"""Gateway.Endorse: endorse locally, then collect what the contract's policy needs.

The local peer endorses first (so a bad proposal is refused before anybody else is
asked). Then organisations are added until the endorsement policy is satisfied by
(org, "peer") signers -- or exactly the ``endorsing_orgs`` the client asked for (never
any other). Without ``endorsing_orgs``, every distinct small set found by starting the
greedy plan at each remote organisation in turn is a valid choice, and the gateway uses
them round-robin (:class:`PlanRotation`), so remote endorsements spread over the eligible
organisations instead of all landing on the first in configuration order. A remote
failure is replaced by the next organisation that can still satisfy the policy. All
endorsements must carry byte-identical payloads. Named organisations whose endorsements
(with this gateway's) cannot satisfy the policy are refused ENDORSEMENT_POLICY_FAILURE
before anything is prepared (the transaction would commit invalid).

A proposal carrying transient inputs (plaintext meant for its endorsers only: a
prescription's content, claim lines, medical data) with no ``endorsing_orgs`` is never sent to
another organisation's peer: the client did not say whom it meant, and any organisation the
policy takes is not it. The local endorsement alone answers it when it satisfies the policy;
otherwise it is refused ENDORSERS_REQUIRED (name the organisations). The SDK never sends such
a request (client.gateway.check_endorsers); this covers other clients and earlier releases.

The remote organisations are those of the node.yaml endpoints that still run a peer in the
config in force: an organisation a config update has removed (or left without a peer) is
never asked, even while node.yaml still names its peer -- its endorsement would make the tx
BAD_ENDORSEMENT, and a removed organisation's peer never even learns of its removal (its
block stream ends at the update), so it would go on endorsing.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

from rxchain.v1 import services_pb2, transaction_pb2

from node.crypto.x509 import cert_info_der
from node.errors import RxError
from node.identity.policy import Policy, shown
from node.peer.gateway.deps import GatewayDeps
from node.peer.gateway.plans import PEER_ROLE as _PEER_ROLE
from node.peer.gateway.plans import PlanRotation, plan

__all__ = ["ENDORSERS_REQUIRED", "MISMATCH_RETRIES", "PlanRotation", "endorse", "plan"]
_HEIGHT_SKEW_REASONS = frozenset({"UNKNOWN_CONTRACT", "CODE_HASH_MISMATCH"})


MISMATCH_RETRIES = (0.05, 0.15, 0.4)
ENDORSERS_REQUIRED = "ENDORSERS_REQUIRED"  # transient inputs, no endorsing_orgs, local endorsement not enough


class _Pending(Protocol):
    def result(self) -> transaction_pb2.ProposalResponse: ...


class _Deferred:
    """A synchronous remotes object (no ``begin``; test doubles): called when waited on."""

    def __init__(self, call: Callable[[], transaction_pb2.ProposalResponse]) -> None:
        self._call = call

    def result(self) -> transaction_pb2.ProposalResponse:
        return self._call()


def _begin(remotes: Any, org: str, signed: transaction_pb2.SignedProposal) -> _Pending:
    """Send ``signed`` to ``org`` now (``RemoteEndorsers.begin``: no thread hand-off)."""
    begin = getattr(remotes, "begin", None)
    if begin is not None:
        pending: _Pending = begin(org, signed)
        return pending
    return _Deferred(lambda: remotes.endorse(org, signed))


def endorse(
    deps: GatewayDeps, request: services_pb2.EndorseRequest, pool: Executor | None = None
) -> services_pb2.EndorseResponse:
    """Collect endorsements and return the unsigned Transaction.

    The remote requests of a round are all sent first (``RemoteEndorsers.begin`` queues
    them on the peers' streams) and then waited for in this thread; ``pool`` is unused
    (kept for callers that still pass one).

    Peers commit the same block a few milliseconds apart, so under load a remote peer may
    simulate at another height than the local one (ENDORSEMENT_MISMATCH). The whole round
    is then repeated after a short pause, a bounded number of times.
    """
    if not request.HasField("proposal"):
        raise RxError("BAD_REQUEST", "proposal is required")
    pause = threading.Event()
    for delay in MISMATCH_RETRIES:
        try:
            return _endorse_once(deps, request)
        except RxError as err:
            if err.reason != "ENDORSEMENT_MISMATCH":
                raise
        pause.wait(delay)
    return _endorse_once(deps, request)


def _rotation(deps: GatewayDeps, policy: Policy, remote_orgs: list[str]) -> PlanRotation:
    """The cached plan rotation for ``policy`` over these remote organisations."""
    key = (policy, deps.org, tuple(remote_orgs))
    rotation = deps.plans.get(key)
    if rotation is None:  # a local reference: another thread may clear the cache meanwhile
        if len(deps.plans) > 256:
            deps.plans.clear()
        rotation = deps.plans.setdefault(key, PlanRotation(policy, [deps.org], remote_orgs))
    return rotation


def _endorse_once(
    deps: GatewayDeps, request: services_pb2.EndorseRequest
) -> services_pb2.EndorseResponse:
    signed = request.proposal
    local = deps.endorser.endorse(signed)
    if local.response.status != 200 or not local.HasField("endorsement"):
        raise RxError(local.response.reason or "CONTRACT_REJECTED", local.response.message)
    proposal = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
    header = transaction_pb2.TxHeader.FromString(proposal.header)
    invocation = transaction_pb2.ContractInvocation.FromString(proposal.invocation)
    definition = deps.policies.contract(invocation.contract, deps.ledger.state)
    if definition is None:
        raise RxError("UNKNOWN_CONTRACT", f"contract {invocation.contract!r} is not defined")
    if proposal.transient and not request.endorsing_orgs:
        # plaintext for endorsers nobody named: this peer's alone, or nobody's (module docstring)
        if not definition.policy.evaluate([(deps.org, _PEER_ROLE)]):
            raise RxError(ENDORSERS_REQUIRED, f"the proposal carries transient inputs and names no endorsing "
                          f"organisations: they go to no other organisation's peer, and this peer's endorsement "
                          f"({deps.org}) alone does not satisfy {shown(definition.policy.text)}; name the "
                          "organisations entitled to them (endorsing_orgs)")
        return _prepared(proposal, header, local, {deps.org: local})
    with_peer = {p.org for p in deps.configs.current().config.peers}
    remote_orgs = [o for o in deps.remotes.orgs() if o != deps.org and o in with_peer]
    if request.endorsing_orgs:
        unknown = [o for o in request.endorsing_orgs if o != deps.org and o not in remote_orgs]
        if unknown:
            raise RxError("BAD_REQUEST", f"no peer known for organisations {unknown}")
        wanted = [o for o in dict.fromkeys(request.endorsing_orgs) if o != deps.org]
        spare: list[str] = []
    else:
        suspects = deps.remotes.suspects()
        healthy = [o for o in remote_orgs if o not in suspects]
        chosen = _rotation(deps, definition.policy, healthy).choose() if suspects else None
        if chosen is None:  # no suspects, or the policy needs one of them
            chosen = _rotation(deps, definition.policy, remote_orgs).choose()
        if chosen is None:
            raise RxError(
                "ENDORSEMENT_POLICY_FAILURE",
                f"the peers this gateway knows cannot satisfy {definition.policy.text}",
            )
        wanted = chosen
        spare = [o for o in remote_orgs if o not in chosen]
    responses: dict[str, transaction_pb2.ProposalResponse] = {deps.org: local}
    errors: list[str] = []
    # A remote that answers differently from the local peer (another result, a contract
    # refusal, or an unknown contract) is most likely at another height: retryable.
    divergent = False
    batch = wanted
    while batch:
        futures = {org: _begin(deps.remotes, org, signed) for org in batch}
        for org, fut in futures.items():
            try:
                resp = fut.result()
            except RxError as err:
                errors.append(f"{org}: {err.reason} {err.message}")
                divergent = divergent or err.reason in _HEIGHT_SKEW_REASONS
                continue
            if resp.response.status != 200 or not resp.HasField("endorsement"):
                errors.append(f"{org}: {resp.response.status} {resp.response.reason}")
                divergent = True
                continue
            if resp.payload != local.payload:
                raise RxError(
                    "ENDORSEMENT_MISMATCH",
                    f"the peer of {org} simulated a different result (state out of sync?)",
                )
            responses[org] = resp
        if request.endorsing_orgs:
            break
        have = list(responses)
        if definition.policy.evaluate((o, _PEER_ROLE) for o in have):
            break
        more = plan(definition.policy, have, spare)
        if more is None:
            break
        spare = [o for o in spare if o not in more]
        batch = more
    # the endorsements' own principals, as the validator counts them: a peer may sign with a
    # certificate of another role (a policy naming 'org.admin'), and one named for such a
    # policy was refused here though its transaction commits valid
    satisfied = definition.policy.evaluate(_endorsers(responses))
    if not satisfied and not request.endorsing_orgs:
        raise RxError(
            "ENDORSEMENT_MISMATCH" if divergent else "ENDORSEMENT_POLICY_FAILURE",
            f"not enough endorsements for {definition.policy.text}: {'; '.join(errors)}",
        )
    if request.endorsing_orgs and len(responses) < len(wanted) + 1:
        raise RxError("ENDORSEMENT_FAILED", "; ".join(errors))
    if not satisfied:  # the organisations named (and this one) cannot: it would commit invalid
        raise RxError(
            "ENDORSEMENT_POLICY_FAILURE",
            f"the endorsements of {sorted(responses)} (the organisations named, and this gateway's) "
            f"do not satisfy {shown(definition.policy.text)}; name organisations that do",
        )
    return _prepared(proposal, header, local, responses)


def _endorsers(responses: dict[str, transaction_pb2.ProposalResponse]) -> list[tuple[str, str]]:
    """(org, role) of each endorsement of ``responses`` as its certificate names them (what
    the validator evaluates the policy over); one whose certificate does not parse counts as
    the peer of the organisation that answered (the validator refuses it anyway)."""
    out = []
    for org, resp in responses.items():
        ident = resp.endorsement.endorser
        role = _role_of(ident.cert_der)
        out.append((ident.org, role) if role else (org, _PEER_ROLE))
    return out


@functools.lru_cache(maxsize=256)
def _role_of(cert_der: bytes) -> str:
    """The role a certificate names ("" for one that does not parse: any exception, as a
    remote's certificate may be crafted); cached: the same few peers endorse every call."""
    try:
        return cert_info_der(cert_der).role
    except Exception:  # noqa: BLE001 - lazy parsing raises more than ValueError
        return ""


def _prepared(
    proposal: transaction_pb2.Proposal,
    header: transaction_pb2.TxHeader,
    local: transaction_pb2.ProposalResponse,
    responses: dict[str, transaction_pb2.ProposalResponse],
) -> services_pb2.EndorseResponse:
    """The answer: the unsigned Transaction carrying every endorsement of ``responses``."""
    tx = transaction_pb2.Transaction(
        header=proposal.header, invocation=proposal.invocation, response_payload=local.payload
    )
    for resp in responses.values():
        tx.endorsements.append(resp.endorsement)
    return services_pb2.EndorseResponse(
        prepared_transaction=tx.SerializeToString(), result=local.response, tx_id=header.tx_id
    )
