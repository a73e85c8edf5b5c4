"""Turn a consortium spec into crypto material, node configs and the genesis block.

Output layout under ``home`` (idempotent: existing keys, certificates and the genesis
block are kept, so running twice changes nothing; a ``home`` whose genesis block describes
another consortium, or whose private files others may read, is refused before anything is
written; directories are created 0700, private files 0600, the others 0644; a run that fails
removes the ``home`` it was creating)::

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
import errno
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509 as cx509
from cryptography.hazmat.primitives.asymmetric import ec
from rxchain.v1 import config_pb2

from netgen.spec import KINDS, ConsortiumSpec, OrgSpec, UserSpec, load_spec, naming_file, parse_spec
from node.config import DEFAULT_GRPC_WORKERS
from node.crypto import signing
from node.crypto import x509 as rx509
from node.crypto.hashing import hmac_sha256_hex, patient_binding_hex
from node.errors import RxError
from node.fsutil import fsync_dir
from node.genesis import config_from_genesis, make_genesis, read_genesis
from node.identity.msp import MSP
from node.orderer.configrules import check_genesis_certificates, check_genesis_content, check_organizations
from node.protocol import unsupported
from node.stream_caps import reserve_need

Clock = Callable[[], dt.datetime]

# Node i listens on base_port + i and serves metrics on base_port + METRICS_PORT_OFFSET + i
# (netgen.ports.free_base_port probes the same two runs).
METRICS_PORT_OFFSET = 200
MEMBER_DAYS = 825  # a member or node certificate's validity (issue_cert's default)


def orderer_extra(peers: int, orderers: int) -> dict[str, int]:
    """An orderer's node.yaml ``extra`` for a consortium of ``peers`` peers and ``orderers``
    orderers: none while the default split of its 128 gRPC workers (64 for clients' streams, a
    reserve of 32 for the nodes', 16 for the other orderers' Cluster streams, 16 for unary
    calls) holds what the nodes hold at worst (node.stream_caps.reserve_need: each peer's
    Deliver and Broadcast stream, each other orderer's Deliver); else a reserve of that many and
    the workers grown by as much, the rest of the split unchanged. The sample's 16 peers and 3
    orderers need 34: its default reserve of 32 left two of them refused TOO_MANY_STREAMS under a
    flood of client streams."""
    workers = DEFAULT_GRPC_WORKERS["orderer"]
    clients, default_reserve, cluster = workers // 2, workers // 4, workers // 8
    need = reserve_need(peers, orderers)
    if need <= default_reserve:
        return {}
    return {"grpc_workers": workers + need - default_reserve, "max_streams": clients,
            "max_node_streams": need, "max_cluster_streams": cluster}


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


def _sync_dir(path: Path) -> None:
    """fsync directory ``path`` (its entries survive a power loss), where it can be: one this
    process may not open, or a file system without directory fsync, is left as it is."""
    try:
        fsync_dir(path)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EINVAL):
            raise


def _mkdirs(path: Path) -> Path | None:
    """Create ``path`` and its missing parents, each 0700 (pathlib's ``parents=True`` gives the
    parents the umask's mode: 0777 under umask 0), each one's entry synced in its parent; the
    topmost directory created, if any."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700)
        _sync_dir(d.parent)
    return missing[-1] if missing else None


def _write_file(path: Path, data: bytes, mode: int, durable: bool = False) -> None:
    """Write ``path`` atomically; ``durable``: its content and name fsynced before it counts as
    written (a private key: a key lost in a crash after its certificate was issued, or left
    empty by one, cannot be issued again)."""
    _mkdirs(path.parent)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)  # a stale temp file (another mode, a symlink) is never reused
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        _sync_dir(path.parent)


def _write_private(path: Path, data: bytes) -> None:
    _write_file(path, data, 0o600, durable=True)


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    _write_file(path, data, 0o644)


def _write_if_changed_private(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    _write_private(path, data)


def _unreadable(path: Path, what: str, exc: Exception) -> RxError:
    return RxError("BAD_CONFIG", f"{path}: existing {what} does not parse ({exc}): restore it, or remove it "
                                 f"to have a new one issued")


def _existing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        return signing.load_private_key(path.read_bytes())
    except (ValueError, TypeError) as exc:
        raise _unreadable(path, "private key", exc) from None


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        return _existing_key(path)
    key = signing.generate_key()
    _write_private(path, signing.key_to_pem(key))
    return key


def _load_cert(path: Path) -> cx509.Certificate:
    try:
        return cx509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise _unreadable(path, "certificate", exc) from None


def _ca(org_dir: Path, org: str, now: dt.datetime) -> tuple[cx509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key(org_dir / "ca.key")
    cert_path = org_dir / "ca.pem"
    if cert_path.exists():
        return _load_cert(cert_path), key
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
        return _load_cert(cert_path)
    # never past its CA's end (a CA a home kept may end first): from protocol version 2 a
    # certificate counts only while its CA is valid, and a longer one would only look valid.
    # (A CA already expired is refused at version 2 by the genesis checks; version 1 ignores
    # its validity, so its members keep their full term.)
    end = now + dt.timedelta(days=MEMBER_DAYS)
    if now < ca[0].not_valid_after_utc < end:
        end = ca[0].not_valid_after_utc
    cert = rx509.issue_cert(
        ca[0], ca[1], key.public_key(), org=org, role=user.role, name=cert_name or user.name,
        attrs=user.attrs, now=now, hosts=hosts, not_after=end,
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
        NodeSpec(n.name, n.org, n.kind, spec.base_port + i, spec.base_port + METRICS_PORT_OFFSET + i, n.raft_id)
        for i, n in enumerate(nodes)
    ]


def _users(org: OrgSpec) -> list[UserSpec]:
    return [UserSpec("admin", "admin"), *org.users]


def _skeleton(spec: ConsortiumSpec, nodes: list[NodeSpec]) -> config_pb2.ConsortiumConfig:
    """The genesis configuration without its certificates (filled in by :func:`generate`)."""
    config = config_pb2.ConsortiumConfig(consortium_id=spec.consortium_id, sequence=0,
                                         protocol_version=spec.protocol_version)
    for org in spec.orgs:
        config.organizations.add(id=org.id, name=org.name, kind=KINDS[org.kind], hospital_level=org.level)
    for n in nodes:
        if n.kind == "orderer":
            config.orderers.add(raft_id=n.raft_id, org=n.org, name=n.name, host=spec.host, port=n.port)
        else:
            config.peers.add(org=n.org, name=n.name, host=spec.host, port=n.port)
    config.batch.CopyFrom(config_pb2.BatchParameters(**spec.batch))
    config.limits.CopyFrom(config_pb2.Limits(**spec.limits))
    for name in sorted(spec.policies):
        config.policies.add(name=name, rule=spec.policies[name])
    return config


def check_content(spec: ConsortiumSpec) -> None:
    """RxError BAD_CONFIG unless the consortium's genesis configuration meets the rules a
    config update must meet (node.orderer.configrules: named policies -- which roles each may
    name, satisfiable by the members, never by one organisation alone --, limits, nodes of
    organisation kinds allowed their role): a genesis the first update could not reproduce
    would lock the consortium into it. More than METRICS_PORT_OFFSET nodes would give a node
    the gRPC port of another's metrics. A protocol version this release does not implement
    (node.protocol) would be a genesis no node of it starts on."""
    why = unsupported(config_pb2.ConsortiumConfig(protocol_version=spec.protocol_version))
    if why is not None:
        # every node of this release would refuse to start on the genesis (PROTOCOL_UNSUPPORTED),
        # and the rules checked here are this release's, not those of the version asked for
        raise RxError("BAD_CONFIG", f"consortium file: protocol_version {spec.protocol_version}: {why}")
    nodes = plan_nodes(spec)
    if len(nodes) > METRICS_PORT_OFFSET:
        raise RxError("BAD_CONFIG", f"consortium file: {len(nodes)} nodes: at most {METRICS_PORT_OFFSET} "
                                    f"(node i listens on base_port + i, its metrics on base_port + "
                                    f"{METRICS_PORT_OFFSET} + i)")
    try:
        check_genesis_content(_skeleton(spec, nodes))
    except RxError as err:
        raise RxError("BAD_CONFIG", f"consortium file: {err.message}") from None


def check_certificates(config: config_pb2.ConsortiumConfig, at_ms: int) -> None:
    """RxError BAD_CONFIG unless the certificates of the genesis configuration ``config`` (its
    time ``at_ms``) are usable: CA certificates that are CAs and, from protocol version 2, every
    CA within its validity period and allowed to sign certificates and every orderer's
    certificate within its validity period (node.orderer.configrules.check_genesis_certificates:
    version 2 counts no member of such a CA, no block signature of such an orderer, so the
    network could not commit a block from its start). The certificates are netgen's own, or ones
    a home already held (kept: a CA restored or placed by hand, a node certificate of an earlier
    run)."""
    try:
        check_organizations(config)
        check_genesis_certificates(config, MSP(config, signing.Verifier()), at_ms)
    except RxError as err:
        raise RxError("BAD_CONFIG", f"genesis: {err.message} (netgen keeps the certificates a home already "
                                    "holds, orgs/<org>/ca.pem and nodes/<node>/cert.pem: replace the file, or "
                                    "remove it and its key to have a new one issued)") from None


def _key_pairs(home: Path, spec: ConsortiumSpec, nodes: list[NodeSpec]) -> list[tuple[Path, Path]]:
    """(private key, certificate) files of every identity :func:`generate` issues."""
    pairs: list[tuple[Path, Path]] = []
    for org in spec.orgs:
        odir = home / "orgs" / org.id
        pairs += [(odir / "ca.key", odir / "ca.pem"), (odir / "records" / "key.pem", odir / "records" / "cert.pem")]
        pairs += [(odir / "users" / u.name / "key.pem", odir / "users" / u.name / "cert.pem") for u in _users(org)]
    return pairs + [(home / "nodes" / n.name / "key.pem", home / "nodes" / n.name / "cert.pem") for n in nodes]


def _private_paths(home: Path, spec: ConsortiumSpec, nodes: list[NodeSpec]) -> list[Path]:
    """The private files :func:`generate` keeps when they exist (a records key in a wallet
    whose role may not hold it is removed instead)."""
    paths = [home / "consortium-secret", *(key for key, _ in _key_pairs(home, spec, nodes))]
    for org in spec.orgs:
        for user in _users(org):
            wallet = home / "orgs" / org.id / "users" / user.name
            if user.role in RECORDS_READER_ROLES:
                paths.append(wallet / RECORDS_KEY_FILE)
            if user.role == "patient":
                paths.append(wallet / PATIENT_BINDING_FILE)
    return paths


def _pinned_certs(home: Path) -> dict[Path, bytes]:
    """Certificate file -> DER of the certificates the genesis block of ``home`` (if any)
    carries: CA, records and node certificates."""
    genesis = home / "genesis.block"
    if not genesis.exists():
        return {}
    config = config_from_genesis(read_genesis(genesis))
    pinned: dict[Path, bytes] = {}
    for org in config.organizations:
        pinned[home / "orgs" / org.id / "ca.pem"] = org.ca_cert_der
        pinned[home / "orgs" / org.id / "records" / "cert.pem"] = org.records_cert_der
    for orderer in config.orderers:
        pinned[home / "nodes" / orderer.name / "cert.pem"] = orderer.cert_der
    for peer in config.peers:
        pinned[home / "nodes" / peer.name / "cert.pem"] = peer.cert_der
    return pinned


def home_ports(spec: ConsortiumSpec, home: Path) -> ConsortiumSpec:
    """``spec`` placed on the ports of the network ``home`` already holds, when that is all
    that differs: a home generated with ``--base-port`` (or from a file whose ``base_port``
    changed since) keeps the ports its genesis names -- they are the network's, and only a
    config update moves a node --, so re-running netgen with the unchanged file completes it
    instead of refusing it as another network. ``spec`` unchanged otherwise (no home yet, the
    same ports, or other differences, which :func:`check_home` refuses)."""
    genesis = home / "genesis.block"
    if not genesis.is_file():
        return spec
    try:
        existing = config_from_genesis(read_genesis(genesis))
    except (OSError, RxError, ValueError):
        return spec  # check_home names what is wrong with it
    if not existing.orderers or existing.orderers[0].port == spec.base_port:
        return spec
    moved = replace(spec, base_port=existing.orderers[0].port)
    wanted = _skeleton(moved, plan_nodes(moved))
    def places(config: config_pb2.ConsortiumConfig) -> list[tuple[str, str, int]]:
        return ([(n.name, n.host, n.port) for n in config.orderers]
                + [(n.name, n.host, n.port) for n in config.peers])

    if places(existing) != places(wanted):
        return spec
    return moved


def check_home(spec: ConsortiumSpec, home: Path) -> None:
    """RxError BAD_CONFIG unless :func:`generate` may write ``spec``'s network under ``home``:
    a directory (or nothing yet); if it already holds a genesis block, that block's
    configuration is ``spec``'s (certificates aside): keys, certificates and the genesis are
    kept, so completing another consortium's home would leave node files that contradict its
    genesis; the private files already there are readable by their owner only; no private
    key is missing whose certificate exists or is in the genesis (a new key would not match
    it: a CA key re-created under its old certificate, or an orderer whose blocks the genesis
    no longer recognises), nor the consortium secret of a home holding a network
    (:func:`_check_secret`), nor one that is not the key of its certificate (a key restored from
    another backup: a CA key that is not its ca.pem's would issue certificates chaining to no CA,
    silently). A certificate the genesis carries is restored from it if missing."""
    if home.exists() and not home.is_dir():
        raise RxError("BAD_CONFIG", f"{home} exists and is not a directory")
    nodes = plan_nodes(spec)
    genesis = home / "genesis.block"
    if genesis.exists():
        existing = config_from_genesis(read_genesis(genesis))
        for org in existing.organizations:
            org.ClearField("ca_cert_der")
            org.ClearField("records_cert_der")
        for node in [*existing.orderers, *existing.peers]:
            node.ClearField("cert_der")
        wanted = _skeleton(spec, nodes)
        differ = [f.name for f in wanted.DESCRIPTOR.fields if getattr(existing, f.name) != getattr(wanted, f.name)]
        if differ:
            raise RxError("BAD_CONFIG", f"{home} already holds the network {existing.consortium_id!r} whose "
                                        f"genesis differs from the consortium file in {', '.join(differ)}: "
                                        f"generate into a new home (its keys are never overwritten)")
    pinned = _pinned_certs(home)
    for key, cert in _key_pairs(home, spec, nodes):
        if not key.exists() and (cert.exists() or cert in pinned):
            where = "the genesis block" if cert in pinned else str(cert)
            raise RxError("BAD_CONFIG", f"{key} is missing but its certificate is in {where}: a new key "
                                        f"would not match it; restore the key from a backup (or generate "
                                        f"a new network into a new home)")
    for path in _private_paths(home, spec, nodes):
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & 0o077:
            raise RxError("BAD_CONFIG", f"{path}: private file accessible to others (mode {mode & 0o777:o}): "
                                        f"chmod 600 it (and treat the key as exposed)")
    for key, cert in _key_pairs(home, spec, nodes):
        if not key.exists() or not (cert.exists() or cert in pinned):
            continue
        where = str(cert) if cert.exists() else f"the genesis block ({cert} is restored from it)"
        issued = _load_cert(cert) if cert.exists() else cx509.load_der_x509_certificate(pinned[cert])
        try:
            public = issued.public_key()
        except ValueError as exc:
            raise _unreadable(cert, "certificate", exc) from None
        if not signing.key_matches(_existing_key(key), public):
            raise RxError("BAD_CONFIG", f"{key} is not the key of its certificate in {where}: restore the "
                                        f"key that belongs to it from a backup (or generate a new network "
                                        f"into a new home)")
    _check_secret(spec, home)


def _check_secret(spec: ConsortiumSpec, home: Path) -> None:
    """RxError BAD_CONFIG if ``home`` holds a network (a genesis block, or patient
    certificates, whose names derive from the consortium secret) but its secret is missing or
    is not the one those certificates were issued under: a new secret would change every
    patient's pseudonym (her records and accounts on the ledger no longer found) and rewrite
    every patient's binding file against her existing certificate."""
    secret = home / "consortium-secret"
    patients = [(org.id, u.name, home / "orgs" / org.id / "users" / u.name / "cert.pem")
                for org in spec.orgs for u in _users(org) if u.role == "patient"]
    issued = [(org, user, cert) for org, user, cert in patients if cert.exists()]
    if not secret.exists():
        if (home / "genesis.block").exists() or issued:
            raise RxError("BAD_CONFIG", f"{secret} is missing but {home} already holds a network: patient "
                                        f"pseudonyms and certificate names derive from it, a new one would "
                                        f"orphan every patient on the ledger; restore it from where it is "
                                        f"kept (or generate a new network into a new home)")
        return
    try:
        secret_bytes = bytes.fromhex(secret.read_text().strip())
    except (OSError, ValueError) as exc:
        raise _unreadable(secret, "consortium secret", exc) from None
    for org, user, cert in issued:
        if rx509.cert_info(_load_cert(cert)).name != patient_cert_name(secret_bytes, org, user):
            raise RxError("BAD_CONFIG", f"{secret} is not the secret {cert} was issued under (its name is "
                                        f"not the pseudonym this secret gives {org}/{user}): restore the "
                                        f"network's own consortium-secret")


def generate(raw_or_spec: dict[str, Any] | ConsortiumSpec, home: str | Path,
             clock: Clock = _utcnow) -> GeneratedNetwork:
    """Generate (or complete) the network material for a consortium under ``home``.

    RxError BAD_CONFIG (nothing written) for a bad consortium or a ``home`` it may not use
    (:func:`check_home`); IO_ERROR if writing fails, having removed what it created when
    ``home`` was new or empty (a home being completed keeps the files already written: each
    is written atomically, and running again completes it)."""
    spec = raw_or_spec if isinstance(raw_or_spec, ConsortiumSpec) else parse_spec(raw_or_spec)
    check_content(spec)  # before anything is written
    home = Path(home)
    spec = home_ports(spec, home)
    check_home(spec, home)
    fresh = not home.exists() or not any(home.iterdir())
    created: Path | None = None
    try:
        created = _mkdirs(home)
        return _generate(spec, home, clock)
    except BaseException as exc:
        if fresh:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            elif home.is_dir():
                for child in home.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise RxError("IO_ERROR", f"cannot write the network under {home}: {exc}") from None
        raise


def _generate(spec: ConsortiumSpec, home: Path, clock: Clock) -> GeneratedNetwork:
    now = clock()
    for path, der in _pinned_certs(home).items():
        if not path.exists():  # the genesis names this very certificate: never issue another
            _write_if_changed(path, rx509.cert_to_pem(cx509.load_der_x509_certificate(der)))
    secret = home / "consortium-secret"
    if not secret.exists():
        _write_private(secret, secrets.token_hex(32).encode())
    try:
        secret_bytes = bytes.fromhex(secret.read_text().strip())
    except ValueError as exc:
        raise _unreadable(secret, "consortium secret", exc) from None

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

    config = _skeleton(spec, nodes)
    for org_config in config.organizations:
        org_config.ca_cert_der = rx509.cert_to_der(cas[org_config.id][0])
        org_config.records_cert_der = records[org_config.id]
    for orderer in config.orderers:
        orderer.cert_der = node_certs[orderer.name]
    for peer in config.peers:
        peer.cert_der = node_certs[peer.name]

    genesis = home / "genesis.block"
    if not genesis.exists():
        at_ms = int(now.timestamp() * 1000)
        check_certificates(config, at_ms)
        block = make_genesis(config, at_ms)
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
            extra = orderer_extra(len(endpoints["peers"]), len(endpoints["orderers"]))
            if extra:
                doc["extra"] = extra
        _write_if_changed(home / "nodes" / n.name / "node.yaml",
                          yaml.safe_dump(doc, sort_keys=True).encode())
    net = {"consortium_id": spec.consortium_id, "consortium_secret": "consortium-secret",
           "genesis": "genesis.block", **endpoints}
    _write_if_changed(home / "network.yaml", yaml.safe_dump(net, sort_keys=True).encode())
    return GeneratedNetwork(home, spec, config, nodes)


def generate_from_file(consortium_file: str | Path, home: str | Path,
                       clock: Clock = _utcnow) -> GeneratedNetwork:
    """:func:`generate` from a consortium YAML file (refusals of its content name it)."""
    spec = load_spec(consortium_file)
    try:
        check_content(spec)
    except RxError as exc:
        raise naming_file(exc, consortium_file) from None
    return generate(spec, home, clock)
