"""A peer compiles its committed contracts in sandbox workers of their own when it starts.

Without it, a started peer's first burst of one contract's calls took every fresh worker
and the other contracts' first calls replaced them (a process start each, ~0.1 s of CPU:
the e2e benchmark's pools replaced 10-12 workers per level over four peers), and every
contract's first call after a restart paid its compile."""

from __future__ import annotations

from typing import Any

import pytest
from rxchain.v1 import transaction_pb2

from node.crypto.signing import Verifier
from node.errors import RxError
from node.peer.config_view import ConfigView
from node.peer.endorser import Endorser
from node.peer.lifecycle import Lifecycle, package_hash
from node.peer.server import _warm_contracts
from node.sandbox.runtime import ContractRejected, Sandbox
from tests.peer.conftest import COUNTER_ACCESS, COUNTER_SOURCE, Cluster

OTHER_SOURCE = COUNTER_SOURCE + "\n# another contract's code\n"


def test_each_committed_contract_gets_a_worker_and_one_stays_free(deployed: Cluster) -> None:
    cluster = deployed
    d = cluster.deploy("tally", OTHER_SOURCE, "OutOf(2, h01.peer, p01.peer, ins01.peer)",
                       COUNTER_ACCESS)
    assert cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d)[1] == \
        transaction_pb2.VALID
    # installed and approved, never committed: not a contract to warm
    cluster.deploy("draft", OTHER_SOURCE + "# draft\n", "h01.peer", COUNTER_ACCESS)
    peer = cluster.peers[0]
    assert [(n, h) for n, h, _ in peer.endorser.committed_sources(10)] == [
        ("counter", package_hash("counter", "1.0", COUNTER_SOURCE)),
        ("tally", package_hash("tally", "1.0", OTHER_SOURCE)),
    ]
    assert len(peer.endorser.committed_sources(1)) == 1
    sandbox = Sandbox(workers=3)
    try:
        before = sandbox.worker_pids()
        endorser = Endorser(peer.ledger, ConfigView(peer.ledger.state, Verifier()),
                            cluster.net.peers[peer.org], sandbox, Lifecycle(), lambda: peer.clock[0])
        _warm_contracts("peer.h01", endorser, sandbox)
        warm = sorted(code[0] for code in sandbox._idle)
        assert warm == ["counter", "tally"] and len(sandbox._fresh) == 1
        for contract in ("counter", "tally", "counter"):
            signed = cluster.kit.proposal(cluster.net.doctor, contract, "add",
                                          {"key": "k", "amount": 1}, timestamp_ms=cluster.now())
            assert endorser.endorse(signed).response.status == 200
        # served by the warmed workers: no process started or replaced
        assert sandbox.worker_pids() == before
        assert sandbox.stats()["evictions"] == 0 and sandbox.stats()["restarts"] == 0
    finally:
        sandbox.close()


def test_a_contract_that_fails_to_warm_does_not_stop_the_others(
    deployed: Cluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first contract in name order failing to compile (a source this release's checker
    rejects, or its worker dying) is skipped: the ones after it are still warmed (the whole
    warm-up stopped at the first failure, and every later contract's first call paid its
    compile and took a fresh worker)."""
    cluster = deployed
    d = cluster.deploy("tally", OTHER_SOURCE, "OutOf(2, h01.peer, p01.peer, ins01.peer)",
                       COUNTER_ACCESS)
    assert cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d)[1] == \
        transaction_pb2.VALID
    peer = cluster.peers[0]
    sandbox = Sandbox(workers=3)
    try:
        endorser = Endorser(peer.ledger, ConfigView(peer.ledger.state, Verifier()),
                            cluster.net.peers[peer.org], sandbox, Lifecycle(), lambda: peer.clock[0])
        warm = sandbox.warm

        def rejecting(code_hash: str, source: str, contract: str) -> int:
            if contract == "counter":
                raise ContractRejected(1, "rejected by this release's checker")
            return warm(code_hash, source, contract)

        monkeypatch.setattr(sandbox, "warm", rejecting)
        _warm_contracts("peer.h01", endorser, sandbox)
        assert sorted(code[0] for code in sandbox._idle) == ["tally"]
    finally:
        sandbox.close()


def test_committed_sources_take_the_next_contract_and_none_for_no_room(
    deployed: Cluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A contract whose source does not verify leaves its place to the next one (the limit
    counted the definitions read, so it cost a warmed worker), and a pool of one worker
    warms none: the range's limit 0 read every definition, and the one worker to keep free
    was taken for the first contract."""
    cluster = deployed
    d = cluster.deploy("tally", OTHER_SOURCE, "OutOf(2, h01.peer, p01.peer, ins01.peer)",
                       COUNTER_ACCESS)
    assert cluster.transact(cluster.net.admins["ins01"], "_lifecycle", "commit", d)[1] == \
        transaction_pb2.VALID
    endorser = cluster.peers[0].endorser
    assert endorser.committed_sources(0) == []
    verified = endorser._verified_source

    def corrupt_counter(snap: Any, name: str, version: str, code_hash: str) -> str:
        if name == "counter":
            raise RxError("CODE_HASH_MISMATCH", "the stored source of 'counter' does not hash")
        return verified(snap, name, version, code_hash)

    monkeypatch.setattr(endorser, "_verified_source", corrupt_counter)
    assert [n for n, _, _ in endorser.committed_sources(1)] == ["tally"]
    assert [n for n, _, _ in endorser.committed_sources(5)] == ["tally"]
