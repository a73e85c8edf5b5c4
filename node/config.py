"""Per-node configuration (one YAML file per node, written by the generator)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from node.errors import RxError


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


_REQUIRED = ("name", "org", "kind", "host", "port", "data_dir", "cert", "key", "ca_bundle", "genesis")


def _endpoints(raw: Any, what: str, path: Path) -> tuple[Endpoint, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RxError("BAD_CONFIG", f"{path}: {what} must be a list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not {"name", "org", "host", "port"} <= item.keys():
            raise RxError("BAD_CONFIG", f"{path}: {what}[{i}] needs name, org, host, port")
        out.append(Endpoint(str(item["name"]), str(item["org"]), str(item["host"]), int(item["port"])))
    return tuple(out)


def load_node_config(path: str | Path) -> NodeConfig:
    """Load and check a node's YAML; relative paths are relative to the file's directory."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RxError("BAD_CONFIG", f"{path}: cannot read node config: {exc}") from exc
    if not isinstance(raw, dict):
        raise RxError("BAD_CONFIG", f"{path}: node config must be a mapping")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise RxError("BAD_CONFIG", f"{path}: missing keys: {', '.join(missing)}")
    kind = str(raw["kind"])
    if kind not in ("peer", "orderer"):
        raise RxError("BAD_CONFIG", f"{path}: kind must be 'peer' or 'orderer', not {kind!r}")
    base = path.parent

    def rel(key: str) -> Path:
        p = Path(str(raw[key]))
        return p if p.is_absolute() else (base / p)

    try:
        port = int(raw["port"])
        metrics_port = int(raw.get("metrics_port", 0))
        raft_id = int(raw.get("raft_id", 0))
    except (TypeError, ValueError) as exc:
        raise RxError("BAD_CONFIG", f"{path}: port/metrics_port/raft_id must be integers") from exc
    if not 0 < port < 65536:
        raise RxError("BAD_CONFIG", f"{path}: port {port} out of range")
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
        log_level=str(raw.get("log_level", "INFO")),
        fsync=bool(raw.get("fsync", True)),
        extra=dict(raw.get("extra") or {}),
    )
    for p in (cfg.cert_path, cfg.key_path, cfg.ca_bundle_path, cfg.genesis_path):
        if not p.exists():
            raise RxError("BAD_CONFIG", f"{path}: file {p} does not exist")
    return cfg
