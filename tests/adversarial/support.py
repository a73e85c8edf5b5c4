"""Shared pieces of the adversarial suite: identities made for attacks (revoked, expired,
foreign CA), a network whose genesis revokes one certificate, raw gRPC callers, snapshots
for "nothing written", and the table of cases written to ``bench/results/adversarial.json``."""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509 as cx509
from rxchain.v1 import block_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from client.gateway import Gateway, RetryPolicy
from client.tx import TxBuilder
from client.wallet import load_identity_dir
from node.crypto import signing
from node.crypto import x509 as rx509
from node.crypto.tls import channel_options
from node.errors import reason_from_rpc_error
from node.genesis import config_from_genesis, make_genesis, read_genesis
from tests.harness.consortium import Consortium, consortium_dict, generate_consortium
from tests.harness.load import deploy_rxload
from tests.harness.procs import ProcessManager
from tests.harness.rpc import Creds, admin_status, channel

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "adversarial.json"


# ---------------------------------------------------------------------- the case table


@dataclass
class Case:
    """One adversarial attempt and what happened."""

    case: str
    target: str
    expected: str
    outcome: str = ""
    reason: str = ""
    nothing_written: bool | None = None
    still_serving: bool | None = None

    @property
    def passed(self) -> bool:
        """Refused with a reason, nothing written, node still serving."""
        return bool(self.reason) and self.nothing_written is not False and self.still_serving is not False


@dataclass
class CaseTable:
    """Every case of the session."""

    cases: list[Case] = field(default_factory=list)

    def add(self, case: Case) -> Case:
        """Record a case."""
        self.cases.append(case)
        return case

    def write(self, path: Path = RESULTS) -> str:
        """Write the JSON table and return a printable one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"cases": [{**asdict(c), "passed": c.passed} for c in self.cases],
               "total": len(self.cases), "passed": sum(c.passed for c in self.cases)}
        path.write_text(json.dumps(doc, indent=2))
        lines = [f"{'case':<58} {'target':<16} {'reason':<30} {'clean':<6} {'serving':<7} ok"]
        for c in self.cases:
            lines.append(f"{c.case[:58]:<58} {c.target[:16]:<16} {c.reason[:30]:<30} "
                         f"{c.nothing_written!s:<6} {c.still_serving!s:<7} {'yes' if c.passed else 'NO'}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- rogue identities


@dataclass(frozen=True)
class Rogues:
    """Certificates made for attacks (each a wallet-like directory with cert.pem/key.pem)."""

    revoked: Path   # h01 doctor whose serial the genesis config revokes
    expired: Path   # h01 doctor issued by h01's real CA, expired last year
    foreign: Path   # "h01" doctor issued by a CA outside the consortium
    revoked_peer: Path  # a second h02 peer certificate, revoked in the genesis config
    expired_peer: Path  # an h02 peer certificate issued by h02's real CA, expired


def _write_member(directory: Path, cert: cx509.Certificate, key: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(rx509.cert_to_pem(cert))
    (directory / "key.pem").write_bytes(signing.key_to_pem(key))
    return directory


def make_rogues(cons: Consortium) -> Rogues:
    """Create the rogue identities and rewrite the genesis block to revoke one (call before
    any node starts: every node reads the same genesis file)."""
    home = cons.home
    ca_dir = home / "orgs" / "h01"
    ca_cert = cx509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = signing.load_private_key((ca_dir / "ca.key").read_bytes())
    now = dt.datetime.now(dt.UTC)
    out = home / "rogues"

    k = signing.generate_key()
    revoked = rx509.issue_cert(ca_cert, ca_key, k.public_key(), org="h01", role="doctor", name="dr-revoked",
                               attrs={"practice_years": "10"}, now=now)
    revoked_dir = _write_member(out / "revoked", revoked, k)

    k = signing.generate_key()
    past = now - dt.timedelta(days=400)
    expired = rx509.issue_cert(ca_cert, ca_key, k.public_key(), org="h01", role="doctor", name="dr-expired",
                               attrs={"practice_years": "10"}, now=past, days=30)
    expired_dir = _write_member(out / "expired", expired, k)

    fk = signing.generate_key()
    fca = rx509.make_ca("h01", fk, now)
    k = signing.generate_key()
    foreign = rx509.issue_cert(fca, fk, k.public_key(), org="h01", role="doctor", name="dr-foreign",
                               attrs={"practice_years": "10"}, now=now, hosts=("127.0.0.1", "localhost"))
    foreign_dir = _write_member(out / "foreign", foreign, k)
    (foreign_dir / "foreign-ca.pem").write_bytes(rx509.cert_to_pem(fca))

    h02_dir = home / "orgs" / "h02"
    h02_ca = cx509.load_pem_x509_certificate((h02_dir / "ca.pem").read_bytes())
    h02_key = signing.load_private_key((h02_dir / "ca.key").read_bytes())
    k = signing.generate_key()
    rpeer = rx509.issue_cert(h02_ca, h02_key, k.public_key(), org="h02", role="peer", name="peer.h02",
                             now=now, hosts=("127.0.0.1", "localhost"))
    revoked_peer_dir = _write_member(out / "revoked-peer", rpeer, k)
    k = signing.generate_key()
    epeer = rx509.issue_cert(h02_ca, h02_key, k.public_key(), org="h02", role="peer", name="peer.h02",
                             now=past, days=30, hosts=("127.0.0.1", "localhost"))
    expired_peer_dir = _write_member(out / "expired-peer", epeer, k)

    genesis = read_genesis(cons.net.genesis_path)
    config = config_from_genesis(genesis)
    org = next(o for o in config.organizations if o.id == "h01")
    org.revoked_serials.append(rx509.cert_info(revoked).serial_hex)
    org2 = next(o for o in config.organizations if o.id == "h02")
    org2.revoked_serials.append(rx509.cert_info(rpeer).serial_hex)
    header = transaction_pb2.TxHeader.FromString(
        transaction_pb2.Transaction.FromString(
            transaction_pb2.Envelope.FromString(genesis.data.envelopes[0]).payload).header)
    cons.net.genesis_path.write_bytes(make_genesis(config, header.timestamp_ms).SerializeToString())
    return Rogues(revoked_dir, expired_dir, foreign_dir, revoked_peer_dir, expired_peer_dir)


# ---------------------------------------------------------------------- the network


@dataclass
class AdvNet:
    """The adversarial suite's network."""

    cons: Consortium
    procs: ProcessManager
    rogues: Rogues
    real_contracts: bool = False
    lifecycle_tx_ids: list[str] = field(default_factory=list)

    def peer(self, org: str) -> str:
        """The peer of ``org``."""
        return f"peer.{org}"

    def orderer(self) -> str:
        """The (first) orderer."""
        return self.cons.orderer_names()[0]

    def gateway(self, org: str, user: str, peer_org: str | None = None) -> Gateway:
        """A gateway client as ``org:user`` on the peer of ``peer_org`` (default: own org)."""
        ident = load_identity_dir(self.cons.net.user_dir(org, user), self.cons.net.ca_bundle_path, org, user)
        return Gateway(ident, self.cons.target(self.peer(peer_org or org)), self.cons.net.config.consortium_id,
                       retry=RetryPolicy(attempts=2), commit_timeout_ms=10_000)

    def builder_from(self, directory: Path, org: str) -> TxBuilder:
        """A transaction builder signing with the identity in ``directory``."""
        signer = signing.load_signer(directory / "cert.pem", directory / "key.pem", org)
        return TxBuilder(signer, self.cons.net.config.consortium_id)

    def user_creds(self, org: str, user: str) -> Creds:
        """TLS credentials of a consortium member."""
        return self.cons.user_creds(org, user)

    def snapshot(self) -> dict[str, tuple[int, bytes, bytes]]:
        """(height, last block hash, state hash) of every node."""
        out = {}
        for name in self.cons.orderer_names() + self.cons.peer_names():
            st = admin_status(self.cons.target(name), self.cons.node_creds(name))
            out[name] = (int(st.height), bytes(st.last_block_hash), bytes(st.state_hash))
        return out

    def wait_settled(self, timeout_s: float) -> None:
        """Wait until every node has the same height and last block (the set-up's last block
        is committed at the bootstrapper's peer first: a test taking its ``snapshot`` at once
        saw the others catch up as something it wrote, seen in a loaded run)."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = {(h, last) for h, last, _ in self.snapshot().values()}
            if len(seen) == 1:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the nodes did not agree on their height within {timeout_s} s: {seen}")
            time.sleep(0.1)

    def serving(self) -> bool:
        """Every node healthy, and a normal query answers on every peer."""
        if not all(self.cons.healthy(n) for n in self.cons.orderer_names() + self.cons.peer_names()):
            return False
        for p in self.cons.peer_names():
            org = self.cons.node(p).org
            with self.gateway(org, "admin") as gw:
                try:
                    gw.evaluate("rxload", "get", {"key": "rx/none"})
                except Exception:
                    return False
        return True

    def blocks(self, peer: str, start: int) -> list[block_pb2.Block]:
        """Committed blocks of ``peer`` from ``start`` (PeerDeliver, not following)."""
        with channel(self.cons.target(peer), self.cons.node_creds(peer)) as ch:
            stub = services_pb2_grpc.PeerDeliverStub(ch)
            out = []
            try:
                for resp in stub.Deliver(services_pb2.DeliverRequest(start_block=start, follow=False), timeout=10):
                    if resp.WhichOneof("kind") == "block":
                        out.append(resp.block)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # start beyond the height: nothing yet
                    raise
            return out


def foreign_channel(target: str, rogue_dir: Path, ca_bundle: Path) -> grpc.Channel:
    """A channel presenting a rogue certificate (server checked against the real bundle)."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_bundle.read_bytes(), private_key=(rogue_dir / "key.pem").read_bytes(),
        certificate_chain=(rogue_dir / "cert.pem").read_bytes())
    return grpc.secure_channel(target, creds, options=channel_options(16 << 20))


def no_client_cert_channel(target: str, ca_bundle: Path) -> grpc.Channel:
    """A TLS channel without any client certificate."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_bundle.read_bytes())
    return grpc.secure_channel(target, creds, options=channel_options(16 << 20))


def rpc_reason(exc: grpc.RpcError) -> str:
    """Reason code of a refused call: trailing metadata, else a ``REASON: ...`` details prefix,
    else the gRPC status name."""
    reason = reason_from_rpc_error(exc)
    if reason != "RPC_FAILED":
        return reason
    details = exc.details() if callable(getattr(exc, "details", None)) else ""
    head = (details or "").split(":", 1)[0].strip()
    if head.isupper() and " " not in head and head:
        return head
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    return f"grpc:{code.name}" if code is not None else "RPC_FAILED"


def start_adv_network(home: Path, procs: ProcessManager) -> AdvNet:
    """One orderer, four peers, rogue identities, ``rxload`` and the real contracts deployed."""
    raw = consortium_dict(0, orderers=1)
    cons = generate_consortium(home, raw)
    rogues = make_rogues(cons)
    net = AdvNet(cons, procs, rogues)
    names = cons.orderer_names() + cons.peer_names()
    for n in names:
        cons.start(procs, n)
    for n in names:
        procs.wait_healthy(n, functools.partial(cons.healthy, n), 60)
    net.lifecycle_tx_ids = deploy_rxload(cons)
    from client.bootstrap import Bootstrapper  # the project's own deployment of the real contracts

    boot = Bootstrapper(cons.home)
    try:
        boot.deploy()
    finally:
        boot.close()
    net.real_contracts = True
    net.wait_settled(60)
    return net


def iter_blocks_txs(blocks: list[block_pb2.Block]) -> Iterator[tuple[int, str, int]]:
    """(block, tx id, code) of every tx."""
    for b in blocks:
        for i, env in enumerate(b.data.envelopes):
            try:
                tx = transaction_pb2.Transaction.FromString(transaction_pb2.Envelope.FromString(env).payload)
                tx_id = transaction_pb2.TxHeader.FromString(tx.header).tx_id
            except Exception:
                tx_id = ""
            codes = b.metadata.validation_codes
            yield b.header.number, tx_id, (codes[i] if i < len(codes) else 0)
