"""Gateway RPC modules, in process: endorse planning, submit checks, commit status, events."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, cast

import pytest
from rxchain.v1 import block_pb2, config_pb2, services_pb2, transaction_pb2

from bench.txbuild import TxKit
from node.crypto.canonical import compute_tx_id
from node.crypto.signing import Purpose
from node.errors import RxError
from node.identity.policy import parse_policy
from node.peer.config_view import ConfigView
from node.peer.gateway.commit_status import commit_status
from node.peer.gateway.deps import GatewayDeps
from node.peer.gateway.endorse import PlanRotation, endorse, plan
from node.peer.gateway.evaluate import evaluate
from node.peer.gateway.events import events
from node.peer.gateway.submit import submit
from node.peer.gateway.transact import transact
from node.peer.notifier import CommitNotifier
from node.peer.policy_provider import LifecyclePolicies
from node.protocol import MEMBERSHIP_VERSION
from tests.peer.conftest import COUNTER_ACCESS, COUNTER_SOURCE, Cluster, Peer
from tests.peer.kit import envelope, make_block

ORGS = ["h01", "p01", "ins01", "reg01"]


class LocalRemotes:
    """RemoteEndorsers over other in-process peers (optionally one that lies or is down)."""

    def __init__(self, peers: dict[str, Peer], down: frozenset[str] | set[str] = frozenset(), liar: str = "") -> None:
        self.peers = peers
        self.down = down
        self.liar = liar
        self.calls: list[str] = []

    def orgs(self) -> list[str]:
        return list(self.peers)

    def suspects(self) -> set[str]:
        return set()

    def close(self) -> None:
        """Nothing to close: the peers are in-process."""

    def endorse(self, org: str, signed: transaction_pb2.SignedProposal) -> transaction_pb2.ProposalResponse:
        self.calls.append(org)
        if org in self.down:
            raise RxError("SERVICE_UNAVAILABLE", f"{org} is down")
        resp = self.peers[org].endorser.endorse(signed)
        if org == self.liar:
            payload = transaction_pb2.ProposalResponsePayload.FromString(resp.payload)
            payload.gas_used += 1
            resp.payload = payload.SerializeToString()
        return resp


class FakeBroadcast:
    def __init__(self, accept: bool = True, reason: str = "") -> None:
        self.accept = accept
        self.reason = reason
        self.sent: list[transaction_pb2.Envelope] = []

    def submit(self, envelope: transaction_pb2.Envelope) -> services_pb2.BroadcastResponse:
        self.sent.append(envelope)
        return services_pb2.BroadcastResponse(accepted=self.accept, reason=self.reason)


def deps_for(cluster: Cluster, remotes: Any, broadcast: Any = None) -> tuple[GatewayDeps, CommitNotifier]:
    local = cluster.peers[0]
    notifier = CommitNotifier(local.ledger.height())
    local.committer.add_listener(notifier.on_commit)
    deps = GatewayDeps(
        org=local.org, endorser=local.endorser, ledger=local.ledger,
        configs=ConfigView(local.ledger.state, local.committer.validator._verifier),
        policies=LifecyclePolicies(), notifier=notifier, remotes=cast(Any, remotes),
        broadcast=cast(Any, broadcast or FakeBroadcast()),
    )
    return deps, notifier


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as p:
        yield p


def test_plan_picks_a_small_satisfying_set() -> None:
    pol = parse_policy("OutOf(2, h01.peer, p01.peer, ins01.peer)", ORGS)
    assert plan(pol, ["h01"], ["p01", "ins01"]) == ["p01"]
    assert plan(pol, ["reg01"], ["p01", "ins01"]) == ["p01", "ins01"]
    assert plan(pol, ["h01"], []) is None
    pol = parse_policy("AND(h01.peer, ins01.peer)", ORGS)
    assert plan(pol, ["h01"], ["p01", "ins01", "reg01"]) == ["ins01"]


def test_plan_rotation_spreads_over_valid_choices() -> None:
    pol = parse_policy("OutOf(2, h01.peer, p01.peer, ins01.peer, reg01.peer)", ORGS)
    rot = PlanRotation(pol, ["h01"], ["p01", "ins01", "reg01"])
    assert rot.options == (("p01",), ("ins01",), ("reg01",))
    assert [rot.choose() for _ in range(7)] == [["p01"], ["ins01"], ["reg01"]] * 2 + [["p01"]]
    # Only sets that satisfy the policy are offered; duplicates appear once.
    pol = parse_policy("AND(h01.peer, ins01.peer)", ORGS)
    rot = PlanRotation(pol, ["h01"], ["p01", "ins01", "reg01"])
    assert rot.options == (("ins01",),)
    assert [rot.choose() for _ in range(3)] == [["ins01"]] * 3
    pol = parse_policy("OutOf(2, h01.peer, p01.peer, ins01.peer)", ORGS)
    assert PlanRotation(pol, ["h01"], []).choose() is None
    assert PlanRotation(pol, ["h01"], ["reg01"]).choose() is None
    assert PlanRotation(pol, ["h01", "p01"], ["ins01"]).options == ((),)  # local set suffices


def test_endorse_rotates_remotes_unless_orgs_are_named(deployed: Cluster, pool) -> None:
    remotes = LocalRemotes({"p01": deployed.peers[1], "ins01": deployed.peers[2]})
    deps, _ = deps_for(deployed, remotes)
    used = []
    for i in range(4):
        signed = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": f"r{i}", "value": 1},
                                       timestamp_ms=deployed.now())
        tx = transaction_pb2.Transaction.FromString(
            endorse(deps, services_pb2.EndorseRequest(proposal=signed), pool).prepared_transaction)
        used.append(sorted(e.endorser.org for e in tx.endorsements))
    assert used == [["h01", "p01"], ["h01", "ins01"], ["h01", "p01"], ["h01", "ins01"]]
    assert remotes.calls == ["p01", "ins01", "p01", "ins01"]
    # Named organisations are exactly the endorsers, whatever the rotation's turn.
    remotes.calls.clear()
    for i in range(3):
        signed = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": f"n{i}", "value": 1},
                                       timestamp_ms=deployed.now())
        req = services_pb2.EndorseRequest(proposal=signed, endorsing_orgs=["h01", "p01"])
        tx = transaction_pb2.Transaction.FromString(endorse(deps, req, pool).prepared_transaction)
        assert sorted(e.endorser.org for e in tx.endorsements) == ["h01", "p01"]
    assert remotes.calls == ["p01"] * 3


def test_endorse_collects_what_the_policy_needs(deployed: Cluster, pool) -> None:
    remotes = LocalRemotes({"p01": deployed.peers[1], "ins01": deployed.peers[2]})
    deps, _ = deps_for(deployed, remotes)
    signed = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": "a", "value": 1},
                                   timestamp_ms=deployed.now())
    resp = endorse(deps, services_pb2.EndorseRequest(proposal=signed), pool)
    tx = transaction_pb2.Transaction.FromString(resp.prepared_transaction)
    assert [e.endorser.org for e in tx.endorsements] == ["h01", "p01"]
    assert remotes.calls == ["p01"]
    assert resp.result.status == 200 and len(resp.tx_id) == 64
    # The prepared transaction, signed by the client, commits VALID.
    payload = resp.prepared_transaction
    env = transaction_pb2.Envelope(payload=payload, signature=deployed.net.doctor.sign(Purpose.ENVELOPE, payload))
    block = deployed.commit([env.SerializeToString()])[0]
    assert block.metadata.validation_codes[0] == transaction_pb2.VALID


def test_endorse_replaces_a_down_peer(deployed: Cluster, pool) -> None:
    remotes = LocalRemotes({"p01": deployed.peers[1], "ins01": deployed.peers[2]}, down={"p01"})
    deps, _ = deps_for(deployed, remotes)
    signed = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": "a", "value": 1},
                                   timestamp_ms=deployed.now())
    resp = endorse(deps, services_pb2.EndorseRequest(proposal=signed), pool)
    tx = transaction_pb2.Transaction.FromString(resp.prepared_transaction)
    assert [e.endorser.org for e in tx.endorsements] == ["h01", "ins01"]


def test_endorse_refuses_mismatch_and_unsatisfiable(deployed: Cluster, pool) -> None:
    signed = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": "a", "value": 1},
                                   timestamp_ms=deployed.now())
    deps, _ = deps_for(deployed, LocalRemotes({"p01": deployed.peers[1]}, liar="p01"))
    with pytest.raises(RxError) as err:
        endorse(deps, services_pb2.EndorseRequest(proposal=signed), pool)
    assert err.value.reason == "ENDORSEMENT_MISMATCH"
    deps, _ = deps_for(deployed, LocalRemotes({"p01": deployed.peers[1]}, down={"p01"}))
    with pytest.raises(RxError) as err:
        endorse(deps, services_pb2.EndorseRequest(proposal=signed), pool)
    assert err.value.reason == "ENDORSEMENT_POLICY_FAILURE"
    # A contract refusal is reported with the contract's reason, nothing is prepared.
    bad = deployed.kit.proposal(deployed.net.doctor, "counter", "add", {"key": "a", "amount": 0},
                                timestamp_ms=deployed.now())
    with pytest.raises(RxError) as err:
        endorse(deps, services_pb2.EndorseRequest(proposal=bad), pool)
    assert err.value.reason == "NOT_POSITIVE"
    with pytest.raises(RxError) as err:
        endorse(deps, services_pb2.EndorseRequest(proposal=signed, endorsing_orgs=["zz9"]), pool)
    assert err.value.reason == "BAD_REQUEST"
    # Organisations named that cannot satisfy the policy (OutOf(2, ...): this gateway's alone):
    # refused here -- it was prepared, and committed ENDORSEMENT_POLICY_FAILURE
    remotes = LocalRemotes({"p01": deployed.peers[1]})
    deps, _ = deps_for(deployed, remotes)
    with pytest.raises(RxError) as err:
        endorse(deps, services_pb2.EndorseRequest(proposal=signed, endorsing_orgs=["h01"]), pool)
    assert err.value.reason == "ENDORSEMENT_POLICY_FAILURE" and "['h01']" in err.value.message
    assert remotes.calls == []


def test_evaluate_returns_contract_status(deployed: Cluster) -> None:
    deps, _ = deps_for(deployed, LocalRemotes({}))
    ok = deployed.kit.proposal(deployed.net.doctor, "counter", "get", {"key": "a"},
                               timestamp_ms=deployed.now())
    assert evaluate(deps, services_pb2.EvaluateRequest(proposal=ok)).result.payload == b'{"value":null}'
    bad = deployed.kit.proposal(deployed.net.doctor, "counter", "add", {"key": "a", "amount": -3},
                                timestamp_ms=deployed.now())
    result = evaluate(deps, services_pb2.EvaluateRequest(proposal=bad)).result
    assert (result.status, result.reason) == (400, "NOT_POSITIVE")
    with pytest.raises(RxError) as err:
        evaluate(deps, services_pb2.EvaluateRequest())
    assert err.value.reason == "BAD_REQUEST"


def _prepared(deployed: Cluster, key: str) -> tuple[str, transaction_pb2.Envelope]:
    signed = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": key, "value": 1},
                                   timestamp_ms=deployed.now())
    responses = deployed.endorse_all(signed, deployed.peers[:2])
    prop = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
    tx = transaction_pb2.Transaction(header=prop.header, invocation=prop.invocation,
                                     response_payload=responses[0].payload,
                                     endorsements=[r.endorsement for r in responses])
    raw = tx.SerializeToString()
    header = transaction_pb2.TxHeader.FromString(prop.header)
    return header.tx_id, transaction_pb2.Envelope(payload=raw, signature=deployed.net.doctor.sign(Purpose.ENVELOPE, raw))


def test_submit_checks_input_and_maps_refusals(deployed: Cluster) -> None:
    fake = FakeBroadcast()
    deps, _ = deps_for(deployed, LocalRemotes({}), fake)
    tx_id, env = _prepared(deployed, "s1")
    assert submit(deps, services_pb2.SubmitRequest(envelope=env)).tx_id == tx_id
    assert fake.sent == [env]
    for bad, reason in [
        (transaction_pb2.Envelope(payload=b"\xff\xff", signature=b"x"), "BAD_PAYLOAD"),
        (transaction_pb2.Envelope(payload=b"", signature=b""), "BAD_PAYLOAD"),
        (transaction_pb2.Envelope(payload=b"\x0a" + b"\x00" * (300 << 10), signature=b"x"), "TOO_LARGE"),
    ]:
        with pytest.raises(RxError) as err:
            submit(deps, services_pb2.SubmitRequest(envelope=bad))
        assert err.value.reason == reason
    assert len(fake.sent) == 1
    deps, _ = deps_for(deployed, LocalRemotes({}), FakeBroadcast(False, "BAD_SIGNATURE"))
    with pytest.raises(RxError) as err:
        submit(deps, services_pb2.SubmitRequest(envelope=env))
    assert err.value.reason == "BAD_SIGNATURE"


def test_commit_status_immediate_waiting_and_timeout(deployed: Cluster) -> None:
    deps, _ = deps_for(deployed, LocalRemotes({}))
    tx_id, env = _prepared(deployed, "c1")
    with pytest.raises(RxError) as err:
        commit_status(deps, services_pb2.CommitStatusRequest(tx_id=tx_id, timeout_ms=50))
    assert err.value.reason == "TIMEOUT"
    with pytest.raises(RxError) as err:
        commit_status(deps, services_pb2.CommitStatusRequest(tx_id="nope"))
    assert err.value.reason == "BAD_REQUEST"
    answer: list[services_pb2.CommitStatusResponse] = []
    waiter = threading.Thread(target=lambda: answer.append(commit_status(
        deps, services_pb2.CommitStatusRequest(tx_id=tx_id, timeout_ms=10_000))))
    waiter.start()
    block = deployed.commit([env.SerializeToString()])[0]
    waiter.join(10)
    assert answer and answer[0].code == transaction_pb2.VALID
    assert answer[0].block_number == block.header.number
    again = commit_status(deps, services_pb2.CommitStatusRequest(tx_id=tx_id, timeout_ms=1))
    assert (again.code, again.block_number) == (transaction_pb2.VALID, block.header.number)


def test_events_from_checkpoint_and_follow(deployed: Cluster) -> None:
    deps, notifier = deps_for(deployed, LocalRemotes({}))
    start = deployed.peers[0].ledger.height()
    _, env1 = _prepared(deployed, "e1")
    deployed.commit([env1.SerializeToString()])
    # A block with two writes and a replayed copy: the copy is DUPLICATE_TXID and its event
    # is not reported.
    s1 = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": "e2", "value": 1},
                               timestamp_ms=deployed.now())
    s2 = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": "e2", "value": 2},
                               timestamp_ms=deployed.now())
    from tests.peer.kit import envelope
    e1 = envelope(deployed.net.doctor, s1, deployed.endorse_all(s1, deployed.peers[:2]))
    e2 = envelope(deployed.net.doctor, s2, deployed.endorse_all(s2, deployed.peers[:2]))
    deployed.commit([e1, e2, e1])
    got = list(events(deps, services_pb2.EventsRequest(start_block=start, contract="counter"), lambda: True))
    assert [g.block_number for g in got] == [start, start + 1]
    assert [t.code for t in got[1].txs] == [transaction_pb2.VALID, transaction_pb2.VALID,
                                            transaction_pb2.DUPLICATE_TXID]
    assert len(got[1].events) == 2
    # Follow: a block committed later is delivered on the open stream.
    stream = events(deps, services_pb2.EventsRequest(start_block=start + 2, follow=True), lambda: True)
    box: list[services_pb2.EventsResponse] = []
    reader = threading.Thread(target=lambda: box.append(next(stream)))
    reader.start()
    _, env3 = _prepared(deployed, "e3")
    deployed.commit([env3.SerializeToString()])
    reader.join(10)
    assert box and box[0].block_number == start + 2 and box[0].txs[0].function == "put"
    assert [e.name for e in box[0].events] == ["stored"]
    notifier.close()


class OrderingBroadcast:
    """Orders each submitted envelope into its own block on the cluster (async answer)."""

    def __init__(self, cluster: Cluster, refuse: frozenset[bytes] | set[bytes] = frozenset()) -> None:
        self.cluster = cluster
        self.refuse = refuse
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def submit_async(self, envelope, callback) -> None:
        def work() -> None:
            if envelope.payload in self.refuse:
                callback(services_pb2.BroadcastResponse(accepted=False, reason="BAD_SIGNATURE"))
                return
            callback(services_pb2.BroadcastResponse(accepted=True))
            with self.lock:
                self.cluster.commit([envelope.SerializeToString()])
        t = threading.Thread(target=work)
        self.threads.append(t)
        t.start()

    def join(self) -> None:
        for t in self.threads:  # the other peers may still be committing
            t.join(10)


def test_transact_pipelines_endorse_and_submit(deployed: Cluster, pool) -> None:
    remotes = LocalRemotes({"p01": deployed.peers[1], "ins01": deployed.peers[2]})
    deps, notifier = deps_for(deployed, remotes)
    proposals = [deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": f"t{i}", "value": i},
                                       timestamp_ms=deployed.now()) for i in range(6)]
    reqs = [services_pb2.TransactRequest(correlation_id=i, endorse=services_pb2.EndorseRequest(proposal=p))
            for i, p in enumerate(proposals)]
    reqs.append(services_pb2.TransactRequest(correlation_id=99))  # neither endorse nor submit
    from node.peer.gateway.transact import transact
    with ThreadPoolExecutor(4) as work:
        out = list(transact(deps, iter(reqs), lambda: True, work, pool))
    by_id = {r.correlation_id: r for r in out}
    assert by_id[99].error.reason == "BAD_REQUEST"
    assert all(by_id[i].WhichOneof("kind") == "endorsed" for i in range(6))
    envs = {}
    for i in range(6):
        raw = by_id[i].endorsed.prepared_transaction
        envs[i] = transaction_pb2.Envelope(payload=raw, signature=deployed.net.doctor.sign(Purpose.ENVELOPE, raw))
    refused = envs[5].payload
    ordering = OrderingBroadcast(deployed, {refused})
    deps = GatewayDeps(**{**deps.__dict__, "broadcast": cast(Any, ordering)})
    subs = [services_pb2.TransactRequest(correlation_id=100 + i, submit=e) for i, e in envs.items()]
    with ThreadPoolExecutor(4) as work:
        out = list(transact(deps, iter(subs), lambda: True, work, pool))
    ordering.join()
    by_id = {r.correlation_id: r for r in out}
    assert sorted(by_id) == [100 + i for i in range(6)]
    for i in range(5):
        assert by_id[100 + i].committed.code == transaction_pb2.VALID
    assert by_id[105].error.reason == "BAD_SIGNATURE"
    # Re-submitting a committed envelope answers at once from the tx index.
    with ThreadPoolExecutor(2) as work:
        again = list(transact(deps, iter(subs[:1]), lambda: True, work, pool))
    assert again[0].committed.block_number == by_id[100].committed.block_number
    notifier.close()


def test_transact_commit_timeout(deployed: Cluster, pool) -> None:
    class Silent:
        def submit_async(self, envelope, callback) -> None:
            callback(services_pb2.BroadcastResponse(accepted=True))  # accepted, never ordered

    deps, notifier = deps_for(deployed, LocalRemotes({}), Silent())
    _, env = _prepared(deployed, "lost")
    from node.peer.gateway.transact import transact
    with ThreadPoolExecutor(2) as work:
        out = list(transact(deps, iter([services_pb2.TransactRequest(correlation_id=7, submit=env)]),
                            lambda: True, work, pool, commit_timeout_ms=300))
    assert [(r.correlation_id, r.error.reason) for r in out] == [(7, "TIMEOUT")]
    notifier.close()


def test_endorse_retries_a_lagging_remote(deployed: Cluster, pool) -> None:
    class Lagging(LocalRemotes):
        def endorse(self, org, signed):
            self.calls.append(org)
            if len(self.calls) <= 2:  # first round: both remotes still at an older height
                return transaction_pb2.ProposalResponse(
                    response=transaction_pb2.Response(status=400, reason="UNKNOWN_KEY"))
            return self.peers[org].endorser.endorse(signed)

    remotes = Lagging({"p01": deployed.peers[1], "ins01": deployed.peers[2]})
    deps, _ = deps_for(deployed, remotes)
    signed = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": "a", "value": 1},
                                   timestamp_ms=deployed.now())
    resp = endorse(deps, services_pb2.EndorseRequest(proposal=signed), pool)
    assert len(transaction_pb2.Transaction.FromString(resp.prepared_transaction).endorsements) == 2
    # Round one asked p01, then ins01 as its replacement; the repeated round takes the
    # rotation's next plan (ins01).
    assert remotes.calls == ["p01", "ins01", "ins01"]


def test_submit_refuses_a_committed_tx_id_at_intake() -> None:
    from types import SimpleNamespace

    from rxchain.v1 import identity_pb2

    creator = identity_pb2.Identity(org="h01", cert_der=b"cert")
    nonce = b"n" * 24
    tx_id = compute_tx_id(nonce, creator)
    header = transaction_pb2.TxHeader(tx_id=tx_id, type=transaction_pb2.INVOKE, creator=creator, nonce=nonce)
    env = transaction_pb2.Envelope(
        payload=transaction_pb2.Transaction(header=header.SerializeToString()).SerializeToString(),
        signature=b"sig")

    class _Ledger:
        def __init__(self, known: set[str]) -> None:
            self.known = known

        def tx_location(self, tx: str) -> object | None:
            return object() if tx in self.known else None

    class _Configs:
        def current(self) -> object:
            return SimpleNamespace(config=config_pb2.ConsortiumConfig())

    sent: list[transaction_pb2.Envelope] = []

    class _Broadcast:
        def submit(self, e: transaction_pb2.Envelope) -> services_pb2.BroadcastResponse:
            sent.append(e)
            return services_pb2.BroadcastResponse(tx_id=tx_id, accepted=True)

    request = services_pb2.SubmitRequest(envelope=env)
    fresh = SimpleNamespace(ledger=_Ledger(set()), configs=_Configs(), broadcast=_Broadcast(), on_submit=None)
    assert submit(cast(GatewayDeps, fresh), request).tx_id == tx_id
    seen = SimpleNamespace(ledger=_Ledger({tx_id}), configs=_Configs(), broadcast=_Broadcast(), on_submit=None)
    with pytest.raises(RxError) as e:
        submit(cast(GatewayDeps, seen), request)
    assert e.value.reason == "DUPLICATE_TXID"
    assert len(sent) == 1  # the replay never reached the ordering service


def test_plans_leave_out_an_org_that_did_not_answer_while_the_policy_allows(deployed: Cluster, pool) -> None:
    class Suspicious(LocalRemotes):
        suspected: ClassVar[set[str]] = set()

        def suspects(self) -> set[str]:
            return set(self.suspected)

    remotes = Suspicious({"p01": deployed.peers[1], "ins01": deployed.peers[2]})
    deps, _ = deps_for(deployed, remotes)

    def endorse_one(key: str) -> None:
        signed = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": key, "value": 1},
                                       timestamp_ms=deployed.now())
        resp = endorse(deps, services_pb2.EndorseRequest(proposal=signed), pool)
        assert len(transaction_pb2.Transaction.FromString(resp.prepared_transaction).endorsements) == 2

    Suspicious.suspected = {"p01"}  # OutOf(2, h01, p01, ins01): ins01 alone will do
    for i in range(4):
        endorse_one(f"s{i}")
    assert remotes.calls == ["ins01"] * 4
    remotes.calls.clear()
    Suspicious.suspected = {"p01", "ins01"}  # the policy needs one of them: asked anyway
    endorse_one("s9")
    assert len(remotes.calls) == 1
    remotes.calls.clear()
    Suspicious.suspected = set()  # both healthy: the rotation spreads the load again
    for i in range(4):
        endorse_one(f"t{i}")
    assert set(remotes.calls) == {"p01", "ins01"}


def test_endorse_never_plans_an_organisation_the_config_no_longer_has(deployed: Cluster, pool) -> None:
    """A config update removes p01 (and its peer); the gateway's node.yaml still names p01's
    peer, which never saw the update (its block stream was cut at it: it still endorses under
    the old config). The gateway plans only organisations with a peer in the config in force,
    so every tx is endorsed by h01 and ins01 and commits VALID, and naming p01 is refused.
    Before the fix one plan in two asked p01, whose endorsement made the tx BAD_ENDORSEMENT."""
    net = deployed.net
    cfg = deployed.peers[0].ledger.current_config()
    assert cfg is not None
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(cfg)
    new.sequence += 1
    new.protocol_version = MEMBERSHIP_VERSION  # the contract's policy naming p01 stays readable
    orgs = [o for o in new.organizations if o.id != "p01"]
    peers = [p for p in new.peers if p.org != "p01"]
    del new.organizations[:], new.peers[:]
    new.organizations.extend(orgs)
    new.peers.extend(peers)
    new.retired_org_ids.append("p01")  # the update raising to version 2 retires what it removes
    kit = TxKit(net.consortium_id, random.Random(3), clock_ms=deployed.now())
    update = kit.config_tx(net.admins["h01"], new, [net.admins["h01"], net.admins["ins01"]])
    ref = deployed.peers[0].ledger
    block = make_block(ref.height(), ref.blocks.last_hash(), [update], net.orderer)
    for p in (deployed.peers[0], deployed.peers[2]):  # not p01's peer
        copy = block_pb2.Block()
        copy.CopyFrom(block)
        assert list(p.committer.commit_block(copy).validated.codes) == [transaction_pb2.VALID]
    remotes = LocalRemotes({"p01": deployed.peers[1], "ins01": deployed.peers[2]})
    deps, _ = deps_for(deployed, remotes)
    envelopes = []
    for i in range(4):
        signed = deployed.kit.proposal(net.doctor, "counter", "put", {"key": f"g{i}", "value": 1},
                                       timestamp_ms=deployed.now())
        tx = transaction_pb2.Transaction.FromString(
            endorse(deps, services_pb2.EndorseRequest(proposal=signed), pool).prepared_transaction)
        assert sorted(e.endorser.org for e in tx.endorsements) == ["h01", "ins01"]
        envelopes.append(kit.seal(net.doctor, tx))
    assert "p01" not in remotes.calls
    # stamped: from version 2 an unstamped block has no orderer signature that counts
    committed = make_block(ref.height(), ref.blocks.last_hash(), envelopes, net.orderer, deployed.now())
    codes = list(deployed.peers[0].committer.commit_block(committed).validated.codes)
    assert codes == [transaction_pb2.VALID] * 4
    signed = deployed.kit.proposal(net.doctor, "counter", "put", {"key": "named", "value": 1},
                                   timestamp_ms=deployed.now())
    with pytest.raises(RxError) as info:
        endorse(deps, services_pb2.EndorseRequest(proposal=signed, endorsing_orgs=["p01"]), pool)
    assert info.value.reason == "BAD_REQUEST"


def test_transient_inputs_reach_no_peer_the_client_did_not_name(deployed: Cluster, pool) -> None:
    """A proposal carrying transient inputs (plaintext for its endorsers) with no endorsing_orgs
    was sent to whichever peers the gateway's rotation picked for the policy (another
    organisation's peer received the plaintext). Now the gateway's own endorsement answers it
    alone when it satisfies the policy, else ENDORSERS_REQUIRED with nothing sent anywhere;
    organisations named get it, and only they."""
    remotes = LocalRemotes({"p01": deployed.peers[1], "ins01": deployed.peers[2]})
    deps, _ = deps_for(deployed, remotes)

    def secret() -> transaction_pb2.SignedProposal:
        return deployed.kit.proposal(deployed.net.doctor, "counter", "secret", {}, timestamp_ms=deployed.now(),
                                     transient={"secret": b'"plaintext"'})

    for _ in range(2):  # whatever the rotation's turn
        with pytest.raises(RxError) as err:
            endorse(deps, services_pb2.EndorseRequest(proposal=secret()), pool)
        assert err.value.reason == "ENDORSERS_REQUIRED" and "OutOf(2" in err.value.message
    assert remotes.calls == []
    # the same through a Transact stream (one engine: endorse())
    answers = list(transact(deps, iter([services_pb2.TransactRequest(
        correlation_id=1, endorse=services_pb2.EndorseRequest(proposal=secret()))]),
        lambda: True, pool, pool))
    assert [a.error.reason for a in answers] == ["ENDORSERS_REQUIRED"] and remotes.calls == []
    # named: exactly those
    req = services_pb2.EndorseRequest(proposal=secret(), endorsing_orgs=["h01", "ins01"])
    tx = transaction_pb2.Transaction.FromString(endorse(deps, req, pool).prepared_transaction)
    assert sorted(e.endorser.org for e in tx.endorsements) == ["h01", "ins01"] and remotes.calls == ["ins01"]
    # without transient inputs the gateway still picks for the policy
    remotes.calls.clear()
    plain = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": "p", "value": 1},
                                  timestamp_ms=deployed.now())
    tx = transaction_pb2.Transaction.FromString(
        endorse(deps, services_pb2.EndorseRequest(proposal=plain), pool).prepared_transaction)
    assert len(tx.endorsements) == 2 and len(remotes.calls) == 1


def test_transient_inputs_without_endorsers_are_endorsed_locally_when_that_satisfies(cluster: Cluster,
                                                                                     pool) -> None:
    """A policy this peer's endorsement satisfies alone: the proposal is answered with it, no
    remote peer asked."""
    d = cluster.deploy("counter", COUNTER_SOURCE, "OutOf(1, h01.peer, p01.peer, ins01.peer)", COUNTER_ACCESS)
    _, code = cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d)
    assert code == transaction_pb2.VALID
    remotes = LocalRemotes({"p01": cluster.peers[1], "ins01": cluster.peers[2]})
    deps, _ = deps_for(cluster, remotes)
    signed = cluster.kit.proposal(cluster.net.doctor, "counter", "secret", {}, timestamp_ms=cluster.now(),
                                  transient={"secret": b'"plaintext"'})
    resp = endorse(deps, services_pb2.EndorseRequest(proposal=signed), pool)
    tx = transaction_pb2.Transaction.FromString(resp.prepared_transaction)
    assert [e.endorser.org for e in tx.endorsements] == ["h01"] and remotes.calls == []
    payload = resp.prepared_transaction
    env = transaction_pb2.Envelope(payload=payload, signature=cluster.net.doctor.sign(Purpose.ENVELOPE, payload))
    assert cluster.commit([env.SerializeToString()])[0].metadata.validation_codes[0] == transaction_pb2.VALID


class AdminSignedRemotes(LocalRemotes):
    """Remotes whose peers sign their endorsements with their organisation's admin
    certificate (a peer operated with a signing identity of another role)."""

    def __init__(self, peers: dict[str, Peer], admins: dict[str, Any]) -> None:
        super().__init__(peers)
        self.admins = admins

    def endorse(self, org: str, signed: transaction_pb2.SignedProposal) -> transaction_pb2.ProposalResponse:
        resp = super().endorse(org, signed)
        admin = self.admins[org]
        resp.endorsement.endorser.CopyFrom(admin.identity)
        resp.endorsement.signature = admin.sign(Purpose.ENDORSEMENT, resp.payload)
        return resp


def test_named_endorsers_are_judged_by_their_certificates_roles(deployed: Cluster, pool) -> None:
    """The named organisations' endorsements are evaluated as the validator evaluates them,
    with the roles their certificates carry: a named peer signing with its organisation's
    admin certificate (a misconfigured signing identity) counted as a peer here, so the
    transaction was prepared, ordered and committed ENDORSEMENT_POLICY_FAILURE."""
    signed = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": "a", "value": 1},
                                   timestamp_ms=deployed.now())
    remotes = AdminSignedRemotes({"p01": deployed.peers[1]}, deployed.net.admins)
    deps, _ = deps_for(deployed, remotes)
    with pytest.raises(RxError) as err:
        endorse(deps, services_pb2.EndorseRequest(proposal=signed, endorsing_orgs=["p01"]), pool)
    assert err.value.reason == "ENDORSEMENT_POLICY_FAILURE" and "['h01', 'p01']" in err.value.message
    # what the validator makes of those endorsements: the policy (OutOf(2, *.peer)) fails
    responses = [deployed.peers[0].endorser.endorse(signed), remotes.endorse("p01", signed)]
    block = deployed.commit([envelope(deployed.net.doctor, signed, responses)])[0]
    assert block.metadata.validation_codes[0] == transaction_pb2.ENDORSEMENT_POLICY_FAILURE
    # the same organisations' peers signing as peers are prepared
    signed = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": "b", "value": 1},
                                   timestamp_ms=deployed.now())
    deps, _ = deps_for(deployed, LocalRemotes({"p01": deployed.peers[1]}))
    resp = endorse(deps, services_pb2.EndorseRequest(proposal=signed, endorsing_orgs=["p01"]), pool)
    assert len(transaction_pb2.Transaction.FromString(resp.prepared_transaction).endorsements) == 2
