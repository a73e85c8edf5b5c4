"""What a client knows about the network: endpoints, consortium config, records certificates.

Read from a home directory written by the generator: ``network.yaml`` (endpoints),
``genesis.block`` (the consortium configuration) and ``consortium-secret`` (pseudonym key).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rxchain.v1 import config_pb2, identity_pb2

from client.errors import RxClientError
from client.records import SECRET_BYTES
from node.crypto.signing import Verifier
from node.errors import RxError
from node.genesis import config_from_genesis, read_genesis
from node.identity.msp import MSP
from node.identity.roles import KIND_NAMES


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


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
    secret: bytes  # b"" when this client holds no consortium secret (client.records refuses it)

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

    @cached_property
    def msp(self) -> MSP:
        """Certificate validation against this consortium configuration."""
        try:
            return MSP(self.config, Verifier(max_entries=64, max_own=1))
        except RxError as exc:
            raise RxClientError(exc.reason, exc.message) from exc

    def ca_pem(self, org_id: str) -> bytes:
        """The PEM CA certificate of ``org_id`` (what its nodes' TLS certificates chain to)."""
        der = self.org(org_id).ca_cert_der
        try:
            return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        except ValueError as exc:
            raise RxClientError("BAD_CONFIG", f"CA certificate of {org_id}: {exc}") from exc

    def recipient_key(self, org_id: str, cert_der: bytes, what: str, role: str | None = None,
                      at_ms: int | None = None) -> ec.EllipticCurvePublicKey:
        """The P-256 public key of a certificate a record key is about to be wrapped for.

        The certificate must be valid for ``org_id`` at ``at_ms`` (default: now) exactly as
        the peers' MSP checks a member: issued by that organisation's CA, within its validity
        period, not revoked, with a role the organisation may hold -- and ``role`` when given.
        Otherwise RxClientError with the MSP's reason (UNKNOWN_CREATOR, EXPIRED_CERT,
        REVOKED_CERT, WRONG_ROLE, BAD_CERT, UNKNOWN_ORG): a key is never wrapped for it.
        """
        when = _now_ms() if at_ms is None else at_ms
        try:
            principal = self.msp.validate(identity_pb2.Identity(org=org_id, cert_der=cert_der), when)
            pub = x509.load_der_x509_certificate(cert_der).public_key()
        except RxError as exc:
            raise RxClientError(exc.reason, f"{what}: {exc.message}") from exc
        except ValueError as exc:
            raise RxClientError("BAD_CERT", f"{what}: {exc}") from exc
        if role is not None and principal.role != role:
            raise RxClientError("WRONG_ROLE", f"{what}: role {principal.role!r}, expected {role!r}")
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise RxClientError("BAD_CERT", f"{what}: not a P-256 key")
        return pub

    def records_public_key(self, org_id: str, at_ms: int | None = None) -> ec.EllipticCurvePublicKey:
        """The public key of ``org_id``'s records certificate (record keys are wrapped to it),
        checked like a member certificate at ``at_ms`` (default: now), see :meth:`recipient_key`."""
        der = self.org(org_id).records_cert_der
        if not der:
            raise RxClientError("NO_RECORDS_CERT", f"organisation {org_id} has no records cert")
        return self.recipient_key(org_id, der, f"records certificate of {org_id}", at_ms=at_ms)

    def with_config(self, config: config_pb2.ConsortiumConfig) -> NetworkInfo:
        """This description with a later configuration of the same consortium (a config update
        committed since the genesis: revocations, rotated records certificates ...).
        RxClientError BAD_CONFIG if it is another consortium's or older than this one's."""
        if config.consortium_id != self.config.consortium_id:
            raise RxClientError("BAD_CONFIG", f"configuration of consortium {config.consortium_id!r}, "
                                f"not {self.config.consortium_id!r}")
        if config.sequence < self.config.sequence:
            raise RxClientError("BAD_CONFIG", f"configuration sequence {config.sequence} is older than "
                                f"{self.config.sequence}")
        return replace(self, config=config)

    def insurers(self) -> list[str]:
        """Insurer organisation ids, in configuration order."""
        return [o.id for o in self.config.organizations if o.kind == config_pb2.INSURER]

    @property
    def all_nodes(self) -> tuple[NodeEndpoint, ...]:
        """Orderers first, then peers."""
        return self.orderers + self.peers


def _endpoints(raw: object, kind: str, path: Path) -> tuple[NodeEndpoint, ...]:
    if not isinstance(raw, list):
        return ()
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, dict):
            try:
                port = item["port"]
                if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                    raise ValueError(f"port must be an integer in 1..65535, not {port!r}")
                out.append(NodeEndpoint(str(item["name"]), str(item["org"]), kind,
                                        str(item["host"]), port))
            except KeyError as exc:
                raise RxClientError("BAD_CONFIG", f"{path}: {kind}s[{i}] has no {exc}") from None
            except ValueError as exc:
                raise RxClientError("BAD_CONFIG", f"{path}: {kind}s[{i}]: {exc}") from None
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
    except FileNotFoundError:
        # A client that derives nothing from it (a patient's device with her binding file,
        # an auditor) does not hold the secret: b"", and every derivation refuses (NO_SECRET).
        secret = b""
    except (OSError, ValueError) as exc:
        raise RxClientError("BAD_CONFIG", f"cannot read consortium secret {secret_path}") from exc
    if secret_path.exists() and len(secret) != SECRET_BYTES:
        # a short or empty key would make every pseudonym (HMAC of an ID number) brute-forceable
        raise RxClientError("BAD_CONFIG", f"consortium secret {secret_path} must be {SECRET_BYTES} bytes "
                            f"(64 hex characters), not {len(secret)}")
    return NetworkInfo(
        home=home, consortium_id=str(raw.get("consortium_id", config.consortium_id)),
        config=config, orderers=_endpoints(raw.get("orderers"), "orderer", net_path),
        peers=_endpoints(raw.get("peers"), "peer", net_path), secret=secret,
    )
