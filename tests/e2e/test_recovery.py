"""Disaster recovery on the running test network, with the operator's own tools only (the
README's "Recovery"): a peer whose data directory is lost catches up from the orderers; an
orderer whose Raft state is lost is refused at start-up (RAFT_STATE_LOST), taken out of the
orderer set with a config update, emptied, added back with another and catches up -- and then
counts in the Raft quorum again. The network is whole again afterwards (the story's tests
follow on it)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from rxchain.v1 import block_pb2, services_pb2, services_pb2_grpc

from client.network import load_network
from client.wallet import load_identity
from node.crypto.tls import secure_channel
from tests.e2e.conftest import Net, rxchain, rxchain_inproc
from tests.orderer.cluster import not_signed_in_force

ADMINS = ("h01", "h02", "p01", "p02", "ins01")  # MAJORITY(admin) of the 8 organisations
ORDERER = "orderer.ins03"
PEER = "peer.p02"
README = Path(__file__).resolve().parents[2] / "README.md"


def _status(net: Net) -> dict[str, dict[str, Any]]:
    return {row["node"]: row for row in net.cli("network", "status")["nodes"]}


def _wait_level(net: Net, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """Every node serving at one height (bounded wait); the status rows."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = _status(net)
        heights = {r.get("height") for r in rows.values()}
        if all(r["serving"] for r in rows.values()) and len(heights) == 1:
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)


def _config_update(net: Net, tmp_path: Path, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """propose --from-json, sign by a majority of admins, submit (the README's commands, by the
    admin of the orderer's organisation): the submit's answer."""
    cfg, upd = tmp_path / f"{name}.json", tmp_path / f"{name}.rxcfg"
    cfg.write_text(json.dumps({"config": config}))
    net.cli("--as", "ins03:admin", "config", "propose", "--out", str(upd), "--from-json", str(cfg))
    for org in ADMINS:
        net.cli("--as", f"{org}:admin", "config", "sign", str(upd))
    return net.cli("--as", "ins03:admin", "config", "submit", str(upd))


def _wait_voter(net: Net, name: str, raft_id: int, timeout_s: float = 30.0) -> None:
    """Until the orderer's log shows it applied its promotion to voter (bounded wait)."""
    log = net.home / "logs" / f"{name}.log"
    deadline = time.monotonic() + timeout_s
    while True:
        changes = [json.loads(line)["change"] for line in log.read_text().splitlines()
                   if '"conf_change_applied"' in line]
        if changes and "ADD_NODE" in changes[-1] and f"node_id={raft_id}," in changes[-1]:
            return
        assert time.monotonic() < deadline, changes
        time.sleep(0.3)


def _wait_removed(net: Net, name: str, raft_id: int, since: int, timeout_s: float = 30.0) -> None:
    """Until ``name``'s log, past its first ``since`` characters, shows it applied the removal
    of ``raft_id`` from Raft (bounded wait): the leader admits adding it back only then."""
    log = net.home / "logs" / f"{name}.log"
    deadline = time.monotonic() + timeout_s
    while True:
        changes = [json.loads(line)["change"] for line in log.read_text()[since:].splitlines()
                   if '"conf_change_applied"' in line]
        if any("REMOVE_NODE" in c and f"node_id={raft_id}," in c for c in changes):
            return
        assert time.monotonic() < deadline, changes
        time.sleep(0.3)


def _issue(net: Net) -> dict[str, Any]:
    return net.cli("--as", "h01:dr-jiang", "rx", "issue", "--patient", "patient-zhang", "--diagnosis",
                   "I10", "--drug", "amlodipine:1", "--days", "7", "--valid-days", "2")


def _orderer_blocks(net: Net, name: str) -> list[block_pb2.Block]:
    """Every block the orderer ``name`` serves from its own store (its Deliver, no follow)."""
    node = next(n for n in load_network(net.home).orderers if n.name == name)
    ident = load_identity(net.home, "h01", "admin")
    channel = secure_channel(node.target, ident.cert_path, ident.key_path, ident.ca_bundle_path)
    try:
        stub = services_pb2_grpc.AtomicBroadcastStub(channel)
        req = services_pb2.DeliverRequest(start_block=0, stop_block=0, follow=False)
        blocks = []
        for msg in stub.Deliver(req, timeout=30):
            if msg.WhichOneof("kind") != "block":
                break
            blocks.append(msg.block)
        return blocks
    finally:
        channel.close()


def _readme_peer_wipe() -> str:
    """What the README's peer recovery has the operator remove: the path after HOME/nodes/PEER/."""
    found = re.findall(rf"rm -rf HOME/nodes/{re.escape(PEER)}/(\S+)", README.read_text())
    assert len(found) == 1, found
    return str(found[0])


def test_a_peer_whose_data_directory_is_lost_catches_up_from_the_orderers(net: Net) -> None:
    rx_id = _issue(net)["rx_id"]
    # a key request p02 answers (refused, audited): its access-audit log, which no block
    # rebuilds, outlasts the README's recovery -- an auditor's anchor on it still verifies
    rc, out = rxchain_inproc(net.home, "--as", "p02:pharm-chen", "rx", "show", rx_id)
    assert (rc, out["error"]) == (1, "NO_KEY_GRANT"), out
    head = net.cli("--as", "p02:admin", "audit", "verify")["head"]
    assert head["last_id"] >= 1, head
    before = _wait_level(net)[PEER]["height"]
    # a node name the home does not know: refused, nothing stopped
    rc, out = rxchain(net.home, "network", "down", "--node", "peer.p99")
    assert (rc, out["error"]) == (2, "BAD_ARGUMENTS") and "peer.p99" in out["message"], out
    assert all(r["serving"] for r in _status(net).values())
    assert [s["node"] for s in net.cli_proc("network", "down", "--node", PEER)["stopped"]] == [PEER]
    assert _status(net)[PEER]["pid"] is None and _status(net)["peer.h01"]["serving"]
    shutil.rmtree(net.home / "nodes" / PEER / _readme_peer_wipe())  # its ledger, as the README says
    _issue(net)  # the network goes on without it
    net.cli_proc("network", "up", "--timeout", "60")  # starts what is not running: the peer
    rows = _wait_level(net)
    assert rows[PEER]["height"] > before
    verified = net.cli("--as", "p02:admin", "ledger", "verify")
    assert verified["ok"] and verified["agree"], verified
    state = {p["peer"]: p["state_hash"] for p in verified["peers"]}
    assert len(set(state.values())) == 1 and len(state) == len(rows) - 3, state
    kept = net.cli("--as", "p02:admin", "audit", "verify", "--anchor", f"{head['last_id']}:{head['last_hash']}")
    assert kept["ok"] and kept["anchor_checked"] and kept["head"]["first_id"] == head["first_id"], kept


def test_an_orderer_whose_data_is_lost_is_removed_emptied_and_added_back(net: Net, tmp_path: Path) -> None:
    data = net.home / "nodes" / ORDERER / "data"
    net.cli_proc("network", "down", "--node", ORDERER)
    # its Raft WAL lost while its block store remains: refused, nothing started
    shutil.rmtree(data / "raft")
    rc, out = rxchain(net.home, "network", "up", "--timeout", "30")
    assert (rc, out["error"]) == (1, "NODE_EXITED") and "RAFT_STATE_LOST" in out["message"], out
    assert _status(net)[ORDERER]["pid"] is None
    # its whole data directory emptied (nothing local shows it lost anything): the others say
    # it is a voter of a network with blocks, refused all the same
    shutil.rmtree(data)
    rc, out = rxchain(net.home, "network", "up", "--timeout", "30")
    assert (rc, out["error"]) == (1, "NODE_EXITED") and "RAFT_STATE_LOST" in out["message"], out
    log = net.home / "logs" / f"{ORDERER}.log"
    assert '"event": "raft_state_lost"' in log.read_text()
    assert _status(net)[ORDERER]["pid"] is None
    # 1. out of the orderer set (the two others order on)
    config = net.cli("--as", "ins03:admin", "config", "show")["config"]
    [entry] = [o for o in config["orderers"] if o["name"] == ORDERER]
    raft_id = entry.get("raft_id", entry.get("raftId"))
    since = len((net.home / "logs" / "orderer.ins01.log").read_text())
    removed = _config_update(net, tmp_path, "remove", dict(config, orderers=[
        o for o in config["orderers"] if o["name"] != ORDERER]))
    # 2. emptied; 3. back in the orderer set, same raft id, certificate and address
    shutil.rmtree(data)
    config = net.cli("--as", "ins03:admin", "config", "show")["config"]
    assert ORDERER not in [o["name"] for o in config["orderers"]]
    _wait_removed(net, "orderer.ins01", raft_id, since)  # out of Raft too: it may come back
    added = _config_update(net, tmp_path, "add", dict(config, orderers=[*config["orderers"], entry]))
    assert added["sequence"] == removed["sequence"] + 1
    # 4. started: the others have it as a learner, so it starts; it catches up from them
    since_own = len(log.read_text())
    net.cli_proc("network", "up", "--timeout", "60")
    started = [line for line in log.read_text()[since_own:].splitlines()
               if any(f'"event": "raft_state_{e}"' in line for e in ("confirmed", "unconfirmed", "lost"))]
    assert len(started) == 1 and '"event": "raft_state_confirmed"' in started[0], started
    assert any(f"has raft id {raft_id} as {role}" in started[0] for role in ("a learner", "no member")), started
    _issue(net)
    rows = _wait_level(net)
    # every block it serves, also those ordered while it was out of the orderer set, is signed
    # by an orderer of the config in force before it (else the peers would refuse it)
    blocks = _orderer_blocks(net, ORDERER)
    assert len(blocks) == rows[ORDERER]["height"] and not_signed_in_force(blocks) == []
    # it votes again once caught up (the README's check: its log), and then, with another
    # orderer stopped, ordering needs it
    _wait_voter(net, ORDERER, raft_id)
    net.cli_proc("network", "down", "--node", "orderer.ins01")
    try:
        _issue(net)
    finally:
        net.cli_proc("network", "up", "--timeout", "60")
    rows = _wait_level(net)
    assert rows[ORDERER]["raft_leader"] == rows["orderer.ins01"]["raft_leader"] != 0
    verified = net.cli("--as", "ins03:admin", "ledger", "verify")
    assert verified["ok"] and verified["agree"], verified
