"""Test helpers: a throwaway 3-orderer consortium, orderer processes and a client."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import yaml
from netgen import generate
from netgen.ports import free_base_port
from rxchain.v1 import block_pb2, config_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from node.crypto.canonical import block_header_hash, compute_tx_id
from node.crypto.signing import Purpose, Signer, Verifier, load_signer
from node.crypto.tls import secure_channel
from node.orderer.configtx import config_of_block
from node.orderer.envelope_batch import encode_batch

ROOT = Path(__file__).resolve().parents[2]


def consortium(base_port: int, orderer_orgs: int = 3) -> dict[str, Any]:
    orgs = [
        {"id": f"ins0{i}", "name": f"Insurer {i}", "kind": "insurer", "orderer": True,
         "peer": False, "users": [{"name": "clerk", "role": "clerk"}]}
        for i in range(1, orderer_orgs + 1)
    ]
    orgs.append({"id": "h01", "name": "Hospital", "kind": "hospital", "level": "tertiary",
                 "peer": False, "users": [{"name": "dr", "role": "doctor",
                                            "attrs": {"dr_code": "D1", "practice_years": "5",
                                                      "licence_no": "L1"}}]})
    return {
        "consortium_id": "test-rx",
        "base_port": base_port,
        "batch": {"max_tx_count": 100, "max_bytes": 1048576, "timeout_ms": 30},
        "limits": {"max_message_bytes": 4194304, "max_envelope_bytes": 65536,
                   "gas_limit": 1000000, "max_write_set_keys": 100, "max_value_bytes": 65536,
                   "max_clock_skew_ms": 600000},
        "policies": {"config_update": "MAJORITY(admin)"},
        "organizations": orgs,
    }


def set_extra(net: Any, name: str, **extra: int) -> None:
    """Add ``extra`` to the ``extra`` keys of orderer ``name``'s node.yaml."""
    path = net.node_config_path(name)
    doc = yaml.safe_load(path.read_text())
    doc["extra"] = {**doc.get("extra", {}), **extra}
    path.write_text(yaml.safe_dump(doc))


def make_network(home: Path, extra: dict[str, Any] | None = None, orderer_orgs: int = 3, *,
                 limits: dict[str, int] | None = None, batch: dict[str, int] | None = None):
    """``limits`` and ``batch``: genesis values replacing those of :func:`consortium`."""
    base = free_base_port(orderer_orgs + 1)
    spec = consortium(base, orderer_orgs)
    spec["limits"].update(limits or {})
    spec["batch"].update(batch or {})
    net = generate(spec, home)
    for n in net.orderers():
        path = net.node_config_path(n.name)
        doc = yaml.safe_load(path.read_text())
        doc["extra"] = {"tick_ms": 50, "election_tick": 10, "commit_timeout_ms": 4000,
                        **(extra or {})}
        doc["log_level"] = os.environ.get("RX_TEST_LOG", "INFO")
        path.write_text(yaml.safe_dump(doc))
    return net


class OrdererProcs:
    """Orderer processes of a generated network; kills all on close()."""

    def __init__(self, net) -> None:
        self.net = net
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def names(self) -> list[str]:
        return [n.name for n in self.net.orderers()]

    def start(self, name: str, *args: str) -> None:
        """Start orderer ``name`` (``args``: more command-line arguments, e.g. --first-start)."""
        log = self.net.home / f"{name}.log"
        self.logs[name] = log
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen"),
                                             str(ROOT / "network-config")])
        with open(log, "ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "node.orderer", "--config",
                 str(self.net.node_config_path(name)), *args],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
            )

    def start_all(self) -> None:
        for name in self.names():
            self.start(name)

    def kill(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is not None:
            p.kill()
            p.wait(10)

    def terminate(self, name: str) -> int:
        p = self.procs.pop(name)
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
            return -9

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def target(self, name: str) -> str:
        spec = next(n for n in self.net.orderers() if n.name == name)
        return f"127.0.0.1:{spec.port}"

    def log_text(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if name in self.logs else ""


class Client:
    """A consortium member talking to orderers over mTLS."""

    def __init__(self, net, org: str = "h01", user: str = "dr") -> None:
        d = net.user_dir(org, user)
        self.cert, self.key, self.ca = d / "cert.pem", d / "key.pem", net.ca_bundle_path
        self.signer: Signer = load_signer(self.cert, self.key, org)

    def channel(self, target: str) -> grpc.Channel:
        return secure_channel(target, self.cert, self.key, self.ca)

    def envelope(self, size: int = 200, consortium_id: str = "test-rx",
                 timestamp_ms: int | None = None) -> tuple[str, bytes]:
        nonce = secrets.token_bytes(24)
        tx_id = compute_tx_id(nonce, self.signer.identity)
        header = transaction_pb2.TxHeader(
            tx_id=tx_id, type=transaction_pb2.INVOKE, creator=self.signer.identity, nonce=nonce,
            timestamp_ms=int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
            consortium_id=consortium_id)
        tx = transaction_pb2.Transaction(header=header.SerializeToString(),
                                         invocation=b"x" * size)
        payload = tx.SerializeToString()
        env = transaction_pb2.Envelope(payload=payload, signature=self.signer.sign(Purpose.ENVELOPE, payload))
        return tx_id, env.SerializeToString()

    def broadcast(self, target: str, envelopes: list[bytes],
                  timeout: float = 30.0) -> list[services_pb2.BroadcastResponse]:
        with self.channel(target) as ch:
            call = ch.stream_stream(
                "/rxchain.v1.AtomicBroadcast/Broadcast", request_serializer=None,
                response_deserializer=services_pb2.BroadcastResponse.FromString)
            return list(call(iter(envelopes), timeout=timeout))

    def blocks(self, target: str, start: int = 0, stop: int = 0) -> list[block_pb2.Block]:
        with self.channel(target) as ch:
            stub = services_pb2_grpc.AtomicBroadcastStub(ch)
            out = []
            for r in stub.Deliver(services_pb2.DeliverRequest(start_block=start, stop_block=stop),
                                  timeout=30):
                if r.HasField("block"):
                    out.append(r.block)
            return out

    def broadcast_batches(self, target: str, batches: list[list[bytes]],
                          timeout: float = 30.0) -> list[services_pb2.BroadcastResponse]:
        """BroadcastBatch: each list of envelopes one EnvelopeBatch message, all sent at once."""
        with self.channel(target) as ch:
            call = ch.stream_stream(
                "/rxchain.v1.AtomicBroadcast/BroadcastBatch", request_serializer=None,
                response_deserializer=services_pb2.BroadcastBatchResponse.FromString)
            return [r for msg in call(iter([encode_batch(b) for b in batches]), timeout=timeout)
                    for r in msg.responses]

    def status(self, target: str, timeout: float = 2.0) -> services_pb2.StatusResponse:
        with self.channel(target) as ch:
            return services_pb2_grpc.AdminStub(ch).Status(services_pb2.StatusRequest(),
                                                          timeout=timeout)


def wait_until(pred, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except grpc.RpcError as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} ({last_exc})")


def all_serving(procs: OrdererProcs, client: Client, names: list[str],
                timeout: float = 30) -> None:
    """Wait until every named orderer answers Status and they agree on a leader."""
    def ready() -> bool:
        for name in names:
            client.status(procs.target(name), timeout=1.0)
        return leader_of(procs, client, names) is not None
    wait_until(ready, timeout, what=f"{names} serving with one leader")


def leader_of(procs: OrdererProcs, client: Client, names: list[str] | None = None) -> str | None:
    """The leader every orderer asked that answered agrees on, once it answers itself as leader:
    a follower keeps naming a stopped leader until its election timeout, so agreement alone
    could name an orderer that is gone."""
    ids = {n.raft_id: n.name for n in procs.net.orderers()}
    seen = set()
    answered: dict[str, int] = {}
    for name in names or list(procs.procs):
        try:
            st = client.status(procs.target(name), timeout=1.0)
        except grpc.RpcError:
            continue
        answered[name] = st.raft_leader
        if st.raft_leader:
            seen.add(st.raft_leader)
    if len(seen) != 1:
        return None
    leader_id = seen.pop()
    leader = ids.get(leader_id)
    if leader is None:
        return None
    if leader not in answered:
        try:
            answered[leader] = client.status(procs.target(leader), timeout=1.0).raft_leader
        except grpc.RpcError:
            return None  # named by the others, but gone
    return leader if answered[leader] == leader_id else None


class Pump:
    """Background broadcaster: keeps sending envelopes to a rotation of orderers."""

    def __init__(self, procs: OrdererProcs, client: Client, batch: int = 20) -> None:
        self.procs, self.client, self.batch = procs, client, batch
        self.accepted: list[str] = []
        self.refused: list[tuple[str, str]] = []
        self.messages: list[str] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            names = list(self.procs.procs)
            if not names:
                time.sleep(0.05)
                continue
            target = self.procs.target(names[i % len(names)])
            i += 1
            envs = [self.client.envelope() for _ in range(self.batch)]
            try:
                resps = self.client.broadcast(target, [e for _, e in envs], timeout=15)
            except grpc.RpcError:
                self.errors += 1
                time.sleep(0.05)
                continue
            for (tx_id, _), r in zip(envs, resps, strict=False):
                assert r.tx_id == tx_id
                if r.accepted:
                    self.accepted.append(tx_id)
                else:
                    self.refused.append((tx_id, r.reason))
                    self.messages.append(r.message)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def tx_ids_of(block: block_pb2.Block) -> list[str]:
    out = []
    for raw in block.data.envelopes:
        env = transaction_pb2.Envelope.FromString(raw)
        tx = transaction_pb2.Transaction.FromString(env.payload)
        out.append(transaction_pb2.TxHeader.FromString(tx.header).tx_id)
    return out


def not_signed_in_force(blocks: list[block_pb2.Block]) -> list[int]:
    """The numbers of the blocks (a whole chain from block 0, as one orderer serves it) that
    carry no valid signature by an orderer of the config in force before them: the peers'
    rule (node.peer.validator), which refuses such a block from that orderer."""
    verifier = Verifier()
    cfg = config_of_block(blocks[0])
    assert cfg is not None, "block 0 is not a genesis block"
    bad = []
    for b in blocks[1:]:
        h = block_header_hash(b.header)
        certs = {o.cert_der for o in cfg.orderers}
        if not any(s.signer.cert_der in certs and verifier.verify(s.signer.cert_der, s.signature, Purpose.BLOCK, h)
                   for s in b.metadata.orderer_signatures):
            bad.append(b.header.number)
        cfg = config_of_block(b) or cfg
    return bad


def iter_blocks(client: Client, target: str) -> Iterator[block_pb2.Block]:
    yield from client.blocks(target)


def without_orderer(config: config_pb2.ConsortiumConfig, raft_id: int) -> config_pb2.ConsortiumConfig:
    """``config`` with orderer ``raft_id`` taken out of the orderer set, as the next sequence."""
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(config)
    new.sequence = config.sequence + 1
    del new.orderers[:]
    new.orderers.extend(o for o in config.orderers if o.raft_id != raft_id)
    return new


def config_envelope(net, new_config: config_pb2.ConsortiumConfig, admins: list[str]) -> bytes:
    """A CONFIG envelope carrying ``new_config``, signed by the given orgs' admins and
    submitted by the first of them."""
    config_bytes = new_config.SerializeToString()
    update = config_pb2.ConfigUpdate(config=config_bytes)
    signers = [load_signer(net.user_dir(org, "admin") / "cert.pem",
                           net.user_dir(org, "admin") / "key.pem", org) for org in admins]
    for s in signers:
        update.signatures.add(signer=s.identity_bytes, signature=s.sign(Purpose.CONFIG, config_bytes))
    creator = signers[0]
    nonce = secrets.token_bytes(24)
    header = transaction_pb2.TxHeader(
        tx_id=compute_tx_id(nonce, creator.identity), type=transaction_pb2.CONFIG,
        creator=creator.identity, nonce=nonce, timestamp_ms=int(time.time() * 1000),
        consortium_id=new_config.consortium_id)
    tx = transaction_pb2.Transaction(header=header.SerializeToString(),
                                     config_update=update.SerializeToString())
    payload = tx.SerializeToString()
    return transaction_pb2.Envelope(payload=payload,
                                    signature=creator.sign(Purpose.ENVELOPE, payload)).SerializeToString()
