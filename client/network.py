"""What a client knows about the network: endpoints, consortium config, records certificates.

Read from a home directory written by the generator: ``network.yaml`` (endpoints),
``genesis.block`` (the consortium configuration) and ``consortium-secret`` (pseudonym key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from rxchain.v1 import config_pb2

from client.errors import RxClientError
from node.errors import RxError
from node.genesis import config_from_genesis, read_genesis
from node.identity.roles import KIND_NAMES


@dataclass(frozen=True)
class NodeEndpoint:
    """A node's address."""

    name: str
    org: str
    kind: str
    host: str
    port: int

    @property
    def target(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class NetworkInfo:
    """Endpoints and configuration of one consortium."""

    home: Path
    consortium_id: str
    config: config_pb2.ConsortiumConfig
    orderers: tuple[NodeEndpoint, ...]
    peers: tuple[NodeEndpoint, ...]
    secret: bytes

    def peer_of(self, org: str) -> NodeEndpoint:
        """The peer run by ``org``."""
        for p in self.peers:
            if p.org == org:
                return p
        raise RxClientError("NO_PEER", f"organisation {org} runs no peer")

    def org(self, org_id: str) -> config_pb2.Organization:
        """An organisation of the configuration."""
        for o in self.config.organizations:
            if o.id == org_id:
                return o
        raise RxClientError("UNKNOWN_ORG", f"no organisation {org_id}")

    def org_kind(self, org_id: str) -> str:
        """``hospital`` | ``pharmacy`` | ``insurer`` | ``regulator``."""
        return KIND_NAMES.get(self.org(org_id).kind, "")

    def records_public_key(self, org_id: str) -> ec.EllipticCurvePublicKey:
        """The public key of ``org_id``'s records certificate (record keys are wrapped to it)."""
        der = self.org(org_id).records_cert_der
        if not der:
            raise RxClientError("NO_RECORDS_CERT", f"organisation {org_id} has no records cert")
        pub = x509.load_der_x509_certificate(der).public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise RxClientError("BAD_CONFIG", f"records cert of {org_id} is not an EC key")
        return pub

    def insurers(self) -> list[str]:
        """Insurer organisation ids, in configuration order."""
        return [o.id for o in self.config.organizations if o.kind == config_pb2.INSURER]

    @property
    def all_nodes(self) -> tuple[NodeEndpoint, ...]:
        """Orderers first, then peers."""
        return self.orderers + self.peers


def _endpoints(raw: object, kind: str) -> tuple[NodeEndpoint, ...]:
    if not isinstance(raw, list):
        return ()
    out = []
    for item in raw:
        if isinstance(item, dict):
            out.append(NodeEndpoint(str(item["name"]), str(item["org"]), kind,
                                    str(item["host"]), int(item["port"])))
    return tuple(out)


def load_network(home: Path) -> NetworkInfo:
    """Load the network description from a generated home directory."""
    home = Path(home)
    net_path = home / "network.yaml"
    try:
        raw = yaml.safe_load(net_path.read_text())
    except FileNotFoundError as exc:
        raise RxClientError(
            "NO_NETWORK", f"{net_path} does not exist: run `rxchain network up` (or netgen)"
        ) from exc
    except (OSError, yaml.YAMLError) as exc:
        raise RxClientError("BAD_CONFIG", f"{net_path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise RxClientError("BAD_CONFIG", f"{net_path}: not a mapping")
    try:
        config = config_from_genesis(read_genesis(home / str(raw.get("genesis", "genesis.block"))))
    except RxError as exc:
        raise RxClientError(exc.reason, exc.message) from exc
    secret_path = home / str(raw.get("consortium_secret", "consortium-secret"))
    try:
        secret = bytes.fromhex(secret_path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise RxClientError("BAD_CONFIG", f"cannot read consortium secret {secret_path}") from exc
    return NetworkInfo(
        home=home, consortium_id=str(raw.get("consortium_id", config.consortium_id)),
        config=config, orderers=_endpoints(raw.get("orderers"), "orderer"),
        peers=_endpoints(raw.get("peers"), "peer"), secret=secret,
    )
