"""Contract lifecycle: install, approve, commit through endorsed txs; governance rules."""

from __future__ import annotations

import pytest
from rxchain.v1 import transaction_pb2

from node.errors import RxError
from node.ledger.statedb import state_key
from node.peer.lifecycle import definition_key, package_hash, package_key
from tests.peer.conftest import COUNTER_ACCESS, COUNTER_SOURCE, Cluster
from tests.peer.kit import envelope, payload_json

POLICY = "OutOf(2, h01.peer, p01.peer, ins01.peer)"


def _lifecycle(cluster: Cluster, function: str, definition: dict[str, object],
               admin: str) -> transaction_pb2.ProposalResponse:
    """``admin`` asks the first peer to endorse ``_lifecycle.<function>(definition)``."""
    signed = cluster.kit.proposal(cluster.net.admins[admin], "_lifecycle", function, definition,
                                  timestamp_ms=cluster.now())
    return cluster.peers[0].endorser.endorse(signed)


def _commit(cluster: Cluster, definition: dict[str, object], admin: str = "ins01") -> transaction_pb2.ProposalResponse:
    return _lifecycle(cluster, "commit", definition, admin)


def _endorse_approve(cluster: Cluster, definition: dict[str, object]) -> transaction_pb2.ProposalResponse:
    return _lifecycle(cluster, "approve", definition, "h01")


def test_commit_with_majority_activates_contract(cluster: Cluster) -> None:
    d = cluster.deploy("counter", COUNTER_SOURCE, POLICY, COUNTER_ACCESS)
    resp, code = cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d)
    assert code == transaction_pb2.VALID
    assert payload_json(resp)["approvals"] == ["h01", "p01"]
    for p in cluster.peers:
        assert p.ledger.get("_lifecycle", definition_key("counter")) is not None
        assert p.ledger.get("_lifecycle", package_key(d["code_hash"])) is not None
    resp, code = cluster.transact(cluster.net.doctor, "counter", "add", {"key": "x", "amount": 3})
    assert code == transaction_pb2.VALID
    assert payload_json(resp) == {"value": 3}


def test_too_few_approvals_commit_rejected(cluster: Cluster) -> None:
    d = cluster.deploy("counter", COUNTER_SOURCE, POLICY, COUNTER_ACCESS, approvers=("h01",))
    resp = _commit(cluster, d)
    assert resp.response.status == 400
    assert resp.response.reason == "LIFECYCLE_POLICY_FAILURE"
    assert not resp.HasField("endorsement")
    with pytest.raises(RxError) as err:
        signed = cluster.kit.proposal(cluster.net.doctor, "counter", "get", {"key": "x"},
                                      timestamp_ms=cluster.now())
        cluster.peers[0].endorser.endorse(signed)
    assert err.value.reason == "UNKNOWN_CONTRACT"


def test_approvals_of_a_different_definition_do_not_count(cluster: Cluster) -> None:
    d = cluster.deploy("counter", COUNTER_SOURCE, POLICY, COUNTER_ACCESS, approvers=("h01",))
    other = dict(d, endorsement_policy="OR(h01.peer, p01.peer)")
    _, code = cluster.transact(cluster.net.admins["p01"], "_lifecycle", "approve", other)
    assert code == transaction_pb2.VALID
    resp = _commit(cluster, d)
    assert resp.response.reason == "LIFECYCLE_POLICY_FAILURE"


def test_non_admin_cannot_approve(cluster: Cluster) -> None:
    signed = cluster.kit.proposal(cluster.net.doctor, "_lifecycle", "install",
                                  {"name": "x", "version": "1", "source": COUNTER_SOURCE},
                                  timestamp_ms=cluster.now())
    with pytest.raises(RxError) as err:
        cluster.peers[0].endorser.endorse(signed)
    assert err.value.reason == "ACCESS_DENIED"


def test_upgrade_raises_sequence_and_needs_approval(cluster: Cluster) -> None:
    d1 = cluster.deploy("counter", COUNTER_SOURCE, POLICY, COUNTER_ACCESS)
    _, code = cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d1)
    assert code == transaction_pb2.VALID
    # Re-committing sequence 1, or jumping to 3, is refused.
    assert _commit(cluster, d1).response.reason == "BAD_SEQUENCE"
    v2_source = COUNTER_SOURCE + "\n\ndef version(ctx: Context) -> dict:\n    return {'v': 2}\n"
    access2 = dict(COUNTER_ACCESS, version=["*"])
    d2 = cluster.deploy("counter", v2_source, POLICY, access2, version="2.0", sequence=2,
                        approvers=("p01",))
    assert _commit(cluster, d2).response.reason == "LIFECYCLE_POLICY_FAILURE"
    _, code = cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "approve", d2)
    assert code == transaction_pb2.VALID
    resp, code = cluster.transact(cluster.net.admins["h01"], "_lifecycle", "commit", d2)
    assert code == transaction_pb2.VALID
    resp, code = cluster.transact(cluster.net.clerk, "counter", "version", {})
    assert code == transaction_pb2.VALID
    assert payload_json(resp) == {"v": 2}
    payload = transaction_pb2.ProposalResponsePayload.FromString(resp.payload)
    assert (payload.contract_version, payload.contract_sequence) == ("2.0", 2)


def test_tx_endorsed_on_old_definition_is_invalid_after_upgrade(cluster: Cluster) -> None:
    d1 = cluster.deploy("counter", COUNTER_SOURCE, POLICY, COUNTER_ACCESS)
    cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d1)
    stale = cluster.kit.proposal(cluster.net.doctor, "counter", "put", {"key": "a", "value": 1},
                                 timestamp_ms=cluster.now())
    stale_env = envelope(cluster.net.doctor, stale, cluster.endorse_all(stale, cluster.peers[:2]))
    d2 = cluster.deploy("counter", COUNTER_SOURCE, POLICY, COUNTER_ACCESS, version="1.1",
                        sequence=2)
    cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d2)
    block = cluster.commit([stale_env])[0]
    assert block.metadata.validation_codes[0] == transaction_pb2.CONTRACT_VERSION_MISMATCH


def test_hash_mismatch_refused(cluster: Cluster) -> None:
    # Approve a definition naming the hash of a package that claims another version.
    d = cluster.deploy("counter", COUNTER_SOURCE, POLICY, COUNTER_ACCESS)
    bad = dict(d, code_hash=package_hash("counter", "1.0", COUNTER_SOURCE + "#"))
    signed = cluster.kit.proposal(cluster.net.admins["p01"], "_lifecycle", "approve", bad,
                                  timestamp_ms=cluster.now())
    assert cluster.peers[0].endorser.endorse(signed).response.reason == "UNKNOWN_PACKAGE"
    # Tamper with the stored source on one peer: it refuses to run the contract.
    _, code = cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d)
    assert code == transaction_pb2.VALID
    peer = cluster.peers[2]
    key = package_key(d["code_hash"])
    raw = peer.ledger.state._db  # direct LevelDB access: simulate on-disk tampering
    rec = raw.get(state_key("_lifecycle", key))
    signed = cluster.kit.proposal(cluster.net.doctor, "counter", "get", {"key": "a"},
                                  timestamp_ms=cluster.now())
    assert peer.endorser.endorse(signed).response.status == 200  # verified and cached
    raw.put(state_key("_lifecycle", key), rec.replace(b"amount <= 0", b"amount <  0"))
    with pytest.raises(RxError) as err:
        peer.endorser.endorse(signed)
    assert err.value.reason == "CODE_HASH_MISMATCH"
    assert cluster.peers[0].endorser.endorse(signed).response.status == 200


def test_lifecycle_tx_needs_majority_of_peer_orgs(cluster: Cluster) -> None:
    admin = cluster.net.admins["h01"]
    signed = cluster.kit.proposal(admin, "_lifecycle", "install",
                                  {"name": "counter", "version": "1", "source": COUNTER_SOURCE},
                                  timestamp_ms=cluster.now())
    one = cluster.endorse_all(signed, cluster.peers[:1])
    block = cluster.commit([envelope(admin, signed, one)])[0]
    assert block.metadata.validation_codes[0] == transaction_pb2.ENDORSEMENT_POLICY_FAILURE


def test_bad_definition_arguments(cluster: Cluster) -> None:
    d = {"name": "Bad Name", "version": "1", "sequence": 1, "endorsement_policy": POLICY,
         "access": {}, "code_hash": "0" * 64}
    resp = _endorse_approve(cluster, d)
    assert (resp.response.status, resp.response.reason) == (400, "BAD_ARGUMENTS")
    d = dict(d, name="ok", endorsement_policy="AND(h01.peer,")
    assert _endorse_approve(cluster, d).response.reason == "BAD_POLICY"


def test_install_refuses_hostile_source(cluster: Cluster) -> None:
    signed = cluster.kit.proposal(cluster.net.admins["h01"], "_lifecycle", "install",
                                  {"name": "evil", "version": "1",
                                   "source": "import os\n\ndef f(ctx: Context) -> int:\n    return 1\n"},
                                  timestamp_ms=cluster.now())
    resp = cluster.peers[0].endorser.endorse(signed)
    assert (resp.response.status, resp.response.reason) == (400, "CONTRACT_REJECTED")
    assert "line 1" in resp.response.message


def test_deeply_nested_policy_is_bad_policy_not_a_crash(cluster: Cluster) -> None:
    """A 1000-deep endorsement policy (4008 characters) is a contract-level BAD_POLICY refusal
    (status 400, no endorsement), not a RecursionError escaping the endorser."""
    deep = "OR(" * 1000 + "h01.peer" + ")" * 1000
    assert len(deep) == 4008
    resp = _endorse_approve(cluster, {"name": "deep", "version": "1", "sequence": 1,
                                      "endorsement_policy": deep, "access": {}, "code_hash": "0" * 64})
    assert (resp.response.status, resp.response.reason) == (400, "BAD_POLICY")
    assert "nested deeper" in resp.response.message
    assert not resp.HasField("endorsement")
