"""Red-team regressions: the contract lifecycle (install / approve / commit) and the code it admits.

Before the fixes:

* install ran only the static checker, which parses but does not compile: a package the
  compiler refuses (``break`` outside a loop, a duplicate parameter, a starred assignment
  target, a repeated keyword argument) installed, was approved and committed, and then every
  call killed a sandbox worker (WORKER_CRASHED, a respawn per call; in-process: an escaping
  SyntaxError, SERVICE_UNAVAILABLE);
* approve and commit accepted an endorsement policy naming clients (``h01.member``,
  ``h01.doctor``, ``MAJORITY(admin)``): the validator counts any valid member's signature as
  an endorsement, so one doctor could sign her own read/write set for the contract; and a
  policy the consortium's peers can never satisfy, which leaves the contract unusable;
* commit did not look at the endorsement policy again under the config in force;
* install accepted a lone surrogate in the source (an escaping UnicodeEncodeError: INTERNAL
  with no reason) and versions no definition can carry.

The other tests pin attacks that were already refused (cross-org approval, replayed or
out-of-sequence definitions, unknown packages, system or path-like names, non-admin callers).
"""

from __future__ import annotations

import json
import random
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rxchain.v1 import config_pb2, transaction_pb2

from node.crypto.canonical import compute_tx_id
from node.crypto.signing import Purpose, Signer, Verifier
from node.errors import RxError
from node.identity import policy as policy_module
from node.identity.policy import EXACT_POLICY_VERSION, MAX_SIGNERS, parse_policy
from node.peer.config_view import ConfigView
from node.peer.definitions import ContractDefinition
from node.peer.endorser import Endorser
from node.peer.lifecycle import Lifecycle, approval_prefix, package_hash, package_key
from node.peer.policy_provider import LifecyclePolicies
from node.peer.simulator import SimulationLimits, TxSimulator
from node.protocol import MEMBERSHIP_VERSION
from node.sandbox import types as t
from node.sandbox.inprocess import InProcessRunner
from node.sandbox.package import ContractPackage
from node.sandbox.runtime import Sandbox
from tests.peer.conftest import COUNTER_ACCESS, COUNTER_SOURCE, Cluster, Peer
from tests.peer.kit import envelope, payload_json

POLICY = "OutOf(2, h01.peer, p01.peer, ins01.peer)"
VALID = transaction_pb2.VALID
HEAD = "from rxchain_contract import Context\n\n\n"

# Sources the checker accepts and the compiler refuses, with the line the compiler names.
UNCOMPILABLE = {
    "break outside a loop": (HEAD + "def f(ctx: Context) -> int:\n    break\n", 5),
    "duplicate parameter": (HEAD + "def f(ctx: Context, a: int, a: int) -> int:\n    return a\n", 4),
    "starred assignment target": (HEAD + "def f(ctx: Context) -> int:\n    *a = [1]\n    return 1\n", 5),
    "repeated keyword": (HEAD + "def f(ctx: Context) -> int:\n    return int(x=1, x=2)\n", 5),
}
BREAK = UNCOMPILABLE["break outside a loop"][0]


def _call(cluster: Cluster, signer: Signer, function: str, args: dict[str, Any],
          peer: int = 0) -> transaction_pb2.ProposalResponse:
    signed = cluster.kit.proposal(signer, "_lifecycle", function, args, timestamp_ms=cluster.now())
    return cluster.peers[peer].endorser.endorse(signed)


def _definition(name: str, version: str, source: str, *, sequence: int = 1,
                policy: str = POLICY, access: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {"name": name, "version": version, "sequence": sequence, "endorsement_policy": policy,
            "access": access if access is not None else {"*": ["*"]},
            "code_hash": package_hash(name, version, source)}


def _installed(cluster: Cluster) -> dict[str, Any]:
    """The counter package installed (not approved)."""
    _, code = cluster.transact(cluster.net.admins["h01"], "_lifecycle", "install",
                               {"name": "counter", "version": "1.0", "source": COUNTER_SOURCE})
    assert code == VALID
    return _definition("counter", "1.0", COUNTER_SOURCE, access=COUNTER_ACCESS)


# ----------------------------------------------------------------- packages the compiler refuses


@pytest.mark.parametrize(("source", "line"), list(UNCOMPILABLE.values()), ids=list(UNCOMPILABLE))
def test_install_refuses_a_package_only_the_compiler_rejects(cluster: Cluster, source: str, line: int) -> None:
    resp = _call(cluster, cluster.net.admins["h01"], "install",
                 {"name": "broken", "version": "1", "source": source})
    assert (resp.response.status, resp.response.reason) == (400, "CONTRACT_REJECTED")
    assert resp.response.message.startswith(f"line {line}: syntax error")
    assert not resp.HasField("endorsement")


def _broken_invocation() -> t.Invocation:
    return t.Invocation("broken", package_hash("broken", "1", BREAK), BREAK, "f", b"{}", "tx", 1,
                        t.CallerInfo("h01", "doctor"), {}, 100_000, t.SandboxLimits())


def test_in_process_runner_answers_contract_rejected() -> None:
    """A package that slipped in before the fix: the same answer as a worker, not a SyntaxError."""
    r = InProcessRunner().invoke(_broken_invocation(), _NoState())
    assert (r.ok, r.reason) == (False, t.CONTRACT_REJECTED)
    assert r.message == "line 5: syntax error: 'break' outside loop"


def test_sandbox_worker_answers_contract_rejected_and_lives_on() -> None:
    """Before: the SyntaxError escaped the worker's serve loop, the worker exited
    (WORKER_CRASHED) and was respawned, on every call."""
    sandbox = Sandbox(workers=1)
    try:
        for _ in range(2):
            r = sandbox.invoke(_broken_invocation(), _NoState())
            assert (r.ok, r.reason) == (False, t.CONTRACT_REJECTED), r
        assert sandbox.stats()["restarts"] == 0
    finally:
        sandbox.close()


def test_committed_package_that_cannot_compile_is_a_clear_refusal_at_endorse(cluster: Cluster) -> None:
    """Two peers still running the old install check put such a package on the ledger; the
    definition commits; endorsing a call answers CONTRACT_REJECTED (status 400, no
    endorsement) instead of failing the endorser."""
    source = BREAK
    admins = cluster.net.admins
    lax = [_lax_endorser(cluster, p) for p in cluster.peers[:2]]
    signed = cluster.kit.proposal(admins["h01"], "_lifecycle", "install",
                                  {"name": "broken", "version": "1", "source": source},
                                  timestamp_ms=cluster.now())
    block = cluster.commit([envelope(admins["h01"], signed, [e.endorse(signed) for e in lax])])[0]
    assert block.metadata.validation_codes[0] == VALID
    d = _definition("broken", "1", source)
    for org in ("h01", "p01"):
        assert cluster.transact(admins[org], "_lifecycle", "approve", d)[1] == VALID
    assert cluster.transact(admins["ins01"], "_lifecycle", "commit", d)[1] == VALID
    for peer in range(3):
        signed = cluster.kit.proposal(cluster.net.doctor, "broken", "f", {}, timestamp_ms=cluster.now())
        resp = cluster.peers[peer].endorser.endorse(signed)
        assert (resp.response.status, resp.response.reason) == (400, "CONTRACT_REJECTED")
        assert "line 5" in resp.response.message
        assert not resp.HasField("endorsement")


# ----------------------------------------------------------------- endorsement policies


@pytest.mark.parametrize("policy", [
    "OR(h01.member, p01.peer)",
    "OutOf(1, h01.doctor, p01.peer)",
    "MAJORITY(admin)",
    "AND(p01.peer, ins01.clerk)",
])
def test_endorsement_policy_naming_clients_is_refused(cluster: Cluster, policy: str) -> None:
    d = dict(_installed(cluster), endorsement_policy=policy)
    for function, admin in (("approve", "h01"), ("commit", "ins01")):
        resp = _call(cluster, cluster.net.admins[admin], function, d)
        assert (resp.response.status, resp.response.reason) == (400, "BAD_POLICY"), function
        assert "signed by peers" in resp.response.message
        assert not resp.HasField("endorsement")


@pytest.mark.parametrize("policy", [
    "AND(h01.peer, h01.peer)",  # one signer satisfies one principal
    "OutOf(3, h01.peer, p01.peer, p01.peer)",
])
def test_endorsement_policy_no_set_of_peers_satisfies_is_refused(cluster: Cluster, policy: str) -> None:
    d = dict(_installed(cluster), endorsement_policy=policy)
    resp = _call(cluster, cluster.net.admins["h01"], "approve", d)
    assert (resp.response.status, resp.response.reason) == (400, "UNSATISFIABLE_POLICY")


def test_commit_checks_the_policy_under_the_config_in_force(cluster: Cluster) -> None:
    """Approved while p01 ran a peer; by the commit the config lists no peer of p01: the
    definition would name an endorser that no longer exists."""
    d = dict(_installed(cluster), endorsement_policy="AND(h01.peer, p01.peer)")
    for org in ("h01", "p01"):
        assert cluster.transact(cluster.net.admins[org], "_lifecycle", "approve", d)[1] == VALID
    peer = cluster.peers[0]
    current = ConfigView(peer.ledger.state, Verifier()).current()
    caller = current.msp.validate(cluster.net.admins["ins01"].identity, cluster.now())
    without_p01 = config_pb2.ConsortiumConfig()
    without_p01.CopyFrom(current.config)
    kept = [p for p in without_p01.peers if p.org != "p01"]
    del without_p01.peers[:]
    without_p01.peers.extend(kept)
    outcomes = []
    for config in (current.config, without_p01):
        with peer.ledger.snapshot() as snap:
            sim = TxSimulator(snap, "_lifecycle")
            r = Lifecycle().invoke(sim, "commit", d, caller, config)
        outcomes.append((r.status, r.reason))
    assert outcomes == [(200, ""), (400, "UNSATISFIABLE_POLICY")]


ORGS = ("a", "b", "c", "d", "e")
ROLES = ("peer", "admin", "member")
_principal = st.tuples(st.sampled_from(ORGS), st.sampled_from(ROLES))


@settings(max_examples=400, deadline=None)
@given(rules=st.lists(_principal, min_size=1, max_size=8), n=st.integers(1, 8),
       signers=st.sets(st.tuples(st.sampled_from(ORGS), st.sampled_from(("peer", "admin", "doctor"))),
                       max_size=12))
def test_flat_policy_matching_agrees_with_subset_enumeration(
        rules: list[tuple[str, str]], n: int, signers: set[tuple[str, str]]) -> None:
    """OutOf(n, principals...) is decided by a matching (MAJORITY(peer) over 16 signing orgs cost
    the validator 14 ms per tx, and any member can get a _lifecycle query endorsed by every
    peer); it must answer exactly as the general subset enumeration does."""
    n = min(n, len(rules))
    text = f"OutOf({n}, {', '.join(f'{o}.{r}' for o, r in rules)})"
    policy = parse_policy(text, ORGS)
    assert policy.evaluate(signers) == bool(policy_module._masks(policy.rule, sorted(signers)))


def test_flat_policy_is_not_decided_by_enumerating_subsets(monkeypatch: pytest.MonkeyPatch) -> None:
    orgs = [f"o{i:02d}" for i in range(16)]
    calls: list[object] = []
    real = policy_module._masks

    def counting(rule: Any, signers: Any) -> Any:
        calls.append(rule)
        return real(rule, signers)

    monkeypatch.setattr(policy_module, "_masks", counting)
    majority = parse_policy("MAJORITY(peer)", orgs)
    assert majority.evaluate((o, "peer") for o in orgs)
    assert not majority.evaluate((o, "peer") for o in orgs[:8])
    assert calls == []
    nested = parse_policy("AND(OutOf(1, o00.peer), OutOf(1, o01.peer, o02.peer))", orgs)
    assert nested.evaluate([("o00", "peer"), ("o02", "peer")])
    assert calls  # nested policies still take the general path


# ----------------------------------------------------------------- install input


def test_install_lone_surrogate_is_bad_arguments(cluster: Cluster) -> None:
    args = b'{"name":"counter","source":"x = \\"\\ud800\\"\\n","version":"1"}'
    signed = _raw_proposal(cluster, cluster.net.admins["h01"], "_lifecycle", "install", args)
    resp = cluster.peers[0].endorser.endorse(signed)
    assert (resp.response.status, resp.response.reason) == (400, "BAD_ARGUMENTS")


def test_oversized_package_is_refused_before_it_is_compiled(cluster: Cluster) -> None:
    """The state's value limit (4096 bytes here) is checked before the source is compiled
    (which costs up to seconds of CPU for a crafted 256 KiB package)."""
    compiled: list[str] = []

    def recording_check(name: str, version: str, source: str) -> None:
        compiled.append(name)

    peer = cluster.peers[0]
    current = ConfigView(peer.ledger.state, Verifier()).current()
    caller = current.msp.validate(cluster.net.admins["h01"].identity, cluster.now())
    big = COUNTER_SOURCE + "#" * 5000 + "\n"
    outcomes = []
    for source in (COUNTER_SOURCE, big):
        with peer.ledger.snapshot() as snap:
            sim = TxSimulator(snap, "_lifecycle", SimulationLimits(max_value_bytes=4096))
            r = Lifecycle(recording_check).invoke(
                sim, "install", {"name": "counter", "version": "1", "source": source}, caller, current.config)
        outcomes.append((r.status, r.reason))
    assert outcomes == [(200, ""), (400, "SIZE_LIMIT")]
    assert compiled == ["counter"]  # the small one only


@pytest.mark.parametrize("version", ["1.0/../../x", "v" * 33, "1 0", ""])
def test_install_refuses_a_version_no_definition_can_carry(cluster: Cluster, version: str) -> None:
    resp = _call(cluster, cluster.net.admins["h01"], "install",
                 {"name": "counter", "version": version, "source": COUNTER_SOURCE})
    assert (resp.response.status, resp.response.reason) == (400, "BAD_ARGUMENTS")


@pytest.mark.parametrize("name", ["_lifecycle", "_system", "../counter", "a/b", "Counter", "x" * 65])
def test_install_refuses_system_and_path_like_names(cluster: Cluster, name: str) -> None:
    resp = _call(cluster, cluster.net.admins["h01"], "install",
                 {"name": name, "version": "1", "source": COUNTER_SOURCE})
    assert (resp.response.status, resp.response.reason) == (400, "BAD_ARGUMENTS")


def test_installing_the_same_package_twice_changes_nothing(cluster: Cluster) -> None:
    d = _installed(cluster)
    key = package_key(d["code_hash"])
    before = cluster.peers[0].ledger.get("_lifecycle", key)
    resp, code = cluster.transact(cluster.net.admins["p01"], "_lifecycle", "install",
                                  {"name": "counter", "version": "1.0", "source": COUNTER_SOURCE})
    assert code == VALID and payload_json(resp)["code_hash"] == d["code_hash"]
    results = transaction_pb2.ProposalResponsePayload.FromString(resp.payload).results
    assert not any(ns.writes for ns in transaction_pb2.TxRwSet.FromString(results).ns_rwsets)
    assert cluster.peers[0].ledger.get("_lifecycle", key) == before  # same value, same version
    for org in ("h01", "p01"):
        assert cluster.transact(cluster.net.admins[org], "_lifecycle", "approve", d)[1] == VALID
    assert cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d)[1] == VALID
    assert cluster.transact(cluster.net.doctor, "counter", "add", {"key": "a", "amount": 2})[1] == VALID


def test_reinstalling_a_package_cannot_invalidate_approvals_in_flight(cluster: Cluster) -> None:
    """Before: every install rewrote the package record, so any admin could fail every
    approve and commit of a contract (they read the record: MVCC_READ_CONFLICT) by
    installing the same package again, block after block."""
    d = _installed(cluster)
    admins = cluster.net.admins
    approve = cluster.kit.proposal(admins["h01"], "_lifecycle", "approve", d, timestamp_ms=cluster.now())
    approve_env = envelope(admins["h01"], approve, cluster.endorse_all(approve, cluster.peers[:2]))
    reinstall = cluster.kit.proposal(admins["p01"], "_lifecycle", "install",
                                     {"name": "counter", "version": "1.0", "source": COUNTER_SOURCE},
                                     timestamp_ms=cluster.now())
    reinstall_env = envelope(admins["p01"], reinstall, cluster.endorse_all(reinstall, cluster.peers[:2]))
    block = cluster.commit([reinstall_env, approve_env])[0]
    assert list(block.metadata.validation_codes) == [VALID, VALID]


WRONG = [None, True, -1, 0, 2**64, "", "x" * 5000, "\x00", "\ud800", [], ["*"], {}, {"f": [1]}, {"\x00": ["*"]}]
FIELDS = {
    "install": ("name", "version", "source"),
    "approve": ("name", "version", "sequence", "endorsement_policy", "access", "code_hash"),
    "commit": ("name", "version", "sequence", "endorsement_policy", "access", "code_hash"),
    "definition": ("name",),
    "approvals": ("name", "sequence"),
    "package": ("code_hash",),
}


def test_wrongly_typed_arguments_get_a_reason(cluster: Cluster) -> None:
    """Every field of every function, replaced by each of WRONG: a 400 with an upper-case
    reason (the endorser signs nothing but a 200), never an escaping exception (an INTERNAL
    with no reason over gRPC)."""
    peer = cluster.peers[0]
    current = ConfigView(peer.ledger.state, Verifier()).current()
    caller = current.msp.validate(cluster.net.admins["h01"].identity, cluster.now())
    good = dict(_definition("counter", "1.0", COUNTER_SOURCE), source=COUNTER_SOURCE)
    seen: set[str] = set()
    for function, fields in FIELDS.items():
        for field in fields:
            for wrong in WRONG:
                args = {f: good[f] for f in fields}
                args[field] = wrong
                with peer.ledger.snapshot() as snap:
                    r = Lifecycle().invoke(TxSimulator(snap, "_lifecycle"), function, args, caller,
                                           current.config)
                assert r.status == 400 and r.reason.isupper(), (function, field, wrong, r)
                seen.add(r.reason)
    assert {"BAD_ARGUMENTS", "BAD_POLICY"} <= seen


# ----------------------------------------------------------------- governance attacks already refused


@pytest.mark.parametrize("who", ["doctor", "nurse", "pharmacist", "clerk"])
@pytest.mark.parametrize("function", ["install", "approve", "commit"])
def test_members_who_are_not_admins_cannot_change_the_lifecycle(cluster: Cluster, who: str,
                                                                function: str) -> None:
    d = _definition("counter", "1.0", COUNTER_SOURCE)
    args = {"name": "counter", "version": "1.0", "source": COUNTER_SOURCE} if function == "install" else d
    with pytest.raises(RxError) as err:
        _call(cluster, getattr(cluster.net, who), function, args)
    assert err.value.reason == "ACCESS_DENIED"


def test_an_admin_approves_for_its_own_org_only(cluster: Cluster) -> None:
    d = _installed(cluster)
    forged = dict(d, org="p01")  # an extra argument naming another org is ignored
    assert cluster.transact(cluster.net.admins["h01"], "_lifecycle", "approve", forged)[1] == VALID
    approvals = payload_json(_call(cluster, cluster.net.doctor, "approvals", {"name": "counter", "sequence": 1}))
    assert sorted(approvals["approvals"]) == ["h01"]
    resp = _call(cluster, cluster.net.admins["p01"], "commit", d)
    assert resp.response.reason == "LIFECYCLE_POLICY_FAILURE"


def test_sequences_are_exactly_next_and_approvals_do_not_replay(cluster: Cluster) -> None:
    d1 = _installed(cluster)
    for org in ("h01", "p01"):
        assert cluster.transact(cluster.net.admins[org], "_lifecycle", "approve", d1)[1] == VALID
    assert cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d1)[1] == VALID
    admin = cluster.net.admins["h01"]
    for seq, reason in ((1, "BAD_SEQUENCE"), (3, "BAD_SEQUENCE"), (0, "BAD_ARGUMENTS")):
        for function in ("approve", "commit"):
            resp = _call(cluster, admin, function, dict(d1, sequence=seq))
            assert (resp.response.status, resp.response.reason) == (400, reason), (function, seq)
    # sequence 2 with the content the majority approved for 1: those approvals do not count
    d2 = dict(d1, sequence=2, endorsement_policy="OR(h01.peer, p01.peer)")
    assert _call(cluster, admin, "commit", d2).response.reason == "LIFECYCLE_POLICY_FAILURE"
    assert _call(cluster, admin, "commit", dict(d1, sequence=2)).response.reason == "LIFECYCLE_POLICY_FAILURE"


def test_definition_naming_no_installed_package_is_refused(cluster: Cluster) -> None:
    d = _definition("counter", "1.0", COUNTER_SOURCE + "# never installed\n")
    for function, admin in (("approve", "h01"), ("commit", "ins01")):
        resp = _call(cluster, cluster.net.admins[admin], function, d)
        assert (resp.response.status, resp.response.reason) == (400, "UNKNOWN_PACKAGE"), function


def test_every_peer_reaches_the_same_state_through_the_lifecycle(cluster: Cluster) -> None:
    d = _installed(cluster)
    for org in ("h01", "p01"):
        assert cluster.transact(cluster.net.admins[org], "_lifecycle", "approve", d)[1] == VALID
    assert cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d)[1] == VALID
    hashes = set()
    for p in cluster.peers:
        sp = p.ledger.savepoint()
        assert sp is not None
        hashes.add((sp.block, sp.state_hash))
    assert len(hashes) == 1


# ----------------------------------------------------------------- helpers


class _NoState:
    def get(self, namespace: str, key: str) -> bytes | None:
        return None

    def put(self, namespace: str, key: str, value: bytes) -> None:
        raise AssertionError("no writes expected")

    def delete(self, namespace: str, key: str) -> None:
        raise AssertionError("no writes expected")

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]:
        return []

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[t.HistoryEntry]:
        return []


def _lax_endorser(cluster: Cluster, peer: Peer) -> Endorser:
    """An endorser of ``peer``'s ledger whose install runs the static checks only (as before)."""

    def check_only(name: str, version: str, source: str) -> None:
        ContractPackage(name, version, source).check()

    return Endorser(peer.ledger, ConfigView(peer.ledger.state, Verifier()), cluster.net.peers[peer.org],
                    peer.sandbox, Lifecycle(check_only), lambda: peer.clock[0])


def _raw_proposal(cluster: Cluster, creator: Signer, contract: str, function: str,
                  args_json: bytes) -> transaction_pb2.SignedProposal:
    nonce = cluster.kit.rng.randbytes(24)
    header = transaction_pb2.TxHeader(
        tx_id=compute_tx_id(nonce, creator.identity), type=transaction_pb2.INVOKE,
        creator=creator.identity, nonce=nonce, timestamp_ms=cluster.now(),
        consortium_id=cluster.kit.consortium_id,
    )
    inv = transaction_pb2.ContractInvocation(contract=contract, function=function, args_json=args_json)
    raw = transaction_pb2.Proposal(header=header.SerializeToString(),
                                   invocation=inv.SerializeToString()).SerializeToString()
    json.loads(args_json)  # the test's input is valid JSON
    return transaction_pb2.SignedProposal(proposal_bytes=raw, signature=creator.sign(Purpose.PROPOSAL, raw))


class _MoreApprovals:
    """A simulator whose committed ``_lifecycle`` range also holds ``extra`` records."""

    def __init__(self, sim: TxSimulator, extra: dict[str, bytes]) -> None:
        self.sim, self.extra = sim, extra

    def get(self, namespace: str, key: str) -> bytes | None:
        return self.sim.get(namespace, key)

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]:
        rows = self.sim.range(namespace, start, end, limit)
        rows += [(k, v) for k, v in self.extra.items() if start <= k < end]
        return sorted(rows)

    def put(self, namespace: str, key: str, value: bytes) -> None:
        self.sim.put(namespace, key, value)


@pytest.mark.parametrize("version", [1, MEMBERSHIP_VERSION])
def test_a_commit_approved_by_more_organisations_than_a_tx_carries_is_committed(cluster: Cluster,
                                                                                version: int) -> None:
    """A consortium grown to 25 organisations (MAJORITY(admin): 13). Approvals are records in
    state, not a tx's signatures: from protocol version 2 (MEMBERSHIP_VERSION) on, 21
    approvals (every organisation but four approved the upgrade) satisfy the policy and the
    commit goes in; 12 do not. Before, the commit evaluated all approvers at once and a policy
    check refuses more than MAX_SIGNERS (20) distinct signers: LIFECYCLE_POLICY_FAILURE however
    many more approved -- which version 1 keeps (node/protocol.py: the commits of peers of the
    previous release are on the ledger, and they endorse so beside this release's)."""
    d = _installed(cluster)
    peer = cluster.peers[0]
    current = ConfigView(peer.ledger.state, Verifier()).current()
    grown = config_pb2.ConsortiumConfig()
    grown.CopyFrom(current.config)
    h01 = next(o for o in grown.organizations if o.id == "h01")
    extra_orgs = [f"h{i:02d}" for i in range(2, 24)]
    for org in extra_orgs:
        grown.organizations.add(id=org, name=org, kind=config_pb2.HOSPITAL, ca_cert_der=h01.ca_cert_der)
    assert len(grown.organizations) == 25
    grown.protocol_version = version
    caller = current.msp.validate(cluster.net.admins["ins01"].identity, cluster.now())
    wanted = ContractDefinition.from_args(d).to_json()
    prefix = approval_prefix("counter", 1)
    outcomes = []
    for n in (MAX_SIGNERS + 1, 12):
        approvals = {prefix + org: wanted for org in ["h01", "p01", "ins01", *extra_orgs][:n]}
        with peer.ledger.snapshot() as snap:
            sim = _MoreApprovals(TxSimulator(snap, "_lifecycle"), approvals)
            r = Lifecycle().invoke(cast(Any, sim), "commit", d, caller, grown)
        outcomes.append((r.status, r.reason))
    first = (200, "") if version >= MEMBERSHIP_VERSION else (400, "LIFECYCLE_POLICY_FAILURE")
    assert outcomes == [first, (400, "LIFECYCLE_POLICY_FAILURE")]


# ----------------------------------------------------------------- the bound on a policy's choices

TWENTY = [f"o{i:02d}" for i in range(20)]
_CLUSTER_RNG = random.Random(3)
# 4 of 45 "2 of 3 peers of a cluster of 7" beside a 14-peer AND: 163,185 choices, and one
# hostile endorsement list cost every peer 280,339 steps (0.13 s) of the exact search
OVER_THE_BOUND = ("OutOf(4, " + ", ".join(
    f"OutOf(2, {a}.peer, {b}.peer, {c}.peer)" for a, b, c in (_CLUSTER_RNG.sample(TWENTY[:7], 3) for _ in range(45)))
    + ", AND(" + ", ".join(f"{o}.peer" for o in [*TWENTY[7:], TWENTY[0]]) + "))")
REALISTIC = [
    "MAJORITY(peer)",
    "AND(MAJORITY(peer), OR(o00.peer, o01.peer))",
    # any 6 of 12 hospitals, each with its pharmacy: C(12, 6) = 924 choices
    "OutOf(6, " + ", ".join(f"AND({TWENTY[i]}.peer, {TWENTY[(i + 12) % 20]}.peer)" for i in range(12)) + ")",
    # 2 of 45 pairs: 990
    "OutOf(2, " + ", ".join(f"AND({TWENTY[i % 20]}.peer, {TWENTY[(i * 7 + 3) % 20]}.peer)" for i in range(45)) + ")",
]


def _grown(cluster: Cluster, version: int) -> config_pb2.ConsortiumConfig:
    """The cluster's config with 20 more organisations running a peer (23 in all), at ``version``."""
    current = ConfigView(cluster.peers[0].ledger.state, Verifier()).current()
    grown = config_pb2.ConsortiumConfig()
    grown.CopyFrom(current.config)
    h01 = next(o for o in grown.organizations if o.id == "h01")
    for org in TWENTY:
        grown.organizations.add(id=org, name=org, kind=config_pb2.HOSPITAL, ca_cert_der=h01.ca_cert_der)
        grown.peers.add(org=org, name=f"peer.{org}")
    grown.protocol_version = version
    return grown


def _approve_and_commit(cluster: Cluster, policy: str, config: config_pb2.ConsortiumConfig) -> list[tuple[int, str]]:
    """Approve (h01's admin) and commit (12 approvals of the 23: MAJORITY(admin)) a definition
    with endorsement ``policy`` under ``config``."""
    d = dict(_installed(cluster), endorsement_policy=policy)
    peer = cluster.peers[0]
    msp = ConfigView(peer.ledger.state, Verifier()).current().msp
    h01, ins01 = (msp.validate(cluster.net.admins[o].identity, cluster.now()) for o in ("h01", "ins01"))
    wanted = ContractDefinition.from_args(d).to_json()
    approvals = {approval_prefix("counter", 1) + org: wanted for org in ["h01", "p01", "ins01", *TWENTY][:12]}
    outcomes = []
    with peer.ledger.snapshot() as snap:
        r = Lifecycle().invoke(TxSimulator(snap, "_lifecycle"), "approve", d, h01, config)
        outcomes.append((r.status, r.reason))
        sim = _MoreApprovals(TxSimulator(snap, "_lifecycle"), approvals)
        r = Lifecycle().invoke(cast(Any, sim), "commit", d, ins01, config)
        outcomes.append((r.status, r.reason))
    return outcomes


@pytest.mark.parametrize("version", [1, EXACT_POLICY_VERSION])
def test_an_endorsement_policy_with_too_many_choices_is_refused_from_version_2(cluster: Cluster,
                                                                               version: int) -> None:
    """From protocol version 2 approve and commit refuse a policy whose exact evaluation may
    enumerate more than MAX_POLICY_CHOICES choices (POLICY_TOO_COMPLEX): every peer would pay
    them for each tx a client presents. Version 1 keeps accepting it (its commits are on the
    ledger; its evaluation kept 64 signer sets per level)."""
    outcomes = _approve_and_commit(cluster, OVER_THE_BOUND, _grown(cluster, version))
    if version < EXACT_POLICY_VERSION:
        assert outcomes == [(200, ""), (200, "")]
    else:
        assert outcomes == [(400, "POLICY_TOO_COMPLEX")] * 2


@pytest.mark.parametrize("policy", REALISTIC)
def test_realistic_big_endorsement_policies_are_accepted_under_version_2(cluster: Cluster, policy: str) -> None:
    assert _approve_and_commit(cluster, policy, _grown(cluster, EXACT_POLICY_VERSION)) == [(200, ""), (200, "")]


def test_a_definition_over_the_bound_committed_under_version_1_keeps_version_1s_answers(cluster: Cluster) -> None:
    """After the raise the peers' policy provider parses such a definition for version 2, and
    it is evaluated by version 1's rules: the same answers as before the upgrade on every peer
    (deterministic), without the exact search's cost. The review's example beside the policy:
    every peer but o00's satisfies it exactly; version 1 refuses them, and still does."""
    twelve = TWENTY[:12]
    review = ("AND(OutOf(4, " + ", ".join(f"{o}.peer" for o in twelve) + "), "
              "o04.peer, o02.peer, o01.peer, o06.peer, o09.peer, o08.peer, o10.peer)")
    text = f"OR({review}, {OVER_THE_BOUND.replace('o', 'c')})"  # the same over c00..c19 ("OutOf" has no 'o')
    config = _grown(cluster, EXACT_POLICY_VERSION)
    h01 = next(o for o in config.organizations if o.id == "h01")
    for org in (f"c{i:02d}" for i in range(20)):
        config.organizations.add(id=org, name=org, kind=config_pb2.HOSPITAL, ca_cert_der=h01.ca_cert_der)
    stored = ContractDefinition.from_args(dict(_installed(cluster), endorsement_policy=text)).to_json()
    definition = LifecyclePolicies._build("counter", config, stored)
    assert definition is not None
    policy = definition.policy
    assert policy.version == EXACT_POLICY_VERSION and not policy.bounded()
    signers = [(o, "peer") for o in twelve[1:]]
    assert policy.search(signers).satisfied() is True  # the exact answer, not used for it
    assert policy.evaluate(signers) is False
    assert parse_policy(text, [o.id for o in config.organizations]).evaluate(signers) is False  # version 1
    assert policy.evaluate([(o, "peer") for o in twelve]) is True
