"""Turn a consortium spec into crypto material, node configs and the genesis block.

Output layout under ``home`` (idempotent: existing keys, certificates and the genesis
block are kept, so running twice changes nothing)::

    consortium-secret                 HMAC key for patient pseudonyms (hex)
    genesis.block                     serialized Block 0 carrying the ConsortiumConfig
    network.yaml                      every node's endpoint (for the launcher and clients)
    ca-bundle.pem                     all organisations' CA certificates
    orgs/<org>/ca.pem, ca.key         the organisation's CA
    orgs/<org>/users/<user>/          cert.pem, key.pem: a wallet; org-records-key.pem for the
                                      roles that read the org's records (RECORDS_READER_ROLES);
                                      patient-binding for a patient (her certificate CN is a
                                      pseudonym, see patient_cert_name)
    orgs/<org>/records/               cert.pem, key.pem: the org's record-decryption key
    nodes/<node>/                     node.yaml, cert.pem, key.pem, ca-bundle.pem, data/
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509 as cx509
from cryptography.hazmat.primitives.asymmetric import ec
from rxchain.v1 import config_pb2

from netgen.spec import KINDS, ConsortiumSpec, OrgSpec, UserSpec, load_spec, parse_spec
from node.crypto import signing
from node.crypto import x509 as rx509
from node.crypto.hashing import hmac_sha256_hex, patient_binding_hex
from node.errors import RxError
from node.genesis import make_genesis
from node.orderer.configrules import check_genesis_content

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class NodeSpec:
    """A node to generate."""

    name: str
    org: str
    kind: str  # peer | orderer
    port: int
    metrics_port: int
    raft_id: int = 0


@dataclass
class GeneratedNetwork:
    """What :func:`generate` produced."""

    home: Path
    spec: ConsortiumSpec
    config: config_pb2.ConsortiumConfig
    nodes: list[NodeSpec] = field(default_factory=list)

    def node_config_path(self, name: str) -> Path:
        """Path of a node's YAML."""
        return self.home / "nodes" / name / "node.yaml"

    def user_dir(self, org: str, user: str) -> Path:
        """Wallet directory of ``org:user`` (cert.pem, key.pem)."""
        return self.home / "orgs" / org / "users" / user

    @property
    def genesis_path(self) -> Path:
        """The genesis block file."""
        return self.home / "genesis.block"

    @property
    def ca_bundle_path(self) -> Path:
        """All CA certificates."""
        return self.home / "ca-bundle.pem"

    def peers(self) -> list[NodeSpec]:
        """Peer nodes."""
        return [n for n in self.nodes if n.kind == "peer"]

    def orderers(self) -> list[NodeSpec]:
        """Orderer nodes."""
        return [n for n in self.nodes if n.kind == "orderer"]


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)  # a stale temp file (another mode, a symlink) is never reused
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_if_changed_private(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    _write_private(path, data)


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        return signing.load_private_key(path.read_bytes())
    key = signing.generate_key()
    _write_private(path, signing.key_to_pem(key))
    return key


def _ca(org_dir: Path, org: str, now: dt.datetime) -> tuple[cx509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key(org_dir / "ca.key")
    cert_path = org_dir / "ca.pem"
    if cert_path.exists():
        return cx509.load_pem_x509_certificate(cert_path.read_bytes()), key
    cert = rx509.make_ca(org, key, now)
    _write_if_changed(cert_path, rx509.cert_to_pem(cert))
    return cert, key


RECORDS_KEY_FILE = "org-records-key.pem"
PATIENT_BINDING_FILE = "patient-binding"
# Staff roles that open their organisation's grants (contracts/prescription.py READ_ROLES):
# only their wallets get the organisation's records key. Anyone else holding it could decrypt
# every record wrapped for the organisation straight from the blocks' arguments, with no
# role check and no audit event.
RECORDS_READER_ROLES = frozenset({"doctor", "pharmacist", "clerk"})


def patient_cert_name(secret: bytes, org: str, user: str) -> str:
    """The pseudonymous common name of a patient's certificate.

    A patient's certificate becomes the creator of her transactions, so it must not carry her
    wallet handle (often her name): its CN is ``pt-`` + 24 hex of HMAC-SHA256(consortium
    secret, "patient-cn|org|user").
    """
    return "pt-" + hmac_sha256_hex(secret, f"patient-cn|{org}|{user}".encode())[:24]


def _member(
    directory: Path,
    ca: tuple[cx509.Certificate, ec.EllipticCurvePrivateKey],
    org: str,
    user: UserSpec,
    now: dt.datetime,
    hosts: tuple[str, ...] = (),
    cert_name: str | None = None,
) -> cx509.Certificate:
    key = _key(directory / "key.pem")
    cert_path = directory / "cert.pem"
    if cert_path.exists():
        return cx509.load_pem_x509_certificate(cert_path.read_bytes())
    cert = rx509.issue_cert(
        ca[0], ca[1], key.public_key(), org=org, role=user.role, name=cert_name or user.name,
        attrs=user.attrs, now=now, hosts=hosts,
    )
    _write_if_changed(cert_path, rx509.cert_to_pem(cert))
    return cert


def plan_nodes(spec: ConsortiumSpec) -> list[NodeSpec]:
    """Nodes and ports: orderers first, then peers, ports consecutive from base_port."""
    nodes: list[NodeSpec] = []
    raft_id = 0
    for org in spec.orgs:
        if org.orderer:
            raft_id += 1
            nodes.append(NodeSpec(f"orderer.{org.id}", org.id, "orderer", 0, 0, raft_id))
    for org in spec.orgs:
        if org.peer:
            nodes.append(NodeSpec(f"peer.{org.id}", org.id, "peer", 0, 0))
    return [
        NodeSpec(n.name, n.org, n.kind, spec.base_port + i, spec.base_port + 200 + i, n.raft_id)
        for i, n in enumerate(nodes)
    ]


def _users(org: OrgSpec) -> list[UserSpec]:
    return [UserSpec("admin", "admin"), *org.users]


def check_content(spec: ConsortiumSpec) -> None:
    """RxError BAD_CONFIG unless the consortium's genesis configuration meets the rules a
    config update must meet (node.orderer.configrules: named policies -- which roles each may
    name, satisfiable by the members, never by one organisation alone --, limits, nodes of
    organisation kinds allowed their role): a genesis the first update could not reproduce
    would lock the consortium into it."""
    config = config_pb2.ConsortiumConfig(consortium_id=spec.consortium_id,
                                         protocol_version=spec.protocol_version)
    for org in spec.orgs:
        config.organizations.add(id=org.id, name=org.name, kind=KINDS[org.kind])
    for n in plan_nodes(spec):
        if n.kind == "orderer":
            config.orderers.add(raft_id=n.raft_id, org=n.org, name=n.name)
        else:
            config.peers.add(org=n.org, name=n.name)
    config.batch.CopyFrom(config_pb2.BatchParameters(**spec.batch))
    config.limits.CopyFrom(config_pb2.Limits(**spec.limits))
    for name in sorted(spec.policies):
        config.policies.add(name=name, rule=spec.policies[name])
    try:
        check_genesis_content(config)
    except RxError as err:
        raise RxError("BAD_CONFIG", f"consortium file: {err.message}") from None


def generate(raw_or_spec: dict[str, Any] | ConsortiumSpec, home: str | Path,
             clock: Clock = _utcnow) -> GeneratedNetwork:
    """Generate (or complete) the network material for a consortium under ``home``."""
    spec = raw_or_spec if isinstance(raw_or_spec, ConsortiumSpec) else parse_spec(raw_or_spec)
    check_content(spec)  # before anything is written
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    now = clock()
    secret = home / "consortium-secret"
    if not secret.exists():
        _write_private(secret, secrets.token_hex(32).encode())
    secret_bytes = bytes.fromhex(secret.read_text().strip())

    cas: dict[str, tuple[cx509.Certificate, ec.EllipticCurvePrivateKey]] = {}
    for org in spec.orgs:
        cas[org.id] = _ca(home / "orgs" / org.id, org.id, now)
        for user in _users(org):
            cn = patient_cert_name(secret_bytes, org.id, user.name) if user.role == "patient" else None
            _member(home / "orgs" / org.id / "users" / user.name, cas[org.id], org.id, user, now,
                    cert_name=cn)
    records: dict[str, bytes] = {}
    for org in spec.orgs:
        rdir = home / "orgs" / org.id / "records"
        rcert = _member(rdir, cas[org.id], org.id, UserSpec(f"records.{org.id}", "client"), now)
        records[org.id] = rx509.cert_to_der(rcert)
        for user in _users(org):
            wallet = home / "orgs" / org.id / "users" / user.name
            records_key = wallet / RECORDS_KEY_FILE
            if user.role in RECORDS_READER_ROLES:
                # in production: the org's KMS, released to these roles only
                _write_if_changed_private(records_key, (rdir / "key.pem").read_bytes())
            else:
                # a courier, nurse, admin or patient never holds it (a copy left by an earlier
                # run, e.g. under another role, is removed)
                records_key.unlink(missing_ok=True)
            if user.role == "patient":
                # a patient reads only what is wrapped for her own key; her device proves her
                # certificate with its binding, never holding the consortium secret
                cn = patient_cert_name(secret_bytes, org.id, user.name)
                _write_if_changed_private(wallet / PATIENT_BINDING_FILE,
                                          patient_binding_hex(secret_bytes, org.id, cn).encode())
    bundle = b"".join(rx509.cert_to_pem(cas[o.id][0]) for o in spec.orgs)
    _write_if_changed(home / "ca-bundle.pem", bundle)

    nodes = plan_nodes(spec)
    node_certs: dict[str, bytes] = {}
    for n in nodes:
        ndir = home / "nodes" / n.name
        cert = _member(ndir, cas[n.org], n.org, UserSpec(n.name, n.kind), now,
                       hosts=(spec.host, "localhost", n.name))
        node_certs[n.name] = rx509.cert_to_der(cert)
        _write_if_changed(ndir / "ca-bundle.pem", bundle)

    config = config_pb2.ConsortiumConfig(consortium_id=spec.consortium_id, sequence=0,
                                         protocol_version=spec.protocol_version)
    for org in spec.orgs:
        config.organizations.add(
            id=org.id, name=org.name, kind=KINDS[org.kind],
            ca_cert_der=rx509.cert_to_der(cas[org.id][0]), hospital_level=org.level,
            records_cert_der=records[org.id],
        )
    for n in nodes:
        if n.kind == "orderer":
            config.orderers.add(raft_id=n.raft_id, org=n.org, name=n.name, host=spec.host,
                                port=n.port, cert_der=node_certs[n.name])
        else:
            config.peers.add(org=n.org, name=n.name, host=spec.host, port=n.port,
                             cert_der=node_certs[n.name])
    config.batch.CopyFrom(config_pb2.BatchParameters(**spec.batch))
    config.limits.CopyFrom(config_pb2.Limits(**spec.limits))
    for name in sorted(spec.policies):
        config.policies.add(name=name, rule=spec.policies[name])

    genesis = home / "genesis.block"
    if not genesis.exists():
        block = make_genesis(config, int(now.timestamp() * 1000))
        _write_if_changed(genesis, block.SerializeToString())

    endpoints = {
        "orderers": [{"name": n.name, "org": n.org, "host": spec.host, "port": n.port}
                     for n in nodes if n.kind == "orderer"],
        "peers": [{"name": n.name, "org": n.org, "host": spec.host, "port": n.port}
                  for n in nodes if n.kind == "peer"],
    }
    for n in nodes:
        doc = {
            "name": n.name, "org": n.org, "kind": n.kind, "host": spec.host, "port": n.port,
            "metrics_port": n.metrics_port, "data_dir": "data", "cert": "cert.pem",
            "key": "key.pem", "ca_bundle": "ca-bundle.pem", "genesis": "../../genesis.block",
            "orderers": endpoints["orderers"],
            "peers": [p for p in endpoints["peers"] if p["name"] != n.name],
            "log_level": "INFO", "fsync": True,
        }
        if n.kind == "orderer":
            doc["raft_id"] = n.raft_id
        _write_if_changed(home / "nodes" / n.name / "node.yaml",
                          yaml.safe_dump(doc, sort_keys=True).encode())
    net = {"consortium_id": spec.consortium_id, "consortium_secret": "consortium-secret",
           "genesis": "genesis.block", **endpoints}
    _write_if_changed(home / "network.yaml", yaml.safe_dump(net, sort_keys=True).encode())
    return GeneratedNetwork(home, spec, config, nodes)


def generate_from_file(consortium_file: str | Path, home: str | Path,
                       clock: Clock = _utcnow) -> GeneratedNetwork:
    """:func:`generate` from a consortium YAML file."""
    return generate(load_spec(consortium_file), home, clock)
