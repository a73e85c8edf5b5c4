"""Multi-process peer network: 3 Raft orderers + 3 peers of different organisations.

Real processes on 127.0.0.1 (``python -m node.orderer`` / ``python -m node.peer``). The
test deploys a contract through the lifecycle, sends concurrent conflicting and
non-conflicting transactions through the gateway (unary and Transact), checks that every
peer has the same state hash after every block, kills a peer with SIGKILL and restarts it
(it catches up), and adds a new peer that syncs from genesis to the same state hashes.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from node.crypto.signing import Purpose, Signer, load_signer
from node.errors import reason_from_rpc_error
from node.peer.lifecycle import package_hash
from node.protocol import SUPPORTED_VERSIONS
from tests.harness.certs import issue_from_org_ca, write_cert_files
from tests.harness.consortium import Consortium, consortium_dict, generate_consortium
from tests.harness.ports import free_ports
from tests.harness.procs import ProcessManager
from tests.harness.rpc import admin_status, channel
from tests.peer.conftest import COUNTER_SOURCE
from tests.peer.kit import ProposalKit

pytestmark = pytest.mark.integration

POLICY = "OutOf(2, h01.peer, p01.peer, ins01.peer)"
ACCESS = {"*": ["*"]}
PEERS = ["peer.h01", "peer.p01", "peer.ins01"]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Client:
    """A wallet identity talking to one peer's Gateway."""

    def __init__(self, cons: Consortium, org: str, user: str, peer: str, seed: int) -> None:
        creds = cons.user_creds(org, user)
        self.signer: Signer = load_signer(creds.cert, creds.key, org)
        self.channel = channel(cons.target(peer), creds)
        self.gw = services_pb2_grpc.GatewayStub(self.channel)
        self.kit = ProposalKit(cons.net.spec.consortium_id, random.Random(seed))

    def proposal(self, contract: str, fn: str, args: dict[str, Any]) -> transaction_pb2.SignedProposal:
        return self.kit.proposal(self.signer, contract, fn, args, timestamp_ms=wall_ms())

    def envelope(self, prepared: bytes) -> transaction_pb2.Envelope:
        return transaction_pb2.Envelope(payload=prepared, signature=self.signer.sign(Purpose.ENVELOPE, prepared))

    def submit(self, contract: str, fn: str, args: dict[str, Any]) -> services_pb2.CommitStatusResponse:
        endorsed = self.gw.Endorse(services_pb2.EndorseRequest(proposal=self.proposal(contract, fn, args)),
                                   timeout=30)
        self.gw.Submit(services_pb2.SubmitRequest(envelope=self.envelope(endorsed.prepared_transaction)),
                       timeout=30)
        status: services_pb2.CommitStatusResponse = self.gw.CommitStatus(
            services_pb2.CommitStatusRequest(tx_id=endorsed.tx_id, timeout_ms=30_000), timeout=40)
        assert status.tx_id == endorsed.tx_id
        return status

    def evaluate(self, contract: str, fn: str, args: dict[str, Any]) -> transaction_pb2.Response:
        resp = self.gw.Evaluate(services_pb2.EvaluateRequest(proposal=self.proposal(contract, fn, args)),
                                timeout=30)
        return resp.result

    def close(self) -> None:
        self.channel.close()


def chain_of(cons: Consortium, peer: str, height: int) -> list[tuple[bytes, bytes, list[Any]]]:
    """(header data hash, state hash, validation codes) of blocks 0..height-1 from PeerDeliver."""
    with channel(cons.target(peer), cons.node_creds(peer)) as ch:
        stub = services_pb2_grpc.PeerDeliverStub(ch)
        out = []
        for resp in stub.Deliver(services_pb2.DeliverRequest(start_block=0, stop_block=height - 1),
                                 timeout=30):
            if resp.HasField("block"):
                b = resp.block
                out.append((b.header.data_hash, b.metadata.state_hash, list(b.metadata.validation_codes)))
        return out


def wait_height(cons: Consortium, peers: list[str], height: int, timeout_s: float = 40) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        heights = {}
        for p in peers:
            try:
                heights[p] = admin_status(cons.target(p), cons.node_creds(p)).height
            except grpc.RpcError:
                heights[p] = -1
        if all(h >= height for h in heights.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"peers did not reach height {height}: {heights}")
        time.sleep(0.1)


def assert_same_chain(cons: Consortium, peers: list[str]) -> int:
    """Every peer has the same state hash and codes at every height; returns the height."""
    top = max(admin_status(cons.target(p), cons.node_creds(p)).height for p in peers)
    wait_height(cons, peers, top)
    chains = {p: chain_of(cons, p, top) for p in peers}
    ref = chains[peers[0]]
    assert len(ref) == top
    for p in peers[1:]:
        for n in range(top):
            assert chains[p][n] == ref[n], f"{p} differs from {peers[0]} at block {n}"
    statuses = {p: admin_status(cons.target(p), cons.node_creds(p)) for p in peers}
    assert len({(s.height, s.state_hash, s.last_block_hash) for s in statuses.values()}) == 1
    # what an operator checks before raising the protocol version (node.protocol)
    assert {(tuple(s.protocol_versions), s.protocol_version) for s in statuses.values()} == {
        (tuple(sorted(SUPPORTED_VERSIONS)), 1)}
    return top


@pytest.fixture
def procs() -> Iterator[ProcessManager]:
    pm = ProcessManager()
    try:
        yield pm
    finally:
        pm.close()


@pytest.fixture
def network(tmp_path: Path, procs: ProcessManager) -> Iterator[Consortium]:
    raw = consortium_dict(0, orderers=3, hospitals=1, pharmacies=1, insurer_peer=True,
                          consortium_id="peer-it")
    cons = generate_consortium(tmp_path / "net", raw)
    for p in PEERS:  # one warm sandbox worker per peer: 2 shared cores
        path = cons.config_path(p)
        doc = yaml.safe_load(path.read_text())
        doc["extra"] = {"sandbox_workers": 1, "grpc_workers": 32}
        path.write_text(yaml.safe_dump(doc))
    cons.start_and_wait(procs, cons.orderer_names() + PEERS, timeout_s=60)
    yield cons


def deploy(cons: Consortium) -> None:
    admins = {org: Client(cons, org, "admin", "peer.h01", seed=i)
              for i, org in enumerate(["h01", "p01", "ins01", "ins02"])}
    try:
        st = admins["h01"].submit("_lifecycle", "install",
                                  {"name": "counter", "version": "1", "source": COUNTER_SOURCE})
        assert st.code == transaction_pb2.VALID
        definition = {"name": "counter", "version": "1", "sequence": 1,
                      "endorsement_policy": POLICY, "access": ACCESS,
                      "code_hash": package_hash("counter", "1", COUNTER_SOURCE)}
        # Three of six admins is not a majority: commit is refused at endorsement.
        with ThreadPoolExecutor(3) as pool:
            codes = list(pool.map(lambda o: admins[o].submit("_lifecycle", "approve", definition).code,
                                  ["h01", "p01", "ins01"]))
        assert codes == [transaction_pb2.VALID] * 3
        with pytest.raises(grpc.RpcError) as err:
            admins["h01"].submit("_lifecycle", "commit", definition)
        assert reason_from_rpc_error(err.value) == "LIFECYCLE_POLICY_FAILURE"
        assert admins["ins02"].submit("_lifecycle", "approve", definition).code == transaction_pb2.VALID
        assert admins["h01"].submit("_lifecycle", "commit", definition).code == transaction_pb2.VALID
    finally:
        for c in admins.values():
            c.close()


def test_peer_network(network: Consortium, procs: ProcessManager, tmp_path: Path) -> None:
    cons = network
    deploy(cons)
    # Clients of other peers see the definition once their peer has committed its block.
    wait_height(cons, PEERS, admin_status(cons.target("peer.h01"), cons.node_creds("peer.h01")).height)
    # every peer process told its release in a statement it signed, and every orderer holds it
    # (relayed between them, checked against the peer's certificate): only that admits a raise
    for orderer in cons.orderer_names():
        deadline = time.monotonic() + 20
        while True:
            told = {p.node: services_pb2.ReleaseStatement.FromString(p.statement)
                    for p in admin_status(cons.target(orderer), cons.node_creds(orderer)).peer_releases}
            if all(told[p].node == p and told[p].max_protocol_version == max(SUPPORTED_VERSIONS) for p in PEERS):
                break
            assert time.monotonic() < deadline, (orderer, told)
            time.sleep(0.2)
    doctor = Client(cons, "h01", "dr-test", "peer.h01", seed=100)
    pharm = Client(cons, "p01", "pharm-test", "peer.p01", seed=200)
    clerk = Client(cons, "ins01", "clerk-test", "peer.ins01", seed=300)
    clients = [doctor, pharm, clerk]
    try:
        # Concurrent: 12 read-modify-write adds on one hot key (conflicting) and 18 puts on
        # distinct keys (independent), through the three gateways at once.
        jobs = [(clients[i % 3], "add", {"key": "hot", "amount": 1}) for i in range(12)]
        jobs += [(clients[i % 3], "put", {"key": f"k{i}", "value": i}) for i in range(18)]
        random.Random(5).shuffle(jobs)
        def run(job: tuple[Client, str, dict[str, Any]]) -> tuple[str, int | str]:
            client, fn, args = job
            try:
                return fn, client.submit("counter", fn, args).code
            except grpc.RpcError as exc:  # e.g. peers briefly at different heights
                return fn, reason_from_rpc_error(exc)

        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(run, jobs))
        puts = [c for f, c in results if f == "put"]
        adds = [c for f, c in results if f == "add"]
        assert puts == [transaction_pb2.VALID] * 18
        assert set(adds) <= {transaction_pb2.VALID, transaction_pb2.MVCC_READ_CONFLICT,
                             "ENDORSEMENT_MISMATCH"}, adds
        valid_adds = adds.count(transaction_pb2.VALID)
        assert valid_adds >= 1
        # Each submit waited for its own gateway peer only: the clerk reads on peer.ins01, which
        # may not have the last block of another gateway's tx yet.
        wait_height(cons, PEERS, max(admin_status(cons.target(p), cons.node_creds(p)).height for p in PEERS))
        hot = clerk.evaluate("counter", "get", {"key": "hot"})
        assert hot.status == 200 and hot.payload == f'{{"value":{valid_adds}}}'.encode()

        # Transact: 20 puts pipelined on one stream; commit statuses pushed back.
        proposals = {i: doctor.proposal("counter", "put", {"key": f"t{i}", "value": i}) for i in range(20)}
        endorsed = list(doctor.gw.Transact(iter(
            [services_pb2.TransactRequest(correlation_id=i, endorse=services_pb2.EndorseRequest(proposal=p))
             for i, p in proposals.items()]), timeout=60))
        assert sorted(r.correlation_id for r in endorsed) == list(range(20))
        assert all(r.WhichOneof("kind") == "endorsed" for r in endorsed)
        submits = [services_pb2.TransactRequest(correlation_id=100 + r.correlation_id,
                                                submit=doctor.envelope(r.endorsed.prepared_transaction))
                   for r in endorsed]
        committed = list(doctor.gw.Transact(iter(submits), timeout=60))
        assert len(committed) == 20
        assert all(r.WhichOneof("kind") == "committed" and r.committed.code == transaction_pb2.VALID
                   for r in committed), committed

        # Bad input through the gateway: forged envelope signature is refused before ordering.
        p = doctor.proposal("counter", "put", {"key": "x", "value": 1})
        e = doctor.gw.Endorse(services_pb2.EndorseRequest(proposal=p), timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            doctor.gw.Submit(services_pb2.SubmitRequest(envelope=transaction_pb2.Envelope(
                payload=b"\x0a\x03abc", signature=b"x")), timeout=30)
        assert reason_from_rpc_error(err.value) == "BAD_PAYLOAD"
        forged = transaction_pb2.Envelope(payload=e.prepared_transaction, signature=pharm.signer.sign(Purpose.ENVELOPE, e.prepared_transaction))
        try:
            doctor.gw.Submit(services_pb2.SubmitRequest(envelope=forged), timeout=30)
            st = doctor.gw.CommitStatus(services_pb2.CommitStatusRequest(tx_id=e.tx_id, timeout_ms=3000), timeout=10)
            raise AssertionError(f"forged envelope committed: {st}")
        except grpc.RpcError as exc:
            assert reason_from_rpc_error(exc) in {"BAD_SIGNATURE", "BAD_CREATOR_SIGNATURE", "TIMEOUT"}

        top = assert_same_chain(cons, PEERS)
        # Events from a checkpoint: every block, tx statuses, contract events of valid txs.
        evs = list(pharm.gw.Events(services_pb2.EventsRequest(start_block=1, contract="counter"),
                                   timeout=30))
        assert [e.block_number for e in evs] == list(range(1, top))
        statuses = [t for e in evs for t in e.txs]
        assert sum(1 for t in statuses if t.code == transaction_pb2.VALID and t.function == "put") == 38
        assert sum(1 for e in evs for ev in e.events if ev.name == "stored") == 38

        # kill -9 a peer; the others keep going (endorsement falls back to ins01); restart.
        procs.kill9("peer.p01")
        for i in range(4):
            assert doctor.submit("counter", "put", {"key": f"after-kill-{i}", "value": i}).code == transaction_pb2.VALID
        procs.restart("peer.p01")
        procs.wait_healthy("peer.p01", lambda: cons.healthy("peer.p01"), 60)
        top = assert_same_chain(cons, PEERS)
        pharm.close()
        pharm = Client(cons, "p01", "pharm-test", "peer.p01", seed=201)
        assert pharm.submit("counter", "add", {"key": "hot", "amount": 5}).code == transaction_pb2.VALID

        # A new peer of h01 joins from genesis and reaches the same state hashes. It has its
        # own certificate naming it (a node refuses to start on one that does not).
        src = cons.node_dir("peer.h01")
        new_dir = cons.home / "nodes" / "peer.h01b"
        new_dir.mkdir()
        shutil.copy(src / "ca-bundle.pem", new_dir / "ca-bundle.pem")
        cert, key = issue_from_org_ca(cons.home, "h01", "peer.h01b", "peer",
                                      (cons.net.spec.host, "localhost", "peer.h01b"))
        write_cert_files(cert, key, new_dir)
        doc = yaml.safe_load((src / "node.yaml").read_text())
        doc.update(name="peer.h01b", port=free_ports(1)[0], metrics_port=0)
        (new_dir / "node.yaml").write_text(yaml.safe_dump(doc))
        procs.start("peer.h01b", [sys.executable, "-m", "node.peer", "--config", str(new_dir / "node.yaml")],
                    cons.home / "logs" / "peer.h01b.log")
        new_target = f"127.0.0.1:{doc['port']}"
        procs.wait_healthy("peer.h01b", lambda: admin_status(new_target, cons.node_creds("peer.h01")).height > 0, 60)
        deadline = time.monotonic() + 40
        while admin_status(new_target, cons.node_creds("peer.h01")).height < top + 1:
            assert time.monotonic() < deadline, "new peer did not catch up"
            time.sleep(0.2)
        ref = admin_status(cons.target("peer.h01"), cons.node_creds("peer.h01"))
        new = admin_status(new_target, cons.node_creds("peer.h01"))
        deadline = time.monotonic() + 20
        while (new.height, new.state_hash) != (ref.height, ref.state_hash):
            assert time.monotonic() < deadline, f"new peer {new} != {ref}"
            time.sleep(0.2)
            ref = admin_status(cons.target("peer.h01"), cons.node_creds("peer.h01"))
            new = admin_status(new_target, cons.node_creds("peer.h01"))

        # Operations: Prometheus metrics, one JSON log line per event, graceful SIGTERM.
        port = cons.node("peer.h01").metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        for metric in ("rxchain_peer_block_height", 'rxchain_peer_tx_validation_total{code="VALID"}',
                       "rxchain_peer_endorsements_total", "rxchain_peer_commit_seconds_bucket",
                       "rxchain_peer_sandbox_invocations_total", "rxchain_peer_sandbox_prefetch_hits_total"):
            assert metric in text
        # the certificate's expiry, for an alert well before it (README "Metrics")
        expiry = re.search(r"^rxchain_peer_cert_expiry_timestamp_seconds (\S+)$", text, re.M)
        cert = x509.load_pem_x509_certificate((cons.node_dir("peer.h01") / "cert.pem").read_bytes())
        assert expiry is not None and float(expiry.group(1)) == cert.not_valid_after_utc.timestamp()
        lines = [ln for ln in cons.log_path("peer.h01").read_text().splitlines() if "block_committed" in ln]
        assert lines and json.loads(lines[-1])["msg"].startswith("event=block_committed")
        assert procs.terminate("peer.h01b", grace_s=20) == 0
    finally:
        for c in clients:
            c.close()
        pharm.close()
