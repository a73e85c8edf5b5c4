"""In-place rotation of an orderer's certificate on the full network, under prescription load.

orderer.ins02 gets a new key and certificate from its organisation's CA; a config
transaction signed by a majority of admins names the new certificate for the SAME raft id
(node/orderer/configtx.py); the operator restarts it on the new files with its data
directory (Raft log) intact. The peers keep committing throughout, then ordering with
orderer.ins03 paused needs ins02's vote, every block ins02 stored verifies with the peers'
block check against the config in force for it, and the checker finds nothing lost,
duplicated or forked.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest
from rxchain.v1 import services_pb2_grpc

from node.crypto import x509 as rx509
from node.genesis import config_from_genesis, read_genesis
from tests.fault.test_cert_rotation import _broadcast_config, _height, _next, _wait_height, net_gateway
from tests.fault.test_chaos import prescription_load
from tests.harness.checker import check, orderer_view, peer_view
from tests.harness.network import start_network
from tests.harness.procs import ProcessManager
from tests.harness.rpc import channel
from tests.orderer.test_cert_rotation import _issue, _verify_as_peer

ROTATED = "orderer.ins02"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_orderer_certificate_rotated_in_place_under_load(tmp_path: Path, procs: ProcessManager) -> None:
    net = start_network(tmp_path / "net", procs)
    cons = net.cons
    load = prescription_load(cons, seed=13)
    cfg_txs: list[str] = []
    try:
        load.start(flow_workers=2, racers=1)
        time.sleep(3)
        genesis = config_from_genesis(read_genesis(cons.net.genesis_path))
        old_der = rx509.pem_to_der((cons.node_dir(ROTATED) / "cert.pem").read_bytes())
        cert_pem, key_pem, new_der = _issue(cons.net, cons.node(ROTATED).org, cons.node(ROTATED).org, ROTATED)
        c1 = _next(genesis)
        node = next(o for o in c1.orderers if o.name == ROTATED)
        node.cert_der = new_der
        cfg_txs.append(_broadcast_config(cons, "orderer.ins01", c1))
        rotated_at = time.monotonic()
        procs.terminate(ROTATED)
        (cons.node_dir(ROTATED) / "cert.pem").write_bytes(cert_pem)
        (cons.node_dir(ROTATED) / "key.pem").write_bytes(key_pem)
        procs.restart(ROTATED)
        procs.wait_healthy(ROTATED, functools.partial(cons.healthy, ROTATED), 60)
        goal = _height(cons.target("orderer.ins01"), cons.node_creds("orderer.ins01"))
        assert _wait_height(cons.target(ROTATED), cons.node_creds(ROTATED), goal, 60), "ins02 did not rejoin"
        time.sleep(2)
        acks_after_rotation = load.rec.acks_since(rotated_at)
        load.stop()
        # ins02 votes: with ins03 paused, {ins01, ins02} is the only quorum left.
        with net_gateway(cons, "h01", "dr-test") as gw:
            probe = gw.builder.proposal("rxload", "issue", {"rx_id": "RX-inplace-probe", "max_fills": 1,
                                                            "medfee_fen": 1})
            probe_env = gw.builder.envelope(probe, gw.endorse(probe).prepared_transaction)
        procs.pause("orderer.ins03")
        paused_at = time.monotonic()
        try:
            with channel(cons.target("orderer.ins01"), cons.user_creds("h01", "dr-test")) as ch:
                stub = services_pb2_grpc.AtomicBroadcastStub(ch)
                while True:  # a client retries SERVICE_UNAVAILABLE while a new leader is elected
                    br = next(iter(stub.Broadcast(iter([probe_env]), timeout=30)))
                    if br.accepted or br.reason != "SERVICE_UNAVAILABLE" or time.monotonic() - paused_at > 25:
                        break
                    time.sleep(0.2)
        finally:
            procs.resume("orderer.ins03")
        cfg_txs.append(probe.tx_id)
        orderer_names = ["orderer.ins01", ROTATED, "orderer.ins03"]
        final = max(_height(cons.target(n), cons.node_creds(n)) for n in orderer_names)
        for p in cons.peer_names():
            assert _wait_height(cons.target(p), cons.node_creds(p), final, 60), p
        for n in orderer_names:
            assert _wait_height(cons.target(n), cons.node_creds(n), final, 60), n
        for p in cons.peer_names():
            procs.terminate(p)
        views = [peer_view(p, cons.data_dir(p), cons.net.genesis_path) for p in cons.peer_names()]
        orderers = [orderer_view(n, cons.data_dir(n)) for n in orderer_names]
    finally:
        net.close()
    report = check(views, load.rec.acks, load.rec.submitted, allowed=[*net.lifecycle_tx_ids, *cfg_txs],
                   orderers=orderers, prescription_ns="rxload", settlement_ns="rxload")
    print(report.table())
    print(f"acks after the rotation: {acks_after_rotation}; ordered with ins03 paused: {br.accepted}")
    assert report.ok, "\n".join(report.problems())
    assert acks_after_rotation > 0 and br.accepted
    mine = orderers[1].blocks
    _verify_as_peer(mine, genesis)
    assert new_der in {s.signer.cert_der for s in mine[-1].metadata.orderer_signatures}
    assert old_der not in {s.signer.cert_der for s in mine[-1].metadata.orderer_signatures}
