"""Per-node configuration (one YAML file per node, written by the generator).

Every value is checked here, so that a bad file ends in ``BAD_CONFIG: <file>: <key> ...``
(exit code 2) rather than a traceback: the file is read strictly (:mod:`node.yamlfile`: no
duplicate keys, no aliases, UTF-8, bounded size); a top-level key outside :data:`KEYS` is
refused (a typo such as ``fsycn`` would silently keep the default); names, paths and the
host are strings, ``fsync`` a boolean, ``log_level`` a logging level name; ports are
integers in 1..65535 (``metrics_port`` 0 = no metrics endpoint, else not the gRPC port),
endpoint names unique per list; ``extra`` is a mapping (open: tuning keys of several
modules), and its integer tuning keys
(:data:`INT_EXTRAS`) are integers within their ranges -- every integer key a YAML integer, never a
boolean or a string (``"1_000"``, ``" 5 "``: BAD_CONFIG naming the key); the node's certificate must carry the
node's name as a subject alternative name (:func:`check_tls_name`), and its CA bundle must hold
PEM certificates (:func:`check_ca_bundle`). What the ``extra`` keys do is
documented where they are used: ``node.orderer.server`` (Raft and ordering tuning),
``node.peer.deliver_client`` (``deliver_*`` watchdog), ``node.stream_caps``
(``max_streams``, ``max_streams_per_caller``, ``max_node_streams``, ``max_streams_per_node``, and
an orderer's ``max_cluster_streams``, ``max_cluster_streams_per_orderer``); ``grpc_workers`` is the gRPC thread pool
(peer 64, orderer 128), ``sandbox_workers`` the peer's contract processes (default 4; each
serves one contract code, see ``node.sandbox.runtime``) and
``orderer_quorum`` the orderer signatures a peer requires on a block; ``audit_retention_days`` and
``audit_max_records`` bound the peer's access-audit log (``node.peer.audit``), and
``audit_refusals_per_minute``, ``audit_refusal_burst``, ``audit_unauthenticated_per_minute`` and
``audit_unauthenticated_burst`` how many refusals it records one by one.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from node.crypto.tls import certificate_names, certificate_names_host
from node.errors import RxError
from node.stream_caps import ClusterCaps, Recheck, StreamCaps
from node.yamlfile import YamlFileError, load_yaml_file


@dataclass(frozen=True)
class Endpoint:
    """A node another node talks to."""

    name: str
    org: str
    host: str
    port: int

    @property
    def target(self) -> str:
        """``host:port`` for gRPC."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node process needs to start."""

    name: str
    org: str
    kind: str  # "peer" | "orderer"
    host: str
    port: int
    metrics_port: int
    data_dir: Path
    cert_path: Path
    key_path: Path
    ca_bundle_path: Path
    genesis_path: Path
    raft_id: int = 0
    orderers: tuple[Endpoint, ...] = ()
    peers: tuple[Endpoint, ...] = ()
    log_level: str = "INFO"
    fsync: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def listen(self) -> str:
        """``host:port`` to bind."""
        return f"{self.host}:{self.port}"

    @property
    def grpc_workers(self) -> int:
        """Threads of the gRPC server (``extra.grpc_workers``, default by kind)."""
        return int(self.extra.get("grpc_workers", DEFAULT_GRPC_WORKERS.get(self.kind, 64)))

    def stream_caps(self, is_node: Callable[[bytes], bool] | None = None,
                    recheck: Recheck | None = None) -> StreamCaps:
        """The caps on long-lived calls (:mod:`node.stream_caps`; ``is_node`` tells node
        certificates, which have slots of their own; ``recheck`` checks an open call's caller
        again, ending the calls of those it refuses)."""
        cluster = self.cluster_caps().total if self.kind == "orderer" else 0  # (the worst-case split)
        return StreamCaps.from_extra(self.extra, self.grpc_workers, is_node, recheck, cluster)

    def cluster_caps(self) -> ClusterCaps:
        """An orderer's caps on the other orderers' Cluster streams (:mod:`node.stream_caps`)."""
        return ClusterCaps.from_extra(self.extra, self.grpc_workers)


# gRPC worker threads when ``extra.grpc_workers`` is absent, by node kind.
DEFAULT_GRPC_WORKERS = {"peer": 64, "orderer": 128}

# Integer ``extra`` keys and their allowed ranges (inclusive).
INT_EXTRAS: dict[str, tuple[int, int]] = {
    "grpc_workers": (2, 4096),
    "max_streams": (1, 4095),
    "max_streams_per_caller": (1, 4095),
    "max_node_streams": (0, 4095),
    "max_streams_per_node": (1, 4095),
    "max_cluster_streams": (1, 4095),
    "max_cluster_streams_per_orderer": (1, 4095),
    "sandbox_workers": (1, 256),
    "audit_retention_days": (1, 36_500),  # node.peer.audit
    "audit_max_records": (1_000, 1 << 40),
    "audit_refusals_per_minute": (1, 100_000),  # refusals recorded one by one per certificate
    "audit_refusal_burst": (1, 100_000),
    "audit_unauthenticated_per_minute": (1, 100_000),  # ... for all unauthenticated ones together
    "audit_unauthenticated_burst": (1, 100_000),
    "orderer_quorum": (1, 1000),
    "tick_ms": (1, 60_000),
    "election_tick": (2, 10_000),
    "snapshot_interval_blocks": (1, 1 << 40),
    "commit_timeout_ms": (1, 3_600_000),
    "clock_offset_ms": (-(10**12), 10**12),  # fault injection (node.orderer.server)
    "onboard_wait_ms": (0, 86_400_000),  # node.orderer.onboard
    "onboard_answer_ms": (1, 600_000),
    "first_start_wait_ms": (0, 86_400_000),  # node.orderer.server (--first-start)
}


def _int_value(value: Any, where: str, low: int, high: int) -> int:
    """``value`` if it is a YAML integer in ``low..high``. Nothing else is one: not a boolean
    (an int to Python), and not a string -- ``int()`` would take ``"1_000"``, ``" 5 "`` or
    ``"\uff15"`` (a full-width digit) as numbers a reader of the file does not see as such."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RxError("BAD_CONFIG", f"{where} must be an integer, not {_short(value)}")
    if not low <= value <= high:
        raise RxError("BAD_CONFIG", f"{where} must be between {low} and {high}, not {value}")
    return value


def _extra(raw: Any, path: Path) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RxError("BAD_CONFIG", f"{path}: extra must be a mapping of tuning keys, not a "
                                    f"{type(raw).__name__}")
    out = {str(k): v for k, v in raw.items()}
    for key, (low, high) in INT_EXTRAS.items():
        if key in out:
            out[key] = _int_value(out[key], f"{path}: extra.{key}", low, high)
    return out


_REQUIRED = ("name", "org", "kind", "host", "port", "data_dir", "cert", "key", "ca_bundle", "genesis")
# Every key a node.yaml may have.
KEYS = frozenset(_REQUIRED) | {"metrics_port", "raft_id", "orderers", "peers", "log_level", "fsync", "extra"}
_ENDPOINT_KEYS = frozenset({"name", "org", "host", "port"})


def _str_value(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise RxError("BAD_CONFIG", f"{where} must be a non-empty string, not {_short(value)}")
    return value


def _short(value: Any) -> str:
    if isinstance(value, (list, dict, set, tuple)):  # never walked: YAML aliases can share one
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _endpoints(raw: Any, what: str, path: Path) -> tuple[Endpoint, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RxError("BAD_CONFIG", f"{path}: {what} must be a list")
    out: list[Endpoint] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or item.keys() != _ENDPOINT_KEYS:
            raise RxError("BAD_CONFIG", f"{path}: {what}[{i}] needs name, org, host, port (and nothing else)")
        port = _int_value(item["port"], f"{path}: {what}[{i}].port", 1, 65535)
        name, org, host = (_str_value(item[k], f"{path}: {what}[{i}].{k}") for k in ("name", "org", "host"))
        if any(e.name == name for e in out):
            raise RxError("BAD_CONFIG", f"{path}: {what}: {name!r} is listed twice")
        out.append(Endpoint(name, org, host, port))
    return tuple(out)


def load_node_config(path: str | Path) -> NodeConfig:
    """Load and check a node's YAML; relative paths are relative to the file's directory."""
    path = Path(path)
    try:
        raw = load_yaml_file(path)
    except (OSError, YamlFileError) as exc:
        raise RxError("BAD_CONFIG", f"{path}: cannot read node config: {exc}") from None
    if not isinstance(raw, dict):
        raise RxError("BAD_CONFIG", f"{path}: node config must be a mapping")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise RxError("BAD_CONFIG", f"{path}: missing keys: {', '.join(missing)}")
    unknown = sorted(str(k) for k in raw if k not in KEYS)
    if unknown:
        raise RxError("BAD_CONFIG", f"{path}: unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(KEYS))})")
    kind = raw["kind"]
    if kind not in ("peer", "orderer"):
        raise RxError("BAD_CONFIG", f"{path}: kind must be 'peer' or 'orderer', not {_short(kind)}")
    base = path.parent
    for key in ("name", "org", "host", "data_dir", "cert", "key", "ca_bundle", "genesis"):
        _str_value(raw[key], f"{path}: {key}")

    def rel(key: str) -> Path:
        p = Path(str(raw[key]))
        return p if p.is_absolute() else (base / p)

    port = _int_value(raw["port"], f"{path}: port", 1, 65535)
    metrics_port = _int_value(raw.get("metrics_port", 0), f"{path}: metrics_port", 0, 65535)
    if metrics_port == port:
        raise RxError("BAD_CONFIG", f"{path}: metrics_port {metrics_port} is the gRPC port")
    fsync = raw.get("fsync", True)
    if not isinstance(fsync, bool):
        raise RxError("BAD_CONFIG", f"{path}: fsync must be true or false, not {_short(fsync)}")
    log_level = raw.get("log_level", "INFO")
    if not isinstance(log_level, str) or log_level.upper() not in logging.getLevelNamesMapping():
        raise RxError("BAD_CONFIG", f"{path}: log_level must be one of DEBUG, INFO, WARNING, ERROR, "
                                    f"CRITICAL, not {_short(log_level)}")
    raft_id = _int_value(raw.get("raft_id", 0), f"{path}: raft_id", 0, 1 << 62)
    if kind == "orderer" and raft_id <= 0:
        raise RxError("BAD_CONFIG", f"{path}: an orderer needs a positive raft_id")
    cfg = NodeConfig(
        name=str(raw["name"]),
        org=str(raw["org"]),
        kind=kind,
        host=str(raw["host"]),
        port=port,
        metrics_port=metrics_port,
        data_dir=rel("data_dir"),
        cert_path=rel("cert"),
        key_path=rel("key"),
        ca_bundle_path=rel("ca_bundle"),
        genesis_path=rel("genesis"),
        raft_id=raft_id,
        orderers=_endpoints(raw.get("orderers"), "orderers", path),
        peers=_endpoints(raw.get("peers"), "peers", path),
        log_level=log_level,
        fsync=fsync,
        extra=_extra(raw.get("extra"), path),
    )
    try:
        cfg.stream_caps()  # max_streams, max_node_streams and their per-caller caps against grpc_workers
        if kind == "orderer":
            cfg.cluster_caps()
    except RxError as err:
        raise RxError("BAD_CONFIG", f"{path}: {err.message}") from None
    for p in (cfg.cert_path, cfg.key_path, cfg.ca_bundle_path, cfg.genesis_path):
        if not p.exists():
            raise RxError("BAD_CONFIG", f"{path}: file {p} does not exist")
        if not p.is_file():
            raise RxError("BAD_CONFIG", f"{path}: {p} is not a file")
    check_tls_name(cfg, path)
    check_ca_bundle(cfg, path)
    return cfg


def check_tls_name(config: NodeConfig, source: str | Path = "") -> None:
    """RxError BAD_CONFIG unless the node's certificate carries the node's name as a subject
    alternative name. Other nodes dial a node pinned to its name (``NodeChannels`` in
    :mod:`node.crypto.tls`), and members' clients too, so a node whose certificate lacks it
    would start and then fail every incoming TLS connection with an opaque handshake error.
    The listen ``host`` is not required: every rxchain dial sets the TLS name explicitly (the
    node's name, or ``TLS_SERVER_NAME`` for a node not yet in the configuration) and ``host``
    may be a wildcard bind address. ``source`` (the node.yaml) prefixes the message."""
    where = f"{source}: " if source else ""
    try:
        cert = x509.load_pem_x509_certificate(config.cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RxError("BAD_CONFIG", f"{where}node {config.name}: cannot read its certificate "
                                    f"{config.cert_path}: {exc}") from None
    if not certificate_names_host(cert, config.name):
        found = ", ".join(certificate_names(cert)) or "none"
        try:
            expected = f"IP:{ipaddress.ip_address(config.name)}"
        except ValueError:
            expected = f"DNS:{config.name}"
        raise RxError("BAD_CONFIG", f"{where}node {config.name}: its TLS certificate {config.cert_path} "
                                    f"does not name it: subject alternative names found: {found}; "
                                    f"expected {expected} (other nodes and clients dial this node "
                                    f"pinned to its name)")


def check_ca_bundle(config: NodeConfig, source: str | Path = "") -> None:
    """RxError BAD_CONFIG unless the node's ``ca_bundle`` holds PEM certificates: the node
    trusts its callers and the nodes it dials by it, and read only as the node's servers and
    channels are built it failed the start-up after the data directory was written."""
    where = f"{source}: " if source else ""
    try:
        x509.load_pem_x509_certificates(config.ca_bundle_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RxError("BAD_CONFIG", f"{where}node {config.name}: ca_bundle {config.ca_bundle_path} "
                                    f"holds no readable PEM certificate: {exc}") from None


def check_can_listen(config: NodeConfig) -> None:
    """RxError BAD_CONFIG unless ``config``'s gRPC port (and metrics port, if any) can be
    bound now: a node checks this before it writes anything into its data directory. (A
    race with another process remains possible: the real bind is checked as well.)"""
    ports = [("port", config.port)] + ([("metrics_port", config.metrics_port)] if config.metrics_port else [])
    for key, port in ports:
        try:
            infos = socket.getaddrinfo(config.host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise RxError("BAD_CONFIG", f"{config.name}: host {config.host!r}: {exc}") from None
        family, kind, proto, _, addr = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            # no SO_REUSEPORT: the nodes' gRPC servers bind without it (grpc.so_reuseport 0)
            try:
                probe.bind(addr)
            except OSError as exc:
                raise RxError("BAD_CONFIG", f"{config.name}: {key}: cannot listen on "
                                            f"{config.host}:{port}: {exc.strerror or exc}") from None
