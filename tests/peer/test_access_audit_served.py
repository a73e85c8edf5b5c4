"""A served peer (node.peer.server.serve) records get_key calls in its access-audit log, answers
AccessAudit only to its organisation's admins and regulator staff, and keeps the log across a
restart. No orderer runs: an Evaluate of get_key on the bare genesis ledger is refused
UNKNOWN_CONTRACT, and that refusal is what gets recorded."""

from __future__ import annotations

import hashlib
import io
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from netgen import generate
from rxchain.v1 import services_pb2, services_pb2_grpc

from client.audit import AuditClient
from client.cli import main
from client.errors import RxClientError
from client.wallet import load_identity
from node.config import load_node_config
from node.crypto.x509 import pem_to_der
from node.errors import RxError, reason_from_rpc_error
from node.peer.server import PeerNode, serve
from tests.harness.ports import free_base_port
from tests.harness.rpc import Creds, channel
from tests.peer.kit import ProposalKit, user_signer


@pytest.fixture
def home(tmp_path: Path) -> Path:
    generate({
        "consortium_id": "audit-test", "base_port": free_base_port(8),
        "batch": {"max_tx_count": 50, "max_bytes": 1 << 20, "timeout_ms": 20},
        "limits": {"max_message_bytes": 4 << 20, "max_envelope_bytes": 256 << 10, "gas_limit": 100000,
                   "max_write_set_keys": 50, "max_value_bytes": 4096, "max_clock_skew_ms": 60000},
        "policies": {"config_update": "MAJORITY(admin)", "lifecycle": "MAJORITY(admin)"},
        "organizations": [
            {"id": "h01", "name": "H", "kind": "hospital", "level": "tertiary", "peer": True,
             "users": [{"name": "dr-a", "role": "doctor"}]},
            {"id": "ins01", "name": "I", "kind": "insurer", "peer": True, "orderer": True,
             "users": [{"name": "clerk-a", "role": "clerk"}]},
            {"id": "reg01", "name": "R", "kind": "regulator", "users": [{"name": "aud-a", "role": "auditor"}]},
        ],
    }, tmp_path / "net")
    return tmp_path / "net"


@pytest.fixture
def peer(home: Path) -> Iterator[list[PeerNode]]:
    """peer.h01 served (the test may stop it and serve it again: the last one is stopped)."""
    nodes = [serve(load_node_config(home / "nodes" / "peer.h01" / "node.yaml"))]
    try:
        yield nodes
    finally:
        nodes[-1].stop(0.5)


def _evaluate_get_key(home: Path, node: PeerNode, rx_id: str) -> str:
    """An Evaluate of prescription.get_key as h01's doctor: the refusal's reason."""
    kit = ProposalKit("audit-test", random.Random())
    signed = kit.proposal(user_signer(home, "h01", "dr-a"), "prescription", "get_key", {"rx_id": rx_id},
                          timestamp_ms=time.time_ns() // 1_000_000)
    creds = Creds.of_dir(home / "orgs" / "h01" / "users" / "dr-a", home / "ca-bundle.pem")
    with channel(node.config.listen, creds) as ch:
        try:
            services_pb2_grpc.GatewayStub(ch).Evaluate(services_pb2.EvaluateRequest(proposal=signed), timeout=10)
        except grpc.RpcError as exc:
            return reason_from_rpc_error(exc)
    return "OK"


def _client(home: Path, node: PeerNode, org: str, user: str) -> AuditClient:
    return AuditClient(load_identity(home, org, user), node.config.listen, timeout_s=10)


def test_served_peer_records_key_calls_for_admins_and_regulators_across_a_restart(
        home: Path, peer: list[PeerNode]) -> None:
    assert _evaluate_get_key(home, peer[0], "RX-1") == "UNKNOWN_CONTRACT"
    with _client(home, peer[0], "h01", "admin") as c:
        page = c.query()
    [rec] = page.records
    doctor_cert = (home / "orgs" / "h01" / "users" / "dr-a" / "cert.pem").read_bytes()
    assert (rec["org"], rec["role"], rec["record_id"], rec["outcome"], rec["path"]) == (
        "h01", "doctor", "RX-1", "UNKNOWN_CONTRACT", "evaluate")
    assert rec["cert_sha256"] == hashlib.sha256(pem_to_der(doctor_cert)).hexdigest()
    assert rec["authenticated"] and rec["height"] == 1

    with _client(home, peer[0], "reg01", "aud-a") as c:  # a regulator's auditor reads it too
        assert [r["id"] for r in c.query().records] == [1]
    for org, user in (("h01", "dr-a"), ("ins01", "admin"), ("ins01", "clerk-a")):
        with _client(home, peer[0], org, user) as c, pytest.raises(RxClientError) as err:
            c.query()
        assert err.value.reason == "AUDIT_ACCESS_DENIED", (org, user)
        with _client(home, peer[0], org, user) as c, pytest.raises(RxClientError) as err:
            c.verify()
        assert err.value.reason == "AUDIT_ACCESS_DENIED", (org, user)
    with _client(home, peer[0], "h01", "admin") as c, pytest.raises(RxClientError) as bad:
        c.query(limit=5000)
    assert bad.value.reason == "BAD_REQUEST"

    peer[0].stop(0.5)
    peer.append(serve(load_node_config(home / "nodes" / "peer.h01" / "node.yaml")))
    assert _evaluate_get_key(home, peer[-1], "RX-2") == "UNKNOWN_CONTRACT"
    with _client(home, peer[-1], "h01", "admin") as c:
        records = c.query().records
        verified = c.verify()
    assert [(r["id"], r["record_id"]) for r in records] == [(1, "RX-1"), (2, "RX-2")]
    assert records[1]["prev_hash"] == records[0]["hash"] == rec["hash"]
    assert verified["ok"] and verified["checked"] == 2


    def cli(*argv: str) -> tuple[int, dict[str, Any]]:
        buf = io.StringIO()
        code = main([*argv, "--home", str(home), "--json"], out=buf)
        return code, json.loads(buf.getvalue())

    code, listed = cli("audit", "list", "--as", "h01:admin", "--rx", "RX-2")
    assert code == 0 and [r["id"] for r in listed["records"]] == [2]
    head = verified["head"]
    code, checked = cli("audit", "verify", "--as", "reg01:aud-a", "--peer", "h01",
                        "--anchor", f"{head['last_id']}:{head['last_hash']}")
    assert (code, checked["ok"], checked["checked"], checked["anchor_checked"]) == (0, True, 2, True)
    code, wrong = cli("audit", "verify", "--as", "reg01:aud-a", "--peer", "h01", "--anchor", f"1:{'0' * 64}")
    assert (code, wrong["error"]) == (1, "AUDIT_CHAIN_BROKEN") and "ANCHOR_MISMATCH" in str(wrong["message"])
    code, refused = cli("audit", "list", "--as", "h01:dr-a")
    assert (code, refused["error"]) == (1, "AUDIT_ACCESS_DENIED")
    code, malformed = cli("audit", "verify", "--as", "h01:admin", "--anchor", "3:zz")
    assert (code, malformed["error"]) == (1, "BAD_ARGUMENTS")


@pytest.mark.parametrize(("key", "value"), [("audit_max_records", 999), ("audit_retention_days", 0),
                                            ("audit_retention_days", "ten"), ("audit_refusals_per_minute", 0),
                                            ("audit_refusal_burst", 100_001),
                                            ("audit_unauthenticated_per_minute", "many"),
                                            ("audit_unauthenticated_burst", 0)])
def test_the_audit_bounds_in_node_yaml_are_checked_at_start(home: Path, tmp_path: Path, key: str,
                                                            value: object) -> None:
    path = home / "nodes" / "peer.h01" / "node.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["extra"] = {key: value}
    bad = tmp_path / "node.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(RxError) as err:
        load_node_config(bad)
    assert err.value.reason == "BAD_CONFIG" and f"extra.{key}" in err.value.message
