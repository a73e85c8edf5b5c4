"""Rotating a peer's and an orderer's TLS and signing certificates while prescription load runs.

The peer gets a new certificate from its organisation's CA and restarts on it (the other
peers keep endorsing, so the consortium keeps committing); a config transaction signed by a
majority of admins records the new certificate and revokes the old one. Afterwards the
peer's endorsements under the new certificate are VALID, an endorsement forged with the old
key is refused, and the checker finds nothing lost, duplicated or forked.

An orderer's certificate is replaced here by replacing the member: a new orderer (new key,
certificate and Raft id) joins by config transaction and the old one is removed by a
second. Rotating an orderer's certificate IN PLACE (same Raft id, one config transaction,
restart on the new files) is covered by tests/fault/test_orderer_cert_in_place.py.
"""

from __future__ import annotations

import datetime as dt
import functools
import shutil
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509 as cx509
from rxchain.v1 import config_pb2, identity_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from client.errors import RxClientError
from client.gateway import Gateway
from client.wallet import load_identity_dir
from node.crypto import signing
from node.crypto import x509 as rx509
from node.crypto.canonical import compute_tx_id
from node.crypto.signing import Purpose
from node.genesis import config_from_genesis, read_genesis
from tests.fault.test_chaos import prescription_load
from tests.harness.checker import check, orderer_view, peer_view
from tests.harness.consortium import Consortium
from tests.harness.network import start_network
from tests.harness.ports import free_ports
from tests.harness.procs import ProcessManager
from tests.harness.rpc import Creds, admin_healthy, admin_status, channel

PEER = "peer.h02"
_CODE = transaction_pb2.TxValidationCode


def _new_peer_cert(cons: Consortium) -> tuple[bytes, bytes, cx509.Certificate]:
    org = cons.node(PEER).org
    ca_dir = cons.home / "orgs" / org
    ca_cert = cx509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = signing.load_private_key((ca_dir / "ca.key").read_bytes())
    key = signing.generate_key()
    cert = rx509.issue_cert(ca_cert, ca_key, key.public_key(), org=org, role="peer", name=PEER,
                           now=dt.datetime.now(dt.UTC), hosts=("127.0.0.1", "localhost", PEER))
    return rx509.cert_to_pem(cert), signing.key_to_pem(key), cert


def _config_envelope(cons: Consortium, new: config_pb2.ConsortiumConfig) -> tuple[str, transaction_pb2.Envelope]:
    """A CONFIG envelope carrying ``new``, signed by the admins of a majority of organisations."""
    config_bytes = new.SerializeToString()
    orgs = [o.id for o in new.organizations]
    update = config_pb2.ConfigUpdate(config=config_bytes)
    for org in orgs[: len(orgs) // 2 + 1]:
        d = cons.net.user_dir(org, "admin")
        s = signing.load_signer(d / "cert.pem", d / "key.pem", org)
        update.signatures.add(signer=s.identity_bytes, signature=s.sign(Purpose.CONFIG, config_bytes))
    d = cons.net.user_dir(orgs[0], "admin")
    creator = signing.load_signer(d / "cert.pem", d / "key.pem", orgs[0])
    nonce = time.time_ns().to_bytes(24, "big")
    tx_id = compute_tx_id(nonce, creator.identity)
    header = transaction_pb2.TxHeader(tx_id=tx_id, type=transaction_pb2.CONFIG, creator=creator.identity,
                                      nonce=nonce, timestamp_ms=time.time_ns() // 1_000_000,
                                      consortium_id=new.consortium_id).SerializeToString()
    payload = transaction_pb2.Transaction(header=header, config_update=update.SerializeToString()).SerializeToString()
    return tx_id, transaction_pb2.Envelope(payload=payload, signature=creator.sign(Purpose.ENVELOPE, payload))


def _wait_code(cons: Consortium, tx_id: str, timeout_s: float = 30.0) -> int | None:
    deadline = time.monotonic() + timeout_s
    with channel(cons.target("peer.h01"), cons.node_creds("peer.h01")) as ch:
        stub = services_pb2_grpc.GatewayStub(ch)
        while time.monotonic() < deadline:
            try:
                st = stub.CommitStatus(services_pb2.CommitStatusRequest(tx_id=tx_id, timeout_ms=2000), timeout=5)
                return int(st.code)
            except Exception:
                time.sleep(0.3)
    return None


def _broadcast_config(cons: Consortium, via: str, new: config_pb2.ConsortiumConfig) -> str:
    tx_id, env = _config_envelope(cons, new)
    with channel(cons.target(via), cons.user_creds("h01", "admin")) as ch:
        br = next(iter(services_pb2_grpc.AtomicBroadcastStub(ch).Broadcast(iter([env]), timeout=30)))
    assert br.accepted, (br.reason, br.message)
    assert _wait_code(cons, tx_id) == _CODE.Value("VALID")
    return tx_id


def _height(target: str, creds: Creds) -> int:
    try:
        return int(admin_status(target, creds).height)
    except grpc.RpcError:
        return -1


def _new_orderer(cons: Consortium, old: str, new_name: str, raft_id: int) -> tuple[Path, cx509.Certificate, int]:
    """Key, certificate and node directory of a new orderer of ``old``'s organisation."""
    org = cons.node(old).org
    ca_dir = cons.home / "orgs" / org
    ca_cert = cx509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = signing.load_private_key((ca_dir / "ca.key").read_bytes())
    key = signing.generate_key()
    cert = rx509.issue_cert(ca_cert, ca_key, key.public_key(), org=org, role="orderer", name=new_name,
                            now=dt.datetime.now(dt.UTC), hosts=("127.0.0.1", "localhost", new_name))
    ndir = cons.home / "nodes" / new_name
    ndir.mkdir(parents=True)
    (ndir / "cert.pem").write_bytes(rx509.cert_to_pem(cert))
    (ndir / "key.pem").write_bytes(signing.key_to_pem(key))
    shutil.copy(cons.node_dir(old) / "ca-bundle.pem", ndir / "ca-bundle.pem")
    port, metrics_port = free_ports(2)
    doc = yaml.safe_load(cons.config_path(old).read_text())
    doc.update(name=new_name, port=port, metrics_port=metrics_port, raft_id=raft_id, data_dir="data")
    (ndir / "node.yaml").write_text(yaml.safe_dump(doc, sort_keys=True))
    return ndir, cert, port


def _next(config: config_pb2.ConsortiumConfig) -> config_pb2.ConsortiumConfig:
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(config)
    new.sequence = config.sequence + 1
    return new


def _wait_height(target: str, creds: Creds, goal: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _height(target, creds) >= goal:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_certificate_rotation_under_load(tmp_path: Path, procs: ProcessManager) -> None:
    net = start_network(tmp_path / "net", procs)
    cons = net.cons
    load = prescription_load(cons, seed=11)
    node_dir = cons.node_dir(PEER)
    old_cert = cx509.load_pem_x509_certificate((node_dir / "cert.pem").read_bytes())
    old_key = signing.load_private_key((node_dir / "key.pem").read_bytes())
    old_orderer, new_orderer = "orderer.ins01", "orderer2.ins01"
    cfg_txs: list[str] = []
    built_tx = ""
    try:
        load.start(flow_workers=2, racers=1)
        time.sleep(3)
        # ---- A. the peer: restart on a new certificate (TLS + signing), then a config tx
        # records it and revokes the old one; the other peers endorse meanwhile
        cert_pem, key_pem, new_cert = _new_peer_cert(cons)
        procs.terminate(PEER)
        (node_dir / "cert.pem").write_bytes(cert_pem)
        (node_dir / "key.pem").write_bytes(key_pem)
        t_down = time.monotonic()
        procs.restart(PEER)
        procs.wait_healthy(PEER, functools.partial(cons.healthy, PEER), 60)
        restart_s = time.monotonic() - t_down
        c0 = config_from_genesis(read_genesis(cons.net.genesis_path))
        c1 = _next(c0)
        for peer_node in c1.peers:
            if peer_node.name == PEER:
                peer_node.cert_der = rx509.cert_to_der(new_cert)
        org = next(o for o in c1.organizations if o.id == cons.node(PEER).org)
        org.revoked_serials.append(rx509.cert_info(old_cert).serial_hex)
        cfg_txs.append(_broadcast_config(cons, "orderer.ins02", c1))
        peer_rotated_at = time.monotonic()
        # ---- B. the orderer: a new orderer (new key, certificate, Raft id) joins by config
        # tx, catches up, then the old one is removed by another config tx and stopped
        ndir, ord_cert, port = _new_orderer(cons, old_orderer, new_orderer, raft_id=4)
        creds, target = Creds.of_dir(ndir), f"127.0.0.1:{port}"
        c2 = _next(c1)
        c2.orderers.add(raft_id=4, org="ins01", name=new_orderer, host="127.0.0.1", port=port,
                        cert_der=rx509.cert_to_der(ord_cert))
        cfg_txs.append(_broadcast_config(cons, "orderer.ins02", c2))
        procs.start(new_orderer, [sys.executable, "-m", "node.orderer", "--config", str(ndir / "node.yaml")],
                    cons.home / "logs" / f"{new_orderer}.log")
        procs.wait_healthy(new_orderer, functools.partial(admin_healthy, target, creds), 60)
        goal = _height(cons.target("orderer.ins02"), cons.node_creds("orderer.ins02"))
        assert _wait_height(target, creds, goal, 60), "the new orderer did not catch up"
        c3 = _next(c2)
        keep = [o for o in c3.orderers if o.raft_id != 1]
        del c3.orderers[:]
        c3.orderers.extend(keep)
        cfg_txs.append(_broadcast_config(cons, "orderer.ins02", c3))
        leader_at_removal = admin_status(cons.target("orderer.ins02"), cons.node_creds("orderer.ins02")).raft_leader
        time.sleep(3.0)
        print(f"leader when raft 1 was removed: {leader_at_removal}; 3 s later: "
              f"{admin_status(cons.target('orderer.ins02'), cons.node_creds('orderer.ins02')).raft_leader}")
        procs.terminate(old_orderer)
        removed_at = time.monotonic()
        time.sleep(3)
        acks_after_removal = load.rec.acks_since(removed_at)
        # the new orderer is a voter: with ins03 paused, {ins02, new} is the only quorum left.
        # Asked of the ordering service itself (Broadcast answers once the block is committed),
        # so the peers' failover away from the paused orderer does not blur the answer.
        with net_gateway(cons, "h01", "dr-test") as gw:
            probe = gw.builder.proposal("rxload", "issue", {"rx_id": "RX-quorum-probe", "max_fills": 1,
                                                            "medfee_fen": 1})
            probe_env = gw.builder.envelope(probe, gw.endorse(probe).prepared_transaction)
        procs.pause("orderer.ins03")
        paused_at = time.monotonic()
        with channel(cons.target("orderer.ins02"), cons.user_creds("h01", "dr-test")) as ch:
            stub = services_pb2_grpc.AtomicBroadcastStub(ch)
            while True:  # a client retries SERVICE_UNAVAILABLE while a new leader is elected
                br = next(iter(stub.Broadcast(iter([probe_env]), timeout=30)))
                if br.accepted or br.reason != "SERVICE_UNAVAILABLE" or time.monotonic() - paused_at > 25:
                    break
        quorum_answer_s = time.monotonic() - paused_at
        procs.resume("orderer.ins03")
        cfg_txs.append(probe.tx_id)
        print(f"with ins03 paused: broadcast accepted={br.accepted} {br.reason} after {quorum_answer_s:.2f}s")
        acks_after_peer_rotation = load.rec.acks_since(peer_rotated_at)
        load.stop()
        # ---- an endorsement forged with the peer's OLD key is now refused
        with net_gateway(cons, "h01", "dr-test") as gw:
            built = gw.builder.proposal("rxload", "issue", {"rx_id": "RX-old-key", "max_fills": 1, "medfee_fen": 1})
            built_tx = built.tx_id
            with channel(cons.target("peer.h01"), cons.user_creds("h01", "dr-test")) as ch:
                pr = services_pb2_grpc.EndorserStub(ch).ProcessProposal(built.signed, timeout=10)
            old_ident = signing.Signer(old_key, identity_pb2.Identity(org=cons.node(PEER).org,
                                                                      cert_der=rx509.cert_to_der(old_cert)))
            forged = transaction_pb2.Endorsement(endorser=old_ident.identity, signature=old_ident.sign(Purpose.ENDORSEMENT, pr.payload))
            tx = transaction_pb2.Transaction(header=built.header_bytes, invocation=built.invocation_bytes,
                                             response_payload=pr.payload, endorsements=[pr.endorsement, forged])
            envelope = gw.builder.envelope(built, tx.SerializeToString())
            try:
                gw.submit_envelope(built.tx_id, envelope)
                old_key_outcome = "VALID"
            except RxClientError as exc:
                old_key_outcome = exc.reason
        remaining = {"orderer.ins02": (cons.target("orderer.ins02"), cons.node_creds("orderer.ins02")),
                     "orderer.ins03": (cons.target("orderer.ins03"), cons.node_creds("orderer.ins03")),
                     new_orderer: (target, creds)}
        final = max(_height(t, c) for t, c in remaining.values())
        for p in cons.peer_names():
            assert _wait_height(cons.target(p), cons.node_creds(p), final, 60), p
        for t, c in remaining.values():
            assert _wait_height(t, c, final, 60)
        for p in cons.peer_names():
            procs.terminate(p)
        views = [peer_view(p, cons.data_dir(p), cons.net.genesis_path) for p in cons.peer_names()]
        orderers = [orderer_view(n, cons.data_dir(n)) for n in ("orderer.ins02", "orderer.ins03")]
        orderers.append(orderer_view(new_orderer, ndir / "data"))
    finally:
        net.close()
    report = check(views, load.rec.acks, load.rec.submitted, allowed=[*net.lifecycle_tx_ids, *cfg_txs, built_tx],
                   orderers=orderers, prescription_ns="rxload", settlement_ns="rxload")
    print(report.table())
    new_der, ord_der = rx509.cert_to_der(new_cert), rx509.cert_to_der(ord_cert)
    endorsed_by_new = 0
    for b in views[0].blocks:
        for env_b, code in zip(b.data.envelopes, b.metadata.validation_codes, strict=True):
            etx = transaction_pb2.Transaction.FromString(transaction_pb2.Envelope.FromString(env_b).payload)
            if code == _CODE.Value("VALID") and any(e.endorser.cert_der == new_der for e in etx.endorsements):
                endorsed_by_new += 1
    signed_by_new_orderer = sum(1 for b in orderers[-1].blocks
                                if any(s.signer.cert_der == ord_der for s in b.metadata.orderer_signatures))
    print(f"peer restart on its new certificate: {restart_s:.1f}s; acks after the peer rotation "
          f"{acks_after_peer_rotation}; VALID txs endorsed under the new peer certificate: {endorsed_by_new}; "
          f"old-key endorsement: {old_key_outcome}; acks after the old orderer was removed: {acks_after_removal}, "
          f"ordered with ins03 paused: {br.accepted}; blocks the new orderer signed: {signed_by_new_orderer}")
    assert report.ok, "\n".join(report.problems())
    assert acks_after_peer_rotation > 0 and endorsed_by_new > 0
    assert old_key_outcome in ("ENDORSEMENT_POLICY_FAILURE", "BAD_ENDORSEMENT"), old_key_outcome
    assert acks_after_removal > 0 and br.accepted and signed_by_new_orderer > 0


def net_gateway(cons: Consortium, org: str, user: str) -> Gateway:
    ident = load_identity_dir(cons.net.user_dir(org, user), cons.net.ca_bundle_path, org, user)
    return Gateway(ident, cons.target(f"peer.{org}"), cons.net.config.consortium_id)
