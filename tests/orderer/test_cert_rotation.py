"""In-place rotation of an orderer's TLS + signing certificate through a config transaction.

Under light broadcast load, orderer.ins02 gets a new key and certificate from its
organisation's CA; a config update signed by a majority of admins records the new
certificate for the SAME raft id; the operator restarts ins02 on the new files (same data
directory, so its Raft log is kept). Ordering never stops, every accepted envelope is
committed exactly once, the old certificate is refused on Cluster.Step and the new one
accepted, ins02 is needed for a quorum afterwards (another orderer paused), and every
block ins02 stored verifies against the config in force for that block, with the peers'
block check (node/peer/validator.py).
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from cryptography import x509 as cx509
from netgen import generate
from netgen.ports import free_base_port
from rxchain.v1 import block_pb2, config_pb2, services_pb2

from node.crypto import signing
from node.crypto import x509 as rx509
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Verifier
from node.crypto.tls import secure_channel
from node.errors import RxError
from node.identity.msp import MSP
from node.orderer.configtx import OrdererConfig, config_of_block, validate_update
from node.peer.validator import ConfigState, Validator
from tests.orderer.cluster import (
    Client,
    OrdererProcs,
    all_serving,
    config_envelope,
    consortium,
    leader_of,
    make_network,
    tx_ids_of,
    wait_until,
)

ROTATED = "orderer.ins02"
ADMINS = ["ins01", "ins02", "ins03"]  # MAJORITY(admin) of 4 organisations


class _Load:
    """Light background load: batches of 5 envelopes, round robin over the running orderers.
    An envelope counts as acknowledged only when its Broadcast answer says accepted."""

    def __init__(self, procs: OrdererProcs, client: Client) -> None:
        self.procs, self.client = procs, client
        self.accepted: list[str] = []
        self.refused: Counter[str] = Counter()
        self.errors = 0
        self.skip: set[str] = set()  # paused orderers (a client would time out and move on)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rotation-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            names = [n for n in self.procs.procs if n not in self.skip]
            target = self.procs.target(names[i % len(names)])
            i += 1
            envs = [self.client.envelope() for _ in range(5)]
            try:
                resps = self.client.broadcast(target, [e for _, e in envs], timeout=15)
            except grpc.RpcError:
                self.errors += 1
                self._stop.wait(0.05)
                continue
            for (tx_id, _), r in zip(envs, resps, strict=False):  # answers come in order
                if r.accepted:
                    self.accepted.append(tx_id)
                else:
                    self.refused[r.reason] += 1
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _issue(net: Any, ca_org: str, org: str, name: str, role: str = "orderer") -> tuple[bytes, bytes, bytes]:
    """(cert PEM, key PEM, cert DER) of a new certificate issued by ``ca_org``'s CA."""
    ca_dir = net.home / "orgs" / ca_org
    ca_cert = cx509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = signing.load_private_key((ca_dir / "ca.key").read_bytes())
    key = signing.generate_key()
    cert = rx509.issue_cert(ca_cert, ca_key, key.public_key(), org=org, role=role, name=name,
                            now=dt.datetime.now(dt.UTC), hosts=("127.0.0.1", "localhost", name))
    return rx509.cert_to_pem(cert), signing.key_to_pem(key), rx509.cert_to_der(cert)


def _next(config: config_pb2.ConsortiumConfig, rotate: dict[int, bytes]) -> config_pb2.ConsortiumConfig:
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(config)
    new.sequence = config.sequence + 1
    for o in new.orderers:
        if o.raft_id in rotate:
            o.cert_der = rotate[o.raft_id]
    return new


def _step_code(target: str, cert: Path, key: Path, ca: Path) -> grpc.StatusCode:
    """Status of an (empty) Cluster.Step stream opened with the given client certificate."""
    with secure_channel(target, cert, key, ca) as ch:
        call = ch.stream_unary("/rxchain.v1.Cluster/Step",
                               request_serializer=services_pb2.ConsensusRequest.SerializeToString,
                               response_deserializer=services_pb2.ConsensusResponse.FromString)
        try:
            call(iter([]), timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


def _verify_as_peer(blocks: list[block_pb2.Block], genesis: config_pb2.ConsortiumConfig) -> list[int]:
    """Check every block with the peers' block check against the config in force for it
    (raises RxError on a bad signature); returns the numbers of the config blocks."""
    verifier = Verifier()
    validator = Validator(cast(Any, None), genesis, verifier, cast(Any, None))
    prev = block_header_hash(blocks[0].header)
    config_blocks = []
    for b in blocks[1:]:
        validator.check_block(b, b.header.number, prev)
        prev = block_header_hash(b.header)
        cfg = config_of_block(b)
        if cfg is not None:
            config_blocks.append(b.header.number)
            validator.adopt(ConfigState(cfg, verifier))
    return config_blocks


def test_config_rules_for_an_in_place_rotation(tmp_path: Path) -> None:
    net = generate(consortium(free_base_port(4)), tmp_path / "net")
    verifier = Verifier()
    current = OrdererConfig(net.config, MSP(net.config, verifier), 0)
    rid = next(o.raft_id for o in net.config.orderers if o.name == ROTATED)
    _, _, new_der = _issue(net, "ins02", "ins02", ROTATED)

    def check(cfg: config_pb2.ConsortiumConfig, admins: list[str] = ADMINS) -> str:
        try:
            validate_update(current, config_envelope(net, cfg, admins), verifier)
        except RxError as err:
            assert err.reason == "BAD_CONFIG_UPDATE"
            return err.message
        return ""

    good = _next(net.config, {rid: new_der})
    assert check(good) == ""
    assert "do not satisfy" in check(good, ["ins01", "ins02"])  # MAJORITY(admin) of 4 orgs
    _, _, foreign = _issue(net, "ins01", "ins02", ROTATED)
    assert "new certificate invalid" in check(_next(net.config, {rid: foreign}))
    _, _, clerk = _issue(net, "ins02", "ins02", "clerk2", role="clerk")
    assert "not orderer" in check(_next(net.config, {rid: clerk}))
    for field_name, value in (("port", 1), ("host", "10.0.0.9"), ("org", "ins01")):
        moved = _next(net.config, {rid: new_der})
        node = next(o for o in moved.orderers if o.raft_id == rid)
        setattr(node, field_name, value)
        assert "organisation or address" in check(moved), field_name
    _, _, other = _issue(net, "ins01", "ins01", "orderer.ins01")
    assert "at a time" in check(_next(net.config, {rid: new_der, 1: other}))
    grown = _next(net.config, {rid: new_der})
    grown.orderers.add(raft_id=9, org="ins01", name="orderer9.ins01", host="127.0.0.1", port=1,
                       cert_der=other)
    assert "at a time" in check(grown)
    removed = _next(net.config, {rid: new_der})
    del removed.orderers[0]
    assert "at a time" in check(removed)


@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.parametrize("lagging", [False, True], ids=["running", "lagging"])
def test_rotate_an_orderer_certificate_in_place_under_load(tmp_path: Path, lagging: bool) -> None:
    """``lagging``: ins02 is paused before the config tx and killed, so it restarts on the
    new certificate before it has applied the config block (it must store copies signed by
    the others up to that block, then sign with the new certificate)."""
    net = make_network(tmp_path / "net")
    procs = OrdererProcs(net)
    client = Client(net)
    names = procs.names()
    spec = {n.name: n for n in net.orderers()}
    rid = spec[ROTATED].raft_id
    node_dir = net.node_config_path(ROTATED).parent
    old_dir = tmp_path / "old-material"
    old_dir.mkdir()
    (old_dir / "cert.pem").write_bytes((node_dir / "cert.pem").read_bytes())
    (old_dir / "key.pem").write_bytes((node_dir / "key.pem").read_bytes())
    others = [n for n in names if n != ROTATED]
    pump = _Load(procs, client)
    paused: str | None = None
    try:
        procs.start_all()
        all_serving(procs, client, names)
        pump.start()
        wait_until(lambda: len(pump.accepted) >= 20, 30, what="load to flow")
        genesis = net.config
        cert_pem, key_pem, new_der = _issue(net, "ins02", "ins02", ROTATED)

        # Refused, nothing ordered: a certificate from another org's CA, a rotation that also
        # moves the orderer, and two rotations in one update.
        _, _, foreign_der = _issue(net, "ins01", "ins02", ROTATED)
        moved = _next(genesis, {rid: new_der})
        next(o for o in moved.orderers if o.raft_id == rid).port += 1
        _, _, other_der = _issue(net, "ins01", "ins01", "orderer.ins01")
        bad = [_next(genesis, {rid: foreign_der}), moved,
               _next(genesis, {rid: new_der, spec["orderer.ins01"].raft_id: other_der})]
        for cfg in bad:
            [r] = client.broadcast(procs.target(others[0]), [config_envelope(net, cfg, ADMINS)])
            assert (r.accepted, r.reason) == (False, "BAD_CONFIG_UPDATE"), r.message

        # The rotation itself.
        if lagging:
            pump.skip.add(ROTATED)
            procs.procs[ROTATED].send_signal(signal.SIGSTOP)
            wait_until(lambda: leader_of(procs, client, others) in others, 20,
                       what="a leader other than the paused ins02")
        rotated_cfg = _next(genesis, {rid: new_der})
        [r] = client.broadcast(procs.target(others[0]), [config_envelope(net, rotated_cfg, ADMINS)])
        assert r.accepted, r.message
        acks_at_config = len(pump.accepted)
        # From that block on the others refuse ins02's old certificate on Cluster.Step; the
        # operator restarts it on the new material (same data directory, Raft log kept).
        time.sleep(0.5)
        if lagging:
            procs.kill(ROTATED)  # SIGKILL also ends a stopped process; the WAL is fsynced
        else:
            procs.terminate(ROTATED)
        (node_dir / "cert.pem").write_bytes(cert_pem)
        (node_dir / "key.pem").write_bytes(key_pem)
        procs.start(ROTATED)
        pump.skip.clear()
        height = max(client.status(procs.target(n)).height for n in others)
        wait_until(lambda: client.status(procs.target(ROTATED), 1.0).height >= height, 60,
                   what="the rotated orderer to rejoin")
        acks_while_rotating = len(pump.accepted) - acks_at_config
        wait_until(lambda: len(pump.accepted) >= acks_at_config + acks_while_rotating + 20, 30,
                   what="load after the restart")
        pump.stop()

        # The transport of the others: old certificate refused, new one accepted.
        ca = net.ca_bundle_path
        for n in others:
            assert _step_code(procs.target(n), old_dir / "cert.pem", old_dir / "key.pem", ca) \
                == grpc.StatusCode.PERMISSION_DENIED
            assert _step_code(procs.target(n), node_dir / "cert.pem", node_dir / "key.pem", ca) \
                == grpc.StatusCode.OK

        # ins02 is a working voter: with another orderer paused, only it completes a quorum.
        paused = others[1]
        procs.procs[paused].send_signal(signal.SIGSTOP)
        wait_until(lambda: leader_of(procs, client, [others[0], ROTATED]) is not None, 20,
                   what="a leader with ins03 paused")

        def ordered() -> bool:
            rs = client.broadcast(procs.target(others[0]), [client.envelope()[1]], timeout=10)
            if rs[0].accepted:
                pump.accepted.append(rs[0].tx_id)
            return bool(rs[0].accepted)

        wait_until(ordered, 45, interval=0.2, what="ordering with ins03 paused")
        procs.procs[paused].send_signal(signal.SIGCONT)
        paused = None

        final = max(client.status(procs.target(n)).height for n in names)
        for n in names:
            wait_until(lambda n=n: client.status(procs.target(n), 1.0).height >= final, 30,
                       what=f"{n} at height {final}")
        chains = {n: client.blocks(procs.target(n))[:final] for n in names}
    finally:
        print(f"load: accepted {len(pump.accepted)} errors {pump.errors} refused {pump.refused}")
        for n in list(procs.procs):
            try:
                print(n, client.status(procs.target(n), 1.0))
            except grpc.RpcError as exc:
                print(n, exc.code())
        if paused is not None and paused in procs.procs:
            procs.procs[paused].send_signal(signal.SIGCONT)
        pump.stop()
        procs.close()
        for name in procs.names():
            print(f"===== {name}\n{procs.log_text(name)[-3000:]}")

    hashes = {n: [block_header_hash(b.header) for b in bs] for n, bs in chains.items()}
    assert hashes[names[0]] == hashes[names[1]] == hashes[names[2]]
    counts = Counter(t for b in chains[names[0]] for t in tx_ids_of(b))
    assert all(c == 1 for c in counts.values()), "a transaction was ordered twice"
    missing = [t for t in pump.accepted if counts[t] != 1]
    assert not missing, f"{len(missing)} accepted envelopes not committed"
    print(f"accepted {len(pump.accepted)}, while rotating {acks_while_rotating}")
    assert acks_while_rotating > 0, "ordering stopped during the rotation"
    # Every block ins02 stored verifies against the config in force for it (the peers'
    # check): signed by ins02 under that config's certificate, or a copy another orderer
    # signed where ins02 could not (between the rotation and its restart).
    mine = chains[ROTATED]
    [config_block] = _verify_as_peer(mine, genesis)
    old_der = rx509.cert_to_der(cx509.load_pem_x509_certificate((old_dir / "cert.pem").read_bytes()))
    signers = [{s.signer.cert_der for s in b.metadata.orderer_signatures} for b in mine[1:]]
    assert all(new_der not in s for s in signers[:config_block])  # blocks 1..config block
    assert all(old_der not in s for s in signers[config_block:])  # after it
    assert new_der in signers[-1], "the restarted orderer does not sign with its new certificate"
